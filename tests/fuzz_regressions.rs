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
