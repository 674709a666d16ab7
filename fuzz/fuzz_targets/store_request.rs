//! Any `Request` that decodes from JSON runs on a pre-filled `MemoryStore` without panicking,
//! leaves the store consistent (see `common::check_invariants`), and re-encodes to JSON that
//! decodes to an equal request.
#![no_main]

mod common;

use libfuzzer_sys::fuzz_target;
use peerpouch::{Database, Doc, MemoryStore, Request};
use serde_json::json;

/// A store with a plain doc, a conflicted doc, a deleted doc, a doc with an attachment and a
/// `_local` doc.
fn prefilled() -> MemoryStore {
    let mut db = MemoryStore::new("fuzz");
    db.put(json!({"_id": "a", "v": 1})).expect("a");
    // `b`: two branches from 1-aaa, 2-bbb and 2-ccc (the winner: same depth, higher hash).
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
    db.put(json!({
        "_id": "d",
        "_attachments": {"f.txt": {"content_type": "text/plain", "data": "aGVsbG8="}}
    }))
    .expect("d");
    let mut local = Doc::new();
    local.insert("v".into(), json!(1));
    db.put_local("_local/x", local).expect("local");
    db
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = serde_json::from_slice::<Request>(data) else {
        return;
    };
    let encoded = serde_json::to_vec(&req).expect("encode");
    let decoded: Request = serde_json::from_slice(&encoded).unwrap_or_else(|e| {
        panic!(
            "re-encoded request does not decode: {e}: {}",
            String::from_utf8_lossy(&encoded)
        )
    });
    assert_eq!(decoded, req, "request JSON round trip");

    let mut db = prefilled();
    let _ = db.execute(req);
    common::check_invariants(&mut db);
});
