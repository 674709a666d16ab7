//! The using side: app calls in, frames out, frames in, results out.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use super::frame::{Assembler, Kind, Message, MIN_FRAME};
use super::wire::*;
use super::{Outbox, RpcError, DEFAULT_FRAME, MAX_FRAME};
use crate::error::{CouchError, DbError};
use crate::ops::*;

/// Identifies a call of a client; results and stream batches come back with it.
pub type CallId = u32;

/// How a client talks to a share.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ClientConfig {
    /// The share.
    pub share: String,
    /// Our peer id (from the hub negotiation).
    pub peer: String,
    /// The share's access key, if it has one (we prove it, and require the server's proof).
    pub access_key: Option<Vec<u8>>,
    /// Our DTLS fingerprint.
    pub local_fingerprint: String,
    /// The fingerprint we see for the server.
    pub remote_fingerprint: String,
    /// Largest frame we accept and send (clamped to 1 KiB..64 KiB).
    pub frame_size: usize,
    /// Largest message we accept (after decompression).
    pub max_message: usize,
    /// Offer zstd compression (on by default): when both hellos list `zstd`, calls and answers
    /// that gain from it travel compressed, which cuts the data channel's work for batches of
    /// documents by about the compression ratio. Off, nothing is compressed either way.
    pub compress: bool,
    /// A call fails with 503 `unavailable` when no frame arrives from the server for this long
    /// (longpoll changes get their own timeout on top), or when its answer has not started ten
    /// times this long after it went out.
    pub request_timeout: Duration,
    /// Close if the server's hello has not arrived after this long.
    pub hello_timeout: Duration,
}

impl ClientConfig {
    /// Defaults for using `share` as `peer`, with the two DTLS fingerprints of the link.
    pub fn new(
        share: impl Into<String>,
        peer: impl Into<String>,
        local_fp: impl Into<String>,
        remote_fp: impl Into<String>,
    ) -> Self {
        ClientConfig {
            share: share.into(),
            peer: peer.into(),
            access_key: None,
            local_fingerprint: local_fp.into(),
            remote_fingerprint: remote_fp.into(),
            frame_size: DEFAULT_FRAME,
            max_message: 256 << 20,
            compress: true,
            request_timeout: Duration::from_secs(60),
            hello_timeout: Duration::from_secs(10),
        }
    }
}

/// What the client reports.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The server's hello checked out: calls go out now.
    Ready {
        /// The server's hello (limits, read-only flag).
        hello: Hello,
    },
    /// The answer to a call.
    Response {
        /// The call.
        call: CallId,
        /// Its result.
        result: Result<Response, DbError>,
    },
    /// A batch of a live changes subscription.
    Changes {
        /// The subscription.
        call: CallId,
        /// The rows.
        changes: ChangesResponse,
    },
    /// A subscription ended (`None`: cancelled).
    StreamEnded {
        /// The subscription.
        call: CallId,
        /// Why, when not cancelled.
        error: Option<DbError>,
    },
    /// The link is closed; every open call was answered with an error.
    Closed(RpcError),
}

#[derive(Debug, PartialEq)]
enum State {
    AwaitHello,
    Ready,
    Closed,
}

#[derive(Debug)]
struct Open {
    subscription: bool,
    /// How long the call may go without progress.
    timeout: Duration,
    deadline: Option<Instant>,
    /// The latest the answer may start (ten timeouts after the call went out): waiting behind
    /// other answers is bounded, a large answer that keeps arriving is not.
    hard_deadline: Instant,
    answering: bool,
    attachment: Option<Incoming>,
}

/// The metadata of attachment bytes on their way (the binary message that follows).
#[derive(Clone, Debug)]
struct Incoming {
    content_type: String,
    digest: String,
    /// Bytes in the binary message.
    length: u64,
    /// For a range: where it starts and the whole attachment's length.
    part: Option<(u64, u64)>,
}

/// The client machine. See the [module docs](super).
#[derive(Debug)]
pub struct RpcClient {
    config: ClientConfig,
    state: State,
    started: Instant,
    asm: Assembler,
    out: Outbox,
    queue: VecDeque<(CallId, Call, Option<Duration>)>,
    open: BTreeMap<CallId, Open>,
    next_id: CallId,
    max_in_flight: usize,
    events: VecDeque<ClientEvent>,
    server: Option<Hello>,
}

impl RpcClient {
    /// A client for one link; its hello is queued at once.
    pub fn new(mut config: ClientConfig, now: Instant) -> RpcClient {
        config.frame_size = config.frame_size.clamp(MIN_FRAME, MAX_FRAME);
        let mut out = Outbox::new(config.frame_size);
        let proof = config.access_key.as_ref().map(|k| {
            make_proof(
                k,
                Role::Client,
                &config.share,
                &config.peer,
                &config.local_fingerprint,
                &config.remote_fingerprint,
            )
        });
        out.push_json(
            Kind::Hello,
            0,
            &Hello {
                v: PROTOCOL_VERSION,
                role: Role::Client,
                share: config.share.clone(),
                peer: config.peer.clone(),
                caps: capabilities(config.compress),
                frame: config.frame_size,
                max_message: config.max_message,
                max_in_flight: 0,
                read_only: false,
                proof,
                db_uuid: None,
            },
        );
        let mut asm = Assembler::new(config.max_message, config.frame_size);
        asm.accept_compressed(config.compress);
        RpcClient {
            asm,
            config,
            state: State::AwaitHello,
            started: now,
            out,
            queue: VecDeque::new(),
            open: BTreeMap::new(),
            next_id: 1,
            max_in_flight: 8,
            events: VecDeque::new(),
            server: None,
        }
    }

    /// Whether the server's hello arrived.
    pub fn is_ready(&self) -> bool {
        self.state == State::Ready
    }

    /// Whether the link is closed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// The server's hello, once it arrived.
    pub fn server_hello(&self) -> Option<&Hello> {
        self.server.as_ref()
    }

    /// Calls sent or queued and not answered yet.
    pub fn open_calls(&self) -> usize {
        self.open.len() + self.queue.len()
    }

    /// Starts a call; its result arrives as [`ClientEvent::Response`]. Calls wait until the
    /// server's hello and while the server's `max_in_flight` calls are open.
    pub fn call(&mut self, now: Instant, request: Request) -> CallId {
        let extra = match &request {
            Request::Changes(c) if c.feed == Feed::Longpoll => {
                Some(Duration::from_millis(c.timeout_ms.unwrap_or(60_000)))
            }
            _ => None,
        };
        self.enqueue(now, Call::Call(request), extra)
    }

    /// Starts a live changes subscription: batches arrive as [`ClientEvent::Changes`] until
    /// [`RpcClient::cancel`].
    pub fn subscribe(&mut self, now: Instant, request: ChangesRequest) -> CallId {
        self.enqueue(now, Call::Subscribe(request), None)
    }

    fn enqueue(&mut self, now: Instant, call: Call, extra: Option<Duration>) -> CallId {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        if self.state == State::Closed {
            self.answer_closed(id, &call);
            return id;
        }
        self.queue.push_back((id, call, extra));
        self.pump(now);
        id
    }

    fn answer_closed(&mut self, id: CallId, call: &Call) {
        let e = DbError::Unavailable("the link to the peer is closed".into());
        self.events.push_back(match call {
            Call::Call(_) => ClientEvent::Response {
                call: id,
                result: Err(e),
            },
            Call::Subscribe(_) => ClientEvent::StreamEnded {
                call: id,
                error: Some(e),
            },
        });
    }

    /// Stops a call or a subscription. A cancelled call gets no answer; a cancelled
    /// subscription ends at once with [`ClientEvent::StreamEnded`] (`error: None`).
    ///
    /// # Errors
    /// [`RpcError::UnknownCall`] if `call` is not open.
    pub fn cancel(&mut self, now: Instant, call: CallId) -> Result<(), RpcError> {
        if let Some(pos) = self.queue.iter().position(|(id, _, _)| *id == call) {
            self.queue.remove(pos);
            return Ok(());
        }
        let Some(open) = self.open.remove(&call) else {
            return Err(RpcError::UnknownCall(call));
        };
        if open.subscription {
            self.events
                .push_back(ClientEvent::StreamEnded { call, error: None });
        }
        self.out.push(Kind::Cancel, call, &[]);
        self.pump(now);
        Ok(())
    }

    /// Feeds one data channel message from the server.
    ///
    /// # Errors
    /// When the server broke the protocol: the link is closed (goodbye queued, every open call
    /// answered with an error, [`ClientEvent::Closed`]).
    pub fn handle_frame(&mut self, now: Instant, bytes: &[u8]) -> Result<(), RpcError> {
        if self.state == State::Closed {
            return Ok(());
        }
        // A call times out when the link makes no progress: over a slow or lossy link a call
        // may wait behind large answers to earlier calls while frames keep arriving. A hard
        // deadline still ends every call, so a peer that trickles frames cannot hold one forever.
        let id = super::frame::Frame::decode(bytes).map(|f| f.id).ok();
        for (call, o) in self.open.iter_mut() {
            o.answering |= Some(*call) == id;
            if let Some(d) = o.deadline.as_mut() {
                *d = if o.answering {
                    now + o.timeout
                } else {
                    (now + o.timeout).min(o.hard_deadline)
                };
            }
        }
        let result = match self.asm.push(bytes) {
            Ok(Some(m)) => self.on_message(now, m),
            Ok(None) => Ok(()),
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            self.fail(e.clone(), true);
        }
        self.pump(now);
        result
    }

    /// The session closed underneath: every open call fails with 503 `unavailable`.
    pub fn handle_link_closed(&mut self, _now: Instant) {
        self.fail(
            RpcError::Closed(DbError::Unavailable("the link to the peer closed".into())),
            false,
        );
        // Nothing can be sent any more, a goodbye queued earlier included.
        self.out.clear();
    }

    /// Fails calls past their deadline (and cancels them at the server). Harmless early.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.state == State::AwaitHello && now >= self.started + self.config.hello_timeout {
            self.fail(
                RpcError::Protocol("the server sent no hello within the hello timeout".into()),
                true,
            );
            return;
        }
        let expired: Vec<CallId> = self
            .open
            .iter()
            .filter(|(_, o)| o.deadline.is_some_and(|d| d <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.open.remove(&id);
            self.out.push(Kind::Cancel, id, &[]);
            self.events.push_back(ClientEvent::Response {
                call: id,
                result: Err(DbError::Unavailable(format!(
                    "no answer from the peer within {:?}",
                    self.config.request_timeout
                ))),
            });
        }
        self.pump(now);
    }

    /// When [`RpcClient::handle_timeout`] should be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::AwaitHello => Some(self.started + self.config.hello_timeout),
            State::Ready => self.open.values().filter_map(|o| o.deadline).min(),
            State::Closed => None,
        }
    }

    /// Whether a frame or an event waits.
    pub(crate) fn has_output(&self) -> bool {
        !self.events.is_empty() || self.out.peek().is_some()
    }

    /// The next frame to write (it stays until [`RpcClient::advance_frame`]).
    pub fn peek_frame(&self) -> Option<&[u8]> {
        self.out.peek()
    }

    /// The frame from [`RpcClient::peek_frame`] was written.
    pub fn advance_frame(&mut self) {
        self.out.advance();
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    fn fail(&mut self, e: RpcError, send_goodbye: bool) {
        if self.state == State::Closed {
            return;
        }
        tracing::debug!(error = %e, "rpc client closing the link");
        self.state = State::Closed;
        let err = e.to_db_error();
        let err = match err {
            DbError::BadRequest(r) => DbError::Unavailable(r),
            other => other,
        };
        for (id, o) in std::mem::take(&mut self.open) {
            self.events.push_back(if o.subscription {
                ClientEvent::StreamEnded {
                    call: id,
                    error: Some(err.clone()),
                }
            } else {
                ClientEvent::Response {
                    call: id,
                    result: Err(err.clone()),
                }
            });
        }
        for (id, call, _) in std::mem::take(&mut self.queue) {
            self.answer_closed(id, &call);
        }
        if send_goodbye {
            self.out
                .push_json(Kind::Goodbye, 0, &CouchError::from(e.to_db_error()));
        } else {
            self.out.clear();
        }
        self.events.push_back(ClientEvent::Closed(e));
    }

    fn on_message(&mut self, _now: Instant, m: Message) -> Result<(), RpcError> {
        match (&self.state, m.kind) {
            (_, Kind::Goodbye) => {
                let e: CouchError = serde_json::from_slice(&m.payload).unwrap_or(CouchError {
                    status: 500,
                    error: "goodbye".into(),
                    reason: "the peer closed the link".into(),
                });
                self.fail(RpcError::Closed(DbError::from(e)), false);
                Ok(())
            }
            (State::AwaitHello, Kind::Hello) => self.on_hello(&m.payload),
            (State::AwaitHello, k) => Err(RpcError::Protocol(format!("{k:?} before hello"))),
            (_, Kind::Hello) => Err(RpcError::Protocol("a second hello".into())),
            (_, Kind::Response) => self.on_response(m.id, &m.payload),
            (_, Kind::Binary) => self.on_binary(m.id, m.payload),
            (_, Kind::StreamItem) => {
                let changes: ChangesResponse = serde_json::from_slice(&m.payload)
                    .map_err(|e| RpcError::Malformed(format!("stream item {}: {e}", m.id)))?;
                if self.open.get(&m.id).is_some_and(|o| o.subscription) {
                    self.events.push_back(ClientEvent::Changes {
                        call: m.id,
                        changes,
                    });
                }
                Ok(())
            }
            (_, Kind::StreamEnd) => {
                let end: StreamEnd = serde_json::from_slice(&m.payload)
                    .map_err(|e| RpcError::Malformed(format!("stream end {}: {e}", m.id)))?;
                if self.open.remove(&m.id).is_some() {
                    self.events.push_back(ClientEvent::StreamEnded {
                        call: m.id,
                        error: end.error.map(DbError::from),
                    });
                }
                Ok(())
            }
            (_, k) => Err(RpcError::Protocol(format!("a server does not send {k:?}"))),
        }
    }

    fn on_hello(&mut self, payload: &[u8]) -> Result<(), RpcError> {
        let h = super::peer_hello(payload, Role::Server)?;
        if h.share != self.config.share {
            return Err(RpcError::Protocol(
                "the hello is not from the server of this share".into(),
            ));
        }
        let c = &self.config;
        super::check_hello_proof(
            c.access_key.as_deref(),
            &h,
            &c.peer,
            (&c.share, &c.remote_fingerprint, &c.local_fingerprint),
            "the server could not prove it holds the share's key",
        )?;
        if let Some(uuid) = h.db_uuid.as_deref().filter(|u| !crate::is_valid_db_uuid(u)) {
            return Err(RpcError::Malformed(format!(
                "hello: db_uuid {:?} is not a database identity (1 to {} visible ASCII characters)",
                uuid.chars().take(40).collect::<String>(),
                crate::MAX_DB_UUID_LEN
            )));
        }
        self.out
            .set_frame_size(super::agreed_frame(h.frame, self.config.frame_size));
        self.out
            .set_compress(self.config.compress && h.caps.iter().any(|c| c == CAP_ZSTD));
        self.max_in_flight = h.max_in_flight.max(1);
        self.state = State::Ready;
        self.server = Some(h.clone());
        self.events.push_back(ClientEvent::Ready { hello: h });
        Ok(())
    }

    fn on_response(&mut self, id: CallId, payload: &[u8]) -> Result<(), RpcError> {
        let reply = Reply::decode(payload)
            .map_err(|e| RpcError::Malformed(format!("response {id}: {e}")))?;
        let Some(open) = self.open.get_mut(&id) else {
            return Ok(()); // cancelled or timed out meanwhile
        };
        if open.subscription {
            return Err(RpcError::Protocol(format!(
                "a response to subscription {id}"
            )));
        }
        let result = match reply {
            Reply::Attachment {
                content_type,
                digest,
                length,
            } => {
                if length as usize > self.config.max_message {
                    return Err(RpcError::TooLarge {
                        what: "attachment",
                        size: length as usize,
                        limit: self.config.max_message,
                    });
                }
                open.attachment = Some(Incoming {
                    content_type,
                    digest,
                    length,
                    part: None,
                });
                self.asm.expect(Kind::Binary, id, length as usize);
                return Ok(());
            }
            Reply::AttachmentPart {
                content_type,
                digest,
                length,
                offset,
                size,
            } => {
                let limit = self.config.max_message as u64;
                if size > limit || offset.checked_add(size).is_none_or(|end| end > length) {
                    return Err(RpcError::Malformed(format!(
                        "response {id}: a range of {size} bytes from {offset} of {length} (at most {limit} a message)"
                    )));
                }
                open.attachment = Some(Incoming {
                    content_type,
                    digest,
                    length: size,
                    part: Some((offset, length)),
                });
                self.asm.expect(Kind::Binary, id, size as usize);
                return Ok(());
            }
            Reply::Ok(r) => Ok(r),
            Reply::Err(e) => Err(DbError::from(e)),
        };
        self.open.remove(&id);
        self.events
            .push_back(ClientEvent::Response { call: id, result });
        Ok(())
    }

    fn on_binary(&mut self, id: CallId, data: Vec<u8>) -> Result<(), RpcError> {
        let Some(open) = self.open.get(&id) else {
            return Ok(());
        };
        let Some(Incoming {
            content_type,
            digest,
            length,
            part,
        }) = open.attachment.clone()
        else {
            return Err(RpcError::Protocol(format!(
                "binary data for call {id} without metadata"
            )));
        };
        if data.len() as u64 != length {
            return Err(RpcError::Malformed(format!(
                "attachment of {} bytes announced as {length}",
                data.len()
            )));
        }
        self.open.remove(&id);
        let response = match part {
            Some((offset, whole)) => Response::AttachmentPart(AttachmentPart {
                content_type,
                digest,
                length: whole,
                offset,
                data: data.into(),
            }),
            None => Response::Attachment(AttachmentData {
                content_type,
                digest,
                data: data.into(),
            }),
        };
        self.events.push_back(ClientEvent::Response {
            call: id,
            result: Ok(response),
        });
        Ok(())
    }

    fn pump(&mut self, now: Instant) {
        if self.state != State::Ready {
            return;
        }
        while self.open.len() < self.max_in_flight {
            let Some((id, call, extra)) = self.queue.pop_front() else {
                return;
            };
            let subscription = matches!(call, Call::Subscribe(_));
            self.out.push_json(Kind::Request, id, &call);
            let timeout = self.config.request_timeout + extra.unwrap_or_default();
            self.open.insert(
                id,
                Open {
                    subscription,
                    timeout,
                    deadline: (!subscription).then(|| now + timeout),
                    hard_deadline: now + timeout * 10,
                    answering: false,
                    attachment: None,
                },
            );
        }
    }
}
