//! Throughput, open time and memory of links, against a raw str0m baseline.
//!
//! `cargo bench -p peerpouch-smol --bench link` prints (medians of a few runs):
//! - `figure: raw_channel_mem_mb_per_s`: two raw `str0m::Rtc`s wired in memory, one data
//!   channel, 16–64 KiB messages, at most 128 KiB buffered: the baseline;
//! - `figure: session_mem_mb_per_s`: two `Session`s wired in memory, the same bytes;
//! - `figure: session_udp_mb_per_s`: two links over loopback UDP with this runtime;
//! - `figure: channel_open_ms`: creating two sessions to both seeing `ChannelOpened`, in memory;
//! - `figure: idle_session_kib`: live heap of one idle open session, counted by a counting
//!   global allocator (heap bytes live after opening 200 pairs and running their heartbeats,
//!   minus before, divided by 400);
//! - `ratio: session_mem_vs_raw`, `ratio: session_udp_vs_raw`.
//!
//! Details (per-run numbers) go to stderr.
#![allow(clippy::disallowed_methods)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_lite::{StreamExt, future};
use peerpouch::session::{Session, SessionConfig, SessionEvent, SessionRole};
use peerpouch_smol::{EndpointConfig, Link, LinkEndpoint};
use str0m::channel::ChannelId;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, Input, Output, Rtc, RtcConfig};

/// Counts live heap bytes (for `idle_session_kib`); otherwise the system allocator.
#[path = "../../../benches/common/counting_alloc.rs"]
mod counting_alloc;
use counting_alloc::live_heap_bytes;

/// Bytes moved per throughput run.
const TOTAL: usize = 64 << 20;
/// Bytes kept queued at most.
const BUFFERED: usize = 128 * 1024;
const MIN_MSG: usize = 16 * 1024;
const MAX_MSG: usize = 64 * 1024;
const RUNS: usize = 5;

/// Message sizes in 16..=64 KiB from a fixed seed: every measure moves the same messages.
struct Sizes(u64);

impl Sizes {
    fn next_size(&mut self) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        MIN_MSG + (self.0 as usize) % (MAX_MSG - MIN_MSG + 1)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn mb_per_s(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / 1e6 / d.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Baseline: two raw str0m Rtcs in memory.

type Datagram = (SocketAddr, SocketAddr, Vec<u8>);

/// Polls `rtc` until it only waits for time; transmits go to `out`, events to `events`.
fn drain_rtc(rtc: &mut Rtc, out: &mut VecDeque<Datagram>, events: &mut Vec<Event>) {
    loop {
        match rtc.poll_output().expect("poll_output") {
            Output::Timeout(_) => return,
            Output::Transmit(t) => out.push_back((t.source, t.destination, t.contents.to_vec())),
            Output::Event(e) => events.push(e),
        }
    }
}

fn deliver(rtc: &mut Rtc, now: Instant, d: &Datagram) {
    let r = Receive::new(Protocol::Udp, d.0, d.1, &d.2).expect("a datagram str0m made");
    rtc.handle_input(Input::Receive(now, r))
        .expect("handle_input");
}

fn raw_rtc(now: Instant, addr: SocketAddr) -> Rtc {
    let mut rtc = RtcConfig::new()
        .set_crypto_provider(Arc::new(str0m::crypto::from_feature_flags()))
        .set_sctp_max_message_size(256 * 1024)
        .set_sctp_max_buffered_amount(2 * BUFFERED)
        .build(now);
    rtc.add_local_candidate(Candidate::host(addr, "udp").unwrap());
    rtc
}

/// Moves `TOTAL` bytes from a to b over raw Rtcs; returns the transfer time (after the open).
fn raw_channel_mem() -> Duration {
    let a_addr: SocketAddr = "127.0.0.1:10001".parse().unwrap();
    let b_addr: SocketAddr = "127.0.0.1:10002".parse().unwrap();
    let now = Instant::now();
    let mut a = raw_rtc(now, a_addr);
    let mut b = raw_rtc(now, b_addr);
    let mut api = a.sdp_api();
    let cid: ChannelId = api.add_channel("bench".into());
    let (offer, pending) = api.apply().unwrap();
    let answer = b.sdp_api().accept_offer(offer).unwrap();
    a.sdp_api().accept_answer(pending, answer).unwrap();

    let (mut to_a, mut to_b) = (VecDeque::new(), VecDeque::new());
    let (mut ea, mut eb) = (Vec::new(), Vec::new());
    let mut opened = (false, false);
    let mut sizes = Sizes(0x1234_5678);
    let mut next = sizes.next_size();
    let payload = vec![0xA5u8; MAX_MSG];
    let (mut sent, mut received) = (0usize, 0usize);
    let mut started = None;
    loop {
        let now = Instant::now();
        a.handle_input(Input::Timeout(now)).unwrap();
        b.handle_input(Input::Timeout(now)).unwrap();
        if opened.0 && opened.1 {
            started.get_or_insert(now);
            // Drained after every write, as `Session::send` does: writing several messages
            // before polling measured 10-25% slower here, and the baseline should be str0m at
            // its best.
            while sent < TOTAL {
                let len = next.min(TOTAL - sent);
                let mut ch = a.channel(cid).expect("channel");
                if ch.buffered_amount() + len > BUFFERED
                    || !ch.write(true, &payload[..len]).unwrap()
                {
                    break;
                }
                sent += len;
                next = sizes.next_size();
                drain_rtc(&mut a, &mut to_b, &mut ea);
            }
        }
        drain_rtc(&mut a, &mut to_b, &mut ea);
        drain_rtc(&mut b, &mut to_a, &mut eb);
        while !to_a.is_empty() || !to_b.is_empty() {
            while let Some(d) = to_b.pop_front() {
                deliver(&mut b, now, &d);
                drain_rtc(&mut b, &mut to_a, &mut eb);
            }
            while let Some(d) = to_a.pop_front() {
                deliver(&mut a, now, &d);
                drain_rtc(&mut a, &mut to_b, &mut ea);
            }
        }
        for e in ea.drain(..) {
            if let Event::ChannelOpen(id, _) = e {
                opened.0 |= id == cid;
            }
        }
        for e in eb.drain(..) {
            match e {
                Event::ChannelOpen(..) => opened.1 = true,
                Event::ChannelData(d) => received += d.data.len(),
                _ => {}
            }
        }
        if received >= TOTAL {
            return started.expect("opened").elapsed();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sessions in memory (as tests/session_basic.rs wires them).

fn bench_session_config() -> SessionConfig {
    let mut c = SessionConfig::default();
    c.send_buffer = BUFFERED;
    c.max_send_message = MAX_MSG;
    c
}

/// Moves every pending datagram and signal between `a` and `b` until both are quiet; events go
/// to `on_a` / `on_b`.
fn pump(
    a: &mut Session,
    b: &mut Session,
    now: Instant,
    on_a: &mut impl FnMut(SessionEvent),
    on_b: &mut impl FnMut(SessionEvent),
) {
    loop {
        let mut moved = false;
        while let Some(s) = a.poll_signal() {
            moved = true;
            b.handle_signal(now, s).unwrap();
        }
        while let Some(s) = b.poll_signal() {
            moved = true;
            a.handle_signal(now, s).unwrap();
        }
        while let Some(t) = a.poll_transmit() {
            moved = true;
            b.handle_datagram(now, t.source, t.destination, &t.contents);
        }
        while let Some(t) = b.poll_transmit() {
            moved = true;
            a.handle_datagram(now, t.source, t.destination, &t.contents);
        }
        while let Some(e) = a.poll_event() {
            moved = true;
            on_a(e);
        }
        while let Some(e) = b.poll_event() {
            moved = true;
            on_b(e);
        }
        if !moved {
            return;
        }
    }
}

static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(20000);

fn session_pair(seed: u64) -> (Session, Session) {
    let now = Instant::now();
    let port = NEXT_PORT.fetch_add(2, Ordering::Relaxed);
    let mut a = Session::new(SessionRole::Offerer, bench_session_config(), seed, now);
    let mut b = Session::new(SessionRole::Answerer, bench_session_config(), seed + 1, now);
    a.add_local_candidate(now, SocketAddr::from(([127, 0, 0, 1], port)))
        .unwrap();
    b.add_local_candidate(now, SocketAddr::from(([127, 0, 0, 1], port + 1)))
        .unwrap();
    (a, b)
}

/// Pumps until both sides saw `ChannelOpened`.
fn open_pair(a: &mut Session, b: &mut Session) {
    let mut opened = (false, false);
    let started = Instant::now();
    while !(opened.0 && opened.1) {
        let now = Instant::now();
        a.handle_timeout(now);
        b.handle_timeout(now);
        pump(
            a,
            b,
            now,
            &mut |e| opened.0 |= e == SessionEvent::ChannelOpened,
            &mut |e| opened.1 |= e == SessionEvent::ChannelOpened,
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "channel did not open"
        );
    }
}

fn session_mem() -> Duration {
    let (mut a, mut b) = session_pair(7);
    open_pair(&mut a, &mut b);
    let mut sizes = Sizes(0x1234_5678);
    let payload = vec![0xA5u8; MAX_MSG];
    let mut next = sizes.next_size();
    let (mut sent, mut received) = (0usize, 0usize);
    let started = Instant::now();
    while received < TOTAL {
        let now = Instant::now();
        a.handle_timeout(now);
        b.handle_timeout(now);
        while sent < TOTAL {
            let len = next.min(TOTAL - sent);
            if !a.send(now, true, &payload[..len]).unwrap() {
                break;
            }
            sent += len;
            next = sizes.next_size();
        }
        pump(&mut a, &mut b, now, &mut |_| {}, &mut |e| {
            if let SessionEvent::Message { data, .. } = e {
                received += data.len();
            }
        });
    }
    started.elapsed()
}

fn channel_open() -> Duration {
    let started = Instant::now();
    let (mut a, mut b) = session_pair(11);
    open_pair(&mut a, &mut b);
    started.elapsed()
}

/// Live heap per idle open session, from 200 pairs.
fn idle_session_bytes() -> f64 {
    const PAIRS: usize = 200;
    let before = live_heap_bytes();
    let mut pairs = Vec::with_capacity(PAIRS);
    for i in 0..PAIRS {
        let (mut a, mut b) = session_pair(1000 + 2 * i as u64);
        open_pair(&mut a, &mut b);
        pairs.push((a, b));
    }
    // A few heartbeat rounds so buffers reach their idle shape.
    let mut now = Instant::now();
    for _ in 0..3 {
        now += Duration::from_millis(1100);
        for (a, b) in &mut pairs {
            a.handle_timeout(now);
            b.handle_timeout(now);
            pump(a, b, now, &mut |_| {}, &mut |_| {});
        }
    }
    let after = live_heap_bytes();
    let per = (after - before) as f64 / (2 * PAIRS) as f64;
    assert!(pairs.iter().all(|(a, b)| a.is_open() && b.is_open()));
    drop(pairs);
    per
}

// ---------------------------------------------------------------------------------------------
// Two links over loopback UDP with the runtime.

/// Forwards `from`'s signals to `to` (the hub's job) without keeping either link open.
fn wire(from: &Link, to: &Link) {
    let (mut signals, sink) = (from.signals(), to.signal_sink());
    smol::spawn(async move {
        while let Some(s) = signals.next().await {
            if sink.handle_signal(s).await.is_err() {
                break;
            }
        }
    })
    .detach();
}

/// `threads`: each endpoint's driver on a thread of its own (`bind_with_driver`) instead of
/// both on smol's global executor (`bind`, one thread unless `SMOL_THREADS` says otherwise).
fn session_udp(threads: bool) -> Duration {
    smol::block_on(async {
        let config = EndpointConfig::default().with_session(bench_session_config());
        let bind = |config: EndpointConfig| {
            if threads {
                let (endpoint, driver) = LinkEndpoint::bind_with_driver(config).unwrap();
                std::thread::spawn(move || smol::block_on(driver));
                endpoint
            } else {
                LinkEndpoint::bind(config).unwrap()
            }
        };
        let a = bind(config.clone());
        let b = bind(config);
        let x = a.create_link(SessionRole::Offerer).unwrap();
        let y = b.create_link(SessionRole::Answerer).unwrap();
        wire(&x, &y);
        wire(&y, &x);
        x.opened().await.unwrap();
        y.opened().await.unwrap();
        let payload = vec![0xA5u8; MAX_MSG];
        let started = Instant::now();
        let send = async {
            let mut sizes = Sizes(0x1234_5678);
            let mut sent = 0;
            while sent < TOTAL {
                let len = sizes.next_size().min(TOTAL - sent);
                x.send(payload[..len].to_vec()).await.unwrap();
                sent += len;
            }
        };
        let recv = async {
            let mut received = 0;
            while received < TOTAL {
                received += y.recv().await.unwrap().data.len();
            }
        };
        future::zip(send, recv).await;
        let took = started.elapsed();
        let (sa, sb) = (a.stats(), b.stats());
        assert_eq!(sa.ambiguous + sa.unmatched + sb.ambiguous + sb.unmatched, 0);
        x.close().await;
        a.close().await;
        b.close().await;
        took
    })
}

fn main() {
    let mut raw = Vec::new();
    let mut mem = Vec::new();
    let mut udp = Vec::new();
    for run in 0..RUNS {
        let r = mb_per_s(TOTAL, raw_channel_mem());
        let m = mb_per_s(TOTAL, session_mem());
        let u = mb_per_s(TOTAL, session_udp(false));
        eprintln!("run {run}: raw {r:.1} MB/s, session mem {m:.1} MB/s, session udp {u:.1} MB/s");
        raw.push(r);
        mem.push(m);
        udp.push(u);
    }
    let threaded: Vec<f64> = (0..RUNS)
        .map(|_| mb_per_s(TOTAL, session_udp(true)))
        .collect();
    eprintln!("session udp, one driver thread per endpoint: {threaded:.1?} MB/s");
    let opens: Vec<f64> = (0..15)
        .map(|_| channel_open().as_secs_f64() * 1000.0)
        .collect();
    let idle: Vec<f64> = (0..3).map(|_| idle_session_bytes() / 1024.0).collect();
    eprintln!("channel open ms: {opens:.2?}\nidle session KiB: {idle:.1?}");
    let (raw, mem, udp) = (median(raw), median(mem), median(udp));
    println!("figure: raw_channel_mem_mb_per_s = {raw:.1} MB/s");
    println!("figure: session_mem_mb_per_s = {mem:.1} MB/s");
    println!("figure: session_udp_mb_per_s = {udp:.1} MB/s");
    println!("figure: channel_open_ms = {:.2} ms", median(opens));
    println!("figure: idle_session_kib = {:.1} KiB", median(idle));
    println!("ratio: session_mem_vs_raw = {:.2}", mem / raw);
    println!("ratio: session_udp_vs_raw = {:.2}", udp / raw);
}
