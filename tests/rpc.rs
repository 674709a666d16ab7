//! The RPC machines wired back to back (no WebRTC): calls, errors, streams, attachments,
//! access control, flow control and hostile input.

mod common;

use std::time::{Duration, Instant};

use common::epoch;
use peerpouch::rpc::frame::{split, split_with, Frame, Kind};
use peerpouch::rpc::*;
use peerpouch::*;
use serde_json::json;

const FP_S: &str = "sha-256 AA:AA";
const FP_C: &str = "sha-256 CC:CC";

struct Pair {
    now: Instant,
    server: RpcServer,
    client: RpcClient,
    db: MemoryStore,
    events: Vec<ClientEvent>,
    server_events: Vec<ServerEvent>,
    /// Deliver frames to the server only while this is true (a stalled reader).
    server_reads: bool,
    /// The store cannot read attachments in ranges (as a store of another kind).
    whole_attachments_only: bool,
    /// Ranges of attachments read from the store.
    ranges_read: usize,
}

impl Pair {
    fn new(scfg: ServerConfig, ccfg: ClientConfig) -> Pair {
        let now = epoch();
        let mut p = Pair {
            now,
            server: RpcServer::new(scfg, now),
            client: RpcClient::new(ccfg, now),
            db: MemoryStore::new("served"),
            events: Vec::new(),
            server_events: Vec::new(),
            server_reads: true,
            whole_attachments_only: false,
            ranges_read: 0,
        };
        p.pump();
        p
    }

    fn default() -> Pair {
        Pair::new(
            ServerConfig::new("share-x", FP_S, FP_C),
            ClientConfig::new("share-x", "peer-y", FP_C, FP_S),
        )
    }

    fn pump(&mut self) {
        for _ in 0..100_000 {
            let mut moved = false;
            if self.server_reads {
                while let Some(f) = self.client.peek_frame().map(<[u8]>::to_vec) {
                    self.client.advance_frame();
                    moved = true;
                    let _ = self.server.handle_frame(self.now, &f);
                }
            }
            while let Some((id, req)) = self.server.poll_store_request() {
                moved = true;
                let r = self.execute(req);
                self.server.handle_store_result(self.now, id, r);
            }
            while let Some(f) = self.server.peek_frame().map(<[u8]>::to_vec) {
                self.server.advance_frame();
                moved = true;
                let _ = self.client.handle_frame(self.now, &f);
            }
            while let Some(e) = self.client.poll_event() {
                moved = true;
                self.events.push(e);
            }
            while let Some(e) = self.server.poll_event() {
                moved = true;
                self.server_events.push(e);
            }
            if !moved {
                return;
            }
        }
        panic!("rpc pair did not settle");
    }

    /// Delivers the client's frames to the server and runs the store requests they make, but
    /// sends nothing back (the server's frames stay queued).
    fn serve_calls(&mut self) {
        while let Some(f) = self.client.peek_frame().map(<[u8]>::to_vec) {
            self.client.advance_frame();
            self.server.handle_frame(self.now, &f).unwrap();
        }
        while let Some((id, req)) = self.server.poll_store_request() {
            let r = self.execute(req);
            self.server.handle_store_result(self.now, id, r);
        }
    }

    fn execute(&mut self, req: Request) -> Result<Response, DbError> {
        if let Request::ReadAttachment(_) = req {
            if self.whole_attachments_only {
                return Err(DbError::NotImplemented("no ranges here".into()));
            }
            self.ranges_read += 1;
        }
        self.db.execute(req)
    }

    fn call(&mut self, req: Request) -> Result<Response, DbError> {
        let id = self.client.call(self.now, req);
        self.pump();
        self.take_response(id)
    }

    fn take_response(&mut self, id: CallId) -> Result<Response, DbError> {
        let i = self
            .events
            .iter()
            .position(|e| matches!(e, ClientEvent::Response { call, .. } if *call == id))
            .unwrap_or_else(|| panic!("no response to {id}: {:?}", self.events));
        match self.events.remove(i) {
            ClientEvent::Response { result, .. } => result,
            _ => unreachable!(),
        }
    }

    fn closed(&self) -> Option<&RpcError> {
        self.events.iter().find_map(|e| match e {
            ClientEvent::Closed(e) => Some(e),
            _ => None,
        })
    }
}

#[test]
fn hello_then_calls_like_a_local_database() {
    let mut p = Pair::default();
    assert!(p.client.is_ready());
    assert!(matches!(p.events[0], ClientEvent::Ready { .. }));
    assert!(matches!(&p.server_events[0], ServerEvent::Ready { hello } if hello.peer == "peer-y"));
    let rev = p
        .call(Request::BulkDocs(BulkDocsRequest {
            docs: vec![json!({"_id": "a", "v": 1})],
            new_edits: true,
        }))
        .unwrap()
        .into_bulk_docs()
        .unwrap()
        .results[0]
        .result
        .clone()
        .unwrap();
    let doc = p
        .call(Request::Get(GetRequest::new("a")))
        .unwrap()
        .into_doc_body()
        .unwrap()
        .doc;
    assert_eq!(doc["_rev"], rev.to_string());
    assert_eq!(
        p.call(Request::Get(GetRequest::new("zz"))),
        Err(DbError::NotFound("missing".into()))
    );
    let info = p.call(Request::Info).unwrap().into_info().unwrap();
    assert_eq!(info.doc_count, 1);
    assert_eq!(p.server.served(), 4);
}

/// `n` characters of noise (hex of a seeded xorshift): compression halves them at most, so a
/// body of it still spans many frames.
fn noise(n: usize, seed: u64) -> String {
    let mut x = seed | 1;
    let mut s = String::with_capacity(n + 16);
    while s.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(&format!("{x:016x}"));
    }
    s.truncate(n);
    s
}

#[test]
fn large_bodies_cross_in_frames_within_the_frame_size() {
    let mut p = Pair::default();
    let big = noise(300_000, 1);
    p.call(Request::BulkDocs(BulkDocsRequest {
        docs: vec![json!({"_id": "big", "text": big})],
        new_edits: true,
    }))
    .unwrap();
    assert_eq!(
        p.db.get("big").unwrap()["text"].as_str().unwrap().len(),
        300_000
    );
    let doc = p
        .call(Request::Get(GetRequest::new("big")))
        .unwrap()
        .into_doc_body()
        .unwrap()
        .doc;
    assert_eq!(doc["text"].as_str().unwrap().len(), 300_000);
}

#[test]
fn attachments_travel_as_binary() {
    let mut p = Pair::default();
    let data = put_attachment(&mut p, 200_000);
    let r = p.call(get_blob()).unwrap().into_attachment().unwrap();
    assert_eq!(r.data, data);
    assert_eq!(r.content_type, "a/b");
    assert_eq!(r.digest, peerpouch::doc::digest_of(&data));
}

#[test]
fn destroy_is_forbidden_and_unknown_methods_are_not_implemented() {
    let mut p = Pair::default();
    for (payload, expect) in [
        (json!({"call": {"op": "destroy"}}), 403),
        (json!({"call": {"op": "compact"}}), 501),
        (json!({"frobnicate": {}}), 501),
        (json!({"call": {"op": "get"}}), 400),
    ] {
        let frames = split(
            Kind::Request,
            9000,
            &serde_json::to_vec(&payload).unwrap(),
            16 * 1024,
        );
        for f in frames {
            p.server.handle_frame(p.now, &f).unwrap();
        }
        let f = p.server.peek_frame().unwrap().to_vec();
        p.server.advance_frame();
        let reply: serde_json::Value = serde_json::from_slice(&f[6..]).unwrap();
        assert_eq!(reply["err"]["status"], expect, "{payload}: {reply}");
    }
    assert!(!p.server.is_closed(), "refused calls do not close the link");
}

#[test]
fn a_read_only_share_refuses_writes_but_keeps_checkpoints() {
    let mut scfg = ServerConfig::new("share-x", FP_S, FP_C);
    scfg.read_only = true;
    let mut p = Pair::new(scfg, ClientConfig::new("share-x", "peer-y", FP_C, FP_S));
    assert!(p.client.server_hello().unwrap().read_only);
    let e = p.call(Request::BulkDocs(BulkDocsRequest {
        docs: vec![json!({"_id": "a"})],
        new_edits: true,
    }));
    assert!(matches!(e, Err(DbError::Forbidden(_))), "{e:?}");
    let e = p.call(Request::BulkDocs(BulkDocsRequest {
        docs: vec![json!({"_id": "_local/x"}), json!({"_id": "b"})],
        new_edits: false,
    }));
    assert!(matches!(e, Err(DbError::Forbidden(_))));
    p.call(Request::PutLocal(PutLocalRequest {
        id: "cp".into(),
        doc: json!({"seq": 1}).as_object().unwrap().clone(),
    }))
    .unwrap();
    assert_eq!(p.db.info().unwrap().doc_count, 0);
    assert_eq!(p.db.get_local("cp").unwrap()["seq"], 1);
}

#[test]
fn access_key_proofs() {
    let key = b"correct horse".to_vec();
    let with_key = |server_key: Option<&[u8]>, client_key: Option<&[u8]>, client_sees: &str| {
        let mut s = ServerConfig::new("share-x", FP_S, FP_C);
        s.access_key = server_key.map(<[u8]>::to_vec);
        let mut c = ClientConfig::new("share-x", "peer-y", FP_C, client_sees);
        c.access_key = client_key.map(<[u8]>::to_vec);
        Pair::new(s, c)
    };
    let mut ok = with_key(Some(&key), Some(&key), FP_S);
    assert!(ok.client.is_ready());
    assert!(ok.call(Request::Info).is_ok());
    for (ck, sees) in [
        (None, FP_S),
        (Some(&b"wrong"[..]), FP_S),
        (Some(&key[..]), "sha-256 MITM"),
    ] {
        let mut p = with_key(Some(&key), ck, sees);
        assert!(!p.client.is_ready());
        assert!(
            matches!(p.closed(), Some(RpcError::Closed(DbError::Forbidden(_)))),
            "{:?}",
            p.events
        );
        assert!(matches!(
            p.server_events[0],
            ServerEvent::Closed(RpcError::AccessDenied(_))
        ));
        let id = p.client.call(p.now, Request::Info);
        p.pump();
        assert!(
            p.take_response(id).is_err(),
            "nothing is served after a refusal"
        );
        assert_eq!(p.server.served(), 0);
    }
    // A client with a key refuses a server that cannot prove it (a hub faking the sharer).
    let p = with_key(None, Some(&key), FP_S);
    assert!(
        matches!(p.closed(), Some(RpcError::AccessDenied(_))),
        "{:?}",
        p.events
    );
}

#[test]
fn incompatible_versions_close_with_a_clear_error() {
    let now = epoch();
    let mut s = RpcServer::new(ServerConfig::new("share-x", FP_S, FP_C), now);
    let hello = json!({"v": 2, "role": "client", "share": "share-x", "peer": "p", "frame": 16384, "max_message": 1000});
    let f = split(Kind::Hello, 0, &serde_json::to_vec(&hello).unwrap(), 16384);
    let e = s.handle_frame(now, &f[0]).unwrap_err();
    assert_eq!(e, RpcError::IncompatibleVersion { ours: 1, theirs: 2 });
    let goodbye = s.peek_frame().unwrap().to_vec();
    assert_eq!(goodbye[0], Kind::Goodbye as u8);
    let body: serde_json::Value = serde_json::from_slice(&goodbye[6..]).unwrap();
    assert_eq!(body["error"], "incompatible_version");
}

#[test]
fn a_hello_from_the_wrong_role_or_share_closes_the_link() {
    let now = epoch();
    for (role, share, says) in [
        (
            "server",
            "share-x",
            "expected the hello of a Client, got one of a Server",
        ),
        (
            "client",
            "share-z",
            "hello for share-z, but this link serves share-x",
        ),
    ] {
        let mut s = RpcServer::new(ServerConfig::new("share-x", FP_S, FP_C), now);
        let hello = json!({"v": 1, "role": role, "share": share, "peer": "p", "frame": 16384, "max_message": 1000});
        let f = split(Kind::Hello, 0, &serde_json::to_vec(&hello).unwrap(), 16384);
        let e = s.handle_frame(now, &f[0]).unwrap_err();
        assert_eq!(e, RpcError::Protocol(says.into()));
        assert_eq!(s.served(), 0);
    }
}

#[test]
fn live_subscription_streams_changes_until_cancelled() {
    let mut p = Pair::default();
    let sub = p.client.subscribe(
        p.now,
        ChangesRequest {
            include_docs: true,
            ..ChangesRequest::default()
        },
    );
    p.pump();
    p.db.put(json!({"_id": "a"})).unwrap();
    p.server.handle_db_changed(p.now);
    p.pump();
    p.db.put(json!({"_id": "b"})).unwrap();
    p.db.put(json!({"_id": "c"})).unwrap();
    p.server.handle_db_changed(p.now);
    p.pump();
    let ids: Vec<String> = p
        .events
        .iter()
        .filter_map(|e| match e {
            ClientEvent::Changes { call, changes } if *call == sub => Some(
                changes
                    .results
                    .iter()
                    .map(|r| r.id.clone())
                    .collect::<Vec<_>>(),
            ),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(ids, vec!["a", "b", "c"]);
    p.client.cancel(p.now, sub).unwrap();
    p.pump();
    assert!(p.events.contains(&ClientEvent::StreamEnded {
        call: sub,
        error: None
    }));
    p.db.put(json!({"_id": "d"})).unwrap();
    p.server.handle_db_changed(p.now);
    p.pump();
    assert!(!p.events.iter().any(|e| matches!(e, ClientEvent::Changes { changes, .. } if changes.results.iter().any(|r| r.id == "d"))));
    assert_eq!(p.client.cancel(p.now, sub), Err(RpcError::UnknownCall(sub)));
}

#[test]
fn calls_time_out_and_a_dropped_link_fails_them() {
    let mut p = Pair::default();
    p.server_reads = false; // the server never sees the call
    let id = p.client.call(p.now, Request::Info);
    p.pump();
    p.now += Duration::from_secs(61);
    p.client.handle_timeout(p.now);
    p.pump();
    assert!(matches!(p.take_response(id), Err(DbError::Unavailable(_))));
    let id2 = p.client.call(p.now, Request::Info);
    p.client.handle_link_closed(p.now);
    p.pump();
    assert!(matches!(p.take_response(id2), Err(DbError::Unavailable(_))));
    let id3 = p.client.call(p.now, Request::Info);
    p.pump();
    assert!(
        matches!(p.take_response(id3), Err(DbError::Unavailable(_))),
        "calls after close fail at once"
    );
}

#[test]
fn a_slow_reader_bounds_the_servers_queue() {
    let mut scfg = ServerConfig::new("share-x", FP_S, FP_C);
    scfg.window = 64 * 1024;
    // The window counts bytes as sent: uncompressed, the answers fill it as their JSON does.
    scfg.compress = false;
    let mut p = Pair::new(scfg, ClientConfig::new("share-x", "peer-y", FP_C, FP_S));
    let docs: Vec<_> = (0..200)
        .map(|i| json!({"_id": format!("d{i:03}"), "pad": noise(2000, i)}))
        .collect();
    p.db.bulk_docs(docs, true).unwrap();
    // Fire many calls but never drain the server's frames.
    let ids: Vec<CallId> = (0..60)
        .map(|i| {
            p.client
                .call(p.now, Request::Get(GetRequest::new(format!("d{i:03}"))))
        })
        .collect();
    for _ in 0..3 {
        p.serve_calls();
    }
    let queued = p.server.queued_bytes();
    // The window plus at most max_concurrent (8) answers of ~2 KiB taken on before it filled.
    assert!(
        queued < 64 * 1024 + 8 * 4 * 1024,
        "the server kept taking work: {queued} bytes queued"
    );
    assert!(p.server.served() < 60);
    // Draining lets everything through.
    p.pump();
    for id in ids {
        assert!(p.take_response(id).is_ok());
    }
}

#[test]
fn hostile_input_closes_the_link_and_leaves_the_store_alone() {
    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        ("truncated frame", vec![vec![2, 0, 0]]),
        ("unknown kind", vec![vec![77, 0, 0, 0, 0, 1, b'{', b'}']]),
        (
            "invalid json",
            vec![split(Kind::Request, 1, b"{not json", 16384).remove(0)],
        ),
        (
            "deep nesting",
            vec![split(
                Kind::Request,
                1,
                format!("{}{}", "[".repeat(5000), "]".repeat(5000)).as_bytes(),
                1 << 20,
            )]
            .into_iter()
            .flatten()
            .collect(),
        ),
        ("oversize frame", vec![vec![2; 70_000]]),
        (
            "a second hello",
            vec![split(Kind::Hello, 0, b"{}", 16384).remove(0)],
        ),
        (
            "a response from a client",
            vec![split(Kind::Response, 1, b"{}", 16384).remove(0)],
        ),
        (
            "binary from a client",
            vec![split(Kind::Binary, 1, b"xx", 16384).remove(0)],
        ),
        (
            "compressed, saying more than max_message",
            split_with(
                Kind::Request,
                1,
                &[&u32::MAX.to_le_bytes()[..], &[0x10, b'x']].concat(),
                16384,
                true,
            ),
        ),
        (
            "compressed, shorter than it says",
            split_with(
                Kind::Request,
                1,
                &[&100u32.to_le_bytes()[..], &[0x10, b'x']].concat(),
                16384,
                true,
            ),
        ),
        (
            "Z flag on some frames of a message only",
            vec![
                split_with(Kind::Request, 1, &[b'x'; 3000], 1024, true).remove(0),
                split(Kind::Request, 1, &[b'x'; 3000], 1024).remove(1),
            ],
        ),
    ];
    for (what, frames) in cases {
        let mut p = Pair::default();
        p.db.put(json!({"_id": "keep"})).unwrap();
        let before = p.db.info().unwrap();
        let mut err = None;
        for f in frames {
            if let Err(e) = p.server.handle_frame(p.now, &f) {
                err = Some(e);
            }
        }
        assert!(err.is_some(), "{what} was accepted");
        assert!(p.server.is_closed(), "{what}");
        assert!(
            p.server.poll_store_request().is_none(),
            "{what} reached the store"
        );
        assert_eq!(p.db.info().unwrap(), before);
        assert_eq!(
            p.server.peek_frame().unwrap()[0],
            Kind::Goodbye as u8,
            "{what}: a goodbye says why"
        );
    }
}

/// Every frame the server sends while a call runs, decoded: (Z flag, frame length).
fn server_frames(p: &mut Pair, req: Request) -> (Result<Response, DbError>, Vec<(bool, usize)>) {
    let id = p.client.call(p.now, req);
    let mut seen = Vec::new();
    for _ in 0..1000 {
        p.serve_calls();
        let mut moved = false;
        while let Some(f) = p.server.peek_frame().map(<[u8]>::to_vec) {
            p.server.advance_frame();
            moved = true;
            seen.push((Frame::decode(&f).unwrap().compressed, f.len()));
            p.client.handle_frame(p.now, &f).unwrap();
        }
        while let Some(e) = p.client.poll_event() {
            p.events.push(e);
        }
        if !moved {
            break;
        }
    }
    (p.take_response(id), seen)
}

#[test]
fn batches_travel_compressed_when_both_sides_offer_zstd() {
    let docs: Vec<_> = (0..100)
        .map(|i| json!({"_id": format!("doc{i:03}"), "text": format!("{:0>1000}", i), "pad": noise(40, i)}))
        .collect();
    let all = || {
        Request::AllDocs(AllDocsRequest {
            include_docs: true,
            ..AllDocsRequest::default()
        })
    };
    let mut answers = Vec::new();
    for (server_z, client_z) in [(true, true), (true, false), (false, true)] {
        let mut scfg = ServerConfig::new("share-x", FP_S, FP_C);
        scfg.compress = server_z;
        let mut ccfg = ClientConfig::new("share-x", "peer-y", FP_C, FP_S);
        ccfg.compress = client_z;
        let mut p = Pair::new(scfg, ccfg);
        // A compressible write goes client -> server.
        let written = p
            .call(Request::BulkDocs(BulkDocsRequest {
                docs: docs.clone(),
                new_edits: true,
            }))
            .unwrap();
        assert!(format!("{written:?}").contains("doc099"));
        let (r, frames) = server_frames(&mut p, all());
        let bytes: usize = frames.iter().map(|f| f.1).sum();
        let compressed = frames.iter().any(|f| f.0);
        assert_eq!(
            compressed,
            server_z && client_z,
            "{server_z}/{client_z}: {frames:?}"
        );
        if compressed {
            assert!(
                bytes < 30_000,
                "100 KB of zero-padded docs took {bytes} bytes"
            );
        } else {
            assert!(bytes > 100_000, "{bytes}");
        }
        // Small answers are never compressed.
        let (info, small) = server_frames(&mut p, Request::Info);
        assert!(info.is_ok() && small.iter().all(|f| !f.0), "{small:?}");
        answers.push(r.unwrap());
    }
    // The same answer, compressed or not.
    assert_eq!(answers[0], answers[1]);
    assert_eq!(answers[0], answers[2]);
}

#[test]
fn a_flood_of_calls_closes_the_link() {
    let mut p = Pair::default();
    let mut closed = false;
    for id in 1..=1000u32 {
        let f = split(Kind::Request, id, br#"{"call":{"op":"info"}}"#, 16384).remove(0);
        if p.server.handle_frame(p.now, &f).is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed, "an unbounded number of open calls was accepted");
    assert!(p.server.is_closed());
}

// Regressions found by the `rpc_server` fuzz target (see tests/fuzz_regressions/README.md).

#[test]
fn an_answer_larger_than_the_client_accepts_is_an_error_not_a_broken_link() {
    let mut c = ClientConfig::new("share-x", "peer-y", FP_C, FP_S);
    c.max_message = 4096;
    let mut p = Pair::new(ServerConfig::new("share-x", FP_S, FP_C), c);
    p.db.put(json!({"_id": "big", "text": "x".repeat(10_000)}))
        .unwrap();
    let e = p.call(Request::Get(GetRequest::new("big"))).unwrap_err();
    assert_eq!(e.status(), 413, "{e:?}");
    assert!(p.call(Request::Info).is_ok(), "the link still works");
}

#[test]
fn the_servers_hello_comes_first_and_fits_the_clients_frame() {
    let now = epoch();
    let s = RpcServer::new(ServerConfig::new("share-x", FP_S, FP_C), now);
    let hello = json!({"v": 1, "role": "client", "share": format!("share-{}", "x".repeat(150)), "peer": format!("peer-{}", "y".repeat(180)),
        "frame": 1024, "max_message": 1 << 20});
    let mut cfg = ServerConfig::new(format!("share-{}", "x".repeat(150)), FP_S, FP_C);
    cfg.access_key = None;
    let mut s2 = RpcServer::new(cfg, now);
    for f in split(Kind::Hello, 0, &serde_json::to_vec(&hello).unwrap(), 16384) {
        s2.handle_frame(now, &f).unwrap();
    }
    for id in 1..5u32 {
        for f in split(Kind::Request, id, br#"{"call":{"op":"info"}}"#, 1024) {
            s2.handle_frame(now, &f).unwrap();
        }
    }
    let mut db = MemoryStore::new("x");
    while let Some((id, req)) = s2.poll_store_request() {
        let r = db.execute(req);
        s2.handle_store_result(now, id, r);
    }
    let mut first = true;
    while let Some(f) = s2.peek_frame().map(<[u8]>::to_vec) {
        s2.advance_frame();
        assert!(
            f.len() <= 1024,
            "a frame of {} bytes for a client that takes 1024",
            f.len()
        );
        if first {
            assert_eq!(f[0], Kind::Hello as u8, "the hello goes first");
            first = false;
        }
    }
    drop(s);
}

#[test]
fn refused_calls_and_subscriptions_obey_the_window() {
    let mut scfg = ServerConfig::new("share-x", FP_S, FP_C);
    scfg.window = 4096;
    scfg.compress = false;
    let mut p = Pair::new(scfg, ClientConfig::new("share-x", "peer-y", FP_C, FP_S));
    // Many bad calls, never reading the answers.
    for id in 100..160u32 {
        for f in split(
            Kind::Request,
            id,
            br#"{"call":{"op":"nope","pad":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#,
            16384,
        ) {
            p.server.handle_frame(p.now, &f).unwrap();
        }
    }
    assert!(
        p.server.queued_bytes() < 4096 + 1024,
        "refusals piled up: {}",
        p.server.queued_bytes()
    );
    // A subscription over a busy database, never reading the batches.
    let mut scfg = ServerConfig::new("share-x", FP_S, FP_C);
    scfg.window = 8192;
    let mut p = Pair::new(scfg, ClientConfig::new("share-x", "peer-y", FP_C, FP_S));
    p.client.subscribe(
        p.now,
        ChangesRequest {
            include_docs: true,
            ..ChangesRequest::default()
        },
    );
    while let Some(f) = p.client.peek_frame().map(<[u8]>::to_vec) {
        p.client.advance_frame();
        p.server.handle_frame(p.now, &f).unwrap();
    }
    for i in 0..200 {
        p.db.put(json!({"_id": format!("d{i}"), "pad": noise(500, i)}))
            .unwrap();
        p.server.handle_db_changed(p.now);
        while let Some((id, req)) = p.server.poll_store_request() {
            let r = p.db.execute(req);
            p.server.handle_store_result(p.now, id, r);
        }
    }
    let q = p.server.queued_bytes();
    assert!(
        q < 8192 + 200 * 1024,
        "a slow subscriber made the queue grow to {q}"
    );
    // Reading catches up with every change, merged into fewer batches.
    p.pump();
    let seen: usize = p
        .events
        .iter()
        .map(|e| match e {
            ClientEvent::Changes { changes, .. } => changes.results.len(),
            _ => 0,
        })
        .sum();
    assert!(seen >= 200, "saw {seen} changes");
}

#[test]
fn a_closed_link_sends_nothing_more() {
    let mut p = Pair::default();
    assert!(p.server.handle_frame(p.now, &[99, 0, 0, 0, 0, 0]).is_err());
    assert!(p.server.peek_frame().is_some(), "a goodbye is queued");
    p.server.handle_link_closed(p.now);
    assert!(
        p.server.peek_frame().is_none(),
        "the link is gone: nothing to send"
    );
}

#[test]
fn a_stream_batch_larger_than_the_client_accepts_ends_the_subscription() {
    let mut c = ClientConfig::new("share-x", "peer-y", FP_C, FP_S);
    c.max_message = 4096;
    let mut p = Pair::new(ServerConfig::new("share-x", FP_S, FP_C), c);
    let sub = p.client.subscribe(
        p.now,
        ChangesRequest {
            include_docs: true,
            ..ChangesRequest::default()
        },
    );
    p.pump();
    p.db.put(json!({"_id": "big", "text": "x".repeat(10_000)}))
        .unwrap();
    p.server.handle_db_changed(p.now);
    p.pump();
    let ended = p.events.iter().find_map(|e| match e {
        ClientEvent::StreamEnded { call, error } if *call == sub => Some(error.clone()),
        _ => None,
    });
    assert!(
        matches!(ended, Some(Some(ref e)) if e.status() == 413),
        "{:?}",
        p.events
    );
    assert!(p.call(Request::Info).is_ok(), "the link still works");
}

#[test]
fn the_servers_hello_carries_the_databases_identity() {
    let mut scfg = ServerConfig::new("share-x", FP_S, FP_C);
    scfg.db_uuid = Some("0f8fad5bd9cb469fa16570867728950e".into());
    let p = Pair::new(scfg, ClientConfig::new("share-x", "peer-y", FP_C, FP_S));
    assert!(p.client.is_ready());
    let hello = p.client.server_hello().unwrap();
    assert_eq!(
        hello.db_uuid.as_deref(),
        Some("0f8fad5bd9cb469fa16570867728950e")
    );
    // A server that does not know it (an older peer, the browser client) sends none.
    let p = Pair::default();
    assert!(p.client.is_ready());
    assert_eq!(p.client.server_hello().unwrap().db_uuid, None);
}

/// A client that has sent its hello, and the server hello `hello` as frames.
fn client_and_server_hello(hello: serde_json::Value) -> (RpcClient, Vec<Vec<u8>>) {
    let now = epoch();
    let mut c = RpcClient::new(ClientConfig::new("share-x", "p", FP_C, FP_S), now);
    while c.peek_frame().is_some() {
        c.advance_frame();
    }
    let f = split(Kind::Hello, 0, &serde_json::to_vec(&hello).unwrap(), 16384);
    (c, f)
}

#[test]
fn an_older_servers_hello_without_identity_is_accepted() {
    // The hello of a build from before identities: no `db_uuid` member at all.
    let (mut c, f) = client_and_server_hello(json!({"v": 1, "role": "server", "share": "share-x",
        "peer": "p", "caps": [], "frame": 16384, "max_message": 1000, "max_in_flight": 4}));
    c.handle_frame(epoch(), &f[0]).unwrap();
    assert!(c.is_ready());
    assert_eq!(c.server_hello().unwrap().db_uuid, None);
}

#[test]
fn a_malformed_identity_in_the_hello_closes_the_link() {
    for bad in [
        json!(""),
        json!("two words"),
        json!("x".repeat(MAX_DB_UUID_LEN + 1)),
    ] {
        let (mut c, f) = client_and_server_hello(json!({"v": 1, "role": "server",
            "share": "share-x", "peer": "p", "frame": 16384, "max_message": 1000,
            "max_in_flight": 4, "db_uuid": bad}));
        match c.handle_frame(epoch(), &f[0]) {
            Err(RpcError::Malformed(m)) => assert!(m.contains("db_uuid"), "{m}"),
            other => panic!("{bad}: {other:?}"),
        }
        assert!(!c.is_ready());
    }
    let (mut c, f) = client_and_server_hello(json!({"v": 1, "role": "server", "share": "share-x",
        "peer": "p", "frame": 16384, "max_message": 1000, "db_uuid": 7}));
    assert!(matches!(
        c.handle_frame(epoch(), &f[0]),
        Err(RpcError::Malformed(_))
    ));
}

#[test]
fn a_nodes_database_identity_must_be_one() {
    use peerpouch::node::{LinkId, Node, NodeConfig, NodeError};
    let mut node = Node::new(NodeConfig::default(), 1, epoch(), 0);
    assert_eq!(
        node.set_db_uuid("notes", "0f8fad5bd9cb469fa16570867728950e"),
        Ok(())
    );
    let bad = node.set_db_uuid("notes", "two words").unwrap_err();
    assert_eq!(bad, NodeError::InvalidDbUuid("two words".into()));
    assert!(bad.to_string().contains("invalid database uuid"));
    assert_eq!(node.link_db_uuid(&LinkId::new("share-x", "peer-y")), None);
}

#[test]
fn a_node_refuses_results_for_requests_it_never_issued_and_keeps_working() {
    use peerpouch::hub::{HubAction, HubError, ShareOptions};
    use peerpouch::node::{Node, NodeConfig, NodeError, ShareAccess};
    use peerpouch::replicate::RequestId;
    let now = epoch();
    let mut node = Node::new(NodeConfig::default(), 1, now, 0);
    let result = || Err(DbError::Unavailable("late".into()));
    assert_eq!(
        node.handle_hub_response(now, RequestId(4242), result()),
        Err(NodeError::Hub(HubError::UnknownRequest(RequestId(4242))))
    );
    let refused = node.handle_store_result(now, 7, result()).unwrap_err();
    assert_eq!(refused, NodeError::UnknownStoreRequest(7));
    assert!(
        refused.to_string().contains("no store request 7"),
        "{refused}"
    );
    // Still usable: a share goes out to the hub as before.
    node.share(
        now,
        "notes".into(),
        ShareOptions::default(),
        ShareAccess::default(),
    );
    let mut requests = 0;
    while let Some(a) = node.poll_hub_action() {
        requests += usize::from(matches!(a, HubAction::Request { .. }));
    }
    assert!(requests >= 1);
}

/// Puts document `f` with attachment `blob` of `len` bytes; returns the bytes.
fn put_attachment(p: &mut Pair, len: usize) -> Vec<u8> {
    let data: Vec<u8> = (0..len as u32).map(|i| (i * 31 % 253) as u8).collect();
    let b64 = serde_json::to_value(AttachmentData {
        content_type: String::new(),
        digest: String::new(),
        data: data.clone().into(),
    })
    .unwrap()["data"]
        .clone();
    p.db.put(json!({"_id": "f", "_attachments": {"blob": {"content_type": "a/b", "data": b64}}}))
        .unwrap();
    data
}

fn get_blob() -> Request {
    Request::GetAttachment(AttachmentRequest {
        id: "f".into(),
        name: "blob".into(),
        rev: None,
    })
}

#[test]
fn large_attachments_go_out_chunk_by_chunk_and_a_slow_reader_holds_them_in_the_store() {
    const CHUNK: usize = 64 * 1024;
    const WINDOW: usize = 256 * 1024;
    let mut scfg = ServerConfig::new("share-x", FP_S, FP_C);
    scfg.window = WINDOW;
    scfg.attachment_chunk = CHUNK;
    let mut p = Pair::new(scfg, ClientConfig::new("share-x", "peer-y", FP_C, FP_S));
    let data = put_attachment(&mut p, 8 << 20);
    let id = p.client.call(p.now, get_blob());
    // A reader that takes nothing: the server reads one chunk ahead, then waits.
    for _ in 0..5 {
        p.serve_calls();
    }
    let stalled = p.server.queued_bytes();
    assert!(
        stalled <= 2 * CHUNK,
        "{stalled} bytes queued for a stalled reader"
    );
    assert!(p.ranges_read <= 2, "{} ranges read ahead", p.ranges_read);
    // Then it reads everything; the frames are those of the whole message.
    let mut binary = Vec::new();
    for _ in 0..100_000 {
        p.serve_calls();
        let mut moved = false;
        while let Some(f) = p.server.peek_frame().map(<[u8]>::to_vec) {
            p.server.advance_frame();
            moved = true;
            if Frame::decode(&f).unwrap().kind == Kind::Binary {
                binary.push(f.clone());
            }
            p.client.handle_frame(p.now, &f).unwrap();
        }
        if !moved {
            break;
        }
    }
    while let Some(e) = p.client.poll_event() {
        p.events.push(e);
    }
    let att = p.take_response(id).unwrap().into_attachment().unwrap();
    assert!(att.data == data, "the bytes arrived as they are");
    assert_eq!(att.digest, peerpouch::doc::digest_of(&data));
    assert_eq!(att.content_type, "a/b");
    assert!(binary == split(Kind::Binary, id, &data, DEFAULT_FRAME));
    // Chunks are whole frames: 64 KiB rounds down to 4 frame payloads of 16 KiB - 6.
    let chunk = 4 * (DEFAULT_FRAME - 6);
    assert_eq!(p.ranges_read, data.len().div_ceil(chunk));
    let peak = p.server.peak_queued_bytes();
    assert!(peak <= 2 * CHUNK + 1024, "peak of {peak} bytes queued");
    assert_eq!(p.server.queued_bytes(), 0);
}

#[test]
fn attachments_of_every_size_cross_whole() {
    let mut scfg = ServerConfig::new("share-x", FP_S, FP_C);
    scfg.attachment_chunk = 1; // one frame payload per chunk
    let mut p = Pair::new(scfg, ClientConfig::new("share-x", "peer-y", FP_C, FP_S));
    let payload = DEFAULT_FRAME - 6;
    for len in [0, 1, payload - 1, payload, payload + 1, 3 * payload] {
        let data = put_attachment(&mut p, len);
        let att = p.call(get_blob()).unwrap().into_attachment().unwrap();
        assert!(att.data == data, "{len} bytes");
        let gone = p.db.get("f").unwrap()["_rev"].as_str().unwrap().to_string();
        p.db.put(json!({"_id": "f", "_rev": gone, "_deleted": true}))
            .unwrap();
    }
    assert_eq!(p.ranges_read, 1 + 1 + 1 + 1 + 2 + 3);
}

#[test]
fn a_store_without_ranges_serves_attachments_whole() {
    let mut p = Pair::default();
    p.whole_attachments_only = true;
    let data = put_attachment(&mut p, 100_000);
    let att = p.call(get_blob()).unwrap().into_attachment().unwrap();
    assert!(att.data == data);
    let missing = Request::GetAttachment(AttachmentRequest {
        id: "f".into(),
        name: "nope".into(),
        rev: None,
    });
    assert_eq!(p.call(missing).unwrap_err().status(), 404);
    assert!(p.closed().is_none());
}

#[test]
fn a_cancelled_attachment_ends_its_message_and_the_link_goes_on() {
    let mut scfg = ServerConfig::new("share-x", FP_S, FP_C);
    scfg.attachment_chunk = 16 * 1024;
    let mut p = Pair::new(scfg, ClientConfig::new("share-x", "peer-y", FP_C, FP_S));
    let data = put_attachment(&mut p, 1 << 20);
    let id = p.client.call(p.now, get_blob());
    p.serve_calls();
    // The metadata and a few frames reach the client, then it gives up.
    for _ in 0..3 {
        p.serve_calls();
        let f = p.server.peek_frame().unwrap().to_vec();
        p.server.advance_frame();
        p.client.handle_frame(p.now, &f).unwrap();
    }
    p.client.cancel(p.now, id).unwrap();
    // The rest of its message is one empty frame that ends it.
    let mut rest = Vec::new();
    for _ in 0..100 {
        p.serve_calls();
        while let Some(f) = p.server.peek_frame().map(<[u8]>::to_vec) {
            p.server.advance_frame();
            let fr = Frame::decode(&f).unwrap();
            rest.push((fr.kind, fr.id, fr.more, fr.payload.len()));
            p.client.handle_frame(p.now, &f).unwrap();
        }
    }
    assert_eq!(rest.last(), Some(&(Kind::Binary, id, false, 0)), "{rest:?}");
    assert!(rest.len() < 8, "{} frames after the cancel", rest.len());
    p.pump();
    assert!(p.closed().is_none(), "{:?}", p.closed());
    assert!(
        p.ranges_read < 8,
        "{} ranges read for a cancelled call",
        p.ranges_read
    );
    assert_eq!(p.server.queued_bytes(), 0);
    let att = p.call(get_blob()).unwrap().into_attachment().unwrap();
    assert!(att.data == data, "the next call is whole");
}

#[test]
fn an_attachment_gone_while_it_is_sent_closes_the_link() {
    let mut p = Pair::default();
    put_attachment(&mut p, 1 << 20);
    let id = p.client.call(p.now, get_blob());
    p.serve_calls();
    // Its document is deleted: no revision keeps the bytes any more.
    let rev = p.db.get("f").unwrap()["_rev"].as_str().unwrap().to_string();
    p.db.put(json!({"_id": "f", "_rev": rev, "_deleted": true}))
        .unwrap();
    assert_eq!(p.db.attachment_blobs(), 0);
    p.pump();
    let closed = p.closed().expect("the link closes").to_string();
    assert!(closed.contains("could not be read to its end"), "{closed}");
    assert!(p.take_response(id).is_err());
}
