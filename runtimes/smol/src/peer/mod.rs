//! The async API: a [`PeerNode`] shares local databases, finds and opens the shares of others,
//! and replicates between any two [`Db`]s (local, a remote peer, CouchDB over HTTP).
//!
//! One node is one task (see [`PeerNode::start`]) running the pure [`Node`] machine on a UDP
//! socket, a hub (CouchDB over HTTP, or [`InProcessHub`]) and the node's databases. Handles
//! ([`PeerNode`], [`Db`], [`Replication`]) are cheap clones that talk to the task through
//! channels, so they work from any task or thread.
//!
//! ```
//! use peerpouch::MemoryStore;
//! use peerpouch_smol::{HubSpec, InProcessHub, PeerConfig, PeerNode, ReplicateOptions, ShareConfig};
//! use serde_json::json;
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! smol::block_on(async {
//!     let hub = InProcessHub::new();
//!     // Both on loopback here; `PeerNode::start` listens on every interface.
//!     let local = |hub| PeerConfig::new(hub).bind("127.0.0.1:0".parse().unwrap());
//!     let alice = PeerNode::start_with(local(HubSpec::InProcess(hub.clone())))?;
//!     let bob = PeerNode::start_with(local(HubSpec::InProcess(hub)))?;
//!
//!     // Alice shares a database.
//!     let notes = alice.add_db("notes", MemoryStore::new("notes")).await?;
//!     notes.put(json!({"_id": "hello", "text": "from alice"})).await?;
//!     let share = alice.share(&notes, ShareConfig::new().name("alice's notes")).await?;
//!
//!     // Bob finds it, opens it and pulls it into his own database.
//!     let listed = bob.shares().await?;
//!     assert!(listed.iter().any(|s| s.id == share));
//!     let remote = bob.open("alice's notes", json!({"name": "bob"})).await?;
//!     assert_eq!(remote.get("hello").await?["text"], "from alice");
//!     let mine = bob.add_db("copy", MemoryStore::new("copy")).await?;
//!     let progress = bob.replicate(&remote, &mine, ReplicateOptions::default()).await?
//!         .finished().await?;
//!     assert_eq!(progress.docs_written, 1);
//!     assert_eq!(mine.get("hello").await?["text"], "from alice");
//!
//!     alice.shutdown().await;
//!     bob.shutdown().await;
//!     Ok(())
//! })
//! # }
//! ```
//!
//! [`Node`]: peerpouch::node::Node

mod db;
mod driver;
mod hub;

use std::net::SocketAddr;
use std::sync::Arc;

use async_channel::{Receiver, Sender};
use peerpouch::hub::{ShareInfo, ShareOptions};
use peerpouch::node::{Node, NodeConfig, NodeError, ShareAccess};
use peerpouch::reach::{IceServer, IceTransportPolicy, ResolvedIceServer};
use peerpouch::replicate::{Progress, ReplicationError, ReplicationEvent, ReplicatorConfig};
use peerpouch::session::LinkPath;
use peerpouch::{Database, DbError};
use serde_json::Value;

pub use db::{Db, DbKind, Subscription};
use driver::{Command, Driver, Slot, Target};
pub use hub::{HubSpec, InProcessHub};

/// What went wrong in a [`PeerNode`] operation, and what to do about it.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PeerError {
    /// The UDP socket could not be set up: check the bind address.
    #[error("the node's socket: {0}")]
    Socket(String),
    /// The hub is unreachable or its URL is wrong: check the URL and that the server runs.
    #[error("hub: {0}")]
    Hub(peerpouch_couch::Error),
    /// The hub refused a request (a share document could not be written, say).
    #[error("the hub refused: {0}")]
    HubRequest(DbError),
    /// A CouchDB database URL is wrong or the server is unreachable.
    #[error("database: {0}")]
    Http(peerpouch_couch::Error),
    /// No share on the hub has this id or name: list them with [`PeerNode::shares`].
    #[error("no share {0:?} on the hub")]
    UnknownShare(String),
    /// Several shares have this name: open one by its id.
    #[error("{count} shares are named {name:?}: open one by id ({ids})", ids = .ids.join(", "))]
    AmbiguousShare {
        /// The name.
        name: String,
        /// How many.
        count: usize,
        /// Their ids.
        ids: Vec<String>,
    },
    /// The sharer refused us (its reason, if it gave one).
    #[error("the sharer refused the connection{}", .0.as_ref().map(|r| format!(": {r}")).unwrap_or_default())]
    Refused(Option<String>),
    /// The sharer sent nothing back within the answer timeout
    /// ([`PeerConfig::answer_timeout`]): its process probably died and its share document
    /// waits to expire.
    #[error(
        "the sharer is not answering (its share may be stale): no answer to our offer within {waited:?}; check that the sharer still runs, or wait until its share leaves the list of shares"
    )]
    NotAnswering {
        /// How long we waited.
        waited: std::time::Duration,
    },
    /// The sharer asks a person before letting peers in, and nobody accepted us within the
    /// approval timeout ([`PeerConfig::approval_timeout`]).
    #[error(
        "not accepted in time: the sharer did not accept us within {waited:?}; ask them to answer their prompt, or wait longer (a longer approval timeout)"
    )]
    NotAccepted {
        /// How long we waited.
        waited: std::time::Duration,
    },
    /// The peer link could not be set up or closed before it was ready (no route to the
    /// sharer, the sharer is gone, wrong access key, ...).
    #[error("the link to the sharer failed: {0}")]
    LinkFailed(String),
    /// The node has no database by this name: add it with [`PeerNode::add_db`].
    #[error("no database {0:?} on this node")]
    UnknownDb(String),
    /// A [`Db`] of another node: replicate or share with the node it came from.
    #[error("{0} belongs to another node")]
    ForeignDb(String),
    /// Only local databases can be shared.
    #[error("only a local database can be shared, not {0}")]
    NotLocal(String),
    /// From the node machine.
    #[error(transparent)]
    Node(NodeError),
    /// The node stopped (shut down, or its task was dropped).
    #[error("the node has stopped")]
    Stopped,
    /// An ICE server URL is malformed or lacks credentials.
    #[error("ICE server: {0}")]
    IceServer(peerpouch::reach::IceServerError),
    /// An ICE server's host name did not resolve: check the name and the DNS.
    #[error("ICE server {url}: cannot resolve its host: {error}")]
    IceServerUnresolved {
        /// The URL (without credentials).
        url: String,
        /// The resolver's answer.
        error: String,
    },
}

/// A peer asking to connect to one of our shares (see [`ShareConfig::ask`]).
#[derive(Clone, Debug, PartialEq)]
pub struct PeerRequest {
    /// Our share.
    pub share: String,
    /// The peer's id (fresh per connection).
    pub peer: String,
    /// What the peer says about itself (its `info`).
    pub info: Value,
    /// The peer's certificate fingerprint (canonical, `sha-256 AB:CD:...`): who it is, stable
    /// across its runs when it keeps an [`Identity`](crate::Identity). Checked by the DTLS
    /// handshake: an accepted link whose peer shows another certificate is closed. `None` only
    /// when its offer names none.
    pub fingerprint: Option<String>,
}

/// An answer to a [`PeerRequest`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Let it in.
    Accept,
    /// Turn it away, optionally saying why (the peer sees the reason).
    Refuse(Option<String>),
}

/// A share appearing or going, from [`PeerNode::watch_shares`].
#[derive(Clone, Debug, PartialEq)]
pub enum ShareChange {
    /// A share appeared.
    Added(ShareInfo),
    /// A share went away (unshared or expired), by id.
    Removed(String),
}

/// A peer link coming up or going, from [`PeerNode::watch_links`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum LinkEvent {
    /// A share we are opening asks a person before letting peers in: we wait for them to
    /// accept, up to [`PeerConfig::approval_timeout`].
    AwaitingApproval {
        /// The share.
        share: String,
        /// Our peer id.
        peer: String,
        /// How long we wait at most.
        timeout: std::time::Duration,
    },
    /// The link's channel is open and the RPC hellos checked out.
    Ready {
        /// The share.
        share: String,
        /// The connecting peer's id.
        peer: String,
        /// We are the sharer (a peer connected to us), not the one who opened it.
        ours: bool,
        /// The path ICE selected: direct or relayed, and the candidate types.
        path: Option<LinkPath>,
        /// The other side's certificate fingerprint (canonical).
        fingerprint: Option<String>,
    },
    /// The link closed.
    Closed {
        /// The share.
        share: String,
        /// The connecting peer's id.
        peer: String,
        /// Why.
        reason: String,
    },
}

/// How to share a database: [`PeerNode::share`].
#[derive(Clone, Default)]
pub struct ShareConfig {
    options: ShareOptions,
    key: Option<Vec<u8>>,
    decide: Option<driver::Decider>,
    max_links: Option<usize>,
}

impl std::fmt::Debug for ShareConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareConfig")
            .field("options", &self.options)
            .field("key", &self.key.as_ref().map(|_| "<secret>"))
            .field("ask", &self.decide.is_some())
            .field("max_links", &self.max_links)
            .finish()
    }
}

impl ShareConfig {
    /// Defaults: no name, empty info, writable, everyone accepted.
    pub fn new() -> ShareConfig {
        ShareConfig::default()
    }

    /// A name peers can find and open the share by.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.options.name = Some(name.into());
        self
    }

    /// Anything peers should see in the share list (JSON).
    pub fn info(mut self, info: Value) -> Self {
        self.options.info = info;
        self
    }

    /// Refuse writes from peers (they may still write `_local` checkpoint docs).
    pub fn read_only(mut self, yes: bool) -> Self {
        self.options.read_only = yes;
        self
    }

    /// Peers must prove they know `key` (given to them out of band) to use the share.
    pub fn key(mut self, key: impl Into<Vec<u8>>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Serve at most `n` peers at once (connecting, open or awaiting an answer); one more is
    /// refused with a reason that says the share is full. Without it, only the node's limit
    /// ([`NodeConfig::max_links`](peerpouch::node::NodeConfig::max_links)) applies.
    ///
    /// ```
    /// use peerpouch_smol::peer::ShareConfig;
    /// let config = ShareConfig::new().name("notes").max_links(50);
    /// # let _ = config;
    /// ```
    pub fn max_links(mut self, n: usize) -> Self {
        self.max_links = Some(n);
        self
    }

    /// Decide for each connecting peer. `decide` runs on a blocking thread, so it may block
    /// (ask a user on a terminal, say); other peers and calls go on meanwhile.
    pub fn ask(mut self, decide: impl Fn(&PeerRequest) -> Verdict + Send + Sync + 'static) -> Self {
        self.decide = Some(Arc::new(decide));
        self
    }
}

/// How to replicate: [`PeerNode::replicate`].
#[derive(Clone, Debug, Default)]
pub struct ReplicateOptions {
    /// Keep going: follow the source's changes until cancelled.
    pub live: bool,
    /// Only these documents.
    pub doc_ids: Option<Vec<String>>,
    /// Documents per batch (default: the replicator's).
    pub batch_size: Option<usize>,
}

impl ReplicateOptions {
    /// Live replication.
    pub fn live() -> ReplicateOptions {
        ReplicateOptions {
            live: true,
            ..Default::default()
        }
    }
}

/// Tuning of a [`PeerNode`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct PeerConfig {
    /// Where the hub is.
    pub hub: HubSpec,
    /// The UDP sockets' addresses (default every interface, `0.0.0.0:0` and `[::]:0`, as a
    /// browser gathers; a machine without IPv6 gets the IPv4 socket alone).
    pub bind: Vec<SocketAddr>,
    /// STUN and TURN servers, as a browser's `iceServers` (host names are resolved at start).
    pub ice_servers: Vec<IceServer>,
    /// [`IceTransportPolicy::Relay`]: offer peers relayed candidates only.
    pub ice_transport_policy: IceTransportPolicy,
    /// Offer these addresses as host candidates instead of the sockets' own (a 1:1 NAT or a
    /// port forward in front of the node: peers must send to the public address). Datagrams
    /// arriving on a socket count as sent to the announced address of their family.
    pub announce: Vec<SocketAddr>,
    /// The node machine's tuning.
    pub node: NodeConfig,
    /// Seeds ids and ICE credentials (default: from the OS).
    pub seed: Option<u64>,
    /// How the hub and CouchDB databases ([`PeerNode::http_db`]) are reached over HTTP(S):
    /// timeouts, and CAs trusted for `https://` besides the platform's (a private CA).
    pub http: peerpouch_couch::ClientConfig,
    /// The node's DTLS certificate: who it is to peers (default: a new one per node; see
    /// [`PeerConfig::identity`]).
    pub identity: Option<crate::Identity>,
}

impl PeerConfig {
    /// Defaults on `hub`.
    pub fn new(hub: HubSpec) -> PeerConfig {
        PeerConfig {
            hub,
            bind: crate::net::default_binds(),
            ice_servers: Vec::new(),
            ice_transport_policy: IceTransportPolicy::All,
            announce: Vec::new(),
            node: NodeConfig::default(),
            seed: None,
            http: peerpouch_couch::ClientConfig::default(),
            identity: None,
        }
    }

    /// Sets [`PeerConfig::http`], e.g. to trust a private CA for an `https://` hub.
    ///
    /// ```no_run
    /// use peerpouch_couch::{CaCerts, ClientConfig};
    /// use peerpouch_smol::{HubSpec, PeerConfig, PeerNode};
    ///
    /// let http = ClientConfig::default().ca_certs(CaCerts::from_pem_file("company-ca.pem")?);
    /// let hub = HubSpec::Couch("https://couch.internal:6984/hub".into());
    /// let node = PeerNode::start_with(PeerConfig::new(hub).http(http))?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn http(mut self, http: peerpouch_couch::ClientConfig) -> Self {
        self.http = http;
        self
    }

    /// Listens on `addr` alone (one UDP socket) instead of every interface.
    ///
    /// ```
    /// use peerpouch_smol::{HubSpec, InProcessHub, PeerConfig};
    /// let c = PeerConfig::new(HubSpec::InProcess(InProcessHub::new())).bind("127.0.0.1:0".parse().unwrap());
    /// assert_eq!(c.bind.len(), 1);
    /// ```
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.bind = vec![addr];
        self
    }

    /// Listens on each of `addrs` (one UDP socket each).
    ///
    /// ```
    /// use peerpouch_smol::{HubSpec, InProcessHub, PeerConfig};
    /// let c = PeerConfig::new(HubSpec::InProcess(InProcessHub::new()))
    ///     .bind_all(vec!["127.0.0.1:0".parse().unwrap(), "[::1]:0".parse().unwrap()]);
    /// assert_eq!(c.bind.len(), 2);
    /// ```
    pub fn bind_all(mut self, addrs: Vec<SocketAddr>) -> Self {
        self.bind = addrs;
        self
    }

    /// STUN and TURN servers in the `RTCIceServer` shape.
    ///
    /// ```
    /// use peerpouch::reach::IceServer;
    /// use peerpouch_smol::{HubSpec, InProcessHub, PeerConfig};
    /// let c = PeerConfig::new(HubSpec::InProcess(InProcessHub::new())).ice_servers(vec![
    ///     IceServer::new("stun:127.0.0.1:3478"),
    ///     IceServer::new("turn:127.0.0.1:3478?transport=tcp").credentials("peer", "secret"),
    /// ]);
    /// assert_eq!(c.ice_servers.len(), 2);
    /// ```
    pub fn ice_servers(mut self, servers: Vec<IceServer>) -> Self {
        self.ice_servers = servers;
        self
    }

    /// Offers `addrs` as the node's host candidates (see [`PeerConfig::announce`]).
    ///
    /// ```
    /// use peerpouch_smol::{HubSpec, InProcessHub, PeerConfig};
    /// let c = PeerConfig::new(HubSpec::InProcess(InProcessHub::new()))
    ///     .bind("10.0.0.5:4000".parse().unwrap())
    ///     .announce(vec!["203.0.113.7:4000".parse().unwrap()]);
    /// assert_eq!(c.announce.len(), 1);
    /// ```
    pub fn announce(mut self, addrs: Vec<SocketAddr>) -> Self {
        self.announce = addrs;
        self
    }

    /// Which candidates may leave the machine ([`IceTransportPolicy::Relay`]: TURN only).
    ///
    /// ```
    /// use peerpouch::reach::IceTransportPolicy;
    /// use peerpouch_smol::{HubSpec, InProcessHub, PeerConfig};
    /// let c = PeerConfig::new(HubSpec::InProcess(InProcessHub::new()))
    ///     .ice_transport_policy(IceTransportPolicy::Relay);
    /// assert_eq!(c.ice_transport_policy, IceTransportPolicy::Relay);
    /// ```
    pub fn ice_transport_policy(mut self, policy: IceTransportPolicy) -> Self {
        self.ice_transport_policy = policy;
        self
    }

    /// How long a share we open has to send its first signal (its answer, or word that a
    /// person is asked) before the open fails with [`PeerError::NotAnswering`] (default 5 s):
    /// a sharer that crashed is noticed this fast, not after the connect timeout.
    ///
    /// ```
    /// use std::time::Duration;
    /// use peerpouch_smol::{HubSpec, InProcessHub, PeerConfig};
    /// let c = PeerConfig::new(HubSpec::InProcess(InProcessHub::new()))
    ///     .answer_timeout(Duration::from_secs(15));
    /// assert_eq!(c.node.hub.answer_timeout, Duration::from_secs(15));
    /// ```
    pub fn answer_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.node.hub.answer_timeout = timeout;
        self
    }

    /// How long to wait for a sharer that asks a person (`ShareConfig::ask`) to accept us
    /// before the open fails with [`PeerError::NotAccepted`] (default 2 minutes).
    ///
    /// ```
    /// use std::time::Duration;
    /// use peerpouch_smol::{HubSpec, InProcessHub, PeerConfig};
    /// let c = PeerConfig::new(HubSpec::InProcess(InProcessHub::new()))
    ///     .approval_timeout(Duration::from_secs(600));
    /// assert_eq!(c.node.hub.approval_timeout, Duration::from_secs(600));
    /// ```
    pub fn approval_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.node.hub.approval_timeout = timeout;
        self
    }

    /// Sets the node machine's tuning.
    pub fn node(mut self, node: NodeConfig) -> Self {
        self.node = node;
        self
    }

    /// Uses `identity` (kept in a file with [`Identity::load_or_create`](crate::Identity::load_or_create))
    /// as the node's certificate on every link, so peers see the same fingerprint run after run.
    ///
    /// ```
    /// use peerpouch_smol::{HubSpec, Identity, InProcessHub, PeerConfig, PeerNode};
    /// let me = Identity::generate()?;
    /// let node = PeerNode::start_with(PeerConfig::new(HubSpec::InProcess(InProcessHub::new()))
    ///     .bind("127.0.0.1:0".parse().unwrap())
    ///     .identity(me.clone()))?;
    /// assert_eq!(node.fingerprint(), me.fingerprint());
    /// # Ok::<_, Box<dyn std::error::Error>>(())
    /// ```
    pub fn identity(mut self, identity: crate::Identity) -> Self {
        self.identity = Some(identity);
        self
    }

    /// Fixes the seed.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

/// A handle to a running node; clones share it. The node stops when [`PeerNode::shutdown`] is
/// called or every handle (and every [`Db`] of it) is dropped. See the [module docs](crate::peer).
#[derive(Clone, Debug)]
pub struct PeerNode {
    commands: Sender<Command>,
    addrs: Vec<SocketAddr>,
    hub: String,
    http: peerpouch_couch::ClientConfig,
    fingerprint: Arc<str>,
}

/// The node's task, for apps that run it on their own executor: [`PeerNode::with_driver`].
pub struct PeerDriver(Driver);

impl std::fmt::Debug for PeerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerDriver").finish_non_exhaustive()
    }
}

impl PeerDriver {
    /// Runs the node until it shuts down.
    pub async fn run(self) {
        self.0.run().await
    }
}

impl PeerNode {
    /// Starts a node with default settings on `hub`, its task on smol's global executor.
    ///
    /// # Errors
    /// [`PeerError::Socket`], or [`PeerError::Hub`] for a malformed hub URL (an unreachable hub
    /// shows in the first hub operation instead).
    pub fn start(hub: HubSpec) -> Result<PeerNode, PeerError> {
        PeerNode::start_with(PeerConfig::new(hub))
    }

    /// Starts a node, its task on smol's global executor.
    ///
    /// # Errors
    /// As [`PeerNode::start`].
    pub fn start_with(config: PeerConfig) -> Result<PeerNode, PeerError> {
        let (node, driver) = PeerNode::with_driver(config)?;
        smol::spawn(driver.run()).detach();
        Ok(node)
    }

    /// A node and its task, to run on an executor of the app's choice.
    ///
    /// # Errors
    /// As [`PeerNode::start`].
    pub fn with_driver(config: PeerConfig) -> Result<(PeerNode, PeerDriver), PeerError> {
        let defaults = config.bind == crate::net::default_binds();
        let mut sockets = crate::net::Sockets::bind(&config.bind, defaults)
            .map_err(|e| PeerError::Socket(e.to_string()))?;
        sockets.announce(&config.announce);
        let mut node_config = config.node;
        // One certificate for all of the node's links: its identity, or one made now (str0m
        // would make one per link, and the node would have no fingerprint to show).
        if let Some(id) = &config.identity {
            node_config.session.dtls_cert = Some(id.cert().clone());
        }
        if node_config.session.dtls_cert.is_none() {
            let made = crate::Identity::generate().map_err(|e| PeerError::Socket(e.to_string()))?;
            node_config.session.dtls_cert = Some(made.cert().clone());
        }
        let fingerprint: Arc<str> = node_config
            .session
            .dtls_cert
            .as_ref()
            .map(peerpouch::fingerprint::of_cert)
            .unwrap_or_default()
            .into();
        node_config.ice_servers = resolve_ice_servers(&config.ice_servers)?;
        node_config.ice_transport_policy = config.ice_transport_policy;
        let seed = match config.seed {
            Some(s) => s,
            None => {
                let mut b = [0u8; 8];
                getrandom::fill(&mut b).map_err(|e| PeerError::Socket(e.to_string()))?;
                u64::from_le_bytes(b)
            }
        };
        let mut node = Node::new(
            node_config,
            seed,
            std::time::Instant::now(),
            peerpouch_couch::wall_clock_ms(),
        );
        for a in sockets.candidates() {
            node.add_local_candidate(a);
        }
        let addrs = sockets.bound();
        let hub = config.hub.describe();
        let (tx, rx) = async_channel::bounded(driver::COMMAND_BACKLOG);
        let driver = Driver::new(node, sockets, config.hub, config.http.clone(), rx)?;
        Ok((
            PeerNode {
                commands: tx,
                addrs,
                hub,
                http: config.http,
                fingerprint,
            },
            PeerDriver(driver),
        ))
    }

    /// The node's (first) UDP address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addrs[0]
    }

    /// Every UDP address the node listens on.
    pub fn local_addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// The hub, described (credentials removed).
    pub fn hub(&self) -> &str {
        &self.hub
    }

    /// This node's certificate fingerprint (canonical, `sha-256 AB:CD:...`): what peers see
    /// and may remember.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    async fn ask<T>(&self, make: impl FnOnce(Sender<T>) -> Command) -> Result<T, PeerError> {
        let (tx, rx) = async_channel::bounded(1);
        self.commands
            .send(make(tx))
            .await
            .map_err(|_| PeerError::Stopped)?;
        rx.recv().await.map_err(|_| PeerError::Stopped)
    }

    /// Adds a local database (a `MemoryStore`, a SQLite store, any [`Database`]) under `name`
    /// and returns its handle. A database of the same name is replaced.
    ///
    /// # Errors
    /// [`PeerError::Stopped`].
    pub async fn add_db(
        &self,
        name: &str,
        mut db: impl Database + Send + 'static,
    ) -> Result<Db, PeerError> {
        // A store answers at once; its identity never changes while it is open.
        let uuid = db.info().ok().and_then(|i| i.db_uuid);
        self.add_slot(name, Slot::Inline(Box::new(db)), DbKind::Local, uuid)
            .await
    }

    /// A CouchDB database over HTTP(S) (`http://user:pass@host:5984/db`), usable as a source
    /// or target of replications and directly. Created if missing when `create` is set.
    /// Reached with [`PeerConfig::http`] (timeouts, a private CA).
    ///
    /// # Errors
    /// [`PeerError::Http`] for a bad URL or (with `create`) an unreachable server.
    pub async fn http_db(&self, url: &str, create: bool) -> Result<Db, PeerError> {
        let client = peerpouch_couch::CouchClient::with_config(url, self.http.clone())
            .map_err(PeerError::Http)?;
        let name = client.url().redacted().to_string();
        if create {
            let c = client.clone();
            smol::unblock(move || c.create_db(true))
                .await
                .map_err(PeerError::Http)?;
        }
        self.add_slot(&name, Slot::Http(Box::new(client)), DbKind::Http, None)
            .await
    }

    async fn add_slot(
        &self,
        name: &str,
        slot: Slot,
        kind: DbKind,
        uuid: Option<String>,
    ) -> Result<Db, PeerError> {
        self.commands
            .send(Command::AddDb {
                name: name.to_string(),
                slot,
                uuid: uuid.clone(),
            })
            .await
            .map_err(|_| PeerError::Stopped)?;
        let mut db = Db::new(self.clone(), Target::Local(name.to_string()), kind, name);
        db.uuid = uuid;
        Ok(db)
    }

    /// Shares a local database on the hub; returns the share id once the share document is on
    /// the hub.
    ///
    /// # Errors
    /// [`PeerError::NotLocal`], [`PeerError::UnknownDb`], [`PeerError::HubRequest`] when the
    /// hub refused the share document.
    pub async fn share(&self, db: &Db, config: ShareConfig) -> Result<String, PeerError> {
        self.own(db)?;
        let Target::Local(name) = db.target() else {
            return Err(PeerError::NotLocal(db.name().to_string()));
        };
        let access = ShareAccess {
            key: config.key,
            ask: config.decide.is_some(),
            max_links: config.max_links,
        };
        let name = name.clone();
        self.ask(|reply| Command::Share {
            db: name,
            options: config.options,
            access,
            decide: config.decide,
            reply,
        })
        .await?
    }

    /// Stops sharing: the share document is removed and the share's links close.
    ///
    /// # Errors
    /// [`PeerError::Node`] when this node has no such share.
    pub async fn unshare(&self, share: &str) -> Result<(), PeerError> {
        let share = share.to_string();
        self.ask(|reply| Command::Unshare { share, reply }).await?
    }

    /// The live shares of others on the hub.
    ///
    /// # Errors
    /// [`PeerError::Hub`] when the hub cannot be followed.
    pub async fn shares(&self) -> Result<Vec<ShareInfo>, PeerError> {
        self.ask(|reply| Command::List { reply }).await?
    }

    /// The shares on the hub and then those appearing and going, as a stream: first an
    /// `Added` for every share there, then changes as they happen, each share added once and
    /// removed once. A reader more than 1024 events behind is cut off (the stream ends).
    ///
    /// # Errors
    /// [`PeerError::Stopped`].
    pub async fn watch_shares(&self) -> Result<Receiver<ShareChange>, PeerError> {
        let (tx, rx) = async_channel::bounded(driver::WATCH_BACKLOG);
        self.commands
            .send(Command::Watch { events: tx })
            .await
            .map_err(|_| PeerError::Stopped)?;
        Ok(rx)
    }

    /// Links coming up and going from now on (peers connecting to our shares, shares we
    /// opened), as a stream. A reader more than 1024 events behind is cut off.
    ///
    /// # Errors
    /// [`PeerError::Stopped`].
    pub async fn watch_links(&self) -> Result<Receiver<LinkEvent>, PeerError> {
        let (tx, rx) = async_channel::bounded(driver::WATCH_BACKLOG);
        self.commands
            .send(Command::WatchLinks { events: tx })
            .await
            .map_err(|_| PeerError::Stopped)?;
        Ok(rx)
    }

    /// Finds a share by id or by name.
    ///
    /// # Errors
    /// [`PeerError::UnknownShare`], [`PeerError::AmbiguousShare`], or from [`PeerNode::shares`].
    pub async fn find_share(&self, share: &str) -> Result<ShareInfo, PeerError> {
        let all = self.shares().await?;
        if let Some(s) = all.iter().find(|s| s.id == share) {
            return Ok(s.clone());
        }
        let named: Vec<&ShareInfo> = all
            .iter()
            .filter(|s| s.name.as_deref() == Some(share))
            .collect();
        match named.as_slice() {
            [] => Err(PeerError::UnknownShare(share.to_string())),
            [one] => Ok((*one).clone()),
            many => Err(PeerError::AmbiguousShare {
                name: share.to_string(),
                count: many.len(),
                ids: many.iter().map(|s| s.id.clone()).collect(),
            }),
        }
    }

    /// Opens a share (by id or name) and returns its database once the link is ready.
    /// `info` is what the sharer sees about us.
    ///
    /// While a sharer that asks a person decides, [`PeerNode::watch_links`] reports
    /// [`LinkEvent::AwaitingApproval`].
    ///
    /// # Errors
    /// [`PeerError::UnknownShare`], [`PeerError::Refused`], [`PeerError::NotAnswering`] (the
    /// sharer is gone), [`PeerError::NotAccepted`], [`PeerError::LinkFailed`].
    pub async fn open(&self, share: &str, info: Value) -> Result<Db, PeerError> {
        self.open_with_key(share, info, None).await
    }

    /// [`PeerNode::open`] for a share that requires an access key.
    ///
    /// # Errors
    /// As [`PeerNode::open`].
    pub async fn open_with_key(
        &self,
        share: &str,
        info: Value,
        key: Option<Vec<u8>>,
    ) -> Result<Db, PeerError> {
        let found = self.find_share(share).await?;
        let id = found.id.clone();
        let (link, path, fingerprint, uuid) = self
            .ask(|reply| Command::Open {
                share: id,
                info,
                key,
                reply,
            })
            .await??;
        let name = found.name.unwrap_or_else(|| found.id.clone());
        let mut db = Db::new(self.clone(), Target::Remote(link), DbKind::Remote, &name);
        db.path = path;
        db.fingerprint = fingerprint;
        db.uuid = uuid;
        Ok(db)
    }

    /// Starts replicating `source` into `target` (any two databases of this node: local,
    /// remote or HTTP). Await [`Replication::finished`], or read its events.
    ///
    /// # Errors
    /// [`PeerError::ForeignDb`] for a database of another node, [`PeerError::Stopped`].
    pub async fn replicate(
        &self,
        source: &Db,
        target: &Db,
        options: ReplicateOptions,
    ) -> Result<Replication, PeerError> {
        self.own(source)?;
        self.own(target)?;
        let mut config =
            ReplicatorConfig::new(source.replication_name(), target.replication_name())
                .live(options.live);
        config.doc_ids = options.doc_ids;
        if let Some(b) = options.batch_size {
            config.batch_size = b.max(1);
        }
        let (events, rx) = async_channel::bounded(64);
        let (source, target) = (source.target().clone(), target.target().clone());
        let id = self
            .ask(|reply| Command::Replicate {
                source,
                target,
                config,
                events,
                reply,
            })
            .await?;
        Ok(Replication {
            id,
            events: rx,
            commands: self.commands.clone(),
            last: Progress::default(),
        })
    }

    fn own(&self, db: &Db) -> Result<(), PeerError> {
        if db.node().commands.same_channel(&self.commands) {
            Ok(())
        } else {
            Err(PeerError::ForeignDb(db.name().to_string()))
        }
    }

    /// What the node's task holds right now: to watch that an app's subscriptions and
    /// replications come and go as it expects (and memory with them).
    ///
    /// ```
    /// # smol::block_on(async {
    /// use peerpouch_smol::{HubSpec, InProcessHub, PeerNode};
    ///
    /// let node = PeerNode::start(HubSpec::InProcess(InProcessHub::new())).unwrap();
    /// node.add_db("notes", peerpouch::MemoryStore::new("notes")).await.unwrap();
    /// let stats = node.stats().await.unwrap();
    /// assert_eq!((stats.databases, stats.waiting_longpolls), (1, 0));
    /// node.shutdown().await;
    /// # });
    /// ```
    ///
    /// # Errors
    /// [`PeerError::Stopped`].
    pub async fn stats(&self) -> Result<PeerStats, PeerError> {
        self.ask(|reply| Command::Stats { reply }).await
    }

    /// Unshares every share, closes every link, stops the node's task and closes (drops) the
    /// databases added with [`PeerNode::add_db`] before it returns.
    pub async fn shutdown(&self) {
        let _ = self.ask(|reply| Command::Shutdown { reply }).await;
    }
}

/// What a node's task holds ([`PeerNode::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerStats {
    /// Databases added ([`PeerNode::add_db`], [`PeerNode::http_db`]).
    pub databases: usize,
    /// Live changes feeds of remote databases this node reads ([`Db::subscribe`]).
    pub remote_subscriptions: usize,
    /// Longpoll `changes` requests on local databases waiting for a change (one per live local
    /// subscription or longpoll call).
    pub waiting_longpolls: usize,
    /// Replications running.
    pub replications: usize,
    /// Links kept: to our shares and to others', connecting or open, and peers waiting for an
    /// answer (what [`NodeConfig::max_links`](peerpouch::node::NodeConfig::max_links) bounds).
    pub links: usize,
    /// Bytes this node received from the network since it started: its links' datagrams
    /// (DTLS, SCTP, STUN) and what TURN servers sent over TCP. What a transfer moves, for
    /// progress on large attachments, whose documents count only once they are whole.
    pub bytes_received: u64,
    /// Bytes this node sent to the network since it started.
    pub bytes_sent: u64,
}

/// A running replication: its events, its progress, its end. Dropping it does not stop it;
/// [`Replication::cancel`] does.
#[derive(Debug)]
pub struct Replication {
    id: peerpouch::node::ReplicationId,
    events: Receiver<ReplicationEvent>,
    commands: Sender<Command>,
    last: Progress,
}

/// How a replication ended, when not by completing.
#[derive(Clone, Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicateError {
    /// It failed; `progress` is how far it got (what was written stays written).
    #[error("replication failed: {error}")]
    Failed {
        /// Why.
        error: ReplicationError,
        /// How far it got.
        progress: Progress,
    },
    /// [`Replication::cancel`] stopped it.
    #[error("replication cancelled")]
    Cancelled(Progress),
    /// The node stopped under it.
    #[error("the node stopped during the replication")]
    Stopped(Progress),
}

impl Replication {
    /// The next event (started, progressed, caught up, and the last: completed, failed or
    /// cancelled); `None` after the last.
    pub async fn next_event(&mut self) -> Option<ReplicationEvent> {
        let e = self.events.recv().await.ok()?;
        match &e {
            ReplicationEvent::Progressed(p)
            | ReplicationEvent::CaughtUp(p)
            | ReplicationEvent::Completed(p)
            | ReplicationEvent::Cancelled(p) => self.last = p.clone(),
            ReplicationEvent::Failed { progress, .. } => self.last = progress.clone(),
            _ => {}
        }
        Some(e)
    }

    /// The latest progress seen through [`Replication::next_event`].
    pub fn progress(&self) -> &Progress {
        &self.last
    }

    /// Asks the replication to stop; its last event is `Cancelled`.
    pub async fn cancel(&self) {
        let _ = self
            .commands
            .send(Command::CancelReplication { id: self.id })
            .await;
    }

    /// Waits for the end of a one-shot replication (a live one ends only when cancelled).
    ///
    /// # Errors
    /// [`ReplicateError`].
    pub async fn finished(mut self) -> Result<Progress, ReplicateError> {
        while let Some(e) = self.next_event().await {
            match e {
                ReplicationEvent::Completed(p) => return Ok(p),
                ReplicationEvent::Failed { error, progress } => {
                    return Err(ReplicateError::Failed { error, progress });
                }
                ReplicationEvent::Cancelled(p) => return Err(ReplicateError::Cancelled(p)),
                _ => {}
            }
        }
        Err(ReplicateError::Stopped(self.last))
    }
}

/// Parses every ICE server URL and resolves its host (a literal address needs no lookup).
fn resolve_ice_servers(servers: &[IceServer]) -> Result<Vec<ResolvedIceServer>, PeerError> {
    let mut out = Vec::new();
    for server in servers {
        for url in server.parse().map_err(PeerError::IceServer)? {
            let addr = match url.ip_addr() {
                Some(a) => a,
                None => {
                    use std::net::ToSocketAddrs;
                    let found = (url.host.as_str(), url.port)
                        .to_socket_addrs()
                        .map_err(|e| PeerError::IceServerUnresolved {
                            url: url.to_string(),
                            error: e.to_string(),
                        })?
                        .next();
                    found.ok_or_else(|| PeerError::IceServerUnresolved {
                        url: url.to_string(),
                        error: "no address".into(),
                    })?
                }
            };
            out.push(url.resolved(addr));
        }
    }
    Ok(out)
}
