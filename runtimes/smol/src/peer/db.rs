//! [`Db`]: one handle for a local database, a remote peer's database and a CouchDB database.

use async_channel::Receiver;
use peerpouch::session::LinkPath;
use peerpouch::*;
use peerpouch::{DbError, Rev};
use serde_json::Value;

use super::driver::{Command, Target};
use super::{PeerError, PeerNode};

/// Where a [`Db`]'s data lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DbKind {
    /// A database of this node (memory, SQLite, ...).
    Local,
    /// The database behind a share we opened.
    Remote,
    /// A CouchDB database over HTTP.
    Http,
}

/// A database of a [`PeerNode`]: local, remote (a peer's share) or HTTP, all with the same
/// methods. Clones name the same database.
///
/// ```
/// use peerpouch::MemoryStore;
/// use peerpouch_smol::{HubSpec, InProcessHub, PeerNode};
/// use serde_json::json;
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// smol::block_on(async {
///     let node = PeerNode::start(HubSpec::InProcess(InProcessHub::new()))?;
///     let db = node.add_db("todo", MemoryStore::new("todo")).await?;
///     let rev = db.put(json!({"_id": "milk", "done": false})).await?;
///     db.put(json!({"_id": "milk", "_rev": rev.to_string(), "done": true})).await?;
///     assert_eq!(db.get("milk").await?["done"], true);
///     assert_eq!(db.info().await?.doc_count, 1);
///     node.shutdown().await;
///     Ok(())
/// })
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct Db {
    node: PeerNode,
    target: Target,
    kind: DbKind,
    name: String,
    /// For a peer's database: the path its link took.
    pub(crate) path: Option<LinkPath>,
    /// For a peer's database: the sharer's certificate fingerprint.
    pub(crate) fingerprint: Option<String>,
    /// The database's identity: a local store's own, a peer's from its hello.
    pub(crate) uuid: Option<String>,
}

/// A live changes feed of a [`Db`] ([`Db::subscribe`]): batches of rows as they happen.
/// Dropping it ends the subscription at once (the node forgets it; see
/// [`PeerNode::stats`](super::PeerNode::stats)). Memory stays bounded: a remote feed whose
/// reader falls 1024 batches behind is ended (`next` gives `None`; resubscribe from the last
/// seq read), a local one simply waits for the reader.
#[derive(Debug)]
pub struct Subscription {
    rows: Receiver<ChangesResponse>,
    stop: Option<(PeerNode, Target, peerpouch::rpc::CallId)>,
    /// A local feed's task ends when this is dropped (its receiver sees the channel close).
    _local_stop: Option<async_channel::Sender<()>>,
}

impl Subscription {
    /// The next batch; `None` when the feed ended (the link closed or the node stopped).
    pub async fn next(&self) -> Option<ChangesResponse> {
        self.rows.recv().await.ok()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.rows.close();
        if let Some((node, Target::Remote(link), call)) = self.stop.take() {
            let _ = node.commands.try_send(Command::Unsubscribe { link, call });
        }
    }
}

impl Db {
    pub(crate) fn new(node: PeerNode, target: Target, kind: DbKind, name: &str) -> Db {
        Db {
            node,
            target,
            kind,
            name: name.to_string(),
            path: None,
            fingerprint: None,
            uuid: None,
        }
    }

    /// For a peer's database, the sharer's certificate fingerprint (canonical, `sha-256
    /// AB:CD:...`), checked by the link's DTLS handshake: compare it with what the sharer's
    /// `peerpouch id` (or [`PeerNode::fingerprint`](super::PeerNode::fingerprint)) shows. `None`
    /// for local and HTTP databases.
    pub fn fingerprint(&self) -> Option<&str> {
        self.fingerprint.as_deref()
    }

    /// The database's stable identity ([`DbInfo::db_uuid`]): a local store's own (a SQLite
    /// file keeps it), a peer's as its sharer's hello gave it. `None` for a CouchDB database
    /// over HTTP and for a share of an older sharer. Replications name the database by it, so
    /// their checkpoints are found again after the sharer restarts or under another share name.
    ///
    /// ```no_run
    /// # smol::block_on(async {
    /// # let node = peerpouch_smol::PeerNode::start(peerpouch_smol::HubSpec::InProcess(peerpouch_smol::InProcessHub::new()))?;
    /// let remote = node.open("notes", serde_json::json!({})).await?;
    /// println!("the share's database is {}", remote.db_uuid().unwrap_or("(unknown)"));
    /// # Ok::<_, peerpouch_smol::PeerError>(()) });
    /// ```
    pub fn db_uuid(&self) -> Option<&str> {
        self.uuid.as_deref()
    }

    /// For a peer's database, the path its link took when it opened: direct (and the candidate
    /// types) or through a TURN relay. `None` for local and HTTP databases.
    ///
    /// ```no_run
    /// # smol::block_on(async {
    /// # let node = peerpouch_smol::PeerNode::start(peerpouch_smol::HubSpec::InProcess(peerpouch_smol::InProcessHub::new()))?;
    /// let remote = node.open("notes", serde_json::json!({})).await?;
    /// println!("link {}", remote.path().expect("a peer's database has a path"));
    /// # Ok::<_, peerpouch_smol::PeerError>(()) });
    /// ```
    pub fn path(&self) -> Option<LinkPath> {
        self.path
    }

    pub(crate) fn node(&self) -> &PeerNode {
        &self.node
    }

    pub(crate) fn target(&self) -> &Target {
        &self.target
    }

    /// Its name (local), the share's name or id (remote), or its URL without credentials
    /// (HTTP).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it lives.
    pub fn kind(&self) -> DbKind {
        self.kind
    }

    /// What replications call it (their checkpoint ids derive from it): its identity when it
    /// has one; otherwise a CouchDB database's URL (as CouchDB's replicator names it), a
    /// local store's name, or, for an older sharer's database, the share id.
    pub(crate) fn replication_name(&self) -> String {
        if let Some(uuid) = &self.uuid {
            return uuid.clone();
        }
        match &self.target {
            Target::Local(n) if self.kind == DbKind::Local => format!("local:{n}"),
            Target::Local(n) => n.clone(),
            Target::Remote(link) => format!("peer:{}", link.share),
        }
    }

    /// Executes one request.
    ///
    /// # Errors
    /// The database's error; [`DbError::Unavailable`] when the link closed or the node stopped.
    pub async fn execute(&self, request: Request) -> Result<Response, DbError> {
        let (tx, rx) = async_channel::bounded(1);
        let stopped = || DbError::Unavailable(PeerError::Stopped.to_string());
        self.node
            .commands
            .send(Command::Exec {
                target: self.target.clone(),
                request,
                reply: tx,
            })
            .await
            .map_err(|_| stopped())?;
        rx.recv().await.map_err(|_| stopped())?
    }

    /// Database information.
    ///
    /// # Errors
    /// As [`Db::execute`].
    pub async fn info(&self) -> Result<DbInfo, DbError> {
        self.execute(Request::Info).await?.into_info()
    }

    /// The winning revision of a document.
    ///
    /// # Errors
    /// [`DbError::NotFound`] when missing or deleted.
    pub async fn get(&self, id: &str) -> Result<Doc, DbError> {
        self.get_with(GetRequest::new(id)).await
    }

    /// A document with options (`rev`, `revs`, `conflicts`, `attachments`, ...).
    ///
    /// # Errors
    /// [`DbError::NotFound`] when the document or revision is not there.
    pub async fn get_with(&self, request: GetRequest) -> Result<Doc, DbError> {
        Ok(self
            .execute(Request::Get(request))
            .await?
            .into_doc_body()?
            .doc)
    }

    /// Writes one document (a new edit); returns its new revision.
    ///
    /// # Errors
    /// [`DbError::Conflict`] when `_rev` is not the current leaf; validation errors.
    pub async fn put(&self, doc: Value) -> Result<Rev, DbError> {
        match self.bulk_docs(vec![doc], true).await?.pop() {
            Some(d) => d.result,
            None => Err(DbError::BadResponse("bulk_docs returned no row".into())),
        }
    }

    /// Writes many documents; each gets its own result.
    ///
    /// # Errors
    /// Only for failures of the whole request.
    pub async fn bulk_docs(
        &self,
        docs: Vec<Value>,
        new_edits: bool,
    ) -> Result<Vec<DocResult>, DbError> {
        Ok(self
            .execute(Request::BulkDocs(BulkDocsRequest { docs, new_edits }))
            .await?
            .into_bulk_docs()?
            .results)
    }

    /// Documents by id.
    ///
    /// # Errors
    /// As [`Db::execute`].
    pub async fn all_docs(&self, request: AllDocsRequest) -> Result<AllDocsResponse, DbError> {
        self.execute(Request::AllDocs(request))
            .await?
            .into_all_docs()
    }

    /// One read of the changes feed.
    ///
    /// # Errors
    /// As [`Db::execute`].
    pub async fn changes(&self, request: ChangesRequest) -> Result<ChangesResponse, DbError> {
        self.execute(Request::Changes(request))
            .await?
            .into_changes()
    }

    /// Which revisions are missing here.
    ///
    /// # Errors
    /// As [`Db::execute`].
    pub async fn revs_diff(&self, request: RevsDiffRequest) -> Result<RevsDiffResponse, DbError> {
        self.execute(Request::RevsDiff(request))
            .await?
            .into_revs_diff()
    }

    /// Many revisions at once.
    ///
    /// # Errors
    /// As [`Db::execute`].
    pub async fn bulk_get(&self, request: BulkGetRequest) -> Result<BulkGetResponse, DbError> {
        self.execute(Request::BulkGet(request))
            .await?
            .into_bulk_get()
    }

    /// Several leaves of one document (`open_revs`).
    ///
    /// # Errors
    /// [`DbError::NotFound`] when the document is unknown.
    pub async fn open_revs(&self, request: OpenRevsRequest) -> Result<Vec<OpenRev>, DbError> {
        Ok(self
            .execute(Request::OpenRevs(request))
            .await?
            .into_open_revs()?
            .revs)
    }

    /// An attachment's bytes (binary over a peer link).
    ///
    /// # Errors
    /// [`DbError::NotFound`].
    pub async fn get_attachment(&self, id: &str, name: &str) -> Result<AttachmentData, DbError> {
        self.execute(Request::GetAttachment(AttachmentRequest {
            id: id.into(),
            name: name.into(),
            rev: None,
        }))
        .await?
        .into_attachment()
    }

    /// A range of an attachment's bytes, with its metadata: how to read an attachment of any
    /// size without holding it whole (read on from `offset + data.len()` until `length`). The
    /// server sends at most a few of its chunks per call, whatever `len` asks.
    ///
    /// # Errors
    /// [`DbError::NotFound`]; [`DbError::NotImplemented`] from a peer too old to serve ranges
    /// (use [`Db::get_attachment`]).
    pub async fn read_attachment(
        &self,
        id: &str,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<AttachmentPart, DbError> {
        self.execute(Request::ReadAttachment(AttachmentPartRequest::of_doc(
            id, name, offset, len,
        )))
        .await?
        .into_attachment_part()
    }

    /// A `_local` document.
    ///
    /// # Errors
    /// [`DbError::NotFound`].
    pub async fn get_local(&self, id: &str) -> Result<Doc, DbError> {
        Ok(self
            .execute(Request::GetLocal(LocalRequest { id: id.into() }))
            .await?
            .into_doc_body()?
            .doc)
    }

    /// Writes a `_local` document.
    ///
    /// # Errors
    /// [`DbError::Conflict`] on a stale `_rev`.
    pub async fn put_local(&self, id: &str, doc: Doc) -> Result<Rev, DbError> {
        self.execute(Request::PutLocal(PutLocalRequest { id: id.into(), doc }))
            .await?
            .into_written()?
            .result
    }

    /// Deletes a `_local` document.
    ///
    /// # Errors
    /// [`DbError::NotFound`] or [`DbError::Conflict`].
    pub async fn delete_local(&self, id: &str, rev: Option<Rev>) -> Result<Rev, DbError> {
        self.execute(Request::DeleteLocal(DeleteLocalRequest {
            id: id.into(),
            rev,
        }))
        .await?
        .into_written()?
        .result
    }

    /// Live changes after `request.since`, as they happen: a remote database pushes them over
    /// the link; a local or HTTP one is long-polled.
    ///
    /// # Errors
    /// [`PeerError::Stopped`], or [`PeerError::Node`] when the link is gone.
    pub async fn subscribe(&self, request: ChangesRequest) -> Result<Subscription, PeerError> {
        let (tx, rx) = async_channel::bounded(super::driver::SUBSCRIPTION_BACKLOG);
        match &self.target {
            Target::Remote(link) => {
                let (reply, answer) = async_channel::bounded(1);
                self.node
                    .commands
                    .send(Command::Subscribe {
                        link: link.clone(),
                        request,
                        rows: tx,
                        reply,
                    })
                    .await
                    .map_err(|_| PeerError::Stopped)?;
                let call = answer.recv().await.map_err(|_| PeerError::Stopped)??;
                Ok(Subscription {
                    rows: rx,
                    stop: Some((self.node.clone(), self.target.clone(), call)),
                    _local_stop: None,
                })
            }
            Target::Local(_) => {
                let db = self.clone();
                let mut request = request;
                request.feed = Feed::Longpoll;
                let (stop_tx, stop_rx) = async_channel::bounded::<()>(1);
                smol::spawn(async move {
                    loop {
                        // The reader going ends the wait at once, not at the next change.
                        let next = smol::future::or(
                            async { Some(db.changes(request.clone()).await) },
                            async {
                                let _ = stop_rx.recv().await;
                                None
                            },
                        )
                        .await;
                        let batch = match next {
                            Some(Ok(b)) => b,
                            Some(Err(e)) => {
                                tracing::debug!(error = %e, "local subscription ended");
                                return;
                            }
                            None => {
                                // Our longpoll's reply channel is closed now: the node drops it.
                                let _ = db.node.commands.try_send(Command::ForgetClosed);
                                return;
                            }
                        };
                        request.since = batch.last_seq.clone();
                        if !batch.results.is_empty() && tx.send(batch).await.is_err() {
                            return;
                        }
                        if tx.is_closed() {
                            return;
                        }
                    }
                })
                .detach();
                Ok(Subscription {
                    rows: rx,
                    stop: None,
                    _local_stop: Some(stop_tx),
                })
            }
        }
    }

    /// Waits until the link behind a remote database closes and says why (the sharer
    /// unshared, went silent, closed it, ...). Never returns for other kinds.
    pub async fn closed(&self) -> String {
        let Target::Remote(link) = &self.target else {
            return std::future::pending().await;
        };
        let (tx, rx) = async_channel::bounded(1);
        let cmd = Command::WatchLink {
            link: link.clone(),
            reply: tx,
        };
        if self.node.commands.send(cmd).await.is_err() {
            return PeerError::Stopped.to_string();
        }
        rx.recv()
            .await
            .unwrap_or_else(|_| PeerError::Stopped.to_string())
    }

    /// Closes the link behind a remote database (no effect on other kinds).
    pub async fn close(&self) {
        if let Target::Remote(link) = &self.target {
            let _ = self
                .node
                .commands
                .send(Command::CloseLink { link: link.clone() })
                .await;
        }
    }
}
