//! Several links on one socket: datagrams reach the right session, in both roles, and a
//! wildcard bind serves loopback peers.

mod common;

use common::{pair, run, wire_filtered};
use futures_lite::future;
use peerpouch_smol::{CloseReason, EndpointConfig, Link, LinkEndpoint, SessionRole, SignalData};

/// Each side sends `n` tagged messages and checks it receives exactly the peer's.
async fn exchange(mine: &Link, tag: u8, peer_tag: u8, n: usize) {
    let send = async {
        for i in 0..n {
            let mut m = vec![tag; 8 * 1024 + i];
            m[0] = i as u8;
            mine.send(m).await.unwrap();
        }
    };
    let recv = async {
        for i in 0..n {
            let m = mine.recv().await.unwrap();
            assert_eq!(m.data.len(), 8 * 1024 + i, "link {tag}: message {i}");
            assert_eq!(m.data[0], i as u8);
            assert!(
                m.data[1..].iter().all(|b| *b == peer_tag),
                "link {tag} got bytes of another link"
            );
        }
    };
    future::zip(send, recv).await;
}

#[test]
fn one_socket_serves_several_links_in_both_roles() {
    run(120, async {
        let hub_side = LinkEndpoint::bind(EndpointConfig::default().with_seed(100)).unwrap();
        let peers: Vec<LinkEndpoint> = (0..4)
            .map(|i| LinkEndpoint::bind(EndpointConfig::default().with_seed(200 + i)).unwrap())
            .collect();
        // Three peers offer to the shared socket; the shared socket offers to the fourth.
        let mut local = Vec::new();
        let mut remote = Vec::new();
        for p in &peers[..3] {
            let (offerer, answerer) = pair(p, &hub_side);
            local.push(answerer);
            remote.push(offerer);
        }
        let (offerer, answerer) = pair(&hub_side, &peers[3]);
        local.push(offerer);
        remote.push(answerer);
        for l in local.iter().chain(&remote) {
            l.opened().await.unwrap();
        }
        let connected = hub_side.stats();
        assert_eq!(
            local
                .iter()
                .filter(|l| l.role() == SessionRole::Answerer)
                .count(),
            3
        );

        // One pair after the other...
        for (i, (l, r)) in local.iter().zip(&remote).enumerate() {
            let (tl, tr) = (1 + 2 * i as u8, 2 + 2 * i as u8);
            future::zip(exchange(l, tl, tr, 40), exchange(r, tr, tl, 40)).await;
        }
        // ...then all four at once.
        let mut concurrent = Vec::new();
        for (i, (l, r)) in local.iter().zip(&remote).enumerate() {
            let (tl, tr) = (1 + 2 * i as u8, 2 + 2 * i as u8);
            concurrent.push(smol::spawn({
                let (l, r) = (l.clone(), r.clone());
                async move { future::zip(exchange(&l, tl, tr, 40), exchange(&r, tr, tl, 40)).await }
            }));
        }
        for t in concurrent {
            t.await;
        }
        let stats = hub_side.stats();
        assert_eq!(stats.ambiguous, 0, "{stats:?}");
        assert!(stats.datagrams_in > 1000, "{stats:?}");
        // Once the pairs are known, each datagram is offered to one link, not to all four.
        let (datagrams, offered) = (
            stats.datagrams_in - connected.datagrams_in,
            stats.offered - connected.offered,
        );
        // (Off by one at most: the counters are two atomics the endpoint's thread bumps one
        // after the other, and `connected` may have been read between the two for a datagram
        // then arriving. Offering each datagram to all four links would be ~4x.)
        assert!(
            offered.abs_diff(datagrams) <= 1,
            "{offered} offers for {datagrams} datagrams: {connected:?} then {stats:?}"
        );
        assert_eq!(stats.fallbacks, connected.fallbacks, "{stats:?}");
        assert!(stats.offered < 2 * stats.datagrams_in, "{stats:?}");

        // Closing the shared endpoint says goodbye on every link.
        hub_side.close().await;
        for l in &local {
            assert_eq!(l.close_reason(), Some(CloseReason::Local));
        }
        for r in &remote {
            assert_eq!(r.closed().await, CloseReason::Remote);
        }
        for p in &peers {
            p.close().await;
        }
    });
}

fn loopback_only(s: &SignalData) -> bool {
    match s {
        SignalData::Candidate(Some(c)) => {
            // "candidate:<foundation> <component> udp <priority> <address> <port> typ ..."
            c.candidate
                .split_whitespace()
                .nth(4)
                .is_some_and(|a| a.starts_with("127."))
        }
        _ => true,
    }
}

#[test]
fn wildcard_bind_gathers_every_interface_and_talks_over_loopback() {
    run(60, async {
        let wild =
            LinkEndpoint::bind(EndpointConfig::default().with_bind("0.0.0.0:0".parse().unwrap()))
                .unwrap();
        let port = wild.local_addr().port();
        let lo = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        assert!(
            wild.candidate_addrs().contains(&lo),
            "{:?}",
            wild.candidate_addrs()
        );
        assert!(
            wild.candidate_addrs()
                .iter()
                .all(|a| a.port() == port && a.is_ipv4())
        );

        let peer = LinkEndpoint::bind(EndpointConfig::default()).unwrap();
        let offerer = wild.create_link(SessionRole::Offerer).unwrap();
        let answerer = peer.create_link(SessionRole::Answerer).unwrap();
        // Only loopback candidates travel: no traffic leaves the machine's loopback.
        wire_filtered(&offerer, &answerer, loopback_only);
        wire_filtered(&answerer, &offerer, loopback_only);
        offerer.opened().await.unwrap();
        offerer
            .send(b"over the wildcard socket".to_vec())
            .await
            .unwrap();
        assert_eq!(
            answerer.recv().await.unwrap().data,
            b"over the wildcard socket"
        );
        answerer.send(b"and back".to_vec()).await.unwrap();
        assert_eq!(offerer.recv().await.unwrap().data, b"and back");
        assert_eq!(answerer.close().await, CloseReason::Local);
        assert_eq!(offerer.closed().await, CloseReason::Remote);
    });
}

#[test]
fn ipv6_loopback_links_work() {
    let v6: std::net::SocketAddr = "[::1]:0".parse().unwrap();
    if std::net::UdpSocket::bind(v6).is_err() {
        // An environment property, not ours to test: say so loudly.
        eprintln!("SKIPPED: ::1 cannot be bound here (IPv6 disabled on loopback)");
        return;
    }
    run(60, async {
        let a = LinkEndpoint::bind(EndpointConfig::default().with_bind(v6)).unwrap();
        let b = LinkEndpoint::bind(EndpointConfig::default().with_bind(v6)).unwrap();
        assert!(a.local_addr().is_ipv6());
        let (x, y) = pair(&a, &b);
        x.send(b"over IPv6".to_vec()).await.unwrap();
        assert_eq!(y.recv().await.unwrap().data, b"over IPv6");
        x.close().await;
        assert_eq!(y.closed().await, CloseReason::Remote);
    });
}
