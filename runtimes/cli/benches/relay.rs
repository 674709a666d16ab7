//! Direct and relayed links side by side, same run: `cargo bench -p peerpouch-cli --bench relay`.
//!
//! Two `PeerNode`s (the async runtime, each on its own thread) on 127.0.0.1 meet on the
//! in-process hub. The same work runs over a direct link (host <-> host) and over a link
//! through coturn on 127.0.0.1 (both nodes relay-only, TURN over UDP), so the ratio shows what
//! the relay costs on top of the stack itself:
//!
//! - `connect_direct_ms` / `connect_via_relay_ms`: open to a ready link (ICE, DTLS, SCTP, the
//!   RPC hello; for the relay also the TURN allocations of both nodes, made when the first link
//!   starts), the first open of fresh nodes, median over rounds; the goal is relay <= direct +
//!   3 round trips to the TURN server; `..._warm_ms`: the median of the next opens, which reuse
//!   the allocations (a node keeps them 30 s after its last link);
//! - `relay_udp_mb_per_s` and `relay_vs_direct_throughput_ratio`: a 32 MiB attachment read
//!   through each link (goal ratio >= 0.7);
//! - `p2p_replication_via_turn_docs_per_s`: 10k notes of ~1 KiB (`common/docs.rs`) pulled
//!   through the relay, beside `p2p_replication_direct_docs_per_s` over the direct link.
//!
//! The TURN server is `PEERPOUCH_TEST_TURN` (`ADDR|USER|PASS`, as `.ci/test` exports it) when
//! set; otherwise the bench runs itself again under `runtimes/smol/stun-server.sh turn run`,
//! which installs coturn if needed, starts it on a free 127.0.0.1 port and stops it after.

use std::path::Path;
use std::time::Instant;

use peerpouch::reach::{IceServer, IceTransportPolicy};
use peerpouch::MemoryStore;
use peerpouch_smol::{
    Db, HubSpec, InProcessHub, PeerConfig, PeerNode, ReplicateOptions, ShareConfig,
};
use serde_json::json;

#[path = "common/docs.rs"]
mod docs;
use docs::write_into;

const DOCS: usize = 10_000;
const BIG: usize = 32 << 20;
const OPENS: usize = 9;
const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A node on its own thread, on loopback, with `servers` and `policy`.
fn node(
    hub: &InProcessHub,
    seed: u64,
    servers: Vec<IceServer>,
    policy: IceTransportPolicy,
) -> PeerNode {
    let mut nc = peerpouch::node::NodeConfig::default();
    if let Some(b) = std::env::var("PEERPOUCH_RELAY_SENDBUF")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        nc.session.send_buffer = b;
    }
    let (node, driver) = PeerNode::with_driver(
        PeerConfig::new(HubSpec::InProcess(hub.clone()))
            .node(nc)
            .bind("127.0.0.1:0".parse().unwrap())
            .ice_servers(servers)
            .ice_transport_policy(policy)
            .seed(seed),
    )
    .expect("a node on loopback");
    std::thread::spawn(move || smol::block_on(driver.run()));
    node
}

struct Figures {
    /// The first open of fresh nodes: TURN allocations made on the way.
    cold_connect_ms: f64,
    /// Later opens (median): the nodes keep their allocations between links.
    connect_ms: f64,
    mb_per_s: f64,
    docs_per_s: f64,
    path: String,
}

/// The whole measurement over one kind of link.
fn measure(servers: Vec<IceServer>, policy: IceTransportPolicy, blob: &[u8]) -> Figures {
    let hub = InProcessHub::new();
    let a = node(&hub, 1, servers.clone(), policy);
    let b = node(&hub, 2, servers, policy);
    smol::block_on(async {
        let db = a.add_db("db", MemoryStore::new("db")).await.expect("db");
        write_into(&db, DOCS).await;
        let b64 = serde_json::to_value(peerpouch::AttachmentData {
            content_type: String::new(),
            digest: String::new(),
            data: blob.to_vec().into(),
        })
        .unwrap()["data"]
            .clone();
        db.put(json!({"_id": "big", "_attachments": {"blob.bin": {
            "content_type": "application/octet-stream", "data": b64}}}))
            .await
            .expect("the attachment");
        let share = a
            .share(&db, ShareConfig::new().name("db"))
            .await
            .expect("share");
        // Opens: each a new link (and, relayed, new allocations: the last link's close gave
        // them back).
        let mut opens = Vec::new();
        let mut path = String::new();
        for _ in 0..OPENS {
            let t = Instant::now();
            let remote = b.open(&share, json!({})).await.expect("open");
            opens.push(t.elapsed().as_secs_f64() * 1e3);
            path = remote.path().map(|p| p.to_string()).unwrap_or_default();
            remote.close().await;
        }
        let cold_connect_ms = opens.remove(0);
        let remote: Db = b.open(&share, json!({})).await.expect("open");
        let t = Instant::now();
        let got = remote
            .get_attachment("big", "blob.bin")
            .await
            .expect("the attachment over the link");
        let mb_per_s = BIG as f64 / t.elapsed().as_secs_f64() / 1e6;
        assert!(got.data[..] == blob[..], "attachment bytes differ");
        let copy = b
            .add_db("copy", MemoryStore::new("copy"))
            .await
            .expect("copy");
        let t = Instant::now();
        let p = b
            .replicate(&remote, &copy, ReplicateOptions::default())
            .await
            .expect("replicate")
            .finished()
            .await
            .expect("replication");
        let docs_per_s = DOCS as f64 / t.elapsed().as_secs_f64();
        assert_eq!(p.docs_written as usize, DOCS + 1);
        a.shutdown().await;
        b.shutdown().await;
        Figures {
            cold_connect_ms,
            connect_ms: median(opens),
            mb_per_s,
            docs_per_s,
            path,
        }
    })
}

fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .try_init();
    }
    let Ok(turn) = std::env::var("PEERPOUCH_TEST_TURN") else {
        // Run again with a coturn of our own on loopback.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../smol/stun-server.sh");
        let me = std::env::current_exe().expect("this bench's path");
        let status = std::process::Command::new("bash")
            .arg(script)
            .args(["turn", "run"])
            .arg(me)
            .args(std::env::args_os().skip(1))
            .status()
            .expect("bash runtimes/smol/stun-server.sh turn run");
        std::process::exit(status.code().unwrap_or(1));
    };
    let mut parts = turn.splitn(3, '|');
    let (addr, user, pass) = (
        parts.next().expect("ADDR").to_string(),
        parts.next().expect("USER").to_string(),
        parts.next().expect("PASS").to_string(),
    );
    let relay = vec![IceServer::new(format!("turn:{addr}?transport=udp")).credentials(user, pass)];
    let blob: Vec<u8> = (0..BIG as u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let (mut direct, mut relayed) = (Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let d = measure(vec![], IceTransportPolicy::All, &blob);
        let r = measure(relay.clone(), IceTransportPolicy::Relay, &blob);
        println!(
            "round {round}: direct ({}) open {:.1} ms (first {:.1}), {:.1} MB/s, {:.0} docs/s; relayed ({}) open {:.1} ms (first {:.1}), {:.1} MB/s, {:.0} docs/s",
            d.path, d.connect_ms, d.cold_connect_ms, d.mb_per_s, d.docs_per_s,
            r.path, r.connect_ms, r.cold_connect_ms, r.mb_per_s, r.docs_per_s
        );
        assert!(
            r.path.starts_with("via relay"),
            "the relayed link took {}",
            r.path
        );
        direct.push(d);
        relayed.push(r);
    }
    let med = |v: &[Figures], f: fn(&Figures) -> f64| median(v.iter().map(f).collect());
    let ratios: Vec<f64> = direct
        .iter()
        .zip(&relayed)
        .map(|(d, r)| r.mb_per_s / d.mb_per_s)
        .collect();
    let direct_cold = med(&direct, |f| f.cold_connect_ms);
    let relay_cold = med(&relayed, |f| f.cold_connect_ms);
    println!("figure: connect_direct_ms = {direct_cold:.2} ms");
    println!("figure: connect_via_relay_ms = {relay_cold:.2} ms");
    println!(
        "figure: connect_direct_warm_ms = {:.2} ms",
        med(&direct, |f| f.connect_ms)
    );
    println!(
        "figure: connect_via_relay_warm_ms = {:.2} ms",
        med(&relayed, |f| f.connect_ms)
    );
    println!(
        "figure: direct_udp_mb_per_s = {:.1} MB/s",
        med(&direct, |f| f.mb_per_s)
    );
    println!(
        "figure: relay_udp_mb_per_s = {:.1} MB/s",
        med(&relayed, |f| f.mb_per_s)
    );
    println!(
        "figure: relay_vs_direct_throughput_ratio = {:.3} ratio",
        median(ratios)
    );
    println!(
        "figure: p2p_replication_direct_docs_per_s = {:.0} docs/s",
        med(&direct, |f| f.docs_per_s)
    );
    println!(
        "figure: p2p_replication_via_turn_docs_per_s = {:.0} docs/s",
        med(&relayed, |f| f.docs_per_s)
    );
}
