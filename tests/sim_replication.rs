//! Replication across peers in the simulation: whole nodes (hub, sessions, RPC, replicator).

mod common;
mod sim;

use std::time::Duration;

use common::assert_converged;
use peerpouch::hub::ShareOptions;
use peerpouch::node::*;
use peerpouch::replicate::ReplicationEvent;
use peerpouch::*;
use serde_json::{json, Value};
use sim::nodes::NodeSim;
use sim::NetConfig;

/// A sharer (node 0, database "db") and a joiner (node 1) with a ready link.
fn linked(seed: u64, net: NetConfig) -> (NodeSim, LinkId) {
    let lossy = net.loss > 0.0;
    let mut s = NodeSim::new(seed, net);
    if lossy {
        s.config.session.connect_timeout = Duration::from_secs(300);
        s.config.session.idle_timeout = Duration::from_secs(60);
        s.config.rpc_hello_timeout = Duration::from_secs(300);
        // SCTP backs off up to 60 s per lost retransmission: at 30% loss whole minutes pass
        // without a frame.
        s.config.rpc_request_timeout = Duration::from_secs(1800);
    }
    s.add_node("sharer");
    s.add_node("joiner");
    let now = s.now;
    let share = s.node(0).share(
        now,
        "db".into(),
        ShareOptions::default(),
        ShareAccess::default(),
    );
    s.run_for(Duration::from_millis(1));
    let now = s.now;
    s.node(1)
        .open(now, &share, json!({"name": "joiner"}), None)
        .unwrap();
    assert!(
        s.run_until(Duration::from_secs(300), |s| s.ready_link(1).is_some()),
        "{}",
        s.trace()
    );
    let link = s.ready_link(1).unwrap();
    (s, link)
}

fn b64(data: &[u8]) -> Value {
    serde_json::to_value(AttachmentData {
        content_type: String::new(),
        digest: String::new(),
        data: data.to_vec(),
    })
    .unwrap()["data"]
        .clone()
}

/// `n` docs with conflicts (every 50th), deletions (every 40th), small attachments (every
/// 100th) and one attachment of `big` bytes.
fn fixture(db: &mut MemoryStore, n: usize, big: usize) {
    let docs: Vec<Value> = (0..n)
        .map(|i| json!({"_id": format!("doc{i:05}"), "i": i, "text": "t".repeat(900)}))
        .collect();
    for r in db.bulk_docs(docs, true).unwrap() {
        r.result.unwrap();
    }
    for i in (0..n).step_by(50) {
        let r = db.bulk_docs(vec![json!({"_id": format!("doc{i:05}"), "_rev": "1-ffffffffffffffffffffffffffffffff", "branch": true})], false).unwrap();
        r[0].result.clone().unwrap();
    }
    for i in (7..n).step_by(40) {
        let id = format!("doc{i:05}");
        let rev = db.get(&id).unwrap()["_rev"].clone();
        db.put(json!({"_id": id, "_rev": rev, "_deleted": true}))
            .unwrap();
    }
    for i in (3..n).step_by(100) {
        let id = format!("doc{i:05}");
        let mut d = db.get(&id).unwrap();
        d.insert("_attachments".into(), json!({"a.txt": {"content_type": "text/plain", "data": b64(format!("attachment {i}").as_bytes())}}));
        db.put(Value::Object(d)).unwrap();
    }
    let blob: Vec<u8> = (0..big).map(|i| (i * 31 % 253) as u8).collect();
    db.put(json!({"_id": "big", "_attachments": {"blob.bin": {"content_type": "application/octet-stream", "data": b64(&blob)}}})).unwrap();
}

fn run_replication(
    s: &mut NodeSim,
    node: usize,
    source: DbRef,
    target: DbRef,
    within: Duration,
) -> replicate::Progress {
    let now = s.now;
    let sid = format!("{source:?}");
    let tid = format!("{target:?}");
    let id = s
        .node(node)
        .replicate(now, source, target, ReplicatorConfig::new(sid, tid));
    assert!(
        s.run_until(within, |s| s.replication_end(node, id).is_some()),
        "replication did not end\n{}",
        s.trace()
    );
    match s.replication_end(node, id).unwrap() {
        ReplicationEvent::Completed(p) => p,
        other => panic!("replication ended with {other:?}"),
    }
}

fn both_ways(seed: u64, net: NetConfig, n: usize, big: usize, within: Duration) {
    let (mut s, link) = linked(seed, net);
    fixture(s.store(0, "db"), n, big);
    // Pull: remote -> local.
    let p = run_replication(
        &mut s,
        1,
        DbRef::Remote(link.clone()),
        DbRef::Local("copy".into()),
        within,
    );
    assert_eq!(p.doc_write_failures, 0);
    assert_eq!(p.doc_read_failures, 0);
    let (a, b) = (
        s.nodes[0].stores.get("db").unwrap(),
        s.nodes[1].stores.get("copy").unwrap(),
    );
    assert_eq!(
        a.tree_shapes(),
        b.tree_shapes(),
        "pull: revision trees differ"
    );
    // Push new local edits back: local -> remote.
    let more: Vec<Value> = (0..n / 10)
        .map(|i| json!({"_id": format!("joiner{i:04}"), "i": i}))
        .collect();
    s.write(1, "copy", more);
    let p2 = run_replication(
        &mut s,
        1,
        DbRef::Local("copy".into()),
        DbRef::Remote(link.clone()),
        within,
    );
    assert_eq!(p2.doc_write_failures, 0);
    assert_eq!(
        p2.docs_written as usize,
        n / 10,
        "only the new documents travel back"
    );
    let mut a = s.nodes[0].stores.remove("db").unwrap();
    let mut b = s.nodes[1].stores.remove("copy").unwrap();
    assert_converged(&mut a, &mut b);
    let big_back = b.get_attachment("big", "blob.bin").unwrap().data;
    assert_eq!(big_back.len(), big);
    assert_eq!(big_back, a.get_attachment("big", "blob.bin").unwrap().data);
}

#[test]
fn replicate_10k_docs_with_a_20_mib_attachment_both_ways() {
    both_ways(
        1,
        NetConfig::default(),
        10_000,
        20 << 20,
        Duration::from_secs(3600),
    );
}

#[test]
fn replicate_both_ways_under_10_percent_loss() {
    let net = NetConfig {
        loss: 0.10,
        jitter: Duration::from_millis(20),
        ..NetConfig::default()
    };
    both_ways(2, net, 10_000, 20 << 20, Duration::from_secs(36_000));
}

#[test]
fn replicate_both_ways_under_30_percent_loss() {
    let net = NetConfig {
        loss: 0.30,
        jitter: Duration::from_millis(20),
        ..NetConfig::default()
    };
    both_ways(3, net, 10_000, 20 << 20, Duration::from_secs(360_000));
}
