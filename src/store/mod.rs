//! Databases: the [`Database`] trait, the [`Storage`] interface that engines implement, the
//! CouchDB semantics written once over it ([`execute`]), and the in-memory engine
//! [`MemoryStore`].

mod memory;
mod semantics;
mod staging;
mod storage;

pub use memory::{MemoryStore, DEFAULT_REVS_LIMIT};
pub use semantics::{execute, tree_shapes, TreeShapes};
pub use staging::{Accepted, Staging, MAX_STAGED_BYTES, MAX_UPLOADS};
pub use storage::{Batch, BlobInfo, Counters, Fields, Storage, StoredBody, StoredDoc, Visit};

use serde_json::Value;

use crate::error::DbError;
use crate::ops::*;
use crate::rev::Rev;

/// A database that answers [`Request`]s synchronously: the in-memory store (and durable stores).
///
/// [`Database::execute`] is the one required method; the others are typed conveniences over it.
/// Remote databases (a peer, a CouchDB server) answer asynchronously and are driven through the
/// same [`Request`]/[`Response`] types by the runtimes instead.
///
/// ```
/// use peerpouch::{Database, MemoryStore};
/// use serde_json::json;
///
/// let mut db = MemoryStore::new("notes");
/// let rev = db.put(json!({"_id": "a", "text": "hello"})).unwrap();
/// let doc = db.get("a").unwrap();
/// assert_eq!(doc["text"], "hello");
/// assert_eq!(doc["_rev"], rev.to_string());
/// ```
pub trait Database {
    /// Executes one request.
    ///
    /// # Errors
    /// The CouchDB-shaped error the operation ends with; per-document write errors are in the
    /// [`BulkDocsResponse`] instead.
    fn execute(&mut self, request: Request) -> Result<Response, DbError>;

    /// Whether someone else (another process with the same file open) changed the database
    /// since the last call. Drivers ask it while longpoll changes requests wait, so they see
    /// writes they did not make; a database only this object writes answers `false` (the
    /// default).
    ///
    /// ```
    /// use peerpouch::{Database, MemoryStore};
    ///
    /// let mut db = MemoryStore::new("notes");
    /// assert!(!db.changed_elsewhere());
    /// ```
    fn changed_elsewhere(&mut self) -> bool {
        false
    }

    /// Database information.
    ///
    /// # Errors
    /// As [`Database::execute`].
    fn info(&mut self) -> Result<DbInfo, DbError> {
        self.execute(Request::Info)?.into_info()
    }

    /// The winning revision of a document.
    ///
    /// # Errors
    /// [`DbError::NotFound`] with reason `missing` or `deleted`.
    fn get(&mut self, id: &str) -> Result<Doc, DbError> {
        self.get_with(GetRequest::new(id))
    }

    /// A document with options (a specific `rev`, `revs`, `conflicts`, `attachments`, ...).
    ///
    /// # Errors
    /// [`DbError::NotFound`] when the document or revision is not there.
    fn get_with(&mut self, request: GetRequest) -> Result<Doc, DbError> {
        Ok(self.execute(Request::Get(request))?.into_doc_body()?.doc)
    }

    /// Writes one document (new edit) and returns its new revision.
    ///
    /// # Errors
    /// [`DbError::Conflict`] when `_rev` is not the current leaf; validation errors for bad docs.
    fn put(&mut self, doc: Value) -> Result<Rev, DbError> {
        let mut r = self.bulk_docs(vec![doc], true)?;
        match r.pop() {
            Some(d) => d.result,
            None => Err(DbError::BadResponse("bulk_docs returned no row".into())),
        }
    }

    /// Writes many documents; each gets its own result.
    ///
    /// # Errors
    /// Only for failures of the whole request; per-document errors are in the results.
    fn bulk_docs(&mut self, docs: Vec<Value>, new_edits: bool) -> Result<Vec<DocResult>, DbError> {
        Ok(self
            .execute(Request::BulkDocs(BulkDocsRequest { docs, new_edits }))?
            .into_bulk_docs()?
            .results)
    }

    /// Documents by id.
    ///
    /// # Errors
    /// [`DbError::BadRequest`] for an impossible key range.
    fn all_docs(&mut self, request: AllDocsRequest) -> Result<AllDocsResponse, DbError> {
        self.execute(Request::AllDocs(request))?.into_all_docs()
    }

    /// The changes feed.
    ///
    /// # Errors
    /// [`DbError::BadRequest`] for a `since` this database did not issue.
    fn changes(&mut self, request: ChangesRequest) -> Result<ChangesResponse, DbError> {
        self.execute(Request::Changes(request))?.into_changes()
    }

    /// Which revisions are missing here.
    ///
    /// # Errors
    /// As [`Database::execute`].
    fn revs_diff(&mut self, request: RevsDiffRequest) -> Result<RevsDiffResponse, DbError> {
        self.execute(Request::RevsDiff(request))?.into_revs_diff()
    }

    /// Many revisions at once.
    ///
    /// # Errors
    /// As [`Database::execute`].
    fn bulk_get(&mut self, request: BulkGetRequest) -> Result<BulkGetResponse, DbError> {
        self.execute(Request::BulkGet(request))?.into_bulk_get()
    }

    /// Several leaves of one document.
    ///
    /// # Errors
    /// [`DbError::NotFound`] when the document is unknown.
    fn open_revs(&mut self, request: OpenRevsRequest) -> Result<Vec<OpenRev>, DbError> {
        Ok(self
            .execute(Request::OpenRevs(request))?
            .into_open_revs()?
            .revs)
    }

    /// An attachment's bytes.
    ///
    /// # Errors
    /// [`DbError::NotFound`] when the document or attachment is not there.
    fn get_attachment(&mut self, id: &str, name: &str) -> Result<AttachmentData, DbError> {
        self.execute(Request::GetAttachment(AttachmentRequest {
            id: id.into(),
            name: name.into(),
            rev: None,
        }))?
        .into_attachment()
    }

    /// A range of an attachment's bytes, with its metadata (`length` is the whole
    /// attachment's): how to read an attachment of any size a range at a time.
    ///
    /// ```
    /// use peerpouch::{Database, MemoryStore};
    /// use serde_json::json;
    ///
    /// let mut db = MemoryStore::new("db");
    /// db.put(json!({"_id": "a", "_attachments": {"t.txt": {
    ///     "content_type": "text/plain", "data": "aGVsbG8gd29ybGQ="}}})).unwrap();
    /// let part = db.read_attachment("a", "t.txt", 6, 100).unwrap();
    /// assert_eq!((&part.data[..], part.length), (&b"world"[..], 11));
    /// ```
    ///
    /// # Errors
    /// [`DbError::NotFound`] when the document or attachment is not there;
    /// [`DbError::NotImplemented`] from a database that serves attachments only whole.
    fn read_attachment(
        &mut self,
        id: &str,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<AttachmentPart, DbError> {
        self.execute(Request::ReadAttachment(AttachmentPartRequest::of_doc(
            id, name, offset, len,
        )))?
        .into_attachment_part()
    }

    /// A `_local` document.
    ///
    /// # Errors
    /// [`DbError::NotFound`] when there is none.
    fn get_local(&mut self, id: &str) -> Result<Doc, DbError> {
        Ok(self
            .execute(Request::GetLocal(LocalRequest { id: id.into() }))?
            .into_doc_body()?
            .doc)
    }

    /// Writes a `_local` document; `doc._rev` must be the current one if it exists.
    ///
    /// # Errors
    /// [`DbError::Conflict`] on a stale `_rev`.
    fn put_local(&mut self, id: &str, doc: Doc) -> Result<Rev, DbError> {
        self.execute(Request::PutLocal(PutLocalRequest { id: id.into(), doc }))?
            .into_written()?
            .result
    }

    /// Deletes a `_local` document.
    ///
    /// # Errors
    /// [`DbError::NotFound`] or [`DbError::Conflict`].
    fn delete_local(&mut self, id: &str, rev: Option<Rev>) -> Result<Rev, DbError> {
        self.execute(Request::DeleteLocal(DeleteLocalRequest {
            id: id.into(),
            rev,
        }))?
        .into_written()?
        .result
    }
}
