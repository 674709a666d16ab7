//! Cleanup: the hub documents this node deletes.
//!
//! One job: what is consumed or stale goes. Signals a node has read are queued for deletion as
//! it reads them; a sharer also sweeps the hub now and then for documents nobody will delete
//! any more (shares whose sharer is gone, signals older than the maximum age) and queues those.
//! Queued deletes leave in one `_bulk_docs` per round; the composite issues the requests.

use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{parse_hub_doc, HubDoc, HubLimits, PEER_SIGNAL_PREFIX, SHARE_PREFIX};
use crate::ops::{AllDocsRequest, BulkDocsRequest, Request};

/// Deletes to send and the sweep's schedule.
#[derive(Debug, Default)]
pub(super) struct Cleanup {
    /// When the next sweep is due (`None`: not sharing, no sweeps).
    next_sweep: Option<Instant>,
    sweep_inflight: bool,
    deletes: Vec<Value>,
}

/// What makes a document stale, for a sweep.
pub(super) struct Staleness<'a> {
    pub limits: &'a HubLimits,
    /// Wall-clock now, in ms.
    pub wall: u64,
    /// How long past its expiry a share is left alone (its sharer may still refresh it).
    pub share_grace_ms: u64,
    /// How old a signal may get.
    pub signal_max_age_ms: u64,
}

impl Cleanup {
    /// Sweeps start (at once) with the first share.
    pub fn sharing(&mut self, now: Instant) {
        if self.next_sweep.is_none() {
            self.next_sweep = Some(now);
        }
    }

    /// When the next sweep is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.next_sweep
    }

    /// The sweep to send now, if one is due (and none is in flight); sweeps stop when the node
    /// shares nothing any more.
    pub fn take_sweep(
        &mut self,
        now: Instant,
        sharing: bool,
        interval: Duration,
    ) -> Option<Request> {
        if self.next_sweep.is_none_or(|t| t > now) {
            return None;
        }
        if !sharing {
            self.next_sweep = None;
            return None;
        }
        self.next_sweep = Some(now + interval);
        if self.sweep_inflight {
            return None;
        }
        self.sweep_inflight = true;
        // Signals and shares, in one range: "p-signal-" < "s-signal-" < "share-".
        Some(Request::AllDocs(AllDocsRequest {
            start_key: Some(PEER_SIGNAL_PREFIX.into()),
            end_key: Some(format!("{SHARE_PREFIX}\u{fff0}")),
            include_docs: true,
            ..AllDocsRequest::default()
        }))
    }

    /// The sweep's documents: the stale ones (by `rule`, never a share `own` says is ours)
    /// are queued for deletion; returns how many.
    pub fn on_swept(
        &mut self,
        docs: impl IntoIterator<Item = Map<String, Value>>,
        rule: &Staleness<'_>,
        own: impl Fn(&str) -> bool,
    ) -> u64 {
        self.sweep_inflight = false;
        let mut stale = 0;
        for doc in docs {
            let old = match parse_hub_doc(&doc, rule.limits) {
                Ok(HubDoc::Share(info, _)) => {
                    !own(&info.id)
                        && info
                            .expires_at
                            .is_some_and(|e| e.saturating_add(rule.share_grace_ms) < rule.wall)
                }
                Ok(HubDoc::Signal(s)) => s
                    .created_at
                    .is_some_and(|c| c.saturating_add(rule.signal_max_age_ms) < rule.wall),
                _ => false,
            };
            let id = doc.get("_id").and_then(Value::as_str);
            let rev = doc.get("_rev").and_then(Value::as_str);
            if let (true, Some(id), Some(rev)) = (old, id, rev) {
                stale += 1;
                self.delete(id, rev);
            }
        }
        stale
    }

    /// The sweep failed (the composite reports it); the next one comes at its time.
    pub fn sweep_failed(&mut self) {
        self.sweep_inflight = false;
    }

    /// Queues the deletion of document `id` at `rev`.
    pub fn delete(&mut self, id: &str, rev: &str) {
        if rev.is_empty() {
            return;
        }
        self.deletes
            .push(json!({"_id": id, "_rev": rev, "_deleted": true}));
    }

    /// The queued deletes, as one request.
    pub fn take_deletes(&mut self) -> Option<Request> {
        if self.deletes.is_empty() {
            return None;
        }
        Some(Request::BulkDocs(BulkDocsRequest {
            docs: std::mem::take(&mut self.deletes),
            new_edits: true,
        }))
    }

    /// Whether deletes wait to be sent.
    pub fn has_queued(&self) -> bool {
        !self.deletes.is_empty()
    }
}
