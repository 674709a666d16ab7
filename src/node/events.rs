//! What a node tells the app: its events, the errors of its commands, and why links close.

use std::time::Duration;

use serde_json::Value;

use super::{LinkId, ReplicationId};
use crate::error::DbError;
use crate::hub::{HubError, HubEvent};
use crate::ops::{ChangesResponse, Response};
use crate::replicate::ReplicationEvent;
use crate::rpc::{CallId, RpcError};
use crate::session::{CloseReason, LinkPath, SessionError};

/// What a node reports.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A hub event not handled by the node itself (listing, watching, share lifecycle, errors).
    Hub(HubEvent),
    /// A peer asks to connect to a share with `ask` access: call
    /// [`Node::accept`](super::Node::accept) or [`Node::refuse`](super::Node::refuse).
    PeerRequested {
        /// The link it would be.
        link: LinkId,
        /// What the peer says about itself.
        info: Value,
        /// The peer's certificate fingerprint from its offer (canonical, see
        /// [`crate::fingerprint`]); `None` only when the offer names none. The event waits for
        /// the offer, and a link accepted on it is closed if the peer's DTLS handshake shows
        /// another certificate, so an allow-list of fingerprints is safe to decide on.
        fingerprint: Option<String>,
    },
    /// A link's channel opened and the RPC hellos checked out: calls work now.
    LinkReady {
        /// The link.
        link: LinkId,
        /// The path ICE selected (direct or relayed, and the candidate types); always known
        /// once a channel is open.
        path: Option<LinkPath>,
    },
    /// A link closed.
    LinkClosed {
        /// Which.
        link: LinkId,
        /// Why (session close reason, or the RPC error that ended it).
        reason: String,
    },
    /// The sharer refused us.
    Refused {
        /// The link.
        link: LinkId,
        /// Its reason.
        reason: Option<String>,
    },
    /// A link we opened waits for the sharer to accept it (the sharer asks a person); it gives up
    /// after [`HubConfig::approval_timeout`](crate::hub::HubConfig::approval_timeout) with
    /// [`NodeEvent::NotAccepted`].
    AwaitingApproval {
        /// The link.
        link: LinkId,
        /// How long it waits at most
        /// ([`HubConfig::approval_timeout`](crate::hub::HubConfig::approval_timeout)).
        timeout: Duration,
    },
    /// A link we opened got no answer from the sharer within
    /// [`HubConfig::answer_timeout`](crate::hub::HubConfig::answer_timeout): the share is probably
    /// stale (its sharer crashed). [`NodeEvent::LinkClosed`] follows.
    NotAnswering {
        /// The link.
        link: LinkId,
        /// How long it waited.
        waited: Duration,
    },
    /// The sharer of a link we opened did not accept it within
    /// [`HubConfig::approval_timeout`](crate::hub::HubConfig::approval_timeout).
    /// [`NodeEvent::LinkClosed`] follows.
    NotAccepted {
        /// The link.
        link: LinkId,
        /// How long it waited.
        waited: Duration,
    },
    /// The result of [`Node::call`](super::Node::call).
    CallResult {
        /// The link.
        link: LinkId,
        /// The call.
        call: CallId,
        /// The result.
        result: Result<Response, DbError>,
    },
    /// A batch of a [`Node::subscribe`](super::Node::subscribe) subscription.
    Changes {
        /// The link.
        link: LinkId,
        /// The subscription.
        call: CallId,
        /// The rows.
        changes: ChangesResponse,
    },
    /// A [`Node::subscribe`](super::Node::subscribe) subscription ended: cancelled
    /// ([`Node::cancel_call`](super::Node::cancel_call), `error: None`), ended by the server,
    /// or cut off with its link (after [`NodeEvent::LinkClosed`]). No
    /// [`NodeEvent::Changes`] follows for it.
    ChangesEnded {
        /// The link.
        link: LinkId,
        /// The subscription.
        call: CallId,
        /// Why, when not cancelled.
        error: Option<DbError>,
    },
    /// A replication reported.
    Replication {
        /// Which.
        id: ReplicationId,
        /// What.
        event: ReplicationEvent,
    },
}

/// Errors of node commands; the node is unchanged after one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NodeError {
    /// From the hub negotiator.
    #[error(transparent)]
    Hub(#[from] HubError),
    /// No such link, or not one we opened.
    #[error("no link {0} that this node opened (it closed, or was never opened)")]
    UnknownLink(LinkId),
    /// No such replication.
    #[error("no replication {0}")]
    UnknownReplication(ReplicationId),
    /// From the RPC.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// [`Node::set_db_uuid`](super::Node::set_db_uuid) with something that is not a database
    /// identity.
    #[error(
        "invalid database uuid {0:?}: use 1 to 128 visible ASCII characters, such as 32 hex digits"
    )]
    InvalidDbUuid(String),
    /// [`Node::open`](super::Node::open) with
    /// [`NodeConfig::max_links`](super::NodeConfig::max_links) links already kept: close one first,
    /// or raise the limit.
    #[error(
        "this node keeps {0} links, its limit (max_links): close one first or raise the limit"
    )]
    TooManyLinks(usize),
    /// [`Node::handle_store_result`](super::Node::handle_store_result) with an id that no
    /// [`StoreRequest`](super::StoreRequest) of this node carried.
    #[error(
        "no store request {0} was issued by this node: give back the ids of poll_store_request's \
         requests"
    )]
    UnknownStoreRequest(u64),
}

/// The close reason of a link whose sharer never answered.
pub const NOT_ANSWERING: &str = "the sharer is not answering (its share may be stale)";
/// The close reason of a link whose sharer did not accept in time.
pub const NOT_ACCEPTED: &str = "not accepted in time";

/// Why a link closed. [`NodeEvent::LinkClosed`] carries it as text, which is what apps, logs
/// and the protocol traces read: each reason prints the same text as before it had a type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum LinkCloseReason {
    /// [`Node::close`](super::Node::close).
    ByApp,
    /// Our share ended ([`Node::unshare`](super::Node::unshare)), or the sharer's did.
    Unshared,
    /// The sharer refused us ([`NodeEvent::Refused`] comes first).
    Refused,
    /// [`NOT_ANSWERING`].
    NotAnswering,
    /// [`NOT_ACCEPTED`].
    NotAccepted,
    /// Relay-only, and every TURN server failed (their reasons).
    NoRelay(String),
    /// The peer's DTLS certificate is not the one the app accepted it on.
    OtherCertificate {
        /// The fingerprint the handshake showed.
        remote: String,
        /// The one accepted.
        accepted: String,
    },
    /// The RPC ended the link (a protocol error, a wrong key, no hello in time, a goodbye).
    Rpc(RpcError),
    /// The channel refused a frame.
    SendFailed(SessionError),
    /// The session closed. `stall` is the send stall timeout, which the text of
    /// [`CloseReason::PeerNotReading`] names.
    Session {
        /// Why.
        reason: CloseReason,
        /// How long unacknowledged data may wait.
        stall: Duration,
    },
    /// A link that never connected: why, and what each side gathered.
    NoPath {
        /// What gave up first.
        reason: Box<LinkCloseReason>,
        /// The candidates and what the ICE servers said.
        detail: String,
    },
}

impl std::fmt::Display for LinkCloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkCloseReason::ByApp => f.write_str("closed by the app"),
            LinkCloseReason::Unshared => f.write_str("unshared"),
            LinkCloseReason::Refused => f.write_str("refused"),
            LinkCloseReason::NotAnswering => f.write_str(NOT_ANSWERING),
            LinkCloseReason::NotAccepted => f.write_str(NOT_ACCEPTED),
            LinkCloseReason::NoRelay(why) => write!(f, "no relay for a relay-only link: {why}"),
            LinkCloseReason::OtherCertificate { remote, accepted } => write!(
                f,
                "the peer's certificate ({remote}) is not the one accepted ({accepted})"
            ),
            LinkCloseReason::Rpc(e) => write!(f, "{e}"),
            LinkCloseReason::SendFailed(e) => write!(f, "send failed: {e}"),
            LinkCloseReason::Session { reason, stall } => match reason {
                CloseReason::Failed(why) => write!(f, "failed: {why}"),
                CloseReason::PeerNotReading => write!(
                    f,
                    "the peer took none of our data for {stall:?} (it stopped reading, or the \
                     path drops large packets): cut off"
                ),
                // The session's own names: apps and tests match on them ("Remote",
                // "IdleTimeout", "ConnectTimeout"), so they stay as they are.
                CloseReason::Local => f.write_str("Local"),
                CloseReason::Remote => f.write_str("Remote"),
                CloseReason::IdleTimeout => f.write_str("IdleTimeout"),
                CloseReason::ConnectTimeout => f.write_str("ConnectTimeout"),
            },
            LinkCloseReason::NoPath { reason, detail } => write!(f, "{reason}: {detail}"),
        }
    }
}
