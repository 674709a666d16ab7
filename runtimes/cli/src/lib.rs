//! The `peerpouch` command line's library: a small blocking driver that runs [`peerpouch::node::Node`]s
//! on real loopback UDP sockets with the in-memory hub and in-memory stores (the embedded
//! default), used by `peerpouch demo` and the peer-to-peer benchmark.
//!
//! It is single-threaded and polls: fine for a demo and a benchmark, not a production runtime
//! (that is `peerpouch-smol`).

pub mod endpoint;
pub mod local;
