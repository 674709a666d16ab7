//! The replication machine between in-memory stores: protocol behaviour, checkpoints, faults.

mod common;

use common::*;
use peerpouch::*;
use serde_json::{json, Value};

fn fill(db: &mut MemoryStore, n: usize, prefix: &str) {
    let docs: Vec<Value> = (0..n)
        .map(|i| json!({"_id": format!("{prefix}{i:05}"), "i": i}))
        .collect();
    for r in db.bulk_docs(docs, true).unwrap() {
        r.result.unwrap();
    }
}

fn cfg(a: &str, b: &str) -> ReplicatorConfig {
    ReplicatorConfig::new(a, b)
}

#[test]
fn one_shot_copies_everything_and_second_run_reads_nothing() {
    let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
    fill(&mut a, 250, "d");
    let out = drive(&mut a, &mut b, cfg("a", "b"), 1, Faults::default());
    let p = out.completed().expect("completed");
    assert_eq!(
        (p.docs_read, p.docs_written, p.doc_write_failures),
        (250, 250, 0)
    );
    assert_eq!(p.checkpointed_seq.as_u64(), Some(250));
    assert!(
        matches!(out.events[0], ReplicationEvent::Started { ref since, .. } if since.as_u64() == Some(0))
    );
    assert_converged(&mut a, &mut b);
    // Checkpoints on both sides, under the same replication id.
    let rep_id = cfg("a", "b").replication_id();
    let la = a.get_local(&rep_id).unwrap();
    let lb = b.get_local(&rep_id).unwrap();
    assert_eq!(la["source_last_seq"], 250);
    assert_eq!(la["session_id"], lb["session_id"]);
    // Again: resumes at the checkpoint and reads no change.
    let out = drive(&mut a, &mut b, cfg("a", "b"), 2, Faults::default());
    let p = out.completed().unwrap();
    assert_eq!((p.changes_read, p.docs_read), (0, 0));
    assert!(
        matches!(out.events[0], ReplicationEvent::Started { ref since, .. } if since.as_u64() == Some(250))
    );
}

#[test]
fn replication_id_is_stable_and_distinguishes_filters() {
    assert_eq!(
        cfg("a", "b").replication_id(),
        cfg("a", "b").replication_id()
    );
    assert_ne!(
        cfg("a", "b").replication_id(),
        cfg("b", "a").replication_id()
    );
    let f1 = cfg("a", "b").doc_ids(vec!["x".into(), "y".into()]);
    let f2 = cfg("a", "b").doc_ids(vec!["y".into(), "x".into(), "x".into()]);
    assert_eq!(f1.replication_id(), f2.replication_id());
    assert_ne!(f1.replication_id(), cfg("a", "b").replication_id());
    // Tuning does not change the id: a resumed run may use other batch sizes.
    assert_eq!(
        cfg("a", "b").batch_size(7).live(true).replication_id(),
        cfg("a", "b").replication_id()
    );
}

#[test]
fn conflicts_deletes_and_recreates_replicate_both_ways() {
    let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
    let r1 = a.put(json!({"_id": "c", "v": 0})).unwrap();
    a.put(json!({"_id": "gone", "v": 0})).unwrap();
    a.put(json!({"_id": "phoenix", "v": 0})).unwrap();
    drive(&mut a, &mut b, cfg("a", "b"), 1, Faults::default());
    // Concurrent edits of c; delete on one side; delete-and-recreate on the other.
    a.put(json!({"_id": "c", "_rev": r1.to_string(), "v": "a"}))
        .unwrap();
    b.put(json!({"_id": "c", "_rev": r1.to_string(), "v": "b"}))
        .unwrap();
    let g = a.get("gone").unwrap()["_rev"].clone();
    a.put(json!({"_id": "gone", "_rev": g, "_deleted": true}))
        .unwrap();
    let p = b.get("phoenix").unwrap()["_rev"].clone();
    b.put(json!({"_id": "phoenix", "_rev": p, "_deleted": true}))
        .unwrap();
    b.put(json!({"_id": "phoenix", "v": "reborn"})).unwrap();
    drive(&mut a, &mut b, cfg("a", "b"), 2, Faults::default());
    drive(&mut b, &mut a, cfg("b", "a"), 3, Faults::default());
    assert_converged(&mut a, &mut b);
    let mut g = GetRequest::new("c");
    g.conflicts = true;
    let c = a.get_with(g).unwrap();
    assert_eq!(c["_conflicts"].as_array().unwrap().len(), 1);
    assert_eq!(a.get("gone"), Err(DbError::NotFound("deleted".into())));
    assert_eq!(a.get("phoenix").unwrap()["v"], "reborn");
    assert_eq!(
        a.get("phoenix").unwrap()["_rev"]
            .as_str()
            .unwrap()
            .split('-')
            .next(),
        Some("3")
    );
}

#[test]
fn attachments_replicate_once_and_only_new_ones_travel_again() {
    let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let b64 = base64_encode(&big);
    let r1 = a
        .put(json!({"_id": "f", "_attachments": {"big.bin": {"content_type": "application/octet-stream", "data": b64}}}))
        .unwrap();
    drive(&mut a, &mut b, cfg("a", "b"), 1, Faults::default());
    assert_eq!(b.get_attachment("f", "big.bin").unwrap().data, big);
    // Edit the doc body, keep the attachment: the second replication sends a stub (atts_since).
    let mut d = a.get("f").unwrap();
    d.insert("note".into(), json!("edited"));
    a.put(Value::Object(d)).unwrap();
    let (mut a2, mut b2) = (a, b);
    let out = drive(&mut a2, &mut b2, cfg("a", "b"), 2, Faults::default());
    assert_eq!(out.completed().unwrap().docs_written, 1);
    assert_eq!(b2.get("f").unwrap()["note"], "edited");
    assert_eq!(b2.get_attachment("f", "big.bin").unwrap().data, big);
    assert_eq!(b2.attachment_blobs(), 1);
    let _ = r1;
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in data.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[test]
fn local_docs_are_not_replicated() {
    let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
    a.put_local("mine", json!({"secret": 1}).as_object().unwrap().clone())
        .unwrap();
    a.put(json!({"_id": "shared"})).unwrap();
    drive(&mut a, &mut b, cfg("a", "b"), 1, Faults::default());
    assert!(matches!(b.get_local("mine"), Err(DbError::NotFound(_))));
    assert!(b.get("shared").is_ok());
}

#[test]
fn interrupted_replication_resumes_from_its_checkpoint() {
    let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
    fill(&mut a, 1000, "d");
    let config = || cfg("a", "b").batch_size(50).batches_in_flight(3);
    let crashed = drive(
        &mut a,
        &mut b,
        config(),
        1,
        Faults {
            crash_after: Some(40),
            ..Faults::default()
        },
    );
    assert!(crashed.crashed);
    let checkpointed = crashed.progress.checkpointed_seq.as_u64().unwrap();
    assert!(
        checkpointed > 0 && checkpointed < 1000,
        "crashed mid-way at {checkpointed}"
    );
    let resumed = drive(&mut a, &mut b, config(), 2, Faults::default());
    let p = resumed.completed().unwrap();
    let ReplicationEvent::Started { since, .. } = &resumed.events[0] else {
        panic!("first event is Started")
    };
    // It resumes at the confirmed checkpoint, or at a later one whose write landed just before
    // the crash (a checkpoint is only written after its documents were).
    let since = since.as_u64().unwrap();
    assert!(since >= checkpointed && since < 1000, "resumed at {since}");
    assert_eq!(
        p.changes_read,
        1000 - since,
        "only changes after the checkpoint are read"
    );
    assert!(p.docs_read < 1000);
    assert_converged(&mut a, &mut b);
}

#[test]
fn out_of_order_answers_never_checkpoint_past_an_unfinished_batch() {
    for seed in 0..20 {
        let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
        fill(&mut a, 400, "d");
        let config = || cfg("a", "b").batch_size(25).batches_in_flight(6);
        let crash_at = 10 + (seed as usize * 7) % 60;
        let out = drive(
            &mut a,
            &mut b,
            config(),
            seed,
            Faults {
                shuffle: true,
                crash_after: Some(crash_at),
                ..Faults::default()
            },
        );
        // Everything at or below the checkpoint must be on the target.
        let cp = out.progress.checkpointed_seq.as_u64().unwrap();
        let upto = a
            .changes(ChangesRequest {
                limit: Some(cp as usize),
                ..ChangesRequest::default()
            })
            .unwrap();
        for row in upto
            .results
            .iter()
            .filter(|r| r.seq.as_u64().unwrap() <= cp)
        {
            assert!(
                b.get(&row.id).is_ok(),
                "seed {seed}: {} below checkpoint {cp} is missing",
                row.id
            );
        }
        let done = drive(
            &mut a,
            &mut b,
            config(),
            seed + 100,
            Faults {
                shuffle: true,
                ..Faults::default()
            },
        );
        assert!(done.completed().is_some());
        assert_converged(&mut a, &mut b);
    }
}

#[test]
fn transient_failures_are_retried_with_backoff() {
    let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
    fill(&mut a, 300, "d");
    let config = cfg("a", "b").batch_size(20);
    let out = drive(
        &mut a,
        &mut b,
        {
            let mut c = config;
            c.retry.max_retries = 30;
            c
        },
        9,
        Faults {
            unavailable: 0.3,
            ..Faults::default()
        },
    );
    let p = out
        .completed()
        .unwrap_or_else(|| panic!("{:?}", out.events.last()));
    // A failed write is retried by reading its batch again; every document counts once.
    assert_eq!((p.docs_read, p.docs_written), (300, 300), "{p:?}");
    assert_eq!((p.doc_read_failures, p.doc_write_failures), (0, 0));
    let reads = out.requests[&(Endpoint::Source, "bulk_get")];
    assert!(
        reads > 300 / 20,
        "no write was retried by a re-read: {reads} reads"
    );
    assert!(
        out.virtual_elapsed >= std::time::Duration::from_millis(500),
        "retries waited on virtual time"
    );
    assert_converged(&mut a, &mut b);
}

#[test]
fn persistent_failure_ends_with_failed() {
    let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
    fill(&mut a, 10, "d");
    let out = drive(
        &mut a,
        &mut b,
        {
            let mut c = cfg("a", "b");
            c.retry.max_retries = 3;
            c
        },
        1,
        Faults {
            unavailable: 1.0,
            ..Faults::default()
        },
    );
    let last = out.events.last().unwrap();
    assert!(
        matches!(
            last,
            ReplicationEvent::Failed {
                error: ReplicationError::Endpoint {
                    error: DbError::Unavailable(_),
                    ..
                },
                ..
            }
        ),
        "{last:?}"
    );
    // 1 + 3 retries, each delayed by backoff: 0.5 + 1 + 2 s.
    assert_eq!(out.virtual_elapsed.as_millis() / 100, 35);
}

#[test]
fn cancel_stops_requests_and_reports() {
    let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
    fill(&mut a, 500, "d");
    let out = drive(
        &mut a,
        &mut b,
        cfg("a", "b").batch_size(10),
        1,
        Faults {
            cancel_after: Some(12),
            ..Faults::default()
        },
    );
    assert!(matches!(
        out.events.last(),
        Some(ReplicationEvent::Cancelled(_))
    ));
    let n = b.info().unwrap().doc_count;
    assert!(n > 0 && n < 500, "cancel happened mid-way ({n})");
}

#[test]
fn doc_ids_filter_replicates_only_those() {
    let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
    fill(&mut a, 20, "d");
    let out = drive(
        &mut a,
        &mut b,
        cfg("a", "b").doc_ids(vec!["d00003".into(), "d00007".into(), "nope".into()]),
        1,
        Faults::default(),
    );
    assert_eq!(out.completed().unwrap().docs_written, 2);
    assert_eq!(b.info().unwrap().doc_count, 2);
}

#[test]
fn target_refusals_are_counted_not_fatal() {
    // A target that refuses one document (as a validation function would).
    struct Picky(MemoryStore);
    impl Database for Picky {
        fn execute(&mut self, request: Request) -> Result<Response, DbError> {
            if let Request::BulkDocs(mut r) = request {
                let mut results = Vec::new();
                let mut keep = Vec::new();
                for d in r.docs.drain(..) {
                    if d["_id"] == "d00002" {
                        results.push(DocResult {
                            id: "d00002".into(),
                            result: Err(DbError::Forbidden("not this one".into())),
                        });
                    } else {
                        keep.push(d);
                    }
                }
                results.extend(self.0.bulk_docs(keep, r.new_edits)?);
                return Ok(Response::BulkDocs(BulkDocsResponse { results }));
            }
            self.0.execute(request)
        }
    }
    let mut a = MemoryStore::new("a");
    fill(&mut a, 5, "d");
    let mut b = Picky(MemoryStore::new("b"));
    let p = replicate(&mut a, &mut b, cfg("a", "b")).unwrap();
    assert_eq!((p.docs_written, p.doc_write_failures), (4, 1));
    assert!(b.0.get("d00002").is_err());
}

#[test]
fn live_replication_picks_up_new_writes() {
    let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
    fill(&mut a, 30, "d");
    let now = epoch();
    let mut rep = Replicator::new(cfg("a", "b").live(true).batch_size(10), 5);
    let mut parked: Vec<EndpointRequest> = Vec::new();
    let mut caught_up = 0;
    let run = |rep: &mut Replicator,
               a: &mut MemoryStore,
               b: &mut MemoryStore,
               parked: &mut Vec<EndpointRequest>| {
        let mut events = Vec::new();
        for _ in 0..10_000 {
            let mut progressed = false;
            // Longpolls wake when the source has something newer.
            let (ready, still): (Vec<_>, Vec<_>) =
                parked.drain(..).partition(|r| !is_parked(a, &r.request));
            *parked = still;
            let mut batch = ready;
            while let Some(r) = rep.poll_request() {
                batch.push(r);
            }
            for r in batch {
                if r.endpoint == Endpoint::Source && is_parked(a, &r.request) {
                    parked.push(r);
                    continue;
                }
                progressed = true;
                let db: &mut dyn Database = match r.endpoint {
                    Endpoint::Source => a,
                    Endpoint::Target => b,
                };
                let res = db.execute(r.request);
                rep.handle_response(now, r.id, res).unwrap();
            }
            while let Some(e) = rep.poll_event() {
                events.push(e);
            }
            if !progressed {
                return events;
            }
        }
        panic!("live replication did not settle");
    };
    let ev = run(&mut rep, &mut a, &mut b, &mut parked);
    caught_up += ev
        .iter()
        .filter(|e| matches!(e, ReplicationEvent::CaughtUp(_)))
        .count();
    assert_eq!(caught_up, 1);
    assert_eq!(b.info().unwrap().doc_count, 30);
    assert_eq!(parked.len(), 1, "a longpoll waits for the next change");
    // New writes wake it.
    a.put(json!({"_id": "late", "v": 1})).unwrap();
    let ev = run(&mut rep, &mut a, &mut b, &mut parked);
    assert!(ev
        .iter()
        .any(|e| matches!(e, ReplicationEvent::CaughtUp(p) if p.docs_written == 31)));
    assert_eq!(b.get("late").unwrap()["v"], 1);
    assert!(!rep.is_finished());
    rep.cancel();
    assert!(matches!(
        rep.poll_event(),
        Some(ReplicationEvent::Cancelled(_))
    ));
    assert!(rep.poll_request().is_none());
}

#[test]
fn blocking_replicate_refuses_live_mode_and_unknown_ids_are_rejected() {
    let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
    assert!(matches!(
        replicate(&mut a, &mut b, cfg("a", "b").live(true)),
        Err(ReplicationError::InvalidConfig(_))
    ));
    let mut rep = Replicator::new(cfg("a", "b"), 1);
    assert_eq!(
        rep.handle_response(
            epoch(),
            RequestId(999),
            Ok(Response::Info(a.info().unwrap()))
        ),
        Err(ReplicationError::UnknownRequest(RequestId(999)))
    );
}

#[test]
fn wrong_response_kind_fails_cleanly() {
    let mut rep = Replicator::new(cfg("a", "b"), 1);
    let mut a = MemoryStore::new("a");
    let now = epoch();
    let mut failed = false;
    for _ in 0..10 {
        while let Some(r) = rep.poll_request() {
            // Answer every request with an info response: never what it asked for.
            rep.handle_response(now, r.id, Ok(Response::Info(a.info().unwrap())))
                .unwrap();
        }
        while let Some(e) = rep.poll_event() {
            if let ReplicationEvent::Failed {
                error: ReplicationError::Endpoint { error, .. },
                ..
            } = e
            {
                assert!(matches!(error, DbError::BadResponse(_)));
                failed = true;
            }
        }
    }
    assert!(failed);
    assert!(rep.is_finished());
}

/// Regression (found by the convergence property): `atts_since` must only count revisions on the
/// requested revision's own ancestry; a sibling branch at a higher position made the source send
/// a stub for an attachment the target never had.
#[test]
fn attachments_added_on_a_sibling_branch_are_sent_in_full() {
    let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
    let r1 = a.put(json!({"_id": "d"})).unwrap();
    replicate(&mut a, &mut b, cfg("a", "b")).unwrap();
    let r2 = a
        .put(json!({"_id": "d", "_rev": r1.to_string(), "_attachments": {"f": {"data": "aGVsbG8="}}}))
        .unwrap();
    a.put(
        json!({"_id": "d", "_rev": r2.to_string(), "v": 3, "_attachments": {"f": {"stub": true}}}),
    )
    .unwrap();
    b.put(json!({"_id": "d", "_rev": r1.to_string(), "v": "b"}))
        .unwrap();
    // The source learns the target's sibling branch (2-y) first, so it is a possible ancestor
    // the source knows, yet not an ancestor of what is sent.
    replicate(&mut b, &mut a, cfg("b", "a")).unwrap();
    let p = replicate(&mut a, &mut b, cfg("a", "b")).unwrap();
    assert_eq!(p.doc_write_failures, 0);
    replicate(&mut b, &mut a, cfg("b", "a")).unwrap();
    assert_converged(&mut a, &mut b);
    let mut g = GetRequest::new("d");
    g.rev = Some(
        a.get("d").unwrap()["_rev"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap(),
    );
    g.attachments = true;
    assert_eq!(
        b.get_with(g).unwrap()["_attachments"]["f"]["data"],
        "aGVsbG8="
    );
}

/// Regression (found by the convergence property): a batch bringing a tombstone and a sibling
/// edit of the same parent must not free the parent's attachment before the sibling's stub
/// refers to it.
#[test]
fn a_tombstone_and_a_stubbed_sibling_in_one_batch_keep_the_attachment() {
    let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
    let r1 = a
        .put(json!({"_id": "d", "_attachments": {"f": {"content_type": "text/plain", "data": "aGVsbG8="}}}))
        .unwrap();
    replicate(&mut a, &mut b, cfg("a", "b")).unwrap();
    let mut c = MemoryStore::new("c");
    replicate(&mut a, &mut c, cfg("a", "c")).unwrap();
    a.put(json!({"_id": "d", "_rev": r1.to_string(), "_deleted": true}))
        .unwrap();
    c.put(
        json!({"_id": "d", "_rev": r1.to_string(), "v": 2, "_attachments": {"f": {"stub": true}}}),
    )
    .unwrap();
    replicate(&mut c, &mut a, cfg("c", "a")).unwrap();
    // b receives both children of r1 in one batch: the tombstone and the stubbed edit.
    let p = replicate(&mut a, &mut b, cfg("a", "b")).unwrap();
    assert_eq!((p.docs_written, p.doc_write_failures), (2, 0));
    let att = b.get_attachment("d", "f").unwrap();
    assert_eq!(
        (&att.data[..], att.content_type.as_str()),
        (&b"hello"[..], "text/plain")
    );
    assert_converged(&mut a, &mut b);
}

#[test]
fn a_checkpoint_lost_to_other_writers_is_skipped_not_fatal() {
    // A source whose replication log someone else keeps rewriting (replications of the same id
    // from many peers): every write of it conflicts.
    struct Contended(MemoryStore, u32);
    impl Database for Contended {
        fn execute(&mut self, request: Request) -> Result<Response, DbError> {
            if let Request::PutLocal(_) = request {
                self.1 += 1;
                return Err(DbError::Conflict);
            }
            self.0.execute(request)
        }
    }
    let mut a = Contended(MemoryStore::new("a"), 0);
    fill(&mut a.0, 5, "d");
    let mut b = MemoryStore::new("b");
    let p = replicate(&mut a, &mut b, cfg("a", "b")).unwrap();
    assert_eq!(p.docs_written, 5);
    assert_eq!(b.info().unwrap().doc_count, 5);
    // Tried again after each conflict (reading the log's new rev), then let go of.
    assert!(a.1 > 1, "{} writes", a.1);
    // The source does not hold it, so it does not count as a checkpoint.
    assert_eq!(p.checkpoints, 0);
}

fn blob(len: usize, salt: u8) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8 ^ salt).collect()
}

fn b64(data: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Documents with attachments over and under the range size: two share one large content, a
/// third has another, one is edited after (its new revision keeps the large one by stub).
fn with_attachments(db: &mut MemoryStore) -> u64 {
    let (big, other) = (blob(700_000, 0), blob(300_001, 7));
    let att = |data: &[u8]| json!({"content_type": "application/x-test", "data": b64(data)});
    for (id, data) in [("a", &big), ("b", &big), ("c", &other)] {
        db.put(json!({"_id": id, "_attachments": {"big": att(data), "small": att(b"tiny")}}))
            .unwrap();
    }
    let mut a = db.get("a").unwrap();
    a.insert("edited".into(), json!(true));
    db.put(Value::Object(a)).unwrap();
    (big.len() + other.len()) as u64
}

fn assert_same_attachments(a: &mut MemoryStore, b: &mut MemoryStore) {
    for id in ["a", "b", "c"] {
        for name in ["big", "small"] {
            let (x, y) = (
                a.get_attachment(id, name).unwrap(),
                b.get_attachment(id, name).unwrap(),
            );
            assert_eq!((x.digest, x.data), (y.digest, y.data), "{id}/{name}");
        }
    }
}

#[test]
fn large_attachments_move_in_ranges_and_small_ones_inline() {
    let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
    let large = with_attachments(&mut a);
    let config = cfg("a", "b").attachment_range(Some(64 << 10)).batch_size(1);
    let out = drive(&mut a, &mut b, config, 3, Faults::default());
    let p = out.completed().expect("completed");
    assert_eq!((p.docs_written, p.doc_write_failures), (3, 0));
    // Each large content moves once, though two documents hold it.
    assert_eq!(p.attachment_bytes, large);
    assert_converged(&mut a, &mut b);
    assert_same_attachments(&mut a, &mut b);
    assert_eq!(peerpouch::store::Storage::blob_count(&b).unwrap(), 3);
    let reads = out.requests[&(Endpoint::Source, "read_attachment")];
    assert_eq!(
        reads as u64,
        700_000u64.div_ceil(64 << 10) + 300_001u64.div_ceil(64 << 10)
    );
    // Replicated on, the same bytes need not travel at all.
    let mut c = MemoryStore::new("c");
    let p = replicate(
        &mut b,
        &mut c,
        cfg("b", "c").attachment_range(Some(1 << 30)),
    )
    .unwrap();
    assert_eq!(p.attachment_bytes, 0, "under the range size they go inline");
    assert_same_attachments(&mut a, &mut c);
}

#[test]
fn attachments_in_ranges_survive_shuffled_answers_and_failures() {
    for seed in 0..20 {
        let (mut a, mut b) = (MemoryStore::new("a"), MemoryStore::new("b"));
        with_attachments(&mut a);
        let faults = Faults {
            shuffle: true,
            unavailable: 0.2,
            ..Faults::default()
        };
        let config = cfg("a", "b").attachment_range(Some(50_000)).batch_size(1);
        let out = drive(&mut a, &mut b, config, seed, faults);
        let p = out
            .completed()
            .unwrap_or_else(|| panic!("seed {seed}: {:?}", out.events));
        assert_eq!(p.doc_write_failures, 0, "seed {seed}");
        assert_converged(&mut a, &mut b);
        assert_same_attachments(&mut a, &mut b);
    }
}

/// A database that takes no ranges (a CouchDB server, an older peer): the replication carries
/// attachments inline from its first refusal on.
struct NoRanges {
    db: MemoryStore,
    /// Refuse reading ranges (as a source) rather than receiving them (as a target).
    source: bool,
    refused: usize,
}

impl Database for NoRanges {
    fn execute(&mut self, request: Request) -> Result<Response, DbError> {
        match (&request, self.source) {
            (Request::ReadAttachment(_), true) | (Request::StageAttachment(_), false) => {
                self.refused += 1;
                Err(DbError::NotImplemented("unknown method".into()))
            }
            _ => self.db.execute(request),
        }
    }
}

#[test]
fn an_endpoint_without_ranges_gets_attachments_inline() {
    // One batch, or one per document (then batches wait on each other's uploads of the same
    // bytes, and all of them must turn to inline).
    for (source, batch) in [(true, 500), (false, 500), (true, 1), (false, 1)] {
        let mut a = MemoryStore::new("a");
        with_attachments(&mut a);
        let mut b = MemoryStore::new("b");
        let config = cfg("a", "b")
            .attachment_range(Some(64 << 10))
            .batch_size(batch);
        let (p, refused) = if source {
            let mut s = NoRanges {
                db: a,
                source,
                refused: 0,
            };
            let p = replicate(&mut s, &mut b, config).unwrap();
            a = s.db;
            (p, s.refused)
        } else {
            let mut t = NoRanges {
                db: b,
                source,
                refused: 0,
            };
            let p = replicate(&mut a, &mut t, config).unwrap();
            b = t.db;
            (p, t.refused)
        };
        assert_eq!(
            (p.docs_written, p.attachment_bytes),
            (3, 0),
            "source {source} batch {batch}: {p:?}"
        );
        // Refusals come only from what was under way when the first came back (the ranges
        // read ahead, or one probe per batch), then ranges are off.
        assert!(
            (1..=4).contains(&refused),
            "{refused} refusals (source {source})"
        );
        assert_same_attachments(&mut a, &mut b);
    }
}

/// A source whose attachment is gone when its bytes are read (the document was edited
/// meanwhile, the old revision compacted): the batch is read again, with the newer revision.
#[test]
fn an_attachment_gone_from_the_source_is_read_again_with_its_document() {
    struct Editing {
        db: MemoryStore,
        edited: bool,
    }
    impl Database for Editing {
        fn execute(&mut self, request: Request) -> Result<Response, DbError> {
            if matches!(request, Request::ReadAttachment(_)) && !self.edited {
                self.edited = true;
                let mut c = self.db.get("c").unwrap();
                c.insert(
                    "_attachments".into(),
                    json!({"big": {
                    "content_type": "x/y", "data": b64(&blob(200_000, 9))}}),
                );
                self.db.put(Value::Object(c)).unwrap();
            }
            self.db.execute(request)
        }
    }
    let mut a = MemoryStore::new("a");
    let big = blob(300_001, 7);
    a.put(json!({"_id": "c", "_attachments": {"big": {"content_type": "x/y", "data": b64(&big)}}}))
        .unwrap();
    let mut src = Editing {
        db: a,
        edited: false,
    };
    let mut b = MemoryStore::new("b");
    let config = cfg("a", "b").attachment_range(Some(64 << 10));
    let p = replicate(&mut src, &mut b, config).unwrap();
    assert!(src.edited);
    assert_eq!(p.doc_write_failures, 0);
    assert_converged(&mut src.db, &mut b);
    let got = b.get_attachment("c", "big").unwrap();
    assert_eq!(&got.data[..], &blob(200_000, 9)[..]);
}

/// A target that forgets an upload midway (another replication's uploads pushed it out, or
/// it restarted) answers the next range out of order: the attachment starts over.
#[test]
fn a_target_that_forgets_an_upload_gets_it_from_the_start() {
    struct Forgetful {
        db: MemoryStore,
        stages: usize,
    }
    impl Database for Forgetful {
        fn execute(&mut self, request: Request) -> Result<Response, DbError> {
            if let Request::StageAttachment(r) = &request {
                self.stages += 1;
                if self.stages == 3 {
                    // Start the upload over behind the sender's back.
                    let restart = StageRequest {
                        offset: 0,
                        data: Bytes::new(),
                        ..r.clone()
                    };
                    self.db.execute(Request::StageAttachment(restart)).unwrap();
                }
            }
            self.db.execute(request)
        }
    }
    let mut a = MemoryStore::new("a");
    let big = blob(300_001, 7);
    a.put(json!({"_id": "c", "_attachments": {"big": {"content_type": "x/y", "data": b64(&big)}}}))
        .unwrap();
    let mut t = Forgetful {
        db: MemoryStore::new("b"),
        stages: 0,
    };
    let config = cfg("a", "b").attachment_range(Some(64 << 10));
    let p = replicate(&mut a, &mut t, config).unwrap();
    assert_eq!(p.docs_written, 1);
    // What was sent before the target forgot it is counted: it travelled.
    assert!(p.attachment_bytes > 300_001, "{} bytes", p.attachment_bytes);
    assert!(
        t.stages > 300_001usize.div_ceil(64 << 10),
        "{} ranges",
        t.stages
    );
    assert_eq!(&t.db.get_attachment("c", "big").unwrap().data[..], &big[..]);
}
