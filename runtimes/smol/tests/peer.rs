//! The async API end to end on real UDP sockets: two `PeerNode`s on 127.0.0.1 meeting on the
//! in-process hub (and, in `couch_*` tests, on the pouchdb-server test hub over HTTP).

use std::future::Future;
use std::time::Duration;

use futures_lite::future;
use peerpouch::replicate::ReplicationEvent;
use peerpouch::{AllDocsRequest, ChangesRequest, DbError, MemoryStore, Seq};
use peerpouch_smol::{
    Db, HubSpec, Identity, InProcessHub, LinkEvent, PeerConfig, PeerError, PeerNode,
    ReplicateError, ReplicateOptions, ShareChange, ShareConfig, Verdict,
};
use serde_json::{Value, json};

/// Fails the test when `f` does not finish within `secs` (a deadline, not a synchronisation).
fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    smol::block_on(future::or(async { Some(f.await) }, async {
        async_io::Timer::after(Duration::from_secs(secs)).await;
        None
    }))
    .unwrap_or_else(|| panic!("{what} did not finish within {secs} s"))
}

/// `RUST_LOG=peerpouch_smol=debug` shows the nodes' logs.
fn logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A node on loopback only: tests send traffic to 127.0.0.1, whatever the product's default
/// (every interface).
fn start(hub: HubSpec) -> Result<PeerNode, PeerError> {
    PeerNode::start_with(PeerConfig::new(hub).bind("127.0.0.1:0".parse().unwrap()))
}

fn pair() -> (PeerNode, PeerNode) {
    logs();
    let hub = InProcessHub::new();
    (
        start(HubSpec::InProcess(hub.clone())).unwrap(),
        start(HubSpec::InProcess(hub)).unwrap(),
    )
}

async fn seeded(node: &PeerNode, name: &str, n: usize) -> Db {
    let db = node.add_db(name, MemoryStore::new(name)).await.unwrap();
    let docs: Vec<Value> = (0..n)
        .map(|i| json!({"_id": format!("doc-{i:04}"), "n": i}))
        .collect();
    for r in db.bulk_docs(docs, true).await.unwrap() {
        r.result.unwrap();
    }
    db
}

/// One-shot replication on `node`, to its end.
async fn once(node: &PeerNode, source: &Db, target: &Db) -> peerpouch::replicate::Progress {
    node.replicate(source, target, ReplicateOptions::default())
        .await
        .unwrap()
        .finished()
        .await
        .unwrap()
}

/// Alice shares a database of `n` docs named `name`; Bob opens it (by that name).
async fn share_and_open(
    alice: &PeerNode,
    bob: &PeerNode,
    name: &str,
    n: usize,
    config: ShareConfig,
) -> (Db, String, Db) {
    let db = seeded(alice, name, n).await;
    let share = alice.share(&db, config).await.unwrap();
    let remote = bob.open(name, Value::Null).await.unwrap();
    (db, share, remote)
}

/// A changes request from sequence `n`.
fn since(n: u64) -> ChangesRequest {
    ChangesRequest {
        since: Seq::from(n),
        ..ChangesRequest::default()
    }
}

async fn ids_and_revs(db: &Db) -> Vec<(String, String)> {
    db.all_docs(AllDocsRequest::default())
        .await
        .unwrap()
        .rows
        .into_iter()
        .map(|r| (r.id.unwrap(), r.value.unwrap().rev.to_string()))
        .collect()
}

#[test]
fn share_watch_open_and_replicate_both_ways() {
    let (alice, bob) = pair();
    within(60, "the exchange", async {
        let watch = bob.watch_shares().await.unwrap();
        let notes = seeded(&alice, "notes", 300).await;
        notes
            .put(json!({"_id": "pic", "_attachments": {"a.bin": {
                "content_type": "application/octet-stream", "data": "AAECAwQFBgc="}}}))
            .await
            .unwrap();
        let share = alice
            .share(
                &notes,
                ShareConfig::new()
                    .name("alice-notes")
                    .info(json!({"owner": "alice"})),
            )
            .await
            .unwrap();
        let added = loop {
            match watch.recv().await.unwrap() {
                ShareChange::Added(s) if s.id == share => break s,
                _ => {}
            }
        };
        assert_eq!(added.name.as_deref(), Some("alice-notes"));
        assert_eq!(added.info, json!({"owner": "alice"}));
        assert!(bob.shares().await.unwrap().iter().any(|s| s.id == share));

        let links = alice.watch_links().await.unwrap();
        let remote = bob
            .open("alice-notes", json!({"name": "bob"}))
            .await
            .unwrap();
        assert_eq!(remote.info().await.unwrap().doc_count, 301);
        match links.recv().await.unwrap() {
            LinkEvent::Ready { share: s, ours, .. } => assert!(s == share && ours),
            other => panic!("expected a ready link, got {other:?}"),
        }
        // Every method works on the remote as on a local database.
        let leaves = remote
            .open_revs(peerpouch::OpenRevsRequest::all("doc-0002"))
            .await
            .unwrap();
        assert_eq!(leaves.len(), 1);
        let local_doc: peerpouch::Doc = serde_json::from_value(json!({"seen": 1})).unwrap();
        let rev = remote.put_local("bob-was-here", local_doc).await.unwrap();
        assert_eq!(notes.get_local("bob-was-here").await.unwrap()["seen"], 1);
        remote
            .delete_local("bob-was-here", Some(rev))
            .await
            .unwrap();
        assert!(matches!(
            notes.get_local("bob-was-here").await,
            Err(DbError::NotFound(_))
        ));
        let att = remote.get_attachment("pic", "a.bin").await.unwrap();
        assert_eq!(att.data, (0u8..8).collect::<Vec<u8>>());

        let copy = bob.add_db("copy", MemoryStore::new("copy")).await.unwrap();
        let p = once(&bob, &remote, &copy).await;
        assert_eq!(p.docs_written, 301);
        assert_eq!(ids_and_revs(&copy).await, ids_and_revs(&notes).await);

        // Bob edits and pushes back through the same link.
        let mut d = copy.get("doc-0007").await.unwrap();
        d["n"] = json!("edited by bob");
        copy.put(Value::Object(d)).await.unwrap();
        let p = once(&bob, &copy, &remote).await;
        assert_eq!(p.docs_written, 1);
        assert_eq!(notes.get("doc-0007").await.unwrap()["n"], "edited by bob");
        assert_eq!(ids_and_revs(&copy).await, ids_and_revs(&notes).await);
    });
    within(10, "shutdown", async {
        alice.shutdown().await;
        bob.shutdown().await;
    });
}

#[test]
fn a_share_is_known_by_its_databases_identity_under_any_share_id_or_name() {
    let (alice, bob) = pair();
    within(60, "the exchange", async {
        let uuid = "0f8fad5bd9cb469fa16570867728950e";
        let store = MemoryStore::new("notes").with_uuid(uuid).unwrap();
        let notes = alice.add_db("notes", store).await.unwrap();
        assert_eq!(notes.db_uuid(), Some(uuid));
        let docs: Vec<Value> = (0..20)
            .map(|i| json!({"_id": format!("d{i:02}")}))
            .collect();
        notes.bulk_docs(docs, true).await.unwrap();
        let first = alice
            .share(&notes, ShareConfig::new().name("first"))
            .await
            .unwrap();
        let remote = bob.open("first", Value::Null).await.unwrap();
        assert_eq!(remote.db_uuid(), Some(uuid), "the sharer's hello gave it");
        let copy = bob.add_db("copy", MemoryStore::new("copy")).await.unwrap();
        let p = once(&bob, &remote, &copy).await;
        assert_eq!((p.changes_read, p.docs_written), (20, 20));

        // The same database again under a new share id and another name (as after the sharer
        // restarted): the checkpoint is found, only the new changes are read.
        alice.unshare(&first).await.unwrap();
        notes.put(json!({"_id": "new-1"})).await.unwrap();
        notes.put(json!({"_id": "new-2"})).await.unwrap();
        let second = alice
            .share(&notes, ShareConfig::new().name("second"))
            .await
            .unwrap();
        assert_ne!(second, first);
        let again = bob.open("second", Value::Null).await.unwrap();
        assert_eq!(again.db_uuid(), Some(uuid));
        let p = once(&bob, &again, &copy).await;
        assert_eq!((p.changes_read, p.docs_written), (2, 2));
        assert_eq!(copy.info().await.unwrap().doc_count, 22);
    });
    within(10, "shutdown", async {
        alice.shutdown().await;
        bob.shutdown().await;
    });
}

#[test]
fn ask_sees_the_peers_info_and_refuses_strangers() {
    let (alice, bob) = pair();
    within(60, "the refusal", async {
        let db = seeded(&alice, "private", 5).await;
        alice
            .share(
                &db,
                ShareConfig::new().name("private").ask(|req| {
                    if req.info["name"] == "friend" {
                        Verdict::Accept
                    } else {
                        Verdict::Refuse(Some(format!("who is {}?", req.info["name"])))
                    }
                }),
            )
            .await
            .unwrap();
        match bob.open("private", json!({"name": "stranger"})).await {
            Err(PeerError::Refused(Some(reason))) => assert_eq!(reason, "who is \"stranger\"?"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let remote = bob
            .open("private", json!({"name": "friend"}))
            .await
            .unwrap();
        assert_eq!(remote.get("doc-0003").await.unwrap()["n"], 3);
    });
}

#[test]
fn ask_decides_on_the_peers_fingerprint_and_both_sides_see_each_other() {
    logs();
    let hub = InProcessHub::new();
    let with = |id: &Identity| {
        PeerNode::start_with(
            PeerConfig::new(HubSpec::InProcess(hub.clone()))
                .bind("127.0.0.1:0".parse().unwrap())
                .identity(id.clone()),
        )
        .unwrap()
    };
    let (alice_id, bob_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let alice = with(&alice_id);
    let bob = with(&bob_id);
    // A second process with Bob's identity: a peer id of its own on the hub, the same
    // fingerprint, and both get in.
    let bob_again = with(&bob_id);
    let carol = start(HubSpec::InProcess(hub.clone())).unwrap();
    assert_eq!(alice.fingerprint(), alice_id.fingerprint());
    assert_ne!(carol.fingerprint(), bob.fingerprint());
    within(60, "the opens", async {
        let db = seeded(&alice, "private", 3).await;
        let (seen_tx, seen) = async_channel::unbounded();
        let allowed = bob_id.fingerprint().to_string();
        alice
            .share(
                &db,
                ShareConfig::new().name("private").ask(move |req| {
                    let _ = seen_tx.try_send(req.fingerprint.clone());
                    if req.fingerprint.as_deref() == Some(allowed.as_str()) {
                        Verdict::Accept
                    } else {
                        Verdict::Refuse(Some("unknown certificate".into()))
                    }
                }),
            )
            .await
            .unwrap();
        let links = alice.watch_links().await.unwrap();
        let remote = bob.open("private", json!({"name": "bob"})).await.unwrap();
        assert_eq!(remote.fingerprint(), Some(alice.fingerprint()));
        assert_eq!(remote.get("doc-0002").await.unwrap()["n"], 2);
        let again = bob_again
            .open("private", json!({"name": "bob"}))
            .await
            .unwrap();
        assert_eq!(again.get("doc-0001").await.unwrap()["n"], 1);
        assert!(matches!(
            carol.open("private", json!({"name": "bob"})).await,
            Err(PeerError::Refused(Some(r))) if r == "unknown certificate"
        ));
        let asked: Vec<Option<String>> = (0..3).map(|_| seen.try_recv().unwrap()).collect();
        let bob_fp = Some(bob.fingerprint().to_string());
        assert_eq!(
            asked,
            vec![
                bob_fp.clone(),
                bob_fp.clone(),
                Some(carol.fingerprint().to_string())
            ]
        );
        // The sharer's side of the link names the same certificate.
        let mut ready = Vec::new();
        while ready.len() < 2 {
            if let LinkEvent::Ready { fingerprint, .. } = links.recv().await.unwrap() {
                ready.push(fingerprint);
            }
        }
        assert_eq!(ready, vec![bob_fp.clone(), bob_fp]);
    });
}

#[test]
fn unknown_and_ambiguous_shares_are_typed_errors() {
    let (alice, bob) = pair();
    within(30, "the lookups", async {
        let a = seeded(&alice, "a", 1).await;
        let b = seeded(&alice, "b", 1).await;
        alice
            .share(&a, ShareConfig::new().name("twin"))
            .await
            .unwrap();
        alice
            .share(&b, ShareConfig::new().name("twin"))
            .await
            .unwrap();
        assert!(matches!(
            bob.open("nobody", Value::Null).await,
            Err(PeerError::UnknownShare(s)) if s == "nobody"
        ));
        let ids = match bob.open("twin", Value::Null).await {
            Err(PeerError::AmbiguousShare { count, ids, .. }) => {
                assert_eq!(count, 2);
                // Either can be opened by its id.
                let remote = bob.open(&ids[1], Value::Null).await.unwrap();
                assert_eq!(remote.info().await.unwrap().doc_count, 1);
                ids
            }
            other => panic!("expected an ambiguity, got {other:?}"),
        };
        let foreign = alice.add_db("x", MemoryStore::new("x")).await.unwrap();
        assert!(matches!(
            bob.share(&foreign, ShareConfig::new()).await,
            Err(PeerError::ForeignDb(_))
        ));
        let mine = bob.add_db("y", MemoryStore::new("y")).await.unwrap();
        assert!(matches!(
            bob.replicate(&foreign, &mine, ReplicateOptions::default())
                .await,
            Err(PeerError::ForeignDb(_))
        ));
        let remote = bob.open(&ids[0], Value::Null).await.unwrap();
        assert!(matches!(
            bob.share(&remote, ShareConfig::new()).await,
            Err(PeerError::NotLocal(_))
        ));
    });
}

#[test]
fn read_only_shares_refuse_writes_but_serve_reads() {
    let (alice, bob) = pair();
    within(30, "the read-only share", async {
        let (db, _, remote) = share_and_open(
            &alice,
            &bob,
            "ro",
            3,
            ShareConfig::new().name("ro").read_only(true),
        )
        .await;
        assert_eq!(remote.get("doc-0001").await.unwrap()["n"], 1);
        assert!(matches!(
            remote.put(json!({"_id": "intruder"})).await,
            Err(DbError::Forbidden(_))
        ));
        assert!(matches!(
            db.get("intruder").await,
            Err(DbError::NotFound(_))
        ));
    });
}

#[test]
fn unshare_is_seen_by_watchers_and_ends_the_links() {
    let (alice, bob) = pair();
    within(60, "the unshare", async {
        let (_, share, remote) =
            share_and_open(&alice, &bob, "going", 2, ShareConfig::new().name("going")).await;
        assert_eq!(remote.info().await.unwrap().doc_count, 2);
        let watch = bob.watch_shares().await.unwrap();
        // The watch starts with the shares already there.
        assert!(matches!(watch.recv().await.unwrap(), ShareChange::Added(s) if s.id == share));
        let closed = remote.clone();
        let closed = smol::spawn(async move { closed.closed().await });
        alice.unshare(&share).await.unwrap();
        loop {
            if let ShareChange::Removed(id) = watch.recv().await.unwrap() {
                if id == share {
                    break;
                }
            }
        }
        assert!(!bob.shares().await.unwrap().iter().any(|s| s.id == share));
        // The sharer closed the link: we see it, and calls fail.
        let reason = closed.await;
        assert!(!reason.is_empty());
        assert!(matches!(remote.info().await, Err(DbError::Unavailable(_))));
        assert!(matches!(
            bob.open("going", Value::Null).await,
            Err(PeerError::UnknownShare(_))
        ));
        assert!(matches!(
            alice.unshare(&share).await,
            Err(PeerError::Node(_))
        ));
    });
}

#[test]
fn live_replication_and_subscriptions_follow_new_writes() {
    let (alice, bob) = pair();
    within(60, "the live replication", async {
        let (db, _, remote) =
            share_and_open(&alice, &bob, "live", 10, ShareConfig::new().name("live")).await;
        let copy = bob.add_db("copy", MemoryStore::new("copy")).await.unwrap();
        let sub = remote.subscribe(since(10)).await.unwrap();
        let local_sub = copy.subscribe(ChangesRequest::default()).await.unwrap();
        let mut rep = bob
            .replicate(&remote, &copy, ReplicateOptions::live())
            .await
            .unwrap();
        loop {
            if let Some(ReplicationEvent::CaughtUp(p)) = rep.next_event().await {
                if p.docs_written == 10 {
                    break;
                }
            }
        }
        db.put(json!({"_id": "late", "v": 1})).await.unwrap();
        // The peer's subscription sees it, the replication copies it, the local feed shows it.
        let batch = sub.next().await.unwrap();
        assert_eq!(batch.results[0].id, "late");
        loop {
            if let Some(ReplicationEvent::CaughtUp(p)) = rep.next_event().await {
                if p.docs_written == 11 {
                    break;
                }
            }
        }
        assert_eq!(copy.get("late").await.unwrap()["v"], 1);
        let mut seen = Vec::new();
        while !seen.contains(&"late".to_string()) {
            seen.extend(
                local_sub
                    .next()
                    .await
                    .unwrap()
                    .results
                    .into_iter()
                    .map(|r| r.id),
            );
        }
        assert_eq!(seen.len(), 11);
        rep.cancel().await;
        match rep.finished().await {
            Err(ReplicateError::Cancelled(p)) => assert_eq!(p.docs_written, 11),
            other => panic!("expected a cancellation, got {other:?}"),
        }
    });
}

/// A reader that stops reading a remote feed costs at most 1024 batches: then the feed ends,
/// what was queued stays readable, the link keeps working, and resubscribing from the last seq
/// read picks up exactly the rest.
#[test]
fn a_subscription_whose_reader_falls_behind_ends_and_resumes() {
    let (alice, bob) = pair();
    within(120, "the backlog test", async {
        let (db, _, remote) =
            share_and_open(&alice, &bob, "feed", 0, ShareConfig::new().name("feed")).await;
        let sub = remote.subscribe(ChangesRequest::default()).await.unwrap();
        // One write at a time, each seen by a read over the link, so each makes its own batch
        // (the server folds changes that arrive while a batch is being made into the next one:
        // more writes than the backlog leaves room for that).
        const WRITES: usize = 1300;
        for i in 0..WRITES {
            db.put(json!({"_id": format!("d{i:04}")})).await.unwrap();
            remote.get(&format!("d{i:04}")).await.unwrap();
        }
        let mut batches = 0;
        let mut ids = Vec::new();
        let mut last_seq = Seq::from(0u64);
        while let Some(b) = sub.next().await {
            batches += 1;
            ids.extend(b.results.into_iter().map(|r| r.id));
            last_seq = b.last_seq;
        }
        assert_eq!(batches, 1024, "the queued batches, then the end");
        assert!(ids.len() < WRITES, "the feed was cut: {} rows", ids.len());
        let expected: Vec<String> = (0..ids.len()).map(|i| format!("d{i:04}")).collect();
        assert_eq!(ids, expected, "in order, none lost before the cut");
        // The link is fine, and the feed resumes where the reader stopped.
        assert_eq!(remote.info().await.unwrap().doc_count, WRITES as u64);
        let again = remote
            .subscribe(ChangesRequest {
                since: last_seq,
                ..ChangesRequest::default()
            })
            .await
            .unwrap();
        while ids.len() < WRITES {
            ids.extend(
                again
                    .next()
                    .await
                    .unwrap()
                    .results
                    .into_iter()
                    .map(|r| r.id),
            );
        }
        let all: Vec<String> = (0..WRITES).map(|i| format!("d{i:04}")).collect();
        assert_eq!(ids, all, "every change exactly once across the two feeds");
    });
}

/// Dropped subscriptions of a local database that never changes are forgotten at once, not at
/// its next change: an app that subscribes and drops (a screen opened and closed) does not make
/// the node's task grow.
#[test]
fn dropped_local_subscriptions_are_forgotten_at_once() {
    let (alice, _bob) = pair();
    within(60, "the subscriptions", async {
        let db = seeded(&alice, "quiet", 3).await;
        let waiting = || async { alice.stats().await.unwrap().waiting_longpolls };
        let kept = db.subscribe(ChangesRequest::default()).await.unwrap();
        assert_eq!(kept.next().await.unwrap().results.len(), 3);
        for _ in 0..200 {
            drop(db.subscribe(since(3)).await.unwrap());
        }
        // Each dropped feed's task tells the node as it ends (on other threads): ask until
        // only the kept feed waits; `within` fails the test if that never happens.
        while waiting().await != 1 {
            smol::future::yield_now().await;
        }
        // The kept feed still works.
        db.put(json!({"_id": "new"})).await.unwrap();
        assert_eq!(kept.next().await.unwrap().results[0].id, "new");
        drop(kept);
        let stats = alice.stats().await.unwrap();
        assert_eq!((stats.databases, stats.remote_subscriptions), (1, 0));
    });
}

/// A live follower that goes leaves nothing on the sharer: the longpoll its link's server had
/// parked on the shared database is dropped with the link, not kept until the next change.
#[test]
fn a_follower_that_left_leaves_no_waiting_longpoll_on_the_sharer() {
    let (alice, bob) = pair();
    within(30, "the follower's leaving", async {
        let (_db, _share, remote) = share_and_open(
            &alice,
            &bob,
            "followed",
            5,
            ShareConfig::new().name("followed"),
        )
        .await;
        let copy = bob.add_db("copy", MemoryStore::new("copy")).await.unwrap();
        let mut rep = bob
            .replicate(&remote, &copy, ReplicateOptions::live())
            .await
            .unwrap();
        loop {
            if let Some(ReplicationEvent::CaughtUp(p)) = rep.next_event().await {
                if p.docs_written == 5 {
                    break;
                }
            }
        }
        let stats = || async { alice.stats().await.unwrap() };
        // The follower's changes request waits on the sharer's database.
        while stats().await.waiting_longpolls != 1 {
            smol::future::yield_now().await;
        }
        assert_eq!(stats().await.links, 1);
        bob.shutdown().await;
        // The sharer sees the link go (the goodbye), and with it the waiting request (on a
        // database that never changes again: `within` fails the test if it stays).
        while stats().await.links != 0 {
            smol::future::yield_now().await;
        }
        while stats().await.waiting_longpolls != 0 {
            smol::future::yield_now().await;
        }
    });
}

#[test]
fn a_stopped_node_gives_typed_errors() {
    let (alice, _bob) = pair();
    within(30, "the stop", async {
        let db = seeded(&alice, "x", 1).await;
        alice.shutdown().await;
        assert!(matches!(db.info().await, Err(DbError::Unavailable(_))));
        assert!(matches!(alice.shares().await, Err(PeerError::Stopped)));
    });
}

fn test_hub() -> String {
    std::env::var("PEERPOUCH_TEST_HUB").unwrap_or_else(|_| {
        panic!(
            "PEERPOUCH_TEST_HUB is not set: run the tests through `.ci/test` (which starts the \
             pouchdb-server test hub)"
        )
    })
}

fn fresh_db_url(prefix: &str) -> String {
    let mut b = [0u8; 6];
    getrandom::fill(&mut b).unwrap();
    let suffix: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}/{prefix}-{suffix}", test_hub().trim_end_matches('/'))
}

#[test]
fn couch_hub_two_nodes_share_and_replicate() {
    logs();
    let hub = fresh_db_url("peer-hub");
    let alice = start(HubSpec::Couch(hub.clone())).unwrap();
    let bob = start(HubSpec::Couch(hub)).unwrap();
    within(120, "the exchange over the CouchDB hub", async {
        let db = seeded(&alice, "notes", 200).await;
        alice
            .share(&db, ShareConfig::new().name("couch-notes"))
            .await
            .unwrap();
        let remote = bob
            .open("couch-notes", json!({"who": "bob"}))
            .await
            .unwrap();
        let copy = bob.add_db("copy", MemoryStore::new("copy")).await.unwrap();
        let p = once(&bob, &remote, &copy).await;
        assert_eq!(p.docs_written, 200);
        assert_eq!(ids_and_revs(&copy).await, ids_and_revs(&db).await);
    });
    within(20, "shutdown", async {
        alice.shutdown().await;
        bob.shutdown().await;
    });
}

#[test]
fn http_database_replicates_both_ways_with_a_local_one() {
    let node = start(HubSpec::InProcess(InProcessHub::new())).unwrap();
    within(120, "local <-> CouchDB", async {
        let local = seeded(&node, "local", 150).await;
        let http = node
            .http_db(&fresh_db_url("peer-http"), true)
            .await
            .unwrap();
        let p = once(&node, &local, &http).await;
        assert_eq!(p.docs_written, 150);
        assert_eq!(http.info().await.unwrap().doc_count, 150);
        http.put(json!({"_id": "from-couch"})).await.unwrap();
        let back = node.add_db("back", MemoryStore::new("back")).await.unwrap();
        let p = once(&node, &http, &back).await;
        assert_eq!(p.docs_written, 151);
        assert_eq!(ids_and_revs(&back).await.len(), 151);
        assert!(matches!(
            node.http_db("ftp://nowhere/db", false).await,
            Err(PeerError::Http(_))
        ));
    });
}

#[test]
fn an_unreachable_hub_is_reported_not_waited_for() {
    logs();
    // Nothing listens on port 1 of the loopback.
    let node = start(HubSpec::Couch("http://127.0.0.1:1/hub".into())).unwrap();
    within(30, "the hub error", async {
        assert!(matches!(node.shares().await, Err(PeerError::Hub(_))));
        let db = node.add_db("d", MemoryStore::new("d")).await.unwrap();
        assert!(matches!(
            node.share(&db, ShareConfig::new()).await,
            Err(PeerError::Hub(_))
        ));
        // Local databases still work.
        db.put(json!({"_id": "x"})).await.unwrap();
        assert_eq!(db.info().await.unwrap().doc_count, 1);
    });
    assert!(matches!(
        start(HubSpec::Couch("not a url".into())),
        Err(PeerError::Hub(_))
    ));
}

/// A replication between two databases of one node runs inside the node's driver, where each
/// answer makes the next request: its progress must still reach the caller as it happens, and
/// a cancel must stop it midway, not after the last document.
#[test]
fn a_local_replication_reports_progress_as_it_goes_and_stops_midway_on_cancel() {
    const DOCS: usize = 20_000;
    logs();
    within(300, "the local replication", async {
        let node = start(HubSpec::InProcess(InProcessHub::new())).unwrap();
        let src = seeded(&node, "src", DOCS).await;
        let dst = node.add_db("dst", MemoryStore::new("dst")).await.unwrap();
        let options = ReplicateOptions {
            batch_size: Some(100),
            ..Default::default()
        };
        let mut rep = node.replicate(&src, &dst, options).await.unwrap();
        loop {
            match rep.next_event().await.unwrap() {
                ReplicationEvent::Progressed(_) => break,
                ReplicationEvent::Completed(p) => {
                    panic!(
                        "completed ({} docs) before any progress was seen",
                        p.docs_written
                    )
                }
                _ => {}
            }
        }
        rep.cancel().await;
        let end = loop {
            match rep.next_event().await.unwrap() {
                ReplicationEvent::Cancelled(p) => break p,
                ReplicationEvent::Completed(p) => {
                    panic!("the cancel was seen only after all {} docs", p.docs_written)
                }
                _ => {}
            }
        };
        assert!(end.docs_written < DOCS as u64, "{end:?}");
        // The target holds what was reported, plus the batches that were in flight when the
        // cancel came (their writes were already asked for), and not everything.
        let held = dst.info().await.unwrap().doc_count;
        assert!(
            held >= end.docs_written && held < DOCS as u64,
            "{held} held, {end:?}"
        );
        node.shutdown().await;
    });
}

#[test]
fn a_deciding_sharer_is_awaited_and_not_accepting_in_time_is_its_own_error() {
    logs();
    let hub = InProcessHub::new();
    let alice = start(HubSpec::InProcess(hub.clone())).unwrap();
    let bob = PeerNode::start_with(
        PeerConfig::new(HubSpec::InProcess(hub))
            .bind("127.0.0.1:0".parse().unwrap())
            .answer_timeout(Duration::from_secs(1))
            .approval_timeout(Duration::from_secs(2)),
    )
    .unwrap();
    // The person at alice's terminal answers only when the test says so.
    let (answer, answers) = std::sync::mpsc::channel::<Verdict>();
    let answers = std::sync::Mutex::new(answers);
    within(60, "the wait for approval", async {
        let db = seeded(&alice, "asked", 3).await;
        alice
            .share(
                &db,
                ShareConfig::new().name("asked").ask(move |_| {
                    let next = answers.lock().unwrap().recv();
                    next.unwrap_or(Verdict::Refuse(None))
                }),
            )
            .await
            .unwrap();
        let links = bob.watch_links().await.unwrap();
        match bob.open("asked", Value::Null).await {
            Err(PeerError::NotAccepted { waited }) => assert_eq!(waited, Duration::from_secs(2)),
            other => panic!("expected NotAccepted, got {other:?}"),
        }
        assert!(matches!(
            links.recv().await.unwrap(),
            LinkEvent::AwaitingApproval { timeout, .. } if timeout == Duration::from_secs(2)
        ));
        let msg = PeerError::NotAccepted {
            waited: Duration::from_secs(2),
        }
        .to_string();
        assert!(msg.starts_with("not accepted in time"), "{msg}");
        // The late "no" to the first request, then "yes" to the second while it waits.
        answer.send(Verdict::Refuse(None)).unwrap();
        let opening = bob.open("asked", Value::Null);
        let answering = async {
            loop {
                if let LinkEvent::AwaitingApproval { .. } = links.recv().await.unwrap() {
                    answer.send(Verdict::Accept).unwrap();
                    return future::pending().await;
                }
            }
        };
        let remote = future::or(opening, answering).await.unwrap();
        assert_eq!(remote.get("doc-0002").await.unwrap()["n"], 2);
    });
}

#[test]
fn couch_a_share_nobody_answers_for_is_not_answering() {
    logs();
    let hub = fresh_db_url("stale-hub");
    let bob = PeerNode::start_with(
        PeerConfig::new(HubSpec::Couch(hub.clone()))
            .bind("127.0.0.1:0".parse().unwrap())
            .answer_timeout(Duration::from_secs(1)),
    )
    .unwrap();
    within(60, "the stale share", async {
        // What a sharer killed with -9 leaves behind: its share document, and nobody reading.
        let raw = bob.http_db(&hub, true).await.unwrap();
        raw.put(
            json!({"_id": "share-0badc0ffee", "type": "com.stemstorage.peerpouch.share",
            "name": "ghost", "info": null, "protocol": 1}),
        )
        .await
        .unwrap();
        match bob.open("ghost", Value::Null).await {
            Err(e @ PeerError::NotAnswering { .. }) => {
                assert!(
                    matches!(e, PeerError::NotAnswering { waited } if waited == Duration::from_secs(1))
                );
                assert!(
                    e.to_string()
                        .contains("the sharer is not answering (its share may be stale)"),
                    "{e}"
                );
            }
            other => panic!("expected NotAnswering, got {other:?}"),
        }
    });
}
