//! A sharer's limits with a crowd, in the simulation: how many peers a share and a node
//! keep, and that one more is told why it is turned away instead of timing out.

mod common;
mod sim;

use std::time::Duration;

use peerpouch::hub::ShareOptions;
use peerpouch::node::*;
use peerpouch::*;
use serde_json::json;
use sim::nodes::NodeSim;
use sim::NetConfig;

/// The reason node `i` was refused on `link`, once it was.
fn refused(s: &NodeSim, i: usize, link: &LinkId) -> Option<String> {
    s.nodes[i].events.iter().find_map(|(_, e)| match e {
        NodeEvent::Refused { link: l, reason } if l == link => {
            Some(reason.clone().unwrap_or_default())
        }
        _ => None,
    })
}

fn ready(s: &NodeSim, i: usize, link: &LinkId) -> bool {
    s.nodes[i]
        .events
        .iter()
        .any(|(_, e)| matches!(e, NodeEvent::LinkReady { link: l, .. } if l == link))
}

/// Node 0 shares "db" with `access`; returns the share id.
fn share(s: &mut NodeSim, access: ShareAccess) -> String {
    s.write(0, "db", vec![json!({"_id": "a", "v": 1})]);
    let now = s.now;
    let share = s
        .node(0)
        .share(now, "db".into(), ShareOptions::default(), access);
    s.run_for(Duration::from_millis(1));
    share
}

fn open(s: &mut NodeSim, i: usize, share: &str) -> LinkId {
    let now = s.now;
    s.node(i)
        .open(now, share, json!({"name": format!("joiner {i}")}), None)
        .unwrap()
}

#[test]
fn a_full_share_refuses_one_more_peer_with_a_reason_and_takes_it_once_a_place_is_free() {
    let mut s = NodeSim::new(31, NetConfig::default());
    s.add_node("sharer");
    for i in 1..=3 {
        s.add_node(&format!("j{i}"));
    }
    let share = share(
        &mut s,
        ShareAccess {
            max_links: Some(2),
            ..Default::default()
        },
    );
    let first = open(&mut s, 1, &share);
    let second = open(&mut s, 2, &share);
    assert!(
        s.run_until(Duration::from_secs(30), |s| ready(s, 1, &first)
            && ready(s, 2, &second)),
        "{}",
        s.trace()
    );
    let asked = s.elapsed();
    let third = open(&mut s, 3, &share);
    assert!(
        s.run_until(Duration::from_secs(30), |s| refused(s, 3, &third).is_some()),
        "the third peer hears it is refused (not a timeout)\n{}",
        s.trace()
    );
    let reason = refused(&s, 3, &third).unwrap();
    assert!(
        reason.contains("the share is full (2 of 2 peers"),
        "{reason}"
    );
    assert!(reason.contains("max_links"), "{reason}");
    assert!(!ready(&s, 3, &third));
    // The refusal came quickly: the answer timeout (5 s) did not have to run out.
    let at = s.nodes[3]
        .events
        .iter()
        .find_map(|(t, e)| matches!(e, NodeEvent::Refused { .. }).then_some(*t))
        .unwrap();
    assert!(
        at - asked < Duration::from_secs(2),
        "refused {:?} after asking",
        at - asked
    );

    // One leaves; the place is free again.
    let now = s.now;
    s.node(1).close(now, &first);
    s.run_for(Duration::from_secs(3));
    let again = open(&mut s, 3, &share);
    assert!(
        s.run_until(Duration::from_secs(30), |s| ready(s, 3, &again)),
        "a freed place is taken\n{}",
        s.trace()
    );
    assert_eq!(s.node_ready_links(0), 2);
}

#[test]
fn a_node_at_its_link_limit_refuses_peers_of_every_share_and_opens_no_more() {
    let mut s = NodeSim::new(32, NetConfig::default());
    let mut config = s.config.clone();
    config.max_links = 1;
    s.add_node_with("sharer", config);
    s.add_node("j1");
    s.add_node("j2");
    let share = share(&mut s, ShareAccess::default());
    let first = open(&mut s, 1, &share);
    assert!(s.run_until(Duration::from_secs(30), |s| ready(s, 1, &first)));
    let second = open(&mut s, 2, &share);
    assert!(
        s.run_until(Duration::from_secs(30), |s| refused(s, 2, &second)
            .is_some()),
        "{}",
        s.trace()
    );
    let reason = refused(&s, 2, &second).unwrap();
    assert!(
        reason.contains("the sharer is at its limit of 1 links"),
        "{reason}"
    );
    // The full node cannot open a link of its own either.
    let now = s.now;
    let err = s
        .node(0)
        .open(now, &share, json!({}), None)
        .expect_err("no room for a link");
    assert!(matches!(err, NodeError::TooManyLinks(1)), "{err}");
}

#[test]
fn a_peer_that_takes_none_of_our_data_is_cut_off_after_the_stall_timeout() {
    let mut s = NodeSim::new(33, NetConfig::default());
    let mut config = s.config.clone();
    config.session.send_stall_timeout = Duration::from_secs(30);
    s.add_node_with("sharer", config);
    s.add_node("joiner");
    let docs = (0..400)
        .map(|i| json!({"_id": format!("doc{i:04}"), "text": "lorem ipsum ".repeat(100)}))
        .collect();
    s.write(0, "db", docs);
    let share = share(&mut s, ShareAccess::default());
    let link = open(&mut s, 1, &share);
    assert!(s.run_until(Duration::from_secs(30), |s| ready(s, 1, &link)));
    // From now on the path drops the sharer's large packets (an MTU black hole): its
    // heartbeats and acknowledgements still pass both ways, so neither side goes idle.
    let (sharer, start) = (s.nodes[0].addr, s.elapsed());
    s.net.filter = Some(Box::new(move |_, t| {
        if t.source == sharer && t.contents.len() > 400 {
            sim::net::Fate::Drop
        } else {
            sim::net::Fate::Pass
        }
    }));
    let now = s.now;
    s.node(1).replicate(
        now,
        DbRef::Remote(link.clone()),
        DbRef::Local("copy".into()),
        ReplicatorConfig::new("peer", "copy"),
    );
    let closed = |s: &NodeSim| {
        s.nodes[0].events.iter().find_map(|(t, e)| match e {
            NodeEvent::LinkClosed { link: l, reason } if *l == link => Some((*t, reason.clone())),
            _ => None,
        })
    };
    assert!(
        s.run_until(Duration::from_secs(120), |s| closed(s).is_some()),
        "{}",
        s.trace()
    );
    let (at, reason) = closed(&s).unwrap();
    assert!(reason.contains("took none of our data"), "{reason}");
    let after = at - start;
    assert!(
        after >= Duration::from_secs(30) && after < Duration::from_secs(40),
        "cut off {after:?} after the path went bad"
    );
}

/// Node `i` calls `request` on `link` and runs the sim until the answer is in: the answer
/// and how long it took (virtual time).
fn call(
    s: &mut NodeSim,
    i: usize,
    link: &LinkId,
    request: Request,
) -> (Result<Response, DbError>, Duration) {
    let (now, t0) = (s.now, s.elapsed());
    let id = s.node(i).call(now, link, request).unwrap();
    let answer = |s: &NodeSim| {
        s.nodes[i].events.iter().rev().find_map(|(t, e)| match e {
            NodeEvent::CallResult { call, result, .. } if *call == id => Some((*t, result.clone())),
            _ => None,
        })
    };
    assert!(s.run_until(Duration::from_secs(60), |s| answer(s).is_some()));
    let (t, result) = answer(s).unwrap();
    (result, t - t0)
}

fn get(id: &str) -> Request {
    Request::Get(GetRequest::new(id))
}

#[test]
fn a_large_download_on_one_link_does_not_hold_up_small_calls_on_another() {
    // A sharer on a 40 Mbit/s uplink, 10 ms from its peers: what it sends queues there.
    let net = NetConfig {
        uplink_bits_per_s: Some(40_000_000),
        ..NetConfig::default()
    };
    let mut s = NodeSim::new(34, net);
    s.trace_calls = false;
    s.add_node("sharer");
    s.add_node("big");
    s.add_node("small");
    let blob: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let data = serde_json::to_value(AttachmentData {
        content_type: String::new(),
        digest: String::new(),
        data: blob.clone().into(),
    })
    .unwrap()["data"]
        .clone();
    s.write(
        0,
        "db",
        vec![json!({"_id": "blob", "_attachments": {"b.bin": {"content_type": "application/octet-stream", "data": data}}})],
    );
    let share = share(&mut s, ShareAccess::default());
    let (big, small) = (open(&mut s, 1, &share), open(&mut s, 2, &share));
    assert!(s.run_until(Duration::from_secs(30), |s| ready(s, 1, &big)
        && ready(s, 2, &small)));

    // Small calls alone.
    let alone: Vec<Duration> = (0..20)
        .map(|_| call(&mut s, 2, &small, get("a")).1)
        .collect();
    // The same calls while the other link downloads 8 MiB (1.7 s on that uplink at best).
    let now = s.now;
    let download = s
        .node(1)
        .call(
            now,
            &big,
            Request::GetAttachment(AttachmentRequest {
                id: "blob".into(),
                name: "b.bin".into(),
                rev: None,
            }),
        )
        .unwrap();
    let done = |s: &NodeSim| {
        s.nodes[1].events.iter().find_map(|(_, e)| match e {
            NodeEvent::CallResult { call, result, .. } if *call == download => Some(result.clone()),
            _ => None,
        })
    };
    let started = s.elapsed();
    let mut during = Vec::new();
    while done(&s).is_none() {
        let (result, took) = call(&mut s, 2, &small, get("a"));
        assert_eq!(result.unwrap().into_doc_body().unwrap().doc["v"], 1);
        during.push(took);
    }
    let took = s.elapsed() - started;
    match done(&s).unwrap().unwrap() {
        Response::Attachment(a) => assert!(a.data[..] == blob[..], "the download is whole"),
        other => panic!("{other:?}"),
    }
    let max = |v: &[Duration]| *v.iter().max().unwrap();
    let median = |v: &[Duration]| {
        let mut v = v.to_vec();
        v.sort();
        v[v.len() / 2]
    };
    println!(
        "download {took:?}; small calls alone: median {:?} max {:?}; during: {} calls, median {:?} max {:?}",
        median(&alone),
        max(&alone),
        during.len(),
        median(&during),
        max(&during)
    );
    assert!(took >= Duration::from_millis(1600), "{took:?}");
    assert!(
        during.len() >= 20,
        "{} calls during the download",
        during.len()
    );
    // The other link's data in the sharer's uplink queue is at most its send window (2 × 64
    // KiB in SCTP, 26 ms at 40 Mbit/s): a small call waits behind that, not behind the
    // download.
    assert!(
        max(&during) <= max(&alone) + Duration::from_millis(40),
        "a small call took {:?} during the download (alone: {:?})",
        max(&during),
        max(&alone)
    );
}

/// A sharer (node 0) and `joiners` nodes, quiet in the trace.
fn crowd(seed: u64, joiners: usize) -> NodeSim {
    let mut s = NodeSim::new(seed, NetConfig::default());
    s.trace_calls = false;
    s.add_node("sharer");
    for i in 1..=joiners {
        s.add_node(&format!("j{i}"));
    }
    s
}

#[test]
fn a_hundred_peers_asking_at_once_all_wait_their_turn_and_get_in() {
    const CROWD: usize = 100;
    let mut s = crowd(35, CROWD);
    let share = share(
        &mut s,
        ShareAccess {
            ask: true,
            ..Default::default()
        },
    );
    // The join storm: everyone asks within the same second.
    let links: Vec<LinkId> = (1..=CROWD)
        .map(|i| {
            s.run_for(Duration::from_millis(10));
            open(&mut s, i, &share)
        })
        .collect();
    // The person at the sharer answers one request every 800 ms, in the order they came: the
    // last one waits 80 s, past the connect timeout (30 s), within the approval timeout.
    let mut answered = 0;
    while answered < CROWD {
        let asked: Vec<LinkId> = s.nodes[0]
            .events
            .iter()
            .filter_map(|(_, e)| match e {
                NodeEvent::PeerRequested { link, .. } => Some(link.clone()),
                _ => None,
            })
            .collect();
        if let Some(link) = asked.get(answered) {
            let now = s.now;
            s.node(0).accept(now, link).unwrap();
            answered += 1;
        }
        s.run_for(Duration::from_millis(800));
    }
    assert!(
        s.run_until(Duration::from_secs(60), |s| (1..=CROWD).all(|i| ready(
            s,
            i,
            &links[i - 1]
        ))),
        "every peer that waited got in"
    );
    assert_eq!(s.node_ready_links(0), CROWD);
    for i in 1..=CROWD {
        assert!(
            !s.nodes[i].events.iter().any(|(_, e)| matches!(
                e,
                NodeEvent::NotAccepted { .. }
                    | NodeEvent::NotAnswering { .. }
                    | NodeEvent::LinkClosed { .. }
            )),
            "joiner {i} gave up"
        );
    }
    assert!(s.elapsed() > Duration::from_secs(80));
}

#[test]
fn a_sharer_keeps_nothing_of_a_crowd_that_left() {
    // Two storms of peers that link, then vanish (kill -9): once the sharer has noticed, it
    // keeps no entry for any of them (links, routes, signalling connections, requests).
    const CROWD: usize = 20;
    let mut s = crowd(36, CROWD);
    let share = share(&mut s, ShareAccess::default());
    let idle = s.nodes[0].node.as_ref().unwrap().footprint();
    assert_eq!(idle, Footprint::default(), "an idle sharer");
    for storm in 1..=2 {
        if storm > 1 {
            for i in 1..=CROWD {
                s.restart(i);
            }
        }
        let links: Vec<LinkId> = (1..=CROWD).map(|i| open(&mut s, i, &share)).collect();
        assert!(
            s.run_until(Duration::from_secs(60), |s| (1..=CROWD).all(|i| ready(
                s,
                i,
                &links[i - 1]
            ))),
            "storm {storm}: every peer linked"
        );
        assert_eq!(s.node_ready_links(0), CROWD);
        let busy = s.nodes[0].node.as_ref().unwrap().footprint();
        assert!(busy.links == CROWD && busy.routes >= CROWD, "{busy:?}");
        for i in 1..=CROWD {
            s.crash(i);
        }
        assert!(
            s.run_until(Duration::from_secs(60), |s| s.nodes[0]
                .node
                .as_ref()
                .unwrap()
                .footprint()
                == Footprint::default()),
            "storm {storm}: the sharer forgot the crowd: {:?}",
            s.nodes[0].node.as_ref().unwrap().footprint()
        );
    }
}
