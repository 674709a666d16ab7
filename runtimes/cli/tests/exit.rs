//! How `peerpouch` ends, driven as a user would: files whole after every command (copy only
//! the `.db` and read it), errors that say what is true and create nothing, and Ctrl-C or
//! SIGTERM that stop a command promptly even when the hub or the peer stopped answering.
//!
//! Tests that meet on a hub use the pouchdb-server test hub of `.ci/test` (PEERPOUCH_TEST_HUB);
//! a hub that hangs is a TCP relay in front of it that the test switches to swallow everything.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use peerpouch::{Database, DbError};
use peerpouch_couch::CouchClient;
use serde_json::{json, Value};

mod common;
use common::*;

/// How long a stopped command may take to exit: its own bound is 2 s; this leaves room for a
/// loaded machine while still failing a command that waits for the hub's timeouts (30-60 s).
const EXIT_DEADLINE: Duration = Duration::from_secs(6);

/// A running `peerpouch` whose stdout and stderr lines, and its exit, arrive on channels.
struct Running {
    child: Child,
    /// Told when the child has exited; it stays unreaped (so its pid stays ours) until
    /// [`Running::wait_exit`] or `Drop`.
    exited: Receiver<()>,
    out: Receiver<String>,
    err: Receiver<String>,
}

impl Running {
    fn start(args: &[&str], env: &[(&str, &str)]) -> Running {
        let mut c = peerpouch(args);
        c.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            c.env(k, v);
        }
        let mut child: Child = c.spawn().unwrap();
        let out = lines(child.stdout.take().unwrap());
        let err = lines(child.stderr.take().unwrap());
        let pid = child.id();
        let (tx, exited) = channel();
        std::thread::spawn(move || {
            // SAFETY: waitid(2) with WNOWAIT on our own child only observes its exit; a
            // zeroed siginfo_t is a valid buffer for it.
            let r = unsafe {
                let mut info: libc::siginfo_t = std::mem::zeroed();
                libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT)
            };
            if r == 0 {
                let _ = tx.send(());
            }
        });
        Running {
            child,
            exited,
            out,
            err,
        }
    }

    /// Sends `signal` to it.
    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) on our own child, not reaped before `Drop`, so the pid is its own.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }

    /// The next JSON line on stdout for which `pred` holds (earlier ones are skipped).
    fn expect(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let line = self
                .out
                .recv_timeout(LINE_DEADLINE)
                .unwrap_or_else(|e| panic!("no {what} within {LINE_DEADLINE:?}: {e}"));
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if pred(&v) {
                return v;
            }
        }
    }

    /// The next stderr line containing `needle`.
    fn expect_err(&self, needle: &str) -> String {
        loop {
            let line = self.err.recv_timeout(LINE_DEADLINE).unwrap_or_else(|e| {
                panic!("no {needle:?} on stderr within {LINE_DEADLINE:?}: {e}")
            });
            if line.contains(needle) {
                return line;
            }
        }
    }

    /// Waits for the exit, at most `limit`; returns the status, how long it took and the
    /// rest of stderr.
    fn wait_exit(&mut self, limit: Duration) -> (ExitStatus, Duration, String) {
        let start = Instant::now();
        self.exited.recv_timeout(limit).unwrap_or_else(|_| {
            panic!("peerpouch did not exit within {limit:?} of being told to stop")
        });
        let took = start.elapsed();
        let status = self.child.wait().unwrap();
        let rest: Vec<String> = self.err.iter().collect();
        (status, took, rest.join("\n"))
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Also ends one stopped with SIGSTOP.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn seed(path: &str, n: usize) {
    let docs: Vec<Value> = (0..n)
        .map(|i| json!({"_id": format!("doc-{i:04}"), "i": i, "text": "x".repeat(200)}))
        .collect();
    let r = ok_json(
        &["docs", path, "bulk"],
        Some(&serde_json::to_string(&docs).unwrap()),
    );
    assert_eq!(r[0]["written"], n);
}

/// Copies the main file alone (not its `-wal`) into a directory of its own and reads every
/// document of the copy: what a backup or a file sent by mail holds.
fn read_copy_of(path: &str) -> Value {
    let dir = Dir::new();
    let copy = dir.db("copy.db");
    std::fs::copy(path, &copy).unwrap();
    let all = ok_json(&["docs", &copy, "all", "--include-docs"], None).remove(0);
    let info = ok_json(&["docs", &copy, "info"], None).remove(0);
    json!({"info": info, "all": all})
}

fn exists(path: &str) -> bool {
    Path::new(path).exists()
}

/// Whether the database at `url` exists on its server.
fn couch_exists(url: &str) -> bool {
    match CouchClient::new(url).unwrap().info() {
        Ok(_) => true,
        Err(DbError::NotFound(_)) => false,
        Err(e) => panic!("asking {url}: {e}"),
    }
}

/// A TCP relay in front of the test hub that can start swallowing everything: connections
/// stay open and nothing is answered, as when the hub's machine or network stops.
struct Relay {
    addr: SocketAddr,
    hung: Arc<AtomicBool>,
    /// Everything clients sent, for tests that wait for a request to have gone out.
    sent: Sent,
}

type Sent = Arc<(Mutex<Vec<u8>>, Condvar)>;

impl Relay {
    fn start(upstream: &str) -> Relay {
        let upstream: SocketAddr = upstream
            .trim_start_matches("http://")
            .parse()
            .expect("PEERPOUCH_TEST_HUB is http://ADDR:PORT");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let hung = Arc::new(AtomicBool::new(false));
        let sent: Sent = Arc::new((Mutex::new(Vec::new()), Condvar::new()));
        let (h, s) = (hung.clone(), sent.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().map_while(Result::ok) {
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                pump(
                    client.try_clone().unwrap(),
                    server.try_clone().unwrap(),
                    &h,
                    Some(&s),
                );
                pump(server, client, &h, None);
            }
        });
        Relay { addr, hung, sent }
    }

    fn url(&self, db: &str) -> String {
        format!("http://{}/{db}", self.addr)
    }

    fn hang(&self) {
        self.hung.store(true, Ordering::SeqCst);
    }

    /// Waits until a client has sent `needle`.
    fn wait_sent(&self, needle: &str) {
        let (sent, grew) = &*self.sent;
        let guard = sent.lock().unwrap();
        let (_sent, timeout) = grew
            .wait_timeout_while(guard, LINE_DEADLINE, |s| {
                !String::from_utf8_lossy(s).contains(needle)
            })
            .unwrap();
        assert!(!timeout.timed_out(), "nothing sent {needle:?} to the hub");
    }
}

/// Copies `from` to `to` until either closes; once `hung`, reads and drops.
fn pump(mut from: TcpStream, mut to: TcpStream, hung: &Arc<AtomicBool>, log: Option<&Sent>) {
    let hung = hung.clone();
    let log = log.cloned();
    std::thread::spawn(move || {
        let mut buf = [0u8; 16384];
        while let Ok(n) = from.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Some(l) = &log {
                l.0.lock().unwrap().extend_from_slice(&buf[..n]);
                l.1.notify_all();
            }
            if !hung.load(Ordering::SeqCst) && to.write_all(&buf[..n]).is_err() {
                break;
            }
        }
        // Keep the other side open while hung: a hung server does not close.
        while hung.load(Ordering::SeqCst) {
            std::thread::park_timeout(Duration::from_secs(1));
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

#[test]
fn replicate_leaves_a_target_file_that_holds_everything_alone() {
    let dir = Dir::new();
    let (src, dst) = (dir.db("src.db"), dir.db("dst.db"));
    seed(&src, 200);
    let out = ok_json(&["replicate", &src, &dst, "--json"], None);
    assert_eq!(out.last().unwrap()["docs_written"], 200);
    for path in [&src, &dst] {
        let copy = read_copy_of(path);
        assert_eq!(
            copy["info"]["doc_count"], 200,
            "{path} alone: {}",
            copy["info"]
        );
        assert_eq!(copy["all"]["rows"][42]["doc"]["i"], 42);
    }
    assert!(!exists(&format!("{dst}-wal")), "the log was folded in");
}

#[test]
fn ctrl_c_and_sigterm_leave_whole_files_behind() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("exit-hub"));
    let (a, c, d) = (dir.db("a.db"), dir.db("c.db"), dir.db("d.db"));
    seed(&a, 30);
    let name = unique("whole");
    let mut sharer = Running::start(
        &[
            "share", "--hub", &hub, "--db", &a, "--name", &name, "--json",
        ],
        &[],
    );
    sharer.expect("the shared event", |v| v["event"] == "shared");
    let peer = format!("peer+{hub}#{name}");
    let mut live = Running::start(&["replicate", &peer, &c, "--live", "--json"], &[]);
    live.expect("30 docs written", |v| v["docs_written"] == 30);
    // A third process writes into the share: the sharer writes it into its file.
    ok_json(&["docs", &d, "put", r#"{"_id": "late", "v": 7}"#], None);
    ok_json(&["replicate", &d, &peer, "--json"], None);
    live.expect("the late doc", |v| v["docs_written"] == 31);

    live.signal(libc::SIGTERM);
    let (status, _, err) = live.wait_exit(EXIT_DEADLINE);
    assert!(
        status.success(),
        "SIGTERM ends a live replication cleanly: {err}"
    );
    let copy = read_copy_of(&c);
    assert_eq!(
        copy["info"]["doc_count"], 31,
        "c.db alone: {}",
        copy["info"]
    );

    sharer.signal(libc::SIGINT);
    let (status, _, err) = sharer.wait_exit(EXIT_DEADLINE);
    assert!(status.success(), "Ctrl-C ends the share cleanly: {err}");
    let copy = read_copy_of(&a);
    assert_eq!(
        copy["info"]["doc_count"], 31,
        "a.db alone: {}",
        copy["info"]
    );
    let late = copy["all"]["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "late")
        .cloned();
    assert_eq!(late.map(|r| r["doc"]["v"].clone()), Some(json!(7)));
}

#[test]
fn errors_are_true_and_leave_nothing_behind() {
    let dir = Dir::new();
    let base = hub_base();
    let x = dir.db("x.db");
    seed(&x, 2);
    let missing_hub = format!("{base}/{}", unique("nohub"));
    let missing_db = format!("{base}/{}", unique("nodb"));
    // (arguments, exit status, what stderr says, files and hub databases that must not exist)
    let cases: Vec<(Vec<String>, i32, &str, Vec<String>)> = vec![
        (
            vec!["replicate".into(), dir.db("alcie.db"), dir.db("bob.db")],
            2,
            "does not exist",
            vec![dir.db("alcie.db"), dir.db("bob.db")],
        ),
        (
            vec!["replicate".into(), missing_db.clone(), dir.db("t1.db")],
            2,
            "does not exist",
            vec![dir.db("t1.db"), missing_db.clone()],
        ),
        (
            vec![
                "docs".into(),
                dir.db("new.db"),
                "put".into(),
                "not json".into(),
            ],
            2,
            "invalid JSON",
            vec![dir.db("new.db")],
        ),
        (
            vec!["replicate".into(), x.clone(), dir.db("nodir/t3.db")],
            1,
            "there is no directory",
            vec![dir.db("nodir")],
        ),
        (
            vec!["replicate".into(), x.clone(), x.clone()],
            2,
            "are the same database",
            vec![],
        ),
        (
            vec!["shares".into(), "--hub".into(), base.clone()],
            2,
            "no database name",
            vec![],
        ),
        (
            vec![
                "share".into(),
                "--hub".into(),
                format!("{base}/"),
                "--db".into(),
                dir.db("s.db"),
            ],
            2,
            "no database name",
            vec![dir.db("s.db")],
        ),
        (
            vec!["shares".into(), "--hub".into(), missing_hub.clone()],
            2,
            "does not exist",
            vec![missing_hub.clone()],
        ),
        (
            vec![
                "replicate".into(),
                format!("peer+{missing_hub}#notes"),
                dir.db("t2.db"),
            ],
            2,
            "does not exist",
            vec![dir.db("t2.db"), missing_hub.clone()],
        ),
    ];
    for (args, code, needle, absent) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        for a in absent {
            let there = if a.starts_with("http") {
                couch_exists(&a)
            } else {
                exists(&a)
            };
            assert!(!there, "{args:?} left {a} behind");
        }
    }
    assert_eq!(read_copy_of(&x)["info"]["doc_count"], 2);
}

#[test]
fn a_file_this_user_may_not_open_says_permission_denied_once() {
    let dir = Dir::new();
    let locked = dir.db("locked.db");
    seed(&locked, 1);
    let mut cmd = peerpouch(&["docs", &locked, "info"]);
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // root may open anything: run as nobody, who may not open a root-owned 0600 file.
        use std::os::unix::fs::PermissionsExt;
        use std::os::unix::process::CommandExt;
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o600)).unwrap();
        cmd.uid(65534).gid(65534);
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
    }
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("permission denied"), "{err}");
    assert_eq!(
        err.matches(locked.as_str()).count(),
        1,
        "the path once: {err}"
    );
}

#[test]
fn ctrl_c_stops_a_share_promptly_when_the_hub_hangs() {
    let dir = Dir::new();
    let relay = Relay::start(&hub_base());
    let hub_db = unique("exit-hub");
    let (a, d) = (dir.db("a.db"), dir.db("d.db"));
    seed(&a, 10);
    let name = unique("hang");
    let mut sharer = Running::start(
        &[
            "share",
            "--hub",
            &relay.url(&hub_db),
            "--db",
            &a,
            "--name",
            &name,
            "--json",
        ],
        &[],
    );
    sharer.expect("the shared event", |v| v["event"] == "shared");
    // A peer writes into the share (reaching the hub directly), then the hub stops answering.
    ok_json(&["docs", &d, "put", r#"{"_id": "pushed"}"#], None);
    let peer = format!("peer+{}/{hub_db}#{name}", hub_base());
    ok_json(&["replicate", &d, &peer, "--json"], None);
    relay.hang();

    sharer.signal(libc::SIGINT);
    let (status, took, err) = sharer.wait_exit(EXIT_DEADLINE);
    assert_eq!(
        status.code(),
        Some(1),
        "the unshare could not be done: {err}"
    );
    assert!(err.contains("could not unshare"), "{err}");
    assert!(err.contains("expires"), "{err}");
    eprintln!("share stopped {took:?} after Ctrl-C with the hub hung");
    assert_eq!(read_copy_of(&a)["info"]["doc_count"], 11);
}

#[test]
fn a_second_ctrl_c_ends_the_process_at_once() {
    let dir = Dir::new();
    let relay = Relay::start(&hub_base());
    let a = dir.db("a.db");
    seed(&a, 5);
    // The stop would wait for the hub for a long time: only the second Ctrl-C ends it soon.
    let mut sharer = Running::start(
        &[
            "share",
            "--hub",
            &relay.url(&unique("exit-hub")),
            "--db",
            &a,
            "--json",
        ],
        &[("PEERPOUCH_STOP_TIMEOUT", "300")],
    );
    sharer.expect("the shared event", |v| v["event"] == "shared");
    relay.hang();
    sharer.signal(libc::SIGINT);
    sharer.expect_err("stopping: unsharing");
    sharer.signal(libc::SIGINT);
    let (status, _, err) = sharer.wait_exit(EXIT_DEADLINE);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(
        !err.contains("could not unshare"),
        "it did not wait for the hub: {err}"
    );
    assert_eq!(read_copy_of(&a)["info"]["doc_count"], 5);
}

#[test]
fn ctrl_c_while_opening_a_share_whose_sharer_is_gone_is_prompt() {
    let dir = Dir::new();
    let relay = Relay::start(&hub_base());
    let hub_db = unique("exit-hub");
    let (a, c) = (dir.db("a.db"), dir.db("c.db"));
    seed(&a, 5);
    let name = unique("frozen");
    let sharer = Running::start(
        &[
            "share",
            "--hub",
            &format!("{}/{hub_db}", hub_base()),
            "--db",
            &a,
            "--name",
            &name,
            "--json",
        ],
        &[],
    );
    sharer.expect("the shared event", |v| v["event"] == "shared");
    // The sharer freezes: its share stays listed, but nobody answers the offer.
    sharer.signal(libc::SIGSTOP);
    let mut joiner = Running::start(
        &[
            "replicate",
            &format!("peer+{}#{name}", relay.url(&hub_db)),
            &c,
            "--json",
        ],
        &[],
    );
    // Its offer went out through the relay: it is now waiting for an answer.
    relay.wait_sent("com.stemstorage.peerpouch.signal");
    joiner.signal(libc::SIGINT);
    let (status, _, err) = joiner.wait_exit(EXIT_DEADLINE);
    assert_eq!(status.code(), Some(130), "{err}");
    assert!(err.contains("interrupted"), "{err}");
    assert!(!exists(&c), "no target file before the source was open");
    sharer.signal(libc::SIGCONT);
}
