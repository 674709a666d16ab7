//! Share negotiation through the real hub (pouchdb-server): two or three `HubNode`s, each with
//! its own changes feed, on one hub database.

mod common;

use std::time::{Duration, Instant};

use common::TestDb;
use peerpouch::hub::*;
use peerpouch::{AllDocsRequest, Database};
use peerpouch_couch::HubNode;
use serde_json::{json, Value};

const WITHIN: Duration = Duration::from_secs(20);

fn node(db: &TestDb, seed: u64, config: HubConfig) -> HubNode {
    HubNode::connect(&db.url, config, seed)
        .expect("connect to the hub")
        .with_heartbeat(Duration::from_millis(500))
}

/// Steps every node until `done` holds for the events gathered so far (per node), or fails.
fn run(
    nodes: &mut [&mut HubNode],
    mut done: impl FnMut(&[Vec<HubEvent>]) -> bool,
) -> Vec<Vec<HubEvent>> {
    let end = Instant::now() + WITHIN;
    let mut events: Vec<Vec<HubEvent>> = nodes.iter().map(|_| Vec::new()).collect();
    while Instant::now() < end {
        for (i, n) in nodes.iter_mut().enumerate() {
            events[i].extend(n.step(Duration::from_millis(20)).expect("step"));
        }
        if done(&events) {
            return events;
        }
    }
    panic!("condition not reached within {WITHIN:?}; events: {events:#?}");
}

fn has(events: &[HubEvent], f: impl Fn(&HubEvent) -> bool) -> bool {
    events.iter().any(f)
}

/// Whether a watcher learned of `share`: from the listing that starting to watch makes, or as
/// an addition after it (which one depends on timing).
fn sees(events: &[HubEvent], share: &str) -> Option<ShareInfo> {
    events.iter().find_map(|e| match e {
        HubEvent::ShareAdded(s) if s.id == share => Some(s.clone()),
        HubEvent::SharesListed(l) => l.iter().find(|s| s.id == share).cloned(),
        _ => None,
    })
}

fn ready(nodes: &mut [&mut HubNode]) {
    run(nodes, |ev| {
        ev.iter()
            .all(|e| has(e, |x| matches!(x, HubEvent::Ready { .. })))
    });
}

fn signal_docs(db: &TestDb) -> Vec<Value> {
    let mut c = db.client.clone();
    c.all_docs(AllDocsRequest {
        start_key: Some("p-signal-".into()),
        end_key: Some("s-signal-\u{fff0}".into()),
        include_docs: true,
        ..AllDocsRequest::default()
    })
    .unwrap()
    .rows
    .into_iter()
    .filter_map(|r| r.doc)
    .collect()
}

fn cand(i: u32) -> SignalData {
    SignalData::Candidate(Some(IceCandidate {
        candidate: format!(
            "candidate:{i} 1 udp 2113937151 127.0.0.1 {} typ host",
            6000 + i
        ),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: Some("uf".into()),
    }))
}

#[test]
fn share_list_watch_and_unshare_on_the_real_hub() {
    let db = TestDb::new("neg_share");
    let mut a = node(&db, 1, HubConfig::default());
    let mut b = node(&db, 2, HubConfig::default());
    ready(&mut [&mut a, &mut b]);
    b.command(|h, now| h.watch(now, true));
    let share = a.command(|h, now| {
        h.share(
            now,
            ShareOptions {
                name: Some("notes".into()),
                info: json!({"n": 1}),
                ..ShareOptions::default()
            },
        )
    });
    let ev = run(&mut [&mut a, &mut b], |ev| {
        has(&ev[0], |e| matches!(e, HubEvent::ShareCreated { .. }))
            && sees(&ev[1], &share).is_some()
    });
    let added = sees(&ev[1], &share).unwrap();
    assert_eq!(added.name.as_deref(), Some("notes"));
    assert_eq!(added.info, json!({"n": 1}));
    b.command(|h, now| h.list(now));
    let ev = run(&mut [&mut b], |ev| {
        has(&ev[0], |e| matches!(e, HubEvent::SharesListed(_)))
    });
    assert!(has(
        &ev[0],
        |e| matches!(e, HubEvent::SharesListed(l) if l.len() == 1 && l[0].id == share)
    ));
    a.command(|h, now| h.unshare(now, &share)).unwrap();
    let ev = run(&mut [&mut a, &mut b], |ev| {
        has(&ev[0], |e| matches!(e, HubEvent::Unshared { .. }))
            && has(&ev[1], |e| {
                matches!(
                    e,
                    HubEvent::ShareRemoved {
                        reason: RemovedReason::Deleted,
                        ..
                    }
                )
            })
    });
    assert!(!ev[0].is_empty());
    assert_eq!(
        a.command(|h, now| h.unshare(now, &share)),
        Err(HubError::NotShared(share.clone()))
    );
}

#[test]
fn offer_answer_and_candidates_through_the_real_hub() {
    let db = TestDb::new("neg_signal");
    let mut s = node(&db, 11, HubConfig::default());
    let mut j = node(&db, 12, HubConfig::default());
    ready(&mut [&mut s, &mut j]);
    let share = s.command(|h, now| h.share(now, ShareOptions::default()));
    run(&mut [&mut s], |ev| {
        has(&ev[0], |e| matches!(e, HubEvent::ShareCreated { .. }))
    });
    let peer = j
        .command(|h, now| h.open(now, &share, json!({"who": "joiner"})))
        .unwrap();
    j.command(|h, now| {
        h.send_signal(now, &share, &peer, SignalData::Offer("v=0 offer".into()))?;
        (0..3).try_for_each(|i| h.send_signal(now, &share, &peer, cand(i)))
    })
    .unwrap();
    let ev = run(&mut [&mut s, &mut j], |ev| {
        has(&ev[0], |e| matches!(e, HubEvent::PeerRequested { .. }))
    });
    assert!(ev[0].contains(&HubEvent::PeerRequested {
        share: share.clone(),
        peer: peer.clone(),
        info: json!({"who": "joiner"})
    }));
    assert!(
        !has(&ev[0], |e| matches!(e, HubEvent::Signal { .. })),
        "nothing before accept"
    );
    s.command(|h, now| h.accept(now, &share, &peer)).unwrap();
    let mut got = Vec::new();
    run(&mut [&mut s, &mut j], |ev| {
        got = ev[0]
            .iter()
            .filter_map(|e| match e {
                HubEvent::Signal { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect();
        got.len() == 4
    });
    assert_eq!(
        got,
        vec![
            SignalData::Offer("v=0 offer".into()),
            cand(0),
            cand(1),
            cand(2)
        ]
    );
    s.command(|h, now| {
        h.send_signal(now, &share, &peer, SignalData::Answer("v=0 answer".into()))?;
        h.send_signal(now, &share, &peer, cand(7))
    })
    .unwrap();
    let mut back = Vec::new();
    run(&mut [&mut s, &mut j], |ev| {
        back = ev[1]
            .iter()
            .filter_map(|e| match e {
                HubEvent::Signal { data, .. } => Some(data.clone()),
                _ => None,
            })
            .collect();
        back.len() == 2
    });
    assert_eq!(back, vec![SignalData::Answer("v=0 answer".into()), cand(7)]);
    // Every consumed signal gets deleted on the hub.
    run(&mut [&mut s, &mut j], |_| signal_docs(&db).is_empty());
}

#[test]
fn refusal_on_the_real_hub() {
    let db = TestDb::new("neg_refuse");
    let mut s = node(&db, 21, HubConfig::default());
    let mut j = node(&db, 22, HubConfig::default());
    ready(&mut [&mut s, &mut j]);
    let share = s.command(|h, now| h.share(now, ShareOptions::default()));
    let peer = j
        .command(|h, now| h.open(now, &share, Value::Null))
        .unwrap();
    j.command(|h, now| h.send_signal(now, &share, &peer, SignalData::Offer("o".into())))
        .unwrap();
    run(&mut [&mut s, &mut j], |ev| {
        has(&ev[0], |e| matches!(e, HubEvent::PeerRequested { .. }))
    });
    s.command(|h, now| h.refuse(now, &share, &peer, Some("full".into())))
        .unwrap();
    let ev = run(&mut [&mut s, &mut j], |ev| {
        has(&ev[1], |e| matches!(e, HubEvent::Refused { .. }))
    });
    assert!(ev[1].contains(&HubEvent::Refused {
        share: share.clone(),
        peer: peer.clone(),
        reason: Some("full".into())
    }));
    assert!(!has(&ev[0], |e| matches!(e, HubEvent::Signal { .. })));
}

#[test]
fn an_unrefreshed_share_expires_and_is_hidden() {
    let db = TestDb::new("neg_expire");
    let mut fast = HubConfig::default();
    fast.share_ttl = Duration::from_millis(1500);
    fast.refresh_interval = Duration::from_millis(400);
    let mut s = node(&db, 31, fast.clone());
    let mut w = node(&db, 32, fast);
    ready(&mut [&mut s, &mut w]);
    w.command(|h, now| h.watch(now, true));
    let share = s.command(|h, now| h.share(now, ShareOptions::default()));
    run(&mut [&mut s, &mut w], |ev| sees(&ev[1], &share).is_some());
    // Refreshed while the sharer runs: still there after two TTLs.
    let until = Instant::now() + Duration::from_millis(3000);
    let ev = run(&mut [&mut s, &mut w], |_| Instant::now() >= until);
    assert!(
        !has(&ev[1], |e| matches!(e, HubEvent::ShareRemoved { .. })),
        "{ev:?}"
    );
    // The sharer stops (crash): its share expires for the watcher and disappears from listings.
    drop(s);
    let ev = run(&mut [&mut w], |ev| {
        has(&ev[0], |e| matches!(e, HubEvent::ShareRemoved { .. }))
    });
    assert!(ev[0].contains(&HubEvent::ShareRemoved {
        share: share.clone(),
        reason: RemovedReason::Expired
    }));
    w.command(|h, now| h.list(now));
    let ev = run(&mut [&mut w], |ev| {
        has(&ev[0], |e| matches!(e, HubEvent::SharesListed(_)))
    });
    assert!(ev[0].contains(&HubEvent::SharesListed(vec![])));
}

#[test]
fn garbage_on_the_real_hub_is_tolerated() {
    let db = TestDb::new("neg_garbage");
    let mut s = node(&db, 41, HubConfig::default());
    let mut j = node(&db, 42, HubConfig::default());
    ready(&mut [&mut s, &mut j]);
    let share = s.command(|h, now| h.share(now, ShareOptions::default()));
    run(&mut [&mut s], |ev| {
        has(&ev[0], |e| matches!(e, HubEvent::ShareCreated { .. }))
    });
    let mut c = db.client.clone();
    for g in [
        json!({"_id": "share-bad", "type": "com.stemstorage.peerpouch.share", "name": ["not", "a", "string"]}),
        json!({"_id": "p-signal-bad", "type": "com.stemstorage.peerpouch.signal", "sender": "peer-x", "recipient": share, "data": 12}),
        json!({"_id": "p-signal-huge", "type": "com.stemstorage.peerpouch.signal", "sender": "peer-x", "recipient": share,
            "data": {"type": "offer", "sdp": "x".repeat(200_000)}}),
        json!({"_id": "random", "hello": "world"}),
    ] {
        c.put(g).unwrap();
    }
    let ev = run(&mut [&mut s, &mut j], |ev| {
        ev[0]
            .iter()
            .filter(|e| matches!(e, HubEvent::Malformed { .. }))
            .count()
            == 3
    });
    assert!(!has(&ev[0], |e| matches!(
        e,
        HubEvent::PeerRequested { .. }
    )));
    assert_eq!(s.hub().diagnostics().malformed_docs, 3);
    // Still works afterwards.
    let peer = j
        .command(|h, now| h.open(now, &share, Value::Null))
        .unwrap();
    j.command(|h, now| h.send_signal(now, &share, &peer, SignalData::Offer("o".into())))
        .unwrap();
    run(&mut [&mut s, &mut j], |ev| {
        has(&ev[0], |e| matches!(e, HubEvent::PeerRequested { .. }))
    });
}

/// Steps the nodes until `done` holds for them, or fails.
fn step_until(nodes: &mut [&mut HubNode], done: impl Fn(&[&mut HubNode]) -> bool) {
    let end = Instant::now() + WITHIN;
    while !done(nodes) {
        assert!(
            Instant::now() < end,
            "condition not reached within {WITHIN:?}"
        );
        for n in nodes.iter_mut() {
            n.step(Duration::from_millis(20)).expect("step");
        }
    }
}

#[test]
fn a_bystander_on_a_hub_without_selector_reads_the_whole_feed_and_ignores_foreign_signals() {
    // pouchdb-server 4.2.0 has no `_selector` filter: every node falls back to the whole feed
    // (and says so), the connection still forms, and the bystander keeps to its own business.
    let db = TestDb::new("neg_fallback");
    let mut s = node(&db, 21, HubConfig::default());
    let mut j = node(&db, 22, HubConfig::default());
    let mut b = node(&db, 23, HubConfig::default());
    step_until(&mut [&mut s, &mut j, &mut b], |n| {
        n.iter().all(|n| n.hub().is_ready() && n.is_unfiltered())
    });
    let share = s.command(|h, now| h.share(now, ShareOptions::default()));
    run(&mut [&mut s], |ev| {
        has(&ev[0], |e| matches!(e, HubEvent::ShareCreated { .. }))
    });
    let peer = j.command(|h, now| h.open(now, &share, json!({}))).unwrap();
    j.command(|h, now| h.send_signal(now, &share, &peer, SignalData::Offer("o".into())))
        .unwrap();
    j.step(Duration::ZERO).unwrap();
    assert_eq!(signal_docs(&db).len(), 1, "the offer is on the hub");
    // The sharer has not read it yet, so the bystander's whole feed brings it.
    step_until(&mut [&mut b], |n| {
        n[0].hub().diagnostics().foreign_signals == 1
    });
    let ev = run(&mut [&mut s, &mut j, &mut b], |ev| {
        has(&ev[0], |e| matches!(e, HubEvent::PeerRequested { .. }))
    });
    assert!(
        ev[2].is_empty(),
        "the bystander reports nothing: {:?}",
        ev[2]
    );
    s.command(|h, now| {
        h.accept(now, &share, &peer)?;
        h.send_signal(now, &share, &peer, SignalData::Answer("a".into()))
    })
    .unwrap();
    let ev = run(&mut [&mut s, &mut j, &mut b], |ev| {
        has(&ev[1], |e| matches!(e, HubEvent::Signal { .. }))
    });
    assert!(ev[1].contains(&HubEvent::Signal {
        share: share.clone(),
        peer: peer.clone(),
        data: SignalData::Answer("a".into())
    }));
    run(&mut [&mut s, &mut j, &mut b], |_| {
        signal_docs(&db).is_empty()
    });
    assert!(
        !has(&ev[2], |e| matches!(
            e,
            HubEvent::Signal { .. } | HubEvent::PeerRequested { .. }
        )),
        "{:?}",
        ev[2]
    );
    assert_eq!(b.hub().diagnostics().signals_consumed, 0);
    assert!(b.hub().diagnostics().foreign_signals >= 1);
}
