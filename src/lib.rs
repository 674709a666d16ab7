//! # peerpouch
//!
//! Share a CouchDB-style document database with another program, peer to peer, over WebRTC data
//! channels, using any CouchDB-compatible server only as a meeting point ("hub").
//!
//! This crate is the pure core, written in the sans-IO style: every part is a state machine or a
//! synchronous data structure that takes events in and hands actions out. It opens no sockets,
//! reads no clock, spawns no thread and draws no OS randomness; time is a parameter and randomness
//! a seed. Runtimes (in the `runtimes/` crates of the workspace) connect the machines to real
//! sockets, timers and HTTP.
//!
//! ## What is here
//! - The document model: revisions ([`Rev`]), revision trees with CouchDB's winner rule,
//!   conflicts, tombstones, attachments and `_local` documents.
//! - [`MemoryStore`], a database with CouchDB semantics held in memory, behind the [`Database`]
//!   trait; the operations and results every database speaks ([`Request`], [`Response`]).
//! - [`Replicator`], the CouchDB replication protocol as a machine between a source and a target
//!   it knows only through requests and responses, and [`replicate()`], a loop that runs it between
//!   two synchronous databases.
//! - [`hub::Hub`], share negotiation through a CouchDB hub: share and signal documents in the
//!   original PeerPouch format, accept/refuse, expiry and cleanup; [`hub::MemoryHub`] is an
//!   in-memory hub for simulations and the embedded default.
//!
//! ## The drain rule
//! After every input to a machine (`handle_*`, a command), drain every `poll_*` method until it
//! returns `None` before waiting or putting in the next input. The machines never call back.
//!
//! ## Example: replicate between two stores
//! ```
//! use peerpouch::{replicate, Database, MemoryStore, ReplicatorConfig};
//! use serde_json::json;
//!
//! let mut a = MemoryStore::new("a");
//! let mut b = MemoryStore::new("b");
//! a.put(json!({"_id": "doc1", "title": "hello"})).unwrap();
//! let progress = replicate(&mut a, &mut b, ReplicatorConfig::new("a", "b")).unwrap();
//! assert_eq!(progress.docs_written, 1);
//! assert_eq!(b.get("doc1").unwrap()["title"], "hello");
//! ```
//!
//! ## Example: drive the replicator from your own loop
//! ```no_run
//! use peerpouch::{Database, Endpoint, MemoryStore, Replicator, ReplicatorConfig, ReplicationEvent};
//!
//! let (mut source, mut target) = (MemoryStore::new("a"), MemoryStore::new("b"));
//! let mut rep = Replicator::new(ReplicatorConfig::new("a", "b"), 42);
//! let now = std::time::Instant::now();
//! loop {
//!     while let Some(req) = rep.poll_request() {
//!         // A real app sends this over the network and feeds the answer back later.
//!         let db: &mut dyn Database = match req.endpoint {
//!             Endpoint::Source => &mut source,
//!             Endpoint::Target => &mut target,
//!         };
//!         let result = db.execute(req.request);
//!         rep.handle_response(now, req.id, result).unwrap();
//!     }
//!     while let Some(ev) = rep.poll_event() {
//!         println!("{ev:?}");
//!     }
//!     if rep.is_finished() {
//!         break;
//!     }
//! }
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod doc;
mod dtls;
mod error;
pub mod fingerprint;
pub mod hub;
pub mod node;
mod ops;
pub mod rand;
pub mod reach;
pub mod replicate;
mod retry;
mod rev;
pub mod revtree;
pub mod route;
pub mod rpc;
pub mod session;
pub mod signal;
pub mod store;

pub use bytes::Bytes;
pub use error::{CouchError, DbError};
pub use ops::*;
pub use replicate::{
    replicate, replicate_with_progress, Endpoint, EndpointRequest, Progress, ReplicationError,
    ReplicationEvent, Replicator, ReplicatorConfig, RequestId,
};
pub use retry::RetryPolicy;
pub use rev::{Rev, MAX_REV_HASH_LEN, MAX_REV_POS};
pub use store::{Database, MemoryStore};
