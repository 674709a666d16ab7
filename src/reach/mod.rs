//! Reachability: ICE servers (STUN and TURN) and the candidates they give a node.
//!
//! - [`config`]: `RTCIceServer`-shaped configuration and URL parsing.
//! - [`stun`]: the STUN (RFC 8489) and TURN (RFC 8656) wire format.
//!
//! Everything here is sans-IO like the rest of the core: host names are resolved, sockets and
//! TCP connections opened by the runtime; the machines take bytes and time in and hand bytes out.

pub mod config;
pub mod stun;

pub use config::{
    IceServer, IceServerError, IceServerUrl, IceTransportPolicy, ResolvedIceServer, ServerKind,
    Transport, DEFAULT_PORT,
};
pub use stun::{ChannelData, Message, StreamDeframer, StunError};
