//! The SQLite store beside the memory store: `cargo bench -p peerpouch-sqlite`.
//!
//! A plain `main` (no harness). The same 100k documents of ~1 KiB as `benches/store.rs` are
//! bulk-inserted, read back through the changes feed, and replicated between two stores, once
//! on `MemoryStore`s and once on `SqliteStore`s in temporary files. The machine is shared and
//! noisy, so every SQLite run is paired with a memory run taken right before it, and the ratios
//! of the pairs are printed beside the medians: compare ratios across runs.
//!
//! Peak memory is measured in child processes (this binary run again with
//! `PEERPOUCH_BENCH_CHILD` set): each fills a source store and replicates it to a target, then
//! reports its own `VmHWM`, so each figure is one process's peak and nothing else's.
//!
//! A second part builds one big file (`PEERPOUCH_BENCH_BIG_DOCS`, default 1,000,000 documents
//! of ~1 KiB) and measures opening it (`sqlite_open_ms`) and reading random documents from it
//! (`sqlite_get_p50_us`, second pass over the ids, so the OS page cache is warm), each beside
//! raw SQLite doing the least the same job needs on the same file (open plus one query;
//! `SELECT tree FROM docs WHERE id = ?`).
//!
//! Bulk inserts are also compared with raw SQLite inserting the same `(id, json)` rows into a
//! two-column table in the same batches (one transaction each). Each such pair runs in a fresh
//! child process (`PEERPOUCH_BENCH_CHILD=insert`) holding only the documents to insert, the
//! two sides one after the other, in alternating order from pair to pair: in this process a
//! filled memory store is alive, and its heap slows whichever side allocates more (the store
//! allocates per document, raw SQLite hardly at all), which measured the heap, not the engine.
//! Each side's clock covers turning the given documents into rows: the store's starts after the
//! batch it is handed is cloned, raw SQLite's includes writing each document's JSON.
//!
//! The headline lines start with `figure:` (and `ratio:`); the rest is context.

use std::hint::black_box;
use std::path::Path;
use std::time::{Duration, Instant};

#[path = "../../../benches/common/mod.rs"]
mod common;

use common::*;
use peerpouch::{replicate, Database, MemoryStore, ReplicatorConfig, Seq};
use peerpouch_sqlite::{OpenOptions, SqliteStore};
use serde_json::Value;

const DOCS: usize = 100_000;
/// Runs per measurement; the median is reported.
const RUNS: usize = 3;

fn sqlite(path: &Path, name: &str) -> SqliteStore {
    SqliteStore::open_with(path, OpenOptions::new().name(name).id_seed(0)).expect("open")
}

/// Fills a store batch by batch, generating each batch as it goes (no master copy).
fn fill(db: &mut dyn Database) {
    for start in (0..DOCS).step_by(BATCH) {
        let batch: Vec<Value> = (start..start + BATCH).map(make_doc).collect();
        insert_all(db, &batch);
    }
}

/// [`insert_all`] timing only the `bulk_docs` calls: each batch is cloned for the store before
/// its clock starts, as raw SQLite is handed the documents it writes.
fn timed_insert(db: &mut dyn Database, docs: &[Value]) -> Duration {
    let mut took = Duration::ZERO;
    for chunk in docs.chunks(BATCH) {
        let batch = chunk.to_vec();
        let t = Instant::now();
        let results = db.bulk_docs(batch, true).expect("bulk_docs");
        took += t.elapsed();
        assert_eq!(results.len(), chunk.len());
        if let Some(bad) = results.iter().find(|r| r.result.is_err()) {
            panic!("bulk_docs refused {}: {:?}", bad.id, bad.result);
        }
    }
    took
}

/// Raw SQLite inserting `(id, json)` rows in batches of [`BATCH`], one transaction each, in
/// the store's own settings (WAL, `synchronous=NORMAL`): the floor a store over SQLite pays.
fn raw_insert(path: &Path, docs: &[Value]) -> Duration {
    let mut conn = rusqlite::Connection::open(path).expect("raw open");
    conn.pragma_update(None, "journal_mode", "WAL")
        .expect("wal");
    conn.pragma_update(None, "synchronous", "NORMAL")
        .expect("sync");
    conn.pragma_update(None, "wal_autocheckpoint", 10_000)
        .expect("checkpoint");
    conn.execute_batch("CREATE TABLE raw (id TEXT PRIMARY KEY, json TEXT NOT NULL) STRICT")
        .expect("table");
    let t = Instant::now();
    for chunk in docs.chunks(BATCH) {
        let tx = conn.transaction().expect("tx");
        {
            let mut put = tx
                .prepare_cached("INSERT INTO raw (id, json) VALUES (?1, ?2)")
                .expect("prepare");
            for d in chunk {
                let id = d["_id"].as_str().expect("id");
                put.execute((id, serde_json::to_string(d).expect("json")))
                    .expect("insert");
            }
        }
        tx.commit().expect("commit");
    }
    t.elapsed()
}

/// Fills a big file for the open and get figures, batch by batch.
fn fill_big(path: &Path, n: usize) {
    let mut db = sqlite(path, "big");
    for start in (0..n).step_by(BATCH) {
        let batch: Vec<Value> = (start..(start + BATCH).min(n)).map(make_doc).collect();
        insert_all(&mut db, &batch);
    }
}

fn percentile_us(mut xs: Vec<Duration>, p: f64) -> f64 {
    xs.sort();
    xs[((xs.len() - 1) as f64 * p) as usize].as_secs_f64() * 1e6
}

/// Opening and random reads on a big file, beside raw SQLite on the same file.
fn big_file(dir: &Path) {
    let n: usize = std::env::var("PEERPOUCH_BENCH_BIG_DOCS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let path = dir.join("big.db");
    let t = Instant::now();
    fill_big(&path, n);
    let fill_s = t.elapsed().as_secs_f64();
    let size = std::fs::metadata(&path).map_or(0, |m| m.len()) as f64 / (1024.0 * 1024.0);
    println!("context: big file of {n} docs, {size:.0} MiB, filled in {fill_s:.1} s");
    let (mut open_ms, mut raw_open_ms) = (Vec::new(), Vec::new());
    for _ in 0..5 {
        let t = Instant::now();
        let mut db = sqlite(&path, "big");
        let info = db.info().expect("info");
        open_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(info.doc_count, n as u64);
        drop(db);
        let t = Instant::now();
        let conn = rusqlite::Connection::open(&path).expect("raw open");
        let seq: i64 = conn
            .query_row("SELECT max(seq) FROM docs", [], |r| r.get(0))
            .expect("max");
        raw_open_ms.push(t.elapsed().as_secs_f64() * 1e3);
        assert_eq!(seq, n as i64);
    }
    // Random ids from a fixed sequence (splitmix64), read twice: the second pass is measured.
    let mut state = 0x5eed_u64;
    let ids: Vec<String> = (0..20_000)
        .map(|_| {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            format!("doc-{:06}", (z ^ (z >> 31)) % n as u64)
        })
        .collect();
    let mut db = sqlite(&path, "big");
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    let mut raw = conn
        .prepare("SELECT tree FROM docs WHERE id = ?1")
        .expect("prepare");
    let (mut gets, mut raw_gets) = (Vec::new(), Vec::new());
    for pass in 0..2 {
        for id in &ids {
            let t = Instant::now();
            let doc = db.get(id).expect("get");
            let d = t.elapsed();
            black_box(&doc);
            let t = Instant::now();
            let tree: Vec<u8> = raw.query_row([id], |r| r.get(0)).expect("raw get");
            let r = t.elapsed();
            black_box(&tree);
            if pass == 1 {
                gets.push(d);
                raw_gets.push(r);
            }
        }
    }
    let (open, raw_open) = (median(open_ms.clone()), median(raw_open_ms.clone()));
    println!(
        "runs: open ms: store [{}], raw [{}]",
        fmt_runs(&open_ms),
        fmt_runs(&raw_open_ms)
    );
    println!(
        "context: get p90 {:.1} us, p99 {:.1} us (raw p99 {:.1} us)",
        percentile_us(gets.clone(), 0.9),
        percentile_us(gets.clone(), 0.99),
        percentile_us(raw_gets.clone(), 0.99)
    );
    let (get, raw_get) = (percentile_us(gets, 0.5), percentile_us(raw_gets, 0.5));
    println!("baseline: raw_sqlite_open_ms = {raw_open:.2} ms");
    println!("figure: sqlite_open_ms = {open:.2} ms");
    println!("baseline: raw_sqlite_get_p50_us = {raw_get:.1} us");
    println!("figure: sqlite_get_p50_us = {get:.1} us");
    println!("ratio: sqlite_open_vs_raw = {:.2}", open / raw_open);
    println!("ratio: sqlite_get_vs_raw = {:.2}", get / raw_get);
}

fn check_inserted(db: &mut dyn Database, docs: &[Value]) {
    let info = db.info().expect("info");
    assert_eq!(info.doc_count, DOCS as u64);
    assert_eq!(info.update_seq, Seq::from(DOCS as u64));
    let sample = db.get("doc-054321").expect("sample");
    for (k, v) in docs[54321].as_object().expect("object") {
        assert_eq!(sample.get(k), Some(v), "field {k}");
    }
}

/// Replicates `source` into `target` and checks the copy; returns the time taken.
fn timed_replication(source: &mut dyn Database, target: &mut dyn Database) -> Duration {
    let t = Instant::now();
    let p = replicate(source, target, ReplicatorConfig::new("a", "b")).expect("replicate");
    let d = t.elapsed();
    assert_eq!(p.docs_written, DOCS as u64, "docs_written");
    assert_eq!(target.info().expect("info").doc_count, DOCS as u64);
    for i in (0..DOCS).step_by(9973).chain([DOCS - 1]) {
        let id = format!("doc-{i:06}");
        assert_eq!(
            source.get(&id).expect("source"),
            target.get(&id).expect("target")
        );
    }
    d
}

/// The child: fill a source, replicate it to a target, print docs/s and this process's peak.
fn child(kind: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut a, mut b): (Box<dyn Database>, Box<dyn Database>) = match kind {
        "memory" => (
            Box::new(MemoryStore::new("a")),
            Box::new(MemoryStore::new("b")),
        ),
        _ => (
            Box::new(sqlite(&dir.path().join("a.db"), "a")),
            Box::new(sqlite(&dir.path().join("b.db"), "b")),
        ),
    };
    fill(a.as_mut());
    let d = timed_replication(a.as_mut(), b.as_mut());
    let peak = proc_status_kib("VmHWM").expect("VmHWM");
    println!("child: {} {}", per_s(DOCS, d), peak);
}

/// The insert child: the store's bulk insert and raw SQLite's, in this fresh process, `first`
/// of them first; prints both rates.
fn insert_child(first: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let docs: Vec<Value> = (0..DOCS).map(make_doc).collect();
    let (mut store, mut raw) = (0.0, 0.0);
    for side in if first == "raw" {
        ["raw", "store"]
    } else {
        ["store", "raw"]
    } {
        if side == "raw" {
            raw = per_s(DOCS, raw_insert(&dir.path().join("raw.db"), &docs));
        } else {
            let mut db = sqlite(&dir.path().join("store.db"), "bench");
            store = per_s(DOCS, timed_insert(&mut db, &docs));
            check_inserted(&mut db, &docs);
        }
    }
    println!("insert: {store:.0} {raw:.0}");
}

/// Runs one insert child; returns (store docs/s, raw SQLite rows/s).
fn run_insert_child(first: &str) -> (f64, f64) {
    let out = std::process::Command::new(std::env::current_exe().expect("exe"))
        .env("PEERPOUCH_BENCH_CHILD", "insert")
        .env("PEERPOUCH_BENCH_INSERT_FIRST", first)
        .output()
        .expect("child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "insert child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("insert: "))
        .expect("insert line");
    let mut rates = line.split(' ').map(|x| x.parse::<f64>().expect("rate"));
    (
        rates.next().expect("store rate"),
        rates.next().expect("raw rate"),
    )
}

/// Runs the child for `kind`; returns (replication docs/s, peak RSS in KiB).
fn run_kind(kind: &str) -> (f64, u64) {
    run_child(kind, &[("PEERPOUCH_BENCH_CHILD", kind.as_ref())])
}

/// Memory and SQLite runs taken in pairs; the ratio is SQLite over memory, per pair.
#[derive(Default)]
struct Pairs {
    memory: Vec<f64>,
    sqlite: Vec<f64>,
}

impl Pairs {
    fn push(&mut self, memory: f64, sqlite: f64) {
        self.memory.push(memory);
        self.sqlite.push(sqlite);
    }
    fn ratio(&self) -> f64 {
        median(
            self.sqlite
                .iter()
                .zip(&self.memory)
                .map(|(s, m)| s / m)
                .collect(),
        )
    }
    fn print(&self, what: &str) {
        println!(
            "runs: {what}: memory [{}], sqlite [{}]",
            fmt_runs(&self.memory),
            fmt_runs(&self.sqlite)
        );
    }
}

fn main() {
    if let Ok(kind) = std::env::var("PEERPOUCH_BENCH_CHILD") {
        if kind == "insert" {
            let first = std::env::var("PEERPOUCH_BENCH_INSERT_FIRST").unwrap_or_default();
            insert_child(&first);
        } else {
            child(&kind);
        }
        return;
    }
    let started = Instant::now();
    println!("sqlite bench: {DOCS} docs, ~{TEXT_LEN} B of text each, bulk_docs batches of {BATCH}, median of {RUNS} paired runs");
    let dir = tempfile::tempdir().expect("tempdir");
    let docs: Vec<Value> = (0..DOCS).map(make_doc).collect();

    let mut insert = Pairs::default();
    let mut in_process_raw = Pairs::default();
    let mut changes = Pairs::default();
    let mut replication = Pairs::default();
    let mut file_mib = 0.0;
    let mut open_s = Vec::new();
    for run in 0..RUNS {
        // Bulk insert.
        let mut mem = MemoryStore::new("bench");
        let t = Instant::now();
        insert_all(&mut mem, &docs);
        let m = per_s(DOCS, t.elapsed());
        check_inserted(&mut mem, &docs);
        let path = dir.path().join(format!("insert-{run}.db"));
        let mut sql = sqlite(&path, "bench");
        let t = Instant::now();
        insert_all(&mut sql, &docs);
        let s = per_s(DOCS, t.elapsed());
        check_inserted(&mut sql, &docs);
        insert.push(m, s);
        // Raw SQLite in this process too, with the memory store alive: context only.
        let raw = per_s(
            DOCS,
            raw_insert(&dir.path().join(format!("raw-{run}.db")), &docs),
        );
        in_process_raw.push(raw, s);

        // Changes scan.
        let t = Instant::now();
        assert_eq!(scan_changes(&mut mem), DOCS);
        let m = per_s(DOCS, t.elapsed());
        let t = Instant::now();
        assert_eq!(scan_changes(&mut sql), DOCS);
        let s = per_s(DOCS, t.elapsed());
        changes.push(m, s);

        // Reopening the 100k-document file (it reads a few fixed values, whatever the size).
        drop(sql);
        let wal = format!("{}-wal", path.display());
        file_mib = (std::fs::metadata(&path).map_or(0, |m| m.len())
            + std::fs::metadata(&wal).map_or(0, |m| m.len())) as f64
            / (1024.0 * 1024.0);
        let t = Instant::now();
        let mut sql = sqlite(&path, "bench");
        open_s.push(t.elapsed().as_secs_f64());
        check_inserted(&mut sql, &docs);

        // Replication into a fresh target.
        let mut mem_target = MemoryStore::new("b");
        let m = per_s(DOCS, timed_replication(&mut mem, &mut mem_target));
        drop(mem_target);
        let mut sql_target = sqlite(&dir.path().join(format!("target-{run}.db")), "b");
        let s = per_s(DOCS, timed_replication(&mut sql, &mut sql_target));
        replication.push(m, s);
    }
    drop(docs);

    // The store's bulk insert beside raw SQLite's, each pair in a fresh process.
    let mut raw_insert_runs = Pairs::default();
    for run in 0..RUNS {
        let (store, raw) = run_insert_child(if run % 2 == 0 { "store" } else { "raw" });
        raw_insert_runs.push(raw, store);
    }

    // Peak memory, one process per store kind.
    let (mem_child_rate, mem_peak) = run_kind("memory");
    let (sql_child_rate, sql_peak) = run_kind("sqlite");

    insert.print("bulk_insert docs/s");
    println!(
        "runs: bulk_insert in fresh processes, pairs alternating which goes first: sqlite docs/s [{}], raw sqlite (id, json) rows/s [{}]",
        fmt_runs(&raw_insert_runs.sqlite),
        fmt_runs(&raw_insert_runs.memory)
    );
    println!(
        "context: bulk_insert in this process, a filled memory store alive: raw sqlite rows/s [{}], ratio {:.3}",
        fmt_runs(&in_process_raw.memory),
        in_process_raw.ratio()
    );
    changes.print("changes rows/s");
    replication.print("replication docs/s");
    println!(
        "context: the 100k-doc file is {file_mib:.1} MiB; reopening it takes [{}] ms",
        open_s
            .iter()
            .map(|s| format!("{:.2}", s * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "context: replication in the peak-memory children: memory {mem_child_rate:.0} docs/s, sqlite {sql_child_rate:.0} docs/s"
    );
    let phases = [
        ("bulk_insert", "docs_per_s", "docs/s", &insert),
        ("changes", "rows_per_s", "rows/s", &changes),
        ("replication", "docs_per_s", "docs/s", &replication),
    ];
    for (name, per, unit, pairs) in phases {
        let (m, q) = (median(pairs.memory.clone()), median(pairs.sqlite.clone()));
        println!("baseline: memory_{name}_{per} = {m:.0} {unit}");
        println!("figure: sqlite_{name}_{per} = {q:.0} {unit}");
    }
    println!(
        "baseline: memory_replication_peak_rss_mib = {:.1} MiB",
        mib(mem_peak)
    );
    println!(
        "figure: sqlite_replication_peak_rss_mib = {:.1} MiB",
        mib(sql_peak)
    );
    for (name, _, _, pairs) in phases {
        println!("ratio: sqlite_{name}_vs_memory = {:.3}", pairs.ratio());
    }
    println!(
        "ratio: sqlite_replication_peak_rss_vs_memory = {:.3}",
        sql_peak as f64 / mem_peak as f64
    );
    println!(
        "baseline: raw_sqlite_insert_rows_per_s = {:.0} rows/s",
        median(raw_insert_runs.memory.clone())
    );
    println!(
        "ratio: sqlite_bulk_insert_vs_raw_sqlite = {:.3}",
        raw_insert_runs.ratio()
    );
    big_file(dir.path());
    println!("total bench time: {:.1} s", started.elapsed().as_secs_f64());
}
