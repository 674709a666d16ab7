//! The share negotiation machine against the in-memory hub, on virtual time.

mod common;

use std::time::Duration;

use common::epoch;
use peerpouch::hub::*;
use peerpouch::*;
use serde_json::{json, Value};

const WALL: u64 = 1_800_000_000_000;

fn hub(seed: u64) -> Hub {
    Hub::new(HubConfig::default(), seed, epoch(), WALL)
}

struct World {
    hub: MemoryHub,
    nodes: Vec<Hub>,
    now: std::time::Instant,
}

impl World {
    fn new(n: usize) -> World {
        let now = epoch();
        let mut w = World {
            hub: MemoryHub::new(),
            nodes: (0..n as u64)
                .map(|i| Hub::new(HubConfig::default(), 100 + i, now, WALL))
                .collect(),
            now,
        };
        w.settle();
        w
    }

    /// `n` nodes on a hub that cannot filter its feed (pouchdb-server): every node reads
    /// every row.
    fn unfiltered(n: usize) -> World {
        let now = epoch();
        let mut w = World {
            hub: MemoryHub::new().without_filters(),
            nodes: (0..n as u64)
                .map(|i| Hub::new(HubConfig::default(), 200 + i, now, WALL))
                .collect(),
            now,
        };
        w.settle();
        w
    }

    fn settle(&mut self) -> Vec<Vec<HubEvent>> {
        let mut refs: Vec<&mut Hub> = self.nodes.iter_mut().collect();
        self.hub.settle(self.now, &mut refs)
    }

    /// Advances virtual time to `t`, firing every deadline on the way, and settles.
    fn advance(&mut self, by: Duration) -> Vec<Vec<HubEvent>> {
        let end = self.now + by;
        let mut all: Vec<Vec<HubEvent>> = self.nodes.iter().map(|_| Vec::new()).collect();
        loop {
            let next = self.nodes.iter().filter_map(|h| h.poll_timeout()).min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    for h in &mut self.nodes {
                        h.handle_timeout(self.now);
                    }
                    for (i, ev) in self.settle().into_iter().enumerate() {
                        all[i].extend(ev);
                    }
                }
                _ => break,
            }
        }
        self.now = end;
        for h in &mut self.nodes {
            h.handle_timeout(self.now);
        }
        for (i, ev) in self.settle().into_iter().enumerate() {
            all[i].extend(ev);
        }
        all
    }

    fn docs_with_prefix(&mut self, prefix: &str) -> Vec<Value> {
        self.hub
            .db()
            .all_docs(AllDocsRequest {
                start_key: Some(prefix.into()),
                end_key: Some(format!("{prefix}\u{fff0}")),
                include_docs: true,
                ..AllDocsRequest::default()
            })
            .unwrap()
            .rows
            .into_iter()
            .filter_map(|r| r.doc)
            .collect()
    }
}

fn signals(events: &[HubEvent]) -> Vec<SignalData> {
    events
        .iter()
        .filter_map(|e| match e {
            HubEvent::Signal { data, .. } => Some(data.clone()),
            _ => None,
        })
        .collect()
}

fn cand(i: u32) -> SignalData {
    SignalData::Candidate(Some(IceCandidate {
        candidate: format!(
            "candidate:{i} 1 udp 2113937151 127.0.0.1 {} typ host",
            5000 + i
        ),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: Some("ufrag".into()),
    }))
}

fn share_named(w: &mut World, node: usize, name: &str) -> String {
    let now = w.now;
    let id = w.nodes[node].share(
        now,
        ShareOptions {
            name: Some(name.into()),
            info: json!({"about": name}),
            ..ShareOptions::default()
        },
    );
    let ev = w.settle();
    assert!(
        ev[node].contains(&HubEvent::ShareCreated { share: id.clone() }),
        "{ev:?}"
    );
    id
}

#[test]
fn ready_starts_following_from_the_current_sequence() {
    let mut w = World::new(0);
    w.hub.db().put(json!({"_id": "old", "x": 1})).unwrap();
    let mut h = hub(1);
    let Some(HubAction::Request {
        id,
        request: Request::Info,
    }) = h.poll_action()
    else {
        panic!("first action is the hub's info")
    };
    assert!(!h.is_ready());
    let info = w.hub.execute(Request::Info);
    h.handle_response(w.now, id, info).unwrap();
    assert_eq!(
        h.poll_action(),
        Some(HubAction::FollowChanges {
            since: Seq::from(1),
            filter: FeedFilter::default(),
        })
    );
    assert_eq!(
        h.poll_event(),
        Some(HubEvent::Ready {
            since: Seq::from(1)
        })
    );
    assert!(h.is_ready());
}

#[test]
fn share_list_and_watch() {
    let mut w = World::new(2);
    let a = share_named(&mut w, 0, "alpha");
    let now = w.now;
    w.nodes[1].list(now);
    w.nodes[0].list(now);
    let ev = w.settle();
    let HubEvent::SharesListed(listed) = &ev[1][0] else {
        panic!("{ev:?}")
    };
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, a);
    assert_eq!(listed[0].name.as_deref(), Some("alpha"));
    assert_eq!(listed[0].info, json!({"about": "alpha"}));
    assert_eq!(listed[0].protocol, Some(1));
    assert!(listed[0].expires_at.unwrap() > WALL);
    assert_eq!(
        ev[0],
        vec![HubEvent::SharesListed(vec![])],
        "own shares are not listed"
    );
    // Watching reports new and removed shares.
    w.nodes[1].watch(now, true);
    w.settle();
    let b = share_named(&mut w, 0, "beta");
    let ev = w.settle();
    let _ = ev;
    let now = w.now;
    w.nodes[0].unshare(now, &a).unwrap();
    let ev = w.settle();
    assert!(ev[0].contains(&HubEvent::Unshared { share: a.clone() }));
    assert!(ev[1].contains(&HubEvent::ShareRemoved {
        share: a.clone(),
        reason: RemovedReason::Deleted
    }));
    assert_eq!(
        w.nodes[0].unshare(now, &a),
        Err(HubError::NotShared(a.clone()))
    );
    assert_eq!(w.docs_with_prefix("share-").len(), 1);
    let _ = b;
}

#[test]
fn watch_sees_a_share_added_later() {
    let mut w = World::new(2);
    let now = w.now;
    w.nodes[1].watch(now, true);
    w.settle();
    let now = w.now;
    let id = w.nodes[0].share(now, ShareOptions::default());
    let ev = w.settle();
    assert!(
        ev[1]
            .iter()
            .any(|e| matches!(e, HubEvent::ShareAdded(s) if s.id == id)),
        "{ev:?}"
    );
    // Refreshes of the same share are not reported again.
    let ev = w.advance(Duration::from_secs(100));
    assert!(!ev[1].iter().any(|e| matches!(e, HubEvent::ShareAdded(_))));
}

#[test]
fn offer_answer_and_candidates_cross_after_accept_and_signals_are_deleted() {
    let mut w = World::new(2);
    let share = share_named(&mut w, 0, "s");
    let now = w.now;
    let peer = w.nodes[1]
        .open(now, &share, json!({"user": "bob"}))
        .unwrap();
    w.nodes[1]
        .send_signal(now, &share, &peer, SignalData::Offer("OFFER".into()))
        .unwrap();
    for i in 0..3 {
        w.nodes[1].send_signal(now, &share, &peer, cand(i)).unwrap();
    }
    let ev = w.settle();
    assert_eq!(
        ev[0],
        vec![HubEvent::PeerRequested {
            share: share.clone(),
            peer: peer.clone(),
            info: json!({"user": "bob"})
        }],
        "nothing of the peer's signals reaches the session before accept"
    );
    assert_eq!(
        w.nodes[0].send_signal(now, &share, &peer, SignalData::Answer("x".into())),
        Err(HubError::InvalidState(
            "signals go only to open (accepted) connections"
        ))
    );
    w.nodes[0].accept(now, &share, &peer).unwrap();
    let got = signals(&w.settle()[0]);
    assert_eq!(
        got,
        vec![SignalData::Offer("OFFER".into()), cand(0), cand(1), cand(2)]
    );
    w.nodes[0]
        .send_signal(now, &share, &peer, SignalData::Answer("ANSWER".into()))
        .unwrap();
    w.nodes[0].send_signal(now, &share, &peer, cand(9)).unwrap();
    w.nodes[0]
        .send_signal(now, &share, &peer, SignalData::Candidate(None))
        .unwrap();
    let ev = w.settle();
    assert_eq!(
        signals(&ev[1]),
        vec![
            SignalData::Answer("ANSWER".into()),
            cand(9),
            SignalData::Candidate(None)
        ]
    );
    assert!(ev[1].iter().all(
        |e| matches!(e, HubEvent::Signal { share: s, peer: p, .. } if *s == share && *p == peer)
    ));
    assert!(
        w.docs_with_prefix("p-signal-").is_empty(),
        "consumed signals are deleted"
    );
    assert!(w.docs_with_prefix("s-signal-").is_empty());
    assert_eq!(w.nodes[0].diagnostics().signals_consumed, 4);
    assert_eq!(w.nodes[1].diagnostics().signals_consumed, 3);
}

#[test]
fn signal_documents_have_the_peerpouch_format() {
    let mut w = World::new(2);
    let share = share_named(&mut w, 0, "s");
    let now = w.now;
    let peer = w.nodes[1].open(now, &share, json!({"v": 1})).unwrap();
    w.nodes[1].send_signal(now, &share, &peer, cand(1)).unwrap();
    // Execute the joiner's write but not the sharer's read: look at the document on the hub.
    while let Some(action) = w.nodes[1].poll_action() {
        if let HubAction::Request { id, request } = action {
            let r = w.hub.execute(request);
            w.nodes[1].handle_response(now, id, r).unwrap();
        }
    }
    let docs = w.docs_with_prefix("p-signal-");
    assert_eq!(docs.len(), 1);
    let d = &docs[0];
    assert_eq!(d["type"], "com.stemstorage.peerpouch.signal");
    assert_eq!(d["sender"], peer);
    assert_eq!(d["recipient"], share);
    assert_eq!(d["info"], json!({"v": 1}));
    assert_eq!(
        d["data"],
        json!({"candidate": {"candidate": "candidate:1 1 udp 2113937151 127.0.0.1 5001 typ host",
        "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "ufrag"}})
    );
    let shares = w.docs_with_prefix("share-");
    assert_eq!(shares[0]["type"], "com.stemstorage.peerpouch.share");
    assert_eq!(shares[0]["name"], "s");
}

#[test]
fn refusal_with_and_without_a_reason() {
    let mut w = World::new(3);
    let share = share_named(&mut w, 0, "s");
    let now = w.now;
    let p1 = w.nodes[1].open(now, &share, json!("one")).unwrap();
    let p2 = w.nodes[2].open(now, &share, json!("two")).unwrap();
    w.nodes[1]
        .send_signal(now, &share, &p1, SignalData::Offer("o1".into()))
        .unwrap();
    w.nodes[2]
        .send_signal(now, &share, &p2, SignalData::Offer("o2".into()))
        .unwrap();
    w.settle();
    w.nodes[0]
        .refuse(now, &share, &p1, Some("not you".into()))
        .unwrap();
    w.nodes[0].refuse(now, &share, &p2, None).unwrap();
    let ev = w.settle();
    assert_eq!(
        ev[1],
        vec![HubEvent::Refused {
            share: share.clone(),
            peer: p1.clone(),
            reason: Some("not you".into())
        }]
    );
    assert!(
        ev[2].is_empty(),
        "a silent refusal sends nothing: {:?}",
        ev[2]
    );
    assert!(signals(&ev[0]).is_empty());
    // Later signals from a refused peer are dropped and deleted, never delivered.
    w.nodes[2].send_signal(now, &share, &p2, cand(1)).unwrap();
    let ev = w.settle();
    assert!(ev[0].is_empty(), "{:?}", ev[0]);
    assert!(w.docs_with_prefix("p-signal-").is_empty());
    assert_eq!(
        w.nodes[0].accept(now, &share, &p2),
        Err(HubError::InvalidState(
            "only a pending peer can be accepted"
        ))
    );
    assert!(w.nodes[0].diagnostics().signals_dropped >= 1);
}

#[test]
fn shares_expire_unless_refreshed() {
    let mut w = World::new(2);
    let share = share_named(&mut w, 0, "s");
    let now = w.now;
    w.nodes[1].watch(now, true);
    w.settle();
    // The sharer keeps refreshing: ten minutes later the share is still listed.
    w.advance(Duration::from_secs(600));
    let now = w.now;
    w.nodes[1].list(now);
    let ev = w.settle();
    assert!(
        matches!(&ev[1][0], HubEvent::SharesListed(l) if l.len() == 1 && l[0].id == share),
        "{ev:?}"
    );
    // The sharer goes silent (crashed): within the TTL (30 s) the watcher drops the share.
    let crashed = w.nodes.remove(0);
    assert_eq!(HubConfig::default().share_ttl, Duration::from_secs(30));
    let ev = w.advance(Duration::from_millis(30_001));
    assert!(
        ev[0].contains(&HubEvent::ShareRemoved {
            share: share.clone(),
            reason: RemovedReason::Expired
        }),
        "{ev:?}"
    );
    let now = w.now;
    w.nodes[0].list(now);
    let ev = w.settle();
    assert_eq!(
        ev[0],
        vec![HubEvent::SharesListed(vec![])],
        "expired shares are hidden"
    );
    drop(crashed);
}

#[test]
fn cleanup_removes_stale_shares_and_signals_only() {
    let mut w = World::new(1);
    let wall = WALL;
    let stale_share = json!({"_id": "share-stale", "type": "com.stemstorage.peerpouch.share", "name": null, "info": null, "expires_at": wall - 3_600_000});
    let live_share = json!({"_id": "share-live", "type": "com.stemstorage.peerpouch.share", "name": null, "info": null, "expires_at": wall + 3_600_000});
    let legacy_share = json!({"_id": "share-legacy", "type": "com.stemstorage.peerpouch.share", "name": "no expiry"});
    let old_signal = json!({"_id": "p-signal-old", "type": "com.stemstorage.peerpouch.signal", "sender": "peer-x", "recipient": "share-y", "data": {"candidate": null}, "created_at": wall - 3_600_000});
    let new_signal = json!({"_id": "p-signal-new", "type": "com.stemstorage.peerpouch.signal", "sender": "peer-x", "recipient": "share-y", "data": {"candidate": null}, "created_at": wall});
    let other = json!({"_id": "q-other", "anything": true});
    for d in [
        stale_share,
        live_share,
        legacy_share,
        old_signal,
        new_signal,
        other,
    ] {
        w.hub.db().put(d).unwrap();
    }
    let own = share_named(&mut w, 0, "mine");
    w.advance(Duration::from_secs(1));
    let left: Vec<String> = w
        .hub
        .db()
        .all_docs(AllDocsRequest::default())
        .unwrap()
        .rows
        .into_iter()
        .map(|r| r.key)
        .collect();
    let mut expected = vec![
        "p-signal-new".to_string(),
        "q-other".into(),
        "share-legacy".into(),
        "share-live".into(),
        own,
    ];
    expected.sort();
    assert_eq!(left, expected);
    assert_eq!(w.nodes[0].diagnostics().stale_deleted, 2);
}

#[test]
fn garbage_on_the_hub_is_counted_and_skipped() {
    let mut w = World::new(2);
    let share = share_named(&mut w, 0, "s");
    let now = w.now;
    w.nodes[1].watch(now, true);
    w.settle();
    let huge = "x".repeat(100_000);
    let garbage = vec![
        json!({"_id": "share-bad1", "type": "com.stemstorage.peerpouch.share", "name": 42}),
        json!({"_id": "share-bad2", "type": "com.stemstorage.peerpouch.share", "info": huge}),
        json!({"_id": "share-bad3", "type": "com.stemstorage.peerpouch.share", "expires_at": "tomorrow"}),
        json!({"_id": "p-signal-g1", "type": "com.stemstorage.peerpouch.signal", "sender": "peer-z", "recipient": share, "data": "nope"}),
        json!({"_id": "p-signal-g2", "type": "com.stemstorage.peerpouch.signal", "sender": "peer-z", "recipient": share, "data": {"type": "offer", "sdp": huge.repeat(2)}}),
        json!({"_id": "p-signal-g3", "type": "com.stemstorage.peerpouch.signal", "sender": "peer-z", "recipient": "share-nobody", "data": {"candidate": null}}),
        json!({"_id": "p-signal-g4", "type": "com.stemstorage.peerpouch.signal", "recipient": share}),
        json!({"_id": "not-ours", "type": 7}),
        json!({"_id": "weird", "type": "com.stemstorage.peerpouch.share"}),
    ];
    for g in garbage {
        w.hub.db().put(g).unwrap();
    }
    let ev = w.settle();
    let malformed = |ev: &[HubEvent]| {
        ev.iter()
            .filter(|e| matches!(e, HubEvent::Malformed { .. }))
            .count()
    };
    assert_eq!(malformed(&ev[0]), 7, "{:?}", ev[0]);
    // The signals to node 0's share are none of node 1's business: it reads only the shares.
    assert_eq!(malformed(&ev[1]), 4);
    assert!(
        ev[0]
            .iter()
            .all(|e| matches!(e, HubEvent::Malformed { .. })),
        "no peer appears: {:?}",
        ev[0]
    );
    assert!(!ev[1].iter().any(|e| matches!(e, HubEvent::ShareAdded(_))));
    assert_eq!(w.nodes[0].diagnostics().malformed_docs, 7);
    // The signal to another share does not even reach it.
    assert_eq!(w.nodes[0].diagnostics().foreign_signals, 0);
    // Broken signals addressed to our share were deleted; the foreign one stays.
    let left: Vec<String> = w
        .docs_with_prefix("p-signal-")
        .iter()
        .map(|d| d["_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(left, vec!["p-signal-g3"]);
    // The machines still work.
    let now = w.now;
    let peer = w.nodes[1].open(now, &share, Value::Null).unwrap();
    w.nodes[1]
        .send_signal(now, &share, &peer, SignalData::Offer("o".into()))
        .unwrap();
    let ev = w.settle();
    assert!(ev[0]
        .iter()
        .any(|e| matches!(e, HubEvent::PeerRequested { .. })));
}

#[test]
fn numbered_signals_are_delivered_in_order_whatever_the_hub_order() {
    let mut w = World::new(1);
    let share = share_named(&mut w, 0, "s");
    let sig = |n: u64, data: SignalData| {
        json!({"_id": format!("p-signal-{n}"), "type": "com.stemstorage.peerpouch.signal", "sender": "peer-r",
            "recipient": share, "data": data.to_json(), "info": null, "n": n})
    };
    for (n, d) in [
        (2, cand(2)),
        (0, SignalData::Offer("o".into())),
        (3, cand(3)),
        (1, cand(1)),
    ] {
        w.hub.db().put(sig(n, d)).unwrap();
    }
    // A duplicate of an earlier one is dropped.
    w.hub.db().put(json!({"_id": "p-signal-dup", "type": "com.stemstorage.peerpouch.signal", "sender": "peer-r",
        "recipient": share, "data": cand(1).to_json(), "n": 1})).unwrap();
    w.settle();
    let now = w.now;
    w.nodes[0].accept(now, &share, "peer-r").unwrap();
    let got = signals(&w.settle()[0]);
    assert_eq!(
        got,
        vec![SignalData::Offer("o".into()), cand(1), cand(2), cand(3)]
    );
}

#[test]
fn pending_peers_are_bounded() {
    let now = epoch();
    let mut cfg = HubConfig::default();
    cfg.max_pending_peers = 2;
    let mut hubm = MemoryHub::new();
    let mut sharer = Hub::new(cfg, 1, now, WALL);
    let mut joiners: Vec<Hub> = (0..4).map(|i| hub(10 + i)).collect();
    let share = sharer.share(now, ShareOptions::default());
    {
        let mut refs: Vec<&mut Hub> = std::iter::once(&mut sharer)
            .chain(joiners.iter_mut())
            .collect();
        hubm.settle(now, &mut refs);
    }
    for j in joiners.iter_mut() {
        let p = j.open(now, &share, Value::Null).unwrap();
        j.send_signal(now, &share, &p, SignalData::Offer("o".into()))
            .unwrap();
    }
    let mut refs: Vec<&mut Hub> = std::iter::once(&mut sharer)
        .chain(joiners.iter_mut())
        .collect();
    let ev = hubm.settle(now, &mut refs);
    let requested = ev[0]
        .iter()
        .filter(|e| matches!(e, HubEvent::PeerRequested { .. }))
        .count();
    assert_eq!(requested, 2);
    assert_eq!(sharer.diagnostics().peers_dropped, 2);
}

#[test]
fn unshare_closes_connections_and_a_deleted_share_is_restored() {
    let mut w = World::new(2);
    let share = share_named(&mut w, 0, "s");
    let now = w.now;
    let peer = w.nodes[1].open(now, &share, Value::Null).unwrap();
    w.nodes[1]
        .send_signal(now, &share, &peer, SignalData::Offer("o".into()))
        .unwrap();
    w.settle();
    w.nodes[0].accept(now, &share, &peer).unwrap();
    w.settle();
    // Someone deletes our share document: the sharer puts it back.
    let rev = w.docs_with_prefix("share-")[0]["_rev"].clone();
    w.hub
        .db()
        .put(json!({"_id": share, "_rev": rev, "_deleted": true}))
        .unwrap();
    w.settle();
    assert_eq!(w.docs_with_prefix("share-").len(), 1, "share restored");
    let now = w.now;
    w.nodes[0].unshare(now, &share).unwrap();
    let ev = w.settle();
    assert!(ev[0].contains(&HubEvent::ConnectionClosed {
        share: share.clone(),
        peer: peer.clone()
    }));
    assert!(ev[0].contains(&HubEvent::Unshared {
        share: share.clone()
    }));
    assert!(w.docs_with_prefix("share-").is_empty());
}

#[test]
fn transient_hub_failures_are_retried() {
    let now = epoch();
    let mut hubm = MemoryHub::new();
    let mut h = hub(1);
    let mut t = now;
    let mut failures = 0;
    let mut events = Vec::new();
    let share = h.share(now, ShareOptions::default());
    for step in 0..200 {
        let mut progressed = false;
        while let Some(a) = h.poll_action() {
            progressed = true;
            if let HubAction::Request { id, request } = a {
                // Every other request fails with 503 the first few times.
                let r = if failures < 4 && step % 2 == 0 {
                    failures += 1;
                    Err(DbError::Unavailable("down".into()))
                } else {
                    hubm.execute(request)
                };
                h.handle_response(t, id, r).unwrap();
            }
        }
        while let Some(e) = h.poll_event() {
            events.push(e);
        }
        if !progressed {
            match h.poll_timeout() {
                Some(next) if next <= now + Duration::from_secs(120) => {
                    t = t.max(next);
                    h.handle_timeout(t);
                }
                _ => break,
            }
        }
    }
    assert!(failures > 0);
    assert!(
        events.contains(&HubEvent::ShareCreated { share }),
        "{events:?}"
    );
    assert_eq!(
        h.handle_response(
            t,
            RequestId(10_000),
            Ok(Response::Info(hubm.db().info().unwrap()))
        ),
        Err(HubError::UnknownRequest(RequestId(10_000)))
    );
}

/// Any writer of the hub can put any number in `expires_at` and `created_at`: the extremes are
/// listed (or cleaned up) like other documents, and no deadline arithmetic overflows.
#[test]
fn extreme_times_in_hub_documents_neither_panic_nor_wrap() {
    let mut w = World::new(1);
    let far = json!({"_id": "share-far", "type": "com.stemstorage.peerpouch.share", "name": "far", "info": null, "expires_at": u64::MAX});
    let past = json!({"_id": "share-past", "type": "com.stemstorage.peerpouch.share", "name": "past", "info": null, "expires_at": 0});
    let future_signal = json!({"_id": "p-signal-far", "type": "com.stemstorage.peerpouch.signal", "sender": "peer-x", "recipient": "share-y", "data": {"candidate": null}, "created_at": u64::MAX});
    for d in [far, past, future_signal] {
        w.hub.db().put(d).unwrap();
    }
    // Cleanup runs (the node shares), and watchers and listings see the documents.
    let _own = share_named(&mut w, 0, "mine");
    w.advance(Duration::from_secs(3600));
    let now = w.now;
    w.nodes[0].list(now);
    let ev = w.settle();
    let Some(HubEvent::SharesListed(listed)) = ev[0].last() else {
        panic!("{ev:?}")
    };
    let names: Vec<Option<String>> = listed.iter().map(|s| s.name.clone()).collect();
    assert!(names.contains(&Some("far".into())), "{names:?}");
    assert!(!names.contains(&Some("past".into())), "{names:?}");
    let left: Vec<String> = w
        .hub
        .db()
        .all_docs(AllDocsRequest::default())
        .unwrap()
        .rows
        .into_iter()
        .map(|r| r.key)
        .collect();
    // An expiry at the end of time is not stale, and a signal from the future is not old.
    assert!(left.contains(&"share-far".to_string()), "{left:?}");
    assert!(left.contains(&"p-signal-far".to_string()), "{left:?}");
    assert!(!left.contains(&"share-past".to_string()), "{left:?}");
    // The next deadline is a real one (the node's own refresh), not the far share's expiry.
    let next = w.nodes[0].poll_timeout().expect("a deadline");
    assert!(next <= w.now + Duration::from_secs(3600), "{next:?}");
}

/// A joiner's offer on the hub, the sharer's request seen: (share, peer).
fn offer(w: &mut World, ask_info: Value) -> (String, String) {
    let share = share_named(w, 0, "s");
    let peer = open_with_offer(w, 1, &share, ask_info);
    (share, peer)
}

/// Node `joiner` opens `share` and sends its offer (not yet on the hub); its peer id.
fn open_with_offer(w: &mut World, joiner: usize, share: &str, info: Value) -> String {
    let now = w.now;
    let peer = w.nodes[joiner].open(now, share, info).unwrap();
    w.nodes[joiner]
        .send_signal(now, share, &peer, SignalData::Offer("OFFER".into()))
        .unwrap();
    peer
}

/// A joiner's offer on the hub to a sharer that crashed as the offer went out (its share still
/// listed, just refreshed): the world (the joiner now node 0), share,
/// peer, and the crashed machine.
fn offer_to_a_crashed_sharer() -> (World, String, String, Hub) {
    let mut w = World::new(2);
    let (share, peer) = offer(&mut w, json!(null));
    let crashed = w.nodes.remove(0);
    w.settle();
    (w, share, peer, crashed)
}

/// Node 0 gives up on the sharer of `peer`'s connection within an answer timeout from now.
fn gives_up_within_the_answer_timeout(w: &mut World, peer: &str) {
    let ev = w.advance(HubConfig::default().answer_timeout);
    assert!(
        ev[0]
            .iter()
            .any(|e| matches!(e, HubEvent::NotAnswering { peer: p, .. } if p == peer)),
        "{ev:?}"
    );
}

#[test]
fn a_sharer_that_never_answers_is_given_up_once_its_share_is_stale() {
    let (mut w, share, peer, crashed) = offer_to_a_crashed_sharer();
    let t0 = w.now;
    // Its share was refreshed as the offer went out: a sharer that refreshes is given the
    // time of a refresh interval and an answer timeout since (checked at each answer timeout).
    let config = HubConfig::default();
    let stale = config.refresh_interval + config.answer_timeout;
    let ev = w.advance(stale - Duration::from_millis(1));
    assert!(ev[0].is_empty(), "not before {stale:?}: {ev:?}");
    let ev = w.advance(Duration::from_millis(1));
    assert_eq!(
        ev[0],
        vec![HubEvent::NotAnswering {
            share: share.clone(),
            peer: peer.clone(),
            waited: Duration::from_secs(5)
        }]
    );
    assert_eq!(w.now - t0, stale);
    // The connection is forgotten: no second report, and commands on it are refused.
    assert!(w.advance(Duration::from_secs(60))[0].is_empty());
    let now = w.now;
    assert!(matches!(
        w.nodes[0].send_signal(now, &share, &peer, cand(1)),
        Err(HubError::UnknownConnection { .. })
    ));
    drop(crashed);
}

#[test]
fn a_hub_slow_to_show_the_share_gives_its_sharer_that_much_longer() {
    let (mut w, share, peer, crashed) = offer_to_a_crashed_sharer();
    w.now += HubConfig::default().answer_timeout;
    let now = w.now;
    w.nodes[0].handle_timeout(now);
    let (id, request) = std::iter::from_fn(|| w.nodes[0].poll_action())
        .find_map(|a| match a {
            HubAction::Request { id, request } => Some((id, request)),
            _ => None,
        })
        .expect("the joiner reads the share");
    assert!(
        matches!(&request, Request::Get(g) if g.id == share),
        "{request:?}"
    );
    // The hub, lagging under a crowd, answers 12 s later: the refresh it shows is 17 s old,
    // but a hub that slow would have taken a newer refresh as late.
    w.now += Duration::from_secs(12);
    let now = w.now;
    let result = w.hub.execute(request);
    w.nodes[0].handle_response(now, id, result).unwrap();
    let waiting: Vec<HubEvent> = std::iter::from_fn(|| w.nodes[0].poll_event()).collect();
    assert!(waiting.is_empty(), "{waiting:?}");
    // Answered at once, the next check gives the stale share up.
    gives_up_within_the_answer_timeout(&mut w, &peer);
    drop(crashed);
}

#[test]
fn a_sharer_whose_share_went_stale_is_given_up_at_the_answer_timeout() {
    let mut w = World::new(2);
    let share = share_named(&mut w, 0, "s");
    // The sharer crashed 16 s ago: its share is still listed (it expires after 30 s) but has
    // missed its last refresh.
    let crashed = w.nodes.remove(0);
    w.advance(Duration::from_secs(16));
    let peer = open_with_offer(&mut w, 0, &share, json!(null));
    w.settle();
    gives_up_within_the_answer_timeout(&mut w, &peer);
    drop(crashed);
}

#[test]
fn an_answer_in_time_stops_the_answer_timeout() {
    let mut w = World::new(2);
    let (share, peer) = offer(&mut w, json!(null));
    w.settle();
    let now = w.now;
    w.nodes[0].accept(now, &share, &peer).unwrap();
    w.nodes[0]
        .send_signal(now, &share, &peer, SignalData::Answer("ANSWER".into()))
        .unwrap();
    let ev = w.settle();
    assert_eq!(signals(&ev[1]), vec![SignalData::Answer("ANSWER".into())]);
    let ev = w.advance(Duration::from_secs(600));
    assert!(
        !ev[1].iter().any(|e| matches!(
            e,
            HubEvent::NotAnswering { .. } | HubEvent::NotAccepted { .. }
        )),
        "{ev:?}"
    );
}

#[test]
fn a_deciding_sharer_makes_the_joiner_wait_for_approval_and_then_connects() {
    let mut w = World::new(2);
    let (share, peer) = offer(&mut w, json!({"user": "bob"}));
    let ev = w.settle();
    assert!(ev[0]
        .iter()
        .any(|e| matches!(e, HubEvent::PeerRequested { .. })));
    // The sharer asks its user: the joiner hears that it should wait.
    let now = w.now;
    w.nodes[0].defer(now, &share, &peer).unwrap();
    let ev = w.settle();
    assert_eq!(
        ev[1],
        vec![HubEvent::AwaitingApproval {
            share: share.clone(),
            peer: peer.clone()
        }]
    );
    assert!(
        w.docs_with_prefix("s-signal-").is_empty(),
        "the joiner consumed the pending notice"
    );
    // Well past the answer timeout, still waiting; the user says yes after 90 s.
    let ev = w.advance(Duration::from_secs(90));
    assert!(ev[1].is_empty(), "{ev:?}");
    let now = w.now;
    w.nodes[0].accept(now, &share, &peer).unwrap();
    assert_eq!(
        signals(&w.settle()[0]),
        vec![SignalData::Offer("OFFER".into())]
    );
    w.nodes[0]
        .send_signal(now, &share, &peer, SignalData::Answer("ANSWER".into()))
        .unwrap();
    let ev = w.settle();
    assert_eq!(
        ev[1],
        vec![
            HubEvent::Accepted {
                share: share.clone(),
                peer: peer.clone()
            },
            HubEvent::Signal {
                share: share.clone(),
                peer: peer.clone(),
                data: SignalData::Answer("ANSWER".into())
            }
        ]
    );
    let ev = w.advance(Duration::from_secs(600));
    assert!(!ev[1]
        .iter()
        .any(|e| matches!(e, HubEvent::NotAccepted { .. })));
}

#[test]
fn a_deciding_sharer_that_never_accepts_is_given_up_after_the_approval_timeout() {
    let mut w = World::new(2);
    let (share, peer) = offer(&mut w, json!(null));
    w.settle();
    let now = w.now;
    w.nodes[0].defer(now, &share, &peer).unwrap();
    w.settle();
    let ev = w.advance(Duration::from_millis(119_999));
    assert!(ev[1].is_empty(), "{ev:?}");
    let ev = w.advance(Duration::from_millis(1));
    assert_eq!(
        ev[1],
        vec![HubEvent::NotAccepted {
            share: share.clone(),
            peer: peer.clone(),
            waited: Duration::from_secs(120)
        }]
    );
    // Both timeouts are the joiner's to choose.
    let mut c = HubConfig::default();
    c.answer_timeout = Duration::from_secs(1);
    c.approval_timeout = Duration::from_secs(7);
    let mut w = World::new(0);
    w.nodes = vec![hub(1), Hub::new(c, 2, w.now, WALL)];
    w.settle();
    let (share, peer) = offer(&mut w, json!(null));
    w.settle();
    let now = w.now;
    w.nodes[0].defer(now, &share, &peer).unwrap();
    w.settle();
    let ev = w.advance(Duration::from_secs(7));
    assert!(
        ev[1].contains(&HubEvent::NotAccepted {
            share,
            peer,
            waited: Duration::from_secs(7)
        }),
        "{ev:?}"
    );
}

#[test]
fn the_pending_notice_is_unnumbered_and_refusal_still_works_after_it() {
    let mut w = World::new(2);
    let (share, peer) = offer(&mut w, json!(null));
    w.settle();
    let now = w.now;
    w.nodes[0].defer(now, &share, &peer).unwrap();
    // Look at the sharer's document before the joiner reads it.
    while let Some(HubAction::Request { id, request }) = w.nodes[0].poll_action() {
        let r = w.hub.execute(request);
        w.nodes[0].handle_response(now, id, r).unwrap();
    }
    let docs = w.docs_with_prefix("s-signal-");
    assert_eq!(docs.len(), 1);
    assert_eq!(docs[0]["data"], json!({"type": "pending"}));
    assert!(
        docs[0].get("n").is_none(),
        "unnumbered: peers that skip it see no gap"
    );
    // The refusal that follows is the sharer's first numbered signal to this peer.
    w.nodes[0]
        .refuse(now, &share, &peer, Some("no".into()))
        .unwrap();
    while let Some(HubAction::Request { id, request }) = w.nodes[0].poll_action() {
        let r = w.hub.execute(request);
        w.nodes[0].handle_response(now, id, r).unwrap();
    }
    let refusal: Vec<Value> = w
        .docs_with_prefix("s-signal-")
        .into_iter()
        .filter(|d| d["data"]["type"] == "refuse")
        .collect();
    assert_eq!(refusal[0]["n"], 0);
    let ev = w.settle();
    assert_eq!(
        ev[1],
        vec![
            HubEvent::AwaitingApproval {
                share: share.clone(),
                peer: peer.clone()
            },
            HubEvent::Refused {
                share: share.clone(),
                peer: peer.clone(),
                reason: Some("no".into())
            }
        ]
    );
    // A pending notice sent by a joiner to a sharer is dropped, not given to its session.
    assert_eq!(
        w.nodes[1].defer(now, &share, &peer),
        Err(HubError::InvalidState(
            "only a pending peer can be deferred"
        ))
    );
}

/// One connection between nodes 0 (sharer) and 1 (joiner): offer, candidates, answer; every
/// signal consumed.
fn one_connection(w: &mut World, share: &str) {
    let now = w.now;
    let peer = w.nodes[1].open(now, share, json!({"user": "bob"})).unwrap();
    w.nodes[1]
        .send_signal(now, share, &peer, SignalData::Offer("OFFER".into()))
        .unwrap();
    w.nodes[1].send_signal(now, share, &peer, cand(1)).unwrap();
    w.settle();
    w.nodes[0].accept(now, share, &peer).unwrap();
    w.nodes[0]
        .send_signal(now, share, &peer, SignalData::Answer("ANSWER".into()))
        .unwrap();
    w.nodes[0].send_signal(now, share, &peer, cand(2)).unwrap();
    let ev = w.settle();
    assert_eq!(
        signals(&ev[1]),
        vec![SignalData::Answer("ANSWER".into()), cand(2)],
        "the joiner's new peer id is followed before the sharer can answer it"
    );
    assert!(w.docs_with_prefix("p-signal-").is_empty());
    assert!(w.docs_with_prefix("s-signal-").is_empty());
}

#[test]
fn hub_docs_read_per_foreign_connection() {
    // Node 2 is a bystander with a share of its own and a watch on the directory.
    let mut w = World::new(3);
    let share = share_named(&mut w, 0, "s");
    share_named(&mut w, 2, "other");
    let now = w.now;
    w.nodes[2].watch(now, true);
    w.settle();
    let (before, seq_before) = (w.hub.rows_read(&w.nodes[2]), w.hub.db().update_seq());
    one_connection(&mut w, &share);
    let read = w.hub.rows_read(&w.nodes[2]) - before;
    let written = w.hub.db().update_seq() - seq_before;
    println!("hub_docs_read_per_foreign_connection: {read} (the hub changed {written} times)");
    assert!(written >= 8, "4 signals written and 4 deleted: {written}");
    assert_eq!(read, 0, "a bystander reads nothing of others' connections");
    assert_eq!(w.nodes[2].diagnostics().foreign_signals, 0);
    // The directory still reaches it: shares coming and going.
    let third = w.nodes[1].share(now, ShareOptions::default());
    let ev = w.settle();
    assert!(
        ev[2]
            .iter()
            .any(|e| matches!(e, HubEvent::ShareAdded(s) if s.id == third)),
        "{ev:?}"
    );
    w.nodes[1].unshare(now, &third).unwrap();
    let ev = w.settle();
    assert!(
        ev[2].contains(&HubEvent::ShareRemoved {
            share: third,
            reason: RemovedReason::Deleted
        }),
        "{ev:?}"
    );
}

#[test]
fn an_unfiltered_feed_reads_foreign_signals_and_ignores_them() {
    // A driver on a hub that cannot filter follows the whole feed: the machine still keeps to
    // its own business.
    let mut w = World::new(1);
    let now = w.now;
    let seq = Seq::from(w.hub.db().update_seq());
    let cursor = w.hub.follow(&seq);
    for (i, (sender, recipient)) in [("peer-a1", "share-b2"), ("share-b2", "peer-a1")]
        .into_iter()
        .enumerate()
    {
        let id = format!("{}-signal-{i}", &sender[..1]);
        w.hub
            .db()
            .put(
                json!({"_id": id, "type": "com.stemstorage.peerpouch.signal", "sender": sender,
                "recipient": recipient, "data": {"type": "offer", "sdp": "v=0"}, "n": 0}),
            )
            .unwrap();
    }
    let rows = w.hub.poll_feed(cursor);
    assert_eq!(rows.len(), 2);
    let filter = w.nodes[0].feed_filter();
    assert!(rows.iter().all(|r| !filter.matches(r)));
    w.nodes[0].handle_feed(now, rows);
    assert_eq!(w.nodes[0].poll_action(), None, "nothing done about them");
    assert_eq!(w.nodes[0].poll_event(), None, "nothing reported");
    assert_eq!(w.nodes[0].diagnostics().foreign_signals, 2);
    assert_eq!(w.docs_with_prefix("p-signal-").len(), 1, "left alone");
}

#[test]
fn a_new_id_is_followed_from_the_last_row_seen_before_it_is_known() {
    let mut w = World::new(2);
    let share = share_named(&mut w, 0, "s");
    let now = w.now;
    let last = w.hub.db().update_seq();
    let peer = w.nodes[1].open(now, &share, json!({})).unwrap();
    w.nodes[1]
        .send_signal(now, &share, &peer, SignalData::Offer("OFFER".into()))
        .unwrap();
    let actions: Vec<HubAction> = std::iter::from_fn(|| w.nodes[1].poll_action()).collect();
    match &actions[..] {
        [HubAction::FollowChanges { since, filter }, HubAction::Request { .. }] => {
            assert_eq!(since, &Seq::from(last));
            assert_eq!(filter.recipients().collect::<Vec<_>>(), vec![peer.as_str()]);
        }
        other => panic!("expected a new feed before the offer: {other:?}"),
    }
    // Closing does not narrow the feed (no reconnection for that); the next id does.
    w.nodes[1].close(now, &share, &peer);
    let peer2 = w.nodes[1].open(now, &share, json!({})).unwrap();
    match w.nodes[1].poll_action() {
        Some(HubAction::FollowChanges { filter, .. }) => {
            assert_eq!(
                filter.recipients().collect::<Vec<_>>(),
                vec![peer2.as_str()]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(w.nodes[1].poll_action(), None);
}

#[test]
fn a_new_feed_starts_after_the_rows_given_before_it_was_polled() {
    // A driver may hand the old feed's rows in between the command and executing the action:
    // the new feed must not bring them again.
    let mut w = World::new(2);
    let share = share_named(&mut w, 0, "s");
    let now = w.now;
    let before = w.hub.db().update_seq();
    let _peer = w.nodes[1].open(now, &share, json!({})).unwrap();
    w.hub
        .db()
        .put(json!({"_id": "share-later", "type": "com.stemstorage.peerpouch.share"}))
        .unwrap();
    let rows: Vec<ChangeRow> = w
        .hub
        .db()
        .changes(ChangesRequest {
            since: Seq::from(before),
            include_docs: true,
            ..ChangesRequest::default()
        })
        .unwrap()
        .results;
    assert_eq!(rows.len(), 1);
    w.nodes[1].handle_feed(now, rows);
    match w.nodes[1].poll_action() {
        Some(HubAction::FollowChanges { since, .. }) => assert_eq!(since, Seq::from(before + 1)),
        other => panic!("{other:?}"),
    }
}

/// A joiner that read the sharer's answer owes the hub its delete until the hub confirms it:
/// drivers wait for that (briefly) before they stop, so no consumed signal is left behind.
#[test]
fn consumed_signals_are_pending_deletes_until_the_hub_confirms_them() {
    let now = epoch();
    let mut hubm = MemoryHub::new();
    let mut joiner = hub(7);
    // The hub's info: the machine is ready.
    while let Some(a) = joiner.poll_action() {
        if let HubAction::Request { id, request } = a {
            joiner
                .handle_response(now, id, hubm.execute(request))
                .unwrap();
        }
    }
    let share = "share-0123456789abcdef";
    let peer = joiner.open(now, share, Value::Null).unwrap();
    while joiner.poll_action().is_some() {}
    assert!(!joiner.has_pending_deletes());
    let answer = json!({
        "_id": "s-signal-42", "_rev": "1-abc", "type": "com.stemstorage.peerpouch.signal",
        "sender": share, "recipient": peer, "n": 0,
        "data": {"type": "answer", "sdp": "v=0"},
    });
    joiner.handle_feed(
        now,
        vec![ChangeRow {
            id: "s-signal-42".into(),
            seq: Seq::from(5),
            changes: vec![],
            deleted: false,
            doc: Some(answer),
        }],
    );
    assert!(joiner.has_pending_deletes(), "the delete is queued");
    let Some(HubAction::Request { id, request }) = joiner.poll_action() else {
        panic!("the delete goes out at once");
    };
    assert!(
        matches!(&request, Request::BulkDocs(b) if b.docs[0]["_deleted"] == true),
        "{request:?}"
    );
    assert!(joiner.has_pending_deletes(), "the delete is on its way");
    joiner
        .handle_response(now, id, Err(DbError::Unavailable("busy".into())))
        .unwrap();
    assert!(
        joiner.has_pending_deletes(),
        "the delete waits for its retry"
    );
    let due = joiner.poll_timeout().expect("a retry is due");
    joiner.handle_timeout(due);
    let Some(HubAction::Request { id, .. }) = joiner.poll_action() else {
        panic!("the delete is retried");
    };
    joiner
        .handle_response(
            due,
            id,
            Ok(Response::BulkDocs(BulkDocsResponse { results: vec![] })),
        )
        .unwrap();
    assert!(!joiner.has_pending_deletes(), "the hub confirmed it");
}

/// A writer of the hub can number its signals anywhere up to `u64::MAX`: a run that ends
/// there is delivered in order, and the machine neither overflows nor takes more after it.
#[test]
fn signal_numbers_at_the_end_of_u64_neither_overflow_nor_repeat() {
    let mut w = World::new(1);
    let share = share_named(&mut w, 0, "edge");
    let held = HubConfig::default().max_buffered_signals as u64;
    let signal = |k: u64, n: u64| {
        json!({"_id": format!("p-signal-edge-{k:03}"), "type": "com.stemstorage.peerpouch.signal",
            "sender": "peer-edge", "recipient": share, "n": n,
            "data": {"candidate": {"candidate": format!("candidate:{k} 1 udp 1 127.0.0.1 {} typ host", 1000 + k), "sdpMid": "0"}}})
    };
    // The first asks for the connection (its number leaves a gap at 0, so it is held).
    w.hub.db().put(signal(0, u64::MAX - held - 1)).unwrap();
    let ev = w.settle();
    assert!(
        ev[0]
            .iter()
            .any(|e| matches!(e, HubEvent::PeerRequested { peer, .. } if peer == "peer-edge")),
        "{ev:?}"
    );
    let now = w.now;
    w.nodes[0].accept(now, &share, "peer-edge").unwrap();
    assert!(signals(&w.settle()[0]).is_empty(), "held behind the gap");
    // More than the machine holds: it moves past the gap and drains to the last number.
    for k in 1..=held + 1 {
        w.hub.db().put(signal(k, u64::MAX - held - 1 + k)).unwrap();
    }
    let got = signals(&w.settle()[0]);
    let ports: Vec<u64> = got
        .iter()
        .map(|s| match s {
            SignalData::Candidate(Some(c)) => {
                c.candidate.rsplit(' ').nth(2).unwrap().parse().unwrap()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        ports,
        (1000..=1000 + held + 1).collect::<Vec<u64>>(),
        "each once, in order"
    );
    // The last number again is a duplicate, not a new signal.
    w.hub
        .db()
        .put(
            json!({"_id": "p-signal-edge-again", "type": "com.stemstorage.peerpouch.signal",
        "sender": "peer-edge", "recipient": share, "n": u64::MAX, "data": {"candidate": null}}),
        )
        .unwrap();
    assert!(signals(&w.settle()[0]).is_empty());
    assert!(w.docs_with_prefix("p-signal-").is_empty(), "all consumed");
}

#[test]
fn a_sharer_that_took_our_offer_is_busy_not_gone() {
    // A hub that cannot filter its feed (pouchdb-server) shows every node the deletions of
    // others' signals: a joiner sees the sharer take its offer, so a sharer slow to answer (a
    // crowd joining at once) is not mistaken for a gone one at the answer timeout.
    let mut w = World::unfiltered(2);
    let (share, peer) = offer(&mut w, json!(null));
    // The sharer takes the offer (and deletes it) but is too busy to answer for 20 s.
    let ev = w.settle();
    assert!(
        ev[0]
            .iter()
            .any(|e| matches!(e, HubEvent::PeerRequested { .. })),
        "{ev:?}"
    );
    let ev = w.advance(Duration::from_secs(20));
    assert!(
        !ev[1]
            .iter()
            .any(|e| matches!(e, HubEvent::NotAnswering { .. })),
        "the joiner waits for a sharer that took its offer: {ev:?}"
    );
    // The answer comes late, and goes through.
    let now = w.now;
    w.nodes[0].accept(now, &share, &peer).unwrap();
    w.nodes[0]
        .send_signal(now, &share, &peer, SignalData::Answer("ANSWER".into()))
        .unwrap();
    let ev = w.settle();
    assert_eq!(signals(&ev[1]), vec![SignalData::Answer("ANSWER".into())]);

    // Nobody takes an offer to a gone sharer: once its share is stale (no refresh for a
    // refresh interval and an answer timeout), the answer timeout ends that wait.
    let crashed = w.nodes.remove(0);
    let second = open_with_offer(&mut w, 0, &share, json!(null));
    w.settle();
    let ev = w.advance(Duration::from_secs(16));
    assert!(
        ev[0]
            .iter()
            .any(|e| matches!(e, HubEvent::NotAnswering { peer, .. } if *peer == second)),
        "{ev:?}"
    );
    drop(crashed);
}

/// Runs `node`'s requests against the hub until it has none left; its events.
fn drive_alone(hub: &mut MemoryHub, node: &mut Hub, now: std::time::Instant) -> Vec<HubEvent> {
    while let Some(action) = node.poll_action() {
        // Its feed is the test's to deliver (see the caller): a new one is not followed.
        if let HubAction::Request { id, request } = action {
            let result = hub.execute(request);
            node.handle_response(now, id, result).unwrap();
        }
    }
    std::iter::from_fn(|| node.poll_event()).collect()
}

#[test]
fn a_crowd_opening_at_once_on_a_lagging_hub_waits_its_turn() {
    // A hundred joiners offer at once on a hub that cannot filter, and the hub lags under the
    // crowd: every node's feed (everyone's signals) reaches it a few rows at a time, so the
    // sharer reads the last offers, and the joiners read its answers, long after the answer
    // timeout. None gives up: each reads the sharer answering the ones before it, and the
    // crowd's offers it has to read first.
    const CROWD: usize = 100;
    const ROWS_PER_TICK: usize = 3;
    let tick = Duration::from_millis(100);
    let mut w = World::unfiltered(1 + CROWD);
    let share = share_named(&mut w, 0, "s");
    let since = Seq::from(w.hub.db().update_seq());
    let feeds: Vec<usize> = (0..=CROWD).map(|_| w.hub.follow(&since)).collect();
    let mut backlogs = vec![std::collections::VecDeque::new(); 1 + CROWD];
    let now = w.now;
    for joiner in &mut w.nodes[1..] {
        let peer = joiner.open(now, &share, json!(null)).unwrap();
        for data in [SignalData::Offer("OFFER".into()), cand(1)] {
            joiner.send_signal(now, &share, &peer, data).unwrap();
        }
    }
    let t0 = w.now;
    let mut answered = std::collections::BTreeSet::new();
    let mut gave_up = Vec::new();
    while answered.len() + gave_up.len() < CROWD && w.now - t0 < Duration::from_secs(300) {
        w.now += tick;
        let now = w.now;
        for (i, node) in w.nodes.iter_mut().enumerate() {
            node.handle_timeout(now);
            let backlog = &mut backlogs[i];
            backlog.extend(w.hub.poll_feed(feeds[i]));
            let rows: Vec<ChangeRow> = backlog.drain(..backlog.len().min(ROWS_PER_TICK)).collect();
            node.handle_feed(now, rows);
            for e in drive_alone(&mut w.hub, node, now) {
                match e {
                    HubEvent::PeerRequested { share, peer, .. } => {
                        node.accept(now, &share, &peer).unwrap();
                        let answer = SignalData::Answer("ANSWER".into());
                        node.send_signal(now, &share, &peer, answer).unwrap();
                    }
                    HubEvent::Signal {
                        data: SignalData::Answer(_),
                        ..
                    } => {
                        answered.insert(i);
                    }
                    HubEvent::NotAnswering { .. } => gave_up.push((i, now - t0)),
                    _ => {}
                }
            }
            drive_alone(&mut w.hub, node, now);
        }
    }
    assert!(
        gave_up.is_empty(),
        "joiners gave up (joiner, after): {gave_up:?}"
    );
    assert_eq!(answered.len(), CROWD);
    let took = w.now - t0;
    assert!(
        took > 2 * HubConfig::default().answer_timeout,
        "the last answer came well past the answer timeout: {took:?}"
    );
}
