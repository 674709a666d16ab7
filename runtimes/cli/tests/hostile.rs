//! A hub is anyone's to write: hostile documents on it leave every node working. While a share
//! is open and a live replication runs from it, the test writes share and signal documents with
//! numbers at and past the ends of `u64` (negative, float, huge), 1 MiB strings, ids made of
//! every character an id may hold, and a flood of documents through `_bulk_docs`; then a new
//! joiner still pushes a document into the share, the live replication still brings it, and
//! `shares` still lists the share. The binaries are this build's (a debug build under `cargo
//! test`), so an arithmetic overflow would be a panic.
//!
//! Runs against the pouchdb-server test hub of `.ci/test` (PEERPOUCH_TEST_HUB).

use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Instant;

use peerpouch::Database;
use peerpouch_couch::CouchClient;
use serde_json::{json, Value};

mod common;
use common::*;

/// Documents in the flood, written in batches of [`BATCH`].
const FLOOD: usize = 100_000;
const BATCH: usize = 5_000;
/// Of the flood, how many are signals to the share from peers that do not exist.
const FAKE_PEERS: usize = 200;
/// An expiry in 2096, in milliseconds: past what any test runs to, and exact in a JavaScript
/// hub's numbers (which round everything above 2^53).
const FAR_FUTURE_MS: u64 = 4_000_000_000_000;

/// A `peerpouch` that runs until the test ends, its stdout lines on a channel.
struct Running {
    child: Child,
    out: Receiver<String>,
    what: &'static str,
}

impl Running {
    fn start(what: &'static str, args: &[&str]) -> Running {
        let mut child = peerpouch(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let out = lines(child.stdout.take().unwrap());
        Running { child, out, what }
    }

    /// The next JSON line for which `pred` holds (earlier ones are skipped).
    fn expect(&mut self, about: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let Ok(line) = self.out.recv_timeout(LINE_DEADLINE) else {
                let status = self.child.try_wait().ok().flatten();
                panic!(
                    "{}: no {about} within {LINE_DEADLINE:?} (exited: {status:?})",
                    self.what
                );
            };
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if pred(&v) {
                return v;
            }
        }
    }

    /// Still running (it did not crash on what it read).
    fn assert_alive(&mut self) {
        let status = self.child.try_wait().unwrap();
        assert!(status.is_none(), "{} exited: {status:?}", self.what);
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every character a document id may hold: all of Unicode's scalar values but a leading `_`
/// (a few of each range, controls and the ends included).
fn every_char() -> String {
    let mut s = String::new();
    for c in (0x01u32..0x80).chain([
        0x7f, 0x80, 0xa0, 0xff, 0x100, 0x7ff, 0x800, 0xd7ff, 0xe000, 0xfeff, 0xfff0, 0xfffd,
        0xffff, 0x10000, 0x1f600, 0x10ffff,
    ]) {
        if let Some(c) = char::from_u32(c) {
            s.push(c);
        }
    }
    s
}

/// Numbers no field should take at face value.
fn hostile_numbers() -> Vec<Value> {
    let huge: Value = serde_json::from_str("100000000000000000000000000000000").unwrap();
    vec![
        json!(u64::MAX),
        json!(u64::MAX - 1),
        json!(i64::MAX),
        json!(i64::MIN),
        json!(-1),
        json!(0),
        json!(1.5),
        json!(-0.0),
        json!(f64::MAX),
        json!(f64::MIN),
        json!(1e-300),
        huge,
        json!("12"),
        Value::Null,
    ]
}

/// Share and signal documents with hostile numbers, huge strings and odd ids; `share` is the
/// open share (signals to it reach its sharer).
fn hostile_docs(share: &str) -> Vec<Value> {
    let mib = "x".repeat(1 << 20);
    let odd = every_char();
    let mut docs = Vec::new();
    for (i, n) in hostile_numbers().into_iter().enumerate() {
        docs.push(
            json!({"_id": format!("share-num-{i}"), "type": "com.stemstorage.peerpouch.share",
            "name": format!("num-{i}"), "info": null, "expires_at": n, "created_at": n}),
        );
        docs.push(json!({"_id": format!("p-signal-num-{i}"), "type": "com.stemstorage.peerpouch.signal",
            "sender": format!("peer-num{i}"), "recipient": share, "n": n, "created_at": n,
            "data": {"candidate": {"candidate": "candidate:1 1 udp 1 127.0.0.1 9 typ host", "sdpMid": "0", "sdpMLineIndex": n}}}));
        docs.push(
            json!({"_id": format!("s-signal-num-{i}"), "type": "com.stemstorage.peerpouch.signal",
            "sender": share, "recipient": format!("peer-num{i}"), "n": n, "created_at": n,
            "data": {"type": "answer", "sdp": "v=0"}}),
        );
    }
    // Strings of 1 MiB wherever a string goes.
    docs.push(json!({"_id": "share-big-name", "type": "com.stemstorage.peerpouch.share", "name": mib, "info": null}));
    docs.push(json!({"_id": "share-big-info", "type": "com.stemstorage.peerpouch.share", "name": "big", "info": {"x": mib}}));
    docs.push(
        json!({"_id": "p-signal-big-sdp", "type": "com.stemstorage.peerpouch.signal",
        "sender": "peer-big", "recipient": share, "n": 0, "data": {"type": "offer", "sdp": mib}}),
    );
    docs.push(json!({"_id": "p-signal-big-cand", "type": "com.stemstorage.peerpouch.signal",
        "sender": "peer-bigc", "recipient": share, "n": 0, "data": {"candidate": {"candidate": mib}}}));
    docs.push(
        json!({"_id": "p-signal-big-sender", "type": "com.stemstorage.peerpouch.signal",
        "sender": format!("peer-{mib}"), "recipient": share, "n": 0, "data": {"candidate": null}}),
    );
    docs.push(json!({"_id": format!("share-{mib}"), "type": "com.stemstorage.peerpouch.share", "name": "long id"}));
    // Ids of every character, as shares, signals and neither.
    for prefix in ["share-", "p-signal-", "s-signal-", "", "peer-"] {
        docs.push(
            json!({"_id": format!("{prefix}{odd}"), "type": "com.stemstorage.peerpouch.share",
            "name": odd, "info": {"odd": odd}}),
        );
    }
    docs.push(
        json!({"_id": format!("p-signal-odd"), "type": "com.stemstorage.peerpouch.signal",
        "sender": format!("peer-{odd}"), "recipient": share, "n": 0, "data": {"candidate": null}}),
    );
    docs.push(json!({"_id": format!("p-signal-odd-to"), "type": "com.stemstorage.peerpouch.signal",
        "sender": "peer-oddto", "recipient": format!("{share}{odd}"), "n": 0, "data": {"candidate": null}}));
    // Wrong shapes: arrays, objects and numbers where strings go.
    docs.push(json!({"_id": "share-shapes", "type": "com.stemstorage.peerpouch.share", "name": [1, 2], "info": 7}));
    docs.push(
        json!({"_id": "p-signal-shapes", "type": "com.stemstorage.peerpouch.signal",
        "sender": {"a": 1}, "recipient": share, "data": [null]}),
    );
    docs.push(
        json!({"_id": "p-signal-shapes2", "type": "com.stemstorage.peerpouch.signal",
        "sender": "peer-shapes", "recipient": share, "data": {"type": 5, "sdp": {"v": 0}}}),
    );
    docs
}

/// The flood: mostly documents of no kind of ours, some shares, and signals to `share` from
/// [`FAKE_PEERS`] peers that do not exist.
fn flood_batch(share: &str, from: usize, count: usize) -> Vec<Value> {
    (from..from + count)
        .map(|i| match i % (FLOOD / FAKE_PEERS) {
            0 => json!({"_id": format!("p-signal-flood-{i}"), "type": "com.stemstorage.peerpouch.signal",
                "sender": format!("peer-flood{i}"), "recipient": share, "n": 0,
                "data": {"candidate": {"candidate": format!("candidate:1 1 udp 1 127.0.0.1 {} typ host", 1 + i % 60000), "sdpMid": "0"}}}),
            k if k % 10 == 1 => json!({"_id": format!("share-flood-{i}"), "type": "com.stemstorage.peerpouch.share",
                "name": format!("flood {i}"), "info": {"i": i}, "expires_at": FAR_FUTURE_MS}),
            _ => json!({"_id": format!("flood-{i:06}"), "i": i, "type": ["not", "ours"]}),
        })
        .collect()
}

/// Writes `docs` to the hub; every one must be accepted (the hub stores what anyone writes).
fn write(hub: &mut CouchClient, docs: Vec<Value>) {
    let n = docs.len();
    let results = hub
        .bulk_docs(docs, true)
        .expect("the hub takes the documents");
    assert_eq!(results.len(), n);
    let failed: Vec<_> = results.iter().filter(|r| r.result.is_err()).collect();
    assert!(failed.is_empty(), "the hub refused: {failed:?}");
}

/// Pushes one new document into the share through a new joiner, and waits until the live
/// replication has written it too (`total` documents in all).
fn still_working(
    dir: &Dir,
    peer: &str,
    live: &mut Running,
    id: &str,
    total: u64,
    answer_timeout: &str,
) {
    let side = dir.db(&format!("{id}.db"));
    ok_json(
        &["docs", &side, "put", &json!({"_id": id}).to_string()],
        None,
    );
    let start = Instant::now();
    let out = ok_json(
        &[
            "replicate",
            &side,
            peer,
            "--json",
            "--answer-timeout",
            answer_timeout,
        ],
        None,
    );
    eprintln!(
        "{id}: a new joiner pushed a document in {:?}",
        start.elapsed()
    );
    assert_eq!(out.last().unwrap()["docs_written"], 1, "{out:?}");
    live.expect(&format!("{id} replicated live"), |v| {
        v["docs_written"].as_u64() == Some(total)
    });
}

/// `shares` still answers, and lists the open share; how many it lists.
fn still_listed(hub: &str, share: &str) -> usize {
    let listed = ok_json(&["shares", "--hub", hub, "--json"], None).remove(0);
    let listed = listed.as_array().expect("a JSON array of shares");
    assert!(
        listed.iter().any(|v| v["id"] == share),
        "{share} not among the {} listed",
        listed.len()
    );
    listed.len()
}

#[test]
fn hostile_documents_on_the_hub_leave_every_node_working() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("hostile"));
    let src = dir.db("src.db");
    let seed: Vec<Value> = (0..20)
        .map(|i| json!({"_id": format!("doc-{i:02}")}))
        .collect();
    ok_json(
        &["docs", &src, "bulk"],
        Some(&serde_json::to_string(&seed).unwrap()),
    );
    let name = unique("target");
    let mut sharer = Running::start(
        "the sharer",
        &[
            "share", "--hub", &hub, "--db", &src, "--name", &name, "--json",
        ],
    );
    let shared = sharer.expect("the shared event", |v| v["event"] == "shared");
    let share = shared["share"].as_str().unwrap().to_string();
    let peer = format!("peer+{hub}#{name}");
    let dst = dir.db("dst.db");
    let mut live = Running::start(
        "the live replication",
        &["replicate", &peer, &dst, "--live", "--json"],
    );
    live.expect("the first 20 docs", |v| v["docs_written"] == 20);

    let mut client = CouchClient::new(&hub).unwrap();
    write(&mut client, hostile_docs(&share));
    still_working(&dir, &peer, &mut live, "after-hostile", 21, "5");
    still_listed(&hub, &share);

    let start = Instant::now();
    for from in (0..FLOOD).step_by(BATCH) {
        write(&mut client, flood_batch(&share, from, BATCH));
    }
    eprintln!(
        "flood of {FLOOD} documents written in {:?}",
        start.elapsed()
    );
    // The sharer reads the whole flood from a hub that cannot filter its feed before it sees
    // the new joiner's offer: the joiner waits for that.
    still_working(&dir, &peer, &mut live, "after-flood", 22, "120");
    let listed = still_listed(&hub, &share);
    eprintln!("shares lists {listed} shares after the flood");
    sharer.assert_alive();
    live.assert_alive();
}
