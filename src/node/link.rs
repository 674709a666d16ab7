//! Links: one WebRTC session each, with the RPC end that runs over its channel (a server for
//! links to our shares, a client for links we opened), and the pumping that moves each link's
//! signals, datagrams, frames, store requests and events.

use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::time::Instant;

use serde_json::Value;

use super::events::LinkCloseReason;
use super::link_rpc::{LinkRpc, RpcOutput};
use super::{DbId, LinkId, Node, NodeConfig, NodeError, NodeEvent, ReplicationId, StoreOrigin};
use crate::ops::{ChangesRequest, Request};
use crate::reach::gather::Gatherer;
use crate::reach::IceTransportPolicy;
use crate::replicate::RequestId;
use crate::rpc::{CallId, ClientConfig, ClientEvent, RpcClient, RpcServer, ServerConfig};
use crate::session::{CloseReason, Session, SessionEvent, SessionRole, Transmit};
use crate::signal::SignalData;

pub(super) struct Link {
    pub(super) session: Session,
    pub(super) rpc: Option<LinkRpc>,
    /// The shared database, on links to our shares.
    pub(super) db: Option<DbId>,
    key: Option<Vec<u8>>,
    pub(super) ready: bool,
    pub(super) closed: bool,
    /// Calls replications made (by replication and request id); the others are the app's.
    pub(super) rep_calls: BTreeMap<CallId, (ReplicationId, RequestId)>,
    /// Creation order: when several sessions accept a datagram, the newest gets it (a peer
    /// that restarted on the same address replaces its old, dead session).
    pub(super) created: u64,
    /// The fingerprint the app accepted this peer on: a handshake with another certificate
    /// (a later offer in the same signalling) closes the link.
    pub(super) pinned: Option<String>,
}

impl Link {
    /// Whether [`Node::pump_link`] would find anything to move.
    pub(super) fn has_work(&self) -> bool {
        self.session.has_output() || self.rpc.as_ref().is_some_and(LinkRpc::has_output)
    }

    /// Runs the session's and the RPC's timers.
    pub(super) fn handle_timeout(&mut self, now: Instant) {
        if self.session.poll_timeout().is_some_and(|t| t <= now) {
            self.session.handle_timeout(now);
        }
        if let Some(rpc) = self.rpc.as_mut() {
            rpc.handle_timeout(now);
        }
    }

    /// The session's deadline and the RPC's.
    pub(super) fn poll_timeouts(&self) -> [Option<Instant>; 2] {
        [
            self.session.poll_timeout(),
            self.rpc.as_ref().and_then(LinkRpc::poll_timeout),
        ]
    }

    /// The channel opened: checks the peer's certificate against the one accepted, then
    /// starts the RPC end. `read_only` and `db_uuid` describe our share, on links to one.
    fn channel_opened(
        &mut self,
        now: Instant,
        config: &NodeConfig,
        link: &LinkId,
        read_only: bool,
        db_uuid: Option<String>,
    ) -> Result<(), LinkCloseReason> {
        let local = self.session.local_fingerprint();
        let remote = self.session.remote_fingerprint().unwrap_or_default();
        if let Some(pinned) = &self.pinned {
            if crate::fingerprint::parse(&remote).ok().as_ref() != Some(pinned) {
                return Err(LinkCloseReason::OtherCertificate {
                    remote,
                    accepted: pinned.clone(),
                });
            }
        }
        // Frames as large as the channel takes, but at most half the send queue: with one
        // frame in flight the sender idles until the peer's delayed SACK (up to 200 ms) for
        // its last packet; with two it keeps streaming. The hellos settle on the smaller of
        // both sides' offers.
        let frame = self
            .session
            .max_message_size()
            .min(config.session.send_buffer / 2);
        self.rpc = Some(match &self.db {
            Some(_) => {
                let mut c = ServerConfig::new(link.share.clone(), local, remote);
                c.access_key = self.key.clone();
                c.hello_timeout = config.rpc_hello_timeout;
                c.read_only = read_only;
                c.frame_size = frame;
                c.compress = config.rpc_compress;
                c.db_uuid = db_uuid;
                LinkRpc::Server(RpcServer::new(c, now))
            }
            None => {
                let mut c = ClientConfig::new(link.share.clone(), link.peer.clone(), local, remote);
                c.access_key = self.key.clone();
                c.hello_timeout = config.rpc_hello_timeout;
                c.request_timeout = config.rpc_request_timeout;
                c.frame_size = frame;
                c.compress = config.rpc_compress;
                LinkRpc::Client(RpcClient::new(c, now))
            }
        });
        Ok(())
    }

    /// Frames out, as far as the channel takes them.
    fn send_frames(&mut self, now: Instant) -> Result<bool, LinkCloseReason> {
        let mut moved = false;
        let Some(rpc) = self.rpc.as_mut() else {
            return Ok(false);
        };
        while let Some(f) = rpc.peek_frame() {
            match self.session.send(now, true, f) {
                Ok(true) => {
                    moved = true;
                    rpc.advance_frame();
                }
                Ok(false) => break,
                Err(e) => return Err(LinkCloseReason::SendFailed(e)),
            }
        }
        Ok(moved)
    }

    /// The session's datagrams out: through our TURN relay when they leave from a relayed
    /// address, else to the runtime's socket. Whether there were any.
    fn drain_transmits(
        &mut self,
        now: Instant,
        gatherer: &mut Gatherer,
        transmits: &mut VecDeque<Transmit>,
    ) -> bool {
        let mut moved = false;
        while let Some(t) = self.session.poll_transmit() {
            moved = true;
            if gatherer.is_relay(t.source) {
                gatherer.send_via_relay(now, t.source, t.destination, &t.contents);
            } else {
                transmits.push_back(t);
            }
        }
        moved
    }
}

/// Entries a [`Node`] keeps per link, peer or request ([`Node::footprint`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Footprint {
    /// Links, closed ones not yet dropped included.
    pub links: usize,
    /// Datagram routes (ICE ufrags, address pairs) to links.
    pub routes: usize,
    /// Signalling connections the hub machine keeps (peers of our shares, shares we open).
    pub connections: usize,
    /// Peers of `ask` shares whose offer has not arrived.
    pub awaiting_offer: usize,
    /// Store requests queued or awaiting their result.
    pub store_requests: usize,
    /// Datagrams and events not yet polled.
    pub queued: usize,
}

impl Node {
    /// Links and whether each is ready.
    pub fn links(&self) -> Vec<(LinkId, bool)> {
        self.links
            .iter()
            .filter(|(_, l)| !l.closed)
            .map(|(k, l)| (k.clone(), l.ready))
            .collect()
    }

    /// The certificate fingerprint of the peer on `link` (canonical), once its SDP is known.
    pub fn remote_fingerprint(&mut self, link: &LinkId) -> Option<String> {
        let l = self.links.get_mut(link)?;
        crate::fingerprint::parse(&l.session.remote_fingerprint()?).ok()
    }

    /// The identity of the database behind a link we opened, as its server's hello gave it
    /// (`None` before the link is ready, for an older sharer, or for links to our shares).
    pub fn link_db_uuid(&self, link: &LinkId) -> Option<&str> {
        self.links
            .get(link)?
            .rpc
            .as_ref()?
            .server_hello()?
            .db_uuid
            .as_deref()
    }

    /// Links kept now, to our shares and to others' (connecting or open, and peers waiting
    /// for an answer): what [`NodeConfig::max_links`] bounds.
    pub fn link_count(&self) -> usize {
        self.links_kept(None, None)
    }

    /// What the node keeps per link, peer and request in flight: all zero on a node with no
    /// link, replication or request left, however many peers came and went before.
    ///
    /// ```
    /// # use peerpouch::node::{Footprint, Node, NodeConfig};
    /// let node = Node::new(NodeConfig::default(), 1, std::time::Instant::now(), 0);
    /// assert_eq!(node.footprint(), Footprint::default());
    /// ```
    pub fn footprint(&self) -> Footprint {
        Footprint {
            links: self.links.len(),
            routes: self.router.stats().routes as usize,
            connections: self.hub.connection_count(),
            awaiting_offer: self.awaiting_offer.len(),
            store_requests: self.store_out.len() + self.store_for.len(),
            queued: self.transmits.len() + self.events.len(),
        }
    }

    /// Opens a link to `share`; [`NodeEvent::LinkReady`] follows when it can be used.
    ///
    /// # Errors
    /// [`HubError::BadId`](crate::hub::HubError::BadId) for a malformed share id;
    /// [`NodeError::TooManyLinks`] at [`NodeConfig::max_links`].
    pub fn open(
        &mut self,
        now: Instant,
        share: &str,
        info: Value,
        key: Option<Vec<u8>>,
    ) -> Result<LinkId, NodeError> {
        if self.links_kept(None, None) >= self.config.max_links {
            return Err(NodeError::TooManyLinks(self.config.max_links));
        }
        let peer = self.hub.open(now, share, info)?;
        let link = LinkId::new(share, peer);
        self.add_link(now, link.clone(), SessionRole::Offerer, None, key);
        self.pump(now);
        Ok(link)
    }

    /// Calls the database behind a link we opened; [`NodeEvent::CallResult`] follows.
    ///
    /// # Errors
    /// [`NodeError::UnknownLink`].
    pub fn call(
        &mut self,
        now: Instant,
        link: &LinkId,
        request: Request,
    ) -> Result<CallId, NodeError> {
        let id = self.client_mut(link)?.call(now, request);
        self.pump(now);
        Ok(id)
    }

    /// Subscribes to the live changes of the database behind a link.
    ///
    /// # Errors
    /// [`NodeError::UnknownLink`].
    pub fn subscribe(
        &mut self,
        now: Instant,
        link: &LinkId,
        request: ChangesRequest,
    ) -> Result<CallId, NodeError> {
        let id = self.client_mut(link)?.subscribe(now, request);
        self.pump(now);
        Ok(id)
    }

    /// Cancels a call or subscription.
    ///
    /// # Errors
    /// [`NodeError::UnknownLink`], [`RpcError::UnknownCall`](crate::rpc::RpcError::UnknownCall).
    pub fn cancel_call(
        &mut self,
        now: Instant,
        link: &LinkId,
        call: CallId,
    ) -> Result<(), NodeError> {
        self.client_mut(link)?.cancel(now, call)?;
        self.pump(now);
        Ok(())
    }

    /// The RPC client of a link we opened (once its channel is open).
    pub(super) fn client_mut(&mut self, link: &LinkId) -> Result<&mut RpcClient, NodeError> {
        self.links
            .get_mut(link)
            .and_then(|l| l.rpc.as_mut())
            .and_then(LinkRpc::client_mut)
            .ok_or_else(|| NodeError::UnknownLink(link.clone()))
    }

    /// Closes a link.
    pub fn close(&mut self, now: Instant, link: &LinkId) {
        self.close_link(now, link, LinkCloseReason::ByApp);
        self.pump(now);
    }

    pub(super) fn close_link(&mut self, now: Instant, link: &LinkId, reason: LinkCloseReason) {
        if let Some(l) = self.links.get_mut(link) {
            if !l.closed {
                l.session.close(now);
            }
        }
        self.link_closed(now, link, reason);
    }

    /// Links kept now: connecting or open (not yet closed), and peers waiting for an answer
    /// (`but` not counted: the one asking now), all of them or `share`'s only.
    pub(super) fn links_kept(&self, share: Option<&str>, but: Option<&LinkId>) -> usize {
        let of = |s: &str| share.is_none_or(|share| s == share);
        let links = self
            .links
            .iter()
            .filter(|(k, l)| !l.closed && of(&k.share))
            .count();
        let waiting = self
            .hub
            .pending_peers()
            .filter(|(s, p)| {
                of(s) && but.is_none_or(|b| (b.share.as_str(), b.peer.as_str()) != (*s, *p))
            })
            .count();
        links + waiting
    }

    /// A new link with its session (offering our host candidates); its RPC starts when the
    /// channel opens.
    pub(super) fn add_link(
        &mut self,
        now: Instant,
        link: LinkId,
        role: SessionRole,
        db: Option<DbId>,
        key: Option<Vec<u8>>,
    ) {
        let seed = self.rng.next_u64();
        let mut session = Session::new(role, self.config.session.clone(), seed, now);
        let all = self.config.ice_transport_policy == IceTransportPolicy::All;
        if all {
            for a in &self.addrs {
                if let Err(e) = session.add_local_candidate(now, *a) {
                    tracing::debug!(addr = %a, error = %e, "host candidate refused");
                }
            }
            for (addr, base) in &self.srflx {
                if let Err(e) = session.add_srflx_candidate(now, *addr, *base) {
                    tracing::debug!(%addr, error = %e, "srflx candidate refused");
                }
            }
        }
        for (addr, base, transport) in &self.relays {
            if let Err(e) = session.add_relay_candidate(now, *addr, *base, *transport) {
                tracing::debug!(%addr, error = %e, "relay candidate refused");
            }
        }
        // The first link starts the ICE servers; later ones get what they found.
        self.gatherer.start(now, &self.addrs);
        self.links_created += 1;
        self.router
            .register_ufrag(link.clone(), session.ice_ufrag(), self.links_created);
        self.links.insert(
            link,
            Link {
                session,
                rpc: None,
                db,
                key,
                ready: false,
                closed: false,
                rep_calls: BTreeMap::new(),
                created: self.links_created,
                pinned: None,
            },
        );
    }

    /// Gives a datagram to the session it belongs to.
    pub(super) fn deliver(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) {
        // By the maps, else the newest accepting session (a peer that restarted on the same
        // address): see `crate::route`.
        let target = self.router.dispatch(
            source,
            destination,
            contents,
            &self.links,
            |l| l.created,
            |l| l.session.accepts(source, destination, contents),
        );
        if let Some(k) = target {
            if let Some(l) = self.links.get_mut(&k) {
                l.session
                    .handle_datagram(now, source, destination, contents);
            }
        }
    }

    fn link_closed(&mut self, now: Instant, link: &LinkId, reason: LinkCloseReason) {
        let Some(l) = self.links.get_mut(link) else {
            return;
        };
        if l.closed {
            return;
        }
        l.closed = true;
        if let Some(rpc) = l.rpc.as_mut() {
            rpc.handle_link_closed(now);
        }
        self.hub.close(now, &link.share, &link.peer);
        // Its store requests' results have no one to go to (a runtime drops the longpolls it
        // holds back for them: [`Node::awaits_store_result`]).
        self.store_for
            .retain(|_, o| !matches!(o, StoreOrigin::Server(l, _) if l == link));
        self.fail_replications_on(link, &reason);
        self.events.push_back(NodeEvent::LinkClosed {
            link: link.clone(),
            reason: reason.to_string(),
        });
    }

    /// Moves everything link `k` has: signals to the hub, datagrams out, frames between the
    /// channel and the RPC, store requests and events out; closes it when something ended it.
    pub(super) fn pump_link(&mut self, now: Instant, k: &LinkId) -> bool {
        let mut moved = false;
        let mut signals: Vec<SignalData> = Vec::new();
        let mut closed: Option<LinkCloseReason> = None;
        let mut rpc_out = RpcOutput::default();
        let mut no_path = false;
        {
            let Some(l) = self.links.get_mut(k) else {
                return false;
            };
            // A new handshake draws new ICE credentials: its checks route by the new ufrag.
            if !self.router.has_ufrag(k, l.session.ice_ufrag()) {
                self.router
                    .register_ufrag(k.clone(), l.session.ice_ufrag(), l.created);
            }
            while let Some(s) = l.session.poll_signal() {
                signals.push(s);
            }
            moved |= l.drain_transmits(now, &mut self.gatherer, &mut self.transmits);
            while let Some(e) = l.session.poll_event() {
                moved = true;
                match e {
                    SessionEvent::ChannelOpened => {
                        let read_only = self.shares.get(&k.share).is_some_and(|s| s.read_only);
                        let db_uuid = l.db.as_ref().and_then(|d| self.db_uuids.get(d)).cloned();
                        if let Err(why) = l.channel_opened(now, &self.config, k, read_only, db_uuid)
                        {
                            closed.get_or_insert(why);
                        }
                    }
                    SessionEvent::Message { data, .. } => {
                        let r = l
                            .rpc
                            .as_mut()
                            .map_or(Ok(()), |r| r.handle_frame(now, &data));
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "closing a link after a protocol error");
                            closed.get_or_insert(LinkCloseReason::Rpc(e));
                        }
                    }
                    SessionEvent::Closed(reason) => {
                        // Whatever gave up first (the connect timeout, or DTLS out of
                        // retries for a handshake that never reached the peer), a link whose
                        // ICE never connected found no path.
                        if matches!(reason, CloseReason::ConnectTimeout | CloseReason::Failed(_))
                            && !l.session.was_connected()
                        {
                            no_path = true;
                        }
                        closed.get_or_insert(LinkCloseReason::Session {
                            reason,
                            stall: self.config.session.send_stall_timeout,
                        });
                    }
                    _ => {}
                }
            }
            if l.session.is_open() {
                match l.send_frames(now) {
                    Ok(sent) => moved |= sent,
                    Err(why) => {
                        closed.get_or_insert(why);
                    }
                }
                l.drain_transmits(now, &mut self.gatherer, &mut self.transmits);
            }
            if let Some(rpc) = l.rpc.as_mut() {
                rpc.drain(&mut rpc_out);
            }
            moved |= rpc_out.moved;
            if let Some(e) = rpc_out.closed.take() {
                closed.get_or_insert(LinkCloseReason::Rpc(e));
            }
            if rpc_out.ready {
                l.ready = true;
            }
        }
        for s in signals {
            moved = true;
            if let Err(e) = self.hub.send_signal(now, &k.share, &k.peer, s) {
                tracing::debug!(error = %e, "signal not sent");
            }
        }
        if rpc_out.ready {
            self.link_ready(k);
        }
        if !rpc_out.store_requests.is_empty() {
            moved = true;
            let db = self
                .links
                .get(k)
                .and_then(|l| l.db.clone())
                .unwrap_or_default();
            for (sid, request) in rpc_out.store_requests {
                self.push_store_request(db.clone(), request, StoreOrigin::Server(k.clone(), sid));
            }
        }
        for e in rpc_out.client_events {
            self.on_client_event(now, k, e);
        }
        if let Some(mut reason) = closed {
            if no_path {
                reason = LinkCloseReason::NoPath {
                    reason: Box::new(reason),
                    detail: self.no_path_reason(k),
                };
            }
            // Flush what can still go (a goodbye), then close: through the relay when the link
            // runs over one, as every other datagram of the session.
            if let Some(l) = self.links.get_mut(k) {
                if !l.session.is_closed() {
                    l.session.close(now);
                    l.drain_transmits(now, &mut self.gatherer, &mut self.transmits);
                }
            }
            self.link_closed(now, k, reason);
            moved = true;
        }
        moved
    }

    /// Marks link `k` ready and tells the app.
    fn link_ready(&mut self, k: &LinkId) {
        let mut path = None;
        if let Some(l) = self.links.get_mut(k) {
            l.ready = true;
            path = l.session.path();
        }
        self.events.push_back(NodeEvent::LinkReady {
            link: k.clone(),
            path,
        });
    }

    fn on_client_event(&mut self, now: Instant, k: &LinkId, e: ClientEvent) {
        match e {
            ClientEvent::Ready { .. } => self.link_ready(k),
            ClientEvent::Response { call, result } => {
                let rep = self
                    .links
                    .get_mut(k)
                    .and_then(|l| l.rep_calls.remove(&call));
                match rep {
                    Some((rep, rid)) => self.answer_replication(now, rep, rid, result),
                    None => self.events.push_back(NodeEvent::CallResult {
                        link: k.clone(),
                        call,
                        result,
                    }),
                }
            }
            ClientEvent::Changes { call, changes } => self.events.push_back(NodeEvent::Changes {
                link: k.clone(),
                call,
                changes,
            }),
            ClientEvent::StreamEnded { call, error } => {
                self.events.push_back(NodeEvent::ChangesEnded {
                    link: k.clone(),
                    call,
                    error,
                })
            }
            // The link closes with it: [`Node::pump_link`] saw it first.
            ClientEvent::Closed(_) => {}
        }
    }
}
