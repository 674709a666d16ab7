//! A blocking driver for the share negotiation machine ([`peerpouch::hub::Hub`]) on a CouchDB hub.

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use peerpouch::hub::{Hub, HubAction, HubConfig, HubEvent};
use peerpouch::Database;

use crate::{ChangesFollower, CouchClient, Error, FeedEvent, FollowerConfig};

/// Runs one [`Hub`] machine against a CouchDB hub database: executes its requests with a
/// [`CouchClient`], follows the hub's changes feed with a [`ChangesFollower`] (on its own
/// thread) and fires its timers on the real clock.
///
/// The feed is filtered to what the machine needs ([`peerpouch::hub::FeedFilter`]) where the
/// server can (`filter=_selector`, CouchDB 2+); on a server that cannot (pouchdb-server
/// 4.2.0) it is the whole feed, said once at info level, and kept as it is when the machine
/// asks for a new filter.
///
/// Commands go to the machine through [`HubNode::command`]; [`HubNode::step`] does the IO and
/// returns the events.
///
/// ```no_run
/// use std::time::Duration;
/// use peerpouch::hub::{HubConfig, HubEvent, ShareOptions};
/// use peerpouch_couch::HubNode;
///
/// let mut node = HubNode::connect("http://127.0.0.1:5984/hub", HubConfig::default(), 7)?;
/// let share = node.command(|hub, now| hub.share(now, ShareOptions::default()));
/// let events = node.run_until(Duration::from_secs(10), |e| {
///     matches!(e, HubEvent::ShareCreated { share: s } if *s == share)
/// })?;
/// # Ok::<(), peerpouch_couch::Error>(())
/// ```
#[derive(Debug)]
pub struct HubNode {
    hub: Hub,
    client: CouchClient,
    follower: Option<ChangesFollower>,
    feed: Option<Receiver<FeedEvent>>,
    heartbeat: Duration,
    /// The server cannot filter the feed (found out by a follower).
    unfiltered: bool,
}

impl HubNode {
    /// Connects to the hub database at `url` (creating it if missing) and starts the machine.
    ///
    /// # Errors
    /// [`Error`] when the URL is invalid or the database cannot be created.
    pub fn connect(url: &str, config: HubConfig, seed: u64) -> Result<HubNode, Error> {
        let client = CouchClient::new(url)?;
        client.create_db(true)?;
        let now = Instant::now();
        let wall = crate::wall_clock_ms();
        Ok(HubNode {
            hub: Hub::new(config, seed, now, wall),
            client,
            follower: None,
            feed: None,
            heartbeat: Duration::from_secs(10),
            unfiltered: false,
        })
    }

    /// Sets the changes feed heartbeat (before the first [`HubNode::step`]).
    pub fn with_heartbeat(mut self, heartbeat: Duration) -> HubNode {
        self.heartbeat = heartbeat;
        self
    }

    /// Gives a command to the machine at the current time.
    pub fn command<T>(&mut self, f: impl FnOnce(&mut Hub, Instant) -> T) -> T {
        f(&mut self.hub, Instant::now())
    }

    /// Whether the hub was found unable to filter its changes feed (the whole feed is read).
    pub fn is_unfiltered(&self) -> bool {
        self.unfiltered
    }

    /// The machine (for inspection: diagnostics, readiness).
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Executes pending actions, then waits at most `max_wait` (less if a timer is due) for feed
    /// rows, feeds them and due timers to the machine, and returns the events that came out.
    ///
    /// # Errors
    /// [`Error`] when the changes follower cannot be started.
    pub fn step(&mut self, max_wait: Duration) -> Result<Vec<HubEvent>, Error> {
        let mut events = Vec::new();
        self.drain(&mut events)?;
        let now = Instant::now();
        let mut deadline = now + max_wait;
        if let Some(t) = self.hub.poll_timeout() {
            deadline = deadline.min(t.max(now));
        }
        if let Some(rx) = &self.feed {
            let wait = deadline.saturating_duration_since(Instant::now());
            let mut got = Vec::new();
            match rx.recv_timeout(wait) {
                Ok(ev) => got.push(ev),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(Error::Unreachable {
                        url: self.client.url().redacted().to_string(),
                        detail: "the changes follower stopped".into(),
                    })
                }
            }
            got.extend(rx.try_iter());
            for ev in got {
                match ev {
                    FeedEvent::Rows(rows) => self.hub.handle_feed(Instant::now(), rows),
                    FeedEvent::Unfiltered { .. } => self.unfiltered = true,
                    FeedEvent::Reconnecting { error, attempt, .. } => {
                        tracing::debug!(%error, attempt, "hub changes feed reconnecting");
                    }
                    FeedEvent::Malformed { error, .. } => {
                        tracing::debug!(%error, "malformed changes line skipped");
                    }
                    _ => {}
                }
            }
        } else {
            let wait = deadline.saturating_duration_since(Instant::now());
            if !wait.is_zero() && self.hub.poll_timeout().is_some() {
                std::thread::sleep(wait.min(Duration::from_millis(50)));
            }
        }
        self.hub.handle_timeout(Instant::now());
        self.drain(&mut events)?;
        Ok(events)
    }

    /// Steps until `stop` is true for an event or `within` has passed; returns every event seen.
    ///
    /// # Errors
    /// As [`HubNode::step`], or [`Error::Unreachable`] with "timed out" when `within` passed
    /// without `stop` being true.
    pub fn run_until(
        &mut self,
        within: Duration,
        mut stop: impl FnMut(&HubEvent) -> bool,
    ) -> Result<Vec<HubEvent>, Error> {
        let end = Instant::now() + within;
        let mut all = Vec::new();
        while Instant::now() < end {
            let evs = self.step(Duration::from_millis(100))?;
            let done = evs.iter().any(&mut stop);
            all.extend(evs);
            if done {
                return Ok(all);
            }
        }
        Err(Error::Unreachable {
            url: self.client.url().redacted().to_string(),
            detail: format!("timed out after {within:?}; events so far: {all:?}"),
        })
    }

    fn drain(&mut self, events: &mut Vec<HubEvent>) -> Result<(), Error> {
        loop {
            let mut acted = false;
            while let Some(action) = self.hub.poll_action() {
                acted = true;
                match action {
                    HubAction::Request { id, request } => {
                        let result = self.client.execute(request);
                        // The id comes from this machine: never unknown.
                        let _ = self.hub.handle_response(Instant::now(), id, result);
                    }
                    HubAction::FollowChanges { since, filter } => {
                        if self.unfiltered && self.follower.is_some() {
                            // The whole feed already brings the new id's signals.
                            continue;
                        }
                        let config = FollowerConfig::default()
                            .since(since)
                            .heartbeat(self.heartbeat)
                            .filter(filter);
                        let (f, rx) = ChangesFollower::start(&self.client, config)?;
                        // Rows of the old feed still queued go with it: the new one brings
                        // them again from the machine's last row.
                        if let Some(old) = self.follower.replace(f) {
                            old.stop_in_background();
                        }
                        self.feed = Some(rx);
                    }
                }
            }
            while let Some(e) = self.hub.poll_event() {
                events.push(e);
            }
            if !acted {
                return Ok(());
            }
        }
    }
}

impl Drop for HubNode {
    fn drop(&mut self) {
        if let Some(f) = self.follower.take() {
            f.stop();
        }
    }
}
