//! The protocol as readable traces, snapshotted with insta (`tests/snapshots/traces__*.snap`):
//! a share's whole negotiation on the in-memory hub (every hub document written and deleted, in
//! order), the RPC hello both ways with an access key, a one-shot replication of a small
//! database with a conflict, and a refusal. `docs/protocol.md` links to them.
//!
//! DTLS and SCTP bytes are not deterministic (str0m draws OS randomness), so the traces stay
//! above them: hub documents, node events, RPC frames decoded, store operations, on virtual
//! time. Ids drawn from the seeded generators are deterministic, but are still shown as short
//! names (`share-1`, `peer-1`, `s-signal-2`) in order of first appearance, so a trace reads
//! the same whatever the seed.

mod common;
mod sim;

use std::collections::BTreeMap;
use std::time::Duration;

use peerpouch::hub::ShareOptions;
use peerpouch::node::*;
use peerpouch::rpc::frame::{Frame, Kind};
use peerpouch::rpc::*;
use peerpouch::*;
use serde_json::{json, Value};
use sim::nodes::NodeSim;
use sim::NetConfig;

/// The wall clock the simulated nodes start at (`tests/sim/nodes.rs`).
const WALL: u64 = 1_800_000_000_000;

/// Short names for the ids of a trace, in order of first appearance.
#[derive(Default)]
struct Names(BTreeMap<String, String>, BTreeMap<String, usize>);

impl Names {
    fn of(&mut self, id: &str) -> String {
        if let Some(n) = self.0.get(id) {
            return n.clone();
        }
        let kind = ["p-signal-", "s-signal-", "share-", "peer-"]
            .into_iter()
            .find(|p| id.starts_with(p))
            .map_or("id", |p| p.trim_end_matches('-'));
        let count = self.1.entry(kind.to_string()).or_insert(0);
        *count += 1;
        let name = format!("{kind}-{count}");
        self.0.insert(id.to_string(), name.clone());
        name
    }

    /// Every id of ours inside `text` replaced by its short name.
    fn replace_in(&mut self, text: &str) -> String {
        let mut out = text.to_string();
        for prefix in ["p-signal-", "s-signal-", "share-", "peer-"] {
            let mut from = 0;
            while let Some(at) = out[from..].find(prefix).map(|i| i + from) {
                let end = out[at + prefix.len()..]
                    .find(|c: char| !c.is_ascii_hexdigit())
                    .map_or(out.len(), |i| i + at + prefix.len());
                if end - at - prefix.len() < 16 {
                    from = end;
                    continue;
                }
                let name = self.of(&out[at..end]);
                out.replace_range(at..end, &name);
                from = at + name.len();
            }
        }
        out
    }
}

/// What a signal's `data` says, without the bytes that change run to run (SDP bodies).
fn describe_data(data: &Value) -> String {
    if let Some(c) = data.get("candidate") {
        return match c.get("candidate").and_then(Value::as_str) {
            Some(line) => {
                let f: Vec<&str> = line.split_whitespace().collect();
                match (f.get(4), f.get(5), f.get(7)) {
                    (Some(ip), Some(port), Some(kind)) => format!("candidate {kind} {ip}:{port}"),
                    _ => "candidate ?".into(),
                }
            }
            None => "end of candidates".into(),
        };
    }
    match data.get("type").and_then(Value::as_str) {
        Some(t @ ("offer" | "answer")) => {
            let sdp = data.get("sdp").and_then(Value::as_str).unwrap_or("");
            let has = |k: &str| sdp.lines().any(|l| l.starts_with(k));
            format!(
                "{t} (fingerprint: {}, setup: {}, sctp-port: {})",
                has("a=fingerprint:"),
                sdp.lines()
                    .find_map(|l| l.strip_prefix("a=setup:"))
                    .unwrap_or("-"),
                sdp.lines()
                    .find_map(|l| l.strip_prefix("a=sctp-port:"))
                    .unwrap_or("-"),
            )
        }
        Some("refuse") => format!("refuse {}", data["reason"]),
        Some(other) => other.to_string(),
        None => format!("{data}"),
    }
}

/// The documents the nodes wrote to the hub, in order, as readable lines.
fn hub_lines(s: &NodeSim, names: &mut Names) -> String {
    let mut out = String::new();
    for d in &s.hub_writes {
        let id = names.of(d["_id"].as_str().unwrap_or("?"));
        let line = if d["_deleted"] == true {
            format!("delete {id}")
        } else if d["type"] == "com.stemstorage.peerpouch.share" {
            format!(
                "put    {id}: name {}, info {}, protocol {}, read_only {}, fingerprint {}, expires_at start + {} s",
                d["name"],
                d["info"],
                d["protocol"],
                d["read_only"],
                d.get("fingerprint").is_some(),
                d["expires_at"].as_u64().unwrap_or(0).saturating_sub(WALL) / 1000,
            )
        } else {
            format!(
                "put    {id}: {} -> {}, n {}, {}{}",
                names.of(d["sender"].as_str().unwrap_or("?")),
                names.of(d["recipient"].as_str().unwrap_or("?")),
                d["n"],
                describe_data(&d["data"]),
                match &d["info"] {
                    Value::Null => String::new(),
                    info => format!(", info {info}"),
                }
            )
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A sharer (node 0) and a joiner (node 1); the share's id.
fn pair(access: ShareAccess) -> (NodeSim, String) {
    let mut s = NodeSim::new(7, NetConfig::default());
    s.add_node("sharer");
    s.add_node("joiner");
    let now = s.now;
    let share = s.node(0).share(
        now,
        "db".into(),
        ShareOptions {
            name: Some("notes".into()),
            info: json!({"about": "notes"}),
            ..ShareOptions::default()
        },
        access,
    );
    s.run_for(Duration::from_millis(1));
    (s, share)
}

#[test]
fn a_share_negotiated_on_the_hub() {
    let (mut s, share) = pair(ShareAccess::default());
    let now = s.now;
    let link = s
        .node(1)
        .open(now, &share, json!({"user": "bob"}), None)
        .unwrap();
    assert!(s.run_until(Duration::from_secs(10), |s| s.node_ready_links(1) == 1));
    s.run_for(Duration::from_secs(1));
    let now = s.now;
    s.node(1).close(now, &link);
    s.run_for(Duration::from_secs(1));
    let now = s.now;
    s.node(0).unshare(now, &share).unwrap();
    s.run_for(Duration::from_secs(1));
    let mut names = Names::default();
    let hub = hub_lines(&s, &mut names);
    let events = names.replace_in(s.trace());
    assert!(
        s.hub.db().info().unwrap().doc_count == 0,
        "nothing is left on the hub"
    );
    insta::assert_snapshot!(
        "share_negotiation",
        format!("hub documents, in the order written:\n{hub}\nnode events:\n{events}")
    );
}

#[test]
fn a_refusal() {
    let (mut s, share) = pair(ShareAccess {
        ask: true,
        ..ShareAccess::default()
    });
    let now = s.now;
    s.node(1)
        .open(now, &share, json!({"user": "mallory"}), None)
        .unwrap();
    assert!(s.run_until(Duration::from_secs(10), |s| {
        s.nodes[0]
            .events
            .iter()
            .any(|(_, e)| matches!(e, NodeEvent::PeerRequested { .. }))
    }));
    let link = s.nodes[0]
        .events
        .iter()
        .find_map(|(_, e)| match e {
            NodeEvent::PeerRequested { link, .. } => Some(link.clone()),
            _ => None,
        })
        .unwrap();
    let now = s.now;
    s.node(0)
        .refuse(now, &link, Some("not today".into()))
        .unwrap();
    assert!(s.run_until(Duration::from_secs(10), |s| {
        s.nodes[1]
            .events
            .iter()
            .any(|(_, e)| matches!(e, NodeEvent::Refused { .. }))
    }));
    s.run_for(Duration::from_secs(1));
    let mut names = Names::default();
    let hub = hub_lines(&s, &mut names);
    let events = names.replace_in(s.trace());
    insta::assert_snapshot!(
        "refusal",
        format!("hub documents, in the order written:\n{hub}\nnode events:\n{events}")
    );
}

#[test]
fn a_one_shot_replication_with_a_conflict() {
    let (mut s, share) = pair(ShareAccess::default());
    s.trace_store = true;
    s.write(
        0,
        "db",
        vec![
            json!({"_id": "a", "v": 1}),
            json!({"_id": "x", "by": "sharer"}),
        ],
    );
    s.write(1, "db", vec![json!({"_id": "x", "by": "joiner"})]);
    let now = s.now;
    let link = s.node(1).open(now, &share, json!({}), None).unwrap();
    assert!(s.run_until(Duration::from_secs(10), |s| s.node_ready_links(1) == 1));
    let now = s.now;
    let id = s.node(1).replicate(
        now,
        DbRef::Remote(link),
        DbRef::Local("db".into()),
        ReplicatorConfig::new("sharer-db", "joiner-db"),
    );
    assert!(s.run_until(Duration::from_secs(60), |s| s
        .replication_end(1, id)
        .is_some()));
    let x = s
        .store(1, "db")
        .get_with(GetRequest {
            conflicts: true,
            ..GetRequest::new("x")
        })
        .unwrap();
    let conflicts = x.get("_conflicts").cloned().unwrap_or(Value::Null);
    assert_eq!(conflicts.as_array().map(Vec::len), Some(1), "{x:?}");
    let mut names = Names::default();
    let events = names.replace_in(s.trace());
    insta::assert_snapshot!(
        "replication_with_a_conflict",
        format!(
            "{events}\njoiner's x: winner by {}, {} conflict\n",
            x["by"],
            conflicts.as_array().map_or(0, Vec::len)
        )
    );
}

/// The RPC machines back to back, every frame decoded into the trace.
#[test]
fn the_rpc_hello_both_ways_with_a_key() {
    const FP_S: &str = "sha-256 AA:AA";
    const FP_C: &str = "sha-256 CC:CC";
    let now = common::epoch();
    let key = b"correct horse".to_vec();
    let mut scfg = ServerConfig::new("share-x", FP_S, FP_C);
    scfg.access_key = Some(key.clone());
    let mut ccfg = ClientConfig::new("share-x", "peer-y", FP_C, FP_S);
    ccfg.access_key = Some(key);
    let mut server = RpcServer::new(scfg, now);
    let mut client = RpcClient::new(ccfg, now);
    let mut db = MemoryStore::new("served");
    let mut trace = String::new();
    let mut line = |from: &str, bytes: &[u8]| {
        let f = Frame::decode(bytes).expect("a frame");
        let body = match f.kind {
            Kind::Binary => format!("{} bytes", f.payload.len()),
            _ if f.compressed => format!("{} compressed bytes", f.payload.len()),
            _ => String::from_utf8_lossy(f.payload).into_owned(),
        };
        trace.push_str(&format!(
            "{from} {:?} #{}{} {body}\n",
            f.kind,
            f.id,
            if f.more { " (more)" } else { "" }
        ));
    };
    let call = client.call(now, Request::Info);
    for _ in 0..1000 {
        let mut moved = false;
        while let Some(f) = client.peek_frame().map(<[u8]>::to_vec) {
            client.advance_frame();
            moved = true;
            line("client ->", &f);
            server.handle_frame(now, &f).unwrap();
        }
        while let Some((id, req)) = server.poll_store_request() {
            moved = true;
            let r = db.execute(req);
            server.handle_store_result(now, id, r);
        }
        while let Some(f) = server.peek_frame().map(<[u8]>::to_vec) {
            server.advance_frame();
            moved = true;
            line("server ->", &f);
            client.handle_frame(now, &f).unwrap();
        }
        while client.poll_event().is_some() || server.poll_event().is_some() {
            moved = true;
        }
        if !moved {
            break;
        }
    }
    assert!(client.is_ready(), "{trace}");
    assert!(
        trace.contains("Response"),
        "the call {call} was answered: {trace}"
    );
    insta::assert_snapshot!("rpc_hello_with_a_key", trace);
}
