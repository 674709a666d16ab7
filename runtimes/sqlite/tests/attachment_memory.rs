//! What serving an attachment from a SQLite file holds in memory, counted by the allocator.
//!
//! The RPC server reads an attachment from the file a chunk at a time and queues its frames
//! as it goes: the heap it holds stays near two chunks whatever the attachment's size. A store
//! that cannot read ranges is served whole (as every attachment was before), which holds it all.
//! The fast test serves 8 MiB; the ignored one 256 MiB (run it with `--release -- --ignored
//! --nocapture` for the figures). Only the Rust heap is counted: SQLite allocates its page cache
//! (bounded by [`OpenOptions::cache_bytes`]) with its own allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use peerpouch::rpc::frame::{Frame, Kind};
use peerpouch::rpc::wire::Reply;
use peerpouch::rpc::{ClientConfig, ClientEvent, RpcClient, RpcServer, ServerConfig};
use peerpouch::{AttachmentData, AttachmentRequest, Database, DbError, Request, Response};
use peerpouch_sqlite::{OpenOptions, SqliteStore};
use serde_json::json;

struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(n: usize) {
    let now = HELD.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only sizes are counted.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            HELD.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The tests of this binary count one process-wide heap: one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn byte(i: u64) -> u8 {
    (i * 31 % 253) as u8
}

/// A file with document `f` holding attachment `blob` of `len` bytes; its digest.
fn file_with_attachment(path: &std::path::Path, len: u64) -> String {
    let data: Vec<u8> = (0..len).map(byte).collect();
    let digest = peerpouch::doc::digest_of(&data);
    let b64 = serde_json::to_value(AttachmentData {
        content_type: String::new(),
        digest: String::new(),
        data: data.into(),
    })
    .unwrap()["data"]
        .take();
    let mut db = SqliteStore::open(path).unwrap();
    db.put(json!({"_id": "f", "_attachments": {"blob": {"content_type": "a/b", "data": b64}}}))
        .unwrap();
    digest
}

/// A store that cannot read attachments in ranges: it is served whole, as before chunks.
fn whole_only(db: &mut SqliteStore, req: Request) -> Result<Response, DbError> {
    match req {
        Request::ReadAttachment(_) => Err(DbError::NotImplemented("no ranges".into())),
        req => db.execute(req),
    }
}

struct Served {
    /// The most heap held above what was held before the call.
    peak: usize,
    /// The process's peak resident memory above its resident memory before the call (SQLite's
    /// page cache included), when Linux lets the peak be reset.
    rss_peak: Option<usize>,
    /// Store requests made.
    reads: usize,
}

/// Serves `blob` of document `f` to a client over the RPC machines and checks every byte.
/// With `assemble`, the client receives it as a call's answer; without, the test reads the
/// frames itself (so only the server's side is counted).
fn serve(db: &mut SqliteStore, digest: &str, len: u64, ranges: bool, assemble: bool) -> Served {
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let mut server = RpcServer::new(
        ServerConfig::new("share-x", "sha-256 AA", "sha-256 CC"),
        now,
    );
    let mut ccfg = ClientConfig::new("share-x", "peer-y", "sha-256 CC", "sha-256 AA");
    ccfg.max_message = 512 << 20;
    let mut client = RpcClient::new(ccfg, now);
    while !client.is_ready() {
        while let Some(f) = client.peek_frame().map(<[u8]>::to_vec) {
            client.advance_frame();
            server.handle_frame(now, &f).unwrap();
        }
        while let Some(f) = server.peek_frame().map(<[u8]>::to_vec) {
            server.advance_frame();
            client.handle_frame(now, &f).unwrap();
        }
    }
    while client.poll_event().is_some() {}
    let rss_base = reset_rss_peak();
    let base = HELD.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let call = client.call(
        now,
        Request::GetAttachment(AttachmentRequest {
            id: "f".into(),
            name: "blob".into(),
            rev: None,
        }),
    );
    let (mut reads, mut received, mut announced) = (0, 0u64, None);
    let mut answer = None;
    loop {
        let mut moved = false;
        while let Some(f) = client.peek_frame().map(<[u8]>::to_vec) {
            client.advance_frame();
            server.handle_frame(now, &f).unwrap();
            moved = true;
        }
        while let Some((id, req)) = server.poll_store_request() {
            reads += 1;
            let r = if ranges {
                db.execute(req)
            } else {
                whole_only(db, req)
            };
            server.handle_store_result(now, id, r);
            moved = true;
        }
        while let Some(f) = server.peek_frame() {
            moved = true;
            if assemble {
                client.handle_frame(now, f).unwrap();
            } else {
                let fr = Frame::decode(f).unwrap();
                match fr.kind {
                    Kind::Response => announced = Some(Reply::decode(fr.payload).unwrap()),
                    Kind::Binary => {
                        for (i, b) in fr.payload.iter().enumerate() {
                            assert_eq!(*b, byte(received + i as u64), "byte {}", received);
                        }
                        received += fr.payload.len() as u64;
                    }
                    k => panic!("{k:?}"),
                }
            }
            server.advance_frame();
        }
        while let Some(e) = client.poll_event() {
            if let ClientEvent::Response { call: c, result } = e {
                assert_eq!(c, call);
                answer = Some(result.unwrap().into_attachment().unwrap());
            }
        }
        if !moved {
            break;
        }
    }
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    let rss_peak = rss_base.and_then(|b| Some(status_kib("VmHWM:")?.saturating_sub(b) << 10));
    if assemble {
        let a = answer.expect("an answer");
        assert_eq!(a.digest, digest);
        assert_eq!(a.data.len() as u64, len);
        assert!(a.data.iter().enumerate().all(|(i, b)| *b == byte(i as u64)));
    } else {
        assert_eq!(received, len);
        assert_eq!(
            announced,
            Some(Reply::Attachment {
                content_type: "a/b".into(),
                digest: digest.into(),
                length: len,
            })
        );
    }
    Served {
        peak,
        rss_peak,
        reads,
    }
}

/// A field of `/proc/self/status`, in KiB.
fn status_kib(field: &str) -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line[field.len()..]
        .trim()
        .trim_end_matches(" kB")
        .parse()
        .ok()
}

/// Resets the process's peak resident memory to its current one (Linux `clear_refs` 5);
/// returns the current one, in KiB.
fn reset_rss_peak() -> Option<usize> {
    std::fs::write("/proc/self/clear_refs", "5").ok()?;
    status_kib("VmRSS:")
}

fn measure(len: u64) -> [Served; 3] {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.peerpouch");
    let digest = file_with_attachment(&path, len);
    let mut db = SqliteStore::open_with(&path, OpenOptions::new().cache_bytes(1 << 20)).unwrap();
    let chunked = serve(&mut db, &digest, len, true, false);
    let whole = serve(&mut db, &digest, len, false, false);
    let received = serve(&mut db, &digest, len, true, true);
    let mib = |n: usize| n as f64 / (1 << 20) as f64;
    let rss = |s: &Served| s.rss_peak.map_or("?".into(), |n| format!("{:.1}", mib(n)));
    eprintln!(
        "attachment of {:.0} MiB: server heap peak {:.2} MiB in chunks ({} reads), {:.1} MiB \
         whole; client receiving it whole {:.1} MiB. Peak RSS above the start: {} MiB in \
         chunks, {} MiB whole, {} MiB received whole",
        mib(len as usize),
        mib(chunked.peak),
        chunked.reads,
        mib(whole.peak),
        mib(received.peak),
        rss(&chunked),
        rss(&whole),
        rss(&received),
    );
    [chunked, whole, received]
}

#[test]
fn serving_an_attachment_holds_two_chunks_of_it() {
    let len = 8 << 20;
    let [chunked, whole, _] = measure(len);
    // Two 64 KiB chunks queued plus the one being read, the metadata and the machines' own.
    assert!(chunked.peak < 512 << 10, "{} bytes held", chunked.peak);
    assert_eq!(chunked.reads, (len as usize).div_ceil(4 * (16 * 1024 - 6)));
    assert!(whole.peak >= len as usize, "the whole way holds it all");
}

#[test]
#[ignore = "256 MiB: run with --release -- --ignored"]
fn serving_a_256_mib_attachment_holds_two_chunks_of_it() {
    let [chunked, ..] = measure(256 << 20);
    assert!(chunked.peak < 512 << 10, "{} bytes held", chunked.peak);
}

/// Replicates document `f` with its attachment between two SQLite files, one of them served
/// over the RPC machines (the source when `pull`, else the target), and checks every byte on
/// the far side; returns the heap peak of the whole process (both sides and the replication)
/// above where it started. `range` is [`ReplicatorConfig::attachment_range`].
fn replicate_over_rpc(len: u64, pull: bool, range: Option<u64>) -> usize {
    use peerpouch::{Endpoint, ReplicationEvent, Replicator, ReplicatorConfig};
    use std::collections::BTreeMap;
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let (from, to) = (dir.path().join("from.db"), dir.path().join("to.db"));
    let digest = file_with_attachment(&from, len);
    let open = |p: &std::path::Path| {
        SqliteStore::open_with(p, OpenOptions::new().cache_bytes(1 << 20)).unwrap()
    };
    let (mut source, mut target) = (open(&from), open(&to));
    #[allow(clippy::disallowed_methods)]
    let now = Instant::now();
    let mut server = RpcServer::new(
        ServerConfig::new("share-x", "sha-256 AA", "sha-256 CC"),
        now,
    );
    let mut client = RpcClient::new(
        ClientConfig::new("share-x", "peer-y", "sha-256 CC", "sha-256 AA"),
        now,
    );
    let remote = if pull {
        Endpoint::Source
    } else {
        Endpoint::Target
    };
    let base = HELD.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let config = ReplicatorConfig::new("from", "to").attachment_range(range);
    let mut rep = Replicator::new(config, 1);
    let mut calls = BTreeMap::new();
    let mut done = None;
    while done.is_none() {
        let mut moved = false;
        while let Some(req) = rep.poll_request() {
            moved = true;
            let local = match req.endpoint {
                e if e == remote => {
                    calls.insert(client.call(now, req.request), req.id);
                    continue;
                }
                Endpoint::Source => &mut source,
                Endpoint::Target => &mut target,
            };
            let result = local.execute(req.request);
            rep.handle_response(now, req.id, result).unwrap();
        }
        while let Some(f) = client.peek_frame().map(<[u8]>::to_vec) {
            client.advance_frame();
            server.handle_frame(now, &f).unwrap();
            moved = true;
        }
        while let Some((id, req)) = server.poll_store_request() {
            let served = if pull { &mut source } else { &mut target };
            let result = served.execute(req);
            server.handle_store_result(now, id, result);
            moved = true;
        }
        while let Some(f) = server.peek_frame().map(<[u8]>::to_vec) {
            server.advance_frame();
            client.handle_frame(now, &f).unwrap();
            moved = true;
        }
        while let Some(e) = client.poll_event() {
            if let ClientEvent::Response { call, result } = e {
                rep.handle_response(now, calls.remove(&call).unwrap(), result)
                    .unwrap();
                moved = true;
            }
        }
        while let Some(e) = rep.poll_event() {
            match e {
                ReplicationEvent::Completed(p) => done = Some(p),
                ReplicationEvent::Failed { error, .. } => panic!("{error}"),
                _ => {}
            }
        }
        assert!(moved || done.is_some(), "the replication stalled");
    }
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(base);
    drop((rep, client, server));
    let progress = done.unwrap();
    assert_eq!(progress.docs_written, 1);
    let expect_moved = if range.is_some_and(|r| r < len) {
        len
    } else {
        0
    };
    assert_eq!(progress.attachment_bytes, expect_moved);
    let mut copy = open(&to);
    let mut at = 0;
    while at < len {
        let part = copy.read_attachment("f", "blob", at, 1 << 20).unwrap();
        assert_eq!(part.digest, digest);
        for (i, b) in part.data.iter().enumerate() {
            assert_eq!(*b, byte(at + i as u64), "byte {}", at + i as u64);
        }
        at += part.data.len() as u64;
    }
    assert_eq!(at, len);
    assert_eq!(copy.attachment_blobs().unwrap(), 1);
    peak
}

#[test]
fn replicating_an_attachment_over_a_link_holds_a_few_ranges_of_it_either_way() {
    let len = 24 << 20;
    let mib = |n: usize| n as f64 / (1 << 20) as f64;
    let pull = replicate_over_rpc(len, true, Some(1 << 20));
    let push = replicate_over_rpc(len, false, Some(1 << 20));
    let inline = replicate_over_rpc(len, true, None);
    eprintln!(
        "replicating a {:.0} MiB attachment: heap peak {:.1} MiB pulled in ranges, {:.1} MiB \
         pushed in ranges, {:.1} MiB pulled inline",
        mib(len as usize),
        mib(pull),
        mib(push),
        mib(inline)
    );
    // Four ranges read ahead, one being written, their JSON on the way, the machines' own.
    assert!(pull < 12 << 20, "pull held {:.1} MiB", mib(pull));
    assert!(push < 12 << 20, "push held {:.1} MiB", mib(push));
    assert!(inline > len as usize, "inline holds it all");
}

#[test]
#[ignore = "256 MiB: run with --release -- --ignored"]
fn replicating_a_256_mib_attachment_holds_a_few_ranges_of_it() {
    let len = 256 << 20;
    let pull = replicate_over_rpc(len, true, Some(1 << 20));
    let push = replicate_over_rpc(len, false, Some(1 << 20));
    eprintln!(
        "replicating a 256 MiB attachment: heap peak {:.1} MiB pulled, {:.1} MiB pushed",
        pull as f64 / (1 << 20) as f64,
        push as f64 / (1 << 20) as f64
    );
    assert!(pull < 12 << 20 && push < 12 << 20);
}
