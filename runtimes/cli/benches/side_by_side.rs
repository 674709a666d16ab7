//! Side by side, same machine, same run: `cargo bench -p peerpouch-cli --bench side_by_side`.
//!
//! Three ways to get the same 10k documents of ~1 KiB into an empty in-memory database:
//!
//! 1. `p2p`: peerpouch pulls them from another peerpouch node over a WebRTC data channel on
//!    loopback UDP (two `Node`s in one process and one thread, meeting on the in-memory hub:
//!    [`peerpouch_cli::local::World`]);
//!    `p2p-threads` is the same transfer with each node on its own thread, through the async
//!    API (`peerpouch_smol::PeerNode`, two drivers, the in-process hub), as two programs would
//!    run it; the figure `p2p_docs_per_s` stays the one-thread contender's (see
//!    `docs/benchmarks.md`);
//! 2. `http`: peerpouch pulls them from pouchdb-server over HTTP ([`CouchClient`] as the source,
//!    a [`MemoryStore`] as the target, the blocking [`replicate`] helper);
//! 3. `pouchdb`: PouchDB (npm `pouchdb`, run by `node`, `benches/pouchdb/replicate.js`) pulls
//!    them from the same pouchdb-server database into PouchDB's in-memory adapter.
//!
//! Each contender runs in its own child process (this binary re-executed with `--contender`, or
//! `node`), so the CPU seconds (user + system) and the peak RSS that `wait4` reports are its own.
//! Docs/s and "repl CPU" are measured inside the child around the replication only. For the
//! HTTP contenders the server's work is in another process: its CPU time during the child's life
//! is shown apart (`hub CPU`). The pouchdb-server source database is loaded once, before any
//! timing; every run replicates into a fresh, empty target, and the run fails unless the target
//! then holds exactly 10k documents.
//!
//! The hub is `PEERPOUCH_TEST_HUB` when set (`.ci/test`, `source .ci/hub.sh && hub_start`);
//! otherwise this bench installs (`.ci/hub.sh install`) and starts its own pouchdb-server on a
//! free 127.0.0.1 port, and kills it at the end, panics included. The PouchDB script's packages
//! are installed from its lock file with `npm ci --ignore-scripts` when missing.
//!
//! Prints a table (medians of [`ROUNDS`] interleaved rounds), then `figure:` lines. The machine
//! is shared: the ratio is the stable number.

use std::process::Command;
use std::time::Instant;

use peerpouch::hub::MemoryHub;
use peerpouch::node::{DbRef, NodeConfig};
use peerpouch::{replicate, Database, MemoryStore, ReplicatorConfig};
use peerpouch_cli::local::{Peer, World};

#[path = "common/docs.rs"]
mod docs;
#[path = "common/harness.rs"]
mod harness;
use docs::{docs, write_into, zstd_ratio};
use harness::*;
use peerpouch_couch::CouchClient;
use serde_json::json;

const ROUNDS: usize = 5;

// ---------------------------------------------------------------------------------------------
// The contenders, each run in a child process. Each prints one JSON line on stdout.

/// `compress`: whether the two nodes offer zstd on the link (the default); `p2p-plain` turns it
/// off, to show what it brings.
fn contender_p2p(compress: bool) {
    watchdog("p2p");
    let mut config = NodeConfig::default();
    config.rpc_compress = compress;
    let peers = (1..=2)
        .map(|seed| Peer::with_config(seed, config.clone()))
        .collect::<Result<Vec<_>, _>>()
        .expect("loopback sockets");
    let mut w = World::with_hub(MemoryHub::new(), peers).expect("world");
    for start in (0..DOCS).step_by(1000) {
        w.peers[0]
            .write("db", docs(start..(start + 1000).min(DOCS)))
            .expect("write the source docs");
    }
    let share = w.share(0, "db").expect("share");
    let link = w.open(1, &share).expect("open the share");
    let cpu0 = self_cpu_s();
    let t = Instant::now();
    let p = w
        .replicate(
            1,
            DbRef::Remote(link),
            DbRef::Local("copy".into()),
            CHILD_LIMIT,
            |_| {},
        )
        .expect("p2p replication");
    let secs = t.elapsed().as_secs_f64();
    let cpu = self_cpu_s() - cpu0;
    let count = w.peers[1].store("copy").info().expect("info").doc_count;
    report(secs, cpu, p.docs_written, count);
}

/// The same transfer between two nodes that each run on their own thread, as two peers would in
/// two programs: the async runtime (`peerpouch_smol::PeerNode`), each node's task driven by its
/// own OS thread (`smol::block_on`), meeting on the in-process hub; the bench's thread only sends
/// commands and waits for the result.
fn contender_p2p_threads() {
    use peerpouch_smol::{
        HubSpec, InProcessHub, PeerConfig, PeerNode, ReplicateOptions, ShareConfig,
    };
    watchdog("p2p-threads");
    let hub = InProcessHub::new();
    let node = |seed: u64| {
        let (node, driver) = PeerNode::with_driver(
            PeerConfig::new(HubSpec::InProcess(hub.clone()))
                .bind("127.0.0.1:0".parse().unwrap())
                .seed(seed),
        )
        .expect("a node on loopback");
        std::thread::spawn(move || smol::block_on(driver.run()));
        node
    };
    let (a, b) = (node(1), node(2));
    smol::block_on(async {
        let db = a.add_db("db", MemoryStore::new("db")).await.expect("db");
        write_into(&db, DOCS).await;
        let share = a
            .share(&db, ShareConfig::new().name("db"))
            .await
            .expect("share");
        let remote = b
            .open(&share, json!({"app": "side_by_side"}))
            .await
            .expect("open the share");
        let copy = b
            .add_db("copy", MemoryStore::new("copy"))
            .await
            .expect("copy");
        let cpu0 = self_cpu_s();
        let t = Instant::now();
        let p = b
            .replicate(&remote, &copy, ReplicateOptions::default())
            .await
            .expect("start the replication")
            .finished()
            .await
            .expect("p2p replication");
        let secs = t.elapsed().as_secs_f64();
        let cpu = self_cpu_s() - cpu0;
        let count = copy.info().await.expect("info").doc_count;
        report(secs, cpu, p.docs_written, count);
    });
    // The node threads are left to the process's exit.
}

fn contender_http(url: &str) {
    watchdog("http");
    let mut source = CouchClient::new(url).expect("source url");
    let mut target = MemoryStore::new("copy");
    let config = ReplicatorConfig::new(source.url().redacted().to_string(), "mem:copy");
    let cpu0 = self_cpu_s();
    let t = Instant::now();
    let p = replicate(&mut source, &mut target, config).expect("http replication");
    let secs = t.elapsed().as_secs_f64();
    let cpu = self_cpu_s() - cpu0;
    report(
        secs,
        cpu,
        p.docs_written,
        target.info().expect("info").doc_count,
    );
}

struct Contender {
    name: &'static str,
    target: String,
    /// Whether its source is the hub (then the hub's CPU time is part of its cost).
    from_hub: bool,
    runs: Vec<Run>,
}

impl Contender {
    fn med(&self, f: impl Fn(&Run) -> f64) -> f64 {
        median(self.runs.iter().map(f).collect())
    }
}

fn parent() {
    let hub = Hub::get();
    install_pouchdb();
    let source = load_source(&hub);
    let url = source.1.clone();
    let exe = std::env::current_exe().expect("this bench's path");
    let script = pouchdb_dir().join("replicate.js");

    let mut contenders = [
        Contender {
            name: "peerpouch p2p (WebRTC, loopback UDP)",
            target: "MemoryStore".into(),
            from_hub: false,
            runs: Vec::new(),
        },
        Contender {
            name: "peerpouch p2p, no compression",
            target: "MemoryStore".into(),
            from_hub: false,
            runs: Vec::new(),
        },
        Contender {
            name: "peerpouch p2p, 2 threads (async API)",
            target: "MemoryStore".into(),
            from_hub: false,
            runs: Vec::new(),
        },
        Contender {
            name: "peerpouch <- pouchdb-server (HTTP)",
            target: "MemoryStore".into(),
            from_hub: true,
            runs: Vec::new(),
        },
        Contender {
            name: "PouchDB <- pouchdb-server (HTTP)",
            target: String::new(),
            from_hub: true,
            runs: Vec::new(),
        },
    ];
    for round in 1..=ROUNDS {
        let mut p2p = Command::new(&exe);
        p2p.args(["--contender", "p2p"]);
        let mut p2p_plain = Command::new(&exe);
        p2p_plain.args(["--contender", "p2p-plain"]);
        let mut p2p_threads = Command::new(&exe);
        p2p_threads.args(["--contender", "p2p-threads"]);
        let mut http = Command::new(&exe);
        http.args(["--contender", "http", &url]);
        let mut pouch = Command::new("node");
        pouch.arg(&script).arg(&url).arg(DOCS.to_string());
        for (c, cmd) in contenders
            .iter_mut()
            .zip([p2p, p2p_plain, p2p_threads, http, pouch])
        {
            let run = measure(cmd, &hub, c.name);
            eprintln!(
                "side_by_side: round {round} {:<38} {:>7.0} docs/s, repl CPU {:.2} s, process CPU {:.2} s, peak RSS {:.0} MiB, child wall {:.2} s",
                c.name,
                run.docs_per_s(),
                run.repl_cpu_s,
                run.process_cpu_s,
                run.peak_rss_kib as f64 / 1024.0,
                run.wall_s
            );
            if c.target.is_empty() {
                c.target = format!(
                    "{} adapter (PouchDB {})",
                    run.extra["adapter"].as_str().unwrap_or("?"),
                    run.extra["pouchdb"].as_str().unwrap_or("?")
                );
            }
            c.runs.push(run);
        }
    }
    drop(source);
    drop(hub);

    println!();
    println!(
        "side by side: {DOCS} docs of ~1 KiB (zstd ratio of a batch of 100: {:.2}) into an empty \
         in-memory database, median of {ROUNDS} rounds",
        zstd_ratio()
    );
    println!(
        "{:<38} {:<32} {:>8} {:>7} {:>9} {:>9} {:>9} {:>9} {:>10}",
        "contender",
        "target",
        "docs/s",
        "repl s",
        "repl CPU",
        "proc CPU",
        "peak RSS",
        "hub CPU",
        "docs/CPU s"
    );
    for c in &contenders {
        let hub_known = c.runs.iter().all(|r| r.hub_cpu_s.is_some());
        let (hub_cpu, per_cpu) = if !c.from_hub {
            ("-".to_string(), Some(c.med(|r| DOCS as f64 / r.repl_cpu_s)))
        } else if hub_known {
            let hub = |r: &Run| r.hub_cpu_s.unwrap_or(0.0);
            (
                format!("{:.2} s", c.med(hub)),
                Some(c.med(|r| DOCS as f64 / (r.repl_cpu_s + hub(r)))),
            )
        } else {
            ("?".to_string(), None)
        };
        println!(
            "{:<38} {:<32} {:>8.0} {:>7.2} {:>7.2} s {:>7.2} s {:>5.0} MiB {:>9} {:>10}",
            c.name,
            c.target,
            c.med(Run::docs_per_s),
            c.med(|r| r.secs),
            c.med(|r| r.repl_cpu_s),
            c.med(|r| r.process_cpu_s),
            c.med(|r| r.peak_rss_kib as f64) / 1024.0,
            hub_cpu,
            per_cpu.map_or("?".to_string(), |d| format!("{d:.0}")),
        );
    }
    println!(
        "notes: docs/s and repl CPU are timed inside each child around the replication only; proc \
         CPU (user+sys) and peak RSS are the whole child process (wait4). p2p runs both nodes in \
         one process on one thread (p2p_docs_per_s), `2 threads` runs each node on its own thread \
         with the async runtime, as two programs would; both include the source node and its 10k \
         docs; the \
         HTTP contenders' source is pouchdb-server (in memory; `hub CPU` is its CPU time during \
         the child's life, `?` when its pid is unknown). docs/CPU s counts both ends: repl CPU, \
         plus hub CPU for the HTTP contenders; it moves less with the machine's load than docs/s. \
         Release build; the machine is shared: compare ratios."
    );
    let [p2p, p2p_plain, p2p_threads, http, pouch] = &contenders;
    let (p2p, p2p_plain, p2p_threads, http, pouch) = (
        p2p.med(Run::docs_per_s),
        p2p_plain.med(Run::docs_per_s),
        p2p_threads.med(Run::docs_per_s),
        http.med(Run::docs_per_s),
        pouch.med(Run::docs_per_s),
    );
    println!("figure: p2p_docs_per_s = {p2p:.0} docs/s");
    println!("figure: p2p_uncompressed_docs_per_s = {p2p_plain:.0} docs/s");
    println!("figure: p2p_two_threads_docs_per_s = {p2p_threads:.0} docs/s");
    println!("figure: http_docs_per_s = {http:.0} docs/s");
    println!("figure: pouchdb_http_docs_per_s = {pouch:.0} docs/s");
    println!(
        "figure: p2p_vs_pouchdb_http_speedup = {:.2} ratio",
        p2p / pouch
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.iter().position(|a| a == "--contender") {
        Some(i) => match args.get(i + 1).map(String::as_str) {
            Some("p2p") => contender_p2p(true),
            Some("p2p-plain") => contender_p2p(false),
            Some("p2p-threads") => contender_p2p_threads(),
            Some("http") => contender_http(args.get(i + 2).expect("--contender http URL")),
            other => panic!("unknown contender {other:?}"),
        },
        None => parent(),
    }
}
