//! What the benches that run contenders in child processes share (`#[path]`-included by
//! `side_by_side.rs` and `wan.rs`, next to `docs.rs`, which the including crate must also
//! declare as `mod docs`): CPU and memory accounting of child processes, the pouchdb-server hub
//! (ours or `PEERPOUCH_TEST_HUB`), the source database on it, PouchDB's install, and one
//! measured run of a contender.
#![allow(dead_code)] // each bench uses its part

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use peerpouch::Database;
use peerpouch_couch::CouchClient;
use serde_json::{json, Value};

use crate::docs::docs;

/// Documents every contender replicates.
pub const DOCS: usize = 10_000;
/// A child that has not answered by then is a failed run (each child also gives up on its own).
pub const CHILD_LIMIT: Duration = Duration::from_secs(120);

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn pouchdb_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/pouchdb")
}

pub fn secs(tv: libc::timeval) -> f64 {
    tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6
}

/// This process's CPU seconds so far (user + system, all threads).
pub fn self_cpu_s() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    assert_eq!(rc, 0, "getrusage");
    secs(u.ru_utime) + secs(u.ru_stime)
}

/// CPU seconds (user + system) of another process so far, from `/proc/PID/stat`.
pub fn proc_cpu_s(pid: u32) -> Option<f64> {
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

pub fn report(secs: f64, repl_cpu_s: f64, docs_written: u64, doc_count: u64) {
    println!(
        "{}",
        json!({"secs": secs, "repl_cpu_s": repl_cpu_s, "docs_written": docs_written,
               "doc_count": doc_count})
    );
}

/// Gives up the whole process after [`CHILD_LIMIT`], so a stuck contender never hangs the bench.
pub fn watchdog(what: &'static str) {
    std::thread::spawn(move || {
        std::thread::sleep(CHILD_LIMIT);
        eprintln!("{what}: no result within {CHILD_LIMIT:?}");
        std::process::exit(1);
    });
}

// ---------------------------------------------------------------------------------------------
// The parent's side: the hub, the source database, measuring a child.

/// A pouchdb-server: ours (killed on drop, panics included) or the one `PEERPOUCH_TEST_HUB`
/// names.
pub struct Hub {
    pub url: String,
    pub pid: Option<u32>,
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

pub fn run_ok(cmd: &mut Command, what: &str) {
    let status = cmd
        .stdout(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("{what}: {e} (node and npm must be on PATH)"));
    assert!(status.success(), "{what} failed: {status}");
}

/// `GET /` on a loopback server, by hand (HTTP/1.0, so the server closes the connection).
pub fn get_root(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

impl Hub {
    pub fn get() -> Hub {
        if let Ok(url) = std::env::var("PEERPOUCH_TEST_HUB") {
            let pid = std::env::var("PEERPOUCH_HUB_PID")
                .ok()
                .and_then(|p| p.parse().ok());
            eprintln!("bench: using the hub at {url} (PEERPOUCH_TEST_HUB)");
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
            "bench: started pouchdb-server at {} (pid {})",
            hub.url,
            hub.pid.unwrap_or(0)
        );
        hub
    }

    pub fn cpu_s(&self) -> Option<f64> {
        self.pid.and_then(proc_cpu_s)
    }
}

/// The source database on the hub (its client and URL), deleted on drop.
pub struct SourceDb(pub CouchClient, pub String);

impl Drop for SourceDb {
    fn drop(&mut self) {
        let _ = self.0.delete_db();
    }
}

pub fn load_source(hub: &Hub) -> SourceDb {
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
        "bench: loaded {DOCS} docs into {url} in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    db
}

pub fn install_pouchdb() {
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
            "bench: installing pouchdb into {} (npm ci --ignore-scripts)",
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
pub struct Run {
    pub secs: f64,
    pub repl_cpu_s: f64,
    pub process_cpu_s: f64,
    pub peak_rss_kib: u64,
    pub hub_cpu_s: Option<f64>,
    pub wall_s: f64,
    pub extra: Value,
}

impl Run {
    pub fn docs_per_s(&self) -> f64 {
        DOCS as f64 / self.secs
    }
}

/// Runs `cmd` to its end and reads its own rusage with `wait4`.
#[allow(
    clippy::zombie_processes,
    reason = "the child is reaped by wait4, which std's wait would not give the rusage of"
)]
pub fn measure(mut cmd: Command, hub: &Hub, what: &str) -> Run {
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

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v[v.len() / 2]
}
