//! Peer-to-peer figures over loopback UDP: `cargo bench --bench p2p`.
//!
//! Two [`Node`]s in one process, each on its own `127.0.0.1` UDP socket, meet on the in-memory
//! hub; a minimal single-threaded driver moves datagrams, hub requests and store requests. It
//! prints, from one run:
//!
//! - `p2p_replication_docs_per_s`: 10k documents of ~1 KiB (`common/docs.rs`: words, not
//!   padding, so compression gains what it would on real data) pulled from the sharer over the
//!   link;
//! - `rpc_get_rtt_p50_ms` / `rpc_get_rtt_p99_ms`: 2000 sequential `get` calls;
//! - `rpc_vs_raw_throughput_ratio`: a 64 MiB attachment fetched over the RPC, against the same
//!   64 MiB sent as raw messages over a bare session (str0m's channel with only peerpouch's
//!   safe-write rules) on the same sockets and driver, in the same run;
//! - `attachment_replication_mb_per_s`: a 32 MiB attachment of incompressible bytes pulled by a
//!   replication, which moves it in ranges (`ReplicatorConfig::attachment_range`, 1 MiB), against
//!   the same pull carrying it inline as replications did before
//!   (`attachment_replication_inline_mb_per_s`), alternately in the same run, with the heap each
//!   way holds beyond what the target store keeps in the end (`attachment_replication_heap_mib`,
//!   both nodes: this process's counting allocator);
//! - `sqlite_p2p_replication_docs_per_s` and `sqlite_p2p_replication_peak_rss_mib`: 100k of the
//!   same documents (`PEERPOUCH_BENCH_P2P_SQLITE_DOCS`) pulled over the link from a SQLite file
//!   into a new SQLite file, beside the same pull from one `MemoryStore` into another
//!   (`p2p_memory_replication_docs_per_s`), [`SQLITE_ROUNDS`] rounds of the two alternately. Each
//!   pull runs in a child process (this binary again, `P2P_BENCH_CHILD=memory|sqlite`) holding
//!   both nodes on one thread, and reports its own peak RSS (`VmHWM`): that is both sides
//!   together, so the larger side's peak is at most that. The source file is filled once, by the
//!   parent, before the rounds.
//!
//! Figures are wall-clock and the machine is shared: the ratio is the stable number.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use peerpouch::node::*;
use peerpouch::session::{Session, SessionConfig, SessionEvent, SessionRole, Transmit};
use peerpouch::*;
use peerpouch_cli::local::World;
use peerpouch_sqlite::SqliteStore;

// The core's `rust-version` (1.85) predates `is_multiple_of`, which this crate's clippy asks for.
#[allow(clippy::manual_is_multiple_of)]
#[path = "../../../benches/common/mod.rs"]
mod common;
#[path = "../../../benches/common/counting_alloc.rs"]
mod counting;
#[path = "common/docs.rs"]
mod docs;
use common::{median, proc_status_kib, run_child};
use docs::doc;
use serde_json::json;

fn socket() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback UDP socket");
    s.set_nonblocking(true).expect("non-blocking socket");
    let a = s.local_addr().expect("local address");
    (s, a)
}

fn linked() -> (World, LinkId) {
    let mut w = World::new(2).expect("loopback sockets");
    let share = w.share(0, "db").expect("share");
    let link = w.open(1, &share).expect("open the share");
    (w, link)
}

/// Pulls `db` of node 0 into `copy` of node 1 over `link`; returns what it did and the seconds
/// it took.
fn pull(w: &mut World, link: LinkId) -> (Progress, f64) {
    let t = Instant::now();
    let p = w
        .replicate(
            1,
            DbRef::Remote(link),
            DbRef::Local("copy".into()),
            Duration::from_secs(600),
            |_| {},
        )
        .expect("replication");
    (p, t.elapsed().as_secs_f64())
}

fn replication_docs_per_s() -> f64 {
    let (mut w, link) = linked();
    for chunk in (0..10_000).collect::<Vec<_>>().chunks(1000) {
        w.peers[0]
            .write("db", chunk.iter().map(|&i| doc(i)).collect())
            .unwrap();
    }
    let (p, secs) = pull(&mut w, link);
    assert_eq!(p.docs_written, 10_000);
    let copy = w.peers[1].store("copy");
    assert_eq!(copy.info().unwrap().doc_count, 10_000);
    assert_eq!(copy.get("doc004242").unwrap()["i"], 4242);
    10_000.0 / secs
}

fn get_rtts() -> (f64, f64) {
    let (mut w, link) = linked();
    w.peers[0].write("db", vec![doc(1)]).unwrap();
    let mut rtts = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        let call = w.peers[1]
            .node
            .call(
                Instant::now(),
                &link,
                Request::Get(GetRequest::new("doc000001")),
            )
            .unwrap();
        w.run_until("a get", Duration::from_secs(10), |w| {
            w.peers[1].events.iter().any(
                |e| matches!(e, NodeEvent::CallResult { call: c, result: Ok(_), .. } if *c == call),
            )
        })
        .unwrap();
        rtts.push(t.elapsed().as_secs_f64() * 1e3);
        w.peers[1].events.clear();
    }
    rtts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (rtts[rtts.len() / 2], rtts[rtts.len() * 99 / 100])
}

const BIG: usize = 64 << 20;

fn rpc_attachment_mb_per_s() -> f64 {
    let (mut w, link) = linked();
    let data: Vec<u8> = (0..BIG).map(|i| (i * 7 % 251) as u8).collect();
    let b64 = serde_json::to_value(AttachmentData {
        content_type: String::new(),
        digest: String::new(),
        data: data.clone().into(),
    })
    .unwrap()["data"]
        .clone();
    w.peers[0]
        .write(
            "db",
            vec![json!({"_id": "big", "_attachments": {"blob": {"content_type": "application/octet-stream", "data": b64}}})],
        )
        .unwrap();
    let t = Instant::now();
    let req = Request::GetAttachment(AttachmentRequest {
        id: "big".into(),
        name: "blob".into(),
        rev: None,
    });
    let call = w.peers[1].node.call(Instant::now(), &link, req).unwrap();
    w.run_until("the attachment", Duration::from_secs(120), |w| {
        w.peers[1]
            .events
            .iter()
            .any(|e| matches!(e, NodeEvent::CallResult { call: c, .. } if *c == call))
    })
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let mut got = None;
    for e in w.peers[1].events.drain(..) {
        if let NodeEvent::CallResult {
            call: c, result, ..
        } = e
        {
            if c == call {
                got = Some(result.unwrap().into_attachment().unwrap().data);
            }
        }
    }
    assert!(got.as_deref() == Some(&data[..]), "attachment bytes differ");
    BIG as f64 / secs / 1e6
}

const ATTACHED: usize = 32 << 20;

/// Pulls a document with a [`ATTACHED`]-byte attachment of incompressible bytes into a new
/// store, moving it in ranges (`range`) or inline (`None`); MB/s and the heap peak above the
/// start beyond what the target keeps at the end, in bytes.
fn attachment_replication(range: Option<u64>) -> (f64, usize) {
    let (mut w, link) = linked();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..ATTACHED)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    let digest = peerpouch::doc::digest_of(&data);
    let b64 = serde_json::to_value(AttachmentData {
        content_type: String::new(),
        digest: String::new(),
        data: data.into(),
    })
    .unwrap()["data"]
        .take();
    w.peers[0]
        .write(
            "db",
            vec![json!({"_id": "big", "_attachments": {"blob": {"content_type": "application/octet-stream", "data": b64}}})],
        )
        .unwrap();
    let config = ReplicatorConfig::new("db", "copy").attachment_range(range);
    let base = counting::reset_peak();
    let t = Instant::now();
    let p = w
        .replicate_with(
            1,
            DbRef::Remote(link),
            DbRef::Local("copy".into()),
            config,
            Duration::from_secs(600),
            |_| {},
        )
        .expect("replication");
    let secs = t.elapsed().as_secs_f64();
    // What the move held beyond what the target store keeps (a memory store keeps it all).
    let kept = (counting::live_heap_bytes().max(0) as usize).saturating_sub(base);
    let peak = counting::peak().saturating_sub(base).saturating_sub(kept);
    assert_eq!(p.docs_written, 1);
    assert_eq!(
        p.attachment_bytes,
        if range.is_some() { ATTACHED as u64 } else { 0 }
    );
    let got = w.peers[1]
        .store("copy")
        .get_attachment("big", "blob")
        .unwrap();
    assert_eq!((got.digest, got.data.len()), (digest, ATTACHED));
    (ATTACHED as f64 / secs / 1e6, peak)
}

/// The same 64 MiB as raw data channel messages between two bare sessions, same driver style.
fn raw_session_mb_per_s() -> f64 {
    let (sa, aa) = socket();
    let (sb, ab) = socket();
    let now = Instant::now();
    let mut a = Session::new(SessionRole::Offerer, SessionConfig::default(), 1, now);
    let mut b = Session::new(SessionRole::Answerer, SessionConfig::default(), 2, now);
    a.add_local_candidate(now, aa).unwrap();
    b.add_local_candidate(now, ab).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut received = 0usize;
    let mut sent = 0usize;
    let mut open = (false, false);
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 253) as u8).collect();
    let mut t0 = None;
    let end = Instant::now() + Duration::from_secs(120);
    let flush = |s: &mut Session, sock: &UdpSocket| {
        while let Some(Transmit {
            destination,
            contents,
            ..
        }) = s.poll_transmit()
        {
            let _ = sock.send_to(&contents, destination);
        }
    };
    while received < BIG {
        assert!(Instant::now() < end, "raw transfer did not finish");
        while let Some(sig) = a.poll_signal() {
            b.handle_signal(Instant::now(), sig).unwrap();
        }
        while let Some(sig) = b.poll_signal() {
            a.handle_signal(Instant::now(), sig).unwrap();
        }
        if open.0 && open.1 && sent < BIG {
            t0.get_or_insert_with(Instant::now);
            let n = (BIG - sent).min(a.max_message_size()).min(chunk.len());
            while sent < BIG && a.send(Instant::now(), true, &chunk[..n]).unwrap() {
                sent += n;
            }
        }
        flush(&mut a, &sa);
        flush(&mut b, &sb);
        let mut moved = false;
        while let Ok((n, from)) = sa.recv_from(&mut buf) {
            moved = true;
            a.handle_datagram(Instant::now(), from, aa, &buf[..n]);
        }
        while let Ok((n, from)) = sb.recv_from(&mut buf) {
            moved = true;
            b.handle_datagram(Instant::now(), from, ab, &buf[..n]);
        }
        let now = Instant::now();
        for s in [&mut a, &mut b] {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
        while let Some(e) = a.poll_event() {
            open.0 |= e == SessionEvent::ChannelOpened;
        }
        while let Some(e) = b.poll_event() {
            match e {
                SessionEvent::ChannelOpened => open.1 = true,
                SessionEvent::Message { data, .. } => received += data.len(),
                _ => {}
            }
        }
        if !moved {
            std::thread::yield_now();
        }
    }
    BIG as f64 / t0.expect("channel opened").elapsed().as_secs_f64() / 1e6
}

/// Documents of the SQLite part.
fn sqlite_part_docs() -> usize {
    std::env::var("PEERPOUCH_BENCH_P2P_SQLITE_DOCS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000)
}

/// Rounds of the SQLite part (one memory child, then one SQLite child).
const SQLITE_ROUNDS: usize = 3;

/// The child of the SQLite part: pulls every document of `db` on node 0 into `copy` on node 1,
/// from and into SQLite files (`sqlite`, paths in `P2P_BENCH_SOURCE` and `P2P_BENCH_TARGET`) or
/// memory stores (`memory`, the source filled here first), then prints `child: DOCS_PER_S
/// PEAK_KIB`.
fn child(kind: &str) {
    let n = sqlite_part_docs();
    let mut w = World::new(2).expect("loopback sockets");
    let paths = (
        std::env::var("P2P_BENCH_SOURCE").unwrap_or_default(),
        std::env::var("P2P_BENCH_TARGET").unwrap_or_default(),
    );
    if kind == "sqlite" {
        let mut source = SqliteStore::open(&paths.0).expect("open the source file");
        assert_eq!(source.info().expect("info").doc_count, n as u64);
        w.peers[0].attach("db", Box::new(source));
        let target = SqliteStore::open(&paths.1).expect("create the target file");
        w.peers[1].attach("copy", Box::new(target));
    } else {
        for start in (0..n).step_by(1000) {
            let batch = (start..(start + 1000).min(n)).map(doc).collect();
            w.peers[0]
                .write("db", batch)
                .expect("write the source docs");
        }
    }
    let share = w.share(0, "db").expect("share");
    let link = w.open(1, &share).expect("open the share");
    let (p, secs) = pull(&mut w, link);
    let peak = proc_status_kib("VmHWM").expect("VmHWM");
    assert_eq!(p.docs_written, n as u64);
    let samples = (0..n).step_by(9973).chain([n - 1]);
    if kind == "sqlite" {
        drop(w);
        let mut source = SqliteStore::open(&paths.0).expect("reopen the source");
        let mut target = SqliteStore::open(&paths.1).expect("reopen the target");
        assert_eq!(target.info().unwrap().doc_count, n as u64);
        for i in samples {
            let id = format!("doc{i:06}");
            assert_eq!(source.get(&id).unwrap(), target.get(&id).unwrap(), "{id}");
        }
    } else {
        let copy = w.peers[1].store("copy");
        assert_eq!(copy.info().unwrap().doc_count, n as u64);
        for i in samples {
            let got = copy.get(&format!("doc{i:06}")).unwrap();
            for (k, v) in doc(i).as_object().unwrap() {
                assert_eq!(got.get(k), Some(v), "doc {i} field {k}");
            }
        }
    }
    println!("child: {} {peak}", n as f64 / secs);
}

/// Runs one child of the SQLite part; returns (docs/s, peak RSS in KiB).
fn run_pull(kind: &str, source: &std::path::Path, target: &std::path::Path) -> (f64, u64) {
    run_child(
        kind,
        &[
            ("P2P_BENCH_CHILD", kind.as_ref()),
            ("P2P_BENCH_SOURCE", source.as_os_str()),
            ("P2P_BENCH_TARGET", target.as_os_str()),
        ],
    )
}

/// A directory removed when dropped (panics included).
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The SQLite part; `p2p` is this run's `p2p_replication_docs_per_s`.
fn sqlite_part(p2p: Option<f64>) {
    let n = sqlite_part_docs();
    let dir =
        TempDir(std::env::temp_dir().join(format!("peerpouch-p2p-bench-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("temporary directory");
    let source = dir.0.join("source.db");
    let t = Instant::now();
    {
        let mut db = SqliteStore::open(&source).expect("create the source file");
        for start in (0..n).step_by(1000) {
            let batch = (start..(start + 1000).min(n)).map(doc).collect();
            for r in db.bulk_docs(batch, true).expect("bulk_docs") {
                r.result.expect("write");
            }
        }
    }
    println!(
        "sqlite part: {n} docs written to the source file in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    let (mut mem, mut sql, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    let (mut mem_peak, mut sql_peak) = (Vec::new(), Vec::new());
    for round in 0..SQLITE_ROUNDS {
        let target = dir.0.join(format!("target-{round}.db"));
        let (m, mp) = run_pull("memory", &source, &target);
        let (s, sp) = run_pull("sqlite", &source, &target);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", target.display()));
        }
        println!(
            "run: sqlite part: memory {m:.0} docs/s ({:.1} MiB), sqlite {s:.0} docs/s ({:.1} MiB)",
            mp as f64 / 1024.0,
            sp as f64 / 1024.0
        );
        mem.push(m);
        sql.push(s);
        ratios.push(s / m);
        mem_peak.push(mp as f64 / 1024.0);
        sql_peak.push(sp as f64 / 1024.0);
    }
    let (m, s) = (median(mem), median(sql));
    println!("baseline: p2p_memory_replication_docs_per_s = {m:.0} docs/s ({n} docs, memory store to memory store, child process)");
    println!(
        "baseline: p2p_memory_replication_peak_rss_mib = {:.1} MiB",
        median(mem_peak)
    );
    println!("figure: sqlite_p2p_replication_docs_per_s = {s:.0} docs/s");
    println!(
        "figure: sqlite_p2p_replication_peak_rss_mib = {:.1} MiB (both sides in one process)",
        median(sql_peak)
    );
    println!(
        "ratio: sqlite_p2p_vs_memory_p2p = {:.3} (goal >= 0.6)",
        median(ratios)
    );
    if let Some(p2p) = p2p {
        println!(
            "ratio: sqlite_p2p_vs_p2p_replication_docs_per_s = {:.3} (that figure: 10k docs, in this process)",
            s / p2p
        );
    }
}

fn main() {
    if let Ok(kind) = std::env::var("P2P_BENCH_CHILD") {
        return child(&kind);
    }
    // One part alone, once, for profiling (`P2P_BENCH_ONLY=replication|raw|rpc|sqlite valgrind ...`).
    match std::env::var("P2P_BENCH_ONLY").as_deref() {
        Ok("replication") => return println!("{:.0} docs/s", replication_docs_per_s()),
        Ok("raw") => return println!("{:.1} MB/s", raw_session_mb_per_s()),
        Ok("rpc") => return println!("{:.1} MB/s", rpc_attachment_mb_per_s()),
        Ok("attachment") => {
            let (r, peak) = attachment_replication(Some(1 << 20));
            return println!("{r:.1} MB/s, heap peak {:.1} MiB", peak as f64 / 1048576.0);
        }
        Ok("sqlite") => return sqlite_part(None),
        _ => {}
    }
    let runs = 3;
    let mut docs = Vec::new();
    let mut ratios = Vec::new();
    let mut rpc = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..runs {
        docs.push(replication_docs_per_s());
        let r = raw_session_mb_per_s();
        let p = rpc_attachment_mb_per_s();
        println!(
            "run: replication {:.0} docs/s, raw {r:.1} MB/s, rpc {p:.1} MB/s",
            docs.last().unwrap()
        );
        raw.push(r);
        rpc.push(p);
        ratios.push(p / r);
    }
    let (mut ranged, mut inline, mut peaks, mut inline_peaks) = (vec![], vec![], vec![], vec![]);
    for _ in 0..runs {
        let (r, peak) = attachment_replication(Some(1 << 20));
        let (i, inline_peak) = attachment_replication(None);
        println!(
            "run: a 32 MiB attachment replicated in ranges {r:.1} MB/s (heap peak {:.1} MiB), inline {i:.1} MB/s ({:.1} MiB)",
            peak as f64 / 1048576.0,
            inline_peak as f64 / 1048576.0
        );
        ranged.push(r);
        inline.push(i);
        peaks.push(peak as f64 / 1048576.0);
        inline_peaks.push(inline_peak as f64 / 1048576.0);
    }
    let (p50, p99) = get_rtts();
    println!("raw session (bare str0m channel, peerpouch safe writes) over loopback: {:.1} MB/s (median)", median(raw));
    println!(
        "rpc attachment over loopback: {:.1} MB/s (median)",
        median(rpc)
    );
    let p2p_docs = median(docs);
    println!("figure: p2p_replication_docs_per_s = {p2p_docs:.0} docs/s");
    println!(
        "figure: rpc_vs_raw_throughput_ratio = {:.3} ratio",
        median(ratios)
    );
    let (r, i) = (median(ranged), median(inline));
    println!("figure: attachment_replication_mb_per_s = {r:.1} MB/s");
    println!("baseline: attachment_replication_inline_mb_per_s = {i:.1} MB/s");
    println!("ratio: attachment_ranges_vs_inline = {:.3}", r / i);
    println!(
        "figure: attachment_replication_heap_mib = {:.1} MiB",
        median(peaks)
    );
    println!(
        "baseline: attachment_replication_inline_heap_mib = {:.1} MiB",
        median(inline_peaks)
    );
    println!("figure: rpc_get_rtt_p50_ms = {p50:.3} ms");
    println!("figure: rpc_get_rtt_p99_ms = {p99:.3} ms");
    sqlite_part(Some(p2p_docs));
}
