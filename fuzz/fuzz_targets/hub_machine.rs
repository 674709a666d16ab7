//! The share negotiation machine (`peerpouch::hub::Hub`), stateful.
//!
//! Two machines (a sharer and a joiner, as far as the fuzzer lets them be) on one in-memory hub
//! database that anyone else also writes: an `Arbitrary` sequence of operations puts documents
//! on the hub (shares and signals with fuzzed ids, senders, recipients, names, data and times,
//! numbers at the extremes of u64 and of other JSON types included), deletes them, advances
//! time by up to days, fails hub requests, and calls every method of the machines (share,
//! unshare, list, watch, open, accept, refuse, send_signal, close).
//!
//! After every step: no panic, and the machines settle (a request/feed loop that never ends is a
//! failure); a listing never holds one's own live share nor one whose expiry has passed; right after
//! `handle_timeout(now)`, `poll_timeout` is later than `now` (nothing due is left behind, no busy
//! loop); the machines' queues stay bounded.
#![no_main]

use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peerpouch::hub::{
    Hub, HubAction, HubConfig, HubEvent, MemoryHub, ShareOptions, SignalData, SHARE_TYPE,
    SIGNAL_TYPE,
};
use peerpouch::{AllDocsRequest, AllDocsRow, ChangeRow, Database, DbError};
use serde_json::{json, Value};

const WALL: u64 = 1_800_000_000_000;
/// Events one settle may produce, at most, for inputs of this size.
const MAX_EVENTS: usize = 10_000;

#[derive(Arbitrary, Debug)]
struct Input {
    seeds: (u64, u64),
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Someone writes a document on the hub.
    Put(DocSpec),
    /// Someone deletes the n-th document of the hub.
    Delete(u8),
    /// Time passes (milliseconds; the top bit makes it minutes).
    Advance(u32),
    /// Timers fire exactly when due.
    Due,
    /// The next `n` hub requests fail (a transient error, or a refusal).
    Fail { n: u8, transient: bool },
    Share { node: bool, name: Option<u8>, info: u8 },
    Unshare { node: bool, which: u8 },
    List(bool),
    Watch(bool, bool),
    Open { node: bool, which: u8 },
    Accept { node: bool, which: u8 },
    Refuse { node: bool, which: u8, reason: bool },
    Signal { node: bool, which: u8, data: u8 },
    Close { node: bool, which: u8 },
}

#[derive(Arbitrary, Debug)]
struct DocSpec {
    share: bool,
    id: u8,
    sender: u8,
    recipient: u8,
    name: Option<u8>,
    expires: Option<Num>,
    created: Option<Num>,
    n: Option<Num>,
    data: u8,
}

#[derive(Arbitrary, Debug)]
enum Num {
    U64(u64),
    I64(i64),
    F64(f64),
    Max,
    Zero,
    Near(i32),
    Text,
}

impl Num {
    fn json(&self) -> Value {
        match self {
            Num::U64(n) => json!(n),
            Num::I64(n) => json!(n),
            Num::F64(f) => json!(f),
            Num::Max => json!(u64::MAX),
            Num::Zero => json!(0),
            Num::Near(d) => json!(WALL.saturating_add_signed(i64::from(*d) * 1000)),
            Num::Text => json!("soon"),
        }
    }
}

/// Ids the fuzzer picks from: a few valid ones of each kind, and some that are not.
fn share_id(i: u8) -> String {
    match i % 8 {
        7 => "share-".into(),
        6 => "not-a-share".into(),
        _ => format!("share-{:032x}", i % 6),
    }
}

fn peer_id(i: u8) -> String {
    match i % 8 {
        7 => "peer-".into(),
        6 => share_id(i / 8),
        _ => format!("peer-{:032x}", i % 6),
    }
}

fn data_of(i: u8) -> Value {
    match i % 6 {
        0 => json!({"type": "offer", "sdp": "v=0\r\n"}),
        1 => json!({"type": "answer", "sdp": "v=0\r\n"}),
        2 => json!({"candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": 0}}),
        3 => json!({"candidate": null}),
        4 => json!({"type": "refuse", "reason": "no"}),
        _ => json!(["garbage"]),
    }
}

fn signal_data(i: u8) -> SignalData {
    match i % 4 {
        0 => SignalData::Offer("v=0\r\n".into()),
        1 => SignalData::Answer("v=0\r\n".into()),
        2 => SignalData::Candidate(None),
        _ => SignalData::Refuse(Some("no".into())),
    }
}

fn doc_of(spec: &DocSpec) -> Value {
    let mut d = if spec.share {
        json!({"_id": share_id(spec.id), "type": SHARE_TYPE, "info": null,
               "name": spec.name.map(|n| format!("name-{}", n % 4))})
    } else {
        let sender = if spec.sender % 2 == 0 { share_id(spec.sender / 2) } else { peer_id(spec.sender / 2) };
        let recipient =
            if spec.recipient % 2 == 0 { share_id(spec.recipient / 2) } else { peer_id(spec.recipient / 2) };
        json!({"_id": format!("{}-signal-{:x}", if spec.id % 2 == 0 { "p" } else { "s" }, spec.id),
               "type": SIGNAL_TYPE, "sender": sender, "recipient": recipient,
               "data": data_of(spec.data), "info": null})
    };
    if let Some(e) = &spec.expires {
        d["expires_at"] = e.json();
    }
    if let Some(c) = &spec.created {
        d["created_at"] = c.json();
    }
    if let Some(n) = &spec.n {
        d["n"] = n.json();
    }
    d
}

fn hub_docs(hub: &mut MemoryHub) -> Vec<AllDocsRow> {
    hub.db()
        .all_docs(AllDocsRequest::default())
        .map(|r| r.rows)
        .unwrap_or_default()
}

/// What each machine knows of its own side, to pick connection arguments from.
#[derive(Default)]
struct Seen {
    own_shares: Vec<String>,
    listed: Vec<String>,
    /// (share, peer) of connections this machine is part of.
    conns: Vec<(String, String)>,
}

struct World {
    hub: MemoryHub,
    nodes: [Hub; 2],
    seen: [Seen; 2],
    cursors: [Option<usize>; 2],
    now: Instant,
    fail: u8,
    transient: bool,
}

impl World {
    fn pick<T: Clone>(v: &[T], i: u8) -> Option<T> {
        (!v.is_empty()).then(|| v[usize::from(i) % v.len()].clone())
    }

    /// Runs both machines against the hub until neither has anything to do (at `now`).
    fn settle(&mut self) {
        for _ in 0..10_000 {
            let mut progressed = false;
            for i in 0..2 {
                while let Some(action) = self.nodes[i].poll_action() {
                    progressed = true;
                    match action {
                        HubAction::Request { id, request } => {
                            let result = if self.fail > 0 {
                                self.fail -= 1;
                                Err(if self.transient {
                                    DbError::Unavailable("fuzzed".into())
                                } else {
                                    DbError::Forbidden("fuzzed".into())
                                })
                            } else {
                                self.hub.execute(request)
                            };
                            let _ = self.nodes[i].handle_response(self.now, id, result);
                        }
                        HubAction::FollowChanges { since, .. } => {
                            self.cursors[i] = Some(self.hub.follow(&since));
                        }
                    }
                }
                if let Some(c) = self.cursors[i] {
                    let rows: Vec<ChangeRow> = self.hub.poll_feed(c);
                    if !rows.is_empty() {
                        progressed = true;
                        self.nodes[i].handle_feed(self.now, rows);
                    }
                }
                let mut n = 0;
                while let Some(e) = self.nodes[i].poll_event() {
                    n += 1;
                    assert!(n <= MAX_EVENTS, "more than {MAX_EVENTS} events at once");
                    self.on_event(i, e);
                }
            }
            if !progressed {
                return;
            }
        }
        panic!("the hub machines did not settle");
    }

    fn on_event(&mut self, i: usize, e: HubEvent) {
        let wall = self.nodes[i].wall_ms(self.now);
        match e {
            HubEvent::SharesListed(list) => {
                for s in &list {
                    assert!(
                        !self.seen[i].own_shares.contains(&s.id),
                        "own share {} listed",
                        s.id
                    );
                    assert!(
                        s.expires_at.is_none_or(|e| e >= wall),
                        "expired share listed: {s:?} at {wall}"
                    );
                }
                self.seen[i].listed = list.into_iter().map(|s| s.id).collect();
            }
            HubEvent::ShareAdded(s) => {
                assert!(!self.seen[i].own_shares.contains(&s.id), "own share {} added", s.id);
                self.seen[i].listed.push(s.id);
            }
            HubEvent::PeerRequested { share, peer, .. } => {
                self.seen[i].conns.push((share, peer));
            }
            _ => {}
        }
    }

    fn check_timeout(&mut self) {
        for i in 0..2 {
            if let Some(t) = self.nodes[i].poll_timeout() {
                if t <= self.now {
                    self.nodes[i].handle_timeout(self.now);
                    self.settle();
                    if let Some(after) = self.nodes[i].poll_timeout() {
                        assert!(
                            after > self.now,
                            "a deadline at or before now is left after handle_timeout: {:?} at {:?}: {:#?}", after, self.now, self.nodes[i]
                        );
                    }
                }
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let now = Instant::now();
    let config = HubConfig::default();
    let mut w = World {
        hub: MemoryHub::new(),
        nodes: [
            Hub::new(config.clone(), input.seeds.0, now, WALL),
            Hub::new(config, input.seeds.1 ^ 1, now, WALL),
        ],
        seen: [Seen::default(), Seen::default()],
        cursors: [None, None],
        now,
        fail: 0,
        transient: true,
    };
    w.settle();
    for op in input.ops.iter().take(64) {
        match op {
            Op::Put(spec) => {
                let doc = doc_of(spec);
                // A document already there is replaced (any writer can).
                let id = doc["_id"].as_str().unwrap_or_default().to_string();
                let mut doc = doc;
                if let Some(r) = hub_docs(&mut w.hub).into_iter().find(|r| r.key == id) {
                    doc["_rev"] = json!(r.value.map(|v| v.rev.to_string()));
                }
                let _ = w.hub.db().put(doc);
            }
            Op::Delete(i) => {
                let rows = hub_docs(&mut w.hub);
                if let Some(r) = World::pick(&rows, *i) {
                    let rev = r.value.map(|v| v.rev.to_string());
                    let _ = w.hub.db().put(json!({"_id": r.key, "_rev": rev, "_deleted": true}));
                }
            }
            Op::Advance(ms) => {
                let d = if ms & 0x8000_0000 != 0 {
                    Duration::from_secs(u64::from(ms & 0xffff) * 60)
                } else {
                    Duration::from_millis(u64::from(*ms))
                };
                w.now += d;
                for i in 0..2 {
                    w.nodes[i].handle_timeout(w.now);
                }
            }
            Op::Due => {
                if let Some(t) = w.nodes.iter().filter_map(|h| h.poll_timeout()).min() {
                    w.now = w.now.max(t);
                    for i in 0..2 {
                        w.nodes[i].handle_timeout(w.now);
                    }
                }
            }
            Op::Fail { n, transient } => {
                w.fail = n % 8;
                w.transient = *transient;
            }
            Op::Share { node, name, info } => {
                let i = usize::from(*node);
                let id = w.nodes[i].share(
                    w.now,
                    ShareOptions {
                        name: name.map(|n| format!("name-{}", n % 4)),
                        info: json!({"i": info}),
                        ..ShareOptions::default()
                    },
                );
                w.seen[i].own_shares.push(id);
            }
            Op::Unshare { node, which } => {
                let i = usize::from(*node);
                if let Some(s) = World::pick(&w.seen[i].own_shares, *which) {
                    let _ = w.nodes[i].unshare(w.now, &s);
                    // Its document may outlive it on the hub (a delete that kept failing) and
                    // then be listed like anyone's until it expires.
                    w.seen[i].own_shares.retain(|o| *o != s);
                }
            }
            Op::List(node) => w.nodes[usize::from(*node)].list(w.now),
            Op::Watch(node, on) => w.nodes[usize::from(*node)].watch(w.now, *on),
            Op::Open { node, which } => {
                let i = usize::from(*node);
                let share = World::pick(&w.seen[i].listed, *which).unwrap_or_else(|| share_id(*which));
                if let Ok(peer) = w.nodes[i].open(w.now, &share, json!({"who": i})) {
                    w.seen[i].conns.push((share, peer));
                }
            }
            Op::Accept { node, which } => {
                let i = usize::from(*node);
                if let Some((s, p)) = World::pick(&w.seen[i].conns, *which) {
                    let _ = w.nodes[i].accept(w.now, &s, &p);
                }
            }
            Op::Refuse { node, which, reason } => {
                let i = usize::from(*node);
                if let Some((s, p)) = World::pick(&w.seen[i].conns, *which) {
                    let _ = w.nodes[i].refuse(w.now, &s, &p, reason.then(|| "no".to_string()));
                }
            }
            Op::Signal { node, which, data } => {
                let i = usize::from(*node);
                if let Some((s, p)) = World::pick(&w.seen[i].conns, *which) {
                    let _ = w.nodes[i].send_signal(w.now, &s, &p, signal_data(*data));
                }
            }
            Op::Close { node, which } => {
                let i = usize::from(*node);
                if let Some((s, p)) = World::pick(&w.seen[i].conns, *which) {
                    w.nodes[i].close(w.now, &s, &p);
                }
            }
        }
        w.settle();
        w.check_timeout();
    }
});
