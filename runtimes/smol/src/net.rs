//! The UDP socket: creation with large buffers, host candidates, and the local address a
//! datagram arrived on.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};

use async_io::Async;

use socket2::{Domain, Protocol, Socket, Type};

use crate::LinkError;

/// A bound socket and what it knows about its addresses.
pub(crate) struct Bound {
    pub(crate) socket: UdpSocket,
    pub(crate) addrs: LocalAddrs,
    pub(crate) recv_buffer: usize,
    pub(crate) send_buffer: usize,
}

/// Creates, tunes and binds the socket.
pub(crate) fn bind(
    addr: SocketAddr,
    recv_buffer: usize,
    send_buffer: usize,
) -> Result<Bound, LinkError> {
    let option = |option: &'static str| move |source| LinkError::SocketOption { option, source };
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(option("socket(UDP)"))?;
    if addr.is_ipv6() {
        // One family per socket keeps candidates and the destination guess simple.
        socket.set_only_v6(true).map_err(option("IPV6_V6ONLY"))?;
    }
    // Large buffers so a loopback burst (and a busy driver) does not drop datagrams: every
    // drop costs SCTP a retransmission timeout of at least a second. Linux caps the request at
    // net.core.rmem_max / wmem_max and reports twice the granted size (bookkeeping overhead).
    if let Err(e) = socket.set_recv_buffer_size(recv_buffer) {
        tracing::warn!(error = %e, requested = recv_buffer, "could not set SO_RCVBUF");
    }
    if let Err(e) = socket.set_send_buffer_size(send_buffer) {
        tracing::warn!(error = %e, requested = send_buffer, "could not set SO_SNDBUF");
    }
    let granted_recv = socket.recv_buffer_size().map_err(option("SO_RCVBUF"))?;
    let granted_send = socket.send_buffer_size().map_err(option("SO_SNDBUF"))?;
    if granted_recv < recv_buffer {
        tracing::warn!(
            requested = recv_buffer,
            granted = granted_recv,
            "SO_RCVBUF smaller than requested: raise net.core.rmem_max"
        );
    }
    socket
        .bind(&addr.into())
        .map_err(|source| LinkError::Bind { addr, source })?;
    let socket: UdpSocket = socket.into();
    let local = socket.local_addr().map_err(option("getsockname"))?;
    let addrs = LocalAddrs::gather(local)?;
    tracing::debug!(%local, candidates = ?addrs.candidates, recv_buffer = granted_recv, send_buffer = granted_send, "socket bound");
    Ok(Bound {
        socket,
        addrs,
        recv_buffer: granted_recv,
        send_buffer: granted_send,
    })
}

/// The socket's addresses: the one it is bound to, the host candidates it is reachable on, and
/// the networks of the interfaces (to guess which local address a datagram was sent to).
#[derive(Clone, Debug)]
pub(crate) struct LocalAddrs {
    pub(crate) bound: SocketAddr,
    pub(crate) candidates: Vec<SocketAddr>,
    nets: Vec<(IpAddr, IpAddr)>,
    /// An announced public address: every datagram counts as sent to it.
    bound_public: Option<SocketAddr>,
}

impl LocalAddrs {
    /// For a specific address: that address. For a wildcard (`0.0.0.0`, `[::]`): every
    /// interface address of the same family, loopback included, skipping IPv6 link-local ones
    /// (they need a scope id that ICE candidates cannot carry).
    pub(crate) fn gather(bound: SocketAddr) -> Result<LocalAddrs, LinkError> {
        if !bound.ip().is_unspecified() {
            return Ok(LocalAddrs {
                bound,
                candidates: vec![bound],
                nets: Vec::new(),
                bound_public: None,
            });
        }
        let interfaces = if_addrs::get_if_addrs().map_err(LinkError::Interfaces)?;
        let mut candidates = Vec::new();
        let mut nets = Vec::new();
        for iface in interfaces {
            let (ip, mask) = match &iface.addr {
                if_addrs::IfAddr::V4(a) => (IpAddr::V4(a.ip), IpAddr::V4(a.netmask)),
                if_addrs::IfAddr::V6(a) => (IpAddr::V6(a.ip), IpAddr::V6(a.netmask)),
            };
            if ip.is_ipv4() != bound.is_ipv4() || ip.is_unspecified() || is_link_local_v6(ip) {
                continue;
            }
            let addr = SocketAddr::new(ip, bound.port());
            if !candidates.contains(&addr) {
                candidates.push(addr);
                nets.push((ip, mask));
            }
        }
        if candidates.is_empty() {
            return Err(LinkError::Interfaces(io::Error::new(
                io::ErrorKind::NotFound,
                format!("no interface address of the family of {bound}"),
            )));
        }
        Ok(LocalAddrs {
            bound,
            candidates,
            nets,
            bound_public: None,
        })
    }

    /// The local address a datagram from `source` most likely arrived on. Exact for a socket
    /// bound to one address. For a wildcard socket (the kernel does not say without
    /// `IP_PKTINFO`): a loopback address for loopback peers, else the interface whose network
    /// holds the peer, else the first non-loopback address. ICE needs it to match a host
    /// candidate exactly.
    pub(crate) fn destination_for(&self, source: SocketAddr) -> SocketAddr {
        if let Some(p) = self.bound_public {
            return p;
        }
        if self.nets.is_empty() {
            return self.bound;
        }
        let src = source.ip();
        let pick = |ip: IpAddr| SocketAddr::new(ip, self.bound.port());
        if src.is_loopback() {
            if let Some(c) = self.candidates.iter().find(|c| c.ip() == src) {
                return *c;
            }
            if let Some(c) = self.candidates.iter().find(|c| c.ip().is_loopback()) {
                return *c;
            }
        }
        if let Some((ip, _)) = self
            .nets
            .iter()
            .find(|(ip, mask)| same_net(*ip, src, *mask))
        {
            return pick(*ip);
        }
        self.candidates
            .iter()
            .find(|c| !c.ip().is_loopback())
            .or(self.candidates.first())
            .copied()
            .unwrap_or(self.bound)
    }
}

/// A node's UDP sockets: by default one per address family on every interface, as a browser
/// gathers (`0.0.0.0` and `[::]`).
pub(crate) struct Sockets {
    sockets: Vec<(Async<UdpSocket>, LocalAddrs)>,
}

impl LocalAddrs {
    /// Offers `public` instead of the socket's addresses, and takes every datagram as sent to
    /// it (a 1:1 NAT in front of the socket).
    fn announce(&mut self, public: SocketAddr) {
        self.candidates = vec![public];
        self.nets.clear();
        self.bound_public = Some(public);
    }
}

/// The addresses a node listens on by default: every interface, IPv4 and IPv6.
pub(crate) fn default_binds() -> Vec<SocketAddr> {
    vec![
        SocketAddr::from(([0, 0, 0, 0], 0)),
        SocketAddr::from(([0u16; 8], 0)),
    ]
}

/// What one [`Sockets::read_batch`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReadBatch {
    /// Datagrams read (and handed on).
    pub(crate) datagrams: usize,
    /// Receive errors other than "nothing to read" (ICMP errors surface here on some systems).
    pub(crate) errors: usize,
}

/// What became of one datagram given to [`Sockets::send`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SendOutcome {
    /// The OS took it.
    Sent,
    /// No socket of the destination's address family: nothing was tried.
    NoSocket,
    /// The OS refused it (an unreachable candidate, mostly). A datagram lost here is a
    /// datagram lost on the network: SCTP resends.
    Failed,
}

impl Sockets {
    /// Wraps one socket made by [`bind`] (its own buffer sizes, one address).
    pub(crate) fn from_bound(bound: Bound) -> Result<Sockets, LinkError> {
        let socket = Async::new(bound.socket).map_err(LinkError::Reactor)?;
        Ok(Sockets {
            sockets: vec![(socket, bound.addrs)],
        })
    }

    /// The local address a datagram from `peer` most likely arrives on (see
    /// [`LocalAddrs::destination_for`]), from the socket of `peer`'s family.
    pub(crate) fn destination_for(&self, peer: SocketAddr) -> Option<SocketAddr> {
        self.sockets
            .iter()
            .find(|(_, a)| a.bound.is_ipv4() == peer.is_ipv4())
            .map(|(_, a)| a.destination_for(peer))
    }

    /// Binds every address. With `optional_v6` (the default binds), an IPv6 socket that
    /// cannot be made (a machine without IPv6) is skipped; an address the user asked for must
    /// bind.
    pub(crate) fn bind(addrs: &[SocketAddr], optional_v6: bool) -> Result<Sockets, LinkError> {
        let mut sockets = Vec::new();
        for &addr in addrs {
            match bind(addr, 4 << 20, 4 << 20) {
                Ok(b) => {
                    let socket =
                        Async::new(b.socket).map_err(|source| LinkError::SocketOption {
                            option: "O_NONBLOCK",
                            source,
                        })?;
                    sockets.push((socket, b.addrs));
                }
                Err(e) if optional_v6 && addr.is_ipv6() => {
                    tracing::debug!(%addr, error = %e, "no IPv6 socket: IPv4 only");
                }
                Err(e) => return Err(e),
            }
        }
        if sockets.is_empty() {
            return Err(LinkError::Interfaces(io::Error::new(
                io::ErrorKind::NotFound,
                "no address to listen on",
            )));
        }
        Ok(Sockets { sockets })
    }

    /// Announces public addresses: each socket takes the one of its family.
    pub(crate) fn announce(&mut self, public: &[SocketAddr]) {
        for (_, addrs) in &mut self.sockets {
            if let Some(p) = public.iter().find(|p| p.is_ipv4() == addrs.bound.is_ipv4()) {
                addrs.announce(*p);
            }
        }
    }

    /// The host candidates a node offers: every address of every socket, but loopback when
    /// there is anything else. Loopback is no address for a peer on another machine (browsers
    /// never offer it): a TURN server refuses it (403) and checks to it are wasted.
    pub(crate) fn candidates(&self) -> Vec<SocketAddr> {
        let all: Vec<SocketAddr> = self
            .sockets
            .iter()
            .flat_map(|(_, a)| a.candidates.iter().copied())
            .collect();
        if all.iter().all(|c| c.ip().is_loopback()) {
            return all;
        }
        all.into_iter().filter(|c| !c.ip().is_loopback()).collect()
    }

    /// The bound addresses (ports resolved).
    pub(crate) fn bound(&self) -> Vec<SocketAddr> {
        self.sockets.iter().map(|(_, a)| a.bound).collect()
    }

    /// Waits until one socket has something to read.
    pub(crate) async fn readable(&self) {
        let mut waits: Vec<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>> =
            Vec::new();
        for (s, _) in &self.sockets {
            waits.push(Box::pin(async move {
                let _ = s.readable().await;
            }));
        }
        let mut all = waits.into_iter();
        let Some(first) = all.next() else {
            return futures_lite::future::pending().await;
        };
        all.fold(first, |a, b| Box::pin(futures_lite::future::or(a, b)))
            .await
    }

    /// Reads up to `max` datagrams (from every socket, without waiting), handing each to `on`
    /// with its source and the local address it most likely arrived on.
    pub(crate) fn read_batch(
        &self,
        buf: &mut [u8],
        max: usize,
        mut on: impl FnMut(SocketAddr, SocketAddr, &[u8]),
    ) -> ReadBatch {
        let mut done = ReadBatch::default();
        for (socket, addrs) in &self.sockets {
            for _ in 0..max {
                match socket.get_ref().recv_from(buf) {
                    Ok((n, from)) => {
                        done.datagrams += 1;
                        on(from, addrs.destination_for(from), &buf[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // ICMP errors surface here on some systems; liveness handles them.
                        tracing::debug!(error = %e, "receiving from the socket failed");
                        done.errors += 1;
                        break;
                    }
                }
            }
        }
        done
    }

    /// Sends a datagram from the socket that owns `source` (or the first of `to`'s family).
    pub(crate) async fn send(
        &self,
        source: SocketAddr,
        to: SocketAddr,
        data: &[u8],
    ) -> SendOutcome {
        let mut family = self
            .sockets
            .iter()
            .filter(|(_, a)| a.bound.is_ipv4() == to.is_ipv4());
        let socket = family
            .clone()
            .find(|(_, a)| a.bound == source || a.candidates.contains(&source))
            .or_else(|| family.next());
        let Some((socket, _)) = socket else {
            tracing::debug!(%to, "no socket of that address family");
            return SendOutcome::NoSocket;
        };
        loop {
            match socket.get_ref().send_to(data, to) {
                Ok(_) => return SendOutcome::Sent,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Err(e) = socket.writable().await {
                        tracing::warn!(error = %e, "waiting to send failed");
                        return SendOutcome::Failed;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, %to, "sending a datagram failed");
                    return SendOutcome::Failed;
                }
            }
        }
    }
}

/// What a TCP stream to a TURN server reports to the driver.
#[derive(Debug)]
pub(crate) enum StreamEvent {
    /// Bytes read from the stream to `server`.
    Data {
        /// The server.
        server: SocketAddr,
        /// What was read.
        bytes: Vec<u8>,
    },
    /// The stream to `server` could not connect or ended.
    Closed {
        /// The server.
        server: SocketAddr,
        /// Why.
        why: String,
    },
}

/// TCP streams to TURN servers (RFC 8656 §3.1: TURN over TCP where UDP is blocked), one per
/// server, opened on the first bytes for it. Each runs as a task that reads into `events` and
/// writes what [`Streams::send`] queues; it ends when its queue's sender is dropped.
pub(crate) struct Streams {
    open: std::collections::BTreeMap<SocketAddr, async_channel::Sender<Vec<u8>>>,
}

/// Writes queued per stream before more are dropped (each is one framed STUN message or
/// ChannelData, at most ~64 KiB; a stalled server costs at most this much memory).
const STREAM_BACKLOG: usize = 256;
/// How long a TCP connect to a TURN server may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Streams {
    pub(crate) fn new() -> Streams {
        Streams {
            open: std::collections::BTreeMap::new(),
        }
    }

    /// Queues `bytes` for the stream to `server`, connecting first if needed; events go to
    /// `events`.
    pub(crate) fn send(
        &mut self,
        server: SocketAddr,
        bytes: Vec<u8>,
        events: &async_channel::Sender<StreamEvent>,
    ) {
        let tx = self
            .open
            .entry(server)
            .or_insert_with(|| spawn_stream(server, events.clone()));
        if tx.try_send(bytes).is_err() {
            tracing::debug!(%server, "TCP stream to the TURN server is backed up: bytes dropped");
        }
    }

    /// Writes queued on the streams and not yet taken by their tasks: a node shutting down
    /// waits for them (its goodbye to a peer through a TURN server over TCP is among them).
    pub(crate) fn queued(&self) -> usize {
        self.open.values().map(|tx| tx.len()).sum()
    }

    /// Forgets a stream that ended (the next bytes for it connect again).
    pub(crate) fn closed(&mut self, server: SocketAddr) {
        self.open.remove(&server);
    }
}

fn spawn_stream(
    server: SocketAddr,
    events: async_channel::Sender<StreamEvent>,
) -> async_channel::Sender<Vec<u8>> {
    let (tx, rx) = async_channel::bounded::<Vec<u8>>(STREAM_BACKLOG);
    smol::spawn(async move {
        let why = run_stream(server, rx, &events).await;
        let _ = events.send(StreamEvent::Closed { server, why }).await;
    })
    .detach();
    tx
}

async fn run_stream(
    server: SocketAddr,
    rx: async_channel::Receiver<Vec<u8>>,
    events: &async_channel::Sender<StreamEvent>,
) -> String {
    use futures_lite::{AsyncReadExt, AsyncWriteExt};
    let connect = async { Some(Async::<std::net::TcpStream>::connect(server).await) };
    let timeout = async {
        async_io::Timer::after(CONNECT_TIMEOUT).await;
        None
    };
    let stream = match futures_lite::future::or(connect, timeout).await {
        Some(Ok(s)) => s,
        Some(Err(e)) => return format!("cannot connect over TCP: {e}"),
        None => return format!("TCP connect timed out after {CONNECT_TIMEOUT:?}"),
    };
    let _ = stream.get_ref().set_nodelay(true);
    tracing::debug!(%server, "TCP stream to the TURN server open");
    let stream = std::sync::Arc::new(stream);
    let reader = {
        let stream = stream.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                match (&*stream).read(&mut buf).await {
                    Ok(0) => return "the TURN server closed the TCP stream".to_string(),
                    Ok(n) => {
                        let data = StreamEvent::Data {
                            server,
                            bytes: buf[..n].to_vec(),
                        };
                        if events.send(data).await.is_err() {
                            return "the node stopped".to_string();
                        }
                    }
                    Err(e) => return format!("reading the TCP stream failed: {e}"),
                }
            }
        }
    };
    let writer = async move {
        while let Ok(bytes) = rx.recv().await {
            if let Err(e) = (&*stream).write_all(&bytes).await {
                return format!("writing the TCP stream failed: {e}");
            }
        }
        "the node stopped".to_string()
    };
    futures_lite::future::or(reader, writer).await
}

fn is_link_local_v6(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

fn same_net(a: IpAddr, b: IpAddr, mask: IpAddr) -> bool {
    match (a, b, mask) {
        (IpAddr::V4(a), IpAddr::V4(b), IpAddr::V4(m)) => {
            let m = u32::from(m);
            m != 0 && u32::from(a) & m == u32::from(b) & m
        }
        (IpAddr::V6(a), IpAddr::V6(b), IpAddr::V6(m)) => {
            let m = u128::from(m);
            m != 0 && u128::from(a) & m == u128::from(b) & m
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specific_address_is_its_own_candidate() {
        let a: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let l = LocalAddrs::gather(a).unwrap();
        assert_eq!(l.candidates, vec![a]);
        assert_eq!(l.destination_for("10.1.2.3:9".parse().unwrap()), a);
    }

    #[test]
    fn wildcard_gathers_loopback_and_guesses_destinations() {
        let l = LocalAddrs::gather("0.0.0.0:4000".parse().unwrap()).unwrap();
        let lo: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        assert!(l.candidates.contains(&lo), "{:?}", l.candidates);
        assert!(l.candidates.iter().all(|c| c.port() == 4000 && c.is_ipv4()));
        assert_eq!(l.destination_for("127.0.0.1:5000".parse().unwrap()), lo);
        let manual = LocalAddrs {
            bound_public: None,
            bound: "0.0.0.0:4000".parse().unwrap(),
            candidates: vec![
                "192.0.2.2:4000".parse().unwrap(),
                "198.51.100.7:4000".parse().unwrap(),
                lo,
            ],
            nets: vec![
                (
                    "192.0.2.2".parse().unwrap(),
                    "255.255.255.0".parse().unwrap(),
                ),
                (
                    "198.51.100.7".parse().unwrap(),
                    "255.255.255.0".parse().unwrap(),
                ),
                ("127.0.0.1".parse().unwrap(), "255.0.0.0".parse().unwrap()),
            ],
        };
        assert_eq!(
            manual.destination_for("198.51.100.200:1".parse().unwrap()),
            "198.51.100.7:4000".parse().unwrap()
        );
        assert_eq!(
            manual.destination_for("203.0.113.1:1".parse().unwrap()),
            "192.0.2.2:4000".parse().unwrap()
        );
        assert_eq!(manual.destination_for("127.0.0.1:1".parse().unwrap()), lo);
    }
}
