//! Replication over a shaped path, the way peers meet on the internet:
//! `cargo bench -p peerpouch-cli --bench wan`.
//!
//! The path: 40 ms round trip (20 ms each way) and 0.5% loss each way. These kernels have no
//! netem, so the shaping is in user space, by `tests/nat/delay.py` run as child processes
//! (seeds fixed, stopped on drop):
//!
//! - `wan_p2p_replication_docs_per_s`: 10k notes of ~1 KiB (`common/docs.rs`) pulled peer to
//!   peer by two `PeerNode`s (async API, each driver on its own thread, in one child process).
//!   Each node is bound to 127.0.0.1:PORT and announces (`PeerConfig::announce`, a 1:1 NAT) the
//!   listening address of a UDP delay line that forwards to it; the nodes only ever learn those
//!   addresses (and the lines' upstream ports as peer-reflexive candidates), so every datagram
//!   crosses exactly one line: 20 ms and a seeded 0.5% drop per direction. The bench checks the
//!   path the link took and the lines' counters. Median of [`ROUNDS`] rounds, each on fresh
//!   nodes and fresh lines;
//! - the same transfer on plain loopback, in the same rounds: `wan_p2p_vs_loopback_ratio`;
//! - `wan_pouchdb_http_docs_per_s`: PouchDB 9 in node (`benches/pouchdb/replicate.js`, as in
//!   `side_by_side`) pulling the same documents from pouchdb-server through a TCP delay line
//!   (20 ms each way; TCP hides loss, so the line drops nothing), one run;
//!   `wan_p2p_vs_pouchdb_http_speedup` is the p2p median over it;
//! - `wan_sim_p2p_docs_per_virtual_s`: the same documents over the simulation's virtual
//!   network (`tests/sim`, real str0m, 20 ms each way, 0.5% loss each way, seeded), timed in
//!   virtual time: what the protocol stack allows whatever the CPU (store work takes no virtual
//!   time there), median of 5 seeds.
//!
//! Every contender runs in a child process (this binary with `--contender`, or `node`), as in
//! `side_by_side`. `docs/benchmarks.md` ("WAN path") has the method and the figures.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use peerpouch::MemoryStore;
use peerpouch_smol::{HubSpec, InProcessHub, PeerConfig, PeerNode, ReplicateOptions, ShareConfig};
use serde_json::{json, Value};

#[path = "common/delay.rs"]
mod delay;
#[path = "common/docs.rs"]
mod docs;
#[path = "common/harness.rs"]
mod harness;
// The simulation (tests/sim) and its helpers, as the root crate's tests include them.
#[path = "../../../tests/common/mod.rs"]
mod common;
#[path = "../../../tests/sim/mod.rs"]
mod sim;

use delay::{counter, DelayLine};
use docs::{docs, write_into};
use harness::*;

/// Rounds of the p2p contenders (loopback and WAN, interleaved).
const ROUNDS: usize = 3;
/// One way.
const DELAY: Duration = Duration::from_millis(20);
/// Each way.
const LOSS: f64 = 0.005;

// ---------------------------------------------------------------------------------------------
// Children.

/// `PEERPOUCH_WAN_SCTP_LOG`: sctp-proto's congestion events on stderr (fast retransmit `(FR)`,
/// retransmission timeout `(RTO)`), with the milliseconds since the child started.
struct SctpLog(Instant);

impl log::Log for SctpLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.target().starts_with("sctp_proto")
    }
    fn log(&self, r: &log::Record) {
        let msg = r.args().to_string();
        if self.enabled(r.metadata())
            && (msg.contains("(FR)") || msg.contains("(RTO)") || msg.contains("T3-rtx timed out"))
        {
            eprintln!(
                "{:>9.1} ms sctp {msg}",
                self.0.elapsed().as_secs_f64() * 1e3
            );
        }
    }
    fn flush(&self) {}
}

fn sctp_log() {
    if std::env::var_os("PEERPOUCH_WAN_SCTP_LOG").is_some() {
        let _ = log::set_boxed_logger(Box::new(SctpLog(Instant::now())));
        log::set_max_level(log::LevelFilter::Trace);
    }
}

/// Addresses of a WAN run: each node's socket and the delay line's address it announces.
struct WanAddrs {
    a: SocketAddr,
    fa: SocketAddr,
    b: SocketAddr,
    fb: SocketAddr,
}

/// Two `PeerNode`s, each driver on its own thread; the sharer (`a`) holds the docs, the joiner
/// (`b`) pulls them. `wan`: bind and announce as [`WanAddrs`] says; otherwise loopback.
fn contender_p2p(wan: Option<WanAddrs>) {
    watchdog("p2p");
    sctp_log();
    let knob = |k: &str| std::env::var(format!("PEERPOUCH_WAN_{k}")).ok();
    let hub = InProcessHub::new();
    let node = |seed: u64, bind: SocketAddr, announce: Option<SocketAddr>| {
        let mut config = PeerConfig::new(HubSpec::InProcess(hub.clone()))
            .bind(bind)
            .seed(seed);
        if let Some(a) = announce {
            config = config.announce(vec![a]);
        }
        // Knobs to explore with (env); the bench runs the defaults.
        if let Some(b) = knob("SENDBUF") {
            let mut n = peerpouch::node::NodeConfig::default();
            n.session.send_buffer = b.parse().expect("PEERPOUCH_WAN_SENDBUF");
            config = config.node(n);
        }
        let (node, driver) = PeerNode::with_driver(config).expect("a node on loopback");
        std::thread::spawn(move || smol::block_on(driver.run()));
        node
    };
    let any: SocketAddr = "127.0.0.1:0".parse().unwrap();
    let (a, b) = match &wan {
        Some(w) => (node(1, w.a, Some(w.fa)), node(2, w.b, Some(w.fb))),
        None => (node(1, any, None), node(2, any, None)),
    };
    smol::block_on(async {
        let db = a.add_db("db", MemoryStore::new("db")).await.expect("db");
        write_into(&db, DOCS).await;
        let share = a
            .share(&db, ShareConfig::new().name("db"))
            .await
            .expect("share");
        let t = Instant::now();
        let remote = b
            .open(&share, json!({"app": "wan"}))
            .await
            .expect("open the share");
        let open_s = t.elapsed().as_secs_f64();
        let path = remote.path().expect("a ready link has a path");
        let copy = b
            .add_db("copy", MemoryStore::new("copy"))
            .await
            .expect("copy");
        let cpu0 = self_cpu_s();
        let t = Instant::now();
        let options = ReplicateOptions {
            batch_size: knob("BATCH").map(|b| b.parse().expect("PEERPOUCH_WAN_BATCH")),
            ..ReplicateOptions::default()
        };
        let mut r = b
            .replicate(&remote, &copy, options)
            .await
            .expect("start the replication");
        // PEERPOUCH_WAN_TRACE: docs written over time (stalls of a second are SCTP's
        // retransmission timeout).
        let trace = std::env::var_os("PEERPOUCH_WAN_TRACE").is_some();
        let mut last = t;
        let p = loop {
            use peerpouch::replicate::ReplicationEvent as E;
            match r.next_event().await.expect("the replication's events") {
                E::Progressed(p) if trace => {
                    eprintln!(
                        "{:>8.1} ms (+{:>6.1}) {:>6} docs",
                        t.elapsed().as_secs_f64() * 1e3,
                        last.elapsed().as_secs_f64() * 1e3,
                        p.docs_written
                    );
                    last = Instant::now();
                }
                E::Completed(p) => break p,
                E::Failed { error, .. } => panic!("p2p replication: {error}"),
                _ => {}
            }
        };
        let secs = t.elapsed().as_secs_f64();
        let cpu = self_cpu_s() - cpu0;
        let count = copy.info().await.expect("info").doc_count;
        println!(
            "{}",
            json!({"secs": secs, "repl_cpu_s": cpu, "docs_written": p.docs_written,
                   "doc_count": count, "open_s": open_s, "path": path.to_string(),
                   "local_addr": path.local_addr.to_string(),
                   "remote_addr": path.remote_addr.to_string()})
        );
    });
}

/// The same documents over the simulation's virtual network; `secs` is virtual time.
/// The simulation's seeds, `k << 16` for k in 1..=SIM_SEEDS; the figure is their median. The
/// virtual network XORs its seed into a packet's fate beside the packet's index among those of
/// its instant (`tests/sim/net.rs`), so small seeds (1, 2, 3…) only permute the fates of one
/// instant's packets among themselves: seeds 1-8 all dropped ~0.3% of datagrams for 0.5%
/// asked. Seeds 16 bits up draw their own losses (0.40-0.65%).
const SIM_SEEDS: u64 = 5;

/// The same documents over the simulation's virtual network, [`SIM_SEEDS`] times (or the one
/// seed `PEERPOUCH_WAN_SIM_SEED`): `secs` is the median virtual time.
fn contender_sim() {
    watchdog("sim");
    let seeds = match std::env::var("PEERPOUCH_WAN_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("PEERPOUCH_WAN_SIM_SEED")],
        Err(_) => (1..=SIM_SEEDS).map(|k| k << 16).collect(),
    };
    let wall = Instant::now();
    let runs: Vec<Value> = seeds.into_iter().map(sim_once).collect();
    let secs: Vec<f64> = runs.iter().map(|r| r["secs"].as_f64().unwrap()).collect();
    let mut mid = runs[runs.len() / 2].clone();
    let mut order: Vec<usize> = (0..runs.len()).collect();
    order.sort_by(|&a, &b| secs[a].partial_cmp(&secs[b]).unwrap());
    if let Some(&m) = order.get(runs.len() / 2) {
        mid = runs[m].clone();
    }
    mid["secs_per_seed"] = json!(secs);
    mid["repl_cpu_s"] = json!(wall.elapsed().as_secs_f64());
    println!("{mid}");
}

/// One simulated run with `seed`; its result as a JSON object.
fn sim_once(seed: u64) -> Value {
    use peerpouch::hub::ShareOptions;
    use peerpouch::node::{DbRef, NodeEvent, ShareAccess};
    use peerpouch::replicate::ReplicationEvent;
    use peerpouch::ReplicatorConfig;
    // Knobs to explore with (`wan --contender sim`, env): the bench runs the defaults.
    let knob = |k: &str| std::env::var(format!("PEERPOUCH_WAN_SIM_{k}")).ok();
    let num = |k: &str, d: f64| knob(k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let net = sim::NetConfig {
        latency: Duration::from_secs_f64(num("LATENCY_MS", DELAY.as_secs_f64() * 1e3) / 1e3),
        loss: num("LOSS", LOSS),
        ..sim::NetConfig::default()
    };
    let mut s = sim::nodes::NodeSim::new(seed, net);
    if let Some(b) = knob("SENDBUF") {
        s.config.session.send_buffer = b.parse().expect("PEERPOUCH_WAN_SIM_SENDBUF");
    }
    s.trace_calls = false;
    // Lossy: the sim's replication tests give links these budgets too.
    s.config.session.connect_timeout = Duration::from_secs(300);
    s.config.rpc_hello_timeout = Duration::from_secs(300);
    s.add_node("sharer");
    s.add_node("joiner");
    for start in (0..DOCS).step_by(1000) {
        s.write(0, "db", docs(start..(start + 1000).min(DOCS)));
    }
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
        .open(now, &share, json!({"app": "wan"}), None)
        .expect("open");
    assert!(
        s.run_until(Duration::from_secs(120), |s| s.ready_link(1).is_some()),
        "no link in the simulation"
    );
    let link = s.ready_link(1).expect("a link");
    let path = s.nodes[1].events.iter().find_map(|(_, e)| match e {
        NodeEvent::LinkReady { path, .. } => path.as_ref().map(|p| p.to_string()),
        _ => None,
    });
    let mut config = ReplicatorConfig::new("sim:db", "sim:copy");
    if let Some(b) = knob("BATCH") {
        config.batch_size = b.parse().expect("PEERPOUCH_WAN_SIM_BATCH");
    }
    if let Some(b) = knob("INFLIGHT") {
        config.batches_in_flight = b.parse().expect("PEERPOUCH_WAN_SIM_INFLIGHT");
    }
    let (t0, wall) = (s.elapsed(), Instant::now());
    let now = s.now;
    let id = s.node(1).replicate(
        now,
        DbRef::Remote(link),
        DbRef::Local("copy".into()),
        config,
    );
    assert!(
        s.run_until(Duration::from_secs(3600), |s| s
            .replication_end(1, id)
            .is_some()),
        "the simulated replication did not end"
    );
    let secs = (s.elapsed() - t0).as_secs_f64();
    if knob("TRACE").is_some() {
        // Docs written over virtual time: stalls of a second are SCTP's retransmission timeout.
        let mut last = t0;
        for (at, e) in &s.nodes[1].events {
            if let NodeEvent::Replication {
                event: ReplicationEvent::Progressed(p),
                ..
            } = e
            {
                eprintln!(
                    "{:>8.1} ms (+{:>6.1}) {:>6} docs",
                    (*at - t0).as_secs_f64() * 1e3,
                    (*at - last).as_secs_f64() * 1e3,
                    p.docs_written
                );
                last = *at;
            }
        }
    }
    let p = match s.replication_end(1, id).expect("ended") {
        ReplicationEvent::Completed(p) => p,
        other => panic!("the simulated replication ended with {other:?}"),
    };
    let count = peerpouch::Database::info(s.store(1, "copy"))
        .expect("info")
        .doc_count;
    json!({"secs": secs, "seed": seed, "wall_s": wall.elapsed().as_secs_f64(),
           "docs_written": p.docs_written, "doc_count": count, "path": path,
           "packets": s.net.delivered, "dropped": s.net.dropped})
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// A free UDP port on 127.0.0.1 (bound and released: the node binds it right after).
fn free_udp() -> SocketAddr {
    UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("a free UDP port")
}

/// `RcvbufErrors` of `/proc/net/snmp` (UDP datagrams dropped for a full receive buffer).
fn udp_rcvbuf_errors() -> Option<u64> {
    let snmp = std::fs::read_to_string("/proc/net/snmp").ok()?;
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let (names, values) = (udp.next()?, udp.next()?);
    let i = names.split_whitespace().position(|n| n == "RcvbufErrors")?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// One WAN p2p run: fresh delay lines (seeds 1 and 2), checked, and their counters.
fn run_wan_p2p(exe: &std::path::Path, hub: &Hub, round: usize) -> (Run, String) {
    let (a, b) = (free_udp(), free_udp());
    let mut la = DelayLine::udp(a, DELAY, LOSS, 1);
    let mut lb = DelayLine::udp(b, DELAY, LOSS, 2);
    let mut cmd = Command::new(exe);
    cmd.args(["--contender", "p2p-wan"]);
    for x in [a, la.addr, b, lb.addr] {
        cmd.arg(x.to_string());
    }
    let drops0 = udp_rcvbuf_errors();
    let run = measure(cmd, hub, "p2p over the delay lines");
    let (ca, cb) = (la.stop(), lb.stop());
    // Datagrams the kernel dropped for a full receive buffer (machine-wide: any process's) are
    // loss that the lines' counters do not show.
    let rcvbuf_drops = udp_rcvbuf_errors().zip(drops0).map(|(b, a)| b - a);
    // No datagram bypasses the lines: the joiner's peer is a line (its address, or one of its
    // upstream sockets as a peer-reflexive candidate), never the sharer's own socket; and both
    // lines carried the transfer.
    let remote: SocketAddr = run.extra["remote_addr"]
        .as_str()
        .and_then(|r| r.parse().ok())
        .expect("remote_addr");
    assert!(
        remote != a && remote != b,
        "the link bypasses the delay lines: {}",
        run.extra
    );
    let carried = |c: &str| counter(c, "up_in") + counter(c, "down_in");
    assert!(
        carried(&ca) > 1000 && counter(&cb, "up_in") > 0,
        "the delay lines did not carry the transfer:\n{ca}\n{cb}"
    );
    let lines = format!("{ca}\n{cb}");
    eprintln!(
        "wan: round {round} p2p over the delay lines: {:.0} docs/s, repl CPU {:.2} s, link {} \
         (joiner's peer {remote}), open {:.2} s, UDP receive-buffer drops {}\n{lines}",
        run.docs_per_s(),
        run.repl_cpu_s,
        run.extra["path"].as_str().unwrap_or("?"),
        run.extra["open_s"].as_f64().unwrap_or(0.0),
        rcvbuf_drops.map_or("?".to_string(), |d| d.to_string()),
    );
    (run, lines)
}

fn parent() {
    let hub = Hub::get();
    install_pouchdb();
    let source = load_source(&hub);
    let exe = std::env::current_exe().expect("this bench's path");

    let (mut loopback, mut wan) = (Vec::new(), Vec::new());
    for round in 1..=ROUNDS {
        let mut cmd = Command::new(&exe);
        cmd.args(["--contender", "p2p"]);
        let run = measure(cmd, &hub, "p2p on loopback");
        eprintln!(
            "wan: round {round} p2p on loopback: {:.0} docs/s, repl CPU {:.2} s",
            run.docs_per_s(),
            run.repl_cpu_s
        );
        loopback.push(run);
        wan.push(run_wan_p2p(&exe, &hub, round).0);
    }

    // PouchDB through a TCP delay line in front of pouchdb-server.
    let hub_addr: SocketAddr = hub
        .url
        .strip_prefix("http://")
        .and_then(|h| h.parse().ok())
        .expect("the hub at http://127.0.0.1:PORT");
    let mut line = DelayLine::tcp(hub_addr, DELAY);
    let db_name = source.1.rsplit('/').next().expect("db name");
    let url = format!("http://{}/{db_name}", line.addr);
    let mut pouch = Command::new("node");
    pouch
        .arg(pouchdb_dir().join("replicate.js"))
        .arg(&url)
        .arg(DOCS.to_string());
    let pouchdb = measure(pouch, &hub, "PouchDB through the TCP delay line");
    let tcp = line.stop();
    eprintln!(
        "wan: PouchDB <- pouchdb-server through the TCP line: {:.0} docs/s, repl CPU {:.2} s, \
         hub CPU {:.2} s\n{tcp}",
        pouchdb.docs_per_s(),
        pouchdb.repl_cpu_s,
        pouchdb.hub_cpu_s.unwrap_or(f64::NAN)
    );
    drop(source);

    let mut cmd = Command::new(&exe);
    cmd.args(["--contender", "sim"]);
    let simrun = measure(cmd, &hub, "the simulation");
    eprintln!(
        "wan: simulation, seeds k << 16 for k in 1-{SIM_SEEDS}: virtual s {} (median {:.2}, \
         seed {}: {} packets \
         delivered, {} dropped, link {}), {:.1} s wall",
        simrun.extra["secs_per_seed"],
        simrun.secs,
        simrun.extra["seed"],
        simrun.extra["packets"],
        simrun.extra["dropped"],
        simrun.extra["path"].as_str().unwrap_or("?"),
        simrun.repl_cpu_s,
    );
    drop(hub);

    let med = |v: &[Run]| median(v.iter().map(Run::docs_per_s).collect());
    let (lo, w, p, s) = (
        med(&loopback),
        med(&wan),
        pouchdb.docs_per_s(),
        simrun.docs_per_s(),
    );
    println!();
    println!(
        "wan: {DOCS} docs of ~1 KiB, 20 ms each way, {:.1}% loss each way (UDP), median of \
         {ROUNDS} p2p rounds",
        LOSS * 100.0
    );
    println!("figure: wan_p2p_replication_docs_per_s = {w:.0} docs/s");
    println!("figure: wan_pouchdb_http_docs_per_s = {p:.0} docs/s");
    println!(
        "figure: wan_p2p_vs_pouchdb_http_speedup = {:.2} ratio",
        w / p
    );
    println!("figure: wan_p2p_loopback_docs_per_s = {lo:.0} docs/s");
    println!("figure: wan_p2p_vs_loopback_ratio = {:.3} ratio", w / lo);
    println!("figure: wan_sim_p2p_docs_per_virtual_s = {s:.0} docs/s");
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--contender") {
        Some(i) => match args.get(i + 1).map(String::as_str) {
            Some("p2p") => contender_p2p(None),
            Some("p2p-wan") => {
                let addr = |k: usize| -> SocketAddr {
                    args.get(i + 2 + k)
                        .and_then(|a| a.parse().ok())
                        .expect("--contender p2p-wan A FA B FB")
                };
                contender_p2p(Some(WanAddrs {
                    a: addr(0),
                    fa: addr(1),
                    b: addr(2),
                    fb: addr(3),
                }))
            }
            Some("sim") => contender_sim(),
            other => panic!("unknown contender {other:?}"),
        },
        None => parent(),
    }
}
