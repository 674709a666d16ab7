//! The virtual network: seeded latency, jitter, loss, duplication, an MTU and partitions.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use peerpouch::session::Transmit;

use crate::common::Rng;

/// Network conditions.
#[derive(Clone, Debug)]
pub struct NetConfig {
    pub latency: Duration,
    /// Uniform extra delay in [0, jitter): packets overtake each other (reordering).
    pub jitter: Duration,
    pub loss: f64,
    pub duplicate: f64,
    /// Datagrams larger than this are dropped.
    pub mtu: usize,
    /// Each sender's uplink, in bits per second: its datagrams leave one after another, each
    /// taking its size over this rate (a FIFO, as a home uplink), before the latency. `None`:
    /// no limit (every datagram leaves when sent).
    pub uplink_bits_per_s: Option<u64>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            loss: 0.0,
            duplicate: 0.0,
            mtu: 1500,
            uplink_bits_per_s: None,
        }
    }
}

/// What a test's [`VirtualNet::filter`] does with a datagram, before the seeded fate.
pub enum Fate {
    /// On to the seeded fate.
    Pass,
    /// Lost.
    Drop,
    /// Arrives this much later than the network's latency says (no loss, no jitter).
    Late(Duration),
}

/// A test's rule for single datagrams: time since the start, the datagram.
pub type Filter = Box<dyn FnMut(Duration, &Transmit) -> Fate>;

/// DTLS records of a datagram (RFC 6347 §4.1): (content type, epoch, sequence number, first
/// byte of the fragment, the handshake type for handshake records).
pub fn dtls_records(b: &[u8]) -> Vec<(u8, u16, u64, Option<u8>)> {
    let mut out = Vec::new();
    let mut i = 0;
    while i + 13 <= b.len() && (20..=63).contains(&b[i]) {
        let epoch = u16::from_be_bytes([b[i + 3], b[i + 4]]);
        let seq = b[i + 5..i + 11]
            .iter()
            .fold(0u64, |a, x| (a << 8) | u64::from(*x));
        let len = usize::from(u16::from_be_bytes([b[i + 11], b[i + 12]]));
        out.push((b[i], epoch, seq, b.get(i + 13).copied()));
        i += 13 + len;
    }
    out
}

pub struct Packet {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub data: Vec<u8>,
    /// Bytes of a TCP stream (to or from a TURN server), not a datagram.
    pub tcp: bool,
}

/// How a home router maps and filters (RFC 4787 terms).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NatKind {
    /// Endpoint-independent mapping that keeps the port when it can, address-and-port
    /// dependent filtering: Linux `masquerade` with a stateful firewall ("port-restricted cone").
    Cone,
    /// A new port for every destination, address-and-port dependent filtering: Linux
    /// `masquerade random` ("symmetric"). Only a relay gets through two of these.
    Symmetric,
}

/// A home router between one node's private address and the internet.
#[derive(Debug)]
pub struct Nat {
    pub kind: NatKind,
    /// The node's private address (its socket).
    pub inside: SocketAddr,
    /// The router's public IP.
    pub public: std::net::IpAddr,
    /// (private source, destination for symmetric NATs) -> public port.
    out: BTreeMap<(SocketAddr, Option<SocketAddr>), u16>,
    /// public port -> (private address, remotes it sent to: the only ones let back in).
    back: BTreeMap<u16, (SocketAddr, std::collections::BTreeSet<SocketAddr>)>,
    next_port: u16,
    pub translated: u64,
    pub filtered: u64,
}

impl Nat {
    pub fn new(kind: NatKind, inside: SocketAddr, public: std::net::IpAddr) -> Nat {
        Nat {
            kind,
            inside,
            public,
            out: BTreeMap::new(),
            back: BTreeMap::new(),
            next_port: 40000,
            translated: 0,
            filtered: 0,
        }
    }

    /// The router restarts: every mapping is forgotten (conntrack flushed).
    pub fn flush(&mut self) {
        self.out.clear();
        self.back.clear();
        // A restarted symmetric router hands out other ports; a cone one keeps the port.
        self.next_port = self.next_port.wrapping_add(1000).max(40000);
    }

    fn outbound(&mut self, source: SocketAddr, destination: SocketAddr) -> SocketAddr {
        let key = match self.kind {
            NatKind::Cone => (source, None),
            NatKind::Symmetric => (source, Some(destination)),
        };
        let port = match self.out.get(&key) {
            Some(p) => *p,
            None => {
                let port = match self.kind {
                    NatKind::Cone if !self.back.contains_key(&source.port()) => source.port(),
                    _ => {
                        while self.back.contains_key(&self.next_port) {
                            self.next_port = self.next_port.wrapping_add(1).max(40000);
                        }
                        self.next_port
                    }
                };
                self.next_port = self.next_port.wrapping_add(1).max(40000);
                self.out.insert(key, port);
                self.back
                    .insert(port, (source, std::collections::BTreeSet::new()));
                port
            }
        };
        if let Some((_, allowed)) = self.back.get_mut(&port) {
            allowed.insert(destination);
        }
        self.translated += 1;
        SocketAddr::new(self.public, port)
    }

    fn inbound(&mut self, from: SocketAddr, to: SocketAddr) -> Option<SocketAddr> {
        match self.back.get(&to.port()) {
            Some((private, allowed)) if allowed.contains(&from) => Some(*private),
            _ => {
                self.filtered += 1;
                None
            }
        }
    }
}

/// Packets in flight, in an ordered queue keyed by (arrival time, sequence number).
pub struct VirtualNet {
    pub config: NetConfig,
    seed: u64,
    start: Instant,
    queue: BTreeMap<(Instant, u64), Packet>,
    seq: u64,
    instant_index: BTreeMap<(u64, SocketAddr, SocketAddr), u64>,
    partitions: Vec<(SocketAddr, SocketAddr, Instant, Instant)>,
    /// Home routers: a node's datagrams leave through its NAT.
    pub nats: Vec<Nat>,
    pub delivered: u64,
    pub dropped: u64,
    /// A test's rule, asked about every datagram sent.
    pub filter: Option<Filter>,
    /// When each sender's uplink is free again ([`NetConfig::uplink_bits_per_s`]).
    uplink_free: BTreeMap<SocketAddr, Instant>,
}

impl VirtualNet {
    pub fn new(seed: u64, config: NetConfig, start: Instant) -> VirtualNet {
        VirtualNet {
            config,
            seed,
            start,
            queue: BTreeMap::new(),
            seq: 0,
            instant_index: BTreeMap::new(),
            partitions: Vec::new(),
            nats: Vec::new(),
            delivered: 0,
            dropped: 0,
            filter: None,
            uplink_free: BTreeMap::new(),
        }
    }

    pub fn partition(&mut self, a: SocketAddr, b: SocketAddr, from: Instant, until: Instant) {
        self.partitions.push((a, b, from, until));
    }

    pub fn blocked(&self, now: Instant, a: SocketAddr, b: SocketAddr) -> bool {
        self.partitions
            .iter()
            .any(|&(x, y, s, e)| ((x == a && y == b) || (x == b && y == a)) && now >= s && now < e)
    }

    /// Sends a datagram at `now`.
    pub fn send(&mut self, now: Instant, mut t: Transmit) {
        // Out through the sender's home router, if it has one.
        if let Some(nat) = self.nats.iter_mut().find(|n| n.inside == t.source) {
            t.source = nat.outbound(t.source, t.destination);
            // A home's private address is not routed on the internet.
            if self
                .nats
                .iter()
                .any(|n| n.inside.ip() == t.destination.ip())
            {
                self.dropped += 1;
                return;
            }
        }
        // A TCP stream (to a TURN server) is reliable and in order: no loss, no jitter, and
        // no MTU (its frames are cut into segments below us).
        if t.transport == peerpouch::reach::Transport::Tcp {
            self.seq += 1;
            self.queue.insert(
                (now + self.config.latency, self.seq),
                Packet {
                    from: t.source,
                    to: t.destination,
                    data: t.contents,
                    tcp: true,
                },
            );
            return;
        }
        if t.contents.len() > self.config.mtu || self.blocked(now, t.source, t.destination) {
            self.dropped += 1;
            return;
        }
        let since = now - self.start;
        match self.filter.as_mut().map(|f| f(since, &t)) {
            Some(Fate::Drop) => {
                self.dropped += 1;
                return;
            }
            Some(Fate::Late(after)) => {
                self.seq += 1;
                self.queue.insert(
                    (now + self.config.latency + after, self.seq),
                    Packet {
                        from: t.source,
                        to: t.destination,
                        data: t.contents,
                        tcp: false,
                    },
                );
                return;
            }
            Some(Fate::Pass) | None => {}
        }
        // Fate comes from a hash of the packet's identity (seed, send time, addresses, its index
        // among packets of that instant and path), not from a running generator: str0m's packet
        // sizes vary run to run (DTLS signatures), and a packet more or less must not reshuffle
        // the fate of every later one.
        let key = (
            (now - self.start).as_nanos() as u64,
            t.source,
            t.destination,
        );
        let idx = {
            let e = self.instant_index.entry(key).or_insert(0);
            *e += 1;
            *e
        };
        if self.instant_index.len() > 4096 {
            self.instant_index.retain(|k, _| k.0 == key.0);
        }
        let mut fate = Rng::new(
            self.seed
                ^ key.0.wrapping_mul(0x9e37_79b9_7f4a_7c15)
                ^ (u64::from(t.source.port()) << 48)
                ^ (u64::from(t.destination.port()) << 32)
                ^ idx,
        );
        if fate.chance(self.config.loss) {
            self.dropped += 1;
            return;
        }
        let copies = if fate.chance(self.config.duplicate) {
            2
        } else {
            1
        };
        // The sender's uplink: the datagram leaves once those before it have.
        let departs = match self.config.uplink_bits_per_s {
            Some(bps) => {
                let free = self
                    .uplink_free
                    .get(&t.source)
                    .copied()
                    .unwrap_or(now)
                    .max(now);
                let wire = Duration::from_nanos(t.contents.len() as u64 * 8 * 1_000_000_000 / bps);
                self.uplink_free.insert(t.source, free + wire);
                free + wire
            }
            None => now,
        };
        for _ in 0..copies {
            let jitter = if self.config.jitter.is_zero() {
                Duration::ZERO
            } else {
                Duration::from_nanos(fate.below(self.config.jitter.as_nanos() as u64))
            };
            self.seq += 1;
            self.queue.insert(
                (departs + self.config.latency + jitter, self.seq),
                Packet {
                    from: t.source,
                    to: t.destination,
                    data: t.contents.clone(),
                    tcp: false,
                },
            );
        }
    }

    /// When the next packet arrives.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.queue.keys().next().map(|k| k.0)
    }

    /// Packets that arrived by `now` and are not cut off by a partition.
    pub fn arrivals(&mut self, now: Instant) -> Vec<Packet> {
        let due: Vec<(Instant, u64)> = self
            .queue
            .range(..=(now, u64::MAX))
            .map(|(k, _)| *k)
            .collect();
        let mut out = Vec::new();
        for k in due {
            let mut p = self.queue.remove(&k).expect("listed");
            // In through the receiver's home router: only replies to what it sent get in.
            if let Some(nat) = self.nats.iter_mut().find(|n| n.public == p.to.ip()) {
                match nat.inbound(p.from, p.to) {
                    Some(private) => p.to = private,
                    None => {
                        self.dropped += 1;
                        continue;
                    }
                }
            }
            if self.blocked(now, p.from, p.to) {
                self.dropped += 1;
            } else {
                self.delivered += 1;
                out.push(p);
            }
        }
        out
    }
}
