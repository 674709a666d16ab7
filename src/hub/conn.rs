//! One connection's signal exchange, as one side of it sees it: who we are in it (sharer or
//! joiner), whether the peer is let in, where a join stands, and the numbered signals put back
//! in the order they were sent.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::Value;

use super::{HubDiagnostics, SignalData};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Role {
    Sharer,
    Joiner,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum ConnState {
    Pending,
    Open,
    Refused,
}

/// Where a connection we opened stands with the sharer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum JoinPhase {
    /// Our offer went out; since when it is on the hub (`None`: not confirmed yet).
    Offered(Option<Instant>),
    /// The sharer asks a person, since then.
    AwaitingApproval(Instant),
    /// The sharer answered (or refused): the session's own timeouts bound the rest.
    Answered,
}

#[derive(Debug)]
pub(super) struct Conn {
    pub role: Role,
    pub state: ConnState,
    /// Joiners only.
    pub phase: JoinPhase,
    pub info: Value,
    pub next_out: u64,
    pub next_in: u64,
    /// Signal `u64::MAX` was delivered: later numbered signals are duplicates.
    pub numbers_spent: bool,
    pub held: BTreeMap<u64, SignalData>,
    pub buffered: Vec<SignalData>,
    pub refused_at: Option<Instant>,
}

impl Conn {
    pub fn new(role: Role, state: ConnState, info: Value) -> Conn {
        Conn {
            role,
            state,
            phase: JoinPhase::Offered(None),
            info,
            next_out: 0,
            next_in: 0,
            numbers_spent: false,
            held: BTreeMap::new(),
            buffered: Vec::new(),
            refused_at: None,
        }
    }

    /// Puts numbered signals back in the order they were sent (the hub may show concurrent
    /// writes in another order); unnumbered ones (from other implementations) pass as they come.
    pub fn intake(
        &mut self,
        n: Option<u64>,
        data: SignalData,
        max_held: usize,
        diag: &mut HubDiagnostics,
    ) -> Vec<SignalData> {
        let Some(n) = n else {
            return vec![data];
        };
        if self.numbers_spent || n < self.next_in || self.held.contains_key(&n) {
            diag.signals_dropped += 1;
            return Vec::new();
        }
        self.held.insert(n, data);
        if self.held.len() > max_held {
            // A gap that never fills (a lost write): move past it rather than hold forever.
            if let Some((&first, _)) = self.held.iter().next() {
                self.next_in = first;
            }
        }
        let mut out = Vec::new();
        while let Some(d) = self.held.remove(&self.next_in) {
            out.push(d);
            match self.next_in.checked_add(1) {
                Some(next) => self.next_in = next,
                None => {
                    // `u64::MAX` came (only a hostile writer gets there): nothing follows it.
                    self.numbers_spent = true;
                    break;
                }
            }
        }
        out
    }
}
