//! Where nodes meet: a CouchDB hub over HTTP, or an in-process hub shared by nodes of one program.

use std::sync::{Arc, Mutex, MutexGuard};

use event_listener::{Event, EventListener};
use peerpouch::hub::{FeedFilter, MemoryHub};
use peerpouch::{ChangeRow, DbError, Request, Response, Seq};

/// Which hub a [`PeerNode`](super::PeerNode) meets its peers on.
#[derive(Clone, Debug)]
pub enum HubSpec {
    /// A CouchDB-compatible database over HTTP(S), e.g. `http://127.0.0.1:5984/hub`
    /// (credentials in the URL are sent as Basic auth). Created if missing. `https://` is
    /// verified against the platform's trust store plus [`PeerConfig::http`]'s CAs.
    ///
    /// [`PeerConfig::http`]: super::PeerConfig::http
    Couch(String),
    /// A hub in this process ([`InProcessHub`]): nodes holding clones of it meet each other.
    InProcess(InProcessHub),
}

impl HubSpec {
    /// A short description for logs and errors (credentials removed).
    pub fn describe(&self) -> String {
        match self {
            HubSpec::Couch(url) => match peerpouch_couch::DbUrl::parse(url) {
                Ok(u) => u.redacted().to_string(),
                Err(_) => "<invalid hub URL>".to_string(),
            },
            HubSpec::InProcess(_) => "in-process hub".to_string(),
        }
    }
}

/// The embedded default hub: an in-memory CouchDB-style database in this process, for demos,
/// tests and apps whose peers live in one program. Clones share the same hub.
///
/// ```
/// use peerpouch_smol::{HubSpec, InProcessHub};
///
/// let hub = InProcessHub::new();
/// let (a, b) = (HubSpec::InProcess(hub.clone()), HubSpec::InProcess(hub));
/// # let _ = (a, b);
/// ```
#[derive(Clone, Default)]
pub struct InProcessHub {
    inner: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    hub: Mutex<MemoryHub>,
    changed: Event,
}

impl std::fmt::Debug for InProcessHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessHub").finish_non_exhaustive()
    }
}

impl InProcessHub {
    /// An empty hub.
    pub fn new() -> InProcessHub {
        InProcessHub::default()
    }

    fn lock(&self) -> MutexGuard<'_, MemoryHub> {
        // A panic while holding the lock leaves a consistent store (writes are atomic).
        self.inner.hub.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Executes a request against the hub database; followers are woken when it wrote.
    pub(crate) fn execute(&self, request: Request) -> Result<Response, DbError> {
        let writes = matches!(request, Request::BulkDocs(_));
        let result = self.lock().execute(request);
        if writes {
            self.inner.changed.notify(usize::MAX);
        }
        result
    }

    /// A cursor that yields only what `filter` passes, as a CouchDB 2+ hub would.
    pub(crate) fn follow(&self, since: &Seq, filter: FeedFilter) -> usize {
        self.lock().follow_filtered(since, Some(filter))
    }

    pub(crate) fn unfollow(&self, cursor: usize) {
        self.lock().unfollow(cursor)
    }

    pub(crate) fn poll_feed(&self, cursor: usize) -> Vec<ChangeRow> {
        self.lock().poll_feed(cursor)
    }

    /// Listen before polling, then await: a write between the two still wakes the listener.
    pub(crate) fn listen(&self) -> EventListener {
        self.inner.changed.listen()
    }

    /// How many documents (shares and signals, tombstones excluded) the hub holds.
    pub fn doc_count(&self) -> u64 {
        use peerpouch::Database;
        self.lock().db().info().map(|i| i.doc_count).unwrap_or(0)
    }
}
