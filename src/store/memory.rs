//! The in-memory engine: documents, attachment bytes and `_local` documents in ordered maps.
//! The request logic is the shared one ([`super::execute`]).

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use bytes::Bytes;

use super::storage::{Batch, BlobInfo, Counters, Storage, StoredBody, StoredDoc, Visit};
use super::{Database, Staging};
use crate::error::DbError;
use crate::ops::*;
use crate::rev::{md5_hex, Rev};
use crate::revtree::RevTree;

/// CouchDB's default `revs_limit`.
pub const DEFAULT_REVS_LIMIT: usize = 1000;

#[derive(Debug)]
struct Blob {
    data: Bytes,
    /// The content type it first arrived with (for stubs that do not say).
    content_type: String,
    refs: u64,
}

#[derive(Debug)]
struct LocalEntry {
    rev: u64,
    body: Doc,
}

/// A CouchDB-semantics database held in memory: the embedded default store.
///
/// It keeps revision trees with branches and tombstones, picks winners as CouchDB does, stores
/// each attachment's bytes once per digest (reference-counted), keeps `_local` documents apart,
/// and numbers changes with an integer sequence. Only leaf revisions keep bodies (automatic
/// compaction). It does no IO and is fully deterministic: the same operations give the same
/// revisions, sequences and generated ids.
///
/// ```
/// use peerpouch::{Database, MemoryStore, DbError};
/// use serde_json::json;
///
/// let mut db = MemoryStore::new("db");
/// let r1 = db.put(json!({"_id": "doc", "n": 1})).unwrap();
/// // Editing needs the current revision...
/// assert_eq!(db.put(json!({"_id": "doc", "n": 2})), Err(DbError::Conflict));
/// let r2 = db.put(json!({"_id": "doc", "_rev": r1.to_string(), "n": 2})).unwrap();
/// assert_eq!(r2.pos, 2);
/// assert_eq!(db.info().unwrap().doc_count, 1);
/// ```
#[derive(Debug)]
pub struct MemoryStore {
    name: String,
    /// Ids are shared with `by_seq` (one allocation per id, not two).
    docs: BTreeMap<Arc<str>, StoredDoc>,
    by_seq: BTreeMap<u64, Arc<str>>,
    counters: Counters,
    local: BTreeMap<String, LocalEntry>,
    blobs: BTreeMap<String, Blob>,
    /// Attachments being received in ranges: the bookkeeping and the bytes so far.
    staging: Staging,
    staged: BTreeMap<String, Vec<u8>>,
    revs_limit: usize,
    id_seed: u64,
    /// Set by [`MemoryStore::with_uuid`]; otherwise derived from the name and the id seed.
    uuid: Option<String>,
}

impl MemoryStore {
    /// An empty database called `name`.
    ///
    /// Ids generated for documents written without `_id` derive from the name; use
    /// [`MemoryStore::with_id_seed`] with a random seed when several stores of one name may
    /// generate ids that later meet through replication.
    pub fn new(name: impl Into<String>) -> MemoryStore {
        MemoryStore {
            name: name.into(),
            docs: BTreeMap::new(),
            by_seq: BTreeMap::new(),
            counters: Counters::default(),
            local: BTreeMap::new(),
            blobs: BTreeMap::new(),
            staging: Staging::default(),
            staged: BTreeMap::new(),
            revs_limit: DEFAULT_REVS_LIMIT,
            id_seed: 0,
            uuid: None,
        }
    }

    /// Sets the seed for generated document ids (drivers pass OS randomness, tests a constant).
    pub fn with_id_seed(mut self, seed: u64) -> MemoryStore {
        self.id_seed = seed;
        self
    }

    /// Gives the database the identity `uuid` ([`DbInfo::db_uuid`]), as a durable store does
    /// with the one it keeps.
    ///
    /// Without it the identity derives from the name and the id seed
    /// ([`MemoryStore::with_id_seed`]): a driver that seeds from the OS gets a fresh identity
    /// per store, tests get a fixed one. Stores of one name and seed then share an identity,
    /// and so do their replications' checkpoint documents: that is safe (a checkpoint counts
    /// only when both databases hold it, and one lost to another writer is skipped, not
    /// fatal), but many peers each pulling one share into `MemoryStore::new("notes")` take
    /// turns overwriting one checkpoint on the sharer and lose the resuming that a real
    /// identity gives. Give each its own.
    ///
    /// ```
    /// use peerpouch::{Database, MemoryStore};
    ///
    /// let mut db = MemoryStore::new("notes").with_uuid("0f8fad5bd9cb469fa16570867728950e")?;
    /// assert_eq!(db.info()?.db_uuid.as_deref(), Some("0f8fad5bd9cb469fa16570867728950e"));
    /// # Ok::<_, peerpouch::DbError>(())
    /// ```
    ///
    /// # Errors
    /// [`DbError::BadRequest`] when `uuid` is not a valid identity
    /// ([`crate::is_valid_db_uuid`]: 1 to 128 visible ASCII characters).
    pub fn with_uuid(mut self, uuid: impl Into<String>) -> Result<MemoryStore, DbError> {
        let uuid = uuid.into();
        if !is_valid_db_uuid(&uuid) {
            return Err(DbError::BadRequest(format!(
                "invalid database uuid {:?}: use 1 to {MAX_DB_UUID_LEN} visible ASCII characters, \
                 such as 32 hex digits",
                uuid.chars().take(40).collect::<String>()
            )));
        }
        self.uuid = Some(uuid);
        Ok(self)
    }

    /// The database's stable identity (see [`MemoryStore::with_uuid`]): 32 hex digits unless
    /// one was given.
    pub fn uuid(&self) -> String {
        match &self.uuid {
            Some(u) => u.clone(),
            None => {
                md5_hex(format!("peerpouch-db-uuid\0{}\0{}", self.id_seed, self.name).as_bytes())
            }
        }
    }

    /// Sets how many ancestors each leaf keeps (CouchDB's `revs_limit`, default 1000).
    pub fn with_revs_limit(mut self, limit: usize) -> MemoryStore {
        self.revs_limit = limit.max(1);
        self
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The newest sequence number (0 for an empty database). Drivers use it to hold
    /// [`Feed::Longpoll`] changes requests until something newer is written.
    pub fn update_seq(&self) -> u64 {
        self.counters.update_seq
    }

    /// Distinct attachment contents held (each digest once, however many revisions use it).
    pub fn attachment_blobs(&self) -> usize {
        self.blobs.len()
    }

    /// The revision tree shape of every document (`(rev, parent, deleted leaf)` sets), for tests
    /// that compare replicas.
    pub fn tree_shapes(&self) -> BTreeMap<String, BTreeSet<(Rev, Option<Rev>, bool)>> {
        self.docs
            .iter()
            .map(|(id, e)| (id.to_string(), e.tree.shape()))
            .collect()
    }

    /// One document's stored state (its sequence and revision tree), for durable stores that
    /// write it down ([`MemoryStore::restore_doc`] puts it back).
    pub fn stored_doc(&self, id: &str) -> Option<(u64, &RevTree<Arc<StoredBody>>)> {
        self.docs.get(id).map(|e| (e.seq, &e.tree))
    }

    /// The bytes and first content type held for an attachment digest.
    pub fn stored_blob(&self, digest: &str) -> Option<(&str, &[u8])> {
        self.blobs
            .get(digest)
            .map(|b| (b.content_type.as_str(), &b.data[..]))
    }

    /// A `_local` document's revision number and body (`id` with its `_local/` prefix).
    pub fn stored_local(&self, id: &str) -> Option<(u64, &Doc)> {
        self.local.get(id).map(|e| (e.rev, &e.body))
    }

    /// How many ids this store has generated (the counter behind generated ids).
    pub fn ids_generated(&self) -> u64 {
        self.counters.ids_generated
    }

    /// Puts back attachment bytes written down earlier; call before the documents that use them.
    pub fn restore_blob(&mut self, digest: String, content_type: String, data: Vec<u8>) {
        self.blobs.entry(digest).or_insert(Blob {
            data: Bytes::from(data),
            content_type,
            refs: 0,
        });
    }

    /// Puts back a document written down from [`MemoryStore::stored_doc`]: counts, the changes
    /// feed and attachment references follow from it, and `update_seq` is the highest seq seen.
    ///
    /// # Errors
    /// [`DbError::BadRequest`] when the id is taken or `seq` is 0 or already used: the state
    /// being restored is not one a store wrote.
    pub fn restore_doc(
        &mut self,
        id: String,
        seq: u64,
        tree: RevTree<Arc<StoredBody>>,
    ) -> Result<(), DbError> {
        if tree.is_empty() || seq == 0 || self.by_seq.contains_key(&seq) {
            return Err(DbError::BadRequest(format!(
                "cannot restore {id:?} at seq {seq}: empty tree or seq taken"
            )));
        }
        if self.docs.contains_key(id.as_str()) {
            return Err(DbError::BadRequest(format!("{id:?} is restored twice")));
        }
        for body in tree.bodies() {
            for m in body.atts.values() {
                if let Some(blob) = self.blobs.get_mut(&m.digest) {
                    blob.refs += 1;
                }
            }
        }
        if tree.is_deleted(tree.winner()) {
            self.counters.del_count += 1;
        } else {
            self.counters.doc_count += 1;
        }
        let id: Arc<str> = id.into();
        self.by_seq.insert(seq, id.clone());
        self.counters.update_seq = self.counters.update_seq.max(seq);
        self.docs.insert(id, StoredDoc { seq, tree });
        Ok(())
    }

    /// Puts back a `_local` document (`id` with its `_local/` prefix) at revision number `rev`.
    pub fn restore_local(&mut self, id: String, rev: u64, body: Doc) {
        self.local.insert(id, LocalEntry { rev, body });
    }

    /// Puts back the generated-ids counter from [`MemoryStore::ids_generated`].
    pub fn restore_ids_generated(&mut self, n: u64) {
        self.counters.ids_generated = n;
    }

    /// Drops attachment bytes no restored document refers to; returns how many.
    pub fn drop_unreferenced_blobs(&mut self) -> usize {
        let before = self.blobs.len();
        self.blobs.retain(|_, b| b.refs > 0);
        before - self.blobs.len()
    }
}

impl Storage for MemoryStore {
    fn name(&self) -> &str {
        &self.name
    }

    fn id_seed(&self) -> u64 {
        self.id_seed
    }

    fn revs_limit(&self) -> usize {
        self.revs_limit
    }

    fn uuid(&self) -> String {
        MemoryStore::uuid(self)
    }

    fn counters(&self) -> Result<Counters, DbError> {
        Ok(self.counters)
    }

    fn doc(&self, id: &str) -> Result<Option<Cow<'_, StoredDoc>>, DbError> {
        Ok(self.docs.get(id).map(Cow::Borrowed))
    }

    fn scan_ids(
        &self,
        lo: Bound<&str>,
        hi: Bound<&str>,
        descending: bool,
        _bodies: bool,
        visit: &mut Visit<'_>,
    ) -> Result<(), DbError> {
        let range = self.docs.range::<str, _>((lo, hi));
        if descending {
            for (id, e) in range.rev() {
                if !visit(id, e)? {
                    break;
                }
            }
        } else {
            for (id, e) in range {
                if !visit(id, e)? {
                    break;
                }
            }
        }
        Ok(())
    }

    fn count_live(&self, lo: Bound<&str>, hi: Bound<&str>) -> Result<u64, DbError> {
        Ok(self
            .docs
            .range::<str, _>((lo, hi))
            .filter(|(_, e)| !e.tree.is_deleted(e.tree.winner()))
            .count() as u64)
    }

    fn scan_seqs(
        &self,
        since: u64,
        descending: bool,
        _bodies: bool,
        visit: &mut Visit<'_>,
    ) -> Result<(), DbError> {
        let range = self
            .by_seq
            .range((Bound::Excluded(since), Bound::Unbounded));
        let mut step = |id: &Arc<str>| match self.docs.get(id) {
            Some(e) => visit(id, e),
            None => Ok(true),
        };
        if descending {
            for (_, id) in range.rev() {
                if !step(id)? {
                    break;
                }
            }
        } else {
            for (_, id) in range {
                if !step(id)? {
                    break;
                }
            }
        }
        Ok(())
    }

    fn blob_info(&self, digest: &str) -> Result<Option<BlobInfo>, DbError> {
        Ok(self.blobs.get(digest).map(|b| BlobInfo {
            content_type: b.content_type.clone(),
            length: b.data.len() as u64,
        }))
    }

    fn blob(&self, digest: &str) -> Result<Option<Bytes>, DbError> {
        Ok(self.blobs.get(digest).map(|b| b.data.clone()))
    }

    fn blob_count(&self) -> Result<u64, DbError> {
        Ok(self.blobs.len() as u64)
    }

    fn local(&self, id: &str) -> Result<Option<(u64, Doc)>, DbError> {
        Ok(self.local.get(id).map(|e| (e.rev, e.body.clone())))
    }

    fn staging(&self) -> Option<&Staging> {
        Some(&self.staging)
    }

    fn staging_mut(&mut self) -> Option<&mut Staging> {
        Some(&mut self.staging)
    }

    fn stage_bytes(&mut self, digest: &str, offset: u64, data: &[u8]) -> Result<(), DbError> {
        let length = self.staging.length(digest).unwrap_or(0);
        let held = self.staged.entry(digest.to_string()).or_default();
        if held.is_empty() {
            // Room for all of it at once: growing by doubling would hold up to twice its size.
            held.reserve_exact(usize::try_from(length).unwrap_or(0));
        }
        if held.len() as u64 != offset {
            return Err(DbError::BadRequest(format!(
                "{digest}: bytes from {offset} do not continue the {} held",
                held.len()
            )));
        }
        held.extend_from_slice(data);
        Ok(())
    }

    fn unstage(&mut self, digest: &str) {
        self.staged.remove(digest);
    }

    fn commit(&mut self, batch: Batch) -> Result<(), DbError> {
        // All or nothing: what could fail is checked before anything changes.
        for (digest, info) in &batch.staged {
            let held = self.staged.get(digest).map_or(0, Vec::len) as u64;
            if held != info.length && !self.blobs.contains_key(digest) {
                return Err(DbError::Other {
                    status: 500,
                    error: "internal".into(),
                    reason: format!(
                        "{held} of the {} received bytes of {digest} are held",
                        info.length
                    ),
                });
            }
        }
        for (id, mut doc) in batch.docs {
            doc.tree.shrink_to_fit();
            let id: Arc<str> = id.into();
            self.by_seq.insert(doc.seq, id.clone());
            if let Some(old) = self.docs.insert(id, doc) {
                self.by_seq.remove(&old.seq);
            }
        }
        for (digest, (content_type, data)) in batch.blobs {
            self.blobs.entry(digest).or_insert(Blob {
                data,
                content_type,
                refs: 0,
            });
        }
        for (digest, info) in batch.staged {
            let data = self.staged.remove(&digest).unwrap_or_default();
            self.blobs.entry(digest).or_insert_with(|| Blob {
                data: data.into(),
                content_type: info.content_type,
                refs: 0,
            });
        }
        for (digest, delta) in batch.blob_refs {
            if let Some(blob) = self.blobs.get_mut(&digest) {
                let refs = blob.refs as i64 + delta;
                if refs > 0 {
                    blob.refs = refs as u64;
                } else {
                    self.blobs.remove(&digest);
                }
            }
        }
        for (id, local) in batch.locals {
            match local {
                Some((rev, body)) => {
                    self.local.insert(id, LocalEntry { rev, body });
                }
                None => {
                    self.local.remove(&id);
                }
            }
        }
        self.counters = batch.counters;
        Ok(())
    }
}

impl Database for MemoryStore {
    fn execute(&mut self, request: Request) -> Result<Response, DbError> {
        super::execute(self, request)
    }
}
