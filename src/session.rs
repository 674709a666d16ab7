//! One WebRTC peer link: a reliable, ordered data channel over `str0m::Rtc`.
//!
//! [`Session`] wraps a str0m [`Rtc`] and adds what str0m leaves to its user:
//!
//! - **Signalling as browser JSON.** SDP and trickled ICE candidates leave and enter as
//!   [`SignalData`] (the `data` of hub signal documents). The connecting peer offers; the sharer
//!   answers. Remote candidates that arrive before the remote description are held.
//! - **Liveness.** str0m only reports ICE `Disconnected` after about 22 s for a silent peer, and
//!   never closes. The session opens a second channel (`peerpouch-ctl`) for heartbeats, counts
//!   any datagram the stack accepts as a sign of life, closes after
//!   [`SessionConfig::idle_timeout`] of silence, and the offerer restarts ICE (a new offer
//!   through the signalling path) after [`SessionConfig::ice_restart_after`] of silence.
//! - **Handshakes that start over.** A handshake that fails while the connect timeout still has
//!   time left is tried again with a fresh str0m `Rtc` (new ICE credentials, DTLS and SCTP)
//!   through the same signalling path, instead of failing the link: DTLS out of flight retries,
//!   an SCTP association lost before it opened (sctp-proto drops a whole association on a
//!   stray retransmitted INIT), or channels that do not open within a third of the connect
//!   timeout after DTLS connected (SCTP's INIT backoff grows to 60 s, so a few lost INIT ACKs
//!   leave an association idle for minutes while the path works). The offerer decides and sends
//!   a new offer; the answerer keeps waiting after its own stack failed, and takes an offer
//!   with a new SDP session id (`o=` line, RFC 4566 §5.2) as a new attempt.
//! - **A clean close** that the other side sees: a `bye` on the control channel, then str0m's
//!   DTLS close_notify.
//! - **Safe writes.** Never an empty message (it stalls a str0m channel forever), never more than
//!   the peer's `a=max-message-size` (64 KiB when the peer does not say), and at most
//!   [`SessionConfig::send_buffer`] bytes queued (larger bursts overflow browsers' receive
//!   buffers and stall SCTP for seconds, as measured with Chromium).
//! - **Reproducibility**: ICE credentials come from the seed; the DTLS certificate can be given.
//!   DTLS and SCTP still draw randomness inside str0m, so keep their bytes out of traces.
//!
//! ## Inputs, outputs and the drain rule
//! - Commands: [`Session::new`], [`Session::add_local_candidate`], [`Session::send`],
//!   [`Session::close`].
//! - Inputs: [`Session::handle_signal`], [`Session::handle_datagram`],
//!   [`Session::handle_timeout`].
//! - Outputs: [`Session::poll_transmit`], [`Session::poll_signal`], [`Session::poll_event`],
//!   [`Session::poll_timeout`].
//!
//! After every input or command, drain `poll_transmit`, `poll_signal` and `poll_event` until
//! they return `None` (str0m's single-mutation rule: the session already drained str0m itself).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::change::{SdpAnswer, SdpOffer, SdpPendingOffer};
use str0m::channel::{ChannelConfig, ChannelId, Reliability};
use str0m::config::DtlsCert;
use str0m::net::{Protocol, Receive};
use str0m::{Candidate, Event, IceCreds, Input, Output, Rtc, RtcConfig};

use crate::rand::SeededRng;
use crate::reach::Transport;
use crate::signal::{IceCandidate, SignalData};

/// Label of the application data channel.
pub const DATA_LABEL: &str = "peerpouch";
/// Protocol name of the data channel: carries the protocol version.
pub const DATA_PROTOCOL: &str = "peerpouch/1";
/// Label of the control channel (heartbeats and goodbye).
pub const CTL_LABEL: &str = "peerpouch-ctl";
const PING: &[u8] = b"ping";
const BYE: &[u8] = b"bye";
/// How long a closed session keeps str0m alive to deliver its goodbye (SCTP and DTLS
/// close_notify, retransmitted). str0m ends only once the peer's DTLS closed too, which a peer
/// that is gone never does: after this the session lets go of it.
const CLOSE_LINGER: Duration = Duration::from_secs(2);
/// Tail-loss probes in a row at most: three SACKs make SCTP retransmit a lost packet.
const MAX_LOSS_PROBES: u32 = 3;
/// What browsers assume when the SDP has no `a=max-message-size` (RFC 8841).
const DEFAULT_REMOTE_MAX_MESSAGE: usize = 64 * 1024;

/// Which side of the negotiation this session is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionRole {
    /// Creates the offer and the channels (the connecting peer).
    Offerer,
    /// Answers (the sharer).
    Answerer,
}

/// Tuning of a session.
#[derive(Clone)]
#[non_exhaustive]
pub struct SessionConfig {
    /// Send a heartbeat when nothing was sent for this long.
    pub heartbeat_interval: Duration,
    /// Tail-loss probe: while data sent on the channel is unacknowledged and nothing was sent
    /// for this long, send a heartbeat (at most 3 in a row; `None`: never). SCTP retransmits a
    /// lost packet early only after three SACKs report it missing, and SACKs come only for
    /// packets sent after it: a lost last packet of a burst (a request, the end of an answer)
    /// otherwise waits for the retransmission timeout, at least 1 s in str0m's SCTP. The
    /// probes are control-channel messages (the heartbeats every peer already takes), so they
    /// make those SACKs.
    pub loss_probe_interval: Option<Duration>,
    /// Close when nothing was received for this long (after the channel opened).
    pub idle_timeout: Duration,
    /// Close when data sent on the channel stays unacknowledged, none of it acknowledged,
    /// for this long ([`CloseReason::PeerNotReading`]): a peer that keeps its heartbeats
    /// going but takes none of our data (an MTU black hole on the path, a peer that stopped
    /// reading) would otherwise hold the queued answers for as long as it stays.
    pub send_stall_timeout: Duration,
    /// Give up if the channel has not opened after this long (counted again from the answer
    /// when the offer waited for a person's approval: [`Session::pause_connect_timeout`],
    /// [`Session::restart_connect_timeout`]). DTLS retries each handshake flight long enough
    /// to cover it: from 31 s (4 retries, also for shorter timeouts) up to 127 s (6 retries,
    /// for timeouts of 64 s and more).
    pub connect_timeout: Duration,
    /// The offerer restarts ICE after this much silence (`None`: never).
    pub ice_restart_after: Option<Duration>,
    /// ICE restarts per session at most.
    pub max_ice_restarts: u32,
    /// Handshakes per session at most, the first included: the offerer starts a handshake over
    /// (a fresh offer through the signalling path) when one fails or its channels do not open
    /// within a third of [`SessionConfig::connect_timeout`] after DTLS connected, as long as
    /// the connect timeout has time left. 1: never start over.
    pub max_handshakes: u32,
    /// Largest message we accept (advertised as `a=max-message-size`).
    pub max_receive_message: u32,
    /// Largest message we send (also capped by the peer's `a=max-message-size`).
    pub max_send_message: usize,
    /// The send queue's size: [`Session::send`] refuses a message (`Ok(false)`) only while more
    /// than half of it is queued and the message would overflow it, and
    /// [`SessionEvent::BufferedAmountLow`] fires when the queue falls back to half. At most half
    /// of it plus one message is ever queued.
    pub send_buffer: usize,
    /// The DTLS certificate (generated by str0m when `None`).
    pub dtls_cert: Option<DtlsCert>,
    /// Tests and simulations only: seed DTLS's non-cryptographic randomness (retransmission
    /// jitter) so the same inputs give the same timing. It also makes DTLS nonces predictable:
    /// never enable it for real peers.
    pub deterministic_dtls: bool,
}

impl SessionConfig {
    /// The crypto provider a session with this config uses: str0m's, with DTLS retrying each
    /// handshake flight long enough to cover [`SessionConfig::connect_timeout`] (and seeded when
    /// [`SessionConfig::deterministic_dtls`]). For an app that builds its own str0m `Rtc` beside
    /// ours and wants the same handshake budget.
    ///
    /// ```
    /// use peerpouch::session::SessionConfig;
    ///
    /// let provider = SessionConfig::default().crypto_provider();
    /// assert!(provider.dtls_provider.generate_certificate().is_some());
    /// ```
    pub fn crypto_provider(&self) -> str0m::crypto::CryptoProvider {
        crate::dtls::provider(self.deterministic_dtls, self.connect_timeout)
    }

    /// How many times DTLS sends each handshake flight again before giving up: 4 (about 31 s,
    /// str0m's default) for connect timeouts up to 31 s, up to 6 (about 127 s) for 64 s and
    /// more. The wait starts at 1 s and doubles.
    ///
    /// ```
    /// use std::time::Duration;
    /// use peerpouch::session::SessionConfig;
    ///
    /// let mut c = SessionConfig::default();
    /// assert_eq!(c.dtls_flight_retries(), 4);
    /// c.connect_timeout = Duration::from_secs(300);
    /// assert_eq!(c.dtls_flight_retries(), 6);
    /// ```
    pub fn dtls_flight_retries(&self) -> usize {
        crate::dtls::flight_retries(self.connect_timeout)
    }
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            heartbeat_interval: Duration::from_secs(1),
            loss_probe_interval: Some(Duration::from_millis(100)),
            idle_timeout: Duration::from_secs(10),
            send_stall_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(30),
            ice_restart_after: Some(Duration::from_secs(4)),
            max_ice_restarts: 3,
            max_handshakes: 5,
            max_receive_message: 256 * 1024,
            max_send_message: 64 * 1024,
            send_buffer: 64 * 1024,
            dtls_cert: None,
            deterministic_dtls: false,
        }
    }
}

impl std::fmt::Debug for SessionConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionConfig")
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("loss_probe_interval", &self.loss_probe_interval)
            .field("idle_timeout", &self.idle_timeout)
            .field("send_stall_timeout", &self.send_stall_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("ice_restart_after", &self.ice_restart_after)
            .field("max_handshakes", &self.max_handshakes)
            .field("max_send_message", &self.max_send_message)
            .field("send_buffer", &self.send_buffer)
            .finish_non_exhaustive()
    }
}

/// A datagram to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Send from this local address (for [`Transport::Tcp`]: the socket the stream belongs to
    /// does not matter; write to the stream to `destination`).
    pub source: SocketAddr,
    /// To this address.
    pub destination: SocketAddr,
    /// UDP (a datagram from the socket bound at `source`), or TCP (bytes, already framed, for
    /// the runtime's stream to `destination`, a TURN server reached over TCP). Sessions only
    /// ever send UDP; a node relaying through TURN over TCP sends TCP.
    pub transport: Transport,
    /// The bytes.
    pub contents: Vec<u8>,
}

/// The kind of an ICE candidate (RFC 8445 §5.1.1), as `RTCIceCandidate.type` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum CandidateType {
    /// An address of one of the machine's interfaces.
    Host,
    /// The address a NAT gave us, learned from a STUN (or TURN) server.
    Srflx,
    /// An address learned from the peer's connectivity checks.
    Prflx,
    /// An address on a TURN server that relays for us (or for the peer).
    Relay,
}

impl CandidateType {
    /// The name browsers and SDP use: `host`, `srflx`, `prflx`, `relay`.
    ///
    /// ```
    /// assert_eq!(peerpouch::session::CandidateType::Srflx.as_str(), "srflx");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            CandidateType::Host => "host",
            CandidateType::Srflx => "srflx",
            CandidateType::Prflx => "prflx",
            CandidateType::Relay => "relay",
        }
    }

    fn of(kind: str0m::CandidateKind) -> CandidateType {
        match kind {
            str0m::CandidateKind::Host => CandidateType::Host,
            str0m::CandidateKind::ServerReflexive => CandidateType::Srflx,
            str0m::CandidateKind::PeerReflexive => CandidateType::Prflx,
            str0m::CandidateKind::Relayed => CandidateType::Relay,
        }
    }
}

impl std::fmt::Display for CandidateType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The path a link took: the candidate pair ICE selected, as `RTCIceCandidatePairStats` shows
/// it.
///
/// ```
/// use peerpouch::reach::Transport;
/// use peerpouch::session::{CandidateType, LinkPath};
///
/// let direct = LinkPath { local: CandidateType::Srflx, remote: CandidateType::Srflx, relay: None,
///     local_addr: "192.0.2.1:1".parse().unwrap(), remote_addr: "192.0.2.2:2".parse().unwrap() };
/// assert_eq!(direct.to_string(), "direct (srflx <-> srflx)");
/// let relayed = LinkPath { local: CandidateType::Relay, relay: Some(Transport::Tcp), ..direct };
/// assert_eq!(relayed.to_string(), "via relay (TURN over TCP)");
/// assert!(relayed.is_relayed());
/// let theirs = LinkPath { local: CandidateType::Host, remote: CandidateType::Relay, ..direct };
/// assert_eq!(theirs.to_string(), "via relay (host <-> relay, the peer's TURN server)");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkPath {
    /// Our side of the pair.
    pub local: CandidateType,
    /// The peer's side.
    pub remote: CandidateType,
    /// When our side is a relay: how we reach the TURN server.
    pub relay: Option<Transport>,
    /// Our address on the pair (the relayed address when relayed).
    pub local_addr: SocketAddr,
    /// The peer's address on the pair.
    pub remote_addr: SocketAddr,
}

impl LinkPath {
    /// Whether a TURN server carries the traffic (ours or the peer's).
    pub fn is_relayed(&self) -> bool {
        self.local == CandidateType::Relay || self.remote == CandidateType::Relay
    }
}

impl std::fmt::Display for LinkPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.local, self.relay) {
            (CandidateType::Relay, Some(t)) => write!(f, "via relay (TURN over {t})"),
            _ if self.remote == CandidateType::Relay => write!(
                f,
                "via relay ({} <-> relay, the peer's TURN server)",
                self.local
            ),
            _ => write!(f, "direct ({} <-> {})", self.local, self.remote),
        }
    }
}

/// Why a session closed.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// [`Session::close`] was called.
    Local,
    /// The other side closed.
    Remote,
    /// Nothing was received for [`SessionConfig::idle_timeout`].
    IdleTimeout,
    /// Data we sent stayed unacknowledged for [`SessionConfig::send_stall_timeout`] while
    /// the peer was otherwise alive: it took none of it.
    PeerNotReading,
    /// The channel did not open within [`SessionConfig::connect_timeout`].
    ConnectTimeout,
    /// The WebRTC stack failed.
    Failed(String),
}

/// Candidate counts of both sides: [`Session::gathered`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Gathered {
    /// Our host candidates.
    pub local_host: u32,
    /// Our server-reflexive candidates.
    pub local_srflx: u32,
    /// Our relayed candidates.
    pub local_relay: u32,
    /// The peer's host candidates.
    pub remote_host: u32,
    /// The peer's server-reflexive (and peer-reflexive) candidates.
    pub remote_srflx: u32,
    /// The peer's relayed candidates.
    pub remote_relay: u32,
}

/// What a session reports.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SessionEvent {
    /// The data channel is open: [`Session::send`] works now.
    ChannelOpened,
    /// A message from the peer.
    Message {
        /// Binary (`true`) or text.
        binary: bool,
        /// The bytes.
        data: Vec<u8>,
    },
    /// The queue fell to half of [`SessionConfig::send_buffer`]: send more.
    BufferedAmountLow,
    /// The offerer started an ICE restart (a new offer went out).
    IceRestarted,
    /// The handshake starts over with a fresh WebRTC stack (see the [module docs](self)): the
    /// offerer sent a new offer, or the answerer took one. The link is still connecting.
    HandshakeRestarted {
        /// Why the previous handshake was given up.
        reason: String,
    },
    /// The session ended; nothing more will be received. Reported once.
    Closed(CloseReason),
}

/// Errors of commands and inputs; the session is unchanged after one.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    /// The peer's SDP could not be parsed or applied.
    #[error("bad remote description: {0}")]
    BadDescription(String),
    /// A signal that does not fit this side (an answer to the answerer, an offer twice).
    #[error("unexpected signal: {0}")]
    UnexpectedSignal(&'static str),
    /// An address or candidate str0m refused.
    #[error("bad candidate: {0}")]
    BadCandidate(String),
    /// Empty messages stall str0m channels; they are refused.
    #[error("empty messages cannot be sent")]
    EmptyMessage,
    /// Larger than the peer accepts (or than [`SessionConfig::max_send_message`]).
    #[error("message of {size} bytes is over the limit of {max}")]
    MessageTooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The channel is not open (yet, or any more).
    #[error("the data channel is not open")]
    NotOpen,
    /// str0m refused an operation.
    #[error("webrtc: {0}")]
    Rtc(String),
}

#[derive(Debug, PartialEq, Eq)]
enum State {
    Connecting,
    Open,
    Closed,
}

/// One WebRTC peer link. See the [module docs](self).
pub struct Session {
    rtc: Rtc,
    role: SessionRole,
    config: SessionConfig,
    state: State,
    ufrag: String,
    pending_offer: Option<SdpPendingOffer>,
    remote_description: bool,
    held_candidates: Vec<Candidate>,
    /// Addresses of the peer's candidates: datagrams from them belong to this session even
    /// before ICE has a working pair (str0m's own `accepts` only knows nominated or viable pairs).
    remote_addrs: Vec<SocketAddr>,
    /// Our candidates by address (relays with how the TURN server is reached), and the bases
    /// that have a server-reflexive mapping: what [`Session::path`] reports.
    local_kinds: Vec<(SocketAddr, CandidateType, Option<Transport>)>,
    srflx_bases: Vec<SocketAddr>,
    /// The peer's candidates by address (at most 64, like `remote_addrs`).
    remote_kinds: Vec<(SocketAddr, CandidateType)>,
    /// The (source, destination) of the last datagram str0m sent: once the channel is open,
    /// the pair ICE nominated.
    last_pair: Option<(SocketAddr, SocketAddr)>,
    /// ICE reached Connected at least once: a connect timeout after that is not "no path".
    ice_connected: bool,
    data: Option<ChannelId>,
    ctl: Option<ChannelId>,
    remote_max_message: usize,
    started: Instant,
    /// When connecting gives up ([`SessionConfig::connect_timeout`] after the start, or after
    /// [`Session::restart_connect_timeout`]; `None` while paused).
    connect_deadline: Option<Instant>,
    last_recv: Instant,
    last_sent: Instant,
    /// The channel's queued bytes when last looked at, and when the queue last shrank (or
    /// was empty): [`SessionConfig::send_stall_timeout`] counts from there.
    last_buffered: usize,
    send_progress: Instant,
    /// Tail-loss probes still to send, should the data sent last stay unacknowledged: set by
    /// every message sent, spent by probes, cleared once everything is acknowledged.
    probes_left: u32,
    restarts: u32,
    restart_started: Option<Instant>,
    /// When an ICE restart was last tried (started, or refused by str0m while an offer of ours
    /// was unanswered): the next waits a whole `ice_restart_after` from then, not only from
    /// the last data received, or restarts that end before data flows again follow each other
    /// back to back.
    restart_tried: Option<Instant>,
    /// When the session closed (str0m is dropped [`CLOSE_LINGER`] later at the latest).
    closed_at: Option<Instant>,
    /// Makes the ICE credentials of each handshake.
    rng: SeededRng,
    /// Our candidates as given to str0m, for the `Rtc` of a new handshake.
    local_candidates: Vec<Candidate>,
    /// Handshakes started (the first included).
    handshakes: u32,
    /// When DTLS connected in the current handshake.
    dtls_connected: Option<Instant>,
    /// Answerer: why the current handshake's stack failed; it waits for a new offer.
    failed: Option<String>,
    /// Answerer: the SDP session id of the offer the current handshake answered.
    remote_session: Option<String>,
    rtc_timeout: Option<Instant>,
    transmits: VecDeque<Transmit>,
    signals: VecDeque<SignalData>,
    events: VecDeque<SessionEvent>,
    skipped_candidates: u64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

fn rtc_err(e: impl std::fmt::Display) -> SessionError {
    SessionError::Rtc(e.to_string())
}

impl Session {
    /// A new session. The offerer's offer (with both channels) is ready at once in
    /// [`Session::poll_signal`]; the answerer waits for it. `seed` makes the ICE credentials.
    pub fn new(role: SessionRole, config: SessionConfig, seed: u64, now: Instant) -> Session {
        let mut rng = SeededRng::new(seed);
        let (rtc, ufrag) = build_rtc(&config, &mut rng, now);
        let connect_deadline = Some(now + config.connect_timeout);
        let mut s = Session {
            rtc,
            role,
            config,
            state: State::Connecting,
            ufrag,
            pending_offer: None,
            remote_description: false,
            held_candidates: Vec::new(),
            remote_addrs: Vec::new(),
            local_kinds: Vec::new(),
            srflx_bases: Vec::new(),
            remote_kinds: Vec::new(),
            last_pair: None,
            ice_connected: false,
            data: None,
            ctl: None,
            remote_max_message: DEFAULT_REMOTE_MAX_MESSAGE,
            started: now,
            connect_deadline,
            last_recv: now,
            last_sent: now,
            last_buffered: 0,
            send_progress: now,
            probes_left: 0,
            restarts: 0,
            restart_started: None,
            restart_tried: None,
            closed_at: None,
            rng,
            local_candidates: Vec::new(),
            handshakes: 1,
            dtls_connected: None,
            failed: None,
            remote_session: None,
            rtc_timeout: None,
            transmits: VecDeque::new(),
            signals: VecDeque::new(),
            events: VecDeque::new(),
            skipped_candidates: 0,
        };
        if role == SessionRole::Offerer {
            s.offer_channels();
        }
        s.drive(now);
        s
    }

    /// Offerer: adds both channels to the `Rtc` and queues the offer.
    fn offer_channels(&mut self) {
        let mut api = self.rtc.sdp_api();
        for label in [DATA_LABEL, CTL_LABEL] {
            api.add_channel_with_config(ChannelConfig {
                label: label.into(),
                ordered: true,
                reliability: Reliability::Reliable,
                negotiated: None,
                protocol: DATA_PROTOCOL.into(),
            });
        }
        if let Some((offer, pending)) = api.apply() {
            self.pending_offer = Some(pending);
            self.signals
                .push_back(SignalData::Offer(offer.to_sdp_string()));
        }
    }

    /// Whether a failed handshake may start over at `now`: still connecting, handshakes left,
    /// and time left before the connect timeout.
    fn may_start_over(&self, now: Instant) -> bool {
        self.state == State::Connecting
            && self.handshakes < self.config.max_handshakes
            && self.connect_deadline.is_none_or(|d| now < d)
    }

    /// The current handshake failed (`why`). The offerer starts over with a fresh `Rtc` and a
    /// new offer; the answerer waits for that offer. Either side closes the session when it
    /// may not start over.
    fn handshake_failed(&mut self, now: Instant, why: String) {
        if !self.may_start_over(now) {
            self.shut(now, CloseReason::Failed(why));
            return;
        }
        tracing::debug!(role = ?self.role, reason = %why, "handshake failed; starting over");
        match self.role {
            SessionRole::Offerer => {
                self.fresh_rtc(now);
                self.offer_channels();
                self.events
                    .push_back(SessionEvent::HandshakeRestarted { reason: why });
            }
            SessionRole::Answerer => {
                // The old stack stays for its goodbyes; datagrams to it are dropped.
                self.failed = Some(why);
            }
        }
    }

    /// Replaces the `Rtc` with a fresh one (new ICE credentials, DTLS and SCTP), offering our
    /// candidates again.
    fn fresh_rtc(&mut self, now: Instant) {
        let (rtc, ufrag) = build_rtc(&self.config, &mut self.rng, now);
        // Nothing of the old handshake is worth finishing: no goodbye either.
        self.rtc = rtc;
        self.ufrag = ufrag;
        self.handshakes += 1;
        self.pending_offer = None;
        self.remote_description = false;
        self.held_candidates.clear();
        self.dtls_connected = None;
        self.failed = None;
        self.data = None;
        self.ctl = None;
        self.rtc_timeout = None;
        for c in self.local_candidates.clone() {
            self.add_to_rtc(c);
        }
    }

    /// This side's role.
    pub fn role(&self) -> SessionRole {
        self.role
    }

    /// Whether the data channel is open.
    pub fn is_open(&self) -> bool {
        self.state == State::Open
    }

    /// Whether the session has closed.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Candidates from the peer that could not be used (mDNS names, unknown forms): skipped.
    pub fn skipped_candidates(&self) -> u64 {
        self.skipped_candidates
    }

    /// Our DTLS certificate fingerprint, as SDP writes it (`sha-256 AB:CD:...`).
    pub fn local_fingerprint(&mut self) -> String {
        self.rtc.direct_api().local_dtls_fingerprint().to_string()
    }

    /// The peer's DTLS fingerprint from its SDP, once known.
    pub fn remote_fingerprint(&mut self) -> Option<String> {
        self.rtc
            .direct_api()
            .remote_dtls_fingerprint()
            .map(|f| f.to_string())
    }

    /// The largest message [`Session::send`] takes now (ours and the peer's limit).
    pub fn max_message_size(&self) -> usize {
        self.config.max_send_message.min(self.remote_max_message)
    }

    /// Adds a local host candidate (a socket the runtime receives on); it is trickled to the
    /// peer as a [`SignalData::Candidate`].
    ///
    /// # Errors
    /// [`SessionError::BadCandidate`] when str0m refuses the address.
    pub fn add_local_candidate(
        &mut self,
        now: Instant,
        addr: SocketAddr,
    ) -> Result<(), SessionError> {
        let c =
            Candidate::host(addr, "udp").map_err(|e| SessionError::BadCandidate(e.to_string()))?;
        self.add_candidate(now, c)?;
        self.local_kinds.push((addr, CandidateType::Host, None));
        Ok(())
    }

    /// Adds a relayed candidate: `relay` is the address a TURN server allocated for us, reached
    /// from our socket `base` over `transport`. str0m sends from `relay`: the runtime (or
    /// [`crate::node::Node`]) wraps such datagrams for the TURN server, and feeds what the
    /// server relays back with `relay` as their destination.
    ///
    /// # Errors
    /// [`SessionError::BadCandidate`] when str0m refuses the addresses.
    pub fn add_relay_candidate(
        &mut self,
        now: Instant,
        relay: SocketAddr,
        base: SocketAddr,
        transport: Transport,
    ) -> Result<(), SessionError> {
        let c = Candidate::relayed(relay, base, "udp")
            .map_err(|e| SessionError::BadCandidate(e.to_string()))?;
        self.add_candidate(now, c)?;
        self.local_kinds
            .push((relay, CandidateType::Relay, Some(transport)));
        Ok(())
    }

    /// Stops counting [`SessionConfig::connect_timeout`] while the offer waits on something
    /// outside WebRTC that bounds the wait itself (a person deciding whether to accept us,
    /// with its own timeout). Harmless once connected.
    pub fn pause_connect_timeout(&mut self) {
        if self.state == State::Connecting {
            self.connect_deadline = None;
        }
    }

    /// Counts [`SessionConfig::connect_timeout`] afresh from `now` (the wait outside WebRTC is
    /// over: the answer came). Harmless once connected.
    pub fn restart_connect_timeout(&mut self, now: Instant) {
        if self.state == State::Connecting {
            self.connect_deadline = Some(now + self.config.connect_timeout);
        }
    }

    /// Whether ICE ever found a working pair (a connect timeout without one means no path).
    pub fn was_connected(&self) -> bool {
        self.ice_connected
    }

    /// How many candidates of each type this side offered and the peer signalled.
    ///
    /// ```
    /// use std::time::Instant;
    /// use peerpouch::session::{Session, SessionConfig, SessionRole};
    /// let now = Instant::now();
    /// let mut s = Session::new(SessionRole::Offerer, SessionConfig::default(), 1, now);
    /// s.add_local_candidate(now, "127.0.0.1:5000".parse().unwrap()).unwrap();
    /// assert_eq!(s.gathered().local_host, 1);
    /// assert_eq!(s.gathered().remote_host, 0);
    /// ```
    pub fn gathered(&self) -> Gathered {
        let mut g = Gathered::default();
        for (_, k, _) in &self.local_kinds {
            match k {
                CandidateType::Host => g.local_host += 1,
                CandidateType::Srflx | CandidateType::Prflx => g.local_srflx += 1,
                CandidateType::Relay => g.local_relay += 1,
            }
        }
        for (_, k) in &self.remote_kinds {
            match k {
                CandidateType::Host => g.remote_host += 1,
                CandidateType::Srflx | CandidateType::Prflx => g.remote_srflx += 1,
                CandidateType::Relay => g.remote_relay += 1,
            }
        }
        g
    }

    /// The path the link took, once ICE has selected a pair (the channel is open).
    ///
    /// Our side is `relay` when str0m sends from a relayed address, `srflx` when the socket
    /// has a server-reflexive mapping and the peer's address is not private (a peer reached
    /// across the internet sees our NAT's address), else `host`. The peer's side is the type
    /// of its candidate at that address, or `prflx` when it never signalled that address.
    pub fn path(&self) -> Option<LinkPath> {
        if self.state != State::Open {
            return None;
        }
        let (source, destination) = self.last_pair?;
        let local = self.local_kinds.iter().find(|(a, _, _)| *a == source);
        let (local, relay) = match local {
            Some((_, CandidateType::Relay, t)) => (CandidateType::Relay, *t),
            _ => {
                if self.srflx_bases.contains(&source) && !is_private(destination.ip()) {
                    (CandidateType::Srflx, None)
                } else {
                    (CandidateType::Host, None)
                }
            }
        };
        let remote = self
            .remote_kinds
            .iter()
            .find(|(a, _)| *a == destination)
            .map_or(CandidateType::Prflx, |(_, k)| *k);
        Some(LinkPath {
            local,
            remote,
            relay,
            local_addr: source,
            remote_addr: destination,
        })
    }

    /// Adds a server-reflexive candidate (`addr` as a STUN server saw `base`).
    ///
    /// # Errors
    /// [`SessionError::BadCandidate`] when str0m refuses the addresses.
    pub fn add_srflx_candidate(
        &mut self,
        now: Instant,
        addr: SocketAddr,
        base: SocketAddr,
    ) -> Result<(), SessionError> {
        let c = Candidate::server_reflexive(addr, base, "udp")
            .map_err(|e| SessionError::BadCandidate(e.to_string()))?;
        self.add_candidate(now, c)?;
        self.local_kinds.push((addr, CandidateType::Srflx, None));
        if !self.srflx_bases.contains(&base) {
            self.srflx_bases.push(base);
        }
        Ok(())
    }

    fn add_candidate(&mut self, now: Instant, c: Candidate) -> Result<(), SessionError> {
        self.local_candidates.push(c.clone());
        self.add_to_rtc(c);
        self.drive(now);
        Ok(())
    }

    /// Gives str0m a local candidate and trickles it to the peer.
    fn add_to_rtc(&mut self, c: Candidate) {
        if let Some(added) = self.rtc.add_local_candidate(c) {
            let line = added.to_sdp_string();
            self.signals
                .push_back(SignalData::Candidate(Some(IceCandidate {
                    candidate: line,
                    sdp_mid: None,
                    sdp_m_line_index: Some(0),
                    username_fragment: Some(self.ufrag.clone()),
                })));
        }
    }

    /// Feeds a signal from the peer (offer, answer, candidate).
    ///
    /// Candidates that do not parse (browsers' mDNS `.local` names, for one) are skipped and
    /// counted, not errors: the link still forms through peer-reflexive discovery.
    ///
    /// # Errors
    /// [`SessionError::BadDescription`] for SDP that does not parse or apply;
    /// [`SessionError::UnexpectedSignal`] for a description this side cannot take now.
    pub fn handle_signal(&mut self, now: Instant, signal: SignalData) -> Result<(), SessionError> {
        if self.state == State::Closed {
            return Ok(());
        }
        match signal {
            SignalData::Offer(sdp) => {
                if self.role != SessionRole::Answerer {
                    return Err(SessionError::UnexpectedSignal("an offer to the offerer"));
                }
                let offer = SdpOffer::from_sdp_string(&sdp)
                    .map_err(|e| SessionError::BadDescription(e.to_string()))?;
                let session = sdp_session_id(&sdp);
                // A new SDP session is the offerer starting over after a failed handshake: it
                // needs a fresh stack here too. The same session again is an ICE restart.
                let new_session = self.remote_description
                    && self.state == State::Connecting
                    && session.is_some()
                    && session != self.remote_session;
                if new_session || self.failed.is_some() {
                    let why = self
                        .failed
                        .take()
                        .unwrap_or_else(|| "the peer started over".into());
                    if !self.may_start_over(now) {
                        self.shut(now, CloseReason::Failed(why));
                        return Ok(());
                    }
                    self.fresh_rtc(now);
                    self.events
                        .push_back(SessionEvent::HandshakeRestarted { reason: why });
                }
                let answer = self
                    .rtc
                    .sdp_api()
                    .accept_offer(offer)
                    .map_err(|e| SessionError::BadDescription(e.to_string()))?;
                self.remote_max_message = remote_max_message(&sdp);
                self.remote_description = true;
                self.remote_session = session;
                self.signals
                    .push_back(SignalData::Answer(answer.to_sdp_string()));
                self.release_held_candidates();
            }
            SignalData::Answer(sdp) => {
                let Some(pending) = self.pending_offer.take() else {
                    return Err(SessionError::UnexpectedSignal("an answer without an offer"));
                };
                let answer = match SdpAnswer::from_sdp_string(&sdp) {
                    Ok(a) => a,
                    Err(e) => {
                        self.pending_offer = Some(pending);
                        return Err(SessionError::BadDescription(e.to_string()));
                    }
                };
                self.rtc
                    .sdp_api()
                    .accept_answer(pending, answer)
                    .map_err(|e| SessionError::BadDescription(e.to_string()))?;
                self.remote_max_message = remote_max_message(&sdp);
                self.remote_description = true;
                self.restart_started = None;
                self.release_held_candidates();
            }
            SignalData::Candidate(Some(c)) => {
                let parsed = Candidate::from_sdp_string(&c.candidate).map(|mut cand| {
                    if let Some(u) = &c.username_fragment {
                        cand.set_ufrag(u);
                    }
                    cand
                });
                if let Ok(cand) = &parsed {
                    if self.remote_addrs.len() < 64 && !self.remote_addrs.contains(&cand.addr()) {
                        self.remote_addrs.push(cand.addr());
                        self.remote_kinds
                            .push((cand.addr(), CandidateType::of(cand.kind())));
                    }
                }
                match parsed {
                    Ok(cand) if self.remote_description => self.rtc.add_remote_candidate(cand),
                    Ok(cand) => {
                        if self.held_candidates.len() < 64 {
                            self.held_candidates.push(cand);
                        } else {
                            self.skipped_candidates += 1;
                        }
                    }
                    Err(e) => {
                        tracing::debug!(candidate = %c.candidate, error = %e, "skipping remote candidate");
                        self.skipped_candidates += 1;
                    }
                }
            }
            SignalData::Candidate(None) => {}
            SignalData::Refuse(_) | SignalData::Pending => {
                return Err(SessionError::UnexpectedSignal(
                    "refusals and pending notices are for the hub layer",
                ))
            }
        }
        self.drive(now);
        Ok(())
    }

    fn release_held_candidates(&mut self) {
        for c in std::mem::take(&mut self.held_candidates) {
            self.rtc.add_remote_candidate(c);
        }
    }

    /// Our ICE username fragment in the current handshake (a new handshake draws a new one):
    /// the first half of the USERNAME in the peer's connectivity checks, by which a runtime
    /// serving many sessions on one socket routes them ([`crate::route::Router`]).
    pub fn ice_ufrag(&self) -> &str {
        &self.ufrag
    }

    /// Whether a datagram from `source` to `destination` belongs to this session (for runtimes
    /// that serve many sessions on one socket): a STUN message with its credentials, or anything
    /// from an address of the peer (a candidate it sent, or the pair ICE selected).
    ///
    /// When several sessions accept a datagram, give it to the newest: a peer that restarted on
    /// the same address and port replaces its old session, which then times out.
    pub fn accepts(&self, source: SocketAddr, destination: SocketAddr, contents: &[u8]) -> bool {
        if self.ignores_datagrams() {
            // A closed session that takes nothing more claims nothing: a new session between
            // the same two sockets gets its STUN answers and DTLS (see `handle_datagram`).
            return false;
        }
        match Receive::new(Protocol::Udp, source, destination, contents) {
            Ok(r) => {
                self.rtc.accepts(&Input::Receive(self.started, r))
                    || self.remote_addrs.contains(&source)
            }
            Err(_) => false,
        }
    }

    /// Closed, and the stack has nothing left to finish: datagrams are of no use any more.
    fn ignores_datagrams(&self) -> bool {
        self.state == State::Closed && !self.rtc.is_alive()
    }

    /// Feeds a datagram received at `now`. Datagrams that are not WebRTC are ignored.
    pub fn handle_datagram(
        &mut self,
        now: Instant,
        source: SocketAddr,
        destination: SocketAddr,
        contents: &[u8],
    ) {
        if self.ignores_datagrams() {
            return;
        }
        match Receive::new(Protocol::Udp, source, destination, contents) {
            Ok(r) => {
                match self.rtc.handle_input(Input::Receive(now, r)) {
                    // Any datagram the stack takes is a sign of life. Channel messages alone are
                    // not enough: under heavy loss SCTP backs off its retransmissions for longer
                    // than the idle timeout while ICE checks still get through.
                    Ok(()) => self.last_recv = self.last_recv.max(now),
                    Err(e) => tracing::debug!(error = %e, "datagram refused by the WebRTC stack"),
                }
            }
            Err(e) => tracing::trace!(error = ?e, "not a WebRTC datagram"),
        }
        self.drive(now);
    }

    /// Sends one message on the data channel. `Ok(false)` means the queue is full: wait for
    /// [`SessionEvent::BufferedAmountLow`] and send it again.
    ///
    /// # Errors
    /// [`SessionError::EmptyMessage`], [`SessionError::MessageTooLarge`],
    /// [`SessionError::NotOpen`].
    pub fn send(&mut self, now: Instant, binary: bool, data: &[u8]) -> Result<bool, SessionError> {
        if data.is_empty() {
            return Err(SessionError::EmptyMessage);
        }
        let max = self.max_message_size();
        if data.len() > max {
            return Err(SessionError::MessageTooLarge {
                size: data.len(),
                max,
            });
        }
        let (State::Open, Some(id)) = (&self.state, self.data) else {
            return Err(SessionError::NotOpen);
        };
        let limit = self.config.send_buffer;
        let Some(mut ch) = self.rtc.channel(id) else {
            return Err(SessionError::NotOpen);
        };
        let queued = ch.buffered_amount();
        // Refuse only above the low-water mark (half the buffer): then BufferedAmountLow is sure
        // to follow a refusal, and a message never waits behind one small unacknowledged packet
        // for the peer's delayed SACK (200 ms). At most `send_buffer / 2` plus one message is
        // queued.
        if queued > limit / 2 && queued + data.len() > limit {
            return Ok(false);
        }
        let ok = ch.write(binary, data).map_err(rtc_err)?;
        // Less queued than after the last write: the peer acknowledged some.
        if queued == 0 || queued < self.last_buffered {
            self.send_progress = now;
        }
        if ok {
            self.last_buffered = queued + data.len();
            self.last_sent = now;
            self.probes_left = MAX_LOSS_PROBES;
        }
        self.drive(now);
        Ok(ok)
    }

    /// Bytes queued on the data channel, not yet acknowledged by the peer.
    pub fn buffered_amount(&mut self) -> usize {
        match self.data.and_then(|id| self.rtc.channel(id)) {
            Some(mut ch) => ch.buffered_amount(),
            None => 0,
        }
    }

    /// Closes the session: says goodbye on the control channel, then closes DTLS. The peer sees
    /// [`SessionEvent::Closed`] with [`CloseReason::Remote`].
    pub fn close(&mut self, now: Instant) {
        if self.state == State::Closed {
            return;
        }
        if let Some(mut ch) = self.ctl.and_then(|id| self.rtc.channel(id)) {
            // Best effort: without it the peer notices by DTLS's close, or its idle timeout.
            if let Err(e) = ch.write(false, BYE) {
                tracing::debug!(error = %e, "goodbye not sent");
            }
        }
        self.drive(now);
        self.shut(now, CloseReason::Local);
    }

    fn shut(&mut self, now: Instant, reason: CloseReason) {
        if self.state == State::Closed {
            return;
        }
        tracing::debug!(?reason, "session closed");
        self.state = State::Closed;
        self.closed_at = Some(now);
        if let Err(e) = self.rtc.close() {
            tracing::debug!(error = %e, "closing str0m");
            self.rtc.disconnect();
        }
        self.events.push_back(SessionEvent::Closed(reason));
        self.drive(now);
    }

    /// Whether a `poll_transmit`, `poll_signal` or `poll_event` has something.
    pub(crate) fn has_output(&self) -> bool {
        !(self.transmits.is_empty() && self.signals.is_empty() && self.events.is_empty())
    }

    /// The next datagram to send.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        self.transmits.pop_front()
    }

    /// The next signal for the peer (through the hub).
    pub fn poll_signal(&mut self) -> Option<SignalData> {
        self.signals.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// When [`Session::handle_timeout`] should next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t = self.rtc_timeout;
        let mut consider = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        match self.state {
            State::Connecting => {
                if let Some(d) = self.connect_deadline {
                    consider(d);
                }
                if let Some(d) = self.stall_deadline() {
                    consider(d);
                }
            }
            State::Open => {
                consider(self.last_sent + self.config.heartbeat_interval);
                if let Some(d) = self.probe_deadline() {
                    consider(d);
                }
                consider(self.last_recv + self.config.idle_timeout);
                if let Some(d) = self.restart_deadline() {
                    consider(d);
                }
            }
            State::Closed => {
                if let (Some(at), Some(_)) = (self.closed_at, self.rtc_timeout) {
                    consider(at + CLOSE_LINGER);
                }
            }
        }
        t
    }

    /// Offerer: when channels that have not opened since DTLS connected count as stuck. A third
    /// of the connect timeout leaves a fresh handshake time to finish; SCTP's own INIT backoff
    /// (3 s doubling to 60 s) would let a handful of lost INIT ACKs use up the whole timeout.
    fn stall_deadline(&self) -> Option<Instant> {
        if self.role != SessionRole::Offerer || self.handshakes >= self.config.max_handshakes {
            return None;
        }
        Some(self.dtls_connected? + self.config.connect_timeout / 3)
    }

    /// Whether data has waited unacknowledged, none of it taken, for the stall timeout. Looked
    /// at on every timer (heartbeats keep them coming at least once a heartbeat interval).
    fn send_stalled(&mut self, now: Instant) -> bool {
        let queued = self.buffered_amount();
        if queued == 0 || queued < self.last_buffered {
            self.send_progress = now;
        }
        self.last_buffered = queued;
        queued > 0 && now >= self.send_progress + self.config.send_stall_timeout
    }

    /// When to send a tail-loss probe ([`SessionConfig::loss_probe_interval`]).
    fn probe_deadline(&self) -> Option<Instant> {
        let every = self.config.loss_probe_interval?;
        (self.probes_left > 0).then(|| self.last_sent + every)
    }

    fn restart_deadline(&self) -> Option<Instant> {
        let after = self.config.ice_restart_after?;
        if self.role != SessionRole::Offerer
            || self.restarts >= self.config.max_ice_restarts
            || self.restart_started.is_some()
        {
            return None;
        }
        let since = self
            .restart_tried
            .map_or(self.last_recv, |t| t.max(self.last_recv));
        Some(since + after)
    }

    /// Runs timers due at `now` (str0m's, heartbeat, tail-loss probe, idle and connect
    /// timeouts). Harmless early.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Err(e) = self.rtc.handle_input(Input::Timeout(now)) {
            tracing::debug!(error = %e, "str0m timeout");
        }
        let stalled = self.state == State::Open && self.send_stalled(now);
        match self.state {
            State::Connecting if self.connect_deadline.is_some_and(|d| now >= d) => {
                self.shut(now, CloseReason::ConnectTimeout);
            }
            State::Connecting if self.stall_deadline().is_some_and(|d| now >= d) => {
                let waited = self.config.connect_timeout / 3;
                self.handshake_failed(
                    now,
                    format!("channels not open {waited:?} after DTLS connected"),
                );
            }
            State::Open if now >= self.last_recv + self.config.idle_timeout => {
                self.shut(now, CloseReason::IdleTimeout);
            }
            State::Open if stalled => {
                self.shut(now, CloseReason::PeerNotReading);
            }
            State::Closed
                if self.rtc.is_alive()
                    && self.closed_at.is_some_and(|at| now >= at + CLOSE_LINGER) =>
            {
                tracing::debug!("the peer never finished closing: letting go");
                self.rtc.disconnect();
            }
            State::Open => {
                if self.restart_deadline().is_some_and(|d| now >= d) {
                    self.ice_restart(now);
                }
                let mut probe = self.probe_deadline().is_some_and(|d| now >= d);
                if probe {
                    // Only while something is unacknowledged (the common case on a fast
                    // path: all of it was, and this is the only check).
                    probe = self.buffered_amount() > 0;
                    self.probes_left = if probe { self.probes_left - 1 } else { 0 };
                }
                if probe || now >= self.last_sent + self.config.heartbeat_interval {
                    if let Some(mut ch) = self.ctl.and_then(|id| self.rtc.channel(id)) {
                        // A ping that cannot go now is not retried: the next interval sends
                        // one, and the idle timeout judges the peer either way.
                        if let Err(e) = ch.write(false, PING) {
                            tracing::debug!(error = %e, "heartbeat not sent");
                        }
                    }
                    self.last_sent = now;
                }
            }
            _ => {}
        }
        self.drive(now);
    }

    fn ice_restart(&mut self, now: Instant) {
        self.restart_tried = Some(now);
        let mut api = self.rtc.sdp_api();
        api.ice_restart(true);
        if let Some((offer, pending)) = api.apply() {
            self.restarts += 1;
            self.restart_started = Some(now);
            self.pending_offer = Some(pending);
            self.signals
                .push_back(SignalData::Offer(offer.to_sdp_string()));
            self.events.push_back(SessionEvent::IceRestarted);
        } else {
            tracing::debug!("an ICE restart could not start now; trying again later");
        }
    }

    /// Drains str0m until it only waits for time (its single-mutation rule).
    fn drive(&mut self, now: Instant) {
        loop {
            if !self.rtc.is_alive() {
                self.rtc_timeout = None;
                return;
            }
            match self.rtc.poll_output() {
                Ok(Output::Timeout(t)) => {
                    self.rtc_timeout = Some(t);
                    return;
                }
                Ok(Output::Transmit(t)) => {
                    self.last_pair = Some((t.source, t.destination));
                    self.transmits.push_back(Transmit {
                        source: t.source,
                        destination: t.destination,
                        transport: Transport::Udp,
                        contents: t.contents.to_vec(),
                    })
                }
                Ok(Output::Event(e)) => self.on_event(now, e),
                Err(e) => {
                    self.rtc_timeout = None;
                    if self.failed.is_some() {
                        // The answerer's failed stack, still failing: a new offer replaces it.
                        return;
                    }
                    if self.state != State::Connecting {
                        self.shut(now, CloseReason::Failed(e.to_string()));
                        return;
                    }
                    self.handshake_failed(now, e.to_string());
                    if self.role == SessionRole::Answerer || self.state == State::Closed {
                        return;
                    }
                    // The offerer's fresh stack: drain it too.
                }
            }
        }
    }

    fn on_event(&mut self, now: Instant, e: Event) {
        match e {
            Event::ChannelOpen(id, label) => {
                if label == DATA_LABEL {
                    self.data = Some(id);
                    let threshold = self.config.send_buffer / 2;
                    if let Some(mut ch) = self.rtc.channel(id) {
                        ch.set_buffered_amount_low_threshold(threshold);
                    }
                } else if label == CTL_LABEL {
                    self.ctl = Some(id);
                }
                if self.state == State::Connecting && self.data.is_some() && self.ctl.is_some() {
                    self.state = State::Open;
                    self.last_recv = now;
                    self.last_sent = now;
                    self.events.push_back(SessionEvent::ChannelOpened);
                }
            }
            Event::ChannelData(d) => {
                self.last_recv = now;
                self.restart_started = None;
                if Some(d.id) == self.data {
                    self.events.push_back(SessionEvent::Message {
                        binary: d.binary,
                        data: d.data,
                    });
                } else if Some(d.id) == self.ctl && d.data == BYE {
                    self.shut(now, CloseReason::Remote);
                }
            }
            Event::ChannelBufferedAmountLow(id) if Some(id) == self.data => {
                self.events.push_back(SessionEvent::BufferedAmountLow);
            }
            Event::ChannelClose(id) if Some(id) == self.data || Some(id) == self.ctl => {
                self.shut(now, CloseReason::Remote);
            }
            Event::Connected => self.dtls_connected = Some(now),
            // Before the channels opened, this is the stack giving up on the handshake (an
            // SCTP association lost, or the peer's stack doing so and closing DTLS).
            Event::Closed if self.state == State::Connecting && self.failed.is_none() => {
                self.handshake_failed(
                    now,
                    "the WebRTC stack closed before the channels opened".into(),
                );
            }
            // The answerer's failed stack closing: it waits for a new offer.
            Event::Closed if self.state == State::Connecting => {}
            // str0m may report Closed twice: `shut` reports once.
            Event::Closed => self.shut(now, CloseReason::Remote),
            // Informational: liveness and the connect timeout decide, not ICE's own states.
            Event::IceConnectionStateChange(s) => {
                tracing::debug!(state = ?s, "ice state");
                if matches!(
                    s,
                    str0m::IceConnectionState::Connected | str0m::IceConnectionState::Completed
                ) {
                    self.ice_connected = true;
                }
            }
            _ => {}
        }
    }
}

/// A str0m `Rtc` for `config` with ICE credentials drawn from `rng`, and its ufrag.
fn build_rtc(config: &SessionConfig, rng: &mut SeededRng, now: Instant) -> (Rtc, String) {
    let creds = IceCreds {
        ufrag: format!("{:08x}", rng.next_u64() as u32),
        pass: rng.hex_id(),
    };
    let provider = config.crypto_provider();
    let mut rc = RtcConfig::new()
        .set_crypto_provider(Arc::new(provider))
        .set_local_ice_credentials(creds.clone())
        .set_sctp_max_message_size(config.max_receive_message)
        .set_sctp_max_buffered_amount(config.send_buffer.max(16 * 1024) * 2);
    if let Some(cert) = &config.dtls_cert {
        rc = rc.set_dtls_cert(cert.clone());
    }
    let mut rtc = rc.build(now);
    // str0m's ICE agent schedules no connectivity check before its first timeout input:
    // without this kick, an answerer behind a NAT (whose peer's checks cannot reach it until
    // it sends its own) stayed silent until the next timer, 30 s later at the connect timeout.
    // Found by the NAT simulation (tests/sim_nat.rs).
    if let Err(e) = rtc.handle_input(Input::Timeout(now)) {
        tracing::debug!(error = %e, "str0m's first timeout");
    }
    (rtc, creds.ufrag)
}

/// The session id of an SDP (`o=<username> <sess-id> ...`, RFC 4566 §5.2): the same for every
/// offer of one session, ICE restarts included; a new one means a new session.
fn sdp_session_id(sdp: &str) -> Option<String> {
    let origin = sdp.lines().find_map(|l| l.trim().strip_prefix("o="))?;
    origin.split_whitespace().nth(1).map(str::to_string)
}

/// Addresses a peer on the same private network would have: RFC 1918, loopback, link-local,
/// CGNAT (RFC 6598) and IPv6 unique-local. Across the internet a NATed peer sees our srflx.
fn is_private(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments()[0];
            v6.is_loopback() || (s & 0xfe00) == 0xfc00 || (s & 0xffc0) == 0xfe80
        }
    }
}

/// `a=max-message-size` of an SDP; 64 KiB when absent, as browsers assume (RFC 8841 §6.1);
/// 0 means "no limit" and is capped to 1 GiB.
fn remote_max_message(sdp: &str) -> usize {
    sdp.lines()
        .find_map(|l| l.trim().strip_prefix("a=max-message-size:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .map(|v| if v == 0 { 1 << 30 } else { v })
        .unwrap_or(DEFAULT_REMOTE_MAX_MESSAGE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sdp_session_id_is_the_second_field_of_the_origin() {
        let sdp = "v=0\r\no=- 2954344436352400798 4 IN IP4 127.0.0.1\r\ns=-\r\n";
        assert_eq!(sdp_session_id(sdp).as_deref(), Some("2954344436352400798"));
        assert_eq!(sdp_session_id("v=0\r\n"), None);
        assert_eq!(sdp_session_id("o=-"), None);
    }

    #[test]
    fn max_message_size_is_read_from_sdp() {
        assert_eq!(
            remote_max_message("v=0\r\na=max-message-size:262144\r\n"),
            262144
        );
        assert_eq!(remote_max_message("v=0\r\n"), 64 * 1024);
        assert_eq!(remote_max_message("a=max-message-size:0"), 1 << 30);
        assert_eq!(remote_max_message("a=max-message-size:lots"), 64 * 1024);
    }
}
