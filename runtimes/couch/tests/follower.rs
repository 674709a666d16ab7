//! The continuous `_changes` follower: against the hub, and against a scripted server for the
//! failures (closed connections, malformed and oversized lines, silence).

mod common;

use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use common::{chunk, start_chunked, FakeServer, TestDb};
use peerpouch::{Database, Seq};
use peerpouch_couch::{ChangesFollower, CouchClient, Error, FeedEvent, FollowerConfig};
use serde_json::json;

/// Generous bound for one event; the tests never sleep, they wait for events.
const WAIT: Duration = Duration::from_secs(20);

fn next(rx: &Receiver<FeedEvent>) -> FeedEvent {
    match rx.recv_timeout(WAIT) {
        Ok(ev) => ev,
        Err(e) => panic!("no feed event within {WAIT:?}: {e}"),
    }
}

fn wait_connected(rx: &Receiver<FeedEvent>) -> Seq {
    match next(rx) {
        FeedEvent::Connected { since } => since,
        FeedEvent::Reconnecting { error, .. } => panic!("feed failed: {error}"),
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn follower_delivers_rows_written_after_it_started_in_order() {
    let mut db = TestDb::new("follow");
    db.client.put(json!({"_id": "old"})).unwrap();
    let since = db.client.info().unwrap().update_seq;
    let config = FollowerConfig::default()
        .since(since.clone())
        .heartbeat(Duration::from_millis(250));
    let (follower, rx) = ChangesFollower::start(&db.client, config).unwrap();
    assert_eq!(wait_connected(&rx), since);
    let n = 30;
    for i in 0..n {
        db.client
            .put(json!({"_id": format!("doc{i:02}"), "i": i}))
            .unwrap();
    }
    let mut rows = Vec::new();
    while rows.len() < n {
        match next(&rx) {
            FeedEvent::Rows(batch) => {
                assert!(!batch.is_empty());
                rows.extend(batch);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    let ids: Vec<String> = rows.iter().map(|r| r.id.clone()).collect();
    let expected: Vec<String> = (0..n).map(|i| format!("doc{i:02}")).collect();
    assert_eq!(ids, expected, "rows arrive once each, in write order");
    let seqs: Vec<u64> = rows.iter().map(|r| r.seq.as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(seqs[0] > since.as_u64().unwrap());
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.doc.as_ref().unwrap()["i"], i, "include_docs");
    }
    follower.stop();
}

#[test]
fn follower_filters_by_doc_ids_and_sees_deletions() {
    let mut db = TestDb::new("followids");
    let config = FollowerConfig::default()
        .heartbeat(Duration::from_millis(250))
        .doc_ids(vec!["mine".into()]);
    let (follower, rx) = ChangesFollower::start(&db.client, config).unwrap();
    wait_connected(&rx);
    db.client.put(json!({"_id": "other"})).unwrap();
    let r = db.client.put(json!({"_id": "mine"})).unwrap();
    db.client
        .put(json!({"_id": "mine", "_rev": r.to_string(), "_deleted": true}))
        .unwrap();
    let mut rows = Vec::new();
    while !rows.iter().any(|r: &peerpouch::ChangeRow| r.deleted) {
        match next(&rx) {
            FeedEvent::Rows(b) => rows.extend(b),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(rows.iter().all(|r| r.id == "mine"), "{rows:?}");
    let last = rows.last().unwrap();
    assert!(last.deleted);
    assert_eq!(last.doc.as_ref().unwrap()["_deleted"], true);
    follower.stop();
    db.client.info().unwrap();
}

#[test]
fn stop_returns_within_about_one_heartbeat() {
    let db = TestDb::new("followstop");
    let hb = Duration::from_millis(300);
    let (follower, rx) =
        ChangesFollower::start(&db.client, FollowerConfig::default().heartbeat(hb)).unwrap();
    wait_connected(&rx);
    assert!(follower.is_running());
    let t0 = Instant::now();
    follower.stop();
    let took = t0.elapsed();
    eprintln!("stop() took {took:?} with a {hb:?} heartbeat");
    assert!(took < hb * 3, "stop took {took:?}");
    // The thread is gone: the channel is closed once buffered events are drained.
    loop {
        match rx.recv_timeout(WAIT) {
            Ok(_) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
            Err(RecvTimeoutError::Timeout) => panic!("feed thread still alive"),
        }
    }

    // Dropping the follower also stops it.
    let (follower, rx) =
        ChangesFollower::start(&db.client, FollowerConfig::default().heartbeat(hb)).unwrap();
    wait_connected(&rx);
    let t0 = Instant::now();
    drop(follower);
    assert!(t0.elapsed() < hb * 3);
}

#[test]
fn follower_stops_when_the_receiver_is_dropped() {
    let db = TestDb::new("followrx");
    let (follower, rx) = ChangesFollower::start(
        &db.client,
        FollowerConfig::default().heartbeat(Duration::from_millis(100)),
    )
    .unwrap();
    wait_connected(&rx);
    drop(rx);
    let mut writer = db.other_client(Default::default());
    // The next row cannot be delivered: the thread notices and ends.
    writer.put(json!({"_id": "x"})).unwrap();
    let t0 = Instant::now();
    while follower.is_running() {
        assert!(t0.elapsed() < WAIT, "thread did not end");
        std::thread::yield_now();
    }
}

/// A scripted feed: the first connection sends two rows, garbage and an oversized line is
/// not sent; then closes. The second sends a row and a `last_seq` line. The third hangs on
/// heartbeats until the client leaves.
#[test]
fn follower_survives_closed_connections_and_malformed_lines() {
    let (conn_tx, conn_rx) = mpsc::channel::<String>();
    let server = FakeServer::start(move |req, conn| {
        let _ = conn_tx.send(req.target.clone());
        start_chunked(conn);
        if req.target.contains("since=0&") {
            let _ = chunk(
                conn,
                b"{\"seq\":1,\"id\":\"a\",\"changes\":[{\"rev\":\"1-a\"}]}\n\n",
            );
            let _ = chunk(
                conn,
                b"this is not json\n{\"seq\":2,\"id\":\"b\",\"changes\":[]",
            );
            let _ = chunk(conn, b"}\n{\"seq\":3,\"changes\":\"nope\"}\n");
            // Connection closes without a last_seq line.
        } else if req.target.contains("since=2&") {
            let _ = chunk(
                conn,
                b"{\"seq\":4,\"id\":\"c\",\"changes\":[{\"rev\":\"1-c\"}],\"deleted\":true}\n",
            );
            let _ = chunk(conn, b"{\"last_seq\":4}\n");
        } else {
            while chunk(conn, b"\n").is_ok() {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    let client = CouchClient::new(&format!("{}/db", server.base)).unwrap();
    let config = FollowerConfig::default()
        .heartbeat(Duration::from_millis(500))
        .backoff(Duration::from_millis(10), Duration::from_millis(50));
    let (follower, rx) = ChangesFollower::start(&client, config).unwrap();

    let mut events = Vec::new();
    let mut ids = Vec::new();
    while ids.len() < 3 {
        let ev = next(&rx);
        if let FeedEvent::Rows(rows) = &ev {
            ids.extend(rows.iter().map(|r| r.id.clone()));
        }
        events.push(ev);
    }
    assert_eq!(ids, ["a", "b", "c"]);
    let malformed: Vec<&FeedEvent> = events
        .iter()
        .filter(|e| matches!(e, FeedEvent::Malformed { .. }))
        .collect();
    assert_eq!(malformed.len(), 2, "{events:?}");
    assert!(
        matches!(malformed[0], FeedEvent::Malformed { line_prefix, .. } if line_prefix == "this is not json")
    );
    assert!(events.iter().any(|e| matches!(e,
        FeedEvent::Reconnecting { attempt: 1, error: Error::Unreachable { detail, .. }, .. } if detail.contains("closed"))));

    // Reconnections resume from the last delivered seq: 0, then 2 (seq 3 was malformed),
    // then 4 (from the last_seq line, without a backoff).
    let mut targets = vec![conn_rx.recv_timeout(WAIT).unwrap()];
    targets.push(conn_rx.recv_timeout(WAIT).unwrap());
    targets.push(conn_rx.recv_timeout(WAIT).unwrap());
    let since: Vec<&str> = targets
        .iter()
        .map(|t| t.split("since=").nth(1).unwrap().split('&').next().unwrap())
        .collect();
    assert_eq!(since, ["0", "2", "4"]);
    for t in &targets {
        assert!(
            t.starts_with("/db/_changes?feed=continuous&heartbeat=500&"),
            "{t}"
        );
        assert!(
            t.contains("include_docs=true") && t.contains("style=all_docs"),
            "{t}"
        );
    }
    let t0 = Instant::now();
    follower.stop();
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[test]
fn oversized_lines_and_silent_connections_are_given_up() {
    let server = FakeServer::start(move |req, conn| {
        start_chunked(conn);
        if req.target.contains("since=0&") {
            let _ = chunk(
                conn,
                b"{\"seq\":1,\"id\":\"a\",\"changes\":[{\"rev\":\"1-a\"}]}\n",
            );
            let _ = chunk(conn, &vec![b'x'; 4000]);
            let _ = chunk(conn, b"\n");
        } else {
            // Headers, then silence: the client must notice after ~3 heartbeats.
            std::thread::sleep(Duration::from_millis(1500));
        }
    });
    let client = CouchClient::new(&format!("{}/db", server.base)).unwrap();
    let config = FollowerConfig::default()
        .heartbeat(Duration::from_millis(100))
        .max_line_bytes(1000)
        .backoff(Duration::from_millis(10), Duration::from_millis(10));
    let (follower, rx) = ChangesFollower::start(&client, config).unwrap();
    let mut saw = (false, false, false);
    let t0 = Instant::now();
    while !(saw.0 && saw.1 && saw.2) {
        match next(&rx) {
            FeedEvent::Malformed { error, line_prefix } => {
                assert!(error.contains("1000-byte cap"), "{error}");
                assert!(line_prefix.len() <= 204, "prefix is capped");
                saw.0 = true;
            }
            FeedEvent::Reconnecting {
                error: Error::LineTooLong { limit: 1000 },
                ..
            } => saw.1 = true,
            FeedEvent::Reconnecting {
                error: Error::Unreachable { detail, .. },
                ..
            } if detail.contains("looks dead") => saw.2 = true,
            _ => {}
        }
        assert!(t0.elapsed() < WAIT);
    }
    follower.stop();
}

#[test]
fn a_selector_filter_the_server_refuses_falls_back_to_the_whole_feed() {
    use peerpouch::hub::FeedFilter;
    // pouchdb-server 4.2.0 answers filter=_selector with 404: the follower says so and reads
    // everything instead, foreign signals included, and the server keeps serving.
    let mut db = TestDb::new("follow_selector");
    let since = db.client.info().unwrap().update_seq;
    let config = FollowerConfig::default()
        .since(since)
        .heartbeat(Duration::from_millis(250))
        .filter(FeedFilter::new(["peer-me".to_string()]));
    let (follower, rx) = ChangesFollower::start(&db.client, config).unwrap();
    match next(&rx) {
        FeedEvent::Unfiltered { reason } => assert!(reason.contains("404"), "{reason}"),
        other => panic!("expected the fallback first, got {other:?}"),
    }
    wait_connected(&rx);
    db.client
        .put(
            json!({"_id": "p-signal-x", "type": "com.stemstorage.peerpouch.signal",
            "sender": "peer-a", "recipient": "share-b", "data": {"candidate": null}}),
        )
        .unwrap();
    db.client
        .put(
            json!({"_id": "s-signal-y", "type": "com.stemstorage.peerpouch.signal",
            "sender": "share-b", "recipient": "peer-me", "data": {"candidate": null}}),
        )
        .unwrap();
    let mut ids = Vec::new();
    while ids.len() < 2 {
        match next(&rx) {
            FeedEvent::Rows(rows) => ids.extend(rows.into_iter().map(|r| r.id)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ids, ["p-signal-x", "s-signal-y"]);
    follower.stop();
    assert!(db.client.info().is_ok(), "the hub still answers");
}

#[test]
fn a_selector_filter_the_server_ignores_is_noticed() {
    use peerpouch::hub::FeedFilter;
    // A server that answers 200 but sends rows the filter does not pass: reported once, the
    // rows are still delivered (the reader ignores what is not its business).
    let body = concat!(
        "{\"seq\":1,\"id\":\"p-signal-x\",\"changes\":[{\"rev\":\"1-a\"}],\"doc\":{\"_id\":\"p-signal-x\",\"recipient\":\"share-b\"}}\n",
        "{\"seq\":2,\"id\":\"p-signal-z\",\"changes\":[{\"rev\":\"1-a\"}],\"doc\":{\"_id\":\"p-signal-z\",\"recipient\":\"share-c\"}}\n",
    );
    let server = FakeServer::start(move |req, conn| {
        start_chunked(conn);
        if req.target.contains("since=0&") {
            let _ = chunk(conn, body.as_bytes());
        }
        while chunk(conn, b"\n").is_ok() {
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    let client = CouchClient::new(&format!("{}/db", server.base)).unwrap();
    let config = FollowerConfig::default()
        .heartbeat(Duration::from_millis(250))
        .filter(FeedFilter::new(["peer-me".to_string()]));
    let (follower, rx) = ChangesFollower::start(&client, config).unwrap();
    wait_connected(&rx);
    let mut unfiltered = 0;
    let mut ids = Vec::new();
    while ids.len() < 2 {
        match next(&rx) {
            FeedEvent::Unfiltered { reason } => {
                assert!(reason.contains("ignores"), "{reason}");
                unfiltered += 1;
            }
            FeedEvent::Rows(rows) => ids.extend(rows.into_iter().map(|r| r.id)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(ids, ["p-signal-x", "p-signal-z"]);
    assert_eq!(unfiltered, 1);
    follower.stop();
    // What a CouchDB 2+ server is asked for.
    let req = &server.requests()[0];
    assert_eq!(req.method, "POST");
    assert!(req.target.contains("filter=_selector"), "{}", req.target);
    assert!(req.target.contains("include_docs=true"), "{}", req.target);
    let body: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
    assert_eq!(
        body,
        json!({"selector": {"$or": [
            {"type": "com.stemstorage.peerpouch.share"},
            {"recipient": {"$in": ["peer-me"]}},
            {"_deleted": true, "_id": {"$regex": "^share-"}},
        ]}})
    );
}
