//! End to end on real parts: `peerpouch` processes (one `share`, others `replicate`, `shares`,
//! `docs`) on SQLite files, meeting on the pouchdb-server test hub started by `.ci/test`, linked
//! by WebRTC data channels over 127.0.0.1 UDP.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver};
use std::time::Duration;

use serde_json::{json, Value};

const BIN: &str = env!("CARGO_BIN_EXE_peerpouch");
/// Deadline for one expected line of output (a failure, not a synchronisation).
const LINE_DEADLINE: Duration = Duration::from_secs(60);

fn hub_base() -> String {
    std::env::var("PEERPOUCH_TEST_HUB")
        .unwrap_or_else(|_| {
            panic!(
                "PEERPOUCH_TEST_HUB is not set: run the tests through `.ci/test` (which starts \
                 the pouchdb-server test hub)"
            )
        })
        .trim_end_matches('/')
        .to_string()
}

fn unique(prefix: &str) -> String {
    let mut b = [0u8; 6];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .unwrap();
    format!(
        "{prefix}-{}",
        b.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// Starts `peerpouch args`, gives it `stdin` (then end of input).
fn spawn(args: &[&str], stdin: Option<&str>, stderr: Stdio) -> Child {
    let mut child = Command::new(BIN)
        .args(args)
        // Tests send traffic to loopback only, whatever the product's default (every interface).
        .env("PEERPOUCH_BIND", "127.0.0.1:0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).unwrap();
    }
    child
}

fn run(args: &[&str], stdin: Option<&str>) -> Output {
    spawn(args, stdin, Stdio::piped())
        .wait_with_output()
        .unwrap()
}

fn ok_json(args: &[&str], stdin: Option<&str>) -> Vec<Value> {
    let out = run(args, stdin);
    assert!(
        out.status.success(),
        "peerpouch {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

/// A running `peerpouch` whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: Receiver<String>,
}

impl Running {
    fn start(args: &[&str], stdin: Option<&str>) -> Running {
        let mut child = spawn(args, stdin, Stdio::inherit());
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Running { child, lines }
    }

    /// The next JSON line for which `pred` holds (earlier ones are skipped).
    fn expect(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let line = self
                .lines
                .recv_timeout(LINE_DEADLINE)
                .unwrap_or_else(|e| panic!("no {what} within {LINE_DEADLINE:?}: {e}"));
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if pred(&v) {
                return v;
            }
        }
    }

    /// Sends SIGINT (Ctrl-C) and waits for the exit; returns whether it succeeded.
    fn interrupt(mut self) -> (bool, Vec<Value>) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let status = self.child.wait().unwrap();
        let rest = self
            .lines
            .iter()
            .map(|l| serde_json::from_str(&l).unwrap())
            .collect();
        (status.success(), rest)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Dir(PathBuf);

impl Dir {
    fn new() -> Dir {
        let p = std::env::temp_dir().join(unique("peerpouch-e2e"));
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
    fn db(&self, name: &str) -> String {
        self.0.join(name).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn doc_count(path: &str) -> u64 {
    ok_json(&["docs", path, "info"], None)[0]["doc_count"]
        .as_u64()
        .unwrap()
}

/// 1000 docs; every tenth carries an attachment of its own bytes.
fn seed(path: &str, n: usize) {
    let docs: Vec<Value> = (0..n)
        .map(|i| {
            let mut d = json!({"_id": format!("doc-{i:04}"), "i": i, "text": "x".repeat(200)});
            if i % 10 == 0 {
                let bytes: Vec<u8> = (0..1000).map(|j| ((i * 7 + j) % 251) as u8).collect();
                d["_attachments"] = json!({"blob.bin": {
                    "content_type": "application/octet-stream",
                    "data": base64(&bytes)}});
            }
            d
        })
        .collect();
    let r = ok_json(
        &["docs", path, "bulk"],
        Some(&serde_json::to_string(&docs).unwrap()),
    );
    assert_eq!(r[0]["written"], n);
}

fn base64(b: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(b)
}

fn share(hub: &str, db: &str, name: &str, extra: &[&str], stdin: Option<&str>) -> Running {
    let mut args = vec!["share", "--hub", hub, "--db", db, "--name", name, "--json"];
    args.extend_from_slice(extra);
    let r = Running::start(&args, stdin);
    r.expect("the shared event", |v| v["event"] == "shared");
    r
}

fn all_docs(path: &str) -> Value {
    ok_json(&["docs", path, "all"], None).remove(0)
}

#[test]
fn two_processes_replicate_docs_with_attachments_both_ways() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let (a, b) = (dir.db("a.db"), dir.db("b.db"));
    seed(&a, 1000);
    let name = unique("notes");
    let sharer = share(&hub, &a, &name, &[], None);
    let peer = format!("peer+{hub}#{name}");

    let out = ok_json(&["replicate", &peer, &b, "--json"], None);
    let last = out.last().unwrap();
    assert_eq!(last["event"], "completed");
    assert_eq!(last["docs_written"], 1000);
    sharer.expect("the peer's arrival", |v| v["event"] == "peer_connected");
    assert_eq!(doc_count(&b), 1000);
    let got = ok_json(&["docs", &b, "get", "doc-0420", "--attachments"], None).remove(0);
    let want: Vec<u8> = (0..1000).map(|j| ((420 * 7 + j) % 251) as u8).collect();
    assert_eq!(got["_attachments"]["blob.bin"]["data"], base64(&want));

    // Edit one, add one, push back through the share.
    let mut d = ok_json(&["docs", &b, "get", "doc-0001"], None).remove(0);
    d["text"] = json!("edited on b");
    ok_json(&["docs", &b, "put", &d.to_string()], None);
    ok_json(&["docs", &b, "put", r#"{"_id": "from-b"}"#], None);
    let out = ok_json(&["replicate", &b, &peer, "--json"], None);
    assert_eq!(out.last().unwrap()["docs_written"], 2);

    let (ok, rest) = sharer.interrupt();
    assert!(ok, "the sharer exits cleanly on Ctrl-C");
    assert!(rest.iter().any(|v| v["event"] == "unshared"));
    // The sharer's file now holds b's edits; both files list the same documents and revs.
    assert_eq!(
        ok_json(&["docs", &a, "get", "doc-0001"], None)[0]["text"],
        "edited on b"
    );
    assert_eq!(all_docs(&a)["rows"], all_docs(&b)["rows"]);
}

#[test]
fn live_replication_picks_up_a_new_doc_and_stops_on_ctrl_c() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let (a, c, d) = (dir.db("a.db"), dir.db("c.db"), dir.db("d.db"));
    seed(&a, 50);
    let name = unique("live");
    let _sharer = share(&hub, &a, &name, &[], None);
    let peer = format!("peer+{hub}#{name}");
    let live = Running::start(&["replicate", &peer, &c, "--live", "--json"], None);
    live.expect("50 docs written", |v| v["docs_written"] == 50);

    // A third process writes into the share (the sharer holds its file); the live pull sees it.
    ok_json(&["docs", &d, "put", r#"{"_id": "late", "v": 7}"#], None);
    ok_json(&["replicate", &d, &peer, "--json"], None);
    live.expect("the late doc", |v| v["docs_written"] == 51);

    let (ok, rest) = live.interrupt();
    assert!(ok, "a live replication ends cleanly on Ctrl-C");
    let summary = rest.last().unwrap();
    assert_eq!(summary["event"], "completed");
    assert_eq!(summary["cancelled"], true);
    assert_eq!(ok_json(&["docs", &c, "get", "late"], None)[0]["v"], 7);
    assert_eq!(doc_count(&c), 51);
}

#[test]
fn live_replication_reconnects_when_the_sharer_comes_back() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let (a, c) = (dir.db("a.db"), dir.db("c.db"));
    seed(&a, 10);
    let name = unique("comeback");
    let sharer = share(&hub, &a, &name, &[], None);
    let peer = format!("peer+{hub}#{name}");
    let live = Running::start(&["replicate", &peer, &c, "--live", "--json"], None);
    live.expect("10 docs written", |v| v["docs_written"] == 10);

    // The sharer stops: the live pull loses its link and keeps trying to open the share again.
    let (ok, _) = sharer.interrupt();
    assert!(ok);
    let lost = live.expect("the link lost", |v| v["event"] == "link_lost");
    assert!(
        lost["reason"].as_str().unwrap().contains("closed"),
        "{lost}"
    );
    live.expect("a reconnect attempt", |v| v["event"] == "reconnecting");
    // Meanwhile the database changes, and the sharer comes back under the same name (a new
    // share id): the pull finds it, resumes from its checkpoint and picks up the change.
    ok_json(&["docs", &a, "put", r#"{"_id": "late", "v": 8}"#], None);
    let _sharer = share(&hub, &a, &name, &[], None);
    live.expect("the late doc", |v| v["docs_written"] == 11);

    let (ok, rest) = live.interrupt();
    assert!(ok, "a live replication ends cleanly on Ctrl-C");
    let summary = rest.last().unwrap();
    assert_eq!(summary["event"], "completed");
    assert_eq!(summary["docs_written"], 11, "resumed, not started over");
    assert_eq!(ok_json(&["docs", &c, "get", "late"], None)[0]["v"], 8);
    assert_eq!(doc_count(&c), 11);
}

#[test]
fn a_refused_peer_gets_nothing() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let (a, b) = (dir.db("a.db"), dir.db("b.db"));
    seed(&a, 20);
    let name = unique("guarded");
    // The sharer answers "n" to the first question on its terminal.
    let _sharer = share(&hub, &a, &name, &["--ask"], Some("n\n"));
    let out = run(&["replicate", &format!("peer+{hub}#{name}"), &b], None);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("refused"), "stderr: {err}");
    assert_eq!(doc_count(&b), 0);
}

#[test]
fn unshare_ends_the_share() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let a = dir.db("a.db");
    seed(&a, 3);
    let name = unique("brief");
    let sharer = share(&hub, &a, &name, &["--info", r#"{"owner":"e2e"}"#], None);
    let listed = ok_json(&["shares", "--hub", &hub, "--json"], None).remove(0);
    let mine: Vec<&Value> = listed
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["name"] == name.as_str())
        .collect();
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["info"], json!({"owner": "e2e"}));

    let (ok, _) = sharer.interrupt();
    assert!(ok);
    let listed = ok_json(&["shares", "--hub", &hub, "--json"], None).remove(0);
    assert!(!listed
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["name"] == name.as_str()));
    let out = run(
        &["replicate", &format!("peer+{hub}#{name}"), &dir.db("b.db")],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no share"));
}

#[test]
fn replicate_between_a_local_file_and_couchdb_over_http() {
    let dir = Dir::new();
    let (a, b) = (dir.db("a.db"), dir.db("b.db"));
    seed(&a, 300);
    let url = format!("{}/{}", hub_base(), unique("e2e-http"));
    let out = ok_json(&["replicate", &a, &url, "--json"], None);
    assert_eq!(out.last().unwrap()["docs_written"], 300);
    let out = ok_json(&["replicate", &url, &b, "--json"], None);
    assert_eq!(out.last().unwrap()["docs_written"], 300);
    assert_eq!(all_docs(&a)["rows"], all_docs(&b)["rows"]);
    let got = ok_json(&["docs", &b, "get", "doc-0290", "--attachments"], None).remove(0);
    let want: Vec<u8> = (0..1000).map(|j| ((290 * 7 + j) % 251) as u8).collect();
    assert_eq!(got["_attachments"]["blob.bin"]["data"], base64(&want));
}

#[test]
fn bad_input_is_a_clear_error_with_a_non_zero_exit() {
    let dir = Dir::new();
    let cases: Vec<(Vec<String>, i32, &str)> = vec![
        (
            vec![
                "shares".into(),
                "--hub".into(),
                "http://127.0.0.1:1/hub".into(),
            ],
            1,
            "cannot reach",
        ),
        (
            vec!["replicate".into(), "ftp://x/y".into(), dir.db("b.db")],
            2,
            "unsupported URL scheme",
        ),
        (
            vec![
                "replicate".into(),
                format!("peer+{}/nohub", hub_base()),
                dir.db("b.db"),
            ],
            2,
            "names no share",
        ),
        (
            vec!["docs".into(), dir.db("b.db"), "put".into(), "{nope".into()],
            2,
            "invalid JSON",
        ),
        (
            vec![
                "docs".into(),
                dir.db("b.db"),
                "get".into(),
                "missing".into(),
            ],
            1,
            "not_found",
        ),
        (vec!["frobnicate".into()], 2, "unrecognized subcommand"),
    ];
    for (args, code, needle) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run(&args, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // Not a peerpouch file: refused and left as it was.
    let foreign = dir.db("foreign.txt");
    std::fs::write(&foreign, b"just text").unwrap();
    let out = run(&["docs", &foreign, "info"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a peerpouch database"));
    assert_eq!(std::fs::read(Path::new(&foreign)).unwrap(), b"just text");
}

/// A `share --ask --json` whose terminal answers are written later, by the test.
fn asking_share(hub: &str, db: &str, name: &str) -> (Running, std::process::ChildStdin) {
    let args = [
        "share", "--hub", hub, "--db", db, "--name", name, "--ask", "--json",
    ];
    let mut child = Command::new(BIN)
        .args(args)
        .env("PEERPOUCH_BIND", "127.0.0.1:0")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let answers = child.stdin.take().unwrap();
    let out = child.stdout.take().unwrap();
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let r = Running { child, lines };
    r.expect("the shared event", |v| v["event"] == "shared");
    (r, answers)
}

#[test]
fn a_joiner_says_it_waits_for_the_sharer_to_accept_and_connects_when_it_does() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let (a, b) = (dir.db("a.db"), dir.db("b.db"));
    seed(&a, 20);
    let name = unique("asking");
    let (sharer, mut answers) = asking_share(&hub, &a, &name);
    let peer = format!("peer+{hub}#{name}");
    // An answer timeout far shorter than the person takes: the pending notice stops it.
    let joiner = Running::start(
        &["replicate", &peer, &b, "--json", "--answer-timeout", "1"],
        None,
    );
    let waiting = joiner.expect("the waiting line", |v| v["event"] == "awaiting_approval");
    assert_eq!(waiting["share"], name.as_str());
    assert_eq!(waiting["timeout_seconds"], 120);
    answers.write_all(b"y\n").unwrap();
    answers.flush().unwrap();
    let done = joiner.expect("the summary", |v| v["event"] == "completed");
    assert_eq!(done["docs_written"], 20);
    sharer.expect("the peer's arrival", |v| v["event"] == "peer_connected");
    assert_eq!(doc_count(&b), 20);

    // In text mode, the same wait is a line on stderr; a sharer that never answers ends it
    // with its own error after the approval timeout.
    let out = run(&["replicate", &peer, &b, "--approval-timeout", "2"], None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("waiting for the sharer to accept (up to 2 s)"),
        "{err}"
    );
    assert!(err.contains("not accepted in time"), "{err}");
    assert!(!err.contains("ConnectTimeout"), "{err}");

    // Ctrl-C ends the wait at once, however long the approval timeout.
    let joiner = Running::start(
        &[
            "replicate",
            &peer,
            &b,
            "--json",
            "--approval-timeout",
            "600",
        ],
        None,
    );
    joiner.expect("the waiting line", |v| v["event"] == "awaiting_approval");
    let asked = std::time::Instant::now();
    let (ok, _) = joiner.interrupt();
    assert!(!ok, "nothing was replicated");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    drop(answers);
}

#[test]
fn a_killed_sharer_is_not_answering_within_seconds_and_leaves_the_list_within_its_ttl() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let (a, b) = (dir.db("a.db"), dir.db("b.db"));
    seed(&a, 5);
    let name = unique("doomed");
    let mut sharer = share(&hub, &a, &name, &[], None);
    let listed = ok_json(&["shares", "--hub", &hub, "--json"], None).remove(0);
    let id = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    let watcher = Running::start(&["shares", "--hub", &hub, "--watch", "--json"], None);
    watcher.expect("the share listed", |v| v["share"]["id"] == id.as_str());
    // kill -9: no unshare, the share document stays on the hub.
    sharer.child.kill().unwrap();
    sharer.child.wait().unwrap();
    let killed = std::time::Instant::now();

    let out = run(&["replicate", &format!("peer+{hub}#{name}"), &b], None);
    let took = killed.elapsed();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the sharer is not answering (its share may be stale)"),
        "{err}"
    );
    assert!(
        took < Duration::from_secs(20),
        "took {took:?}, not the 30 s connect timeout"
    );

    // Watchers see it go once its TTL (30 s since its last refresh) passes.
    // (The removed share is named by its id, alone or in a share object.)
    watcher.expect("the share's removal", |v| {
        v["event"] == "removed" && (v["share"] == id.as_str() || v["share"]["id"] == id.as_str())
    });
    let gone = killed.elapsed();
    assert!(gone <= Duration::from_secs(40), "removed after {gone:?}");
    let listed = ok_json(&["shares", "--hub", &hub, "--json"], None).remove(0);
    assert!(!listed
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["id"] == id.as_str()));
}

#[test]
fn live_replication_waits_for_a_share_that_does_not_exist_yet() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let (a, c) = (dir.db("a.db"), dir.db("c.db"));
    seed(&a, 12);
    let name = unique("later");
    let peer = format!("peer+{hub}#{name}");
    let live = Running::start(&["replicate", &peer, &c, "--live", "--json"], None);
    let waiting = live.expect("the waiting line", |v| v["event"] == "waiting_for_share");
    assert_eq!(waiting["share"], name.as_str());
    // The share appears: the pull opens it and catches up.
    let _sharer = share(&hub, &a, &name, &[], None);
    live.expect("12 docs written", |v| v["docs_written"] == 12);
    let (ok, rest) = live.interrupt();
    assert!(ok, "a live replication ends cleanly on Ctrl-C");
    assert_eq!(rest.last().unwrap()["event"], "completed");
    assert_eq!(doc_count(&c), 12);

    // Without --live a missing share is still an error at once.
    let out = run(&["replicate", &peer.replace("later", "never"), &c], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no share"));
}

#[test]
fn ctrl_c_ends_a_live_reconnect_that_waits_for_approval() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let (a, c) = (dir.db("a.db"), dir.db("c.db"));
    seed(&a, 5);
    let name = unique("asks-again");
    let (sharer, mut answers) = asking_share(&hub, &a, &name);
    let peer = format!("peer+{hub}#{name}");
    let live = Running::start(&["replicate", &peer, &c, "--live", "--json"], None);
    live.expect("the waiting line", |v| v["event"] == "awaiting_approval");
    answers.write_all(b"y\n").unwrap();
    answers.flush().unwrap();
    live.expect("5 docs written", |v| v["docs_written"] == 5);

    // The sharer restarts and asks again; nobody answers this time.
    let (ok, _) = sharer.interrupt();
    assert!(ok);
    let (_sharer, answers) = asking_share(&hub, &a, &name);
    live.expect("the link lost", |v| v["event"] == "link_lost");
    live.expect("the second waiting line", |v| {
        v["event"] == "awaiting_approval"
    });
    let asked = std::time::Instant::now();
    let (ok, rest) = live.interrupt();
    assert!(ok, "a live replication ends cleanly on Ctrl-C");
    assert!(
        asked.elapsed() < Duration::from_secs(10),
        "{:?}",
        asked.elapsed()
    );
    let summary = rest.last().unwrap();
    assert_eq!(summary["event"], "completed");
    assert_eq!(summary["cancelled"], true);
    assert_eq!(summary["docs_written"], 5);
    drop(answers);
}
