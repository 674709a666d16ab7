//! The composite machine an app drives: hub negotiation, WebRTC sessions, the RPC and
//! replications, keyed by ids.
//!
//! A [`Node`] owns a [`Hub`] negotiator, one [`Session`] per peer link with an [`RpcServer`] (for
//! links to our shares) or an [`RpcClient`] (for links we opened), and the [`Replicator`]s the
//! app started. It never touches a database itself: work for a local database goes out as a
//! [`StoreRequest`] naming a [`DbId`] and comes back through [`Node::handle_store_result`], so
//! the app's store (in memory, on disk, a CouchDB over HTTP) plugs in unchanged.
//!
//! ## Inputs, outputs and the drain rule
//! - Commands: [`Node::share`], [`Node::unshare`], [`Node::list`], [`Node::watch`],
//!   [`Node::open`], [`Node::accept`], [`Node::refuse`], [`Node::call`], [`Node::subscribe`],
//!   [`Node::cancel_call`], [`Node::replicate`], [`Node::cancel_replication`], [`Node::close`],
//!   [`Node::add_local_candidate`].
//! - Inputs: [`Node::handle_datagram`], [`Node::handle_hub_response`], [`Node::handle_feed`],
//!   [`Node::handle_store_result`], [`Node::handle_db_changed`], [`Node::handle_timeout`].
//! - Outputs: [`Node::poll_transmit`], [`Node::poll_hub_action`], [`Node::poll_store_request`],
//!   [`Node::poll_event`], [`Node::poll_timeout`].
//!
//! After every input or command, drain every `poll_*` until `None`.
//!
//! A driver holds a `changes` store request with [`Feed::Longpoll`] whose `since` is current
//! until the database changes (or its `timeout_ms` passes), then executes it; live replications
//! and remote longpolls wait that way.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Bound;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::error::DbError;
use crate::hub::{Hub, HubAction, HubConfig, HubError, HubEvent, ShareOptions, SignalData};
use crate::ops::*;
use crate::rand::SeededRng;
use crate::reach::gather::{GatherEvent, Gatherer};
use crate::reach::{
    ClientConfig as IceClientConfig, IceTransportPolicy, ResolvedIceServer, Transport,
};
use crate::replicate::{Endpoint, ReplicationEvent, Replicator, ReplicatorConfig, RequestId};
use crate::route::{DispatchStats, Router};
use crate::rpc::{
    CallId, ClientConfig, ClientEvent, RpcClient, RpcError, RpcServer, ServerConfig, ServerEvent,
};
use crate::session::{
    CloseReason, LinkPath, Session, SessionConfig, SessionEvent, SessionRole, Transmit,
};

/// How long a node without links or shares keeps its TURN allocations before giving them
/// back.
pub const ICE_IDLE_RELEASE: Duration = Duration::from_secs(30);

/// Names a local database the app owns (in memory, on disk, over HTTP).
pub type DbId = String;
/// A link: (share id, peer id).
pub type LinkId = (String, String);
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

/// Work for a local database.
#[derive(Clone, Debug, PartialEq)]
pub struct StoreRequest {
    /// Give this back with the result.
    pub id: StoreRequestId,
    /// Which database.
    pub db: DbId,
    /// What to execute.
    pub request: Request,
}

/// Who may connect to a share, and how.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShareAccess {
    /// Peers must prove this key (given to them out of band).
    pub key: Option<Vec<u8>>,
    /// Ask the app ([`NodeEvent::PeerRequested`]) instead of accepting every peer.
    pub ask: bool,
    /// Peers this share serves at once at most (links connecting, open or awaiting a
    /// person's answer); one more is refused with a reason that says so. `None`: only the
    /// node's [`NodeConfig::max_links`] bounds them.
    pub max_links: Option<usize>,
}

/// Tuning of a node.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct NodeConfig {
    /// The hub negotiator's.
    pub hub: HubConfig,
    /// Each session's.
    pub session: SessionConfig,
    /// How long the RPC waits for the other side's hello once the channel is open.
    pub rpc_hello_timeout: Duration,
    /// How long a remote call may go without progress.
    pub rpc_request_timeout: Duration,
    /// Offer zstd compression of RPC messages on every link (on by default; see
    /// [`ClientConfig::compress`]). Turn it off only to measure or debug: it costs little CPU
    /// and saves the data channel most of its work for batches of documents.
    pub rpc_compress: bool,
    /// STUN and TURN servers (resolved by the runtime): server-reflexive and relayed
    /// candidates for every link, as a browser's `iceServers`.
    pub ice_servers: Vec<ResolvedIceServer>,
    /// [`IceTransportPolicy::Relay`] offers peers relayed candidates only, as a browser's
    /// `iceTransportPolicy: "relay"`.
    pub ice_transport_policy: IceTransportPolicy,
    /// Links the node keeps at once at most, to its shares and to others' (connecting, open,
    /// or awaiting a person's answer): a peer asking beyond it is refused with a reason that
    /// says so (and opening one more share fails with [`NodeError::TooManyLinks`]). Each link
    /// holds its session's buffers and its RPC window, so this bounds the node's memory.
    pub max_links: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            hub: HubConfig::default(),
            session: SessionConfig::default(),
            rpc_hello_timeout: Duration::from_secs(30),
            rpc_request_timeout: Duration::from_secs(60),
            rpc_compress: true,
            ice_servers: Vec::new(),
            ice_transport_policy: IceTransportPolicy::All,
            max_links: DEFAULT_MAX_LINKS,
        }
    }
}

/// [`NodeConfig::max_links`]'s default: a classroom or a team, with room to spare.
pub const DEFAULT_MAX_LINKS: usize = 512;

/// What a node reports.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A hub event not handled by the node itself (listing, watching, share lifecycle, errors).
    Hub(HubEvent),
    /// A peer asks to connect to a share with `ask` access: call [`Node::accept`] or
    /// [`Node::refuse`].
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
    /// A link we opened waits for the sharer to accept it (the sharer asks a person); it
    /// gives up after [`HubConfig::approval_timeout`] with [`NodeEvent::NotAccepted`].
    AwaitingApproval {
        /// The link.
        link: LinkId,
        /// How long it waits at most ([`HubConfig::approval_timeout`]).
        timeout: Duration,
    },
    /// A link we opened got no answer from the sharer within [`HubConfig::answer_timeout`]:
    /// the share is probably stale (its sharer crashed). [`NodeEvent::LinkClosed`] follows.
    NotAnswering {
        /// The link.
        link: LinkId,
        /// How long it waited.
        waited: Duration,
    },
    /// The sharer of a link we opened did not accept it within
    /// [`HubConfig::approval_timeout`]. [`NodeEvent::LinkClosed`] follows.
    NotAccepted {
        /// The link.
        link: LinkId,
        /// How long it waited.
        waited: Duration,
    },
    /// The result of [`Node::call`].
    CallResult {
        /// The link.
        link: LinkId,
        /// The call.
        call: CallId,
        /// The result.
        result: Result<Response, DbError>,
    },
    /// A batch of a [`Node::subscribe`] subscription.
    Changes {
        /// The link.
        link: LinkId,
        /// The subscription.
        call: CallId,
        /// The rows.
        changes: ChangesResponse,
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
    #[error("no link {0:?} that this node opened")]
    UnknownLink(LinkId),
    /// No such replication.
    #[error("no replication {0}")]
    UnknownReplication(ReplicationId),
    /// From the RPC.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// [`Node::set_db_uuid`] with something that is not a database identity.
    #[error(
        "invalid database uuid {0:?}: use 1 to 128 visible ASCII characters, such as 32 hex digits"
    )]
    InvalidDbUuid(String),
    /// [`Node::open`] with [`NodeConfig::max_links`] links already kept: close one first, or
    /// raise the limit.
    #[error(
        "this node keeps {0} links, its limit (max_links): close one first or raise the limit"
    )]
    TooManyLinks(usize),
}

struct OwnShare {
    db: DbId,
    access: ShareAccess,
    read_only: bool,
}

enum Rpc {
    Server(RpcServer),
    Client(RpcClient),
}

struct Link {
    session: Session,
    rpc: Option<Rpc>,
    db: Option<DbId>,
    key: Option<Vec<u8>>,
    ready: bool,
    closed: bool,
    /// Calls the app made, and calls replications made (by replication and request id).
    rep_calls: BTreeMap<CallId, (ReplicationId, RequestId)>,
    /// Creation order: when several sessions accept a datagram, the newest gets it (a peer
    /// that restarted on the same address replaces its old, dead session).
    created: u64,
    /// The fingerprint the app accepted this peer on: a handshake with another certificate
    /// (a later offer in the same signalling) closes the link.
    pinned: Option<String>,
}

impl Link {
    /// Whether [`Node::pump_link`] would find anything to move.
    fn has_work(&self) -> bool {
        self.session.has_output()
            || match &self.rpc {
                Some(Rpc::Server(s)) => s.has_output(),
                Some(Rpc::Client(c)) => c.has_output(),
                None => false,
            }
    }
}

struct Rep {
    machine: Replicator,
    source: DbRef,
    target: DbRef,
}

#[derive(Clone, Copy)]
enum StoreFor {
    Server(u64),
    Replication(ReplicationId, RequestId),
}

/// Entries a [`Node`] keeps per link, peer or request ([`Node::footprint`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Footprint {
    /// Links, closed ones not yet dropped included.
    pub links: usize,
    /// Datagram routes (ICE ufrags, address pairs) to links.
    pub routes: usize,
    /// Signalling connections the hub machine keeps (peers of our shares, shares we open).
    pub connections: usize,
    /// Peers of `ask` shares whose offer has not arrived.
    pub awaiting_offer: usize,
    /// Store requests queued or awaiting their result.
    pub store_requests: usize,
    /// Datagrams and events not yet polled.
    pub queued: usize,
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
    store_for: BTreeMap<StoreRequestId, (LinkId, StoreFor)>,
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

const NO_LINK: (String, String) = (String::new(), String::new());

/// The close reason of a link whose sharer never answered.
pub const NOT_ANSWERING: &str = "the sharer is not answering (its share may be stale)";
/// The close reason of a link whose sharer did not accept in time.
pub const NOT_ACCEPTED: &str = "not accepted in time";

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

    /// The certificate fingerprint of the peer on `link` (canonical), once its SDP is known.
    pub fn remote_fingerprint(&mut self, link: &LinkId) -> Option<String> {
        let l = self.links.get_mut(link)?;
        crate::fingerprint::parse(&l.session.remote_fingerprint()?).ok()
    }

    /// The hub negotiator (diagnostics, instance id for drivers).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Links and whether each is ready.
    pub fn links(&self) -> Vec<(LinkId, bool)> {
        self.links
            .iter()
            .filter(|(_, l)| !l.closed)
            .map(|(k, l)| (k.clone(), l.ready))
            .collect()
    }

    /// The ids of this node's own shares (not yet unshared).
    pub fn own_shares(&self) -> Vec<String> {
        self.shares.keys().cloned().collect()
    }

    /// A local address new sessions offer as a host candidate (the runtime's socket).
    pub fn add_local_candidate(&mut self, addr: SocketAddr) {
        if !self.addrs.contains(&addr) {
            self.addrs.push(addr);
        }
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

    /// The identity of the database behind a link we opened, as its server's hello gave it
    /// (`None` before the link is ready, for an older sharer, or for links to our shares).
    pub fn link_db_uuid(&self, link: &LinkId) -> Option<&str> {
        match self.links.get(link)?.rpc.as_ref()? {
            Rpc::Client(c) => c.server_hello()?.db_uuid.as_deref(),
            Rpc::Server(_) => None,
        }
    }

    /// Shares local database `db` on the hub; returns the share id. The share document carries
    /// our certificate fingerprint ([`Node::fingerprint`]) unless `options` names one.
    pub fn share(
        &mut self,
        now: Instant,
        db: DbId,
        options: ShareOptions,
        access: ShareAccess,
    ) -> String {
        let read_only = options.read_only;
        let mut options = options;
        // Published with the share, so people can tell who shares before they open it.
        if options.fingerprint.is_none() {
            options.fingerprint = self.fingerprint();
        }
        let id = self.hub.share(now, options);
        self.shares.insert(
            id.clone(),
            OwnShare {
                db,
                access,
                read_only,
            },
        );
        self.pump(now);
        id
    }

    /// Stops sharing; its links close.
    ///
    /// # Errors
    /// [`HubError::NotShared`].
    pub fn unshare(&mut self, now: Instant, share: &str) -> Result<(), NodeError> {
        self.hub.unshare(now, share)?;
        self.shares.remove(share);
        let links: Vec<LinkId> = self
            .links
            .keys()
            .filter(|k| k.0 == share)
            .cloned()
            .collect();
        for l in links {
            self.close_link(now, &l, "unshared".into());
        }
        self.pump(now);
        Ok(())
    }

    /// Lists the shares on the hub ([`HubEvent::SharesListed`] follows).
    pub fn list(&mut self, now: Instant) {
        self.hub.list(now);
        self.pump(now);
    }

    /// Follows shares appearing and going.
    pub fn watch(&mut self, now: Instant, on: bool) {
        self.hub.watch(now, on);
        self.pump(now);
    }

    /// Opens a link to `share`; [`NodeEvent::LinkReady`] follows when it can be used.
    ///
    /// # Errors
    /// [`HubError::BadId`] for a malformed share id.
    pub fn open(
        &mut self,
        now: Instant,
        share: &str,
        info: Value,
        key: Option<Vec<u8>>,
    ) -> Result<LinkId, NodeError> {
        if self.links_kept(None, None) >= self.config.max_links {
            return Err(NodeError::TooManyLinks(self.config.max_links));
        }
        let peer = self.hub.open(now, share, info)?;
        let link = (share.to_string(), peer);
        self.add_link(now, link.clone(), SessionRole::Offerer, None, key);
        self.pump(now);
        Ok(link)
    }

    /// Lets a requesting peer in (shares with `ask` access).
    ///
    /// # Errors
    /// From the hub negotiator.
    pub fn accept(&mut self, now: Instant, link: &LinkId) -> Result<(), NodeError> {
        self.start_serving(now, link)?;
        self.pump(now);
        Ok(())
    }

    /// Refuses a requesting peer, optionally telling it why.
    ///
    /// # Errors
    /// From the hub negotiator.
    pub fn refuse(
        &mut self,
        now: Instant,
        link: &LinkId,
        reason: Option<String>,
    ) -> Result<(), NodeError> {
        self.hub.refuse(now, &link.0, &link.1, reason)?;
        self.awaiting_offer.remove(link);
        self.pump(now);
        Ok(())
    }

    /// Calls the database behind a link we opened; [`NodeEvent::CallResult`] follows.
    ///
    /// # Errors
    /// [`NodeError::UnknownLink`].
    pub fn call(
        &mut self,
        now: Instant,
        link: &LinkId,
        request: Request,
    ) -> Result<CallId, NodeError> {
        let client = self.client_mut(link)?;
        let id = client.call(now, request);
        self.pump(now);
        Ok(id)
    }

    /// Subscribes to the live changes of the database behind a link.
    ///
    /// # Errors
    /// [`NodeError::UnknownLink`].
    pub fn subscribe(
        &mut self,
        now: Instant,
        link: &LinkId,
        request: ChangesRequest,
    ) -> Result<CallId, NodeError> {
        let id = self.client_mut(link)?.subscribe(now, request);
        self.pump(now);
        Ok(id)
    }

    /// Cancels a call or subscription.
    ///
    /// # Errors
    /// [`NodeError::UnknownLink`], [`RpcError::UnknownCall`].
    pub fn cancel_call(
        &mut self,
        now: Instant,
        link: &LinkId,
        call: CallId,
    ) -> Result<(), NodeError> {
        self.client_mut(link)?.cancel(now, call)?;
        self.pump(now);
        Ok(())
    }

    fn client_mut(&mut self, link: &LinkId) -> Result<&mut RpcClient, NodeError> {
        match self.links.get_mut(link).and_then(|l| l.rpc.as_mut()) {
            Some(Rpc::Client(c)) => Ok(c),
            _ => Err(NodeError::UnknownLink(link.clone())),
        }
    }

    /// Starts a replication between two databases; [`NodeEvent::Replication`] events follow.
    pub fn replicate(
        &mut self,
        now: Instant,
        source: DbRef,
        target: DbRef,
        config: ReplicatorConfig,
    ) -> ReplicationId {
        let id = self.next_rep;
        self.next_rep += 1;
        let mut machine = Replicator::new(config, self.rng.next_u64());
        // A link that closed (or never was) will not come back: fail now rather than retrying.
        for (endpoint, side) in [
            (crate::replicate::Endpoint::Source, &source),
            (crate::replicate::Endpoint::Target, &target),
        ] {
            if let DbRef::Remote(link) = side {
                if self.links.get(link).is_none_or(|l| l.closed) {
                    machine.endpoint_lost(
                        endpoint,
                        format!(
                            "no link to share {} (peer {}): closed or never opened",
                            link.0, link.1
                        ),
                    );
                }
            }
        }
        self.reps.insert(
            id,
            Rep {
                machine,
                source,
                target,
            },
        );
        self.pump(now);
        id
    }

    /// Stops a replication ([`ReplicationEvent::Cancelled`] follows).
    ///
    /// # Errors
    /// [`NodeError::UnknownReplication`].
    pub fn cancel_replication(&mut self, now: Instant, id: ReplicationId) -> Result<(), NodeError> {
        self.reps
            .get_mut(&id)
            .ok_or(NodeError::UnknownReplication(id))?
            .machine
            .cancel();
        self.pump(now);
        Ok(())
    }

    /// Closes a link.
    pub fn close(&mut self, now: Instant, link: &LinkId) {
        self.close_link(now, link, "closed by the app".into());
        self.pump(now);
    }

    fn close_link(&mut self, now: Instant, link: &LinkId, reason: String) {
        if let Some(l) = self.links.get_mut(link) {
            if !l.closed {
                l.session.close(now);
            }
        }
        self.link_closed(now, link, reason);
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

    /// Bytes from the runtime's TCP stream to `server` (a TURN server reached over TCP).
    pub fn handle_stream_data(&mut self, now: Instant, server: SocketAddr, bytes: &[u8]) {
        self.gatherer.handle_stream_data(now, server, bytes);
        self.pump(now);
    }

    /// The runtime's TCP stream to `server` could not connect, or closed.
    pub fn handle_stream_closed(&mut self, now: Instant, server: SocketAddr, why: String) {
        self.gatherer.handle_stream_closed(now, server, why);
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

    /// Where each ICE server stands (for the user: which answered, which failed and why).
    pub fn ice_servers(&self) -> Vec<crate::reach::gather::ServerReport> {
        self.gatherer.reports()
    }

    /// Gives a datagram to the session it belongs to.
    fn deliver(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) {
        // By the maps, else the newest accepting session (a peer that restarted on the same
        // address): see `crate::route`.
        let target = self.router.dispatch(
            source,
            destination,
            contents,
            &self.links,
            |l| l.created,
            |l| l.session.accepts(source, destination, contents),
        );
        if let Some(k) = target {
            if let Some(l) = self.links.get_mut(&k) {
                l.session
                    .handle_datagram(now, source, destination, contents);
            }
        }
    }

    /// Feeds the result of a hub request.
    pub fn handle_hub_response(
        &mut self,
        now: Instant,
        id: RequestId,
        result: Result<Response, DbError>,
    ) {
        let _ = self.hub.handle_response(now, id, result);
        self.pump(now);
    }

    /// Feeds rows of the hub's changes feed.
    pub fn handle_feed(&mut self, now: Instant, rows: Vec<ChangeRow>) {
        self.hub.handle_feed(now, rows);
        self.pump(now);
    }

    /// Whether the node still waits for the result of store request `id`: not once the link
    /// or the replication that asked is gone. A runtime that holds requests back (a longpoll
    /// waiting for a change) drops those the node no longer waits for, so a crowd of live
    /// followers that left leaves nothing behind.
    pub fn awaits_store_result(&self, id: StoreRequestId) -> bool {
        self.store_for.contains_key(&id)
    }

    /// Feeds the result of a store request.
    pub fn handle_store_result(
        &mut self,
        now: Instant,
        id: StoreRequestId,
        result: Result<Response, DbError>,
    ) {
        if let Some((link, what)) = self.store_for.remove(&id) {
            match what {
                StoreFor::Server(sid) => {
                    if let Some(Rpc::Server(s)) =
                        self.links.get_mut(&link).and_then(|l| l.rpc.as_mut())
                    {
                        s.handle_store_result(now, sid, result);
                    }
                }
                StoreFor::Replication(rep, rid) => {
                    if let Some(r) = self.reps.get_mut(&rep) {
                        let _ = r.machine.handle_response(now, rid, result);
                    }
                }
            }
        }
        self.pump(now);
    }

    /// A local database changed (the app wrote, or a replication did): live subscriptions of
    /// peers on shares of it catch up.
    pub fn handle_db_changed(&mut self, now: Instant, db: &str) {
        for l in self.links.values_mut() {
            if l.db.as_deref() == Some(db) {
                if let Some(Rpc::Server(s)) = l.rpc.as_mut() {
                    s.handle_db_changed(now);
                }
            }
        }
        self.pump(now);
    }

    /// Runs what is due at `now`. Harmless early.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.hub.handle_timeout(now);
        self.gatherer.handle_timeout(now);
        for l in self.links.values_mut() {
            if l.session.poll_timeout().is_some_and(|t| t <= now) {
                l.session.handle_timeout(now);
            }
            match l.rpc.as_mut() {
                Some(Rpc::Server(s)) => s.handle_timeout(now),
                Some(Rpc::Client(c)) => c.handle_timeout(now),
                None => {}
            }
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

    /// The next store request.
    pub fn poll_store_request(&mut self) -> Option<StoreRequest> {
        self.store_out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<NodeEvent> {
        self.events.pop_front()
    }

    /// When [`Node::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.hub.poll_timeout();
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t: Instant| t.min(x)));
            }
        };
        consider(self.gatherer.poll_timeout());
        consider(self.ice_idle_since.map(|t| t + ICE_IDLE_RELEASE));
        for l in self.links.values() {
            consider(l.session.poll_timeout());
            consider(match &l.rpc {
                Some(Rpc::Server(s)) => s.poll_timeout(),
                Some(Rpc::Client(c)) => c.poll_timeout(),
                None => None,
            });
        }
        for r in self.reps.values() {
            consider(r.machine.poll_timeout());
        }
        t
    }

    fn start_serving(&mut self, now: Instant, link: &LinkId) -> Result<(), NodeError> {
        let Some(share) = self.shares.get(&link.0) else {
            return Err(NodeError::Hub(HubError::NotShared(link.0.clone())));
        };
        let db = share.db.clone();
        let key = share.access.key.clone();
        let pinned = if share.access.ask {
            self.hub
                .pending_offer(&link.0, &link.1)
                .and_then(crate::fingerprint::from_sdp)
        } else {
            None
        };
        self.hub.accept(now, &link.0, &link.1)?;
        self.awaiting_offer.remove(link);
        self.add_link(now, link.clone(), SessionRole::Answerer, Some(db), key);
        if let Some(l) = self.links.get_mut(link) {
            l.pinned = pinned;
        }
        Ok(())
    }

    /// What the node keeps per link, peer and request in flight: all zero on a node with no
    /// link, replication or request left, however many peers came and went before.
    pub fn footprint(&self) -> Footprint {
        Footprint {
            links: self.links.len(),
            routes: self.router.stats().routes as usize,
            connections: self.hub.connection_count(),
            awaiting_offer: self.awaiting_offer.len(),
            store_requests: self.store_out.len() + self.store_for.len(),
            queued: self.transmits.len() + self.events.len(),
        }
    }

    /// Links kept now, to our shares and to others' (connecting or open, and peers waiting
    /// for an answer): what [`NodeConfig::max_links`] bounds.
    pub fn link_count(&self) -> usize {
        self.links_kept(None, None)
    }

    /// Links kept now: connecting or open (not yet closed), and peers waiting for an answer
    /// (`but` not counted: the one asking now), all of them or `share`'s only.
    fn links_kept(&self, share: Option<&str>, but: Option<&LinkId>) -> usize {
        let of = |s: &str| share.is_none_or(|share| s == share);
        let links = self
            .links
            .iter()
            .filter(|(k, l)| !l.closed && of(&k.0))
            .count();
        let waiting = self
            .hub
            .pending_peers()
            .filter(|(s, p)| of(s) && but.is_none_or(|b| (b.0.as_str(), b.1.as_str()) != (*s, *p)))
            .count();
        links + waiting
    }

    /// Why `link`, a peer asking for one of our shares, would be one too many, if it would.
    fn full(&self, link: &LinkId) -> Option<String> {
        let kept = self.links_kept(None, Some(link));
        if kept >= self.config.max_links {
            return Some(format!(
                "the sharer is at its limit of {} links (max_links): try again later",
                self.config.max_links
            ));
        }
        let max = self.shares.get(&link.0)?.access.max_links?;
        let serving = self.links_kept(Some(&link.0), Some(link));
        (serving >= max).then(|| {
            format!("the share is full ({serving} of {max} peers, max_links): try again later")
        })
    }

    /// A new link with its session (offering our host candidates); its RPC starts when the
    /// channel opens.
    fn add_link(
        &mut self,
        now: Instant,
        link: LinkId,
        role: SessionRole,
        db: Option<DbId>,
        key: Option<Vec<u8>>,
    ) {
        let seed = self.rng.next_u64();
        let mut session = Session::new(role, self.config.session.clone(), seed, now);
        let all = self.config.ice_transport_policy == IceTransportPolicy::All;
        if all {
            for a in &self.addrs {
                if let Err(e) = session.add_local_candidate(now, *a) {
                    tracing::debug!(addr = %a, error = %e, "host candidate refused");
                }
            }
            for (addr, base) in &self.srflx {
                if let Err(e) = session.add_srflx_candidate(now, *addr, *base) {
                    tracing::debug!(%addr, error = %e, "srflx candidate refused");
                }
            }
        }
        for (addr, base, transport) in &self.relays {
            if let Err(e) = session.add_relay_candidate(now, *addr, *base, *transport) {
                tracing::debug!(%addr, error = %e, "relay candidate refused");
            }
        }
        // The first link starts the ICE servers; later ones get what they found.
        self.gatherer.start(now, &self.addrs);
        self.links_created += 1;
        self.router
            .register_ufrag(link.clone(), session.ice_ufrag(), self.links_created);
        self.links.insert(
            link,
            Link {
                session,
                rpc: None,
                db,
                key,
                ready: false,
                closed: false,
                rep_calls: BTreeMap::new(),
                created: self.links_created,
                pinned: None,
            },
        );
    }

    fn link_closed(&mut self, now: Instant, link: &LinkId, reason: String) {
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        if l.closed {
            return;
        }
        l.closed = true;
        match l.rpc.as_mut() {
            Some(Rpc::Server(s)) => s.handle_link_closed(now),
            Some(Rpc::Client(c)) => c.handle_link_closed(now),
            None => {}
        }
        self.hub.close(now, &link.0, &link.1);
        // Its store requests' results have no one to go to (a runtime drops the longpolls it
        // holds back for them: [`Node::awaits_store_result`]).
        self.store_for
            .retain(|_, (l, w)| !(l == link && matches!(w, StoreFor::Server(_))));
        self.fail_replications_on(link, &reason);
        self.events.push_back(NodeEvent::LinkClosed {
            link: link.clone(),
            reason,
        });
    }

    /// Ends the replications that read or write through `link` at once: it closed for good (a
    /// new link to the same share is a new endpoint). A live replication waiting on its local
    /// side would otherwise not notice until its next write, and every replication would first
    /// wait out its retry policy.
    fn fail_replications_on(&mut self, link: &LinkId, why: &str) {
        for rep in self.reps.values_mut() {
            let Rep {
                machine,
                source,
                target,
            } = rep;
            for (endpoint, side) in [
                (crate::replicate::Endpoint::Source, &*source),
                (crate::replicate::Endpoint::Target, &*target),
            ] {
                if matches!(side, DbRef::Remote(l) if l == link) {
                    machine.endpoint_lost(
                        endpoint,
                        format!(
                            "the link to share {} (peer {}) closed: {why}",
                            link.0, link.1
                        ),
                    );
                }
            }
        }
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

    /// Gives back every TURN allocation now (a runtime shutting down calls it; otherwise a
    /// node does it [`ICE_IDLE_RELEASE`] after its last link closed).
    pub fn release_ice_servers(&mut self, now: Instant) {
        self.gatherer.release(now);
        self.srflx.clear();
        self.relays.clear();
        self.ice_idle_since = None;
        while let Some(t) = self.gatherer.poll_transmit() {
            self.transmits.push_back(t);
        }
    }

    /// Moves the ICE servers' output: datagrams to the servers, candidates to the sessions,
    /// relayed datagrams to the session they are for.
    fn pump_gatherer(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while let Some(t) = self.gatherer.poll_transmit() {
            moved = true;
            self.transmits.push_back(t);
        }
        let all = self.config.ice_transport_policy == IceTransportPolicy::All;
        while let Some(e) = self.gatherer.poll_event() {
            moved = true;
            match e {
                GatherEvent::Srflx { addr, base } => {
                    if self.srflx.contains(&(addr, base)) {
                        continue;
                    }
                    self.srflx.push((addr, base));
                    if all {
                        for l in self.links.values_mut().filter(|l| !l.closed) {
                            if let Err(e) = l.session.add_srflx_candidate(now, addr, base) {
                                tracing::debug!(%addr, error = %e, "srflx candidate refused");
                            }
                        }
                    }
                }
                GatherEvent::Relay {
                    addr,
                    base,
                    transport,
                } => {
                    self.relays.push((addr, base, transport));
                    for l in self.links.values_mut().filter(|l| !l.closed) {
                        if let Err(e) = l.session.add_relay_candidate(now, addr, base, transport) {
                            tracing::debug!(%addr, error = %e, "relay candidate refused");
                        }
                    }
                }
                GatherEvent::Relayed { peer, relay, data } => {
                    self.deliver(now, peer, relay, &data);
                }
                GatherEvent::Failed { lost_relay, .. } => {
                    if let Some(r) = lost_relay {
                        self.relays.retain(|(a, _, _)| *a != r);
                    }
                    // Relay-only and no relay will ever come: links still connecting fail now,
                    // with the servers' reasons, instead of at the connect timeout.
                    if !all {
                        if let Some(why) = self.gatherer.all_relays_failed() {
                            let connecting: Vec<LinkId> = self
                                .links
                                .iter()
                                .filter(|(_, l)| !l.closed && !l.session.is_open())
                                .map(|(k, _)| k.clone())
                                .collect();
                            for k in connecting {
                                self.close_link(
                                    now,
                                    &k,
                                    format!("no relay for a relay-only link: {why}"),
                                );
                            }
                        }
                    }
                }
            }
        }
        moved
    }

    /// Why a link found no path: what each side gathered and what the ICE servers said.
    fn no_path_reason(&self, link: &LinkId) -> String {
        let mut s = String::from("no path to the peer (ICE found no working candidate pair)");
        if let Some(l) = self.links.get(link) {
            let g = l.session.gathered();
            s.push_str(&format!(
                "; we offered host {}, srflx {}, relay {}; the peer offered host {}, srflx {}, relay {}",
                g.local_host, g.local_srflx, g.local_relay, g.remote_host, g.remote_srflx, g.remote_relay
            ));
        }
        let reports = self.gatherer.reports();
        if reports.is_empty() {
            s.push_str("; no ICE servers were given");
        } else {
            let said: Vec<String> = reports.iter().map(|r| r.to_string()).collect();
            s.push_str(&format!("; {}", said.join("; ")));
        }
        if !reports.iter().any(|r| {
            matches!(
                r.state,
                crate::reach::gather::ServerState::Answered { relay: Some(_), .. }
            )
        }) {
            s.push_str(
                "; behind NATs that map each destination differently only a relay works: \
                 add a TURN server (--ice-server turn:HOST:3478?transport=udp, or \
                 ?transport=tcp where UDP is blocked)",
            );
        }
        s
    }

    fn pump_hub(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while let Some(e) = self.hub.poll_event() {
            moved = true;
            match e {
                HubEvent::PeerRequested { share, peer, info } => {
                    let link = (share.clone(), peer);
                    let ask = self.shares.get(&share).is_some_and(|s| s.access.ask);
                    if let Some(full) = self.full(&link) {
                        tracing::info!(share = %link.0, peer = %link.1, "{full}: refused");
                        if let Err(e) = self.hub.refuse(now, &link.0, &link.1, Some(full)) {
                            tracing::debug!(error = %e, "could not refuse a peer");
                        }
                    } else if ask {
                        // The peer learns that a person decides, and waits for it; the person
                        // is asked once its offer (and so its fingerprint) is in: below.
                        if let Err(e) = self.hub.defer(now, &link.0, &link.1) {
                            tracing::debug!(error = %e, "could not tell a peer to wait");
                        }
                        self.awaiting_offer.insert(link, info);
                    } else if let Err(e) = self.start_serving(now, &link) {
                        tracing::warn!(error = %e, "could not accept a peer");
                    }
                }
                HubEvent::Signal { share, peer, data } => {
                    // A peer's candidate: let it through our relays before its first check.
                    if let SignalData::Candidate(Some(c)) = &data {
                        if let Some(addr) = candidate_addr(&c.candidate) {
                            self.gatherer.permit(now, addr);
                        }
                    }
                    let link = (share, peer);
                    if let Some(l) = self.links.get_mut(&link) {
                        if let Err(e) = l.session.handle_signal(now, data) {
                            tracing::debug!(error = %e, "signal refused by the session");
                        }
                    }
                }
                HubEvent::Refused {
                    share,
                    peer,
                    reason,
                } => {
                    let link = (share, peer);
                    self.events.push_back(NodeEvent::Refused {
                        link: link.clone(),
                        reason,
                    });
                    self.close_link(now, &link, "refused".into());
                }
                HubEvent::ConnectionClosed { share, peer } => {
                    self.close_link(now, &(share, peer), "unshared".into());
                }
                HubEvent::AwaitingApproval { share, peer } => {
                    let link = (share, peer);
                    // The approval timeout bounds the wait now, not the connect timeout.
                    if let Some(l) = self.links.get_mut(&link) {
                        l.session.pause_connect_timeout();
                        self.events.push_back(NodeEvent::AwaitingApproval {
                            link,
                            timeout: self.config.hub.approval_timeout,
                        });
                    }
                }
                HubEvent::Accepted { share, peer } => {
                    if let Some(l) = self.links.get_mut(&(share, peer)) {
                        l.session.restart_connect_timeout(now);
                    }
                }
                HubEvent::NotAnswering {
                    share,
                    peer,
                    waited,
                } => {
                    let link = (share, peer);
                    if self.links.contains_key(&link) {
                        self.events.push_back(NodeEvent::NotAnswering {
                            link: link.clone(),
                            waited,
                        });
                        self.close_link(now, &link, NOT_ANSWERING.into());
                    }
                }
                HubEvent::NotAccepted {
                    share,
                    peer,
                    waited,
                } => {
                    let link = (share, peer);
                    if self.links.contains_key(&link) {
                        self.events.push_back(NodeEvent::NotAccepted {
                            link: link.clone(),
                            waited,
                        });
                        self.close_link(now, &link, NOT_ACCEPTED.into());
                    }
                }
                other => self.events.push_back(NodeEvent::Hub(other)),
            }
        }
        if !self.awaiting_offer.is_empty() {
            let waiting: Vec<LinkId> = self.awaiting_offer.keys().cloned().collect();
            for link in waiting {
                let offer = self.hub.pending_offer(&link.0, &link.1);
                if offer.is_none() && self.hub.is_pending(&link.0, &link.1) {
                    continue;
                }
                let fingerprint = offer.and_then(crate::fingerprint::from_sdp);
                let Some(info) = self.awaiting_offer.remove(&link) else {
                    continue;
                };
                if offer.is_some() {
                    moved = true;
                    self.events.push_back(NodeEvent::PeerRequested {
                        link,
                        info,
                        fingerprint,
                    });
                }
            }
        }
        moved
    }

    fn pump_link(&mut self, now: Instant, k: &LinkId) -> bool {
        let mut moved = false;
        let mut signals: Vec<SignalData> = Vec::new();
        let mut closed: Option<String> = None;
        let mut store_reqs = Vec::new();
        let mut client_events = Vec::new();
        let mut became_ready = false;
        let mut no_path = false;
        {
            let Some(l) = self.links.get_mut(k) else {
                return false;
            };
            // A new handshake draws new ICE credentials: its checks route by the new ufrag.
            if !self.router.has_ufrag(k, l.session.ice_ufrag()) {
                self.router
                    .register_ufrag(k.clone(), l.session.ice_ufrag(), l.created);
            }
            while let Some(s) = l.session.poll_signal() {
                signals.push(s);
            }
            while let Some(t) = l.session.poll_transmit() {
                moved = true;
                if self.gatherer.is_relay(t.source) {
                    self.gatherer
                        .send_via_relay(now, t.source, t.destination, &t.contents);
                } else {
                    self.transmits.push_back(t);
                }
            }
            while let Some(e) = l.session.poll_event() {
                moved = true;
                match e {
                    SessionEvent::ChannelOpened => {
                        let local = l.session.local_fingerprint();
                        let remote = l.session.remote_fingerprint().unwrap_or_default();
                        if let Some(pinned) = &l.pinned {
                            if crate::fingerprint::parse(&remote).ok().as_ref() != Some(pinned) {
                                closed.get_or_insert(format!(
                                    "the peer's certificate ({remote}) is not the one accepted \
                                     ({pinned})"
                                ));
                                continue;
                            }
                        }
                        // Frames as large as the channel takes, but at most half the send queue:
                        // with one frame in flight the sender idles until the peer's delayed SACK
                        // (up to 200 ms) for its last packet; with two it keeps streaming. The
                        // hellos settle on the smaller of both sides' offers.
                        let frame = l
                            .session
                            .max_message_size()
                            .min(self.config.session.send_buffer / 2);
                        l.rpc = Some(match &l.db {
                            Some(_) => {
                                let mut c = ServerConfig::new(k.0.clone(), local, remote);
                                c.access_key = l.key.clone();
                                c.hello_timeout = self.config.rpc_hello_timeout;
                                c.read_only = self.shares.get(&k.0).is_some_and(|s| s.read_only);
                                c.frame_size = frame;
                                c.compress = self.config.rpc_compress;
                                c.db_uuid =
                                    l.db.as_ref().and_then(|d| self.db_uuids.get(d)).cloned();
                                Rpc::Server(RpcServer::new(c, now))
                            }
                            None => {
                                let mut c =
                                    ClientConfig::new(k.0.clone(), k.1.clone(), local, remote);
                                c.access_key = l.key.clone();
                                c.hello_timeout = self.config.rpc_hello_timeout;
                                c.request_timeout = self.config.rpc_request_timeout;
                                c.frame_size = frame;
                                c.compress = self.config.rpc_compress;
                                Rpc::Client(RpcClient::new(c, now))
                            }
                        });
                    }
                    SessionEvent::Message { data, .. } => {
                        let r = match l.rpc.as_mut() {
                            Some(Rpc::Server(s)) => s.handle_frame(now, &data),
                            Some(Rpc::Client(c)) => c.handle_frame(now, &data),
                            None => Ok(()),
                        };
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "closing a link after a protocol error");
                            closed.get_or_insert(e.to_string());
                        }
                    }
                    SessionEvent::Closed(reason) => {
                        // Whatever gave up first (the connect timeout, or DTLS out of
                        // retries for a handshake that never reached the peer), a link whose
                        // ICE never connected found no path.
                        if matches!(reason, CloseReason::ConnectTimeout | CloseReason::Failed(_))
                            && !l.session.was_connected()
                        {
                            no_path = true;
                        }
                        let stall = self.config.session.send_stall_timeout;
                        closed.get_or_insert(match reason {
                            CloseReason::Failed(f) => format!("failed: {f}"),
                            CloseReason::PeerNotReading => format!(
                                "the peer took none of our data for {stall:?} (it stopped \
                                 reading, or the path drops large packets): cut off"
                            ),
                            r => format!("{r:?}"),
                        });
                    }
                    _ => {}
                }
            }
            // Frames out, as far as the channel takes them.
            if l.session.is_open() {
                loop {
                    let frame = match l.rpc.as_ref() {
                        Some(Rpc::Server(s)) => s.peek_frame(),
                        Some(Rpc::Client(c)) => c.peek_frame(),
                        None => None,
                    };
                    let Some(f) = frame else { break };
                    match l.session.send(now, true, f) {
                        Ok(true) => {
                            moved = true;
                            match l.rpc.as_mut() {
                                Some(Rpc::Server(s)) => s.advance_frame(),
                                Some(Rpc::Client(c)) => c.advance_frame(),
                                None => {}
                            }
                        }
                        Ok(false) => break,
                        Err(e) => {
                            closed.get_or_insert(format!("send failed: {e}"));
                            break;
                        }
                    }
                }
                while let Some(t) = l.session.poll_transmit() {
                    if self.gatherer.is_relay(t.source) {
                        self.gatherer
                            .send_via_relay(now, t.source, t.destination, &t.contents);
                    } else {
                        self.transmits.push_back(t);
                    }
                }
            }
            match l.rpc.as_mut() {
                Some(Rpc::Server(s)) => {
                    while let Some(r) = s.poll_store_request() {
                        store_reqs.push(r);
                    }
                    while let Some(e) = s.poll_event() {
                        moved = true;
                        match e {
                            ServerEvent::Ready { .. } => became_ready = true,
                            ServerEvent::Closed(e) => {
                                closed.get_or_insert(e.to_string());
                            }
                        }
                    }
                }
                Some(Rpc::Client(c)) => {
                    while let Some(e) = c.poll_event() {
                        moved = true;
                        // The client ended the link (the server's goodbye, say a 403 for a wrong
                        // key, or no hello in time): close it with that reason rather than
                        // leave the session up until the server's side goes.
                        if let ClientEvent::Closed(err) = &e {
                            closed.get_or_insert(err.to_string());
                        }
                        client_events.push(e);
                    }
                }
                None => {}
            }
            if became_ready && !l.ready {
                l.ready = true;
            }
        }
        for s in signals {
            moved = true;
            if let Err(e) = self.hub.send_signal(now, &k.0, &k.1, s) {
                tracing::debug!(error = %e, "signal not sent");
            }
        }
        if became_ready {
            let path = self.links.get(k).and_then(|l| l.session.path());
            self.events.push_back(NodeEvent::LinkReady {
                link: k.clone(),
                path,
            });
        }
        if !store_reqs.is_empty() {
            moved = true;
            let db = self
                .links
                .get(k)
                .and_then(|l| l.db.clone())
                .unwrap_or_default();
            for (sid, request) in store_reqs {
                let id = self.next_store;
                self.next_store += 1;
                self.store_for
                    .insert(id, (k.clone(), StoreFor::Server(sid)));
                self.store_out.push_back(StoreRequest {
                    id,
                    db: db.clone(),
                    request,
                });
            }
        }
        for e in client_events {
            self.on_client_event(now, k, e);
        }
        if let Some(mut reason) = closed {
            if no_path {
                reason = format!("{reason}: {}", self.no_path_reason(k));
            }
            // Flush what can still go (a goodbye), then close.
            if let Some(l) = self.links.get_mut(k) {
                if !l.session.is_closed() {
                    l.session.close(now);
                    while let Some(t) = l.session.poll_transmit() {
                        self.transmits.push_back(t);
                    }
                }
            }
            self.link_closed(now, k, reason);
            moved = true;
        }
        moved
    }

    fn on_client_event(&mut self, _now: Instant, k: &LinkId, e: ClientEvent) {
        match e {
            ClientEvent::Ready { .. } => {
                let mut path = None;
                if let Some(l) = self.links.get_mut(k) {
                    l.ready = true;
                    path = l.session.path();
                }
                self.events.push_back(NodeEvent::LinkReady {
                    link: k.clone(),
                    path,
                });
            }
            ClientEvent::Response { call, result } => {
                let rep = self
                    .links
                    .get_mut(k)
                    .and_then(|l| l.rep_calls.remove(&call));
                match rep {
                    Some((rep, rid)) => {
                        if let Some(r) = self.reps.get_mut(&rep) {
                            let _ = r.machine.handle_response(_now, rid, result);
                        }
                    }
                    None => self.events.push_back(NodeEvent::CallResult {
                        link: k.clone(),
                        call,
                        result,
                    }),
                }
            }
            ClientEvent::Changes { call, changes } => self.events.push_back(NodeEvent::Changes {
                link: k.clone(),
                call,
                changes,
            }),
            ClientEvent::StreamEnded { .. } | ClientEvent::Closed(_) => {}
        }
    }

    fn pump_replications(&mut self, now: Instant) -> bool {
        let mut moved = false;
        let ids: Vec<ReplicationId> = self
            .reps
            .iter()
            .filter(|(_, r)| r.machine.has_output())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let mut reqs = Vec::new();
            let mut events = Vec::new();
            let (source, target) = {
                let r = self.reps.get_mut(&id).expect("listed");
                while let Some(q) = r.machine.poll_request() {
                    reqs.push(q);
                }
                while let Some(e) = r.machine.poll_event() {
                    events.push(e);
                }
                (r.source.clone(), r.target.clone())
            };
            for q in reqs {
                moved = true;
                let side = match q.endpoint {
                    Endpoint::Source => &source,
                    Endpoint::Target => &target,
                };
                match side {
                    DbRef::Local(db) => {
                        let sid = self.next_store;
                        self.next_store += 1;
                        self.store_for
                            .insert(sid, (NO_LINK, StoreFor::Replication(id, q.id)));
                        self.store_out.push_back(StoreRequest {
                            id: sid,
                            db: db.clone(),
                            request: q.request,
                        });
                    }
                    DbRef::Remote(link) => {
                        let call = match self.links.get_mut(link).and_then(|l| l.rpc.as_mut()) {
                            Some(Rpc::Client(c)) => Some(c.call(now, q.request)),
                            _ => None,
                        };
                        match call {
                            Some(c) => {
                                if let Some(l) = self.links.get_mut(link) {
                                    l.rep_calls.insert(c, (id, q.id));
                                }
                            }
                            None => {
                                let r = self.reps.get_mut(&id).expect("listed");
                                let _ = r.machine.handle_response(
                                    now,
                                    q.id,
                                    Err(DbError::Unavailable(format!(
                                        "no open link {} to {}",
                                        link.1, link.0
                                    ))),
                                );
                            }
                        }
                    }
                }
            }
            for e in events {
                moved = true;
                let done = matches!(
                    e,
                    ReplicationEvent::Completed(_)
                        | ReplicationEvent::Failed { .. }
                        | ReplicationEvent::Cancelled(_)
                );
                self.events
                    .push_back(NodeEvent::Replication { id, event: e });
                if done {
                    self.reps.remove(&id);
                    self.store_for
                        .retain(|_, (_, w)| !matches!(w, StoreFor::Replication(r, _) if *r == id));
                }
            }
        }
        moved
    }
}

/// The address of an SDP candidate line (`candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host`).
fn candidate_addr(line: &str) -> Option<SocketAddr> {
    let mut parts = line.split_whitespace();
    let ip = parts.nth(4)?.parse().ok()?;
    let port = parts.next()?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}
