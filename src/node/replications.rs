//! Replications the app started, and where their requests go: to a local database as a
//! store request, or to the database behind a link we opened as an RPC call.

use std::time::Instant;

use super::events::LinkCloseReason;
use super::{DbRef, LinkId, Node, NodeError, NodeEvent, ReplicationId, StoreOrigin};
use crate::error::DbError;
use crate::ops::Response;
use crate::replicate::{Endpoint, ReplicationEvent, Replicator, ReplicatorConfig, RequestId};

/// A replication and its two sides.
pub(super) struct Rep {
    pub(super) machine: Replicator,
    source: DbRef,
    target: DbRef,
}

impl Rep {
    /// The sides that are links we opened.
    fn remote_sides(&self) -> impl Iterator<Item = (Endpoint, LinkId)> + '_ {
        [
            (Endpoint::Source, &self.source),
            (Endpoint::Target, &self.target),
        ]
        .into_iter()
        .filter_map(|(e, side)| match side {
            DbRef::Remote(link) => Some((e, link.clone())),
            DbRef::Local(_) => None,
        })
    }
}

impl Node {
    /// Starts a replication between two databases; [`NodeEvent::Replication`] events follow.
    pub fn replicate(
        &mut self,
        now: Instant,
        source: DbRef,
        target: DbRef,
        config: ReplicatorConfig,
    ) -> ReplicationId {
        let id = self.next_rep;
        self.next_rep += 1;
        let mut rep = Rep {
            machine: Replicator::new(config, self.rng.next_u64()),
            source,
            target,
        };
        // A link that closed (or never was) will not come back: fail now rather than retrying.
        for (endpoint, link) in rep.remote_sides().collect::<Vec<_>>() {
            if self.links.get(&link).is_none_or(|l| l.closed) {
                rep.machine.endpoint_lost(
                    endpoint,
                    format!(
                        "no link to share {} (peer {}): closed or never opened",
                        link.share, link.peer
                    ),
                );
            }
        }
        self.reps.insert(id, rep);
        self.pump(now);
        id
    }

    /// Stops a replication ([`ReplicationEvent::Cancelled`] follows).
    ///
    /// # Errors
    /// [`NodeError::UnknownReplication`].
    pub fn cancel_replication(&mut self, now: Instant, id: ReplicationId) -> Result<(), NodeError> {
        self.reps
            .get_mut(&id)
            .ok_or(NodeError::UnknownReplication(id))?
            .machine
            .cancel();
        self.pump(now);
        Ok(())
    }

    /// Ends the replications that read or write through `link` at once: it closed for good (a
    /// new link to the same share is a new endpoint). A live replication waiting on its local
    /// side would otherwise not notice until its next write, and every replication would first
    /// wait out its retry policy.
    pub(super) fn fail_replications_on(&mut self, link: &LinkId, why: &LinkCloseReason) {
        for rep in self.reps.values_mut() {
            for (endpoint, l) in rep.remote_sides().collect::<Vec<_>>() {
                if l == *link {
                    rep.machine.endpoint_lost(
                        endpoint,
                        format!(
                            "the link to share {} (peer {}) closed: {why}",
                            link.share, link.peer
                        ),
                    );
                }
            }
        }
    }

    /// Gives replication `rep` the answer to its request `id` (from a local store or a link).
    pub(super) fn answer_replication(
        &mut self,
        now: Instant,
        rep: ReplicationId,
        id: RequestId,
        result: Result<Response, DbError>,
    ) {
        let Some(r) = self.reps.get_mut(&rep) else {
            return;
        };
        // Only a request the replicator never issued is refused: a bug of ours, not of the
        // store or the peer, and nothing the replication can act on.
        if let Err(e) = r.machine.handle_response(now, id, result) {
            tracing::warn!(replication = rep, error = %e, "replication answer refused");
        }
    }

    pub(super) fn pump_replications(&mut self, now: Instant) -> bool {
        let mut moved = false;
        let ids: Vec<ReplicationId> = self
            .reps
            .iter()
            .filter(|(_, r)| r.machine.has_output())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let mut reqs = Vec::new();
            let mut events = Vec::new();
            let (source, target) = {
                let r = self.reps.get_mut(&id).expect("listed");
                while let Some(q) = r.machine.poll_request() {
                    reqs.push(q);
                }
                while let Some(e) = r.machine.poll_event() {
                    events.push(e);
                }
                (r.source.clone(), r.target.clone())
            };
            for q in reqs {
                moved = true;
                let side = match q.endpoint {
                    Endpoint::Source => &source,
                    Endpoint::Target => &target,
                };
                match side {
                    DbRef::Local(db) => self.push_store_request(
                        db.clone(),
                        q.request,
                        StoreOrigin::Replication(id, q.id),
                    ),
                    DbRef::Remote(link) => match self.client_mut(link) {
                        Ok(c) => {
                            let call = c.call(now, q.request);
                            if let Some(l) = self.links.get_mut(link) {
                                l.rep_calls.insert(call, (id, q.id));
                            }
                        }
                        Err(_) => {
                            let why = format!("no open link {} to {}", link.peer, link.share);
                            self.answer_replication(now, id, q.id, Err(DbError::Unavailable(why)));
                        }
                    },
                }
            }
            for e in events {
                moved = true;
                let done = matches!(
                    e,
                    ReplicationEvent::Completed(_)
                        | ReplicationEvent::Failed { .. }
                        | ReplicationEvent::Cancelled(_)
                );
                self.events
                    .push_back(NodeEvent::Replication { id, event: e });
                if done {
                    self.reps.remove(&id);
                    self.store_for
                        .retain(|_, o| !matches!(o, StoreOrigin::Replication(r, _) if *r == id));
                }
            }
        }
        moved
    }
}
