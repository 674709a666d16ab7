//! The STUN/TURN client machine against the TURN server model (tests/common/turn_server.rs)
//! over a tiny zero-latency loop in virtual time, UDP and TCP (with random chunking); and
//! against a real coturn when `PEERPOUCH_TEST_TURN=ADDR|USER|PASS` is set (started by
//! `runtimes/smol/stun-server.sh turn`).
// The coturn tests at the end use real sockets and clocks; the core's clippy.toml forbids them.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

mod common;

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use common::turn_server::{Out, TurnServer};
use common::Rng;
use peerpouch::reach::stun::{self, Attribute, ChannelData, Class, Message, Method};
use peerpouch::reach::{
    ClientConfig, ClientError, ClientEvent, ClientFailure, ClientStatus, IceServer,
    ResolvedIceServer, ServerClient, Transport,
};

const SERVER: &str = "203.0.113.1:3478";
const RELAY_IP: &str = "203.0.113.1";
const REALM: &str = "peerpouch.test";

fn resolved(url: &str, user: &str, pass: &str, addr: SocketAddr) -> ResolvedIceServer {
    let mut u = IceServer::new(url)
        .credentials(user, pass)
        .parse()
        .unwrap()
        .remove(0);
    u.host = addr.ip().to_string();
    u.resolved(addr)
}

fn turn_url(tcp: bool) -> &'static str {
    if tcp {
        "turn:203.0.113.1:3478?transport=tcp"
    } else {
        "turn:203.0.113.1:3478"
    }
}

/// One client in the loop.
struct Node {
    client: ServerClient,
    addr: SocketAddr,
    events: Vec<ClientEvent>,
    /// Kinds of what the client sent: "stun" or "channeldata".
    sent: Vec<&'static str>,
}

/// A server, its clients and plain peers, in virtual time.
struct Net {
    t0: Instant,
    now: Instant,
    server: TurnServer,
    nodes: Vec<Node>,
    /// Datagrams that reached addresses that are neither clients nor relays.
    peer_inbox: Vec<Out>,
    rng: Rng,
    /// Drop everything the clients send (an unreachable server).
    blackhole: bool,
}

impl Net {
    fn new(seed: u64) -> Net {
        let t0 = Instant::now();
        let server = TurnServer::new(
            SERVER.parse().unwrap(),
            RELAY_IP.parse().unwrap(),
            REALM,
            &[("ann", "s3cret"), ("bob", "hunter2")],
            seed,
        );
        Net {
            t0,
            now: t0,
            server,
            nodes: Vec::new(),
            peer_inbox: Vec::new(),
            rng: Rng::new(seed ^ 0xABCD),
            blackhole: false,
        }
    }

    fn add(&mut self, url: &str, user: &str, pass: &str, config: ClientConfig) -> usize {
        let addr: SocketAddr = format!("198.51.100.{}:40000", 10 + self.nodes.len())
            .parse()
            .unwrap();
        let server = resolved(url, user, pass, SERVER.parse().unwrap());
        let client = ServerClient::new(server, addr, config, 7 + self.nodes.len() as u64, self.now);
        self.nodes.push(Node {
            client,
            addr,
            events: Vec::new(),
            sent: Vec::new(),
        });
        self.pump();
        self.nodes.len() - 1
    }

    fn turn(&mut self, tcp: bool) -> usize {
        self.add(turn_url(tcp), "ann", "s3cret", ClientConfig::default())
    }

    /// Random pieces of `bytes`.
    fn chunks(&mut self, bytes: &[u8]) -> Vec<Vec<u8>> {
        let mut v = Vec::new();
        let mut rest = bytes;
        while !rest.is_empty() {
            let n = 1 + (self.rng.next_u64() as usize) % rest.len().min(40);
            v.push(rest[..n].to_vec());
            rest = &rest[n..];
        }
        v
    }

    /// Delivers everything until nothing moves.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut moved = false;
            for i in 0..self.nodes.len() {
                while let Some(e) = self.nodes[i].client.poll_event() {
                    self.nodes[i].events.push(e);
                }
                while let Some(bytes) = self.nodes[i].client.poll_transmit() {
                    moved = true;
                    let kind = if stun::is_channel_data(&bytes) {
                        "channeldata"
                    } else {
                        "stun"
                    };
                    self.nodes[i].sent.push(kind);
                    if self.blackhole {
                        continue;
                    }
                    let (now, addr) = (self.now, self.nodes[i].addr);
                    let outs = match self.nodes[i].client.transport() {
                        Transport::Udp => self.server.handle_from_client(now, addr, &bytes),
                        Transport::Tcp => {
                            let mut outs = Vec::new();
                            for c in self.chunks(&bytes) {
                                outs.extend(self.server.handle_stream_from_client(now, addr, &c));
                            }
                            outs
                        }
                    };
                    self.route(outs);
                }
            }
            if !moved {
                return;
            }
        }
        panic!("the loop did not settle");
    }

    fn route(&mut self, outs: Vec<Out>) {
        let mut queue: VecDeque<Out> = outs.into();
        while let Some(o) = queue.pop_front() {
            if self.server.is_relay(o.to) {
                let now = self.now;
                queue.extend(self.server.handle_from_peer(now, o.from, o.to, &o.bytes));
            } else if let Some(i) = self.nodes.iter().position(|n| n.addr == o.to) {
                let now = self.now;
                match self.nodes[i].client.transport() {
                    Transport::Udp => {
                        let _ = self.nodes[i].client.handle_datagram(now, &o.bytes);
                    }
                    Transport::Tcp => {
                        for c in self.chunks(&o.bytes) {
                            let _ = self.nodes[i].client.handle_stream_data(now, &c);
                        }
                    }
                }
            } else {
                self.peer_inbox.push(o);
            }
        }
    }

    /// A plain peer (not a client) sends to a relayed address.
    fn peer_sends(&mut self, peer: SocketAddr, relay: SocketAddr, data: &[u8]) {
        let outs = self.server.handle_from_peer(self.now, peer, relay, data);
        self.route(outs);
        self.pump();
    }

    /// Runs timers up to `t0 + at`.
    fn run_until(&mut self, at: Duration) {
        let end = self.t0 + at;
        for _ in 0..100_000 {
            self.pump();
            let next = self
                .nodes
                .iter()
                .filter_map(|n| n.client.poll_timeout())
                .min();
            match next {
                Some(t) if t <= end => {
                    self.now = self.now.max(t);
                    for n in &mut self.nodes {
                        n.client.handle_timeout(self.now);
                    }
                }
                _ => {
                    self.now = end;
                    for n in &mut self.nodes {
                        n.client.handle_timeout(end);
                    }
                    self.pump();
                    return;
                }
            }
        }
        panic!("timers did not settle");
    }

    fn elapsed(&self) -> Duration {
        self.now - self.t0
    }

    fn relay(&self, i: usize) -> SocketAddr {
        self.nodes[i].client.relay_addr().expect("allocated")
    }

    fn relayed(&self, i: usize) -> Vec<(SocketAddr, Vec<u8>)> {
        self.nodes[i]
            .events
            .iter()
            .filter_map(|e| match e {
                ClientEvent::Relayed { peer, data } => Some((*peer, data.clone())),
                _ => None,
            })
            .collect()
    }
}

fn allocated(events: &[ClientEvent]) -> Option<(SocketAddr, Option<SocketAddr>, Duration)> {
    events.iter().find_map(|e| match e {
        ClientEvent::Allocated {
            relay,
            srflx,
            lifetime,
        } => Some((*relay, *srflx, *lifetime)),
        _ => None,
    })
}

#[test]
fn stun_binding_over_udp_and_tcp() {
    for tcp in [false, true] {
        let mut net = Net::new(1);
        // URLs take STUN over UDP only; the machine does Binding over TCP as well.
        let i = net.add("stun:203.0.113.1:3478", "", "", ClientConfig::default());
        if tcp {
            let mut url = peerpouch::reach::IceServerUrl::parse("stun:203.0.113.1:3478").unwrap();
            url.transport = Transport::Tcp;
            let addr = net.nodes[i].addr;
            net.nodes[i].client = ServerClient::new(
                url.resolved(SERVER.parse().unwrap()),
                addr,
                ClientConfig::default(),
                1,
                net.now,
            );
            net.nodes[i].events.clear();
            net.pump();
        }
        let addr = net.nodes[i].addr;
        assert_eq!(
            net.nodes[i].events,
            vec![ClientEvent::Mapped { srflx: addr }]
        );
        assert_eq!(
            net.nodes[i].client.status(),
            ClientStatus::Mapped { srflx: addr }
        );
        assert_eq!(net.nodes[i].client.poll_timeout(), None);
    }
}

#[test]
fn allocation_with_the_challenge_udp_and_tcp() {
    for tcp in [false, true] {
        let mut net = Net::new(2);
        let i = net.turn(tcp);
        let (relay, srflx, lifetime) = allocated(&net.nodes[i].events).expect("allocated");
        assert_eq!(relay.ip(), RELAY_IP.parse::<IpAddr>().unwrap());
        assert_eq!(lifetime, Duration::from_secs(600));
        // A TCP connection's mapping is no UDP candidate.
        let addr = net.nodes[i].addr;
        assert_eq!(srflx, (!tcp).then_some(addr));
        assert_eq!(
            net.nodes[i].events.first(),
            Some(&if tcp {
                ClientEvent::Allocated {
                    relay,
                    srflx: None,
                    lifetime,
                }
            } else {
                ClientEvent::Mapped { srflx: addr }
            })
        );
        assert_eq!(net.server.counters.allocations, 1);
        // Allocate without credentials, 401, Allocate signed.
        assert_eq!(net.server.counters.requests, 2);
        assert_eq!(
            net.nodes[i].client.status(),
            ClientStatus::Allocated { relay, srflx }
        );
        assert_eq!(net.elapsed(), Duration::ZERO);
    }
}

#[test]
fn stale_nonce_is_retried() {
    let mut net = Net::new(3);
    net.server.knobs.stale_nonce_once = true;
    let i = net.turn(false);
    assert!(allocated(&net.nodes[i].events).is_some());
    assert_eq!(net.nodes[i].client.stats().stale_nonce_retries, 1);
    assert_eq!(net.server.counters.requests, 3);
    // A nonce that goes stale later (coturn's expire) is taken on a refresh too.
    net.server.rotate_nonce();
    net.run_until(Duration::from_secs(541));
    assert_eq!(net.nodes[i].client.stats().stale_nonce_retries, 2);
    assert_eq!(net.server.counters.refreshes, 1);
    assert!(net.nodes[i].client.relay_addr().is_some());
}

#[test]
fn wrong_password_is_unauthorized() {
    let mut net = Net::new(4);
    let i = net.add(turn_url(false), "ann", "wrong", ClientConfig::default());
    assert_eq!(
        net.nodes[i].events,
        vec![ClientEvent::Failed(ClientFailure::Unauthorized)]
    );
    assert!(ClientFailure::Unauthorized
        .to_string()
        .contains("--ice-username/--ice-credential"));
    let j = net.add(turn_url(true), "nobody", "x", ClientConfig::default());
    assert_eq!(
        net.nodes[j].client.status(),
        ClientStatus::Failed(ClientFailure::Unauthorized)
    );
    assert_eq!(net.nodes[j].client.poll_timeout(), None);
}

#[test]
fn quota_reached() {
    let mut net = Net::new(5);
    net.server.knobs.quota_reached = true;
    let i = net.turn(false);
    assert_eq!(
        net.nodes[i].events,
        vec![ClientEvent::Failed(ClientFailure::QuotaReached)]
    );
}

#[test]
fn refresh_happens_at_the_right_virtual_time() {
    let mut net = Net::new(6);
    let i = net.turn(false);
    net.run_until(Duration::from_secs(539));
    assert_eq!(net.server.counters.refreshes, 0);
    net.run_until(Duration::from_secs(540));
    assert_eq!(net.server.counters.refreshes, 1);
    net.run_until(Duration::from_secs(1079));
    assert_eq!(net.server.counters.refreshes, 1);
    net.run_until(Duration::from_secs(1080));
    assert_eq!(net.server.counters.refreshes, 2);
    // Short lifetimes refresh at half.
    net.server.knobs.lifetime = 60;
    let j = net.turn(false);
    let start = net.elapsed();
    net.run_until(start + Duration::from_secs(29));
    let before = net.server.counters.refreshes;
    net.run_until(start + Duration::from_secs(30));
    assert_eq!(net.server.counters.refreshes, before + 1);
    assert!(net.nodes[i].client.relay_addr().is_some());
    assert!(net.nodes[j].client.relay_addr().is_some());
    // A hostile lifetime cannot overflow anything: clamped to an hour.
    net.server.knobs.lifetime = u32::MAX;
    let k = net.turn(false);
    assert_eq!(
        allocated(&net.nodes[k].events).unwrap().2,
        Duration::from_secs(3600)
    );
    net.server.knobs.lifetime = 0;
    let z = net.turn(false);
    assert_eq!(
        allocated(&net.nodes[z].events).unwrap().2,
        Duration::from_secs(4)
    );
}

#[test]
fn permission_channel_and_relaying_both_ways() {
    for tcp in [false, true] {
        let mut net = Net::new(7);
        let i = net.turn(tcp);
        let peer: SocketAddr = "192.0.2.50:7000".parse().unwrap();
        let relay = net.relay(i);
        // Before the permission: the server drops the peer's datagram.
        net.peer_sends(peer, relay, b"too early");
        assert_eq!(net.server.counters.dropped_unpermitted, 1);
        // send_to permits implicitly; the payload waits for the permission, then goes as a
        // Send indication (the channel is bound in the same exchange, so later sends use it).
        net.nodes[i]
            .client
            .send_to(net.now, peer, b"hello")
            .unwrap();
        assert_eq!(net.nodes[i].client.queued_len(), 1);
        net.pump();
        assert_eq!(net.nodes[i].client.queued_len(), 0);
        assert_eq!(net.server.counters.permissions, 1);
        assert_eq!(net.server.counters.channel_binds, 1);
        assert_eq!(
            net.peer_inbox,
            vec![Out {
                from: relay,
                to: peer,
                bytes: b"hello".to_vec()
            }]
        );
        net.peer_sends(peer, relay, b"world");
        assert_eq!(net.relayed(i), vec![(peer, b"world".to_vec())]);
        // After the bind: ChannelData both ways.
        let cd_before = net.server.counters.channel_data;
        net.nodes[i]
            .client
            .send_to(net.now, peer, b"via channel")
            .unwrap();
        net.pump();
        assert_eq!(net.nodes[i].sent.last(), Some(&"channeldata"));
        assert_eq!(net.peer_inbox.last().unwrap().bytes, b"via channel");
        net.peer_sends(peer, relay, &[9; 1001]);
        assert_eq!(net.relayed(i).last().unwrap(), &(peer, vec![9; 1001]));
        assert_eq!(net.server.counters.channel_data, cd_before + 2);
        // Used permissions and channels are refreshed; the allocation too.
        for s in [100u64, 200, 300, 400, 500, 600, 700] {
            net.run_until(Duration::from_secs(s));
            net.nodes[i]
                .client
                .send_to(net.now, peer, b"keepalive")
                .unwrap();
            net.pump();
        }
        assert!(
            net.server.counters.permissions >= 3,
            "{:?}",
            net.server.counters
        );
        assert!(
            net.server.counters.channel_binds >= 2,
            "{:?}",
            net.server.counters
        );
        assert_eq!(net.peer_inbox.last().unwrap().bytes, b"keepalive");
        assert_eq!(net.server.counters.dropped_unpermitted, 1);
    }
}

#[test]
fn two_allocations_relay_to_each_other() {
    let mut net = Net::new(8);
    let a = net.turn(false);
    let b = net.add(turn_url(true), "bob", "hunter2", ClientConfig::default());
    let (ra, rb) = (net.relay(a), net.relay(b));
    net.nodes[b].client.permit(net.now, ra).unwrap();
    net.pump();
    net.nodes[a].client.send_to(net.now, rb, b"a to b").unwrap();
    net.pump();
    assert_eq!(net.relayed(b), vec![(ra, b"a to b".to_vec())]);
    net.nodes[b].client.send_to(net.now, ra, b"b to a").unwrap();
    net.pump();
    assert_eq!(net.relayed(a), vec![(rb, b"b to a".to_vec())]);
}

#[test]
fn release_with_lifetime_zero() {
    for tcp in [false, true] {
        let mut net = Net::new(9);
        let i = net.turn(tcp);
        assert_eq!(net.server.allocation_count(), 1);
        net.nodes[i].client.release(net.now);
        assert_eq!(net.nodes[i].client.status(), ClientStatus::Releasing);
        net.pump();
        assert_eq!(net.nodes[i].events.last(), Some(&ClientEvent::Released));
        assert_eq!(net.server.allocation_count(), 0);
        assert_eq!(net.nodes[i].client.status(), ClientStatus::Released);
        assert_eq!(net.nodes[i].client.poll_timeout(), None);
        assert_eq!(
            net.nodes[i]
                .client
                .send_to(net.now, "192.0.2.1:1".parse().unwrap(), b"x"),
            Err(ClientError::InvalidState("released"))
        );
    }
}

#[test]
fn unreachable_server_fails_within_request_timeout() {
    for url in ["stun:203.0.113.1:3478", turn_url(false)] {
        let mut net = Net::new(10);
        net.blackhole = true;
        let i = net.add(url, "ann", "s3cret", ClientConfig::default());
        net.run_until(Duration::from_secs(60));
        assert_eq!(
            net.nodes[i].events,
            vec![ClientEvent::Failed(ClientFailure::Unreachable)]
        );
        // Sent at 0, 0.25, 0.75, 1.75, 3.75 s; failed at 5 s.
        assert_eq!(net.nodes[i].sent.len(), 5);
        assert_eq!(net.nodes[i].client.stats().retransmissions, 4);
    }
    // Exactly at the timeout, in virtual time.
    let mut net = Net::new(11);
    net.blackhole = true;
    let i = net.turn(false);
    net.run_until(Duration::from_millis(4999));
    assert_eq!(net.nodes[i].client.status(), ClientStatus::Pending);
    net.run_until(Duration::from_millis(5000));
    assert_eq!(
        net.nodes[i].client.status(),
        ClientStatus::Failed(ClientFailure::Unreachable)
    );
}

#[test]
fn lost_responses_are_retransmitted_and_answered_from_the_cache() {
    let mut net = Net::new(12);
    net.server.knobs.drop_responses = 2; // the 401 and the first signed answer
    let i = net.turn(false);
    net.run_until(Duration::from_secs(2));
    assert!(allocated(&net.nodes[i].events).is_some());
    assert_eq!(net.server.counters.allocations, 1);
    assert_eq!(net.nodes[i].client.stats().retransmissions, 2);
}

#[test]
fn stream_closed_loses_the_allocation() {
    let mut net = Net::new(13);
    let i = net.turn(true);
    net.nodes[i]
        .client
        .handle_stream_closed(net.now, "reset by peer".into());
    net.pump();
    assert_eq!(
        net.nodes[i].events.last(),
        Some(&ClientEvent::Failed(ClientFailure::StreamClosed(
            "reset by peer".into()
        )))
    );
    assert_eq!(net.nodes[i].client.poll_timeout(), None);
}

#[test]
fn queue_and_peers_are_bounded() {
    let mut net = Net::new(14);
    net.blackhole = true;
    let config = ClientConfig {
        max_queued: 2,
        ..ClientConfig::default()
    };
    let i = net.add(turn_url(false), "ann", "s3cret", config);
    let peer: SocketAddr = "192.0.2.9:9".parse().unwrap();
    for n in 0..5u8 {
        net.nodes[i].client.send_to(net.now, peer, &[n]).unwrap();
    }
    assert_eq!(net.nodes[i].client.queued_len(), 2);
    assert_eq!(net.nodes[i].client.stats().queue_dropped, 3);
    let c = &mut net.nodes[i].client;
    for n in 0..255u32 {
        let p = SocketAddr::new(IpAddr::from((0x0A00_0000 + n).to_be_bytes()), 1);
        c.permit(net.now, p).unwrap();
    }
    assert_eq!(
        c.permit(net.now, "10.200.0.1:1".parse().unwrap()),
        Err(ClientError::TooManyPeers { max: 256 })
    );
    // Known peers are still fine.
    c.permit(net.now, peer).unwrap();
}

/// Builds a response to the client's pending request as a hostile server might.
fn last_request(net: &mut Net, i: usize) -> Message {
    let bytes = net.nodes[i].client.poll_transmit().expect("a request");
    Message::decode(&bytes).unwrap()
}

#[test]
fn hostile_responses_leave_the_machine_working() {
    let mut net = Net::new(15);
    net.blackhole = true;
    let i = net.turn(false);
    // The Allocate went into the black hole; take it back out of the client.
    let n = &mut net.nodes[i];
    let _ = n.client.poll_transmit();
    n.client
        .handle_timeout(net.now + Duration::from_millis(250));
    net.now += Duration::from_millis(250);
    let req = last_request(&mut net, i);
    assert_eq!(req.method, Method::ALLOCATE);
    let now = net.now;
    let c = &mut net.nodes[i].client;
    let relay: SocketAddr = "203.0.113.1:50000".parse().unwrap();
    let success = |tid| {
        Message::new(Method::ALLOCATE, Class::Success, tid)
            .with(Attribute::XorRelayedAddress(relay))
            .with(Attribute::Lifetime(600))
    };
    // Wrong transaction id.
    let wrong = success([0xEE; 12]).encode().unwrap();
    assert_eq!(
        c.handle_datagram(now, &wrong),
        Err(ClientError::UnknownTransaction)
    );
    // Garbage and truncated bytes.
    assert!(matches!(
        c.handle_datagram(now, b"\x00\x01garbage"),
        Err(ClientError::Malformed(_))
    ));
    let good = success(req.transaction_id).encode().unwrap();
    assert!(c.handle_datagram(now, &good[..good.len() - 4]).is_err());
    // An oversize attribute length.
    let mut over = good.clone();
    over[22] = 0xFF;
    assert!(matches!(
        c.handle_datagram(now, &over),
        Err(ClientError::Malformed(_))
    ));
    // A success without the relayed address.
    let bare = Message::new(Method::ALLOCATE, Class::Success, req.transaction_id)
        .encode()
        .unwrap();
    assert!(c.handle_datagram(now, &bare).is_err());
    // A response of another method with our id.
    let other = Message::new(Method::REFRESH, Class::Success, req.transaction_id)
        .encode()
        .unwrap();
    assert!(matches!(
        c.handle_datagram(now, &other),
        Err(ClientError::Unexpected { .. })
    ));
    // A wrong FINGERPRINT.
    let mut fp = success(req.transaction_id)
        .encode_signed(None, true)
        .unwrap();
    let l = fp.len();
    fp[l - 1] ^= 1;
    assert_eq!(
        c.handle_datagram(now, &fp),
        Err(ClientError::BadFingerprint)
    );
    // ChannelData with a channel out of range, and on a channel never bound.
    assert!(matches!(
        c.handle_datagram(now, &[0x50, 0x00, 0x00, 0x00]),
        Err(ClientError::Malformed(stun::StunError::BadChannel {
            channel: 0x5000
        }))
    ));
    let cd = ChannelData {
        channel: 0x4ABC,
        data: vec![1],
    }
    .encode(false)
    .unwrap();
    assert_eq!(
        c.handle_datagram(now, &cd),
        Err(ClientError::UnknownChannel(0x4ABC))
    );
    // A Data indication before any allocation.
    let data = Message::new(Method::DATA, Class::Indication, [1; 12])
        .with(Attribute::XorPeerAddress("192.0.2.1:1".parse().unwrap()))
        .with(Attribute::Data(vec![1]))
        .encode()
        .unwrap();
    assert!(c.handle_datagram(now, &data).is_err());
    assert_eq!(c.status(), ClientStatus::Pending);
    assert_eq!(c.poll_event(), None);
    // Then the real 401 challenge and a signed success: the machine still works.
    let challenge = Message::new(Method::ALLOCATE, Class::Error, req.transaction_id)
        .with(Attribute::ErrorCode {
            code: 401,
            reason: "Unauthorized".into(),
        })
        .with(Attribute::Realm(REALM.into()))
        .with(Attribute::Nonce("n0nce".into()))
        .encode()
        .unwrap();
    c.handle_datagram(now, &challenge).unwrap();
    // The duplicate of the challenge is stale now.
    assert_eq!(
        c.handle_datagram(now, &challenge),
        Err(ClientError::UnknownTransaction)
    );
    let signed = Message::decode(&c.poll_transmit().unwrap()).unwrap();
    assert_eq!(signed.username(), Some("ann"));
    let key = stun::long_term_key("ann", REALM, "s3cret");
    // A success signed with the wrong key is ignored and counted.
    let forged = success(signed.transaction_id)
        .encode_signed(Some(b"not the key"), false)
        .unwrap();
    assert_eq!(
        c.handle_datagram(now, &forged),
        Err(ClientError::BadIntegrity)
    );
    let unsigned = success(signed.transaction_id).encode().unwrap();
    assert_eq!(
        c.handle_datagram(now, &unsigned),
        Err(ClientError::BadIntegrity)
    );
    // (with the wrong FINGERPRINT above)
    assert_eq!(c.stats().bad_integrity, 3);
    // Attributes after MESSAGE-INTEGRITY do not count.
    let mut tail = success(signed.transaction_id)
        .encode_signed(Some(&key), false)
        .unwrap();
    let extra = Message::new(Method::ALLOCATE, Class::Success, signed.transaction_id)
        .with(Attribute::Lifetime(1))
        .encode()
        .unwrap();
    tail.extend_from_slice(&extra[20..]);
    let len = (tail.len() - 20) as u16;
    tail[2..4].copy_from_slice(&len.to_be_bytes());
    c.handle_datagram(now, &tail).unwrap();
    assert_eq!(c.relay_addr(), Some(relay));
    assert!(matches!(
        c.poll_event(),
        Some(ClientEvent::Allocated { lifetime, .. }) if lifetime == Duration::from_secs(600)
    ));
    // Data from a peer we never permitted: dropped and counted.
    assert_eq!(
        c.handle_datagram(now, &data),
        Err(ClientError::UnpermittedPeer("192.0.2.1:1".parse().unwrap()))
    );
    // (with the early Data indication and the unbound channel)
    assert_eq!(c.stats().unpermitted_dropped, 3);
}

#[test]
fn error_responses_map_to_failures_with_advice() {
    for (code, failure) in [
        (403, ClientFailure::Forbidden),
        (437, ClientFailure::AllocationMismatch),
        (486, ClientFailure::QuotaReached),
        (508, ClientFailure::InsufficientCapacity),
        (
            500,
            ClientFailure::Refused {
                code: 500,
                reason: "x".repeat(200),
            },
        ),
    ] {
        let now = Instant::now();
        let mut c = ServerClient::new(
            resolved(turn_url(false), "ann", "s3cret", SERVER.parse().unwrap()),
            "198.51.100.1:1".parse().unwrap(),
            ClientConfig::default(),
            1,
            now,
        );
        let req = Message::decode(&c.poll_transmit().unwrap()).unwrap();
        let err = Message::new(Method::ALLOCATE, Class::Error, req.transaction_id)
            .with(Attribute::ErrorCode {
                code,
                reason: "x".repeat(1000),
            })
            .encode()
            .unwrap();
        c.handle_datagram(now, &err).unwrap();
        if code == 437 {
            // First the client tries to delete a stale allocation of its own on this address:
            // a Refresh with lifetime 0; refused too, it gives up.
            assert_eq!(c.poll_event(), None);
            let refresh = Message::decode(&c.poll_transmit().unwrap()).unwrap();
            assert_eq!(refresh.method, Method::REFRESH);
            assert_eq!(refresh.lifetime(), Some(0));
            let err = Message::new(Method::REFRESH, Class::Error, refresh.transaction_id)
                .with(Attribute::ErrorCode {
                    code,
                    reason: "x".into(),
                })
                .encode()
                .unwrap();
            c.handle_datagram(now, &err).unwrap();
        }
        assert_eq!(c.poll_event(), Some(ClientEvent::Failed(failure.clone())));
        assert!(failure.to_string().len() > 40, "{failure}");
        assert_eq!(c.poll_timeout(), None);
    }
}

#[test]
fn a_hostile_server_relaying_without_permission_is_filtered() {
    let mut net = Net::new(16);
    net.server.knobs.ignore_permissions = true;
    let i = net.turn(false);
    let relay = net.relay(i);
    net.peer_sends("192.0.2.66:6666".parse().unwrap(), relay, b"spam");
    assert!(net.relayed(i).is_empty());
    assert_eq!(net.nodes[i].client.stats().unpermitted_dropped, 1);
}

#[test]
fn a_refused_permission_is_not_asked_again_for_every_datagram() {
    let mut net = Net::new(19);
    let peer: SocketAddr = "192.0.2.77:1".parse().unwrap();
    net.server.knobs.forbidden_peer = Some(peer.ip());
    let i = net.turn(false);
    net.nodes[i].client.send_to(net.now, peer, b"x").unwrap();
    net.pump();
    assert_eq!(
        net.nodes[i].events.last(),
        Some(&ClientEvent::PermissionFailed {
            peer: peer.ip(),
            failure: ClientFailure::Forbidden
        })
    );
    let requests = net.server.counters.requests;
    for _ in 0..10 {
        assert!(matches!(
            net.nodes[i].client.send_to(net.now, peer, b"x"),
            Err(ClientError::PermissionRefused { .. })
        ));
    }
    net.pump();
    assert_eq!(net.server.counters.requests, requests);
    assert_eq!(net.nodes[i].client.stats().queue_dropped, 1);
    // After the back-off it asks again.
    net.run_until(Duration::from_secs(30));
    net.server.knobs.forbidden_peer = None;
    net.nodes[i].client.send_to(net.now, peer, b"now").unwrap();
    net.pump();
    assert_eq!(net.peer_inbox.last().unwrap().bytes, b"now");
}

#[test]
fn tcp_framing_garbage_fails_the_client() {
    let mut net = Net::new(17);
    let i = net.turn(true);
    let now = net.now;
    let c = &mut net.nodes[i].client;
    assert!(c.handle_stream_data(now, &[0xC0, 0, 0, 0]).is_err());
    assert!(matches!(
        c.status(),
        ClientStatus::Failed(ClientFailure::Malformed(_))
    ));
}

#[test]
fn same_seed_same_bytes() {
    let run = || {
        let mut net = Net::new(18);
        let i = net.turn(false);
        let peer: SocketAddr = "192.0.2.50:7000".parse().unwrap();
        net.nodes[i].client.send_to(net.now, peer, b"x").unwrap();
        let mut out = Vec::new();
        while let Some(b) = net.nodes[i].client.poll_transmit() {
            out.push(b);
        }
        out
    };
    assert_eq!(run(), run());
}

// ---- real coturn (PEERPOUCH_TEST_TURN=ADDR|USER|PASS) ----

mod coturn {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpStream, UdpSocket};

    fn env() -> Option<(SocketAddr, String, String)> {
        let v = std::env::var("PEERPOUCH_TEST_TURN").ok()?;
        let mut it = v.split('|');
        let addr = it.next()?.parse().ok()?;
        Some((addr, it.next()?.to_string(), it.next()?.to_string()))
    }

    enum Link {
        Udp(UdpSocket),
        Tcp(TcpStream),
    }

    struct Real {
        client: ServerClient,
        link: Link,
        events: Vec<ClientEvent>,
    }

    impl Real {
        fn new(tcp: bool) -> Option<Real> {
            let (addr, user, pass) = env()?;
            let url = if tcp {
                format!("turn:{addr}?transport=tcp")
            } else {
                format!("turn:{addr}")
            };
            let server = IceServer::new(url)
                .credentials(user, pass)
                .parse()
                .unwrap()
                .remove(0)
                .resolved(addr);
            let (link, base) = if tcp {
                let s = TcpStream::connect(addr).unwrap();
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                let base = s.local_addr().unwrap();
                (Link::Tcp(s), base)
            } else {
                let s = UdpSocket::bind("127.0.0.1:0").unwrap();
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                let base = s.local_addr().unwrap();
                (Link::Udp(s), base)
            };
            let client = ServerClient::new(
                server,
                base,
                ClientConfig::default(),
                rand_seed(),
                Instant::now(),
            );
            Some(Real {
                client,
                link,
                events: Vec::new(),
            })
        }

        /// Sends what the client has, reads one batch, runs timers.
        fn step(&mut self) {
            while let Some(b) = self.client.poll_transmit() {
                match &mut self.link {
                    Link::Udp(s) => {
                        s.send_to(&b, self.client.server().addr).unwrap();
                    }
                    Link::Tcp(s) => s.write_all(&b).unwrap(),
                }
            }
            let mut buf = vec![0u8; 70_000];
            let now = Instant::now();
            match &mut self.link {
                Link::Udp(s) => {
                    if let Ok((n, from)) = s.recv_from(&mut buf) {
                        if self.client.is_from_server(from) {
                            let _ = self.client.handle_datagram(now, &buf[..n]);
                        }
                    }
                }
                Link::Tcp(s) => match s.read(&mut buf) {
                    Ok(0) => self.client.handle_stream_closed(now, "closed".into()),
                    Ok(n) => {
                        let _ = self.client.handle_stream_data(now, &buf[..n]);
                    }
                    Err(_) => {}
                },
            }
            self.client.handle_timeout(Instant::now());
            while let Some(e) = self.client.poll_event() {
                self.events.push(e);
            }
        }

        fn until(&mut self, what: &str, f: impl Fn(&[ClientEvent]) -> bool) {
            let end = Instant::now() + Duration::from_secs(10);
            while !f(&self.events) {
                assert!(
                    Instant::now() < end,
                    "{what}: timed out; events {:?}",
                    self.events
                );
                self.step();
            }
        }
    }

    fn rand_seed() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos() as u64
    }

    #[test]
    fn coturn_allocates_relays_and_releases_over_udp_and_tcp() {
        if env().is_none() {
            eprintln!("PEERPOUCH_TEST_TURN not set: skipping the coturn test");
            return;
        }
        for (ta, tb) in [(false, false), (true, false), (true, true)] {
            let mut a = Real::new(ta).unwrap();
            let mut b = Real::new(tb).unwrap();
            a.until("allocate a", |e| allocated(e).is_some());
            b.until("allocate b", |e| allocated(e).is_some());
            let ra = a.client.relay_addr().unwrap();
            let rb = b.client.relay_addr().unwrap();
            b.client.permit(Instant::now(), ra).unwrap();
            a.client.send_to(Instant::now(), rb, b"first").unwrap();
            // Keep sending until b got one (b's permission may land after a's first send).
            let end = Instant::now() + Duration::from_secs(10);
            let mut n = 0u32;
            loop {
                a.step();
                b.step();
                let got: Vec<_> = b
                    .events
                    .iter()
                    .filter_map(|e| match e {
                        ClientEvent::Relayed { peer, data } => Some((*peer, data.clone())),
                        _ => None,
                    })
                    .collect();
                if let Some((peer, data)) = got.first() {
                    assert_eq!(*peer, ra);
                    assert!(data.starts_with(b"first") || data.starts_with(b"again"));
                    break;
                }
                assert!(
                    Instant::now() < end,
                    "nothing relayed: a {:?} b {:?}",
                    a.events,
                    b.events
                );
                n += 1;
                if n % 10 == 0 {
                    a.client.send_to(Instant::now(), rb, b"again").unwrap();
                }
            }
            // And back, through b's channel once bound.
            b.client.send_to(Instant::now(), ra, b"reply").unwrap();
            a.client.permit(Instant::now(), rb).unwrap();
            let end = Instant::now() + Duration::from_secs(10);
            let mut n = 0u32;
            while !a
                .events
                .iter()
                .any(|e| matches!(e, ClientEvent::Relayed { .. }))
            {
                a.step();
                b.step();
                assert!(Instant::now() < end, "no reply: a {:?}", a.events);
                n += 1;
                if n % 10 == 0 {
                    b.client.send_to(Instant::now(), ra, b"reply").unwrap();
                }
            }
            a.client.release(Instant::now());
            b.client.release(Instant::now());
            a.until("release a", |e| e.contains(&ClientEvent::Released));
            b.until("release b", |e| e.contains(&ClientEvent::Released));
            eprintln!(
                "coturn: {}/{} relayed and released",
                if ta { "tcp" } else { "udp" },
                if tb { "tcp" } else { "udp" }
            );
        }
    }
}

#[test]
fn a_stale_allocation_of_ours_on_the_same_port_is_cleared_and_allocated_again() {
    let mut net = Net::new(21);
    let i = net.turn(false);
    let (old, _, _) = allocated(&net.nodes[i].events).expect("allocated");
    // The process restarts on the same address and port: the server still holds the old
    // allocation for this 5-tuple and answers the new Allocate with 437.
    let server = resolved(turn_url(false), "ann", "s3cret", SERVER.parse().unwrap());
    let addr = net.nodes[i].addr;
    net.nodes[i].client = ServerClient::new(server, addr, ClientConfig::default(), 99, net.now);
    net.nodes[i].events.clear();
    net.pump();
    let (relay, _, _) = allocated(&net.nodes[i].events)
        .unwrap_or_else(|| panic!("allocated again: {:?}", net.nodes[i].events));
    assert!(net.server.is_relay(relay));
    assert!(!net.server.is_relay(old) || old == relay);
    assert_eq!(net.server.allocation_count(), 1);
    assert_eq!(net.server.counters.allocations, 2);
}
