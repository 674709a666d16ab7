//! The simulation harness: many nodes, a virtual clock, a virtual network with seeded latency,
//! jitter, loss, duplication, an MTU and partitions, and the in-memory hub.
//!
//! Every node runs the real machines: a [`Hub`] negotiator (against the shared [`MemoryHub`])
//! and one [`Session`] per connection. Time never sleeps: each step jumps to the next packet
//! arrival or machine deadline. Packets sit in an ordered queue keyed by (arrival time, sequence
//! number); randomness comes from one seeded generator. A run that does not settle within its
//! step bound panics with the trace.
//!
//! The trace has one line per step of interest: virtual time, node, direction, and the decoded
//! message (hub signals, session events, channel messages). DTLS/SCTP bytes are random inside
//! str0m and never appear in it.
#![allow(dead_code)]

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use peerpouch::hub::*;
use peerpouch::session::*;
use serde_json::json;

use crate::common::epoch;

pub mod net;
pub mod nodes;
#[allow(unused_imports)] // each test binary uses its part of the simulation
pub use net::{NatKind, NetConfig, VirtualNet};

/// One certificate for every session of the process: generating one per session is slow, and a
/// fixed certificate is what the design asks of tests.
pub fn test_cert() -> str0m::config::DtlsCert {
    static CERT: OnceLock<str0m::config::DtlsCert> = OnceLock::new();
    CERT.get_or_init(|| {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .expect("generate a DTLS certificate")
    })
    .clone()
}

pub fn session_config() -> SessionConfig {
    let mut c = SessionConfig::default();
    c.dtls_cert = Some(test_cert());
    c.deterministic_dtls = true;
    c
}

/// A connection as the sim names it: (share, peer).
pub type Conn = (String, String);

pub struct Link {
    pub session: Session,
    /// Creation order: when several sessions accept a datagram, the newest wins (a peer that
    /// restarted on the same address replaces its old, dead session).
    pub created: u64,
    pub outbox: VecDeque<Vec<u8>>,
    pub received: Vec<Vec<u8>>,
    pub opened_at: Option<Duration>,
    pub closed: Option<(Duration, CloseReason)>,
}

pub struct Node {
    pub name: String,
    pub addr: SocketAddr,
    pub hub: Option<Hub>,
    pub links: BTreeMap<Conn, Link>,
    /// Sharer policy: refuse peers whose info equals this.
    pub refuse_info: Option<serde_json::Value>,
    pub refused: Vec<Conn>,
    seed: u64,
}

pub struct Sim {
    pub now: Instant,
    start: Instant,
    pub net: VirtualNet,
    pub session: SessionConfig,
    hub_config: HubConfig,
    pub nodes: Vec<Node>,
    pub hub: MemoryHub,
    trace: String,
    pub trace_messages: bool,
    pub steps: u64,
    pub max_steps: u64,
}

const WALL: u64 = 1_800_000_000_000;

impl Sim {
    pub fn new(seed: u64, net: NetConfig) -> Sim {
        let now = epoch();
        Sim {
            now,
            start: now,
            net: VirtualNet::new(seed, net, now),
            session: session_config(),
            hub_config: HubConfig::default(),
            nodes: Vec::new(),
            hub: MemoryHub::new(),
            trace: String::new(),
            trace_messages: true,
            steps: 0,
            max_steps: 2_000_000,
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    fn log(&mut self, node: &str, dir: &str, msg: impl AsRef<str>) {
        let t = self.elapsed();
        let _ = writeln!(
            self.trace,
            "{:>6}.{:03}ms {node:<6} {dir:<5} {}",
            t.as_millis(),
            t.subsec_micros() % 1000,
            msg.as_ref()
        );
    }

    pub fn trace(&self) -> &str {
        &self.trace
    }

    pub fn add_node(&mut self, name: &str) -> usize {
        let i = self.nodes.len();
        let seed = 1000 + i as u64;
        let addr: SocketAddr = format!("127.0.0.{}:{}", 10 + i, 5000 + i).parse().unwrap();
        self.nodes.push(Node {
            name: name.into(),
            addr,
            hub: Some(Hub::new(self.hub_config.clone(), seed, self.now, WALL)),
            links: BTreeMap::new(),
            refuse_info: None,
            refused: Vec::new(),
            seed,
        });
        i
    }

    /// Replaces a crashed node by a fresh one at the same address (a restarted process).
    pub fn restart(&mut self, i: usize) {
        let seed = self.nodes[i].seed + 7919;
        self.nodes[i].seed = seed;
        self.nodes[i].hub = Some(Hub::new(self.hub_config.clone(), seed, self.now, WALL));
        self.nodes[i].links.clear();
        let name = self.nodes[i].name.clone();
        self.log(&name, "!", "restarted");
    }

    /// The node stops: no more packets, timers or hub traffic (its hub documents stay).
    pub fn crash(&mut self, i: usize) {
        self.nodes[i].hub = None;
        self.nodes[i].links.clear();
        let name = self.nodes[i].name.clone();
        self.log(&name, "!", "crashed");
    }

    pub fn partition(&mut self, a: usize, b: usize, from: Duration, until: Duration) {
        let (x, y) = (self.nodes[a].addr, self.nodes[b].addr);
        self.net
            .partition(x, y, self.start + from, self.start + until);
    }

    pub fn share(&mut self, node: usize) -> String {
        let now = self.now;
        let name = Some(format!("{}'s db", self.nodes[node].name));
        self.nodes[node].hub.as_mut().expect("node is up").share(
            now,
            ShareOptions {
                name,
                ..ShareOptions::default()
            },
        )
    }

    /// Starts connecting `node` to `share`; returns the connection.
    pub fn open(&mut self, node: usize, share: &str) -> Conn {
        let now = self.now;
        let info = json!({"name": self.nodes[node].name});
        let seed = self.nodes[node].seed * 31 + self.nodes[node].links.len() as u64;
        let n = &mut self.nodes[node];
        let peer = n
            .hub
            .as_mut()
            .expect("node is up")
            .open(now, share, info)
            .unwrap();
        let mut session = Session::new(SessionRole::Offerer, self.session.clone(), seed, now);
        session.add_local_candidate(now, n.addr).unwrap();
        let conn = (share.to_string(), peer);
        n.links.insert(conn.clone(), Link::new(session));
        conn
    }

    pub fn link(&self, node: usize, conn: &Conn) -> Option<&Link> {
        self.nodes[node].links.get(conn)
    }

    /// The connection `node` has on its side of the share (sharer side lookup by peer).
    pub fn conns(&self, node: usize) -> Vec<Conn> {
        self.nodes[node].links.keys().cloned().collect()
    }

    pub fn queue_send(
        &mut self,
        node: usize,
        conn: &Conn,
        msgs: impl IntoIterator<Item = Vec<u8>>,
    ) {
        let link = self.nodes[node].links.get_mut(conn).expect("link exists");
        link.outbox.extend(msgs);
    }

    pub fn close(&mut self, node: usize, conn: &Conn) {
        let now = self.now;
        if let Some(l) = self.nodes[node].links.get_mut(conn) {
            l.session.close(now);
        }
    }

    fn transmit(&mut self, t: Transmit) {
        let now = self.now;
        self.net.send(now, t);
    }

    /// Runs every machine at the current time until nothing moves.
    fn settle_now(&mut self) {
        for _round in 0..10_000 {
            let mut moved = false;
            // Hub traffic, all nodes at once.
            let mut hubs: Vec<(usize, Hub)> = Vec::new();
            for (i, n) in self.nodes.iter_mut().enumerate() {
                if let Some(h) = n.hub.take() {
                    hubs.push((i, h));
                }
            }
            let events = {
                let mut refs: Vec<&mut Hub> = hubs.iter_mut().map(|(_, h)| h).collect();
                self.hub.settle(self.now, &mut refs)
            };
            for ((i, h), evs) in hubs.into_iter().zip(events) {
                self.nodes[i].hub = Some(h);
                for e in evs {
                    moved = true;
                    self.on_hub_event(i, e);
                }
            }
            // Sessions.
            for i in 0..self.nodes.len() {
                let conns: Vec<Conn> = self.nodes[i].links.keys().cloned().collect();
                for conn in conns {
                    moved |= self.pump_link(i, &conn);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("machines did not settle at one instant\n{}", self.trace);
    }

    fn on_hub_event(&mut self, i: usize, e: HubEvent) {
        let name = self.nodes[i].name.clone();
        let now = self.now;
        match e {
            HubEvent::PeerRequested { share, peer, info } => {
                self.log(
                    &name,
                    "<-hub",
                    format!("peer requested {} info={info}", short(&peer)),
                );
                let refuse = self.nodes[i].refuse_info.as_ref() == Some(&info);
                if refuse {
                    let hub = self.nodes[i].hub.as_mut().unwrap();
                    hub.refuse(now, &share, &peer, Some("refused by policy".into()))
                        .unwrap();
                    self.nodes[i].refused.push((share, peer));
                    self.log(&name, "->hub", "refuse");
                } else {
                    let seed = self.nodes[i].seed * 31 + 17 + self.nodes[i].links.len() as u64;
                    let mut session =
                        Session::new(SessionRole::Answerer, self.session.clone(), seed, now);
                    let addr = self.nodes[i].addr;
                    session.add_local_candidate(now, addr).unwrap();
                    let n = &mut self.nodes[i];
                    n.links
                        .insert((share.clone(), peer.clone()), Link::new(session));
                    n.hub.as_mut().unwrap().accept(now, &share, &peer).unwrap();
                    self.log(&name, "->hub", "accept");
                }
            }
            HubEvent::Signal { share, peer, data } => {
                self.log(&name, "<-hub", describe_signal(&data));
                let conn = (share, peer);
                if let Some(l) = self.nodes[i].links.get_mut(&conn) {
                    if let Err(e) = l.session.handle_signal(now, data) {
                        let msg = format!("signal refused: {e}");
                        self.log(&name, "err", msg);
                    }
                }
            }
            other => {
                let line = match &other {
                    HubEvent::Ready { .. } => "ready".to_string(),
                    HubEvent::ShareCreated { share } => format!("share created {}", short(share)),
                    HubEvent::Refused { reason, .. } => format!("refused: {reason:?}"),
                    HubEvent::ConnectionClosed { peer, .. } => {
                        format!("connection closed {}", short(peer))
                    }
                    e => format!("{e:?}"),
                };
                self.log(&name, "<-hub", line);
            }
        }
    }

    fn pump_link(&mut self, i: usize, conn: &Conn) -> bool {
        let now = self.now;
        let elapsed = self.elapsed();
        let name = self.nodes[i].name.clone();
        let mut moved = false;
        let mut lines = Vec::new();
        let mut transmits = Vec::new();
        let mut signals = Vec::new();
        {
            let Some(link) = self.nodes[i].links.get_mut(conn) else {
                return false;
            };
            // Outbox, as far as the send buffer allows.
            while let Some(m) = link.outbox.front() {
                match link.session.send(now, true, m) {
                    Ok(true) => {
                        link.outbox.pop_front();
                    }
                    Ok(false) | Err(SessionError::NotOpen) => break,
                    Err(e) => panic!("send failed: {e}"),
                }
            }
            while let Some(s) = link.session.poll_signal() {
                signals.push(s);
            }
            while let Some(t) = link.session.poll_transmit() {
                transmits.push(t);
            }
            while let Some(e) = link.session.poll_event() {
                moved = true;
                match &e {
                    SessionEvent::Message { data, .. } => {
                        if self.trace_messages {
                            lines.push((
                                "recv",
                                format!("message {} bytes {:?}", data.len(), preview(data)),
                            ));
                        }
                        link.received.push(data.clone());
                    }
                    SessionEvent::ChannelOpened => {
                        link.opened_at = Some(elapsed);
                        lines.push(("ev", "channel opened".to_string()));
                    }
                    SessionEvent::Closed(r) => {
                        link.closed = Some((elapsed, r.clone()));
                        lines.push(("ev", format!("closed: {r:?}")));
                    }
                    SessionEvent::BufferedAmountLow => {}
                    other => lines.push(("ev", format!("{other:?}"))),
                }
            }
        }
        for (dir, l) in lines {
            self.log(&name, dir, l);
        }
        for s in signals {
            moved = true;
            self.log(&name, "->hub", describe_signal(&s));
            if let Some(h) = self.nodes[i].hub.as_mut() {
                if let Err(e) = h.send_signal(now, &conn.0, &conn.1, s) {
                    let msg = format!("signal not sent: {e}");
                    self.log(&name, "err", msg);
                }
            }
        }
        for t in transmits {
            moved = true;
            self.transmit(t);
        }
        moved
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut t = self.net.next_arrival();
        let mut consider = |x: Option<Instant>| {
            if let Some(x) = x {
                t = Some(t.map_or(x, |t| t.min(x)));
            }
        };
        for n in &self.nodes {
            consider(n.hub.as_ref().and_then(|h| h.poll_timeout()));
            for l in n.links.values() {
                consider(l.session.poll_timeout());
            }
        }
        t
    }

    /// One step: settle, then jump to the next deadline, deliver and fire what is due.
    pub fn step(&mut self, horizon: Instant) -> bool {
        self.steps += 1;
        if self.steps > self.max_steps {
            panic!(
                "simulation did not settle within {} steps\n{}",
                self.max_steps, self.trace
            );
        }
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
            let Some(node) = self.nodes.iter_mut().find(|n| n.addr == p.to) else {
                continue;
            };
            if node.hub.is_none() {
                continue; // crashed
            }
            if let Some(link) = node
                .links
                .values_mut()
                .filter(|l| l.session.accepts(p.from, p.to, &p.data))
                .max_by_key(|l| l.created)
            {
                link.session.handle_datagram(now, p.from, p.to, &p.data);
            }
        }
        let now = self.now;
        for n in self.nodes.iter_mut() {
            if let Some(h) = n.hub.as_mut() {
                h.handle_timeout(now);
            }
            for l in n.links.values_mut() {
                if l.session.poll_timeout().is_some_and(|t| t <= now) {
                    l.session.handle_timeout(now);
                }
            }
        }
        true
    }

    /// Runs until `done` holds (checked after every step) or `within` of virtual time passed.
    pub fn run_until(&mut self, within: Duration, mut done: impl FnMut(&Sim) -> bool) -> bool {
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

    /// Runs until `within` of virtual time passed.
    pub fn run_for(&mut self, within: Duration) {
        self.run_until(within, |_| false);
    }
}

static LINKS_CREATED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl Link {
    fn new(session: Session) -> Link {
        Link {
            session,
            created: LINKS_CREATED.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            outbox: VecDeque::new(),
            received: Vec::new(),
            opened_at: None,
            closed: None,
        }
    }
}

fn short(id: &str) -> String {
    match id.split_once('-') {
        Some((p, rest)) => format!("{p}-{}", &rest[..rest.len().min(6)]),
        None => id.to_string(),
    }
}

fn preview(data: &[u8]) -> String {
    let head = &data[..data.len().min(16)];
    if head.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
        String::from_utf8_lossy(head).into_owned()
    } else {
        format!("{head:02x?}")
    }
}

/// A signal as the trace shows it: its kind and what does not change run to run.
pub fn describe_signal(s: &SignalData) -> String {
    match s {
        SignalData::Offer(sdp) => format!("offer ({} m-lines)", sdp.matches("\nm=").count()),
        SignalData::Answer(sdp) => format!("answer ({} m-lines)", sdp.matches("\nm=").count()),
        SignalData::Candidate(Some(c)) => {
            let parts: Vec<&str> = c.candidate.split_whitespace().collect();
            match (parts.get(4), parts.get(5), parts.get(7)) {
                (Some(ip), Some(port), Some(kind)) => format!("candidate {kind} {ip}:{port}"),
                _ => "candidate (unparsed)".into(),
            }
        }
        SignalData::Candidate(None) => "end of candidates".into(),
        SignalData::Refuse(r) => format!("refuse {r:?}"),
        _ => "other signal".into(),
    }
}

/// Deterministic message payloads: `n` messages of `size` bytes, each unique.
pub fn payloads(tag: u8, n: usize, size: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut v = vec![0u8; size];
            let mut x = (tag as u64) << 32 | i as u64;
            for b in v.iter_mut() {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *b = (x >> 56) as u8;
            }
            v[0] = tag;
            v
        })
        .collect()
}
