//! An in-memory hub: the hub database as a [`MemoryStore`], with changes-feed followers.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{FeedFilter, Hub, HubAction, HubEvent};
use crate::error::DbError;
use crate::ops::*;
use crate::store::{Database, MemoryStore};

/// A hub held in memory: serves simulations, tests and the embedded default.
///
/// It executes hub requests against a [`MemoryStore`] and keeps one changes-feed cursor per
/// follower, filtered as a CouchDB 2+ server applies a `_selector` filter when the follower
/// has a [`FeedFilter`]. [`MemoryHub::settle`] runs several [`Hub`] machines against it until
/// none has anything left to do.
#[derive(Debug)]
pub struct MemoryHub {
    db: MemoryStore,
    followers: BTreeMap<usize, Cursor>,
    next_follower: usize,
    /// Feed cursor of each machine [`MemoryHub::settle`] has run, by instance id.
    cursors: BTreeMap<u64, usize>,
    /// Feed rows given to each machine by [`MemoryHub::settle`], by instance id.
    read: BTreeMap<u64, u64>,
    /// Whether [`MemoryHub::settle`] applies the machines' feed filters.
    filters: bool,
}

#[derive(Debug)]
struct Cursor {
    since: u64,
    filter: Option<FeedFilter>,
}

impl Default for MemoryHub {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryHub {
    /// An empty hub.
    pub fn new() -> MemoryHub {
        MemoryHub {
            db: MemoryStore::new("hub"),
            followers: BTreeMap::new(),
            next_follower: 0,
            cursors: BTreeMap::new(),
            read: BTreeMap::new(),
            filters: true,
        }
    }

    /// A hub that cannot filter its changes feed, as pouchdb-server 4.2.0: [`MemoryHub::settle`]
    /// gives every machine every row (others' signals and deletions included).
    ///
    /// ```
    /// use peerpouch::hub::MemoryHub;
    /// let hub = MemoryHub::new().without_filters();
    /// # let _ = hub;
    /// ```
    pub fn without_filters(mut self) -> MemoryHub {
        self.filters = false;
        self
    }

    /// The hub's database (tests put garbage in it, or inspect what is left).
    pub fn db(&mut self) -> &mut MemoryStore {
        &mut self.db
    }

    /// Executes one hub request.
    ///
    /// # Errors
    /// As [`Database::execute`].
    pub fn execute(&mut self, request: Request) -> Result<Response, DbError> {
        self.db.execute(request)
    }

    /// Starts a changes-feed cursor after `since` over the whole feed; returns its handle.
    pub fn follow(&mut self, since: &Seq) -> usize {
        self.follow_filtered(since, None)
    }

    /// Starts a changes-feed cursor after `since` that yields only the rows `filter` passes
    /// (all of them with `None`); returns its handle.
    pub fn follow_filtered(&mut self, since: &Seq, filter: Option<FeedFilter>) -> usize {
        let handle = self.next_follower;
        self.next_follower += 1;
        self.followers.insert(
            handle,
            Cursor {
                since: since.as_u64().unwrap_or(0),
                filter,
            },
        );
        handle
    }

    /// Ends a cursor (a follower that asked for a new feed); its handle yields nothing more.
    pub fn unfollow(&mut self, follower: usize) {
        self.followers.remove(&follower);
    }

    /// How many feed rows (each with its document) [`MemoryHub::settle`] gave `hub` so far:
    /// what that node read from the hub's changes feed.
    pub fn rows_read(&self, hub: &Hub) -> u64 {
        self.read.get(&hub.instance_id()).copied().unwrap_or(0)
    }

    /// The rows (with documents) the follower has not seen yet.
    pub fn poll_feed(&mut self, follower: usize) -> Vec<ChangeRow> {
        let Some(since) = self.followers.get(&follower).map(|c| c.since) else {
            return Vec::new();
        };
        if since >= self.db.update_seq() {
            return Vec::new();
        }
        let r = self
            .db
            .changes(ChangesRequest {
                since: Seq::from(since),
                include_docs: true,
                style: ChangesStyle::AllDocs,
                ..ChangesRequest::default()
            })
            .unwrap_or_else(|_| ChangesResponse {
                results: Vec::new(),
                last_seq: Seq::from(since),
                pending: None,
            });
        let Some(cursor) = self.followers.get_mut(&follower) else {
            return Vec::new();
        };
        cursor.since = r.last_seq.as_u64().unwrap_or(since);
        let mut rows = r.results;
        if let Some(filter) = &cursor.filter {
            rows.retain(|row| filter.matches(row));
        }
        rows
    }

    /// Runs the machines against this hub until none has an action left or a row to read, all at
    /// time `now`. Returns each machine's events, in the order given.
    pub fn settle(&mut self, now: Instant, hubs: &mut [&mut Hub]) -> Vec<Vec<HubEvent>> {
        let mut events: Vec<Vec<HubEvent>> = hubs.iter().map(|_| Vec::new()).collect();
        for _ in 0..100_000 {
            let mut progressed = false;
            for (i, hub) in hubs.iter_mut().enumerate() {
                while let Some(action) = hub.poll_action() {
                    progressed = true;
                    match action {
                        HubAction::Request { id, request } => {
                            let result = self.execute(request);
                            // Ids come from this machine: never unknown.
                            if let Err(error) = hub.handle_response(now, id, result) {
                                tracing::warn!(%error, "the in-memory hub answered a request twice");
                            }
                        }
                        HubAction::FollowChanges { since, filter } => {
                            // Replaces the machine's previous cursor, which is dropped.
                            let filter = self.filters.then_some(filter);
                            let c = self.follow_filtered(&since, filter);
                            if let Some(old) = self.cursors.insert(hub.instance_id(), c) {
                                self.unfollow(old);
                            }
                        }
                    }
                }
                if let Some(&c) = self.cursors.get(&hub.instance_id()) {
                    let rows = self.poll_feed(c);
                    if !rows.is_empty() {
                        progressed = true;
                        *self.read.entry(hub.instance_id()).or_default() += rows.len() as u64;
                        hub.handle_feed(now, rows);
                    }
                }
                while let Some(e) = hub.poll_event() {
                    events[i].push(e);
                }
            }
            if !progressed {
                return events;
            }
        }
        panic!("hub machines did not settle");
    }
}
