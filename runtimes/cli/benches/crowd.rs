//! One sharer, a crowd of peers: `cargo bench -p peerpouch-cli --bench crowd`.
//!
//! A sharer (`PeerNode`, a `MemoryStore` of [`DOCS`] notes of ~1 KiB) in one child process;
//! joiners in [`PROCESSES`] other child processes, [`CROWD`] in all (`PEERPOUCH_CROWD` to
//! change it), every node on its own 127.0.0.1 UDP socket, all meeting on the pouchdb-server hub
//! (`PEERPOUCH_TEST_HUB`, or one this bench starts). This binary re-executed with
//! `--contender` is each child; the parent drives them over stdin and reads JSON lines.
//!
//! In order, each figure measured in the same run:
//!
//! - `crowd_single_pull_docs_per_s`: one joiner alone pulls the share (the baseline, as
//!   `p2p_docs_per_s` of `side_by_side` but through the pouchdb-server hub and `PeerNode`s);
//! - the join storm: the whole crowd opens the share (spread over the join window; every open
//!   must succeed, or the run fails), `crowd_all_linked_s` after the first until the last is
//!   linked; `sharer_rss_per_link_kib` is the sharer's resident memory with the crowd's idle
//!   links, less before, per link;
//! - `fanout_100_pull_docs_per_s`: the crowd pulls the share at once (documents written by all
//!   of them, over the time from the first start to the last end), and its ratio to the
//!   baseline (`fanout_vs_single_pull_ratio`; 1.0 would mean a crowd costs nothing extra);
//! - `fanout_write_to_all_p99_ms`: with every joiner following live, the sharer writes one
//!   document at a time ([`WRITES`]); the time until the last joiner has it, p50 and p99;
//! - the crowd leaves (`kill -9` of every joiner process): `sharer_notices_all_left_s` (its
//!   idle timeout is 10 s) and `sharer_rss_after_leave_ratio` (resident memory after, over
//!   before the storm, both once the allocator gave back the free pages it keeps:
//!   `malloc_trim`, so the ratio shows memory held, not glibc's caching); then a second storm
//!   (join, pull, killed) and `sharer_rss_second_storm_growth_ratio`, resident memory after it
//!   over after the first: memory kept per storm; the same two for the live heap (bytes
//!   allocated and not freed, counted by this binary's allocator: `sharer_heap_after_leave_ratio`,
//!   `sharer_heap_second_storm_growth_ratio`), what the sharer itself holds, where RSS adds the
//!   allocator's fragmented pages; then the signal documents left on the hub (`hub_signal_docs_left`);
//! - `hub_list_1000_shares_ms`: a node with 50 shares of its own lists a hub holding 1 000
//!   shares of others (and `hub_list_10_shares_ms` on one holding 10, in the same run), then
//!   another node opens one of its shares and reads from it.
//!
//! `PEERPOUCH_CROWD_ASK_MS=N` runs the storm on the `--ask` path: the sharer answers each peer
//! after N ms, one at a time, so the last of the crowd waits about crowd × N ms for its verdict
//! (past the joiners' answer timeout, held by the sharer's `pending` notice); every open must
//! still succeed, and the sharer must have decided on each peer.
//!
//! Wall-clock figures on a shared 2-core machine: compare within a run.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use peerpouch::{Database, MemoryStore};
use peerpouch_couch::CouchClient;
use peerpouch_smol::{HubSpec, PeerConfig, PeerNode, ReplicateOptions, ShareConfig, Verdict};
use serde_json::{json, Value};

#[path = "common/docs.rs"]
mod docs;
#[path = "common/harness.rs"]
mod harness;
use docs::docs;
use harness::Hub;

/// Documents the sharer holds.
const DOCS: usize = 2_000;
/// Joiners in all, by default.
const CROWD: usize = 100;
/// Processes the joiners are spread over.
const PROCESSES: usize = 4;
/// The join storm: the crowd's opens spread evenly over this window (the issue's "within 30 s
/// of each other"), `PEERPOUCH_CROWD_JOIN_S` to change it (0: all at once).
const JOIN_WINDOW_S: f64 = 20.0;
/// Live writes timed.
const WRITES: usize = 20;
/// Shares of its own the listing node serves meanwhile.
const OWN_SHARES: usize = 50;
/// Any step of the run that takes longer failed.
const STEP_LIMIT: Duration = Duration::from_secs(180);

#[path = "../../../benches/common/counting_alloc.rs"]
mod counting_alloc;

/// Heap bytes lent and not yet freed, in KiB.
fn live_heap_kib() -> u64 {
    (counting_alloc::live_heap_bytes().max(0) / 1024) as u64
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_nanos() as u64
}

/// This process's resident memory, from `/proc/self/status`.
fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn config(hub: &str) -> PeerConfig {
    PeerConfig::new(HubSpec::Couch(hub.to_string())).bind("127.0.0.1:0".parse().unwrap())
}

/// Lines of stdin, on a thread of their own.
/// `PEERPOUCH_CROWD_ASK_MS`: the sharer asks (`--ask`) and answers each peer after this long,
/// one at a time.
fn ask_ms() -> Option<u64> {
    std::env::var("PEERPOUCH_CROWD_ASK_MS")
        .ok()
        .and_then(|v| v.parse().ok())
}

fn stdin_lines() -> async_channel::Receiver<String> {
    let (tx, rx) = async_channel::unbounded();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send_blocking(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn say(v: Value) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{v}").expect("stdout");
    out.flush().expect("stdout");
}

// ---------------------------------------------------------------------------------------------
// The children.

/// The sharer: shares DOCS notes, then obeys `write N`, `stats` and `quit` on stdin.
fn contender_sharer(hub: &str) {
    smol::block_on(async {
        let node = PeerNode::start_with(config(hub)).expect("sharer node");
        let mut store = MemoryStore::new("db");
        for chunk in (0..DOCS).step_by(500) {
            store
                .bulk_docs(docs(chunk..(chunk + 500).min(DOCS)), true)
                .expect("write the notes");
        }
        let db = node.add_db("db", store).await.expect("add the database");
        let decided = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut share_config = ShareConfig::new().name("crowd");
        if let Some(ms) = ask_ms() {
            // The `--ask` path: every peer waits for a verdict, given one at a time (a user
            // answering in order), each after `ms`; the last of a crowd waits far past the
            // answer timeout, held by the sharer's `pending` notice.
            let decided = decided.clone();
            let one_at_a_time = std::sync::Mutex::new(());
            share_config = share_config.ask(move |_peer| {
                let _turn = one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
                std::thread::sleep(Duration::from_millis(ms));
                decided.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Verdict::Accept
            });
        }
        let share = node.share(&db, share_config).await.expect("share");
        say(json!({"share": share, "rss_kib": rss_kib()}));
        let commands = stdin_lines();
        while let Ok(line) = commands.recv().await {
            let mut words = line.split_whitespace();
            match words.next() {
                Some("write") => {
                    let n: usize = words.next().and_then(|w| w.parse().ok()).expect("write N");
                    db.put(json!({"_id": format!("w-{n:04}"), "t_ns": now_ns()}))
                        .await
                        .expect("a live write");
                    say(json!({"wrote": n}));
                }
                Some("stats") => {
                    let stats = node.stats().await.expect("stats");
                    let rss = rss_kib();
                    // What the allocator keeps for reuse, given back: what is left is held.
                    // SAFETY: malloc_trim has no preconditions.
                    unsafe { libc::malloc_trim(0) };
                    say(
                        json!({"links": stats.links, "rss_kib": rss, "trimmed_rss_kib": rss_kib(),
                               "heap_kib": live_heap_kib(),
                               "decided": decided.load(std::sync::atomic::Ordering::Relaxed),
                               "longpolls": stats.waiting_longpolls,
                               "subscriptions": stats.remote_subscriptions,
                               "replications": stats.replications}),
                    );
                }
                _ => break,
            }
        }
        node.shutdown().await;
    });
}

/// `count` joiners (numbered from `first`): open the share, say `linked`; on `go` pull it all
/// and say `pulled` with the times; then follow it live, saying `got N` for each live write.
fn contender_members(
    hub: &str,
    share: &str,
    first: usize,
    count: usize,
    crowd: usize,
    window_s: f64,
) {
    smol::block_on(async {
        let commands = stdin_lines();
        let mut peers = Vec::new();
        for i in first..first + count {
            let node = PeerNode::start_with(config(hub)).expect("joiner node");
            peers.push((i, node));
        }
        let opened = futures_lite::future::block_on(async {
            let mut tasks = Vec::new();
            let t0 = Instant::now();
            for (i, node) in &peers {
                let (i, node, share) = (*i, node.clone(), share.to_string());
                // Joiner i of the crowd opens at its place in the window.
                let at = t0 + Duration::from_secs_f64(window_s * i as f64 / crowd as f64);
                tasks.push(smol::spawn(async move {
                    smol::Timer::at(at).await;
                    let remote = node
                        .open(&share, json!({"name": format!("joiner {i}")}))
                        .await
                        .unwrap_or_else(|e| panic!("joiner {i} could not open the share: {e}"));
                    let copy = node
                        .add_db("copy", MemoryStore::new("copy"))
                        .await
                        .expect("copy");
                    (i, node, remote, copy)
                }));
            }
            let mut out = Vec::new();
            for t in tasks {
                out.push(t.await);
            }
            out
        });
        say(json!({"linked": count}));
        assert_eq!(commands.recv().await.as_deref(), Ok("go"));
        let mut tasks = Vec::new();
        for (i, node, remote, copy) in opened {
            tasks.push(smol::spawn(async move {
                let start = now_ns();
                let rep = node
                    .replicate(&remote, &copy, ReplicateOptions::default())
                    .await
                    .expect("replicate");
                let p = rep.finished().await.expect("the pull");
                let end = now_ns();
                say(json!({"pulled": i, "start_ns": start, "end_ns": end, "docs": p.docs_written}));
                let mut live = node
                    .replicate(&remote, &copy, ReplicateOptions::live())
                    .await
                    .expect("live");
                let mut next = 1;
                while let Some(e) = live.next_event().await {
                    if std::env::var_os("PEERPOUCH_CROWD_TRACE").is_some() {
                        eprintln!("joiner {i}: {e:?}");
                    }
                    while let Ok(doc) = copy.get(&format!("w-{next:04}")).await {
                        let sent = doc["t_ns"].as_u64().unwrap_or(0);
                        let lat = now_ns().saturating_sub(sent) as f64 / 1e6;
                        say(json!({"got": next, "peer": i, "lat_ms": lat}));
                        next += 1;
                    }
                }
            }));
        }
        // Until told to stop (or killed).
        let _ = commands.recv().await;
        drop(tasks);
    });
    std::process::exit(0);
}

// ---------------------------------------------------------------------------------------------
// The parent.

/// A child and its stdout lines (tagged with its number) on a shared channel.
struct Kid {
    child: Child,
    stdin: ChildStdin,
}

impl Kid {
    fn spawn(args: &[&str], tag: usize, lines: &mpsc::Sender<(usize, Value)>) -> Kid {
        let mut child = Command::new(std::env::current_exe().expect("this bench"))
            .arg("--contender")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start a child");
        let out = child.stdout.take().expect("stdout");
        let lines = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                match serde_json::from_str(&line) {
                    Ok(v) => {
                        if lines.send((tag, v)).is_err() {
                            break;
                        }
                    }
                    Err(_) => eprintln!("child {tag}: {line}"),
                }
            }
        });
        let stdin = child.stdin.take().expect("stdin");
        Kid { child, stdin }
    }

    fn tell(&mut self, line: &str) {
        writeln!(self.stdin, "{line}").expect("a child's stdin");
        self.stdin.flush().expect("a child's stdin");
    }
}

impl Drop for Kid {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The next line matching `want`, within the step limit.
fn wait_for(
    rx: &mpsc::Receiver<(usize, Value)>,
    what: &str,
    want: impl Fn(&Value) -> bool,
) -> Value {
    let end = Instant::now() + STEP_LIMIT;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((_, v)) if want(&v) => return v,
            Ok(_) => {}
            Err(e) => panic!("no {what} within {STEP_LIMIT:?}: {e}"),
        }
    }
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Pull rate of the joiners' `pulled` lines: documents over first start to last end.
fn pull_rate(pulled: &[Value]) -> f64 {
    let start = pulled
        .iter()
        .map(|v| v["start_ns"].as_u64().unwrap())
        .min()
        .unwrap();
    let end = pulled
        .iter()
        .map(|v| v["end_ns"].as_u64().unwrap())
        .max()
        .unwrap();
    let docs: u64 = pulled.iter().map(|v| v["docs"].as_u64().unwrap()).sum();
    assert_eq!(
        docs,
        (pulled.len() * DOCS) as u64,
        "every joiner pulled every note"
    );
    docs as f64 / ((end - start) as f64 / 1e9)
}

fn hub_db(hub: &Hub, name: &str) -> String {
    format!("{}/crowd-{name}-{}", hub.url, std::process::id())
}

/// `n` shares of others on a new hub database, then how long a node takes to list them (ms).
fn list_shares_ms(hub: &Hub, n: usize) -> f64 {
    let url = hub_db(hub, &format!("list{n}"));
    let mut client = CouchClient::new(&url).expect("hub client");
    client.create_db(true).expect("create the hub database");
    let expires = now_ns() / 1_000_000 + 3_600_000;
    let shares: Vec<Value> = (0..n)
        .map(|i| {
            json!({"_id": format!("share-other{i:05}"), "type": "com.stemstorage.peerpouch.share",
                   "name": format!("other {i}"), "info": {"owner": i}, "protocol": 1,
                   "expires_at": expires})
        })
        .collect();
    for chunk in shares.chunks(500) {
        client
            .bulk_docs(chunk.to_vec(), true)
            .expect("post the shares");
    }
    smol::block_on(async {
        // A node with shares of its own (OWN_SHARES), serving while it lists the others.
        let node = PeerNode::start_with(config(&url)).expect("a node");
        let mut own = Vec::new();
        for i in 0..OWN_SHARES {
            let mut store = MemoryStore::new(format!("own{i}"));
            store
                .bulk_docs(vec![json!({"_id": "hello", "i": i})], true)
                .expect("a document");
            let db = node.add_db(&format!("own{i}"), store).await.expect("add");
            own.push(node.share(&db, ShareConfig::new()).await.expect("share"));
        }
        let t = Instant::now();
        let listed = node.shares().await.expect("list the shares");
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(
            listed.len() >= n,
            "every share listed: {} of {n}",
            listed.len()
        );
        // Still serving: another node opens one of its shares and reads from it.
        let other = PeerNode::start_with(config(&url)).expect("another node");
        let remote = other
            .open(&own[OWN_SHARES / 2], json!({}))
            .await
            .expect("open an own share of the busy node");
        let doc = remote.get("hello").await.expect("get");
        assert_eq!(doc["i"], OWN_SHARES / 2);
        other.shutdown().await;
        node.shutdown().await;
        ms
    })
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--contender") {
        match args[i + 1].as_str() {
            "sharer" => contender_sharer(&args[i + 2]),
            "members" => contender_members(
                &args[i + 2],
                &args[i + 3],
                args[i + 4].parse().expect("first"),
                args[i + 5].parse().expect("count"),
                args[i + 6].parse().expect("crowd"),
                args[i + 7].parse().expect("join window"),
            ),
            other => panic!("unknown contender {other}"),
        }
        return;
    }
    if args.iter().any(|a| a == "--list") {
        return;
    }
    let crowd: usize = std::env::var("PEERPOUCH_CROWD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(CROWD);
    let window_s: f64 = std::env::var("PEERPOUCH_CROWD_JOIN_S")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(JOIN_WINDOW_S);
    let hub = Hub::get();
    let url = hub_db(&hub, "share");
    let (tx, rx) = mpsc::channel();
    let mut sharer = Kid::spawn(&["sharer", &url], 0, &tx);
    let shared = wait_for(&rx, "share", |v| v.get("share").is_some());
    let share = shared["share"].as_str().unwrap().to_string();
    let stats = |sharer: &mut Kid| {
        sharer.tell("stats");
        wait_for(&rx, "sharer stats", |v| v.get("links").is_some())
    };

    // One joiner alone: the baseline.
    let single = {
        let mut one = Kid::spawn(&["members", &url, &share, "0", "1", "1", "0"], 1, &tx);
        wait_for(&rx, "the single joiner's link", |v| {
            v.get("linked").is_some()
        });
        one.tell("go");
        let pulled = wait_for(&rx, "the single pull", |v| v.get("pulled").is_some());
        pull_rate(&[pulled])
    };
    let idle = wait_links(&mut sharer, &stats, 0, "the single joiner to leave");
    let rss_before = idle["trimmed_rss_kib"].as_u64().unwrap();
    let heap_before = idle["heap_kib"].as_u64().unwrap();

    // The join storm.
    let spawn_crowd = || -> Vec<Kid> {
        let per = crowd.div_ceil(PROCESSES);
        let kids: Vec<Kid> = (0..PROCESSES)
            .filter(|k| k * per < crowd)
            .map(|k| {
                let first = k * per;
                let count = per.min(crowd - first);
                Kid::spawn(
                    &[
                        "members",
                        &url,
                        &share,
                        &first.to_string(),
                        &count.to_string(),
                        &crowd.to_string(),
                        &window_s.to_string(),
                    ],
                    10 + k,
                    &tx,
                )
            })
            .collect();
        let mut linked = 0;
        while linked < crowd {
            let v = wait_for(&rx, "the crowd's links", |v| v.get("linked").is_some());
            linked += v["linked"].as_u64().unwrap() as usize;
        }
        kids
    };
    let t_join = Instant::now();
    let mut kids = spawn_crowd();
    let join_s = t_join.elapsed().as_secs_f64();
    let with_links = stats(&mut sharer);
    assert_eq!(
        with_links["links"].as_u64(),
        Some(crowd as u64),
        "{with_links}"
    );
    if let Some(ms) = ask_ms() {
        // The single joiner, then the whole crowd: each asked, each let in, none timed out.
        let decided = with_links["decided"].as_u64().unwrap_or(0);
        assert_eq!(decided, 1 + crowd as u64, "{with_links}");
        println!(
            "asked: {decided} peers decided one at a time, {ms} ms each; every open succeeded"
        );
    }
    let rss_links = with_links["rss_kib"].as_u64().unwrap();
    let per_link_kib = rss_links.saturating_sub(rss_before) as f64 / crowd as f64;

    // The crowd pulls at once.
    for k in &mut kids {
        k.tell("go");
    }
    let pulled: Vec<Value> = (0..crowd)
        .map(|_| wait_for(&rx, "the crowd's pulls", |v| v.get("pulled").is_some()))
        .collect();
    let fanout = pull_rate(&pulled);

    // Live writes, each to everyone.
    let mut to_all = Vec::new();
    for n in 1..=WRITES {
        sharer.tell(&format!("write {n}"));
        let mut worst: f64 = 0.0;
        for _ in 0..crowd {
            let v = wait_for(&rx, "a live write at every joiner", |v| {
                v["got"].as_u64() == Some(n as u64)
            });
            worst = worst.max(v["lat_ms"].as_f64().unwrap());
        }
        to_all.push(worst);
    }

    let served = stats(&mut sharer);

    // Everyone leaves at once, the hard way.
    let t_leave = Instant::now();
    for k in &mut kids {
        let _ = k.child.kill();
        let _ = k.child.wait();
    }
    let left = wait_links(
        &mut sharer,
        &stats,
        0,
        "the sharer to notice the crowd left",
    );
    let notice_s = t_leave.elapsed().as_secs_f64();
    eprintln!("the sharer once the crowd left: {left}");
    let rss_after = left["rss_kib"].as_u64().unwrap();
    let trimmed_after = left["trimmed_rss_kib"].as_u64().unwrap();
    let heap_after = left["heap_kib"].as_u64().unwrap();
    // A second storm (join, pull, killed): what the sharer keeps after it, against after the
    // first, tells memory it holds per storm (a leak) from what the allocator kept once.
    let mut kids = spawn_crowd();
    for k in &mut kids {
        k.tell("go");
    }
    for _ in 0..crowd {
        wait_for(&rx, "the second crowd's pulls", |v| {
            v.get("pulled").is_some()
        });
    }
    for k in &mut kids {
        let _ = k.child.kill();
        let _ = k.child.wait();
    }
    let left2 = wait_links(
        &mut sharer,
        &stats,
        0,
        "the sharer to notice the second crowd left",
    );
    let trimmed_after2 = left2["trimmed_rss_kib"].as_u64().unwrap();
    let heap_after2 = left2["heap_kib"].as_u64().unwrap();
    sharer.tell("quit");
    let _ = sharer.child.wait();
    let signals_left = count_signals(&url);

    let list_10 = list_shares_ms(&hub, 10);
    let list_1000 = list_shares_ms(&hub, 1000);

    eprintln!(
        "crowd of {crowd} in {PROCESSES} processes, opens spread over {window_s} s: all linked after {join_s:.1} s; sharer RSS {rss_before} KiB \
         idle, {rss_links} KiB with the idle links, {} KiB after serving them ({} KiB once the \
         allocator gave back what it keeps), {rss_after} KiB after they left ({trimmed_after} KiB), \
         {trimmed_after2} KiB after a second storm; live heap {heap_before} KiB idle, {} KiB \
         with the links, {} KiB serving them, {heap_after} KiB after they left, {heap_after2} KiB \
         after a second storm",
        served["rss_kib"],
        served["trimmed_rss_kib"],
        with_links["heap_kib"],
        served["heap_kib"],
    );
    println!("figure: crowd_single_pull_docs_per_s = {single:.0} docs/s");
    println!("figure: fanout_100_pull_docs_per_s = {fanout:.0} docs/s");
    println!(
        "figure: fanout_vs_single_pull_ratio = {:.2} ratio",
        fanout / single
    );
    println!("figure: crowd_all_linked_s = {join_s:.1} s");
    println!("figure: sharer_rss_per_link_kib = {per_link_kib:.0} KiB");
    println!(
        "figure: fanout_write_to_all_p50_ms = {:.1} ms",
        percentile(&to_all, 0.5)
    );
    println!(
        "figure: fanout_write_to_all_p99_ms = {:.1} ms",
        percentile(&to_all, 0.99)
    );
    println!("figure: sharer_notices_all_left_s = {notice_s:.1} s");
    println!(
        "figure: sharer_rss_after_leave_ratio = {:.2} ratio",
        trimmed_after as f64 / rss_before as f64
    );
    println!(
        "figure: sharer_rss_second_storm_growth_ratio = {:.2} ratio",
        trimmed_after2 as f64 / trimmed_after as f64
    );
    println!(
        "figure: sharer_heap_after_leave_ratio = {:.2} ratio",
        heap_after as f64 / heap_before as f64
    );
    println!(
        "figure: sharer_heap_second_storm_growth_ratio = {:.2} ratio",
        heap_after2 as f64 / heap_after as f64
    );
    println!("figure: hub_signal_docs_left = {signals_left} docs");
    println!("figure: hub_list_10_shares_ms = {list_10:.1} ms");
    println!("figure: hub_list_1000_shares_ms = {list_1000:.1} ms");
}

/// Asks the sharer for its stats until it keeps `links` links.
fn wait_links(
    sharer: &mut Kid,
    stats: &dyn Fn(&mut Kid) -> Value,
    links: u64,
    what: &str,
) -> Value {
    let end = Instant::now() + STEP_LIMIT;
    loop {
        let v = stats(sharer);
        if v["links"].as_u64() == Some(links) {
            return v;
        }
        assert!(Instant::now() < end, "no {what} within {STEP_LIMIT:?}: {v}");
        // Polling a remote process's state: the sharer has no way to call back.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Signal documents on the hub database at `url`.
fn count_signals(url: &str) -> usize {
    let mut client = CouchClient::new(url).expect("hub client");
    let all = client
        .all_docs(peerpouch::AllDocsRequest {
            include_docs: true,
            ..Default::default()
        })
        .expect("the hub's documents");
    all.rows
        .iter()
        .filter(|r| {
            r.doc.as_ref().is_some_and(|d| {
                d.get("type").and_then(Value::as_str) == Some("com.stemstorage.peerpouch.signal")
            })
        })
        .count()
}
