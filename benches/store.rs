//! Store and replication throughput: `cargo bench --bench store`.
//!
//! A plain `main` (no harness): 100k documents of ~1 KiB are bulk-inserted into a `MemoryStore`,
//! read back through the changes feed, and replicated to a second `MemoryStore`. Each figure is
//! the median of a few runs. The machine this runs on is shared and noisy, so a baseline (cloning
//! the same `serde_json` values into a plain `BTreeMap`, the floor any store pays) is measured in
//! the same run and ratios against it are printed too: compare ratios across runs, not raw
//! figures. Every timed phase is checked for correctness so a broken store cannot post a fast
//! number.
//!
//! `memory_store_bytes_per_json_byte` is the heap the source store holds once filled, divided
//! by the bytes of its documents' JSON (each document serialised compactly as written, `_id`
//! included): the heap is counted by a global allocator that adds up the sizes asked of it
//! while the store is filled (what the allocator rounds them up to is not counted; the RSS
//! growth, which is, is printed beside it). The same count over the same documents held as
//! parsed `serde_json::Value`s (how the store held bodies before it kept them as text) is the
//! baseline.
//!
//! `PEERPOUCH_STORE_BENCH_ONLY=size` stops after that figure.
//!
//! The headline lines start with `figure:`; the rest is context.

// Benchmarks measure wall time by design; the core's ban on `Instant::now` is for `src/`.
#![allow(clippy::disallowed_methods)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, AtomicIsize, Ordering};
use std::time::{Duration, Instant};

mod common;

use common::*;
use peerpouch::{
    replicate, AllDocsRequest, Database, MemoryStore, Progress, ReplicatorConfig, Seq,
};
use serde_json::Value;

const DOCS: usize = 100_000;
/// Runs per measurement; the median is reported.
const RUNS: usize = 5;

/// The system allocator, counting the bytes asked of it while [`COUNTING`] is set (a relaxed
/// load per call otherwise, so the timed phases pay next to nothing).
struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
/// Bytes allocated minus bytes freed while counting.
static LIVE: AtomicIsize = AtomicIsize::new(0);

#[global_allocator]
static ALLOC: Counting = Counting;

fn count(delta: isize) {
    if COUNTING.load(Ordering::Relaxed) {
        LIVE.fetch_add(delta, Ordering::Relaxed);
    }
}

// SAFETY: every call is forwarded to `System` unchanged; counting only reads the layouts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        count(-(layout.size() as isize));
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

/// Runs `f` and returns its result with the heap bytes it left allocated.
fn heap_kept<T>(f: impl FnOnce() -> T) -> (T, isize) {
    LIVE.store(0, Ordering::Relaxed);
    COUNTING.store(true, Ordering::Relaxed);
    let out = f();
    COUNTING.store(false, Ordering::Relaxed);
    (out, LIVE.load(Ordering::Relaxed))
}

/// Resets the peak-RSS mark (`VmHWM`) to the current RSS (Linux >= 4.0). Returns whether the
/// write was accepted.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

/// Whether [`reset_peak_rss`] demonstrably works here: touch 64 MiB, free it (a block this big is
/// its own mapping, so freeing returns it to the OS), reset, and check that the mark fell back.
fn peak_reset_works() -> bool {
    let mut block = vec![0u8; 64 << 20];
    for i in (0..block.len()).step_by(4096) {
        block[i] = 1;
    }
    black_box(&block);
    drop(block);
    let (Some(before), Some(rss)) = (proc_status_kib("VmHWM"), proc_status_kib("VmRSS")) else {
        return false;
    };
    if before < rss + (60 << 10) || !reset_peak_rss() {
        return false;
    }
    // Some slack: RSS moves a little between reads of the status file.
    proc_status_kib("VmHWM").is_some_and(|after| after < before - (60 << 10))
}

/// Checks that `target` holds every document of `source`, with equal sampled bodies.
fn check_replica(source: &mut MemoryStore, target: &mut MemoryStore, p: &Progress) {
    let info = target.info().expect("info");
    assert_eq!(info.doc_count, DOCS as u64, "target doc_count");
    assert_eq!(p.docs_written, DOCS as u64, "docs_written");
    for i in (0..DOCS).step_by(9973).chain([DOCS - 1]) {
        let id = format!("doc-{i:06}");
        let s = source.get(&id).expect("source doc");
        let t = target.get(&id).expect("target doc");
        assert_eq!(s, t, "{id} differs");
    }
}

fn timed_replication(
    source: &mut MemoryStore,
    config: ReplicatorConfig,
) -> (Duration, MemoryStore) {
    let mut target = MemoryStore::new("b");
    let t = Instant::now();
    let p = replicate(source, &mut target, config).expect("replicate");
    let d = t.elapsed();
    check_replica(source, &mut target, &p);
    (d, target)
}

/// Clones every value into a `BTreeMap` keyed by id: the floor any store pays. Docs/s.
fn baseline(docs: &[Value]) -> f64 {
    let t = Instant::now();
    let mut map: BTreeMap<String, Value> = BTreeMap::new();
    for d in docs.iter().cloned() {
        let id = d["_id"].as_str().expect("id").to_string();
        map.insert(id, d);
    }
    black_box(&map);
    let d = t.elapsed();
    assert_eq!(map.len(), DOCS);
    per_s(DOCS, d)
}

/// The runs of one measurement and their ratios to the baseline run taken just before each.
struct Phase {
    name: String,
    runs: Vec<f64>,
    ratios: Vec<f64>,
}

impl Phase {
    fn median(&self) -> f64 {
        median(self.runs.clone())
    }

    fn ratio(&self) -> f64 {
        median(self.ratios.clone())
    }
}

fn main() {
    let started = Instant::now();
    println!("store bench: {DOCS} docs, ~{TEXT_LEN} B of text each, bulk_docs batches of {BATCH}, median of {RUNS} runs");

    // --- Peak RSS of one replication, measured first so freed memory from other phases does not
    // hide it. The source is filled batch by batch (no master copy kept), so the heap holds the
    // source store and little else when the mark is reset.
    let hwm_reset = peak_reset_works();
    let rss_empty = proc_status_kib("VmRSS").unwrap_or(0);
    let mut json_bytes = 0usize;
    let (mut a, store_heap) = heap_kept(|| {
        let mut a = MemoryStore::new("a");
        for start in (0..DOCS).step_by(BATCH) {
            let batch: Vec<Value> = (start..start + BATCH).map(make_doc).collect();
            json_bytes += batch
                .iter()
                .map(|d| serde_json::to_vec(d).expect("json").len())
                .sum::<usize>();
            let results = a.bulk_docs(batch, true).expect("bulk_docs");
            assert!(results.iter().all(|r| r.result.is_ok()));
        }
        a
    });
    assert_eq!(a.info().expect("info").doc_count, DOCS as u64);
    println!(
        "docs: total JSON size {:.1} MiB ({} B/doc on average)",
        json_bytes as f64 / (1024.0 * 1024.0),
        json_bytes / DOCS
    );
    let rss_source = proc_status_kib("VmRSS").unwrap_or(0);
    let store_per_json = store_heap as f64 / json_bytes as f64;
    // The size alone (it does not depend on the build's optimisation, so a test build can
    // compare two versions of the store): `PEERPOUCH_STORE_BENCH_ONLY=size`.
    if std::env::var("PEERPOUCH_STORE_BENCH_ONLY").as_deref() == Ok("size") {
        println!("figure: memory_store_bytes_per_json_byte = {store_per_json:.3} B/B");
        return;
    }
    let hwm_before = proc_status_kib("VmHWM").unwrap_or(0);
    let hwm_reset = hwm_reset && reset_peak_rss();
    let hwm_after_reset = proc_status_kib("VmHWM").unwrap_or(0);
    let (first_rep, b) = timed_replication(&mut a, ReplicatorConfig::new("a", "b"));
    let peak = proc_status_kib("VmHWM").unwrap_or(0);
    let rss_after = proc_status_kib("VmRSS").unwrap_or(0);
    drop(b);
    if hwm_reset {
        println!(
            "rss: source store alone {:.1} MiB; after replication {:.1} MiB (VmHWM reset via /proc/self/clear_refs, checked to work with a 64 MiB probe: {:.1} -> {:.1} MiB before replicating)",
            mib(rss_source),
            mib(rss_after),
            mib(hwm_before),
            mib(hwm_after_reset)
        );
    } else {
        println!(
            "rss: /proc/self/clear_refs did not reset VmHWM here: the peak below is the process peak so far (source filled, then replicated)"
        );
    }

    // Every timed run below is preceded by a baseline run (clone the same values into a plain
    // BTreeMap keyed by id), so each run has a baseline taken under the same load; ratios are the
    // median of the per-run ratios.
    let (docs, values_heap) = heap_kept(|| (0..DOCS).map(make_doc).collect::<Vec<Value>>());
    let values_per_json = values_heap as f64 / json_bytes as f64;
    let mut base = Vec::new();
    let mut phase = |name: &str, mut run: Box<dyn FnMut() -> f64 + '_>| -> Phase {
        let mut p = Phase {
            name: name.to_string(),
            runs: Vec::new(),
            ratios: Vec::new(),
        };
        for _ in 0..RUNS {
            let b = baseline(&docs);
            let x = run();
            base.push(b);
            p.runs.push(x);
            p.ratios.push(x / b);
        }
        p
    };

    // Bulk insert: the same clones, through bulk_docs (new_edits: true).
    let ins = phase(
        "store_bulk_insert docs/s",
        Box::new(|| {
            let mut db = MemoryStore::new("bench");
            let t = Instant::now();
            insert_all(&mut db, &docs);
            let d = t.elapsed();
            let info = db.info().expect("info");
            assert_eq!(info.doc_count, DOCS as u64);
            assert_eq!(info.update_seq, Seq::from(DOCS as u64));
            let sample = db.get("doc-054321").expect("sample");
            for (k, v) in docs[54321].as_object().expect("object") {
                assert_eq!(sample.get(k), Some(v), "field {k}");
            }
            per_s(DOCS, d)
        }),
    );
    // Changes scan of the source store.
    let chg = phase(
        "store_changes rows/s",
        Box::new(|| {
            let t = Instant::now();
            let rows = scan_changes(&mut a);
            let d = t.elapsed();
            assert_eq!(rows, DOCS, "changes rows");
            per_s(rows, d)
        }),
    );
    // all_docs agrees with the feed.
    let all = a.all_docs(AllDocsRequest::default()).expect("all_docs");
    assert_eq!(all.rows.len(), DOCS);
    // Replication to a fresh target each run (the source keeps its checkpoints, but the new target
    // has none, so every run copies everything).
    let rep = phase(
        "local_replication (batch_size 100) docs/s",
        Box::new(|| {
            let (d, _) = timed_replication(&mut a, ReplicatorConfig::new("a", "b"));
            per_s(DOCS, d)
        }),
    );
    let rep500 = phase(
        "local_replication (batch_size 500) docs/s",
        Box::new(|| {
            let (d, _) = timed_replication(&mut a, ReplicatorConfig::new("a", "b").batch_size(500));
            per_s(DOCS, d)
        }),
    );
    drop(docs);

    for p in [&ins, &chg, &rep, &rep500] {
        println!("runs: {} = [{}]", p.name, fmt_runs(&p.runs));
    }
    println!("runs: btreemap_clone_insert docs/s = [{}]", fmt_runs(&base));
    println!(
        "(first replication, cold, the one measured for RSS: {:.0} docs/s)",
        per_s(DOCS, first_rep)
    );
    let base_m = median(base);
    println!("baseline: btreemap_clone_insert_docs_per_s = {base_m:.0} docs/s");
    println!(
        "figure: store_bulk_insert_docs_per_s = {:.0} docs/s",
        ins.median()
    );
    println!(
        "figure: store_changes_rows_per_s = {:.0} rows/s",
        chg.median()
    );
    println!(
        "figure: local_replication_docs_per_s = {:.0} docs/s",
        rep.median()
    );
    println!(
        "figure: local_replication_peak_rss_mib = {:.1} MiB",
        mib(peak)
    );
    println!(
        "local_replication_batch_500_docs_per_s = {:.0} docs/s (for comparison, not a figure)",
        rep500.median()
    );
    println!(
        "context: heap of the filled source store {:.1} MiB (RSS grew {:.1} MiB while filling it, allocator rounding and free lists included: {:.2} per JSON byte)",
        store_heap as f64 / (1024.0 * 1024.0),
        mib(rss_source.saturating_sub(rss_empty)),
        rss_source.saturating_sub(rss_empty) as f64 * 1024.0 / json_bytes as f64
    );
    println!("baseline: parsed_values_bytes_per_json_byte = {values_per_json:.3} B/B");
    println!("figure: memory_store_bytes_per_json_byte = {store_per_json:.3} B/B");
    println!(
        "ratio: memory_store_vs_parsed_values_bytes = {:.3}",
        store_per_json / values_per_json
    );
    println!("ratio: store_bulk_insert_vs_btreemap = {:.3}", ins.ratio());
    println!("ratio: store_changes_vs_btreemap = {:.3}", chg.ratio());
    println!("ratio: local_replication_vs_btreemap = {:.3}", rep.ratio());
    println!(
        "ratio: local_replication_batch_500_vs_btreemap = {:.3}",
        rep500.ratio()
    );
    println!(
        "ratio: local_replication_peak_rss_vs_json_size = {:.2}",
        mib(peak) / (json_bytes as f64 / (1024.0 * 1024.0))
    );
    println!("total bench time: {:.1} s", started.elapsed().as_secs_f64());
}
