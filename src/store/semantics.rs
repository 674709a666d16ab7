//! CouchDB semantics over a [`Storage`] engine, written once for every engine.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde_json::Value;

use super::storage::{Batch, BlobInfo, Counters, Fields, Storage, StoredBody, StoredDoc};
use crate::doc::{digest_of, parse_doc, validate_id, AttIn, AttMeta, ParsedDoc, LOCAL_PREFIX};
use crate::error::DbError;
use crate::ops::*;
use crate::rev::{edit_hash, md5_hex, Rev};
use crate::revtree::{Merge, RevTree};

/// Every document's revision tree shape: id to `(rev, parent, deleted leaf)` sets.
pub type TreeShapes = BTreeMap<String, BTreeSet<(Rev, Option<Rev>, bool)>>;

/// A successful write: id, new revision, and bodies compacted away by it.
type Written = (String, Rev, Vec<Arc<StoredBody>>);

/// Runs one request against an engine with CouchDB's semantics: the one implementation of
/// [`Database::execute`](super::Database::execute) that every store uses.
///
/// A write request's changes reach the engine as one [`Batch`] when the request is done, so a
/// write the engine refuses leaves nothing behind.
///
/// ```
/// use peerpouch::store::execute;
/// use peerpouch::{MemoryStore, Request, Response};
///
/// let mut engine = MemoryStore::new("db");
/// let Response::Info(info) = execute(&mut engine, Request::Info).unwrap() else { panic!() };
/// assert_eq!(info.doc_count, 0);
/// ```
///
/// # Errors
/// As [`Database::execute`](super::Database::execute), plus the engine's own failures.
pub fn execute<S: Storage + ?Sized>(s: &mut S, request: Request) -> Result<Response, DbError> {
    if let Request::StageAttachment(r) = request {
        return stage(s, r).map(Response::Staged);
    }
    if request.is_write() {
        s.begin_write()?;
        let (result, batch) = {
            let mut w = match Writer::new(&*s) {
                Ok(w) => w,
                Err(e) => {
                    s.rollback();
                    return Err(e);
                }
            };
            let result = w.run(request);
            (result, w.batch)
        };
        match result {
            Ok(response) => {
                let staged: Vec<String> = batch.staged.keys().cloned().collect();
                s.commit(batch)?;
                // Their bytes are attachments now (or were already): the uploads are done.
                for digest in staged {
                    s.unstage(&digest);
                    if let Some(st) = s.staging_mut() {
                        st.forget(&digest);
                    }
                }
                Ok(response)
            }
            Err(e) => {
                s.rollback();
                Err(e)
            }
        }
    } else {
        s.begin_read()?;
        let result = read(&*s, request);
        s.end_read();
        result
    }
}

/// Receives one range of an attachment ([`Request::StageAttachment`]): checked and counted by
/// the engine's [`Staging`](super::Staging), its bytes kept by the engine.
fn stage<S: Storage + ?Sized>(s: &mut S, r: StageRequest) -> Result<Staged, DbError> {
    if s.staging().is_none() {
        return Err(DbError::NotImplemented(
            "this database takes attachments whole, not in ranges".into(),
        ));
    }
    super::staging::check(&r)?;
    // Bytes held already need not travel: the sender skips the rest.
    s.begin_read()?;
    let held = s.blob_info(&r.digest);
    s.end_read();
    if let Some(info) = held?.filter(|b| b.length == r.length) {
        // Noted as complete with no bytes of its own, so a new edit may refer to it as to any
        // upload (the write finds the bytes held and only counts a reference).
        if s.staging_mut().is_some_and(|st| st.forget(&r.digest)) {
            s.unstage(&r.digest);
        }
        let evicted = s
            .staging_mut()
            .map(|st| st.held(&r.digest, info))
            .unwrap_or_default();
        for d in evicted {
            s.unstage(&d);
        }
        return Ok(Staged {
            received: r.length,
            complete: true,
        });
    }
    let st = s.staging_mut().expect("checked above");
    // Complete already (sent again by a retry, or by a second batch that carries it too): the
    // upload is kept for the write that will use it.
    if st.complete(&r.digest).is_some_and(|b| b.length == r.length) {
        return Ok(Staged {
            received: r.length,
            complete: true,
        });
    }
    let accepted = st.accept(&r)?;
    for d in &accepted.evicted {
        s.unstage(d);
    }
    if accepted.restart {
        s.unstage(&r.digest);
    }
    let forget = |s: &mut S| {
        s.unstage(&r.digest);
        if let Some(st) = s.staging_mut() {
            st.forget(&r.digest);
        }
    };
    if let Err(e) = s.stage_bytes(&r.digest, r.offset, &r.data) {
        forget(s);
        return Err(e);
    }
    let st = s.staging_mut().expect("checked above");
    match st.advance(&r.digest, &r.data) {
        Ok((received, complete)) => Ok(Staged { received, complete }),
        Err(e) => {
            forget(s);
            Err(e)
        }
    }
}

fn read<S: Storage + ?Sized>(s: &S, request: Request) -> Result<Response, DbError> {
    Ok(match request {
        Request::Info => {
            let c = s.counters()?;
            Response::Info(DbInfo {
                db_name: s.name().to_string(),
                doc_count: c.doc_count,
                doc_del_count: c.del_count,
                update_seq: Seq::from(c.update_seq),
                db_uuid: Some(s.uuid()),
            })
        }
        Request::Get(r) => Response::Doc(DocBody {
            doc: get_impl(s, &r)?,
        }),
        Request::OpenRevs(r) => Response::OpenRevs(open_revs_impl(s, &r)?),
        Request::AllDocs(r) => Response::AllDocs(all_docs_impl(s, &r)?),
        Request::Changes(r) => Response::Changes(changes_impl(s, &r)?),
        Request::RevsDiff(r) => Response::RevsDiff(revs_diff_impl(s, &r)?),
        Request::BulkGet(r) => Response::BulkGet(bulk_get_impl(s, &r)?),
        Request::GetAttachment(r) => Response::Attachment(attachment_impl(s, &r)?),
        Request::ReadAttachment(r) => Response::AttachmentPart(attachment_part(s, &r)?),
        Request::GetLocal(r) => Response::Doc(DocBody {
            doc: get_local_impl(s, &r.id)?,
        }),
        Request::BulkDocs(_)
        | Request::PutLocal(_)
        | Request::DeleteLocal(_)
        | Request::StageAttachment(_) => {
            return Err(DbError::BadRequest(
                "a write request on the read path".into(),
            ))
        }
    })
}

/// A write request under way: reads go through the changes made so far.
struct Writer<'a, S: Storage + ?Sized> {
    s: &'a S,
    batch: Batch,
    /// Where bodies are written before they are kept ([`Fields::from_doc_in`]).
    scratch: Vec<u8>,
}

impl<'a, S: Storage + ?Sized> Writer<'a, S> {
    fn new(s: &'a S) -> Result<Self, DbError> {
        let counters = s.counters()?;
        Ok(Writer {
            s,
            scratch: Vec::new(),
            batch: Batch {
                counters,
                ..Batch::default()
            },
        })
    }

    fn run(&mut self, request: Request) -> Result<Response, DbError> {
        Ok(match request {
            Request::BulkDocs(r) => Response::BulkDocs(self.bulk_docs_impl(r)?),
            Request::PutLocal(r) => {
                let id = local_key(&r.id)?;
                let rev = self.put_local_impl(&id, r.doc)?;
                Response::Written(DocResult {
                    id,
                    result: Ok(rev),
                })
            }
            Request::DeleteLocal(r) => {
                let id = local_key(&r.id)?;
                let rev = self.delete_local_impl(&id, r.rev.as_ref())?;
                Response::Written(DocResult {
                    id,
                    result: Ok(rev),
                })
            }
            other => read(self.s, other)?,
        })
    }

    fn doc(&self, id: &str) -> Result<Option<Cow<'_, StoredDoc>>, DbError> {
        match self.batch.docs.get(id) {
            Some(d) => Ok(Some(Cow::Borrowed(d))),
            None => self.s.doc(id),
        }
    }

    fn blob_info(&self, digest: &str) -> Result<Option<BlobInfo>, DbError> {
        match self.batch.blobs.get(digest) {
            Some((content_type, data)) => Ok(Some(BlobInfo {
                content_type: content_type.clone(),
                length: data.len() as u64,
            })),
            None => match self.s.blob_info(digest)? {
                Some(b) => Ok(Some(b)),
                None => Ok(self.s.staging().and_then(|st| st.complete(digest))),
            },
        }
    }

    fn local(&self, key: &str) -> Result<Option<(u64, Doc)>, DbError> {
        match self.batch.locals.get(key) {
            Some(l) => Ok(l.clone()),
            None => self.s.local(key),
        }
    }

    fn generate_id(&mut self) -> String {
        self.batch.counters.ids_generated += 1;
        md5_hex(
            format!(
                "{}\0{}\0{}",
                self.s.id_seed(),
                self.s.name(),
                self.batch.counters.ids_generated
            )
            .as_bytes(),
        )
    }

    fn count(&mut self, before: Option<bool>, after: bool) {
        let c: &mut Counters = &mut self.batch.counters;
        // Saturating: counters read from a damaged file must not panic the store.
        match before {
            Some(true) => c.del_count = c.del_count.saturating_sub(1),
            Some(false) => c.doc_count = c.doc_count.saturating_sub(1),
            None => {}
        }
        if after {
            c.del_count += 1;
        } else {
            c.doc_count += 1;
        }
    }

    fn release(&mut self, bodies: Vec<Arc<StoredBody>>) {
        for b in bodies {
            for m in b.atts.values() {
                *self.batch.blob_refs.entry(m.digest.clone()).or_insert(0) -= 1;
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
            self.batch
                .blobs
                .entry(digest)
                .or_insert((content_type, data));
        }
        for m in body.atts.values() {
            *self.batch.blob_refs.entry(m.digest.clone()).or_insert(0) += 1;
            // Bytes received in ranges become an attachment with this write.
            if !self.batch.blobs.contains_key(&m.digest) {
                if let Some(info) = self.s.staging().and_then(|st| st.complete(&m.digest)) {
                    self.batch.staged.insert(m.digest.clone(), info);
                }
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
                    if !new_data.iter().any(|(d, _)| *d == digest)
                        && self.blob_info(&digest)?.is_none()
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
                    let uploaded = || {
                        let d = digest.as_ref()?;
                        let b = self.s.staging()?.complete(d)?;
                        Some(AttMeta {
                            content_type: content_type.clone().unwrap_or(b.content_type),
                            digest: d.clone(),
                            length: b.length,
                            revpos: pos,
                        })
                    };
                    let meta = if let Some(m) = from_parent {
                        m.clone()
                    } else if new_edits {
                        // A new attachment sent ahead in ranges (`stage_attachment`): how an
                        // attachment of any size is written without holding it whole.
                        uploaded().ok_or_else(missing)?
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
                        let blob = self.blob_info(&d)?.ok_or_else(missing)?;
                        AttMeta {
                            content_type: content_type.unwrap_or(blob.content_type),
                            digest: d,
                            length: blob.length,
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
        let entry: Option<StoredDoc> = self.doc(&id)?.map(Cow::into_owned);
        let parent = match (&entry, &doc.rev) {
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
        let (parent_rev, parent_body) = match (parent, &entry) {
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
        let fields = Fields::from_doc_in(&doc.body, &mut self.scratch);
        let hash = edit_hash(
            doc.deleted,
            parent_rev.as_ref(),
            fields.json().as_bytes(),
            &att_ids,
        );
        let rev = Rev::new(pos, hash);
        let body = StoredBody { fields, atts };
        let deleted = doc.deleted;
        let r2 = rev.clone();
        let dropped = self.commit(&id, entry, body, new_data, |tree, body| {
            tree.add_child(parent, r2, deleted, body).1
        });
        Ok((id, rev, dropped))
    }

    /// Stores a new leaf body in `id`'s tree with `insert` (which returns the bodies that
    /// stopped being leaves), then stems the tree and updates counts and the sequence.
    fn commit(
        &mut self,
        id: &str,
        entry: Option<StoredDoc>,
        body: StoredBody,
        new_data: Vec<(String, Bytes)>,
        insert: impl FnOnce(&mut RevTree<Arc<StoredBody>>, Arc<StoredBody>) -> Vec<Arc<StoredBody>>,
    ) -> Vec<Arc<StoredBody>> {
        let before = entry.as_ref().map(|e| e.tree.is_deleted(e.tree.winner()));
        let body = Arc::new(body);
        self.retain(&body, new_data);
        let mut e = entry.unwrap_or_default();
        let dropped = insert(&mut e.tree, body);
        e.tree.stem(self.s.revs_limit());
        let after = e.tree.is_deleted(e.tree.winner());
        self.count(before, after);
        self.batch.counters.update_seq += 1;
        e.seq = self.batch.counters.update_seq;
        self.batch.docs.insert(id.to_string(), e);
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
        let entry: Option<StoredDoc> = self.doc(&id)?.map(Cow::into_owned);
        if entry.as_ref().is_some_and(|e| e.tree.find(&rev).is_some()) {
            return Ok((id, rev, Vec::new()));
        }
        if let Some(bad) = entry.as_ref().and_then(|e| e.tree.contradiction(&path)) {
            return Err(DbError::BadRequest(format!(
                "the history of {rev} puts {bad} under another parent than the stored one"
            )));
        }
        let (atts, new_data) = self.resolve_atts(
            doc.attachments,
            rev.pos,
            None,
            entry.as_ref().map(|e| &e.tree),
            false,
        )?;
        let body = StoredBody {
            fields: Fields::from_doc_in(&doc.body, &mut self.scratch),
            atts,
        };
        let deleted = doc.deleted;
        let dropped = self.commit(&id, entry, body, new_data, |tree, body| {
            let (merge, dropped) = tree.merge_path(&path, deleted, body);
            debug_assert_eq!(merge, Merge::Added);
            dropped
        });
        Ok((id, rev, dropped))
    }

    fn bulk_docs_impl(&mut self, req: BulkDocsRequest) -> Result<BulkDocsResponse, DbError> {
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
                if let Err(e) = &result {
                    engine_failure(e)?;
                }
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
                Err(e) => {
                    engine_failure(&e)?;
                    DocResult {
                        id: claimed_id,
                        result: Err(e),
                    }
                }
            });
        }
        self.release(compacted);
        Ok(BulkDocsResponse { results })
    }

    fn put_local_impl(&mut self, id: &str, mut doc: Doc) -> Result<Rev, DbError> {
        let key = local_key(id)?;
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
        let current = self.local(&key)?.map(|(rev, _)| rev);
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
                self.batch.locals.insert(key, None);
                Ok(Rev::new(0, "0"))
            } else {
                Err(DbError::NotFound("missing".into()))
            };
        }
        let rev = current.unwrap_or(0) + 1;
        self.batch.locals.insert(key, Some((rev, doc)));
        Ok(Rev::new(0, rev.to_string()))
    }

    fn delete_local_impl(&mut self, id: &str, rev: Option<&Rev>) -> Result<Rev, DbError> {
        let key = local_key(id)?;
        let current = self
            .local(&key)?
            .ok_or_else(|| DbError::NotFound("missing".into()))?
            .0;
        match rev {
            Some(r) if r.pos == 0 && r.hash == current.to_string() => {
                self.batch.locals.insert(key, None);
                Ok(Rev::new(0, "0"))
            }
            _ => Err(DbError::Conflict),
        }
    }
}

/// Whether `e` is the engine failing (which fails the whole request) rather than one
/// document's own error.
fn engine_failure(e: &DbError) -> Result<(), DbError> {
    match e {
        DbError::Other { status: 500, .. } => Err(e.clone()),
        _ => Ok(()),
    }
}

#[derive(Default)]
struct DocOpts<'a> {
    revs: bool,
    attachments: bool,
    atts_since: &'a [Rev],
    conflicts: bool,
    deleted_conflicts: bool,
    /// [`BulkGetRequest::inline_max`].
    inline_max: Option<u64>,
}

impl<'a> DocOpts<'a> {
    fn from_get(r: &'a GetRequest) -> Self {
        DocOpts {
            revs: r.revs,
            attachments: r.attachments,
            atts_since: &r.atts_since,
            conflicts: r.conflicts,
            deleted_conflicts: r.deleted_conflicts,
            inline_max: None,
        }
    }
}

fn not_found() -> DbError {
    DbError::NotFound("missing".into())
}

/// Builds the JSON document for revision `idx` of `id`.
fn build_doc<S: Storage + ?Sized>(
    s: &S,
    id: &str,
    tree: &RevTree<Arc<StoredBody>>,
    idx: usize,
    opts: &DocOpts<'_>,
) -> Result<Doc, DbError> {
    let body = tree.body(idx).ok_or_else(not_found)?;
    // The fields hold no `_`-members, so the specials below add to them and replace none.
    let mut doc = body.fields.to_doc()?;
    doc.insert("_id".into(), Value::String(id.to_string()));
    doc.insert("_rev".into(), Value::String(tree.rev(idx).to_string()));
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
            let wanted = opts.attachments && m.revpos > since_pos;
            if wanted && opts.inline_max.is_some_and(|max| m.length > max) {
                // Too large to inline: the caller reads it in ranges.
                a.insert("follows".into(), Value::Bool(true));
            } else if wanted {
                let data = s.blob(&m.digest)?.ok_or_else(|| DbError::Other {
                    status: 500,
                    error: "internal".into(),
                    reason: format!("attachment bytes for {} are gone", m.digest),
                })?;
                a.insert(
                    "data".into(),
                    Value::String(base64::engine::general_purpose::STANDARD.encode(&data)),
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

fn get_impl<S: Storage + ?Sized>(s: &S, req: &GetRequest) -> Result<Doc, DbError> {
    get_with(s, req, DocOpts::from_get(req))
}

fn get_with<S: Storage + ?Sized>(
    s: &S,
    req: &GetRequest,
    opts: DocOpts<'_>,
) -> Result<Doc, DbError> {
    if req.id.starts_with(LOCAL_PREFIX) {
        return get_local_impl(s, &req.id);
    }
    let e = s.doc(&req.id)?.ok_or_else(not_found)?;
    let idx = match &req.rev {
        Some(rev) => {
            let i = e.tree.find(rev).ok_or_else(not_found)?;
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
    build_doc(s, &req.id, &e.tree, idx, &opts)
}

fn open_revs_impl<S: Storage + ?Sized>(
    s: &S,
    req: &OpenRevsRequest,
) -> Result<OpenRevsResponse, DbError> {
    open_revs_with(s, req, None)
}

fn open_revs_with<S: Storage + ?Sized>(
    s: &S,
    req: &OpenRevsRequest,
    inline_max: Option<u64>,
) -> Result<OpenRevsResponse, DbError> {
    let opts = DocOpts {
        revs: req.revs,
        attachments: req.attachments,
        atts_since: &req.atts_since,
        conflicts: false,
        deleted_conflicts: false,
        inline_max,
    };
    let Some(e) = s.doc(&req.id)? else {
        return match &req.open_revs {
            OpenRevs::All => Err(not_found()),
            OpenRevs::List(l) => Ok(OpenRevsResponse {
                revs: l.iter().map(|r| OpenRev::Missing(r.clone())).collect(),
            }),
        };
    };
    let mut out = Vec::new();
    match &req.open_revs {
        OpenRevs::All => {
            for l in e.tree.leaves() {
                out.push(OpenRev::Ok(build_doc(s, &req.id, &e.tree, l, &opts)?));
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
                            match build_doc(s, &req.id, &e.tree, i, &opts) {
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

fn all_docs_impl<S: Storage + ?Sized>(
    s: &S,
    req: &AllDocsRequest,
) -> Result<AllDocsResponse, DbError> {
    let opts = DocOpts {
        conflicts: req.conflicts,
        ..DocOpts::default()
    };
    let row_for = |id: &str, e: &StoredDoc, with_deleted: bool| -> Option<AllDocsRow> {
        let w = e.tree.winner();
        let deleted = e.tree.is_deleted(w);
        if deleted && !with_deleted {
            return None;
        }
        let doc = if req.include_docs {
            Some(if deleted {
                Value::Null
            } else {
                Value::Object(build_doc(s, id, &e.tree, w, &opts).ok()?)
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
    let total_rows = s.counters()?.doc_count;
    let mut rows = Vec::new();
    if let Some(keys) = &req.keys {
        let mut keys: Vec<&String> = keys.iter().collect();
        if req.descending {
            keys.reverse();
        }
        for k in keys.into_iter().skip(req.skip).take(limit) {
            let row = match s.doc(k)? {
                Some(e) => row_for(k, &e, true),
                None => None,
            };
            rows.push(row.unwrap_or(AllDocsRow {
                key: k.clone(),
                id: None,
                value: None,
                doc: None,
                error: Some("not_found".into()),
            }));
        }
        return Ok(AllDocsResponse {
            total_rows,
            offset: req.skip as u64,
            rows,
        });
    }
    let (lo, hi) = if req.descending {
        (req.end_key.as_deref(), req.start_key.as_deref())
    } else {
        (req.start_key.as_deref(), req.end_key.as_deref())
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
        Some(k) if req.descending && !req.inclusive_end => Bound::Excluded(k),
        Some(k) => Bound::Included(k),
    };
    let hi_b = match hi {
        None => Bound::Unbounded,
        Some(k) if !req.descending && !req.inclusive_end => Bound::Excluded(k),
        Some(k) => Bound::Included(k),
    };
    let live_before = match (req.descending, req.start_key.as_deref()) {
        (_, None) => 0,
        (false, Some(start)) => s.count_live(Bound::Unbounded, Bound::Excluded(start))?,
        (true, Some(start)) => s.count_live(Bound::Excluded(start), Bound::Unbounded)?,
    };
    if limit > 0 {
        let mut skip = req.skip;
        s.scan_ids(
            lo_b,
            hi_b,
            req.descending,
            req.include_docs,
            &mut |id, e| {
                if let Some(row) = row_for(id, e, false) {
                    if skip > 0 {
                        skip -= 1;
                    } else {
                        rows.push(row);
                    }
                }
                Ok(rows.len() < limit)
            },
        )?;
    }
    Ok(AllDocsResponse {
        total_rows,
        offset: live_before + req.skip as u64,
        rows,
    })
}

fn parse_since(since: &Seq, update_seq: u64) -> Result<u64, DbError> {
    match &since.0 {
        Value::String(s) if s == "now" => Ok(update_seq),
        Value::Null => Ok(0),
        _ => since
            .as_u64()
            .ok_or_else(|| DbError::BadRequest(format!("Malformed since: {}", since.0))),
    }
}

fn changes_impl<S: Storage + ?Sized>(
    s: &S,
    req: &ChangesRequest,
) -> Result<ChangesResponse, DbError> {
    let update_seq = s.counters()?.update_seq;
    let since = parse_since(&req.since, update_seq)?;
    let limit = req.limit.unwrap_or(usize::MAX);
    let opts = DocOpts {
        conflicts: req.conflicts,
        ..DocOpts::default()
    };
    let row = |id: &str, e: &StoredDoc| -> Result<ChangeRow, DbError> {
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
            Some(Value::Object(build_doc(s, id, &e.tree, w, &opts)?))
        } else {
            None
        };
        Ok(ChangeRow {
            id: id.to_string(),
            seq: Seq::from(e.seq),
            changes,
            deleted: e.tree.is_deleted(w),
            doc,
        })
    };
    let mut results = Vec::new();
    let mut last = None;
    match &req.doc_ids {
        Some(ids) => {
            let mut found: Vec<(u64, &str, Cow<'_, StoredDoc>)> = Vec::new();
            for id in ids {
                if let Some(e) = s.doc(id)? {
                    if e.seq > since {
                        found.push((e.seq, id.as_str(), e));
                    }
                }
            }
            found.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
            found.dedup_by(|a, b| (a.0, a.1) == (b.0, b.1));
            if req.descending {
                found.reverse();
            }
            found.truncate(limit);
            for (seq, id, e) in &found {
                results.push(row(id, e)?);
                last = Some(*seq);
            }
        }
        None => {
            if limit > 0 {
                s.scan_seqs(since, req.descending, req.include_docs, &mut |id, e| {
                    results.push(row(id, e)?);
                    last = Some(e.seq);
                    Ok(results.len() < limit)
                })?;
            }
        }
    }
    let limited = results.len() >= limit;
    let last_seq = if limited || req.descending {
        last.unwrap_or(since)
    } else {
        since.max(update_seq)
    };
    Ok(ChangesResponse {
        results,
        last_seq: Seq::from(last_seq),
        pending: None,
    })
}

fn revs_diff_impl<S: Storage + ?Sized>(
    s: &S,
    req: &RevsDiffRequest,
) -> Result<RevsDiffResponse, DbError> {
    let mut out = BTreeMap::new();
    for (id, revs) in &req.revs {
        let entry = s.doc(id)?;
        let tree = entry.as_ref().map(|e| &e.tree);
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
    Ok(RevsDiffResponse { missing: out })
}

fn bulk_get_impl<S: Storage + ?Sized>(
    s: &S,
    req: &BulkGetRequest,
) -> Result<BulkGetResponse, DbError> {
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
        let get = GetRequest {
            id: item.id.clone(),
            revs: req.revs,
            attachments: req.attachments,
            atts_since: item.atts_since.clone(),
            ..GetRequest::default()
        };
        let docs = match &item.rev {
            None => match get_with(
                s,
                &get,
                DocOpts {
                    inline_max: req.inline_max,
                    ..DocOpts::from_get(&get)
                },
            ) {
                Ok(d) => vec![BulkGetDoc::Ok(d)],
                Err(e) => {
                    engine_failure(&e)?;
                    vec![err(e.error(), e.reason())]
                }
            },
            Some(rev) => {
                let r = open_revs_with(
                    s,
                    &OpenRevsRequest {
                        id: item.id.clone(),
                        open_revs: OpenRevs::List(vec![rev.clone()]),
                        revs: req.revs,
                        attachments: req.attachments,
                        atts_since: item.atts_since.clone(),
                        latest: req.latest,
                    },
                    req.inline_max,
                )?;
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

fn attachment_impl<S: Storage + ?Sized>(
    s: &S,
    req: &AttachmentRequest,
) -> Result<AttachmentData, DbError> {
    let m = attachment_meta(s, req)?;
    let data = s.blob(&m.digest)?.ok_or_else(missing_att)?;
    Ok(AttachmentData {
        content_type: m.content_type,
        digest: m.digest,
        data,
    })
}

fn attachment_part<S: Storage + ?Sized>(
    s: &S,
    req: &AttachmentPartRequest,
) -> Result<AttachmentPart, DbError> {
    let (content_type, digest, length) = match &req.source {
        AttachmentSource::Doc(r) => {
            let m = attachment_meta(s, r)?;
            (m.content_type, m.digest, m.length)
        }
        AttachmentSource::Digest(d) => {
            let b = s.blob_info(d)?.ok_or_else(missing_att)?;
            (b.content_type, d.clone(), b.length)
        }
    };
    if req.offset > length {
        // As CouchDB answers a range it cannot satisfy; a range from the end is empty.
        return Err(DbError::Other {
            status: 416,
            error: "requested_range_not_satisfiable".into(),
            reason: format!(
                "byte {} is past the end of the attachment ({length} bytes)",
                req.offset
            ),
        });
    }
    let data = s
        .blob_chunk(&digest, req.offset, req.len)?
        .ok_or_else(missing_att)?;
    Ok(AttachmentPart {
        content_type,
        digest,
        length,
        offset: req.offset,
        data,
    })
}

fn missing_att() -> DbError {
    DbError::NotFound("Document is missing attachment".into())
}

/// The metadata of the attachment a request names.
fn attachment_meta<S: Storage + ?Sized>(
    s: &S,
    req: &AttachmentRequest,
) -> Result<AttMeta, DbError> {
    let e = s.doc(&req.id)?.ok_or_else(not_found)?;
    let idx = match &req.rev {
        Some(r) => e.tree.find(r).ok_or_else(not_found)?,
        None => {
            let w = e.tree.winner();
            if e.tree.is_deleted(w) {
                return Err(DbError::NotFound("deleted".into()));
            }
            w
        }
    };
    let body = e.tree.body(idx).ok_or_else(not_found)?;
    body.atts.get(&req.name).cloned().ok_or_else(missing_att)
}

/// The key a `_local` document is kept under: its id with the `_local/` prefix.
fn local_key(id: &str) -> Result<String, DbError> {
    let key = if id.starts_with(LOCAL_PREFIX) {
        id.to_string()
    } else {
        format!("{LOCAL_PREFIX}{id}")
    };
    validate_id(&key)?;
    Ok(key)
}

fn get_local_impl<S: Storage + ?Sized>(s: &S, id: &str) -> Result<Doc, DbError> {
    let key = local_key(id)?;
    let (rev, mut doc) = s.local(&key)?.ok_or_else(not_found)?;
    doc.insert("_id".into(), Value::String(key));
    doc.insert("_rev".into(), Value::String(format!("0-{rev}")));
    Ok(doc)
}

/// Every document's revision tree shape (`(rev, parent, deleted leaf)` sets), for tests that
/// compare replicas.
///
/// # Errors
/// The engine's failure.
pub fn tree_shapes<S: Storage + ?Sized>(s: &S) -> Result<TreeShapes, DbError> {
    let mut out = BTreeMap::new();
    s.scan_ids(
        Bound::Unbounded,
        Bound::Unbounded,
        false,
        false,
        &mut |id, e| {
            out.insert(id.to_string(), e.tree.shape());
            Ok(true)
        },
    )?;
    Ok(out)
}
