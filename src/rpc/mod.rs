//! The remote database protocol: a peer's database served over the data channel.
//!
//! The sharer runs an [`RpcServer`] over its store; the connecting peer runs an [`RpcClient`]
//! and uses the remote exactly like a local database: every [`crate::Request`] goes out as a
//! call and its [`crate::Response`] comes back, so the replicator treats a remote peer as one more
//! endpoint. Both are sans-IO machines; the wire format is in `docs/protocol.md` §2.
//!
//! - **Framing** ([`frame`]): messages are split into frames no larger than the negotiated frame
//!   size (16 KiB by default, safe with every browser; up to 64 KiB when both sides agree) and
//!   reassembled with a bound on memory. Calls and answers of 512 bytes or more travel
//!   zstd-compressed when both hellos list `zstd` ([`ClientConfig::compress`],
//!   [`ServerConfig::compress`]; on by default): the data channel's cost follows the bytes.
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

use bytes::Bytes;

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

/// The peer's hello, with what both ends check of it: it decodes, speaks our protocol version
/// and comes from the other role (`from`). The share and key checks are each side's own.
fn peer_hello(payload: &[u8], from: wire::Role) -> Result<wire::Hello, RpcError> {
    let h: wire::Hello =
        serde_json::from_slice(payload).map_err(|e| RpcError::Malformed(format!("hello: {e}")))?;
    if h.v != wire::PROTOCOL_VERSION {
        return Err(RpcError::IncompatibleVersion {
            ours: wire::PROTOCOL_VERSION,
            theirs: h.v,
        });
    }
    if h.role != from {
        return Err(RpcError::Protocol(format!(
            "expected the hello of a {from:?}, got one of a {:?}",
            h.role
        )));
    }
    Ok(h)
}

/// Checks the key proof in a peer's hello (`h.role` is the sender's, already checked), when the
/// share has a key; `denied` says what failed from this side's point of view.
fn check_hello_proof(
    key: Option<&[u8]>,
    h: &wire::Hello,
    peer: &str,
    ids: (&str, &str, &str),
    denied: &str,
) -> Result<(), RpcError> {
    let Some(key) = key else { return Ok(()) };
    let (share, remote_fp, local_fp) = ids;
    let ok = h
        .proof
        .as_deref()
        .is_some_and(|p| wire::check_proof(key, h.role, share, peer, remote_fp, local_fp, p));
    if ok {
        Ok(())
    } else {
        Err(RpcError::AccessDenied(denied.into()))
    }
}

/// The frame size to send with once the peer's hello is in: its limit, within the protocol's
/// bounds, and at most ours.
fn agreed_frame(theirs: usize, ours: usize) -> usize {
    theirs.clamp(frame::MIN_FRAME, MAX_FRAME).min(ours)
}

/// Frames waiting for room in the data channel, one stream per message id, sent round-robin
/// frame by frame: a small answer does not wait behind a large one (frames of one id keep their
/// order, which keeps an attachment's bytes after its metadata).
///
/// A large message handed over whole ([`Outbox::push_owned`]: an attachment, a batch of
/// documents) is cut into frames one at a time as they go, exactly as [`frame::split`] would
/// cut it, rather than all at once: no second copy of it waits in memory. A message can also
/// arrive in parts ([`Outbox::push_part`]: an attachment read chunk by chunk from the store).
#[derive(Debug)]
pub(crate) struct Outbox {
    streams: VecDeque<(u32, VecDeque<Part>)>,
    bytes: usize,
    /// The most `bytes` ever was.
    peak: usize,
    frame_size: usize,
    /// Compresses what the peer takes compressed (its hello offered `zstd`, and ours did).
    pack: Option<frame::Compressor>,
}

/// Frames of one stream: ready ones, or a message being cut (`next` is its next frame).
#[derive(Debug)]
enum Part {
    Frame(Vec<u8>),
    Cutting {
        kind: Kind,
        id: u32,
        data: Bytes,
        /// Payload bytes already in frames (`next` included).
        cut: usize,
        chunk: usize,
        compressed: bool,
        /// The message goes on after `data` (in a later part).
        more: bool,
        next: Vec<u8>,
    },
}

impl Part {
    fn frame(&self) -> &[u8] {
        match self {
            Part::Frame(f) => f,
            Part::Cutting { next, .. } => next,
        }
    }
}

/// Writes the frame of `data` that starts at payload offset `at` into `out` (as `split` does);
/// `more` says the message goes on after `data`.
fn cut_frame(
    out: &mut Vec<u8>,
    (kind, id, compressed, more): (Kind, u32, bool, bool),
    data: &[u8],
    at: usize,
    chunk: usize,
) -> usize {
    let end = (at + chunk).min(data.len());
    out.clear();
    out.push(kind as u8);
    out.push(frame::flags(more || end < data.len(), compressed));
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(&data[at..end]);
    end
}

impl Outbox {
    pub(crate) fn new(frame_size: usize) -> Outbox {
        Outbox {
            streams: VecDeque::new(),
            bytes: 0,
            peak: 0,
            frame_size,
            pack: None,
        }
    }

    pub(crate) fn set_frame_size(&mut self, n: usize) {
        self.frame_size = n;
    }

    /// Compresses the JSON messages that gain from it from now on ([`frame::compress`]).
    pub(crate) fn set_compress(&mut self, yes: bool) {
        self.pack = yes.then(frame::Compressor::default);
    }

    /// The payload to send for a message, and whether it is compressed: calls and answers
    /// (JSON) when the peer takes compressed messages and it saves enough; never the hello (it negotiates
    /// compression), a goodbye, or attachment bytes (announced by length, and mostly
    /// compressed formats already).
    fn maybe_compress(&mut self, kind: Kind, payload: &[u8]) -> Option<Vec<u8>> {
        let json = matches!(
            kind,
            Kind::Request | Kind::Response | Kind::StreamItem | Kind::StreamEnd
        );
        match &mut self.pack {
            Some(pack) if json => pack.compress(payload),
            _ => None,
        }
    }

    pub(crate) fn push(&mut self, kind: Kind, id: u32, payload: &[u8]) {
        let frames = match self.maybe_compress(kind, payload) {
            Some(small) => frame::split_with(kind, id, &small, self.frame_size, true),
            None => frame::split(kind, id, payload, self.frame_size),
        };
        self.grow(frames.iter().map(Vec::len).sum());
        self.enqueue(id, frames.into_iter().map(Part::Frame).collect());
    }

    fn grow(&mut self, n: usize) {
        self.bytes += n;
        self.peak = self.peak.max(self.bytes);
    }

    /// The payload size of a frame.
    pub(crate) fn frame_payload(&self) -> usize {
        self.frame_size.max(frame::MIN_FRAME) - frame::HEADER_LEN
    }

    /// [`Outbox::push`] for a message the caller gives away: a message larger than one frame is
    /// cut as its frames go.
    /// An attachment's bytes are shared with the store that holds them, not copied.
    pub(crate) fn push_owned(&mut self, kind: Kind, id: u32, payload: impl Into<Bytes>) {
        let payload = payload.into();
        let (payload, compressed) = match self.maybe_compress(kind, &payload) {
            Some(small) => (Bytes::from(small), true),
            None => (payload, false),
        };
        if payload.len() <= self.frame_payload() {
            let frames = frame::split_with(kind, id, &payload, self.frame_size, compressed);
            self.grow(frames.iter().map(Vec::len).sum());
            return self.enqueue(id, frames.into_iter().map(Part::Frame).collect());
        }
        self.cut(kind, id, payload, compressed, false);
    }

    /// [`Outbox::push_owned`] for attachment bytes that are compressed like JSON when that
    /// saves enough (ranges of an attachment: only peers that read ranges get them, and they
    /// all take compressed binary messages). Text attachments then travel as small as they did
    /// inline, compressed inside their JSON; already-compressed formats go as they are.
    pub(crate) fn push_packed(&mut self, kind: Kind, id: u32, payload: Bytes) {
        let packed = self.pack.as_mut().and_then(|p| p.compress(&payload));
        match packed {
            Some(small) => self.cut(kind, id, Bytes::from(small), true, false),
            None => self.push_owned(kind, id, payload),
        }
    }

    /// Queues one part of a message sent in parts (never compressed): `more` when parts follow.
    /// Each part but the last should be a whole number of frame payloads
    /// ([`Outbox::frame_payload`]), so the frames are those of the whole message; an empty last
    /// part ends the message.
    pub(crate) fn push_part(&mut self, kind: Kind, id: u32, data: Bytes, more: bool) {
        self.cut(kind, id, data, false, more);
    }

    fn cut(&mut self, kind: Kind, id: u32, data: Bytes, compressed: bool, more: bool) {
        let chunk = self.frame_payload();
        let frames = data.len().div_ceil(chunk).max(1);
        self.grow(data.len() + frames * frame::HEADER_LEN);
        let mut next = Vec::with_capacity(frame::HEADER_LEN + chunk.min(data.len()));
        let cut = cut_frame(&mut next, (kind, id, compressed, more), &data, 0, chunk);
        self.enqueue(
            id,
            VecDeque::from([Part::Cutting {
                kind,
                id,
                data,
                cut,
                chunk,
                compressed,
                more,
                next,
            }]),
        );
    }

    fn enqueue(&mut self, id: u32, parts: VecDeque<Part>) {
        match self.streams.iter_mut().find(|(i, _)| *i == id) {
            Some((_, q)) => q.extend(parts),
            // Hello and goodbye (id 0) overtake every queued answer.
            None if id == 0 => self.streams.push_front((id, parts)),
            None => self.streams.push_back((id, parts)),
        }
    }

    pub(crate) fn push_json<T: serde::Serialize>(&mut self, kind: Kind, id: u32, value: &T) {
        // Our own types always serialise.
        let payload = serde_json::to_vec(value).unwrap_or_default();
        self.push_owned(kind, id, payload);
    }

    pub(crate) fn peek(&self) -> Option<&[u8]> {
        self.streams
            .front()
            .and_then(|(_, q)| q.front())
            .map(Part::frame)
    }

    pub(crate) fn advance(&mut self) {
        let Some((id, mut q)) = self.streams.pop_front() else {
            return;
        };
        match q.front_mut() {
            Some(Part::Frame(f)) => {
                self.bytes -= f.len();
                q.pop_front();
            }
            Some(Part::Cutting {
                kind,
                id: mid,
                data,
                cut,
                chunk,
                compressed,
                more,
                next,
            }) => {
                self.bytes -= next.len();
                if *cut < data.len() {
                    let how = (*kind, *mid, *compressed, *more);
                    *cut = cut_frame(next, how, data, *cut, *chunk);
                } else {
                    q.pop_front();
                }
            }
            None => {}
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

    pub(crate) fn peak(&self) -> usize {
        self.peak
    }

    /// Bytes queued for message `id`.
    pub(crate) fn bytes_of(&self, id: u32) -> usize {
        self.streams
            .iter()
            .filter(|(i, _)| *i == id)
            .flat_map(|(_, q)| q)
            .map(|p| match p {
                Part::Frame(f) => f.len(),
                Part::Cutting {
                    data,
                    cut,
                    chunk,
                    next,
                    ..
                } => {
                    next.len()
                        + (data.len() - cut)
                        + (data.len() - cut).div_ceil(*chunk) * frame::HEADER_LEN
                }
            })
            .sum()
    }

    pub(crate) fn clear(&mut self) {
        self.streams.clear();
        self.bytes = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every frame in order, with `bytes()` before each.
    fn drain(o: &mut Outbox) -> Vec<(usize, Vec<u8>)> {
        let mut v = Vec::new();
        while let Some(f) = o.peek() {
            v.push((o.bytes(), f.to_vec()));
            o.advance();
        }
        assert_eq!(o.bytes(), 0);
        v
    }

    #[test]
    fn owned_messages_are_cut_as_split_cuts_them() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for frame_size in [frame::MIN_FRAME, 1500, 4096] {
            for lens in [[0, 1, 3000], [1018, 1019, 2036], [9999, 5, 10_000]] {
                let (mut a, mut b) = (Outbox::new(frame_size), Outbox::new(frame_size));
                for (i, &len) in lens.iter().enumerate() {
                    let id = i as u32 + 1;
                    a.push(Kind::Response, id, &data[..len]);
                    b.push_owned(Kind::Response, id, data[..len].to_vec());
                    // A second message on the same id queues behind the first.
                    a.push(Kind::Binary, id, &data[..len / 2]);
                    b.push_owned(Kind::Binary, id, data[..len / 2].to_vec());
                }
                a.push_json(Kind::Hello, 0, &"hello");
                b.push_json(Kind::Hello, 0, &"hello");
                assert_eq!(drain(&mut a), drain(&mut b), "{frame_size} {lens:?}");
            }
        }
    }

    #[test]
    fn a_message_in_parts_of_whole_frames_is_cut_as_the_whole_message() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        for frame_size in [frame::MIN_FRAME, 1500] {
            for len in [0, 1, 3000, 10_000] {
                let (mut a, mut b) = (Outbox::new(frame_size), Outbox::new(frame_size));
                a.push_owned(Kind::Binary, 3, data[..len].to_vec());
                let part = 2 * b.frame_payload();
                let mut at = 0;
                loop {
                    let end = (at + part).min(len);
                    let chunk = Bytes::copy_from_slice(&data[at..end]);
                    b.push_part(Kind::Binary, 3, chunk, end < len);
                    // A frame goes out between parts, as the channel takes them.
                    if let Some(f) = b.peek().map(<[u8]>::to_vec) {
                        assert_eq!(a.peek(), Some(&f[..]));
                        a.advance();
                        b.advance();
                    }
                    at = end;
                    if at == len {
                        break;
                    }
                }
                assert_eq!(drain(&mut a), drain(&mut b), "{frame_size} {len}");
            }
        }
    }
}
