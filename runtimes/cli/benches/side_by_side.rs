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

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use peerpouch::hub::MemoryHub;
use peerpouch::node::{DbRef, NodeConfig};
use peerpouch::{replicate, Database, MemoryStore, ReplicatorConfig};
use peerpouch_cli::local::{Peer, World};

#[path = "common/docs.rs"]
mod docs;
use docs::{docs, zstd_ratio};
use peerpouch_couch::CouchClient;
use serde_json::{json, Value};

const DOCS: usize = 10_000;
const ROUNDS: usize = 5;
/// A child that has not answered by then is a failed run (each child also gives up on its own).
const CHILD_LIMIT: Duration = Duration::from_secs(120);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn pouchdb_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/pouchdb")
}

fn secs(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// This process's CPU seconds so far (user + system, all threads).
fn self_cpu_s() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    assert_eq!(rc, 0, "getrusage");
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// CPU seconds (user + system) of another process so far, from `/proc/PID/stat`.
fn proc_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks / hz.max(1) as f64)
}

// ---------------------------------------------------------------------------------------------
// The contenders, each run in a child process. Each prints one JSON line on stdout.

fn report(secs: f64, repl_cpu_s: f64, docs_written: u64, doc_count: u64) {
    println!(
        "{}",
        json!({"secs": secs, "repl_cpu_s": repl_cpu_s, "docs_written": docs_written,
               "doc_count": doc_count})
    );
}

/// Gives up the whole process after [`CHILD_LIMIT`], so a stuck contender never hangs the bench.
fn watchdog(what: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(CHILD_LIMIT);
        eprintln!("{what}: no result within {CHILD_LIMIT:?}");
        std::process::exit(1);
    });
}

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
        for start in (0..DOCS).step_by(1000) {
            for r in db
                .bulk_docs(docs(start..(start + 1000).min(DOCS)), true)
                .await
                .expect("write the source docs")
            {
                r.result.expect("a source doc");
            }
        }
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

// ---------------------------------------------------------------------------------------------
// The parent: the hub, the source database, the runs, the table.

/// A pouchdb-server: ours (killed on drop, panics included) or the one `PEERPOUCH_TEST_HUB`
/// names.
struct Hub {
    url: String,
    pid: Option<u32>,
    child: Option<Child>,
    tmp: Option<PathBuf>,
}

impl Drop for Hub {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_dir_all(tmp);
        }
    }
}

fn run_ok(cmd: &mut Command, what: &str) {
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{what}: {e} (node and npm must be on PATH)"));
    assert!(status.success(), "{what} failed: {status}");
}

/// `GET /` on a loopback server, by hand (HTTP/1.0, so the server closes the connection).
fn get_root(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

impl Hub {
    fn get() -> Hub {
        if let Ok(url) = std::env::var("PEERPOUCH_TEST_HUB") {
            let pid = std::env::var("PEERPOUCH_HUB_PID")
                .ok()
                .and_then(|p| p.parse().ok());
            eprintln!("side_by_side: using the hub at {url} (PEERPOUCH_TEST_HUB)");
            return Hub {
                url: url.trim_end_matches('/').to_string(),
                pid,
                child: None,
                tmp: None,
            };
        }
        let root = repo_root();
        run_ok(
            Command::new("bash")
                .arg(root.join(".ci/hub.sh"))
                .arg("install"),
            "installing pouchdb-server (.ci/hub.sh install)",
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let tmp = std::env::temp_dir().join(format!("peerpouch-bench-hub.{}", std::process::id()));
        std::fs::create_dir_all(&tmp).expect("hub temp dir");
        let log = std::fs::File::create(tmp.join("stdout.log")).expect("hub log");
        // The command of `.ci/hub.sh` (see there and `.ci/hub/NOTES.md` for the flags).
        let child = Command::new("node")
            .arg("--unhandled-rejections=warn")
            .arg(root.join(".ci/hub/node_modules/pouchdb-server/bin/pouchdb-server"))
            .args(["-m", "-n", "-o", "127.0.0.1", "-p", &port.to_string()])
            .current_dir(&tmp)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start pouchdb-server with node");
        let mut hub = Hub {
            url: format!("http://127.0.0.1:{port}"),
            pid: Some(child.id()),
            child: Some(child),
            tmp: Some(tmp.clone()),
        };
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = hub.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                let log = std::fs::read_to_string(tmp.join("stdout.log")).unwrap_or_default();
                panic!("pouchdb-server exited ({status}) before answering:\n{log}");
            }
            // It must be our server: the uuid it reports is the one in its own config.json.
            let uuid = std::fs::read_to_string(tmp.join("config.json"))
                .ok()
                .and_then(|c| serde_json::from_str::<Value>(&c).ok())
                .and_then(|c| c["couchdb"]["uuid"].as_str().map(str::to_string));
            if let (Some(uuid), Some(body)) = (uuid, get_root(port)) {
                if body.contains(&uuid) {
                    break;
                }
            }
            assert!(
                Instant::now() < end,
                "pouchdb-server did not answer within 30 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!(
            "side_by_side: started pouchdb-server at {} (pid {})",
            hub.url,
            hub.pid.unwrap_or(0)
        );
        hub
    }

    fn cpu_s(&self) -> Option<f64> {
        self.pid.and_then(proc_cpu_s)
    }
}

/// The source database on the hub (its client and URL), deleted on drop.
struct SourceDb(CouchClient, String);

impl Drop for SourceDb {
    fn drop(&mut self) {
        let _ = self.0.delete_db();
    }
}

fn load_source(hub: &Hub) -> SourceDb {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let url = format!("{}/pp_side_by_side_{}_{nanos}", hub.url, std::process::id());
    let client = CouchClient::new(&url).expect("source url");
    client.create_db(false).expect("create the source database");
    let mut db = SourceDb(client, url.clone());
    let t = Instant::now();
    for start in (0..DOCS).step_by(1000) {
        for r in
            db.0.bulk_docs(docs(start..(start + 1000).min(DOCS)), true)
                .expect("bulk_docs into the hub")
        {
            r.result.expect("a source doc");
        }
    }
    let count = db.0.info().expect("source info").doc_count;
    assert_eq!(count, DOCS as u64, "the source database holds every doc");
    eprintln!(
        "side_by_side: loaded {DOCS} docs into {url} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    db
}

fn install_pouchdb() {
    let dir = pouchdb_dir();
    let installed = dir.join("node_modules/.package-lock.json");
    let fresh = match (
        std::fs::metadata(&installed).and_then(|m| m.modified()),
        std::fs::metadata(dir.join("package-lock.json")).and_then(|m| m.modified()),
    ) {
        (Ok(i), Ok(l)) => i >= l,
        _ => false,
    };
    if !fresh {
        eprintln!(
            "side_by_side: installing pouchdb into {} (npm ci --ignore-scripts)",
            dir.display()
        );
        run_ok(
            Command::new("npm")
                .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund"])
                .current_dir(&dir),
            "npm ci in benches/pouchdb",
        );
    }
}

/// One run of one contender, as its child process and the hub saw it.
#[derive(Clone, Debug)]
struct Run {
    secs: f64,
    repl_cpu_s: f64,
    process_cpu_s: f64,
    peak_rss_kib: u64,
    hub_cpu_s: Option<f64>,
    wall_s: f64,
    extra: Value,
}

impl Run {
    fn docs_per_s(&self) -> f64 {
        DOCS as f64 / self.secs
    }
}

/// Runs `cmd` to its end and reads its own rusage with `wait4`.
#[allow(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which std's wait would not give the rusage of"
)]
fn measure(mut cmd: Command, hub: &Hub, what: &str) -> Run {
    let hub0 = hub.cpu_s();
    let t = Instant::now();
    let mut child = cmd
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    let mut out = String::new();
    child
        .stdout
        .take()
        .expect("piped stdout")
        .read_to_string(&mut out)
        .expect("child stdout");
    let mut status = 0;
    // SAFETY: wait4 writes only into `status` and `usage`; the pid is our own unreaped child
    // (std's `Child` is never waited on after this).
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as libc::pid_t, "{what}: wait4 failed");
    let wall_s = t.elapsed().as_secs_f64();
    let hub_cpu_s = match (hub0, hub.cpu_s()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{what} failed (wait status {status}); its output:\n{out}"
    );
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("{what}: no result line in:\n{out}"));
    let v: Value = serde_json::from_str(line).expect("a JSON result line");
    let (written, count) = (v["docs_written"].as_u64(), v["doc_count"].as_u64());
    assert!(
        written == Some(DOCS as u64) && count == Some(DOCS as u64),
        "{what} did not replicate {DOCS} docs: {line}"
    );
    Run {
        secs: v["secs"].as_f64().expect("secs"),
        repl_cpu_s: v["repl_cpu_s"].as_f64().expect("repl_cpu_s"),
        process_cpu_s: secs(usage.ru_utime) + secs(usage.ru_stime),
        // Linux reports ru_maxrss in KiB.
        peak_rss_kib: usage.ru_maxrss as u64,
        hub_cpu_s,
        wall_s,
        extra: v,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
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
