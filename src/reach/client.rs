//! One STUN or TURN server as seen from one local base: [`ServerClient`].
//!
//! For a STUN server the machine learns the server-reflexive address (one Binding transaction,
//! RFC 8489). For a TURN server it allocates a relayed address (RFC 8656): Allocate with the
//! long-term credential challenge (401 with REALM and NONCE, then a signed retry; 438 Stale
//! Nonce takes the new nonce), keeps the allocation alive with Refresh, installs permissions
//! (CreatePermission) and channels (ChannelBind) for the peers it is told about, and relays
//! datagrams both ways (Send/Data indications, ChannelData once a channel is confirmed).
//!
//! Inputs: [`ServerClient::handle_datagram`] (UDP), [`ServerClient::handle_stream_data`] and
//! [`ServerClient::handle_stream_closed`] (TCP), [`ServerClient::handle_timeout`], and the
//! commands [`ServerClient::permit`], [`ServerClient::send_to`], [`ServerClient::release`].
//! Outputs: [`ServerClient::poll_transmit`] (bytes to the server over
//! [`ServerClient::transport`]), [`ServerClient::poll_event`], [`ServerClient::poll_timeout`].
//! After every input drain `poll_transmit` and `poll_event`, then wait for the next input or
//! `poll_timeout`.
//!
//! A server is not trusted more than it must be: success responses are checked against our
//! key once we have one, responses are matched by transaction id, Data indications and
//! ChannelData are taken only from peers we permitted, every table and queue is bounded and no
//! value a server sends can overflow a computation (lifetimes are clamped to an hour).
//!
//! ```
//! use std::time::{Duration, Instant};
//! use peerpouch::reach::{ClientConfig, ClientEvent, IceServerUrl, ServerClient};
//!
//! let url = IceServerUrl::parse("stun:127.0.0.1:3478").unwrap();
//! let server = url.clone().resolved(url.ip_addr().unwrap());
//! let t0 = Instant::now();
//! let mut c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 7, t0);
//! let request = c.poll_transmit().expect("a Binding request goes out at once");
//! // ... send `request` to the server, feed its answer to handle_datagram ...
//! # let _ = request;
//! c.handle_timeout(t0 + Duration::from_secs(5));
//! assert!(matches!(c.poll_event(), Some(ClientEvent::Failed(_)))); // nobody answered
//! ```

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use super::config::{ResolvedIceServer, ServerKind, Transport};
use super::stun::{
    long_term_key, verify_fingerprint, verify_integrity, Attribute, ChannelData, Class, Frame,
    Message, Method, StreamDeframer, StunError, TransactionId, CHANNEL_NUMBERS,
};
use crate::rand::SeededRng;

/// At most this many permissions (peer IPs) and this many channels (peer addresses) per
/// allocation; [`ServerClient::permit`] refuses more.
///
/// ```
/// assert_eq!(peerpouch::reach::client::MAX_PEERS, 256);
/// ```
pub const MAX_PEERS: usize = 256;

/// The largest datagram [`ServerClient::send_to`] relays (a Send indication with an IPv6 peer
/// must fit a STUN message's 65535 bytes).
///
/// ```
/// assert!(peerpouch::reach::client::MAX_PAYLOAD > 65_000);
/// ```
pub const MAX_PAYLOAD: usize = 65_500;

/// REQUESTED-TRANSPORT: UDP (RFC 8656 §18.7).
const UDP: u8 = 17;
/// How often a 438 Stale Nonce is answered with a retry, per transaction.
const STALE_NONCE_RETRIES: u8 = 3;
/// RFC 8656 §3.7 default lifetime when a success has no LIFETIME.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(600);
/// Lifetimes are clamped into this range: a hostile `u32::MAX` must not overflow an `Instant`,
/// and a zero must not make us refresh in a loop.
const MIN_LIFETIME: Duration = Duration::from_secs(4);
const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// Permissions last 300 s (RFC 8656 §9); refreshed at 240 s while in use.
const PERMISSION_LIFETIME: Duration = Duration::from_secs(300);
const PERMISSION_REFRESH: Duration = Duration::from_secs(240);
/// Channels last 600 s (RFC 8656 §12); refreshed at 540 s while in use.
const CHANNEL_LIFETIME: Duration = Duration::from_secs(600);
const CHANNEL_REFRESH: Duration = Duration::from_secs(540);
/// After a permission failed, `permit` and `send_to` refuse that IP for this long instead of
/// asking the server again for every datagram.
const PERMISSION_BACKOFF: Duration = Duration::from_secs(30);

/// RFC 8489 §14.9/§14.10: REALM and NONCE are at most 763 bytes; longer is refused rather than
/// echoed into every request.
const MAX_REALM_NONCE: usize = 763;

/// Settings of a [`ServerClient`].
///
/// ```
/// use std::time::Duration;
/// let c = peerpouch::reach::ClientConfig::default();
/// assert_eq!(c.initial_rto, Duration::from_millis(250));
/// assert_eq!(c.request_timeout, Duration::from_secs(5));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// First retransmission timeout over UDP (doubles after each retransmission; RFC 8489
    /// §6.2.1).
    pub initial_rto: Duration,
    /// A transaction, or the whole allocation attempt with its challenge, gives up after this.
    pub request_timeout: Duration,
    /// Payloads queued while their permission is pending; beyond, the oldest is dropped and
    /// counted in [`ClientStats::queue_dropped`].
    pub max_queued: usize,
    /// SOFTWARE attribute in requests (none by default).
    pub software: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            initial_rto: Duration::from_millis(250),
            request_timeout: Duration::from_secs(5),
            max_queued: 64,
            software: None,
        }
    }
}

/// What a [`ServerClient`] reports.
///
/// ```
/// use peerpouch::reach::ClientEvent;
/// let e = ClientEvent::Mapped { srflx: "203.0.113.1:4000".parse().unwrap() };
/// assert!(matches!(e, ClientEvent::Mapped { .. }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientEvent {
    /// The server-reflexive address was learned (Binding, or the XOR-MAPPED-ADDRESS of an
    /// Allocate success over UDP; a TCP connection's mapping is no UDP candidate).
    Mapped {
        /// The address the server saw us as.
        srflx: SocketAddr,
    },
    /// The relayed address is allocated.
    Allocated {
        /// The relayed transport address (a candidate of type `relay`).
        relay: SocketAddr,
        /// The server-reflexive address (UDP only).
        srflx: Option<SocketAddr>,
        /// The allocation's lifetime as granted (clamped to an hour); refreshed automatically.
        lifetime: Duration,
    },
    /// A peer's datagram came through the relay.
    Relayed {
        /// The peer.
        peer: SocketAddr,
        /// Its datagram.
        data: Vec<u8>,
    },
    /// A permission could not be installed or refreshed; data to that peer is dropped.
    PermissionFailed {
        /// The peer's IP.
        peer: IpAddr,
        /// Why.
        failure: ClientFailure,
    },
    /// The server is unusable now: gathering failed, or the allocation was lost.
    Failed(ClientFailure),
    /// [`ServerClient::release`] finished.
    Released,
}

/// Why a server (or one permission) failed.
///
/// ```
/// use peerpouch::reach::ClientFailure;
/// let f = ClientFailure::Unauthorized;
/// assert!(f.to_string().contains("--ice-username"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientFailure {
    /// No answer within the request timeout.
    Unreachable,
    /// 401 after we sent credentials: wrong user name or password (or no credentials given).
    Unauthorized,
    /// 403.
    Forbidden,
    /// 437: the server has another allocation for this 5-tuple, or lost ours.
    AllocationMismatch,
    /// 486.
    QuotaReached,
    /// 508.
    InsufficientCapacity,
    /// Any other error response.
    Refused {
        /// The STUN error code.
        code: u16,
        /// Its reason phrase.
        reason: String,
    },
    /// The server answered only with bytes we could not use.
    Malformed(StunError),
    /// The TCP connection failed or closed.
    StreamClosed(String),
}

impl fmt::Display for ClientFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientFailure::Unreachable => f.write_str(
                "the STUN/TURN server did not answer in time: check its address and port, and \
                 that UDP (or TCP with ?transport=tcp) to it is not blocked",
            ),
            ClientFailure::Unauthorized => f.write_str(
                "the TURN server refused the credentials (401): check \
                 --ice-username/--ice-credential",
            ),
            ClientFailure::Forbidden => f.write_str(
                "the TURN server forbids this request (403): the account may not allocate, or \
                 the peer address is not allowed by the server's policy",
            ),
            ClientFailure::AllocationMismatch => f.write_str(
                "the TURN server has a different allocation for this address (437): wait for \
                 it to expire or use another local port",
            ),
            ClientFailure::QuotaReached => f.write_str(
                "the TURN server's quota for this user is reached (486): close other sessions \
                 using these credentials or ask for a higher quota",
            ),
            ClientFailure::InsufficientCapacity => f.write_str(
                "the TURN server has no capacity left (508): try later or another server",
            ),
            ClientFailure::Refused { code, reason } => write!(
                f,
                "the STUN/TURN server refused the request ({code} {reason})"
            ),
            ClientFailure::Malformed(e) => write!(
                f,
                "the STUN/TURN server answered with messages we cannot use ({e}): is it a \
                 STUN/TURN server?"
            ),
            ClientFailure::StreamClosed(why) => write!(
                f,
                "the TCP connection to the TURN server closed ({why}): check that TCP to it is \
                 allowed"
            ),
        }
    }
}

impl ClientFailure {
    fn from_code(code: u16, reason: &str) -> ClientFailure {
        match code {
            401 => ClientFailure::Unauthorized,
            403 => ClientFailure::Forbidden,
            437 => ClientFailure::AllocationMismatch,
            486 => ClientFailure::QuotaReached,
            508 => ClientFailure::InsufficientCapacity,
            _ => ClientFailure::Refused {
                code,
                reason: reason.chars().take(200).collect(),
            },
        }
    }
}

/// Where a [`ServerClient`] stands, for diagnostics.
///
/// ```
/// use peerpouch::reach::ClientStatus;
/// assert_ne!(ClientStatus::Pending, ClientStatus::Released);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientStatus {
    /// Binding or Allocate in progress.
    Pending,
    /// A STUN server told us our server-reflexive address.
    Mapped {
        /// The address.
        srflx: SocketAddr,
    },
    /// A TURN allocation is up.
    Allocated {
        /// The relayed address.
        relay: SocketAddr,
        /// The server-reflexive address (UDP only).
        srflx: Option<SocketAddr>,
    },
    /// Release in progress (Refresh with LIFETIME 0 sent).
    Releasing,
    /// Unusable; see the failure.
    Failed(ClientFailure),
    /// Released.
    Released,
}

/// Why an input or command was refused. The machine is unchanged (apart from counters).
///
/// ```
/// use peerpouch::reach::ClientError;
/// assert!(ClientError::BadIntegrity.to_string().contains("MESSAGE-INTEGRITY"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// The bytes do not decode.
    #[error("malformed STUN/TURN message: {0}")]
    Malformed(#[from] StunError),
    /// A response to no transaction of ours (a duplicate, a late one, or forged).
    #[error("a response to no pending transaction (duplicate, late or forged)")]
    UnknownTransaction,
    /// A well-formed message a client has no use for (a request, an unexpected method).
    #[error("unexpected STUN message: {method} {class:?}")]
    Unexpected {
        /// Its method.
        method: Method,
        /// Its class.
        class: Class,
    },
    /// A success response whose MESSAGE-INTEGRITY is missing or wrong.
    #[error("a response failed the MESSAGE-INTEGRITY check and was ignored")]
    BadIntegrity,
    /// A message whose FINGERPRINT is wrong.
    #[error("a message failed the FINGERPRINT check and was ignored")]
    BadFingerprint,
    /// Data from a peer we gave no permission to.
    #[error("relayed data from {0}, which has no permission, was dropped")]
    UnpermittedPeer(SocketAddr),
    /// ChannelData on a channel we did not bind.
    #[error("ChannelData on unbound channel {0:#06x} was dropped")]
    UnknownChannel(u16),
    /// The call does not match the server's transport (datagrams for a TCP server, or stream
    /// data for a UDP one).
    #[error("this server is reached over {0}")]
    WrongTransport(Transport),
    /// `permit` or `send_to` on a STUN (not TURN) server.
    #[error("a STUN server does not relay")]
    NotTurn,
    /// The client is failed, releasing or released.
    #[error("the TURN client is {0}")]
    InvalidState(&'static str),
    /// More than [`MAX_PEERS`] permissions.
    #[error("more than {max} peers on one TURN allocation")]
    TooManyPeers {
        /// The bound.
        max: usize,
    },
    /// A datagram too large to relay.
    #[error("{len} bytes is more than the {max} a TURN relay carries")]
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// [`MAX_PAYLOAD`].
        max: usize,
    },
    /// The server refused a permission for this peer recently
    /// ([`ClientEvent::PermissionFailed`]); it is not asked again before `retry_at`.
    #[error("the TURN server refused a permission for {peer} recently; not asking again yet")]
    PermissionRefused {
        /// The peer's IP.
        peer: IpAddr,
        /// When `permit` asks the server again.
        retry_at: Instant,
    },
    /// A peer of the other address family than the relayed address.
    #[error("peer {peer} is not of the relayed address's family ({relay})")]
    FamilyMismatch {
        /// The peer.
        peer: SocketAddr,
        /// Our relayed address.
        relay: SocketAddr,
    },
}

/// Counters of what the client ignored or dropped, for diagnostics and tests.
///
/// ```
/// let s = peerpouch::reach::ClientStats::default();
/// assert_eq!(s.bad_integrity, 0);
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Requests retransmitted (UDP).
    pub retransmissions: u64,
    /// Responses to no pending transaction.
    pub unknown_transactions: u64,
    /// Success responses that failed MESSAGE-INTEGRITY, and messages failing FINGERPRINT.
    pub bad_integrity: u64,
    /// Bytes from the server that did not decode (or made no sense).
    pub malformed: u64,
    /// Relayed datagrams from peers without permission, or on unknown channels.
    pub unpermitted_dropped: u64,
    /// Queued payloads dropped (queue full, permission failed, released).
    pub queue_dropped: u64,
    /// 438 Stale Nonce retries.
    pub stale_nonce_retries: u64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    Gathering,
    Mapped(SocketAddr),
    Allocated,
    Releasing,
    Failed(ClientFailure),
    Released,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum TxKind {
    Binding,
    Allocate,
    Refresh {
        lifetime: Option<u32>,
    },
    CreatePermission {
        ip: IpAddr,
    },
    ChannelBind {
        peer: SocketAddr,
        channel: u16,
    },
    /// Refresh with LIFETIME 0 while gathering: deletes a stale allocation of ours that
    /// holds this 5-tuple (an earlier process on the same port), so Allocate can succeed.
    ClearStale,
}

impl TxKind {
    /// The peer a permission or channel request is for.
    fn peer(&self) -> Option<SocketAddr> {
        match self {
            TxKind::CreatePermission { ip } => Some(SocketAddr::new(*ip, 0)),
            TxKind::ChannelBind { peer, .. } => Some(*peer),
            _ => None,
        }
    }

    fn method(&self) -> Method {
        match self {
            TxKind::Binding => Method::BINDING,
            TxKind::Allocate => Method::ALLOCATE,
            TxKind::Refresh { .. } | TxKind::ClearStale => Method::REFRESH,
            TxKind::CreatePermission { .. } => Method::CREATE_PERMISSION,
            TxKind::ChannelBind { .. } => Method::CHANNEL_BIND,
        }
    }
}

#[derive(Clone, Debug)]
struct Tx {
    kind: TxKind,
    bytes: Vec<u8>,
    /// The key the request was signed with: a success must carry MESSAGE-INTEGRITY by it.
    key: Option<[u8; 16]>,
    next_send: Instant,
    rto: Duration,
    deadline: Instant,
    stale_retries: u8,
}

#[derive(Clone, Debug)]
struct Auth {
    realm: String,
    nonce: String,
    key: [u8; 16],
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PermState {
    /// Asked for before the allocation exists.
    Wanted,
    /// CreatePermission in flight.
    Pending,
    /// Installed at `since`.
    Installed,
}

#[derive(Clone, Debug)]
struct Permission {
    state: PermState,
    since: Instant,
    last_used: Instant,
    refreshing: bool,
}

#[derive(Clone, Debug)]
struct Channel {
    number: u16,
    confirmed: bool,
    in_flight: bool,
    since: Instant,
    last_used: Instant,
}

/// The client machine for one (local base, ICE server): see the [module docs](self).
///
/// ```
/// use std::time::Instant;
/// use peerpouch::reach::{ClientConfig, ClientStatus, IceServer, ServerClient, Transport};
///
/// let url = IceServer::new("turn:127.0.0.1:3478?transport=tcp").credentials("u", "p").parse().unwrap().remove(0);
/// let server = url.clone().resolved(url.ip_addr().unwrap());
/// let mut c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
/// assert_eq!(c.transport(), Transport::Tcp);
/// assert_eq!(c.status(), ClientStatus::Pending);
/// assert!(c.poll_transmit().is_some()); // the Allocate request, framed for the stream
/// ```
#[derive(Debug)]
pub struct ServerClient {
    server: ResolvedIceServer,
    base: SocketAddr,
    config: ClientConfig,
    rng: SeededRng,
    now: Instant,
    phase: Phase,
    attempt_deadline: Instant,
    /// A 437 to Allocate was answered by deleting the stale allocation once already.
    cleared_stale: bool,
    auth: Option<Auth>,
    /// A 401 challenge was answered: the next 401 means wrong credentials.
    challenged: bool,
    last_malformed: Option<StunError>,
    transactions: BTreeMap<TransactionId, Tx>,
    relay: Option<SocketAddr>,
    srflx: Option<SocketAddr>,
    refresh_at: Instant,
    expires_at: Instant,
    refreshing: bool,
    permissions: BTreeMap<IpAddr, Permission>,
    /// Recently refused permissions: IP → when to ask again (at most MAX_PEERS).
    refused: BTreeMap<IpAddr, Instant>,
    channels: BTreeMap<SocketAddr, Channel>,
    channel_peers: BTreeMap<u16, SocketAddr>,
    next_channel: u16,
    queued: VecDeque<(SocketAddr, Vec<u8>)>,
    deframer: StreamDeframer,
    transmits: VecDeque<Vec<u8>>,
    events: VecDeque<ClientEvent>,
    stats: ClientStats,
}

impl ServerClient {
    /// A client that starts at once: a Binding request (STUN) or an Allocate request for a UDP
    /// relay (TURN) is ready in [`ServerClient::poll_transmit`]. `base` is the local address
    /// the server sees us from (for diagnostics); `seed` makes transaction ids.
    ///
    /// ```
    /// use std::time::Instant;
    /// use peerpouch::reach::{ClientConfig, IceServerUrl, ServerClient};
    /// let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let mut c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// assert_eq!(c.poll_transmit().unwrap().len(), 20);
    /// ```
    pub fn new(
        server: ResolvedIceServer,
        base: SocketAddr,
        config: ClientConfig,
        seed: u64,
        now: Instant,
    ) -> ServerClient {
        let timeout = config.request_timeout;
        let mut c = ServerClient {
            server,
            base,
            config,
            rng: SeededRng::new(seed),
            now,
            phase: Phase::Gathering,
            attempt_deadline: now + timeout,
            cleared_stale: false,
            auth: None,
            challenged: false,
            last_malformed: None,
            transactions: BTreeMap::new(),
            relay: None,
            srflx: None,
            refresh_at: now,
            expires_at: now,
            refreshing: false,
            permissions: BTreeMap::new(),
            refused: BTreeMap::new(),
            channels: BTreeMap::new(),
            channel_peers: BTreeMap::new(),
            next_channel: *CHANNEL_NUMBERS.start(),
            queued: VecDeque::new(),
            deframer: StreamDeframer::new(),
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            stats: ClientStats::default(),
        };
        match c.server.url.kind {
            ServerKind::Stun => c.request(TxKind::Binding, 0, Some(c.attempt_deadline)),
            ServerKind::Turn => c.request(TxKind::Allocate, 0, Some(c.attempt_deadline)),
        }
        c
    }

    /// The server this client talks to.
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, IceServerUrl, ServerClient};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// assert_eq!(c.server().addr.port(), 3478);
    /// ```
    pub fn server(&self) -> &ResolvedIceServer {
        &self.server
    }

    /// The local base given to [`ServerClient::new`].
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, IceServerUrl, ServerClient};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let c = ServerClient::new(server, "10.0.0.2:5000".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// assert_eq!(c.base().port(), 5000);
    /// ```
    pub fn base(&self) -> SocketAddr {
        self.base
    }

    /// How to reach the server: datagrams from the base (UDP) or one TCP stream to
    /// `server().addr` that the runtime opens (TCP).
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, IceServerUrl, ServerClient, Transport};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// assert_eq!(c.transport(), Transport::Udp);
    /// ```
    pub fn transport(&self) -> Transport {
        self.server.url.transport
    }

    /// Whether a datagram's source is the server (UDP).
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, IceServerUrl, ServerClient};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// assert!(c.is_from_server("192.0.2.1:3478".parse().unwrap()));
    /// assert!(!c.is_from_server("192.0.2.1:3479".parse().unwrap()));
    /// ```
    pub fn is_from_server(&self, source: SocketAddr) -> bool {
        source == self.server.addr
    }

    /// Counters of ignored and dropped input.
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, IceServerUrl, ServerClient};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let mut c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// assert!(c.handle_datagram(Instant::now(), b"junk").is_err());
    /// assert_eq!(c.stats().malformed, 1);
    /// ```
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Payloads waiting for their permission.
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, IceServer, ServerClient};
    /// # let url = IceServer::new("turn:192.0.2.1").credentials("u", "p").parse().unwrap().remove(0);
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let mut c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// c.send_to(Instant::now(), "198.51.100.7:9".parse().unwrap(), b"early").unwrap();
    /// assert_eq!(c.queued_len(), 1); // sent once the allocation and permission are up
    /// ```
    pub fn queued_len(&self) -> usize {
        self.queued.len()
    }

    /// Where the client stands.
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, ClientStatus, IceServerUrl, ServerClient};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// assert_eq!(c.status(), ClientStatus::Pending);
    /// ```
    pub fn status(&self) -> ClientStatus {
        match &self.phase {
            Phase::Gathering => ClientStatus::Pending,
            Phase::Mapped(srflx) => ClientStatus::Mapped { srflx: *srflx },
            Phase::Allocated => match self.relay {
                Some(relay) => ClientStatus::Allocated {
                    relay,
                    srflx: self.udp_srflx(),
                },
                None => ClientStatus::Pending,
            },
            Phase::Releasing => ClientStatus::Releasing,
            Phase::Failed(f) => ClientStatus::Failed(f.clone()),
            Phase::Released => ClientStatus::Released,
        }
    }

    /// The relayed address while allocated.
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, IceServerUrl, ServerClient};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// assert_eq!(c.relay_addr(), None);
    /// ```
    pub fn relay_addr(&self) -> Option<SocketAddr> {
        match self.phase {
            Phase::Allocated => self.relay,
            _ => None,
        }
    }

    /// The server-reflexive address, once learned (from Binding, or from Allocate over UDP).
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, IceServerUrl, ServerClient};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// assert_eq!(c.mapped_addr(), None);
    /// ```
    pub fn mapped_addr(&self) -> Option<SocketAddr> {
        match self.phase {
            Phase::Mapped(a) => Some(a),
            Phase::Allocated => self.udp_srflx(),
            _ => None,
        }
    }

    fn udp_srflx(&self) -> Option<SocketAddr> {
        match self.transport() {
            Transport::Udp => self.srflx,
            Transport::Tcp => None,
        }
    }

    /// Bytes for the server, over [`ServerClient::transport`] (for TCP already framed and
    /// padded for the stream).
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, IceServerUrl, ServerClient};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let mut c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// assert!(c.poll_transmit().is_some());
    /// assert!(c.poll_transmit().is_none());
    /// ```
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        self.transmits.pop_front()
    }

    /// The next event.
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, IceServerUrl, ServerClient};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let mut c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// assert_eq!(c.poll_event(), None);
    /// ```
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// When [`ServerClient::handle_timeout`] wants to run next: `None` only when there is
    /// nothing left to do (mapped by a STUN server, failed, released).
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # use peerpouch::reach::{ClientConfig, IceServerUrl, ServerClient};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let t0 = Instant::now();
    /// let c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, t0);
    /// assert_eq!(c.poll_timeout(), Some(t0 + Duration::from_millis(250))); // first retransmission
    /// ```
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mut t: Option<Instant> = None;
        let mut at = |x: Instant| t = Some(t.map_or(x, |t| t.min(x)));
        match self.phase {
            Phase::Gathering => at(self.attempt_deadline),
            Phase::Allocated => {
                at(self.expires_at);
                if !self.refreshing {
                    at(self.refresh_at);
                }
                for p in self.permissions.values() {
                    if let Some(x) = permission_due(p) {
                        at(x);
                    }
                }
                for c in self.channels.values() {
                    if let Some(x) = channel_due(c) {
                        at(x);
                    }
                }
            }
            Phase::Releasing => {}
            Phase::Mapped(_) | Phase::Failed(_) | Phase::Released => return None,
        }
        for tx in self.transactions.values() {
            at(tx.deadline);
            if self.transport() == Transport::Udp {
                at(tx.next_send);
            }
        }
        t
    }

    /// Retransmits (UDP, RTO doubling), times transactions out, refreshes the allocation,
    /// permissions and channels. Idempotent; early calls do nothing.
    ///
    /// ```
    /// # use std::time::{Duration, Instant};
    /// # use peerpouch::reach::{ClientConfig, IceServerUrl, ServerClient};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let t0 = Instant::now();
    /// let mut c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, t0);
    /// let first = c.poll_transmit().unwrap();
    /// c.handle_timeout(t0 + Duration::from_millis(250));
    /// assert_eq!(c.poll_transmit(), Some(first)); // the same request again
    /// ```
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.advance(now);
        let udp = self.transport() == Transport::Udp;
        let tids: Vec<TransactionId> = self.transactions.keys().copied().collect();
        for tid in tids {
            let Some(tx) = self.transactions.get_mut(&tid) else {
                continue;
            };
            if now >= tx.deadline {
                let Some(tx) = self.transactions.remove(&tid) else {
                    continue;
                };
                self.on_transaction_timeout(tx.kind);
            } else if udp && now >= tx.next_send {
                self.transmits.push_back(tx.bytes.clone());
                self.stats.retransmissions += 1;
                tx.rto = tx.rto.saturating_mul(2);
                tx.next_send = now.checked_add(tx.rto).unwrap_or(tx.deadline);
            }
        }
        match self.phase {
            Phase::Gathering if now >= self.attempt_deadline => {
                let f = self.silence_failure();
                self.fail(f);
            }
            Phase::Allocated => self.allocation_timers(now),
            _ => {}
        }
    }

    fn allocation_timers(&mut self, now: Instant) {
        if now >= self.expires_at {
            self.fail(ClientFailure::Unreachable);
            return;
        }
        if !self.refreshing && now >= self.refresh_at {
            self.refreshing = true;
            self.request(TxKind::Refresh { lifetime: None }, 0, None);
        }
        let ips: Vec<IpAddr> = self.permissions.keys().copied().collect();
        for ip in ips {
            let Some(p) = self.permissions.get_mut(&ip) else {
                continue;
            };
            if permission_due(p).is_none_or(|t| now < t) {
                continue;
            }
            if p.last_used > p.since {
                p.refreshing = true;
                self.request(TxKind::CreatePermission { ip }, 0, None);
            } else {
                tracing::debug!(peer = %ip, "TURN permission idle: let it expire");
                self.drop_permission(ip);
            }
        }
        let peers: Vec<SocketAddr> = self.channels.keys().copied().collect();
        for peer in peers {
            let Some(c) = self.channels.get_mut(&peer) else {
                continue;
            };
            if channel_due(c).is_none_or(|t| now < t) {
                continue;
            }
            if c.last_used > c.since {
                c.in_flight = true;
                let channel = c.number;
                self.request(TxKind::ChannelBind { peer, channel }, 0, None);
            } else {
                self.drop_channel(peer);
            }
        }
    }

    /// UDP bytes from the server's address.
    ///
    /// # Errors
    /// The bytes are not a valid response or indication for us ([`ClientError`]); the machine
    /// is unchanged apart from [`ClientStats`].
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, ClientError, IceServerUrl, ServerClient};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let mut c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// assert!(matches!(c.handle_datagram(Instant::now(), b"\x17\x03\x03"), Err(ClientError::Malformed(_))));
    /// ```
    pub fn handle_datagram(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ClientError> {
        let now = self.advance(now);
        if self.transport() != Transport::Udp {
            return Err(ClientError::WrongTransport(self.transport()));
        }
        if super::stun::is_channel_data(bytes) {
            match ChannelData::decode(bytes) {
                Ok(cd) => self.on_channel_data(now, cd),
                Err(e) => Err(self.malformed(e)),
            }
        } else {
            self.on_stun(now, bytes)
        }
    }

    /// TCP bytes from the server, in any chunking.
    ///
    /// # Errors
    /// The first frame that was not valid for us (the frames after it are still taken), or a
    /// framing error that breaks the stream (the client then fails with
    /// [`ClientFailure::Malformed`]: close the connection).
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, ClientError, IceServer, ServerClient, Transport};
    /// # let url = IceServer::new("turn:192.0.2.1?transport=tcp").credentials("u", "p").parse().unwrap().remove(0);
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let mut c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// assert_eq!(c.handle_stream_data(Instant::now(), &[0x01, 0x13]), Ok(())); // half a header: waits
    /// assert_eq!(c.handle_datagram(Instant::now(), b""), Err(ClientError::WrongTransport(Transport::Tcp)));
    /// ```
    pub fn handle_stream_data(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ClientError> {
        let now = self.advance(now);
        if self.transport() != Transport::Tcp {
            return Err(ClientError::WrongTransport(self.transport()));
        }
        let mut first_error = None;
        let mut rest = bytes;
        loop {
            let n = self.deframer.push(rest);
            rest = &rest[n..];
            loop {
                let frame = match self.deframer.pop() {
                    Ok(Some(f)) => f,
                    Ok(None) => break,
                    Err(e) => {
                        self.stats.malformed += 1;
                        if !matches!(self.phase, Phase::Failed(_) | Phase::Released) {
                            self.fail(ClientFailure::Malformed(e.clone()));
                        }
                        return Err(ClientError::Malformed(e));
                    }
                };
                let r = match frame {
                    Frame::Stun(b) => self.on_stun(now, &b),
                    Frame::ChannelData(cd) => self.on_channel_data(now, cd),
                };
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            }
            if rest.is_empty() {
                break;
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The TCP connection failed or closed: the allocation is gone (RFC 8656 §3.1).
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, ClientEvent, ClientFailure, IceServer, ServerClient};
    /// # let url = IceServer::new("turn:192.0.2.1?transport=tcp").credentials("u", "p").parse().unwrap().remove(0);
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let mut c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// c.handle_stream_closed(Instant::now(), "connection refused".into());
    /// assert_eq!(c.poll_event(), Some(ClientEvent::Failed(ClientFailure::StreamClosed("connection refused".into()))));
    /// ```
    pub fn handle_stream_closed(&mut self, now: Instant, why: String) {
        self.advance(now);
        match self.phase {
            // A STUN server over TCP has told us all it will.
            Phase::Released | Phase::Failed(_) | Phase::Mapped(_) => {}
            Phase::Releasing => self.finish_release(),
            Phase::Gathering | Phase::Allocated => self.fail(ClientFailure::StreamClosed(why)),
        }
    }

    /// Asks for a permission for `peer`'s IP (CreatePermission) and a channel to `peer`
    /// (ChannelBind), unless already there; refreshed while in use. Before the allocation
    /// exists the request waits for it.
    ///
    /// # Errors
    /// [`ClientError::NotTurn`], [`ClientError::InvalidState`] once failed or released,
    /// [`ClientError::TooManyPeers`] beyond [`MAX_PEERS`] IPs, [`ClientError::FamilyMismatch`],
    /// [`ClientError::PermissionRefused`] within 30 s of the server refusing this IP.
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, ClientError, IceServerUrl, ServerClient};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let mut c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// assert_eq!(c.permit(Instant::now(), "198.51.100.1:1".parse().unwrap()), Err(ClientError::NotTurn));
    /// ```
    pub fn permit(&mut self, now: Instant, peer: SocketAddr) -> Result<(), ClientError> {
        let now = self.advance(now);
        self.check_relaying(peer)?;
        let ip = peer.ip();
        if let Some(&retry_at) = self.refused.get(&ip) {
            if now < retry_at {
                return Err(ClientError::PermissionRefused { peer: ip, retry_at });
            }
            self.refused.remove(&ip);
        }
        if !self.permissions.contains_key(&ip) {
            if self.permissions.len() >= MAX_PEERS {
                return Err(ClientError::TooManyPeers { max: MAX_PEERS });
            }
            let allocated = self.phase == Phase::Allocated;
            self.permissions.insert(
                ip,
                Permission {
                    state: if allocated {
                        PermState::Pending
                    } else {
                        PermState::Wanted
                    },
                    since: now,
                    last_used: now,
                    refreshing: false,
                },
            );
            if allocated {
                self.request(TxKind::CreatePermission { ip }, 0, None);
            }
        }
        if let Some(p) = self.permissions.get_mut(&ip) {
            p.last_used = now;
        }
        if !self.channels.contains_key(&peer) && self.channels.len() < MAX_PEERS {
            if let Some(number) = self.free_channel() {
                self.channels.insert(
                    peer,
                    Channel {
                        number,
                        confirmed: false,
                        in_flight: false,
                        since: now,
                        last_used: now,
                    },
                );
                self.channel_peers.insert(number, peer);
                if self.phase == Phase::Allocated {
                    self.bind_channel(peer);
                }
            }
        }
        if let Some(c) = self.channels.get_mut(&peer) {
            c.last_used = now;
        }
        Ok(())
    }

    /// Relays `data` to `peer`: ChannelData once a channel is confirmed, else a Send indication
    /// once the permission is installed; before that it is queued (at most
    /// [`ClientConfig::max_queued`], the oldest dropped and counted). A peer never permitted is
    /// permitted first.
    ///
    /// # Errors
    /// As [`ServerClient::permit`], and [`ClientError::PayloadTooLarge`].
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, ClientError, IceServer, ServerClient};
    /// # let url = IceServer::new("turn:192.0.2.1").credentials("u", "p").parse().unwrap().remove(0);
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let mut c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// let r = c.send_to(Instant::now(), "198.51.100.1:1".parse().unwrap(), &vec![0; 70_000]);
    /// assert!(matches!(r, Err(ClientError::PayloadTooLarge { .. })));
    /// ```
    pub fn send_to(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        data: &[u8],
    ) -> Result<(), ClientError> {
        let now = self.advance(now);
        if data.len() > MAX_PAYLOAD {
            return Err(ClientError::PayloadTooLarge {
                len: data.len(),
                max: MAX_PAYLOAD,
            });
        }
        self.permit(now, peer)?;
        let installed = self
            .permissions
            .get(&peer.ip())
            .is_some_and(|p| p.state == PermState::Installed);
        if installed {
            self.transmit_data(peer, data);
        } else {
            if self.queued.len() >= self.config.max_queued {
                if self.queued.pop_front().is_none() {
                    // max_queued is 0: nothing can wait.
                    self.stats.queue_dropped += 1;
                    return Ok(());
                }
                self.stats.queue_dropped += 1;
            }
            self.queued.push_back((peer, data.to_vec()));
        }
        Ok(())
    }

    /// Releases the allocation (Refresh with LIFETIME 0), then reports
    /// [`ClientEvent::Released`]. For a STUN server, or before the allocation exists, it is
    /// released at once.
    ///
    /// ```
    /// # use std::time::Instant;
    /// # use peerpouch::reach::{ClientConfig, ClientEvent, IceServerUrl, ServerClient};
    /// # let url = IceServerUrl::parse("stun:192.0.2.1").unwrap();
    /// # let server = url.clone().resolved(url.ip_addr().unwrap());
    /// let mut c = ServerClient::new(server, "0.0.0.0:0".parse().unwrap(), ClientConfig::default(), 1, Instant::now());
    /// c.release(Instant::now());
    /// assert_eq!(c.poll_event(), Some(ClientEvent::Released));
    /// assert_eq!(c.poll_timeout(), None);
    /// ```
    pub fn release(&mut self, now: Instant) {
        self.advance(now);
        match self.phase {
            Phase::Gathering | Phase::Mapped(_) => self.finish_release(),
            Phase::Allocated => {
                self.clear_relaying();
                self.transactions.clear();
                self.phase = Phase::Releasing;
                self.request(TxKind::Refresh { lifetime: Some(0) }, 0, None);
            }
            Phase::Releasing | Phase::Failed(_) | Phase::Released => {}
        }
    }

    // ---- internals ----

    fn advance(&mut self, now: Instant) -> Instant {
        self.now = self.now.max(now);
        self.now
    }

    fn new_tid(&mut self) -> TransactionId {
        let a = self.rng.next_u64().to_be_bytes();
        let b = self.rng.next_u64().to_be_bytes();
        let mut t = [0u8; 12];
        t[..8].copy_from_slice(&a);
        t[8..].copy_from_slice(&b[..4]);
        t
    }

    fn check_relaying(&self, peer: SocketAddr) -> Result<(), ClientError> {
        if self.server.url.kind != ServerKind::Turn {
            return Err(ClientError::NotTurn);
        }
        match self.phase {
            Phase::Gathering | Phase::Allocated => {}
            Phase::Failed(_) => return Err(ClientError::InvalidState("failed")),
            Phase::Releasing => return Err(ClientError::InvalidState("releasing")),
            Phase::Released | Phase::Mapped(_) => {
                return Err(ClientError::InvalidState("released"))
            }
        }
        if let Some(relay) = self.relay {
            if relay.is_ipv4() != peer.is_ipv4() {
                return Err(ClientError::FamilyMismatch { peer, relay });
            }
        }
        Ok(())
    }

    /// Builds, signs and queues a request; `deadline` defaults to now + request_timeout.
    fn request(&mut self, kind: TxKind, stale_retries: u8, deadline: Option<Instant>) {
        let tid = self.new_tid();
        let mut m = Message::new(kind.method(), Class::Request, tid);
        match &kind {
            TxKind::Binding => {}
            TxKind::Allocate => m.attributes.push(Attribute::RequestedTransport(UDP)),
            TxKind::Refresh { lifetime } => {
                if let Some(l) = lifetime {
                    m.attributes.push(Attribute::Lifetime(*l));
                }
            }
            TxKind::ClearStale => m.attributes.push(Attribute::Lifetime(0)),
            TxKind::CreatePermission { ip } => {
                m.attributes
                    .push(Attribute::XorPeerAddress(SocketAddr::new(*ip, 0)));
            }
            TxKind::ChannelBind { peer, channel } => {
                m.attributes.push(Attribute::ChannelNumber(*channel));
                m.attributes.push(Attribute::XorPeerAddress(*peer));
            }
        }
        if let Some(s) = &self.config.software {
            m.attributes
                .push(Attribute::Software(s.chars().take(127).collect()));
        }
        let key = match (&self.auth, kind != TxKind::Binding) {
            (Some(auth), true) => {
                let username = self.server.url.username.clone().unwrap_or_default();
                m.attributes.push(Attribute::Username(username));
                m.attributes.push(Attribute::Realm(auth.realm.clone()));
                m.attributes.push(Attribute::Nonce(auth.nonce.clone()));
                Some(auth.key)
            }
            _ => None,
        };
        let bytes = match m.encode_signed(key.as_ref().map(|k| &k[..]), false) {
            Ok(b) => b,
            Err(e) => {
                // Only a user name of ~64 KiB could get here: treat it as a refusal.
                tracing::warn!(error = %e, "STUN request does not encode");
                self.fail(ClientFailure::Malformed(e));
                return;
            }
        };
        let now = self.now;
        let deadline = deadline.unwrap_or(now + self.config.request_timeout);
        let rto = self.config.initial_rto.max(Duration::from_millis(1));
        self.transmits.push_back(bytes.clone());
        self.transactions.insert(
            tid,
            Tx {
                kind,
                bytes,
                key,
                next_send: now.checked_add(rto).unwrap_or(deadline),
                rto,
                deadline,
                stale_retries,
            },
        );
    }

    fn malformed(&mut self, e: StunError) -> ClientError {
        self.stats.malformed += 1;
        self.last_malformed = Some(e.clone());
        ClientError::Malformed(e)
    }

    fn silence_failure(&self) -> ClientFailure {
        match &self.last_malformed {
            Some(e) => ClientFailure::Malformed(e.clone()),
            None => ClientFailure::Unreachable,
        }
    }

    fn on_stun(&mut self, now: Instant, bytes: &[u8]) -> Result<(), ClientError> {
        let m = match Message::decode(bytes) {
            Ok(m) => m,
            Err(e) => return Err(self.malformed(e)),
        };
        if m.has_fingerprint() && !verify_fingerprint(bytes) {
            self.stats.bad_integrity += 1;
            return Err(ClientError::BadFingerprint);
        }
        match m.class {
            Class::Indication if m.method == Method::DATA => self.on_data_indication(now, &m),
            Class::Success | Class::Error => self.on_response(now, bytes, &m),
            _ => {
                self.stats.malformed += 1;
                Err(ClientError::Unexpected {
                    method: m.method,
                    class: m.class,
                })
            }
        }
    }

    fn on_response(&mut self, now: Instant, bytes: &[u8], m: &Message) -> Result<(), ClientError> {
        let Some(tx) = self.transactions.get(&m.transaction_id) else {
            self.stats.unknown_transactions += 1;
            return Err(ClientError::UnknownTransaction);
        };
        if tx.kind.method() != m.method {
            self.stats.malformed += 1;
            return Err(ClientError::Unexpected {
                method: m.method,
                class: m.class,
            });
        }
        if m.class == Class::Success {
            if let Some(key) = tx.key {
                if !verify_integrity(bytes, &key) {
                    self.stats.bad_integrity += 1;
                    return Err(ClientError::BadIntegrity);
                }
            }
            // Check what the success must carry before the transaction is consumed, so a
            // malformed answer leaves it waiting for a good one.
            match tx.kind {
                TxKind::Binding if m.mapped_address().is_none() => {
                    return Err(self.malformed(StunError::NoMappedAddress));
                }
                TxKind::Allocate if m.relayed_address().is_none() => {
                    return Err(self.malformed(StunError::BadAddress {
                        attribute: super::stun::attr::XOR_RELAYED_ADDRESS,
                    }));
                }
                _ => {}
            }
        } else if m.error_code().is_none() {
            return Err(self.malformed(StunError::BadErrorCode));
        }
        let Some(tx) = self.transactions.remove(&m.transaction_id) else {
            return Err(ClientError::UnknownTransaction);
        };
        if m.class == Class::Success {
            self.on_success(now, tx, m);
            Ok(())
        } else {
            let (code, reason) = m.error_code().unwrap_or((500, ""));
            self.on_error(now, tx, code, reason, m)
        }
    }

    fn on_success(&mut self, now: Instant, tx: Tx, m: &Message) {
        match tx.kind {
            TxKind::Binding => {
                if self.phase == Phase::Gathering {
                    if let Some(srflx) = m.mapped_address() {
                        self.phase = Phase::Mapped(srflx);
                        self.srflx = Some(srflx);
                        self.transactions.clear();
                        self.events.push_back(ClientEvent::Mapped { srflx });
                    }
                }
            }
            TxKind::Allocate => {
                if self.phase != Phase::Gathering {
                    return;
                }
                let Some(relay) = m.relayed_address() else {
                    return;
                };
                let lifetime = self.set_lifetime(now, m.lifetime());
                self.relay = Some(relay);
                self.srflx = m.xor_mapped_address();
                self.phase = Phase::Allocated;
                self.transactions.clear();
                let srflx = self.udp_srflx();
                if let Some(srflx) = srflx {
                    self.events.push_back(ClientEvent::Mapped { srflx });
                }
                self.events.push_back(ClientEvent::Allocated {
                    relay,
                    srflx,
                    lifetime,
                });
                // Peers asked for before the allocation: permissions of the other family are
                // refused now; the rest go out.
                let ips: Vec<IpAddr> = self.permissions.keys().copied().collect();
                for ip in ips {
                    if ip.is_ipv4() != relay.is_ipv4() {
                        self.permission_failed(
                            ip,
                            ClientFailure::Refused {
                                code: 443,
                                reason: "Peer Address Family Mismatch".into(),
                            },
                        );
                        continue;
                    }
                    if let Some(p) = self.permissions.get_mut(&ip) {
                        p.state = PermState::Pending;
                    }
                    self.request(TxKind::CreatePermission { ip }, 0, None);
                }
                let peers: Vec<SocketAddr> = self.channels.keys().copied().collect();
                for peer in peers {
                    self.bind_channel(peer);
                }
            }
            TxKind::Refresh { lifetime: Some(0) } => self.finish_release(),
            TxKind::Refresh { .. } => {
                if self.phase == Phase::Allocated {
                    self.refreshing = false;
                    self.set_lifetime(now, m.lifetime());
                }
            }
            TxKind::ClearStale => {
                if self.phase == Phase::Gathering {
                    tracing::info!(server = %self.server.url, "a stale allocation of ours on this address was deleted; allocating again");
                    self.request(TxKind::Allocate, 0, Some(self.attempt_deadline));
                }
            }
            TxKind::CreatePermission { ip } => {
                if let Some(p) = self.permissions.get_mut(&ip) {
                    p.state = PermState::Installed;
                    p.since = now;
                    p.refreshing = false;
                    self.flush_queue(ip);
                }
            }
            TxKind::ChannelBind { peer, channel } => {
                if let Some(c) = self.channels.get_mut(&peer) {
                    if c.number == channel {
                        c.confirmed = true;
                        c.in_flight = false;
                        c.since = now;
                    }
                }
            }
        }
    }

    fn on_error(
        &mut self,
        now: Instant,
        tx: Tx,
        code: u16,
        reason: &str,
        m: &Message,
    ) -> Result<(), ClientError> {
        let _ = now;
        // The long-term credential challenge (RFC 8489 §9.2.4): 401 with REALM and NONCE to a
        // request without credentials, 438 with a fresh NONCE to any.
        let challenge = (code == 401 && tx.key.is_none() && !self.challenged)
            || (code == 438 && tx.stale_retries < STALE_NONCE_RETRIES);
        if challenge && tx.kind != TxKind::Binding {
            if let (Some(nonce), Some(realm)) = (
                m.nonce(),
                m.realm().or(self.auth.as_ref().map(|a| a.realm.as_str())),
            ) {
                if nonce.len() > MAX_REALM_NONCE || realm.len() > MAX_REALM_NONCE {
                    let e = StunError::TooLong {
                        len: nonce.len().max(realm.len()),
                    };
                    self.malformed(e.clone());
                    self.failed_request(tx.kind, ClientFailure::Malformed(e));
                    return Ok(());
                }
                let (Some(user), Some(pass)) = (
                    self.server.url.username.as_deref(),
                    self.server.url.credential.as_deref(),
                ) else {
                    self.failed_request(tx.kind, ClientFailure::Unauthorized);
                    return Ok(());
                };
                let key = long_term_key(user, realm, pass);
                self.auth = Some(Auth {
                    realm: realm.to_string(),
                    nonce: nonce.to_string(),
                    key,
                });
                let retries = if code == 438 {
                    self.stats.stale_nonce_retries += 1;
                    tx.stale_retries + 1
                } else {
                    self.challenged = true;
                    tx.stale_retries
                };
                let deadline = match tx.kind {
                    TxKind::Allocate => Some(self.attempt_deadline),
                    _ => None,
                };
                self.request(tx.kind, retries, deadline);
                return Ok(());
            }
        }
        self.failed_request(tx.kind, ClientFailure::from_code(code, reason));
        Ok(())
    }

    /// A request got an error response (or could not be retried).
    fn failed_request(&mut self, kind: TxKind, failure: ClientFailure) {
        tracing::info!(server = %self.server.url, request = %kind.method(), peer = ?kind.peer(), %failure, "STUN/TURN request failed");
        match kind {
            // 437 to our Allocate: the server holds an allocation for this address and port,
            // most likely ours from an earlier process on the same port (RFC 8656 §7.2: it
            // lasts until it expires, up to an hour). Deleting it with our credentials (a
            // Refresh with lifetime 0 from the same 5-tuple) and allocating again, once.
            TxKind::Allocate
                if failure == ClientFailure::AllocationMismatch
                    && self.phase == Phase::Gathering
                    && !self.cleared_stale =>
            {
                self.cleared_stale = true;
                self.request(TxKind::ClearStale, 0, Some(self.attempt_deadline));
            }
            TxKind::ClearStale => {
                if self.phase == Phase::Gathering {
                    self.fail(ClientFailure::AllocationMismatch);
                }
            }
            TxKind::Binding | TxKind::Allocate => {
                if self.phase == Phase::Gathering {
                    self.fail(failure);
                }
            }
            TxKind::Refresh { lifetime: Some(0) } => self.finish_release(),
            TxKind::Refresh { .. } => {
                if self.phase == Phase::Allocated {
                    self.fail(failure);
                }
            }
            TxKind::CreatePermission { ip } => self.permission_failed(ip, failure),
            TxKind::ChannelBind { peer, .. } => self.drop_channel(peer),
        }
    }

    fn on_transaction_timeout(&mut self, kind: TxKind) {
        match kind {
            TxKind::Binding | TxKind::Allocate | TxKind::ClearStale => {
                if self.phase == Phase::Gathering {
                    let f = self.silence_failure();
                    self.fail(f);
                }
            }
            TxKind::Refresh { lifetime: Some(0) } => self.finish_release(),
            TxKind::Refresh { .. } => {
                // Try again while the allocation lasts; its expiry fails the client.
                if self.phase == Phase::Allocated {
                    self.request(TxKind::Refresh { lifetime: None }, 0, None);
                }
            }
            TxKind::CreatePermission { ip } => {
                self.permission_failed(ip, ClientFailure::Unreachable)
            }
            TxKind::ChannelBind { peer, .. } => self.drop_channel(peer),
        }
    }

    /// Takes a granted lifetime (clamped) and schedules the refresh: 60 s before expiry, or at
    /// half the lifetime when it is short.
    fn set_lifetime(&mut self, now: Instant, seconds: Option<u32>) -> Duration {
        let lifetime = seconds
            .map_or(DEFAULT_LIFETIME, |s| Duration::from_secs(u64::from(s)))
            .clamp(MIN_LIFETIME, MAX_LIFETIME);
        let refresh_in = if lifetime >= Duration::from_secs(120) {
            lifetime - Duration::from_secs(60)
        } else {
            lifetime / 2
        };
        self.expires_at = now + lifetime;
        self.refresh_at = now + refresh_in;
        lifetime
    }

    fn on_data_indication(&mut self, now: Instant, m: &Message) -> Result<(), ClientError> {
        if !matches!(self.phase, Phase::Allocated) {
            self.stats.unpermitted_dropped += 1;
            return Err(ClientError::Unexpected {
                method: m.method,
                class: m.class,
            });
        }
        let (Some(peer), Some(data)) = (m.peer_address(), m.data()) else {
            return Err(self.malformed(StunError::BadValue {
                attribute: super::stun::attr::DATA,
            }));
        };
        self.deliver(now, peer, data.to_vec())
    }

    fn on_channel_data(&mut self, now: Instant, cd: ChannelData) -> Result<(), ClientError> {
        let peer = match (&self.phase, self.channel_peers.get(&cd.channel)) {
            (Phase::Allocated, Some(peer)) => *peer,
            _ => {
                self.stats.unpermitted_dropped += 1;
                return Err(ClientError::UnknownChannel(cd.channel));
            }
        };
        self.deliver(now, peer, cd.data)
    }

    fn deliver(
        &mut self,
        now: Instant,
        peer: SocketAddr,
        data: Vec<u8>,
    ) -> Result<(), ClientError> {
        // RFC 8656 §10.2: the server filters by permission; a hostile one might not.
        let Some(p) = self.permissions.get_mut(&peer.ip()) else {
            self.stats.unpermitted_dropped += 1;
            return Err(ClientError::UnpermittedPeer(peer));
        };
        if p.state == PermState::Wanted {
            self.stats.unpermitted_dropped += 1;
            return Err(ClientError::UnpermittedPeer(peer));
        }
        p.last_used = now;
        if let Some(c) = self.channels.get_mut(&peer) {
            c.last_used = now;
        }
        self.events.push_back(ClientEvent::Relayed { peer, data });
        Ok(())
    }

    fn transmit_data(&mut self, peer: SocketAddr, data: &[u8]) {
        let channel = self
            .channels
            .get(&peer)
            .filter(|c| c.confirmed)
            .map(|c| c.number);
        let bytes = match channel {
            Some(channel) => ChannelData {
                channel,
                data: data.to_vec(),
            }
            .encode(self.transport() == Transport::Tcp),
            None => {
                let tid = self.new_tid();
                Message::new(Method::SEND, Class::Indication, tid)
                    .with(Attribute::XorPeerAddress(peer))
                    .with(Attribute::Data(data.to_vec()))
                    .encode()
            }
        };
        match bytes {
            Ok(b) => self.transmits.push_back(b),
            // send_to bounds the payload, so this cannot happen; drop rather than panic.
            Err(_) => self.stats.queue_dropped += 1,
        }
    }

    fn flush_queue(&mut self, ip: IpAddr) {
        let queued = std::mem::take(&mut self.queued);
        for (peer, data) in queued {
            if peer.ip() == ip {
                self.transmit_data(peer, &data);
            } else {
                self.queued.push_back((peer, data));
            }
        }
    }

    fn free_channel(&mut self) -> Option<u16> {
        let span = usize::from(CHANNEL_NUMBERS.end() - CHANNEL_NUMBERS.start()) + 1;
        for _ in 0..span {
            let n = self.next_channel;
            self.next_channel = if n >= *CHANNEL_NUMBERS.end() {
                *CHANNEL_NUMBERS.start()
            } else {
                n + 1
            };
            if !self.channel_peers.contains_key(&n) {
                return Some(n);
            }
        }
        None
    }

    fn bind_channel(&mut self, peer: SocketAddr) {
        let Some(c) = self.channels.get_mut(&peer) else {
            return;
        };
        if c.in_flight {
            return;
        }
        if self.relay.is_some_and(|r| r.is_ipv4() != peer.is_ipv4()) {
            self.drop_channel(peer);
            return;
        }
        c.in_flight = true;
        let channel = c.number;
        self.request(TxKind::ChannelBind { peer, channel }, 0, None);
    }

    fn drop_channel(&mut self, peer: SocketAddr) {
        if let Some(c) = self.channels.remove(&peer) {
            self.channel_peers.remove(&c.number);
        }
    }

    fn drop_permission(&mut self, ip: IpAddr) {
        self.permissions.remove(&ip);
        let peers: Vec<SocketAddr> = self
            .channels
            .keys()
            .filter(|p| p.ip() == ip)
            .copied()
            .collect();
        for peer in peers {
            self.drop_channel(peer);
        }
        let before = self.queued.len();
        self.queued.retain(|(p, _)| p.ip() != ip);
        self.stats.queue_dropped += (before - self.queued.len()) as u64;
    }

    fn permission_failed(&mut self, ip: IpAddr, failure: ClientFailure) {
        if self.permissions.contains_key(&ip) {
            self.drop_permission(ip);
            if self.refused.len() >= MAX_PEERS {
                // Forget the refusal that ends first.
                if let Some((&old, _)) = self.refused.iter().min_by_key(|(_, t)| **t) {
                    self.refused.remove(&old);
                }
            }
            self.refused.insert(ip, self.now + PERMISSION_BACKOFF);
            self.events
                .push_back(ClientEvent::PermissionFailed { peer: ip, failure });
        }
    }

    fn clear_relaying(&mut self) {
        self.stats.queue_dropped += self.queued.len() as u64;
        self.queued.clear();
        self.permissions.clear();
        self.refused.clear();
        self.channels.clear();
        self.channel_peers.clear();
    }

    fn fail(&mut self, failure: ClientFailure) {
        tracing::info!(server = %self.server.url, %failure, "STUN/TURN server failed");
        self.clear_relaying();
        self.transactions.clear();
        self.refreshing = false;
        self.phase = Phase::Failed(failure.clone());
        self.events.push_back(ClientEvent::Failed(failure));
    }

    fn finish_release(&mut self) {
        self.clear_relaying();
        self.transactions.clear();
        self.phase = Phase::Released;
        self.events.push_back(ClientEvent::Released);
    }
}

/// When an installed permission needs attention: the refresh point while used, its expiry
/// when idle; `None` while a request for it is in flight.
fn permission_due(p: &Permission) -> Option<Instant> {
    if p.state != PermState::Installed || p.refreshing {
        return None;
    }
    Some(if p.last_used > p.since {
        p.since + PERMISSION_REFRESH
    } else {
        p.since + PERMISSION_LIFETIME
    })
}

fn channel_due(c: &Channel) -> Option<Instant> {
    if !c.confirmed || c.in_flight {
        return None;
    }
    Some(if c.last_used > c.since {
        c.since + CHANNEL_REFRESH
    } else {
        c.since + CHANNEL_LIFETIME
    })
}
