//! Simulation of whole nodes ([`peerpouch::node::Node`]): hub, sessions, RPC and replications,
//! each node with its own in-memory databases, over the virtual network and the in-memory hub.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerpouch::hub::{HubAction, MemoryHub};
use peerpouch::node::*;
use peerpouch::replicate::ReplicationEvent;
use peerpouch::*;

use super::net::{Nat, NatKind, NetConfig, VirtualNet};
use super::session_config;
use crate::common::epoch;
use crate::common::turn_server::TurnServer;
use peerpouch::reach::{IceServerUrl, IceTransportPolicy, ResolvedIceServer, Transport};
use peerpouch::session::Transmit;

/// The simulated STUN/TURN server's address (its relayed addresses share its IP).
pub const TURN_ADDR: &str = "198.51.100.20:3478";
/// Its user and password.
pub const TURN_USER: (&str, &str) = ("peer", "secret");

const WALL: u64 = 1_800_000_000_000;

pub struct SimNode {
    pub name: String,
    pub addr: SocketAddr,
    pub node: Option<Node>,
    pub stores: BTreeMap<String, MemoryStore>,
    parked: Vec<(Instant, StoreRequest)>,
    cursor: Option<usize>,
    pub events: Vec<(Duration, NodeEvent)>,
    seed: u64,
    /// Store requests executed, by operation.
    pub executed: BTreeMap<&'static str, u64>,
    /// This node's own configuration (ICE servers, policy), when it differs from the sim's.
    pub config: Option<NodeConfig>,
}

pub struct NodeSim {
    pub now: Instant,
    start: Instant,
    pub net: VirtualNet,
    pub hub: MemoryHub,
    pub nodes: Vec<SimNode>,
    pub config: NodeConfig,
    trace: String,
    /// Record call results and changes in the trace.
    pub trace_calls: bool,
    /// Record each store request and its answer, as JSON, in the trace.
    pub trace_store: bool,
    steps: u64,
    /// The STUN/TURN server, once [`NodeSim::add_turn`] made it.
    pub turn: Option<TurnServer>,
    /// Clients that reach the TURN server over TCP (its answers to them are stream bytes).
    turn_tcp_clients: std::collections::BTreeSet<SocketAddr>,
    turn_logged: crate::common::turn_server::Counters,
    /// Every document a node wrote to the hub, in order (signals are deleted once read: this
    /// keeps what crossed the hub).
    pub hub_writes: Vec<serde_json::Value>,
}

impl NodeSim {
    pub fn new(seed: u64, net: NetConfig) -> NodeSim {
        let now = epoch();
        let mut config = NodeConfig::default();
        config.session = session_config();
        NodeSim {
            now,
            start: now,
            net: VirtualNet::new(seed, net, now),
            hub: MemoryHub::new(),
            nodes: Vec::new(),
            config,
            trace: String::new(),
            trace_calls: true,
            trace_store: false,
            steps: 0,
            turn: None,
            turn_tcp_clients: std::collections::BTreeSet::new(),
            turn_logged: Default::default(),
            hub_writes: Vec::new(),
        }
    }

    /// Starts the STUN/TURN server at [`TURN_ADDR`].
    pub fn add_turn(&mut self) {
        let addr: SocketAddr = TURN_ADDR.parse().unwrap();
        self.turn = Some(TurnServer::new(
            addr,
            addr.ip(),
            "peerpouch.test",
            &[TURN_USER],
            77,
        ));
    }

    /// The ICE server URLs `urls` (`stun:` / `turn:`, any host: it is the simulated server)
    /// resolved to the simulated server, with its credentials.
    pub fn ice_servers(urls: &[&str]) -> Vec<ResolvedIceServer> {
        urls.iter()
            .map(|u| {
                let mut url = IceServerUrl::parse(u).unwrap();
                url.username = Some(TURN_USER.0.into());
                url.credential = Some(TURN_USER.1.into());
                url.resolved(TURN_ADDR.parse().unwrap())
            })
            .collect()
    }

    /// A node in a home behind a NAT of `kind` (private address 10.0.<i>.2, the router's
    /// public address 203.0.113.<i+1>), with its own ICE servers and policy.
    pub fn add_node_behind(
        &mut self,
        name: &str,
        kind: Option<NatKind>,
        ice: &[&str],
        policy: IceTransportPolicy,
    ) -> usize {
        let i = self.nodes.len();
        let mut config = self.config.clone();
        config.ice_servers = Self::ice_servers(ice);
        config.ice_transport_policy = policy;
        let addr: SocketAddr = match kind {
            Some(_) => format!("10.0.{i}.2:{}", 6000 + i).parse().unwrap(),
            None => format!("198.51.100.{}:{}", 100 + i, 6000 + i)
                .parse()
                .unwrap(),
        };
        if let Some(kind) = kind {
            let public = format!("203.0.113.{}", i + 1).parse().unwrap();
            self.net.nats.push(Nat::new(kind, addr, public));
        }
        self.push_node(name, addr, Some(config));
        i
    }

    /// The router of node `i` restarts: its NAT forgets every mapping.
    pub fn flush_nat(&mut self, i: usize) {
        let addr = self.nodes[i].addr;
        if let Some(n) = self.net.nats.iter_mut().find(|n| n.inside == addr) {
            n.flush();
        }
        self.log(i, "router restarted: NAT mappings flushed");
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    pub fn trace(&self) -> &str {
        &self.trace
    }

    fn log(&mut self, node: usize, msg: impl AsRef<str>) {
        let t = self.elapsed();
        let name = self.nodes[node].name.clone();
        let _ = writeln!(
            self.trace,
            "{:>7}.{:03}ms {name:<7} {}",
            t.as_millis(),
            t.subsec_micros() % 1000,
            msg.as_ref()
        );
    }

    pub fn add_node(&mut self, name: &str) -> usize {
        let i = self.nodes.len();
        let addr: SocketAddr = format!("127.0.1.{}:{}", 10 + i, 6000 + i).parse().unwrap();
        self.push_node(name, addr, None)
    }

    /// A node with its own configuration (on the sim's default network).
    pub fn add_node_with(&mut self, name: &str, config: NodeConfig) -> usize {
        let i = self.nodes.len();
        let addr: SocketAddr = format!("127.0.1.{}:{}", 10 + i, 6000 + i).parse().unwrap();
        self.push_node(name, addr, Some(config))
    }

    fn push_node(&mut self, name: &str, addr: SocketAddr, config: Option<NodeConfig>) -> usize {
        let i = self.nodes.len();
        self.nodes.push(SimNode {
            name: name.into(),
            addr,
            node: None,
            stores: BTreeMap::new(),
            parked: Vec::new(),
            cursor: None,
            events: Vec::new(),
            seed: 500 + i as u64,
            executed: BTreeMap::new(),
            config,
        });
        self.boot(i);
        i
    }

    fn boot(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        let config = n.config.clone().unwrap_or_else(|| self.config.clone());
        let mut node = Node::new(config, n.seed, self.now, WALL);
        node.add_local_candidate(n.addr);
        n.node = Some(node);
        n.cursor = None;
        n.parked.clear();
    }

    /// The process dies: its node and pending work vanish; its databases stay (they are on
    /// disk in a real app).
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].node = None;
        self.nodes[i].parked.clear();
        self.log(i, "crashed");
    }

    /// A new process on the same databases.
    pub fn restart(&mut self, i: usize) {
        // A new process: its event history starts over (ids restart too).
        self.nodes[i].events.clear();
        self.nodes[i].seed += 7919;
        self.boot(i);
        self.log(i, "restarted");
    }

    pub fn node(&mut self, i: usize) -> &mut Node {
        self.nodes[i].node.as_mut().expect("node is up")
    }

    pub fn store(&mut self, i: usize, db: &str) -> &mut MemoryStore {
        self.nodes[i]
            .stores
            .entry(db.to_string())
            .or_insert_with(|| MemoryStore::new(db))
    }

    /// Writes to a local database as the app would, and tells the node.
    /// Cuts nodes `a` and `b` apart from `from` until `until` (offsets from the start).
    pub fn partition(&mut self, a: usize, b: usize, from: Duration, until: Duration) {
        let (x, y) = (self.nodes[a].addr, self.nodes[b].addr);
        self.net
            .partition(x, y, self.start + from, self.start + until);
    }

    pub fn write(&mut self, i: usize, db: &str, docs: Vec<serde_json::Value>) {
        for r in self.store(i, db).bulk_docs(docs, true).unwrap() {
            r.result.unwrap();
        }
        let now = self.now;
        if let Some(n) = self.nodes[i].node.as_mut() {
            n.handle_db_changed(now, db);
        }
        self.wake_parked(i, db);
    }

    fn execute(&mut self, i: usize, req: StoreRequest) -> bool {
        let is_parked_longpoll = {
            let store = self.nodes[i]
                .stores
                .entry(req.db.clone())
                .or_insert_with(|| MemoryStore::new(req.db.clone()));
            matches!(&req.request, Request::Changes(c)
                if c.feed == Feed::Longpoll && c.since.as_u64().unwrap_or(0) >= store.update_seq())
        };
        if is_parked_longpoll {
            self.nodes[i].parked.push((self.now, req));
            return false;
        }
        *self.nodes[i]
            .executed
            .entry(req.request.name())
            .or_insert(0) += 1;
        if self.trace_calls {
            let line = format!("store {} {}", req.db, req.request.name());
            self.log(i, line);
        }
        if self.trace_store {
            let line = format!("  request {}", compact(serde_json::to_string(&req.request)));
            self.log(i, line);
        }
        let store = self.nodes[i]
            .stores
            .entry(req.db.clone())
            .or_insert_with(|| MemoryStore::new(req.db.clone()));
        let before = store.update_seq();
        let result = store.execute(req.request);
        let changed = store.update_seq() != before;
        if self.trace_store {
            let line = match &result {
                Ok(r) => format!("  answer  {}", compact(serde_json::to_string(r))),
                Err(e) => format!("  answer  error {} {}", e.status(), e.error()),
            };
            self.log(i, line);
        }
        let now = self.now;
        if let Some(n) = self.nodes[i].node.as_mut() {
            n.handle_store_result(now, req.id, result)
                .expect("a result for a store request the node issued");
            if changed {
                n.handle_db_changed(now, &req.db);
            }
        }
        if changed {
            self.wake_parked(i, &req.db);
        }
        true
    }

    fn wake_parked(&mut self, i: usize, db: &str) {
        let (wake, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut self.nodes[i].parked)
            .into_iter()
            .partition(|(_, r)| r.db == db);
        self.nodes[i].parked = keep;
        for (_, r) in wake {
            self.execute(i, r);
        }
    }

    fn settle_now(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                moved |= self.pump_node(i);
            }
            if !moved {
                return;
            }
        }
        panic!("nodes did not settle at one instant\n{}", self.trace);
    }

    fn pump_node(&mut self, i: usize) -> bool {
        let now = self.now;
        let mut moved = false;
        let Some(node) = self.nodes[i].node.as_mut() else {
            return false;
        };
        let mut actions = Vec::new();
        while let Some(a) = node.poll_hub_action() {
            actions.push(a);
        }
        for a in actions {
            moved = true;
            match a {
                HubAction::Request { id, request } => {
                    if let Request::BulkDocs(b) = &request {
                        self.hub_writes.extend(b.docs.iter().cloned());
                    }
                    let r = self.hub.execute(request);
                    self.node(i)
                        .handle_hub_response(now, id, r)
                        .expect("a response to a hub request the node issued");
                }
                HubAction::FollowChanges { since, filter } => {
                    // Filtered as a CouchDB 2+ hub does; a new feed replaces the old one.
                    let c = self.hub.follow_filtered(&since, Some(filter));
                    if let Some(old) = self.nodes[i].cursor.replace(c) {
                        self.hub.unfollow(old);
                    }
                }
            }
        }
        if let Some(c) = self.nodes[i].cursor {
            let rows = self.hub.poll_feed(c);
            if !rows.is_empty() {
                moved = true;
                self.node(i).handle_feed(now, rows);
            }
        }
        let mut reqs = Vec::new();
        let mut transmits = Vec::new();
        let mut events = Vec::new();
        {
            let node = self.node(i);
            while let Some(r) = node.poll_store_request() {
                reqs.push(r);
            }
            while let Some(t) = node.poll_transmit() {
                transmits.push(t);
            }
            while let Some(e) = node.poll_event() {
                events.push(e);
            }
        }
        for r in reqs {
            moved = true;
            self.execute(i, r);
        }
        for t in transmits {
            moved = true;
            self.net.send(now, t);
        }
        for e in events {
            moved = true;
            self.on_event(i, e);
        }
        moved
    }

    /// Trace lines for what the TURN server did since the last look (allocations, permissions,
    /// channel bindings, releases): the control traffic, not every relayed packet.
    fn log_turn(&mut self) {
        let Some(turn) = &self.turn else { return };
        let c = turn.counters;
        let was = self.turn_logged;
        let t = self.elapsed();
        let mut line = |what: &str, n: u64| {
            let _ = writeln!(
                self.trace,
                "{:>7}.{:03}ms {:<7} {what} (total {n})",
                t.as_millis(),
                t.subsec_micros() % 1000,
                "turn",
            );
        };
        if c.allocations != was.allocations {
            line("allocation made", c.allocations);
        }
        if c.permissions != was.permissions {
            line("permission installed", c.permissions);
        }
        if c.channel_binds != was.channel_binds {
            line("channel bound", c.channel_binds);
        }
        if c.refreshes != was.refreshes {
            line("refresh", c.refreshes);
        }
        self.turn_logged = c;
    }

    fn on_event(&mut self, i: usize, e: NodeEvent) {
        let line = match &e {
            NodeEvent::Hub(h) => Some(format!("hub {}", short_hub(h))),
            NodeEvent::PeerRequested { info, .. } => Some(format!("peer requested, info {info}")),
            NodeEvent::LinkReady { path, .. } => Some(match path {
                Some(p) if self.nodes[i].config.is_some() => format!("link ready, {p}"),
                _ => "link ready".into(),
            }),
            NodeEvent::LinkClosed { reason, .. } => Some(format!("link closed: {reason}")),
            NodeEvent::Refused { reason, .. } => Some(format!("refused: {reason:?}")),
            NodeEvent::CallResult { call, result, .. } if self.trace_calls => {
                Some(format!("call {call} -> {}", short_result(result)))
            }
            NodeEvent::Changes { call, changes, .. } if self.trace_calls => Some(format!(
                "subscription {call} -> {:?}",
                changes
                    .results
                    .iter()
                    .map(|r| r.id.as_str())
                    .collect::<Vec<_>>()
            )),
            NodeEvent::Replication { id, event } => match event {
                ReplicationEvent::Progressed(_) => None,
                ReplicationEvent::Completed(p) => Some(format!(
                    "replication {id} completed: read {} written {}",
                    p.docs_read, p.docs_written
                )),
                other => Some(format!("replication {id}: {}", short_rep(other))),
            },
            _ => None,
        };
        if let Some(l) = line {
            self.log(i, l);
        }
        let t = self.elapsed();
        self.nodes[i].events.push((t, e));
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut t = self.net.next_arrival();
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t: Instant| t.min(x)));
            }
        };
        for n in &self.nodes {
            consider(n.node.as_ref().and_then(|n| n.poll_timeout()));
            for (at, r) in &n.parked {
                if let Request::Changes(c) = &r.request {
                    consider(Some(
                        *at + Duration::from_millis(c.timeout_ms.unwrap_or(60_000)),
                    ));
                }
            }
        }
        t
    }

    fn step(&mut self, horizon: Instant) -> bool {
        self.steps += 1;
        assert!(
            self.steps < 5_000_000,
            "simulation did not settle\n{}",
            self.trace
        );
        self.settle_now();
        let Some(next) = self.next_deadline() else {
            return false;
        };
        if next > horizon {
            return false;
        }
        self.now = self.now.max(next);
        let now = self.now;
        for p in self.net.arrivals(now) {
            if let Some(turn) = self.turn.as_mut() {
                let outs = if p.to == turn.addr && p.tcp {
                    self.turn_tcp_clients.insert(p.from);
                    turn.handle_stream_from_client(now, p.from, &p.data)
                } else if p.to == turn.addr {
                    turn.handle_from_client(now, p.from, &p.data)
                } else if turn.is_relay(p.to) {
                    turn.handle_from_peer(now, p.from, p.to, &p.data)
                } else {
                    Vec::new()
                };
                for o in outs {
                    let transport = if self.turn_tcp_clients.contains(&o.to) && o.from == turn.addr
                    {
                        Transport::Tcp
                    } else {
                        Transport::Udp
                    };
                    self.net.send(
                        now,
                        Transmit {
                            source: o.from,
                            destination: o.to,
                            transport,
                            contents: o.bytes,
                        },
                    );
                }
            }
            if let Some(n) = self.nodes.iter_mut().find(|n| n.addr == p.to) {
                if let Some(node) = n.node.as_mut() {
                    if p.tcp {
                        node.handle_stream_data(now, p.from, &p.data);
                    } else {
                        node.handle_datagram(now, p.from, p.to, &p.data);
                    }
                }
            }
        }
        self.log_turn();
        for i in 0..self.nodes.len() {
            // Longpolls whose wait ran out answer with what there is (nothing).
            let expired: Vec<StoreRequest> = {
                let n = &mut self.nodes[i];
                let (due, keep): (Vec<_>, Vec<_>) = std::mem::take(&mut n.parked).into_iter().partition(|(at, r)| {
                    matches!(&r.request, Request::Changes(c) if *at + Duration::from_millis(c.timeout_ms.unwrap_or(60_000)) <= now)
                });
                n.parked = keep;
                due.into_iter()
                    .map(|(_, mut r)| {
                        if let Request::Changes(c) = &mut r.request {
                            c.feed = Feed::Normal;
                        }
                        r
                    })
                    .collect()
            };
            for r in expired {
                self.execute(i, r);
            }
            if let Some(n) = self.nodes[i].node.as_mut() {
                if n.poll_timeout().is_some_and(|t| t <= now) {
                    n.handle_timeout(now);
                }
            }
        }
        true
    }

    pub fn run_until(&mut self, within: Duration, mut done: impl FnMut(&NodeSim) -> bool) -> bool {
        let horizon = self.now + within;
        loop {
            self.settle_now();
            if done(self) {
                return true;
            }
            if !self.step(horizon) {
                self.now = self.now.max(horizon);
                self.settle_now();
                return done(self);
            }
        }
    }

    pub fn run_for(&mut self, within: Duration) {
        self.run_until(within, |_| false);
    }

    /// Ready links of node `i` (0 when it is down).
    pub fn node_ready_links(&self, i: usize) -> usize {
        self.nodes[i]
            .node
            .as_ref()
            .map_or(0, |n| n.links().iter().filter(|(_, ready)| *ready).count())
    }

    pub fn ready_link(&self, i: usize) -> Option<LinkId> {
        self.nodes[i]
            .events
            .iter()
            .rev()
            .find_map(|(_, e)| match e {
                NodeEvent::LinkReady { link: l, .. } => Some(l.clone()),
                _ => None,
            })
    }

    pub fn replication_end(&self, i: usize, id: ReplicationId) -> Option<ReplicationEvent> {
        self.nodes[i].events.iter().find_map(|(_, e)| match e {
            NodeEvent::Replication { id: r, event }
                if *r == id
                    && matches!(
                        event,
                        ReplicationEvent::Completed(_)
                            | ReplicationEvent::Failed { .. }
                            | ReplicationEvent::Cancelled(_)
                    ) =>
            {
                Some(event.clone())
            }
            _ => None,
        })
    }
}

fn short_hub(h: &peerpouch::hub::HubEvent) -> String {
    use peerpouch::hub::HubEvent::*;
    match h {
        Ready { .. } => "ready".into(),
        ShareCreated { .. } => "share created".into(),
        other => format!("{other:?}").chars().take(80).collect(),
    }
}

/// One line of JSON (from `serde_json::to_string`), cut at 400 characters.
fn compact(json: serde_json::Result<String>) -> String {
    let s = json.unwrap_or_else(|e| format!("<{e}>"));
    match s.char_indices().nth(400) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s,
    }
}

fn short_result(r: &Result<Response, DbError>) -> String {
    match r {
        Ok(Response::Doc(d)) => format!(
            "doc {}",
            d.doc.get("_id").and_then(|v| v.as_str()).unwrap_or("?")
        ),
        Ok(Response::BulkDocs(b)) => format!(
            "{} written",
            b.results.iter().filter(|r| r.result.is_ok()).count()
        ),
        Ok(Response::Info(i)) => format!("info doc_count={}", i.doc_count),
        Ok(other) => other.kind().to_string(),
        Err(e) => format!("error {} {}", e.status(), e.error()),
    }
}

fn short_rep(e: &ReplicationEvent) -> String {
    match e {
        ReplicationEvent::Started { .. } => "started".into(),
        ReplicationEvent::CaughtUp(p) => format!("caught up: written {}", p.docs_written),
        ReplicationEvent::Cancelled(_) => "cancelled".into(),
        ReplicationEvent::Failed { error, .. } => format!("failed: {error}"),
        other => format!("{other:?}"),
    }
}
