//! Reachability: ICE servers (STUN and TURN) and the candidates they give a node.
//!
//! - [`config`]: `RTCIceServer`-shaped configuration and URL parsing.
//! - [`stun`]: the STUN (RFC 8489) and TURN (RFC 8656) wire format.
//! - [`client`]: [`ServerClient`], the machine for one (local base, STUN or TURN server).
//! - [`gather`]: [`gather::Gatherer`], a node's ICE servers together: candidates for its links
//!   and the wrapping of relayed traffic.
//!
//! Everything here is sans-IO like the rest of the core: host names are resolved, sockets and
//! TCP connections opened by the runtime; the machines take bytes and time in and hand bytes out.

pub mod client;
pub mod config;
pub mod gather;
pub mod stun;

pub use client::{
    ClientConfig, ClientError, ClientEvent, ClientFailure, ClientStats, ClientStatus, ServerClient,
};
pub use config::{
    IceServer, IceServerError, IceServerUrl, IceTransportPolicy, ResolvedIceServer, ServerKind,
    Transport, DEFAULT_PORT,
};
pub use stun::{ChannelData, Message, StreamDeframer, StunError};
