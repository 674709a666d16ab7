//! # peerpouch-couch
//!
//! A blocking CouchDB HTTP client on [ureq](https://docs.rs/ureq) 3 for peerpouch:
//!
//! - [`CouchClient`]: one database over HTTP, implementing [`peerpouch::Database`] for every
//!   [`peerpouch::Request`], so it can be a replication endpoint ([`peerpouch::replicate()`]) or
//!   the hub a node meets peers on. It works with CouchDB and with pouchdb-server, whose quirks
//!   it smooths over (see the README section "Server quirks" in `runtimes/couch/README.md`).
//! - [`ChangesFollower`]: a continuous `_changes` feed on its own thread, delivering
//!   [`FeedEvent`]s through a `std::sync::mpsc` channel, reconnecting with backoff.
//! - [`HubNode`]: the share negotiation machine driven against a CouchDB hub with both.
//!
//! Out of scope: multipart requests and answers (attachments travel inline as base64), views,
//! `_find`, cookie or proxy authentication (Basic auth from the URL only), compression.
//!
//! This is a runtime crate: it does IO, spawns a thread for the follower and reads the clock
//! through ureq's timeouts. The sans-IO core is the `peerpouch` crate.
//!
//! ## Example
//! ```no_run
//! use peerpouch::{replicate, Database, MemoryStore, ReplicatorConfig};
//! use peerpouch_couch::{ChangesFollower, CouchClient, FeedEvent, FollowerConfig};
//! use serde_json::json;
//!
//! let mut hub = CouchClient::new("http://127.0.0.1:5984/notes")?;
//! hub.create_db(true)?;
//! let (follower, events) = ChangesFollower::start(&hub, FollowerConfig::default())?;
//! hub.put(json!({"_id": "a", "text": "hi"}))?;
//! while let Ok(ev) = events.recv() {
//!     if let FeedEvent::Rows(rows) = ev {
//!         assert_eq!(rows[0].id, "a");
//!         break;
//!     }
//! }
//! follower.stop();
//!
//! let mut local = MemoryStore::new("notes");
//! let from = hub.url().redacted().to_string();
//! let progress = replicate(&mut hub, &mut local, ReplicatorConfig::new(from, "local"))?;
//! assert_eq!(progress.docs_written, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod client;
mod clock;
mod error;
mod follower;
mod http;
mod hub_node;
mod tls;
mod url;

pub use client::{ClientConfig, CouchClient};
pub use clock::wall_clock_ms;
pub use error::Error;
pub use follower::{ChangesFollower, FeedEvent, FollowerConfig};
pub use hub_node::HubNode;
pub use tls::{CaCerts, CertificateProblem};
pub use url::DbUrl;
