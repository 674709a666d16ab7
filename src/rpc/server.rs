//! The serving side: frames in, store requests out, results in, frames out.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::Value;

use super::frame::{Assembler, Kind, Message, MIN_FRAME};
use super::wire::*;
use super::{Outbox, RpcError, DEFAULT_FRAME, MAX_FRAME};
use crate::doc::LOCAL_PREFIX;
use crate::error::{CouchError, DbError};
use crate::ops::*;

/// Identifies a store request of the server; its result comes back with it.
pub type StoreRequestId = u64;

/// How a share is served.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServerConfig {
    /// The share served.
    pub share: String,
    /// Refuse writes (403) except `_local` documents (replication checkpoints).
    pub read_only: bool,
    /// The share's access key: clients must prove they know it.
    pub access_key: Option<Vec<u8>>,
    /// Our DTLS fingerprint (as in SDP: `sha-256 AB:CD:...`).
    pub local_fingerprint: String,
    /// The fingerprint we see for the peer.
    pub remote_fingerprint: String,
    /// Largest frame we accept and send (clamped to 1 KiB..64 KiB).
    pub frame_size: usize,
    /// Largest message we accept (after decompression).
    pub max_message: usize,
    /// Offer zstd compression (on by default): when both hellos list `zstd`, calls and answers
    /// that gain from it travel compressed, which cuts the data channel's work for batches of
    /// documents by about the compression ratio. Off, nothing is compressed either way.
    pub compress: bool,
    /// Calls and subscriptions a client may have open; more is a protocol violation.
    pub max_in_flight: usize,
    /// Bytes of frames waiting for the channel above which the server takes on no new work.
    pub window: usize,
    /// Store requests running at once: with `window`, bounds what a slow reader can make the
    /// server hold (at most this many answers beyond the window).
    pub max_concurrent: usize,
    /// Bytes of an attachment read from the store at a time (rounded down to whole frames, at
    /// least one): attachments go out chunk by chunk, the next read once less than one chunk
    /// of it waits, so serving one holds about two chunks of it, never the whole.
    pub attachment_chunk: usize,
    /// Close if the client's hello has not arrived after this long.
    pub hello_timeout: Duration,
    /// The served database's identity ([`crate::DbInfo::db_uuid`]), sent in our hello so
    /// joiners' replication ids survive a new share id; `None` sends none.
    pub db_uuid: Option<String>,
}

impl ServerConfig {
    /// Defaults for serving `share`, with the two DTLS fingerprints of the link.
    pub fn new(
        share: impl Into<String>,
        local_fp: impl Into<String>,
        remote_fp: impl Into<String>,
    ) -> Self {
        ServerConfig {
            share: share.into(),
            read_only: false,
            access_key: None,
            local_fingerprint: local_fp.into(),
            remote_fingerprint: remote_fp.into(),
            frame_size: DEFAULT_FRAME,
            max_message: 256 << 20,
            compress: true,
            max_in_flight: 64,
            window: 1 << 20,
            max_concurrent: 8,
            attachment_chunk: 64 << 10,
            hello_timeout: Duration::from_secs(10),
            db_uuid: None,
        }
    }
}

/// What the server reports.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ServerEvent {
    /// The client's hello checked out; calls are served now.
    Ready {
        /// The client's hello.
        hello: Hello,
    },
    /// The link is closed (a goodbye is queued when we closed it): close the session once
    /// the frames are flushed.
    Closed(RpcError),
}

#[derive(Debug, PartialEq)]
enum State {
    AwaitHello,
    Ready,
    Closed,
}

/// A call waiting for room in the window: to run, or already answered with an error.
#[derive(Debug)]
enum Work {
    Run(Call),
    Refuse(DbError),
}

#[derive(Debug)]
enum CallState {
    Queued,
    Running(StoreRequestId),
    Subscription {
        request: ChangesRequest,
        since: Seq,
        running: Option<StoreRequestId>,
        dirty: bool,
    },
    /// An attachment going out chunk by chunk: `sent` of its `length` bytes are queued.
    Attachment {
        request: AttachmentRequest,
        /// Known from the first chunk on.
        digest: Option<String>,
        length: u64,
        sent: u64,
        running: Option<StoreRequestId>,
    },
}

/// The serving machine. See the [module docs](super).
#[derive(Debug)]
pub struct RpcServer {
    config: ServerConfig,
    state: State,
    started: Instant,
    asm: Assembler,
    out: Outbox,
    inbox: VecDeque<(u32, Work)>,
    calls: BTreeMap<u32, CallState>,
    store: BTreeMap<StoreRequestId, u32>,
    store_out: VecDeque<(StoreRequestId, Request)>,
    next_store: StoreRequestId,
    events: VecDeque<ServerEvent>,
    served: u64,
    /// The largest message the client accepts (from its hello).
    peer_max_message: usize,
}

const KNOWN_OPS: &[&str] = &[
    "info",
    "get",
    "open_revs",
    "all_docs",
    "bulk_docs",
    "changes",
    "revs_diff",
    "bulk_get",
    "get_attachment",
    "read_attachment",
    "stage_attachment",
    "get_local",
    "put_local",
    "delete_local",
];

impl RpcServer {
    /// A server for one link; its hello is queued at once.
    pub fn new(mut config: ServerConfig, now: Instant) -> RpcServer {
        config.frame_size = config.frame_size.clamp(MIN_FRAME, MAX_FRAME);
        // The server speaks second: its hello answers the client's (and its proof names the
        // client's peer id).
        let out = Outbox::new(config.frame_size);
        let mut asm = Assembler::new(config.max_message, config.frame_size);
        asm.accept_compressed(config.compress);
        RpcServer {
            config,
            state: State::AwaitHello,
            started: now,
            asm,
            out,
            inbox: VecDeque::new(),
            calls: BTreeMap::new(),
            store: BTreeMap::new(),
            store_out: VecDeque::new(),
            next_store: 0,
            events: VecDeque::new(),
            served: 0,
            peer_max_message: usize::MAX,
        }
    }

    /// Calls answered so far.
    pub fn served(&self) -> u64 {
        self.served
    }

    /// Whether the link is closed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Feeds one data channel message from the client.
    ///
    /// # Errors
    /// When the client broke the protocol: the link is closed (a goodbye is queued, then
    /// [`ServerEvent::Closed`]); the store is never touched by a bad message.
    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) -> Result<(), RpcError> {
        if self.state == State::Closed {
            return Ok(());
        }
        let result = match self.asm.push(bytes) {
            Ok(Some(m)) => self.on_message(now, m),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            self.fail(e.clone(), true);
        }
        self.pump();
        result
    }

    /// The session closed underneath: everything stops.
    pub fn handle_link_closed(&mut self, _now: Instant) {
        if self.state != State::Closed {
            self.fail(
                RpcError::Closed(DbError::Unavailable("link closed".into())),
                false,
            );
        }
        // Nothing can be sent any more, a goodbye queued earlier included.
        self.out.clear();
    }

    /// Checks the hello timeout. Harmless early.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::AwaitHello && now >= self.started + self.config.hello_timeout {
            self.fail(
                RpcError::Protocol("no hello within the hello timeout".into()),
                true,
            );
        }
    }

    /// When [`RpcServer::handle_timeout`] should be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        (self.state == State::AwaitHello).then_some(self.started + self.config.hello_timeout)
    }

    /// The store changed (a write, local or replicated): live subscriptions catch up.
    pub fn handle_db_changed(&mut self, _now: Instant) {
        for c in self.calls.values_mut() {
            if let CallState::Subscription { dirty, .. } = c {
                *dirty = true;
            }
        }
        self.pump();
    }

    /// Feeds the result of a store request.
    pub fn handle_store_result(
        &mut self,
        _now: Instant,
        id: StoreRequestId,
        result: Result<Response, DbError>,
    ) {
        let Some(call) = self.store.remove(&id) else {
            return;
        };
        if self.state == State::Closed {
            return;
        }
        match self.calls.get_mut(&call) {
            Some(CallState::Running(sid)) if *sid == id => {
                self.calls.remove(&call);
                self.served += 1;
                self.reply(call, result);
            }
            Some(CallState::Subscription {
                since,
                running,
                dirty,
                ..
            }) if *running == Some(id) => {
                *running = None;
                match result.and_then(Response::into_changes) {
                    Ok(c) => {
                        *since = c.last_seq.clone();
                        if !c.results.is_empty() {
                            let payload = serde_json::to_vec(&c).unwrap_or_default();
                            if payload.len() > self.peer_max_message {
                                // A batch the client would refuse ends the subscription with
                                // the reason (ask for fewer rows or no documents).
                                self.calls.remove(&call);
                                let e = too_large(payload.len(), self.peer_max_message);
                                self.out.push_json(
                                    Kind::StreamEnd,
                                    call,
                                    &StreamEnd {
                                        error: Some(CouchError::from(e)),
                                    },
                                );
                            } else {
                                self.out.push_owned(Kind::StreamItem, call, payload);
                            }
                        }
                        // A change meanwhile (`dirty`) is picked up by `pump` when the window
                        // has room.
                    }
                    Err(e) => {
                        self.calls.remove(&call);
                        self.out.push_json(
                            Kind::StreamEnd,
                            call,
                            &StreamEnd {
                                error: Some(CouchError::from(e)),
                            },
                        );
                    }
                }
            }
            Some(CallState::Attachment { running, .. }) if *running == Some(id) => {
                *running = None;
                self.on_attachment_part(call, result);
            }
            // Cancelled meanwhile: the result is dropped.
            _ => {}
        }
        self.pump();
    }

    /// A chunk of an attachment read from the store: its metadata goes out first, then its
    /// bytes as the frames of one binary message, exactly the frames of the whole message.
    fn on_attachment_part(&mut self, call: u32, result: Result<Response, DbError>) {
        let Some(CallState::Attachment {
            request,
            digest,
            length,
            ..
        }) = self.calls.get_mut(&call)
        else {
            return;
        };
        let first = digest.is_none();
        let part = match result {
            Ok(Response::AttachmentPart(p)) => p,
            // A store that cannot read ranges answers the attachment whole.
            Err(DbError::NotImplemented(_)) if first => {
                let req = Request::GetAttachment(request.clone());
                let sid = self.issue(call, req);
                self.calls.insert(call, CallState::Running(sid));
                return;
            }
            // Nothing announced yet: the answer is the store's, as for any call.
            other if first => {
                self.calls.remove(&call);
                self.served += 1;
                return self.reply(call, other);
            }
            other => {
                // Its length is announced and some of its bytes went out: the message cannot
                // be finished, and only closing the link tells the client so.
                let e = match other {
                    Err(e) => e,
                    Ok(r) => DbError::BadRequest(format!("the store answered {}", r.kind())),
                };
                let e = DbError::Other {
                    status: 500,
                    error: "attachment_read_failed".into(),
                    reason: format!("attachment {call} could not be read to its end: {e}"),
                };
                return self.fail(RpcError::Closed(e), true);
            }
        };
        if first {
            if part.length > self.peer_max_message as u64 {
                self.calls.remove(&call);
                self.served += 1;
                let e = too_large(part.length as usize, self.peer_max_message);
                return self.reply(call, Err(e));
            }
            *digest = Some(part.digest.clone());
            *length = part.length;
            self.out.push_json(
                Kind::Response,
                call,
                &Reply::Attachment {
                    content_type: part.content_type,
                    digest: part.digest,
                    length: part.length,
                },
            );
        }
        let Some(CallState::Attachment { length, sent, .. }) = self.calls.get_mut(&call) else {
            return;
        };
        let end = *sent + part.data.len() as u64;
        if part.offset != *sent || end > *length || (part.data.is_empty() && end < *length) {
            let e = DbError::Other {
                status: 500,
                error: "attachment_read_failed".into(),
                reason: format!(
                    "attachment {call}: the store answered bytes {}..{end} of {}, not from {}",
                    part.offset, *length, *sent
                ),
            };
            return self.fail(RpcError::Closed(e), true);
        }
        *sent = end;
        let more = end < *length;
        self.out.push_part(Kind::Binary, call, part.data, more);
        if !more {
            self.calls.remove(&call);
            self.served += 1;
        }
    }

    /// Bytes of an attachment read at a time: a whole number of frame payloads.
    fn attachment_chunk(&self) -> usize {
        let frame = self.out.frame_payload();
        (self.config.attachment_chunk / frame).max(1) * frame
    }

    /// Reads the next chunk of an attachment from the store.
    fn read_next_chunk(&mut self, call: u32) {
        let len = self.attachment_chunk();
        let Some(CallState::Attachment {
            digest: Some(d),
            sent,
            ..
        }) = self.calls.get(&call)
        else {
            return;
        };
        let req = Request::ReadAttachment(AttachmentPartRequest {
            source: AttachmentSource::Digest(d.clone()),
            offset: *sent,
            len,
        });
        let sid = self.issue(call, req);
        if let Some(CallState::Attachment { running, .. }) = self.calls.get_mut(&call) {
            *running = Some(sid);
        }
    }

    /// Whether a frame, a store request or an event waits.
    pub(crate) fn has_output(&self) -> bool {
        !(self.store_out.is_empty() && self.events.is_empty()) || self.out.peek().is_some()
    }

    /// The next store request to execute against the served database.
    pub fn poll_store_request(&mut self) -> Option<(StoreRequestId, Request)> {
        self.store_out.pop_front()
    }

    /// The next frame to write to the data channel, if any (it stays until
    /// [`RpcServer::advance_frame`], so a full channel loses nothing).
    pub fn peek_frame(&self) -> Option<&[u8]> {
        self.out.peek()
    }

    /// The frame from [`RpcServer::peek_frame`] was written.
    pub fn advance_frame(&mut self) {
        self.out.advance();
        self.pump();
    }

    /// Bytes of frames waiting for the channel.
    pub fn queued_bytes(&self) -> usize {
        self.out.bytes()
    }

    /// The most bytes of frames that ever waited for the channel: what serving this link held
    /// at its peak, beyond the store requests running.
    pub fn peak_queued_bytes(&self) -> usize {
        self.out.peak()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ServerEvent> {
        self.events.pop_front()
    }

    fn fail(&mut self, e: RpcError, send_goodbye: bool) {
        if self.state == State::Closed {
            return;
        }
        tracing::debug!(error = %e, "rpc server closing the link");
        self.state = State::Closed;
        self.inbox.clear();
        self.calls.clear();
        self.store.clear();
        self.store_out.clear();
        if send_goodbye {
            self.out
                .push_json(Kind::Goodbye, 0, &CouchError::from(e.to_db_error()));
        } else {
            self.out.clear();
        }
        self.events.push_back(ServerEvent::Closed(e));
    }

    fn on_message(&mut self, _now: Instant, m: Message) -> Result<(), RpcError> {
        match (&self.state, m.kind) {
            (State::AwaitHello, Kind::Hello) => self.on_hello(&m.payload),
            (State::AwaitHello, k) => Err(RpcError::Protocol(format!("{k:?} before hello"))),
            (_, Kind::Hello) => Err(RpcError::Protocol("a second hello".into())),
            // Id 0 is the hello's and the goodbye's: an answer on it would interleave with them.
            (_, Kind::Request) if m.id == 0 => Err(RpcError::Protocol(
                "a call with id 0 (reserved for hello and goodbye)".into(),
            )),
            (_, Kind::Request) => self.on_request(m.id, &m.payload),
            (_, Kind::Cancel) => {
                self.on_cancel(m.id);
                Ok(())
            }
            (_, Kind::Goodbye) => {
                let e: CouchError = serde_json::from_slice(&m.payload).unwrap_or(CouchError {
                    status: 500,
                    error: "goodbye".into(),
                    reason: "the peer closed the link".into(),
                });
                self.fail(RpcError::Closed(DbError::from(e)), false);
                Ok(())
            }
            (_, k) => Err(RpcError::Protocol(format!("a client does not send {k:?}"))),
        }
    }

    fn on_hello(&mut self, payload: &[u8]) -> Result<(), RpcError> {
        let h = super::peer_hello(payload, Role::Client)?;
        if h.share != self.config.share {
            return Err(RpcError::Protocol(format!(
                "hello for {}, but this link serves {}",
                crate::rev::truncate(&h.share, 80),
                self.config.share
            )));
        }
        let c = &self.config;
        super::check_hello_proof(
            c.access_key.as_deref(),
            &h,
            &h.peer,
            (&c.share, &c.remote_fingerprint, &c.local_fingerprint),
            "this share needs its access key; the proof is missing or wrong",
        )?;
        let proof = c.access_key.as_deref().map(|key| {
            make_proof(
                key,
                Role::Server,
                &c.share,
                &h.peer,
                &c.local_fingerprint,
                &c.remote_fingerprint,
            )
        });
        // Everything we send from now on, the hello included, fits the client's limits.
        self.out
            .set_frame_size(super::agreed_frame(h.frame, self.config.frame_size));
        self.peer_max_message = h.max_message;
        let compress = self.config.compress && h.caps.iter().any(|c| c == CAP_ZSTD);
        self.out.push_json(
            Kind::Hello,
            0,
            &Hello {
                v: PROTOCOL_VERSION,
                role: Role::Server,
                share: self.config.share.clone(),
                peer: h.peer.clone(),
                caps: capabilities(self.config.compress),
                frame: self.config.frame_size,
                max_message: self.config.max_message,
                max_in_flight: self.config.max_in_flight,
                read_only: self.config.read_only,
                proof,
                db_uuid: self.config.db_uuid.clone(),
            },
        );
        self.out.set_compress(compress);
        self.state = State::Ready;
        self.events.push_back(ServerEvent::Ready { hello: h });
        Ok(())
    }

    fn on_request(&mut self, id: u32, payload: &[u8]) -> Result<(), RpcError> {
        if self.calls.contains_key(&id) {
            return Err(RpcError::Protocol(format!("call {id} is already open")));
        }
        if self.calls.len() >= self.config.max_in_flight {
            return Err(RpcError::Protocol(format!(
                "more than {} calls open at once",
                self.config.max_in_flight
            )));
        }
        // Decoded straight from the bytes; only a call that does not decode is looked at as a
        // tree, to say what was wrong with it.
        if let Ok(call) = serde_json::from_slice::<Call>(payload) {
            self.calls.insert(id, CallState::Queued);
            self.inbox.push_back((id, Work::Run(call)));
            return Ok(());
        }
        let v: Value = serde_json::from_slice(payload)
            .map_err(|e| RpcError::Malformed(format!("request {id}: {e}")))?;
        match serde_json::from_value::<Call>(v.clone()) {
            Ok(call) => {
                self.calls.insert(id, CallState::Queued);
                self.inbox.push_back((id, Work::Run(call)));
            }
            Err(e) => {
                let op = v
                    .get("call")
                    .and_then(|c| c.get("op"))
                    .and_then(Value::as_str)
                    .map(String::from);
                let err = match op.as_deref() {
                    Some("destroy") => {
                        DbError::Forbidden("peers may not destroy a shared database".into())
                    }
                    Some(op) if !KNOWN_OPS.contains(&op) => DbError::NotImplemented(format!(
                        "unknown method {:?}",
                        crate::rev::truncate(op, 40)
                    )),
                    _ if v.get("call").is_none() && v.get("subscribe").is_none() => {
                        DbError::NotImplemented("unknown kind of call".into())
                    }
                    _ => DbError::BadRequest(format!("bad parameters: {e}")),
                };
                // Answered in turn, like any call: a flood of bad calls obeys the window too.
                self.calls.insert(id, CallState::Queued);
                self.inbox.push_back((id, Work::Refuse(err)));
            }
        }
        Ok(())
    }

    fn on_cancel(&mut self, id: u32) {
        match self.calls.remove(&id) {
            Some(CallState::Queued) => self.inbox.retain(|(i, _)| *i != id),
            Some(CallState::Subscription { .. }) => {
                self.out
                    .push_json(Kind::StreamEnd, id, &StreamEnd { error: None });
            }
            // An attachment cut short: its message ends here, so the client's assembler lets
            // go of it (the client dropped the call; it ignores the short message).
            Some(CallState::Attachment {
                digest: Some(_),
                sent,
                length,
                ..
            }) if sent < length => self.out.push_part(Kind::Binary, id, Bytes::new(), false),
            // A running call's result is dropped when it comes; unknown ids ended already.
            _ => {}
        }
    }

    fn reply(&mut self, id: u32, result: Result<Response, DbError>) {
        match result {
            // A store that read more than asked: still never more than the client takes.
            Ok(Response::AttachmentPart(p)) if p.data.len() > self.peer_max_message => {
                let e = too_large(p.data.len(), self.peer_max_message);
                self.out
                    .push_json(Kind::Response, id, &Reply::Err(CouchError::from(e)));
            }
            Ok(Response::AttachmentPart(p)) => {
                self.out.push_json(
                    Kind::Response,
                    id,
                    &Reply::AttachmentPart {
                        content_type: p.content_type,
                        digest: p.digest,
                        length: p.length,
                        offset: p.offset,
                        size: p.data.len() as u64,
                    },
                );
                self.out.push_packed(Kind::Binary, id, p.data);
            }
            Ok(Response::Attachment(a)) if a.data.len() > self.peer_max_message => {
                let e = too_large(a.data.len(), self.peer_max_message);
                self.out
                    .push_json(Kind::Response, id, &Reply::Err(CouchError::from(e)));
            }
            Ok(Response::Attachment(a)) => {
                self.out.push_json(
                    Kind::Response,
                    id,
                    &Reply::Attachment {
                        content_type: a.content_type,
                        digest: a.digest,
                        length: a.data.len() as u64,
                    },
                );
                self.out.push_owned(Kind::Binary, id, a.data);
            }
            Ok(r) => {
                // Encoded once; an answer the client would refuse is replaced by an error.
                let payload = encode_ok_reply(r);
                if payload.len() > self.peer_max_message {
                    let e = too_large(payload.len(), self.peer_max_message);
                    self.out
                        .push_json(Kind::Response, id, &Reply::Err(CouchError::from(e)));
                } else {
                    self.out.push_owned(Kind::Response, id, payload);
                }
            }
            Err(e) => self
                .out
                .push_json(Kind::Response, id, &Reply::Err(CouchError::from(e))),
        }
    }

    fn issue(&mut self, call: u32, request: Request) -> StoreRequestId {
        let sid = self.next_store;
        self.next_store += 1;
        self.store.insert(sid, call);
        self.store_out.push_back((sid, request));
        sid
    }

    fn query_subscription(&mut self, id: u32) {
        let Some(CallState::Subscription { request, since, .. }) = self.calls.get(&id) else {
            return;
        };
        let req = ChangesRequest {
            since: since.clone(),
            feed: Feed::Normal,
            timeout_ms: None,
            ..request.clone()
        };
        let sid = self.issue(id, Request::Changes(req));
        if let Some(CallState::Subscription { running, .. }) = self.calls.get_mut(&id) {
            *running = Some(sid);
        }
    }

    /// Whether the outbound window or the store requests running are full: no new work.
    fn busy(&self) -> bool {
        self.out.bytes() >= self.config.window || self.store.len() >= self.config.max_concurrent
    }

    fn calls_where(&self, pick: impl Fn(&CallState) -> bool) -> Vec<u32> {
        let picked = self.calls.iter().filter(|(_, c)| pick(c));
        picked.map(|(id, _)| *id).collect()
    }

    /// Starts queued calls while the outbound window has room.
    fn pump(&mut self) {
        if self.state != State::Ready {
            return;
        }
        while !self.busy() {
            let Some((id, work)) = self.inbox.pop_front() else {
                break;
            };
            let call = match work {
                Work::Refuse(err) => {
                    self.calls.remove(&id);
                    self.reply(id, Err(err));
                    continue;
                }
                Work::Run(call) => call,
            };
            match call {
                Call::Call(req) => {
                    if self.config.read_only && req.is_write() && !only_local(&req) {
                        self.calls.remove(&id);
                        self.reply(
                            id,
                            Err(DbError::Forbidden(
                                "this share is read-only; only _local documents can be written"
                                    .into(),
                            )),
                        );
                        continue;
                    }
                    // A range a peer reads is bounded like the chunks the server reads itself
                    // (a few of them), whatever length it asked for.
                    let req = match req {
                        Request::ReadAttachment(mut r) => {
                            r.len = r
                                .len
                                .min(self.attachment_chunk() * 16)
                                .min(self.peer_max_message);
                            Request::ReadAttachment(r)
                        }
                        other => other,
                    };
                    if let Request::GetAttachment(request) = req {
                        let part = Request::ReadAttachment(AttachmentPartRequest {
                            source: AttachmentSource::Doc(request.clone()),
                            offset: 0,
                            len: self.attachment_chunk(),
                        });
                        let sid = self.issue(id, part);
                        self.calls.insert(
                            id,
                            CallState::Attachment {
                                request,
                                digest: None,
                                length: 0,
                                sent: 0,
                                running: Some(sid),
                            },
                        );
                        continue;
                    }
                    let sid = self.issue(id, req);
                    self.calls.insert(id, CallState::Running(sid));
                }
                Call::Subscribe(req) => {
                    let since = req.since.clone();
                    self.calls.insert(
                        id,
                        CallState::Subscription {
                            request: req,
                            since,
                            running: None,
                            dirty: true,
                        },
                    );
                }
            }
        }
        // Attachments read their next chunk once less than a chunk of them waits, while the
        // window has room: a slow reader holds the store's bytes back, not the server's memory.
        let chunk = self.attachment_chunk();
        let reading = self.calls_where(|c| {
            matches!(c, CallState::Attachment { digest: Some(_), running: None, sent, length, .. } if sent < length)
        });
        for id in reading {
            if self.busy() {
                break;
            }
            if self.out.bytes_of(id) < chunk {
                self.read_next_chunk(id);
            }
        }
        // Subscriptions catch up only while the window has room: a reader that does not keep up
        // gets its batches later (merged), never an ever-growing queue.
        let due = self.calls_where(|c| {
            matches!(
                c,
                CallState::Subscription {
                    running: None,
                    dirty: true,
                    ..
                }
            )
        });
        for id in due {
            if self.busy() {
                break;
            }
            if let Some(CallState::Subscription { dirty, .. }) = self.calls.get_mut(&id) {
                *dirty = false;
            }
            self.query_subscription(id);
        }
    }
}

fn too_large(size: usize, limit: usize) -> DbError {
    DbError::Other {
        status: 413,
        error: "too_large".into(),
        reason: format!(
            "the answer is {size} bytes, over the {limit} bytes the client accepts; ask for less"
        ),
    }
}

/// Whether a write touches only `_local` documents (allowed on read-only shares: the
/// replicator's checkpoints live there).
fn only_local(req: &Request) -> bool {
    match req {
        Request::PutLocal(_) | Request::DeleteLocal(_) => true,
        Request::BulkDocs(b) => b.docs.iter().all(|d| {
            d.get("_id")
                .and_then(Value::as_str)
                .is_some_and(|id| id.starts_with(LOCAL_PREFIX))
        }),
        _ => false,
    }
}
