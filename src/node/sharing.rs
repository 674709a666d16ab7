//! Our shares and the peers asking for them: publishing and unpublishing, accepting,
//! deferring or refusing peers (within [`NodeConfig::max_links`](super::NodeConfig::max_links)
//! and each share's own limit), and the hub's events that open, pause and close links.

use std::net::SocketAddr;
use std::time::Instant;

use super::events::LinkCloseReason;
use super::{DbId, LinkId, Node, NodeError, NodeEvent, OwnShare, ShareAccess};
use crate::hub::{HubError, HubEvent, ShareOptions};
use crate::session::SessionRole;
use crate::signal::SignalData;

impl Node {
    /// The ids of this node's own shares (not yet unshared).
    pub fn own_shares(&self) -> Vec<String> {
        self.shares.keys().cloned().collect()
    }

    /// Shares local database `db` on the hub; returns the share id. The share document carries
    /// our certificate fingerprint ([`Node::fingerprint`]) unless `options` names one.
    pub fn share(
        &mut self,
        now: Instant,
        db: DbId,
        options: ShareOptions,
        access: ShareAccess,
    ) -> String {
        let read_only = options.read_only;
        let mut options = options;
        // Published with the share, so people can tell who shares before they open it.
        if options.fingerprint.is_none() {
            options.fingerprint = self.fingerprint();
        }
        let id = self.hub.share(now, options);
        self.shares.insert(
            id.clone(),
            OwnShare {
                db,
                access,
                read_only,
            },
        );
        self.pump(now);
        id
    }

    /// Stops sharing; its links close.
    ///
    /// # Errors
    /// [`HubError::NotShared`].
    pub fn unshare(&mut self, now: Instant, share: &str) -> Result<(), NodeError> {
        self.hub.unshare(now, share)?;
        self.shares.remove(share);
        let links: Vec<LinkId> = self
            .links
            .keys()
            .filter(|k| k.share == share)
            .cloned()
            .collect();
        for l in links {
            self.close_link(now, &l, LinkCloseReason::Unshared);
        }
        self.pump(now);
        Ok(())
    }

    /// Lists the shares on the hub ([`HubEvent::SharesListed`] follows).
    pub fn list(&mut self, now: Instant) {
        self.hub.list(now);
        self.pump(now);
    }

    /// Follows shares appearing and going.
    pub fn watch(&mut self, now: Instant, on: bool) {
        self.hub.watch(now, on);
        self.pump(now);
    }

    /// Lets a requesting peer in (shares with `ask` access).
    ///
    /// # Errors
    /// From the hub negotiator.
    pub fn accept(&mut self, now: Instant, link: &LinkId) -> Result<(), NodeError> {
        self.start_serving(now, link)?;
        self.pump(now);
        Ok(())
    }

    /// Refuses a requesting peer, optionally telling it why.
    ///
    /// # Errors
    /// From the hub negotiator.
    pub fn refuse(
        &mut self,
        now: Instant,
        link: &LinkId,
        reason: Option<String>,
    ) -> Result<(), NodeError> {
        self.hub.refuse(now, &link.share, &link.peer, reason)?;
        self.awaiting_offer.remove(link);
        self.pump(now);
        Ok(())
    }

    pub(super) fn start_serving(&mut self, now: Instant, link: &LinkId) -> Result<(), NodeError> {
        let Some(share) = self.shares.get(&link.share) else {
            return Err(NodeError::Hub(HubError::NotShared(link.share.clone())));
        };
        let db = share.db.clone();
        let key = share.access.key.clone();
        let pinned = if share.access.ask {
            self.hub
                .pending_offer(&link.share, &link.peer)
                .and_then(crate::fingerprint::from_sdp)
        } else {
            None
        };
        self.hub.accept(now, &link.share, &link.peer)?;
        self.awaiting_offer.remove(link);
        self.add_link(now, link.clone(), SessionRole::Answerer, Some(db), key);
        if let Some(l) = self.links.get_mut(link) {
            l.pinned = pinned;
        }
        Ok(())
    }

    /// Why `link`, a peer asking for one of our shares, would be one too many, if it would.
    pub(super) fn full(&self, link: &LinkId) -> Option<String> {
        let kept = self.links_kept(None, Some(link));
        if kept >= self.config.max_links {
            return Some(format!(
                "the sharer is at its limit of {} links (max_links): try again later",
                self.config.max_links
            ));
        }
        let max = self.shares.get(&link.share)?.access.max_links?;
        let serving = self.links_kept(Some(&link.share), Some(link));
        (serving >= max).then(|| {
            format!("the share is full ({serving} of {max} peers, max_links): try again later")
        })
    }

    /// A link we opened that the sharer left unanswered or unaccepted: tells the app
    /// (`event`), then closes it.
    fn give_up(&mut self, now: Instant, link: &LinkId, event: NodeEvent, reason: LinkCloseReason) {
        if self.links.contains_key(link) {
            self.events.push_back(event);
            self.close_link(now, link, reason);
        }
    }

    pub(super) fn pump_hub(&mut self, now: Instant) -> bool {
        let mut moved = false;
        while let Some(e) = self.hub.poll_event() {
            moved = true;
            match e {
                HubEvent::PeerRequested { share, peer, info } => {
                    let link = LinkId::new(share.clone(), peer);
                    let ask = self.shares.get(&share).is_some_and(|s| s.access.ask);
                    if let Some(full) = self.full(&link) {
                        tracing::info!(share = %link.share, peer = %link.peer, "{full}: refused");
                        if let Err(e) = self.hub.refuse(now, &link.share, &link.peer, Some(full)) {
                            tracing::debug!(error = %e, "could not refuse a peer");
                        }
                    } else if ask {
                        // The peer learns that a person decides, and waits for it; the person
                        // is asked once its offer (and so its fingerprint) is in: below.
                        if let Err(e) = self.hub.defer(now, &link.share, &link.peer) {
                            tracing::debug!(error = %e, "could not tell a peer to wait");
                        }
                        self.awaiting_offer.insert(link, info);
                    } else if let Err(e) = self.start_serving(now, &link) {
                        tracing::warn!(error = %e, "could not accept a peer");
                    }
                }
                HubEvent::Signal { share, peer, data } => {
                    // A peer's candidate: let it through our relays before its first check.
                    if let SignalData::Candidate(Some(c)) = &data {
                        if let Some(addr) = candidate_addr(&c.candidate) {
                            self.gatherer.permit(now, addr);
                        }
                    }
                    let link = LinkId::new(share, peer);
                    if let Some(l) = self.links.get_mut(&link) {
                        if let Err(e) = l.session.handle_signal(now, data) {
                            tracing::debug!(error = %e, "signal refused by the session");
                        }
                    }
                }
                HubEvent::Refused {
                    share,
                    peer,
                    reason,
                } => {
                    let link = LinkId::new(share, peer);
                    self.events.push_back(NodeEvent::Refused {
                        link: link.clone(),
                        reason,
                    });
                    self.close_link(now, &link, LinkCloseReason::Refused);
                }
                HubEvent::ConnectionClosed { share, peer } => {
                    self.close_link(now, &LinkId::new(share, peer), LinkCloseReason::Unshared);
                }
                HubEvent::AwaitingApproval { share, peer } => {
                    let link = LinkId::new(share, peer);
                    // The approval timeout bounds the wait now, not the connect timeout.
                    if let Some(l) = self.links.get_mut(&link) {
                        l.session.pause_connect_timeout();
                        self.events.push_back(NodeEvent::AwaitingApproval {
                            link,
                            timeout: self.config.hub.approval_timeout,
                        });
                    }
                }
                HubEvent::Accepted { share, peer } => {
                    if let Some(l) = self.links.get_mut(&LinkId::new(share, peer)) {
                        l.session.restart_connect_timeout(now);
                    }
                }
                HubEvent::NotAnswering {
                    share,
                    peer,
                    waited,
                } => {
                    let link = LinkId::new(share, peer);
                    let event = NodeEvent::NotAnswering {
                        link: link.clone(),
                        waited,
                    };
                    self.give_up(now, &link, event, LinkCloseReason::NotAnswering);
                }
                HubEvent::NotAccepted {
                    share,
                    peer,
                    waited,
                } => {
                    let link = LinkId::new(share, peer);
                    let event = NodeEvent::NotAccepted {
                        link: link.clone(),
                        waited,
                    };
                    self.give_up(now, &link, event, LinkCloseReason::NotAccepted);
                }
                other => self.events.push_back(NodeEvent::Hub(other)),
            }
        }
        if !self.awaiting_offer.is_empty() {
            let waiting: Vec<LinkId> = self.awaiting_offer.keys().cloned().collect();
            for link in waiting {
                let offer = self.hub.pending_offer(&link.share, &link.peer);
                if offer.is_none() && self.hub.is_pending(&link.share, &link.peer) {
                    continue;
                }
                let fingerprint = offer.and_then(crate::fingerprint::from_sdp);
                let Some(info) = self.awaiting_offer.remove(&link) else {
                    continue;
                };
                if offer.is_some() {
                    moved = true;
                    self.events.push_back(NodeEvent::PeerRequested {
                        link,
                        info,
                        fingerprint,
                    });
                }
            }
        }
        moved
    }
}

/// The address of an SDP candidate line (`candidate:1 1 udp 2130706431 10.0.0.1 5000 typ host`).
fn candidate_addr(line: &str) -> Option<SocketAddr> {
    let mut parts = line.split_whitespace();
    let ip = parts.nth(4)?.parse().ok()?;
    let port = parts.next()?.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}
