//! STUN and TURN servers at work for every link: the candidates they give (server-reflexive
//! and relayed), datagrams relayed to and from them, and giving the allocations back.

use std::net::SocketAddr;
use std::time::Instant;

use super::events::LinkCloseReason;
use super::{LinkId, Node};
use crate::reach::gather::{GatherEvent, ServerReport, ServerState};
use crate::reach::IceTransportPolicy;

impl Node {
    /// A local address new sessions offer as a host candidate (the runtime's socket).
    pub fn add_local_candidate(&mut self, addr: SocketAddr) {
        if !self.addrs.contains(&addr) {
            self.addrs.push(addr);
        }
    }

    /// Bytes from the runtime's TCP stream to `server` (a TURN server reached over TCP).
    pub fn handle_stream_data(&mut self, now: Instant, server: SocketAddr, bytes: &[u8]) {
        self.gatherer.handle_stream_data(now, server, bytes);
        self.pump(now);
    }

    /// The runtime's TCP stream to `server` could not connect, or closed.
    pub fn handle_stream_closed(&mut self, now: Instant, server: SocketAddr, why: String) {
        self.gatherer.handle_stream_closed(now, server, why);
        self.pump(now);
    }

    /// Where each ICE server stands (for the user: which answered, which failed and why).
    pub fn ice_servers(&self) -> Vec<ServerReport> {
        self.gatherer.reports()
    }

    /// Gives back every TURN allocation now (a runtime shutting down calls it; otherwise a
    /// node does it [`ICE_IDLE_RELEASE`](super::ICE_IDLE_RELEASE) after its last link closed).
    pub fn release_ice_servers(&mut self, now: Instant) {
        self.gatherer.release(now);
        self.srflx.clear();
        self.relays.clear();
        self.ice_idle_since = None;
        while let Some(t) = self.gatherer.poll_transmit() {
            self.transmits.push_back(t);
        }
    }

    /// Moves the ICE servers' output: datagrams to the servers, candidates to the sessions,
    /// relayed datagrams to the session they are for.
    pub(super) fn pump_gatherer(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while let Some(t) = self.gatherer.poll_transmit() {
            moved = true;
            self.transmits.push_back(t);
        }
        let all = self.config.ice_transport_policy == IceTransportPolicy::All;
        while let Some(e) = self.gatherer.poll_event() {
            moved = true;
            match e {
                GatherEvent::Srflx { addr, base } => {
                    if self.srflx.contains(&(addr, base)) {
                        continue;
                    }
                    self.srflx.push((addr, base));
                    if all {
                        for l in self.links.values_mut().filter(|l| !l.closed) {
                            if let Err(e) = l.session.add_srflx_candidate(now, addr, base) {
                                tracing::debug!(%addr, error = %e, "srflx candidate refused");
                            }
                        }
                    }
                }
                GatherEvent::Relay {
                    addr,
                    base,
                    transport,
                } => {
                    self.relays.push((addr, base, transport));
                    for l in self.links.values_mut().filter(|l| !l.closed) {
                        if let Err(e) = l.session.add_relay_candidate(now, addr, base, transport) {
                            tracing::debug!(%addr, error = %e, "relay candidate refused");
                        }
                    }
                }
                GatherEvent::Relayed { peer, relay, data } => {
                    self.deliver(now, peer, relay, &data);
                }
                GatherEvent::Failed { lost_relay, .. } => {
                    if let Some(r) = lost_relay {
                        self.relays.retain(|(a, _, _)| *a != r);
                    }
                    // Relay-only and no relay will ever come: links still connecting fail now,
                    // with the servers' reasons, instead of at the connect timeout.
                    if !all {
                        if let Some(why) = self.gatherer.all_relays_failed() {
                            let connecting: Vec<LinkId> = self
                                .links
                                .iter()
                                .filter(|(_, l)| !l.closed && !l.session.is_open())
                                .map(|(k, _)| k.clone())
                                .collect();
                            for k in connecting {
                                let why = LinkCloseReason::NoRelay(why.to_string());
                                self.close_link(now, &k, why);
                            }
                        }
                    }
                }
            }
        }
        moved
    }

    /// Why a link found no path: what each side gathered and what the ICE servers said.
    pub(super) fn no_path_reason(&self, link: &LinkId) -> String {
        let mut s = String::from("no path to the peer (ICE found no working candidate pair)");
        if let Some(l) = self.links.get(link) {
            let g = l.session.gathered();
            s.push_str(&format!(
                "; we offered host {}, srflx {}, relay {}; the peer offered host {}, srflx {}, relay {}",
                g.local_host, g.local_srflx, g.local_relay, g.remote_host, g.remote_srflx, g.remote_relay
            ));
        }
        let reports = self.gatherer.reports();
        if reports.is_empty() {
            s.push_str("; no ICE servers were given");
        } else {
            let said: Vec<String> = reports.iter().map(|r| r.to_string()).collect();
            s.push_str(&format!("; {}", said.join("; ")));
        }
        if !reports
            .iter()
            .any(|r| matches!(r.state, ServerState::Answered { relay: Some(_), .. }))
        {
            s.push_str(
                "; behind NATs that map each destination differently only a relay works: \
                 add a TURN server (--ice-server turn:HOST:3478?transport=udp, or \
                 ?transport=tcp where UDP is blocked)",
            );
        }
        s
    }
}
