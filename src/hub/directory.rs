//! The directory of others' shares: what the hub lists and its feed shows, with expiry.
//!
//! One job: know which shares of other nodes are live, list them on request, and while
//! watching report each as it appears and goes (deleted, or expired by the wall clock). Its
//! events go into the composite's queue; its one request (the listing) is issued by the
//! composite when [`Directory::take_list_request`] says so.

use std::collections::{BTreeMap, VecDeque};

use super::{HubEvent, RemovedReason, ShareInfo};

/// Others' shares, known from listings and the feed.
#[derive(Debug, Default)]
pub(super) struct Directory {
    known: BTreeMap<String, ShareInfo>,
    watching: bool,
    list_requested: bool,
    list_inflight: bool,
}

impl Directory {
    /// Asks for a listing ([`HubEvent::SharesListed`] once it is answered).
    pub fn request_list(&mut self) {
        self.list_requested = true;
    }

    /// Starts or stops reporting shares as they come and go; starting also lists.
    pub fn watch(&mut self, on: bool) {
        self.watching = on;
        if on {
            self.request_list();
        }
    }

    /// Whether a listing is to be sent now (one at a time); marks it in flight.
    pub fn take_list_request(&mut self) -> bool {
        if self.list_requested && !self.list_inflight {
            self.list_requested = false;
            self.list_inflight = true;
            return true;
        }
        false
    }

    /// The earliest wall-clock time (ms) at which a known share expires: one past its
    /// `expires_at`. `u64::MAX` never expires.
    pub fn next_expiry(&self) -> Option<u64> {
        self.known
            .values()
            .filter_map(|s| s.expires_at)
            .min()
            .and_then(|ms| ms.checked_add(1))
    }

    /// Forgets the shares expired at wall-clock `wall`.
    pub fn expire(&mut self, wall: u64, events: &mut VecDeque<HubEvent>) {
        let expired: Vec<String> = self
            .known
            .values()
            .filter(|s| s.expires_at.is_some_and(|e| e < wall))
            .map(|s| s.id.clone())
            .collect();
        for id in expired {
            self.forget(id, RemovedReason::Expired, events);
        }
    }

    /// A share document of another node from the feed.
    pub fn on_share(&mut self, info: ShareInfo, wall: u64, events: &mut VecDeque<HubEvent>) {
        if info.expires_at.is_some_and(|e| e < wall) {
            self.forget(info.id, RemovedReason::Expired, events);
            return;
        }
        let new = self.known.insert(info.id.clone(), info.clone()).is_none();
        if new && self.watching {
            events.push_back(HubEvent::ShareAdded(info));
        }
    }

    /// A share document deleted on the hub.
    pub fn on_deleted(&mut self, id: String, events: &mut VecDeque<HubEvent>) {
        self.forget(id, RemovedReason::Deleted, events);
    }

    /// The listing's answer: the live shares of others in it (`shares`, parsed), remembered
    /// and reported.
    pub fn on_listed(
        &mut self,
        shares: Vec<ShareInfo>,
        wall: u64,
        events: &mut VecDeque<HubEvent>,
    ) {
        self.list_inflight = false;
        let live: Vec<ShareInfo> = shares
            .into_iter()
            .filter(|s| s.expires_at.is_none_or(|e| e >= wall))
            .collect();
        for s in &live {
            self.known.insert(s.id.clone(), s.clone());
        }
        events.push_back(HubEvent::SharesListed(live));
    }

    /// The listing failed (the composite reports the error).
    pub fn list_failed(&mut self) {
        self.list_inflight = false;
    }

    fn forget(&mut self, id: String, reason: RemovedReason, events: &mut VecDeque<HubEvent>) {
        if self.known.remove(&id).is_some() && self.watching {
            events.push_back(HubEvent::ShareRemoved { share: id, reason });
        }
    }
}
