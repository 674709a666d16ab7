//! The request ledger the machines that send requests share ([`Hub`](crate::hub::Hub),
//! [`Replicator`](crate::Replicator)): ids for requests, what each request in flight was for,
//! and exponential backoff for the ones that failed transiently.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Identifies one request of a machine; its response comes back with the same id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);

/// A response's id was never issued by the machine it was given to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct NeverIssued;

/// Requests of one machine: `T` is what the machine keeps about each (what it is for, what a
/// retry sends, the attempt). An entry is in flight from [`Ledger::issue`] until its answer
/// comes ([`Ledger::answer`]); a failed one the machine wants again waits in
/// [`Ledger::retry_later`] until [`Ledger::schedule`] gives it a due time, then comes back
/// from [`Ledger::take_due`].
#[derive(Debug)]
pub(crate) struct Ledger<T> {
    next_id: u64,
    inflight: BTreeMap<u64, T>,
    /// Failed, to be retried; due times are given once the clock is known.
    unscheduled: Vec<T>,
    retries: RetryQueue<T>,
}

impl<T> Default for Ledger<T> {
    fn default() -> Self {
        Ledger {
            next_id: 0,
            inflight: BTreeMap::new(),
            unscheduled: Vec::new(),
            retries: RetryQueue::default(),
        }
    }
}

impl<T> Ledger<T> {
    /// Records `entry` as in flight under a new id.
    pub fn issue(&mut self, entry: T) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        self.inflight.insert(id, entry);
        RequestId(id)
    }

    /// Takes the entry of the request `id` answers: `Ok(None)` when it was forgotten (by
    /// [`Ledger::clear`]), so its answer is ignored.
    ///
    /// # Errors
    /// [`NeverIssued`] for an id this ledger never gave out (the ledger is unchanged).
    pub fn answer(&mut self, id: RequestId) -> Result<Option<T>, NeverIssued> {
        if id.0 >= self.next_id {
            return Err(NeverIssued);
        }
        Ok(self.inflight.remove(&id.0))
    }

    /// Keeps `entry` for a retry; [`Ledger::schedule`] gives it its due time.
    pub fn retry_later(&mut self, entry: T) {
        self.unscheduled.push(entry);
    }

    /// Gives each entry kept for a retry its due time, `delay` after `now`.
    pub fn schedule(&mut self, now: Instant, delay: impl Fn(&T) -> Duration) {
        for entry in std::mem::take(&mut self.unscheduled) {
            let due = now + delay(&entry);
            self.retries.push(due, entry);
        }
    }

    /// The entries kept for a retry and not scheduled yet (for a runner without a clock).
    pub fn take_unscheduled(&mut self) -> Vec<T> {
        std::mem::take(&mut self.unscheduled)
    }

    /// Removes and returns the retries due at `now`, earliest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<T> {
        self.retries.take_due(now)
    }

    /// When the next retry is due.
    pub fn next_due(&self) -> Option<Instant> {
        self.retries.next_due()
    }

    /// Whether any request in flight or waiting for a retry matches `pred`.
    pub fn any(&self, pred: impl Fn(&T) -> bool) -> bool {
        self.inflight.values().any(&pred)
            || self.unscheduled.iter().any(&pred)
            || self.retries.iter().any(&pred)
    }

    /// Forgets every request (their answers will be ignored) and every retry.
    pub fn clear(&mut self) {
        self.inflight.clear();
        self.unscheduled.clear();
        self.retries.clear();
    }
}

/// How often and how patiently a machine retries a request that failed transiently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries before giving up.
    pub max_retries: u32,
    /// Delay before the first retry; doubled for each further one.
    pub initial_backoff: Duration,
    /// Longest delay.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// The delay before retry number `attempt` (1 for the first retry).
    pub fn delay(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(1u32 << shift)
            .min(self.max_backoff)
    }
}

/// Items waiting for their retry time, in due order (ties by insertion).
#[derive(Debug)]
pub(crate) struct RetryQueue<T> {
    items: Vec<(Instant, u64, T)>,
    next: u64,
}

impl<T> Default for RetryQueue<T> {
    fn default() -> Self {
        RetryQueue {
            items: Vec::new(),
            next: 0,
        }
    }
}

impl<T> RetryQueue<T> {
    pub fn push(&mut self, due: Instant, item: T) {
        self.items.push((due, self.next, item));
        self.next += 1;
    }

    pub fn next_due(&self) -> Option<Instant> {
        self.items.iter().map(|(d, _, _)| *d).min()
    }

    /// Removes and returns the items due at `now`, earliest first.
    pub fn take_due(&mut self, now: Instant) -> Vec<T> {
        let mut due: Vec<(Instant, u64, T)> = Vec::new();
        let mut i = 0;
        while i < self.items.len() {
            if self.items[i].0 <= now {
                due.push(self.items.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due.sort_by_key(|(d, n, _)| (*d, *n));
        due.into_iter().map(|(_, _, t)| t).collect()
    }

    /// The items waiting, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &T> {
        self.items.iter().map(|(_, _, t)| t)
    }

    pub fn clear(&mut self) {
        self.items.clear();
    }
}
