//! Replication through the hub: MemoryStore → CouchClient → a fresh MemoryStore, with conflicts,
//! deletions and an attachment; checkpoints make the second run write nothing.

mod common;

use std::time::Instant;

use base64::Engine;
use common::TestDb;
use peerpouch::*;
use serde_json::{json, Value};

const DOCS: usize = 300;

fn hex_rev(pos: u64, n: u64) -> Rev {
    Rev::new(pos, format!("{n:032x}"))
}

fn attachment_bytes() -> Vec<u8> {
    (0..10_000u32).map(|i| (i * 7 + i / 256) as u8).collect()
}

/// 300 documents: some edited twice, some with a conflicting branch (written with
/// new_edits=false as a sibling of their second revision), some deleted, one deleted conflict
/// branch, one attachment.
fn source_store() -> MemoryStore {
    let mut a = MemoryStore::new("source");
    for i in 0..DOCS {
        let id = format!("doc{i:03}");
        let r1 = a
            .put(json!({"_id": id, "i": i, "text": "x".repeat(i % 50)}))
            .unwrap();
        let mut leaf = r1.clone();
        // Edited docs; the ones with i % 7 == 0 also get a conflicting sibling of the edit.
        if i % 10 == 0 || i % 7 == 0 {
            leaf = a
                .put(json!({"_id": id, "_rev": r1.to_string(), "i": i, "edited": true}))
                .unwrap();
        }
        if i % 13 == 0 {
            a.put(json!({"_id": id, "_rev": leaf.to_string(), "_deleted": true}))
                .unwrap();
        }
        if i % 7 == 0 {
            let c = hex_rev(2, 0xc000 + i as u64);
            let res = a
                .bulk_docs(
                    vec![json!({
                        "_id": id, "_rev": c.to_string(), "i": i, "branch": "conflict",
                        "_revisions": {"start": 2, "ids": [c.hash, r1.hash]},
                    })],
                    false,
                )
                .unwrap();
            assert!(res.iter().all(|r| r.result.is_ok()), "{res:?}");
        }
        if i == 50 {
            let d = hex_rev(2, 0xdead);
            a.bulk_docs(
                vec![json!({
                    "_id": id, "_rev": d.to_string(), "_deleted": true,
                    "_revisions": {"start": 2, "ids": [d.hash, r1.hash]},
                })],
                false,
            )
            .unwrap();
        }
    }
    let data = base64::engine::general_purpose::STANDARD.encode(attachment_bytes());
    a.put(json!({
        "_id": "with-attachment",
        "_attachments": {"blob.bin": {"content_type": "application/x-peerpouch-test", "data": data}},
    }))
    .unwrap();
    a
}

fn all_ids(db: &mut dyn Database) -> Vec<String> {
    db.changes(ChangesRequest::default())
        .unwrap()
        .results
        .into_iter()
        .map(|r| r.id)
        .collect()
}

/// Winner with `_conflicts` and `_deleted_conflicts`, or the error (deleted winners).
fn winner(db: &mut dyn Database, id: &str) -> Result<Doc, DbError> {
    db.get_with(GetRequest {
        conflicts: true,
        deleted_conflicts: true,
        revs: true,
        ..GetRequest::new(id)
    })
}

#[test]
fn replicate_memory_to_hub_and_back_with_conflicts_deletions_and_attachment() {
    let mut hub = TestDb::new("repl");
    let hub_id = hub.client.url().redacted().to_string();
    let mut a = source_store();
    let a_info = a.info().unwrap();

    let t0 = Instant::now();
    let up = replicate(
        &mut a,
        &mut hub.client,
        ReplicatorConfig::new("mem:a", &hub_id),
    )
    .unwrap();
    let up_time = t0.elapsed();
    let total_revs = a
        .changes(ChangesRequest {
            style: ChangesStyle::AllDocs,
            ..ChangesRequest::default()
        })
        .unwrap()
        .results
        .iter()
        .map(|r| r.changes.len() as u64)
        .sum::<u64>();
    assert_eq!(
        up.docs_written, total_revs,
        "every leaf written once: {up:?}"
    );
    assert_eq!(up.doc_write_failures, 0);
    assert_eq!(up.changes_read, DOCS as u64 + 1);

    let hub_info = hub.client.info().unwrap();
    assert_eq!(hub_info.doc_count, a_info.doc_count);

    let mut b = MemoryStore::new("copy");
    let t1 = Instant::now();
    let down = replicate(
        &mut hub.client,
        &mut b,
        ReplicatorConfig::new(&hub_id, "mem:b"),
    )
    .unwrap();
    let down_time = t1.elapsed();
    assert_eq!(down.docs_written, total_revs, "{down:?}");
    eprintln!(
        "replication of {} docs ({total_revs} leaf revisions): memory -> hub {up_time:?}, hub -> memory {down_time:?}",
        DOCS + 1
    );

    // Same documents, same winners, same conflicts, same trees.
    let ids = all_ids(&mut a);
    assert_eq!(ids.len(), DOCS + 1);
    let mut sorted_a = ids.clone();
    sorted_a.sort();
    let mut sorted_b = all_ids(&mut b);
    sorted_b.sort();
    assert_eq!(sorted_a, sorted_b);
    let (mut conflicted, mut deleted) = (0, 0);
    for id in &ids {
        let wa = winner(&mut a, id);
        let wb = winner(&mut b, id);
        assert_eq!(wa, wb, "{id}");
        let wh = winner(&mut hub.client, id);
        match (&wa, &wh) {
            (Ok(da), Ok(dh)) => {
                assert_eq!(da["_rev"], dh["_rev"], "{id}");
                assert_eq!(da.get("_conflicts"), dh.get("_conflicts"), "{id}");
                if da.contains_key("_conflicts") {
                    conflicted += 1;
                }
            }
            (Err(_), Err(eh)) => {
                assert!(matches!(eh, DbError::NotFound(_)));
                deleted += 1;
            }
            other => panic!("{id}: {other:?}"),
        }
    }
    assert!(conflicted > 20, "{conflicted}");
    assert!(deleted > 10, "{deleted}");
    assert_eq!(
        a.tree_shapes(),
        b.tree_shapes(),
        "revision trees survive the round trip"
    );
    assert_eq!(
        winner(&mut b, "doc050").unwrap()["_deleted_conflicts"],
        json!([hex_rev(2, 0xdead).to_string()])
    );
    let att = b.get_attachment("with-attachment", "blob.bin").unwrap();
    assert_eq!(att.data, attachment_bytes());
    assert_eq!(att.content_type, "application/x-peerpouch-test");
    let hub_att = hub
        .client
        .get_attachment("with-attachment", "blob.bin")
        .unwrap();
    assert_eq!(hub_att.digest, att.digest);
    assert_eq!(hub_att.data, att.data);

    // Checkpoints live in _local docs on the hub; a second run of each resumes and writes nothing.
    let up_cfg = ReplicatorConfig::new("mem:a", &hub_id);
    let log = hub.client.get_local(&up_cfg.replication_id()).unwrap();
    assert!(log.get("history").is_some_and(Value::is_array), "{log:?}");
    let mut started_since = Vec::new();
    let again = replicate_with_progress(&mut a, &mut hub.client, up_cfg, |ev| {
        if let ReplicationEvent::Started { since, .. } = ev {
            started_since.push(since.clone());
        }
    })
    .unwrap();
    assert_eq!(again.docs_written, 0, "{again:?}");
    assert_eq!(
        again.changes_read, 0,
        "resumed from the checkpoint: {again:?}"
    );
    assert_eq!(started_since, [Seq::from(a.update_seq())]);
    let again = replicate(
        &mut hub.client,
        &mut b,
        ReplicatorConfig::new(&hub_id, "mem:b"),
    )
    .unwrap();
    assert_eq!(again.docs_written, 0, "{again:?}");
    assert_eq!(again.changes_read, 0, "{again:?}");

    // A change after the checkpoint flows through both hops.
    let r = b.get("doc001").unwrap()["_rev"]
        .as_str()
        .unwrap()
        .to_string();
    a.put(json!({"_id": "doc001", "_rev": r, "i": 1, "late": true}))
        .unwrap();
    let up = replicate(
        &mut a,
        &mut hub.client,
        ReplicatorConfig::new("mem:a", &hub_id),
    )
    .unwrap();
    assert_eq!((up.changes_read, up.docs_written), (1, 1));
    let down = replicate(
        &mut hub.client,
        &mut b,
        ReplicatorConfig::new(&hub_id, "mem:b"),
    )
    .unwrap();
    assert_eq!((down.changes_read, down.docs_written), (1, 1));
    assert_eq!(b.get("doc001").unwrap()["late"], true);
}
