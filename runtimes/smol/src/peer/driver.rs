//! The task that runs one [`Node`] machine: its UDP socket, its hub, its databases, its timers.
//!
//! The drain rule of the sans-IO core holds here: after every input (a command, a datagram, a
//! hub answer, a store answer, a timer) the driver takes every output of the machine before it
//! waits again.

use std::collections::{BTreeMap, BTreeSet};

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use async_io::Timer;
use futures_lite::future;
use peerpouch::hub::{HubAction, HubEvent, ShareInfo, ShareOptions};
use peerpouch::node::{DbRef, LinkId, Node, NodeEvent, ReplicationId, StoreRequestId};
use peerpouch::reach::Transport;
use peerpouch::replicate::{ReplicationEvent, ReplicatorConfig};
use peerpouch::rpc::CallId;
use peerpouch::session::LinkPath;
use peerpouch::{ChangesResponse, Database, DbError, Feed, Request, Response};
use peerpouch_couch::{ChangesFollower, CouchClient, FeedEvent, FollowerConfig};

use super::hub::InProcessHub;
use super::{LinkEvent, PeerError, PeerRequest, PeerStats, ShareChange, Verdict};
use crate::net::{SendOutcome, Sockets, StreamEvent, Streams};

/// How long a shutdown waits for the hub to confirm unshares before it gives up on them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);
/// Batches a changes subscription's reader may fall behind before its stream is ended.
pub(crate) const SUBSCRIPTION_BACKLOG: usize = 1024;
/// Events a share or link watcher may fall behind before its stream is ended.
pub(crate) const WATCH_BACKLOG: usize = 1024;
/// Commands queued to the driver before senders wait.
pub(crate) const COMMAND_BACKLOG: usize = 1024;
/// Datagrams read per wake-up before the driver looks at its other inputs.
const RECV_BATCH: usize = 64;
/// How often a database with longpoll changes requests waiting is asked whether another
/// process wrote it ([`Database::changed_elsewhere`]); never while none wait.
const EXTERNAL_WRITES_POLL: Duration = Duration::from_millis(50);
/// Requests to local stores answered per round of [`Driver::drain`] before the rest of the
/// node's output (events, datagrams) and the caller's commands get their turn.
const STORE_REQUESTS_PER_ROUND: usize = 16;

pub(crate) type Reply<T> = Sender<T>;
/// An open's answer: the link, the path it took, the sharer's fingerprint and the shared
/// database's identity (from the sharer's hello; `None` from an older sharer).
pub(crate) type Opened =
    Result<(LinkId, Option<LinkPath>, Option<String>, Option<String>), PeerError>;
pub(crate) type Decider = Arc<dyn Fn(&PeerRequest) -> Verdict + Send + Sync>;

/// A database as the driver holds it.
pub(crate) enum Slot {
    /// Answers at once (memory, SQLite): executed on the driver's task.
    Inline(Box<dyn Database + Send>),
    /// A CouchDB database over HTTP: each request runs on the blocking pool.
    Http(Box<CouchClient>),
}

/// What a database handle names.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Local(String),
    Remote(LinkId),
}

impl Target {
    fn db_ref(&self) -> DbRef {
        match self {
            Target::Local(n) => DbRef::Local(n.clone()),
            Target::Remote(l) => DbRef::Remote(l.clone()),
        }
    }
}

pub(crate) enum Command {
    AddDb {
        name: String,
        slot: Slot,
        /// Its identity, sent in the hello of links to its shares.
        uuid: Option<String>,
    },
    Exec {
        target: Target,
        request: Request,
        reply: Reply<Result<Response, DbError>>,
    },
    Subscribe {
        link: LinkId,
        request: peerpouch::ChangesRequest,
        rows: Sender<ChangesResponse>,
        reply: Reply<Result<CallId, PeerError>>,
    },
    Unsubscribe {
        link: LinkId,
        call: CallId,
    },
    Share {
        db: String,
        options: ShareOptions,
        access: peerpouch::node::ShareAccess,
        decide: Option<Decider>,
        reply: Reply<Result<String, PeerError>>,
    },
    Unshare {
        share: String,
        reply: Reply<Result<(), PeerError>>,
    },
    List {
        reply: Reply<Result<Vec<ShareInfo>, PeerError>>,
    },
    Watch {
        events: Sender<ShareChange>,
    },
    Open {
        share: String,
        info: serde_json::Value,
        key: Option<Vec<u8>>,
        reply: Reply<Opened>,
    },
    CloseLink {
        link: LinkId,
    },
    WatchLink {
        link: LinkId,
        reply: Reply<String>,
    },
    WatchLinks {
        events: Sender<LinkEvent>,
    },
    Replicate {
        source: Target,
        target: Target,
        config: ReplicatorConfig,
        events: Sender<ReplicationEvent>,
        reply: Reply<ReplicationId>,
    },
    CancelReplication {
        id: ReplicationId,
    },
    /// A local subscription's reader went: drop waiting longpolls nobody will read.
    ForgetClosed,
    Stats {
        reply: Reply<PeerStats>,
    },
    Shutdown {
        reply: Reply<()>,
    },
}

/// Answers from work done off the driver's task.
enum Done {
    Hub {
        id: peerpouch::replicate::RequestId,
        result: Result<Response, DbError>,
    },
    Store {
        origin: Origin,
        db: String,
        wrote: bool,
        result: Result<Response, DbError>,
    },
    /// An event of the feed follower of this generation.
    Feed(u64, FeedEvent),
    Verdict {
        link: LinkId,
        verdict: Verdict,
    },
    Stream(StreamEvent),
}

/// A `watch_shares` stream and the shares it was told about.
struct Watcher {
    events: Sender<ShareChange>,
    known: BTreeSet<String>,
    /// Its first listing arrived.
    listed: bool,
}

impl Watcher {
    /// Tells about a share unless it already did; false when nobody listens any more.
    fn added(&mut self, s: &ShareInfo) -> bool {
        !self.known.insert(s.id.clone())
            || self.events.try_send(ShareChange::Added(s.clone())).is_ok()
    }

    fn removed(&mut self, id: &str) -> bool {
        !self.known.remove(id)
            || self
                .events
                .try_send(ShareChange::Removed(id.to_string()))
                .is_ok()
    }
}

/// Who asked a local database.
enum Origin {
    Node(StoreRequestId),
    App(Reply<Result<Response, DbError>>),
}

enum HubBackend {
    InProcess {
        hub: InProcessHub,
        cursor: Option<usize>,
    },
    Couch {
        client: Box<CouchClient>,
        follower: Option<ChangesFollower>,
        /// Numbers the followers: rows of a replaced one are dropped.
        generation: u64,
        /// The hub cannot filter its feed: one whole feed serves every filter.
        unfiltered: bool,
    },
}

pub(crate) struct Driver {
    node: Node,
    sockets: Sockets,
    /// TCP streams to TURN servers reached over TCP.
    streams: Streams,
    /// Where the streams report (forwarded into `done`).
    stream_tx: Sender<StreamEvent>,
    hub: HubBackend,
    commands: Receiver<Command>,
    commands_closed: bool,
    done_tx: Sender<Done>,
    done_rx: Receiver<Done>,
    dbs: BTreeMap<String, Slot>,
    /// Longpoll changes requests with nothing to say yet, by database.
    parked: Vec<(String, Request, Origin)>,
    /// When the databases of `parked` are next asked about other processes' writes.
    external_check: Option<Instant>,
    list_waiters: Vec<Reply<Result<Vec<ShareInfo>, PeerError>>>,
    watchers: Vec<Watcher>,
    share_waiters: BTreeMap<String, Reply<Result<String, PeerError>>>,
    unshare_waiters: BTreeMap<String, Reply<Result<(), PeerError>>>,
    deciders: BTreeMap<String, Decider>,
    open_waiters: BTreeMap<LinkId, Reply<Opened>>,
    calls: BTreeMap<(LinkId, CallId), Reply<Result<Response, DbError>>>,
    subs: BTreeMap<(LinkId, CallId), Sender<ChangesResponse>>,
    link_watchers: BTreeMap<LinkId, Vec<Reply<String>>>,
    links_watchers: Vec<Sender<LinkEvent>>,
    reps: BTreeMap<ReplicationId, Sender<ReplicationEvent>>,
    shutdown: Option<(Instant, Vec<Reply<()>>)>,
    /// The hub could not be reached at start: hub commands fail with this at once.
    hub_failed: Option<PeerError>,
    buf: Vec<u8>,
    /// Bytes received from and sent to the network (UDP datagrams and TURN's TCP streams),
    /// for [`PeerStats`].
    bytes_received: u64,
    bytes_sent: u64,
}

impl Driver {
    pub(crate) fn new(
        node: Node,
        sockets: Sockets,
        hub: super::HubSpec,
        http: peerpouch_couch::ClientConfig,
        commands: Receiver<Command>,
    ) -> Result<Driver, PeerError> {
        let hub = match hub {
            super::HubSpec::InProcess(hub) => HubBackend::InProcess { hub, cursor: None },
            super::HubSpec::Couch(url) => HubBackend::Couch {
                client: Box::new(CouchClient::with_config(&url, http).map_err(PeerError::Hub)?),
                follower: None,
                generation: 0,
                unfiltered: false,
            },
        };
        // Bounded by the work in flight: one answer per hub or HTTP request, feed batch, verdict.
        let (done_tx, done_rx) = async_channel::unbounded();
        // TCP streams to TURN servers: bounded, so a flood from a server waits for the driver.
        let (stream_tx, stream_rx) = async_channel::bounded::<StreamEvent>(64);
        {
            let done = done_tx.clone();
            smol::spawn(async move {
                while let Ok(e) = stream_rx.recv().await {
                    if done.send(Done::Stream(e)).await.is_err() {
                        break;
                    }
                }
            })
            .detach();
        }
        Ok(Driver {
            node,
            sockets,
            streams: Streams::new(),
            stream_tx,
            hub,
            commands,
            commands_closed: false,
            done_tx,
            done_rx,
            dbs: BTreeMap::new(),
            parked: Vec::new(),
            external_check: None,
            list_waiters: Vec::new(),
            watchers: Vec::new(),
            share_waiters: BTreeMap::new(),
            unshare_waiters: BTreeMap::new(),
            deciders: BTreeMap::new(),
            open_waiters: BTreeMap::new(),
            calls: BTreeMap::new(),
            subs: BTreeMap::new(),
            link_watchers: BTreeMap::new(),
            links_watchers: Vec::new(),
            reps: BTreeMap::new(),
            shutdown: None,
            hub_failed: None,
            buf: vec![0; 65536],
            bytes_received: 0,
            bytes_sent: 0,
        })
    }

    pub(crate) async fn run(mut self) {
        tracing::debug!(local = ?self.sockets.bound(), "peer node driver started");
        if let HubBackend::Couch { client, .. } = &self.hub {
            // The hub database is created on first use, as PeerPouch did.
            let c = client.clone();
            if let Err(e) = smol::unblock(move || c.create_db(true)).await {
                tracing::debug!(error = %e, "the hub is unreachable");
                self.hub_failed = Some(PeerError::Hub(e));
            }
        }
        loop {
            while let Ok(c) = self.commands.try_recv() {
                self.on_command(c);
            }
            while let Ok(d) = self.done_rx.try_recv() {
                self.on_done(d);
            }
            let listener = match &mut self.hub {
                HubBackend::InProcess { hub, cursor } => {
                    let listener = hub.listen();
                    if let Some(c) = cursor {
                        let rows = hub.poll_feed(*c);
                        if !rows.is_empty() {
                            self.node.handle_feed(Instant::now(), rows);
                        }
                    }
                    Some(listener)
                }
                HubBackend::Couch { .. } => None,
            };
            let now = Instant::now();
            if self.node.poll_timeout().is_some_and(|t| t <= now) {
                self.node.handle_timeout(now);
            }
            self.check_external_writes(now);
            self.drain().await;
            if self.finished() {
                break;
            }
            // Shutting down with writes still queued for a TURN server's TCP stream: look again
            // shortly (nothing else wakes the driver when a stream task takes them).
            let flushing = (self.shutdown.is_some() && self.streams.queued() > 0)
                .then(|| Instant::now() + Duration::from_millis(10));
            if self.parked.is_empty() {
                self.external_check = None;
            } else if self.external_check.is_none() {
                self.external_check = Some(Instant::now() + EXTERNAL_WRITES_POLL);
            }
            let deadline = [
                self.node.poll_timeout(),
                self.shutdown.as_ref().map(|s| s.0),
                flushing,
                self.external_check,
            ]
            .into_iter()
            .flatten()
            .min();
            let sockets = &self.sockets;
            let readable = async {
                sockets.readable().await;
                true
            };
            let commands = &self.commands;
            let closed = self.commands_closed;
            let command = async {
                if closed {
                    future::pending::<()>().await;
                }
                match commands.recv().await {
                    Ok(c) => Some(Some(c)),
                    Err(_) => Some(None),
                }
            };
            let done_rx = &self.done_rx;
            let done = async { done_rx.recv().await.ok() };
            let wait_other = async {
                match listener {
                    Some(l) => l.await,
                    None => future::pending::<()>().await,
                }
            };
            let timer = async {
                match deadline {
                    Some(d) => {
                        Timer::at(d).await;
                    }
                    None => future::pending::<()>().await,
                }
            };
            enum Wake {
                Readable,
                Command(Option<Command>),
                Done(Option<Done>),
                Other,
            }
            let wake = future::or(
                async {
                    readable.await;
                    Wake::Readable
                },
                future::or(
                    async { Wake::Command(command.await.flatten()) },
                    future::or(
                        async { Wake::Done(done.await) },
                        future::or(
                            async {
                                wait_other.await;
                                Wake::Other
                            },
                            async {
                                timer.await;
                                Wake::Other
                            },
                        ),
                    ),
                ),
            )
            .await;
            match wake {
                Wake::Readable => self.read_batch(),
                Wake::Command(Some(c)) => self.on_command(c),
                Wake::Command(None) => {
                    // Every handle is gone: nobody can use the node any more.
                    self.commands_closed = true;
                    self.begin_shutdown(None);
                }
                Wake::Done(Some(d)) => self.on_done(d),
                Wake::Done(None) | Wake::Other => {}
            }
        }
        tracing::debug!(local = ?self.sockets.bound(), "peer node driver stopped");
        self.close_inputs();
        // Databases close before `shutdown` returns: a SQLite store folds its write-ahead log
        // into its file as it closes, so the file alone is complete once the app goes on.
        self.parked.clear();
        self.dbs.clear();
        if let Some((_, waiters)) = self.shutdown.take() {
            for w in waiters {
                let _ = w.try_send(());
            }
        }
    }

    /// Refuses new commands and drops queued ones: their reply channels close, so whoever
    /// waits on one learns the node stopped instead of waiting forever.
    fn close_inputs(&mut self) {
        self.commands.close();
        while self.commands.try_recv().is_ok() {}
        self.done_rx.close();
        while self.done_rx.try_recv().is_ok() {}
    }

    fn finished(&self) -> bool {
        match &self.shutdown {
            Some((deadline, _)) => {
                (self.unshare_waiters.is_empty()
                    && self.node.links().is_empty()
                    && self.streams.queued() == 0
                    && !self.node.hub().has_pending_deletes())
                    || Instant::now() >= *deadline
            }
            None => false,
        }
    }

    fn begin_shutdown(&mut self, reply: Option<Reply<()>>) {
        let now = Instant::now();
        if self.shutdown.is_none() {
            self.shutdown = Some((now + SHUTDOWN_GRACE, Vec::new()));
            let shares: Vec<String> = self.node.own_shares();
            for s in shares {
                if self.node.unshare(now, &s).is_ok() {
                    let (tx, _rx) = async_channel::bounded(1);
                    self.unshare_waiters.entry(s).or_insert(tx);
                }
            }
            for (l, _) in self.node.links() {
                self.node.close(now, &l);
            }
            // TURN allocations go back now, not when they expire on the server.
            self.node.release_ice_servers(now);
        }
        if let (Some(r), Some((_, waiters))) = (reply, self.shutdown.as_mut()) {
            waiters.push(r);
        }
    }

    fn read_batch(&mut self) {
        let mut buf = std::mem::take(&mut self.buf);
        let node = &mut self.node;
        let received = &mut self.bytes_received;
        self.sockets
            .read_batch(&mut buf, RECV_BATCH, |from, to, data| {
                *received = received.saturating_add(data.len() as u64);
                node.handle_datagram(Instant::now(), from, to, data)
            });
        self.buf = buf;
    }

    /// Takes every output of the machine, repeatedly, until it has none.
    ///
    /// Requests to the node's own stores are answered in place, and answering one makes the
    /// next (a replication between two local databases runs entirely in here). So each round
    /// answers at most [`STORE_REQUESTS_PER_ROUND`] of them and then lets everything else out:
    /// the caller's commands (a cancel, a shutdown), events (progress as it happens, not all at
    /// the end) and datagrams (links are not starved by local work).
    async fn drain(&mut self) {
        loop {
            let mut moved = false;
            while let Ok(c) = self.commands.try_recv() {
                moved = true;
                self.on_command(c);
            }
            while let Some(a) = self.node.poll_hub_action() {
                moved = true;
                self.on_hub_action(a);
            }
            for _ in 0..STORE_REQUESTS_PER_ROUND {
                let Some(r) = self.node.poll_store_request() else {
                    break;
                };
                moved = true;
                self.run_store(r.db, r.request, Origin::Node(r.id));
            }
            while let Some(e) = self.node.poll_event() {
                moved = true;
                self.on_event(e);
            }
            while let Some(t) = self.node.poll_transmit() {
                moved = true;
                let len = t.contents.len() as u64;
                match t.transport {
                    Transport::Udp => {
                        let sent = self.sockets.send(t.source, t.destination, &t.contents);
                        if sent.await == SendOutcome::Sent {
                            self.bytes_sent = self.bytes_sent.saturating_add(len);
                        }
                    }
                    Transport::Tcp => {
                        self.bytes_sent = self.bytes_sent.saturating_add(len);
                        self.streams
                            .send(t.destination, t.contents, &self.stream_tx)
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn on_hub_action(&mut self, a: HubAction) {
        match (&mut self.hub, a) {
            (HubBackend::InProcess { hub, .. }, HubAction::Request { id, request }) => {
                let result = hub.execute(request);
                if let Err(e) = self.node.handle_hub_response(Instant::now(), id, result) {
                    tracing::warn!(error = %e, "hub response refused");
                }
            }
            (HubBackend::InProcess { hub, cursor }, HubAction::FollowChanges { since, filter }) => {
                if let Some(old) = cursor.replace(hub.follow(&since, filter)) {
                    hub.unfollow(old);
                }
            }
            (HubBackend::Couch { client, .. }, HubAction::Request { id, request }) => {
                let mut client = (**client).clone();
                let done = self.done_tx.clone();
                smol::spawn(async move {
                    let result = smol::unblock(move || client.execute(request)).await;
                    let _ = done.send(Done::Hub { id, result }).await;
                })
                .detach();
            }
            (
                HubBackend::Couch {
                    client,
                    follower,
                    generation,
                    unfiltered,
                },
                HubAction::FollowChanges { since, filter },
            ) => {
                if *unfiltered && follower.is_some() {
                    // The whole feed already brings the new id's signals.
                    return;
                }
                let (tx, rx) = std::sync::mpsc::channel();
                let config = FollowerConfig::default()
                    .since(since)
                    .heartbeat(Duration::from_secs(10))
                    .filter(filter);
                match ChangesFollower::start_with_sender(client, config, tx) {
                    Ok(f) => {
                        // Rows of the old feed still on their way are dropped (another
                        // generation): the new feed brings them again from the machine's last row.
                        if let Some(old) = follower.replace(f) {
                            old.stop_in_background();
                        }
                        *generation += 1;
                        let feed_gen = *generation;
                        let done = self.done_tx.clone();
                        // The follower speaks std channels; forward onto ours.
                        smol::unblock(move || {
                            for ev in rx {
                                if done.send_blocking(Done::Feed(feed_gen, ev)).is_err() {
                                    break;
                                }
                            }
                        })
                        .detach();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot follow the hub's changes");
                        self.fail_waiting_on_hub(PeerError::Hub(e));
                    }
                }
            }
        }
    }

    fn fail_waiting_on_hub(&mut self, e: PeerError) {
        for w in self.list_waiters.drain(..) {
            let _ = w.try_send(Err(e.clone()));
        }
        for (_, w) in std::mem::take(&mut self.share_waiters) {
            let _ = w.try_send(Err(e.clone()));
        }
        for (_, w) in std::mem::take(&mut self.open_waiters) {
            let _ = w.try_send(Err(e.clone()));
        }
    }

    fn run_store(&mut self, db: String, request: Request, origin: Origin) {
        let wrote = matches!(request, Request::BulkDocs(_));
        match self.dbs.get_mut(&db) {
            None => {
                let e = DbError::NotFound(format!("no database {db:?} on this node"));
                self.store_done(origin, &db, false, Err(e));
            }
            Some(Slot::Inline(store)) => {
                let longpoll = matches!(&request, Request::Changes(c) if c.feed == Feed::Longpoll);
                let result = store.execute(request.clone());
                if longpoll && matches!(&result, Ok(Response::Changes(c)) if c.results.is_empty()) {
                    // Waiting requests whose caller went are dropped here too, so their number
                    // stays that of the live callers even on a database that never changes.
                    self.forget_closed();
                    self.parked.push((db, request, origin));
                    return;
                }
                self.store_done(origin, &db, wrote, result);
            }
            Some(Slot::Http(client)) => {
                let mut client = (**client).clone();
                let done = self.done_tx.clone();
                smol::spawn(async move {
                    let result = smol::unblock(move || client.execute(request)).await;
                    let _ = done
                        .send(Done::Store {
                            origin,
                            db,
                            wrote,
                            result,
                        })
                        .await;
                })
                .detach();
            }
        }
    }

    fn store_done(
        &mut self,
        origin: Origin,
        db: &str,
        wrote: bool,
        result: Result<Response, DbError>,
    ) {
        let changed = wrote && result.is_ok();
        match origin {
            Origin::Node(id) => {
                if let Err(e) = self.node.handle_store_result(Instant::now(), id, result) {
                    tracing::warn!(error = %e, "store result refused");
                }
            }
            Origin::App(reply) => {
                let _ = reply.try_send(result);
            }
        }
        if changed {
            self.db_changed(db);
        }
    }

    /// Wakes the longpolls of databases another process wrote (a SQLite file shared with a
    /// `peerpouch docs … put`), when the check is due.
    fn check_external_writes(&mut self, now: Instant) {
        if self.parked.is_empty() || self.external_check.is_some_and(|t| t > now) {
            return;
        }
        self.external_check = Some(now + EXTERNAL_WRITES_POLL);
        let dbs: BTreeSet<String> = self.parked.iter().map(|(d, _, _)| d.clone()).collect();
        for db in dbs {
            let changed = match self.dbs.get_mut(&db) {
                Some(Slot::Inline(s)) => s.changed_elsewhere(),
                _ => false,
            };
            if changed {
                tracing::debug!(db, "written by another process");
                self.db_changed(&db);
            }
        }
    }

    /// Drops parked longpolls whose caller is gone: a dropped local [`super::Subscription`], a
    /// closed link's server or an ended replication (the node no longer waits for them).
    fn forget_closed(&mut self) {
        let node = &self.node;
        self.parked.retain(|(_, _, o)| match o {
            Origin::App(r) => !r.is_closed(),
            Origin::Node(id) => node.awaits_store_result(*id),
        });
    }

    fn db_changed(&mut self, db: &str) {
        self.node.handle_db_changed(Instant::now(), db);
        let (wake, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.parked)
            .into_iter()
            .partition(|(d, _, _)| d == db);
        self.parked = keep;
        for (db, request, origin) in wake {
            self.run_store(db, request, origin);
        }
    }

    fn on_done(&mut self, d: Done) {
        let now = Instant::now();
        match d {
            Done::Hub { id, result } => {
                if let Err(e) = self.node.handle_hub_response(now, id, result) {
                    tracing::warn!(error = %e, "hub response refused");
                }
            }
            Done::Store {
                origin,
                db,
                wrote,
                result,
            } => self.store_done(origin, &db, wrote, result),
            Done::Feed(feed_gen, ev) => {
                let HubBackend::Couch {
                    generation,
                    unfiltered,
                    ..
                } = &mut self.hub
                else {
                    return;
                };
                if feed_gen != *generation {
                    return;
                }
                match ev {
                    FeedEvent::Rows(rows) => self.node.handle_feed(now, rows),
                    FeedEvent::Reconnecting { error, attempt, .. } => {
                        tracing::debug!(%error, attempt, "hub changes feed reconnecting");
                    }
                    FeedEvent::Unfiltered { .. } => *unfiltered = true,
                    _ => {}
                }
            }
            Done::Stream(StreamEvent::Data { server, bytes }) => {
                self.bytes_received = self.bytes_received.saturating_add(bytes.len() as u64);
                self.node.handle_stream_data(now, server, &bytes)
            }
            Done::Stream(StreamEvent::Closed { server, why }) => {
                tracing::debug!(%server, %why, "TCP stream to a TURN server ended");
                self.streams.closed(server);
                self.node.handle_stream_closed(now, server, why);
            }
            Done::Verdict { link, verdict } => {
                let r = match verdict {
                    Verdict::Accept => self.node.accept(now, &link),
                    Verdict::Refuse(reason) => self.node.refuse(now, &link, reason),
                };
                if let Err(e) = r {
                    tracing::debug!(error = %e, ?link, "verdict for a peer that is gone");
                }
            }
        }
    }

    fn on_command(&mut self, c: Command) {
        let now = Instant::now();
        if let Some(e) = self.hub_failed.clone() {
            match c {
                Command::Share { reply, .. } => return drop(reply.try_send(Err(e))),
                Command::List { reply } => return drop(reply.try_send(Err(e))),
                Command::Open { reply, .. } => return drop(reply.try_send(Err(e))),
                Command::Unshare { reply, .. } => return drop(reply.try_send(Err(e))),
                other => return self.on_command_with_hub(now, other),
            }
        }
        self.on_command_with_hub(now, c)
    }

    fn on_command_with_hub(&mut self, now: Instant, c: Command) {
        match c {
            Command::AddDb { name, slot, uuid } => {
                if let Some(uuid) = uuid {
                    if let Err(e) = self.node.set_db_uuid(name.clone(), uuid) {
                        tracing::warn!(db = %name, error = %e, "its shares go without identity");
                    }
                }
                self.dbs.insert(name, slot);
            }
            Command::Exec {
                target: Target::Local(db),
                request,
                reply,
            } => self.run_store(db, request, Origin::App(reply)),
            Command::Exec {
                target: Target::Remote(link),
                request,
                reply,
            } => match self.node.call(now, &link, request) {
                Ok(call) => {
                    self.calls.insert((link, call), reply);
                }
                Err(e) => {
                    let _ = reply.try_send(Err(DbError::Unavailable(e.to_string())));
                }
            },
            Command::Subscribe {
                link,
                request,
                rows,
                reply,
            } => match self.node.subscribe(now, &link, request) {
                Ok(call) => {
                    self.subs.insert((link, call), rows);
                    let _ = reply.try_send(Ok(call));
                }
                Err(e) => {
                    let _ = reply.try_send(Err(PeerError::Node(e)));
                }
            },
            Command::Unsubscribe { link, call } => {
                self.subs.remove(&(link.clone(), call));
                let _ = self.node.cancel_call(now, &link, call);
            }
            Command::ForgetClosed => self.forget_closed(),
            Command::Stats { reply } => {
                let _ = reply.try_send(PeerStats {
                    databases: self.dbs.len(),
                    remote_subscriptions: self.subs.len(),
                    waiting_longpolls: self.parked.len(),
                    replications: self.reps.len(),
                    links: self.node.link_count(),
                    bytes_received: self.bytes_received,
                    bytes_sent: self.bytes_sent,
                });
            }
            Command::Share {
                db,
                options,
                access,
                decide,
                reply,
            } => {
                if !self.dbs.contains_key(&db) {
                    let _ = reply.try_send(Err(PeerError::UnknownDb(db)));
                    return;
                }
                let share = self.node.share(now, db, options, access);
                if let Some(d) = decide {
                    self.deciders.insert(share.clone(), d);
                }
                self.share_waiters.insert(share, reply);
            }
            Command::Unshare { share, reply } => match self.node.unshare(now, &share) {
                Ok(()) => {
                    self.deciders.remove(&share);
                    self.unshare_waiters.insert(share, reply);
                }
                Err(e) => {
                    let _ = reply.try_send(Err(PeerError::Node(e)));
                }
            },
            Command::List { reply } => {
                self.list_waiters.push(reply);
                self.node.list(now);
            }
            Command::Watch { events } => {
                if self.watchers.is_empty() {
                    self.node.watch(now, true);
                }
                // The shares already there come first, from a listing taken once the hub is
                // followed; changes seen meanwhile are merged in without repeats.
                self.watchers.push(Watcher {
                    events,
                    known: BTreeSet::new(),
                    listed: false,
                });
                self.node.list(now);
            }
            Command::Open {
                share,
                info,
                key,
                reply,
            } => match self.node.open(now, &share, info, key) {
                Ok(link) => {
                    self.open_waiters.insert(link, reply);
                }
                Err(e) => {
                    let _ = reply.try_send(Err(PeerError::Node(e)));
                }
            },
            Command::CloseLink { link } => self.node.close(now, &link),
            Command::WatchLinks { events } => self.links_watchers.push(events),
            Command::WatchLink { link, reply } => {
                if self.node.links().iter().any(|(l, _)| *l == link) {
                    self.link_watchers.entry(link).or_default().push(reply);
                } else {
                    let _ = reply.try_send("the link is closed".into());
                }
            }
            Command::Replicate {
                source,
                target,
                config,
                events,
                reply,
            } => {
                let id = self
                    .node
                    .replicate(now, source.db_ref(), target.db_ref(), config);
                self.reps.insert(id, events);
                let _ = reply.try_send(id);
            }
            Command::CancelReplication { id } => {
                let _ = self.node.cancel_replication(now, id);
            }
            Command::Shutdown { reply } => self.begin_shutdown(Some(reply)),
        }
    }

    fn on_event(&mut self, e: NodeEvent) {
        match e {
            NodeEvent::Hub(h) => self.on_hub_event(h),
            NodeEvent::PeerRequested {
                link,
                info,
                fingerprint,
            } => {
                let request = PeerRequest {
                    share: link.share.clone(),
                    peer: link.peer.clone(),
                    info,
                    fingerprint,
                };
                match self.deciders.get(&link.share).cloned() {
                    Some(decide) => {
                        // The decision may block (a prompt on a terminal): not on this task.
                        let done = self.done_tx.clone();
                        smol::spawn(async move {
                            let verdict = smol::unblock(move || decide(&request)).await;
                            let _ = done.send(Done::Verdict { link, verdict }).await;
                        })
                        .detach();
                    }
                    None => {
                        let _ = self.node.accept(Instant::now(), &link);
                    }
                }
            }
            NodeEvent::LinkReady { link, path } => {
                let via = path.map(|p| p.to_string()).unwrap_or_default();
                let fingerprint = self.node.remote_fingerprint(&link);
                tracing::info!(share = %link.share, peer = %link.peer, path = %via, fingerprint = fingerprint.as_deref().unwrap_or("-"), "link ready");
                self.link_event(LinkEvent::Ready {
                    share: link.share.clone(),
                    peer: link.peer.clone(),
                    ours: !self.open_waiters.contains_key(&link),
                    path,
                    fingerprint: fingerprint.clone(),
                });
                if let Some(w) = self.open_waiters.remove(&link) {
                    let uuid = self.node.link_db_uuid(&link).map(String::from);
                    let _ = w.try_send(Ok((link, path, fingerprint, uuid)));
                }
            }
            NodeEvent::LinkClosed { link, reason } => {
                tracing::info!(share = %link.share, peer = %link.peer, %reason, "link closed");
                // Its server's longpolls wait for no one now.
                self.forget_closed();
                self.link_event(LinkEvent::Closed {
                    share: link.share.clone(),
                    peer: link.peer.clone(),
                    reason: reason.clone(),
                });
                if let Some(w) = self.open_waiters.remove(&link) {
                    let _ = w.try_send(Err(PeerError::LinkFailed(reason.clone())));
                }
                let calls: Vec<_> = self
                    .calls
                    .keys()
                    .filter(|(l, _)| *l == link)
                    .cloned()
                    .collect();
                for k in calls {
                    if let Some(r) = self.calls.remove(&k) {
                        let e = DbError::Unavailable(format!("the link closed: {reason}"));
                        let _ = r.try_send(Err(e));
                    }
                }
                self.subs.retain(|(l, _), _| *l != link);
                for w in self.link_watchers.remove(&link).unwrap_or_default() {
                    let _ = w.try_send(reason.clone());
                }
            }
            NodeEvent::Refused { link, reason } => {
                if let Some(w) = self.open_waiters.remove(&link) {
                    let _ = w.try_send(Err(PeerError::Refused(reason)));
                }
            }
            NodeEvent::AwaitingApproval { link, timeout } => {
                tracing::info!(share = %link.share, peer = %link.peer, "waiting for the sharer to accept");
                self.link_event(LinkEvent::AwaitingApproval {
                    share: link.share,
                    peer: link.peer,
                    timeout,
                });
            }
            NodeEvent::NotAnswering { link, waited } => {
                if let Some(w) = self.open_waiters.remove(&link) {
                    let _ = w.try_send(Err(PeerError::NotAnswering { waited }));
                }
            }
            NodeEvent::NotAccepted { link, waited } => {
                if let Some(w) = self.open_waiters.remove(&link) {
                    let _ = w.try_send(Err(PeerError::NotAccepted { waited }));
                }
            }
            NodeEvent::CallResult { link, call, result } => {
                if let Some(r) = self.calls.remove(&(link, call)) {
                    let _ = r.try_send(result);
                }
            }
            NodeEvent::Changes {
                link,
                call,
                changes,
            } => {
                let key = (link, call);
                if let Some(s) = self.subs.get(&key) {
                    if let Err(e) = s.try_send(changes) {
                        if e.is_full() {
                            tracing::warn!(
                                "a changes subscription's reader fell {SUBSCRIPTION_BACKLOG} \
                                 batches behind: its stream ends (resubscribe from its last seq)"
                            );
                        }
                        // The app dropped its stream, or cannot keep up: stop the subscription.
                        self.subs.remove(&key);
                        let _ = self.node.cancel_call(Instant::now(), &key.0, key.1);
                    }
                }
            }
            NodeEvent::ChangesEnded { link, call, error } => {
                if let Some(e) = &error {
                    tracing::info!(share = %link.share, peer = %link.peer, error = %e, "a changes subscription ended");
                }
                // Dropping its sender ends the app's stream.
                self.subs.remove(&(link, call));
            }
            NodeEvent::Replication { id, event } => {
                let last = matches!(
                    event,
                    ReplicationEvent::Completed(_)
                        | ReplicationEvent::Failed { .. }
                        | ReplicationEvent::Cancelled(_)
                );
                if let Some(s) = self.reps.get(&id) {
                    // A reader that falls behind loses the oldest events, never the last one:
                    // progress is cumulative, so the newest tells everything the older did.
                    let _ = s.force_send(event);
                }
                if last {
                    self.reps.remove(&id);
                    // Its longpolls on local databases wait for no one now.
                    self.forget_closed();
                }
            }
            other => tracing::debug!(event = ?other, "node event"),
        }
    }

    fn link_event(&mut self, e: LinkEvent) {
        self.links_watchers
            .retain(|w| w.try_send(e.clone()).is_ok());
    }

    fn on_hub_event(&mut self, h: HubEvent) {
        match h {
            HubEvent::SharesListed(shares) => {
                for w in self.list_waiters.drain(..) {
                    let _ = w.try_send(Ok(shares.clone()));
                }
                self.watchers.retain_mut(|w| {
                    let first = !std::mem::replace(&mut w.listed, true);
                    !first || shares.iter().all(|s| w.added(s))
                });
            }
            HubEvent::ShareAdded(info) => self.watchers.retain_mut(|w| w.added(&info)),
            HubEvent::ShareRemoved { share, .. } => self.watchers.retain_mut(|w| w.removed(&share)),
            HubEvent::ShareCreated { share } => {
                tracing::info!(%share, "shared");
                if let Some(w) = self.share_waiters.remove(&share) {
                    let _ = w.try_send(Ok(share));
                }
            }
            HubEvent::ShareFailed { share, error } => {
                if let Some(w) = self.share_waiters.remove(&share) {
                    let _ = w.try_send(Err(PeerError::HubRequest(error)));
                }
            }
            HubEvent::Unshared { share } => {
                tracing::info!(%share, "unshared");
                if let Some(w) = self.unshare_waiters.remove(&share) {
                    let _ = w.try_send(Ok(()));
                }
            }
            HubEvent::RequestFailed { op, error } => {
                tracing::warn!(op, %error, "a hub request failed");
                if op == "info" {
                    // The machine could not start following the hub; it retries, but whoever
                    // waits now should hear why.
                    self.fail_waiting_on_hub(PeerError::HubRequest(error));
                }
            }
            HubEvent::Malformed { doc_id, error } => {
                tracing::debug!(%doc_id, %error, "malformed hub document skipped");
            }
            other => tracing::debug!(event = ?other, "hub event"),
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.close_inputs();
        if let HubBackend::Couch { follower, .. } = &mut self.hub {
            if let Some(f) = follower.take() {
                // Stopping joins the feed's thread, which may sit in a read until the next
                // heartbeat: not on an executor thread.
                smol::unblock(move || f.stop()).detach();
            }
        }
    }
}
