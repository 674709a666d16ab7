//! What the store benchmarks share (`benches/store.rs`, `runtimes/sqlite/benches/sqlite.rs`):
//! the documents they write and small helpers to measure and print.
#![allow(dead_code)]

use std::hint::black_box;
use std::time::Duration;

use peerpouch::{ChangesRequest, ChangesStyle, Database, Seq};

use serde_json::{json, Value};

/// Documents per `bulk_docs` request and per changes page.
pub const BATCH: usize = 1000;

/// Characters of text in each document.
pub const TEXT_LEN: usize = 1000;

#[rustfmt::skip]
pub const WORDS: &[&str] = &[
    "peer", "pouch", "couch", "replica", "revision", "conflict", "winner", "branch", "leaf",
    "stub", "digest", "sequence", "change", "feed", "batch", "checkpoint", "channel", "offer",
    "answer", "candidate", "session", "share", "signal", "hub", "local", "tombstone", "merge",
    "stem", "history", "attachment", "lorem", "ipsum", "dolor", "sit", "amet", "river", "stone",
];

/// Document `i`: about 1 KiB of JSON, deterministic.
pub fn make_doc(i: usize) -> Value {
    // A small LCG so every run writes the same bytes.
    let mut state = (i as u64)
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as usize
    };
    let mut text = String::with_capacity(TEXT_LEN + 16);
    while text.len() < TEXT_LEN {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(WORDS[next() % WORDS.len()]);
    }
    text.truncate(TEXT_LEN);
    json!({
        "_id": format!("doc-{i:06}"),
        "n": i,
        "type": "note",
        "tags": [WORDS[next() % WORDS.len()], WORDS[next() % WORDS.len()]],
        "score": (next() % 10_000) as f64 / 100.0,
        "done": i % 3 == 0,
        "text": text,
    })
}

pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

pub fn per_s(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

pub fn fmt_runs(xs: &[f64]) -> String {
    xs.iter()
        .map(|x| format!("{x:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A `kB` field of `/proc/self/status` (`VmRSS`, `VmHWM`), in KiB.
pub fn proc_status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        rest.trim().strip_suffix("kB")?.trim().parse().ok()
    })
}

/// Runs this bench binary again with `envs` set and reads the line `child: RATE PEAK_KIB` it
/// prints (a rate and its own peak RSS); `what` names it in a failure.
pub fn run_child(what: &str, envs: &[(&str, &std::ffi::OsStr)]) -> (f64, u64) {
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .envs(envs.iter().copied())
        .output()
        .expect("child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{what} child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("child: "))
        .expect("child line");
    let mut parts = line.split(' ');
    let rate = parts.next().and_then(|x| x.parse().ok()).expect("rate");
    let peak = parts.next().and_then(|x| x.parse().ok()).expect("peak");
    (rate, peak)
}

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

pub fn insert_all(db: &mut dyn Database, docs: &[Value]) {
    for chunk in docs.chunks(BATCH) {
        let results = db.bulk_docs(chunk.to_vec(), true).expect("bulk_docs");
        assert_eq!(results.len(), chunk.len());
        if let Some(bad) = results.iter().find(|r| r.result.is_err()) {
            panic!("bulk_docs refused {}: {:?}", bad.id, bad.result);
        }
    }
}

/// Reads the whole changes feed from 0 in pages; returns the number of rows.
pub fn scan_changes(db: &mut dyn Database) -> usize {
    let mut since = Seq::zero();
    let mut rows = 0;
    loop {
        let page = db
            .changes(ChangesRequest {
                since: since.clone(),
                limit: Some(BATCH),
                style: ChangesStyle::AllDocs,
                ..ChangesRequest::default()
            })
            .expect("changes");
        if page.results.is_empty() {
            break;
        }
        rows += page.results.len();
        black_box(&page.results);
        since = page.last_seq;
    }
    rows
}
