//! `peerpouch demo`: the main job on the embedded default (in-memory stores).

use std::time::Instant;

use peerpouch::{
    replicate_with_progress, Database, DbError, GetRequest, MemoryStore, ReplicationEvent,
    ReplicatorConfig,
};
use serde_json::json;

fn check(cond: bool, what: &str) -> Result<(), String> {
    if cond {
        println!("  ok: {what}");
        Ok(())
    } else {
        Err(format!("check failed: {what}"))
    }
}

fn db(e: DbError) -> String {
    e.to_string()
}

pub fn run() -> Result<(), String> {
    let n = 1000;
    let mut alice = MemoryStore::new("alice").with_id_seed(1);
    let mut bob = MemoryStore::new("bob").with_id_seed(2);

    println!("1. alice writes {n} documents (one with an attachment)");
    let docs: Vec<_> = (0..n)
        .map(|i| json!({"_id": format!("note-{i:05}"), "n": i, "text": "x".repeat(100)}))
        .collect();
    alice.bulk_docs(docs, true).map_err(db)?;
    alice
        .put(json!({"_id": "photo", "_attachments": {"hello.txt": {"content_type": "text/plain", "data": "aGVsbG8gd29ybGQ="}}}))
        .map_err(db)?;

    println!("2. replicate alice -> bob");
    let t = Instant::now();
    let p = replicate_with_progress(
        &mut alice,
        &mut bob,
        ReplicatorConfig::new("alice", "bob"),
        |ev| {
            if let ReplicationEvent::Progressed(p) = ev {
                if p.docs_written % 500 == 0 {
                    println!("   ... {} docs written", p.docs_written);
                }
            }
        },
    )
    .map_err(|e| e.to_string())?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "   {} docs read, {} written in {:.1} ms ({:.0} docs/s)",
        p.docs_read,
        p.docs_written,
        secs * 1e3,
        p.docs_written as f64 / secs
    );
    check(
        bob.info().map_err(db)?.doc_count == n + 1,
        "bob has every document",
    )?;
    let att = bob.get_attachment("photo", "hello.txt").map_err(db)?;
    check(
        att.data == b"hello world",
        "the attachment arrived byte for byte",
    )?;

    println!("3. both edit note-00000 while apart: a conflict");
    let base = alice.get("note-00000").map_err(db)?;
    let rev = base["_rev"].clone();
    alice
        .put(json!({"_id": "note-00000", "_rev": rev, "text": "alice's edit"}))
        .map_err(db)?;
    bob.put(json!({"_id": "note-00000", "_rev": rev, "text": "bob's edit"}))
        .map_err(db)?;
    bob.put(json!({"_id": "bob-only", "from": "bob"}))
        .map_err(db)?;

    println!("4. replicate both ways");
    let ab = peerpouch::replicate(&mut alice, &mut bob, ReplicatorConfig::new("alice", "bob"))
        .map_err(|e| e.to_string())?;
    let ba = peerpouch::replicate(&mut bob, &mut alice, ReplicatorConfig::new("bob", "alice"))
        .map_err(|e| e.to_string())?;
    println!(
        "   alice -> bob: {} written (resumed from checkpoint, {} changes read); bob -> alice: {} written",
        ab.docs_written, ab.changes_read, ba.docs_written
    );
    let mut opts = GetRequest::new("note-00000");
    opts.conflicts = true;
    let a = alice.get_with(opts.clone()).map_err(db)?;
    let b = bob.get_with(opts).map_err(db)?;
    println!(
        "   winner {} ({}), conflicts {}",
        a["_rev"], a["text"], a["_conflicts"]
    );
    check(
        a == b,
        "both pick the same winner and list the same conflict",
    )?;
    check(
        alice.tree_shapes() == bob.tree_shapes(),
        "revision trees are identical",
    )?;
    check(
        alice.get("bob-only").map_err(db)?["from"] == "bob",
        "bob's new document reached alice",
    )?;
    println!("demo finished: replication works both ways");
    Ok(())
}
