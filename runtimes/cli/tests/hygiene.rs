//! What a process that ends normally leaves on the hub: nothing of its own. Many joiners pull
//! one share at once and exit; then the sharer stops. Every signal each of them consumed is
//! deleted before it exits, and the sharer's share document goes with it.
//!
//! Runs against the pouchdb-server test hub of `.ci/test` (PEERPOUCH_TEST_HUB).

use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use peerpouch::{AllDocsRequest, Database};
use peerpouch_couch::CouchClient;
use serde_json::{json, Value};

mod common;
use common::*;

/// Joiners started at once.
const JOINERS: usize = 20;
/// How long a stopped sharer may take to exit (its own bound is 2 s).
const EXIT_DEADLINE: Duration = Duration::from_secs(10);

/// Every document on the hub database `url` (tombstones excluded).
fn hub_docs(url: &str) -> Vec<Value> {
    let mut c = CouchClient::new(url).expect("a hub URL");
    c.all_docs(AllDocsRequest {
        include_docs: true,
        ..AllDocsRequest::default()
    })
    .expect("the hub lists its documents")
    .rows
    .into_iter()
    .filter_map(|r| r.doc)
    .collect()
}

fn of_type<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    let t = format!("com.stemstorage.peerpouch.{kind}");
    docs.iter().filter(|d| d["type"] == t.as_str()).collect()
}

/// A `peerpouch share` running until told to stop.
struct Sharer {
    child: Option<Child>,
    _out: Receiver<String>,
}

impl Sharer {
    fn start(hub: &str, db: &str, name: &str) -> Sharer {
        let mut child = peerpouch(&["share", "--hub", hub, "--db", db, "--name", name, "--json"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = lines(child.stdout.take().unwrap());
        loop {
            let line = out
                .recv_timeout(LINE_DEADLINE)
                .expect("the sharer says it shares");
            let v: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"));
            if v["event"] == "shared" {
                break;
            }
        }
        Sharer {
            child: Some(child),
            _out: out,
        }
    }

    /// Ctrl-C, then its exit status.
    fn stop(mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: kill(2) on our own child, not reaped yet, so the pid is its own.
        unsafe {
            libc::kill(child.id() as i32, libc::SIGINT);
        }
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait());
        });
        rx.recv_timeout(EXIT_DEADLINE)
            .unwrap_or_else(|_| {
                // SAFETY: as above; the waiting thread reaps it.
                unsafe {
                    libc::kill(pid as i32, libc::SIGKILL);
                }
                panic!("the sharer did not exit within {EXIT_DEADLINE:?} of Ctrl-C")
            })
            .unwrap()
    }
}

impl Drop for Sharer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[test]
fn concurrent_joiners_and_the_sharer_leave_no_signal_behind() {
    let dir = Dir::new();
    let hub = format!("{}/{}", hub_base(), unique("hygiene"));
    let src = dir.db("src.db");
    let docs: Vec<Value> = (0..20)
        .map(|i| json!({"_id": format!("doc-{i:02}"), "i": i}))
        .collect();
    let r = ok_json(
        &["docs", &src, "bulk"],
        Some(&serde_json::to_string(&docs).unwrap()),
    );
    assert_eq!(r[0]["written"], 20);
    let name = unique("tidy");
    let sharer = Sharer::start(&hub, &src, &name);
    let peer = format!("peer+{hub}#{name}");

    let joiners: Vec<(String, Child)> = (0..JOINERS)
        .map(|i| {
            let dst = dir.db(&format!("dst-{i}.db"));
            let child = peerpouch(&["replicate", &peer, &dst, "--json"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (dst, child)
        })
        .collect();
    for (dst, child) in joiners {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "joiner {dst} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = String::from_utf8_lossy(&out.stdout)
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str(l).ok())
            .expect("a summary line");
        assert_eq!(summary["docs_written"], 20, "{dst}: {summary}");
    }

    // Every joiner has exited, and each deleted the sharer's signals it read before it did:
    // none addressed to a peer is left. (The sharer may still be deleting the joiners' last
    // signals: those are counted once it too has stopped.)
    let left = hub_docs(&hub);
    let to_joiners: Vec<&Value> = of_type(&left, "signal")
        .into_iter()
        .filter(|d| {
            d["recipient"]
                .as_str()
                .is_some_and(|r| r.starts_with("peer-"))
        })
        .collect();
    assert!(
        to_joiners.is_empty(),
        "{} signals to joiners left on the hub after they exited: {to_joiners:#?}",
        to_joiners.len()
    );

    let status = sharer.stop();
    assert!(status.success(), "Ctrl-C ends the share cleanly");
    let left = hub_docs(&hub);
    let signals = of_type(&left, "signal");
    assert!(
        signals.is_empty(),
        "{} signal documents left on the hub: {signals:#?}",
        signals.len()
    );
    assert!(
        of_type(&left, "share").is_empty(),
        "the share document is gone: {left:#?}"
    );
}
