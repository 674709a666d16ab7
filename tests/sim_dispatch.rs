//! A crowd on one sharer in the simulation: every received datagram reaches its link through
//! the router's maps (`peerpouch::route`), offered to one session, not to each of them; only
//! the first packets of a new candidate pair ask every session. Direct and relayed.

mod common;
mod sim;

use std::time::Duration;

use peerpouch::hub::ShareOptions;
use peerpouch::node::*;
use peerpouch::reach::IceTransportPolicy;
use peerpouch::route::DispatchStats;
use peerpouch::*;
use serde_json::json;
use sim::nodes::NodeSim;
use sim::NetConfig;

const TURN_UDP: &str = "turn:198.51.100.20:3478?transport=udp";
const DOCS: usize = 30;

/// Node 0 shares "db" (DOCS documents); every other node opens it and waits for its link.
fn crowd_connects(s: &mut NodeSim, joiners: usize) -> Vec<LinkId> {
    let docs = (0..DOCS)
        .map(|i| json!({"_id": format!("doc{i:04}"), "i": i, "text": "t".repeat(500)}))
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
    let now = s.now;
    let links: Vec<LinkId> = (1..=joiners)
        .map(|i| {
            s.node(i)
                .open(now, &share, json!({"name": format!("joiner {i}")}), None)
                .unwrap()
        })
        .collect();
    assert!(
        s.run_until(Duration::from_secs(60), |s| (1..=joiners)
            .all(|i| s.node_ready_links(i) == 1)),
        "not every joiner got a link\n{}",
        s.trace()
    );
    assert_eq!(s.node_ready_links(0), joiners);
    links
}

/// Every joiner pulls the share; each ends with all of it.
fn crowd_pulls(s: &mut NodeSim, links: &[LinkId]) {
    let now = s.now;
    let reps: Vec<(usize, ReplicationId)> = links
        .iter()
        .enumerate()
        .map(|(j, link)| {
            let i = j + 1;
            let rep = s.node(i).replicate(
                now,
                DbRef::Remote(link.clone()),
                DbRef::Local("copy".into()),
                // Each joiner's own checkpoint on the sharer's database.
                ReplicatorConfig::new("peer", format!("copy of joiner {i}")),
            );
            (i, rep)
        })
        .collect();
    assert!(
        s.run_until(Duration::from_secs(300), |s| reps
            .iter()
            .all(|(i, r)| s.replication_end(*i, *r).is_some())),
        "not every replication ended\n{}",
        s.trace()
    );
    for (i, r) in reps {
        match s.replication_end(i, r).unwrap() {
            ReplicationEvent::Completed(p) => assert_eq!(p.docs_written as usize, DOCS),
            other => panic!("joiner {i}: replication ended with {other:?}"),
        }
        assert_eq!(s.store(i, "copy").info().unwrap().doc_count as usize, DOCS);
    }
}

/// What happened between two readings of the counters.
fn delta(a: DispatchStats, b: DispatchStats) -> DispatchStats {
    let mut d = DispatchStats::default();
    d.datagrams = b.datagrams - a.datagrams;
    d.offered = b.offered - a.offered;
    d.offered_to_one = b.offered_to_one - a.offered_to_one;
    d.fallbacks = b.fallbacks - a.fallbacks;
    d.ambiguous = b.ambiguous - a.ambiguous;
    d.unclaimed = b.unclaimed - a.unclaimed;
    d.routes = b.routes;
    d
}

/// Once connected, every datagram of the crowd's traffic went to one session: the sharer did
/// O(1) routing work per datagram, not O(links).
fn assert_routed_by_map(connecting: DispatchStats, serving: DispatchStats, links: usize) {
    assert!(serving.datagrams > 0, "{serving:?}");
    assert_eq!(serving.offered_to_one, serving.datagrams, "{serving:?}");
    assert_eq!(serving.offered, serving.datagrams, "{serving:?}");
    assert_eq!(serving.fallbacks, 0, "{serving:?}");
    assert_eq!(serving.unclaimed, 0, "{serving:?}");
    // While connecting, only the first packets of a new pair may ask everyone (a STUN answer
    // or DTLS record from an address no check came from yet): a few per link at most, not a
    // share of all traffic.
    assert!(
        connecting.fallbacks <= 2 * links as u64,
        "{connecting:?} for {links} links"
    );
    assert_eq!(connecting.ambiguous, 0, "{connecting:?}");
}

#[test]
fn fifty_links_on_one_sharer_each_datagram_offered_to_one_session() {
    const LINKS: usize = 50;
    let mut s = NodeSim::new(17, NetConfig::default());
    s.trace_calls = false;
    for i in 0..=LINKS {
        s.add_node(&format!("n{i}"));
    }
    let links = crowd_connects(&mut s, LINKS);
    let connected = s.node(0).dispatch_stats();
    crowd_pulls(&mut s, &links);
    let served = s.node(0).dispatch_stats();
    let serving = delta(connected, served);
    eprintln!("connecting: {connected:?}\nserving: {serving:?}");
    assert_routed_by_map(connected, serving, LINKS);
    // Asking every session for every datagram would have cost ~LINKS times as many offers.
    assert!(served.offered < 2 * served.datagrams, "{served:?}");
    // Every joiner leaves: the sharer forgets each link and every route to it.
    assert!(served.routes >= LINKS as u64, "{served:?}");
    let now = s.now;
    for (j, link) in links.iter().enumerate() {
        s.node(j + 1).close(now, link);
    }
    assert!(
        s.run_until(Duration::from_secs(60), |s| s.nodes[0]
            .node
            .as_ref()
            .is_some_and(
                |n| n.links().is_empty() && n.dispatch_stats().routes == 0
            )),
        "links or routes left: {:?} {:?}",
        s.node(0).links().len(),
        s.node(0).dispatch_stats()
    );
}

#[test]
fn relayed_links_route_through_the_map_too() {
    const LINKS: usize = 6;
    let mut s = NodeSim::new(
        23,
        NetConfig {
            latency: Duration::from_millis(20),
            ..NetConfig::default()
        },
    );
    s.trace_calls = false;
    s.add_turn();
    // The sharer offers only relayed candidates: everything it receives from its peers comes
    // through its TURN allocation, unwrapped by the gatherer.
    let relay = IceTransportPolicy::Relay;
    s.add_node_behind("sharer", None, &[TURN_UDP], relay);
    for i in 1..=LINKS {
        s.add_node_behind(&format!("n{i}"), None, &[], IceTransportPolicy::All);
    }
    let links = crowd_connects(&mut s, LINKS);
    let connected = s.node(0).dispatch_stats();
    crowd_pulls(&mut s, &links);
    let served = s.node(0).dispatch_stats();
    assert!(s.turn.as_ref().unwrap().counters.relayed_to_peers > 0);
    let serving = delta(connected, served);
    eprintln!("connecting: {connected:?}\nserving: {serving:?}");
    assert_routed_by_map(connected, serving, LINKS);
}

#[test]
fn a_joiner_restarted_on_the_same_address_is_routed_to_its_new_link() {
    const LINKS: usize = 5;
    let mut s = NodeSim::new(29, NetConfig::default());
    s.trace_calls = false;
    for i in 0..=LINKS {
        s.add_node(&format!("n{i}"));
    }
    let mut links = crowd_connects(&mut s, LINKS);
    let share = links[0].share.clone();
    // Joiner 3's process dies and a new one binds the same address and port: the sharer's
    // map still names the old link for that address, whose session would accept it.
    s.crash(3);
    s.restart(3);
    let now = s.now;
    links[2] = s
        .node(3)
        .open(now, &share, json!({"name": "joiner 3 again"}), None)
        .unwrap();
    assert!(
        s.run_until(Duration::from_secs(30), |s| s.node_ready_links(3) == 1),
        "the restarted joiner did not get a link\n{}",
        s.trace()
    );
    let sharer_links = s.node(0).links().len();
    assert_eq!(sharer_links, LINKS + 1, "the old link is still there");
    let connected = s.node(0).dispatch_stats();
    crowd_pulls(&mut s, &links);
    let serving = delta(connected, s.node(0).dispatch_stats());
    assert_routed_by_map(connected, serving, LINKS + 1);
}

#[test]
fn a_second_link_between_the_same_sockets_opens_without_a_retransmission() {
    let mut s = NodeSim::new(31, NetConfig::default());
    s.trace_calls = false;
    s.add_node("sharer");
    s.add_node("joiner");
    let links = crowd_connects(&mut s, 1);
    let share = links[0].share.clone();
    // The joiner closes its link and at once opens the share again, from the same socket to
    // the same socket. The old sessions linger (closed, draining) on both nodes and know the
    // remote address: the new link's STUN answers and DTLS must still reach the new session,
    // not the dead one (which would drop them and leave ICE to retransmit 250 ms later).
    let mut opens = Vec::new();
    let mut link = links[0].clone();
    for round in 0..3 {
        let now = s.now;
        s.node(1).close(now, &link);
        // The goodbye crosses: both old sessions are closed, and linger while they drain.
        s.run_for(Duration::from_millis(50));
        let now = s.now;
        let started = s.now;
        link = s
            .node(1)
            .open(now, &share, json!({"name": format!("again {round}")}), None)
            .unwrap();
        let ready = s.run_until(Duration::from_secs(10), |s| {
            s.ready_link(1).as_ref() == Some(&link)
        });
        assert!(ready, "round {round}: no link\n{}", s.trace());
        opens.push(s.now - started);
    }
    // Hub round trips and the handshakes take a few 10 ms latencies; a lost answer waiting
    // for ICE's retransmission would add 250 ms.
    for (round, t) in opens.iter().enumerate() {
        assert!(
            *t < Duration::from_millis(200),
            "round {round} took {t:?} (all: {opens:?})"
        );
    }
}
