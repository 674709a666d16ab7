//! The database operations and their results, defined once.
//!
//! Every database peerpouch talks to (the in-memory store, a remote peer over the RPC, a CouchDB
//! database over HTTP) executes these [`Request`]s and answers with these [`Response`]s, so the
//! replicator and the apps see one interface. All types are serde-serialisable; their JSON follows
//! CouchDB's names (`new_edits`, `open_revs`, `possible_ancestors`, ...).

use bytes::Bytes;
use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::error::{CouchError, DbError};
use crate::rev::Rev;

/// A JSON document: an object with `_id`, `_rev` and body fields.
pub type Doc = serde_json::Map<String, Value>;

/// A position in a database's changes feed. Opaque: CouchDB clusters use strings, single nodes and
/// peerpouch stores use integers; compare them only through the database that issued them.
///
/// ```
/// use peerpouch::Seq;
/// assert_eq!(Seq::from(7).as_u64(), Some(7));
/// assert_eq!(Seq(serde_json::json!("12-g1AAAA")).as_u64(), Some(12));
/// assert_eq!(Seq::zero(), Seq::from(0));
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub Value);

impl Seq {
    /// The start of every feed.
    pub fn zero() -> Seq {
        Seq(Value::from(0u64))
    }

    /// The numeric part, if the sequence has one (`7`, `"7"`, `"7-g1AA..."`).
    pub fn as_u64(&self) -> Option<u64> {
        match &self.0 {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => {
                let digits = s.split('-').next().unwrap_or("");
                digits.parse().ok()
            }
            _ => None,
        }
    }
}

impl Default for Seq {
    fn default() -> Seq {
        Seq::zero()
    }
}

impl From<u64> for Seq {
    fn from(n: u64) -> Seq {
        Seq(Value::from(n))
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Value::String(s) => f.write_str(s),
            v => write!(f, "{v}"),
        }
    }
}

/// One database operation. See the crate docs for which store answers which.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Request {
    /// Database information: [`Response::Info`].
    Info,
    /// One revision of one document: [`Response::Doc`].
    Get(GetRequest),
    /// Several leaf revisions of one document: [`Response::OpenRevs`].
    OpenRevs(OpenRevsRequest),
    /// Documents by id: [`Response::AllDocs`].
    AllDocs(AllDocsRequest),
    /// Writes: [`Response::BulkDocs`].
    BulkDocs(BulkDocsRequest),
    /// The changes feed: [`Response::Changes`].
    Changes(ChangesRequest),
    /// Which of these revisions are missing: [`Response::RevsDiff`].
    RevsDiff(RevsDiffRequest),
    /// Many revisions of many documents at once: [`Response::BulkGet`].
    BulkGet(BulkGetRequest),
    /// One attachment's bytes: [`Response::Attachment`].
    GetAttachment(AttachmentRequest),
    /// A range of one attachment's bytes, with its metadata: [`Response::AttachmentPart`]. A
    /// server streams attachments with it, chunk by chunk, never holding one whole, and peers
    /// read large attachments with it a range at a time (the replicator does, for attachments
    /// a `_bulk_get` with [`BulkGetRequest::inline_max`] left out). Not a CouchDB call.
    ReadAttachment(AttachmentPartRequest),
    /// Receives one range of an attachment's bytes ahead of the document that refers to it:
    /// [`Response::Staged`]. Once every byte is there and matches the digest, a replicated
    /// write (`new_edits: false`) may refer to the attachment by a stub. How attachments too
    /// large to carry inline are written in chunks; not a CouchDB call.
    StageAttachment(StageRequest),
    /// A `_local` document: [`Response::Doc`].
    GetLocal(LocalRequest),
    /// Writes a `_local` document: [`Response::Written`].
    PutLocal(PutLocalRequest),
    /// Deletes a `_local` document: [`Response::Written`].
    DeleteLocal(DeleteLocalRequest),
}

impl Request {
    /// A short name for logs and traces (`get`, `bulk_docs`, ...).
    pub fn name(&self) -> &'static str {
        match self {
            Request::Info => "info",
            Request::Get(_) => "get",
            Request::OpenRevs(_) => "open_revs",
            Request::AllDocs(_) => "all_docs",
            Request::BulkDocs(_) => "bulk_docs",
            Request::Changes(_) => "changes",
            Request::RevsDiff(_) => "revs_diff",
            Request::BulkGet(_) => "bulk_get",
            Request::GetAttachment(_) => "get_attachment",
            Request::ReadAttachment(_) => "read_attachment",
            Request::StageAttachment(_) => "stage_attachment",
            Request::GetLocal(_) => "get_local",
            Request::PutLocal(_) => "put_local",
            Request::DeleteLocal(_) => "delete_local",
        }
    }

    /// Whether the request changes the database (refused by read-only shares). Receiving
    /// attachment bytes ([`Request::StageAttachment`]) counts: it is the first half of a write.
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Request::BulkDocs(_)
                | Request::PutLocal(_)
                | Request::DeleteLocal(_)
                | Request::StageAttachment(_)
        )
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

fn is_true(b: &bool) -> bool {
    *b
}

fn yes() -> bool {
    true
}

/// `GET /db/id` with its query options.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GetRequest {
    /// Document id.
    pub id: String,
    /// A specific revision; the winner when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<Rev>,
    /// Include `_revisions` (the revision's ancestry).
    #[serde(default, skip_serializing_if = "is_false")]
    pub revs: bool,
    /// Include `_conflicts` (other non-deleted leaves).
    #[serde(default, skip_serializing_if = "is_false")]
    pub conflicts: bool,
    /// Include `_deleted_conflicts` (other deleted leaves).
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted_conflicts: bool,
    /// Inline attachment data (base64) instead of stubs.
    #[serde(default, skip_serializing_if = "is_false")]
    pub attachments: bool,
    /// With `attachments`: inline only attachments newer than the newest of these revisions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub atts_since: Vec<Rev>,
    /// With `rev`: return the winning leaf descended from it instead.
    #[serde(default, skip_serializing_if = "is_false")]
    pub latest: bool,
}

impl GetRequest {
    /// The winning revision of `id`, no options.
    pub fn new(id: impl Into<String>) -> GetRequest {
        GetRequest {
            id: id.into(),
            ..GetRequest::default()
        }
    }
}

/// Which leaves `open_revs` returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenRevs {
    /// Every leaf (`open_revs=all`).
    All,
    /// These revisions (`open_revs=[...]`).
    List(Vec<Rev>),
}

impl Serialize for OpenRevs {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            OpenRevs::All => s.serialize_str("all"),
            OpenRevs::List(l) => l.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for OpenRevs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OpenRevs, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            L(Vec<Rev>),
        }
        match Raw::deserialize(d)? {
            Raw::S(s) if s == "all" => Ok(OpenRevs::All),
            Raw::S(s) => Err(serde::de::Error::custom(format!(
                "open_revs must be \"all\" or a list, not {s:?}"
            ))),
            Raw::L(l) => Ok(OpenRevs::List(l)),
        }
    }
}

/// `GET /db/id?open_revs=...`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenRevsRequest {
    /// Document id.
    pub id: String,
    /// Which leaves.
    pub open_revs: OpenRevs,
    /// Include `_revisions`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub revs: bool,
    /// Inline attachment data.
    #[serde(default, skip_serializing_if = "is_false")]
    pub attachments: bool,
    /// With `attachments`: inline only attachments newer than these revisions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub atts_since: Vec<Rev>,
    /// Replace each requested revision by the leaves descended from it.
    #[serde(default, skip_serializing_if = "is_false")]
    pub latest: bool,
}

impl OpenRevsRequest {
    /// Every leaf of document `id`, without options (`open_revs=all`).
    pub fn all(id: impl Into<String>) -> OpenRevsRequest {
        OpenRevsRequest {
            id: id.into(),
            open_revs: OpenRevs::All,
            revs: false,
            attachments: false,
            atts_since: Vec::new(),
            latest: false,
        }
    }
}

/// One entry of an `open_revs` answer: `{"ok": doc}` or `{"missing": rev}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpenRev {
    /// The revision's document.
    Ok(Doc),
    /// The database does not have this revision's body.
    Missing(Rev),
}

/// `GET /db/_all_docs` (or `POST` with `keys`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllDocsRequest {
    /// Exactly these ids, in this order (missing ones answer `error: not_found`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<String>>,
    /// First id (in the iteration direction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_key: Option<String>,
    /// Last id (in the iteration direction).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_key: Option<String>,
    /// Whether `end_key` itself is included (default true).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub inclusive_end: bool,
    /// At most this many rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Skip this many rows first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub skip: usize,
    /// Iterate from the highest id down.
    #[serde(default, skip_serializing_if = "is_false")]
    pub descending: bool,
    /// Add each row's winning document.
    #[serde(default, skip_serializing_if = "is_false")]
    pub include_docs: bool,
    /// With `include_docs`: add `_conflicts`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub conflicts: bool,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Default for AllDocsRequest {
    fn default() -> Self {
        AllDocsRequest {
            keys: None,
            start_key: None,
            end_key: None,
            inclusive_end: true,
            limit: None,
            skip: 0,
            descending: false,
            include_docs: false,
            conflicts: false,
        }
    }
}

/// `POST /db/_bulk_docs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BulkDocsRequest {
    /// The documents, as JSON; each is validated on its own.
    pub docs: Vec<Value>,
    /// `true`: ordinary edits (409 on a stale `_rev`); `false`: replicated revisions merged with
    /// their `_revisions` history as they are.
    #[serde(default = "yes")]
    pub new_edits: bool,
}

/// Which revisions a changes row lists.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangesStyle {
    /// Only the winning revision.
    #[default]
    MainOnly,
    /// Every leaf revision (what replication needs).
    AllDocs,
}

/// How a changes request waits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Feed {
    /// Answer at once with what there is.
    #[default]
    Normal,
    /// If nothing is newer than `since`, hold the answer until something is (or `timeout_ms`).
    /// Stores answer at once; the driver that owns the store holds empty answers.
    Longpoll,
}

/// `GET /db/_changes`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ChangesRequest {
    /// Only changes after this sequence.
    #[serde(default)]
    pub since: Seq,
    /// At most this many rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Add each row's winning document.
    #[serde(default, skip_serializing_if = "is_false")]
    pub include_docs: bool,
    /// Winner only, or all leaves.
    #[serde(default)]
    pub style: ChangesStyle,
    /// Only these documents (`filter=_doc_ids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc_ids: Option<Vec<String>>,
    /// Newest first.
    #[serde(default, skip_serializing_if = "is_false")]
    pub descending: bool,
    /// With `include_docs`: add `_conflicts`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub conflicts: bool,
    /// Answer at once, or wait for a change.
    #[serde(default)]
    pub feed: Feed,
    /// With `Longpoll`: give up waiting after this long and answer with no rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// `POST /db/_revs_diff`: document id to the revisions the caller has.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RevsDiffRequest {
    /// Id to revisions.
    pub revs: BTreeMap<String, Vec<Rev>>,
}

/// One item of a `_bulk_get` request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BulkGetItem {
    /// Document id.
    pub id: String,
    /// The revision; the winner when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<Rev>,
    /// Inline only attachments newer than these revisions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub atts_since: Vec<Rev>,
}

/// `POST /db/_bulk_get`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BulkGetRequest {
    /// What to fetch.
    pub docs: Vec<BulkGetItem>,
    /// Include `_revisions`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub revs: bool,
    /// Inline attachment data.
    #[serde(default, skip_serializing_if = "is_false")]
    pub attachments: bool,
    /// Answer with the leaves descended from each requested revision.
    #[serde(default, skip_serializing_if = "is_false")]
    pub latest: bool,
    /// With `attachments`: attachments longer than this many bytes are not inlined but
    /// described (`content_type`, `digest`, `length`, `revpos`, `"follows": true`), for the
    /// caller to read in ranges ([`Request::ReadAttachment`]). Not a CouchDB option: a server
    /// that does not know it inlines every attachment, which callers must accept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline_max: Option<u64>,
}

/// `GET /db/id/name`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttachmentRequest {
    /// Document id.
    pub id: String,
    /// Attachment name.
    pub name: String,
    /// The document revision; the winner when `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<Rev>,
}

/// A range of an attachment's bytes ([`Request::ReadAttachment`]).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttachmentPartRequest {
    /// Which attachment.
    pub source: AttachmentSource,
    /// The first byte wanted.
    pub offset: u64,
    /// How many bytes at most (fewer at the end).
    pub len: usize,
}

impl AttachmentPartRequest {
    /// Up to `len` bytes from `offset` of attachment `name` of document `id`'s winner.
    pub fn of_doc(id: &str, name: &str, offset: u64, len: usize) -> AttachmentPartRequest {
        AttachmentPartRequest {
            source: AttachmentSource::Doc(AttachmentRequest {
                id: id.into(),
                name: name.into(),
                rev: None,
            }),
            offset,
            len,
        }
    }
}

/// Where a [`Request::ReadAttachment`] finds its bytes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttachmentSource {
    /// A document's attachment, as [`Request::GetAttachment`] finds it.
    Doc(AttachmentRequest),
    /// The bytes of a digest: later ranges of an attachment whose first range named its
    /// document, so they stay the same bytes whatever happens to the document meanwhile.
    Digest(String),
}

/// One range of an attachment's bytes, received ahead of its document
/// ([`Request::StageAttachment`]).
///
/// Ranges come in order: the first at offset 0 (which also starts over), each next one where
/// the last ended. When `length` bytes are there, their MD5 must be `digest`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageRequest {
    /// `md5-<base64>` of the whole attachment.
    pub digest: String,
    /// Its MIME type.
    pub content_type: String,
    /// Its whole length in bytes.
    pub length: u64,
    /// Where `data` starts.
    pub offset: u64,
    /// The bytes of the range (base64 in JSON).
    #[serde(with = "crate::doc::base64_bytes")]
    pub data: Bytes,
}

/// `GET /db/_local/id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LocalRequest {
    /// The id, with or without the `_local/` prefix.
    pub id: String,
}

/// `PUT /db/_local/id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PutLocalRequest {
    /// The id, with or without the `_local/` prefix.
    pub id: String,
    /// The body; `_rev` must be the current revision when the document exists.
    pub doc: Doc,
}

/// `DELETE /db/_local/id?rev=...`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeleteLocalRequest {
    /// The id, with or without the `_local/` prefix.
    pub id: String,
    /// The current revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<Rev>,
}

/// The result of a [`Request`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Response {
    /// For [`Request::Info`].
    Info(DbInfo),
    /// For [`Request::Get`] and [`Request::GetLocal`].
    Doc(DocBody),
    /// For [`Request::OpenRevs`].
    OpenRevs(OpenRevsResponse),
    /// For [`Request::AllDocs`].
    AllDocs(AllDocsResponse),
    /// For [`Request::BulkDocs`].
    BulkDocs(BulkDocsResponse),
    /// For [`Request::Changes`].
    Changes(ChangesResponse),
    /// For [`Request::RevsDiff`].
    RevsDiff(RevsDiffResponse),
    /// For [`Request::BulkGet`].
    BulkGet(BulkGetResponse),
    /// For [`Request::GetAttachment`].
    Attachment(AttachmentData),
    /// For [`Request::ReadAttachment`] (never on the wire).
    #[serde(skip)]
    AttachmentPart(AttachmentPart),
    /// For [`Request::PutLocal`] and [`Request::DeleteLocal`].
    Written(DocResult),
    /// For [`Request::StageAttachment`].
    Staged(Staged),
}

/// A document in a [`Response::Doc`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DocBody {
    /// The document.
    pub doc: Doc,
}

/// [`Response::OpenRevs`] body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OpenRevsResponse {
    /// One entry per leaf or requested revision.
    pub revs: Vec<OpenRev>,
}

/// [`Response::BulkDocs`] body.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BulkDocsResponse {
    /// One result per input document, in order.
    pub results: Vec<DocResult>,
}

/// [`Response::RevsDiff`] body.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RevsDiffResponse {
    /// Only ids with something missing appear.
    pub missing: BTreeMap<String, RevsDiffEntry>,
}

macro_rules! response_accessor {
    ($(#[$doc:meta])* $fn:ident, $variant:ident, $ty:ty) => {
        $(#[$doc])*
        ///
        /// # Errors
        /// [`DbError::BadResponse`] when the response is of another kind.
        pub fn $fn(self) -> Result<$ty, DbError> {
            match self {
                Response::$variant(x) => Ok(x),
                other => Err(DbError::BadResponse(format!(
                    concat!("expected ", stringify!($variant), ", got {}"),
                    other.kind()
                ))),
            }
        }
    };
}

impl Response {
    /// The variant's name, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Response::Info(_) => "info",
            Response::Doc(_) => "doc",
            Response::OpenRevs(_) => "open_revs",
            Response::AllDocs(_) => "all_docs",
            Response::BulkDocs(_) => "bulk_docs",
            Response::Changes(_) => "changes",
            Response::RevsDiff(_) => "revs_diff",
            Response::BulkGet(_) => "bulk_get",
            Response::Attachment(_) => "attachment",
            Response::AttachmentPart(_) => "attachment_part",
            Response::Written(_) => "written",
            Response::Staged(_) => "staged",
        }
    }

    response_accessor!(
        /// The [`Response::Info`] inside.
        into_info, Info, DbInfo);
    response_accessor!(
        /// The document of a [`Response::Doc`].
        into_doc_body, Doc, DocBody);
    response_accessor!(
        /// The [`Response::OpenRevs`] inside.
        into_open_revs, OpenRevs, OpenRevsResponse);
    response_accessor!(
        /// The [`Response::AllDocs`] inside.
        into_all_docs, AllDocs, AllDocsResponse);
    response_accessor!(
        /// The [`Response::BulkDocs`] inside.
        into_bulk_docs, BulkDocs, BulkDocsResponse);
    response_accessor!(
        /// The [`Response::Changes`] inside.
        into_changes, Changes, ChangesResponse);
    response_accessor!(
        /// The [`Response::RevsDiff`] inside.
        into_revs_diff, RevsDiff, RevsDiffResponse);
    response_accessor!(
        /// The [`Response::BulkGet`] inside.
        into_bulk_get, BulkGet, BulkGetResponse);
    response_accessor!(
        /// The [`Response::Attachment`] inside.
        into_attachment, Attachment, AttachmentData);
    response_accessor!(
        /// The [`Response::Written`] inside.
        into_written, Written, DocResult);
    response_accessor!(
        /// The [`Response::AttachmentPart`] inside.
        into_attachment_part, AttachmentPart, AttachmentPart);
    response_accessor!(
        /// The [`Response::Staged`] inside.
        into_staged, Staged, Staged);
}

/// `GET /db`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DbInfo {
    /// The database's name.
    pub db_name: String,
    /// Documents whose winner is not deleted.
    pub doc_count: u64,
    /// Documents whose winner is deleted.
    pub doc_del_count: u64,
    /// The newest sequence.
    pub update_seq: Seq,
    /// The database's stable identity, when it has one: made once when the database is
    /// created and kept with it (never in a document, so replication cannot copy it). Two
    /// handles on one database (a file opened again, a peer's share under any name, after the
    /// sharer restarted) give the same value, so replication ids built from it find their
    /// checkpoints. CouchDB over HTTP has none (`None`; its URL stands in).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_uuid: Option<String>,
}

/// The longest [`DbInfo::db_uuid`] accepted (a UUID is 32 hex digits).
pub const MAX_DB_UUID_LEN: usize = 128;

/// Whether `uuid` may be a database identity ([`DbInfo::db_uuid`]): 1 to [`MAX_DB_UUID_LEN`]
/// visible ASCII characters (no spaces or control characters).
///
/// ```
/// use peerpouch::is_valid_db_uuid;
/// assert!(is_valid_db_uuid("0f8fad5bd9cb469fa16570867728950e"));
/// assert!(!is_valid_db_uuid(""));
/// assert!(!is_valid_db_uuid("two words"));
/// ```
pub fn is_valid_db_uuid(uuid: &str) -> bool {
    !uuid.is_empty() && uuid.len() <= MAX_DB_UUID_LEN && uuid.bytes().all(|b| b.is_ascii_graphic())
}

/// A row of `_all_docs`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllDocsRow {
    /// The id looked up.
    pub key: String,
    /// The document id (absent on `not_found` rows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The winning revision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<AllDocsValue>,
    /// With `include_docs`: the document (`null` for deleted ones).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<Value>,
    /// `not_found` for a key that names no document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The `value` of an `_all_docs` row.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllDocsValue {
    /// Winning revision.
    pub rev: Rev,
    /// Set when the winner is deleted (only with `keys`).
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
}

/// `_all_docs` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AllDocsResponse {
    /// Non-deleted documents in the database.
    pub total_rows: u64,
    /// Rows before the first one returned.
    pub offset: u64,
    /// The rows.
    pub rows: Vec<AllDocsRow>,
}

/// A revision in a changes row.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeRev {
    /// The revision.
    pub rev: Rev,
}

/// A row of the changes feed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangeRow {
    /// Document id.
    pub id: String,
    /// The document's newest sequence.
    pub seq: Seq,
    /// The winner, or every leaf with `style: all_docs` (winner first).
    pub changes: Vec<ChangeRev>,
    /// The winner is deleted.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// With `include_docs`: the winning document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub doc: Option<Value>,
}

/// `_changes` result.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChangesResponse {
    /// The rows, in sequence order.
    pub results: Vec<ChangeRow>,
    /// Where to continue from.
    pub last_seq: Seq,
    /// Rows left after these, when the database knows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<u64>,
}

/// One id of a `_revs_diff` answer.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RevsDiffEntry {
    /// Revisions the database does not have.
    pub missing: Vec<Rev>,
    /// Leaves it has that may be ancestors of the missing ones (use as `atts_since`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub possible_ancestors: Vec<Rev>,
}

/// `_bulk_get` result. Servers group the revisions by document (CouchDB merges items of one id;
/// peerpouch stores answer one entry per item, in order): read every `docs` of every result.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct BulkGetResponse {
    /// Results.
    pub results: Vec<BulkGetResult>,
}

/// The documents found for one `_bulk_get` item.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BulkGetResult {
    /// Document id.
    pub id: String,
    /// One entry per revision returned.
    pub docs: Vec<BulkGetDoc>,
}

/// `{"ok": doc}` or `{"error": {...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BulkGetDoc {
    /// Found.
    Ok(Doc),
    /// Not found or refused.
    Error(BulkGetError),
}

/// Why one `_bulk_get` revision was not returned.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct BulkGetError {
    /// Document id.
    pub id: String,
    /// The revision asked for, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rev: Option<String>,
    /// CouchDB's error word.
    pub error: String,
    /// CouchDB's reason.
    #[serde(default)]
    pub reason: String,
}

/// An attachment's bytes and metadata.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AttachmentData {
    /// MIME type.
    pub content_type: String,
    /// `md5-<base64>` of the bytes.
    pub digest: String,
    /// The bytes (base64 in JSON), shared with the store that holds them: cloning is cheap,
    /// and `Vec<u8>::into()` makes one without a copy.
    #[serde(with = "crate::doc::base64_bytes")]
    pub data: Bytes,
}

/// How much of an attachment a database has received ([`Response::Staged`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Staged {
    /// Bytes received so far, from offset 0: where the next range starts.
    pub received: u64,
    /// Every byte is there and matches the digest (or the database held them already): a
    /// replicated write may now refer to the attachment by a stub.
    pub complete: bool,
}

/// A range of an attachment's bytes, with its metadata ([`Response::AttachmentPart`]).
#[derive(Clone, Debug, PartialEq)]
pub struct AttachmentPart {
    /// MIME type.
    pub content_type: String,
    /// `md5-<base64>` of all the bytes.
    pub digest: String,
    /// The attachment's whole length.
    pub length: u64,
    /// Where `data` starts.
    pub offset: u64,
    /// The bytes of the range.
    pub data: Bytes,
}

/// The outcome of writing one document: its new revision, or why it was not written.
///
/// Serialises as CouchDB does: `{"ok": true, "id": ..., "rev": ...}` or
/// `{"id": ..., "error": ..., "reason": ...}`.
#[derive(Clone, Debug, PartialEq)]
pub struct DocResult {
    /// Document id (empty when the input had none and was refused before one was assigned).
    pub id: String,
    /// The new revision, or the error.
    pub result: Result<Rev, DbError>,
}

#[derive(Serialize, Deserialize)]
struct DocResultWire {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    #[serde(default)]
    id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    rev: Option<Rev>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    status: Option<u16>,
}

impl Serialize for DocResult {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let w = match &self.result {
            Ok(rev) => DocResultWire {
                ok: Some(true),
                id: self.id.clone(),
                rev: Some(rev.clone()),
                error: None,
                reason: None,
                status: None,
            },
            Err(e) => {
                let c = CouchError::from(e.clone());
                DocResultWire {
                    ok: None,
                    id: self.id.clone(),
                    rev: None,
                    error: Some(c.error),
                    reason: Some(c.reason),
                    status: Some(c.status),
                }
            }
        };
        w.serialize(s)
    }
}

impl<'de> Deserialize<'de> for DocResult {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DocResult, D::Error> {
        let w = DocResultWire::deserialize(d)?;
        let result = match (w.error, w.rev) {
            (Some(error), _) => {
                // CouchDB's _bulk_docs rows carry no status: infer it from the error word.
                let status = w.status.unwrap_or(match error.as_str() {
                    "conflict" => 409,
                    "not_found" => 404,
                    "forbidden" => 403,
                    "unauthorized" => 401,
                    "missing_stub" => 412,
                    _ => 400,
                });
                Err(DbError::from_couch(
                    status,
                    &error,
                    w.reason.as_deref().unwrap_or(""),
                ))
            }
            (None, Some(rev)) => Ok(rev),
            (None, None) => {
                return Err(serde::de::Error::custom(
                    "a bulk_docs row needs a rev or an error",
                ))
            }
        };
        Ok(DocResult { id: w.id, result })
    }
}
