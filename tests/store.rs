//! The store conformance suite on the in-memory store, plus its own specifics.

mod common;

use peerpouch::*;
use serde_json::json;

conformance_suite!(memory, peerpouch::MemoryStore::new("conformance"));

#[test]
fn attachments_are_kept_once_per_digest_and_freed() {
    let mut db = MemoryStore::new("t");
    let data = "aGVsbG8=";
    let r1 = db
        .put(json!({"_id": "a", "_attachments": {"x": {"data": data}}}))
        .unwrap();
    db.put(json!({"_id": "b", "_attachments": {"y": {"data": data}}}))
        .unwrap();
    assert_eq!(db.attachment_blobs(), 1);
    db.put(json!({"_id": "a", "_rev": r1.to_string(), "_deleted": true}))
        .unwrap();
    assert_eq!(db.attachment_blobs(), 1, "b still uses it");
    let rb = db.get("b").unwrap()["_rev"].clone();
    db.put(json!({"_id": "b", "_rev": rb, "_deleted": true}))
        .unwrap();
    assert_eq!(db.attachment_blobs(), 0, "unreferenced bytes are freed");
}

#[test]
fn attachment_reads_share_the_stored_bytes() {
    // Every reader (and the RPC outbox that cuts an answer into frames) gets the buffer the
    // store holds, not a copy: reading a large attachment costs no memory of its size.
    let mut db = MemoryStore::new("t");
    db.put(json!({"_id": "a", "_attachments": {"x": {"data": "aGVsbG8="}}}))
        .unwrap();
    db.put(json!({"_id": "b", "_attachments": {"y": {"data": "aGVsbG8="}}}))
        .unwrap();
    let first = db.get_attachment("a", "x").unwrap();
    let second = db.get_attachment("b", "y").unwrap();
    assert_eq!(&first.data[..], b"hello");
    assert_eq!(first.data.as_ptr(), second.data.as_ptr());
}

#[test]
fn stemming_honours_revs_limit() {
    let mut db = MemoryStore::new("t").with_revs_limit(5);
    let mut rev = db.put(json!({"_id": "a", "i": 0})).unwrap();
    for i in 1..20 {
        rev = db
            .put(json!({"_id": "a", "_rev": rev.to_string(), "i": i}))
            .unwrap();
    }
    let mut g = GetRequest::new("a");
    g.revs = true;
    let d = db.get_with(g).unwrap();
    assert_eq!(d["_revisions"]["start"], 20);
    assert_eq!(d["_revisions"]["ids"].as_array().unwrap().len(), 5);
    assert_eq!(db.tree_shapes()["a"].len(), 5);
    // A replicated edit that shares only stemmed-away ancestry still lands.
    let r = db
        .bulk_docs(
            vec![json!({"_id": "a", "_rev": "21-x", "_revisions": {"start": 21, "ids": ["x", rev.hash]}})],
            false,
        )
        .unwrap();
    r[0].result.clone().unwrap();
    assert_eq!(db.get("a").unwrap()["_rev"], "21-x");
}

#[test]
fn generated_ids_differ_across_seeds() {
    let mut a = MemoryStore::new("same").with_id_seed(1);
    let mut b = MemoryStore::new("same").with_id_seed(2);
    let ia = a.bulk_docs(vec![json!({})], true).unwrap()[0].id.clone();
    let ib = b.bulk_docs(vec![json!({})], true).unwrap()[0].id.clone();
    assert_ne!(ia, ib);
    let mut a2 = MemoryStore::new("same").with_id_seed(1);
    assert_eq!(
        a2.bulk_docs(vec![json!({})], true).unwrap()[0].id,
        ia,
        "deterministic"
    );
}

#[test]
fn requests_and_responses_round_trip_through_json() {
    let mut db = MemoryStore::new("t");
    db.put(json!({"_id": "a", "_attachments": {"x": {"data": "aGk="}}}))
        .unwrap();
    let reqs = vec![
        Request::Info,
        Request::Get(GetRequest::new("a")),
        Request::AllDocs(AllDocsRequest {
            include_docs: true,
            ..AllDocsRequest::default()
        }),
        Request::Changes(ChangesRequest::default()),
        Request::GetAttachment(AttachmentRequest {
            id: "a".into(),
            name: "x".into(),
            rev: None,
        }),
        Request::OpenRevs(OpenRevsRequest {
            revs: true,
            ..OpenRevsRequest::all("a")
        }),
    ];
    for req in reqs {
        let wire = serde_json::to_string(&req).unwrap();
        let back: Request = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, req, "{wire}");
        let resp = db.execute(req).unwrap();
        let wire = serde_json::to_string(&resp).unwrap();
        let back: Response = serde_json::from_str(&wire).unwrap();
        assert_eq!(back, resp, "{wire}");
    }
    let err = db.execute(Request::Get(GetRequest::new("zz"))).unwrap_err();
    assert_eq!(
        serde_json::to_value(&err).unwrap(),
        json!({"status": 404, "error": "not_found", "reason": "missing"})
    );
}

#[test]
fn identity_comes_from_the_seed_or_is_given() {
    let uuid = |db: MemoryStore| db.uuid();
    let a = uuid(MemoryStore::new("notes").with_id_seed(1));
    assert_eq!(a.len(), 32);
    assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        a,
        uuid(MemoryStore::new("notes").with_id_seed(1)),
        "same seed, same identity"
    );
    assert_ne!(a, uuid(MemoryStore::new("notes").with_id_seed(2)));
    assert_ne!(a, uuid(MemoryStore::new("other").with_id_seed(1)));
    let mut given = MemoryStore::new("notes").with_uuid("given-1").unwrap();
    assert_eq!(given.info().unwrap().db_uuid.as_deref(), Some("given-1"));
}

#[test]
fn a_bad_identity_is_a_typed_error() {
    for bad in [
        "",
        "has space",
        "tab\there",
        "é",
        &"x".repeat(MAX_DB_UUID_LEN + 1),
    ] {
        match MemoryStore::new("t").with_uuid(bad) {
            Err(DbError::BadRequest(reason)) => assert!(reason.contains("invalid database uuid")),
            other => panic!("{bad:?}: {other:?}"),
        }
    }
    assert!(MemoryStore::new("t")
        .with_uuid("x".repeat(MAX_DB_UUID_LEN))
        .is_ok());
}

#[test]
fn the_replication_id_follows_the_identities_not_the_names() {
    // What the runtimes do: name each side by its identity. A second handle on the same
    // databases (a restarted sharer, another share name) makes the same id, so a second run
    // reads only what is new.
    let mut a = MemoryStore::new("a").with_uuid("aaaa").unwrap();
    let mut b = MemoryStore::new("b").with_uuid("bbbb").unwrap();
    for i in 0..10 {
        a.put(json!({"_id": format!("d{i}")})).unwrap();
    }
    let config = |a: &mut MemoryStore, b: &mut MemoryStore| {
        ReplicatorConfig::new(
            a.info().unwrap().db_uuid.unwrap(),
            b.info().unwrap().db_uuid.unwrap(),
        )
    };
    let c = config(&mut a, &mut b);
    let first = replicate(&mut a, &mut b, c).unwrap();
    assert_eq!(first.changes_read, 10);
    a.put(json!({"_id": "new"})).unwrap();
    let c = config(&mut a, &mut b);
    let second = replicate(&mut a, &mut b, c).unwrap();
    assert_eq!((second.changes_read, second.docs_written), (1, 1));
    assert_eq!(
        config(&mut a, &mut b).replication_id(),
        ReplicatorConfig::new("aaaa", "bbbb").replication_id()
    );
    assert_ne!(
        config(&mut a, &mut b).replication_id(),
        ReplicatorConfig::new("bbbb", "aaaa").replication_id()
    );
}
