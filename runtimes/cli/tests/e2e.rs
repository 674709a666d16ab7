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
    live.expect("10 docs written and checkpointed on both sides", |v| {
        v["docs_written"] == 10 && v["checkpointed_seq"] == v["last_seq"]
    });

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
    let restarted = live.expect("the second run", |v| v["event"] == "started");
    assert_ne!(
        restarted["since"], 0,
        "resumed from the checkpoint: {restarted}"
    );
    live.expect("the late doc", |v| v["docs_written"] == 11);

    let (ok, rest) = live.interrupt();
    assert!(ok, "a live replication ends cleanly on Ctrl-C");
    let summary = rest.last().unwrap();
    assert_eq!(summary["event"], "completed");
    assert_eq!(summary["docs_written"], 11, "resumed, not started over");
    // 10 changes in the first run, only the new one in the second (not all 11 again).
    assert_eq!(summary["changes_read"], 11, "{summary}");
    assert_eq!(ok_json(&["docs", &c, "get", "late"], None)[0]["v"], 8);
    assert_eq!(doc_count(&c), 11);
}

/// The `completed` summary of a one-shot `replicate --json`.
fn pull(source: &str, target: &str) -> Value {
    let out = ok_json(&["replicate", source, target, "--json"], None);
    let last = out.last().unwrap().clone();
    assert_eq!(last["event"], "completed", "{out:?}");
    last
}

fn db_uuid(path: &str) -> String {
    let info = ok_json(&["docs", path, "info"], None).remove(0);
    info["db_uuid"]
        .as_str()
        .unwrap_or_else(|| panic!("no db_uuid in {info}"))
        .to_string()
}

#[test]
fn a_restarted_sharer_is_resumed_from_its_checkpoint() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let (a, copy) = (dir.db("a.db"), dir.db("copy.db"));
    seed(&a, 300);
    let uuid = db_uuid(&a);
    assert_eq!(uuid.len(), 32, "{uuid}");
    let name = unique("restart");
    let sharer = share(&hub, &a, &name, &[], None);
    let peer = format!("peer+{hub}#{name}");
    let first = pull(&peer, &copy);
    assert_eq!(
        (
            first["changes_read"].as_u64(),
            first["docs_written"].as_u64()
        ),
        (Some(300), Some(300))
    );
    assert_ne!(db_uuid(&copy), uuid, "another file is another database");

    // The sharer stops (Ctrl-C), the file gets three new documents, and it is shared again: a
    // new share id, the same file. The pull reads only the new changes.
    let (ok, _) = sharer.interrupt();
    assert!(ok);
    for i in 0..3 {
        ok_json(
            &[
                "docs",
                &a,
                "put",
                &json!({"_id": format!("new-{i}")}).to_string(),
            ],
            None,
        );
    }
    let sharer = share(&hub, &a, &name, &[], None);
    let second = pull(&peer, &copy);
    assert_eq!(
        second["changes_read"], 3,
        "resumed from the checkpoint: {second}"
    );
    assert_eq!(second["docs_written"], 3);
    assert_eq!(doc_count(&copy), 303);

    // Killed (SIGKILL: its share document stays behind on the hub), two more documents, and
    // shared under another name: the same file under any name is the same database.
    drop(sharer);
    for i in 3..5 {
        ok_json(
            &[
                "docs",
                &a,
                "put",
                &json!({"_id": format!("new-{i}")}).to_string(),
            ],
            None,
        );
    }
    assert_eq!(db_uuid(&a), uuid, "the file keeps its identity");
    let other = unique("renamed");
    let sharer = share(&hub, &a, &other, &[], None);
    let third = pull(&format!("peer+{hub}#{other}"), &copy);
    assert_eq!(third["changes_read"], 2, "{third}");
    assert_eq!(third["docs_written"], 2);
    assert_eq!(doc_count(&copy), 305);
    let (ok, _) = sharer.interrupt();
    assert!(ok);
    assert_eq!(all_docs(&a)["rows"], all_docs(&copy)["rows"]);
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
