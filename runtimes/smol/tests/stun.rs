//! STUN: a real server (coturn, started by `runtimes/smol/stun-server.sh`), and fake servers
//! that answer garbage, never answer, or answer with a made-up address.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use common::{pair, run};
use peerpouch_smol::stun::{self, encode_binding_success};
use peerpouch_smol::{
    CloseReason, EndpointConfig, LinkEndpoint, SessionRole, SignalData, StunStatus,
};

/// A STUN server played by a plain UDP socket on a thread: `answer` builds the replies to each
/// request (from the request's bytes). Counts requests; stops when dropped.
struct FakeServer {
    addr: SocketAddr,
    requests: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeServer {
    fn start(answer: fn(&[u8]) -> Vec<Vec<u8>>) -> FakeServer {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        // A bounded read so the thread notices `stop`; not a synchronisation.
        socket
            .set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = socket.local_addr().unwrap();
        let requests = Arc::new(AtomicU32::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (requests, stop) = (requests.clone(), stop.clone());
            move || {
                let mut buf = [0u8; 2048];
                while !stop.load(Ordering::Relaxed) {
                    let Ok((n, from)) = socket.recv_from(&mut buf) else {
                        continue;
                    };
                    let req = &buf[..n];
                    // Our client's request must be a bare, well-formed Binding Request.
                    assert_eq!(n, 20, "request length");
                    assert_eq!(&req[..4], &[0, 1, 0, 0], "Binding Request, no attributes");
                    assert!(stun::transaction_id(req).is_some(), "magic cookie");
                    requests.fetch_add(1, Ordering::Relaxed);
                    for reply in answer(req) {
                        socket.send_to(&reply, from).unwrap();
                    }
                }
            }
        });
        FakeServer {
            addr,
            requests,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let r = t.join();
            if !std::thread::panicking() {
                r.expect("fake STUN server thread panicked");
            }
        }
    }
}

fn tid(req: &[u8]) -> [u8; 12] {
    stun::transaction_id(req).unwrap()
}

/// Every kind of broken answer we can think of, several with the right transaction id.
fn garbage(req: &[u8]) -> Vec<Vec<u8>> {
    let t = tid(req);
    let good = encode_binding_success(t, "127.0.0.9:9999".parse().unwrap());
    let mut out = vec![
        Vec::new(),
        b"hello, this is not STUN".to_vec(),
        good[..19].to_vec(), // shorter than a header
        good[..24].to_vec(), // length field says more than there is
        req.to_vec(),        // a request echoed back
        encode_binding_success([0xEE; 12], "127.0.0.9:1".parse().unwrap()), // someone else's
        vec![0xFF; 1500],
    ];
    let mut wrong_cookie = good.clone();
    wrong_cookie[5] ^= 0xFF;
    out.push(wrong_cookie);
    let mut bad_family = good.clone();
    bad_family[25] = 9;
    out.push(bad_family);
    let mut overrun = good.clone();
    overrun[23] = 200; // attribute length past the end
    out.push(overrun);
    let mut no_address = good[..20].to_vec();
    no_address[2] = 0;
    no_address[3] = 0;
    out.push(no_address); // a success with no attributes
    out
}

fn never(_: &[u8]) -> Vec<Vec<u8>> {
    Vec::new()
}

fn fake_mapping(req: &[u8]) -> Vec<Vec<u8>> {
    // A loopback address, so a peer that tried it would still stay on this machine.
    vec![encode_binding_success(
        tid(req),
        "127.0.0.5:40000".parse().unwrap(),
    )]
}

fn stun_config(server: SocketAddr, timeout: Duration) -> EndpointConfig {
    let mut c = EndpointConfig::default()
        .with_stun_server(server)
        .with_stun_timeout(timeout);
    c.stun_initial_rto = Duration::from_millis(100);
    c
}

#[test]
fn real_stun_server_reports_our_address() {
    let server = std::env::var("PEERPOUCH_TEST_STUN").unwrap_or_else(|_| {
        panic!(
            "PEERPOUCH_TEST_STUN is not set. This test needs a STUN server on 127.0.0.1: run \
             `source runtimes/smol/stun-server.sh && stun_start` (it installs coturn if needed \
             and exports PEERPOUCH_TEST_STUN=127.0.0.1:PORT), then the tests, then `stun_stop`"
        )
    });
    let server: SocketAddr = server
        .parse()
        .unwrap_or_else(|e| panic!("PEERPOUCH_TEST_STUN={server:?} is not an IP:port: {e}"));
    run(60, async {
        let a = LinkEndpoint::bind(stun_config(server, Duration::from_secs(10))).unwrap();
        let statuses = a.stun_settled().await;
        assert_eq!(statuses.len(), 1);
        assert_eq!(
            statuses[0].status,
            StunStatus::Mapped(a.local_addr()),
            "the server at {server} should see our loopback socket as it is"
        );
        assert_eq!(a.reflexive_addr(), Some(a.local_addr()));
        assert!(a.stats().stun_consumed >= 1);
        // Links on a STUN-configured endpoint work as usual.
        let b = LinkEndpoint::bind(EndpointConfig::default()).unwrap();
        let (x, y) = pair(&a, &b);
        x.send(b"after STUN".to_vec()).await.unwrap();
        assert_eq!(y.recv().await.unwrap().data, b"after STUN");
        assert_eq!(x.close().await, CloseReason::Local);
        assert_eq!(y.closed().await, CloseReason::Remote);
    });
}

#[test]
fn garbage_from_a_stun_server_is_consumed_and_ignored() {
    let server = FakeServer::start(garbage);
    run(60, async {
        let a = LinkEndpoint::bind(stun_config(server.addr, Duration::from_millis(1500))).unwrap();
        let b = LinkEndpoint::bind(EndpointConfig::default()).unwrap();
        let (x, y) = pair(&a, &b);
        x.send(b"while STUN is confused".to_vec()).await.unwrap();
        assert_eq!(y.recv().await.unwrap().data, b"while STUN is confused");

        let statuses = a.stun_settled().await;
        let StunStatus::TimedOut { bad_responses } = statuses[0].status else {
            panic!("expected a timeout, got {:?}", statuses[0].status);
        };
        let requests = server.requests.load(Ordering::Relaxed);
        assert!(requests >= 2, "retransmissions: {requests}");
        assert!(
            bad_responses >= requests,
            "{bad_responses} bad of {requests} requests"
        );
        assert!(a.stats().stun_consumed >= u64::from(bad_responses));
        assert_eq!(a.reflexive_addr(), None);

        // The link never saw any of it and still works.
        y.send(b"still fine".to_vec()).await.unwrap();
        assert_eq!(x.recv().await.unwrap().data, b"still fine");
        x.close().await;
        assert_eq!(y.closed().await, CloseReason::Remote);
    });
}

#[test]
fn a_silent_stun_server_does_not_hold_links_up() {
    let server = FakeServer::start(never);
    run(60, async {
        let a = LinkEndpoint::bind(stun_config(server.addr, Duration::from_secs(5))).unwrap();
        let b = LinkEndpoint::bind(EndpointConfig::default()).unwrap();
        let (x, y) = pair(&a, &b);
        x.opened().await.unwrap();
        assert_eq!(
            a.stun_status()[0].status,
            StunStatus::Pending,
            "the link should open long before the STUN timeout"
        );
        x.send(b"no STUN needed".to_vec()).await.unwrap();
        assert_eq!(y.recv().await.unwrap().data, b"no STUN needed");
        let statuses = a.stun_settled().await;
        assert_eq!(
            statuses[0].status,
            StunStatus::TimedOut { bad_responses: 0 }
        );
        assert!(server.requests.load(Ordering::Relaxed) >= 3);
        assert!(x.is_open(), "a STUN timeout must not touch the links");
        x.close().await;
        assert_eq!(y.closed().await, CloseReason::Remote);
    });
}

fn is_srflx_to(s: &SignalData, addr: &str) -> bool {
    let (ip, port) = addr.split_once(':').unwrap();
    matches!(s, SignalData::Candidate(Some(c))
        if c.candidate.contains("typ srflx")
            && c.candidate.split_whitespace().nth(4) == Some(ip)
            && c.candidate.split_whitespace().nth(5) == Some(port))
}

#[test]
fn a_mapped_address_trickles_as_a_server_reflexive_candidate() {
    let server = FakeServer::start(fake_mapping);
    run(30, async {
        let a = LinkEndpoint::bind(stun_config(server.addr, Duration::from_secs(10))).unwrap();
        // Created before STUN answers: the candidate trickles to it later.
        let early = a.create_link(SessionRole::Offerer).unwrap();
        let statuses = a.stun_settled().await;
        assert_eq!(
            statuses[0].status,
            StunStatus::Mapped("127.0.0.5:40000".parse().unwrap())
        );
        let mut found = false;
        while let Some(s) = early.next_signal().await {
            if is_srflx_to(&s, "127.0.0.5:40000") {
                found = true;
                break;
            }
        }
        assert!(
            found,
            "no srflx candidate on the link created before STUN answered"
        );
        // Created after: it gets the candidate at once.
        let late = a.create_link(SessionRole::Offerer).unwrap();
        let mut found = false;
        while let Some(s) = late.next_signal().await {
            if is_srflx_to(&s, "127.0.0.5:40000") {
                found = true;
                break;
            }
        }
        assert!(
            found,
            "no srflx candidate on the link created after STUN answered"
        );
        assert!(!early.is_open() && !late.is_open());
        a.close().await;
    });
}
