//! `peerpouch demo`: the main job on the embedded default: an in-process hub, two nodes on
//! 127.0.0.1 UDP, in-memory databases, replication over a real WebRTC data channel both ways.

use std::time::{Duration, Instant};

use peerpouch::node::DbRef;
use peerpouch::{Database, GetRequest};
use peerpouch_cli::local::World;
use serde_json::json;

fn check(cond: bool, what: &str) -> Result<(), String> {
    if cond {
        println!("  ok: {what}");
        Ok(())
    } else {
        Err(format!("check failed: {what}"))
    }
}

fn e(err: impl std::fmt::Display) -> String {
    err.to_string()
}

pub fn run() -> Result<(), String> {
    const ALICE: usize = 0;
    const BOB: usize = 1;
    let n = 1000;
    let mut w = World::new(2).map_err(e)?;
    println!(
        "0. two nodes on loopback UDP ({} and {}), meeting on an in-process hub",
        w.peers[ALICE].addr, w.peers[BOB].addr
    );

    println!("1. alice writes {n} documents and an attachment into \"notes\", and shares it");
    let docs = (0..n)
        .map(|i| json!({"_id": format!("note-{i:05}"), "n": i, "text": "x".repeat(100)}))
        .collect();
    w.peers[ALICE].write("notes", docs).map_err(e)?;
    w.peers[ALICE]
        .write(
            "notes",
            vec![json!({"_id": "photo", "_attachments": {"hello.txt": {"content_type": "text/plain", "data": "aGVsbG8gd29ybGQ="}}})],
        )
        .map_err(e)?;
    let share = w.share(ALICE, "notes").map_err(e)?;
    println!("   shared as {share}");

    println!("2. bob opens the share: signals through the hub, then a WebRTC data channel");
    let t = Instant::now();
    let link = w.open(BOB, &share).map_err(e)?;
    println!(
        "   link ready in {:.1} ms (ICE, DTLS, SCTP, RPC hello)",
        t.elapsed().as_secs_f64() * 1e3
    );

    println!("3. bob pulls alice's database over the link into \"copy\"");
    let t = Instant::now();
    let p = w
        .replicate(
            BOB,
            DbRef::Remote(link.clone()),
            DbRef::Local("copy".into()),
            Duration::from_secs(60),
            |p| {
                if p.docs_written % 500 == 0 && p.docs_written > 0 {
                    println!("   ... {} docs written", p.docs_written);
                }
            },
        )
        .map_err(e)?;
    let secs = t.elapsed().as_secs_f64();
    println!(
        "   {} docs read, {} written in {:.1} ms ({:.0} docs/s)",
        p.docs_read,
        p.docs_written,
        secs * 1e3,
        p.docs_written as f64 / secs
    );
    check(
        w.peers[BOB].store("copy").info().map_err(e)?.doc_count == n + 1,
        "bob has every document",
    )?;
    let att = w.peers[BOB]
        .store("copy")
        .get_attachment("photo", "hello.txt")
        .map_err(e)?;
    check(
        att.data[..] == b"hello world"[..],
        "the attachment arrived byte for byte",
    )?;

    println!("4. both edit note-00000 while apart (a conflict); bob adds a document");
    let rev = w.peers[ALICE].store("notes").get("note-00000").map_err(e)?["_rev"].clone();
    w.peers[ALICE]
        .write(
            "notes",
            vec![json!({"_id": "note-00000", "_rev": rev, "text": "alice's edit"})],
        )
        .map_err(e)?;
    w.peers[BOB]
        .write(
            "copy",
            vec![json!({"_id": "note-00000", "_rev": rev, "text": "bob's edit"})],
        )
        .map_err(e)?;
    w.peers[BOB]
        .write("copy", vec![json!({"_id": "bob-only", "from": "bob"})])
        .map_err(e)?;

    println!("5. bob pushes his changes to alice and pulls hers, over the same link");
    let push = w
        .replicate(
            BOB,
            DbRef::Local("copy".into()),
            DbRef::Remote(link.clone()),
            Duration::from_secs(60),
            |_| {},
        )
        .map_err(e)?;
    let pull = w
        .replicate(
            BOB,
            DbRef::Remote(link),
            DbRef::Local("copy".into()),
            Duration::from_secs(60),
            |_| {},
        )
        .map_err(e)?;
    println!(
        "   push: {} written; pull: {} written, {} changes read (resumed from its checkpoint)",
        push.docs_written, pull.docs_written, pull.changes_read
    );
    let mut opts = GetRequest::new("note-00000");
    opts.conflicts = true;
    let a = w.peers[ALICE]
        .store("notes")
        .get_with(opts.clone())
        .map_err(e)?;
    let b = w.peers[BOB].store("copy").get_with(opts).map_err(e)?;
    println!(
        "   winner {} ({}), conflicts {}",
        a["_rev"], a["text"], a["_conflicts"]
    );
    check(
        a == b,
        "both pick the same winner and list the same conflict",
    )?;
    let shapes_a = w.peers[ALICE].store("notes").tree_shapes();
    let shapes_b = w.peers[BOB].store("copy").tree_shapes();
    check(shapes_a == shapes_b, "revision trees are identical")?;
    check(
        w.peers[ALICE].store("notes").get("bob-only").map_err(e)?["from"] == "bob",
        "bob's new document reached alice",
    )?;
    println!("demo finished: peer-to-peer replication works both ways");
    Ok(())
}
