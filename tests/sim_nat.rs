//! Peers behind NATs in the simulation: whole nodes in homes behind cone or symmetric routers,
//! a STUN/TURN server on the "internet" (tests/common/turn_server.rs), real str0m on virtual
//! time. Each case asserts the path ICE took and the data that crossed it; one relayed
//! connection is an insta snapshot of its decoded trace.

mod common;
mod sim;

use std::time::Duration;

use peerpouch::hub::ShareOptions;
use peerpouch::node::*;
use peerpouch::reach::{IceTransportPolicy, Transport};
use peerpouch::session::{CandidateType, LinkPath};
use peerpouch::*;
use serde_json::json;
use sim::nodes::NodeSim;
use sim::{NatKind, NetConfig};

const STUN: &str = "stun:198.51.100.20:3478";
const TURN_UDP: &str = "turn:198.51.100.20:3478?transport=udp";
const TURN_TCP: &str = "turn:198.51.100.20:3478?transport=tcp";

/// A sharer (node 0) and a joiner (node 1), each in a home of the given kind with the given
/// ICE servers; the sharer shares "db" holding `n` documents.
fn homes(
    seed: u64,
    a: (Option<NatKind>, &[&str], IceTransportPolicy),
    b: (Option<NatKind>, &[&str], IceTransportPolicy),
    n: usize,
) -> (NodeSim, String) {
    let mut s = NodeSim::new(
        seed,
        NetConfig {
            latency: Duration::from_millis(20),
            ..NetConfig::default()
        },
    );
    s.add_turn();
    s.add_node_behind("sharer", a.0, a.1, a.2);
    s.add_node_behind("joiner", b.0, b.1, b.2);
    let docs = (0..n)
        .map(|i| json!({"_id": format!("doc{i:04}"), "i": i}))
        .collect();
    s.write(0, "db", docs);
    let now = s.now;
    let share = s.node(0).share(
        now,
        "db".into(),
        ShareOptions::default(),
        ShareAccess::default(),
    );
    s.run_for(Duration::from_millis(1));
    (s, share)
}

/// Opens the share from node 1 and waits for the link to be ready or closed.
fn open(s: &mut NodeSim, share: &str, within: Duration) -> Result<(LinkId, LinkPath), String> {
    let now = s.now;
    let link = s
        .node(1)
        .open(now, share, json!({"name": "joiner"}), None)
        .unwrap();
    let end = |s: &NodeSim| {
        s.nodes[1].events.iter().find_map(|(_, e)| match e {
            NodeEvent::LinkReady { link: l, path } if *l == link => Some(Ok(path.unwrap())),
            NodeEvent::LinkClosed { link: l, reason } if *l == link => Some(Err(reason.clone())),
            _ => None,
        })
    };
    assert!(
        s.run_until(within, |s| end(s).is_some()),
        "the link neither opened nor failed within {within:?}\n{}",
        s.trace()
    );
    end(s).unwrap().map(|p| (link, p))
}

/// Pulls the share into node 1's "copy" and checks every document arrived.
fn pull_all(s: &mut NodeSim, link: &LinkId, n: usize) {
    let now = s.now;
    let rep = s.node(1).replicate(
        now,
        DbRef::Remote(link.clone()),
        DbRef::Local("copy".into()),
        ReplicatorConfig::new("peer", "copy"),
    );
    assert!(
        s.run_until(Duration::from_secs(120), |s| s
            .replication_end(1, rep)
            .is_some()),
        "{}",
        s.trace()
    );
    match s.replication_end(1, rep).unwrap() {
        ReplicationEvent::Completed(p) => assert_eq!(p.docs_written as usize, n),
        other => panic!("replication ended with {other:?}\n{}", s.trace()),
    }
    assert_eq!(s.store(1, "copy").info().unwrap().doc_count as usize, n);
}

#[test]
fn cone_homes_with_stun_connect_directly_through_their_nats() {
    let all = IceTransportPolicy::All;
    let (mut s, share) = homes(
        1,
        (Some(NatKind::Cone), &[STUN], all),
        (Some(NatKind::Cone), &[STUN], all),
        50,
    );
    let (link, path) = open(&mut s, &share, Duration::from_secs(30)).unwrap();
    assert!(!path.is_relayed(), "{path}");
    assert_eq!(path.local, CandidateType::Srflx, "{path}");
    assert!(
        matches!(path.remote, CandidateType::Srflx | CandidateType::Prflx),
        "{path}"
    );
    pull_all(&mut s, &link, 50);
    let turn = s.turn.as_ref().unwrap();
    assert_eq!(turn.counters.allocations, 0, "STUN only: nothing relayed");
    assert!(s.net.nats.iter().all(|n| n.translated > 0));
}

#[test]
fn cone_homes_without_ice_servers_fail_saying_what_was_gathered() {
    let all = IceTransportPolicy::All;
    let (mut s, share) = homes(
        2,
        (Some(NatKind::Cone), &[], all),
        (Some(NatKind::Cone), &[], all),
        1,
    );
    let reason = open(&mut s, &share, Duration::from_secs(40)).unwrap_err();
    assert!(reason.contains("no path to the peer"), "{reason}");
    assert!(
        reason.contains("we offered host 1, srflx 0, relay 0"),
        "{reason}"
    );
    assert!(reason.contains("the peer offered host 1"), "{reason}");
    assert!(reason.contains("add a TURN server"), "{reason}");
    // Found within the connect timeout (30 s), on virtual time.
    assert!(s.elapsed() <= Duration::from_secs(31), "{:?}", s.elapsed());
    // The checks went to the other home's private address, which the internet does not route.
    assert_eq!(s.net.delivered, 0);
    assert!(s.net.dropped > 0);
}

#[test]
fn symmetric_homes_go_through_the_relay_over_udp_and_tcp() {
    let all = IceTransportPolicy::All;
    for (joiner_url, transport) in [(TURN_UDP, Transport::Udp), (TURN_TCP, Transport::Tcp)] {
        let (mut s, share) = homes(
            3,
            (Some(NatKind::Symmetric), &[TURN_UDP], all),
            (Some(NatKind::Symmetric), &[joiner_url], all),
            200,
        );
        let (link, path) = open(&mut s, &share, Duration::from_secs(30)).unwrap();
        assert!(path.is_relayed(), "{path}");
        if path.local == CandidateType::Relay {
            assert_eq!(path.relay, Some(transport), "{path}");
        }
        pull_all(&mut s, &link, 200);
        let turn = s.turn.as_ref().unwrap();
        assert_eq!(turn.counters.allocations, 2, "one allocation per node");
        assert!(turn.counters.relayed_to_peers > 0);
    }
}

#[test]
fn relay_only_offers_nothing_but_relayed_candidates() {
    let relay = IceTransportPolicy::Relay;
    let (mut s, share) = homes(
        4,
        (None, &[TURN_UDP], relay),
        (None, &[TURN_UDP], relay),
        20,
    );
    let (link, path) = open(&mut s, &share, Duration::from_secs(30)).unwrap();
    assert_eq!(path.local, CandidateType::Relay, "{path}");
    assert_eq!(path.remote, CandidateType::Relay, "{path}");
    pull_all(&mut s, &link, 20);
    // Every candidate either side sent through the hub is a relayed one, and no SDP carries
    // a candidate of its own.
    let signals = &s.hub_writes;
    let candidates: Vec<&str> = signals
        .iter()
        .filter_map(|d| d["data"]["candidate"]["candidate"].as_str())
        .collect();
    assert!(!candidates.is_empty(), "{signals:?}");
    for c in &candidates {
        assert!(c.contains("typ relay"), "{c}");
    }
    for d in signals {
        if let Some(sdp) = d["data"]["sdp"].as_str() {
            assert!(!sdp.contains("a=candidate"), "{sdp}");
        }
    }
}

#[test]
fn a_router_restart_mid_replication_is_survived() {
    let all = IceTransportPolicy::All;
    let (mut s, share) = homes(
        5,
        (Some(NatKind::Cone), &[STUN, TURN_UDP], all),
        (Some(NatKind::Cone), &[STUN, TURN_UDP], all),
        100,
    );
    let (link, _) = open(&mut s, &share, Duration::from_secs(30)).unwrap();
    let now = s.now;
    let mut config = ReplicatorConfig::new("peer", "copy");
    config.live = true;
    let rep = s.node(1).replicate(
        now,
        DbRef::Remote(link.clone()),
        DbRef::Local("copy".into()),
        config,
    );
    assert!(s.run_until(Duration::from_secs(60), |s| s.nodes[1]
        .stores
        .get("copy")
        .is_some_and(|c| c.update_seq() >= 100)));
    assert_eq!(s.store(1, "copy").info().unwrap().doc_count, 100);
    s.flush_nat(1);
    s.write(
        0,
        "db",
        (100..150)
            .map(|i| json!({"_id": format!("doc{i:04}"), "i": i}))
            .collect(),
    );
    assert!(
        s.run_until(Duration::from_secs(120), |s| s.nodes[1]
            .stores
            .get("copy")
            .is_some_and(|c| c.update_seq() >= 150)),
        "the live pull did not resume after the router restart\n{}",
        s.trace()
    );
    assert_eq!(s.store(1, "copy").info().unwrap().doc_count, 150);
    assert!(s.replication_end(1, rep).is_none(), "still live");
}

#[test]
fn a_relayed_connection_trace() {
    let all = IceTransportPolicy::All;
    let (mut s, share) = homes(
        6,
        (Some(NatKind::Symmetric), &[TURN_UDP], all),
        (Some(NatKind::Symmetric), &[TURN_UDP], all),
        3,
    );
    s.trace_calls = true;
    let (link, path) = open(&mut s, &share, Duration::from_secs(30)).unwrap();
    assert!(path.is_relayed(), "{path}");
    pull_all(&mut s, &link, 3);
    let now = s.now;
    s.node(1).close(now, &link);
    // The joiner gives its allocation back ICE_IDLE_RELEASE after its last link; the sharer
    // keeps its own while it shares, and gives it back after unsharing.
    s.run_for(ICE_IDLE_RELEASE + Duration::from_secs(5));
    assert_eq!(
        s.turn.as_ref().unwrap().allocation_count(),
        1,
        "{}",
        s.trace()
    );
    let now = s.now;
    s.node(0).unshare(now, &share).unwrap();
    s.run_for(ICE_IDLE_RELEASE + Duration::from_secs(5));
    assert_eq!(
        s.turn.as_ref().unwrap().allocation_count(),
        0,
        "both allocations released\n{}",
        s.trace()
    );
    insta::assert_snapshot!("relayed_connection", s.trace());
}

#[test]
fn a_turn_server_that_failed_is_asked_again_by_a_later_link() {
    let relay = IceTransportPolicy::Relay;
    let (mut s, share) = homes(7, (None, &[TURN_UDP], relay), (None, &[TURN_UDP], relay), 5);
    s.turn.as_mut().unwrap().knobs.silent = true;
    let reason = open(&mut s, &share, Duration::from_secs(40)).unwrap_err();
    assert!(reason.contains("did not answer"), "{reason}");
    // The server comes back; a new link after the retry delay finds it.
    s.turn.as_mut().unwrap().knobs.silent = false;
    s.run_for(peerpouch::reach::gather::RETRY_FAILED_AFTER);
    let (link, path) = open(&mut s, &share, Duration::from_secs(30)).unwrap();
    assert_eq!(path.local, CandidateType::Relay, "{path}");
    pull_all(&mut s, &link, 5);
}

#[test]
fn stun_and_turn_urls_of_one_server_both_work() {
    // Both clients talk to one address: each answer must reach the client that asked (the
    // TURN client's 401 went to the STUN client, and the allocation never finished).
    let relay = IceTransportPolicy::Relay;
    let (mut s, share) = homes(
        8,
        (Some(NatKind::Cone), &[STUN, TURN_UDP], relay),
        (Some(NatKind::Symmetric), &[STUN, TURN_UDP], relay),
        5,
    );
    let (link, path) = open(&mut s, &share, Duration::from_secs(30)).unwrap();
    assert_eq!(path.local, CandidateType::Relay, "{path}");
    pull_all(&mut s, &link, 5);
    assert_eq!(s.turn.as_ref().unwrap().counters.allocations, 2);
}
