//! One UDP socket serving many links: the endpoint (the app's handle) and its driver (the task
//! that owns the socket, the sessions, the STUN client and the timer).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_channel::{Receiver, Sender};
use async_io::Timer;
use event_listener::Event;
use futures_lite::future;
use peerpouch::hub::SignalData;
use peerpouch::rand::SplitMix64;
use peerpouch::reach::gather::{GatherEvent, Gatherer};
use peerpouch::reach::{ClientConfig, IceServerUrl, Transport};
use peerpouch::route::Router;
use peerpouch::session::{
    CloseReason, Session, SessionConfig, SessionError, SessionEvent, SessionRole,
};

use crate::LinkError;
use crate::link::{Link, LinkId, LinkInner, LinkShared, Message};
use crate::net::{self, SendOutcome, Sockets};
use crate::stun::{StunServerStatus, StunStatus};

/// Datagrams read per wake-up before timers, commands and sends get their turn.
const RECV_BATCH: usize = 256;
/// Consecutive receive errors after which the socket is taken as broken.
const MAX_RECV_ERRORS: u32 = 64;

/// Configuration of a [`LinkEndpoint`].
///
/// ```
/// use std::time::Duration;
/// use peerpouch_smol::EndpointConfig;
/// let config = EndpointConfig::default()
///     .with_bind("0.0.0.0:0".parse().unwrap())
///     .with_stun_server("127.0.0.1:3478".parse().unwrap())
///     .with_stun_timeout(Duration::from_secs(2));
/// assert_eq!(config.stun_servers.len(), 1);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EndpointConfig {
    /// Address to bind. `127.0.0.1:0` (the default) for tests; `0.0.0.0:0` (or `[::]:0`) gathers a
    /// host candidate for every interface address of that family, loopback included.
    pub bind: SocketAddr,
    /// `SO_RCVBUF` to ask for (default 4 MiB) so loopback bursts are not dropped; the OS caps it
    /// (Linux: `net.core.rmem_max`), see [`LinkEndpoint::recv_buffer_size`].
    pub recv_buffer: usize,
    /// `SO_SNDBUF` to ask for (default 4 MiB).
    pub send_buffer: usize,
    /// Session tuning for links made by [`LinkEndpoint::create_link`]. The default is
    /// [`SessionConfig::default`] with `send_buffer` raised to twice `max_send_message`
    /// (128 KiB): `Session::send` refuses a message that does not fit next to what is queued, so
    /// with room for only one full-size message a single unacknowledged packet (a small
    /// message's) blocks the next full-size one until the peer's delayed SACK, 200 ms in
    /// sctp-proto. Measured here: random 1 B–64 KiB messages moved 2.4 MB/s with a 64 KiB buffer,
    /// 70 MB/s with 128 KiB. Keep `send_buffer >= 2 * max_send_message` in your own configs.
    pub session: SessionConfig,
    /// STUN servers to learn the server-reflexive address from (none by default). IP addresses:
    /// resolve names first. Servers of the other address family are skipped.
    pub stun_servers: Vec<SocketAddr>,
    /// First STUN retransmission timeout; it doubles on each retransmission (RFC 5389 §7.2.1).
    pub stun_initial_rto: Duration,
    /// Give a silent STUN server up after this long. Links never wait for STUN: the
    /// server-reflexive candidate trickles to them when (if) it is known.
    pub stun_timeout: Duration,
    /// Seed for ICE credentials and STUN transaction ids (tests); `None` draws from the OS.
    pub seed: Option<u64>,
}

impl Default for EndpointConfig {
    fn default() -> Self {
        let mut session = SessionConfig::default();
        session.send_buffer = session.send_buffer.max(2 * session.max_send_message);
        EndpointConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            recv_buffer: 4 << 20,
            send_buffer: 4 << 20,
            session,
            stun_servers: Vec::new(),
            stun_initial_rto: Duration::from_millis(250),
            stun_timeout: Duration::from_secs(3),
            seed: None,
        }
    }
}

impl EndpointConfig {
    /// Sets [`EndpointConfig::bind`].
    ///
    /// ```
    /// let c = peerpouch_smol::EndpointConfig::default().with_bind("127.0.0.1:7000".parse().unwrap());
    /// assert_eq!(c.bind.port(), 7000);
    /// ```
    pub fn with_bind(mut self, bind: SocketAddr) -> Self {
        self.bind = bind;
        self
    }

    /// Adds a STUN server.
    ///
    /// ```
    /// let c = peerpouch_smol::EndpointConfig::default().with_stun_server("127.0.0.1:3478".parse().unwrap());
    /// assert_eq!(c.stun_servers[0].port(), 3478);
    /// ```
    pub fn with_stun_server(mut self, server: SocketAddr) -> Self {
        self.stun_servers.push(server);
        self
    }

    /// Sets [`EndpointConfig::stun_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let c = peerpouch_smol::EndpointConfig::default().with_stun_timeout(Duration::from_secs(1));
    /// assert_eq!(c.stun_timeout, Duration::from_secs(1));
    /// ```
    pub fn with_stun_timeout(mut self, timeout: Duration) -> Self {
        self.stun_timeout = timeout;
        self
    }

    /// Sets [`EndpointConfig::session`].
    ///
    /// ```
    /// use peerpouch_smol::{EndpointConfig, SessionConfig};
    /// let mut session = SessionConfig::default();
    /// session.send_buffer = 128 * 1024;
    /// let c = EndpointConfig::default().with_session(session);
    /// assert_eq!(c.session.send_buffer, 128 * 1024);
    /// ```
    pub fn with_session(mut self, session: SessionConfig) -> Self {
        self.session = session;
        self
    }

    /// Sets [`EndpointConfig::seed`].
    ///
    /// ```
    /// let c = peerpouch_smol::EndpointConfig::default().with_seed(7);
    /// assert_eq!(c.seed, Some(7));
    /// ```
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}

/// Counters of an endpoint, for diagnostics and tests.
///
/// ```no_run
/// # fn f(endpoint: &peerpouch_smol::LinkEndpoint) {
/// let stats = endpoint.stats();
/// println!("{} datagrams in, {} unmatched", stats.datagrams_in, stats.unmatched);
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct EndpointStats {
    /// Datagrams received.
    pub datagrams_in: u64,
    /// Datagrams sent.
    pub datagrams_out: u64,
    /// Received datagrams consumed by the STUN client (answers, and garbage from STUN servers).
    pub stun_consumed: u64,
    /// Received datagrams no link accepted (late packets of closed links, strays).
    pub unmatched: u64,
    /// Received datagrams more than one link accepted: two links to the same remote socket
    /// cannot be told apart by address once DTLS runs (see [`LinkEndpoint`]).
    pub ambiguous: u64,
    /// Links asked whether a received datagram is theirs, summed over the datagrams: one each
    /// once a pair is known (routed by ICE ufrag and address pair, [`peerpouch::route`]).
    pub offered: u64,
    /// Received datagrams no route knew, for which every link was asked (the first packets of
    /// a new candidate pair, strays).
    pub fallbacks: u64,
    /// Sends the OS refused (unreachable candidates, mostly).
    pub send_errors: u64,
}

#[derive(Default)]
struct Counters {
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    stun_consumed: AtomicU64,
    unmatched: AtomicU64,
    ambiguous: AtomicU64,
    offered: AtomicU64,
    fallbacks: AtomicU64,
    send_errors: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

struct EndpointShared {
    local_addr: SocketAddr,
    candidates: Vec<SocketAddr>,
    recv_buffer: usize,
    send_buffer: usize,
    session: SessionConfig,
    seed: Option<u64>,
    next_id: AtomicU64,
    stun: Mutex<Vec<StunServerStatus>>,
    stopped: AtomicBool,
    changed: Event,
    counters: Counters,
}

impl EndpointShared {
    fn set_stun(&self, statuses: Vec<StunServerStatus>) {
        *self.stun.lock().unwrap_or_else(|e| e.into_inner()) = statuses;
        self.changed.notify(usize::MAX);
    }

    fn stun(&self) -> Vec<StunServerStatus> {
        self.stun.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Requests from the handles to the driver.
pub(crate) enum Command {
    Add(Box<LinkEntry>),
    Signal {
        id: LinkId,
        signal: SignalData,
        reply: Sender<Result<(), SessionError>>,
    },
    Send {
        id: LinkId,
        binary: bool,
        data: Vec<u8>,
        reply: Sender<Result<(), LinkError>>,
    },
    Close {
        id: LinkId,
    },
    Shutdown,
}

/// One UDP socket serving many WebRTC links, driven by an async task.
///
/// Incoming datagrams are routed to the link whose session accepts them
/// ([`Session::accepts`]: STUN by ICE username, the rest by the peer's address) in constant
/// time: a [`Router`] maps ICE ufrags and address pairs to links, and every link is asked only
/// for the first packets of a new pair ([`EndpointStats::offered`],
/// [`EndpointStats::fallbacks`]); answers from STUN servers are consumed here. Because DTLS traffic is routed by the peer's address, two
/// links between the *same two sockets* cannot be told apart: give each peer endpoint one link
/// to a given remote endpoint, or use one endpoint per link for such pairs
/// ([`EndpointStats::ambiguous`] counts datagrams that hit this).
///
/// The driver runs on smol's global executor with [`LinkEndpoint::bind`], or wherever you poll
/// it with [`LinkEndpoint::bind_with_driver`]. It stops after [`LinkEndpoint::close`], or when
/// every clone of the endpoint and every link handle are dropped (closing the links first).
///
/// ```
/// use futures_lite::StreamExt;
/// use peerpouch_smol::{EndpointConfig, LinkEndpoint, SessionRole};
/// # smol::block_on(async {
/// let endpoint = LinkEndpoint::bind(EndpointConfig::default())?;
/// let offerer = endpoint.create_link(SessionRole::Offerer)?;
/// let answerer = endpoint.create_link(SessionRole::Answerer)?;
/// // Signalling normally goes through the hub; here it is wired directly.
/// for (from, to) in [(&offerer, &answerer), (&answerer, &offerer)] {
///     let (mut signals, sink) = (from.signals(), to.signal_sink());
///     smol::spawn(async move {
///         while let Some(s) = signals.next().await {
///             let _ = sink.handle_signal(s).await;
///         }
///     })
///     .detach();
/// }
/// offerer.send(b"ping".to_vec()).await?;
/// assert_eq!(answerer.recv().await?.data, b"ping");
/// endpoint.close().await;
/// # Ok::<(), peerpouch_smol::LinkError>(()) });
/// ```
#[derive(Clone)]
pub struct LinkEndpoint {
    commands: Sender<Command>,
    shared: Arc<EndpointShared>,
}

impl std::fmt::Debug for LinkEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkEndpoint")
            .field("local_addr", &self.shared.local_addr)
            .field("candidates", &self.shared.candidates)
            .finish_non_exhaustive()
    }
}

/// The endpoint's driver: a future that runs until the endpoint stops. Poll it on any executor
/// (see [`LinkEndpoint::bind_with_driver`]); dropping it stops the endpoint and closes its
/// links abruptly (no goodbye).
///
/// ```no_run
/// use peerpouch_smol::{EndpointConfig, LinkEndpoint};
/// let (endpoint, driver) = LinkEndpoint::bind_with_driver(EndpointConfig::default())?;
/// std::thread::spawn(move || smol::block_on(driver));
/// # Ok::<(), peerpouch_smol::LinkError>(())
/// ```
#[must_use = "the endpoint does nothing unless its driver is polled"]
pub struct EndpointDriver {
    inner: Pin<Box<dyn Future<Output = ()> + Send + 'static>>,
}

impl std::fmt::Debug for EndpointDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EndpointDriver").finish_non_exhaustive()
    }
}

impl Future for EndpointDriver {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.inner.as_mut().poll(cx)
    }
}

impl LinkEndpoint {
    /// Binds the socket and runs the driver on smol's global executor (`smol::spawn`).
    ///
    /// # Errors
    /// [`LinkError::Bind`], [`LinkError::SocketOption`], [`LinkError::Interfaces`] (wildcard
    /// binds), [`LinkError::Reactor`], [`LinkError::Random`].
    ///
    /// ```no_run
    /// use peerpouch_smol::{EndpointConfig, LinkEndpoint};
    /// let endpoint = LinkEndpoint::bind(EndpointConfig::default())?;
    /// println!("listening on {}", endpoint.local_addr());
    /// # Ok::<(), peerpouch_smol::LinkError>(())
    /// ```
    pub fn bind(config: EndpointConfig) -> Result<LinkEndpoint, LinkError> {
        let (endpoint, driver) = LinkEndpoint::bind_with_driver(config)?;
        smol::spawn(driver).detach();
        Ok(endpoint)
    }

    /// Binds the socket and hands back the driver for the caller to poll (on a thread of its
    /// own, a local executor, ...). Nothing happens until it is polled.
    ///
    /// # Errors
    /// As [`LinkEndpoint::bind`].
    ///
    /// ```no_run
    /// use peerpouch_smol::{EndpointConfig, LinkEndpoint};
    /// let (endpoint, driver) = LinkEndpoint::bind_with_driver(EndpointConfig::default())?;
    /// let ex = smol::LocalExecutor::new();
    /// ex.spawn(driver).detach();
    /// # Ok::<(), peerpouch_smol::LinkError>(())
    /// ```
    pub fn bind_with_driver(
        config: EndpointConfig,
    ) -> Result<(LinkEndpoint, EndpointDriver), LinkError> {
        let bound = net::bind(config.bind, config.recv_buffer, config.send_buffer)?;
        let local_addr = bound.addrs.bound;
        let (candidates, recv_buffer, send_buffer) = (
            bound.addrs.candidates.clone(),
            bound.recv_buffer,
            bound.send_buffer,
        );
        let sockets = Sockets::from_bound(bound)?;
        let stun_seed = match config.seed {
            Some(s) => s ^ 0x5354_554e, // "STUN"
            None => random_u64()?,
        };
        // The STUN servers are asked by the core's client machine, as `PeerNode` asks its ICE
        // servers; servers of the other address family are skipped.
        let mut servers = Vec::new();
        let mut hosts = Vec::new();
        for &server in &config.stun_servers {
            if server.is_ipv4() != local_addr.is_ipv4() {
                continue;
            }
            // A socket address always makes a valid `stun:` URL.
            match IceServerUrl::parse(&format!("stun:{server}")) {
                Ok(url) => servers.push(url.resolved(server)),
                Err(e) => {
                    tracing::warn!(%server, error = %e, "STUN server skipped");
                    continue;
                }
            }
            hosts.extend(sockets.destination_for(server));
        }
        let client = ClientConfig {
            initial_rto: config.stun_initial_rto,
            request_timeout: config.stun_timeout,
            ..ClientConfig::default()
        };
        let mut stun = Gatherer::new(servers, client, stun_seed);
        stun.start(Instant::now(), &hosts);
        let statuses = stun
            .reports()
            .iter()
            .map(StunServerStatus::from_report)
            .collect();
        let shared = Arc::new(EndpointShared {
            local_addr,
            candidates,
            recv_buffer,
            send_buffer,
            session: config.session,
            seed: config.seed,
            next_id: AtomicU64::new(1),
            stun: Mutex::new(statuses),
            stopped: AtomicBool::new(false),
            changed: Event::new(),
            counters: Counters::default(),
        });
        let (commands, rx) = async_channel::unbounded();
        let driver = Driver {
            sockets,
            shared: shared.clone(),
            commands: rx,
            commands_closed: false,
            shutting_down: false,
            links: BTreeMap::new(),
            dirty: BTreeSet::new(),
            router: Router::new(),
            stun,
            srflx: Vec::new(),
            buf: vec![0u8; 65536],
            arena: Vec::new(),
            batch: Vec::new(),
            recv_errors: 0,
            warned_ambiguous: false,
        };
        let endpoint = LinkEndpoint { commands, shared };
        let driver = EndpointDriver {
            inner: Box::pin(driver.run()),
        };
        Ok((endpoint, driver))
    }

    /// The address the socket is bound to (with the port the OS picked).
    ///
    /// ```no_run
    /// # fn f(endpoint: &peerpouch_smol::LinkEndpoint) {
    /// assert_ne!(endpoint.local_addr().port(), 0);
    /// # }
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        self.shared.local_addr
    }

    /// The host candidates every link advertises (the bound address, or every interface
    /// address for a wildcard bind).
    ///
    /// ```no_run
    /// # fn f(endpoint: &peerpouch_smol::LinkEndpoint) {
    /// for addr in endpoint.candidate_addrs() {
    ///     println!("reachable at {addr}");
    /// }
    /// # }
    /// ```
    pub fn candidate_addrs(&self) -> &[SocketAddr] {
        &self.shared.candidates
    }

    /// `SO_RCVBUF` as the OS reports it after the request (Linux reports twice the usable size
    /// and caps the request at `net.core.rmem_max`).
    ///
    /// ```no_run
    /// # fn f(endpoint: &peerpouch_smol::LinkEndpoint) {
    /// println!("receive buffer: {} bytes", endpoint.recv_buffer_size());
    /// # }
    /// ```
    pub fn recv_buffer_size(&self) -> usize {
        self.shared.recv_buffer
    }

    /// `SO_SNDBUF` as the OS reports it.
    ///
    /// ```no_run
    /// # fn f(endpoint: &peerpouch_smol::LinkEndpoint) {
    /// println!("send buffer: {} bytes", endpoint.send_buffer_size());
    /// # }
    /// ```
    pub fn send_buffer_size(&self) -> usize {
        self.shared.send_buffer
    }

    /// Creates a link with the endpoint's [`EndpointConfig::session`]. An offerer's offer is
    /// ready at once in [`Link::next_signal`]; an answerer waits for the peer's offer in
    /// [`Link::handle_signal`]. Host candidates (and the server-reflexive one, once STUN knows
    /// it) trickle as signals. Never waits for STUN.
    ///
    /// # Errors
    /// [`LinkError::EndpointStopped`]; [`LinkError::Random`]; [`LinkError::Session`] if the
    /// session refuses a host candidate.
    ///
    /// ```no_run
    /// use peerpouch_smol::{EndpointConfig, LinkEndpoint, SessionRole};
    /// let endpoint = LinkEndpoint::bind(EndpointConfig::default())?;
    /// let link = endpoint.create_link(SessionRole::Answerer)?;
    /// # Ok::<(), peerpouch_smol::LinkError>(())
    /// ```
    pub fn create_link(&self, role: SessionRole) -> Result<Link, LinkError> {
        self.create_link_with(role, self.shared.session.clone())
    }

    /// Creates a link with its own session configuration (see [`LinkEndpoint::create_link`]).
    ///
    /// # Errors
    /// As [`LinkEndpoint::create_link`].
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use peerpouch_smol::{EndpointConfig, LinkEndpoint, SessionConfig, SessionRole};
    /// let endpoint = LinkEndpoint::bind(EndpointConfig::default())?;
    /// let mut config = SessionConfig::default();
    /// config.connect_timeout = Duration::from_secs(5);
    /// let link = endpoint.create_link_with(SessionRole::Offerer, config)?;
    /// # Ok::<(), peerpouch_smol::LinkError>(())
    /// ```
    pub fn create_link_with(
        &self,
        role: SessionRole,
        config: SessionConfig,
    ) -> Result<Link, LinkError> {
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(LinkError::EndpointStopped);
        }
        let id = LinkId(self.shared.next_id.fetch_add(1, Ordering::Relaxed));
        let seed = match self.shared.seed {
            Some(s) => SplitMix64::new(s ^ id.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64(),
            None => random_u64()?,
        };
        let max_message = config.max_send_message;
        let now = Instant::now();
        // Built here, not in the driver: creating the DTLS certificate takes a while and
        // should not hold up the other links' traffic.
        let mut session = Session::new(role, config, seed, now);
        for addr in &self.shared.candidates {
            session.add_local_candidate(now, *addr)?;
        }
        let (signals_tx, signals_rx) = async_channel::unbounded();
        let (messages_tx, messages_rx) = async_channel::unbounded();
        let shared = Arc::new(LinkShared::new(max_message));
        let entry = LinkEntry {
            id,
            session,
            shared: shared.clone(),
            signals: signals_tx,
            messages: messages_tx,
            pending: VecDeque::new(),
            deadline: None,
            closed: false,
        };
        self.commands
            .try_send(Command::Add(Box::new(entry)))
            .map_err(|_| LinkError::EndpointStopped)?;
        tracing::debug!(link = %id, ?role, "link created");
        Ok(Link {
            inner: Arc::new(LinkInner {
                id,
                role,
                commands: self.commands.clone(),
                shared,
                signals: signals_rx,
                messages: messages_rx,
            }),
        })
    }

    /// Every STUN server's status now.
    ///
    /// ```no_run
    /// # fn f(endpoint: &peerpouch_smol::LinkEndpoint) {
    /// for s in endpoint.stun_status() {
    ///     println!("{}: {:?}", s.server, s.status);
    /// }
    /// # }
    /// ```
    pub fn stun_status(&self) -> Vec<StunServerStatus> {
        self.shared.stun()
    }

    /// Waits until every STUN query has settled (answered, refused or timed out, which takes
    /// at most [`EndpointConfig::stun_timeout`]) and returns the statuses. Links do not need
    /// this: it is for apps and tests that want to know.
    ///
    /// ```no_run
    /// # async fn f(endpoint: peerpouch_smol::LinkEndpoint) {
    /// let statuses = endpoint.stun_settled().await;
    /// # }
    /// ```
    pub async fn stun_settled(&self) -> Vec<StunServerStatus> {
        loop {
            let listener = self.shared.changed.listen();
            let s = self.shared.stun();
            if s.iter().all(|s| s.status.is_settled())
                || self.shared.stopped.load(Ordering::Acquire)
            {
                return s;
            }
            listener.await;
        }
    }

    /// The first server-reflexive address a STUN server reported, if any yet.
    ///
    /// ```no_run
    /// # fn f(endpoint: &peerpouch_smol::LinkEndpoint) {
    /// if let Some(addr) = endpoint.reflexive_addr() {
    ///     println!("the internet sees us as {addr}");
    /// }
    /// # }
    /// ```
    pub fn reflexive_addr(&self) -> Option<SocketAddr> {
        self.shared.stun().into_iter().find_map(|s| match s.status {
            StunStatus::Mapped(a) => Some(a),
            _ => None,
        })
    }

    /// The endpoint's counters.
    ///
    /// ```no_run
    /// # fn f(endpoint: &peerpouch_smol::LinkEndpoint) {
    /// assert_eq!(endpoint.stats().ambiguous, 0);
    /// # }
    /// ```
    pub fn stats(&self) -> EndpointStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        EndpointStats {
            datagrams_in: get(&c.datagrams_in),
            datagrams_out: get(&c.datagrams_out),
            stun_consumed: get(&c.stun_consumed),
            unmatched: get(&c.unmatched),
            ambiguous: get(&c.ambiguous),
            offered: get(&c.offered),
            fallbacks: get(&c.fallbacks),
            send_errors: get(&c.send_errors),
        }
    }

    /// Whether the driver has stopped.
    ///
    /// ```no_run
    /// # fn f(endpoint: &peerpouch_smol::LinkEndpoint) {
    /// assert!(!endpoint.is_stopped());
    /// # }
    /// ```
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// Closes every link (each peer sees a goodbye) and waits for the driver to stop.
    ///
    /// ```no_run
    /// # async fn f(endpoint: peerpouch_smol::LinkEndpoint) {
    /// endpoint.close().await;
    /// assert!(endpoint.is_stopped());
    /// # }
    /// ```
    pub async fn close(&self) {
        let _ = self.commands.try_send(Command::Shutdown);
        loop {
            let listener = self.shared.changed.listen();
            if self.shared.stopped.load(Ordering::Acquire) {
                return;
            }
            listener.await;
        }
    }
}

/// A link as the driver holds it.
pub(crate) struct LinkEntry {
    id: LinkId,
    session: Session,
    shared: Arc<LinkShared>,
    signals: Sender<SignalData>,
    messages: Sender<Message>,
    pending: VecDeque<PendingSend>,
    deadline: Option<Instant>,
    closed: bool,
}

struct PendingSend {
    binary: bool,
    data: Vec<u8>,
    reply: Sender<Result<(), LinkError>>,
}

impl LinkEntry {
    fn finish(&mut self, reason: CloseReason) {
        if self.closed {
            return;
        }
        self.closed = true;
        tracing::debug!(link = %self.id, ?reason, "link closed");
        self.shared.update(|s| {
            s.open = false;
            s.closed = Some(reason.clone());
        });
        // Queued messages and signals stay readable; receivers then see the end.
        self.messages.close();
        self.signals.close();
        for p in self.pending.drain(..) {
            let _ = p.reply.try_send(Err(LinkError::Closed(reason.clone())));
        }
    }
}

impl Drop for LinkEntry {
    fn drop(&mut self) {
        // The driver stopped (or was dropped) with the link still up: tell the handles.
        self.finish(CloseReason::Failed("the endpoint's driver stopped".into()));
    }
}

struct Driver {
    /// One socket (the endpoint binds one address), read and written as `PeerNode`'s are.
    sockets: Sockets,
    shared: Arc<EndpointShared>,
    commands: Receiver<Command>,
    commands_closed: bool,
    shutting_down: bool,
    links: BTreeMap<LinkId, LinkEntry>,
    /// Links whose session took an input and must be drained.
    dirty: BTreeSet<LinkId>,
    /// Which link each received datagram belongs to (ICE ufrag, address pair).
    router: Router<LinkId>,
    /// The STUN servers' client machines (the core's).
    stun: Gatherer,
    /// Server-reflexive (mapped, base) pairs learnt so far, for links created later.
    srflx: Vec<(SocketAddr, SocketAddr)>,
    buf: Vec<u8>,
    /// A batch of received datagrams, back to back, and where each is in it.
    arena: Vec<u8>,
    batch: Vec<(SocketAddr, SocketAddr, std::ops::Range<usize>)>,
    recv_errors: u32,
    warned_ambiguous: bool,
}

impl Drop for Driver {
    /// Runs when the driver finishes and when its future is dropped mid-way: links still up
    /// close with `Failed` (their `LinkEntry` drop), and `close()` / `stun_settled()` waiters
    /// wake up.
    fn drop(&mut self) {
        self.links.clear();
        self.commands.close();
        // Links created but not yet taken in are dropped here, closing them too.
        while self.commands.try_recv().is_ok() {}
        self.shared.stopped.store(true, Ordering::Release);
        self.shared.changed.notify(usize::MAX);
    }
}

enum Wake {
    Readable,
    Command(Result<Command, async_channel::RecvError>),
    Timer,
}

impl Driver {
    async fn run(mut self) {
        tracing::debug!(local = %self.shared.local_addr, "endpoint driver started");
        loop {
            // Commands first, every round: a socket that is always readable must not starve
            // the app's sends (`future::or` below prefers the socket).
            while let Ok(c) = self.commands.try_recv() {
                self.on_command(c);
            }
            let now = Instant::now();
            self.handle_due(now);
            self.flush(now).await;
            if (self.shutting_down || self.commands_closed) && self.links.is_empty() {
                break;
            }
            if self.recv_errors >= MAX_RECV_ERRORS {
                tracing::error!(local = %self.shared.local_addr, "the socket keeps failing; stopping the endpoint");
                break;
            }
            let deadline = self.next_deadline();
            let wake = {
                let readable = async {
                    self.sockets.readable().await;
                    Wake::Readable
                };
                let command = async {
                    if self.commands_closed {
                        future::pending().await
                    } else {
                        Wake::Command(self.commands.recv().await)
                    }
                };
                let timer = async {
                    match deadline {
                        Some(d) => {
                            Timer::at(d).await;
                        }
                        None => future::pending::<()>().await,
                    }
                    Wake::Timer
                };
                future::or(readable, future::or(command, timer)).await
            };
            match wake {
                Wake::Readable => self.read_batch(),
                Wake::Command(Ok(c)) => self.on_command(c),
                Wake::Command(Err(_)) => {
                    // Every handle is gone: nobody can use the links any more.
                    self.commands_closed = true;
                    self.close_all();
                }
                Wake::Timer => {}
            }
        }
        tracing::debug!(local = %self.shared.local_addr, "endpoint driver stopped");
        // Dropping `self` tells the handles (see `Drop for Driver`).
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.links
            .values()
            .filter_map(|l| l.deadline)
            .chain(self.stun.poll_timeout())
            .min()
    }

    fn handle_due(&mut self, now: Instant) {
        for (id, l) in self.links.iter_mut() {
            if l.deadline.is_some_and(|d| d <= now) {
                l.session.handle_timeout(now);
                self.dirty.insert(*id);
            }
        }
        if self.stun.poll_timeout().is_some_and(|d| d <= now) {
            self.stun.handle_timeout(now);
            self.stun_changed(now);
        }
    }

    fn close_all(&mut self) {
        let now = Instant::now();
        for (id, l) in self.links.iter_mut() {
            l.session.close(now);
            self.dirty.insert(*id);
        }
    }

    fn on_command(&mut self, c: Command) {
        let now = Instant::now();
        match c {
            Command::Add(entry) => {
                let mut entry = *entry;
                for (mapped, base) in &self.srflx {
                    if let Err(e) = entry.session.add_srflx_candidate(now, *mapped, *base) {
                        tracing::debug!(error = %e, "server-reflexive candidate refused");
                    }
                }
                if self.shutting_down {
                    entry.session.close(now);
                }
                self.dirty.insert(entry.id);
                self.router
                    .register_ufrag(entry.id, entry.session.ice_ufrag(), entry.id.0);
                self.links.insert(entry.id, entry);
            }
            Command::Signal { id, signal, reply } => {
                // A link that is gone drops `reply`: the handle reports why.
                if let Some(l) = self.links.get_mut(&id) {
                    let r = l.session.handle_signal(now, signal);
                    if let Err(e) = &r {
                        tracing::debug!(link = %id, error = %e, "signal refused");
                    }
                    let _ = reply.try_send(r);
                    self.dirty.insert(id);
                }
            }
            Command::Send {
                id,
                binary,
                data,
                reply,
            } => {
                if let Some(l) = self.links.get_mut(&id) {
                    l.pending.push_back(PendingSend {
                        binary,
                        data,
                        reply,
                    });
                    // Sent (or kept for later) by the flush, in order.
                    self.dirty.insert(id);
                }
            }
            Command::Close { id } => {
                if let Some(l) = self.links.get_mut(&id) {
                    l.session.close(now);
                    self.dirty.insert(id);
                }
            }
            Command::Shutdown => {
                self.shutting_down = true;
                self.close_all();
            }
        }
    }

    fn read_batch(&mut self) {
        let now = Instant::now();
        // The batch is read into one reused arena first: the sessions take it after the
        // socket is no longer borrowed.
        let mut buf = std::mem::take(&mut self.buf);
        let mut arena = std::mem::take(&mut self.arena);
        let mut batch = std::mem::take(&mut self.batch);
        arena.clear();
        batch.clear();
        let read = self
            .sockets
            .read_batch(&mut buf, RECV_BATCH, |from, to, bytes| {
                let start = arena.len();
                arena.extend_from_slice(bytes);
                batch.push((from, to, start..arena.len()));
            });
        if read.datagrams > 0 {
            self.recv_errors = 0;
        } else if read.errors > 0 {
            tracing::warn!("receiving from the socket failed");
            self.recv_errors += read.errors as u32;
        }
        for (from, to, range) in batch.drain(..) {
            self.on_datagram(now, from, to, &arena[range]);
        }
        (self.buf, self.arena, self.batch) = (buf, arena, batch);
    }

    fn on_datagram(
        &mut self,
        now: Instant,
        from: SocketAddr,
        destination: SocketAddr,
        bytes: &[u8],
    ) {
        let counters = &self.shared.counters;
        bump(&counters.datagrams_in);
        if self.stun.is_server(from) {
            bump(&counters.stun_consumed);
            self.stun.handle_datagram(now, from, bytes);
            self.stun_changed(now);
            return;
        }
        let before = self.router.stats();
        // The newest accepting link wins a fallback: a peer that restarted on the same address
        // replaces its old, dead link (which then times out).
        let found = self.router.dispatch(
            from,
            destination,
            bytes,
            &self.links,
            |l| l.id.0,
            |l| l.session.accepts(from, destination, bytes),
        );
        let after = self.router.stats();
        counters
            .offered
            .fetch_add(after.offered - before.offered, Ordering::Relaxed);
        counters
            .fallbacks
            .fetch_add(after.fallbacks - before.fallbacks, Ordering::Relaxed);
        if after.ambiguous > before.ambiguous {
            bump(&counters.ambiguous);
            if !self.warned_ambiguous {
                self.warned_ambiguous = true;
                tracing::warn!(peer = %from, "several links accept datagrams from one peer socket; DTLS cannot be routed (use one link per remote endpoint)");
            }
        }
        match found.and_then(|id| self.links.get_mut(&id).map(|l| (id, l))) {
            Some((id, l)) => {
                l.session.handle_datagram(now, from, destination, bytes);
                self.dirty.insert(id);
            }
            None => {
                bump(&counters.unmatched);
                tracing::trace!(peer = %from, len = bytes.len(), "datagram for no link");
            }
        }
    }

    /// Takes what the STUN clients found and publishes their statuses.
    fn stun_changed(&mut self, now: Instant) {
        while let Some(e) = self.stun.poll_event() {
            if let GatherEvent::Srflx { addr, base } = e {
                tracing::info!(mapped = %addr, %base, "STUN mapped address");
                self.add_srflx(now, addr, base);
            }
        }
        let statuses: Vec<StunServerStatus> = self
            .stun
            .reports()
            .iter()
            .map(StunServerStatus::from_report)
            .collect();
        if statuses != self.shared.stun() {
            self.shared.set_stun(statuses);
        }
    }

    fn add_srflx(&mut self, now: Instant, mapped: SocketAddr, base: SocketAddr) {
        if self.srflx.contains(&(mapped, base)) {
            return;
        }
        self.srflx.push((mapped, base));
        for (id, l) in self.links.iter_mut() {
            if let Err(e) = l.session.add_srflx_candidate(now, mapped, base) {
                tracing::debug!(link = %id, error = %e, "server-reflexive candidate refused");
            }
            self.dirty.insert(*id);
        }
    }

    /// Sends what is queued and drains every link that took an input (the session's drain
    /// rule), then removes the links that closed.
    async fn flush(&mut self, now: Instant) {
        while let Some(t) = self.stun.poll_transmit() {
            // `stun:` servers only: always UDP.
            debug_assert_eq!(t.transport, Transport::Udp);
            send_datagram(
                &self.sockets,
                &self.shared,
                t.source,
                t.destination,
                &t.contents,
            )
            .await;
        }
        while let Some(id) = self.dirty.pop_first() {
            let Some(link) = self.links.get_mut(&id) else {
                continue;
            };
            drain_link(&self.sockets, &self.shared, link, now).await;
            if link.closed {
                self.links.remove(&id);
                self.router.forget(&id);
            } else if !self.router.has_ufrag(&id, link.session.ice_ufrag()) {
                // A new handshake drew new ICE credentials.
                self.router
                    .register_ufrag(id, link.session.ice_ufrag(), id.0);
            }
        }
    }
}

/// Drains one session until it has nothing more to say, sending queued messages as the send
/// buffer allows.
async fn drain_link(
    sockets: &Sockets,
    shared: &EndpointShared,
    link: &mut LinkEntry,
    now: Instant,
) {
    loop {
        let mut progressed = false;
        while let Some(t) = link.session.poll_transmit() {
            progressed = true;
            send_datagram(sockets, shared, t.source, t.destination, &t.contents).await;
        }
        while let Some(s) = link.session.poll_signal() {
            progressed = true;
            let _ = link.signals.try_send(s);
        }
        while let Some(e) = link.session.poll_event() {
            progressed = true;
            match e {
                SessionEvent::ChannelOpened => {
                    let max = link.session.max_message_size();
                    tracing::debug!(link = %link.id, max_message = max, "channel opened");
                    link.shared.update(|s| {
                        s.open = true;
                        s.max_message = max;
                    });
                }
                SessionEvent::Message { binary, data } => {
                    // Unbounded: the session cannot push back on the peer (see the crate docs).
                    let _ = link.messages.try_send(Message { binary, data });
                }
                SessionEvent::IceRestarted => {
                    tracing::info!(link = %link.id, "ICE restart");
                    link.shared.update(|s| s.ice_restarts += 1);
                }
                SessionEvent::Closed(reason) => link.finish(reason),
                // BufferedAmountLow: the pending sends below are retried after every input
                // anyway (the event alone can miss: see the crate docs).
                _ => {}
            }
        }
        if !link.closed {
            while let Some(p) = link.pending.front() {
                match link.session.send(now, p.binary, &p.data) {
                    Ok(true) => {
                        progressed = true;
                        if let Some(p) = link.pending.pop_front() {
                            let _ = p.reply.try_send(Ok(()));
                        }
                    }
                    Ok(false) => break,
                    Err(e) => {
                        if let Some(p) = link.pending.pop_front() {
                            let _ = p.reply.try_send(Err(LinkError::Session(e)));
                        }
                    }
                }
            }
        }
        if !progressed {
            break;
        }
    }
    link.deadline = link.session.poll_timeout();
}

async fn send_datagram(
    sockets: &Sockets,
    shared: &EndpointShared,
    from: SocketAddr,
    to: SocketAddr,
    bytes: &[u8],
) {
    match sockets.send(from, to, bytes).await {
        SendOutcome::Sent => bump(&shared.counters.datagrams_out),
        // A candidate of the other family: this socket cannot reach it.
        SendOutcome::NoSocket => {}
        SendOutcome::Failed => bump(&shared.counters.send_errors),
    }
}

fn random_u64() -> Result<u64, LinkError> {
    getrandom::u64().map_err(|e| LinkError::Random(e.to_string()))
}
