//! Exponential backoff for requests that failed transiently, shared by the machines.

use std::time::{Duration, Instant};

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
