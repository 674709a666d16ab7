//! Peer-link scenarios in the deterministic simulation: hub negotiation plus WebRTC sessions
//! over a virtual network.

mod common;
mod sim;

use std::time::Duration;

use peerpouch::session::CloseReason;
use sim::*;

fn two_nodes(seed: u64, net: NetConfig) -> (Sim, Conn, Conn) {
    let lossy = net.loss > 0.0;
    let mut s = Sim::new(seed, net);
    if lossy {
        // DTLS and SCTP back off for seconds per lost packet: give lossy links time to open.
        s.session.connect_timeout = Duration::from_secs(300);
    }
    let a = s.add_node("sharer");
    let b = s.add_node("joiner");
    let share = s.share(a);
    s.run_for(Duration::from_millis(1));
    let jc = s.open(b, &share);
    let ok = s.run_until(Duration::from_secs(300), |s| {
        s.link(b, &jc).is_some_and(|l| l.opened_at.is_some())
            && s.conns(a)
                .first()
                .and_then(|c| s.link(a, c))
                .is_some_and(|l| l.opened_at.is_some())
    });
    assert!(ok, "channel did not open\n{}", s.trace());
    let sc = s.conns(a)[0].clone();
    (s, sc, jc)
}

fn exchange(s: &mut Sim, sc: &Conn, jc: &Conn, n: usize, size: usize, within: Duration) {
    let to_joiner = payloads(1, n, size);
    let to_sharer = payloads(2, n, size);
    s.queue_send(0, sc, to_joiner.clone());
    s.queue_send(1, jc, to_sharer.clone());
    let ok = s.run_until(within, |s| {
        s.link(1, jc).unwrap().received.len() >= n && s.link(0, sc).unwrap().received.len() >= n
    });
    assert!(
        ok,
        "transfer incomplete: {} / {} of {n}",
        s.link(1, jc).unwrap().received.len(),
        s.link(0, sc).unwrap().received.len()
    );
    assert_eq!(
        s.link(1, jc).unwrap().received,
        to_joiner,
        "joiner got every message, in order"
    );
    assert_eq!(
        s.link(0, sc).unwrap().received,
        to_sharer,
        "sharer got every message, in order"
    );
}

#[test]
fn connect_exchange_and_close_trace() {
    let (mut s, sc, jc) = two_nodes(1, NetConfig::default());
    s.queue_send(1, &jc, vec![b"hello sharer".to_vec()]);
    s.queue_send(0, &sc, vec![b"hello joiner".to_vec()]);
    s.run_until(Duration::from_secs(5), |s| {
        !s.link(0, &sc).unwrap().received.is_empty() && !s.link(1, &jc).unwrap().received.is_empty()
    });
    s.close(1, &jc);
    let closed = s.run_until(Duration::from_secs(5), |s| {
        s.link(0, &sc).unwrap().closed.is_some()
    });
    assert!(closed);
    assert_eq!(
        s.link(0, &sc).unwrap().closed.as_ref().unwrap().1,
        CloseReason::Remote
    );
    assert_eq!(
        s.link(1, &jc).unwrap().closed.as_ref().unwrap().1,
        CloseReason::Local
    );
    insta::assert_snapshot!("connect_exchange_and_close", s.trace());
}

#[test]
fn same_seed_gives_the_same_trace() {
    let run = |seed| {
        let net = NetConfig {
            loss: 0.1,
            jitter: Duration::from_millis(5),
            ..NetConfig::default()
        };
        let (mut s, sc, jc) = two_nodes(seed, net);
        exchange(&mut s, &sc, &jc, 20, 1000, Duration::from_secs(60));
        s.trace().to_string()
    };
    let a = run(7);
    let b = run(7);
    assert_eq!(a, b, "same seed, different trace");
    assert_ne!(run(8), a, "another seed should shuffle the network");
}

#[test]
fn transfers_complete_under_10_percent_loss_with_reordering() {
    let net = NetConfig {
        loss: 0.10,
        jitter: Duration::from_millis(20),
        ..NetConfig::default()
    };
    let (mut s, sc, jc) = two_nodes(2, net);
    s.trace_messages = false;
    exchange(&mut s, &sc, &jc, 200, 8 * 1024, Duration::from_secs(600));
}

#[test]
fn transfers_complete_under_30_percent_loss() {
    let net = NetConfig {
        loss: 0.30,
        jitter: Duration::from_millis(10),
        ..NetConfig::default()
    };
    let (mut s, sc, jc) = two_nodes(3, net);
    s.trace_messages = false;
    exchange(&mut s, &sc, &jc, 60, 4 * 1024, Duration::from_secs(1200));
}

#[test]
fn duplication_and_a_small_mtu_are_harmless() {
    let net = NetConfig {
        duplicate: 0.2,
        mtu: 1200,
        jitter: Duration::from_millis(3),
        ..NetConfig::default()
    };
    let (mut s, sc, jc) = two_nodes(4, net);
    s.trace_messages = false;
    exchange(&mut s, &sc, &jc, 50, 20 * 1024, Duration::from_secs(120));
}

#[test]
fn a_silent_peer_is_closed_on_both_sides_within_the_idle_timeout() {
    let (mut s, sc, jc) = two_nodes(5, NetConfig::default());
    let cut = s.elapsed();
    s.partition(0, 1, cut, cut + Duration::from_secs(3600));
    let ok = s.run_until(Duration::from_secs(60), |s| {
        s.link(0, &sc).unwrap().closed.is_some() && s.link(1, &jc).unwrap().closed.is_some()
    });
    assert!(ok, "not closed\n{}", s.trace());
    for (n, c) in [(0, &sc), (1, &jc)] {
        let (at, reason) = s.link(n, c).unwrap().closed.clone().unwrap();
        assert_eq!(reason, CloseReason::IdleTimeout);
        let after = at - cut;
        assert!(
            after <= Duration::from_secs(10),
            "closed {after:?} after silence began"
        );
        assert!(
            after >= Duration::from_secs(8),
            "closed too early: {after:?}"
        );
    }
}

#[test]
fn a_short_partition_heals_without_closing() {
    let (mut s, sc, jc) = two_nodes(6, NetConfig::default());
    let cut = s.elapsed();
    s.partition(0, 1, cut, cut + Duration::from_secs(6));
    s.run_for(Duration::from_secs(7));
    assert!(s.link(0, &sc).unwrap().closed.is_none(), "{}", s.trace());
    assert!(s.link(1, &jc).unwrap().closed.is_none());
    exchange(&mut s, &sc, &jc, 10, 100, Duration::from_secs(30));
    // The offerer noticed the silence and restarted ICE through the hub, and the sharer answered.
    let t = s.trace();
    let restart = t.find("joiner ev    IceRestarted").expect("an ICE restart");
    assert!(t[restart..].contains("sharer ->hub answer"), "{t}");
}

#[test]
fn a_restarted_peer_reconnects_through_the_hub() {
    let (mut s, sc, _jc) = two_nodes(7, NetConfig::default());
    let share = sc.0.clone();
    s.crash(1);
    s.restart(1);
    let jc2 = s.open(1, &share);
    let ok = s.run_until(Duration::from_secs(60), |s| {
        s.link(1, &jc2).is_some_and(|l| l.opened_at.is_some())
    });
    assert!(ok, "{}", s.trace());
    // The sharer closed the old, silent session and serves the new one.
    let ok = s.run_until(Duration::from_secs(30), |s| {
        s.link(0, &sc).unwrap().closed.is_some()
    });
    assert!(ok);
    let new_sc = s
        .conns(0)
        .into_iter()
        .find(|c| c.1 == jc2.1)
        .expect("sharer has the new link");
    exchange(&mut s, &new_sc, &jc2, 5, 100, Duration::from_secs(30));
}

#[test]
fn many_peers_on_one_node() {
    let mut s = Sim::new(8, NetConfig::default());
    let a = s.add_node("sharer");
    let share = s.share(a);
    s.run_for(Duration::from_millis(10));
    let joiners: Vec<(usize, Conn)> = (0..5)
        .map(|i| {
            let n = s.add_node(&format!("j{i}"));
            s.run_for(Duration::from_millis(1));
            let c = s.open(n, &share);
            (n, c)
        })
        .collect();
    let ok = s.run_until(Duration::from_secs(60), |s| {
        joiners
            .iter()
            .all(|(n, c)| s.link(*n, c).is_some_and(|l| l.opened_at.is_some()))
    });
    assert!(ok, "{}", s.trace());
    assert_eq!(s.conns(a).len(), 5);
    for (n, c) in &joiners {
        s.queue_send(*n, c, vec![format!("from {}", c.1).into_bytes()]);
    }
    let ok = s.run_until(Duration::from_secs(10), |s| {
        s.conns(a)
            .iter()
            .all(|c| s.link(a, c).unwrap().received.len() == 1)
    });
    assert!(ok);
    for c in s.conns(a) {
        assert_eq!(
            s.link(a, &c).unwrap().received[0],
            format!("from {}", c.1).into_bytes(),
            "routed to the right session"
        );
    }
}

#[test]
fn a_refused_peer_gets_no_session() {
    let mut s = Sim::new(9, NetConfig::default());
    let a = s.add_node("sharer");
    let b = s.add_node("joiner");
    s.nodes[a].refuse_info = Some(serde_json::json!({"name": "joiner"}));
    let share = s.share(a);
    s.run_for(Duration::from_millis(10));
    let jc = s.open(b, &share);
    s.run_for(Duration::from_secs(5));
    assert!(s.conns(a).is_empty(), "no session for a refused peer");
    assert_eq!(s.nodes[a].refused.len(), 1);
    assert!(s.link(b, &jc).unwrap().opened_at.is_none());
    assert!(
        s.trace().contains("refused: Some(\"refused by policy\")"),
        "{}",
        s.trace()
    );
}
