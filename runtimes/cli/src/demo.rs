//! `peerpouch demo`: the main job on the embedded default: an in-process hub, two nodes (the
//! async runtime, `PeerNode`, the same driver `share` and `replicate` use) on 127.0.0.1 UDP
//! unless `--bind` says otherwise, in-memory databases, replication over a real WebRTC data
//! channel both ways. The link options (`--ice-server`, `--relay-only`, ...) apply to both
//! nodes, so the demo shows a relayed link too.

use std::time::Instant;

use peerpouch::reach::IceServerUrl;
use peerpouch::replicate::ReplicationEvent;
use peerpouch::{GetRequest, MemoryStore, OpenRevsRequest};
use peerpouch_smol::{Db, HubSpec, InProcessHub, PeerNode, ReplicateOptions, ShareConfig};
use serde_json::{json, Value};

use crate::commands::LinkArgs;

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

/// Every document's leaves with their histories, in id order: equal on two replicas exactly
/// when their revision trees hold the same branches.
async fn trees(db: &Db) -> Result<Vec<Value>, String> {
    let ids: Vec<String> = db
        .all_docs(Default::default())
        .await
        .map_err(e)?
        .rows
        .into_iter()
        .filter_map(|r| r.id)
        .collect();
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        let mut req = OpenRevsRequest::all(id);
        req.revs = true;
        let mut leaves: Vec<Value> = db
            .open_revs(req)
            .await
            .map_err(e)?
            .into_iter()
            .map(|l| serde_json::to_value(l).unwrap_or(Value::Null))
            .collect();
        leaves.sort_by_key(|v| v.to_string());
        out.push(Value::Array(leaves));
    }
    Ok(out)
}

pub fn run(link: &LinkArgs) -> Result<(), String> {
    let mut link = link.clone();
    if link.bind.is_empty() {
        // The demo runs on one machine: loopback unless told otherwise.
        link.bind = vec!["127.0.0.1:0".parse().map_err(e)?];
    }
    let hub = InProcessHub::new();
    let start = |hub: &InProcessHub| -> Result<PeerNode, String> {
        let config = link.config(HubSpec::InProcess(hub.clone())).map_err(e)?;
        PeerNode::start_with(config).map_err(e)
    };
    let (alice, bob) = (start(&hub)?, start(&hub)?);
    let n = 1000;
    println!(
        "0. two nodes on UDP ({} and {}), meeting on an in-process hub{}",
        alice.local_addr(),
        bob.local_addr(),
        if link.ice_servers.is_empty() {
            String::new()
        } else {
            // Parsed, so credentials never reach the screen.
            let urls: Vec<String> = link
                .ice_servers
                .iter()
                .filter_map(|u| IceServerUrl::parse(u).ok())
                .map(|u| u.to_string())
                .collect();
            format!(", ICE servers {}", urls.join(", "))
        }
    );
    smol::block_on(async {
        println!("1. alice writes {n} documents and an attachment into \"notes\", and shares it");
        let notes = alice
            .add_db("notes", MemoryStore::new("notes"))
            .await
            .map_err(e)?;
        let docs = (0..n)
            .map(|i| json!({"_id": format!("note-{i:05}"), "n": i, "text": "x".repeat(100)}))
            .collect();
        for r in notes.bulk_docs(docs, true).await.map_err(e)? {
            r.result.map_err(e)?;
        }
        notes
            .put(json!({"_id": "photo", "_attachments": {"hello.txt": {
                "content_type": "text/plain", "data": "aGVsbG8gd29ybGQ="}}}))
            .await
            .map_err(e)?;
        let share = alice
            .share(&notes, ShareConfig::new().name("notes"))
            .await
            .map_err(e)?;
        println!("   shared as {share}");

        println!("2. bob opens the share: signals through the hub, then a WebRTC data channel");
        let t = Instant::now();
        let remote = bob.open("notes", json!({"name": "bob"})).await.map_err(e)?;
        println!(
            "   link ready in {:.1} ms (ICE, DTLS, SCTP, RPC hello), {}",
            t.elapsed().as_secs_f64() * 1e3,
            remote
                .path()
                .map(|p| p.to_string())
                .unwrap_or_else(|| "path unknown".into())
        );

        println!("3. bob pulls alice's database over the link into \"copy\"");
        let copy = bob
            .add_db("copy", MemoryStore::new("copy"))
            .await
            .map_err(e)?;
        let t = Instant::now();
        let mut rep = bob
            .replicate(&remote, &copy, ReplicateOptions::default())
            .await
            .map_err(e)?;
        let mut shown = 0;
        let p = loop {
            match rep.next_event().await {
                Some(ReplicationEvent::Progressed(p)) if p.docs_written >= shown + 500 => {
                    shown = p.docs_written - p.docs_written % 500;
                    println!("   ... {} docs written", p.docs_written);
                }
                Some(ReplicationEvent::Completed(p)) => break p,
                Some(ReplicationEvent::Failed { error, .. }) => return Err(e(error)),
                Some(_) => {}
                None => return Err("the replication ended without a result".into()),
            }
        };
        let secs = t.elapsed().as_secs_f64();
        println!(
            "   {} docs read, {} written in {:.1} ms ({:.0} docs/s)",
            p.docs_read,
            p.docs_written,
            secs * 1e3,
            p.docs_written as f64 / secs
        );
        check(
            copy.info().await.map_err(e)?.doc_count == n + 1,
            "bob has every document",
        )?;
        let att = copy.get_attachment("photo", "hello.txt").await.map_err(e)?;
        check(
            att.data[..] == b"hello world"[..],
            "the attachment arrived byte for byte",
        )?;

        println!("4. both edit note-00000 while apart (a conflict); bob adds a document");
        let rev = notes.get("note-00000").await.map_err(e)?["_rev"].clone();
        notes
            .put(json!({"_id": "note-00000", "_rev": rev, "text": "alice's edit"}))
            .await
            .map_err(e)?;
        copy.put(json!({"_id": "note-00000", "_rev": rev, "text": "bob's edit"}))
            .await
            .map_err(e)?;
        copy.put(json!({"_id": "bob-only", "from": "bob"}))
            .await
            .map_err(e)?;

        println!("5. bob pushes his changes to alice and pulls hers, over the same link");
        let once = |source: &Db, target: &Db| {
            let (source, target) = (source.clone(), target.clone());
            let bob = bob.clone();
            async move {
                bob.replicate(&source, &target, ReplicateOptions::default())
                    .await
                    .map_err(e)?
                    .finished()
                    .await
                    .map_err(e)
            }
        };
        let push = once(&copy, &remote).await?;
        let pull = once(&remote, &copy).await?;
        println!(
            "   push: {} written; pull: {} written, {} changes read (resumed from its checkpoint)",
            push.docs_written, pull.docs_written, pull.changes_read
        );
        let mut opts = GetRequest::new("note-00000");
        opts.conflicts = true;
        let a = notes.get_with(opts.clone()).await.map_err(e)?;
        let b = copy.get_with(opts).await.map_err(e)?;
        println!(
            "   winner {} ({}), conflicts {}",
            a["_rev"], a["text"], a["_conflicts"]
        );
        check(
            a == b,
            "both pick the same winner and list the same conflict",
        )?;
        check(
            trees(&notes).await? == trees(&copy).await?,
            "revision trees are identical",
        )?;
        check(
            notes.get("bob-only").await.map_err(e)?["from"] == "bob",
            "bob's new document reached alice",
        )?;
        alice.shutdown().await;
        bob.shutdown().await;
        println!("demo finished: peer-to-peer replication works both ways");
        Ok(())
    })
}
