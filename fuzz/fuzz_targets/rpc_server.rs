//! An `RpcServer` over a pre-filled `MemoryStore`, driven by `Arbitrary` operations from a client
//! that may misbehave and a driver that may be slow.
//!
//! The input picks a server configuration (read-only or not, an access key or not, frame size,
//! window, `max_concurrent`, `max_in_flight`, `max_message`), the client's hello (valid, or
//! corrupted, or never sent; offering zstd or not, so the server's answers come compressed or
//! plain) and up to `MAX_OPS` operations: well-formed calls and subscriptions
//! built from small choices (`ReqSpec`), cancels, calls cut into frames at arbitrary points or
//! interleaved with another call, odd JSON calls, raw messages and raw frames, a goodbye, the
//! sharer writing to its store, db-changed notifications, executing / failing / dropping
//! pending store requests (in any order), stale results, draining some or all output frames
//! (a slow reader), waiting (the hello timeout) and the link closing.
//!
//! After every step (each frame in, each store result, each frame out) it checks:
//! - no panic; `is_closed()`, `poll_timeout()` and the events agree (one `Ready` at most, one
//!   `Closed` at most, never `Ready` after `Closed`); the server accepted only a hello that is
//!   valid (version, role, share, proof when keyed);
//! - store requests come only after `ServerEvent::Ready` and never after `ServerEvent::Closed`;
//!   each one is a request a client call carried (matched exactly, consumed once; a
//!   `get_attachment` call as the read of its first chunk), a read of a later chunk of an
//!   attachment the server started to send, or a changes query of a subscription the client
//!   opened; on a read-only share every write that reaches
//!   the store is `_local` only;
//! - the store's non-`_local` state (revision trees, `update_seq`) changes only when a write the
//!   server emitted is executed, or the sharer writes itself; on a read-only share, only then;
//! - flow control (`issue-gate`): new store requests are issued only while fewer than `window`
//!   bytes wait (plus one read-only refusal, which `pump` pushes before re-checking) and at most
//!   `max_concurrent` are outstanding;
//! - the queue bound (`queue-bound`): `queued_bytes() <= window + max_concurrent * A + slack`,
//!   where `A` is the largest answer the server could have queued for any store result fed so
//!   far, measured exactly in frame bytes (JSON of the `Reply` / stream item / stream end split
//!   at the negotiated frame size; for an attachment, metadata plus binary), and
//!   `slack = 512 (one refusal) + the server's hello + 64 * max_in_flight (stream ends of
//!   cancelled subscriptions)`; after `Closed` the queue never grows, after
//!   `handle_link_closed` it is empty (`link-closed`); `peek_frame()` is `Some`
//!   exactly when bytes are queued; a stale store result (already answered or never issued)
//!   changes nothing;
//! - every output frame (`frame-size`) is non-empty, at least the header, at most the negotiated
//!   frame size (before the client's hello checked out: the server's own);
//! - the output frames decode and reassemble (`Frame::decode`, `Assembler`) without error into
//!   messages of the expected shape: the server's hello first (`hello-first`; a `wire::Hello`
//!   with role, version, share, echoed peer, limits, read-only flag, a valid proof when keyed),
//!   `Reply` for responses (never more than the calls sent on that id), `ChangesResponse` with
//!   rows for stream items (only on an open subscription), `StreamEnd`, `CouchError` for the
//!   goodbye (id 0, once), binary only right after attachment metadata of the same id and of
//!   the announced length (shorter only when the call was cancelled); never a request or a cancel;
//! - (`max-message`) no answer (response, binary, stream item or end) is larger than the
//!   `max_message` of the client's hello;
//! - at the end, after the driver executes everything and reads everything, a server that is
//!   still open has answered every call on every id that was never cancelled (when no store
//!   request was dropped).
//!
//! An open finding trips its check within seconds. To fuzz past it until it is fixed, set
//! `RPC_SERVER_FUZZ_SKIP` to a comma-separated list of check names: `issue-gate`, `queue-bound`,
//! `frame-size`, `hello-first`, `link-closed`, `max-message`, or `stream-max-message` (only
//! stream items may exceed the client's `max_message`). None is open now (see `fuzz/README.md`).
//!
//! With `RPC_SERVER_FUZZ_STATS` set, each input prints one line of what happened (store requests,
//! writes, the largest answer, the most bytes queued, messages by kind): replaying a corpus with
//! `-runs=0` measures the figures behind the queue bound (see `fuzz/README.md`).
#![no_main]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peerpouch::rpc::frame::{split, Assembler, Frame, Kind, Message, HEADER_LEN, MIN_FRAME};
use peerpouch::rpc::wire::{
    check_proof, make_proof, Call, Hello, Reply, Role, StreamEnd, CAPABILITIES, CAP_ZSTD,
    PROTOCOL_VERSION,
};
use peerpouch::rpc::{RpcServer, ServerConfig, ServerEvent, StoreRequestId, MAX_FRAME};
use peerpouch::{
    AllDocsRequest, AttachmentPartRequest, AttachmentRequest, AttachmentSource, BulkDocsRequest,
    BulkGetItem, BulkGetRequest, ChangesRequest, ChangesResponse, ChangesStyle, CouchError,
    Database, DbError, DeleteLocalRequest, Doc, Feed, GetRequest, LocalRequest, MemoryStore,
    OpenRevs, OpenRevsRequest, PutLocalRequest, Request, Response, Rev, RevsDiffRequest, Seq,
    StageRequest,
};
use serde_json::{json, Value};

const SHARE: &str = "share-fuzz";
const FP_S: &str = "sha-256 AA:AA";
const FP_C: &str = "sha-256 CC:CC";
const KEY: &[u8] = b"fuzz key";
/// Most operations per input.
const MAX_OPS: usize = 64;
/// Longest vector taken from any `Vec` in an operation.
const MAX_ITEMS: usize = 8;
/// What one read-only refusal may add past the window.
const REFUSAL_SLACK: usize = 512;
/// What the stream end of one cancelled subscription adds (`{"error":null}` and a header).
const STREAM_END_SLACK: usize = 64;

fn skipped(check: &str) -> bool {
    static SKIP: OnceLock<Vec<String>> = OnceLock::new();
    SKIP.get_or_init(|| {
        std::env::var("RPC_SERVER_FUZZ_SKIP")
            .map(|s| s.split(',').map(|x| x.trim().to_string()).collect())
            .unwrap_or_default()
    })
    .iter()
    .any(|s| s == check)
}

fn base_instant() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

// ---------------------------------------------------------------------------------------------
// The input.

#[derive(Arbitrary, Debug)]
struct Input {
    setup: Setup,
    hello: HelloSpec,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
struct Setup {
    read_only: bool,
    keyed: bool,
    frame: u8,
    window: u8,
    max_concurrent: u8,
    max_in_flight: u8,
    max_message: u8,
    attachment_chunk: u8,
}

impl Setup {
    fn config(&self) -> ServerConfig {
        let mut c = ServerConfig::new(SHARE, FP_S, FP_C);
        c.read_only = self.read_only;
        c.access_key = self.keyed.then(|| KEY.to_vec());
        c.frame_size = [1024, 4096, 16 * 1024, 64 * 1024, 0, 1 << 20][usize::from(self.frame) % 6];
        c.window = [1024, 4096, 16 * 1024, 64 * 1024, 1 << 20][usize::from(self.window) % 5];
        c.max_concurrent = 1 + usize::from(self.max_concurrent % 4);
        c.max_in_flight = 1 + usize::from(self.max_in_flight % 8);
        c.max_message = [4 * 1024, 64 * 1024, 1 << 20][usize::from(self.max_message) % 3];
        // One frame payload per chunk, a few, or the default.
        c.attachment_chunk = [1, 4096, 64 * 1024][usize::from(self.attachment_chunk) % 3];
        c
    }
}

#[derive(Arbitrary, Debug)]
struct HelloSpec {
    peer: u8,
    frame: u8,
    max_message: u8,
    /// The client offers zstd: the server then compresses its larger answers.
    zstd: bool,
    proof: ProofSpec,
    corrupt: Option<Corruption>,
    cuts: Vec<u16>,
}

#[derive(Arbitrary, Debug)]
enum ProofSpec {
    Right,
    Missing,
    WrongKey,
    /// Bound to a fingerprint a man in the middle shows.
    OtherFingerprint,
    Garbage(String),
}

#[derive(Arbitrary, Debug)]
enum Corruption {
    Version(u32),
    ServerRole,
    OtherShare,
    Flip {
        at: u16,
        xor: u8,
    },
    Truncate {
        at: u16,
    },
    /// The hello's bytes as a message of another kind.
    OtherKind(u8),
    /// No hello at all.
    Skip,
}

/// A call id: mostly a few small ones (so ids collide), sometimes 0 or `u32::MAX`.
#[derive(Arbitrary, Debug, Clone, Copy)]
struct IdSel(u8);

impl IdSel {
    fn id(self) -> u32 {
        match self.0 % 16 {
            15 => u32::MAX,
            n => u32::from(n % 7),
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    Call {
        id: IdSel,
        req: ReqSpec,
    },
    Subscribe {
        id: IdSel,
        spec: ChangesSpec,
    },
    Cancel {
        id: IdSel,
    },
    /// A call cut into frames at these points (each chunk one frame, `MORE` on all but the last).
    Cut {
        id: IdSel,
        req: ReqSpec,
        cuts: Vec<u16>,
    },
    /// Two calls' frames interleaved.
    Interleave {
        a: IdSel,
        ra: ReqSpec,
        cuts_a: Vec<u16>,
        b: IdSel,
        rb: ReqSpec,
        cuts_b: Vec<u16>,
        order: Vec<bool>,
    },
    OddCall {
        id: IdSel,
        which: u8,
    },
    RawMessage {
        kind: u8,
        id: IdSel,
        payload: Vec<u8>,
    },
    RawFrame(Vec<u8>),
    ClientGoodbye {
        valid: bool,
    },
    DbChanged,
    SharerWrite(DocSpec),
    Execute {
        index: u8,
    },
    ExecuteAll,
    /// Answers a pending store request with an error or a response of the wrong kind.
    Fail {
        index: u8,
        how: u8,
    },
    /// Never answers a pending store request.
    Drop {
        index: u8,
    },
    /// Answers a store request id that was answered already or never issued.
    Stale {
        pick: u8,
    },
    Drain {
        frames: u8,
    },
    DrainAll,
    Wait {
        secs: u8,
    },
    LinkClosed,
}

const DOC_IDS: &[&str] = &[
    "a",
    "b",
    "c",
    "d",
    "e",
    "zz",
    "_design/x",
    "_local/x",
    "",
    "_bad",
];
const LOCAL_IDS: &[&str] = &["x", "_local/x", "y", "_local/y", "_local/", ""];
/// `f.txt`'s and `big.bin`'s digests, that of bytes `0, 1, 2, ...` 300 long (a `StageAttachment`
/// of 300 bytes from 0 completes it), one no bytes here have, and a malformed one.
const DIGESTS: &[&str] = &[
    "md5-XUFAKrxLKna5cZ2REBfFkg==",
    "md5-BGsyOeqt4wkgBp8XFRjZVg==",
    "md5-F7ODkgT3uBqT6ycYsTeebw==",
    "md5-ndTkYSaMgDT1yFZOFVxnpg==",
    "md5-bad",
];
const KNOWN_REVS: &[&str] = &[
    "1-aaa",
    "2-bbb",
    "2-ccc",
    "1-0123456789abcdef0123456789abcdef",
    "0-1",
];
const ATT_DATA: &[&str] = &["aGVsbG8=", "", "AAECAwQ="];

fn pick<'a>(list: &[&'a str], i: u8) -> &'a str {
    list[usize::from(i) % list.len()]
}

#[derive(Arbitrary, Debug)]
enum RevSpec {
    None,
    Current,
    Known(u8),
    Forged { pos: u8, hash: u8 },
}

#[derive(Arbitrary, Debug)]
struct DocSpec {
    id: Option<u8>,
    rev: RevSpec,
    value: u8,
    deleted: bool,
    att: Option<u8>,
    /// Padding, 16 bytes per unit, so answers can fill a window.
    pad: u8,
    revisions: bool,
}

#[derive(Arbitrary, Debug)]
struct ChangesSpec {
    since: u8,
    limit: Option<u8>,
    include_docs: bool,
    all_docs_style: bool,
    doc_ids: Option<Vec<u8>>,
    descending: bool,
    conflicts: bool,
    longpoll: bool,
}

#[derive(Arbitrary, Debug)]
enum ReqSpec {
    Info,
    Get {
        id: u8,
        rev: RevSpec,
        revs: bool,
        conflicts: bool,
        deleted_conflicts: bool,
        attachments: bool,
        latest: bool,
    },
    OpenRevs {
        id: u8,
        all: bool,
        revs: Vec<RevSpec>,
        with_revs: bool,
        attachments: bool,
        latest: bool,
    },
    AllDocs {
        keys: Option<Vec<u8>>,
        start: Option<u8>,
        end: Option<u8>,
        inclusive_end: bool,
        limit: Option<u8>,
        skip: u8,
        descending: bool,
        include_docs: bool,
        conflicts: bool,
    },
    BulkDocs {
        docs: Vec<DocSpec>,
        new_edits: bool,
    },
    Changes(ChangesSpec),
    RevsDiff {
        entries: Vec<(u8, Vec<RevSpec>)>,
    },
    BulkGet {
        items: Vec<(u8, RevSpec)>,
        revs: bool,
        attachments: bool,
        latest: bool,
        inline_max: Option<u16>,
    },
    GetAttachment {
        id: u8,
        name: u8,
        rev: RevSpec,
    },
    /// A range of an attachment, by its document or by a digest.
    ReadAttachment {
        id: u8,
        name: u8,
        by_digest: Option<u8>,
        offset: u32,
        len: u32,
    },
    /// A range of bytes to receive: of the store's own attachments' digests or another one.
    StageAttachment {
        digest: u8,
        length: u16,
        offset: u16,
        len: u16,
    },
    GetLocal {
        id: u8,
    },
    PutLocal {
        id: u8,
        value: u8,
        current: bool,
        pad: u8,
    },
    DeleteLocal {
        id: u8,
        current: bool,
    },
}

/// Calls the server must refuse or treat specially, and a few valid oddities.
const ODD_CALLS: &[&str] = &[
    r#"{"call":{"op":"destroy"}}"#,
    r#"{"call":{"op":"compact"}}"#,
    r#"{"frobnicate":{}}"#,
    r#"{"call":{"op":"get"}}"#,
    r#"{"subscribe":{"since":{}}}"#,
    r#"{"subscribe":{"since":"0","feed":"longpoll","timeout_ms":1}}"#,
    r#"{"call":{"op":"changes","feed":"longpoll","timeout_ms":0}}"#,
    r#"{"call":{"op":"bulk_docs","docs":[{"_id":"_local/r"}],"new_edits":false}}"#,
    r#"{"call":{"op":"bulk_docs","docs":[5,"x",null,{"_id":"_local/"}]}}"#,
    r#"{"call":{"op":"info"},"subscribe":{}}"#,
    r#"[]"#,
    r#"null"#,
    r#"{"call":null}"#,
    r#"{"call":{"op":"get_local","id":"_local/"}}"#,
    r#"{"call":{"op":"all_docs","start_key":"z","end_key":"a"}}"#,
];

// ---------------------------------------------------------------------------------------------
// The store.

/// A plain doc, a conflicted doc, a deleted doc, a doc with a small attachment and one of
/// several frames (sent in several chunks), a larger doc and a `_local` doc.
fn prefilled() -> MemoryStore {
    let mut db = MemoryStore::new("served");
    db.put(json!({"_id": "a", "v": 1})).expect("a");
    let rows = db
        .bulk_docs(
            vec![
                json!({"_id": "b", "_rev": "1-aaa", "v": 1}),
                json!({"_id": "b", "_rev": "2-bbb", "_revisions": {"start": 2, "ids": ["bbb", "aaa"]}, "v": 2}),
                json!({"_id": "b", "_rev": "2-ccc", "_revisions": {"start": 2, "ids": ["ccc", "aaa"]}, "v": 3}),
            ],
            false,
        )
        .expect("b");
    assert!(rows.iter().all(|r| r.result.is_ok()));
    let c = db.put(json!({"_id": "c", "v": 1})).expect("c");
    db.put(json!({"_id": "c", "_rev": c.to_string(), "_deleted": true}))
        .expect("delete c");
    let big: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
    let big = serde_json::to_value(peerpouch::AttachmentData {
        content_type: String::new(),
        digest: String::new(),
        data: big.into(),
    })
    .expect("base64")["data"]
        .take();
    db.put(json!({
        "_id": "d",
        "_attachments": {
            "f.txt": {"content_type": "text/plain", "data": "aGVsbG8="},
            "big.bin": {"content_type": "application/octet-stream", "data": big}
        }
    }))
    .expect("d");
    db.put(json!({"_id": "e", "pad": "e".repeat(2000)}))
        .expect("e");
    let mut local = Doc::new();
    local.insert("v".into(), json!(1));
    db.put_local("_local/x", local).expect("local");
    db
}

/// What of the store the server may change only through the requests it emits.
type Snapshot = (BTreeMap<String, BTreeSet<(Rev, Option<Rev>, bool)>>, u64);

fn snapshot(db: &MemoryStore) -> Snapshot {
    (db.tree_shapes(), db.update_seq())
}

fn current_rev(db: &mut MemoryStore, id: &str) -> Option<Rev> {
    db.get(id).ok()?.get("_rev")?.as_str()?.parse().ok()
}

fn current_local_rev(db: &mut MemoryStore, id: &str) -> Option<Rev> {
    db.get_local(id).ok()?.get("_rev")?.as_str()?.parse().ok()
}

fn rev_of(db: &mut MemoryStore, spec: &RevSpec, id: &str) -> Option<Rev> {
    match spec {
        RevSpec::None => None,
        RevSpec::Current => current_rev(db, id),
        RevSpec::Known(i) => pick(KNOWN_REVS, *i).parse().ok(),
        RevSpec::Forged { pos, hash } => {
            Some(Rev::new(1 + u64::from(pos % 4), format!("f{}", hash % 4)))
        }
    }
}

fn doc_json(db: &mut MemoryStore, d: &DocSpec) -> Value {
    let mut doc = json!({"v": d.value});
    let id = d.id.map(|i| pick(DOC_IDS, i).to_string());
    if let Some(id) = &id {
        doc["_id"] = json!(id);
    }
    let rev = rev_of(db, &d.rev, id.as_deref().unwrap_or(""));
    if let Some(rev) = &rev {
        doc["_rev"] = json!(rev.to_string());
        if d.revisions {
            doc["_revisions"] = json!({"start": rev.pos, "ids": [rev.hash]});
        }
    }
    if d.deleted {
        doc["_deleted"] = json!(true);
    }
    if let Some(a) = d.att {
        let name = format!("f{}.txt", a % 2);
        let att = if a % 4 == 3 {
            json!({"stub": true})
        } else {
            json!({"content_type": "text/plain", "data": pick(ATT_DATA, a / 4)})
        };
        doc["_attachments"] = json!({ name: att });
    }
    if d.pad > 0 {
        doc["pad"] = json!("p".repeat(usize::from(d.pad) * 16));
    }
    doc
}

fn changes_request(c: &ChangesSpec) -> ChangesRequest {
    ChangesRequest {
        since: Seq::from(u64::from(c.since % 16)),
        limit: c.limit.map(|l| usize::from(l % 8)),
        include_docs: c.include_docs,
        style: if c.all_docs_style {
            ChangesStyle::AllDocs
        } else {
            ChangesStyle::MainOnly
        },
        doc_ids: c.doc_ids.as_ref().map(|v| {
            v.iter()
                .take(MAX_ITEMS)
                .map(|i| pick(DOC_IDS, *i).to_string())
                .collect()
        }),
        descending: c.descending,
        conflicts: c.conflicts,
        feed: if c.longpoll {
            Feed::Longpoll
        } else {
            Feed::Normal
        },
        timeout_ms: c.longpoll.then_some(5),
    }
}

fn build_request(db: &mut MemoryStore, spec: &ReqSpec) -> Request {
    match spec {
        ReqSpec::Info => Request::Info,
        ReqSpec::Get {
            id,
            rev,
            revs,
            conflicts,
            deleted_conflicts,
            attachments,
            latest,
        } => {
            let id = pick(DOC_IDS, *id).to_string();
            Request::Get(GetRequest {
                rev: rev_of(db, rev, &id),
                revs: *revs,
                conflicts: *conflicts,
                deleted_conflicts: *deleted_conflicts,
                attachments: *attachments,
                atts_since: Vec::new(),
                latest: *latest,
                id,
            })
        }
        ReqSpec::OpenRevs {
            id,
            all,
            revs,
            with_revs,
            attachments,
            latest,
        } => {
            let id = pick(DOC_IDS, *id).to_string();
            let open_revs = if *all {
                OpenRevs::All
            } else {
                OpenRevs::List(
                    revs.iter()
                        .take(MAX_ITEMS)
                        .filter_map(|r| rev_of(db, r, &id))
                        .collect(),
                )
            };
            Request::OpenRevs(OpenRevsRequest {
                id,
                open_revs,
                revs: *with_revs,
                attachments: *attachments,
                atts_since: Vec::new(),
                latest: *latest,
            })
        }
        ReqSpec::AllDocs {
            keys,
            start,
            end,
            inclusive_end,
            limit,
            skip,
            descending,
            include_docs,
            conflicts,
        } => Request::AllDocs(AllDocsRequest {
            keys: keys.as_ref().map(|k| {
                k.iter()
                    .take(MAX_ITEMS)
                    .map(|i| pick(DOC_IDS, *i).to_string())
                    .collect()
            }),
            start_key: start.map(|i| pick(DOC_IDS, i).to_string()),
            end_key: end.map(|i| pick(DOC_IDS, i).to_string()),
            inclusive_end: *inclusive_end,
            limit: limit.map(|l| usize::from(l % 8)),
            skip: usize::from(skip % 4),
            descending: *descending,
            include_docs: *include_docs,
            conflicts: *conflicts,
        }),
        ReqSpec::BulkDocs { docs, new_edits } => Request::BulkDocs(BulkDocsRequest {
            docs: docs
                .iter()
                .take(MAX_ITEMS)
                .map(|d| doc_json(db, d))
                .collect(),
            new_edits: *new_edits,
        }),
        ReqSpec::Changes(c) => Request::Changes(changes_request(c)),
        ReqSpec::RevsDiff { entries } => {
            let mut revs = BTreeMap::new();
            for (id, rs) in entries.iter().take(MAX_ITEMS) {
                let id = pick(DOC_IDS, *id).to_string();
                let list = rs
                    .iter()
                    .take(MAX_ITEMS)
                    .filter_map(|r| rev_of(db, r, &id))
                    .collect();
                revs.insert(id, list);
            }
            Request::RevsDiff(RevsDiffRequest { revs })
        }
        ReqSpec::BulkGet {
            items,
            revs,
            attachments,
            latest,
            inline_max,
        } => Request::BulkGet(BulkGetRequest {
            docs: items
                .iter()
                .take(MAX_ITEMS)
                .map(|(id, rev)| {
                    let id = pick(DOC_IDS, *id).to_string();
                    BulkGetItem {
                        rev: rev_of(db, rev, &id),
                        id,
                        atts_since: Vec::new(),
                    }
                })
                .collect(),
            revs: *revs,
            attachments: *attachments,
            inline_max: inline_max.map(u64::from),
            latest: *latest,
        }),
        ReqSpec::GetAttachment { id, name, rev } => {
            let id = pick(DOC_IDS, *id).to_string();
            Request::GetAttachment(AttachmentRequest {
                rev: rev_of(db, rev, &id),
                id,
                name: pick(&["f.txt", "big.bin", "nope"], *name).to_string(),
            })
        }
        ReqSpec::ReadAttachment {
            id,
            name,
            by_digest,
            offset,
            len,
        } => {
            let source = match by_digest {
                Some(d) => AttachmentSource::Digest(pick(DIGESTS, *d).to_string()),
                None => AttachmentSource::Doc(AttachmentRequest {
                    id: pick(DOC_IDS, *id).to_string(),
                    name: pick(&["f.txt", "big.bin", "nope"], *name).to_string(),
                    rev: None,
                }),
            };
            Request::ReadAttachment(AttachmentPartRequest {
                source,
                offset: u64::from(*offset),
                len: *len as usize,
            })
        }
        ReqSpec::StageAttachment {
            digest,
            length,
            offset,
            len,
        } => {
            let data: Vec<u8> = (0..*len).map(|i| i as u8).collect();
            Request::StageAttachment(StageRequest {
                digest: pick(DIGESTS, *digest).to_string(),
                content_type: "application/octet-stream".into(),
                length: u64::from(*length),
                offset: u64::from(*offset),
                data: data.into(),
            })
        }
        ReqSpec::GetLocal { id } => Request::GetLocal(LocalRequest {
            id: pick(LOCAL_IDS, *id).to_string(),
        }),
        ReqSpec::PutLocal {
            id,
            value,
            current,
            pad,
        } => {
            let id = pick(LOCAL_IDS, *id).to_string();
            let mut doc = Doc::new();
            doc.insert("v".into(), json!(value));
            if *pad > 0 {
                doc.insert("pad".into(), json!("l".repeat(usize::from(*pad) * 16)));
            }
            if *current {
                if let Some(r) = current_local_rev(db, &id) {
                    doc.insert("_rev".into(), json!(r.to_string()));
                }
            }
            Request::PutLocal(PutLocalRequest { id, doc })
        }
        ReqSpec::DeleteLocal { id, current } => {
            let id = pick(LOCAL_IDS, *id).to_string();
            let rev = if *current {
                current_local_rev(db, &id)
            } else {
                Some(Rev::new(0, "99"))
            };
            Request::DeleteLocal(DeleteLocalRequest { id, rev })
        }
    }
}

/// Whether a write touches only `_local` documents, written from the protocol doc (a read-only
/// share takes those: replication checkpoints).
fn only_local(req: &Request) -> bool {
    match req {
        Request::PutLocal(_) | Request::DeleteLocal(_) => true,
        Request::BulkDocs(b) => b.docs.iter().all(|d| {
            d.get("_id")
                .and_then(Value::as_str)
                .is_some_and(|id| id.starts_with("_local/"))
        }),
        _ => false,
    }
}

// ---------------------------------------------------------------------------------------------
// Frames.

/// Bytes `split` makes of a payload of `len` bytes at `frame` bytes per frame.
fn frame_bytes(len: usize, frame: usize) -> usize {
    let chunk = frame.max(MIN_FRAME) - HEADER_LEN;
    len + HEADER_LEN * len.div_ceil(chunk).max(1)
}

macro_rules! json_len {
    ($v:expr) => {
        serde_json::to_vec($v).expect("serialises").len()
    };
}

/// The most a store result can make the server queue, however the call it answers stands.
fn answer_bytes(result: &Result<Response, DbError>, frame: usize) -> usize {
    let b = |len| frame_bytes(len, frame);
    match result {
        Ok(Response::Attachment(a)) => {
            b(json_len!(&Reply::Attachment {
                content_type: a.content_type.clone(),
                digest: a.digest.clone(),
                length: a.data.len() as u64,
            })) + b(a.data.len())
        }
        // A chunk of a `get_attachment` goes out after `Reply::Attachment`, a range a peer read
        // after the larger `Reply::AttachmentPart` (its bytes compressed only when smaller).
        Ok(Response::AttachmentPart(p)) => {
            b(json_len!(&Reply::AttachmentPart {
                content_type: p.content_type.clone(),
                digest: p.digest.clone(),
                length: p.length,
                offset: p.offset,
                size: p.data.len() as u64,
            })) + b(p.data.len())
        }
        Ok(Response::Changes(c)) => {
            b(json_len!(&Reply::Ok(Response::Changes(c.clone())))).max(b(json_len!(c)))
        }
        Ok(r) => b(json_len!(&Reply::Ok(r.clone()))),
        Err(e) => {
            let c = CouchError::from(e.clone());
            b(json_len!(&Reply::Err(c.clone()))).max(b(json_len!(&StreamEnd { error: Some(c) })))
        }
    }
}

/// A message cut into one frame per chunk between the cut points.
fn cut_frames(kind: Kind, id: u32, payload: &[u8], cuts: &[u16], frame: usize) -> Vec<Vec<u8>> {
    if cuts.is_empty() {
        return split(kind, id, payload, frame);
    }
    let mut points: Vec<usize> = cuts
        .iter()
        .take(16)
        .map(|c| usize::from(*c) % (payload.len() + 1))
        .collect();
    points.push(payload.len());
    points.sort_unstable();
    points.dedup();
    let mut frames = Vec::new();
    let mut start = 0;
    for end in points {
        frames.push(
            Frame {
                kind,
                id,
                more: end != payload.len(),
                compressed: false,
                payload: &payload[start..end],
            }
            .encode(),
        );
        start = end;
    }
    frames
}

fn kind_of(b: u8) -> Option<Kind> {
    Some(match b {
        1 => Kind::Hello,
        2 => Kind::Request,
        3 => Kind::Response,
        4 => Kind::StreamItem,
        5 => Kind::StreamEnd,
        6 => Kind::Cancel,
        7 => Kind::Binary,
        8 => Kind::Goodbye,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------------
// The harness.

struct Pending {
    sid: StoreRequestId,
    req: Request,
}

/// What the client sent and the server answered, per call id.
#[derive(Default, Debug)]
struct IdLog {
    /// Requests that parse as `Call::Call`.
    calls: u32,
    /// Requests that are JSON but no `Call`: answered at once with an error.
    bad: u32,
    subs: u32,
    cancels: u32,
    responses: u32,
    stream_ends: u32,
}

/// What happened, for `RPC_SERVER_FUZZ_STATS`.
#[derive(Default, Debug)]
struct Stats {
    requests: BTreeMap<&'static str, usize>,
    writes: usize,
    max_queued: usize,
    messages: BTreeMap<String, usize>,
}

/// What a step started from.
#[derive(Clone, Copy, Default)]
struct Step {
    queued_before: usize,
    closed_before: bool,
    /// This step fed a stale result: nothing may change.
    stale: bool,
}

struct Harness {
    now: Instant,
    read_only: bool,
    keyed: bool,
    window: usize,
    max_concurrent: usize,
    max_in_flight: usize,
    server_frame: usize,
    server: RpcServer,
    db: MemoryStore,
    /// The store as the server's requests and the sharer left it.
    expected: Snapshot,

    // The client side: what the server's assembler sees, mirrored.
    mirror: Assembler,
    mirror_broken: bool,
    sent: Vec<Request>,
    subs: Vec<ChangesRequest>,
    /// Digests of attachments the server started to send: it reads their later chunks.
    reading: BTreeSet<String>,
    ids: BTreeMap<u32, IdLog>,

    // What the server did.
    ready: Option<Hello>,
    closed: bool,
    issued: BTreeSet<StoreRequestId>,
    outstanding: BTreeSet<StoreRequestId>,
    answered: Vec<StoreRequestId>,
    pending: Vec<Pending>,
    dropped: bool,
    largest_answer: usize,
    hello_bytes: usize,
    served: u64,
    stats: Stats,

    // The output, as the client reads it.
    out: Assembler,
    hello_seen: bool,
    goodbye_seen: bool,
    pending_binary: BTreeMap<u32, u64>,
}

impl Harness {
    fn new(setup: &Setup) -> Harness {
        let cfg = setup.config();
        let now = base_instant();
        let server_frame = cfg.frame_size.clamp(MIN_FRAME, MAX_FRAME);
        let db = prefilled();
        let expected = snapshot(&db);
        Harness {
            now,
            read_only: cfg.read_only,
            keyed: cfg.access_key.is_some(),
            window: cfg.window,
            max_concurrent: cfg.max_concurrent,
            max_in_flight: cfg.max_in_flight,
            server_frame,
            mirror: {
                // The server takes compressed frames when it offers them (the default).
                let mut a = Assembler::new(cfg.max_message, server_frame);
                a.accept_compressed(cfg.compress);
                a
            },
            server: RpcServer::new(cfg, now),
            db,
            expected,
            mirror_broken: false,
            sent: Vec::new(),
            subs: Vec::new(),
            reading: BTreeSet::new(),
            ids: BTreeMap::new(),
            ready: None,
            closed: false,
            issued: BTreeSet::new(),
            outstanding: BTreeSet::new(),
            answered: Vec::new(),
            pending: Vec::new(),
            dropped: false,
            largest_answer: 0,
            hello_bytes: 0,
            served: 0,
            stats: Stats::default(),
            out: Assembler::new(1 << 30, MAX_FRAME),
            hello_seen: false,
            goodbye_seen: false,
            pending_binary: BTreeMap::new(),
        }
    }

    /// The frame size both sides agreed on (the server's own before the client's hello).
    fn frame(&self) -> usize {
        match &self.ready {
            Some(h) => h.frame.clamp(MIN_FRAME, MAX_FRAME).min(self.server_frame),
            None => self.server_frame,
        }
    }

    fn step(&self) -> Step {
        Step {
            queued_before: self.server.queued_bytes(),
            closed_before: self.closed,
            ..Step::default()
        }
    }

    // -- client to server ----------------------------------------------------------------------

    fn send_hello(&mut self, spec: &HelloSpec) {
        let peer = match spec.peer % 4 {
            0 | 1 => "peer-y".to_string(),
            2 => format!("peer-{}", "x".repeat(usize::from(spec.peer / 4) * 32)),
            _ => String::new(),
        };
        let frame = [
            16 * 1024,
            1024,
            0,
            4096,
            64 * 1024,
            1 << 20,
            1500,
            usize::MAX,
        ][usize::from(spec.frame) % 8];
        let max_message = [256 << 20, 4096, 64 * 1024, 1 << 20][usize::from(spec.max_message) % 4];
        let proof = match &spec.proof {
            ProofSpec::Right => Some(make_proof(KEY, Role::Client, SHARE, &peer, FP_C, FP_S)),
            ProofSpec::Missing => None,
            ProofSpec::WrongKey => {
                Some(make_proof(b"wrong", Role::Client, SHARE, &peer, FP_C, FP_S))
            }
            ProofSpec::OtherFingerprint => Some(make_proof(
                KEY,
                Role::Client,
                SHARE,
                &peer,
                FP_C,
                "sha-256 MITM",
            )),
            ProofSpec::Garbage(s) => Some(s.clone()),
        };
        let mut hello = Hello {
            v: PROTOCOL_VERSION,
            role: Role::Client,
            share: SHARE.into(),
            peer,
            caps: CAPABILITIES
                .iter()
                .chain(spec.zstd.then_some(&CAP_ZSTD))
                .map(|s| s.to_string())
                .collect(),
            frame,
            max_message,
            max_in_flight: 0,
            read_only: false,
            proof,
            db_uuid: None,
        };
        let mut kind = Kind::Hello;
        let mut bytes = None;
        match &spec.corrupt {
            None => {}
            Some(Corruption::Version(v)) => hello.v = *v,
            Some(Corruption::ServerRole) => hello.role = Role::Server,
            Some(Corruption::OtherShare) => hello.share = "share-other".into(),
            Some(Corruption::Flip { at, xor }) => {
                let mut b = serde_json::to_vec(&hello).expect("hello");
                let i = usize::from(*at) % b.len();
                b[i] ^= xor;
                bytes = Some(b);
            }
            Some(Corruption::Truncate { at }) => {
                let mut b = serde_json::to_vec(&hello).expect("hello");
                b.truncate(usize::from(*at) % b.len());
                bytes = Some(b);
            }
            Some(Corruption::OtherKind(k)) => {
                kind = kind_of(2 + k % 7).expect("a kind");
            }
            Some(Corruption::Skip) => return,
        }
        let bytes = bytes.unwrap_or_else(|| serde_json::to_vec(&hello).expect("hello"));
        self.out.accept_compressed(spec.zstd);
        let frames = cut_frames(kind, 0, &bytes, &spec.cuts, self.frame());
        self.deliver(frames);
    }

    fn send_message(&mut self, kind: Kind, id: u32, payload: &[u8], cuts: &[u16]) {
        let frames = cut_frames(kind, id, payload, cuts, self.frame());
        self.deliver(frames);
    }

    fn call_payload(&mut self, req: &ReqSpec) -> Vec<u8> {
        let r = build_request(&mut self.db, req);
        serde_json::to_vec(&Call::Call(r)).expect("call")
    }

    /// Notes what a whole client message means to the server (as its assembler sees it).
    fn record_client_message(&mut self, m: &Message) {
        if self.ready.is_none() {
            return;
        }
        let log = self.ids.entry(m.id).or_default();
        match m.kind {
            Kind::Request => {
                let Ok(v) = serde_json::from_slice::<Value>(&m.payload) else {
                    return;
                };
                match serde_json::from_value::<Call>(v) {
                    Ok(Call::Call(req)) => {
                        log.calls += 1;
                        self.sent.push(req);
                    }
                    Ok(Call::Subscribe(c)) => {
                        log.subs += 1;
                        self.subs.push(c);
                    }
                    Err(_) => log.bad += 1,
                }
            }
            Kind::Cancel => log.cancels += 1,
            _ => {}
        }
    }

    fn deliver(&mut self, frames: Vec<Vec<u8>>) {
        for f in frames {
            let s = self.step();
            if !self.closed && !self.mirror_broken {
                match self.mirror.push(&f) {
                    Ok(Some(m)) => self.record_client_message(&m),
                    Ok(None) => {}
                    Err(_) => self.mirror_broken = true,
                }
            }
            let r = self.server.handle_frame(self.now, &f);
            if s.closed_before {
                assert!(r.is_ok(), "a closed server refused a frame: {r:?}");
            }
            if r.is_err() {
                assert!(
                    self.server.is_closed(),
                    "an error that left the link open: {r:?}"
                );
            }
            self.after_step(s);
        }
    }

    // -- the driver ----------------------------------------------------------------------------

    fn execute(&mut self, i: usize) {
        let p = self.pending.remove(i);
        let write = p.req.is_write();
        let result = self.db.execute(p.req.clone());
        let now = snapshot(&self.db);
        if write && !self.read_only {
            self.expected = now;
        } else {
            assert!(
                now == self.expected,
                "executing {:?} (read-only share: {}) changed the store",
                p.req,
                self.read_only
            );
        }
        self.feed(p.sid, result);
    }

    fn feed(&mut self, sid: StoreRequestId, result: Result<Response, DbError>) {
        if let Ok(Response::AttachmentPart(p)) = &result {
            self.reading.insert(p.digest.clone());
        }
        if self.ready.is_some() {
            self.largest_answer = self.largest_answer.max(answer_bytes(&result, self.frame()));
        }
        self.outstanding.remove(&sid);
        self.answered.push(sid);
        let s = self.step();
        self.server.handle_store_result(self.now, sid, result);
        self.after_step(s);
    }

    fn fail(&mut self, i: usize, how: u8) {
        let p = self.pending.remove(i);
        let result = match how % 4 {
            0 => Err(DbError::Unavailable("the store went away".into())),
            1 => Err(DbError::NotFound("missing".into())),
            2 => Ok(Response::Info(self.db.info().expect("info"))),
            _ => Ok(Response::Changes(ChangesResponse {
                results: Vec::new(),
                last_seq: Seq(json!({"odd": "seq"})),
                pending: None,
            })),
        };
        self.feed(p.sid, result);
    }

    fn stale(&mut self, pick: u8) {
        let sid = if pick.is_multiple_of(2) && !self.answered.is_empty() {
            self.answered[usize::from(pick / 2) % self.answered.len()]
        } else {
            self.issued.last().map_or(0, |l| l + 1) + u64::from(pick)
        };
        if self.outstanding.contains(&sid) {
            return;
        }
        let mut s = self.step();
        s.stale = true;
        self.server.handle_store_result(
            self.now,
            sid,
            Ok(Response::Info(self.db.info().expect("info"))),
        );
        self.after_step(s);
    }

    fn drain(&mut self, n: usize) {
        for _ in 0..n {
            let Some(f) = self.server.peek_frame().map(<[u8]>::to_vec) else {
                return;
            };
            let mut s = self.step();
            assert!(s.queued_before >= f.len(), "a frame larger than the queue");
            self.server.advance_frame();
            s.queued_before -= f.len();
            self.check_frame(&f);
            self.after_step(s);
        }
    }

    fn execute_all(&mut self) {
        for _ in 0..256 {
            if self.pending.is_empty() {
                return;
            }
            self.execute(0);
        }
    }

    fn sharer_write(&mut self, d: &DocSpec) {
        let doc = doc_json(&mut self.db, d);
        let _ = self.db.put(doc);
        self.expected = snapshot(&self.db);
    }

    // -- checks --------------------------------------------------------------------------------

    /// The request the server emitted is one a client call carried (consumed: the server runs
    /// each call once), or a subscription's query; which one.
    fn classify(&mut self, req: &Request) -> &'static str {
        if let Some(i) = self.sent.iter().position(|r| r == req) {
            self.sent.swap_remove(i);
            return "call";
        }
        // An attachment is read a chunk at a time: the first chunk names the call's document,
        // the next ones the digest it answered with.
        if let Request::ReadAttachment(p) = req {
            match &p.source {
                AttachmentSource::Doc(a) if p.offset == 0 => {
                    let call = Request::GetAttachment(a.clone());
                    if let Some(i) = self.sent.iter().position(|r| *r == call) {
                        self.sent.swap_remove(i);
                        return "call";
                    }
                }
                AttachmentSource::Digest(d) if self.reading.contains(d) => return "chunk",
                _ => {}
            }
            // A range a peer asked for, read at most as long as asked (the server bounds it).
            let asked = |r: &Request| {
                matches!(r, Request::ReadAttachment(q)
                    if q.source == p.source && q.offset == p.offset && p.len <= q.len)
            };
            if let Some(i) = self.sent.iter().position(asked) {
                self.sent.swap_remove(i);
                return "call";
            }
        }
        if let Request::Changes(c) = req {
            let of_sub = |s: &ChangesRequest| {
                *c == ChangesRequest {
                    since: c.since.clone(),
                    feed: Feed::Normal,
                    timeout_ms: None,
                    ..s.clone()
                }
            };
            if self.subs.iter().any(of_sub) {
                return "subscription";
            }
        }
        panic!("the server emitted {req:?}, which no client call or subscription asked for");
    }

    fn on_ready(&mut self, h: Hello, s: &Step, q: usize) {
        assert!(self.ready.is_none(), "a second Ready");
        assert!(!s.closed_before && !self.closed, "Ready after Closed");
        assert_eq!(h.v, PROTOCOL_VERSION, "accepted a hello of another version");
        assert_eq!(h.role, Role::Client, "accepted a server's hello");
        assert_eq!(h.share, SHARE, "accepted a hello for another share");
        if self.keyed {
            let ok = h
                .proof
                .as_deref()
                .is_some_and(|p| check_proof(KEY, Role::Client, SHARE, &h.peer, FP_C, FP_S, p));
            assert!(ok, "accepted a hello without a valid proof: {:?}", h.proof);
        }
        self.hello_bytes = q.saturating_sub(s.queued_before);
        self.ready = Some(h);
    }

    fn after_step(&mut self, s: Step) {
        let q = self.server.queued_bytes();
        self.stats.max_queued = self.stats.max_queued.max(q);
        while let Some(e) = self.server.poll_event() {
            match e {
                ServerEvent::Ready { hello } => self.on_ready(hello, &s, q),
                ServerEvent::Closed(_) => {
                    assert!(!self.closed, "a second Closed");
                    self.closed = true;
                }
                _ => {}
            }
        }
        assert_eq!(
            self.server.is_closed(),
            self.closed,
            "is_closed() and the events disagree"
        );
        assert_eq!(
            self.server.poll_timeout().is_some(),
            self.ready.is_none() && !self.closed,
            "a hello timeout exactly while the hello is awaited"
        );
        assert!(self.server.served() >= self.served, "served() went down");
        self.served = self.server.served();

        let mut new = 0;
        while let Some((sid, req)) = self.server.poll_store_request() {
            assert!(self.ready.is_some(), "store request {req:?} before Ready");
            assert!(!self.closed, "store request {req:?} after Closed");
            assert!(
                self.issued.insert(sid),
                "store request id {sid} issued twice"
            );
            let origin = self.classify(&req);
            *self.stats.requests.entry(origin).or_default() += 1;
            if self.read_only && req.is_write() {
                assert!(
                    only_local(&req),
                    "a read-only share let {req:?} reach the store"
                );
            }
            self.stats.writes += usize::from(req.is_write());
            self.outstanding.insert(sid);
            self.pending.push(Pending { sid, req });
            new += 1;
        }
        if s.stale {
            assert_eq!(q, s.queued_before, "a stale store result queued frames");
            assert_eq!(new, 0, "a stale store result started work");
        }
        assert_eq!(
            self.server.peek_frame().is_some(),
            q > 0,
            "peek_frame() and queued_bytes() disagree"
        );
        if self.closed {
            // The server forgot its store requests; their results are ignored from now on.
            self.outstanding.clear();
            if s.closed_before {
                assert!(
                    q <= s.queued_before,
                    "the queue grew after Closed: {} -> {q}",
                    s.queued_before
                );
            }
            return;
        }

        if new > 0 && !skipped("issue-gate") {
            assert!(
                q < self.window + REFUSAL_SLACK,
                "issue-gate: {new} store request(s) issued with {q} bytes queued (window {})",
                self.window
            );
            assert!(
                self.outstanding.len() <= self.max_concurrent,
                "issue-gate: {} store requests outstanding (max_concurrent {})",
                self.outstanding.len(),
                self.max_concurrent
            );
        }
        let bound = self.window
            + self.max_concurrent * self.largest_answer
            + REFUSAL_SLACK
            + self.hello_bytes
            + self.max_in_flight * STREAM_END_SLACK;
        if !skipped("queue-bound") {
            assert!(
                q <= bound,
                "queue-bound: {q} bytes queued, over {bound} (window {}, max_concurrent {}, \
                 largest answer {}, hello {})",
                self.window,
                self.max_concurrent,
                self.largest_answer,
                self.hello_bytes
            );
        }
    }

    fn check_frame(&mut self, f: &[u8]) {
        assert!(!f.is_empty(), "an empty frame");
        assert!(
            f.len() >= HEADER_LEN,
            "a frame shorter than its header: {f:?}"
        );
        let limit = self.frame();
        let d = Frame::decode(f).map(|d| (d.kind, d.id));
        if !skipped("frame-size") {
            assert!(
                f.len() <= limit,
                "frame-size: a frame of {} bytes ({d:?}) over the negotiated {limit}",
                f.len()
            );
        }
        Frame::decode(f).unwrap_or_else(|e| panic!("an output frame does not decode: {e}"));
        match self.out.push(f) {
            Ok(Some(m)) => self.check_message(m),
            Ok(None) => {}
            Err(e) => panic!("the output does not reassemble: {e}"),
        }
    }

    fn check_message(&mut self, m: Message) {
        // The hello and the goodbye are the protocol's own; answers must fit what the client takes.
        if let (Some(h), Kind::Response | Kind::Binary | Kind::StreamItem | Kind::StreamEnd) =
            (&self.ready, m.kind)
        {
            let open = m.kind == Kind::StreamItem && skipped("stream-max-message");
            if !(skipped("max-message") || open) {
                assert!(
                    m.payload.len() <= h.max_message,
                    "max-message: a {:?} message of {} bytes to a client that takes {}",
                    m.kind,
                    m.payload.len(),
                    h.max_message
                );
            }
        }
        let id = m.id;
        *self
            .stats
            .messages
            .entry(format!("{:?}", m.kind))
            .or_default() += 1;
        if let Some(len) = self.pending_binary.remove(&id) {
            assert_eq!(
                m.kind,
                Kind::Binary,
                "{:?} {id} after attachment metadata",
                m.kind
            );
            // A call cancelled while its attachment goes out ends it short.
            let cancelled = self.ids.get(&id).is_some_and(|l| l.cancels > 0);
            assert!(
                m.payload.len() as u64 == len || (cancelled && (m.payload.len() as u64) < len),
                "binary of {} bytes, announced {len}",
                m.payload.len()
            );
            return;
        }
        if m.kind != Kind::Hello && m.kind != Kind::Goodbye && !skipped("hello-first") {
            assert!(
                self.hello_seen,
                "{:?} {id} before the server's hello",
                m.kind
            );
        }
        let log = self.ids.entry(id).or_default();
        match m.kind {
            Kind::Hello => {
                assert!(!self.hello_seen, "a second server hello");
                assert_eq!(id, 0, "hello with id {id}");
                let h: Hello = serde_json::from_slice(&m.payload)
                    .unwrap_or_else(|e| panic!("the server's hello does not parse: {e}"));
                let client = self.ready.as_ref().expect("a server hello before Ready");
                assert_eq!(h.v, PROTOCOL_VERSION);
                assert_eq!(h.role, Role::Server);
                assert_eq!(h.share, SHARE);
                assert_eq!(h.peer, client.peer, "the hello does not echo the peer id");
                assert_eq!(h.frame, self.server_frame);
                assert_eq!(h.max_in_flight, self.max_in_flight);
                assert_eq!(h.read_only, self.read_only);
                if self.keyed {
                    let ok = h.proof.as_deref().is_some_and(|p| {
                        check_proof(KEY, Role::Server, SHARE, &client.peer, FP_S, FP_C, p)
                    });
                    assert!(ok, "the server's proof does not verify: {:?}", h.proof);
                } else {
                    assert_eq!(h.proof, None);
                }
                self.hello_seen = true;
            }
            Kind::Response => {
                let r: Reply = serde_json::from_slice(&m.payload)
                    .unwrap_or_else(|e| panic!("response {id} does not parse: {e}"));
                log.responses += 1;
                assert!(
                    log.responses <= log.calls + log.bad,
                    "more responses than calls on id {id}: {log:?}"
                );
                match r {
                    Reply::Attachment { length, .. } => {
                        self.pending_binary.insert(id, length);
                    }
                    Reply::AttachmentPart {
                        length,
                        offset,
                        size,
                        ..
                    } => {
                        assert!(
                            offset + size <= length,
                            "a range past the end: {offset}+{size} of {length}"
                        );
                        self.pending_binary.insert(id, size);
                    }
                    _ => {}
                }
            }
            Kind::StreamItem => {
                let c: ChangesResponse = serde_json::from_slice(&m.payload)
                    .unwrap_or_else(|e| panic!("stream item {id} does not parse: {e}"));
                assert!(!c.results.is_empty(), "an empty stream item");
                assert!(
                    log.subs > log.stream_ends,
                    "a stream item for no open subscription: {log:?}"
                );
            }
            Kind::StreamEnd => {
                let _: StreamEnd = serde_json::from_slice(&m.payload)
                    .unwrap_or_else(|e| panic!("stream end {id} does not parse: {e}"));
                log.stream_ends += 1;
                assert!(
                    log.stream_ends <= log.subs,
                    "more stream ends than subscriptions: {log:?}"
                );
            }
            Kind::Goodbye => {
                assert_eq!(id, 0, "goodbye with id {id}");
                assert!(!self.goodbye_seen, "a second goodbye");
                let _: CouchError = serde_json::from_slice(&m.payload)
                    .unwrap_or_else(|e| panic!("the goodbye does not parse: {e}"));
                self.goodbye_seen = true;
            }
            Kind::Binary => panic!("binary {id} without attachment metadata"),
            k => panic!("a server sent {k:?}"),
        }
    }

    /// The driver executes everything and reads everything; then a server still open has
    /// answered every call never cancelled.
    fn settle(&mut self) {
        for _ in 0..1000 {
            if self.pending.is_empty() && self.server.peek_frame().is_none() {
                break;
            }
            self.execute_all();
            self.drain(usize::MAX);
        }
        if self.closed || self.dropped || !self.pending.is_empty() {
            return;
        }
        assert_eq!(self.server.queued_bytes(), 0);
        for (id, log) in &self.ids {
            if log.cancels == 0 {
                assert_eq!(
                    log.responses,
                    log.calls + log.bad,
                    "calls on id {id} left unanswered: {log:?}"
                );
            }
        }
    }
}

fn apply(h: &mut Harness, op: &Op) {
    match op {
        Op::Call { id, req } => {
            let p = h.call_payload(req);
            h.send_message(Kind::Request, id.id(), &p, &[]);
        }
        Op::Subscribe { id, spec } => {
            let p = serde_json::to_vec(&Call::Subscribe(changes_request(spec))).expect("sub");
            h.send_message(Kind::Request, id.id(), &p, &[]);
        }
        Op::Cancel { id } => h.send_message(Kind::Cancel, id.id(), &[], &[]),
        Op::Cut { id, req, cuts } => {
            let p = h.call_payload(req);
            h.send_message(Kind::Request, id.id(), &p, cuts);
        }
        Op::Interleave {
            a,
            ra,
            cuts_a,
            b,
            rb,
            cuts_b,
            order,
        } => {
            let pa = h.call_payload(ra);
            let pb = h.call_payload(rb);
            let frame = h.frame();
            let mut fa = cut_frames(Kind::Request, a.id(), &pa, cuts_a, frame).into_iter();
            let mut fb = cut_frames(Kind::Request, b.id(), &pb, cuts_b, frame).into_iter();
            let mut frames = Vec::new();
            for first in order.iter().take(32) {
                let next = if *first { fa.next() } else { fb.next() };
                frames.extend(next);
            }
            frames.extend(fa);
            frames.extend(fb);
            h.deliver(frames);
        }
        Op::OddCall { id, which } => {
            let p = pick(ODD_CALLS, *which).as_bytes();
            h.send_message(Kind::Request, id.id(), p, &[]);
        }
        Op::RawMessage { kind, id, payload } => match kind_of(kind % 10) {
            Some(k) => h.send_message(k, id.id(), payload, &[]),
            None => {
                let mut f = vec![*kind, 0];
                f.extend_from_slice(&id.id().to_be_bytes());
                f.extend_from_slice(payload);
                h.deliver(vec![f]);
            }
        },
        Op::RawFrame(f) => h.deliver(vec![f.clone()]),
        Op::ClientGoodbye { valid } => {
            let p: &[u8] = if *valid {
                br#"{"status":503,"error":"unavailable","reason":"bye"}"#
            } else {
                b"bye"
            };
            h.send_message(Kind::Goodbye, 0, p, &[]);
        }
        Op::DbChanged => {
            let s = h.step();
            h.server.handle_db_changed(h.now);
            h.after_step(s);
        }
        Op::SharerWrite(d) => h.sharer_write(d),
        Op::Execute { index } => {
            if !h.pending.is_empty() {
                let i = usize::from(*index) % h.pending.len();
                h.execute(i);
            }
        }
        Op::ExecuteAll => h.execute_all(),
        Op::Fail { index, how } => {
            if !h.pending.is_empty() {
                let i = usize::from(*index) % h.pending.len();
                h.fail(i, *how);
            }
        }
        Op::Drop { index } => {
            if !h.pending.is_empty() {
                let i = usize::from(*index) % h.pending.len();
                h.pending.remove(i);
                h.dropped = true;
            }
        }
        Op::Stale { pick } => h.stale(*pick),
        Op::Drain { frames } => h.drain(usize::from(*frames)),
        Op::DrainAll => h.drain(usize::MAX),
        Op::Wait { secs } => {
            let s = h.step();
            h.now += Duration::from_secs(u64::from(secs % 16));
            h.server.handle_timeout(h.now);
            h.after_step(s);
        }
        Op::LinkClosed => {
            let s = h.step();
            h.server.handle_link_closed(h.now);
            h.after_step(s);
            if !skipped("link-closed") {
                assert_eq!(
                    h.server.queued_bytes(),
                    0,
                    "link-closed: frames still queued for a link that is gone"
                );
            }
        }
    }
    assert!(
        snapshot(&h.db) == h.expected,
        "the store changed without a write the server emitted ({op:?})"
    );
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new(&input.setup);
    h.send_hello(&input.hello);
    for op in input.ops.iter().take(MAX_OPS) {
        apply(&mut h, op);
    }
    h.settle();
    if std::env::var_os("RPC_SERVER_FUZZ_STATS").is_some() {
        let s = &h.stats;
        eprintln!(
            "rpc_server stats: ready={} closed={} window={} max_concurrent={} writes={} \
             largest_answer={} max_queued={} bound_at_end={} requests={:?} messages={:?}",
            h.ready.is_some(),
            h.closed,
            h.window,
            h.max_concurrent,
            s.writes,
            h.largest_answer,
            s.max_queued,
            h.window + h.max_concurrent * h.largest_answer,
            s.requests,
            s.messages
        );
    }
});
