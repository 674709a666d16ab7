//! Inputs the fuzzers found, replayed by `cargo test` (see `tests/fuzz_regressions/README.md`).

mod common;

use peerpouch::*;
use serde_json::json;

fn inputs(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fuzz_regressions")
        .join(target);
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| {
            let p = e.unwrap().path();
            (p.display().to_string(), std::fs::read(&p).unwrap())
        })
        .collect();
    v.sort();
    assert!(!v.is_empty(), "no inputs in {}", dir.display());
    v
}

/// The `rev_parse` target's property: a revision that parses prints back to the same text.
#[test]
fn rev_parse_inputs_round_trip_or_are_refused() {
    for (name, bytes) in inputs("rev_parse") {
        let Ok(s) = std::str::from_utf8(&bytes) else {
            continue;
        };
        if let Ok(rev) = s.parse::<Rev>() {
            assert_eq!(rev.to_string(), s, "{name}");
        }
    }
    assert!("07-~".parse::<Rev>().is_err());
}

/// The `store_request` target's property: a request that decodes re-encodes to the same value
/// and executes without panicking, keeping the store consistent.
#[test]
fn store_request_inputs_round_trip_and_execute() {
    for (name, bytes) in inputs("store_request") {
        let Ok(req) = serde_json::from_slice::<Request>(&bytes) else {
            continue;
        };
        let again: Request = serde_json::from_str(&serde_json::to_string(&req).unwrap()).unwrap();
        assert_eq!(again, req, "{name}");
        let mut db = MemoryStore::new("f");
        let _ = db.execute(req);
        let n = db.all_docs(AllDocsRequest::default()).unwrap().rows.len() as u64;
        assert_eq!(db.info().unwrap().doc_count, n, "{name}");
    }
    // The number that found it keeps its exact value through a store.
    let mut db = MemoryStore::new("f");
    db.put(json!({"_id": "x", "v": 1111111111111111111113.0_f64}))
        .unwrap();
    let back = db.get("x").unwrap()["v"].clone();
    assert_eq!(back, json!(1111111111111111111113.0_f64));
}

/// `store_ops/att-content-type-not-in-rev`: two stores write the same body with the same bytes
/// under different content types; they must get different revisions, so replication converges.
#[test]
fn attachment_content_type_is_part_of_the_revision() {
    let mut a = MemoryStore::new("a");
    let mut b = MemoryStore::new("b");
    let ra = a
        .put(json!({"_id": "d3", "v": 21, "_attachments": {"f0.bin": {"content_type": "application/octet-stream", "data": "d29ybGQ="}}}))
        .unwrap();
    let rb = b
        .put(json!({"_id": "d3", "v": 21, "_attachments": {"f0.bin": {"content_type": "text/plain", "data": "d29ybGQ="}}}))
        .unwrap();
    assert_ne!(ra, rb);
    replicate(&mut a, &mut b, ReplicatorConfig::new("a", "b")).unwrap();
    replicate(&mut b, &mut a, ReplicatorConfig::new("b", "a")).unwrap();
    common::assert_converged(&mut a, &mut b);
    let ta = a.get_attachment("d3", "f0.bin").unwrap().content_type;
    let tb = b.get_attachment("d3", "f0.bin").unwrap().content_type;
    assert_eq!(ta, tb);
}

/// `store_ops/stub-takes-sibling-content-type`: A and B write the same bytes under different
/// content types (two revisions at 1), B's replicates to A, then B edits its own on top. When
/// that edit replicates to A, its attachment is a stub (A has revision 1): A resolved the stub
/// from the first stored body with the same name, digest and revpos, which was its own sibling
/// of the other type, so one revision id held two different documents.
#[test]
fn replicated_stub_keeps_its_own_content_type() {
    let mut a = MemoryStore::new("a");
    let mut b = MemoryStore::new("b");
    a.put(json!({"_id": "d3", "v": 1, "_attachments": {"f0.bin": {"content_type": "text/plain", "data": "AAECAwQ="}}}))
        .unwrap();
    let r1 = b
        .put(json!({"_id": "d3", "v": 1, "_attachments": {"f0.bin": {"content_type": "application/octet-stream", "data": "AAECAwQ="}}}))
        .unwrap();
    replicate(&mut b, &mut a, ReplicatorConfig::new("b", "a")).unwrap();
    let mut doc = b.get("d3").unwrap();
    doc.insert("v".into(), json!(0));
    let r2 = b.put(serde_json::Value::Object(doc)).unwrap();
    assert_eq!(r2.pos, r1.pos + 1);
    replicate(&mut b, &mut a, ReplicatorConfig::new("b", "a")).unwrap();
    replicate(&mut a, &mut b, ReplicatorConfig::new("a", "b")).unwrap();
    common::assert_converged(&mut a, &mut b);
    let on_a = a
        .get_with(GetRequest {
            rev: Some(r2.clone()),
            ..GetRequest::new("d3")
        })
        .unwrap();
    assert_eq!(
        on_a["_attachments"]["f0.bin"]["content_type"],
        json!("application/octet-stream")
    );
    assert_eq!(a.get("d3"), b.get("d3"));
}

/// `store_ops/rev-pos-past-19-digits`: positions are capped at 2^53 − 1 on input, and a
/// document at the cap refuses further edits with a typed error instead of minting a revision
/// nobody can parse.
#[test]
fn revision_positions_are_bounded() {
    let mut db = MemoryStore::new("a");
    let r = db
        .bulk_docs(
            vec![json!({"_id": "d0", "_rev": "9999999999999999999-x", "_deleted": true})],
            false,
        )
        .unwrap();
    assert!(matches!(r[0].result, Err(DbError::BadRequest(_))));
    let top = format!("{}-x", MAX_REV_POS);
    let r = db
        .bulk_docs(vec![json!({"_id": "d0", "_rev": top})], false)
        .unwrap();
    r[0].result.clone().unwrap();
    let e = db.put(json!({"_id": "d0", "_rev": format!("{}-x", MAX_REV_POS), "v": 1}));
    assert!(matches!(e, Err(DbError::BadRequest(_))), "{e:?}");
    assert_eq!(db.get("d0").unwrap()["_rev"], format!("{}-x", MAX_REV_POS));
}

// Scenarios of the rpc_server findings (tests/fuzz_regressions/rpc_server/): each failed on
// the server before its fix.

fn rpc_message(
    kind: peerpouch::rpc::frame::Kind,
    id: u32,
    body: &serde_json::Value,
) -> Vec<Vec<u8>> {
    // 1 KiB frames: what every server takes.
    peerpouch::rpc::frame::split(kind, id, &serde_json::to_vec(body).unwrap(), 1024)
}

fn client_hello(peer: &str, frame: usize, max_message: usize) -> serde_json::Value {
    json!({"v": 1, "role": "client", "share": "share-x", "peer": peer, "frame": frame, "max_message": max_message})
}

fn drain_server(s: &mut peerpouch::rpc::RpcServer) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    while let Some(f) = s.peek_frame().map(<[u8]>::to_vec) {
        s.advance_frame();
        out.push(f);
    }
    out
}

/// `rpc_server/hello-over-negotiated-frame`
#[test]
fn rpc_server_hello_is_split_at_the_negotiated_frame_size() {
    use peerpouch::rpc::frame::Kind;
    use peerpouch::rpc::*;
    let now = common::epoch();
    let mut s = RpcServer::new(
        ServerConfig::new("share-x", "sha-256 AA:AA", "sha-256 CC:CC"),
        now,
    );
    let peer = format!("peer-{}", "x".repeat(1344));
    for f in rpc_message(Kind::Hello, 0, &client_hello(&peer, 1024, 1 << 20)) {
        s.handle_frame(now, &f).unwrap();
    }
    let mut c = ClientConfig::new("share-x", peer, "sha-256 CC:CC", "sha-256 AA:AA");
    c.frame_size = 1024;
    let mut client = RpcClient::new(c, now);
    for f in drain_server(&mut s) {
        assert!(
            f.len() <= 1024,
            "a frame of {} bytes to a client that takes 1024",
            f.len()
        );
        client.handle_frame(now, &f).unwrap();
    }
    assert!(client.is_ready());
}

/// `rpc_server/answer-overtakes-hello`
#[test]
fn rpc_server_hello_is_the_first_message_out() {
    use peerpouch::rpc::frame::{Assembler, Kind};
    use peerpouch::rpc::*;
    let now = common::epoch();
    let mut cfg = ServerConfig::new("share-x", "sha-256 AA:AA", "sha-256 CC:CC");
    cfg.frame_size = 1024;
    let mut s = RpcServer::new(cfg, now);
    let peer = format!("peer-{}", "x".repeat(1888));
    let mut frames = rpc_message(Kind::Hello, 0, &client_hello(&peer, 16384, 1 << 20));
    frames.extend(rpc_message(
        Kind::Request,
        7,
        &json!({"call": {"op": "info"}}),
    ));
    let mut db = MemoryStore::new("served");
    for f in frames {
        s.handle_frame(now, &f).unwrap();
        while let Some((id, req)) = s.poll_store_request() {
            let r = db.execute(req);
            s.handle_store_result(now, id, r);
        }
    }
    let mut asm = Assembler::new(1 << 20, 1024);
    let first = drain_server(&mut s)
        .iter()
        .find_map(|f| asm.push(f).unwrap())
        .expect("a whole message");
    assert_eq!(
        first.kind,
        Kind::Hello,
        "the first whole message is {:?} {}",
        first.kind,
        first.id
    );
}

/// `rpc_server/link-closed-keeps-goodbye`
#[test]
fn rpc_server_link_closed_drops_queued_frames() {
    use peerpouch::rpc::frame::Kind;
    use peerpouch::rpc::*;
    let now = common::epoch();
    let mut cfg = ServerConfig::new("share-x", "sha-256 AA:AA", "sha-256 CC:CC");
    cfg.access_key = Some(b"key".to_vec());
    let mut s = RpcServer::new(cfg, now);
    for f in rpc_message(Kind::Hello, 0, &client_hello("peer-y", 16384, 1 << 20)) {
        assert!(s.handle_frame(now, &f).is_err(), "no proof: access denied");
    }
    assert!(s.queued_bytes() > 0, "a goodbye says why");
    s.handle_link_closed(now);
    assert_eq!(s.queued_bytes(), 0);
    assert!(s.peek_frame().is_none(), "a frame for a link that is gone");
}

/// `rpc_server/subscription-ignores-window`
#[test]
fn rpc_server_subscriptions_respect_the_window() {
    use peerpouch::rpc::frame::Kind;
    use peerpouch::rpc::*;
    let now = common::epoch();
    let mut cfg = ServerConfig::new("share-x", "sha-256 AA:AA", "sha-256 CC:CC");
    cfg.window = 4096;
    let mut s = RpcServer::new(cfg, now);
    let mut db = MemoryStore::new("served");
    let mut frames = rpc_message(Kind::Hello, 0, &client_hello("peer-y", 16384, 1 << 20));
    frames.extend(rpc_message(
        Kind::Request,
        1,
        &json!({"subscribe": {"include_docs": true}}),
    ));
    for f in frames {
        s.handle_frame(now, &f).unwrap();
    }
    let mut largest = 0;
    for i in 0..100 {
        db.put(json!({"_id": format!("d{i:03}"), "pad": "p".repeat(1000)}))
            .unwrap();
        s.handle_db_changed(now);
        while let Some((id, req)) = s.poll_store_request() {
            let r = db.execute(req);
            largest = largest.max(serde_json::to_vec(r.as_ref().unwrap()).unwrap().len());
            s.handle_store_result(now, id, r);
        }
    }
    // The window plus at most max_concurrent (8) answers taken on before it filled.
    let bound = 4096 + 8 * (largest + 64);
    assert!(
        s.queued_bytes() <= bound,
        "{} bytes queued, over {bound}",
        s.queued_bytes()
    );
}

/// `rpc_server/bad-calls-ignore-window`
#[test]
fn rpc_server_refused_calls_respect_the_window() {
    use peerpouch::rpc::frame::Kind;
    use peerpouch::rpc::*;
    let now = common::epoch();
    let mut cfg = ServerConfig::new("share-x", "sha-256 AA:AA", "sha-256 CC:CC");
    cfg.window = 4096;
    let mut s = RpcServer::new(cfg, now);
    for f in rpc_message(Kind::Hello, 0, &client_hello("peer-y", 16384, 1 << 20)) {
        s.handle_frame(now, &f).unwrap();
    }
    for _ in 0..1000 {
        for f in rpc_message(Kind::Request, 1, &json!({"call": {"op": "compact"}})) {
            if s.handle_frame(now, &f).is_err() {
                return; // closing the link on a flood is a fine answer too
            }
        }
    }
    assert!(
        s.queued_bytes() <= 4096 + 1024,
        "{} bytes queued",
        s.queued_bytes()
    );
}

/// The `rpc_reply` target's property: the client's fast reply decoder agrees with serde on
/// every input. It once accepted invalid UTF-8 inside a field it skips, which serde refuses.
#[test]
fn rpc_reply_inputs_decode_as_serde_does() {
    use peerpouch::rpc::wire::Reply;
    for (name, bytes) in inputs("rpc_reply") {
        let fast = Reply::decode(&bytes);
        let slow = serde_json::from_slice::<Reply>(&bytes);
        match (&fast, &slow) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{name}"),
            (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{name}"),
            _ => panic!("{name}: fast {fast:?}, serde {slow:?}"),
        }
    }
}

/// Moves frames both ways and runs the server's store requests on `db` until nothing moves;
/// the client's answers by call.
fn serve(
    client: &mut peerpouch::rpc::RpcClient,
    server: &mut peerpouch::rpc::RpcServer,
    db: &mut MemoryStore,
) -> std::collections::BTreeMap<peerpouch::rpc::CallId, Result<Response, DbError>> {
    use peerpouch::rpc::ClientEvent;
    let now = common::epoch();
    let mut answers = std::collections::BTreeMap::new();
    loop {
        let mut moved = false;
        while let Some(f) = client.peek_frame().map(<[u8]>::to_vec) {
            client.advance_frame();
            server.handle_frame(now, &f).unwrap();
            moved = true;
        }
        while let Some((id, req)) = server.poll_store_request() {
            server.handle_store_result(now, id, db.execute(req));
            moved = true;
        }
        for f in drain_server(server) {
            client.handle_frame(now, &f).unwrap();
            moved = true;
        }
        while let Some(e) = client.poll_event() {
            if let ClientEvent::Response { call, result } = e {
                answers.insert(call, result);
            }
        }
        if !moved {
            return answers;
        }
    }
}

/// `rpc_server/range-past-the-end`: a `read_attachment` from byte 80 of a 5-byte attachment
/// was answered with an empty range at 80, which the client refuses as malformed (closing the
/// link). The store now refuses such a range (416) and the client gets an error, the link up.
#[test]
fn rpc_server_a_range_past_the_end_is_an_error_not_a_malformed_answer() {
    use peerpouch::rpc::*;
    let now = common::epoch();
    let mut db = MemoryStore::new("served");
    db.put(json!({"_id": "d", "_attachments": {"f.txt": {"content_type": "text/plain", "data": "aGVsbG8="}}}))
        .unwrap();
    let mut server = RpcServer::new(
        ServerConfig::new("share-x", "sha-256 AA:AA", "sha-256 CC:CC"),
        now,
    );
    let mut client = RpcClient::new(
        ClientConfig::new("share-x", "peer-y", "sha-256 CC:CC", "sha-256 AA:AA"),
        now,
    );
    let read =
        |offset| Request::ReadAttachment(AttachmentPartRequest::of_doc("d", "f.txt", offset, 100));
    let calls = [
        client.call(now, read(80)),
        client.call(now, read(5)),
        client.call(now, read(1)),
    ];
    let mut answers = serve(&mut client, &mut server, &mut db);
    assert!(!client.is_closed(), "the link stays up");
    assert_eq!(answers[&calls[0]].as_ref().unwrap_err().status(), 416);
    let at_end = answers
        .remove(&calls[1])
        .unwrap()
        .unwrap()
        .into_attachment_part()
        .unwrap();
    assert!(at_end.data.is_empty());
    let part = answers
        .remove(&calls[2])
        .unwrap()
        .unwrap()
        .into_attachment_part()
        .unwrap();
    assert_eq!(
        (&part.data[..], part.length, part.offset),
        (&b"ello"[..], 5, 1)
    );
}

/// `rpc_server/call-on-id-zero`: a client's `read_attachment` on id 0 was answered, its binary
/// on id 0, which the goodbye (id 0 too) then cut into. A call on id 0 now closes the link as
/// a protocol error, before anything is answered on it.
#[test]
fn rpc_server_a_call_on_id_zero_is_a_protocol_error() {
    use peerpouch::rpc::frame::Kind;
    use peerpouch::rpc::*;
    let now = common::epoch();
    let mut s = RpcServer::new(
        ServerConfig::new("share-x", "sha-256 AA:AA", "sha-256 CC:CC"),
        now,
    );
    for f in rpc_message(Kind::Hello, 0, &client_hello("peer-y", 16384, 1 << 20)) {
        s.handle_frame(now, &f).unwrap();
    }
    drain_server(&mut s);
    let call = json!({"call": {"op": "info"}});
    let refused = rpc_message(Kind::Request, 0, &call)
        .iter()
        .any(|f| s.handle_frame(now, f).is_err());
    assert!(refused, "a call on id 0 is refused");
    assert!(s.is_closed());
    assert!(s.poll_store_request().is_none(), "nothing of it runs");
}

/// `rpc_server/range-over-client-max-message`: a `read_attachment` asking more than the
/// client's `max_message` got it all, in a binary message the client must refuse. The server
/// now reads at most that much.
#[test]
fn rpc_server_a_range_is_never_larger_than_the_client_takes() {
    use peerpouch::rpc::*;
    let now = common::epoch();
    let mut db = MemoryStore::new("served");
    let big: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let b64 = serde_json::to_value(AttachmentData {
        content_type: String::new(),
        digest: String::new(),
        data: big.clone().into(),
    })
    .unwrap()["data"]
        .take();
    db.put(json!({"_id": "d", "_attachments": {"b": {"content_type": "x/y", "data": b64}}}))
        .unwrap();
    let mut server = RpcServer::new(
        ServerConfig::new("share-x", "sha-256 AA:AA", "sha-256 CC:CC"),
        now,
    );
    let mut c = ClientConfig::new("share-x", "peer-y", "sha-256 CC:CC", "sha-256 AA:AA");
    c.max_message = 4096;
    c.compress = false;
    let mut client = RpcClient::new(c, now);
    let call = client.call(
        now,
        Request::ReadAttachment(AttachmentPartRequest::of_doc("d", "b", 100, 1 << 20)),
    );
    let mut answers = serve(&mut client, &mut server, &mut db);
    let answer = answers.remove(&call);
    assert!(!client.is_closed());
    let part = answer.unwrap().unwrap().into_attachment_part().unwrap();
    assert_eq!(part.data.len(), 4096);
    assert_eq!(&part.data[..], &big[100..4196]);
}
