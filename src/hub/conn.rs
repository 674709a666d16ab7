//! One connection's signal exchange, as one side of it sees it: who we are in it (sharer or
//! joiner), whether the peer is let in, where a join stands, and the numbered signals put back
//! in the order they were sent.

use std::collections::BTreeMap;
use std::time::Instant;

use serde_json::{json, Value};

use std::collections::VecDeque;

use super::{
    HubConfig, HubDiagnostics, HubError, HubEvent, SignalData, PEER_SIGNAL_PREFIX,
    SHARER_SIGNAL_PREFIX, SIGNAL_TYPE,
};
use crate::ops::{BulkDocsRequest, Request};

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
    /// The sharer took (deleted) a signal of ours but has not answered yet: it is alive, only
    /// busy (a crowd joining at once); the session's connect timeout bounds the wait now, not
    /// the answer timeout. Seen only on a feed that shows others' deletions (a hub that cannot
    /// filter, where a crowd costs the sharer most).
    Taken,
    /// No answer within the answer timeout: we asked the hub whether the sharer still
    /// refreshes its share (a sharer busy with a crowd does; a crashed one has stopped).
    Checking,
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
    /// Joiners: the ids of our first signal documents (the offer among them), so their
    /// deletion by the sharer tells that it read them ([`JoinPhase::Taken`]).
    pub sent_ids: Vec<String>,
}

/// Signal ids a joiner remembers ([`Conn::sent_ids`]): the offer and a few candidates.
const SENT_IDS: usize = 8;

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
            sent_ids: Vec::new(),
        }
    }

    /// Sharer: lets the pending peer in; the signals it sent so far, to pass on.
    ///
    /// # Errors
    /// [`HubError::InvalidState`] unless the peer is pending.
    pub fn accept(&mut self) -> Result<Vec<SignalData>, HubError> {
        self.expect_pending("only a pending peer can be accepted")?;
        self.state = ConnState::Open;
        Ok(std::mem::take(&mut self.buffered))
    }

    /// Sharer: the error for a connection that is not a pending peer's.
    ///
    /// # Errors
    /// [`HubError::InvalidState`] with `what` unless the peer is pending.
    pub fn expect_pending(&self, what: &'static str) -> Result<(), HubError> {
        match (self.role, &self.state) {
            (Role::Sharer, ConnState::Pending) => Ok(()),
            _ => Err(HubError::InvalidState(what)),
        }
    }

    /// Sharer: the offer a pending peer sent, once it came.
    pub fn pending_offer(&self) -> Option<&str> {
        self.expect_pending("").ok()?;
        self.buffered.iter().find_map(|d| match d {
            SignalData::Offer(sdp) => Some(sdp.as_str()),
            _ => None,
        })
    }

    /// Sharer: refuses the peer at `now`; how many of its held signals are dropped.
    ///
    /// # Errors
    /// [`HubError::InvalidState`] for a joiner's connection.
    pub fn refuse(&mut self, now: Instant) -> Result<u64, HubError> {
        if self.role != Role::Sharer {
            return Err(HubError::InvalidState("only the sharer refuses"));
        }
        let dropped = self.buffered.len() as u64;
        self.buffered.clear();
        self.state = ConnState::Refused;
        self.refused_at = Some(now);
        Ok(dropped)
    }

    /// The signal document carrying `data` from our side of `(share, peer)`: `id_part` makes
    /// its id, `wall` its creation time; numbered ones take the next number.
    pub fn signal_doc(
        &mut self,
        (share, peer): (&str, &str),
        id_part: &str,
        data: &SignalData,
        numbered: bool,
        wall: u64,
    ) -> Value {
        let (id, sender, recipient, info) = match self.role {
            Role::Joiner => (
                format!("{PEER_SIGNAL_PREFIX}{id_part}"),
                peer,
                share,
                self.info.clone(),
            ),
            Role::Sharer => (
                format!("{SHARER_SIGNAL_PREFIX}{id_part}"),
                share,
                peer,
                Value::Null,
            ),
        };
        if self.role == Role::Joiner
            && matches!(self.phase, JoinPhase::Offered(_))
            && self.sent_ids.len() < SENT_IDS
        {
            self.sent_ids.push(id.clone());
        }
        let mut doc = json!({
            "_id": id,
            "type": SIGNAL_TYPE,
            "sender": sender,
            "recipient": recipient,
            "data": data.to_json(),
            "info": info,
            "created_at": wall,
        });
        if numbered {
            doc["n"] = json!(self.next_out);
            self.next_out += 1;
        }
        doc
    }

    /// Joiner: the sharer showed it is alive while our offer waits (it refreshed its share, or
    /// signalled another peer), or our feed still shows offers it has to read first: busy, not
    /// gone, so the answer timeout starts again from `now`. A sharer that keeps working through
    /// a crowd keeps us waiting (the session's connect timeout still bounds the wait); a share
    /// nobody else wants and nobody answers is given up [`HubConfig::answer_timeout`] after the
    /// last such row.
    pub fn sharer_alive(&mut self, now: Instant) {
        if let JoinPhase::Offered(Some(t)) = &mut self.phase {
            *t = now.max(*t);
        }
    }

    /// When a connection we opened gives up on the sharer, and whether that is for want of an
    /// approval (else of any answer).
    pub fn join_deadline(&self, config: &HubConfig) -> Option<(Instant, bool)> {
        if self.role != Role::Joiner {
            return None;
        }
        match self.phase {
            JoinPhase::Offered(Some(t)) => Some((t + config.answer_timeout, false)),
            JoinPhase::AwaitingApproval(t) => Some((t + config.approval_timeout, true)),
            JoinPhase::Offered(None)
            | JoinPhase::Taken
            | JoinPhase::Checking
            | JoinPhase::Answered => None,
        }
    }

    /// Takes a signal of the other side (`n` its number, if numbered) for the connection
    /// `(share, peer)`: what comes in order moves the join along and goes out as events (to
    /// the session, or the refusal); a sharer holds a pending peer's signals until it is
    /// accepted (at most `max_buffered`); a refused connection drops them.
    pub fn receive(
        &mut self,
        now: Instant,
        (share, peer): (&str, &str),
        (n, data): (Option<u64>, SignalData),
        max_buffered: usize,
        events: &mut VecDeque<HubEvent>,
        diag: &mut HubDiagnostics,
    ) {
        let key = (share.to_string(), peer.to_string());
        for data in self.intake(n, data, max_buffered, diag) {
            if self.role == Role::Joiner {
                let pending = data == SignalData::Pending;
                match (self.phase, pending) {
                    (JoinPhase::Offered(_) | JoinPhase::Taken | JoinPhase::Checking, true) => {
                        self.phase = JoinPhase::AwaitingApproval(now);
                        events.push_back(HubEvent::AwaitingApproval {
                            share: key.0.clone(),
                            peer: key.1.clone(),
                        });
                    }
                    (JoinPhase::Offered(_) | JoinPhase::Taken | JoinPhase::Checking, false) => {
                        self.phase = JoinPhase::Answered
                    }
                    (JoinPhase::AwaitingApproval(_), false) => {
                        self.phase = JoinPhase::Answered;
                        if !matches!(data, SignalData::Refuse(_)) {
                            events.push_back(HubEvent::Accepted {
                                share: key.0.clone(),
                                peer: key.1.clone(),
                            });
                        }
                    }
                    _ => {}
                }
                if pending {
                    continue;
                }
            }
            match (self.role, &self.state, data) {
                (_, ConnState::Refused, _) => diag.signals_dropped += 1,
                (Role::Sharer, _, SignalData::Pending) => diag.signals_dropped += 1,
                (Role::Sharer, ConnState::Pending, data) => {
                    if self.buffered.len() >= max_buffered {
                        diag.signals_dropped += 1;
                    } else {
                        self.buffered.push(data);
                    }
                }
                (Role::Joiner, _, SignalData::Refuse(reason)) => {
                    self.state = ConnState::Refused;
                    events.push_back(HubEvent::Refused {
                        share: key.0.clone(),
                        peer: key.1.clone(),
                        reason,
                    });
                }
                (_, _, data) => events.push_back(HubEvent::Signal {
                    share: key.0.clone(),
                    peer: key.1.clone(),
                    data,
                }),
            }
        }
    }

    /// Puts numbered signals back in the order they were sent (the hub may show concurrent
    /// writes in another order); unnumbered ones (from other implementations) pass as they come.
    fn intake(
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

/// Signals waiting to be written, in one `_bulk_docs` at a time (the hub may show concurrent
/// writes in another order; one write at a time keeps ours in order).
#[derive(Debug, Default)]
pub(super) struct Outbox {
    docs: Vec<Value>,
    /// Connections with signals in `docs`, then in the write in flight.
    conns: Vec<(String, String)>,
    inflight_conns: Vec<(String, String)>,
    inflight: bool,
}

impl Outbox {
    /// Queues the signal document `doc` of connection `key`.
    pub fn push(&mut self, key: (String, String), doc: Value) {
        self.docs.push(doc);
        if !self.conns.contains(&key) {
            self.conns.push(key);
        }
    }

    /// The write to send now, if signals wait and none is in flight.
    pub fn take_write(&mut self) -> Option<Request> {
        if self.docs.is_empty() || self.inflight {
            return None;
        }
        self.inflight = true;
        self.inflight_conns = std::mem::take(&mut self.conns);
        Some(Request::BulkDocs(BulkDocsRequest {
            docs: std::mem::take(&mut self.docs),
            new_edits: true,
        }))
    }

    /// The write in flight landed: the connections whose signals it held.
    pub fn written(&mut self) -> Vec<(String, String)> {
        self.inflight = false;
        std::mem::take(&mut self.inflight_conns)
    }

    /// The write in flight failed for good.
    pub fn failed(&mut self) {
        self.inflight = false;
        self.inflight_conns.clear();
    }
}
