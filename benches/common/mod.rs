//! What the store benchmarks share (`benches/store.rs`, `runtimes/sqlite/benches/sqlite.rs`):
//! the documents they write and small helpers to measure and print.
#![allow(dead_code)]

use std::time::Duration;

use serde_json::{json, Value};

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

pub fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

