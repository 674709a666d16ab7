//! The app's handle on one link.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};

use async_channel::{Receiver, Sender};
use event_listener::Event;
use peerpouch::hub::SignalData;
use peerpouch::session::{CloseReason, SessionRole};

use crate::LinkError;
use crate::endpoint::Command;

/// Identifies a link within its endpoint.
///
/// ```no_run
/// # async fn f(link: peerpouch_smol::Link) {
/// println!("link {}", link.id());
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkId(pub(crate) u64);

impl std::fmt::Display for LinkId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// A message from the peer.
///
/// ```
/// use peerpouch_smol::Message;
/// let m = Message { binary: true, data: vec![1, 2, 3] };
/// assert_eq!(m.data.len(), 3);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Binary (`true`) or text (`false`, UTF-8 from a well-behaved peer).
    pub binary: bool,
    /// The bytes.
    pub data: Vec<u8>,
}

/// What the driver tells the handles about a link.
#[derive(Debug, Default)]
pub(crate) struct LinkStatus {
    pub(crate) open: bool,
    pub(crate) closed: Option<CloseReason>,
    pub(crate) max_message: usize,
    pub(crate) ice_restarts: u32,
}

/// Status shared between the driver (writer) and the handles (readers), with a wake-up.
#[derive(Debug, Default)]
pub(crate) struct LinkShared {
    status: Mutex<LinkStatus>,
    changed: Event,
}

impl LinkShared {
    pub(crate) fn new(max_message: usize) -> LinkShared {
        LinkShared {
            status: Mutex::new(LinkStatus {
                max_message,
                ..LinkStatus::default()
            }),
            changed: Event::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, LinkStatus> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Changes the status and wakes every waiting handle.
    pub(crate) fn update(&self, f: impl FnOnce(&mut LinkStatus)) {
        f(&mut self.lock());
        self.changed.notify(usize::MAX);
    }

    /// Waits until `f` returns `Some`.
    async fn wait<T>(&self, mut f: impl FnMut(&LinkStatus) -> Option<T>) -> T {
        loop {
            let listener = {
                let s = self.lock();
                if let Some(v) = f(&s) {
                    return v;
                }
                // Registered under the lock: an update after this point wakes us.
                self.changed.listen()
            };
            listener.await;
        }
    }
}

pub(crate) struct LinkInner {
    pub(crate) id: LinkId,
    pub(crate) role: SessionRole,
    pub(crate) commands: Sender<Command>,
    pub(crate) shared: Arc<LinkShared>,
    pub(crate) signals: Receiver<SignalData>,
    pub(crate) messages: Receiver<Message>,
}

impl Drop for LinkInner {
    fn drop(&mut self) {
        if self.shared.lock().closed.is_none() {
            let _ = self.commands.try_send(Command::Close { id: self.id });
        }
    }
}

/// One WebRTC link (a reliable, ordered data channel) driven by a [`LinkEndpoint`].
///
/// Forward [`Link::next_signal`] to the peer through the hub and feed the peer's signals to
/// [`Link::handle_signal`]; once [`Link::opened`] returns, [`Link::send`] and [`Link::recv`]
/// carry messages. Clones share the link; when the last clone is dropped the link closes (as
/// with [`Link::close`], without waiting).
///
/// [`LinkEndpoint`]: crate::LinkEndpoint
///
/// ```no_run
/// use peerpouch_smol::{EndpointConfig, LinkEndpoint, SessionRole};
/// # smol::block_on(async {
/// let endpoint = LinkEndpoint::bind(EndpointConfig::default())?;
/// let link = endpoint.create_link(SessionRole::Offerer)?;
/// // ... forward signals both ways, then:
/// link.opened().await?;
/// link.send(b"hello".to_vec()).await?;
/// let reply = link.recv().await?;
/// link.close().await;
/// # Ok::<(), peerpouch_smol::LinkError>(()) });
/// ```
#[derive(Clone)]
pub struct Link {
    pub(crate) inner: Arc<LinkInner>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = self.inner.shared.lock();
        f.debug_struct("Link")
            .field("id", &self.inner.id)
            .field("role", &self.inner.role)
            .field("open", &s.open)
            .field("closed", &s.closed)
            .finish()
    }
}

impl Link {
    /// This link's id within its endpoint.
    ///
    /// ```no_run
    /// # fn f(link: &peerpouch_smol::Link) {
    /// tracing::info!(link = %link.id(), "opened");
    /// # }
    /// ```
    pub fn id(&self) -> LinkId {
        self.inner.id
    }

    /// Whether this side offers or answers.
    ///
    /// ```no_run
    /// # fn f(link: &peerpouch_smol::Link) {
    /// assert_eq!(link.role(), peerpouch_smol::SessionRole::Offerer);
    /// # }
    /// ```
    pub fn role(&self) -> SessionRole {
        self.inner.role
    }

    /// The next signal (offer, answer, candidate) to forward to the peer through the hub;
    /// `None` once the link has closed and every signal was taken.
    ///
    /// ```no_run
    /// # async fn f(link: peerpouch_smol::Link) {
    /// while let Some(signal) = link.next_signal().await {
    ///     let json = signal.to_json(); // post it to the hub as a signal document's `data`
    /// #   let _ = json;
    /// }
    /// # }
    /// ```
    pub async fn next_signal(&self) -> Option<SignalData> {
        self.inner.signals.recv().await.ok()
    }

    /// The outgoing signals as a [`futures_lite::Stream`] (the same queue as
    /// [`Link::next_signal`]: each signal goes to one reader). The stream does not keep the link
    /// open.
    ///
    /// ```no_run
    /// use futures_lite::StreamExt;
    /// # async fn f(link: peerpouch_smol::Link) {
    /// let mut signals = link.signals();
    /// while let Some(signal) = signals.next().await {
    ///     println!("{}", signal.to_json());
    /// }
    /// # }
    /// ```
    pub fn signals(&self) -> Signals {
        Signals {
            rx: Box::pin(self.inner.signals.clone()),
        }
    }

    /// Feeds a signal from the peer (its offer, answer or an ICE candidate).
    ///
    /// # Errors
    /// [`LinkError::Session`] when the session refuses it (bad SDP, an answer to the answerer);
    /// the link is unchanged. [`LinkError::Closed`] / [`LinkError::EndpointStopped`] when the link
    /// or its endpoint is gone.
    ///
    /// ```no_run
    /// # async fn f(link: peerpouch_smol::Link, from_hub: peerpouch_smol::SignalData) -> Result<(), peerpouch_smol::LinkError> {
    /// // `from_hub` was read with `SignalData::from_json` from a signal document's `data`.
    /// link.handle_signal(from_hub).await?;
    /// # Ok(()) }
    /// ```
    pub async fn handle_signal(&self, signal: SignalData) -> Result<(), LinkError> {
        handle_signal(
            self.inner.id,
            &self.inner.commands,
            &self.inner.shared,
            signal,
        )
        .await
    }

    /// A handle that feeds the peer's signals to this link without keeping it open (unlike a
    /// [`Link`] clone), for the task that reads the hub. With [`Link::signals`] it lets the
    /// signalling tasks live exactly as long as the link.
    ///
    /// ```no_run
    /// use futures_lite::StreamExt;
    /// # fn f(a: peerpouch_smol::Link, b: peerpouch_smol::Link) {
    /// // Wire two links directly (a hub in between does the same): neither task keeps its link
    /// // open, and both end when the links close.
    /// let (mut out, sink) = (a.signals(), b.signal_sink());
    /// smol::spawn(async move {
    ///     while let Some(signal) = out.next().await {
    ///         if sink.handle_signal(signal).await.is_err() {
    ///             break;
    ///         }
    ///     }
    /// })
    /// .detach();
    /// # }
    /// ```
    pub fn signal_sink(&self) -> SignalSink {
        SignalSink {
            id: self.inner.id,
            commands: self.inner.commands.clone(),
            shared: self.inner.shared.clone(),
        }
    }

    /// Waits until the data channel is open.
    ///
    /// # Errors
    /// [`LinkError::Closed`] when the link closed first (e.g. [`CloseReason::ConnectTimeout`]).
    ///
    /// ```no_run
    /// # async fn f(link: peerpouch_smol::Link) -> Result<(), peerpouch_smol::LinkError> {
    /// link.opened().await?;
    /// # Ok(()) }
    /// ```
    pub async fn opened(&self) -> Result<(), LinkError> {
        self.inner
            .shared
            .wait(|s| match (&s.closed, s.open) {
                (Some(r), _) => Some(Err(LinkError::Closed(r.clone()))),
                (None, true) => Some(Ok(())),
                (None, false) => None,
            })
            .await
    }

    /// Whether the data channel is open now.
    ///
    /// ```no_run
    /// # fn f(link: &peerpouch_smol::Link) {
    /// if link.is_open() { /* send */ }
    /// # }
    /// ```
    pub fn is_open(&self) -> bool {
        let s = self.inner.shared.lock();
        s.open && s.closed.is_none()
    }

    /// The largest message [`Link::send`] takes (our limit and, once open, the peer's
    /// `a=max-message-size`).
    ///
    /// ```no_run
    /// # async fn f(link: peerpouch_smol::Link, big: Vec<u8>) -> Result<(), peerpouch_smol::LinkError> {
    /// link.opened().await?;
    /// for chunk in big.chunks(link.max_message_size()) {
    ///     link.send(chunk.to_vec()).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub fn max_message_size(&self) -> usize {
        self.inner.shared.lock().max_message
    }

    /// How many ICE restarts this (offering) side has started.
    ///
    /// ```no_run
    /// # fn f(link: &peerpouch_smol::Link) {
    /// println!("{} ICE restarts", link.ice_restarts());
    /// # }
    /// ```
    pub fn ice_restarts(&self) -> u32 {
        self.inner.shared.lock().ice_restarts
    }

    /// Sends a binary message, waiting for the channel to open and for room in the send buffer
    /// (backpressure). Returns when the session has queued it. Messages sent one after another
    /// arrive in order; a `send` cancelled after it started may or may not have been sent.
    ///
    /// # Errors
    /// [`LinkError::Session`] with `EmptyMessage` or `MessageTooLarge` (see
    /// [`Link::max_message_size`]); [`LinkError::Closed`] when the link closes first.
    ///
    /// ```no_run
    /// # async fn f(link: peerpouch_smol::Link) -> Result<(), peerpouch_smol::LinkError> {
    /// link.send(vec![0u8; 16 * 1024]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, data: impl Into<Vec<u8>>) -> Result<(), LinkError> {
        self.send_message(true, data.into()).await
    }

    /// Sends a text message (see [`Link::send`]).
    ///
    /// # Errors
    /// As [`Link::send`].
    ///
    /// ```no_run
    /// # async fn f(link: peerpouch_smol::Link) -> Result<(), peerpouch_smol::LinkError> {
    /// link.send_text("{\"hello\": 1}").await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), LinkError> {
        self.send_message(false, text.into().into_bytes()).await
    }

    async fn send_message(&self, binary: bool, data: Vec<u8>) -> Result<(), LinkError> {
        self.opened().await?;
        let (reply, answer) = async_channel::bounded(1);
        self.command(Command::Send {
            id: self.inner.id,
            binary,
            data,
            reply,
        })?;
        match answer.recv().await {
            Ok(r) => r,
            Err(_) => Err(self.gone()),
        }
    }

    /// The next message from the peer. Messages received before the link closed are still
    /// returned after it closed.
    ///
    /// # Errors
    /// [`LinkError::Closed`] (with the reason) once the link has closed and every message was
    /// taken.
    ///
    /// ```no_run
    /// # async fn f(link: peerpouch_smol::Link) {
    /// while let Ok(message) = link.recv().await {
    ///     println!("{} bytes", message.data.len());
    /// }
    /// # }
    /// ```
    pub async fn recv(&self) -> Result<Message, LinkError> {
        match self.inner.messages.recv().await {
            Ok(m) => Ok(m),
            Err(_) => Err(self.gone()),
        }
    }

    /// Waits until the link has closed and says why.
    ///
    /// ```no_run
    /// # async fn f(link: peerpouch_smol::Link) {
    /// let reason = link.closed().await;
    /// println!("closed: {reason:?}");
    /// # }
    /// ```
    pub async fn closed(&self) -> CloseReason {
        self.inner.shared.wait(|s| s.closed.clone()).await
    }

    /// Why the link closed, if it has.
    ///
    /// ```no_run
    /// # fn f(link: &peerpouch_smol::Link) {
    /// assert!(link.close_reason().is_none());
    /// # }
    /// ```
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.inner.shared.lock().closed.clone()
    }

    /// Closes the link (a goodbye the peer sees as [`CloseReason::Remote`], then DTLS
    /// close_notify) and waits until it is closed; returns the reason (`Local`, or an earlier
    /// one if it had already closed).
    ///
    /// ```no_run
    /// # async fn f(link: peerpouch_smol::Link) {
    /// link.close().await;
    /// # }
    /// ```
    pub async fn close(&self) -> CloseReason {
        if let Some(r) = self.close_reason() {
            return r;
        }
        if self.command(Command::Close { id: self.inner.id }).is_err() {
            return CloseReason::Failed("the endpoint's driver has stopped".into());
        }
        self.closed().await
    }

    fn command(&self, c: Command) -> Result<(), LinkError> {
        self.inner
            .commands
            .try_send(c)
            .map_err(|_| LinkError::EndpointStopped)
    }

    /// The error for a request the driver dropped: the link closed meanwhile, or the driver is
    /// gone.
    fn gone(&self) -> LinkError {
        match self.close_reason() {
            Some(r) => LinkError::Closed(r),
            None => LinkError::EndpointStopped,
        }
    }
}

/// Feeds signals to a link without keeping it open; see [`Link::signal_sink`].
///
/// ```no_run
/// # async fn f(link: peerpouch_smol::Link, from_hub: peerpouch_smol::SignalData) {
/// let sink = link.signal_sink();
/// let _ = sink.handle_signal(from_hub).await;
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct SignalSink {
    id: LinkId,
    commands: Sender<Command>,
    shared: Arc<LinkShared>,
}

impl SignalSink {
    /// Feeds a signal from the peer, as [`Link::handle_signal`].
    ///
    /// # Errors
    /// As [`Link::handle_signal`].
    ///
    /// ```no_run
    /// # async fn f(sink: peerpouch_smol::SignalSink) -> Result<(), peerpouch_smol::LinkError> {
    /// sink.handle_signal(peerpouch_smol::SignalData::Candidate(None)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn handle_signal(&self, signal: SignalData) -> Result<(), LinkError> {
        handle_signal(self.id, &self.commands, &self.shared, signal).await
    }

    /// The link it feeds.
    ///
    /// ```no_run
    /// # fn f(link: peerpouch_smol::Link) {
    /// assert_eq!(link.signal_sink().link_id(), link.id());
    /// # }
    /// ```
    pub fn link_id(&self) -> LinkId {
        self.id
    }
}

async fn handle_signal(
    id: LinkId,
    commands: &Sender<Command>,
    shared: &LinkShared,
    signal: SignalData,
) -> Result<(), LinkError> {
    let gone = || match shared.lock().closed.clone() {
        Some(r) => LinkError::Closed(r),
        None => LinkError::EndpointStopped,
    };
    if let Some(reason) = shared.lock().closed.clone() {
        return Err(LinkError::Closed(reason));
    }
    let (reply, answer) = async_channel::bounded(1);
    commands
        .try_send(Command::Signal { id, signal, reply })
        .map_err(|_| LinkError::EndpointStopped)?;
    match answer.recv().await {
        Ok(r) => r.map_err(LinkError::Session),
        Err(_) => Err(gone()),
    }
}

/// A link's outgoing signals as a stream; see [`Link::signals`].
///
/// ```no_run
/// use futures_lite::StreamExt;
/// # async fn f(link: peerpouch_smol::Link) {
/// let first = link.signals().next().await;
/// # }
/// ```
pub struct Signals {
    rx: Pin<Box<Receiver<SignalData>>>,
}

impl std::fmt::Debug for Signals {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signals").finish_non_exhaustive()
    }
}

impl futures_lite::Stream for Signals {
    type Item = SignalData;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<SignalData>> {
        self.rx.as_mut().poll_next(cx)
    }
}
