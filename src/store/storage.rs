//! The storage interface: what a database engine keeps, with no CouchDB logic of its own.
//!
//! The request logic (revision trees, winners, conflicts, `new_edits`, attachments by digest,
//! `_local` documents, changes, `all_docs`, `revs_diff`, `bulk_get`) is written once, in
//! [`execute`](super::execute), over this trait. An engine only finds documents (by id, in id
//! order, in sequence order), attachment bytes by digest and `_local` documents, and applies one
//! [`Batch`] atomically. [`MemoryStore`](super::MemoryStore) is the in-memory engine; durable
//! engines (the SQLite store) implement the same trait over a file.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use crate::doc::AttMeta;
use crate::error::DbError;
use crate::ops::Doc;
use crate::rev::write_canonical_map;
use crate::revtree::RevTree;

use super::Staging;

/// A document's own fields (no `_`-members) as compact JSON text, parsed only when read.
///
/// Held parsed, a body of ~1 KiB of JSON took ~2× its size in memory (a `serde_json::Value`
/// per field, a map node per object); as text it takes its length. The text is canonical (keys
/// sorted, compact: what a new edit's revision hash is computed over, so writing it once serves
/// both). Reads parse it again ([`Fields::to_doc`]). Engines that write bodies down write this
/// text as it is ([`Fields::json`]) and read it back with [`Fields::from_json`].
///
/// ```
/// use peerpouch::store::Fields;
/// use serde_json::json;
///
/// let doc = json!({"text": "hello", "n": 1});
/// let fields = Fields::from_doc(doc.as_object().unwrap());
/// assert_eq!(fields.json(), r#"{"n":1,"text":"hello"}"#);
/// assert_eq!(&fields.to_doc().unwrap(), doc.as_object().unwrap());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fields(Box<str>);

impl Fields {
    /// The canonical JSON of `doc`.
    pub fn from_doc(doc: &Doc) -> Fields {
        Fields::from_doc_in(doc, &mut Vec::new())
    }

    /// [`Fields::from_doc`] written through `scratch` first, so the text is allocated once at
    /// its size (a buffer growing to ~1 KiB took four allocations of the larger kinds).
    pub(crate) fn from_doc_in(doc: &Doc, scratch: &mut Vec<u8>) -> Fields {
        scratch.clear();
        write_canonical_map(scratch, doc);
        // serde_json writes UTF-8 only; checking it again is cheap beside writing it.
        Fields(std::str::from_utf8(scratch).expect("JSON is UTF-8").into())
    }

    /// Fields from text that [`Fields::json`] gave, written down and read back by an engine.
    /// It is not checked here: text that is not a JSON object makes [`Fields::to_doc`] fail.
    pub fn from_json(text: &str) -> Fields {
        Fields(text.into())
    }

    /// The fields, parsed.
    ///
    /// # Errors
    /// [`DbError`] (status 500) when the text is not a JSON object, which only an engine's
    /// damaged record can make.
    pub fn to_doc(&self) -> Result<Doc, DbError> {
        serde_json::from_str(&self.0).map_err(|e| DbError::Other {
            status: 500,
            error: "internal".into(),
            reason: format!("a stored body does not parse: {e}"),
        })
    }

    /// The canonical JSON text.
    pub fn json(&self) -> &str {
        &self.0
    }
}

/// A leaf revision's content: its fields (no `_`-members) and its attachments' metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredBody {
    /// The document's own fields.
    pub fields: Fields,
    /// Attachment name to metadata; the bytes are held once per digest by the store.
    pub atts: BTreeMap<String, AttMeta>,
}

/// One document as an engine keeps it: the sequence of its last change and its revision tree
/// (bodies on leaves only).
#[derive(Clone, Debug, Default)]
pub struct StoredDoc {
    /// The sequence number of the document's latest change.
    pub seq: u64,
    /// Its revision tree.
    pub tree: RevTree<Arc<StoredBody>>,
}

/// The counters a database keeps beside its documents.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    /// The newest sequence number (0 for an empty database).
    pub update_seq: u64,
    /// Documents whose winner is not deleted.
    pub doc_count: u64,
    /// Documents whose winner is a tombstone.
    pub del_count: u64,
    /// How many document ids were generated (for writes without `_id`).
    pub ids_generated: u64,
}

/// What an engine knows of attachment bytes without reading them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// The content type the bytes first arrived with.
    pub content_type: String,
    /// Their length in bytes.
    pub length: u64,
}

/// Everything one write request changes, applied by [`Storage::commit`] all at once or not at
/// all.
#[derive(Clone, Debug, Default)]
pub struct Batch {
    /// The new state of every document the request changed.
    pub docs: BTreeMap<String, StoredDoc>,
    /// Attachment bytes the engine did not hold before: digest to (content type, bytes).
    pub blobs: BTreeMap<String, (String, Bytes)>,
    /// Changes to the number of leaf bodies referring to each digest; bytes whose count falls to
    /// zero are deleted.
    pub blob_refs: BTreeMap<String, i64>,
    /// Attachments received in ranges ([`Staging`]) that this batch's documents refer to: the
    /// engine makes their staged bytes attachments (unless it holds the digest already, written
    /// meanwhile by another process) before it counts [`Batch::blob_refs`].
    pub staged: BTreeMap<String, BlobInfo>,
    /// `_local` documents written (`Some((rev, body))`) or deleted (`None`), ids with their
    /// `_local/` prefix.
    pub locals: BTreeMap<String, Option<(u64, Doc)>>,
    /// The counters after the request.
    pub counters: Counters,
}

impl Batch {
    /// Whether the batch changes nothing but, possibly, the counters it was started with.
    pub fn is_empty(&self) -> bool {
        self.docs.is_empty()
            && self.locals.is_empty()
            && self.blobs.is_empty()
            && self.staged.is_empty()
    }
}

/// Visits documents during a scan: `Ok(true)` asks for the next one, `Ok(false)` ends the scan,
/// an error ends it and is returned by the scan.
pub type Visit<'v> = dyn FnMut(&str, &StoredDoc) -> Result<bool, DbError> + 'v;

/// A database engine: documents, attachment bytes, `_local` documents and counters, with no
/// request logic (see the module docs).
///
/// Reads take `&self`; [`Storage::commit`] applies one request's [`Batch`]. A request is
/// bracketed by [`Storage::begin_read`]/[`Storage::end_read`] or, for a write,
/// [`Storage::begin_write`] and then [`Storage::commit`] or [`Storage::rollback`], so an
/// engine shared with other processes can read a consistent snapshot and write under its lock.
/// Errors are the engine's own failures (I/O, a damaged record) as [`DbError`]s, status 500.
///
/// ```
/// use peerpouch::store::Storage;
/// use peerpouch::{Database, MemoryStore};
/// use serde_json::json;
///
/// let mut db = MemoryStore::new("notes");
/// db.put(json!({"_id": "a", "n": 1})).unwrap();
/// let doc = db.doc("a").unwrap().unwrap();
/// assert_eq!(doc.seq, 1);
/// assert_eq!(db.counters().unwrap().doc_count, 1);
/// ```
pub trait Storage {
    /// The database name.
    fn name(&self) -> &str;

    /// The seed of generated document ids.
    fn id_seed(&self) -> u64;

    /// How many ancestors each leaf keeps.
    fn revs_limit(&self) -> usize;

    /// The database's stable identity ([`crate::DbInfo::db_uuid`]).
    fn uuid(&self) -> String;

    /// The current counters.
    ///
    /// # Errors
    /// The engine's failure.
    fn counters(&self) -> Result<Counters, DbError>;

    /// One document by id.
    ///
    /// # Errors
    /// The engine's failure.
    fn doc(&self, id: &str) -> Result<Option<Cow<'_, StoredDoc>>, DbError>;

    /// Visits the documents whose ids are within `(lo, hi)`, in id order (reversed when
    /// `descending`), until `visit` says stop. Without `bodies` the visited trees may lack
    /// their leaves' bodies (an engine may then skip decoding them); revisions, parents and
    /// deletions are always there.
    ///
    /// # Errors
    /// The engine's failure, or the error `visit` returned.
    fn scan_ids(
        &self,
        lo: Bound<&str>,
        hi: Bound<&str>,
        descending: bool,
        bodies: bool,
        visit: &mut Visit<'_>,
    ) -> Result<(), DbError>;

    /// How many documents with ids within `(lo, hi)` have a winner that is not deleted.
    ///
    /// # Errors
    /// The engine's failure.
    fn count_live(&self, lo: Bound<&str>, hi: Bound<&str>) -> Result<u64, DbError>;

    /// Visits the documents whose sequence is above `since`, in sequence order (reversed when
    /// `descending`), until `visit` says stop; `bodies` as in [`Storage::scan_ids`].
    ///
    /// # Errors
    /// The engine's failure, or the error `visit` returned.
    fn scan_seqs(
        &self,
        since: u64,
        descending: bool,
        bodies: bool,
        visit: &mut Visit<'_>,
    ) -> Result<(), DbError>;

    /// What is known of the bytes of `digest`, if held.
    ///
    /// # Errors
    /// The engine's failure.
    fn blob_info(&self, digest: &str) -> Result<Option<BlobInfo>, DbError>;

    /// The bytes of `digest`, if held.
    ///
    /// # Errors
    /// The engine's failure.
    fn blob(&self, digest: &str) -> Result<Option<Bytes>, DbError>;

    /// Up to `len` bytes of `digest` from byte `offset` on (fewer at the end, none past it),
    /// if held: how attachments are served in chunks without holding them whole. The default
    /// slices [`Storage::blob`]; engines that keep bytes on disk read only the range.
    ///
    /// # Errors
    /// The engine's failure.
    fn blob_chunk(&self, digest: &str, offset: u64, len: usize) -> Result<Option<Bytes>, DbError> {
        Ok(self.blob(digest)?.map(|b| {
            let start = usize::try_from(offset).unwrap_or(usize::MAX).min(b.len());
            b.slice(start..start.saturating_add(len).min(b.len()))
        }))
    }

    /// How many distinct attachment contents are held.
    ///
    /// # Errors
    /// The engine's failure.
    fn blob_count(&self) -> Result<u64, DbError>;

    /// The bookkeeping of attachments being received in ranges, for engines that take them
    /// ([`Storage::stage_bytes`]); `None` (the default) for one that does not.
    fn staging(&self) -> Option<&Staging> {
        None
    }

    /// [`Storage::staging`], to change.
    fn staging_mut(&mut self) -> Option<&mut Staging> {
        None
    }

    /// Keeps a range of an attachment being received: `offset` is where the last range of
    /// `digest` ended, or 0 after [`Storage::unstage`]. Engines that keep bytes on disk write
    /// them there, not in memory. The default refuses (the engine takes attachments whole).
    ///
    /// # Errors
    /// The engine's failure, or [`DbError::NotImplemented`].
    fn stage_bytes(&mut self, _digest: &str, _offset: u64, _data: &[u8]) -> Result<(), DbError> {
        Err(DbError::NotImplemented(
            "this database takes attachments whole, not in ranges".into(),
        ))
    }

    /// Drops what is held of an attachment being received.
    fn unstage(&mut self, _digest: &str) {}

    /// A `_local` document's revision number and body (`id` with its `_local/` prefix).
    ///
    /// # Errors
    /// The engine's failure.
    fn local(&self, id: &str) -> Result<Option<(u64, Doc)>, DbError>;

    /// Starts a read request: the reads until [`Storage::end_read`] see one state.
    ///
    /// # Errors
    /// The engine's failure.
    fn begin_read(&mut self) -> Result<(), DbError> {
        Ok(())
    }

    /// Ends a read request.
    fn end_read(&mut self) {}

    /// Starts a write request: the reads until [`Storage::commit`] or [`Storage::rollback`]
    /// see the state the batch will be applied to.
    ///
    /// # Errors
    /// The engine's failure (for example a lock that could not be had in time).
    fn begin_write(&mut self) -> Result<(), DbError> {
        Ok(())
    }

    /// Applies a write request's changes, all or nothing, and ends the write.
    ///
    /// # Errors
    /// The engine's failure; then nothing of the batch was applied.
    fn commit(&mut self, batch: Batch) -> Result<(), DbError>;

    /// Ends a write request that changed nothing.
    fn rollback(&mut self) {}
}
