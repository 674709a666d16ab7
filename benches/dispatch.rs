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
//! The headline lines start with `figure:`; the rest is context.

// Benchmarks measure wall time by design; the core's ban on `Instant::now` is for `src/`.
#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::Instant;

use peerpouch::hub::{IceCandidate, SignalData};
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
}
