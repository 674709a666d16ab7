//! The node's ICE servers at work: one [`ServerClient`] per configured STUN or TURN server,
//! the candidates they produced, and the wrapping of relayed traffic.
//!
//! A [`Gatherer`] is shared by every link of a node: a UDP socket can hold one TURN allocation
//! per server (the server keys allocations by the client's 5-tuple, RFC 8656 §2.2), so links
//! share the relayed address, as they share the socket. Peers are told apart by their
//! addresses, which is how the node routes datagrams anyway.
//!
//! Clients start when the first link needs candidates ([`Gatherer::start`]) and are released
//! (TURN Refresh with lifetime 0) when the node has no link left ([`Gatherer::release`]), so
//! an idle sharer holds no allocation.
//!
//! ## Inputs, outputs and the drain rule
//! - Commands: [`Gatherer::start`], [`Gatherer::release`], [`Gatherer::send_via_relay`],
//!   [`Gatherer::permit`].
//! - Inputs: [`Gatherer::handle_datagram`], [`Gatherer::handle_stream_data`],
//!   [`Gatherer::handle_stream_closed`], [`Gatherer::handle_timeout`].
//! - Outputs: [`Gatherer::poll_transmit`], [`Gatherer::poll_event`],
//!   [`Gatherer::poll_timeout`].
//!
//! After every input or command, drain `poll_transmit` and `poll_event`.

use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::client::{ClientConfig, ClientEvent, ClientFailure, ServerClient};
use super::config::{ResolvedIceServer, ServerKind, Transport};
use crate::rand::SeededRng;
use crate::session::Transmit;

/// What the gatherer found or lost, for the node to give its sessions.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum GatherEvent {
    /// A server-reflexive address of `base`.
    Srflx {
        /// The address the server saw.
        addr: SocketAddr,
        /// Our socket address it maps.
        base: SocketAddr,
    },
    /// A relayed address on a TURN server.
    Relay {
        /// The address peers send to.
        addr: SocketAddr,
        /// Our socket address the allocation belongs to.
        base: SocketAddr,
        /// How we reach the TURN server.
        transport: Transport,
    },
    /// A datagram a peer sent to one of our relayed addresses: feed it to the sessions with
    /// `relay` as its destination.
    Relayed {
        /// The peer.
        peer: SocketAddr,
        /// Our relayed address.
        relay: SocketAddr,
        /// The datagram.
        data: Vec<u8>,
    },
    /// A server is unusable (it never answered, refused the credentials, lost the allocation).
    Failed {
        /// The server (without credentials).
        server: String,
        /// Why.
        failure: ClientFailure,
        /// The relayed address that went with it, when one was allocated.
        lost_relay: Option<SocketAddr>,
    },
}

/// Where one server stands, for messages to the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServerState {
    /// Still asking.
    Pending,
    /// Answered: the addresses it gave.
    Answered {
        /// Server-reflexive address.
        srflx: Option<SocketAddr>,
        /// Relayed address (TURN).
        relay: Option<SocketAddr>,
    },
    /// Failed.
    Failed(ClientFailure),
    /// Released (no link needed it any more).
    Released,
}

/// One server's state, named for a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerReport {
    /// The URL without credentials (`turn:host:3478?transport=tcp`).
    pub server: String,
    /// STUN or TURN.
    pub kind: ServerKind,
    /// Its address (resolved).
    pub addr: SocketAddr,
    /// What it did.
    pub state: ServerState,
    /// Answers from it that could not be used: undecodable, for no transaction of ours, or
    /// failing their integrity check.
    pub bad_responses: u64,
}

impl fmt::Display for ServerReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.state {
            ServerState::Pending => write!(f, "{} did not answer yet", self.server),
            ServerState::Answered { relay: Some(r), .. } => {
                write!(f, "{} relays at {r}", self.server)
            }
            ServerState::Answered { srflx: Some(s), .. } => {
                write!(f, "{} saw us as {s}", self.server)
            }
            ServerState::Answered { .. } => write!(f, "{} answered", self.server),
            ServerState::Failed(why) => write!(f, "{} failed: {why}", self.server),
            ServerState::Released => write!(f, "{} released", self.server),
        }
    }
}

struct Entry {
    client: ServerClient,
    base: SocketAddr,
    /// Relayed address announced (withdrawn on failure).
    relay: Option<SocketAddr>,
    failed: Option<ClientFailure>,
    /// When it failed: a later link asks the server again after [`RETRY_FAILED_AFTER`].
    failed_at: Option<Instant>,
    released: bool,
}

/// A server that failed is asked again by the next link after this long (it may have been
/// restarted, or the network come back), not sooner (a wrong password stays wrong).
pub const RETRY_FAILED_AFTER: Duration = Duration::from_secs(10);

/// Every ICE server of a node. See the [module docs](self).
pub struct Gatherer {
    servers: Vec<ResolvedIceServer>,
    config: ClientConfig,
    rng: SeededRng,
    entries: Vec<Entry>,
    transmits: VecDeque<Transmit>,
    events: VecDeque<GatherEvent>,
}

impl fmt::Debug for Gatherer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gatherer")
            .field("servers", &self.servers.len())
            .field("active", &self.entries.len())
            .finish_non_exhaustive()
    }
}

impl Gatherer {
    /// A gatherer for `servers`; nothing is sent until [`Gatherer::start`].
    pub fn new(servers: Vec<ResolvedIceServer>, config: ClientConfig, seed: u64) -> Gatherer {
        Gatherer {
            servers,
            config,
            rng: SeededRng::new(seed),
            entries: Vec::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Whether any server is configured.
    pub fn has_servers(&self) -> bool {
        !self.servers.is_empty()
    }

    /// Whether the clients are running (started and not released).
    pub fn is_started(&self) -> bool {
        self.entries.iter().any(|e| !e.released)
    }

    /// Starts a client per server, each from the host address of its family that suits it
    /// best (`hosts`: the node's host candidates). Servers already at work are left alone;
    /// one that failed more than [`RETRY_FAILED_AFTER`] ago is asked again.
    pub fn start(&mut self, now: Instant, hosts: &[SocketAddr]) {
        let mut started = false;
        for server in self.servers.clone() {
            let current = self
                .entries
                .iter()
                .position(|e| e.client.server() == &server && !e.released);
            if let Some(i) = current {
                match self.entries[i].failed_at {
                    Some(at) if now >= at + RETRY_FAILED_AFTER => {
                        self.entries.remove(i);
                    }
                    _ => continue,
                }
            }
            let Some(base) = pick_base(hosts, server.addr) else {
                tracing::info!(server = %server.url, "no local address of the server's family");
                continue;
            };
            let seed = self.rng.next_u64();
            let client = ServerClient::new(server, base, self.config.clone(), seed, now);
            self.entries.push(Entry {
                client,
                base,
                relay: None,
                failed: None,
                failed_at: None,
                released: false,
            });
            started = true;
        }
        if started {
            self.drain(now);
        }
    }

    /// Releases every allocation (TURN Refresh with lifetime 0).
    pub fn release(&mut self, now: Instant) {
        for e in &mut self.entries {
            if !e.released {
                e.released = true;
                e.client.release(now);
            }
        }
        self.drain(now);
    }

    /// Whether `source` is one of our relayed addresses (str0m sends from it: the datagram
    /// must go through the TURN server).
    pub fn is_relay(&self, source: SocketAddr) -> bool {
        self.entries
            .iter()
            .any(|e| e.relay == Some(source) && !e.released)
    }

    /// Sends `data` to `peer` through the allocation at `relay` (permission first).
    pub fn send_via_relay(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        peer: SocketAddr,
        data: &[u8],
    ) {
        if let Some(e) = self
            .entries
            .iter_mut()
            .find(|e| e.relay == Some(relay) && !e.released)
        {
            if let Err(err) = e
                .client
                .permit(now, peer)
                .and_then(|()| e.client.send_to(now, peer, data))
            {
                tracing::debug!(%peer, error = %err, "relayed datagram dropped");
            }
        }
        self.drain(now);
    }

    /// Installs permissions for `peer` on every allocation ahead of traffic (a peer's
    /// candidate arrived), so its first checks are not dropped by the TURN server.
    pub fn permit(&mut self, now: Instant, peer: SocketAddr) {
        for e in &mut self.entries {
            if !e.released && e.relay.map(|r| r.is_ipv4()) == Some(peer.is_ipv4()) {
                if let Err(err) = e.client.permit(now, peer) {
                    tracing::debug!(%peer, error = %err, "no TURN permission");
                }
            }
        }
        self.drain(now);
    }

    /// Whether a UDP datagram from `source` is a server's (consumed by
    /// [`Gatherer::handle_datagram`]).
    pub fn is_server(&self, source: SocketAddr) -> bool {
        self.entries
            .iter()
            .any(|e| e.client.transport() == Transport::Udp && e.client.server().addr == source)
    }

    /// A UDP datagram from a server's address.
    pub fn handle_datagram(&mut self, now: Instant, source: SocketAddr, bytes: &[u8]) {
        // Several clients may talk to one address (`stun:` and `turn:` URLs of one server):
        // the datagram is for the first that takes it (transaction ids tell them apart).
        let mut refused = None;
        for e in &mut self.entries {
            if e.client.transport() == Transport::Udp && e.client.server().addr == source {
                match e.client.handle_datagram(now, bytes) {
                    Ok(()) => {
                        refused = None;
                        break;
                    }
                    Err(err) => refused = Some((e.client.server().url.to_string(), err)),
                }
            }
        }
        if let Some((server, err)) = refused {
            tracing::debug!(%server, error = %err, "datagram from an ICE server refused");
        }
        self.drain(now);
    }

    /// Bytes from the TCP stream to `server`.
    pub fn handle_stream_data(&mut self, now: Instant, server: SocketAddr, bytes: &[u8]) {
        for e in &mut self.entries {
            if e.client.transport() == Transport::Tcp && e.client.server().addr == server {
                if let Err(err) = e.client.handle_stream_data(now, bytes) {
                    tracing::debug!(server = %e.client.server().url, error = %err, "stream from an ICE server refused");
                }
            }
        }
        self.drain(now);
    }

    /// The TCP stream to `server` failed or closed.
    pub fn handle_stream_closed(&mut self, now: Instant, server: SocketAddr, why: String) {
        for e in &mut self.entries {
            if e.client.transport() == Transport::Tcp && e.client.server().addr == server {
                e.client.handle_stream_closed(now, why.clone());
            }
        }
        self.drain(now);
    }

    /// Runs the clients' timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        for e in &mut self.entries {
            if e.client.poll_timeout().is_some_and(|t| t <= now) {
                e.client.handle_timeout(now);
            }
        }
        self.drain(now);
    }

    /// When [`Gatherer::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter_map(|e| e.client.poll_timeout())
            .min()
    }

    /// The next datagram (or TCP bytes) for a server.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<GatherEvent> {
        self.events.pop_front()
    }

    /// Where every server stands.
    pub fn reports(&self) -> Vec<ServerReport> {
        self.entries
            .iter()
            .map(|e| ServerReport {
                server: e.client.server().url.to_string(),
                kind: e.client.server().url.kind,
                addr: e.client.server().addr,
                bad_responses: {
                    let s = e.client.stats();
                    s.malformed + s.unknown_transactions + s.bad_integrity
                },
                state: match (&e.failed, e.released) {
                    (Some(f), _) => ServerState::Failed(f.clone()),
                    (None, true) => ServerState::Released,
                    (None, false) => match (e.client.mapped_addr(), e.client.relay_addr()) {
                        (None, None) => ServerState::Pending,
                        (srflx, relay) => ServerState::Answered { srflx, relay },
                    },
                },
            })
            .collect()
    }

    /// Whether every TURN server failed (nothing will ever relay for us).
    pub fn all_relays_failed(&self) -> Option<ClientFailure> {
        let turn: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.client.server().url.kind == ServerKind::Turn && !e.released)
            .collect();
        if turn.is_empty() || turn.iter().any(|e| e.failed.is_none()) {
            return None;
        }
        turn.iter().find_map(|e| e.failed.clone())
    }

    fn drain(&mut self, now: Instant) {
        for e in &mut self.entries {
            let server = e.client.server().addr;
            let transport = e.client.transport();
            while let Some(bytes) = e.client.poll_transmit() {
                self.transmits.push_back(Transmit {
                    source: e.base,
                    destination: server,
                    transport,
                    contents: bytes,
                });
            }
            while let Some(ev) = e.client.poll_event() {
                match ev {
                    ClientEvent::Mapped { srflx } => self.events.push_back(GatherEvent::Srflx {
                        addr: srflx,
                        base: e.base,
                    }),
                    ClientEvent::Allocated { relay, srflx, .. } => {
                        e.relay = Some(relay);
                        if let Some(s) = srflx {
                            self.events.push_back(GatherEvent::Srflx {
                                addr: s,
                                base: e.base,
                            });
                        }
                        self.events.push_back(GatherEvent::Relay {
                            addr: relay,
                            base: e.base,
                            transport,
                        });
                    }
                    ClientEvent::Relayed { peer, data } => {
                        if let Some(relay) = e.relay {
                            self.events
                                .push_back(GatherEvent::Relayed { peer, relay, data });
                        }
                    }
                    ClientEvent::Failed(failure) => {
                        tracing::info!(server = %e.client.server().url, %failure, "ICE server failed");
                        let lost_relay = e.relay.take();
                        e.failed = Some(failure.clone());
                        e.failed_at = Some(now);
                        self.events.push_back(GatherEvent::Failed {
                            server: e.client.server().url.to_string(),
                            failure,
                            lost_relay,
                        });
                    }
                    ClientEvent::PermissionFailed { peer, failure } => {
                        tracing::debug!(%peer, %failure, "TURN permission refused");
                    }
                    _ => {}
                }
            }
        }
        // Forget released clients once they have said goodbye.
        self.entries
            .retain(|e| !(e.released && e.client.poll_timeout().is_none()));
    }
}

/// The host address to query a server from: one of its family, loopback only for a loopback
/// server (a server on the internet never sees our loopback address), else the first other.
fn pick_base(hosts: &[SocketAddr], server: SocketAddr) -> Option<SocketAddr> {
    let same: Vec<&SocketAddr> = hosts
        .iter()
        .filter(|h| h.is_ipv4() == server.is_ipv4())
        .collect();
    if server.ip().is_loopback() {
        if let Some(h) = same.iter().find(|h| h.ip().is_loopback()) {
            return Some(**h);
        }
    }
    same.iter()
        .find(|h| !h.ip().is_loopback())
        .or(same.first())
        .map(|h| **h)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_is_of_the_servers_family_and_scope() {
        let hosts: Vec<SocketAddr> = vec![
            "127.0.0.1:5000".parse().unwrap(),
            "10.0.1.2:5000".parse().unwrap(),
            "[fd00::2]:5001".parse().unwrap(),
        ];
        assert_eq!(
            pick_base(&hosts, "127.0.0.1:3478".parse().unwrap()),
            Some(hosts[0])
        );
        assert_eq!(
            pick_base(&hosts, "198.51.100.20:3478".parse().unwrap()),
            Some(hosts[1])
        );
        assert_eq!(
            pick_base(&hosts, "[2001:db8::1]:3478".parse().unwrap()),
            Some(hosts[2])
        );
        assert_eq!(pick_base(&hosts[..2], "[::1]:3478".parse().unwrap()), None);
    }
}
