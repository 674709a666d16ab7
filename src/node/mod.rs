//! The composite machine an app drives: hub negotiation, WebRTC sessions, the RPC and replications,
//! keyed by ids.
//!
//! A [`Node`] owns a [`Hub`] negotiator, one [`Session`](crate::session::Session) per peer link
//! with an [`RpcServer`](crate::rpc::RpcServer) (for links to our shares) or an
//! [`RpcClient`](crate::rpc::RpcClient) (for links we opened), and the
//! [`Replicator`](crate::replicate::Replicator)s the app started. It never touches a database
//! itself: work for a local database goes out as a [`StoreRequest`] naming a [`DbId`] and comes
//! back through [`Node::handle_store_result`], so the app's store (in memory, on disk, a CouchDB
//! over HTTP) plugs in unchanged.
//!
//! ## Inputs, outputs and the drain rule
//! - Commands: [`Node::share`], [`Node::unshare`], [`Node::list`], [`Node::watch`], [`Node::open`],
//!   [`Node::accept`], [`Node::refuse`], [`Node::call`], [`Node::subscribe`],
//!   [`Node::cancel_call`], [`Node::replicate`], [`Node::cancel_replication`], [`Node::close`],
//!   [`Node::add_local_candidate`].
//! - Inputs: [`Node::handle_datagram`], [`Node::handle_hub_response`], [`Node::handle_feed`],
//!   [`Node::handle_store_result`], [`Node::handle_db_changed`], [`Node::handle_timeout`].
//! - Outputs: [`Node::poll_transmit`], [`Node::poll_hub_action`], [`Node::poll_store_request`],
//!   [`Node::poll_event`], [`Node::poll_timeout`].
//!
//! After every input or command, drain every `poll_*` until `None`.
//!
//! A driver holds a `changes` store request with [`Feed::Longpoll`] whose `since` is current until
//! the database changes (or its `timeout_ms` passes), then executes it; live replications and
//! remote longpolls wait that way.
//!
//! ## Where each job lives
//! - this file: the composite, its inputs and outputs, and the pump that moves work between the
//!   parts;
//! - `link`: link bookkeeping (sessions, their RPC, close) and per-link pumping; `link_rpc`: the
//!   RPC end of a link, server or client, as one type;
//! - `replications`: replications and where their requests go (a local store or a link);
//! - `sharing`: our shares and the peers asking for them (hub events into links);
//! - `ice`: STUN and TURN servers and the candidates they give;
//! - `store`: work for local databases, and where each result goes back;
//! - `config`, `events`: the public tuning, events and errors.

mod config;
mod events;
mod ice;
mod link;
mod link_rpc;
mod replications;
mod sharing;
mod store;

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Bound;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::DbError;
use crate::hub::{Hub, HubAction};
use crate::ops::*;
use crate::rand::SeededRng;
use crate::reach::gather::Gatherer;
use crate::reach::{ClientConfig as IceClientConfig, Transport};
use crate::replicate::RequestId;
use crate::route::{DispatchStats, Router};
use crate::session::Transmit;

pub use config::{NodeConfig, ShareAccess, DEFAULT_MAX_LINKS};
pub use events::{NodeError, NodeEvent, NOT_ACCEPTED, NOT_ANSWERING};
pub use link::Footprint;
use link::Link;
use replications::Rep;
use store::StoreOrigin;
pub use store::StoreRequest;

/// How long a node without links or shares keeps its TURN allocations before giving them
/// back.
pub const ICE_IDLE_RELEASE: Duration = Duration::from_secs(30);

/// Names a local database the app owns (in memory, on disk, over HTTP).
pub type DbId = String;

/// Names a link. Both ends name it alike: by the share it is to and the peer id of the node
/// that opened it (the joiner), so the sharer's links to one share differ by `peer`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId {
    /// The share id (`share-…`).
    pub share: String,
    /// The joiner's peer id (`peer-…`).
    pub peer: String,
}

impl LinkId {
    /// The link of `peer` to `share`.
    pub fn new(share: impl Into<String>, peer: impl Into<String>) -> LinkId {
        LinkId {
            share: share.into(),
            peer: peer.into(),
        }
    }
}

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} on {}", self.peer, self.share)
    }
}

/// Identifies a replication.
pub type ReplicationId = u64;
/// Identifies a store request; its result comes back with it.
pub type StoreRequestId = u64;

/// One side of a replication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DbRef {
    /// A local database.
    Local(DbId),
    /// The database behind a link we opened.
    Remote(LinkId),
}

struct OwnShare {
    db: DbId,
    access: ShareAccess,
    read_only: bool,
}

/// The composite machine. See the [module docs](self).
pub struct Node {
    config: NodeConfig,
    rng: SeededRng,
    hub: Hub,
    addrs: Vec<SocketAddr>,
    /// The ICE servers at work, and what they gave: candidates for every new link.
    gatherer: Gatherer,
    srflx: Vec<(SocketAddr, SocketAddr)>,
    relays: Vec<(SocketAddr, SocketAddr, Transport)>,
    /// Since when the node has had no link while its ICE servers were at work.
    ice_idle_since: Option<Instant>,
    shares: BTreeMap<String, OwnShare>,
    /// Identities of local databases, sent in the hello of links to their shares.
    db_uuids: BTreeMap<DbId, String>,
    links: BTreeMap<LinkId, Link>,
    /// Which link each received datagram belongs to (ICE ufrag, address pair).
    router: Router<LinkId>,
    reps: BTreeMap<ReplicationId, Rep>,
    next_rep: ReplicationId,
    store_out: VecDeque<StoreRequest>,
    store_for: BTreeMap<StoreRequestId, StoreOrigin>,
    next_store: StoreRequestId,
    transmits: VecDeque<Transmit>,
    events: VecDeque<NodeEvent>,
    links_created: u64,
    /// Peers of `ask` shares whose offer has not arrived yet (their info): asked once it has.
    awaiting_offer: BTreeMap<LinkId, Value>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("shares", &self.shares.len())
            .field("links", &self.links.len())
            .field("replications", &self.reps.len())
            .finish_non_exhaustive()
    }
}

impl Node {
    /// A node. `seed` makes ids and ICE credentials; `wall_clock_ms` is the wall clock at `now`.
    pub fn new(config: NodeConfig, seed: u64, now: Instant, wall_clock_ms: u64) -> Node {
        let mut rng = SeededRng::new(seed);
        let hub = Hub::new(config.hub.clone(), rng.next_u64(), now, wall_clock_ms);
        let gatherer = Gatherer::new(
            config.ice_servers.clone(),
            IceClientConfig::default(),
            rng.next_u64(),
        );
        Node {
            config,
            rng,
            hub,
            addrs: Vec::new(),
            gatherer,
            srflx: Vec::new(),
            relays: Vec::new(),
            ice_idle_since: None,
            shares: BTreeMap::new(),
            db_uuids: BTreeMap::new(),
            links: BTreeMap::new(),
            router: Router::new(),
            reps: BTreeMap::new(),
            next_rep: 1,
            store_out: VecDeque::new(),
            store_for: BTreeMap::new(),
            next_store: 1,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            links_created: 0,
            awaiting_offer: BTreeMap::new(),
        }
    }

    /// Our certificate fingerprint when the runtime gave the certificate
    /// ([`SessionConfig::dtls_cert`](crate::session::SessionConfig::dtls_cert)); without one,
    /// each session makes its own and there is no stable fingerprint.
    pub fn fingerprint(&self) -> Option<String> {
        self.config
            .session
            .dtls_cert
            .as_ref()
            .map(crate::fingerprint::of_cert)
    }

    /// The hub negotiator (diagnostics, instance id for drivers).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Tells the node local database `db`'s identity ([`crate::DbInfo::db_uuid`]): links to
    /// its shares opened from now on carry it in their hello, and joiners name the database by
    /// it in replication ids, so their checkpoints survive a new share id (this node
    /// restarting) and hold under any share name. Without it the hello has none and joiners
    /// fall back to the share id.
    ///
    /// # Errors
    /// [`NodeError::InvalidDbUuid`] when `uuid` is not one ([`crate::is_valid_db_uuid`]); the
    /// node is unchanged.
    pub fn set_db_uuid(
        &mut self,
        db: impl Into<DbId>,
        uuid: impl Into<String>,
    ) -> Result<(), NodeError> {
        let uuid = uuid.into();
        if !crate::is_valid_db_uuid(&uuid) {
            return Err(NodeError::InvalidDbUuid(uuid));
        }
        self.db_uuids.insert(db.into(), uuid);
        Ok(())
    }

    /// Feeds a datagram received on the runtime's socket.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) {
        if self.gatherer.is_server(source) {
            self.gatherer.handle_datagram(now, source, contents);
            self.pump(now);
            return;
        }
        self.deliver(now, source, destination, contents);
        self.pump(now);
    }

    /// How received datagrams were routed to links so far: how many, and how many sessions
    /// each was offered to (see [`crate::route`]).
    ///
    /// ```
    /// # use peerpouch::node::{Node, NodeConfig};
    /// # let node = Node::new(NodeConfig::default(), 1, std::time::Instant::now(), 0);
    /// let s = node.dispatch_stats();
    /// assert_eq!(s.offered - s.offered_to_one, 0); // no datagram asked several sessions yet
    /// ```
    pub fn dispatch_stats(&self) -> DispatchStats {
        self.router.stats()
    }

    /// Feeds the result of a hub request.
    ///
    /// # Errors
    /// [`HubError::UnknownRequest`](crate::hub::HubError::UnknownRequest) when the node never
    /// issued request `id`; the node is unchanged.
    pub fn handle_hub_response(
        &mut self,
        now: Instant,
        id: RequestId,
        result: Result<Response, DbError>,
    ) -> Result<(), NodeError> {
        let answered = self.hub.handle_response(now, id, result);
        self.pump(now);
        Ok(answered?)
    }

    /// Feeds rows of the hub's changes feed.
    pub fn handle_feed(&mut self, now: Instant, rows: Vec<ChangeRow>) {
        self.hub.handle_feed(now, rows);
        self.pump(now);
    }

    /// Runs what is due at `now`. Harmless early.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.hub.handle_timeout(now);
        self.gatherer.handle_timeout(now);
        for l in self.links.values_mut() {
            l.handle_timeout(now);
        }
        for r in self.reps.values_mut() {
            if r.machine.poll_timeout().is_some_and(|t| t <= now) {
                r.machine.handle_timeout(now);
            }
        }
        self.pump(now);
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next hub action.
    pub fn poll_hub_action(&mut self) -> Option<HubAction> {
        self.hub.poll_action()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        [
            self.hub.poll_timeout(),
            self.gatherer.poll_timeout(),
            self.ice_idle_since.map(|t| t + ICE_IDLE_RELEASE),
        ]
        .into_iter()
        .chain(self.links.values().flat_map(Link::poll_timeouts))
        .chain(self.reps.values().map(|r| r.machine.poll_timeout()))
        .flatten()
        .min()
    }

    /// Moves everything that can move, until nothing does.
    fn pump(&mut self, now: Instant) {
        for _ in 0..1000 {
            let mut moved = false;
            moved |= self.pump_gatherer(now);
            moved |= self.pump_hub(now);
            // Links in key order, as of when each is reached; a link with nothing to take or
            // send is skipped (pumping it would do nothing), which spares cloning its key.
            let mut last: Option<LinkId> = None;
            loop {
                let next = match &last {
                    None => self.links.iter().find(|(_, l)| l.has_work()),
                    Some(k) => self
                        .links
                        .range::<LinkId, _>((Bound::Excluded(k), Bound::Unbounded))
                        .find(|(_, l)| l.has_work()),
                };
                let Some(k) = next.map(|(k, _)| k.clone()) else {
                    break;
                };
                moved |= self.pump_link(now, &k);
                last = Some(k);
            }
            moved |= self.pump_replications(now);
            if !moved {
                break;
            }
        }
        // Forget links that are closed and drained.
        let router = &mut self.router;
        self.links.retain(|k, l| {
            let gone = l.closed && l.session.is_closed() && l.session.poll_timeout().is_none();
            if gone {
                router.forget(k);
            }
            !gone
        });
        // No link and no share left: give the TURN allocations back once nothing needed them
        // for a while (a new allocation right after releasing the old one on the same address
        // races the server's cleanup: 437). A sharer keeps them while it shares.
        if self.links.is_empty() && self.shares.is_empty() && self.gatherer.is_started() {
            let idle = *self.ice_idle_since.get_or_insert(now);
            if now >= idle + ICE_IDLE_RELEASE {
                self.release_ice_servers(now);
            }
        } else {
            self.ice_idle_since = None;
        }
    }
}
