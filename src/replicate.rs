//! The CouchDB replication protocol as a sans-IO machine.
//!
//! [`Replicator`] copies every document revision a source has and a target lacks, with its full
//! history, so both end up with the same revision trees (and so the same winners and conflicts).
//! It follows the CouchDB replication protocol
//! (<https://docs.couchdb.org/en/stable/replication/protocol.html>):
//!
//! 1. read the replication logs (`_local/<replication id>`) on both sides and find the last
//!    checkpoint they agree on;
//! 2. read the source's changes since then, in batches (`style=all_docs`);
//! 3. ask the target which of those revisions it lacks (`_revs_diff`);
//! 4. fetch the missing revisions with their history and attachments (`_bulk_get` with
//!    `revs=true`, `latest=true`, `atts_since` = the target's possible ancestors);
//! 5. write them to the target as they are (`_bulk_docs` with `new_edits: false`);
//! 6. record a checkpoint on both sides once every batch up to a sequence is written.
//!
//! Several batches are in flight at once (changes are read ahead while earlier batches are
//! fetched and written), but a checkpoint only covers a contiguous prefix of finished batches, so
//! an interrupted replication never skips a change when it resumes.
//!
//! ## Inputs, outputs and the drain rule
//! - Commands: [`Replicator::new`] (starts it), [`Replicator::cancel`].
//! - Inputs: [`Replicator::handle_response`] (the result of a request, by id),
//!   [`Replicator::handle_timeout`] (retry deadlines).
//! - Outputs: [`Replicator::poll_request`] (requests for the source or the target),
//!   [`Replicator::poll_event`] (progress and the end), [`Replicator::poll_timeout`].
//!
//! After each input, drain `poll_request` and `poll_event` until they return `None`.
//! Transient failures (5xx, unreachable) are retried with exponential backoff; other failures end
//! the replication with [`ReplicationEvent::Failed`].

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{json, Value};

use crate::error::DbError;
use crate::ops::*;
pub use crate::retry::RequestId;
use crate::retry::{Ledger, RetryPolicy};
use crate::rev::{md5_hex, write_canonical, Rev};
use crate::store::Database;

/// Bumped when the checkpoint format or the replication id recipe changes.
const REPLICATION_ID_VERSION: u64 = 1;
/// Checkpoint history entries kept (CouchDB keeps 50).
const MAX_HISTORY: usize = 50;
/// [`ReplicatorConfig::attachment_range`] by default.
pub const DEFAULT_ATTACHMENT_RANGE: u64 = 1 << 20;
/// Times a batch reads its documents again (an attachment gone from the source meanwhile, an
/// upload the target forgot) before the replication fails.
const MAX_REFETCHES: u32 = 3;
/// Ranges of an attachment read ahead of those written to the target.
const READ_AHEAD: usize = 4;

/// Which side of a replication a request is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Endpoint {
    /// The database copied from.
    Source,
    /// The database copied to.
    Target,
}

/// A request the replicator wants executed against one endpoint.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointRequest {
    /// Give this back with the result.
    pub id: RequestId,
    /// Where to execute it.
    pub endpoint: Endpoint,
    /// What to execute.
    pub request: Request,
}

/// How to replicate.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ReplicatorConfig {
    /// A stable identity of the source: its [`DbInfo::db_uuid`] when it has one (a CouchDB
    /// database over HTTP has none: its URL). With `target_id` and `doc_ids` it makes the
    /// replication id, so checkpoints survive restarts and reconnections: never use what
    /// changes between two handles on one database (a share id, a peer id, a path as typed).
    pub source_id: String,
    /// A stable identity of the target.
    pub target_id: String,
    /// Keep following the source's changes after catching up.
    pub live: bool,
    /// Changes read per batch (CouchDB's `worker_batch_size`; 500 by default, as CouchDB's).
    /// The changes feed is read one page at a time (each read starts where the last ended), so
    /// a batch is what one round trip brings: 100 capped a 40 ms path at 2 500 docs/s.
    pub batch_size: usize,
    /// Batches being diffed, fetched or written at once.
    pub batches_in_flight: usize,
    /// Replicate only these documents.
    pub doc_ids: Option<Vec<String>>,
    /// Write a checkpoint after this many finished batches (always at the end).
    pub checkpoint_every: usize,
    /// Retries of a request that failed transiently before the replication fails.
    pub retry: RetryPolicy,
    /// In live mode, how long the source may hold an empty changes request.
    pub longpoll_timeout: Duration,
    /// Attachments longer than this many bytes are not carried inline (base64 inside
    /// `_bulk_get` and `_bulk_docs`) but read from the source and written to the target in
    /// ranges of this size (`read_attachment`, `stage_attachment`), so neither side, nor the
    /// replication, ever holds one whole: memory stays bounded by batches × this, whatever the
    /// attachments' sizes. 1 MiB by default; `None` inlines every attachment, as CouchDB's
    /// replicator does. An endpoint that cannot (a CouchDB server, an older peer) answers
    /// 501, and the replication then inlines from there on by itself.
    pub attachment_range: Option<u64>,
}

impl ReplicatorConfig {
    /// A one-shot replication between two identities, with default tuning.
    pub fn new(source_id: impl Into<String>, target_id: impl Into<String>) -> Self {
        ReplicatorConfig {
            source_id: source_id.into(),
            target_id: target_id.into(),
            live: false,
            batch_size: 500,
            batches_in_flight: 4,
            doc_ids: None,
            checkpoint_every: 1,
            retry: RetryPolicy::default(),
            longpoll_timeout: Duration::from_secs(30),
            attachment_range: Some(DEFAULT_ATTACHMENT_RANGE),
        }
    }

    /// Sets live (continuous) mode.
    pub fn live(mut self, live: bool) -> Self {
        self.live = live;
        self
    }

    /// Sets [`ReplicatorConfig::attachment_range`] (`Some(0)` counts as 1 byte).
    pub fn attachment_range(mut self, bytes: Option<u64>) -> Self {
        self.attachment_range = bytes.map(|b| b.max(1));
        self
    }

    /// Sets the batch size (at least 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// Sets how many batches may be in flight (at least 1).
    pub fn batches_in_flight(mut self, n: usize) -> Self {
        self.batches_in_flight = n.max(1);
        self
    }

    /// Restricts replication to these document ids.
    pub fn doc_ids(mut self, ids: Vec<String>) -> Self {
        self.doc_ids = Some(ids);
        self
    }

    /// Sets how many finished batches make a checkpoint (at least 1).
    pub fn checkpoint_every(mut self, n: usize) -> Self {
        self.checkpoint_every = n.max(1);
        self
    }

    /// The replication id: the same for the same source, target and filter, on every run.
    pub fn replication_id(&self) -> String {
        let mut ids = self.doc_ids.clone();
        if let Some(ids) = ids.as_mut() {
            ids.sort();
            ids.dedup();
        }
        let mut buf = Vec::new();
        write_canonical(
            &mut buf,
            &json!([REPLICATION_ID_VERSION, self.source_id, self.target_id, ids]),
        );
        md5_hex(&buf)
    }
}

/// Counts reported as a replication runs.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct Progress {
    /// Change rows read from the source.
    pub changes_read: u64,
    /// Revisions missing on the target, as `_revs_diff` reported.
    pub revs_missing: u64,
    /// Documents (revisions) fetched from the source.
    pub docs_read: u64,
    /// Revisions the source could not return (deleted or compacted meanwhile).
    pub doc_read_failures: u64,
    /// Revisions written to the target.
    pub docs_written: u64,
    /// Revisions the target refused.
    pub doc_write_failures: u64,
    /// The source sequence up to which everything is replicated and checkpointed.
    pub checkpointed_seq: Seq,
    /// The newest source sequence read.
    pub last_seq: Seq,
    /// Checkpoints written.
    pub checkpoints: u64,
    /// Attachment bytes carried in ranges (attachments too large to go inline; see
    /// [`ReplicatorConfig::attachment_range`]).
    pub attachment_bytes: u64,
}

/// What a replication reports.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ReplicationEvent {
    /// The logs were read; changes are read from `since`.
    Started {
        /// The replication id (`_local/<id>` holds the checkpoints).
        replication_id: String,
        /// Where it resumes (0 on a first run).
        since: Seq,
    },
    /// A batch was written.
    Progressed(Progress),
    /// Live mode: everything the source had is replicated; waiting for new changes.
    CaughtUp(Progress),
    /// One-shot mode: done, checkpoint written.
    Completed(Progress),
    /// The replication stopped on an error.
    Failed {
        /// Why.
        error: ReplicationError,
        /// Where it got to.
        progress: Progress,
    },
    /// [`Replicator::cancel`] stopped it.
    Cancelled(Progress),
}

/// Why a replication failed, or why an input was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplicationError {
    /// An endpoint answered a request with an error that retrying did not fix.
    #[error("{endpoint:?} failed {op}: {error}")]
    Endpoint {
        /// Which side.
        endpoint: Endpoint,
        /// The operation (`changes`, `bulk_docs`, ...).
        op: &'static str,
        /// The error.
        error: DbError,
    },
    /// An endpoint is gone for good: the link to the peer serving it closed. Open the share again
    /// and start the replication again with the same config: it resumes from its last
    /// checkpoint.
    #[error("{endpoint:?} is gone: {reason}; open it again to resume")]
    EndpointLost {
        /// Which side.
        endpoint: Endpoint,
        /// Why (the link's close reason).
        reason: String,
    },
    /// A response came back for an id this machine never issued; it was ignored.
    #[error("no request {0:?} was issued")]
    UnknownRequest(RequestId),
    /// The configuration cannot work (for example live mode in the blocking [`replicate`]).
    #[error("invalid replication config: {0}")]
    InvalidConfig(String),
    /// The driver stopped feeding the machine while it waited for answers.
    #[error("replication stalled: {0}")]
    Stalled(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Purpose {
    ReadLog(Endpoint),
    Changes,
    RevsDiff(u64),
    BulkGet(u64),
    /// A range of a batch's current attachment (batch, job number).
    ReadPart(u64, u64),
    /// Writing that range to the target (batch, job number).
    StagePart(u64, u64),
    BulkDocs(u64),
    WriteLog(Endpoint),
    RefreshLog(Endpoint),
}

#[derive(Debug)]
struct Sent {
    /// What the answer is for.
    purpose: Purpose,
    endpoint: Endpoint,
    /// The request's name, for errors.
    op: &'static str,
    /// What a retry sends: the request again, or for a batch's write its read (see
    /// [`Replicator::send_keeping`]).
    retry: (Purpose, Endpoint, Request),
    attempt: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    Diffing,
    Fetching,
    /// Carrying the batch's large attachments in ranges before writing its documents.
    Moving,
    Writing,
    Done,
}

/// An attachment a batch carries in ranges: read from the source, staged on the target.
#[derive(Debug)]
struct Move {
    digest: String,
    content_type: String,
    length: u64,
    /// Where the next new read starts.
    read_at: u64,
    /// Ranges to read again (a server sent fewer bytes than asked): start to end.
    wanted: BTreeMap<u64, u64>,
    /// Reads in flight: start to end asked.
    reading: BTreeMap<u64, u64>,
    /// Ranges read and not yet written to the target, by start.
    read: BTreeMap<u64, AttachmentPart>,
    /// Where the next range to write starts.
    stage_at: u64,
    staging: bool,
    /// The range being written to the target.
    staging_from: u64,
    staging_end: u64,
    /// The target answered a first, empty range: it does not hold the bytes.
    probed: bool,
}

impl Move {
    fn new(digest: String, content_type: String, length: u64) -> Move {
        Move {
            digest,
            content_type,
            length,
            read_at: 0,
            wanted: BTreeMap::new(),
            reading: BTreeMap::new(),
            read: BTreeMap::new(),
            stage_at: 0,
            staging: false,
            staging_from: 0,
            staging_end: 0,
            probed: false,
        }
    }

    /// Its bytes from `offset` on, to the target.
    fn stage(&self, offset: u64, data: Bytes) -> Request {
        Request::StageAttachment(StageRequest {
            digest: self.digest.clone(),
            content_type: self.content_type.clone(),
            length: self.length,
            offset,
            data,
        })
    }

    /// Whether any of it was asked for yet.
    fn started(&self) -> bool {
        self.read_at > 0 || self.staging
    }
}

#[derive(Debug)]
struct Batch {
    id: u64,
    last_seq: Seq,
    rows: Vec<ChangeRow>,
    stage: Stage,
    sent_docs: u64,
    /// Its documents were read and counted (a write retried after a failure reads them again).
    read: bool,
    /// Read documents waiting for their large attachments ([`Stage::Moving`]).
    docs: Vec<Value>,
    /// Those attachments, one moving at a time.
    moves: VecDeque<Move>,
    /// Numbers the front move: answers for an earlier one (finished, or started over) are
    /// ignored.
    move_no: u64,
    /// The batch's `_bulk_get`, to read its documents again.
    fetch: Option<BulkGetRequest>,
    refetches: u32,
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    ReadingLogs,
    Running,
    Finished,
}

/// The replication machine. See the [module docs](self).
///
/// ```
/// use peerpouch::{Database, Endpoint, MemoryStore, ReplicationEvent, Replicator, ReplicatorConfig};
/// use serde_json::json;
///
/// let mut source = MemoryStore::new("a");
/// let mut target = MemoryStore::new("b");
/// source.put(json!({"_id": "x", "v": 1})).unwrap();
/// let mut rep = Replicator::new(ReplicatorConfig::new("a", "b"), 7);
/// let now = std::time::Instant::now(); // drivers pass their clock; nothing here waits
/// let mut done = None;
/// while done.is_none() {
///     while let Some(req) = rep.poll_request() {
///         let db: &mut dyn Database = match req.endpoint {
///             Endpoint::Source => &mut source,
///             Endpoint::Target => &mut target,
///         };
///         let result = db.execute(req.request);
///         rep.handle_response(now, req.id, result).unwrap();
///     }
///     while let Some(ev) = rep.poll_event() {
///         if let ReplicationEvent::Completed(p) = ev {
///             done = Some(p);
///         }
///     }
/// }
/// assert_eq!(done.unwrap().docs_written, 1);
/// assert_eq!(target.get("x").unwrap()["v"], 1);
/// ```
#[derive(Debug)]
pub struct Replicator {
    config: ReplicatorConfig,
    rep_id: String,
    session_id: String,
    state: State,
    /// Requests in flight and waiting for a retry.
    requests: Ledger<Sent>,
    out: VecDeque<EndpointRequest>,
    events: VecDeque<ReplicationEvent>,
    logs: [Option<Doc>; 2],
    logs_read: u8,
    log_revs: [Option<String>; 2],
    log_writing: [bool; 2],
    /// The checkpoint being written (confirmed once both sides answered).
    checkpoint_writing: Option<Seq>,
    /// The last checkpoint issued (confirmed or not).
    checkpoint_issued: Seq,
    checkpoint_doc: Doc,
    log_conflicts: u32,
    /// One side's write of the current checkpoint lost to other writers: it does not count.
    checkpoint_lost: bool,
    source_log_disabled: bool,
    history: Vec<Value>,
    since: Seq,
    changes_inflight: bool,
    /// The changes request in flight is a longpoll: waiting on it is being idle.
    longpoll_inflight: bool,
    at_end: bool,
    caught_up_reported: bool,
    batches: VecDeque<Batch>,
    next_batch: u64,
    done_seq: Option<Seq>,
    batches_since_checkpoint: usize,
    progress: Progress,
    /// [`ReplicatorConfig::attachment_range`] until an endpoint answers that it cannot.
    ranges: Option<u64>,
}

fn slot(e: Endpoint) -> usize {
    match e {
        Endpoint::Source => 0,
        Endpoint::Target => 1,
    }
}

impl Replicator {
    /// Starts a replication. `seed` makes the session id (drivers pass OS randomness, tests a
    /// constant); the first requests are ready at once.
    pub fn new(config: ReplicatorConfig, seed: u64) -> Replicator {
        let rep_id = config.replication_id();
        let session_id = md5_hex(format!("{seed}\0{rep_id}").as_bytes());
        let mut r = Replicator {
            config,
            rep_id,
            session_id,
            state: State::ReadingLogs,
            requests: Ledger::default(),
            out: VecDeque::new(),
            events: VecDeque::new(),
            logs: [None, None],
            logs_read: 0,
            log_revs: [None, None],
            log_writing: [false, false],
            checkpoint_writing: None,
            checkpoint_issued: Seq::zero(),
            checkpoint_doc: Doc::new(),
            log_conflicts: 0,
            checkpoint_lost: false,
            source_log_disabled: false,
            history: Vec::new(),
            since: Seq::zero(),
            changes_inflight: false,
            longpoll_inflight: false,
            at_end: false,
            caught_up_reported: false,
            batches: VecDeque::new(),
            next_batch: 0,
            done_seq: None,
            batches_since_checkpoint: 0,
            progress: Progress::default(),
            ranges: None,
        };
        r.ranges = r.config.attachment_range;
        for e in [Endpoint::Source, Endpoint::Target] {
            let id = r.log_id();
            r.send(
                Purpose::ReadLog(e),
                e,
                Request::GetLocal(LocalRequest { id }),
                0,
            );
        }
        r
    }

    /// The replication id (checkpoints live in `_local/<id>` on both sides).
    pub fn replication_id(&self) -> &str {
        &self.rep_id
    }

    /// Counts so far.
    pub fn progress(&self) -> &Progress {
        &self.progress
    }

    /// Whether the replication has ended (completed, failed or cancelled).
    pub fn is_finished(&self) -> bool {
        self.state == State::Finished
    }

    /// Stops the replication: no more requests; answers still under way are ignored. Batches
    /// already checkpointed stay checkpointed, so a new run resumes from there.
    pub fn cancel(&mut self) {
        if self.state == State::Finished {
            return;
        }
        self.finish();
        self.events
            .push_back(ReplicationEvent::Cancelled(self.progress.clone()));
    }

    /// Ends the replication because `endpoint` is gone for good (the link to a peer closed: a
    /// new link is a new endpoint): no more requests, and [`ReplicationEvent::Failed`] with
    /// [`ReplicationError::EndpointLost`]. Retrying against it would only wait out the retry
    /// policy. Batches already checkpointed stay checkpointed, so a new run resumes from there.
    pub fn endpoint_lost(&mut self, endpoint: Endpoint, reason: String) {
        if self.state == State::Finished {
            return;
        }
        tracing::warn!(?endpoint, %reason, "replication endpoint lost");
        self.finish();
        self.events.push_back(ReplicationEvent::Failed {
            error: ReplicationError::EndpointLost { endpoint, reason },
            progress: self.progress.clone(),
        });
    }

    /// Whether a `poll_request` or `poll_event` has something.
    pub(crate) fn has_output(&self) -> bool {
        !(self.out.is_empty() && self.events.is_empty())
    }

    /// The next request to execute.
    pub fn poll_request(&mut self) -> Option<EndpointRequest> {
        self.out.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ReplicationEvent> {
        self.events.pop_front()
    }

    /// When [`Replicator::handle_timeout`] should next be called (a retry is due).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.requests.next_due()
    }

    /// Re-sends requests whose retry delay has passed. Calling it early or twice is harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.schedule_pending(now);
        for s in self.requests.take_due(now) {
            if self.state == State::Finished {
                break;
            }
            let (purpose, endpoint, request) = s.retry;
            self.send(purpose, endpoint, request, s.attempt);
        }
    }

    /// Feeds the result of request `id`, received at time `now` (transient failures are retried
    /// after a backoff counted from `now`).
    ///
    /// # Errors
    /// [`ReplicationError::UnknownRequest`] if `id` was never issued (the machine is unchanged).
    /// Answers for requests issued before a cancel or failure are accepted and ignored.
    pub fn handle_response(
        &mut self,
        now: Instant,
        id: RequestId,
        result: Result<Response, DbError>,
    ) -> Result<(), ReplicationError> {
        self.handle_response_untimed(id, result)?;
        self.schedule_pending(now);
        Ok(())
    }

    /// [`Replicator::handle_response`] without a clock: failures to retry wait in
    /// the ledger until the caller schedules or sends them.
    fn handle_response_untimed(
        &mut self,
        id: RequestId,
        result: Result<Response, DbError>,
    ) -> Result<(), ReplicationError> {
        let Some(sent) = self
            .requests
            .answer(id)
            .map_err(|_| ReplicationError::UnknownRequest(id))?
        else {
            return Ok(());
        };
        if self.state == State::Finished {
            return Ok(());
        }
        match result {
            Ok(resp) => {
                let (endpoint, op) = (sent.endpoint, sent.op);
                if let Err(error) = self.on_ok(sent, resp) {
                    self.fail(endpoint, op, error);
                }
            }
            Err(error) => self.on_err(sent, error),
        }
        self.pump();
        Ok(())
    }

    fn log_id(&self) -> String {
        format!("_local/{}", self.rep_id)
    }

    /// Sends `request`, keeping a copy to send again after a transient failure.
    fn send(&mut self, purpose: Purpose, endpoint: Endpoint, request: Request, attempt: u32) {
        let retry = (purpose, endpoint, request.clone());
        self.send_keeping(purpose, endpoint, request, attempt, retry);
    }

    /// Sends `request`, keeping `retry` to send after a transient failure instead of a copy of
    /// it. A batch's write keeps the batch's read: no second copy of its documents (the
    /// biggest requests by far) waits for an answer, and a failed write reads them again.
    fn send_keeping(
        &mut self,
        purpose: Purpose,
        endpoint: Endpoint,
        request: Request,
        attempt: u32,
        retry: (Purpose, Endpoint, Request),
    ) {
        let op = request.name();
        let id = self.requests.issue(Sent {
            purpose,
            endpoint,
            op,
            retry,
            attempt,
        });
        self.out.push_back(EndpointRequest {
            id,
            endpoint,
            request,
        });
    }

    fn schedule_pending(&mut self, now: Instant) {
        let policy = self.config.retry;
        self.requests
            .schedule(now, |sent| policy.delay(sent.attempt));
    }

    fn finish(&mut self) {
        self.state = State::Finished;
        self.out.clear();
        self.requests.clear();
    }

    fn fail(&mut self, endpoint: Endpoint, op: &'static str, error: DbError) {
        tracing::warn!(?endpoint, op, %error, "replication failed");
        self.finish();
        self.events.push_back(ReplicationEvent::Failed {
            error: ReplicationError::Endpoint {
                endpoint,
                op,
                error,
            },
            progress: self.progress.clone(),
        });
    }

    fn on_err(&mut self, sent: Sent, error: DbError) {
        match (sent.purpose, &error) {
            (Purpose::ReadLog(e), DbError::NotFound(_)) => {
                self.logs[slot(e)] = None;
                self.log_read_done();
            }
            (Purpose::RefreshLog(e), DbError::NotFound(_)) => {
                self.log_revs[slot(e)] = None;
                self.send_log(e);
            }
            (Purpose::WriteLog(e), DbError::Conflict) if self.log_conflicts < 5 => {
                // Someone else wrote the log (another run of this replication): take its rev.
                self.log_conflicts += 1;
                let id = self.log_id();
                self.send(
                    Purpose::RefreshLog(e),
                    e,
                    Request::GetLocal(LocalRequest { id }),
                    0,
                );
            }
            (Purpose::WriteLog(e), DbError::Conflict) => {
                // Others keep writing the same log (replications of one id from several
                // places: stores that share an identity): this checkpoint is skipped, not the
                // replication; the next one tries again.
                tracing::warn!(
                    endpoint = ?e,
                    "checkpoint lost to other writers of the same replication log {} times: skipped",
                    self.log_conflicts
                );
                self.checkpoint_lost = true;
                self.log_written(e);
            }
            (
                Purpose::WriteLog(Endpoint::Source),
                DbError::Forbidden(_) | DbError::Unauthorized(_),
            ) => {
                // A read-only source may refuse checkpoints; resuming then relies on the target.
                tracing::info!("source refuses checkpoints; continuing without them");
                self.source_log_disabled = true;
                self.log_written(Endpoint::Source);
            }
            (Purpose::ReadPart(b, n) | Purpose::StagePart(b, n), DbError::NotImplemented(_)) => {
                // One side takes attachments only whole: inline them from now on.
                tracing::info!(endpoint = ?sent.endpoint, "an endpoint takes no attachment ranges; carrying attachments inline");
                if self.current_move(b, n).is_some() || self.ranges.is_some() {
                    self.ranges = None;
                    // Every batch moving attachments reads its documents again, inline.
                    let moving: Vec<u64> = self
                        .batches
                        .iter()
                        .filter(|x| x.stage == Stage::Moving)
                        .map(|x| x.id)
                        .collect();
                    for id in moving {
                        self.refetch(id, false);
                    }
                }
            }
            (Purpose::ReadPart(b, n), DbError::NotFound(_)) => {
                // The bytes are gone from the source (the revision was replaced meanwhile): read
                // the batch again, for its newer revisions.
                if self.current_move(b, n).is_some() {
                    self.refetch(b, true);
                }
            }
            (Purpose::StagePart(b, n), DbError::Other { status: 409, .. }) => {
                // The target does not continue this upload (it forgot it): start it over.
                if self.current_move(b, n).is_some() {
                    match self.restart_move(b) {
                        Ok(()) => self.pump_moves(),
                        Err(e) => self.fail(sent.endpoint, sent.op, e),
                    }
                }
            }
            _ if error.is_transient() && sent.attempt < self.config.retry.max_retries => {
                tracing::debug!(op = sent.op, %error, attempt = sent.attempt, "retrying");
                self.requests.retry_later(Sent {
                    attempt: sent.attempt + 1,
                    ..sent
                });
            }
            _ => self.fail(sent.endpoint, sent.op, error),
        }
    }

    fn on_ok(&mut self, sent: Sent, resp: Response) -> Result<(), DbError> {
        match sent.purpose {
            Purpose::ReadLog(e) => {
                let doc = resp.into_doc_body()?.doc;
                self.log_revs[slot(e)] = doc.get("_rev").and_then(Value::as_str).map(String::from);
                self.logs[slot(e)] = Some(doc);
                self.log_read_done();
            }
            Purpose::RefreshLog(e) => {
                let doc = resp.into_doc_body()?.doc;
                self.log_revs[slot(e)] = doc.get("_rev").and_then(Value::as_str).map(String::from);
                self.send_log(e);
            }
            Purpose::WriteLog(e) => {
                let w = resp.into_written()?;
                self.log_revs[slot(e)] = Some(w.result?.to_string());
                self.log_written(e);
            }
            Purpose::Changes => {
                let c = resp.into_changes()?;
                self.changes_inflight = false;
                self.longpoll_inflight = false;
                let n = c.results.len();
                self.progress.changes_read += n as u64;
                if n < self.config.batch_size {
                    self.at_end = true;
                }
                if n > 0 {
                    self.caught_up_reported = false;
                }
                self.since = c.last_seq.clone();
                self.progress.last_seq = c.last_seq.clone();
                let id = self.next_batch;
                self.next_batch += 1;
                let mut batch = Batch {
                    id,
                    last_seq: c.last_seq,
                    rows: c.results,
                    stage: Stage::Diffing,
                    sent_docs: 0,
                    read: false,
                    docs: Vec::new(),
                    moves: VecDeque::new(),
                    move_no: 0,
                    fetch: None,
                    refetches: 0,
                };
                if batch.rows.is_empty() {
                    batch.stage = Stage::Done;
                } else {
                    let mut revs: BTreeMap<String, Vec<Rev>> = BTreeMap::new();
                    for row in &batch.rows {
                        revs.entry(row.id.clone())
                            .or_default()
                            .extend(row.changes.iter().map(|c| c.rev.clone()));
                    }
                    self.send(
                        Purpose::RevsDiff(id),
                        Endpoint::Target,
                        Request::RevsDiff(RevsDiffRequest { revs }),
                        0,
                    );
                }
                self.batches.push_back(batch);
            }
            Purpose::RevsDiff(b) => {
                let diff = resp.into_revs_diff()?;
                let mut docs = Vec::new();
                for (id, entry) in diff.missing {
                    self.progress.revs_missing += entry.missing.len() as u64;
                    for rev in entry.missing {
                        docs.push(BulkGetItem {
                            id: id.clone(),
                            rev: Some(rev),
                            atts_since: entry.possible_ancestors.clone(),
                        });
                    }
                }
                let Some(batch) = self.batches.iter_mut().find(|x| x.id == b) else {
                    return Ok(());
                };
                if docs.is_empty() {
                    batch.stage = Stage::Done;
                } else {
                    batch.stage = Stage::Fetching;
                    self.send(
                        Purpose::BulkGet(b),
                        Endpoint::Source,
                        Request::BulkGet(BulkGetRequest {
                            docs,
                            revs: true,
                            attachments: true,
                            latest: true,
                            inline_max: self.ranges,
                        }),
                        0,
                    );
                }
            }
            Purpose::BulkGet(b) => {
                let got = resp.into_bulk_get()?;
                let mut seen = BTreeSet::new();
                let mut docs = Vec::new();
                let mut read_failures = 0u64;
                for r in got.results {
                    for d in r.docs {
                        match d {
                            BulkGetDoc::Ok(doc) => {
                                let key = (
                                    doc.get("_id").and_then(Value::as_str).map(String::from),
                                    doc.get("_rev").and_then(Value::as_str).map(String::from),
                                );
                                if seen.insert(key) {
                                    docs.push(Value::Object(doc));
                                }
                            }
                            BulkGetDoc::Error(e) => {
                                tracing::debug!(id = %e.id, rev = ?e.rev, error = %e.error, "source could not return a revision");
                                read_failures += 1;
                            }
                        }
                    }
                }
                let Some(batch) = self.batches.iter_mut().find(|x| x.id == b) else {
                    return Ok(());
                };
                // A retried write reads its documents again: they count once.
                if !batch.read {
                    batch.read = true;
                    self.progress.docs_read += docs.len() as u64;
                    self.progress.doc_read_failures += read_failures;
                }
                let moves = moves_of(&docs);
                if docs.is_empty() {
                    batch.stage = Stage::Done;
                } else if !moves.is_empty() {
                    batch.stage = Stage::Moving;
                    batch.docs = docs;
                    batch.moves = moves;
                    batch.move_no += 1;
                    if let (_, _, Request::BulkGet(r)) = sent.retry {
                        batch.fetch = Some(r);
                    }
                    if self.ranges.is_some() {
                        self.pump_moves();
                    } else {
                        // Asked for with ranges, answered after they were turned off: read
                        // again, inline.
                        self.refetch(b, false);
                    }
                } else {
                    batch.stage = Stage::Writing;
                    batch.sent_docs = docs.len() as u64;
                    // The write keeps this read as its retry (and its attempt count).
                    self.send_keeping(
                        Purpose::BulkDocs(b),
                        Endpoint::Target,
                        Request::BulkDocs(BulkDocsRequest {
                            docs,
                            new_edits: false,
                        }),
                        sent.attempt,
                        sent.retry,
                    );
                }
            }
            Purpose::ReadPart(b, n) => {
                let part = resp.into_attachment_part()?;
                let Some(m) = self.current_move(b, n) else {
                    return Ok(());
                };
                let end = part.offset + part.data.len() as u64;
                let asked = m.reading.remove(&part.offset);
                if part.digest != m.digest
                    || part.length != m.length
                    || part.data.is_empty()
                    || asked.is_none_or(|a| end > a)
                {
                    return Err(DbError::BadResponse(format!(
                        "asked for {} up to byte {asked:?} of {}, got {} bytes from {} of {} ({})",
                        m.digest,
                        m.length,
                        part.data.len(),
                        part.offset,
                        part.length,
                        part.digest
                    )));
                }
                if let Some(asked) = asked.filter(|&a| end < a) {
                    m.wanted.insert(end, asked);
                }
                m.read.insert(part.offset, part);
                self.pump_moves();
            }
            Purpose::StagePart(b, n) => {
                let staged = resp.into_staged()?;
                let Some(m) = self.current_move(b, n) else {
                    return Ok(());
                };
                m.staging = false;
                let carried = m.staging_end - m.staging_from;
                let restart = if staged.complete {
                    let batch = self.batch_mut(b).expect("the move is the batch's");
                    batch.moves.pop_front();
                    batch.move_no += 1;
                    false
                } else if !m.probed {
                    // The target has none of it: read it.
                    m.probed = true;
                    false
                } else {
                    // The target holds less than was sent (it forgot the upload): start over.
                    staged.received != m.staging_end
                };
                self.progress.attachment_bytes += carried;
                if restart {
                    self.restart_move(b)?;
                }
                self.pump_moves();
            }
            Purpose::BulkDocs(b) => {
                let written = resp.into_bulk_docs()?;
                let failures = written.results.iter().filter(|r| r.result.is_err()).count() as u64;
                for r in written.results.iter().filter(|r| r.result.is_err()) {
                    if let Err(e) = &r.result {
                        tracing::warn!(id = %r.id, error = %e, "target refused a revision");
                    }
                }
                let Some(batch) = self.batches.iter_mut().find(|x| x.id == b) else {
                    return Ok(());
                };
                // CouchDB answers new_edits=false writes with errors only: count the rest as written.
                self.progress.doc_write_failures += failures;
                self.progress.docs_written += batch.sent_docs.saturating_sub(failures);
                batch.stage = Stage::Done;
                self.batches_since_checkpoint += 1;
                self.events
                    .push_back(ReplicationEvent::Progressed(self.progress.clone()));
            }
        }
        Ok(())
    }

    fn batch_mut(&mut self, b: u64) -> Option<&mut Batch> {
        self.batches.iter_mut().find(|x| x.id == b)
    }

    /// The move an answer is for, if it is still the batch's current one.
    fn current_move(&mut self, b: u64, n: u64) -> Option<&mut Move> {
        let batch = self.batch_mut(b)?;
        if batch.stage != Stage::Moving || batch.move_no != n {
            return None;
        }
        batch.moves.front_mut()
    }

    /// Starts a batch's current move over from its first byte.
    fn restart_move(&mut self, b: u64) -> Result<(), DbError> {
        let Some(batch) = self.batch_mut(b) else {
            return Ok(());
        };
        batch.refetches += 1;
        if batch.refetches > MAX_REFETCHES {
            return Err(DbError::Other {
                status: 409,
                error: "stage_out_of_order".into(),
                reason: format!(
                    "the target kept forgetting an attachment while it was sent ({MAX_REFETCHES} times); is another replication sending it too?"
                ),
            });
        }
        batch.move_no += 1;
        if let Some(m) = batch.moves.front_mut() {
            tracing::debug!(digest = %m.digest, "starting an attachment over");
            *m = Move::new(
                std::mem::take(&mut m.digest),
                std::mem::take(&mut m.content_type),
                m.length,
            );
        }
        Ok(())
    }

    /// Reads a moving batch's documents again (`inline`: with or without ranges).
    fn refetch(&mut self, b: u64, keep_ranges: bool) {
        let ranges = self.ranges;
        let Some(batch) = self.batch_mut(b) else {
            return;
        };
        batch.refetches += 1;
        let over = batch.refetches > MAX_REFETCHES;
        batch.moves.clear();
        batch.docs.clear();
        batch.move_no += 1;
        batch.stage = Stage::Fetching;
        let Some(mut fetch) = batch.fetch.clone().filter(|_| !over) else {
            let e = DbError::BadResponse(format!(
                "a batch's attachments could not be read ({MAX_REFETCHES} tries)"
            ));
            return self.fail(Endpoint::Source, "read_attachment", e);
        };
        fetch.inline_max = if keep_ranges { ranges } else { None };
        self.send(
            Purpose::BulkGet(b),
            Endpoint::Source,
            Request::BulkGet(fetch),
            0,
        );
    }

    /// Moves attachments along: one range read ahead while the previous one is written, one
    /// attachment per batch at a time, and a batch's documents written once all its
    /// attachments are on the target. A digest another batch is moving waits for it (two
    /// uploads of one digest would start each other over).
    fn pump_moves(&mut self) {
        let range = self.ranges.unwrap_or(DEFAULT_ATTACHMENT_RANGE);
        let mut moving: BTreeSet<String> = self
            .batches
            .iter()
            .filter(|x| x.stage == Stage::Moving)
            .filter_map(|x| x.moves.front())
            .filter(|m| m.started())
            .map(|m| m.digest.clone())
            .collect();
        let mut out = Vec::new();
        for batch in self.batches.iter_mut().filter(|x| x.stage == Stage::Moving) {
            let b = batch.id;
            let n = batch.move_no;
            let Some(m) = batch.moves.front_mut() else {
                let docs: Vec<Value> = std::mem::take(&mut batch.docs)
                    .into_iter()
                    .map(stub_follows)
                    .collect();
                batch.stage = Stage::Writing;
                batch.sent_docs = docs.len() as u64;
                out.push((
                    Purpose::BulkDocs(b),
                    Endpoint::Target,
                    Request::BulkDocs(BulkDocsRequest {
                        docs,
                        new_edits: false,
                    }),
                ));
                continue;
            };
            if !m.started() && !moving.insert(m.digest.clone()) {
                continue;
            }
            if !m.probed {
                // First ask the target with no bytes: it may hold them already (under another
                // document, or moved by an earlier batch), and then none need travel.
                if !m.staging {
                    m.staging = true;
                    (m.staging_from, m.staging_end) = (0, 0);
                    out.push((
                        Purpose::StagePart(b, n),
                        Endpoint::Target,
                        m.stage(0, Bytes::new()),
                    ));
                }
                continue;
            }
            if !m.staging {
                if let Some(part) = m.read.remove(&m.stage_at) {
                    m.staging = true;
                    m.staging_from = part.offset;
                    m.staging_end = part.offset + part.data.len() as u64;
                    m.stage_at = m.staging_end;
                    out.push((
                        Purpose::StagePart(b, n),
                        Endpoint::Target,
                        m.stage(part.offset, part.data),
                    ));
                }
            }
            // Reads run up to READ_AHEAD ranges ahead of the writes, so the link stays busy
            // (a lone request at a time restarts a lossy path's window every range).
            let mut asks: Vec<(u64, u64)> = std::mem::take(&mut m.wanted).into_iter().collect();
            while m.reading.len() + m.read.len() + asks.len() < READ_AHEAD && m.read_at < m.length {
                let end = m.read_at.saturating_add(range).min(m.length);
                asks.push((m.read_at, end));
                m.read_at = end;
            }
            for (start, end) in asks {
                m.reading.insert(start, end);
                out.push((
                    Purpose::ReadPart(b, n),
                    Endpoint::Source,
                    Request::ReadAttachment(AttachmentPartRequest {
                        source: AttachmentSource::Digest(m.digest.clone()),
                        offset: start,
                        len: usize::try_from(end - start).unwrap_or(usize::MAX),
                    }),
                ));
            }
        }
        for (purpose, endpoint, request) in out {
            self.send(purpose, endpoint, request, 0);
        }
    }

    fn log_read_done(&mut self) {
        self.logs_read += 1;
        if self.logs_read < 2 {
            return;
        }
        let (since, history) = compare_logs(self.logs[0].as_ref(), self.logs[1].as_ref());
        self.since = since.clone();
        self.progress.checkpointed_seq = since.clone();
        self.checkpoint_issued = since.clone();
        self.progress.last_seq = since.clone();
        self.history = history;
        self.state = State::Running;
        self.events.push_back(ReplicationEvent::Started {
            replication_id: self.rep_id.clone(),
            since,
        });
    }

    /// Issues whatever can be issued now and notices the end.
    fn pump(&mut self) {
        if self.state != State::Running {
            return;
        }
        // A batch waiting for another's upload of the same bytes goes on once that one ended,
        // whatever answer ended it.
        self.pump_moves();
        // Retire finished batches in order; they make the checkpointable prefix.
        while self.batches.front().is_some_and(|b| b.stage == Stage::Done) {
            let b = self.batches.pop_front().expect("front exists");
            self.done_seq = Some(b.last_seq);
        }
        let idle = self.batches.is_empty() && (!self.changes_inflight || self.longpoll_inflight);
        let checkpoint_due =
            self.batches_since_checkpoint >= self.config.checkpoint_every || (idle && self.at_end);
        if checkpoint_due {
            self.write_checkpoint();
        }
        let reading = !self.at_end || self.config.live;
        if reading && !self.changes_inflight && self.batches.len() < self.config.batches_in_flight {
            let feed = if self.at_end && self.config.live {
                Feed::Longpoll
            } else {
                Feed::Normal
            };
            self.changes_inflight = true;
            self.longpoll_inflight = feed == Feed::Longpoll;
            let req = ChangesRequest {
                since: self.since.clone(),
                limit: Some(self.config.batch_size),
                style: ChangesStyle::AllDocs,
                doc_ids: self.config.doc_ids.clone(),
                feed,
                timeout_ms: (feed == Feed::Longpoll)
                    .then_some(self.config.longpoll_timeout.as_millis() as u64),
                ..ChangesRequest::default()
            };
            self.send(Purpose::Changes, Endpoint::Source, Request::Changes(req), 0);
        }
        let checkpointed = !self.log_writing.iter().any(|w| *w)
            && self
                .done_seq
                .as_ref()
                .is_none_or(|s| *s == self.checkpoint_issued);
        if idle && self.at_end && checkpointed {
            if self.config.live {
                if !self.caught_up_reported {
                    self.caught_up_reported = true;
                    self.events
                        .push_back(ReplicationEvent::CaughtUp(self.progress.clone()));
                }
            } else {
                self.finish();
                self.events
                    .push_back(ReplicationEvent::Completed(self.progress.clone()));
            }
        }
    }

    fn write_checkpoint(&mut self) {
        let Some(seq) = self.done_seq.clone() else {
            return;
        };
        if seq == self.checkpoint_issued || self.log_writing.iter().any(|w| *w) {
            return;
        }
        self.batches_since_checkpoint = 0;
        let entry = json!({
            "session_id": self.session_id,
            "recorded_seq": seq.0,
            "docs_read": self.progress.docs_read,
            "docs_written": self.progress.docs_written,
            "doc_write_failures": self.progress.doc_write_failures,
        });
        let mut history = vec![entry];
        history.extend(
            self.history
                .iter()
                .filter(|h| h.get("session_id").and_then(Value::as_str) != Some(&self.session_id))
                .take(MAX_HISTORY - 1)
                .cloned(),
        );
        let mut doc = Doc::new();
        doc.insert("session_id".into(), json!(self.session_id));
        doc.insert("source_last_seq".into(), seq.0.clone());
        doc.insert(
            "replication_id_version".into(),
            json!(REPLICATION_ID_VERSION),
        );
        doc.insert("history".into(), Value::Array(history));
        self.checkpoint_doc = doc;
        self.checkpoint_issued = seq.clone();
        self.checkpoint_writing = Some(seq);
        self.log_conflicts = 0;
        self.checkpoint_lost = false;
        for e in [Endpoint::Source, Endpoint::Target] {
            if e == Endpoint::Source && self.source_log_disabled {
                continue;
            }
            self.send_log(e);
        }
    }

    fn send_log(&mut self, e: Endpoint) {
        let mut d = self.checkpoint_doc.clone();
        if let Some(rev) = &self.log_revs[slot(e)] {
            d.insert("_rev".into(), json!(rev));
        }
        self.log_writing[slot(e)] = true;
        let id = self.log_id();
        self.send(
            Purpose::WriteLog(e),
            e,
            Request::PutLocal(PutLocalRequest { id, doc: d }),
            0,
        );
    }

    /// Called when one side's log write ended; confirms the checkpoint once both did.
    fn log_written(&mut self, e: Endpoint) {
        self.log_writing[slot(e)] = false;
        if self.log_writing.iter().any(|w| *w) {
            return;
        }
        if let Some(seq) = self.checkpoint_writing.take() {
            // A checkpoint counts once both sides hold it.
            if !self.checkpoint_lost {
                self.progress.checkpointed_seq = seq;
                self.progress.checkpoints += 1;
            }
        }
    }
}

/// Finds where to resume from the two replication logs (CouchDB's `compare_replication_logs`):
/// the same session on both sides means its seq; otherwise the newest session both histories
/// share; otherwise from the start. Malformed logs count as absent.
/// The attachments of `docs` that a `_bulk_get` with `inline_max` left out (`"follows"`), one
/// move per digest.
fn moves_of(docs: &[Value]) -> VecDeque<Move> {
    let mut seen = BTreeSet::new();
    let mut moves = VecDeque::new();
    for doc in docs {
        let Some(atts) = doc.get("_attachments").and_then(Value::as_object) else {
            continue;
        };
        for a in atts.values() {
            if a.get("follows").and_then(Value::as_bool) != Some(true) {
                continue;
            }
            let (Some(digest), Some(length)) = (
                a.get("digest").and_then(Value::as_str),
                a.get("length").and_then(Value::as_u64),
            ) else {
                continue;
            };
            if seen.insert(digest.to_string()) {
                let content_type = a
                    .get("content_type")
                    .and_then(Value::as_str)
                    .unwrap_or("application/octet-stream");
                moves.push_back(Move::new(
                    digest.to_string(),
                    content_type.to_string(),
                    length,
                ));
            }
        }
    }
    moves
}

/// A document whose moved attachments are now stubs (their bytes are on the target).
fn stub_follows(mut doc: Value) -> Value {
    if let Some(atts) = doc.get_mut("_attachments").and_then(Value::as_object_mut) {
        for a in atts.values_mut().filter_map(Value::as_object_mut) {
            if a.remove("follows").is_some() {
                a.insert("stub".into(), Value::Bool(true));
            }
        }
    }
    doc
}

fn compare_logs(source: Option<&Doc>, target: Option<&Doc>) -> (Seq, Vec<Value>) {
    let (Some(s), Some(t)) = (source, target) else {
        return (Seq::zero(), Vec::new());
    };
    let s_hist: Vec<Value> = s
        .get("history")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let session = |d: &Doc| {
        d.get("session_id")
            .and_then(Value::as_str)
            .map(String::from)
    };
    if let (Some(a), Some(b)) = (session(s), session(t)) {
        if a == b {
            if let Some(seq) = s.get("source_last_seq") {
                return (Seq(seq.clone()), s_hist);
            }
        }
    }
    let t_sessions: BTreeSet<String> = t
        .get("history")
        .and_then(Value::as_array)
        .map(|h| {
            h.iter()
                .filter_map(|e| {
                    e.get("session_id")
                        .and_then(Value::as_str)
                        .map(String::from)
                })
                .collect()
        })
        .unwrap_or_default();
    for entry in &s_hist {
        if let (Some(sid), Some(seq)) = (
            entry.get("session_id").and_then(Value::as_str),
            entry.get("recorded_seq"),
        ) {
            if t_sessions.contains(sid) {
                return (Seq(seq.clone()), s_hist.clone());
            }
        }
    }
    (Seq::zero(), s_hist)
}

/// Runs a one-shot replication between two synchronous databases and returns the final counts.
///
/// A convenience over [`Replicator`] for in-process stores: it executes each request at once.
/// Retry delays are not waited for: a transient failure is retried at once, up to the configured
/// number of retries.
///
/// # Errors
/// [`ReplicationError::InvalidConfig`] for live mode (a blocking call cannot wait for changes);
/// otherwise the error the replication failed with.
pub fn replicate(
    source: &mut dyn Database,
    target: &mut dyn Database,
    config: ReplicatorConfig,
) -> Result<Progress, ReplicationError> {
    replicate_with_progress(source, target, config, |_| {})
}

/// Like [`replicate`], calling `on_event` with every event (progress counts as batches land).
///
/// # Errors
/// As [`replicate`].
pub fn replicate_with_progress(
    source: &mut dyn Database,
    target: &mut dyn Database,
    config: ReplicatorConfig,
    mut on_event: impl FnMut(&ReplicationEvent),
) -> Result<Progress, ReplicationError> {
    if config.live {
        return Err(ReplicationError::InvalidConfig(
            "live replication needs a driver that can wait; use Replicator directly".into(),
        ));
    }
    let mut rep = Replicator::new(config, 0);
    loop {
        while let Some(req) = rep.poll_request() {
            let db: &mut dyn Database = match req.endpoint {
                Endpoint::Source => &mut *source,
                Endpoint::Target => &mut *target,
            };
            let result = db.execute(req.request);
            rep.handle_response_untimed(req.id, result)?;
        }
        while let Some(ev) = rep.poll_event() {
            on_event(&ev);
            match ev {
                ReplicationEvent::Completed(p) => return Ok(p),
                ReplicationEvent::Failed { error, .. } => return Err(error),
                _ => {}
            }
        }
        let retries = rep.requests.take_unscheduled();
        if !retries.is_empty() {
            // No clock here: due retries are sent at once.
            for sent in retries {
                let (purpose, endpoint, request) = sent.retry;
                rep.send(purpose, endpoint, request, sent.attempt);
            }
            continue;
        }
        if rep.out.is_empty() {
            return Err(ReplicationError::Stalled(
                "no request to send and no event; this is a bug".into(),
            ));
        }
    }
}
