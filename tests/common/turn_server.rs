//! A minimal TURN server (RFC 8656) for tests, sans-IO like the client: datagrams (or TCP
//! bytes) in, datagrams out, time as a parameter, nonces from a seed.
//!
//! It answers Binding, Allocate with the long-term credential challenge (401 with REALM and
//! NONCE, 438 for an old nonce), Refresh, CreatePermission, ChannelBind, Send indications and
//! ChannelData, and relays peer traffic to the relayed addresses with permission filtering.
//! Knobs ([`Knobs`]) make it misbehave: a stale nonce once, quota reached, dropped responses.
//! It is also meant as the relay of the network simulation: every output names its source and
//! destination.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use peerpouch::reach::stun::{
    long_term_key, verify_integrity, Attribute, ChannelData, Class, Frame, Message, Method,
    StreamDeframer, TransactionId,
};

use super::Rng;

/// One datagram (or, for a TCP client, one stream write) the server sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Out {
    /// Its source: the server's address (to a client) or a relayed address (to a peer).
    pub from: SocketAddr,
    /// Its destination.
    pub to: SocketAddr,
    /// The bytes.
    pub bytes: Vec<u8>,
}

/// Ways to make the server misbehave.
#[derive(Clone, Debug)]
pub struct Knobs {
    /// Answer the next authenticated request with 438 Stale Nonce (and a new nonce), once.
    pub stale_nonce_once: bool,
    /// Answer every Allocate with 486 Allocation Quota Reached.
    pub quota_reached: bool,
    /// Drop this many of the next responses.
    pub drop_responses: u32,
    /// Answer nothing at all.
    pub silent: bool,
    /// LIFETIME granted to allocations (seconds).
    pub lifetime: u32,
    /// Add FINGERPRINT to responses.
    pub fingerprint: bool,
    /// Relay peer data even without a permission (a hostile server).
    pub ignore_permissions: bool,
    /// Refuse permissions and channels for this peer IP with 403 (as coturn does for loopback
    /// peers without --allow-loopback-peers).
    pub forbidden_peer: Option<IpAddr>,
}

impl Default for Knobs {
    fn default() -> Self {
        Knobs {
            stale_nonce_once: false,
            quota_reached: false,
            drop_responses: 0,
            silent: false,
            lifetime: 600,
            fingerprint: true,
            ignore_permissions: false,
            forbidden_peer: None,
        }
    }
}

/// What the server did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// Requests received (retransmissions included).
    pub requests: u64,
    /// Allocations created.
    pub allocations: u64,
    /// Refresh requests that succeeded (releases included).
    pub refreshes: u64,
    /// CreatePermission requests that succeeded.
    pub permissions: u64,
    /// ChannelBind requests that succeeded.
    pub channel_binds: u64,
    /// Datagrams relayed from clients to peers.
    pub relayed_to_peers: u64,
    /// Datagrams relayed from peers to clients.
    pub relayed_to_clients: u64,
    /// ChannelData messages among them (both ways).
    pub channel_data: u64,
    /// Datagrams dropped for lack of a permission.
    pub dropped_unpermitted: u64,
    /// Responses dropped by the knob.
    pub dropped_responses: u64,
}

#[derive(Clone, Debug)]
struct Allocation {
    relay: SocketAddr,
    key: [u8; 16],
    expires: Instant,
    permissions: BTreeMap<IpAddr, Instant>,
    channels: BTreeMap<u16, (SocketAddr, Instant)>,
    tcp: bool,
}

/// The server.
pub struct TurnServer {
    /// Its address (where clients send).
    pub addr: SocketAddr,
    relay_ip: IpAddr,
    realm: String,
    users: BTreeMap<String, String>,
    rng: Rng,
    nonce: String,
    next_port: u16,
    allocations: BTreeMap<SocketAddr, Allocation>,
    by_relay: BTreeMap<SocketAddr, SocketAddr>,
    /// Responses by (client, transaction id), for retransmitted requests (RFC 8489 §6.3.1).
    cache: BTreeMap<(SocketAddr, TransactionId), Vec<u8>>,
    cache_order: VecDeque<(SocketAddr, TransactionId)>,
    streams: BTreeMap<SocketAddr, StreamDeframer>,
    /// Misbehaviour.
    pub knobs: Knobs,
    /// What happened.
    pub counters: Counters,
}

impl TurnServer {
    /// A server at `addr` relaying from `relay_ip`, with `users` (name, password).
    pub fn new(
        addr: SocketAddr,
        relay_ip: IpAddr,
        realm: &str,
        users: &[(&str, &str)],
        seed: u64,
    ) -> TurnServer {
        let mut rng = Rng::new(seed);
        let nonce = format!("{:016x}", rng.next_u64());
        TurnServer {
            addr,
            relay_ip,
            realm: realm.to_string(),
            users: users
                .iter()
                .map(|(u, p)| (u.to_string(), p.to_string()))
                .collect(),
            rng,
            nonce,
            next_port: 49152,
            allocations: BTreeMap::new(),
            by_relay: BTreeMap::new(),
            cache: BTreeMap::new(),
            cache_order: VecDeque::new(),
            streams: BTreeMap::new(),
            knobs: Knobs::default(),
            counters: Counters::default(),
        }
    }

    /// Whether `addr` is one of the relayed addresses of a live allocation.
    pub fn is_relay(&self, addr: SocketAddr) -> bool {
        self.by_relay.contains_key(&addr)
    }

    /// Live allocations.
    pub fn allocation_count(&self) -> usize {
        self.allocations.len()
    }

    /// A new nonce: requests with the old one get 438.
    pub fn rotate_nonce(&mut self) {
        self.nonce = format!("{:016x}", self.rng.next_u64());
    }

    /// TCP bytes from a client (any chunking); outputs to TCP clients are stream bytes.
    pub fn handle_stream_from_client(
        &mut self,
        now: Instant,
        client: SocketAddr,
        bytes: &[u8],
    ) -> Vec<Out> {
        let mut out = Vec::new();
        let mut rest = bytes;
        loop {
            let d = self.streams.entry(client).or_default();
            let n = d.push(rest);
            rest = &rest[n..];
            let mut frames = Vec::new();
            loop {
                match d.pop() {
                    Ok(Some(f)) => frames.push(f),
                    Ok(None) => break,
                    Err(_) => return out, // a broken stream: a real server closes it
                }
            }
            for f in frames {
                let b = match f {
                    Frame::Stun(b) => b,
                    Frame::ChannelData(cd) => cd.encode(false).unwrap_or_default(),
                };
                out.extend(self.handle(now, client, &b, true));
            }
            if rest.is_empty() {
                return out;
            }
        }
    }

    /// One UDP datagram from a client.
    pub fn handle_from_client(
        &mut self,
        now: Instant,
        client: SocketAddr,
        bytes: &[u8],
    ) -> Vec<Out> {
        self.handle(now, client, bytes, false)
    }

    /// A datagram from `peer` to the relayed address `relay`.
    pub fn handle_from_peer(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        relay: SocketAddr,
        bytes: &[u8],
    ) -> Vec<Out> {
        self.expire(now);
        let Some(&client) = self.by_relay.get(&relay) else {
            return vec![];
        };
        let Some(a) = self.allocations.get(&client) else {
            return vec![];
        };
        let permitted = a.permissions.get(&peer.ip()).is_some_and(|&t| t > now);
        if !permitted && !self.knobs.ignore_permissions {
            self.counters.dropped_unpermitted += 1;
            return vec![];
        }
        self.counters.relayed_to_clients += 1;
        let channel = a
            .channels
            .iter()
            .find(|(_, (p, t))| *p == peer && *t > now)
            .map(|(c, _)| *c);
        let bytes = match channel {
            Some(channel) => {
                self.counters.channel_data += 1;
                ChannelData {
                    channel,
                    data: bytes.to_vec(),
                }
                .encode(a.tcp)
                .unwrap()
            }
            None => Message::new(Method::DATA, Class::Indication, self.tid())
                .with(Attribute::XorPeerAddress(peer))
                .with(Attribute::Data(bytes.to_vec()))
                .encode()
                .unwrap(),
        };
        vec![Out {
            from: self.addr,
            to: client,
            bytes,
        }]
    }

    fn tid(&mut self) -> TransactionId {
        let mut t = [0u8; 12];
        t[..8].copy_from_slice(&self.rng.next_u64().to_be_bytes());
        t[8..].copy_from_slice(&self.rng.next_u64().to_be_bytes()[..4]);
        t
    }

    fn expire(&mut self, now: Instant) {
        let dead: Vec<SocketAddr> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.expires <= now)
            .map(|(c, _)| *c)
            .collect();
        for c in dead {
            if let Some(a) = self.allocations.remove(&c) {
                self.by_relay.remove(&a.relay);
            }
        }
    }

    fn handle(&mut self, now: Instant, client: SocketAddr, bytes: &[u8], tcp: bool) -> Vec<Out> {
        self.expire(now);
        if self.knobs.silent {
            return vec![];
        }
        if peerpouch::reach::stun::is_channel_data(bytes) {
            let Ok(cd) = ChannelData::decode(bytes) else {
                return vec![];
            };
            let Some(a) = self.allocations.get(&client) else {
                return vec![];
            };
            let Some(&(peer, until)) = a.channels.get(&cd.channel) else {
                return vec![];
            };
            if until <= now || a.permissions.get(&peer.ip()).is_none_or(|&t| t <= now) {
                self.counters.dropped_unpermitted += 1;
                return vec![];
            }
            self.counters.relayed_to_peers += 1;
            self.counters.channel_data += 1;
            return vec![Out {
                from: a.relay,
                to: peer,
                bytes: cd.data,
            }];
        }
        let Ok(m) = Message::decode(bytes) else {
            return vec![];
        };
        match m.class {
            Class::Indication if m.method == Method::SEND => {
                let (Some(peer), Some(data)) = (m.peer_address(), m.data()) else {
                    return vec![];
                };
                let Some(a) = self.allocations.get(&client) else {
                    return vec![];
                };
                if a.permissions.get(&peer.ip()).is_none_or(|&t| t <= now) {
                    self.counters.dropped_unpermitted += 1;
                    return vec![];
                }
                self.counters.relayed_to_peers += 1;
                vec![Out {
                    from: a.relay,
                    to: peer,
                    bytes: data.to_vec(),
                }]
            }
            Class::Request => {
                self.counters.requests += 1;
                let key = (client, m.transaction_id);
                let response = match self.cache.get(&key) {
                    Some(r) => r.clone(),
                    None => {
                        let r = self.respond(now, client, bytes, &m, tcp);
                        self.cache.insert(key, r.clone());
                        self.cache_order.push_back(key);
                        if self.cache_order.len() > 256 {
                            if let Some(old) = self.cache_order.pop_front() {
                                self.cache.remove(&old);
                            }
                        }
                        r
                    }
                };
                if self.knobs.drop_responses > 0 {
                    self.knobs.drop_responses -= 1;
                    self.counters.dropped_responses += 1;
                    return vec![];
                }
                vec![Out {
                    from: self.addr,
                    to: client,
                    bytes: response,
                }]
            }
            _ => vec![],
        }
    }

    fn error(&self, m: &Message, code: u16, reason: &str, challenge: bool) -> Vec<u8> {
        let mut r =
            Message::new(m.method, Class::Error, m.transaction_id).with(Attribute::ErrorCode {
                code,
                reason: reason.into(),
            });
        if challenge {
            r = r
                .with(Attribute::Realm(self.realm.clone()))
                .with(Attribute::Nonce(self.nonce.clone()));
        }
        r.encode_signed(None, self.knobs.fingerprint).unwrap()
    }

    /// The long-term credential check (RFC 8489 §9.2.4): the key, or the error response.
    fn authenticate(&mut self, bytes: &[u8], m: &Message) -> Result<[u8; 16], Vec<u8>> {
        if !m.has_integrity() {
            return Err(self.error(m, 401, "Unauthorized", true));
        }
        let (Some(user), Some(realm), Some(nonce)) = (m.username(), m.realm(), m.nonce()) else {
            return Err(self.error(m, 400, "Bad Request", false));
        };
        if self.knobs.stale_nonce_once {
            self.knobs.stale_nonce_once = false;
            self.rotate_nonce();
            return Err(self.error(m, 438, "Stale Nonce", true));
        }
        if nonce != self.nonce || realm != self.realm {
            return Err(self.error(m, 438, "Stale Nonce", true));
        }
        let Some(pass) = self.users.get(user) else {
            return Err(self.error(m, 401, "Unauthorized", true));
        };
        let key = long_term_key(user, &self.realm, pass);
        if !verify_integrity(bytes, &key) {
            return Err(self.error(m, 401, "Unauthorized", true));
        }
        Ok(key)
    }

    fn success(&self, m: &Message, attrs: Vec<Attribute>, key: &[u8; 16]) -> Vec<u8> {
        let mut r = Message::new(m.method, Class::Success, m.transaction_id);
        r.attributes = attrs;
        r.encode_signed(Some(key), self.knobs.fingerprint).unwrap()
    }

    fn respond(
        &mut self,
        now: Instant,
        client: SocketAddr,
        bytes: &[u8],
        m: &Message,
        tcp: bool,
    ) -> Vec<u8> {
        if m.method == Method::BINDING {
            return Message::new(Method::BINDING, Class::Success, m.transaction_id)
                .with(Attribute::XorMappedAddress(client))
                .encode_signed(None, self.knobs.fingerprint)
                .unwrap();
        }
        let key = match self.authenticate(bytes, m) {
            Ok(k) => k,
            Err(r) => return r,
        };
        match m.method {
            Method::ALLOCATE => {
                if self.allocations.contains_key(&client) {
                    return self.error(m, 437, "Allocation Mismatch", false);
                }
                if m.requested_transport() != Some(17) {
                    return self.error(m, 442, "Unsupported Transport Protocol", false);
                }
                if self.knobs.quota_reached {
                    return self.error(m, 486, "Allocation Quota Reached", false);
                }
                let relay = SocketAddr::new(self.relay_ip, self.next_port);
                self.next_port = self.next_port.wrapping_add(1).max(49152);
                let lifetime = self.knobs.lifetime;
                self.allocations.insert(
                    client,
                    Allocation {
                        relay,
                        key,
                        expires: now + Duration::from_secs(u64::from(lifetime.min(3600))),
                        permissions: BTreeMap::new(),
                        channels: BTreeMap::new(),
                        tcp,
                    },
                );
                self.by_relay.insert(relay, client);
                self.counters.allocations += 1;
                self.success(
                    m,
                    vec![
                        Attribute::XorRelayedAddress(relay),
                        Attribute::Lifetime(lifetime),
                        Attribute::XorMappedAddress(client),
                    ],
                    &key,
                )
            }
            Method::REFRESH => {
                let Some(a) = self.allocations.get_mut(&client) else {
                    return self.error(m, 437, "Allocation Mismatch", false);
                };
                let _ = a.key;
                let lifetime = m.lifetime().unwrap_or(600).min(3600);
                self.counters.refreshes += 1;
                if lifetime == 0 {
                    if let Some(a) = self.allocations.remove(&client) {
                        self.by_relay.remove(&a.relay);
                    }
                } else {
                    a.expires = now + Duration::from_secs(u64::from(lifetime));
                }
                self.success(m, vec![Attribute::Lifetime(lifetime)], &key)
            }
            Method::CREATE_PERMISSION => {
                let Some(a) = self.allocations.get_mut(&client) else {
                    return self.error(m, 437, "Allocation Mismatch", false);
                };
                let peers: Vec<SocketAddr> = m
                    .attributes
                    .iter()
                    .filter_map(|x| match x {
                        Attribute::XorPeerAddress(p) => Some(*p),
                        _ => None,
                    })
                    .collect();
                if peers.is_empty() {
                    return self.error(m, 400, "Bad Request", false);
                }
                if peers
                    .iter()
                    .any(|p| Some(p.ip()) == self.knobs.forbidden_peer)
                {
                    return self.error(m, 403, "Forbidden", false);
                }
                for p in peers {
                    a.permissions.insert(p.ip(), now + Duration::from_secs(300));
                }
                self.counters.permissions += 1;
                self.success(m, vec![], &key)
            }
            Method::CHANNEL_BIND => {
                let Some(a) = self.allocations.get_mut(&client) else {
                    return self.error(m, 437, "Allocation Mismatch", false);
                };
                let (Some(channel), Some(peer)) = (m.channel_number(), m.peer_address()) else {
                    return self.error(m, 400, "Bad Request", false);
                };
                if Some(peer.ip()) == self.knobs.forbidden_peer {
                    return self.error(m, 403, "Forbidden", false);
                }
                let conflict = a.channels.iter().any(|(c, (p, _))| {
                    (*c == channel && *p != peer) || (*c != channel && *p == peer)
                });
                if conflict {
                    return self.error(m, 400, "Bad Request", false);
                }
                a.channels
                    .insert(channel, (peer, now + Duration::from_secs(600)));
                a.permissions
                    .insert(peer.ip(), now + Duration::from_secs(300));
                self.counters.channel_binds += 1;
                self.success(m, vec![], &key)
            }
            _ => self.error(m, 400, "Bad Request", false),
        }
    }
}
