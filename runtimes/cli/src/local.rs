//! Nodes on loopback UDP, driven from one thread, meeting on a hub: the in-memory hub
//! ([`MemoryHub`], the embedded default) or a CouchDB database over HTTP ([`CouchHub`]).

use std::collections::BTreeMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::{Duration, Instant};

use peerpouch::hub::{FeedFilter, HubAction, HubEvent, MemoryHub, ShareOptions};
use peerpouch::node::*;
use peerpouch::replicate::{Progress, ReplicationEvent};
use peerpouch::*;
use peerpouch_couch::{ChangesFollower, CouchClient, FeedEvent, FollowerConfig};
use serde_json::Value;

/// Why a step did not finish.
#[derive(Debug)]
pub enum DriveError {
    /// A socket could not be opened.
    Io(std::io::Error),
    /// The condition was not met in time.
    TimedOut(&'static str, Duration),
    /// A replication failed.
    Replication(String),
    /// The hub could not be reached or followed.
    Hub(String),
}

impl std::fmt::Display for DriveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DriveError::Io(e) => write!(f, "socket: {e}"),
            DriveError::TimedOut(what, t) => write!(f, "{what} did not happen within {t:?}"),
            DriveError::Replication(e) => write!(f, "replication failed: {e}"),
            DriveError::Hub(e) => write!(f, "hub: {e}"),
        }
    }
}

impl std::error::Error for DriveError {}

/// Where nodes meet: executes the node's hub requests and follows the hub's changes feed.
pub trait HubBackend {
    /// Executes one request against the hub database.
    ///
    /// # Errors
    /// The hub's answer, or why it could not be reached.
    fn execute(&mut self, request: Request) -> Result<Response, DbError>;

    /// Starts following the changes feed from `since`, only the rows `filter` passes where
    /// the hub can filter; returns a cursor for [`HubBackend::poll_feed`].
    ///
    /// # Errors
    /// When the feed cannot be started.
    fn follow(&mut self, since: &Seq, filter: FeedFilter) -> Result<usize, DriveError>;

    /// Ends the feed `cursor` (replaced by a new one).
    fn unfollow(&mut self, cursor: usize);

    /// Rows of the feed `cursor` that arrived since the last call (without waiting).
    ///
    /// # Errors
    /// When the feed stopped for good.
    fn poll_feed(&mut self, cursor: usize) -> Result<Vec<ChangeRow>, DriveError>;
}

impl HubBackend for MemoryHub {
    fn execute(&mut self, request: Request) -> Result<Response, DbError> {
        MemoryHub::execute(self, request)
    }

    fn follow(&mut self, since: &Seq, filter: FeedFilter) -> Result<usize, DriveError> {
        Ok(MemoryHub::follow_filtered(self, since, Some(filter)))
    }

    fn unfollow(&mut self, cursor: usize) {
        MemoryHub::unfollow(self, cursor)
    }

    fn poll_feed(&mut self, cursor: usize) -> Result<Vec<ChangeRow>, DriveError> {
        Ok(MemoryHub::poll_feed(self, cursor))
    }
}

/// A CouchDB database over HTTP as the hub: requests go through a [`CouchClient`], each
/// follower is a [`ChangesFollower`] thread whose rows are picked up without waiting.
pub struct CouchHub {
    client: CouchClient,
    feeds: Vec<Option<(ChangesFollower, Receiver<FeedEvent>)>>,
    heartbeat: Duration,
    /// The hub cannot filter its feed: later feeds do not ask.
    unfiltered: bool,
}

impl std::fmt::Debug for CouchHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CouchHub")
            .field("url", &self.client.url().redacted().to_string())
            .field("feeds", &self.feeds.len())
            .finish()
    }
}

impl CouchHub {
    /// The hub database at `url` (created if missing).
    ///
    /// # Errors
    /// [`DriveError::Hub`] for a bad URL or a hub that cannot be reached.
    pub fn connect(url: &str) -> Result<CouchHub, DriveError> {
        let client = CouchClient::new(url).map_err(|e| DriveError::Hub(e.to_string()))?;
        client
            .create_db(true)
            .map_err(|e| DriveError::Hub(e.to_string()))?;
        Ok(CouchHub {
            client,
            feeds: Vec::new(),
            heartbeat: Duration::from_secs(1),
            unfiltered: false,
        })
    }

    /// The client (to read or write the hub database directly).
    pub fn client(&self) -> &CouchClient {
        &self.client
    }
}

impl HubBackend for CouchHub {
    fn execute(&mut self, request: Request) -> Result<Response, DbError> {
        self.client.execute(request)
    }

    fn follow(&mut self, since: &Seq, filter: FeedFilter) -> Result<usize, DriveError> {
        let mut config = FollowerConfig::default()
            .since(since.clone())
            .heartbeat(self.heartbeat);
        if !self.unfiltered {
            config = config.filter(filter);
        }
        let feed = ChangesFollower::start(&self.client, config)
            .map_err(|e| DriveError::Hub(e.to_string()))?;
        self.feeds.push(Some(feed));
        Ok(self.feeds.len() - 1)
    }

    fn unfollow(&mut self, cursor: usize) {
        if let Some((f, _)) = self.feeds.get_mut(cursor).and_then(Option::take) {
            f.stop_in_background();
        }
    }

    fn poll_feed(&mut self, cursor: usize) -> Result<Vec<ChangeRow>, DriveError> {
        let Some(Some((_, rx))) = self.feeds.get(cursor) else {
            return Ok(Vec::new());
        };
        let mut rows = Vec::new();
        loop {
            match rx.try_recv() {
                Ok(FeedEvent::Rows(r)) => rows.extend(r),
                Ok(FeedEvent::Reconnecting { error, attempt, .. }) => {
                    tracing::debug!(%error, attempt, "hub changes feed reconnecting");
                }
                Ok(FeedEvent::Malformed { error, .. }) => {
                    tracing::debug!(%error, "malformed hub changes line skipped");
                }
                Ok(FeedEvent::Unfiltered { .. }) => self.unfiltered = true,
                Ok(_) => {}
                Err(TryRecvError::Empty) => return Ok(rows),
                Err(TryRecvError::Disconnected) => {
                    return Err(DriveError::Hub("the hub changes follower stopped".into()))
                }
            }
        }
    }
}

impl Drop for CouchHub {
    fn drop(&mut self) {
        for (f, _) in self.feeds.drain(..).flatten() {
            f.stop();
        }
    }
}

/// One node on its own loopback socket, with its databases in memory.
pub struct Peer {
    /// The node.
    pub node: Node,
    sock: UdpSocket,
    /// Its socket's address.
    pub addr: SocketAddr,
    /// Its databases.
    pub stores: BTreeMap<String, MemoryStore>,
    cursor: Option<usize>,
    /// Every event it reported.
    pub events: Vec<NodeEvent>,
    parked: Vec<StoreRequest>,
    /// Databases that are not in memory (a CouchDB over HTTP, say), by name.
    attached: BTreeMap<String, Box<dyn Database>>,
}

impl Peer {
    /// A node on a fresh `127.0.0.1` UDP socket.
    ///
    /// # Errors
    /// When the socket cannot be opened.
    pub fn new(seed: u64) -> Result<Peer, DriveError> {
        Peer::with_config(seed, NodeConfig::default())
    }

    /// A node with its own configuration on a fresh `127.0.0.1` UDP socket.
    ///
    /// # Errors
    /// When the socket cannot be opened.
    pub fn with_config(seed: u64, config: NodeConfig) -> Result<Peer, DriveError> {
        let sock = UdpSocket::bind("127.0.0.1:0").map_err(DriveError::Io)?;
        sock.set_nonblocking(true).map_err(DriveError::Io)?;
        let addr = sock.local_addr().map_err(DriveError::Io)?;
        let mut node = Node::new(
            config,
            seed,
            Instant::now(),
            peerpouch_couch::wall_clock_ms(),
        );
        node.add_local_candidate(addr);
        Ok(Peer {
            node,
            sock,
            addr,
            stores: BTreeMap::new(),
            cursor: None,
            events: Vec::new(),
            parked: Vec::new(),
            attached: BTreeMap::new(),
        })
    }

    /// Makes `db` name another kind of database (a `peerpouch_couch::CouchClient`, say): the
    /// node's store requests for it go there. Such databases answer longpolls themselves.
    pub fn attach(&mut self, db: &str, database: Box<dyn Database>) {
        self.attached.insert(db.to_string(), database);
    }

    /// A local database (created empty on first use).
    pub fn store(&mut self, db: &str) -> &mut MemoryStore {
        self.stores
            .entry(db.to_string())
            .or_insert_with(|| MemoryStore::new(db))
    }

    /// Writes documents as the app would and tells the node.
    ///
    /// # Errors
    /// The first document the store refused.
    pub fn write(&mut self, db: &str, docs: Vec<Value>) -> Result<(), DbError> {
        for r in self.store(db).bulk_docs(docs, true)? {
            r.result?;
        }
        self.node.handle_db_changed(Instant::now(), db);
        self.wake(db);
        Ok(())
    }

    fn wake(&mut self, db: &str) {
        let (wake, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|r| r.db == db);
        self.parked = keep;
        for r in wake {
            self.execute(r);
        }
    }

    fn execute(&mut self, r: StoreRequest) {
        if let Some(db) = self.attached.get_mut(&r.db) {
            let result = db.execute(r.request);
            if let Err(e) = self.node.handle_store_result(Instant::now(), r.id, result) {
                tracing::warn!(error = %e, "store result refused");
            }
            return;
        }
        let store = self
            .stores
            .entry(r.db.clone())
            .or_insert_with(|| MemoryStore::new(r.db.clone()));
        if let Request::Changes(c) = &r.request {
            if c.feed == Feed::Longpoll && c.since.as_u64().unwrap_or(0) >= store.update_seq() {
                self.parked.push(r);
                return;
            }
        }
        let before = store.update_seq();
        let result = store.execute(r.request);
        let changed = store.update_seq() != before;
        if let Err(e) = self.node.handle_store_result(Instant::now(), r.id, result) {
            tracing::warn!(error = %e, "store result refused");
        }
        if changed {
            self.node.handle_db_changed(Instant::now(), &r.db);
            self.wake(&r.db);
        }
    }

    /// Moves everything once; returns whether anything moved.
    fn turn(&mut self, hub: &mut impl HubBackend, buf: &mut [u8]) -> Result<bool, DriveError> {
        let mut moved = false;
        while let Some(a) = self.node.poll_hub_action() {
            moved = true;
            match a {
                HubAction::Request { id, request } => {
                    let r = hub.execute(request);
                    if let Err(e) = self.node.handle_hub_response(Instant::now(), id, r) {
                        tracing::warn!(error = %e, "hub response refused");
                    }
                }
                HubAction::FollowChanges { since, filter } => {
                    let c = hub.follow(&since, filter)?;
                    if let Some(old) = self.cursor.replace(c) {
                        hub.unfollow(old);
                    }
                }
            }
        }
        if let Some(c) = self.cursor {
            let rows = hub.poll_feed(c)?;
            if !rows.is_empty() {
                moved = true;
                self.node.handle_feed(Instant::now(), rows);
            }
        }
        while let Some(r) = self.node.poll_store_request() {
            moved = true;
            self.execute(r);
        }
        while let Some(t) = self.node.poll_transmit() {
            moved = true;
            let _ = self.sock.send_to(&t.contents, t.destination);
        }
        while let Some(e) = self.node.poll_event() {
            moved = true;
            self.events.push(e);
        }
        while let Ok((n, from)) = self.sock.recv_from(buf) {
            moved = true;
            self.node
                .handle_datagram(Instant::now(), from, self.addr, &buf[..n]);
        }
        let now = Instant::now();
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            moved = true;
            self.node.handle_timeout(now);
        }
        Ok(moved)
    }

    /// Waits for a datagram at most `max` (less when a timer of the node is due first) and
    /// feeds it; for a driver with nothing else to do.
    fn wait(&mut self, max: Duration, buf: &mut [u8]) -> Result<(), DriveError> {
        let now = Instant::now();
        let due = self
            .node
            .poll_timeout()
            .map_or(max, |t| t.saturating_duration_since(now));
        let wait = max.min(due);
        if wait.is_zero() {
            return Ok(());
        }
        self.sock.set_nonblocking(false).map_err(DriveError::Io)?;
        self.sock
            .set_read_timeout(Some(wait))
            .map_err(DriveError::Io)?;
        let got = self.sock.recv_from(buf);
        self.sock.set_nonblocking(true).map_err(DriveError::Io)?;
        if let Ok((n, from)) = got {
            self.node
                .handle_datagram(Instant::now(), from, self.addr, &buf[..n]);
        }
        Ok(())
    }
}

/// Nodes on loopback meeting on one hub (the in-memory one unless told otherwise).
pub struct World<H: HubBackend = MemoryHub> {
    /// The hub.
    pub hub: H,
    /// The nodes.
    pub peers: Vec<Peer>,
    buf: Vec<u8>,
}

impl World {
    /// `n` nodes and an empty in-memory hub.
    ///
    /// # Errors
    /// When a socket cannot be opened.
    pub fn new(n: usize) -> Result<World, DriveError> {
        World::with_hub(
            MemoryHub::new(),
            (0..n)
                .map(|i| Peer::new(i as u64 + 1))
                .collect::<Result<_, _>>()?,
        )
    }
}

impl<H: HubBackend> World<H> {
    /// These nodes meeting on `hub`.
    ///
    /// # Errors
    /// None yet; kept fallible like [`World::new`].
    pub fn with_hub(hub: H, peers: Vec<Peer>) -> Result<World<H>, DriveError> {
        Ok(World {
            hub,
            peers,
            buf: vec![0u8; 65536],
        })
    }

    /// Runs every node until `done` holds.
    ///
    /// # Errors
    /// [`DriveError::TimedOut`] after `limit`.
    pub fn run_until(
        &mut self,
        what: &'static str,
        limit: Duration,
        mut done: impl FnMut(&World<H>) -> bool,
    ) -> Result<(), DriveError> {
        let end = Instant::now() + limit;
        while !done(self) {
            if Instant::now() > end {
                return Err(DriveError::TimedOut(what, limit));
            }
            self.step()?;
        }
        Ok(())
    }

    /// Moves every node once. With a single node and nothing to do, waits up to a millisecond
    /// for its socket instead of spinning (the other end is in another process); several
    /// nodes only yield, since each one's socket is fed by the others' turns.
    ///
    /// # Errors
    /// When the hub cannot be reached or followed.
    pub fn step(&mut self) -> Result<(), DriveError> {
        let mut moved = false;
        for p in &mut self.peers {
            moved |= p.turn(&mut self.hub, &mut self.buf)?;
        }
        if !moved {
            match self.peers.as_mut_slice() {
                [p] => p.wait(Duration::from_millis(1), &mut self.buf)?,
                _ => std::thread::yield_now(),
            }
        }
        Ok(())
    }

    /// Node `sharer` shares its database `db`; returns the share id once it is on the hub.
    ///
    /// # Errors
    /// When the share does not appear within 10 s.
    pub fn share(&mut self, sharer: usize, db: &str) -> Result<String, DriveError> {
        let share = self.peers[sharer].node.share(
            Instant::now(),
            db.into(),
            ShareOptions {
                name: Some(db.into()),
                ..ShareOptions::default()
            },
            ShareAccess::default(),
        );
        let s2 = share.clone();
        self.run_until("the share document", Duration::from_secs(10), |w| {
            w.peers[sharer].events.iter().any(
                |e| matches!(e, NodeEvent::Hub(HubEvent::ShareCreated { share }) if *share == s2),
            )
        })?;
        Ok(share)
    }

    /// Node `joiner` opens `share`; returns the link once the RPC is ready.
    ///
    /// # Errors
    /// When the link does not open within 20 s.
    pub fn open(&mut self, joiner: usize, share: &str) -> Result<LinkId, DriveError> {
        let link = self.peers[joiner]
            .node
            .open(
                Instant::now(),
                share,
                serde_json::json!({"app": "peerpouch demo"}),
                None,
            )
            .map_err(|e| DriveError::Replication(e.to_string()))?;
        let l2 = link.clone();
        self.run_until("the peer link", Duration::from_secs(20), |w| {
            w.peers[joiner]
                .events
                .iter()
                .any(|e| matches!(e, NodeEvent::LinkReady { link: l, .. } if *l == l2))
        })?;
        Ok(link)
    }

    /// Runs a one-shot replication started by node `peer` to the end.
    ///
    /// # Errors
    /// [`DriveError::Replication`] when it fails; [`DriveError::TimedOut`] after `limit`.
    pub fn replicate(
        &mut self,
        peer: usize,
        source: DbRef,
        target: DbRef,
        limit: Duration,
        on_progress: impl FnMut(&Progress),
    ) -> Result<Progress, DriveError> {
        let config = ReplicatorConfig::new(format!("{source:?}"), format!("{target:?}"));
        self.replicate_with(peer, source, target, config, limit, on_progress)
    }

    /// [`World::replicate`] with a configuration of the caller's.
    pub fn replicate_with(
        &mut self,
        peer: usize,
        source: DbRef,
        target: DbRef,
        config: ReplicatorConfig,
        limit: Duration,
        mut on_progress: impl FnMut(&Progress),
    ) -> Result<Progress, DriveError> {
        let id = self.peers[peer]
            .node
            .replicate(Instant::now(), source, target, config);
        let mut seen = 0;
        let mut outcome = None;
        self.run_until("the replication", limit, |w| {
            for e in &w.peers[peer].events[seen..] {
                if let NodeEvent::Replication { id: r, event } = e {
                    if *r != id {
                        continue;
                    }
                    match event {
                        ReplicationEvent::Progressed(p) => on_progress(p),
                        ReplicationEvent::Completed(p) => outcome = Some(Ok(p.clone())),
                        ReplicationEvent::Failed { error, .. } => {
                            outcome = Some(Err(error.to_string()))
                        }
                        _ => {}
                    }
                }
            }
            seen = w.peers[peer].events.len();
            outcome.is_some()
        })?;
        match outcome {
            Some(Ok(p)) => Ok(p),
            Some(Err(e)) => Err(DriveError::Replication(e)),
            None => Err(DriveError::Replication("no outcome".into())),
        }
    }
}
