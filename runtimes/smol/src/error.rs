use std::io;
use std::net::SocketAddr;

use peerpouch::session::{CloseReason, SessionError};

/// What went wrong in the runtime, and what to do about it.
///
/// ```
/// use peerpouch_smol::{CloseReason, LinkError};
/// let e = LinkError::Closed(CloseReason::Remote);
/// assert!(e.to_string().contains("create a new link"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The UDP socket could not be bound.
    #[error(
        "cannot bind the UDP socket to {addr}: {source} (use a free port, or an address of this machine)"
    )]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// Creating or tuning the socket failed.
    #[error("socket call {option} failed: {source}")]
    SocketOption {
        /// Which call.
        option: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// Interfaces could not be listed for a wildcard bind (`0.0.0.0` or `[::]`).
    #[error("cannot list the network interfaces: {0} (bind to one address instead of a wildcard)")]
    Interfaces(#[source] io::Error),
    /// The socket could not be registered with async-io's reactor.
    #[error("cannot register the socket with the async-io reactor: {0}")]
    Reactor(#[source] io::Error),
    /// The OS random source failed (ICE credentials and STUN transaction ids come from it).
    #[error("the OS random source failed: {0} (set EndpointConfig::seed to supply a seed)")]
    Random(String),
    /// The session refused a command or a signal: see [`SessionError`]. The link is unchanged
    /// and still usable.
    #[error("the session refused: {0}")]
    Session(#[from] SessionError),
    /// The link has closed (locally, by the peer, or by a timeout).
    #[error("the link is closed ({0:?}); create a new link to talk to the peer again")]
    Closed(CloseReason),
    /// The endpoint's driver is not running any more (it was closed, its future was dropped, or
    /// the socket failed for good).
    #[error("the endpoint's driver has stopped; bind a new endpoint (and keep its driver running)")]
    EndpointStopped,
}
