//! # peerpouch-smol
//!
//! The async API of peerpouch on [smol]/[async-io], in two layers:
//!
//! - [`peer`]: the product. A [`PeerNode`] runs the whole [`peerpouch::node::Node`] machine
//!   (hub negotiation, WebRTC sessions, the RPC, replications) on a UDP socket, a hub (CouchDB
//!   over HTTP or the [`InProcessHub`]) and the app's databases; [`Db`] is one handle for a
//!   local database, a peer's share and a CouchDB database; [`Replication`] reports progress and
//!   can be cancelled. Start there.
//! - [`LinkEndpoint`] / [`Link`]: bare WebRTC data channels ([`peerpouch::session::Session`]s)
//!   for apps that bring their own protocol: one socket, many links, STUN, timers.
//!
//! ## The link layer
//! - [`LinkEndpoint`]: one `Async<UdpSocket>` (large `SO_RCVBUF`/`SO_SNDBUF`), many links,
//!   incoming datagrams routed with [`Session::accepts`](peerpouch::session::Session::accepts);
//!   a wildcard bind (`0.0.0.0:0`) advertises every interface address.
//! - [`Link`]: signals out ([`Link::next_signal`]) and in ([`Link::handle_signal`]) as
//!   [`SignalData`] (browser JSON, for the hub), [`Link::send`] with backpressure,
//!   [`Link::recv`], [`Link::closed`], [`Link::close`].
//! - STUN ([`stun`]): Binding requests from the session socket, server-reflexive candidates,
//!   answers consumed by the runtime, garbage ignored, silent servers timed out; links never
//!   wait for it.
//!
//! ## Out of scope
//! TURN relays and TCP candidates.
//!
//! ## How it runs
//! A [`PeerNode`]'s task owns its socket, its `Node` and its in-memory or SQLite databases;
//! blocking work (HTTP requests to a CouchDB hub or database, an app's accept/refuse callback)
//! runs on smol's blocking pool and comes back as an input. The endpoint's driver is one async task that owns the socket and every [`Session`]: it reads
//! datagrams in batches, feeds them to their session, and after every input drains the session
//! (transmits, signals, events: the drain rule of the sans-IO core) before waiting again on the
//! socket, the app's commands and one [`async_io::Timer`] set to the earliest
//! `Session::poll_timeout`. Handles talk to it through channels, so they are `Send + Sync` and
//! can be used from any task or thread.
//!
//! Known limits, inherited from routing by address: two links between the same two sockets
//! cannot be told apart once DTLS runs (see [`LinkEndpoint`]). Received messages are queued
//! without bound: a session has no way to slow the peer down, so read them.
//!
//! [`Session`]: peerpouch::session::Session
//! [smol]: https://docs.rs/smol
//! [async-io]: https://docs.rs/async-io
//!
//! ## Example: two links on loopback
//! ```
//! use futures_lite::StreamExt;
//! use peerpouch_smol::{EndpointConfig, Link, LinkEndpoint, SessionRole};
//!
//! /// Stands in for the hub: forwards one side's signals to the other (without keeping either
//! /// link open).
//! fn wire(from: &Link, to: &Link) {
//!     let (mut signals, sink) = (from.signals(), to.signal_sink());
//!     smol::spawn(async move {
//!         while let Some(signal) = signals.next().await {
//!             if sink.handle_signal(signal).await.is_err() {
//!                 break;
//!             }
//!         }
//!     })
//!     .detach();
//! }
//!
//! # fn main() -> Result<(), peerpouch_smol::LinkError> {
//! smol::block_on(async {
//!     let a = LinkEndpoint::bind(EndpointConfig::default())?;
//!     let b = LinkEndpoint::bind(EndpointConfig::default())?;
//!     let offerer = a.create_link(SessionRole::Offerer)?;
//!     let answerer = b.create_link(SessionRole::Answerer)?;
//!     wire(&offerer, &answerer);
//!     wire(&answerer, &offerer);
//!     offerer.opened().await?;
//!     offerer.send(b"hello".to_vec()).await?;
//!     assert_eq!(answerer.recv().await?.data, b"hello");
//!     offerer.close().await;
//!     println!("answerer saw: {:?}", answerer.closed().await);
//!     Ok(())
//! })
//! # }
//! ```

#![warn(missing_docs)]

mod endpoint;
mod error;
mod identity;
mod link;
mod net;
pub mod peer;
pub mod stun;

pub use endpoint::{EndpointConfig, EndpointDriver, EndpointStats, LinkEndpoint};
pub use error::LinkError;
pub use identity::{Identity, IdentityError, config_dir};
pub use link::{Link, LinkId, Message, SignalSink, Signals};
pub use peer::{
    Db, DbKind, HubSpec, InProcessHub, LinkEvent, PeerConfig, PeerDriver, PeerError, PeerNode,
    PeerRequest, PeerStats, ReplicateError, ReplicateOptions, Replication, ShareChange,
    ShareConfig, Subscription, Verdict,
};
pub use peerpouch::hub::SignalData;
pub use peerpouch::session::{CloseReason, SessionConfig, SessionError, SessionRole};
pub use stun::{StunServerStatus, StunStatus};
