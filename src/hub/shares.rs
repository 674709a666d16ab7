//! Own shares: the share documents this node keeps on the hub.
//!
//! One job: each share's document is written, refreshed before it expires, put back when
//! someone deletes it, and deleted on unshare, one write at a time per share, with the
//! revision fetched again when the hub says ours is stale. Its requests go out through the
//! composite ([`OwnShares::take_writes`] and the answers fed back by id's purpose).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use super::{share_doc, HubEvent, Purpose, ShareInfo};
use crate::error::DbError;
use crate::ops::{BulkDocsRequest, GetRequest, Request};

#[derive(Debug)]
struct OwnShare {
    info: ShareInfo,
    rev: Option<String>,
    created: bool,
    needs_write: bool,
    write_inflight: bool,
    deleting: bool,
    next_refresh: Instant,
}

/// This node's shares, by id.
#[derive(Debug, Default)]
pub(super) struct OwnShares {
    shares: BTreeMap<String, OwnShare>,
}

/// Fetches the current revision of share `id`.
fn get_rev(id: &str) -> (Purpose, Request) {
    (
        Purpose::GetShareRev(id.into()),
        Request::Get(GetRequest::new(id)),
    )
}

impl OwnShares {
    /// Starts sharing `info` (its document is written with the next [`OwnShares::take_writes`]).
    pub fn add(&mut self, now: Instant, info: ShareInfo, refresh_interval: Duration) {
        self.shares.insert(
            info.id.clone(),
            OwnShare {
                info,
                rev: None,
                created: false,
                needs_write: true,
                write_inflight: false,
                deleting: false,
                next_refresh: now + refresh_interval,
            },
        );
    }

    /// Starts deleting share `id`; `false` when it is not ours or is already going.
    pub fn unshare(&mut self, id: &str) -> bool {
        let Some(s) = self.shares.get_mut(id).filter(|s| !s.deleting) else {
            return false;
        };
        s.deleting = true;
        s.needs_write = false;
        true
    }

    /// Whether `id` is one of ours (being deleted or not).
    pub fn contains(&self, id: &str) -> bool {
        self.shares.contains_key(id)
    }

    /// Whether `id` is one of ours and not being deleted.
    pub fn is_live(&self, id: &str) -> bool {
        self.shares.get(id).is_some_and(|s| !s.deleting)
    }

    /// Whether this node shares nothing.
    pub fn is_empty(&self) -> bool {
        self.shares.is_empty()
    }

    /// Our share ids.
    pub fn ids(&self) -> impl Iterator<Item = &String> {
        self.shares.keys()
    }

    /// When the next refresh is due.
    pub fn next_refresh(&self) -> Option<Instant> {
        self.shares
            .values()
            .filter(|s| !s.deleting)
            .map(|s| s.next_refresh)
            .min()
    }

    /// Moves the expiry of every share due for a refresh `ttl` past wall-clock `wall`.
    pub fn refresh(&mut self, now: Instant, wall: u64, ttl: Duration, interval: Duration) {
        let ttl = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX);
        for s in self.shares.values_mut() {
            if !s.deleting && s.next_refresh <= now {
                s.next_refresh = now + interval;
                s.info.expires_at = Some(wall.saturating_add(ttl));
                s.needs_write = true;
            }
        }
    }

    /// The writes to send now (at most one in flight per share); shares deleted before their
    /// document was ever written are done at once ([`HubEvent::Unshared`]).
    pub fn take_writes(&mut self, events: &mut VecDeque<HubEvent>) -> Vec<(Purpose, Request)> {
        let mut out = Vec::new();
        let mut finished = Vec::new();
        for (id, s) in self.shares.iter_mut() {
            if s.write_inflight {
                continue;
            }
            let (purpose, doc) = if s.deleting {
                let Some(rev) = &s.rev else {
                    finished.push(id.clone());
                    continue;
                };
                (
                    Purpose::DeleteShare(id.clone()),
                    json!({"_id": id, "_rev": rev, "_deleted": true}),
                )
            } else if s.needs_write {
                s.needs_write = false;
                let mut doc = share_doc(&s.info);
                if let Some(rev) = &s.rev {
                    doc["_rev"] = json!(rev);
                }
                (Purpose::PutShare(id.clone()), doc)
            } else {
                continue;
            };
            s.write_inflight = true;
            out.push((
                purpose,
                Request::BulkDocs(BulkDocsRequest {
                    docs: vec![doc],
                    new_edits: true,
                }),
            ));
        }
        for id in finished {
            self.shares.remove(&id);
            events.push_back(HubEvent::Unshared { share: id });
        }
        out
    }

    /// The hub's answer to a share document's write; a request to send when our revision
    /// was stale.
    pub fn on_written(
        &mut self,
        id: &str,
        result: Result<crate::Rev, DbError>,
        events: &mut VecDeque<HubEvent>,
    ) -> Option<(Purpose, Request)> {
        let s = self.shares.get_mut(id)?;
        s.write_inflight = false;
        match result {
            Ok(rev) => {
                s.rev = Some(rev.to_string());
                if !s.created {
                    s.created = true;
                    events.push_back(HubEvent::ShareCreated { share: id.into() });
                }
                None
            }
            Err(DbError::Conflict) => {
                // Our idea of the revision is stale (a retried write landed): fetch it.
                s.write_inflight = true;
                Some(get_rev(id))
            }
            Err(error) => {
                self.write_failed(id, error, events);
                None
            }
        }
    }

    /// A share document's write failed for good: a share never created is given up.
    pub fn write_failed(&mut self, id: &str, error: DbError, events: &mut VecDeque<HubEvent>) {
        let Some(s) = self.shares.get_mut(id) else {
            return;
        };
        if s.created {
            s.write_inflight = false;
            events.push_back(HubEvent::RequestFailed {
                op: "refresh_share",
                error,
            });
        } else {
            self.shares.remove(id);
            events.push_back(HubEvent::ShareFailed {
                share: id.into(),
                error,
            });
        }
    }

    /// The current revision of share `id`'s document, fetched after a conflict.
    pub fn on_rev(&mut self, id: &str, doc: &Map<String, Value>) {
        if let Some(s) = self.shares.get_mut(id) {
            s.rev = doc.get("_rev").and_then(Value::as_str).map(String::from);
            s.write_inflight = false;
            s.needs_write = !s.deleting;
        }
    }

    /// Fetching the revision failed: a document gone is written again (or done deleting).
    pub fn rev_failed(&mut self, id: &str, error: DbError, events: &mut VecDeque<HubEvent>) {
        let Some(s) = self.shares.get_mut(id) else {
            return;
        };
        s.write_inflight = false;
        if matches!(error, DbError::NotFound(_)) {
            // Gone (deleted by someone): recreate it, or we are done deleting.
            s.rev = None;
            s.needs_write = !s.deleting;
        } else {
            events.push_back(HubEvent::RequestFailed {
                op: "get_share",
                error,
            });
        }
    }

    /// The hub's answer to a share document's deletion; a request to send when our revision
    /// was stale.
    pub fn on_deleted(
        &mut self,
        id: &str,
        result: Option<Result<crate::Rev, DbError>>,
        events: &mut VecDeque<HubEvent>,
    ) -> Option<(Purpose, Request)> {
        if let Some(Err(DbError::Conflict)) = result {
            return Some(get_rev(id));
        }
        self.shares.remove(id);
        events.push_back(HubEvent::Unshared { share: id.into() });
        None
    }

    /// Deleting a share document failed for good: the share is given up all the same.
    pub fn delete_failed(&mut self, id: &str, error: DbError, events: &mut VecDeque<HubEvent>) {
        self.shares.remove(id);
        events.push_back(HubEvent::RequestFailed {
            op: "delete_share",
            error,
        });
        events.push_back(HubEvent::Unshared { share: id.into() });
    }

    /// Share `id` was deleted on the hub; `false` when it is not ours. Ours is put back unless
    /// we are deleting it (or a write of ours is under way, which puts it back anyway).
    pub fn on_removed(&mut self, id: &str) -> bool {
        let Some(s) = self.shares.get_mut(id) else {
            return false;
        };
        if !s.deleting && !s.write_inflight {
            // Someone deleted our share: put it back.
            s.rev = None;
            s.needs_write = true;
        }
        true
    }
}
