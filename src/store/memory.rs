//! The in-memory store: CouchDB semantics, no IO.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde_json::Value;

use super::Database;
use crate::doc::{digest_of, parse_doc, validate_id, AttIn, AttMeta, ParsedDoc, LOCAL_PREFIX};
use crate::error::DbError;
use crate::ops::*;
use crate::rev::{edit_hash, md5_hex, Rev};
use crate::revtree::{Merge, RevTree};

/// CouchDB's default `revs_limit`.
pub const DEFAULT_REVS_LIMIT: usize = 1000;

/// A successful write: id, new revision, and bodies compacted away by it.
type Written = (String, Rev, Vec<Arc<StoredBody>>);

/// A leaf revision's content: its fields (no `_`-members) and its attachments' metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredBody {
    /// The document's own fields.
    pub fields: Doc,
    /// Attachment name to metadata; the bytes are held once per digest by the store.
    pub atts: BTreeMap<String, AttMeta>,
}

#[derive(Debug)]
struct DocEntry {
    seq: u64,
    tree: RevTree<Arc<StoredBody>>,
}

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
    docs: BTreeMap<String, DocEntry>,
    by_seq: BTreeMap<u64, String>,
    update_seq: u64,
    doc_count: u64,
    del_count: u64,
    local: BTreeMap<String, LocalEntry>,
    blobs: BTreeMap<String, Blob>,
    revs_limit: usize,
    id_seed: u64,
    ids_generated: u64,
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
            update_seq: 0,
            doc_count: 0,
            del_count: 0,
            local: BTreeMap::new(),
            blobs: BTreeMap::new(),
            revs_limit: DEFAULT_REVS_LIMIT,
            id_seed: 0,
            ids_generated: 0,
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
        self.update_seq
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
            .map(|(id, e)| (id.clone(), e.tree.shape()))
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
        self.ids_generated
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
        if self.docs.contains_key(&id) {
            return Err(DbError::BadRequest(format!("{id:?} is restored twice")));
        }
        for body in tree.bodies() {
            self.retain(body, Vec::new());
        }
        self.count(None, tree.is_deleted(tree.winner()));
        self.by_seq.insert(seq, id.clone());
        self.update_seq = self.update_seq.max(seq);
        self.docs.insert(id, DocEntry { seq, tree });
        Ok(())
    }

    /// Puts back a `_local` document (`id` with its `_local/` prefix) at revision number `rev`.
    pub fn restore_local(&mut self, id: String, rev: u64, body: Doc) {
        self.local.insert(id, LocalEntry { rev, body });
    }

    /// Puts back the generated-ids counter from [`MemoryStore::ids_generated`].
    pub fn restore_ids_generated(&mut self, n: u64) {
        self.ids_generated = n;
    }

    /// Drops attachment bytes no restored document refers to; returns how many.
    pub fn drop_unreferenced_blobs(&mut self) -> usize {
        let before = self.blobs.len();
        self.blobs.retain(|_, b| b.refs > 0);
        before - self.blobs.len()
    }

    fn generate_id(&mut self) -> String {
        self.ids_generated += 1;
        md5_hex(format!("{}\0{}\0{}", self.id_seed, self.name, self.ids_generated).as_bytes())
    }

    fn bump_seq(&mut self, id: &str) {
        self.update_seq += 1;
        let seq = self.update_seq;
        if let Some(e) = self.docs.get_mut(id) {
            self.by_seq.remove(&e.seq);
            e.seq = seq;
        }
        self.by_seq.insert(seq, id.to_string());
    }

    fn count(&mut self, before: Option<bool>, after: bool) {
        match before {
            Some(true) => self.del_count -= 1,
            Some(false) => self.doc_count -= 1,
            None => {}
        }
        if after {
            self.del_count += 1;
        } else {
            self.doc_count += 1;
        }
    }

    fn release(&mut self, bodies: Vec<Arc<StoredBody>>) {
        for b in bodies {
            for m in b.atts.values() {
                if let Some(blob) = self.blobs.get_mut(&m.digest) {
                    blob.refs -= 1;
                    if blob.refs == 0 {
                        self.blobs.remove(&m.digest);
                    }
                }
            }
        }
    }

    fn retain(&mut self, body: &StoredBody, new_data: Vec<(String, Bytes)>) {
        for (digest, data) in new_data {
            let content_type = body
                .atts
                .values()
                .find(|m| m.digest == digest)
                .map(|m| m.content_type.clone())
                .unwrap_or_default();
            self.blobs.entry(digest).or_insert(Blob {
                data,
                content_type,
                refs: 0,
            });
        }
        for m in body.atts.values() {
            if let Some(blob) = self.blobs.get_mut(&m.digest) {
                blob.refs += 1;
            }
        }
    }

    /// Resolves incoming attachments to metadata plus the new bytes to keep. `parent` supplies
    /// stubs in a new edit; in replicated writes stubs resolve by digest or from any stored leaf.
    #[allow(clippy::type_complexity)]
    fn resolve_atts(
        &self,
        atts: BTreeMap<String, AttIn>,
        pos: u64,
        parent: Option<&StoredBody>,
        tree: Option<&RevTree<Arc<StoredBody>>>,
        new_edits: bool,
    ) -> Result<(BTreeMap<String, AttMeta>, Vec<(String, Bytes)>), DbError> {
        let mut metas = BTreeMap::new();
        let mut new_data = Vec::new();
        for (name, att) in atts {
            match att {
                AttIn::Data {
                    content_type,
                    data,
                    revpos,
                } => {
                    let digest = digest_of(&data);
                    // Bytes and type the parent already has under this name did not change: they
                    // keep the parent's revpos. The revision id does not hash revpos, so an edit
                    // that uploads them again and one that keeps their stub make the same
                    // revision; both must then say the same revpos, or replicas that made them
                    // apart never converge.
                    let unchanged = parent.and_then(|p| p.atts.get(&name)).filter(|m| {
                        new_edits && m.digest == digest && m.content_type == content_type
                    });
                    let meta = AttMeta {
                        length: data.len() as u64,
                        digest: digest.clone(),
                        revpos: match (unchanged, new_edits) {
                            (Some(m), _) => m.revpos,
                            (None, true) => pos,
                            (None, false) => revpos.unwrap_or(pos),
                        },
                        content_type,
                    };
                    if !self.blobs.contains_key(&digest)
                        && !new_data.iter().any(|(d, _)| *d == digest)
                    {
                        new_data.push((digest, Bytes::from(data)));
                    }
                    metas.insert(name, meta);
                }
                AttIn::Stub {
                    digest,
                    revpos,
                    content_type,
                } => {
                    let missing = || {
                        DbError::MissingStub(format!(
                            "Attachment {name:?} is a stub but this database does not have it"
                        ))
                    };
                    let from_parent = parent
                        .and_then(|p| p.atts.get(&name))
                        .filter(|m| digest.as_ref().is_none_or(|d| *d == m.digest));
                    let meta = if let Some(m) = from_parent {
                        m.clone()
                    } else if new_edits {
                        return Err(missing());
                    } else if let Some(m) = tree.and_then(|t| {
                        t.bodies().find_map(|b| {
                            b.atts.get(&name).filter(|m| {
                                digest.as_ref().is_none_or(|d| *d == m.digest)
                                    && revpos.is_none_or(|r| r == m.revpos)
                            })
                        })
                    }) {
                        // Another branch may hold the same bytes under another content type:
                        // the type the stub states is this revision's (it is part of the
                        // revision id).
                        AttMeta {
                            content_type: content_type.unwrap_or_else(|| m.content_type.clone()),
                            ..m.clone()
                        }
                    } else {
                        // A replicated stub whose bytes we hold under another name or document.
                        let d = digest.ok_or_else(missing)?;
                        let blob = self.blobs.get(&d).ok_or_else(missing)?;
                        AttMeta {
                            content_type: content_type.unwrap_or_else(|| blob.content_type.clone()),
                            digest: d,
                            length: blob.data.len() as u64,
                            revpos: revpos.unwrap_or(pos),
                        }
                    };
                    metas.insert(name, meta);
                }
            }
        }
        Ok((metas, new_data))
    }

    fn write_new_edit(&mut self, doc: ParsedDoc) -> Result<Written, DbError> {
        let id = match doc.id {
            Some(id) => id,
            None => self.generate_id(),
        };
        let entry = self.docs.get(&id);
        let parent = match (entry, &doc.rev) {
            (None, None) => None,
            (None, Some(_)) => return Err(DbError::Conflict),
            (Some(e), None) => {
                let w = e.tree.winner();
                if e.tree.is_deleted(w) {
                    Some(w)
                } else {
                    return Err(DbError::Conflict);
                }
            }
            (Some(e), Some(rev)) => match e.tree.find(rev) {
                Some(i) if e.tree.is_leaf(i) && e.tree.body(i).is_some() => Some(i),
                _ => return Err(DbError::Conflict),
            },
        };
        let (parent_rev, parent_body) = match (parent, entry) {
            (Some(p), Some(e)) => (Some(e.tree.rev(p).clone()), e.tree.body(p).cloned()),
            _ => (None, None),
        };
        let pos = parent_rev.as_ref().map_or(1, |r| r.pos + 1);
        if pos > crate::rev::MAX_REV_POS {
            return Err(DbError::BadRequest(format!(
                "document {id:?} is at the highest revision position; it cannot be edited"
            )));
        }
        let (atts, new_data) =
            self.resolve_atts(doc.attachments, pos, parent_body.as_deref(), None, true)?;
        let att_ids: Vec<(&str, &str, &str)> = atts
            .iter()
            .map(|(n, m)| (n.as_str(), m.content_type.as_str(), m.digest.as_str()))
            .collect();
        let hash = edit_hash(doc.deleted, parent_rev.as_ref(), &doc.body, &att_ids);
        let rev = Rev::new(pos, hash);
        let body = StoredBody {
            fields: doc.body,
            atts,
        };
        let deleted = doc.deleted;
        let r2 = rev.clone();
        let dropped = self.commit(&id, body, new_data, |tree, body| {
            tree.add_child(parent, r2, deleted, body).1
        });
        Ok((id, rev, dropped))
    }

    /// Stores a new leaf body in `id`'s tree with `insert` (which returns the bodies that
    /// stopped being leaves), then stems the tree and updates counts and the sequence.
    fn commit(
        &mut self,
        id: &str,
        body: StoredBody,
        new_data: Vec<(String, Bytes)>,
        insert: impl FnOnce(&mut RevTree<Arc<StoredBody>>, Arc<StoredBody>) -> Vec<Arc<StoredBody>>,
    ) -> Vec<Arc<StoredBody>> {
        let before = self
            .docs
            .get(id)
            .map(|e| e.tree.is_deleted(e.tree.winner()));
        let body = Arc::new(body);
        self.retain(&body, new_data);
        let e = self.docs.entry(id.to_string()).or_insert_with(|| DocEntry {
            seq: 0,
            tree: RevTree::new(),
        });
        let dropped = insert(&mut e.tree, body);
        e.tree.stem(self.revs_limit);
        let after = e.tree.is_deleted(e.tree.winner());
        self.count(before, after);
        self.bump_seq(id);
        dropped
    }

    fn write_replicated(&mut self, doc: ParsedDoc) -> Result<Written, DbError> {
        let id = doc
            .id
            .ok_or_else(|| DbError::BadRequest("new_edits=false needs _id".into()))?;
        let rev = doc
            .rev
            .ok_or_else(|| DbError::BadRequest("new_edits=false needs _rev".into()))?;
        if rev.pos == 0 {
            return Err(DbError::BadRequest("Invalid rev format".into()));
        }
        let mut path = doc.revisions.unwrap_or_else(|| vec![rev.clone()]);
        path.reverse();
        let entry = self.docs.get(&id);
        if entry.is_some_and(|e| e.tree.find(&rev).is_some()) {
            return Ok((id, rev, Vec::new()));
        }
        if let Some(bad) = entry.and_then(|e| e.tree.contradiction(&path)) {
            return Err(DbError::BadRequest(format!(
                "the history of {rev} puts {bad} under another parent than the stored one"
            )));
        }
        let (atts, new_data) = self.resolve_atts(
            doc.attachments,
            rev.pos,
            None,
            entry.map(|e| &e.tree),
            false,
        )?;
        let body = StoredBody {
            fields: doc.body,
            atts,
        };
        let deleted = doc.deleted;
        let dropped = self.commit(&id, body, new_data, |tree, body| {
            let (merge, dropped) = tree.merge_path(&path, deleted, body);
            debug_assert_eq!(merge, Merge::Added);
            dropped
        });
        Ok((id, rev, dropped))
    }

    fn bulk_docs_impl(&mut self, req: BulkDocsRequest) -> BulkDocsResponse {
        let mut results = Vec::with_capacity(req.docs.len());
        // Bodies compacted away by this request release their attachments only at the end, so a
        // later document of the same request may still refer to them by stub (a replicated
        // batch can bring a tombstone and a sibling edit of the same parent together).
        let mut compacted = Vec::new();
        for v in req.docs {
            let claimed_id = v
                .get("_id")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            if claimed_id.starts_with(LOCAL_PREFIX) {
                let result = match v {
                    Value::Object(m) => self.put_local_impl(&claimed_id, m),
                    _ => Err(DbError::BadRequest("Document must be a JSON object".into())),
                };
                results.push(DocResult {
                    id: claimed_id,
                    result,
                });
                continue;
            }
            let outcome = parse_doc(v).and_then(|d| {
                if req.new_edits {
                    self.write_new_edit(d)
                } else {
                    self.write_replicated(d)
                }
            });
            results.push(match outcome {
                Ok((id, rev, dropped)) => {
                    compacted.extend(dropped);
                    DocResult {
                        id,
                        result: Ok(rev),
                    }
                }
                Err(e) => DocResult {
                    id: claimed_id,
                    result: Err(e),
                },
            });
        }
        self.release(compacted);
        BulkDocsResponse { results }
    }

    /// Builds the JSON document for revision `idx` of `id`.
    fn build_doc(
        &self,
        id: &str,
        tree: &RevTree<Arc<StoredBody>>,
        idx: usize,
        opts: &DocOpts<'_>,
    ) -> Result<Doc, DbError> {
        let body = tree
            .body(idx)
            .ok_or_else(|| DbError::NotFound("missing".into()))?;
        let mut doc = Doc::new();
        doc.insert("_id".into(), Value::String(id.to_string()));
        doc.insert("_rev".into(), Value::String(tree.rev(idx).to_string()));
        for (k, v) in &body.fields {
            doc.insert(k.clone(), v.clone());
        }
        if tree.is_deleted(idx) {
            doc.insert("_deleted".into(), Value::Bool(true));
        }
        if !body.atts.is_empty() {
            let since_pos = if opts.atts_since.is_empty() {
                0
            } else {
                // Only revisions on this revision's own path count (CouchDB intersects
                // `atts_since` with the ancestry): a sibling branch's attachments may differ.
                opts.atts_since
                    .iter()
                    .filter_map(|r| tree.find(r))
                    .filter(|&i| tree.is_ancestor_or_self(i, idx))
                    .map(|i| tree.rev(i).pos)
                    .max()
                    .unwrap_or(0)
            };
            let mut atts = serde_json::Map::new();
            for (name, m) in &body.atts {
                let mut a = serde_json::Map::new();
                a.insert("content_type".into(), Value::String(m.content_type.clone()));
                a.insert("digest".into(), Value::String(m.digest.clone()));
                a.insert("length".into(), Value::from(m.length));
                a.insert("revpos".into(), Value::from(m.revpos));
                if opts.attachments && m.revpos > since_pos {
                    let blob = self.blobs.get(&m.digest).ok_or_else(|| DbError::Other {
                        status: 500,
                        error: "internal".into(),
                        reason: format!("attachment bytes for {} are gone", m.digest),
                    })?;
                    a.insert(
                        "data".into(),
                        Value::String(base64::engine::general_purpose::STANDARD.encode(&blob.data)),
                    );
                } else {
                    a.insert("stub".into(), Value::Bool(true));
                }
                atts.insert(name.clone(), Value::Object(a));
            }
            doc.insert("_attachments".into(), Value::Object(atts));
        }
        if opts.revs {
            let anc = tree.ancestry(idx);
            let ids: Vec<Value> = anc
                .iter()
                .map(|&i| Value::String(tree.rev(i).hash.clone()))
                .collect();
            let mut r = serde_json::Map::new();
            r.insert("start".into(), Value::from(tree.rev(idx).pos));
            r.insert("ids".into(), Value::Array(ids));
            doc.insert("_revisions".into(), Value::Object(r));
        }
        if opts.conflicts || opts.deleted_conflicts {
            let leaves = tree.leaves();
            let pick = |deleted: bool| -> Vec<Value> {
                leaves
                    .iter()
                    .filter(|&&l| l != idx && tree.is_deleted(l) == deleted)
                    .map(|&l| Value::String(tree.rev(l).to_string()))
                    .collect()
            };
            if opts.conflicts {
                let c = pick(false);
                if !c.is_empty() {
                    doc.insert("_conflicts".into(), Value::Array(c));
                }
            }
            if opts.deleted_conflicts {
                let c = pick(true);
                if !c.is_empty() {
                    doc.insert("_deleted_conflicts".into(), Value::Array(c));
                }
            }
        }
        Ok(doc)
    }

    fn entry(&self, id: &str) -> Result<&DocEntry, DbError> {
        self.docs
            .get(id)
            .ok_or_else(|| DbError::NotFound("missing".into()))
    }

    fn get_impl(&self, req: &GetRequest) -> Result<Doc, DbError> {
        if req.id.starts_with(LOCAL_PREFIX) {
            return self.get_local_impl(&req.id);
        }
        let e = self.entry(&req.id)?;
        let idx = match &req.rev {
            Some(rev) => {
                let i = e
                    .tree
                    .find(rev)
                    .ok_or_else(|| DbError::NotFound("missing".into()))?;
                if req.latest {
                    e.tree.descendant_leaves(i).first().copied().unwrap_or(i)
                } else {
                    i
                }
            }
            None => {
                let w = e.tree.winner();
                if e.tree.is_deleted(w) {
                    return Err(DbError::NotFound("deleted".into()));
                }
                w
            }
        };
        self.build_doc(&req.id, &e.tree, idx, &DocOpts::from_get(req))
    }

    fn open_revs_impl(&self, req: &OpenRevsRequest) -> Result<OpenRevsResponse, DbError> {
        let opts = DocOpts {
            revs: req.revs,
            attachments: req.attachments,
            atts_since: &req.atts_since,
            conflicts: false,
            deleted_conflicts: false,
        };
        let Some(e) = self.docs.get(&req.id) else {
            return match &req.open_revs {
                OpenRevs::All => Err(DbError::NotFound("missing".into())),
                OpenRevs::List(l) => Ok(OpenRevsResponse {
                    revs: l.iter().map(|r| OpenRev::Missing(r.clone())).collect(),
                }),
            };
        };
        let mut out = Vec::new();
        match &req.open_revs {
            OpenRevs::All => {
                for l in e.tree.leaves() {
                    out.push(OpenRev::Ok(self.build_doc(&req.id, &e.tree, l, &opts)?));
                }
            }
            OpenRevs::List(list) => {
                let mut seen = BTreeSet::new();
                for rev in list {
                    let found = e.tree.find(rev).map(|i| {
                        if req.latest {
                            e.tree.descendant_leaves(i)
                        } else {
                            vec![i]
                        }
                    });
                    match found {
                        Some(idxs) if !idxs.is_empty() => {
                            for i in idxs {
                                if !seen.insert(i) {
                                    continue;
                                }
                                match self.build_doc(&req.id, &e.tree, i, &opts) {
                                    Ok(d) => out.push(OpenRev::Ok(d)),
                                    Err(DbError::NotFound(_)) => {
                                        out.push(OpenRev::Missing(e.tree.rev(i).clone()))
                                    }
                                    Err(err) => return Err(err),
                                }
                            }
                        }
                        _ => out.push(OpenRev::Missing(rev.clone())),
                    }
                }
            }
        }
        Ok(OpenRevsResponse { revs: out })
    }

    fn all_docs_impl(&self, req: &AllDocsRequest) -> Result<AllDocsResponse, DbError> {
        let opts = DocOpts {
            conflicts: req.conflicts,
            ..DocOpts::default()
        };
        let row_for = |id: &str, e: &DocEntry, with_deleted: bool| -> Option<AllDocsRow> {
            let w = e.tree.winner();
            let deleted = e.tree.is_deleted(w);
            if deleted && !with_deleted {
                return None;
            }
            let doc = if req.include_docs {
                Some(if deleted {
                    Value::Null
                } else {
                    Value::Object(self.build_doc(id, &e.tree, w, &opts).ok()?)
                })
            } else {
                None
            };
            Some(AllDocsRow {
                key: id.to_string(),
                id: Some(id.to_string()),
                value: Some(AllDocsValue {
                    rev: e.tree.rev(w).clone(),
                    deleted,
                }),
                doc,
                error: None,
            })
        };
        let limit = req.limit.unwrap_or(usize::MAX);
        let mut rows = Vec::new();
        if let Some(keys) = &req.keys {
            let mut keys: Vec<&String> = keys.iter().collect();
            if req.descending {
                keys.reverse();
            }
            for k in keys.into_iter().skip(req.skip).take(limit) {
                let row = self.docs.get(k.as_str()).and_then(|e| row_for(k, e, true));
                rows.push(row.unwrap_or(AllDocsRow {
                    key: k.clone(),
                    id: None,
                    value: None,
                    doc: None,
                    error: Some("not_found".into()),
                }));
            }
            return Ok(AllDocsResponse {
                total_rows: self.doc_count,
                offset: req.skip as u64,
                rows,
            });
        }
        let (lo, hi) = if req.descending {
            (req.end_key.as_ref(), req.start_key.as_ref())
        } else {
            (req.start_key.as_ref(), req.end_key.as_ref())
        };
        if let (Some(lo), Some(hi)) = (lo, hi) {
            if lo > hi {
                return Err(DbError::BadRequest(
                    "No rows can match your key range, reverse your start_key and end_key or set descending=true".into(),
                ));
            }
        }
        // `end_key` is the upper bound ascending and the lower bound descending; inclusive_end
        // applies to it in either direction.
        let lo_b = match lo {
            None => Bound::Unbounded,
            Some(k) if req.descending && !req.inclusive_end => Bound::Excluded(k.clone()),
            Some(k) => Bound::Included(k.clone()),
        };
        let hi_b = match hi {
            None => Bound::Unbounded,
            Some(k) if !req.descending && !req.inclusive_end => Bound::Excluded(k.clone()),
            Some(k) => Bound::Included(k.clone()),
        };
        let range = self.docs.range::<String, _>((lo_b, hi_b));
        let before_start = |id: &str| -> bool {
            match (req.descending, req.start_key.as_deref()) {
                (_, None) => false,
                (false, Some(s)) => id < s,
                (true, Some(s)) => id > s,
            }
        };
        let live_before = self
            .docs
            .iter()
            .filter(|(id, e)| before_start(id) && !e.tree.is_deleted(e.tree.winner()))
            .count() as u64;
        let iter: Box<dyn Iterator<Item = (&String, &DocEntry)>> = if req.descending {
            Box::new(range.rev())
        } else {
            Box::new(range)
        };
        for row in iter
            .filter_map(|(id, e)| row_for(id, e, false))
            .skip(req.skip)
            .take(limit)
        {
            rows.push(row);
        }
        Ok(AllDocsResponse {
            total_rows: self.doc_count,
            offset: live_before + req.skip as u64,
            rows,
        })
    }

    fn parse_since(&self, since: &Seq) -> Result<u64, DbError> {
        match &since.0 {
            Value::String(s) if s == "now" => Ok(self.update_seq),
            Value::Null => Ok(0),
            _ => since
                .as_u64()
                .ok_or_else(|| DbError::BadRequest(format!("Malformed since: {}", since.0))),
        }
    }

    fn changes_impl(&self, req: &ChangesRequest) -> Result<ChangesResponse, DbError> {
        let since = self.parse_since(&req.since)?;
        let limit = req.limit.unwrap_or(usize::MAX);
        let seqs: Vec<(u64, &str)> = match &req.doc_ids {
            Some(ids) => {
                let mut v: Vec<(u64, &str)> = ids
                    .iter()
                    .filter_map(|id| self.docs.get_key_value(id.as_str()))
                    .filter(|(_, e)| e.seq > since)
                    .map(|(id, e)| (e.seq, id.as_str()))
                    .collect();
                v.sort_unstable();
                v.dedup();
                if req.descending {
                    v.reverse();
                }
                v.truncate(limit);
                v
            }
            None => {
                let range = self
                    .by_seq
                    .range((Bound::Excluded(since), Bound::Unbounded));
                let it: Box<dyn Iterator<Item = (&u64, &String)>> = if req.descending {
                    Box::new(range.rev())
                } else {
                    Box::new(range)
                };
                it.take(limit).map(|(s, id)| (*s, id.as_str())).collect()
            }
        };
        let limited = seqs.len() >= limit;
        let opts = DocOpts {
            conflicts: req.conflicts,
            ..DocOpts::default()
        };
        let mut results = Vec::with_capacity(seqs.len());
        for (seq, id) in &seqs {
            let e = &self.docs[*id];
            let w = e.tree.winner();
            let changes = match req.style {
                ChangesStyle::MainOnly => vec![ChangeRev {
                    rev: e.tree.rev(w).clone(),
                }],
                ChangesStyle::AllDocs => e
                    .tree
                    .leaves()
                    .into_iter()
                    .map(|l| ChangeRev {
                        rev: e.tree.rev(l).clone(),
                    })
                    .collect(),
            };
            let doc = if req.include_docs {
                Some(Value::Object(self.build_doc(id, &e.tree, w, &opts)?))
            } else {
                None
            };
            results.push(ChangeRow {
                id: id.to_string(),
                seq: Seq::from(*seq),
                changes,
                deleted: e.tree.is_deleted(w),
                doc,
            });
        }
        let last_seq = if limited || req.descending {
            seqs.last().map_or(since, |(s, _)| *s)
        } else {
            since.max(self.update_seq)
        };
        Ok(ChangesResponse {
            results,
            last_seq: Seq::from(last_seq),
            pending: None,
        })
    }

    fn revs_diff_impl(&self, req: &RevsDiffRequest) -> RevsDiffResponse {
        let mut out = BTreeMap::new();
        for (id, revs) in &req.revs {
            let tree = self.docs.get(id).map(|e| &e.tree);
            let mut missing: Vec<Rev> = revs
                .iter()
                .filter(|r| tree.is_none_or(|t| t.find(r).is_none()))
                .cloned()
                .collect();
            if missing.is_empty() {
                continue;
            }
            missing.sort();
            missing.dedup();
            let max_pos = missing.iter().map(|r| r.pos).max().unwrap_or(0);
            let possible_ancestors = tree
                .map(|t| {
                    let mut v: Vec<Rev> = t
                        .leaves()
                        .into_iter()
                        .map(|l| t.rev(l).clone())
                        .filter(|r| r.pos < max_pos)
                        .collect();
                    v.sort();
                    v
                })
                .unwrap_or_default();
            out.insert(
                id.clone(),
                RevsDiffEntry {
                    missing,
                    possible_ancestors,
                },
            );
        }
        RevsDiffResponse { missing: out }
    }

    fn bulk_get_impl(&self, req: &BulkGetRequest) -> Result<BulkGetResponse, DbError> {
        let mut results = Vec::with_capacity(req.docs.len());
        for item in &req.docs {
            let err = |error: &str, reason: &str| {
                BulkGetDoc::Error(BulkGetError {
                    id: item.id.clone(),
                    rev: item.rev.as_ref().map(Rev::to_string),
                    error: error.into(),
                    reason: reason.into(),
                })
            };
            let docs = match &item.rev {
                None => match self.get_impl(&GetRequest {
                    id: item.id.clone(),
                    revs: req.revs,
                    attachments: req.attachments,
                    atts_since: item.atts_since.clone(),
                    ..GetRequest::default()
                }) {
                    Ok(d) => vec![BulkGetDoc::Ok(d)],
                    Err(e) => vec![err(e.error(), e.reason())],
                },
                Some(rev) => {
                    let r = self.open_revs_impl(&OpenRevsRequest {
                        id: item.id.clone(),
                        open_revs: OpenRevs::List(vec![rev.clone()]),
                        revs: req.revs,
                        attachments: req.attachments,
                        atts_since: item.atts_since.clone(),
                        latest: req.latest,
                    })?;
                    r.revs
                        .into_iter()
                        .map(|o| match o {
                            OpenRev::Ok(d) => BulkGetDoc::Ok(d),
                            OpenRev::Missing(_) => err("not_found", "missing"),
                        })
                        .collect()
                }
            };
            results.push(BulkGetResult {
                id: item.id.clone(),
                docs,
            });
        }
        Ok(BulkGetResponse { results })
    }

    fn attachment_impl(&self, req: &AttachmentRequest) -> Result<AttachmentData, DbError> {
        let e = self.entry(&req.id)?;
        let idx = match &req.rev {
            Some(r) => e
                .tree
                .find(r)
                .ok_or_else(|| DbError::NotFound("missing".into()))?,
            None => {
                let w = e.tree.winner();
                if e.tree.is_deleted(w) {
                    return Err(DbError::NotFound("deleted".into()));
                }
                w
            }
        };
        let body = e
            .tree
            .body(idx)
            .ok_or_else(|| DbError::NotFound("missing".into()))?;
        let m = body
            .atts
            .get(&req.name)
            .ok_or_else(|| DbError::NotFound("Document is missing attachment".into()))?;
        let blob = self
            .blobs
            .get(&m.digest)
            .ok_or_else(|| DbError::NotFound("Document is missing attachment".into()))?;
        Ok(AttachmentData {
            content_type: m.content_type.clone(),
            digest: m.digest.clone(),
            data: blob.data.clone(),
        })
    }

    fn local_key(id: &str) -> Result<String, DbError> {
        let key = if id.starts_with(LOCAL_PREFIX) {
            id.to_string()
        } else {
            format!("{LOCAL_PREFIX}{id}")
        };
        validate_id(&key)?;
        Ok(key)
    }

    fn get_local_impl(&self, id: &str) -> Result<Doc, DbError> {
        let key = Self::local_key(id)?;
        let e = self
            .local
            .get(&key)
            .ok_or_else(|| DbError::NotFound("missing".into()))?;
        let mut doc = e.body.clone();
        doc.insert("_id".into(), Value::String(key));
        doc.insert("_rev".into(), Value::String(format!("0-{}", e.rev)));
        Ok(doc)
    }

    fn put_local_impl(&mut self, id: &str, mut doc: Doc) -> Result<Rev, DbError> {
        let key = Self::local_key(id)?;
        let given: Option<Rev> = match doc.remove("_rev") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.parse()?),
            Some(_) => return Err(DbError::BadRequest("Invalid rev format".into())),
        };
        doc.remove("_id");
        if let Some(k) = doc.keys().find(|k| k.starts_with('_') && *k != "_deleted") {
            return Err(DbError::DocValidation(format!(
                "Bad special document member: {}",
                crate::rev::truncate(k, 64)
            )));
        }
        let deleted = doc.remove("_deleted") == Some(Value::Bool(true));
        let current = self.local.get(&key).map(|e| e.rev);
        let matches = match (current, &given) {
            (None, None) => true,
            (Some(c), Some(g)) => g.pos == 0 && g.hash == c.to_string(),
            _ => false,
        };
        if !matches {
            return Err(DbError::Conflict);
        }
        if deleted {
            return if current.is_some() {
                self.local.remove(&key);
                Ok(Rev::new(0, "0"))
            } else {
                Err(DbError::NotFound("missing".into()))
            };
        }
        let rev = current.unwrap_or(0) + 1;
        self.local.insert(key, LocalEntry { rev, body: doc });
        Ok(Rev::new(0, rev.to_string()))
    }

    fn delete_local_impl(&mut self, id: &str, rev: Option<&Rev>) -> Result<Rev, DbError> {
        let key = Self::local_key(id)?;
        let e = self
            .local
            .get(&key)
            .ok_or_else(|| DbError::NotFound("missing".into()))?;
        match rev {
            Some(r) if r.pos == 0 && r.hash == e.rev.to_string() => {
                self.local.remove(&key);
                Ok(Rev::new(0, "0"))
            }
            _ => Err(DbError::Conflict),
        }
    }
}

#[derive(Default)]
struct DocOpts<'a> {
    revs: bool,
    attachments: bool,
    atts_since: &'a [Rev],
    conflicts: bool,
    deleted_conflicts: bool,
}

impl<'a> DocOpts<'a> {
    fn from_get(r: &'a GetRequest) -> Self {
        DocOpts {
            revs: r.revs,
            attachments: r.attachments,
            atts_since: &r.atts_since,
            conflicts: r.conflicts,
            deleted_conflicts: r.deleted_conflicts,
        }
    }
}

impl Database for MemoryStore {
    fn execute(&mut self, request: Request) -> Result<Response, DbError> {
        Ok(match request {
            Request::Info => Response::Info(DbInfo {
                db_name: self.name.clone(),
                doc_count: self.doc_count,
                doc_del_count: self.del_count,
                update_seq: Seq::from(self.update_seq),
                db_uuid: Some(self.uuid()),
            }),
            Request::Get(r) => Response::Doc(DocBody {
                doc: self.get_impl(&r)?,
            }),
            Request::OpenRevs(r) => Response::OpenRevs(self.open_revs_impl(&r)?),
            Request::AllDocs(r) => Response::AllDocs(self.all_docs_impl(&r)?),
            Request::BulkDocs(r) => Response::BulkDocs(self.bulk_docs_impl(r)),
            Request::Changes(r) => Response::Changes(self.changes_impl(&r)?),
            Request::RevsDiff(r) => Response::RevsDiff(self.revs_diff_impl(&r)),
            Request::BulkGet(r) => Response::BulkGet(self.bulk_get_impl(&r)?),
            Request::GetAttachment(r) => Response::Attachment(self.attachment_impl(&r)?),
            Request::GetLocal(r) => Response::Doc(DocBody {
                doc: self.get_local_impl(&r.id)?,
            }),
            Request::PutLocal(r) => {
                let id = Self::local_key(&r.id)?;
                let result = self.put_local_impl(&id, r.doc);
                if let Err(e) = &result {
                    return Err(e.clone());
                }
                Response::Written(DocResult { id, result })
            }
            Request::DeleteLocal(r) => {
                let id = Self::local_key(&r.id)?;
                let result = self.delete_local_impl(&id, r.rev.as_ref());
                if let Err(e) = &result {
                    return Err(e.clone());
                }
                Response::Written(DocResult { id, result })
            }
        })
    }
}
