//! Share negotiation through a hub: a CouchDB database both sides can reach.
//!
//! A sharer posts a *share document*; others list shares and follow them live through the hub's
//! changes feed. Opening a share exchanges *signal documents* (SDP offer/answer, ICE candidates)
//! addressed by `sender`/`recipient`; each receiver deletes the signals it consumed. The sharer
//! sees each connecting peer's `info` and accepts or refuses it *before* anything of the peer's
//! offer reaches its WebRTC session. Formats follow the original PeerPouch (see
//! `docs/protocol.md`), so browser peers can take part.
//!
//! [`Hub`] is a sans-IO machine:
//! - Commands: [`Hub::share`], [`Hub::unshare`], [`Hub::list`], [`Hub::watch`], [`Hub::open`],
//!   [`Hub::defer`], [`Hub::accept`], [`Hub::refuse`], [`Hub::send_signal`], [`Hub::close`].
//! - Inputs: [`Hub::handle_response`] (results of hub requests, by id), [`Hub::handle_feed`]
//!   (rows of the hub's changes feed, with documents), [`Hub::handle_timeout`].
//! - Outputs: [`Hub::poll_action`] (requests to execute against the hub database, and when to
//!   start following its changes feed), [`Hub::poll_event`], [`Hub::poll_timeout`].
//!
//! After every input, drain `poll_action` and `poll_event` until they return `None`.
//!
//! Waiting is bounded by what is waited for. A joiner whose offer is on the hub gives up on a
//! sharer that sends nothing back within [`HubConfig::answer_timeout`]
//! ([`HubEvent::NotAnswering`]: a stale share). A sharer that asks a person calls
//! [`Hub::defer`], which tells the joiner ([`HubEvent::AwaitingApproval`]); the joiner then
//! waits up to [`HubConfig::approval_timeout`] ([`HubEvent::NotAccepted`]) and reports
//! [`HubEvent::Accepted`] when the answer comes.
//!
//! Stale state is bounded: shares carry an expiry (`expires_at`, wall-clock milliseconds) that
//! the sharer refreshes; listings hide expired shares; a sharer periodically deletes expired
//! shares and signals older than [`HubConfig::signal_max_age`]. Documents that are malformed or
//! oversized are counted ([`HubDiagnostics`]), reported ([`HubEvent::Malformed`]) and skipped.

mod cleanup;
mod conn;
mod directory;
mod docs;
mod filter;
mod memory;
mod shares;

pub use docs::*;
pub use filter::FeedFilter;
pub use memory::MemoryHub;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use serde_json::Value;

use self::cleanup::{Cleanup, Staleness};
use self::conn::{Conn, ConnState, JoinPhase, Outbox, Role};
use self::directory::Directory;
use self::shares::OwnShares;
use crate::error::DbError;
use crate::ops::*;
use crate::rand::SeededRng;
pub use crate::retry::RequestId;
use crate::retry::{Ledger, RetryPolicy};

/// Tuning of the negotiation machine.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct HubConfig {
    /// How long a share document stays valid without a refresh: a sharer that crashed stays
    /// listed (and watchers see it go) at most this long after its last refresh.
    pub share_ttl: Duration,
    /// How often the sharer refreshes its share documents' expiry (a third of the TTL lets two
    /// refreshes in a row fail before the share expires).
    pub refresh_interval: Duration,
    /// Joiner: how long after our offer is on the hub the sharer has to send its first signal
    /// (an answer, a refusal, or a pending notice while it asks a person) before
    /// [`HubEvent::NotAnswering`]: its share is probably stale (the sharer crashed).
    pub answer_timeout: Duration,
    /// Joiner: how long a sharer that said it is deciding ([`HubEvent::AwaitingApproval`]) has
    /// to accept before [`HubEvent::NotAccepted`].
    pub approval_timeout: Duration,
    /// Signals older than this are deleted by cleanup.
    pub signal_max_age: Duration,
    /// How often a sharer runs cleanup.
    pub cleanup_interval: Duration,
    /// Peers waiting for accept/refuse, per node; more are dropped (a flood of requests costs
    /// no hub writes). Above [`crate::node::DEFAULT_MAX_LINKS`], so a node's own limit, which
    /// refuses with a reason, is what a crowd meets first.
    pub max_pending_peers: usize,
    /// Signals held for a peer that is not yet accepted.
    pub max_buffered_signals: usize,
    /// Size limits on hub documents.
    pub limits: HubLimits,
    /// Retries of hub requests that failed transiently.
    pub retry: RetryPolicy,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            share_ttl: Duration::from_secs(30),
            refresh_interval: Duration::from_secs(10),
            answer_timeout: Duration::from_secs(5),
            approval_timeout: Duration::from_secs(120),
            signal_max_age: Duration::from_secs(300),
            cleanup_interval: Duration::from_secs(60),
            max_pending_peers: 1024,
            max_buffered_signals: 64,
            limits: HubLimits::default(),
            retry: RetryPolicy::default(),
        }
    }
}

/// How to share a database.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShareOptions {
    /// A name joiners can find the share by.
    pub name: Option<String>,
    /// Anything joiners should see (JSON).
    pub info: Value,
    /// Refuse writes from peers.
    pub read_only: bool,
    /// The DTLS certificate fingerprint to publish.
    pub fingerprint: Option<String>,
}

/// Something to execute against the hub database.
#[derive(Clone, Debug, PartialEq)]
pub enum HubAction {
    /// Execute this request and give the result to [`Hub::handle_response`].
    Request {
        /// Give this back with the result.
        id: RequestId,
        /// What to execute.
        request: Request,
    },
    /// Follow the hub's changes feed from `since`, with documents (`include_docs=true`), and
    /// give the rows to [`Hub::handle_feed`] as they come; reconnect from the last row on
    /// errors. Issued when the machine is ready, and again whenever the node has a new id that
    /// `filter` must let through (a share, a connection it opens): then `since` is the
    /// sequence of the last row the machine was given before this action was polled, and the
    /// new feed *replaces* the old one (rows of the old feed not yet given must be dropped,
    /// the new feed brings them again). It is issued before any request that makes the new id
    /// known, so no signal addressed to it can be missed.
    FollowChanges {
        /// Start after this sequence.
        since: Seq,
        /// The rows the machine needs. A driver that cannot filter follows the whole feed (and
        /// may then keep its feed when this action comes again): the machine ignores the rest.
        filter: FeedFilter,
    },
}

/// Why a share went away.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RemovedReason {
    /// Its document was deleted (the sharer unshared, or cleanup removed it).
    Deleted,
    /// Its expiry passed without a refresh.
    Expired,
}

/// What the negotiation reports.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum HubEvent {
    /// The machine follows the hub's changes from `since`; commands now reach the hub.
    Ready {
        /// The hub's sequence when following started.
        since: Seq,
    },
    /// Our share document is on the hub.
    ShareCreated {
        /// The share.
        share: String,
    },
    /// Our share document could not be written.
    ShareFailed {
        /// The share.
        share: String,
        /// Why.
        error: DbError,
    },
    /// Our share document is deleted (after [`Hub::unshare`]).
    Unshared {
        /// The share.
        share: String,
    },
    /// The answer to [`Hub::list`]: live shares of others, expired ones hidden.
    SharesListed(Vec<ShareInfo>),
    /// While watching: a share appeared.
    ShareAdded(ShareInfo),
    /// While watching: a share went away.
    ShareRemoved {
        /// The share.
        share: String,
        /// Why.
        reason: RemovedReason,
    },
    /// Sharer: a peer wants to connect; call [`Hub::accept`] or [`Hub::refuse`].
    PeerRequested {
        /// Our share.
        share: String,
        /// The peer.
        peer: String,
        /// What the peer says about itself.
        info: Value,
    },
    /// A signal for the WebRTC session of this connection.
    Signal {
        /// The share.
        share: String,
        /// The connecting peer.
        peer: String,
        /// The payload.
        data: SignalData,
    },
    /// Joiner: the sharer saw our request and is deciding (it asks a person); it has
    /// [`HubConfig::approval_timeout`] to accept.
    AwaitingApproval {
        /// The share.
        share: String,
        /// Our peer id.
        peer: String,
    },
    /// Joiner: the sharer accepted us after [`HubEvent::AwaitingApproval`]; its answer follows
    /// as [`HubEvent::Signal`].
    Accepted {
        /// The share.
        share: String,
        /// Our peer id.
        peer: String,
    },
    /// Joiner: no signal from the sharer within [`HubConfig::answer_timeout`] of our offer
    /// reaching the hub: the share is probably stale (its sharer crashed or lost the hub). The
    /// connection is forgotten.
    NotAnswering {
        /// The share.
        share: String,
        /// Our peer id.
        peer: String,
        /// How long we waited.
        waited: Duration,
    },
    /// Joiner: the sharer said it is deciding but did not accept within
    /// [`HubConfig::approval_timeout`]. The connection is forgotten.
    NotAccepted {
        /// The share.
        share: String,
        /// Our peer id.
        peer: String,
        /// How long we waited.
        waited: Duration,
    },
    /// Joiner: the sharer refused us.
    Refused {
        /// The share.
        share: String,
        /// Our peer id.
        peer: String,
        /// The sharer's reason, if it gave one.
        reason: Option<String>,
    },
    /// Sharer: a connection ended because its share was unshared; close its session.
    ConnectionClosed {
        /// The share.
        share: String,
        /// The peer.
        peer: String,
    },
    /// A malformed or oversized document on the hub was skipped.
    Malformed {
        /// Its id.
        doc_id: String,
        /// What is wrong.
        error: HubDocError,
    },
    /// A background hub request failed for good (cleanup, signal delete, refresh).
    RequestFailed {
        /// The operation.
        op: &'static str,
        /// The error.
        error: DbError,
    },
}

/// Errors of commands and inputs; the machine is unchanged after one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// [`Hub::unshare`] of a share that is not (or no longer) shared by us.
    #[error("{0} is not shared by this node")]
    NotShared(String),
    /// No such connection.
    #[error("no connection {peer} on {share}")]
    UnknownConnection {
        /// The share.
        share: String,
        /// The peer.
        peer: String,
    },
    /// The command does not fit the connection's state (say, accepting a refused peer).
    #[error("invalid state: {0}")]
    InvalidState(&'static str),
    /// An id that is not `share-...` / `peer-...`.
    #[error("not a valid id: {0}")]
    BadId(String),
    /// A response for a request this machine never issued.
    #[error("no request {0:?} was issued")]
    UnknownRequest(RequestId),
}

/// Counts of what was skipped, for diagnostics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubDiagnostics {
    /// Malformed or oversized share/signal documents.
    pub malformed_docs: u64,
    /// Signals addressed to nobody we know.
    pub foreign_signals: u64,
    /// Peers dropped because too many were waiting.
    pub peers_dropped: u64,
    /// Signals dropped (buffer full, refused peer, duplicates).
    pub signals_dropped: u64,
    /// Signals deleted after use.
    pub signals_consumed: u64,
    /// Stale documents deleted by cleanup.
    pub stale_deleted: u64,
}

#[derive(Clone, Debug, PartialEq)]
enum Purpose {
    Info,
    PutShare(String),
    GetShareRev(String),
    /// Whether the sharer of this share, slow to answer us, still refreshes it (asked then).
    CheckSharer(String, Instant),
    DeleteShare(String),
    WriteSignals,
    DeleteDocs,
    List,
    Cleanup,
}

#[derive(Debug)]
struct Sent {
    purpose: Purpose,
    request: Request,
    attempt: u32,
}

/// The share negotiation machine. See the [module docs](self).
///
/// ```
/// use std::time::Instant;
/// use peerpouch::hub::{Hub, HubConfig, HubEvent, MemoryHub, ShareOptions, SignalData};
///
/// let now = Instant::now();
/// let mut hub = MemoryHub::new();
/// let mut sharer = Hub::new(HubConfig::default(), 1, now, 1_700_000_000_000);
/// let mut joiner = Hub::new(HubConfig::default(), 2, now, 1_700_000_000_000);
/// let share = sharer.share(now, ShareOptions { name: Some("notes".into()), ..Default::default() });
/// hub.settle(now, &mut [&mut sharer, &mut joiner]);
/// let peer = joiner.open(now, &share, serde_json::json!({"me": "bob"})).unwrap();
/// joiner.send_signal(now, &share, &peer, SignalData::Offer("v=0...".into())).unwrap();
/// let events = hub.settle(now, &mut [&mut sharer, &mut joiner]);
/// assert!(events[0].iter().any(|e| matches!(e, HubEvent::PeerRequested { .. })));
/// ```
#[derive(Debug)]
pub struct Hub {
    config: HubConfig,
    instance: u64,
    rng: SeededRng,
    start: Instant,
    wall_at_start: u64,
    ready: bool,
    actions: VecDeque<HubAction>,
    events: VecDeque<HubEvent>,
    /// Requests in flight and waiting for a retry.
    requests: Ledger<Sent>,
    /// Our own shares' documents.
    shares: OwnShares,
    conns: BTreeMap<(String, String), Conn>,
    /// Others' shares.
    directory: Directory,
    /// Our signals on their way to the hub.
    outbox: Outbox,
    /// Deletes of what was consumed, and sweeps for what is stale.
    cleanup: Cleanup,
    diag: HubDiagnostics,
    /// The sequence of the last feed row handled (where a new feed starts).
    last_seq: Seq,
    /// The filter of the feed last asked for (`None` before [`HubEvent::Ready`]).
    followed: Option<FeedFilter>,
}

impl Hub {
    /// A machine for one hub. `seed` makes share and peer ids (drivers pass OS randomness);
    /// `wall_clock_ms` is the wall-clock time at `now` (milliseconds since the Unix epoch), read
    /// once: expiry times advance from it by `now` deltas. The first request (the hub's info) is
    /// ready at once.
    pub fn new(config: HubConfig, seed: u64, now: Instant, wall_clock_ms: u64) -> Hub {
        let mut rng = SeededRng::new(seed);
        let mut h = Hub {
            config,
            instance: rng.next_u64(),
            rng,
            start: now,
            wall_at_start: wall_clock_ms,
            ready: false,
            actions: VecDeque::new(),
            events: VecDeque::new(),
            requests: Ledger::default(),
            shares: OwnShares::default(),
            conns: BTreeMap::new(),
            directory: Directory::default(),
            outbox: Outbox::default(),
            cleanup: Cleanup::default(),
            diag: HubDiagnostics::default(),
            last_seq: Seq::zero(),
            followed: None,
        };
        h.send(Purpose::Info, Request::Info, 0);
        h
    }

    /// Whether deletes of documents this machine consumed (signals read, stale documents) are
    /// queued, on their way to the hub or waiting for a retry. A driver that stops keeps
    /// feeding hub answers, with a short deadline, until this is `false`: a process that ends
    /// normally leaves none of the signals it read behind.
    ///
    /// ```
    /// use std::time::Instant;
    /// use peerpouch::hub::{Hub, HubConfig};
    ///
    /// let hub = Hub::new(HubConfig::default(), 1, Instant::now(), 1_700_000_000_000);
    /// assert!(!hub.has_pending_deletes());
    /// ```
    pub fn has_pending_deletes(&self) -> bool {
        self.cleanup.has_queued() || self.requests.any(|s| s.purpose == Purpose::DeleteDocs)
    }

    /// A number identifying this machine (drawn from its seed), for drivers that keep
    /// per-machine state such as a changes-feed cursor.
    pub fn instance_id(&self) -> u64 {
        self.instance
    }

    /// Signalling connections kept (peers of our shares, shares we open), for diagnostics.
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }

    /// Whether the machine follows the hub (after [`HubEvent::Ready`]).
    pub fn is_ready(&self) -> bool {
        self.ready
    }

    /// What was skipped so far.
    pub fn diagnostics(&self) -> &HubDiagnostics {
        &self.diag
    }

    /// Wall-clock milliseconds at `now`.
    pub fn wall_ms(&self, now: Instant) -> u64 {
        let since_start = now.saturating_duration_since(self.start).as_millis();
        self.wall_at_start
            .saturating_add(u64::try_from(since_start).unwrap_or(u64::MAX))
    }

    /// The instant of a wall-clock time from a hub document (any writer's number): `None` when
    /// it lies beyond what an `Instant` can hold, which is as good as never.
    fn instant_of_wall(&self, ms: u64) -> Option<Instant> {
        self.start
            .checked_add(Duration::from_millis(ms.saturating_sub(self.wall_at_start)))
    }

    /// Shares a database: returns the new share id; [`HubEvent::ShareCreated`] follows once the
    /// share document is on the hub.
    pub fn share(&mut self, now: Instant, options: ShareOptions) -> String {
        let id = format!("{SHARE_PREFIX}{}", self.rng.hex_id());
        let expires_at = self
            .wall_ms(now)
            .saturating_add(self.config.share_ttl.as_millis() as u64);
        let info = ShareInfo {
            id: id.clone(),
            name: options.name,
            info: options.info,
            protocol: Some(PROTOCOL_VERSION),
            expires_at: Some(expires_at),
            read_only: options.read_only,
            fingerprint: options.fingerprint,
        };
        self.shares.add(now, info, self.config.refresh_interval);
        self.cleanup.sharing(now);
        self.pump(now);
        id
    }

    /// Stops sharing: deletes the share document ([`HubEvent::Unshared`] follows) and ends its
    /// connections ([`HubEvent::ConnectionClosed`] for each).
    ///
    /// # Errors
    /// [`HubError::NotShared`] if this node does not share `share` (or already unshared it).
    pub fn unshare(&mut self, now: Instant, share: &str) -> Result<(), HubError> {
        if !self.shares.unshare(share) {
            return Err(HubError::NotShared(share.to_string()));
        }
        let peers: Vec<String> = self
            .conns
            .keys()
            .filter(|(s, _)| s == share)
            .map(|(_, p)| p.clone())
            .collect();
        for peer in peers {
            let c = self.conns.remove(&(share.to_string(), peer.clone()));
            if c.is_some_and(|c| c.role == Role::Sharer && c.state != ConnState::Refused) {
                self.events.push_back(HubEvent::ConnectionClosed {
                    share: share.to_string(),
                    peer,
                });
            }
        }
        self.pump(now);
        Ok(())
    }

    /// Lists the live shares of others: [`HubEvent::SharesListed`] follows.
    pub fn list(&mut self, now: Instant) {
        self.directory.request_list();
        self.pump(now);
    }

    /// Starts or stops reporting shares as they appear and go ([`HubEvent::ShareAdded`],
    /// [`HubEvent::ShareRemoved`]). Starting also lists the current ones.
    pub fn watch(&mut self, now: Instant, on: bool) {
        self.directory.watch(on);
        self.pump(now);
    }

    /// Starts connecting to `share`: returns our new peer id. Signals for the session then go
    /// out with [`Hub::send_signal`]; the sharer's arrive as [`HubEvent::Signal`].
    ///
    /// # Errors
    /// [`HubError::BadId`] if `share` is not a share id.
    pub fn open(&mut self, now: Instant, share: &str, info: Value) -> Result<String, HubError> {
        if !valid_id(share, SHARE_PREFIX, self.config.limits.max_id) {
            return Err(HubError::BadId(share.to_string()));
        }
        let peer = format!("{PEER_PREFIX}{}", self.rng.hex_id());
        self.conns.insert(
            (share.to_string(), peer.clone()),
            Conn::new(Role::Joiner, ConnState::Open, info),
        );
        self.pump(now);
        Ok(peer)
    }

    /// Sharer: lets a requesting peer in; the signals it sent so far arrive as
    /// [`HubEvent::Signal`] now, later ones as they come.
    ///
    /// # Errors
    /// [`HubError::UnknownConnection`], or [`HubError::InvalidState`] unless the peer is pending.
    pub fn accept(&mut self, now: Instant, share: &str, peer: &str) -> Result<(), HubError> {
        let buffered = self.conn_mut(share, peer)?.accept()?;
        for data in buffered {
            self.events.push_back(HubEvent::Signal {
                share: share.into(),
                peer: peer.into(),
                data,
            });
        }
        self.pump(now);
        Ok(())
    }

    /// Sharer: the SDP of the offer a pending peer sent (held until [`Hub::accept`]), once it
    /// has arrived: what the app reads the peer's certificate fingerprint from before deciding.
    pub fn pending_offer(&self, share: &str, peer: &str) -> Option<&str> {
        self.conns
            .get(&(share.to_string(), peer.to_string()))?
            .pending_offer()
    }

    /// Sharer: whether a peer is waiting for [`Hub::accept`] or [`Hub::refuse`].
    pub fn is_pending(&self, share: &str, peer: &str) -> bool {
        self.conns
            .get(&(share.to_string(), peer.to_string()))
            .is_some_and(|c| c.role == Role::Sharer && c.state == ConnState::Pending)
    }

    /// Sharer: the peers waiting for [`Hub::accept`] or [`Hub::refuse`], as (share, peer).
    pub fn pending_peers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.conns
            .iter()
            .filter(|(_, c)| c.role == Role::Sharer && c.state == ConnState::Pending)
            .map(|(k, _)| (k.0.as_str(), k.1.as_str()))
    }

    /// Sharer: tells a requesting peer that its request arrived and a decision is coming (a
    /// person is asked), so that it waits up to its [`HubConfig::approval_timeout`] instead of
    /// giving up at its [`HubConfig::answer_timeout`]. Sends a [`SignalData::Pending`]; call
    /// [`Hub::accept`] or [`Hub::refuse`] later.
    ///
    /// # Errors
    /// [`HubError::UnknownConnection`], or [`HubError::InvalidState`] unless the peer is pending.
    pub fn defer(&mut self, now: Instant, share: &str, peer: &str) -> Result<(), HubError> {
        self.conn_mut(share, peer)?
            .expect_pending("only a pending peer can be deferred")?;
        // Unnumbered: a peer that does not know it skips it without a gap in our numbering.
        self.queue_signal(now, share, peer, SignalData::Pending, false);
        self.pump(now);
        Ok(())
    }

    /// Sharer: refuses a peer. Its signals are dropped and deleted; with a `reason`, the peer
    /// gets a refusal signal ([`HubEvent::Refused`] on its side), otherwise nothing at all.
    ///
    /// # Errors
    /// [`HubError::UnknownConnection`], or [`HubError::InvalidState`] for a joiner's connection.
    pub fn refuse(
        &mut self,
        now: Instant,
        share: &str,
        peer: &str,
        reason: Option<String>,
    ) -> Result<(), HubError> {
        let dropped = self.conn_mut(share, peer)?.refuse(now)?;
        self.diag.signals_dropped += dropped;
        if reason.is_some() {
            self.queue_signal(now, share, peer, SignalData::Refuse(reason), true);
        }
        self.pump(now);
        Ok(())
    }

    /// Sends a signal to the other side of a connection.
    ///
    /// # Errors
    /// [`HubError::UnknownConnection`]; [`HubError::InvalidState`] for a refused connection or a
    /// peer not yet accepted.
    pub fn send_signal(
        &mut self,
        now: Instant,
        share: &str,
        peer: &str,
        data: SignalData,
    ) -> Result<(), HubError> {
        let c = self.conn_mut(share, peer)?;
        if c.state != ConnState::Open {
            return Err(HubError::InvalidState(
                "signals go only to open (accepted) connections",
            ));
        }
        self.queue_signal(now, share, peer, data, true);
        self.pump(now);
        Ok(())
    }

    /// Forgets a connection (its session ended); later signals for it are dropped.
    pub fn close(&mut self, _now: Instant, share: &str, peer: &str) {
        self.conns.remove(&(share.to_string(), peer.to_string()));
    }

    /// The next action.
    pub fn poll_action(&mut self) -> Option<HubAction> {
        let mut action = self.actions.pop_front()?;
        if let HubAction::FollowChanges { since, .. } = &mut action {
            // Rows given between the asking and now are not to come again.
            *since = self.last_seq.clone();
        }
        Some(action)
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<HubEvent> {
        self.events.pop_front()
    }

    /// When [`Hub::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = [
            self.requests.next_due(),
            self.cleanup.next_due(),
            self.shares.next_refresh(),
            self.directory
                .next_expiry()
                .and_then(|ms| self.instant_of_wall(ms)),
            self.conns
                .values()
                .filter_map(|c| c.join_deadline(&self.config).map(|(at, _)| at))
                .min(),
        ]
        .into_iter()
        .flatten()
        .min();
        if !self.ready {
            // Nothing is due before the hub answers, except retries.
            t = self.requests.next_due();
        }
        t
    }

    /// Runs what is due at `now`: retries, share refreshes, expiry, cleanup. Harmless early.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.schedule_retries(now);
        for s in self.requests.take_due(now) {
            self.send(s.purpose, s.request, s.attempt);
        }
        if !self.ready {
            return;
        }
        let wall = self.wall_ms(now);
        self.shares.refresh(
            now,
            wall,
            self.config.share_ttl,
            self.config.refresh_interval,
        );
        self.directory.expire(wall, &mut self.events);
        let sharing = !self.shares.is_empty();
        if let Some(sweep) = self
            .cleanup
            .take_sweep(now, sharing, self.config.cleanup_interval)
        {
            self.send(Purpose::Cleanup, sweep, 0);
        }
        self.join_timeouts(now);
        // Forget refused peers once their signals can no longer be around.
        let max_age = self.config.signal_max_age;
        self.conns.retain(|_, c| {
            c.refused_at
                .is_none_or(|t| now.saturating_duration_since(t) < max_age)
        });
        self.pump(now);
    }

    /// Feeds the result of request `id`.
    ///
    /// # Errors
    /// [`HubError::UnknownRequest`] if `id` was never issued (the machine is unchanged).
    pub fn handle_response(
        &mut self,
        now: Instant,
        id: RequestId,
        result: Result<Response, DbError>,
    ) -> Result<(), HubError> {
        let Some(sent) = self
            .requests
            .answer(id)
            .map_err(|_| HubError::UnknownRequest(id))?
        else {
            return Ok(());
        };
        match result {
            Ok(resp) => self.on_ok(now, sent.purpose, resp),
            Err(e) if e.is_transient() && sent.attempt < self.config.retry.max_retries => {
                tracing::debug!(op = sent.request.name(), error = %e, "hub request will be retried");
                self.requests.retry_later(Sent {
                    attempt: sent.attempt + 1,
                    ..sent
                });
            }
            Err(e) => self.on_err(now, sent, e),
        }
        self.schedule_retries(now);
        self.pump(now);
        Ok(())
    }

    /// Feeds rows of the hub's changes feed (with documents).
    pub fn handle_feed(&mut self, now: Instant, rows: Vec<ChangeRow>) {
        for row in rows {
            self.last_seq = row.seq.clone();
            self.on_row(now, row);
        }
        self.pump(now);
    }

    fn send(&mut self, purpose: Purpose, request: Request, attempt: u32) {
        let id = self.requests.issue(Sent {
            purpose,
            request: request.clone(),
            attempt,
        });
        self.actions.push_back(HubAction::Request { id, request });
    }

    fn schedule_retries(&mut self, now: Instant) {
        let policy = self.config.retry;
        self.requests.schedule(now, |s| policy.delay(s.attempt));
    }

    /// Gives up on the sharers whose approval is overdue; asks the hub whether the sharers
    /// whose answer is overdue still refresh their shares.
    fn join_timeouts(&mut self, now: Instant) {
        let due: Vec<((String, String), bool)> = self
            .conns
            .iter()
            .filter_map(|(k, c)| {
                let (at, approval) = c.join_deadline(&self.config)?;
                (at <= now).then(|| (k.clone(), approval))
            })
            .collect();
        let mut checks = BTreeSet::new();
        for (key, approval) in due {
            if approval {
                self.give_up(key, true);
            } else if let Some(c) = self.conns.get_mut(&key) {
                c.phase = JoinPhase::Checking;
                checks.insert(key.0);
            }
        }
        for share in checks {
            let request = Request::Get(GetRequest::new(share.clone()));
            self.send(Purpose::CheckSharer(share, now), request, 0);
        }
    }

    /// The hub's copy of `share` (`None`: gone) and how long the hub took to give it, for the
    /// joiners checking on its sharer: a share refreshed within a refresh interval and an
    /// answer timeout (by its `expires_at` and our own [`HubConfig::share_ttl`]), plus that
    /// delay (a hub slow to answer us is as slow to take the sharer's refresh), has a live
    /// sharer, busy with others (a crowd joining at once, a hub lagging under it), so they wait
    /// one more answer timeout; the others give up. A sharer that crashed is so given up at
    /// most that long after its last refresh.
    fn on_sharer_checked(&mut self, now: Instant, share: &str, doc: Option<(&Doc, Duration)>) {
        let wall = self.wall_ms(now);
        let fresh = doc
            .and_then(|(d, lag)| Some((d.get("expires_at")?.as_u64()?, lag)))
            .is_some_and(|(expires, lag)| {
                let window = self.config.refresh_interval + self.config.answer_timeout + lag;
                let refreshed = expires.saturating_sub(self.config.share_ttl.as_millis() as u64);
                refreshed + window.as_millis() as u64 > wall
            });
        let checking: Vec<(String, String)> = self
            .conns
            .range((share.to_string(), String::new())..)
            .take_while(|((s, _), _)| s == share)
            .filter(|(_, c)| c.phase == JoinPhase::Checking)
            .map(|(k, _)| k.clone())
            .collect();
        for key in checking {
            if fresh {
                tracing::debug!(%share, peer = %key.1, "the sharer is slow to answer but refreshes its share: waiting on");
                if let Some(c) = self.conns.get_mut(&key) {
                    c.phase = JoinPhase::Offered(Some(now));
                }
            } else {
                self.give_up(key, false);
            }
        }
    }

    fn give_up(&mut self, (share, peer): (String, String), approval: bool) {
        self.conns.remove(&(share.clone(), peer.clone()));
        let waited = match approval {
            true => self.config.approval_timeout,
            false => self.config.answer_timeout,
        };
        tracing::debug!(%share, %peer, approval, ?waited, "giving up on the sharer");
        self.events.push_back(match approval {
            true => HubEvent::NotAccepted {
                share,
                peer,
                waited,
            },
            false => HubEvent::NotAnswering {
                share,
                peer,
                waited,
            },
        });
    }

    fn conn_mut(&mut self, share: &str, peer: &str) -> Result<&mut Conn, HubError> {
        self.conns
            .get_mut(&(share.to_string(), peer.to_string()))
            .ok_or_else(|| HubError::UnknownConnection {
                share: share.into(),
                peer: peer.into(),
            })
    }

    fn queue_signal(
        &mut self,
        now: Instant,
        share: &str,
        peer: &str,
        data: SignalData,
        numbered: bool,
    ) {
        let wall = self.wall_ms(now);
        let id_part = self.rng.hex_id();
        let key = (share.to_string(), peer.to_string());
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let doc = c.signal_doc((share, peer), &id_part, &data, numbered, wall);
        self.outbox.push(key, doc);
    }

    /// The filter the feed needs now: our shares and the connections we opened.
    pub fn feed_filter(&self) -> FeedFilter {
        let joined = self
            .conns
            .iter()
            .filter(|(_, c)| c.role == Role::Joiner)
            .map(|((_, peer), _)| peer.clone());
        FeedFilter::new(self.shares.ids().cloned().chain(joined))
    }

    /// Asks for a new feed when the followed one would miss signals to an id of ours. Ids that
    /// went away stay in the feed until the next change (a narrower feed is not worth a
    /// reconnection).
    fn refollow(&mut self) {
        let Some(followed) = &self.followed else {
            return;
        };
        let wanted = self.feed_filter();
        if followed.covers(&wanted) {
            return;
        }
        tracing::debug!(since = %self.last_seq, "following the hub with a new filter");
        self.followed = Some(wanted.clone());
        self.actions.push_back(HubAction::FollowChanges {
            since: self.last_seq.clone(),
            filter: wanted,
        });
    }

    /// Issues whatever can go out now.
    fn pump(&mut self, _now: Instant) {
        if !self.ready {
            return;
        }
        // Before any write that makes a new id of ours known (a share, an offer).
        self.refollow();
        for (purpose, request) in self.shares.take_writes(&mut self.events) {
            self.send(purpose, request, 0);
        }
        if let Some(write) = self.outbox.take_write() {
            self.send(Purpose::WriteSignals, write, 0);
        }
        if let Some(deletes) = self.cleanup.take_deletes() {
            self.send(Purpose::DeleteDocs, deletes, 0);
        }
        if self.directory.take_list_request() {
            self.send(
                Purpose::List,
                Request::AllDocs(prefix_range(SHARE_PREFIX)),
                0,
            );
        }
    }

    fn on_ok(&mut self, now: Instant, purpose: Purpose, resp: Response) {
        let kind = resp.kind();
        let result = match purpose.clone() {
            Purpose::Info => resp.into_info().map(|info| {
                self.ready = true;
                let filter = self.feed_filter();
                self.followed = Some(filter.clone());
                self.last_seq = info.update_seq.clone();
                self.actions.push_back(HubAction::FollowChanges {
                    since: info.update_seq.clone(),
                    filter,
                });
                self.events.push_back(HubEvent::Ready {
                    since: info.update_seq,
                });
            }),
            Purpose::PutShare(id) => resp.into_bulk_docs().map(|r| {
                let result = r
                    .results
                    .into_iter()
                    .next()
                    .map(|d| d.result)
                    .unwrap_or_else(|| Err(DbError::BadResponse("empty bulk_docs".into())));
                if let Some((purpose, request)) =
                    self.shares.on_written(&id, result, &mut self.events)
                {
                    self.send(purpose, request, 0);
                }
            }),
            Purpose::GetShareRev(id) => resp
                .into_doc_body()
                .map(|d| self.shares.on_rev(&id, &d.doc)),
            Purpose::CheckSharer(share, asked) => resp
                .into_doc_body()
                .map(|d| self.on_sharer_checked(now, &share, Some((&d.doc, now - asked)))),
            Purpose::DeleteShare(id) => resp.into_bulk_docs().map(|r| {
                let result = r.results.into_iter().next().map(|d| d.result);
                if let Some((purpose, request)) =
                    self.shares.on_deleted(&id, result, &mut self.events)
                {
                    self.send(purpose, request, 0);
                }
            }),
            Purpose::WriteSignals => resp.into_bulk_docs().map(|r| {
                // Our offers are on the hub: the sharers' answer deadlines start now.
                for key in self.outbox.written() {
                    if let Some(c) = self.conns.get_mut(&key) {
                        if c.phase == JoinPhase::Offered(None) {
                            c.phase = JoinPhase::Offered(Some(now));
                        }
                    }
                }
                for d in r.results {
                    if let Err(error) = d.result {
                        self.events.push_back(HubEvent::RequestFailed {
                            op: "write_signal",
                            error,
                        });
                    }
                }
            }),
            Purpose::DeleteDocs => resp.into_bulk_docs().map(|_| ()),
            Purpose::List => resp.into_all_docs().map(|r| {
                let mut shares = Vec::new();
                for row in r.rows {
                    let Some(Value::Object(doc)) = row.doc else {
                        continue;
                    };
                    match parse_hub_doc(&doc, &self.config.limits) {
                        Ok(HubDoc::Share(info, _)) if !self.shares.contains(&info.id) => {
                            shares.push(info)
                        }
                        Ok(_) => {}
                        Err(error) => self.malformed(row.key, error),
                    }
                }
                let wall = self.wall_ms(now);
                self.directory.on_listed(shares, wall, &mut self.events);
            }),
            Purpose::Cleanup => resp.into_all_docs().map(|r| {
                let rule = Staleness {
                    limits: &self.config.limits,
                    wall: self.wall_ms(now),
                    share_grace_ms: self.config.share_ttl.as_millis() as u64,
                    signal_max_age_ms: self.config.signal_max_age.as_millis() as u64,
                };
                let docs = r.rows.into_iter().filter_map(|row| match row.doc {
                    Some(Value::Object(doc)) => Some(doc),
                    _ => None,
                });
                let shares = &self.shares;
                let stale = self.cleanup.on_swept(docs, &rule, |id| shares.contains(id));
                self.diag.stale_deleted += stale;
            }),
        };
        if let Err(error) = result {
            tracing::warn!(kind, %error, "unexpected hub response");
            self.on_err(
                now,
                Sent {
                    purpose,
                    request: Request::Info,
                    attempt: u32::MAX,
                },
                error,
            );
        }
    }

    fn on_err(&mut self, now: Instant, sent: Sent, error: DbError) {
        match sent.purpose {
            Purpose::Info => {
                // Without the hub's sequence nothing can start: keep trying, slowly.
                let attempt = self.config.retry.max_retries;
                self.requests.retry_later(Sent {
                    purpose: Purpose::Info,
                    request: Request::Info,
                    attempt,
                });
                self.events
                    .push_back(HubEvent::RequestFailed { op: "info", error });
            }
            Purpose::PutShare(id) => self.shares.write_failed(&id, error, &mut self.events),
            Purpose::GetShareRev(id) => self.shares.rev_failed(&id, error, &mut self.events),
            Purpose::CheckSharer(share, _) => {
                tracing::debug!(%share, %error, "the share could not be read: giving up on its sharer");
                self.on_sharer_checked(now, &share, None);
            }
            Purpose::DeleteShare(id) => self.shares.delete_failed(&id, error, &mut self.events),
            Purpose::WriteSignals => {
                // Not on the hub: no answer deadline (the session's connect timeout bounds it).
                self.outbox.failed();
                self.events.push_back(HubEvent::RequestFailed {
                    op: "write_signals",
                    error,
                });
            }
            Purpose::DeleteDocs => {
                self.events.push_back(HubEvent::RequestFailed {
                    op: "delete_signals",
                    error,
                });
            }
            Purpose::List => {
                self.directory.list_failed();
                self.events
                    .push_back(HubEvent::RequestFailed { op: "list", error });
            }
            Purpose::Cleanup => {
                self.cleanup.sweep_failed();
                self.events.push_back(HubEvent::RequestFailed {
                    op: "cleanup",
                    error,
                });
            }
        }
    }

    fn malformed(&mut self, doc_id: String, error: HubDocError) {
        tracing::debug!(%doc_id, %error, "skipping malformed hub document");
        self.diag.malformed_docs += 1;
        self.events.push_back(HubEvent::Malformed { doc_id, error });
    }

    fn delete_doc(&mut self, id: &str, rev: &str) {
        self.cleanup.delete(id, rev);
    }

    fn on_row(&mut self, now: Instant, row: ChangeRow) {
        if row.deleted {
            if row.id.starts_with(SHARE_PREFIX) && !self.shares.on_removed(&row.id) {
                self.directory.on_deleted(row.id, &mut self.events);
            } else if row.id.starts_with(PEER_SIGNAL_PREFIX) {
                // The sharer took a signal of ours: it is alive, if slow to answer.
                let taken = self.conns.values_mut().find(|c| {
                    c.role == Role::Joiner
                        && matches!(c.phase, JoinPhase::Offered(Some(_)))
                        && c.sent_ids.contains(&row.id)
                });
                if let Some(c) = taken {
                    tracing::debug!(signal = %row.id, "the sharer took our signal");
                    c.phase = JoinPhase::Taken;
                }
            }
            return;
        }
        let Some(Value::Object(doc)) = row.doc else {
            return;
        };
        match parse_hub_doc(&doc, &self.config.limits) {
            Err(error) => {
                // A broken signal addressed to us is ours to delete, or it would come back.
                let to_us = doc
                    .get("recipient")
                    .and_then(Value::as_str)
                    .is_some_and(|r| self.is_ours(r));
                if to_us {
                    if let Some(rev) = doc.get("_rev").and_then(Value::as_str) {
                        self.delete_doc(&row.id, rev);
                    }
                }
                self.malformed(row.id, error);
            }
            Ok(HubDoc::Share(info, _)) => {
                if self.shares.contains(&info.id) {
                    return;
                }
                // A new revision (a refresh): its sharer lives.
                self.sharer_alive(now, &info.id);
                let wall = self.wall_ms(now);
                self.directory.on_share(info, wall, &mut self.events);
            }
            Ok(HubDoc::Signal(sig)) => self.on_signal(now, sig),
            Ok(HubDoc::Other) => {}
        }
    }

    /// The sharer of `share` showed signs of life, or we read the crowd's offers it has to
    /// read before it can answer ours: the answer timeouts of our offers to it start again
    /// ([`Conn::sharer_alive`]).
    fn sharer_alive(&mut self, now: Instant, share: &str) {
        if !share.starts_with(SHARE_PREFIX) {
            return;
        }
        let from = (share.to_string(), String::new());
        for ((s, _), c) in self.conns.range_mut(from..) {
            if s != share {
                break;
            }
            c.sharer_alive(now);
        }
    }

    fn is_ours(&self, recipient: &str) -> bool {
        self.shares.contains(recipient) || self.conns.keys().any(|(_, p)| p == recipient)
    }

    fn on_signal(&mut self, now: Instant, sig: SignalDoc) {
        let key = if self.shares.is_live(&sig.recipient) && sig.sender.starts_with(PEER_PREFIX) {
            (sig.recipient.clone(), sig.sender.clone())
        } else if sig.recipient.starts_with(PEER_PREFIX)
            && self
                .conns
                .get(&(sig.sender.clone(), sig.recipient.clone()))
                .is_some_and(|c| c.role == Role::Joiner)
        {
            (sig.sender.clone(), sig.recipient.clone())
        } else {
            if sig.recipient.starts_with(SHARE_PREFIX) && self.shares.contains(&sig.recipient) {
                // To a share we are unsharing: consume it so it does not linger.
                self.delete_doc(&sig.id, &sig.rev);
            }
            // A feed that shows others' signals (a hub that cannot filter) shows the sharer
            // answering the peers before us in a crowd, and the crowd's offers it still has to
            // read (our own among them): a hub that lags under a crowd lags the sharer as it
            // lags us, so the sharer is judged only on what it had time to answer.
            self.sharer_alive(now, &sig.sender);
            self.sharer_alive(now, &sig.recipient);
            self.diag.foreign_signals += 1;
            return;
        };
        self.delete_doc(&sig.id, &sig.rev);
        self.diag.signals_consumed += 1;
        if !self.conns.contains_key(&key) {
            let pending = self
                .conns
                .values()
                .filter(|c| c.state == ConnState::Pending)
                .count();
            if pending >= self.config.max_pending_peers {
                self.diag.peers_dropped += 1;
                return;
            }
            self.conns.insert(
                key.clone(),
                Conn::new(Role::Sharer, ConnState::Pending, sig.info.clone()),
            );
            self.events.push_back(HubEvent::PeerRequested {
                share: key.0.clone(),
                peer: key.1.clone(),
                info: sig.info.clone(),
            });
        }
        let max_buffered = self.config.max_buffered_signals;
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        c.receive(
            now,
            (&key.0, &key.1),
            (sig.n, sig.data),
            max_buffered,
            &mut self.events,
            &mut self.diag,
        );
    }
}

/// `_all_docs` over the ids that start with `prefix`.
fn prefix_range(prefix: &str) -> AllDocsRequest {
    AllDocsRequest {
        start_key: Some(prefix.to_string()),
        end_key: Some(format!("{prefix}\u{fff0}")),
        include_docs: true,
        ..AllDocsRequest::default()
    }
}
