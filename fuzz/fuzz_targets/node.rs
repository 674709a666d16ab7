//! The composite machine (`peerpouch::node::Node`), stateful.
//!
//! Two nodes on one in-memory hub, each with a database: an `Arbitrary` sequence of operations
//! shares, opens, accepts, refuses, calls, subscribes, replicates, cancels and closes; delivers,
//! drops, duplicates, reorders and corrupts the datagrams between them, and sends them raw
//! bytes; writes signals of any shape to the hub; fails hub requests; answers store requests
//! late, fails them or leaves them waiting; and moves time by up to minutes.
//!
//! After every step: no panic; the nodes settle at one instant (no output loop that never
//! ends); every queue an output is drained from stays bounded; right after
//! `handle_timeout(now)`, `poll_timeout` is later than `now`. At the end, with every link
//! closed and time run on, every call made was answered or failed (a `CallResult`), and every
//! replication started has ended (completed, failed or cancelled).
#![no_main]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peerpouch::hub::{HubAction, HubEvent, MemoryHub, ShareOptions, SIGNAL_TYPE};
use peerpouch::node::{
    DbRef, LinkId, Node, NodeConfig, NodeEvent, ReplicationId, ShareAccess, StoreRequest,
};
use peerpouch::replicate::ReplicationEvent;
use peerpouch::rpc::CallId;
use peerpouch::session::Transmit;
use peerpouch::{
    BulkDocsRequest, ChangesRequest, Database, DbError, GetRequest, MemoryStore, ReplicatorConfig,
    Request, Seq,
};
use serde_json::json;

const WALL: u64 = 1_800_000_000_000;
/// Outputs one drain of a node may give, at most, for inputs of this size.
const MAX_BURST: usize = 20_000;
/// Datagrams in flight, at most (older ones are lost, as a full network would).
const MAX_IN_FLIGHT: usize = 4096;

#[derive(Arbitrary, Debug)]
struct Input {
    seeds: (u64, u64),
    ask: bool,
    key: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Time passes (milliseconds, the top bit makes it seconds).
    Advance(u16),
    /// Run every node and the network until nothing is due within `ms`.
    Run(u16),
    Share {
        node: bool,
    },
    Unshare {
        node: bool,
    },
    Open {
        node: bool,
        right_key: bool,
    },
    Accept {
        node: bool,
        which: u8,
    },
    Refuse {
        node: bool,
        which: u8,
        reason: bool,
    },
    Call {
        node: bool,
        which: u8,
        kind: u8,
    },
    Subscribe {
        node: bool,
        which: u8,
    },
    Cancel {
        node: bool,
        which: u8,
    },
    Replicate {
        node: bool,
        which: u8,
        push: bool,
    },
    CancelReplication {
        node: bool,
        which: u8,
    },
    Close {
        node: bool,
        which: u8,
    },
    /// Deliver the n-th datagram in flight, maybe damaged or twice.
    Deliver {
        which: u16,
        flip: Option<(u16, u8)>,
        twice: bool,
    },
    Drop {
        which: u16,
    },
    /// Raw bytes from the other node's address.
    Raw {
        node: bool,
        bytes: Vec<u8>,
    },
    /// Someone writes a signal on the hub to one of the known ids.
    Signal {
        to: u8,
        from: u8,
        data: u8,
        n: Option<u64>,
    },
    /// The next `n` hub requests fail.
    FailHub(u8),
    /// Store requests: the next `n` wait instead of being answered; or fail.
    HoldStore(u8),
    FailStore(u8),
    /// Answer the held store requests.
    ReleaseStore,
    Write {
        node: bool,
        id: u8,
    },
}

struct Side {
    node: Node,
    addr: SocketAddr,
    store: MemoryStore,
    cursor: Option<usize>,
    shares: Vec<String>,
    /// Links this node opened, and those it serves.
    opened: Vec<LinkId>,
    requested: Vec<LinkId>,
    ready: BTreeSet<LinkId>,
    calls: BTreeMap<(LinkId, CallId), bool>,
    reps: BTreeSet<ReplicationId>,
    held: VecDeque<StoreRequest>,
}

struct World {
    hub: MemoryHub,
    sides: [Side; 2],
    net: VecDeque<Transmit>,
    now: Instant,
    fail_hub: u8,
    hold_store: u8,
    fail_store: u8,
    key: Option<Vec<u8>>,
    /// Shares ask the app about each peer (else every peer with the key gets in).
    ask: bool,
}

fn pick<T: Clone>(v: &[T], i: u8) -> Option<T> {
    (!v.is_empty()).then(|| v[usize::from(i) % v.len()].clone())
}

impl World {
    fn new(input: &Input) -> World {
        let now = Instant::now();
        let side = |i: usize, seed: u64| {
            let addr: SocketAddr = format!("127.0.0.{}:{}", 10 + i, 7000 + i).parse().unwrap();
            let mut node = Node::new(NodeConfig::default(), seed, now, WALL);
            node.add_local_candidate(addr);
            Side {
                node,
                addr,
                store: MemoryStore::new("db"),
                cursor: None,
                shares: Vec::new(),
                opened: Vec::new(),
                requested: Vec::new(),
                ready: BTreeSet::new(),
                calls: BTreeMap::new(),
                reps: BTreeSet::new(),
                held: VecDeque::new(),
            }
        };
        World {
            hub: MemoryHub::new(),
            sides: [side(0, input.seeds.0), side(1, input.seeds.1 ^ 1)],
            net: VecDeque::new(),
            now,
            fail_hub: 0,
            hold_store: 0,
            fail_store: 0,
            key: input.key.then(|| b"secret".to_vec()),
            ask: input.ask,
        }
    }

    fn store_result(&mut self, i: usize, r: StoreRequest, fail: bool) {
        let s = &mut self.sides[i];
        let before = s.store.update_seq();
        let result = if fail {
            Err(DbError::Unavailable("fuzzed".into()))
        } else {
            s.store.execute(r.request)
        };
        s.node
            .handle_store_result(self.now, r.id, result)
            .expect("a result for a store request the node issued");
        if s.store.update_seq() != before {
            s.node.handle_db_changed(self.now, &r.db);
        }
    }

    /// Drains node `i` once; whether anything moved.
    fn pump(&mut self, i: usize) -> bool {
        let now = self.now;
        let mut moved = false;
        let mut burst = 0;
        let count = |burst: &mut usize| {
            *burst += 1;
            assert!(
                *burst <= MAX_BURST,
                "more than {MAX_BURST} outputs in one drain"
            );
        };
        while let Some(a) = self.sides[i].node.poll_hub_action() {
            count(&mut burst);
            moved = true;
            match a {
                HubAction::Request { id, request } => {
                    let r = if self.fail_hub > 0 {
                        self.fail_hub -= 1;
                        Err(DbError::Unavailable("fuzzed".into()))
                    } else {
                        self.hub.execute(request)
                    };
                    self.sides[i]
                        .node
                        .handle_hub_response(now, id, r)
                        .expect("a response to a hub request the node issued");
                }
                HubAction::FollowChanges { since, filter } => {
                    let c = self.hub.follow_filtered(&since, Some(filter));
                    if let Some(old) = self.sides[i].cursor.replace(c) {
                        self.hub.unfollow(old);
                    }
                }
            }
        }
        if let Some(c) = self.sides[i].cursor {
            let rows = self.hub.poll_feed(c);
            if !rows.is_empty() {
                moved = true;
                self.sides[i].node.handle_feed(now, rows);
            }
        }
        while let Some(r) = self.sides[i].node.poll_store_request() {
            count(&mut burst);
            moved = true;
            if self.hold_store > 0 {
                self.hold_store -= 1;
                self.sides[i].held.push_back(r);
            } else if self.fail_store > 0 {
                self.fail_store -= 1;
                self.store_result(i, r, true);
            } else {
                self.store_result(i, r, false);
            }
        }
        while let Some(t) = self.sides[i].node.poll_transmit() {
            count(&mut burst);
            moved = true;
            if self.net.len() >= MAX_IN_FLIGHT {
                self.net.pop_front();
            }
            self.net.push_back(t);
        }
        while let Some(e) = self.sides[i].node.poll_event() {
            count(&mut burst);
            moved = true;
            self.on_event(i, e);
        }
        moved
    }

    fn on_event(&mut self, i: usize, e: NodeEvent) {
        let s = &mut self.sides[i];
        match e {
            NodeEvent::PeerRequested { link, .. } => s.requested.push(link),
            NodeEvent::LinkReady { link, .. } => {
                s.ready.insert(link);
            }
            NodeEvent::LinkClosed { link, .. } => {
                s.ready.remove(&link);
                // A subscription ends with its link (`ChangesEnded` may follow, and is not
                // asked for), so only plain calls must each get a `CallResult`.
                s.calls.retain(|(l, _), subscription| !(*l == link && *subscription));
            }
            NodeEvent::CallResult { link, call, .. } => {
                // One result per call; a second one is a bug.
                let known = s.calls.remove(&(link.clone(), call));
                assert!(known.is_some(), "a result for no call: {link:?} {call:?}");
            }
            NodeEvent::Changes { link, call, .. } => {
                assert!(
                    s.calls.get(&(link.clone(), call)) == Some(&true),
                    "changes for no subscription (or after its end): {link:?} {call:?}"
                );
            }
            NodeEvent::ChangesEnded { link, call, .. } => {
                let was = s.calls.remove(&(link.clone(), call));
                assert!(
                    was != Some(false),
                    "a plain call ended as a subscription: {link:?} {call:?}"
                );
            }
            NodeEvent::Replication { id, event } => match event {
                ReplicationEvent::Completed(_)
                | ReplicationEvent::Failed { .. }
                | ReplicationEvent::Cancelled(_) => {
                    assert!(
                        s.reps.remove(&id),
                        "replication {id} ended twice or never began"
                    );
                }
                _ => {}
            },
            NodeEvent::Hub(HubEvent::ShareCreated { .. }) => {}
            _ => {}
        }
    }

    fn settle(&mut self) {
        for _ in 0..100_000 {
            let a = self.pump(0);
            let b = self.pump(1);
            if !(a || b) {
                return;
            }
        }
        panic!("the nodes did not settle at one instant");
    }

    fn deliver(&mut self, t: Transmit, flip: Option<(u16, u8)>) {
        let to = self.sides.iter().position(|s| s.addr == t.destination);
        let Some(to) = to else {
            return;
        };
        let mut data = t.contents.to_vec();
        if let Some((at, x)) = flip {
            if !data.is_empty() {
                let at = usize::from(at) % data.len();
                data[at] ^= x.max(1);
            }
        }
        self.sides[to]
            .node
            .handle_datagram(self.now, t.source, t.destination, &data);
    }

    fn timeouts(&mut self) {
        for i in 0..2 {
            if self.sides[i]
                .node
                .poll_timeout()
                .is_some_and(|t| t <= self.now)
            {
                self.sides[i].node.handle_timeout(self.now);
                self.settle();
            }
        }
        for i in 0..2 {
            if let Some(t) = self.sides[i].node.poll_timeout() {
                assert!(
                    t > self.now || {
                        // Due again at once (new work came from the other node): fire once more.
                        self.sides[i].node.handle_timeout(self.now);
                        self.settle();
                        self.sides[i]
                            .node
                            .poll_timeout()
                            .is_none_or(|t| t > self.now)
                    },
                    "node {i}: a deadline at or before now is left after handle_timeout: {:?} behind; the hub's: {:?}; links: {:?}",
                    self.sides[i].node.poll_timeout().map(|t| self.now.saturating_duration_since(t)),
                    self.sides[i].node.hub().poll_timeout().map(|t| self.now.saturating_duration_since(t)),
                    self.sides[i].node.links(),
                );
            }
        }
    }

    /// Delivers everything in flight and fires timers until nothing is due within `span`.
    fn run(&mut self, span: Duration) {
        let end = self.now + span;
        for _ in 0..10_000 {
            while let Some(t) = self.net.pop_front() {
                self.deliver(t, None);
                self.settle();
            }
            let next = self
                .sides
                .iter()
                .filter_map(|s| s.node.poll_timeout())
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    self.timeouts();
                }
                _ => break,
            }
        }
        self.now = self.now.max(end);
        self.timeouts();
    }

    fn release_store(&mut self) {
        for i in 0..2 {
            while let Some(r) = self.sides[i].held.pop_front() {
                self.store_result(i, r, false);
            }
        }
        self.settle();
    }

    fn step(&mut self, op: &Op) {
        let now = self.now;
        match op {
            Op::Advance(ms) => {
                let d = if ms & 0x8000 != 0 {
                    Duration::from_secs(u64::from(ms & 0x7fff) % 600)
                } else {
                    Duration::from_millis(u64::from(*ms))
                };
                self.now += d;
                self.timeouts();
            }
            Op::Run(ms) => self.run(Duration::from_millis(u64::from(*ms))),
            Op::Share { node } => {
                let i = usize::from(*node);
                let access = ShareAccess {
                    key: self.key.clone(),
                    ask: self.ask,
                    ..ShareAccess::default()
                };
                let id =
                    self.sides[i]
                        .node
                        .share(now, "db".into(), ShareOptions::default(), access);
                self.sides[i].shares.push(id);
            }
            Op::Unshare { node } => {
                let i = usize::from(*node);
                if let Some(s) = self.sides[i].shares.pop() {
                    let _ = self.sides[i].node.unshare(now, &s);
                }
            }
            Op::Open { node, right_key } => {
                let i = usize::from(*node);
                let other = &self.sides[1 - i].shares;
                if let Some(share) = other.last().cloned() {
                    let key = if *right_key {
                        self.key.clone()
                    } else {
                        Some(b"wrong".to_vec())
                    };
                    if let Ok(l) = self.sides[i].node.open(now, &share, json!({}), key) {
                        self.sides[i].opened.push(l);
                    }
                }
            }
            Op::Accept { node, which } => {
                let i = usize::from(*node);
                if let Some(l) = pick(&self.sides[i].requested, *which) {
                    let _ = self.sides[i].node.accept(now, &l);
                }
            }
            Op::Refuse {
                node,
                which,
                reason,
            } => {
                let i = usize::from(*node);
                if let Some(l) = pick(&self.sides[i].requested, *which) {
                    let _ = self.sides[i]
                        .node
                        .refuse(now, &l, reason.then(|| "no".into()));
                }
            }
            Op::Call { node, which, kind } => {
                let i = usize::from(*node);
                if let Some(l) = pick(&self.sides[i].opened, *which) {
                    let request = match kind % 3 {
                        0 => Request::Get(GetRequest::new(format!("d{}", kind % 5))),
                        1 => Request::BulkDocs(BulkDocsRequest {
                            docs: vec![json!({"_id": format!("d{}", kind % 5), "k": kind})],
                            new_edits: true,
                        }),
                        _ => Request::Info,
                    };
                    if let Ok(c) = self.sides[i].node.call(now, &l, request) {
                        self.sides[i].calls.insert((l, c), false);
                    }
                }
            }
            Op::Subscribe { node, which } => {
                let i = usize::from(*node);
                if let Some(l) = pick(&self.sides[i].opened, *which) {
                    let request = ChangesRequest {
                        since: Seq(json!("now")),
                        ..ChangesRequest::default()
                    };
                    if let Ok(c) = self.sides[i].node.subscribe(now, &l, request) {
                        self.sides[i].calls.insert((l, c), true);
                    }
                }
            }
            Op::Cancel { node, which } => {
                let i = usize::from(*node);
                let calls: Vec<(LinkId, CallId)> = self.sides[i].calls.keys().cloned().collect();
                if let Some((l, c)) = pick(&calls, *which) {
                    let _ = self.sides[i].node.cancel_call(now, &l, c);
                }
            }
            Op::Replicate { node, which, push } => {
                let i = usize::from(*node);
                if let Some(l) = pick(&self.sides[i].opened, *which) {
                    let (local, remote) = (DbRef::Local("db".into()), DbRef::Remote(l));
                    let (source, target) = if *push {
                        (local, remote)
                    } else {
                        (remote, local)
                    };
                    let id = self.sides[i].node.replicate(
                        now,
                        source,
                        target,
                        ReplicatorConfig::new("a", "b"),
                    );
                    self.sides[i].reps.insert(id);
                }
            }
            Op::CancelReplication { node, which } => {
                let i = usize::from(*node);
                let reps: Vec<ReplicationId> = self.sides[i].reps.iter().copied().collect();
                if let Some(id) = pick(&reps, *which) {
                    let _ = self.sides[i].node.cancel_replication(now, id);
                }
            }
            Op::Close { node, which } => {
                let i = usize::from(*node);
                let links: Vec<LinkId> = self.sides[i]
                    .opened
                    .iter()
                    .chain(&self.sides[i].requested)
                    .cloned()
                    .collect();
                if let Some(l) = pick(&links, *which) {
                    self.sides[i].node.close(now, &l);
                }
            }
            Op::Deliver { which, flip, twice } => {
                if !self.net.is_empty() {
                    let at = usize::from(*which) % self.net.len();
                    if let Some(t) = self.net.remove(at) {
                        if *twice {
                            self.deliver(t.clone(), None);
                            self.settle();
                        }
                        self.deliver(t, *flip);
                    }
                }
            }
            Op::Drop { which } => {
                if !self.net.is_empty() {
                    let at = usize::from(*which) % self.net.len();
                    self.net.remove(at);
                }
            }
            Op::Raw { node, bytes } => {
                let i = usize::from(*node);
                let (from, to) = (self.sides[1 - i].addr, self.sides[i].addr);
                self.sides[i].node.handle_datagram(now, from, to, bytes);
            }
            Op::Signal { to, from, data, n } => {
                let mut ids: Vec<String> = Vec::new();
                for s in &self.sides {
                    ids.extend(s.shares.iter().cloned());
                    ids.extend(
                        s.opened
                            .iter()
                            .chain(&s.requested)
                            .map(|l| format!("{l:?}")),
                    );
                }
                ids.push("peer-0123456789abcdef0123456789abcdef".into());
                let pick_id = |i: u8| {
                    let id = pick(&ids, i).unwrap_or_default();
                    // Link ids print as their (share, peer) pair: take the peer.
                    id.rsplit('"')
                        .nth(1)
                        .map(String::from)
                        .filter(|p| p.starts_with("peer-"))
                        .unwrap_or(id)
                };
                let data = match data % 6 {
                    0 => json!({"type": "offer", "sdp": "v=0\r\n"}),
                    1 => json!({"type": "answer", "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n"}),
                    2 => {
                        json!({"candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.10 7000 typ host", "sdpMid": "0", "sdpMLineIndex": 0}})
                    }
                    3 => json!({"candidate": null}),
                    4 => json!({"type": "refuse", "reason": "no"}),
                    _ => json!({"type": "pending"}),
                };
                let mut doc = json!({"_id": format!("p-signal-fuzz-{to}-{from}-{data}"), "type": SIGNAL_TYPE,
                    "sender": pick_id(*from), "recipient": pick_id(*to), "data": data, "info": null});
                if let Some(n) = n {
                    doc["n"] = json!(n);
                }
                let _ = self.hub.db().put(doc);
            }
            Op::FailHub(n) => self.fail_hub = n % 8,
            Op::HoldStore(n) => self.hold_store = n % 16,
            Op::FailStore(n) => self.fail_store = n % 4,
            Op::ReleaseStore => self.release_store(),
            Op::Write { node, id } => {
                let i = usize::from(*node);
                let s = &mut self.sides[i];
                let _ = s.store.put(json!({"_id": format!("w{id}")}));
                s.node.handle_db_changed(now, "db");
            }
        }
        self.settle();
    }
}

fuzz_target!(|input: Input| {
    let mut w = World::new(&input);
    w.settle();
    for op in input.ops.iter().take(48) {
        w.step(op);
    }
    // Wind down: store requests answered, every link closed, time run on.
    w.hold_store = 0;
    w.fail_hub = 0;
    w.release_store();
    for i in 0..2 {
        let links: Vec<LinkId> = w.sides[i]
            .node
            .links()
            .into_iter()
            .map(|(l, _)| l)
            .collect();
        for l in links {
            let now = w.now;
            w.sides[i].node.close(now, &l);
        }
        let reps: Vec<ReplicationId> = w.sides[i].reps.iter().copied().collect();
        for id in reps {
            let now = w.now;
            let _ = w.sides[i].node.cancel_replication(now, id);
        }
    }
    w.settle();
    w.run(Duration::from_secs(600));
    w.release_store();
    for (i, s) in w.sides.iter().enumerate() {
        assert!(
            s.calls.is_empty(),
            "node {i}: calls never answered: {:?}",
            s.calls.keys().collect::<Vec<_>>()
        );
        assert!(
            s.reps.is_empty(),
            "node {i}: replications never ended: {:?}",
            s.reps
        );
        assert!(
            s.node.links().is_empty(),
            "node {i}: links left open: {:?}",
            s.node.links()
        );
    }
});
