//! Peer-link scenarios in the deterministic simulation: hub negotiation plus WebRTC sessions
//! over a virtual network.

mod common;
mod sim;

use std::time::Duration;

use peerpouch::session::CloseReason;
use sim::net::Fate;
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

/// A sharer and a joiner on a clean network that also applies `filter` (given the joiner's
/// address); the joiner opens the share, and the run goes on until both channels are open or
/// `within` has passed.
fn open_through(
    connect_timeout: Duration,
    within: Duration,
    mut filter: impl FnMut(Duration, &peerpouch::session::Transmit, bool) -> Fate + 'static,
) -> (Sim, Conn) {
    let mut s = Sim::new(40, NetConfig::default());
    s.session.connect_timeout = connect_timeout;
    let a = s.add_node("sharer");
    let b = s.add_node("joiner");
    let joiner = s.nodes[b].addr;
    s.net.filter = Some(Box::new(move |t, tx| filter(t, tx, tx.source == joiner)));
    let share = s.share(a);
    s.run_for(Duration::from_millis(1));
    let jc = s.open(b, &share);
    s.run_until(within, |s| {
        s.link(b, &jc).is_some_and(|l| l.opened_at.is_some())
            && s.conns(a)
                .first()
                .and_then(|c| s.link(a, c))
                .is_some_and(|l| l.opened_at.is_some())
    });
    (s, jc)
}

/// Whether a datagram starts a DTLS handshake: a ClientHello in the first record of epoch 0
/// (its retransmissions have later record numbers).
fn starts_a_handshake(data: &[u8]) -> bool {
    sim::net::dtls_records(data)
        .iter()
        .any(|&(ty, epoch, seq, first)| ty == 22 && epoch == 0 && seq == 0 && first == Some(1))
}

fn has_record(data: &[u8], content_type: u8) -> bool {
    sim::net::dtls_records(data)
        .iter()
        .any(|r| r.0 == content_type)
}

/// The joiner opened, the sharer too, neither closed, and the handshake started over once.
fn assert_opened_after_one_restart(s: &Sim, jc: &Conn) -> Duration {
    let joined = s.link(1, jc).expect("the joiner's link");
    assert!(joined.closed.is_none(), "{}", s.trace());
    let opened = joined
        .opened_at
        .unwrap_or_else(|| panic!("not open\n{}", s.trace()));
    let sc = &s.conns(0)[0];
    let shared = s.link(0, sc).expect("the sharer's link");
    assert!(
        shared.opened_at.is_some() && shared.closed.is_none(),
        "{}",
        s.trace()
    );
    let t = s.trace();
    assert_eq!(
        t.matches("joiner ev    HandshakeRestarted").count(),
        1,
        "{t}"
    );
    assert_eq!(
        t.matches("sharer ev    HandshakeRestarted").count(),
        1,
        "{t}"
    );
    opened
}

/// Random-network soak seed 1016 (9% loss; it failed in about one run in three, see below):
/// the joiner sent its SCTP INIT again before the INIT ACK arrived (sctp-proto starts its
/// first INIT timer on the real clock, so in the simulation it fires at about 3 s of virtual
/// time whenever the association starts); the COOKIE ECHO overtook that second INIT, the
/// sharer's association came up, its COOKIE ACK was lost, and then the stale INIT reached the
/// established association: sctp-proto drops the whole association on it (RFC 4960 §5.2.2
/// would answer it), str0m closed DTLS, and the joiner, still waiting for its COOKIE ACK,
/// failed ("shutdown called in non-Established state"). The same, made exact: the INIT ACK
/// comes 5 s late, the second INIT 3 s late, the COOKIE ACK is lost. The handshake starts over.
#[test]
fn a_stale_sctp_init_that_ends_the_association_starts_the_handshake_over() {
    let (mut joiner_app, mut sharer_app) = (0, 0);
    let (s, jc) = open_through(
        Duration::from_secs(30),
        Duration::from_secs(30),
        move |_, t, from_joiner| {
            if !has_record(&t.contents, 23) {
                return Fate::Pass;
            }
            let n = if from_joiner {
                joiner_app += 1;
                joiner_app
            } else {
                sharer_app += 1;
                sharer_app
            };
            match (from_joiner, n) {
                // The second INIT.
                (true, 2) => Fate::Late(Duration::from_secs(3)),
                // The INIT ACK, then the COOKIE ACK.
                (false, 1) => Fate::Late(Duration::from_secs(5)),
                (false, 2) => Fate::Drop,
                _ => Fate::Pass,
            }
        },
    );
    let opened = assert_opened_after_one_restart(&s, &jc);
    assert!(opened < Duration::from_secs(10), "{opened:?}");
}

/// Crash soak seed 3570 (17% loss): after the joiner restarted, its new association's INIT
/// ACKs were lost six times and one INIT once; SCTP's INIT timer backs off from 3 s to 60 s,
/// so the eighth INIT went 270 s in, and the link hit its 300 s connect timeout while ICE
/// checks got through the whole time. The same, made exact: no DTLS application data from the
/// sharer reaches the joiner during the first handshake. Channels not open a third of the
/// connect timeout after DTLS connected start the handshake over.
#[test]
fn an_sctp_association_that_never_completes_starts_the_handshake_over() {
    let mut handshakes = 0;
    let (s, jc) = open_through(
        Duration::from_secs(300),
        Duration::from_secs(300),
        move |_, t, from_joiner| {
            if from_joiner && starts_a_handshake(&t.contents) {
                handshakes += 1;
            }
            if !from_joiner && handshakes <= 1 && has_record(&t.contents, 23) {
                return Fate::Drop;
            }
            Fate::Pass
        },
    );
    let opened = assert_opened_after_one_restart(&s, &jc);
    assert!(
        opened > Duration::from_secs(100) && opened < Duration::from_secs(110),
        "{opened:?}"
    );
}

/// Random-network soak seed 5318 (20% loss): the sharer finished its side of DTLS, but its
/// final flight (ChangeCipherSpec, Finished), sent again for each retransmission of the
/// joiner's last flight, was lost five times and one retransmission too; the joiner's DTLS ran
/// out of flight retries (6, about 127 s) with 164 s of the connect timeout left. The same,
/// made exact: the sharer's final flight never arrives during the first handshake. A
/// handshake out of retries starts over.
#[test]
fn a_dtls_handshake_out_of_retries_starts_over() {
    let mut handshakes = 0;
    let (s, jc) = open_through(
        Duration::from_secs(300),
        Duration::from_secs(300),
        move |_, t, from_joiner| {
            if from_joiner && starts_a_handshake(&t.contents) {
                handshakes += 1;
            }
            if !from_joiner && handshakes <= 1 && has_record(&t.contents, 20) {
                return Fate::Drop;
            }
            Fate::Pass
        },
    );
    let opened = assert_opened_after_one_restart(&s, &jc);
    assert!(opened > Duration::from_secs(100), "{opened:?}");
}

/// An ICE restart whose answer comes back at once (the hub still works while the peers'
/// path is down) does not set off the next one: restarts are spaced by `ice_restart_after`,
/// not fired back to back at one instant (the `node` fuzz target found a session leaving its
/// restart deadline in the past, a busy loop of timeouts that spent every restart at once).
#[test]
fn ice_restarts_during_a_partition_are_spaced_out() {
    let (mut s, sc, jc) = two_nodes(8, NetConfig::default());
    let cut = s.elapsed();
    s.partition(0, 1, cut, cut + Duration::from_secs(9));
    s.run_for(Duration::from_secs(9));
    let t = s.trace().to_string();
    let restarts: Vec<f64> = t
        .lines()
        .filter(|l| l.contains("joiner ev    IceRestarted"))
        .filter_map(|l| l.trim_start().split("ms").next()?.parse().ok())
        .collect();
    assert!(
        !restarts.is_empty(),
        "no ICE restart during the partition\n{t}"
    );
    for pair in restarts.windows(2) {
        assert!(
            pair[1] - pair[0] >= 4000.0,
            "restarts {} ms apart: {restarts:?}\n{t}",
            pair[1] - pair[0]
        );
    }
    exchange(&mut s, &sc, &jc, 10, 100, Duration::from_secs(30));
}
