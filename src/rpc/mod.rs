//! The remote database protocol: a peer's database served over the data channel.
//!
//! The sharer runs an [`RpcServer`] over its store; the connecting peer runs an [`RpcClient`]
//! and uses the remote exactly like a local database: every [`crate::Request`] goes out as a
//! call and its [`crate::Response`] comes back, so the replicator treats a remote peer as one more
//! endpoint. Both are sans-IO machines; the wire format is in `docs/protocol.md` §2.
//!
//! - **Framing** ([`frame`]): messages are split into frames no larger than the negotiated frame
//!   size (16 KiB by default, safe with every browser; up to 64 KiB when both sides agree) and
//!   reassembled with a bound on memory.
//! - **Hello** first, both ways: version, share and peer ids, capabilities, limits, read-only
//!   flag and, for shares with an access key, an HMAC proof bound to both DTLS fingerprints.
//!   Nothing is served before the client's hello checked out.
//! - **Calls** with ids and CouchDB-shaped errors; **live changes subscriptions** with cancel;
//!   **attachments** as binary messages.
//! - **Flow control**: frames wait in the machine until the driver has room in the data channel
//!   (see [`RpcServer::peek_frame`]); a server stops taking on work while more than
//!   [`ServerConfig::window`] bytes wait, and a client keeps at most the server's
//!   `max_in_flight` calls outstanding. A slow reader never makes the writer's memory grow.
//!
//! Drain rule: after every input, drain `poll_event`, `poll_store_request` (server) and the
//! frames (`peek_frame`/`advance_frame`, as far as the channel takes them).

mod client;
pub mod frame;
mod server;
pub mod wire;

pub use client::{CallId, ClientConfig, ClientEvent, RpcClient};
pub use server::{RpcServer, ServerConfig, ServerEvent, StoreRequestId};

use std::collections::VecDeque;

use crate::error::DbError;
use frame::Kind;

/// Default frame size: 16 KiB is safe with every browser.
pub const DEFAULT_FRAME: usize = 16 * 1024;
/// Largest frame size peers may agree on.
pub const MAX_FRAME: usize = 64 * 1024;

/// What went wrong on a link. Errors from the peer's bytes close the link.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// A frame or message that does not decode.
    #[error("malformed: {0}")]
    Malformed(String),
    /// A frame or message over the agreed limit.
    #[error("{what} of {size} bytes is over the limit of {limit}")]
    TooLarge {
        /// Frame or message.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The peer broke the protocol (a call before hello, too many calls, an unknown id).
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// The peer speaks another protocol version.
    #[error("incompatible protocol version: we speak {ours}, the peer {theirs}")]
    IncompatibleVersion {
        /// Ours.
        ours: u32,
        /// Theirs.
        theirs: u32,
    },
    /// The peer's access proof is missing or wrong.
    #[error("access denied: {0}")]
    AccessDenied(String),
    /// The peer closed the link with this error.
    #[error("the peer closed the link: {0}")]
    Closed(DbError),
    /// A command for a call this machine does not know.
    #[error("no such call {0}")]
    UnknownCall(u32),
}

impl RpcError {
    /// The CouchDB-shaped error sent in a goodbye (and given to pending calls).
    pub fn to_db_error(&self) -> DbError {
        match self {
            RpcError::AccessDenied(r) => DbError::Forbidden(r.clone()),
            RpcError::Closed(e) => e.clone(),
            RpcError::IncompatibleVersion { .. } => DbError::Other {
                status: 426,
                error: "incompatible_version".into(),
                reason: self.to_string(),
            },
            other => DbError::BadRequest(other.to_string()),
        }
    }
}

/// Frames waiting for room in the data channel, one stream per message id, sent round-robin
/// frame by frame: a small answer does not wait behind a large one (frames of one id keep their
/// order, which keeps an attachment's bytes after its metadata).
#[derive(Debug)]
pub(crate) struct Outbox {
    streams: VecDeque<(u32, VecDeque<Vec<u8>>)>,
    bytes: usize,
    frame_size: usize,
}

impl Outbox {
    pub(crate) fn new(frame_size: usize) -> Outbox {
        Outbox {
            streams: VecDeque::new(),
            bytes: 0,
            frame_size,
        }
    }

    pub(crate) fn set_frame_size(&mut self, n: usize) {
        self.frame_size = n;
    }

    pub(crate) fn push(&mut self, kind: Kind, id: u32, payload: &[u8]) {
        let frames = frame::split(kind, id, payload, self.frame_size);
        self.bytes += frames.iter().map(Vec::len).sum::<usize>();
        match self.streams.iter_mut().find(|(i, _)| *i == id) {
            Some((_, q)) => q.extend(frames),
            // Hello and goodbye (id 0) overtake every queued answer.
            None if id == 0 => self.streams.push_front((id, frames.into())),
            None => self.streams.push_back((id, frames.into())),
        }
    }

    pub(crate) fn push_json<T: serde::Serialize>(&mut self, kind: Kind, id: u32, value: &T) {
        // Our own types always serialise.
        let payload = serde_json::to_vec(value).unwrap_or_default();
        self.push(kind, id, &payload);
    }

    pub(crate) fn peek(&self) -> Option<&[u8]> {
        self.streams
            .front()
            .and_then(|(_, q)| q.front())
            .map(Vec::as_slice)
    }

    pub(crate) fn advance(&mut self) {
        let Some((id, mut q)) = self.streams.pop_front() else {
            return;
        };
        if let Some(f) = q.pop_front() {
            self.bytes -= f.len();
        }
        if !q.is_empty() {
            if id == 0 {
                // Hello and goodbye (id 0) go out whole before anything else.
                self.streams.push_front((id, q));
            } else {
                self.streams.push_back((id, q));
            }
        }
    }

    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    pub(crate) fn clear(&mut self) {
        self.streams.clear();
        self.bytes = 0;
    }
}
