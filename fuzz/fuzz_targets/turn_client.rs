//! The STUN/TURN client machine (`peerpouch::reach::ServerClient`), stateful.
//!
//! An `Arbitrary` sequence of operations drives one client (STUN or TURN, UDP or TCP): server
//! answers built from the client's own pending requests with fuzzed fields (class, error code,
//! lifetime, addresses, realm and nonce, signed with the right key or not, a wrong transaction
//! id), raw bytes, TCP chunks, peer traffic (Data indications, ChannelData on fuzzed channels),
//! time advances of up to hours, `permit`, `send_to`, `release`, a closed stream.
//!
//! After every step: no panic; the queue holds at most `max_queued`; `poll_timeout` is `Some`
//! while the client is neither failed nor released (nor mapped by a STUN server) and, right
//! after `handle_timeout(now)`, later than `now` (nothing due is left behind); granted lifetimes
//! are at most an hour; `relay_addr` is `Some` exactly while allocated.
#![no_main]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peerpouch::reach::stun::{
    long_term_key, Attribute, ChannelData, Class, Message, Method, TransactionId,
};
use peerpouch::reach::{
    ClientConfig, ClientEvent, ClientStatus, IceServer, IceServerUrl, ServerClient, Transport,
};

#[derive(Arbitrary, Debug)]
struct Input {
    turn: bool,
    tcp: bool,
    max_queued: u8,
    seed: u64,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// A response to one of the client's requests.
    Answer { which: u8, answer: Answer },
    /// Raw bytes from the server (a datagram, or a TCP chunk).
    Raw(Vec<u8>),
    /// Time passes (milliseconds; the top bit makes it minutes).
    Advance(u32),
    /// Timers fire exactly when due.
    Due,
    Permit(u8),
    SendTo(u8, u16),
    /// A peer's datagram through the relay, as the server would forward it.
    PeerData { peer: u8, channel: Option<u16>, len: u8 },
    Release,
    StreamClosed,
    /// Answer every pending request well (so runs get far).
    Cooperate,
}

#[derive(Arbitrary, Debug)]
struct Answer {
    class: AnswerClass,
    wrong_tid: bool,
    sign: Sign,
    lifetime: Option<u32>,
    relay_port: u16,
    v6: bool,
    mapped: bool,
    realm: Option<String>,
    nonce: Option<String>,
    fingerprint: bool,
    extra: Option<(u16, Vec<u8>)>,
    /// Cut the encoded answer to this many bytes (when smaller).
    cut: Option<u16>,
    /// Chunk size for TCP delivery.
    chunk: u8,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum AnswerClass {
    Success,
    Error(u16),
    Challenge,
    Stale,
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sign {
    Right,
    Wrong,
    None,
}

const USER: &str = "ann";
const PASS: &str = "s3cret";
const SERVER: &str = "192.0.2.1:3478";

fn peer(i: u8) -> SocketAddr {
    match i % 6 {
        5 => "[2001:db8::5]:5000".parse().unwrap(),
        n => SocketAddr::from(([198, 51, 100, n], 4000 + u16::from(i))),
    }
}

struct Harness {
    c: ServerClient,
    now: Instant,
    max_queued: usize,
    /// Requests the client sent (latest last), with the realm they were signed for.
    requests: Vec<(TransactionId, Method, Option<String>)>,
    channels: Vec<(u16, SocketAddr)>,
    turn: bool,
}

impl Harness {
    fn drain(&mut self) {
        while let Some(b) = self.c.poll_transmit() {
            assert!(!b.is_empty());
            if self.c.transport() == Transport::Tcp {
                // Stream writes are whole frames: STUN lengths and padded ChannelData are
                // multiples of 4.
                assert_eq!(b.len() % 4, 0, "unframed TCP write");
            }
            if let Ok(m) = Message::decode(&b) {
                if m.class == Class::Request {
                    if m.method == Method::CHANNEL_BIND {
                        if let (Some(ch), Some(p)) = (m.channel_number(), m.peer_address()) {
                            self.channels.push((ch, p));
                            if self.channels.len() > 64 {
                                self.channels.remove(0);
                            }
                        }
                    }
                    self.requests
                        .push((m.transaction_id, m.method, m.realm().map(str::to_string)));
                    if self.requests.len() > 64 {
                        self.requests.remove(0);
                    }
                }
            }
        }
        while let Some(e) = self.c.poll_event() {
            if let ClientEvent::Allocated { lifetime, .. } = e {
                assert!(lifetime <= Duration::from_secs(3600));
                assert!(lifetime >= Duration::from_secs(1));
            }
        }
    }

    fn deliver(&mut self, bytes: &[u8], chunk: u8) {
        match self.c.transport() {
            Transport::Udp => {
                let _ = self.c.handle_datagram(self.now, bytes);
            }
            Transport::Tcp => {
                let n = usize::from(chunk).max(1);
                for piece in bytes.chunks(n) {
                    let _ = self.c.handle_stream_data(self.now, piece);
                }
            }
        }
    }

    fn answer(&mut self, which: u8, a: &Answer) {
        if self.requests.is_empty() {
            return;
        }
        let (tid, method, realm) = self.requests[usize::from(which) % self.requests.len()].clone();
        let tid = if a.wrong_tid { [0xEE; 12] } else { tid };
        let relay_ip: std::net::IpAddr = if a.v6 {
            "2001:db8::1".parse().unwrap()
        } else {
            "192.0.2.1".parse().unwrap()
        };
        let mut m;
        match a.class {
            AnswerClass::Success => {
                m = Message::new(method, Class::Success, tid);
                if method == Method::ALLOCATE {
                    m.attributes.push(Attribute::XorRelayedAddress(SocketAddr::new(
                        relay_ip,
                        a.relay_port,
                    )));
                }
                if a.mapped {
                    m.attributes
                        .push(Attribute::XorMappedAddress("203.0.113.7:6000".parse().unwrap()));
                }
                if let Some(l) = a.lifetime {
                    m.attributes.push(Attribute::Lifetime(l));
                }
            }
            AnswerClass::Error(code) => {
                m = Message::new(method, Class::Error, tid).with(Attribute::ErrorCode {
                    code: 300 + code % 400,
                    reason: "no".into(),
                });
            }
            AnswerClass::Challenge | AnswerClass::Stale => {
                let code = if matches!(a.class, AnswerClass::Challenge) { 401 } else { 438 };
                m = Message::new(method, Class::Error, tid).with(Attribute::ErrorCode {
                    code,
                    reason: "auth".into(),
                });
            }
        }
        if let Some(r) = &a.realm {
            m.attributes.push(Attribute::Realm(r.chars().take(300).collect()));
        } else if !matches!(a.class, AnswerClass::Success) {
            m.attributes.push(Attribute::Realm("peerpouch.test".into()));
        }
        if let Some(n) = &a.nonce {
            m.attributes.push(Attribute::Nonce(n.chars().take(300).collect()));
        } else if !matches!(a.class, AnswerClass::Success) {
            m.attributes.push(Attribute::Nonce("nonce".into()));
        }
        if let Some((kind, value)) = &a.extra {
            let mut v = value.clone();
            v.truncate(2000);
            m.attributes.push(Attribute::Unknown { kind: *kind | 0x8000, value: v });
        }
        let key = match a.sign {
            Sign::Right => realm.map(|r| long_term_key(USER, &r, PASS).to_vec()),
            Sign::Wrong => Some(b"wrong".to_vec()),
            Sign::None => None,
        };
        let Ok(mut bytes) = m.encode_signed(key.as_deref(), a.fingerprint) else {
            return;
        };
        if let Some(cut) = a.cut {
            bytes.truncate(usize::from(cut));
        }
        self.deliver(&bytes, a.chunk);
    }

    fn cooperate(&mut self) {
        // The latest request of each kind, answered as a friendly server would.
        let reqs = self.requests.clone();
        for (tid, method, realm) in reqs.iter().rev().take(8) {
            let mut m = Message::new(*method, Class::Success, *tid);
            if *method == Method::ALLOCATE {
                m.attributes
                    .push(Attribute::XorRelayedAddress("192.0.2.1:50000".parse().unwrap()));
                m.attributes.push(Attribute::Lifetime(600));
            }
            if *method == Method::BINDING {
                m.attributes
                    .push(Attribute::XorMappedAddress("203.0.113.7:6000".parse().unwrap()));
            }
            let key = realm.as_ref().map(|r| long_term_key(USER, r, PASS));
            if let Ok(b) = m.encode_signed(key.as_ref().map(|k| &k[..]), false) {
                self.deliver(&b, 255);
            }
        }
    }

    fn check(&self, after_timeout: bool) {
        let status = self.c.status();
        assert!(self.c.queued_len() <= self.max_queued, "queue over its bound");
        let settled = matches!(
            status,
            ClientStatus::Failed(_) | ClientStatus::Released | ClientStatus::Mapped { .. }
        );
        let t = self.c.poll_timeout();
        if !settled {
            assert!(t.is_some(), "no timeout while {status:?}");
        } else if !self.turn || !matches!(status, ClientStatus::Mapped { .. }) {
            assert!(t.is_none(), "a timeout while {status:?}");
        }
        if after_timeout {
            if let Some(t) = t {
                assert!(t > self.now, "handle_timeout left something due behind ({status:?})");
            }
        }
        assert_eq!(
            self.c.relay_addr().is_some(),
            matches!(status, ClientStatus::Allocated { .. }),
            "relay_addr and status disagree"
        );
    }
}

fuzz_target!(|input: Input| {
    let url = if input.turn {
        let u = if input.tcp { format!("turn:{SERVER}?transport=tcp") } else { format!("turn:{SERVER}") };
        IceServer::new(u).credentials(USER, PASS).parse().unwrap().remove(0)
    } else {
        let mut u = IceServerUrl::parse(&format!("stun:{SERVER}")).unwrap();
        if input.tcp {
            u.transport = Transport::Tcp;
        }
        u
    };
    let server = url.resolved(SERVER.parse().unwrap());
    let max_queued = usize::from(input.max_queued % 16);
    let config = ClientConfig { max_queued, ..ClientConfig::default() };
    let now = Instant::now();
    let c = ServerClient::new(server, "10.0.0.2:5000".parse().unwrap(), config, input.seed, now);
    let mut h = Harness { c, now, max_queued, requests: Vec::new(), channels: Vec::new(), turn: input.turn };
    h.drain();
    h.check(false);
    for op in input.ops.iter().take(200) {
        let mut after_timeout = false;
        match op {
            Op::Answer { which, answer } => h.answer(*which, answer),
            Op::Raw(b) => h.deliver(b, 7),
            Op::Advance(ms) => {
                let d = if ms & 0x8000_0000 != 0 {
                    Duration::from_secs(u64::from(ms & 0xFF) * 60)
                } else {
                    Duration::from_millis(u64::from(ms % 600_000))
                };
                h.now += d;
                h.c.handle_timeout(h.now);
                after_timeout = true;
            }
            Op::Due => {
                if let Some(t) = h.c.poll_timeout() {
                    h.now = h.now.max(t);
                    h.c.handle_timeout(h.now);
                    after_timeout = true;
                }
            }
            Op::Permit(p) => {
                let _ = h.c.permit(h.now, peer(*p));
            }
            Op::SendTo(p, len) => {
                let _ = h.c.send_to(h.now, peer(*p), &vec![0xAB; usize::from(*len)]);
            }
            Op::PeerData { peer: p, channel, len } => {
                let data = vec![0xCD; usize::from(*len)];
                let bytes = match channel {
                    Some(ch) => {
                        let ch = match h.channels.get(usize::from(*ch) % h.channels.len().max(1)) {
                            Some((n, _)) if ch & 0x8000 == 0 => *n,
                            _ => 0x4000 | (ch & 0x0FFF),
                        };
                        ChannelData { channel: ch, data }.encode(h.c.transport() == Transport::Tcp).unwrap()
                    }
                    None => Message::new(Method::DATA, Class::Indication, [3; 12])
                        .with(Attribute::XorPeerAddress(peer(*p)))
                        .with(Attribute::Data(data))
                        .encode()
                        .unwrap(),
                };
                h.deliver(&bytes, 255);
            }
            Op::Release => h.c.release(h.now),
            Op::StreamClosed => h.c.handle_stream_closed(h.now, "fuzz".into()),
            Op::Cooperate => h.cooperate(),
        }
        h.drain();
        h.check(after_timeout);
    }
});
