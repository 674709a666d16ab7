//! Routing received datagrams to their link: `cargo bench --bench dispatch`.
//!
//! A plain `main` (no harness). `links` real [`Session`]s each know one peer address (its
//! candidate, as signalled); DTLS-looking datagrams arrive from every peer in turn (each
//! datagram for another link than the one before, the worst case for any cache), and each is
//! routed by a [`Router`] as `Node` and `LinkEndpoint` do, the mapped session confirming with
//! [`Session::accepts`]. The figure is the time per datagram at 1 and at 100 links (their ratio
//! should be about 1); the baseline in the same run asks every session, as before the router
//! (O(links)). Each figure is the median of a few runs, and every routed datagram is checked to
//! reach its own link, so a broken router cannot post a fast number.
//!
//! The other half of a crowd's cost is the hub: `hub_docs_read_per_foreign_connection` is the
//! feed rows a bystander node (a share of its own, watching the directory) reads from an
//! in-memory hub while two other nodes connect (offer, candidates, answer, all consumed), on a
//! hub that filters feeds (goal 0) and, as the baseline, on one that cannot (pouchdb-server).
//!
//! The headline lines start with `figure:`; the rest is context.

// Benchmarks measure wall time by design; the core's ban on `Instant::now` is for `src/`.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use peerpouch::hub::{Hub, HubConfig, HubEvent, IceCandidate, MemoryHub, ShareOptions, SignalData};
use peerpouch::route::Router;
use peerpouch::session::{Session, SessionConfig, SessionRole};

/// Datagrams routed per run; runs per figure (the median is reported).
const DATAGRAMS: usize = 200_000;
const RUNS: usize = 5;

fn peer(i: usize) -> SocketAddr {
    format!("10.1.{}.{}:{}", i / 250, 1 + i % 250, 5000 + i)
        .parse()
        .expect("address")
}

/// `n` answering sessions, session `i` knowing peer `i`'s host candidate.
fn sessions(n: usize, now: Instant) -> BTreeMap<u64, Session> {
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .expect("a DTLS certificate");
    let mut config = SessionConfig::default();
    config.dtls_cert = Some(cert);
    (0..n)
        .map(|i| {
            let mut s = Session::new(SessionRole::Answerer, config.clone(), i as u64, now);
            let a = peer(i);
            let candidate = IceCandidate {
                candidate: format!(
                    "candidate:1 1 udp 2130706431 {} {} typ host",
                    a.ip(),
                    a.port()
                ),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
                username_fragment: None,
            };
            s.handle_signal(now, SignalData::Candidate(Some(candidate)))
                .expect("candidate accepted");
            (i as u64, s)
        })
        .collect()
}

/// Nanoseconds per datagram, median of [`RUNS`]; `route` returns the link it chose.
fn measure(links: usize, mut route: impl FnMut(SocketAddr, &[u8]) -> Option<u64>) -> f64 {
    // A DTLS 1.2 application-data record header and some payload.
    let mut record = vec![0x17, 0xfe, 0xfd, 0, 1];
    record.resize(1200, 0xab);
    let from: Vec<SocketAddr> = (0..links).map(peer).collect();
    let mut per = Vec::new();
    for _ in 0..RUNS {
        let start = Instant::now();
        for d in 0..DATAGRAMS {
            let i = d % links;
            let got = route(black_box(from[i]), black_box(&record));
            assert_eq!(got, Some(i as u64), "datagram from peer {i} misrouted");
        }
        per.push(start.elapsed().as_nanos() as f64 / DATAGRAMS as f64);
    }
    per.sort_by(f64::total_cmp);
    per[RUNS / 2]
}

fn candidate(port: u16) -> SignalData {
    SignalData::Candidate(Some(IceCandidate {
        candidate: format!("candidate:1 1 udp 2113937151 127.0.0.1 {port} typ host"),
        sdp_mid: Some("0".into()),
        sdp_m_line_index: Some(0),
        username_fragment: None,
    }))
}

/// Feed rows a bystander reads from `hub` for one connection between two other nodes.
fn bystander_reads(mut hub: MemoryHub, now: Instant) -> u64 {
    const WALL_MS: u64 = 1_800_000_000_000;
    // 0 shares, 1 opens it, 2 stands by with a share of its own and a watch on the directory.
    let mut nodes: Vec<Hub> = (0..3)
        .map(|i| Hub::new(HubConfig::default(), 100 + i, now, WALL_MS))
        .collect();
    let settle = |hub: &mut MemoryHub, nodes: &mut [Hub]| {
        let mut refs: Vec<&mut Hub> = nodes.iter_mut().collect();
        hub.settle(now, &mut refs)
    };
    settle(&mut hub, &mut nodes);
    let share = nodes[0].share(now, ShareOptions::default());
    nodes[2].share(now, ShareOptions::default());
    nodes[2].watch(now, true);
    settle(&mut hub, &mut nodes);
    let before = hub.rows_read(&nodes[2]);
    let peer = nodes[1]
        .open(now, &share, serde_json::json!({}))
        .expect("open the share");
    for data in [SignalData::Offer("OFFER".into()), candidate(5001)] {
        nodes[1]
            .send_signal(now, &share, &peer, data)
            .expect("a joiner's signal");
    }
    settle(&mut hub, &mut nodes);
    nodes[0].accept(now, &share, &peer).expect("accept");
    for data in [SignalData::Answer("ANSWER".into()), candidate(5002)] {
        nodes[0]
            .send_signal(now, &share, &peer, data)
            .expect("a sharer's signal");
    }
    let events = settle(&mut hub, &mut nodes);
    let answered = events[1].iter().any(|e| {
        matches!(
            e,
            HubEvent::Signal {
                data: SignalData::Answer(_),
                ..
            }
        )
    });
    assert!(answered, "the joiner got its answer: {events:?}");
    settle(&mut hub, &mut nodes);
    hub.rows_read(&nodes[2]) - before
}

fn main() {
    let now = Instant::now();
    let local: SocketAddr = "10.1.255.1:4000".parse().expect("address");
    let mut figures = Vec::new();
    for links in [1usize, 100] {
        let sessions = sessions(links, now);
        let mut router: Router<u64> = Router::new();
        let routed = measure(links, |from, bytes| {
            router.dispatch(
                from,
                local,
                bytes,
                &sessions,
                |_| 0,
                |s| s.accepts(from, local, bytes),
            )
        });
        let stats = router.stats();
        // Only the first datagram from each peer asked every session.
        assert_eq!(stats.fallbacks, links as u64, "{stats:?}");
        let scan = measure(links, |from, bytes| {
            sessions
                .iter()
                .filter(|(_, s)| s.accepts(from, local, bytes))
                .map(|(k, _)| *k)
                .last()
        });
        println!("  {links} links: routed {routed:.0} ns, every session asked {scan:.0} ns");
        figures.push((links, routed, scan));
    }
    for (links, routed, _) in &figures {
        println!("figure: datagram_dispatch_ns_{links} = {routed:.0} ns");
    }
    let (_, one, _) = figures[0];
    let (_, hundred, scan) = figures[1];
    println!(
        "ratio: 100 links / 1 link = {:.2} (asking every session: {:.1})",
        hundred / one,
        scan / one
    );
    let filtered = bystander_reads(MemoryHub::new(), now);
    let unfiltered = bystander_reads(MemoryHub::new().without_filters(), now);
    println!(
        "  a bystander reads {filtered} feed rows for a connection of others on a filtering hub, \
         {unfiltered} on one that cannot filter"
    );
    println!("figure: hub_docs_read_per_foreign_connection = {filtered} docs");
}
