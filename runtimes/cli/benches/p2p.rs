//! Peer-to-peer figures over loopback UDP: `cargo bench --bench p2p`.
//!
//! Two [`Node`]s in one process, each on its own `127.0.0.1` UDP socket, meet on the in-memory
//! hub; a minimal single-threaded driver moves datagrams, hub requests and store requests. It
//! prints, from one run:
//!
//! - `p2p_replication_docs_per_s`: 10k documents of ~1 KiB (`common/docs.rs`: words, not
//!   padding, so compression gains what it would on real data) pulled from the sharer over the
//!   link;
//! - `rpc_get_rtt_p50_ms` / `rpc_get_rtt_p99_ms`: 2000 sequential `get` calls;
//! - `rpc_vs_raw_throughput_ratio`: a 64 MiB attachment fetched over the RPC, against the same
//!   64 MiB sent as raw messages over a bare session (str0m's channel with only peerpouch's
//!   safe-write rules) on the same sockets and driver, in the same run.
//!
//! Figures are wall-clock and the machine is shared: the ratio is the stable number.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use peerpouch::node::*;
use peerpouch::session::{Session, SessionConfig, SessionEvent, SessionRole, Transmit};
use peerpouch::*;
use peerpouch_cli::local::World;

#[path = "common/docs.rs"]
mod docs;
use docs::doc;
use serde_json::json;

fn socket() -> (UdpSocket, SocketAddr) {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind a loopback UDP socket");
    s.set_nonblocking(true).expect("non-blocking socket");
    let a = s.local_addr().expect("local address");
    (s, a)
}

fn linked() -> (World, LinkId) {
    let mut w = World::new(2).expect("loopback sockets");
    let share = w.share(0, "db").expect("share");
    let link = w.open(1, &share).expect("open the share");
    (w, link)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn replication_docs_per_s() -> f64 {
    let (mut w, link) = linked();
    for chunk in (0..10_000).collect::<Vec<_>>().chunks(1000) {
        w.peers[0]
            .write("db", chunk.iter().map(|&i| doc(i)).collect())
            .unwrap();
    }
    let t = Instant::now();
    let p = w
        .replicate(
            1,
            DbRef::Remote(link),
            DbRef::Local("copy".into()),
            Duration::from_secs(120),
            |_| {},
        )
        .expect("replication");
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(p.docs_written, 10_000);
    let copy = w.peers[1].store("copy");
    assert_eq!(copy.info().unwrap().doc_count, 10_000);
    assert_eq!(copy.get("doc004242").unwrap()["i"], 4242);
    10_000.0 / secs
}

fn get_rtts() -> (f64, f64) {
    let (mut w, link) = linked();
    w.peers[0].write("db", vec![doc(1)]).unwrap();
    let mut rtts = Vec::with_capacity(2000);
    for _ in 0..2000 {
        let t = Instant::now();
        let call = w.peers[1]
            .node
            .call(
                Instant::now(),
                &link,
                Request::Get(GetRequest::new("doc000001")),
            )
            .unwrap();
        w.run_until("a get", Duration::from_secs(10), |w| {
            w.peers[1].events.iter().any(
                |e| matches!(e, NodeEvent::CallResult { call: c, result: Ok(_), .. } if *c == call),
            )
        })
        .unwrap();
        rtts.push(t.elapsed().as_secs_f64() * 1e3);
        w.peers[1].events.clear();
    }
    rtts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (rtts[rtts.len() / 2], rtts[rtts.len() * 99 / 100])
}

const BIG: usize = 64 << 20;

fn rpc_attachment_mb_per_s() -> f64 {
    let (mut w, link) = linked();
    let data: Vec<u8> = (0..BIG).map(|i| (i * 7 % 251) as u8).collect();
    let b64 = serde_json::to_value(AttachmentData {
        content_type: String::new(),
        digest: String::new(),
        data: data.clone().into(),
    })
    .unwrap()["data"]
        .clone();
    w.peers[0]
        .write(
            "db",
            vec![json!({"_id": "big", "_attachments": {"blob": {"content_type": "application/octet-stream", "data": b64}}})],
        )
        .unwrap();
    let t = Instant::now();
    let req = Request::GetAttachment(AttachmentRequest {
        id: "big".into(),
        name: "blob".into(),
        rev: None,
    });
    let call = w.peers[1].node.call(Instant::now(), &link, req).unwrap();
    w.run_until("the attachment", Duration::from_secs(120), |w| {
        w.peers[1]
            .events
            .iter()
            .any(|e| matches!(e, NodeEvent::CallResult { call: c, .. } if *c == call))
    })
    .unwrap();
    let secs = t.elapsed().as_secs_f64();
    let mut got = None;
    for e in w.peers[1].events.drain(..) {
        if let NodeEvent::CallResult {
            call: c, result, ..
        } = e
        {
            if c == call {
                got = Some(result.unwrap().into_attachment().unwrap().data);
            }
        }
    }
    assert!(got.as_deref() == Some(&data[..]), "attachment bytes differ");
    BIG as f64 / secs / 1e6
}

/// The same 64 MiB as raw data channel messages between two bare sessions, same driver style.
fn raw_session_mb_per_s() -> f64 {
    let (sa, aa) = socket();
    let (sb, ab) = socket();
    let now = Instant::now();
    let mut a = Session::new(SessionRole::Offerer, SessionConfig::default(), 1, now);
    let mut b = Session::new(SessionRole::Answerer, SessionConfig::default(), 2, now);
    a.add_local_candidate(now, aa).unwrap();
    b.add_local_candidate(now, ab).unwrap();
    let mut buf = vec![0u8; 65536];
    let mut received = 0usize;
    let mut sent = 0usize;
    let mut open = (false, false);
    let chunk: Vec<u8> = (0..64 * 1024).map(|i| (i % 253) as u8).collect();
    let mut t0 = None;
    let end = Instant::now() + Duration::from_secs(120);
    let flush = |s: &mut Session, sock: &UdpSocket| {
        while let Some(Transmit {
            destination,
            contents,
            ..
        }) = s.poll_transmit()
        {
            let _ = sock.send_to(&contents, destination);
        }
    };
    while received < BIG {
        assert!(Instant::now() < end, "raw transfer did not finish");
        while let Some(sig) = a.poll_signal() {
            b.handle_signal(Instant::now(), sig).unwrap();
        }
        while let Some(sig) = b.poll_signal() {
            a.handle_signal(Instant::now(), sig).unwrap();
        }
        if open.0 && open.1 && sent < BIG {
            t0.get_or_insert_with(Instant::now);
            let n = (BIG - sent).min(a.max_message_size()).min(chunk.len());
            while sent < BIG && a.send(Instant::now(), true, &chunk[..n]).unwrap() {
                sent += n;
            }
        }
        flush(&mut a, &sa);
        flush(&mut b, &sb);
        let mut moved = false;
        while let Ok((n, from)) = sa.recv_from(&mut buf) {
            moved = true;
            a.handle_datagram(Instant::now(), from, aa, &buf[..n]);
        }
        while let Ok((n, from)) = sb.recv_from(&mut buf) {
            moved = true;
            b.handle_datagram(Instant::now(), from, ab, &buf[..n]);
        }
        let now = Instant::now();
        for s in [&mut a, &mut b] {
            if s.poll_timeout().is_some_and(|t| t <= now) {
                s.handle_timeout(now);
            }
        }
        while let Some(e) = a.poll_event() {
            open.0 |= e == SessionEvent::ChannelOpened;
        }
        while let Some(e) = b.poll_event() {
            match e {
                SessionEvent::ChannelOpened => open.1 = true,
                SessionEvent::Message { data, .. } => received += data.len(),
                _ => {}
            }
        }
        if !moved {
            std::thread::yield_now();
        }
    }
    BIG as f64 / t0.expect("channel opened").elapsed().as_secs_f64() / 1e6
}

fn main() {
    // One part alone, once, for profiling (`P2P_BENCH_ONLY=replication|raw|rpc valgrind ...`).
    match std::env::var("P2P_BENCH_ONLY").as_deref() {
        Ok("replication") => return println!("{:.0} docs/s", replication_docs_per_s()),
        Ok("raw") => return println!("{:.1} MB/s", raw_session_mb_per_s()),
        Ok("rpc") => return println!("{:.1} MB/s", rpc_attachment_mb_per_s()),
        _ => {}
    }
    let runs = 3;
    let mut docs = Vec::new();
    let mut ratios = Vec::new();
    let mut rpc = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..runs {
        docs.push(replication_docs_per_s());
        let r = raw_session_mb_per_s();
        let p = rpc_attachment_mb_per_s();
        println!(
            "run: replication {:.0} docs/s, raw {r:.1} MB/s, rpc {p:.1} MB/s",
            docs.last().unwrap()
        );
        raw.push(r);
        rpc.push(p);
        ratios.push(p / r);
    }
    let (p50, p99) = get_rtts();
    println!("raw session (bare str0m channel, peerpouch safe writes) over loopback: {:.1} MB/s (median)", median(raw));
    println!(
        "rpc attachment over loopback: {:.1} MB/s (median)",
        median(rpc)
    );
    println!(
        "figure: p2p_replication_docs_per_s = {:.0} docs/s",
        median(docs)
    );
    println!(
        "figure: rpc_vs_raw_throughput_ratio = {:.3} ratio",
        median(ratios)
    );
    println!("figure: rpc_get_rtt_p50_ms = {p50:.3} ms");
    println!("figure: rpc_get_rtt_p99_ms = {p99:.3} ms");
}
