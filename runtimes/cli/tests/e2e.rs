//! End to end on real parts: `peerpouch` processes (one `share`, others `replicate`, `shares`,
//! `docs`) on SQLite files, meeting on the pouchdb-server test hub started by `.ci/test`, linked
//! by WebRTC data channels over 127.0.0.1 UDP.

use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use serde_json::{json, Value};

mod common;
use common::*;

/// Starts `peerpouch args`, gives it `stdin` (then end of input).
fn spawn(args: &[&str], stdin: Option<&str>, stderr: Stdio) -> Child {
    let mut child = peerpouch(args)
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

/// A running `peerpouch` whose stdout lines arrive on a channel.
struct Running {
    child: Child,
    lines: Receiver<String>,
}

impl Running {
    fn start(args: &[&str], stdin: Option<&str>) -> Running {
        let mut child = spawn(args, stdin, Stdio::inherit());
        let lines = lines(child.stdout.take().unwrap());
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

impl Running {
    /// Sends SIGINT (Ctrl-C) to a command that prints text, waits for the exit; returns whether
    /// it succeeded, and the rest of its lines.
    fn interrupt_text(mut self) -> (bool, Vec<String>) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGINT);
        }
        let status = self.child.wait().unwrap();
        (status.success(), self.lines.iter().collect())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The documents in a database file; a file that is not there holds none.
fn doc_count(path: &str) -> u64 {
    if !Path::new(path).exists() {
        return 0;
    }
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
    ok_json(
        &["docs", &dir.db("made.db"), "put", r#"{"_id": "x"}"#],
        None,
    );
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
            2,
            "does not exist",
        ),
        (
            vec![
                "docs".into(),
                dir.db("made.db"),
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
    // Reading a file that is not there created none.
    assert!(!Path::new(&dir.db("b.db")).exists());
    // Not a peerpouch file: refused and left as it was.
    let foreign = dir.db("foreign.txt");
    std::fs::write(&foreign, b"just text").unwrap();
    let out = run(&["docs", &foreign, "info"], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a peerpouch database"));
    assert_eq!(std::fs::read(Path::new(&foreign)).unwrap(), b"just text");
}

/// Reads `running`'s stdout lines up to the first for which `pred` holds; returns them all.
fn lines_until(running: &Running, what: &str, pred: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        let line = running
            .lines
            .recv_timeout(LINE_DEADLINE)
            .unwrap_or_else(|e| panic!("no {what} within {LINE_DEADLINE:?} after {seen:?}: {e}"));
        let hit = pred(&line);
        seen.push(line);
        if hit {
            return seen;
        }
    }
}

#[test]
fn shares_watch_lists_each_share_once_and_names_the_one_that_went() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let (a, b) = (dir.db("a.db"), dir.db("b.db"));
    seed(&a, 1);
    seed(&b, 1);
    let name = unique("watched");
    let sharer = share(&hub, &a, &name, &[], None);
    let watch = Running::start(&["shares", "--hub", &hub, "--watch"], None);
    let listed = lines_until(&watch, "the listing", |l| l.contains(&name));
    assert_eq!(listed.len(), 1, "{listed:?}");
    let id = listed[0].split_whitespace().next().unwrap().to_string();

    // Another share comes: one "+" line for it, and none for the one already listed.
    let other = unique("second");
    let _second = share(&hub, &b, &other, &[], None);
    let added = lines_until(&watch, "the new share", |l| l.contains(&other));
    assert!(
        added.iter().all(|l| !l.contains(&name)),
        "the listed share came again: {added:?}"
    );
    assert!(added.last().unwrap().starts_with("+ "), "{added:?}");

    // The first goes: the "-" line says which share it was, by id and by name.
    let (ok, _) = sharer.interrupt();
    assert!(ok);
    let removed = lines_until(&watch, "the removal", |l| l.starts_with("- "));
    let line = removed.last().unwrap();
    assert!(line.contains(&id) && line.contains(&name), "{line}");
}

#[test]
fn library_warnings_stay_out_of_the_output_without_v() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let (a, c) = (dir.db("a.db"), dir.db("c.db"));
    seed(&a, 5);
    let name = unique("quiet");
    let sharer = share(&hub, &a, &name, &[], None);
    let peer = format!("peer+{hub}#{name}");
    // The live pull's stderr goes to a file, as when a person redirects it.
    let log = dir.0.join("stderr.txt");
    let mut child = peerpouch(&["replicate", &peer, &c, "--live", "--json"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let lines = lines(child.stdout.take().unwrap());
    let live = Running { child, lines };
    live.expect("5 docs written", |v| v["docs_written"] == 5);
    // The sharer goes: the replication loses its endpoint, which the library logs as a warning.
    let (ok, _) = sharer.interrupt();
    assert!(ok);
    live.expect("the link lost", |v| v["event"] == "link_lost");
    live.expect("a reconnect attempt", |v| v["event"] == "reconnecting");
    let (ok, _) = live.interrupt();
    assert!(ok);
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(
        !err.contains("WARN") && !err.contains("peerpouch::"),
        "{err}"
    );
    assert!(!err.contains('\x1b'), "colour codes in a file: {err:?}");
}

#[test]
fn progress_on_a_terminal_shows_the_total_rate_and_eta() {
    let dir = Dir::new();
    let (a, b) = (dir.db("a.db"), dir.db("b.db"));
    let docs: String = (0..3000)
        .map(|i| {
            format!(
                "{{\"_id\": \"n{i:05}\", \"text\": \"{}\"}}\n",
                "x".repeat(100)
            )
        })
        .collect();
    ok_json(&["docs", &a, "bulk"], Some(&docs));
    // script(1) gives the command a terminal (wide, so nothing is cut) and copies what it draws.
    let out = Command::new("script")
        .args([
            "-qefc",
            &format!("stty cols 200; exec {BIN} replicate {a} {b}"),
            "/dev/null",
        ])
        .env("PEERPOUCH_BIND", "127.0.0.1:0")
        .stdin(Stdio::null())
        .output()
        .expect("script(1) from util-linux");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("/3,000 changes"), "no total: {screen}");
    assert!(
        screen.contains("docs/s") && screen.contains("ETA "),
        "no rate or ETA: {screen}"
    );
    assert!(
        screen.contains("3000 docs written (3000 changes read, 0 failed) in "),
        "{screen}"
    );
    assert!(!screen.contains("in 0.00 s"), "{screen}");
    assert_eq!(doc_count(&b), 3000);
}

/// The `peerpouch …` lines of one section of the README, in order, without their comments.
fn readme_commands(section: &str) -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../README.md"))
            .unwrap();
    let start = readme
        .find(section)
        .unwrap_or_else(|| panic!("the README has no section {section:?}"));
    let body = &readme[start + section.len()..];
    // Up to the next heading of any level (a subsection is another topic).
    let end = ["\n## ", "\n### "]
        .iter()
        .filter_map(|h| body.find(h))
        .min()
        .unwrap_or(body.len());
    let body = &body[..end];
    let mut in_code = false;
    let mut out = Vec::new();
    for line in body.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if in_code && line.starts_with("peerpouch ") {
            // A comment starts at a '#' after whitespace (the '#' of a share URL has none).
            let cmd = match line.find("  #").or_else(|| line.find(" # ")) {
                Some(i) => &line[..i],
                None => line,
            };
            out.push(cmd.trim_end().to_string());
        }
    }
    out
}

/// Runs one README line through sh, with `peerpouch` on the PATH, in `dir`.
fn readme_sh(dir: &Dir, line: &str, stdin: Stdio) -> Command {
    let bin_dir = Path::new(BIN).parent().unwrap();
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("exec {line}"))
        .current_dir(&dir.0)
        .env("PATH", path)
        .env("PEERPOUCH_BIND", "127.0.0.1:0")
        .env("XDG_CONFIG_HOME", config_home())
        .env_remove("PEERPOUCH_IDENTITY")
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

#[test]
fn the_readme_quick_start_works_as_written() {
    let dir = Dir::new();
    // The README's hub is the pinned test hub on its default port; here, the one `.ci/test`
    // started, in a database of this test's own.
    let hub = format!("{}/{}", hub_base(), unique("readme-hub"));
    let lines: Vec<String> = readme_commands("## Quick start")
        .into_iter()
        .map(|l| l.replace("http://127.0.0.1:5984/hub", &hub))
        .collect();
    assert_eq!(
        lines.len(),
        7,
        "the quick start changed: update this test with it: {lines:?}"
    );
    let run_line = |line: &str| {
        let out = readme_sh(&dir, line, Stdio::null()).output().unwrap();
        assert!(
            out.status.success(),
            "`{line}` failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };

    // Terminal 1, Alice.
    run_line(&lines[0]);
    assert!(lines[1].starts_with("peerpouch share ") && lines[1].contains("--ask"));
    let mut share = readme_sh(&dir, &lines[1], Stdio::piped()).spawn().unwrap();
    let mut alice_says = share.stdin.take().unwrap();
    let alice = common::lines(share.stdout.take().unwrap());
    let shared = alice
        .recv_timeout(LINE_DEADLINE)
        .expect("the share's first line");
    assert!(
        shared.starts_with("sharing ") && shared.contains("groceries"),
        "{shared}"
    );
    let share = Running {
        child: share,
        lines: alice,
    };

    // Terminal 2, Bob. Alice answers y to each peer that asks (one per connection).
    assert!(run_line(&lines[2]).contains("groceries"));
    for _ in 0..3 {
        alice_says.write_all(b"y\n").unwrap();
    }
    alice_says.flush().unwrap();
    let pulled = run_line(&lines[3]);
    assert!(pulled.contains("1 docs written"), "{pulled}");
    run_line(&lines[4]);
    let pushed = run_line(&lines[5]);
    assert!(pushed.contains("1 docs written"), "{pushed}");
    // The live pull: up, then Ctrl-C ends it cleanly with its summary.
    assert!(lines[6].contains("--live"));
    let mut live = readme_sh(&dir, &lines[6], Stdio::null()).spawn().unwrap();
    let err_lines = common::lines(live.stderr.take().unwrap());
    // "waiting for the sharer to accept" while Alice decides, then the link, then caught up.
    let mut said = Vec::new();
    loop {
        let l = err_lines
            .recv_timeout(LINE_DEADLINE)
            .unwrap_or_else(|e| panic!("no 'caught up' line after {said:?}: {e}"));
        if l.starts_with("caught up (") {
            break;
        }
        said.push(l);
    }
    assert!(
        said.iter()
            .any(|l| l.starts_with("link ") && l.contains("sharer sha-256 ")),
        "{said:?}"
    );
    // SAFETY: kill(2) on our own child's pid.
    unsafe {
        libc::kill(live.id() as i32, libc::SIGINT);
    }
    let out = live.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("replicated "));

    // Both hold both documents; Alice's arrived by the push.
    let (ok, _) = share.interrupt_text();
    assert!(ok, "Ctrl-C ends the share cleanly");
    for db in ["alice.db", "bob.db"] {
        let ids: Vec<String> = all_docs(&dir.db(db))["rows"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["id"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(ids, ["todo-1", "todo-2"], "{db}");
    }
}

/// A peer's fingerprint, as `peerpouch id` prints it (making the identity on first use).
fn fingerprint_of(identity: &str) -> String {
    let v = ok_json(&["id", "--identity", identity, "--json"], None).remove(0);
    assert_eq!(v["identity"], identity);
    v["fingerprint"].as_str().unwrap().to_string()
}

/// The sharer's next decision about a peer: asked on the terminal, or let in by the allow list.
fn next_decision(sharer: &Running) -> Value {
    sharer.expect("a decision about a peer", |v| {
        v["event"] == "peer_asked" || v["event"] == "peer_allowed"
    })
}

/// Pulls the share with the identity file `identity`; the `link_ready` line and the exit code.
fn pull_as(hub: &str, name: &str, identity: &str, target: &str) -> (Option<i32>, Vec<Value>) {
    let out = run(
        &[
            "replicate",
            &format!("peer+{hub}#{name}"),
            target,
            "--identity",
            identity,
            "--json",
        ],
        None,
    );
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.code(), lines)
}

#[test]
fn a_sharer_remembers_a_peer_it_always_allows() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let a = dir.db("a.db");
    seed(&a, 5);
    let name = unique("remembered");
    let (bob, carol) = (dir.db("bob.identity"), dir.db("carol.identity"));
    let bob_fp = fingerprint_of(&bob);
    assert_eq!(
        fingerprint_of(&bob),
        bob_fp,
        "the same file, the same fingerprint"
    );
    assert_ne!(fingerprint_of(&carol), bob_fp);
    let allow_file = config_home().join("peerpouch/allow").join(&name);

    // First run of the sharer: Bob is asked about, and "always" allowed.
    let sharer = Running::start(
        &[
            "share", "--hub", &hub, "--db", &a, "--name", &name, "--json", "--ask",
        ],
        Some("a\n"),
    );
    let shared = sharer.expect("the shared event", |v| v["event"] == "shared");
    let sharer_fp = shared["fingerprint"].as_str().unwrap().to_string();
    assert!(sharer_fp.starts_with("sha-256 "), "{shared}");
    // The share document publishes it: a listing shows who shares before anyone opens it.
    let listed = ok_json(&["shares", "--hub", &hub, "--json"], None).remove(0);
    let mine = listed
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name.as_str())
        .unwrap_or_else(|| panic!("{listed}"));
    assert_eq!(mine["fingerprint"], sharer_fp.as_str(), "{listed}");
    let (code, lines) = pull_as(&hub, &name, &bob, &dir.db("b1.db"));
    assert_eq!(code, Some(0), "{lines:?}");
    // The joiner names the sharer's certificate, the sharer the joiner's: the same on both sides.
    let link = lines.iter().find(|v| v["event"] == "link_ready").unwrap();
    assert_eq!(link["fingerprint"], sharer_fp.as_str());
    let asked = next_decision(&sharer);
    assert_eq!(asked["event"], "peer_asked", "{asked}");
    assert_eq!(asked["fingerprint"], bob_fp.as_str());
    let accepted = sharer.expect("the answer", |v| v["event"] == "peer_accepted");
    assert_eq!(accepted["always"], true);
    let connected = sharer.expect("the peer's link", |v| v["event"] == "peer_connected");
    assert_eq!(connected["fingerprint"], bob_fp.as_str());
    let remembered = std::fs::read_to_string(&allow_file).unwrap();
    assert!(remembered.contains(&bob_fp), "{remembered}");
    assert_eq!(doc_count(&dir.db("b1.db")), 5);
    let (ok, _) = sharer.interrupt();
    assert!(ok);

    // A later run of the sharer (a new share id, same name): Bob gets in without a question,
    // Carol is asked (and refused: "n").
    let sharer = share(&hub, &a, &name, &["--ask"], Some("n\n"));
    let (code, lines) = pull_as(&hub, &name, &bob, &dir.db("b2.db"));
    assert_eq!(code, Some(0), "{lines:?}");
    let decided = next_decision(&sharer);
    assert_eq!(
        decided["event"], "peer_allowed",
        "Bob was asked again: {decided}"
    );
    assert_eq!(decided["fingerprint"], bob_fp.as_str());
    assert_eq!(doc_count(&dir.db("b2.db")), 5);
    let (code, _) = pull_as(&hub, &name, &carol, &dir.db("c.db"));
    assert_eq!(code, Some(1));
    let decided = next_decision(&sharer);
    assert_eq!(decided["event"], "peer_asked", "{decided}");
    assert_ne!(decided["fingerprint"], bob_fp.as_str());
    assert_eq!(doc_count(&dir.db("c.db")), 0);
}

#[test]
fn allowed_fingerprints_get_in_without_a_question() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let a = dir.db("a.db");
    seed(&a, 3);
    let (bob, carol) = (dir.db("bob.identity"), dir.db("carol.identity"));
    let bob_fp = fingerprint_of(&bob);
    // As a person would paste it: lower case, no hash name.
    let pasted = bob_fp.trim_start_matches("sha-256 ").to_lowercase();

    // With --ask: Bob is let in, Carol is asked (no answer on the terminal: refused).
    let name = unique("allowed");
    let sharer = share(&hub, &a, &name, &["--ask", "--allow", &pasted], None);
    assert_eq!(pull_as(&hub, &name, &bob, &dir.db("b.db")).0, Some(0));
    let decided = next_decision(&sharer);
    assert_eq!(decided["event"], "peer_allowed", "{decided}");
    assert_eq!(decided["fingerprint"], bob_fp.as_str());
    assert_eq!(pull_as(&hub, &name, &carol, &dir.db("c.db")).0, Some(1));
    let decided = next_decision(&sharer);
    assert_eq!(decided["event"], "peer_asked", "{decided}");
    drop(sharer);

    // Without --ask, an allow file admits only its peers; nobody is asked.
    let list = dir.db("friends.allow");
    std::fs::write(&list, format!("# friends\n{bob_fp}  # bob\n")).unwrap();
    let name = unique("only");
    let sharer = share(&hub, &a, &name, &["--allow-file", &list], None);
    assert_eq!(pull_as(&hub, &name, &bob, &dir.db("b2.db")).0, Some(0));
    assert_eq!(next_decision(&sharer)["event"], "peer_allowed");
    let out = run(
        &[
            "replicate",
            &format!("peer+{hub}#{name}"),
            &dir.db("c2.db"),
            "--identity",
            &carol,
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not on the sharer's allow list"), "{err}");
    let refused = sharer.expect("the refusal", |v| v["event"] == "peer_refused");
    assert_ne!(refused["fingerprint"], bob_fp.as_str());
    assert_eq!(doc_count(&dir.db("c2.db")), 0);
}

#[test]
fn a_damaged_identity_or_allow_list_is_a_clear_error() {
    let dir = Dir::new();
    let bad = dir.db("bad.identity");
    std::fs::write(&bad, b"not a certificate").unwrap();
    std::fs::set_permissions(&bad, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let a = dir.db("a.db");
    let list = dir.db("bad.allow");
    std::fs::write(&list, "sha-256 00:11\n").unwrap();
    let missing = dir.db("missing");
    let open_list = dir.db("open.allow");
    std::fs::write(&open_list, "# anyone may add themselves here\n").unwrap();
    std::fs::set_permissions(
        &open_list,
        std::os::unix::fs::PermissionsExt::from_mode(0o666),
    )
    .unwrap();
    let cases: Vec<(Vec<&str>, i32, String)> = vec![
        (
            vec!["id", "--identity", &bad],
            1,
            format!("identity file {bad} is damaged"),
        ),
        (
            vec!["share", "--hub", &hub, "--db", &a, "--identity", &bad],
            1,
            format!("identity file {bad} is damaged"),
        ),
        (
            vec!["share", "--hub", &hub, "--db", &a, "--allow", "bob"],
            2,
            "--allow: \"bob\" is not a fingerprint".into(),
        ),
        (
            vec!["share", "--hub", &hub, "--db", &a, "--allow-file", &list],
            2,
            format!("{list}:1:"),
        ),
        (
            vec!["share", "--hub", &hub, "--db", &a, "--allow-file", &missing],
            2,
            "cannot read the allow file".into(),
        ),
        (
            vec![
                "share",
                "--hub",
                &hub,
                "--db",
                &a,
                "--ask",
                "--allow-file",
                &open_list,
            ],
            2,
            format!("the allow file {open_list} can be written by others (mode 666)"),
        ),
    ];
    for (args, code, needle) in cases {
        let out = run(&args, None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {err}");
        assert!(err.contains(&needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    assert_eq!(
        std::fs::read(&bad).unwrap(),
        b"not a certificate",
        "left untouched"
    );
}

/// A `share --ask --json` whose terminal answers are written later, by the test.
fn asking_share(hub: &str, db: &str, name: &str) -> (Running, std::process::ChildStdin) {
    let args = [
        "share", "--hub", hub, "--db", db, "--name", name, "--ask", "--json",
    ];
    let mut child = peerpouch(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let answers = child.stdin.take().unwrap();
    let lines = lines(child.stdout.take().unwrap());
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
    // The hub database exists (only `share` creates one; a joiner never does): someone shared
    // on it before.
    let (ok, _) = share(&hub, &a, &unique("earlier"), &[], None).interrupt();
    assert!(ok);
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

#[test]
fn a_pull_from_a_peer_reports_the_bytes_it_moved() {
    const SIZE: usize = 6 << 20;
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let (a, b, c) = (dir.db("a.db"), dir.db("b.db"), dir.db("c.db"));
    // Bytes that do not compress (the link compresses what it can).
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let blob: Vec<u8> = (0..SIZE)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let doc = json!({"_id": "big", "_attachments": {"blob.bin": {
        "content_type": "application/octet-stream", "data": base64(&blob)}}});
    ok_json(&["docs", &a, "put", "-"], Some(&doc.to_string()));
    let name = unique("bytes");
    let _sharer = share(&hub, &a, &name, &[], None);
    let peer = format!("peer+{hub}#{name}");
    let out = ok_json(&["replicate", &peer, &b, "--json"], None);
    let summary = out.last().unwrap();
    assert_eq!(summary["docs_written"], 1);
    let received = summary["bytes_received"].as_u64().unwrap();
    assert!(received >= SIZE as u64, "{summary}");
    assert!(received < 2 * SIZE as u64, "{summary}");
    assert!(summary["bytes_sent"].as_u64().unwrap() > 0, "{summary}");
    // Over 1 MiB, the attachment went in ranges, not inline.
    assert_eq!(summary["attachment_bytes"], SIZE, "{summary}");
    // In words too; a copy between two files makes no such claim.
    let out = run(&["replicate", &peer, &c], None);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(" MiB received, "), "{said}");
    assert!(
        said.contains("6.0 MiB of large attachments in ranges"),
        "{said}"
    );
    let out = run(&["replicate", &b, &dir.db("d.db")], None);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("received"));
}

/// The documents of the hub database at `hub` whose `type` is `kind`.
fn hub_docs_of_type(hub: &str, kind: &str) -> Vec<Value> {
    let mut client = peerpouch_couch::CouchClient::new(hub).unwrap();
    let all = peerpouch::Database::all_docs(
        &mut client,
        peerpouch::AllDocsRequest {
            include_docs: true,
            ..Default::default()
        },
    )
    .unwrap();
    all.rows
        .into_iter()
        .filter_map(|r| r.doc)
        .filter(|d| d["type"] == kind)
        .collect()
}

#[test]
fn a_crowd_of_live_followers_leaves_by_ctrl_c_and_kill_and_the_sharer_serves_the_rest() {
    const CROWD: usize = 12;
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let a = dir.db("a.db");
    seed(&a, 200);
    let name = unique("crowd");
    let sharer = share(&hub, &a, &name, &[], None);
    let peer = format!("peer+{hub}#{name}");
    let copies: Vec<String> = (0..CROWD).map(|i| dir.db(&format!("c{i}.db"))).collect();
    let followers: Vec<Running> = copies
        .iter()
        .map(|c| Running::start(&["replicate", &peer, c, "--live", "--json"], None))
        .collect();
    for f in &followers {
        f.expect("the 200 docs, checkpointed", |v| {
            v["docs_written"] == 200 && v["checkpointed_seq"] == v["last_seq"]
        });
    }
    for _ in 0..CROWD {
        sharer.expect("a follower's link", |v| v["event"] == "link_ready");
    }

    // A third leave by Ctrl-C, a third are killed, a third stay.
    let mut followers = followers.into_iter();
    let left = std::time::Instant::now();
    for f in followers.by_ref().take(CROWD / 3) {
        let (ok, rest) = f.interrupt();
        assert!(ok, "{rest:?}");
        assert_eq!(rest.last().unwrap()["event"], "completed");
    }
    for mut f in followers.by_ref().take(CROWD / 3) {
        f.child.kill().unwrap();
        f.child.wait().unwrap();
    }
    let staying: Vec<Running> = followers.collect();
    assert_eq!(staying.len(), CROWD - 2 * (CROWD / 3));
    // The sharer notices every one of them: a goodbye at once, the killed ones by its idle
    // timeout (10 s).
    for _ in 0..2 * (CROWD / 3) {
        sharer.expect("a follower gone", |v| v["event"] == "peer_closed");
    }
    let noticed = left.elapsed();
    assert!(
        noticed < Duration::from_secs(30),
        "the sharer took {noticed:?} to notice"
    );

    // It keeps serving the rest: a document pushed to the share by another peer reaches every
    // follower still there.
    let extra = dir.db("extra.db");
    ok_json(
        &["docs", &extra, "put", r#"{"_id": "after", "v": 9}"#],
        None,
    );
    let pushed = ok_json(&["replicate", &extra, &peer, "--json"], None);
    assert_eq!(pushed.last().unwrap()["docs_written"], 1, "{pushed:?}");
    for f in &staying {
        f.expect("the pushed doc", |v| v["docs_written"] == 201);
    }

    // Nothing of the crowd's signalling is left on the hub; the share is the sharer's only
    // document there.
    assert_eq!(
        hub_docs_of_type(&hub, "com.stemstorage.peerpouch.signal"),
        Vec::<Value>::new()
    );
    let shares = hub_docs_of_type(&hub, "com.stemstorage.peerpouch.share");
    assert_eq!(shares.len(), 1, "{shares:?}");
    assert_eq!(shares[0]["name"], name.as_str());
    for f in staying {
        let (ok, _) = f.interrupt();
        assert!(ok);
    }
    let (ok, _) = sharer.interrupt();
    assert!(ok);
    for c in copies.iter().skip(2 * (CROWD / 3)) {
        assert_eq!(ok_json(&["docs", c, "get", "after"], None)[0]["v"], 9);
    }
}

#[test]
fn a_write_by_another_process_into_a_shared_file_reaches_a_live_puller() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let (a, c) = (dir.db("a.db"), dir.db("c.db"));
    seed(&a, 20);
    let name = unique("shared-file");
    let _sharer = share(&hub, &a, &name, &[], None);
    let peer = format!("peer+{hub}#{name}");
    let live = Running::start(&["replicate", &peer, &c, "--live", "--json"], None);
    live.expect("20 docs written", |v| v["docs_written"] == 20);

    // Another process writes straight into the file the sharer has open: no lock stops it,
    // and the sharer's live changes feed sees the write without any write of its own.
    let started = std::time::Instant::now();
    ok_json(&["docs", &a, "put", r#"{"_id": "direct", "v": 9}"#], None);
    live.expect("the direct write", |v| v["docs_written"] == 21);
    eprintln!(
        "a write by another process reached the live puller in {:?} (put command included)",
        started.elapsed()
    );
    let (ok, _) = live.interrupt();
    assert!(ok);
    assert_eq!(ok_json(&["docs", &c, "get", "direct"], None)[0]["v"], 9);
}

#[test]
fn a_full_share_tells_one_more_peer_so() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("e2e-hub"));
    let a = dir.db("a.db");
    seed(&a, 3);
    let name = unique("full");
    let sharer = share(&hub, &a, &name, &["--max-links", "1"], None);
    let peer = format!("peer+{hub}#{name}");
    let first = Running::start(
        &["replicate", &peer, &dir.db("c1.db"), "--live", "--json"],
        None,
    );
    first.expect("the first peer's copy", |v| v["docs_written"] == 3);
    let out = run(&["replicate", &peer, &dir.db("c2.db")], None);
    let said = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(
        said.contains("the share is full (1 of 1 peers, max_links)"),
        "{said}"
    );
    // The first one leaves: there is room again.
    let (ok, _) = first.interrupt();
    assert!(ok);
    sharer.expect("the first peer gone", |v| v["event"] == "peer_closed");
    let second = pull(&peer, &dir.db("c2.db"));
    assert_eq!(second["docs_written"], 3);
}

#[test]
fn docs_attach_writes_a_file_a_range_at_a_time_and_refers_to_held_bytes() {
    let dir = Dir::new();
    let db = dir.db("att.db");
    let file = dir.db("blob.bin");
    let blob: Vec<u8> = (0..(3usize << 20) + 12_345)
        .map(|i| (i * 131 % 251) as u8)
        .collect();
    std::fs::write(&file, &blob).unwrap();
    let out = ok_json(
        &[
            "docs", &db, "attach", "doc", "a.bin", &file, "--type", "x/y",
        ],
        None,
    );
    let said = out.last().unwrap();
    let digest = peerpouch::doc::digest_of(&blob);
    assert_eq!(said["digest"], digest.as_str(), "{said}");
    assert_eq!(said["length"], blob.len(), "{said}");
    assert!(said["rev"].as_str().unwrap().starts_with("1-"), "{said}");
    // A second attachment on the same document makes a new revision that keeps the first.
    let out = ok_json(&["docs", &db, "attach", "doc", "b.bin", &file], None);
    assert!(out.last().unwrap()["rev"]
        .as_str()
        .unwrap()
        .starts_with("2-"));
    let got = ok_json(&["docs", &db, "get", "doc", "--attachments"], None);
    let atts = &got.last().unwrap()["_attachments"];
    for name in ["a.bin", "b.bin"] {
        assert_eq!(atts[name]["data"], base64(&blob), "{name}");
        assert_eq!(atts[name]["digest"], digest.as_str(), "{name}");
    }
    assert_eq!(atts["a.bin"]["content_type"], "x/y");
    assert_eq!(atts["b.bin"]["content_type"], "application/octet-stream");
    ok_json(&["docs", &db, "check"], None);
    // A file that is not there: a clear error, nothing written.
    let out = run(
        &["docs", &db, "attach", "doc", "c.bin", &dir.db("nope.bin")],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot open") && err.contains("nope.bin"),
        "{err}"
    );
    let got = ok_json(&["docs", &db, "get", "doc"], None);
    assert!(got.last().unwrap()["_rev"]
        .as_str()
        .unwrap()
        .starts_with("2-"));
}
