//! [`ChangesFollower`]: a continuous `_changes` feed on its own thread, with reconnection.

use std::io::{self, BufRead, BufReader};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use peerpouch::hub::FeedFilter;
use peerpouch::{ChangeRow, Seq};
use serde_json::Value;
use ureq::http::{self, Method};

use crate::client::{ClientConfig, CouchClient};
use crate::error::Error;
use crate::http::{map_ureq, prefix, status_error, Fail};
use crate::url::{DbUrl, Query};

/// How a [`ChangesFollower`] follows the feed.
///
/// ```
/// use std::time::Duration;
/// use peerpouch::Seq;
/// use peerpouch_couch::FollowerConfig;
///
/// let config = FollowerConfig::default()
///     .since(Seq(serde_json::json!("now")))
///     .heartbeat(Duration::from_secs(5));
/// assert_eq!(config.heartbeat, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct FollowerConfig {
    /// Where to start (`0`, a sequence the database issued, or `"now"`). Default 0.
    pub since: Seq,
    /// How often the server sends an empty line while idle. The follower gives a connection up
    /// after three heartbeats of silence and notices [`ChangesFollower::stop`] within about
    /// one. Default 10 s.
    pub heartbeat: Duration,
    /// Ask for each row's document (`include_docs=true`). Default true.
    pub include_docs: bool,
    /// List every leaf revision (`style=all_docs`). Default true.
    pub all_docs_style: bool,
    /// Only these documents (sent as a `filter=_doc_ids` body, never without it).
    pub doc_ids: Option<Vec<String>>,
    /// Only the rows a hub node needs (sent as a `filter=_selector` body, CouchDB 2+). A server
    /// that refuses it (pouchdb-server 4.2.0 answers 404) or ignores it is followed whole
    /// instead, said once at info level and reported as [`FeedEvent::Unfiltered`]. Ignored
    /// when [`FollowerConfig::doc_ids`] is set.
    pub filter: Option<FeedFilter>,
    /// First reconnection delay; doubled per failed attempt. Default 500 ms.
    pub initial_backoff: Duration,
    /// Longest reconnection delay. Default 30 s.
    pub max_backoff: Duration,
    /// Longest line accepted, in bytes. A longer one is reported as
    /// [`FeedEvent::Malformed`] and the feed reconnects. Default 64 MiB.
    pub max_line_bytes: usize,
}

impl Default for FollowerConfig {
    fn default() -> Self {
        FollowerConfig {
            since: Seq::zero(),
            heartbeat: Duration::from_secs(10),
            include_docs: true,
            all_docs_style: true,
            doc_ids: None,
            filter: None,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            max_line_bytes: 64 << 20,
        }
    }
}

impl FollowerConfig {
    /// Sets [`FollowerConfig::since`].
    ///
    /// ```
    /// use peerpouch::Seq;
    /// let c = peerpouch_couch::FollowerConfig::default().since(Seq::from(42));
    /// assert_eq!(c.since, Seq::from(42));
    /// ```
    pub fn since(mut self, since: Seq) -> Self {
        self.since = since;
        self
    }

    /// Sets [`FollowerConfig::heartbeat`] (at least 10 ms).
    ///
    /// ```
    /// # use std::time::Duration;
    /// let c = peerpouch_couch::FollowerConfig::default().heartbeat(Duration::from_millis(1));
    /// assert_eq!(c.heartbeat, Duration::from_millis(10));
    /// ```
    pub fn heartbeat(mut self, heartbeat: Duration) -> Self {
        self.heartbeat = heartbeat.max(Duration::from_millis(10));
        self
    }

    /// Sets [`FollowerConfig::include_docs`].
    ///
    /// ```
    /// assert!(!peerpouch_couch::FollowerConfig::default().include_docs(false).include_docs);
    /// ```
    pub fn include_docs(mut self, yes: bool) -> Self {
        self.include_docs = yes;
        self
    }

    /// Sets [`FollowerConfig::doc_ids`].
    ///
    /// ```
    /// let c = peerpouch_couch::FollowerConfig::default().doc_ids(vec!["a".into()]);
    /// assert_eq!(c.doc_ids, Some(vec!["a".to_string()]));
    /// ```
    pub fn doc_ids(mut self, ids: Vec<String>) -> Self {
        self.doc_ids = Some(ids);
        self
    }

    /// Sets [`FollowerConfig::filter`].
    ///
    /// ```
    /// use peerpouch::hub::FeedFilter;
    /// let c = peerpouch_couch::FollowerConfig::default().filter(FeedFilter::new(["peer-1".to_string()]));
    /// assert!(c.filter.is_some());
    /// ```
    pub fn filter(mut self, filter: FeedFilter) -> Self {
        self.filter = Some(filter);
        self
    }

    /// Sets the reconnection backoff bounds.
    ///
    /// ```
    /// # use std::time::Duration;
    /// let c = peerpouch_couch::FollowerConfig::default()
    ///     .backoff(Duration::from_millis(100), Duration::from_secs(5));
    /// assert_eq!((c.initial_backoff, c.max_backoff), (Duration::from_millis(100), Duration::from_secs(5)));
    /// ```
    pub fn backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_backoff = initial;
        self.max_backoff = max.max(initial);
        self
    }

    /// Sets [`FollowerConfig::max_line_bytes`].
    ///
    /// ```
    /// assert_eq!(peerpouch_couch::FollowerConfig::default().max_line_bytes(1024).max_line_bytes, 1024);
    /// ```
    pub fn max_line_bytes(mut self, n: usize) -> Self {
        self.max_line_bytes = n.max(1);
        self
    }

    fn delay(&self, attempt: u32) -> Duration {
        let shift = attempt.saturating_sub(1).min(20);
        self.initial_backoff
            .saturating_mul(1u32 << shift)
            .min(self.max_backoff)
    }
}

/// What a [`ChangesFollower`] reports.
///
/// ```
/// use peerpouch_couch::FeedEvent;
/// fn show(ev: &FeedEvent) -> String {
///     match ev {
///         FeedEvent::Rows(rows) => format!("{} changes", rows.len()),
///         FeedEvent::Reconnecting { error, attempt, delay } => format!("retry {attempt} in {delay:?}: {error}"),
///         other => format!("{other:?}"),
///     }
/// }
/// assert_eq!(show(&FeedEvent::Rows(vec![])), "0 changes");
/// ```
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum FeedEvent {
    /// A feed request was answered with 200; rows after `since` follow.
    Connected {
        /// The sequence the feed (re)started from.
        since: Seq,
    },
    /// Rows, in feed order, as they arrived in one read.
    Rows(Vec<ChangeRow>),
    /// The connection failed or ended; the follower waits `delay`, then reconnects from the
    /// last sequence it delivered.
    Reconnecting {
        /// Why.
        error: Error,
        /// Failed attempts in a row (1 for the first).
        attempt: u32,
        /// The wait before the next attempt.
        delay: Duration,
    },
    /// The server cannot apply [`FollowerConfig::filter`] (it refused the `_selector` filter,
    /// or sent a row the filter does not pass): the follower now reads the whole feed, for the
    /// rest of its life.
    Unfiltered {
        /// What the server did.
        reason: String,
    },
    /// A line that is not a change row was skipped.
    Malformed {
        /// Its first bytes (at most 200), as text.
        line_prefix: String,
        /// Why it was refused.
        error: String,
    },
}

#[derive(Debug, Default)]
struct Shared {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, bool> {
        self.stopped.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn is_stopped(&self) -> bool {
        *self.lock()
    }

    /// Sleeps `d` unless stopped first; returns whether it was stopped.
    fn sleep(&self, d: Duration) -> bool {
        let g = self.lock();
        let (g, _) = self
            .wake
            .wait_timeout_while(g, d, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *g
    }
}

/// Follows a database's continuous `_changes` feed on its own thread and agent.
///
/// Requests `GET /db/_changes?feed=continuous&heartbeat=MS&since=SEQ&include_docs=true&style=all_docs`
/// (`POST` with `filter=_doc_ids` and a body when [`FollowerConfig::doc_ids`] is set, with
/// `filter=_selector` when [`FollowerConfig::filter`] is), reads it
/// line by line and sends [`FeedEvent`]s through a `std::sync::mpsc` channel: rows batched per
/// read, malformed lines (skipped, never fatal), and reconnections with exponential backoff
/// from the last delivered sequence. A connection silent for three heartbeats is given up.
/// [`ChangesFollower::stop`] (or dropping it) ends the thread within about one heartbeat and
/// joins it. The thread also ends when the receiver is dropped.
///
/// ```no_run
/// use peerpouch::Seq;
/// use peerpouch_couch::{ChangesFollower, CouchClient, FeedEvent, FollowerConfig};
///
/// let client = CouchClient::new("http://127.0.0.1:5984/db")?;
/// let (follower, events) = ChangesFollower::start(&client, FollowerConfig::default().since(Seq(serde_json::json!("now"))))?;
/// for ev in events.iter().take(10) {
///     if let FeedEvent::Rows(rows) = ev {
///         for row in rows {
///             println!("{} is now at {:?}", row.id, row.changes);
///         }
///     }
/// }
/// follower.stop();
/// # Ok::<(), peerpouch_couch::Error>(())
/// ```
#[derive(Debug)]
pub struct ChangesFollower {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ChangesFollower {
    /// Starts following; events arrive on the returned receiver.
    ///
    /// ```no_run
    /// # use peerpouch_couch::*;
    /// let client = CouchClient::new("http://127.0.0.1:5984/db")?;
    /// let (follower, rx) = ChangesFollower::start(&client, FollowerConfig::default())?;
    /// # drop((follower, rx));
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Unreachable`] if the thread cannot be spawned. Connection problems are events.
    pub fn start(
        client: &CouchClient,
        config: FollowerConfig,
    ) -> Result<(ChangesFollower, Receiver<FeedEvent>), Error> {
        let (tx, rx) = mpsc::channel();
        Ok((ChangesFollower::start_with_sender(client, config, tx)?, rx))
    }

    /// Starts following, sending events to `events` (so several sources can share a channel).
    ///
    /// ```no_run
    /// # use peerpouch_couch::*;
    /// let (tx, rx) = std::sync::mpsc::channel();
    /// let a = ChangesFollower::start_with_sender(&CouchClient::new("http://127.0.0.1:5984/a")?, FollowerConfig::default(), tx.clone())?;
    /// let b = ChangesFollower::start_with_sender(&CouchClient::new("http://127.0.0.1:5984/b")?, FollowerConfig::default(), tx)?;
    /// # drop((a, b, rx));
    /// # Ok::<(), Error>(())
    /// ```
    ///
    /// # Errors
    /// As [`ChangesFollower::start`].
    pub fn start_with_sender(
        client: &CouchClient,
        config: FollowerConfig,
        events: Sender<FeedEvent>,
    ) -> Result<ChangesFollower, Error> {
        let (url, client_config) = client.agent_config();
        let shared = Arc::new(Shared::default());
        let worker = Worker {
            url: url.clone(),
            agent: client_config.agent(url, None, Some(config.heartbeat.saturating_mul(3))),
            client_config: client_config.clone(),
            since: config.since.clone(),
            end_seq: None,
            filtering: config.filter.is_some() && config.doc_ids.is_none(),
            config,
            shared: shared.clone(),
            events,
        };
        let thread = std::thread::Builder::new()
            .name(format!("couch-changes {}", url.db_name()))
            .spawn(move || worker.run())
            .map_err(|e| Error::Unreachable {
                url: url.redacted().to_string(),
                detail: format!("cannot spawn the feed thread: {e}"),
            })?;
        Ok(ChangesFollower {
            shared,
            thread: Some(thread),
        })
    }

    /// Whether the feed thread is still running (it stops on [`ChangesFollower::stop`] or
    /// when the receiver is dropped).
    ///
    /// ```no_run
    /// # use peerpouch_couch::*;
    /// # let client = CouchClient::new("http://127.0.0.1:5984/db")?;
    /// let (follower, rx) = ChangesFollower::start(&client, FollowerConfig::default())?;
    /// assert!(follower.is_running());
    /// # drop(rx);
    /// # Ok::<(), Error>(())
    /// ```
    pub fn is_running(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Stops the feed without waiting for its thread: it sends nothing more and ends by
    /// itself within about one heartbeat. What a driver that replaces its feed calls, so as
    /// not to block.
    ///
    /// ```no_run
    /// # use peerpouch_couch::*;
    /// # let client = CouchClient::new("http://127.0.0.1:5984/db")?;
    /// let (follower, _rx) = ChangesFollower::start(&client, FollowerConfig::default())?;
    /// follower.stop_in_background();
    /// # Ok::<(), Error>(())
    /// ```
    pub fn stop_in_background(mut self) {
        *self.shared.lock() = true;
        self.shared.wake.notify_all();
        drop(self.thread.take());
    }

    /// Stops the feed and waits for its thread (about one heartbeat at most while the server
    /// is alive; up to three on a silent connection).
    ///
    /// ```no_run
    /// # use peerpouch_couch::*;
    /// # let client = CouchClient::new("http://127.0.0.1:5984/db")?;
    /// let (follower, _rx) = ChangesFollower::start(&client, FollowerConfig::default())?;
    /// follower.stop();
    /// # Ok::<(), Error>(())
    /// ```
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        *self.shared.lock() = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            if t.join().is_err() {
                tracing::error!("the changes feed thread panicked");
            }
        }
    }
}

impl Drop for ChangesFollower {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// How one connection ended.
enum Outcome {
    /// Stopped, or nobody listens any more.
    Quit,
    /// The server ended the feed with a `last_seq` line: reconnect at once.
    Ended,
    /// Reconnect after a backoff; `progressed` if the connection delivered anything.
    Failed { error: Error, progressed: bool },
}

enum Line {
    Data,
    Eof,
    TooLong,
}

/// Reads one `\n`-terminated line into `buf` (without the `\n`), never holding more than `cap`
/// bytes. A partial line at end of stream is dropped (the connection broke mid-line).
fn read_line_capped<R: BufRead>(r: &mut R, buf: &mut Vec<u8>, cap: usize) -> io::Result<Line> {
    buf.clear();
    loop {
        let avail = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(Line::Eof);
        }
        match avail.iter().position(|&b| b == b'\n') {
            Some(i) => {
                if buf.len() + i > cap {
                    r.consume(i + 1);
                    return Ok(Line::TooLong);
                }
                buf.extend_from_slice(&avail[..i]);
                r.consume(i + 1);
                return Ok(Line::Data);
            }
            None => {
                let n = avail.len();
                if buf.len() + n > cap {
                    r.consume(n);
                    return Ok(Line::TooLong);
                }
                buf.extend_from_slice(avail);
                r.consume(n);
            }
        }
    }
}

struct Worker {
    url: DbUrl,
    agent: ureq::Agent,
    client_config: ClientConfig,
    config: FollowerConfig,
    since: Seq,
    /// The `last_seq` of a line that ended the feed, applied after the batch before it.
    end_seq: Option<Seq>,
    /// Whether requests carry [`FollowerConfig::filter`] (until the server shows it cannot).
    filtering: bool,
    shared: Arc<Shared>,
    events: Sender<FeedEvent>,
}

impl Worker {
    fn run(mut self) {
        let mut attempt = 0u32;
        loop {
            if self.shared.is_stopped() {
                return;
            }
            match self.connect_once() {
                Outcome::Quit => return,
                Outcome::Ended => {
                    attempt = 0;
                    tracing::debug!(since = %self.since, "feed ended by the server; reconnecting");
                }
                Outcome::Failed { error, progressed } => {
                    if progressed {
                        attempt = 0;
                    }
                    attempt = attempt.saturating_add(1);
                    let delay = self.config.delay(attempt);
                    tracing::info!(url = %self.url.redacted(), %error, attempt, ?delay, "changes feed reconnecting");
                    let ev = FeedEvent::Reconnecting {
                        error,
                        attempt,
                        delay,
                    };
                    if self.events.send(ev).is_err() || self.shared.sleep(delay) {
                        return;
                    }
                }
            }
        }
    }

    fn request_path(&self) -> String {
        let mut q = Query::new();
        q.push("feed", "continuous");
        q.push("heartbeat", &self.config.heartbeat.as_millis().to_string());
        q.push("since", &self.since.to_string());
        q.flag("include_docs", self.config.include_docs);
        if self.config.all_docs_style {
            q.push("style", "all_docs");
        }
        if self.config.doc_ids.is_some() {
            // Always with the doc_ids body (pouchdb-server crashes without it).
            q.push("filter", "_doc_ids");
        } else if self.filtering {
            q.push("filter", "_selector");
        }
        format!("/_changes{}", q.as_str())
    }

    fn connect_once(&mut self) -> Outcome {
        let uri = self.url.join(&self.request_path());
        let mut b = http::Request::builder()
            .uri(&uri)
            .header("Accept", "application/json");
        if let Some(auth) = self.url.auth_header() {
            b = b.header("Authorization", auth);
        }
        let failed = |error| Outcome::Failed {
            error,
            progressed: false,
        };
        let body = match (&self.config.doc_ids, &self.config.filter) {
            (Some(ids), _) => Some(serde_json::json!({ "doc_ids": ids })),
            (None, Some(f)) if self.filtering => Some(f.to_selector_body()),
            _ => None,
        };
        let sent = match body {
            Some(body) => {
                let body = serde_json::to_vec(&body).unwrap_or_default();
                b.method(Method::POST)
                    .header("Content-Type", "application/json")
                    .body(body)
                    .map(|req| self.agent.run(req))
            }
            None => b
                .method(Method::GET)
                .body(())
                .map(|req| self.agent.run(req)),
        };
        let resp = match sent {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return failed(self.error(e)),
            Err(e) => return failed(Error::InvalidUrl(e.to_string())),
        };
        let status = resp.status().as_u16();
        let reader = resp.into_body().into_with_config().limit(u64::MAX).reader();
        if !(200..300).contains(&status) {
            use std::io::Read;
            let mut body = Vec::new();
            let _ = reader.take(64 * 1024).read_to_end(&mut body);
            // Servers without `_selector` (CouchDB 1, pouchdb-server 4.2.0: 404 "missing")
            // refuse it; auth, rate and availability problems are not that.
            if self.filtering && matches!(status, 400 | 404 | 405 | 500 | 501) {
                let reason = format!(
                    "the server refused filter=_selector: HTTP {status} {}",
                    prefix(&body, 200)
                );
                return match self.unfiltered(reason) {
                    true => Outcome::Ended,
                    false => Outcome::Quit,
                };
            }
            return failed(status_error(status, &body));
        }
        tracing::debug!(url = %self.url.redacted(), since = %self.since, "changes feed connected");
        if self
            .events
            .send(FeedEvent::Connected {
                since: self.since.clone(),
            })
            .is_err()
        {
            return Outcome::Quit;
        }
        let mut reader = BufReader::with_capacity(64 * 1024, reader);
        self.read_feed(&mut reader)
    }

    fn read_feed<R: io::Read>(&mut self, reader: &mut BufReader<R>) -> Outcome {
        let mut progressed = false;
        let mut line = Vec::new();
        let mut batch: Vec<ChangeRow> = Vec::new();
        loop {
            if self.shared.is_stopped() {
                return Outcome::Quit;
            }
            let got = read_line_capped(reader, &mut line, self.config.max_line_bytes);
            let outcome = match got {
                Err(e) => Some(Outcome::Failed {
                    error: self.error(ureq::Error::from(e)),
                    progressed,
                }),
                Ok(Line::Eof) => Some(Outcome::Failed {
                    error: Error::Unreachable {
                        url: self.url.redacted().to_string(),
                        detail: "the server closed the changes feed".into(),
                    },
                    progressed,
                }),
                Ok(Line::TooLong) => {
                    let error = Error::LineTooLong {
                        limit: self.config.max_line_bytes,
                    };
                    if !self.malformed(&line, error.to_string()) {
                        return Outcome::Quit;
                    }
                    Some(Outcome::Failed { error, progressed })
                }
                Ok(Line::Data) => {
                    progressed = true;
                    match self.handle_line(&line, &mut batch) {
                        Ok(None) => None,
                        Ok(Some(o)) => Some(o),
                        Err(()) => return Outcome::Quit,
                    }
                }
            };
            // One batch per read: flush when no complete line is left buffered, or on the end.
            if outcome.is_some() || !reader.buffer().contains(&b'\n') {
                if let Some(last) = batch.last() {
                    self.since = last.seq.clone();
                    if self
                        .events
                        .send(FeedEvent::Rows(std::mem::take(&mut batch)))
                        .is_err()
                    {
                        return Outcome::Quit;
                    }
                }
            }
            if let Some(seq) = self.end_seq.take() {
                self.since = seq;
            }
            if let Some(o) = outcome {
                return match o {
                    Outcome::Failed { error, .. } => Outcome::Failed { error, progressed },
                    o => o,
                };
            }
        }
    }

    /// One complete line. `Err` when nobody listens any more.
    fn handle_line(
        &mut self,
        line: &[u8],
        batch: &mut Vec<ChangeRow>,
    ) -> Result<Option<Outcome>, ()> {
        let text = line.trim_ascii();
        if text.is_empty() {
            return Ok(None); // heartbeat
        }
        let v: Value = match serde_json::from_slice(text) {
            Ok(v) => v,
            Err(e) => {
                return if self.malformed(text, format!("not JSON: {e}")) {
                    Ok(None)
                } else {
                    Err(())
                }
            }
        };
        if let Value::Object(m) = &v {
            if m.contains_key("last_seq") && !m.contains_key("changes") {
                // The feed ended (CouchDB sends this on timeout); continue from there.
                if let Some(seq) = m.get("last_seq").filter(|s| !s.is_null()) {
                    self.end_seq = Some(Seq(seq.clone()));
                }
                return Ok(Some(Outcome::Ended));
            }
            if let Some(err) = m.get("error") {
                let reason = m.get("reason").and_then(Value::as_str).unwrap_or("");
                return Ok(Some(Outcome::Failed {
                    error: Error::BadResponse {
                        url: self.url.redacted().to_string(),
                        detail: format!(
                            "the feed reported an error: {} {reason}",
                            err.as_str()
                                .map(String::from)
                                .unwrap_or_else(|| err.to_string())
                        ),
                    },
                    progressed: true,
                }));
            }
        }
        match serde_json::from_value::<ChangeRow>(v) {
            Ok(row) => {
                let passes = self.config.filter.as_ref().is_none_or(|f| f.matches(&row));
                if self.filtering && !passes {
                    let reason = format!("the server ignores filter=_selector (sent {})", row.id);
                    if !self.unfiltered(reason) {
                        return Err(());
                    }
                }
                batch.push(row)
            }
            Err(e) => {
                if !self.malformed(text, format!("not a change row: {e}")) {
                    return Err(());
                }
            }
        }
        Ok(None)
    }

    /// Follows the whole feed from now on; `false` when nobody listens any more.
    fn unfiltered(&mut self, reason: String) -> bool {
        self.filtering = false;
        tracing::info!(url = %self.url.redacted(), %reason, "the hub cannot filter its changes feed; following all of it (every node's signals are read, and ignored)");
        self.events.send(FeedEvent::Unfiltered { reason }).is_ok()
    }

    /// Reports a skipped line; `false` when nobody listens any more.
    fn malformed(&self, line: &[u8], error: String) -> bool {
        let line_prefix = prefix(line, 200);
        tracing::warn!(url = %self.url.redacted(), %error, line = %line_prefix, "skipping a malformed _changes line");
        self.events
            .send(FeedEvent::Malformed { line_prefix, error })
            .is_ok()
    }

    fn error(&self, e: ureq::Error) -> Error {
        if let ureq::Error::Timeout(ureq::Timeout::PerRead) = e {
            return Error::Unreachable {
                url: self.url.redacted().to_string(),
                detail: format!(
                    "nothing received for {:?} (3 heartbeats); the connection looks dead",
                    self.config.heartbeat.saturating_mul(3)
                ),
            };
        }
        match map_ureq(e, &self.url) {
            Fail::Err(e) => e,
            Fail::Deadline => Error::Unreachable {
                url: self.url.redacted().to_string(),
                detail: format!(
                    "timed out (connect timeout {:?})",
                    self.client_config.connect_timeout
                ),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capped_lines() {
        let data = b"one\n\ntwo-is-long\nthree".to_vec();
        let mut r = BufReader::with_capacity(4, &data[..]);
        let mut buf = Vec::new();
        assert!(matches!(
            read_line_capped(&mut r, &mut buf, 8),
            Ok(Line::Data)
        ));
        assert_eq!(buf, b"one");
        assert!(matches!(
            read_line_capped(&mut r, &mut buf, 8),
            Ok(Line::Data)
        ));
        assert_eq!(buf, b"");
        assert!(matches!(
            read_line_capped(&mut r, &mut buf, 8),
            Ok(Line::TooLong)
        ));
        assert!(buf.len() <= 8);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let c =
            FollowerConfig::default().backoff(Duration::from_millis(100), Duration::from_secs(1));
        let d: Vec<u64> = (1..=6).map(|a| c.delay(a).as_millis() as u64).collect();
        assert_eq!(d, [100, 200, 400, 800, 1000, 1000]);
    }
}
