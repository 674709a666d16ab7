//! [`CouchClient`]: one CouchDB database over HTTP, as a [`peerpouch::Database`].

use std::collections::BTreeMap;
use std::time::Duration;

use peerpouch::doc::digest_of;
use peerpouch::*;
use serde::Deserialize;
use serde_json::{json, Value};
use ureq::http::Method;

use crate::error::Error;
use crate::http::{self as h, Deadlines, Exchange, Fail, Raw, ServerKind};
use crate::tls::CaCerts;
use crate::url::{encode, encode_doc_id, DbUrl, Query};

/// How a [`CouchClient`] talks to its server.
///
/// ```
/// use std::time::Duration;
/// use peerpouch_couch::ClientConfig;
///
/// let config = ClientConfig::default()
///     .connect_timeout(Duration::from_secs(3))
///     .request_timeout(Some(Duration::from_secs(30)))
///     .max_body_bytes(64 << 20);
/// assert_eq!(config.connect_timeout, Duration::from_secs(3));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ClientConfig {
    /// Longest wait for a TCP (and TLS) connection. Default 10 s.
    pub connect_timeout: Duration,
    /// Longest a whole request may take, body included (`None`: no limit). Default 120 s.
    /// Longpoll `_changes` requests use their own deadline instead (`timeout` + `longpoll_margin`).
    pub request_timeout: Option<Duration>,
    /// Longest silence while reading an answer (`None`: no limit). Default 60 s.
    pub read_timeout: Option<Duration>,
    /// How long past a longpoll's `timeout` the client waits before it answers "no changes" on
    /// its own (servers such as pouchdb-server ignore `timeout`). Default 5 s.
    pub longpoll_margin: Duration,
    /// Largest response body accepted, in bytes. Default 256 MiB.
    pub max_body_bytes: u64,
    /// Idle keep-alive connections older than this are not reused. Default 4 s (pouchdb-server
    /// closes idle connections after 5 s).
    pub max_idle_age: Duration,
    /// Use `_bulk_get` when the server has it (default `true`). `false` always fetches
    /// revisions with one `GET ?open_revs=[...]` per document.
    pub use_bulk_get: bool,
    /// The `User-Agent` header.
    pub user_agent: String,
    /// Certificate authorities trusted for `https://` besides the platform's trust store (a
    /// private CA). Default none.
    pub ca_certs: CaCerts,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            connect_timeout: Duration::from_secs(10),
            request_timeout: Some(Duration::from_secs(120)),
            read_timeout: Some(Duration::from_secs(60)),
            longpoll_margin: Duration::from_secs(5),
            max_body_bytes: 256 << 20,
            max_idle_age: Duration::from_secs(4),
            use_bulk_get: true,
            user_agent: concat!("peerpouch-couch/", env!("CARGO_PKG_VERSION")).to_string(),
            ca_certs: CaCerts::none(),
        }
    }
}

impl ClientConfig {
    /// Sets [`ClientConfig::connect_timeout`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// let c = peerpouch_couch::ClientConfig::default().connect_timeout(Duration::from_secs(2));
    /// assert_eq!(c.connect_timeout, Duration::from_secs(2));
    /// ```
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Sets [`ClientConfig::request_timeout`].
    ///
    /// ```
    /// let c = peerpouch_couch::ClientConfig::default().request_timeout(None);
    /// assert_eq!(c.request_timeout, None);
    /// ```
    pub fn request_timeout(mut self, t: Option<Duration>) -> Self {
        self.request_timeout = t;
        self
    }

    /// Sets [`ClientConfig::read_timeout`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// let c = peerpouch_couch::ClientConfig::default().read_timeout(Some(Duration::from_secs(5)));
    /// assert_eq!(c.read_timeout, Some(Duration::from_secs(5)));
    /// ```
    pub fn read_timeout(mut self, t: Option<Duration>) -> Self {
        self.read_timeout = t;
        self
    }

    /// Sets [`ClientConfig::longpoll_margin`].
    ///
    /// ```
    /// # use std::time::Duration;
    /// let c = peerpouch_couch::ClientConfig::default().longpoll_margin(Duration::from_millis(500));
    /// assert_eq!(c.longpoll_margin, Duration::from_millis(500));
    /// ```
    pub fn longpoll_margin(mut self, t: Duration) -> Self {
        self.longpoll_margin = t;
        self
    }

    /// Sets [`ClientConfig::max_body_bytes`].
    ///
    /// ```
    /// let c = peerpouch_couch::ClientConfig::default().max_body_bytes(1 << 20);
    /// assert_eq!(c.max_body_bytes, 1 << 20);
    /// ```
    pub fn max_body_bytes(mut self, n: u64) -> Self {
        self.max_body_bytes = n;
        self
    }

    /// Sets [`ClientConfig::use_bulk_get`].
    ///
    /// ```
    /// let c = peerpouch_couch::ClientConfig::default().use_bulk_get(false);
    /// assert!(!c.use_bulk_get);
    /// ```
    pub fn use_bulk_get(mut self, yes: bool) -> Self {
        self.use_bulk_get = yes;
        self
    }

    /// Sets [`ClientConfig::ca_certs`]: `https://` servers may also present certificates
    /// signed by these CAs.
    ///
    /// ```no_run
    /// use peerpouch_couch::{CaCerts, ClientConfig};
    /// let c = ClientConfig::default().ca_certs(CaCerts::from_pem_file("ca.pem")?);
    /// assert_eq!(c.ca_certs.len(), 1);
    /// # Ok::<(), peerpouch_couch::Error>(())
    /// ```
    pub fn ca_certs(mut self, certs: CaCerts) -> Self {
        self.ca_certs = certs;
        self
    }

    /// An agent for `url` (the trust store is read only for `https://`).
    pub(crate) fn agent(
        &self,
        url: &DbUrl,
        global: Option<Duration>,
        per_read: Option<Duration>,
    ) -> ureq::Agent {
        let mut b = ureq::Agent::config_builder();
        if url.redacted().starts_with("https://") {
            b = b.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(crate::tls::root_certs(&self.ca_certs))
                    .build(),
            );
        }
        b.http_status_as_error(false)
            .accept("application/json")
            // Never ask for compression: pouchdb-server's continuous feed stalls when gzipped.
            .accept_encoding("identity")
            .user_agent(self.user_agent.as_str())
            .timeout_connect(Some(self.connect_timeout))
            .timeout_global(global)
            .timeout_per_read(per_read)
            .max_idle_age(self.max_idle_age)
            .build()
            .new_agent()
    }
}

/// Whether the server has `_bulk_get`, as far as this client has seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BulkGetSupport {
    Unknown,
    Yes,
    No,
}

/// A blocking client for one CouchDB database, usable wherever a [`Database`] is.
///
/// Every [`Request`] becomes one HTTP request (or, for `_bulk_get` on servers without it, one
/// per document). Credentials in the URL become an `Authorization: Basic` header and never
/// appear in errors or logs. Requests send `Accept: application/json`, bodies go as
/// `Content-Type: application/json`, and compression is never requested.
///
/// ```no_run
/// use peerpouch::{Database, MemoryStore, ReplicatorConfig, replicate};
/// use peerpouch_couch::CouchClient;
/// use serde_json::json;
///
/// let mut hub = CouchClient::new("http://admin:secret@127.0.0.1:5984/notes")?;
/// hub.create_db(true)?;
/// hub.put(json!({"_id": "a", "text": "hello"}))?;
/// let mut local = MemoryStore::new("notes");
/// let source_id = hub.url().redacted().to_string();
/// replicate(&mut hub, &mut local, ReplicatorConfig::new(source_id, "local:notes"))?;
/// assert_eq!(local.get("a")?["text"], "hello");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug)]
pub struct CouchClient {
    url: DbUrl,
    config: ClientConfig,
    agent: ureq::Agent,
    bulk_get: BulkGetSupport,
    server: std::cell::Cell<ServerKind>,
}

impl CouchClient {
    /// A client for the database at `url`, with [`ClientConfig::default`].
    ///
    /// ```
    /// let client = peerpouch_couch::CouchClient::new("http://127.0.0.1:5984/db").unwrap();
    /// assert_eq!(client.url().db_name(), "db");
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] (see [`DbUrl::parse`]). Nothing is sent yet.
    pub fn new(url: &str) -> Result<CouchClient, Error> {
        CouchClient::with_config(url, ClientConfig::default())
    }

    /// A client with explicit settings.
    ///
    /// ```
    /// use peerpouch_couch::{ClientConfig, CouchClient};
    /// let c = CouchClient::with_config("https://example.com/db", ClientConfig::default()).unwrap();
    /// assert_eq!(c.url().redacted(), "https://example.com/db");
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidUrl`].
    pub fn with_config(url: &str, config: ClientConfig) -> Result<CouchClient, Error> {
        let url = DbUrl::parse(url)?;
        if url.join("").parse::<ureq::http::Uri>().is_err() {
            return Err(Error::InvalidUrl(format!(
                "{} is not a valid URI (percent-encode special characters)",
                url.redacted()
            )));
        }
        let agent = config.agent(&url, config.request_timeout, config.read_timeout);
        Ok(CouchClient {
            url,
            config,
            agent,
            bulk_get: BulkGetSupport::Unknown,
            server: std::cell::Cell::new(ServerKind::Unknown),
        })
    }

    /// The database URL (credentials kept apart).
    ///
    /// ```
    /// let c = peerpouch_couch::CouchClient::new("http://u:p@127.0.0.1:5984/db").unwrap();
    /// assert_eq!(c.url().redacted(), "http://127.0.0.1:5984/db");
    /// ```
    pub fn url(&self) -> &DbUrl {
        &self.url
    }

    /// The settings in use.
    ///
    /// ```
    /// let c = peerpouch_couch::CouchClient::new("http://127.0.0.1:5984/db").unwrap();
    /// assert!(c.config().use_bulk_get);
    /// ```
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Creates the database (`PUT /db`). Returns `true` if it was created, `false` if it
    /// already existed and `if_missing` is set.
    ///
    /// ```no_run
    /// let c = peerpouch_couch::CouchClient::new("http://127.0.0.1:5984/db")?;
    /// c.create_db(true)?;
    /// # Ok::<(), peerpouch_couch::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Status`] 412 `file_exists` when it exists and `if_missing` is false; other
    /// server or connection errors.
    pub fn create_db(&self, if_missing: bool) -> Result<bool, Error> {
        match self.exchange(Method::PUT, "", None, None) {
            Ok(_) => Ok(true),
            Err(Error::Status { status: 412, .. }) if if_missing => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes the database (`DELETE /db`).
    ///
    /// ```no_run
    /// let c = peerpouch_couch::CouchClient::new("http://127.0.0.1:5984/db")?;
    /// c.delete_db()?;
    /// # Ok::<(), peerpouch_couch::Error>(())
    /// ```
    ///
    /// # Errors
    /// [`Error::Status`] 404 when it does not exist (CouchDB; pouchdb-server answers 200);
    /// connection errors.
    pub fn delete_db(&self) -> Result<(), Error> {
        self.exchange(Method::DELETE, "", None, None).map(|_| ())
    }

    pub(crate) fn agent_config(&self) -> (&DbUrl, &ClientConfig) {
        (&self.url, &self.config)
    }

    fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        deadlines: Option<Deadlines>,
    ) -> Result<Raw, Error> {
        self.exchange_raw(method, path, body, deadlines)
            .map_err(|f| self.fail_to_error(f))
    }

    fn fail_to_error(&self, f: Fail) -> Error {
        match f {
            Fail::Err(e) => e,
            Fail::Deadline => Error::Unreachable {
                url: self.url.redacted().to_string(),
                detail: format!(
                    "no complete answer within the request timeout ({:?})",
                    self.config.request_timeout.unwrap_or_default()
                ),
            },
        }
    }

    fn exchange_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        deadlines: Option<Deadlines>,
    ) -> Result<Raw, Fail> {
        h::run(
            &self.agent,
            &self.url,
            Exchange {
                method,
                path,
                body,
                deadlines,
                max_body: self.config.max_body_bytes,
                server: &self.server,
            },
        )
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str, what: &str) -> Result<T, Error> {
        let raw = self.exchange(Method::GET, path, None, None)?;
        h::parse(&self.url, what, &raw.body)
    }

    fn send_json<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &impl serde::Serialize,
        what: &str,
    ) -> Result<T, Error> {
        let bytes = serde_json::to_vec(body).map_err(|e| Error::BadResponse {
            url: self.url.redacted().to_string(),
            detail: format!("cannot encode the {what} request: {e}"),
        })?;
        let raw = self.exchange(method, path, Some(bytes), None)?;
        h::parse(&self.url, what, &raw.body)
    }

    fn bad(&self, detail: impl Into<String>) -> Error {
        Error::BadResponse {
            url: self.url.redacted().to_string(),
            detail: detail.into(),
        }
    }

    fn op_info(&self) -> Result<DbInfo, Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default)]
            db_name: Option<String>,
            #[serde(default)]
            doc_count: Option<u64>,
            #[serde(default)]
            doc_del_count: Option<u64>,
            #[serde(default)]
            update_seq: Option<Value>,
        }
        let w: Wire = self.get_json("", "database info")?;
        let update_seq = match w.update_seq {
            None | Some(Value::Null) => Seq::zero(),
            Some(v @ (Value::Number(_) | Value::String(_))) => Seq(v),
            Some(other) => {
                return Err(self.bad(format!(
                    "database info: update_seq is neither a number nor a string: {}",
                    h::prefix(other.to_string().as_bytes(), 60)
                )))
            }
        };
        Ok(DbInfo {
            db_name: w.db_name.unwrap_or_else(|| self.url.db_name().to_string()),
            doc_count: w.doc_count.unwrap_or(0),
            doc_del_count: w.doc_del_count.unwrap_or(0),
            update_seq,
            // CouchDB has no identity per database (`instance_start_time` is "0" since 2.0):
            // replications name it by its URL, as CouchDB's own replicator does.
            db_uuid: None,
        })
    }

    /// Whether `latest=true` may be sent with revisions the server might not have.
    ///
    /// pouchdb-server 4.2.0 (express-pouchdb) dies of an uncaught exception ("Unable to resolve
    /// latest revision") on `?rev=X&latest=true` or `?open_revs=[X]&latest=true` when the
    /// document exists but `X` does not. With it, `latest` is emulated from `open_revs=all`.
    fn latest_is_safe(&self) -> bool {
        if self.server.get() == ServerKind::Unknown {
            // One cheap request tells what the server is.
            let _ = self.op_info();
        }
        let safe = self.server.get() != ServerKind::ExpressPouchDb;
        if !safe {
            tracing::trace!("pouchdb-server: emulating latest=true");
        }
        safe
    }

    /// Every leaf of `id` with its ancestry (newest first) and deletion flag.
    fn leaves_with_history(&self, id: &str) -> Result<Vec<(Rev, Vec<Rev>, bool)>, Error> {
        let q = Self::open_revs_query(&OpenRevs::All, true, false, &[], false);
        let path = format!("/{}{}", encode_doc_id(id), q.as_str());
        let entries: Vec<Value> = self.get_json(&path, "open_revs")?;
        let mut out = Vec::new();
        for e in entries {
            let OpenRev::Ok(doc) = self.open_rev_entry(e)? else {
                continue;
            };
            let rev: Rev = doc
                .get("_rev")
                .and_then(Value::as_str)
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| self.bad("open_revs: a leaf has no valid _rev"))?;
            // `Map`'s index panics on a missing key: go through `get`.
            let revisions = doc.get("_revisions").cloned().unwrap_or(Value::Null);
            let start = revisions["start"].as_u64().unwrap_or(rev.pos);
            let ids = revisions["ids"].as_array().cloned().unwrap_or_default();
            let history: Vec<Rev> = ids
                .iter()
                .enumerate()
                .filter_map(|(i, h)| Some(Rev::new(start.checked_sub(i as u64)?, h.as_str()?)))
                .collect();
            let deleted = doc.get("_deleted") == Some(&Value::Bool(true));
            out.push((rev, history, deleted));
        }
        Ok(out)
    }

    /// The leaves descended from `rev` (itself included), winner first.
    fn descendant_leaves(leaves: &[(Rev, Vec<Rev>, bool)], rev: &Rev) -> Vec<Rev> {
        let mut found: Vec<(bool, Rev)> = leaves
            .iter()
            .filter(|(leaf, history, _)| leaf == rev || history.contains(rev))
            .map(|(leaf, _, deleted)| (!*deleted, leaf.clone()))
            .collect();
        // CouchDB's winner rule: live before deleted, then the highest revision.
        found.sort_by(|a, b| b.cmp(a));
        found.into_iter().map(|(_, r)| r).collect()
    }

    fn op_get(&self, r: &GetRequest) -> Result<Doc, Error> {
        if let (true, Some(rev)) = (r.latest, &r.rev) {
            if !self.latest_is_safe() {
                let leaves = self.leaves_with_history(&r.id)?;
                let Some(leaf) = Self::descendant_leaves(&leaves, rev).into_iter().next() else {
                    return Err(Error::Status {
                        status: 404,
                        error: "not_found".into(),
                        reason: "missing".into(),
                    });
                };
                return self.op_get(&GetRequest {
                    rev: Some(leaf),
                    latest: false,
                    ..r.clone()
                });
            }
        }
        let mut q = Query::new();
        if let Some(rev) = &r.rev {
            q.push("rev", &rev.to_string());
        }
        q.flag("revs", r.revs)
            .flag("conflicts", r.conflicts)
            .flag("deleted_conflicts", r.deleted_conflicts)
            .flag("attachments", r.attachments);
        if !r.atts_since.is_empty() {
            q.json("atts_since", &r.atts_since);
        }
        q.flag("latest", r.latest);
        let path = format!("/{}{}", encode_doc_id(&r.id), q.as_str());
        let mut doc: Doc = self.get_json(&path, "document")?;
        if r.deleted_conflicts
            && !doc.contains_key("_deleted_conflicts")
            && self.server.get() == ServerKind::ExpressPouchDb
        {
            // pouchdb-server ignores deleted_conflicts=true: list the other deleted leaves.
            let this = doc
                .get("_rev")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string();
            let mut dead: Vec<Rev> = self
                .leaves_with_history(&r.id)?
                .into_iter()
                .filter(|(rev, _, deleted)| *deleted && rev.to_string() != this)
                .map(|(rev, _, _)| rev)
                .collect();
            dead.sort_by(|a, b| b.cmp(a));
            if !dead.is_empty() {
                doc.insert("_deleted_conflicts".into(), json!(dead));
            }
        }
        Ok(doc)
    }

    fn open_revs_query(
        open_revs: &OpenRevs,
        revs: bool,
        attachments: bool,
        atts_since: &[Rev],
        latest: bool,
    ) -> Query {
        let mut q = Query::new();
        match open_revs {
            OpenRevs::All => q.push("open_revs", "all"),
            OpenRevs::List(l) => q.json("open_revs", l),
        };
        q.flag("revs", revs).flag("attachments", attachments);
        if !atts_since.is_empty() {
            q.json("atts_since", &atts_since);
        }
        q.flag("latest", latest);
        q
    }

    fn op_open_revs(&self, r: &OpenRevsRequest) -> Result<Vec<OpenRev>, Error> {
        if let (true, OpenRevs::List(list)) = (r.latest, &r.open_revs) {
            if !self.latest_is_safe() {
                return self.open_revs_emulating_latest(r, list);
            }
        }
        let q = Self::open_revs_query(&r.open_revs, r.revs, r.attachments, &r.atts_since, r.latest);
        let path = format!("/{}{}", encode_doc_id(&r.id), q.as_str());
        let entries: Vec<Value> = self.get_json(&path, "open_revs")?;
        entries
            .into_iter()
            .map(|e| self.open_rev_entry(e))
            .collect()
    }

    /// `open_revs=[...]&latest=true` from `open_revs=all`, then the leaves by name.
    fn open_revs_emulating_latest(
        &self,
        r: &OpenRevsRequest,
        list: &[Rev],
    ) -> Result<Vec<OpenRev>, Error> {
        let leaves = match self.leaves_with_history(&r.id) {
            Ok(l) => l,
            Err(Error::Status { status: 404, .. }) => Vec::new(),
            Err(e) => return Err(e),
        };
        let plan: Vec<Vec<Rev>> = list
            .iter()
            .map(|rev| Self::descendant_leaves(&leaves, rev))
            .collect();
        let mut wanted: Vec<Rev> = Vec::new();
        for leaf in plan.iter().flatten() {
            if !wanted.contains(leaf) {
                wanted.push(leaf.clone());
            }
        }
        let mut fetched: BTreeMap<Rev, OpenRev> = BTreeMap::new();
        if !wanted.is_empty() {
            let got = self.op_open_revs(&OpenRevsRequest {
                open_revs: OpenRevs::List(wanted.clone()),
                latest: false,
                ..r.clone()
            })?;
            for entry in got {
                let rev = match &entry {
                    OpenRev::Ok(doc) => doc
                        .get("_rev")
                        .and_then(Value::as_str)
                        .and_then(|s| s.parse().ok()),
                    OpenRev::Missing(rev) => Some(rev.clone()),
                };
                if let Some(rev) = rev {
                    fetched.insert(rev, entry);
                }
            }
        }
        let mut out = Vec::new();
        for (rev, leaves) in list.iter().zip(plan) {
            if leaves.is_empty() {
                out.push(OpenRev::Missing(rev.clone()));
            }
            for leaf in leaves {
                if let Some(entry) = fetched.remove(&leaf) {
                    out.push(entry);
                }
            }
        }
        Ok(out)
    }

    fn open_rev_entry(&self, e: Value) -> Result<OpenRev, Error> {
        let Value::Object(mut m) = e else {
            return Err(self.bad("open_revs: an entry is not an object"));
        };
        if let Some(ok) = m.remove("ok") {
            return match ok {
                Value::Object(doc) => Ok(OpenRev::Ok(doc)),
                _ => Err(self.bad("open_revs: \"ok\" is not a document")),
            };
        }
        if let Some(Value::String(rev)) = m.get("missing") {
            return rev
                .parse()
                .map(OpenRev::Missing)
                .map_err(|e| self.bad(format!("open_revs: {e}")));
        }
        Err(self.bad("open_revs: an entry has neither \"ok\" nor \"missing\""))
    }

    fn op_all_docs(&self, r: &AllDocsRequest) -> Result<AllDocsResponse, Error> {
        let mut q = Query::new();
        if let Some(k) = &r.start_key {
            q.json("startkey", k);
        }
        if let Some(k) = &r.end_key {
            q.json("endkey", k);
        }
        if !r.inclusive_end {
            q.push("inclusive_end", "false");
        }
        if let Some(l) = r.limit {
            q.push("limit", &l.to_string());
        }
        if r.skip > 0 {
            q.push("skip", &r.skip.to_string());
        }
        q.flag("descending", r.descending)
            .flag("include_docs", r.include_docs)
            .flag("conflicts", r.conflicts);
        let path = format!("/_all_docs{}", q.as_str());
        let wire: Value = match &r.keys {
            Some(keys) => {
                self.send_json(Method::POST, &path, &json!({ "keys": keys }), "_all_docs")?
            }
            None => self.get_json(&path, "_all_docs")?,
        };
        self.parse_all_docs(wire)
    }

    fn parse_all_docs(&self, wire: Value) -> Result<AllDocsResponse, Error> {
        let Value::Object(mut m) = wire else {
            return Err(self.bad("_all_docs: not an object"));
        };
        let num = |v: Option<&Value>| v.and_then(Value::as_u64).unwrap_or(0);
        let total_rows = num(m.get("total_rows"));
        // CouchDB answers `"offset": null` with `keys`.
        let offset = num(m.get("offset"));
        let Some(Value::Array(rows)) = m.remove("rows") else {
            return Err(self.bad("_all_docs: no rows"));
        };
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let Value::Object(mut row) = row else {
                return Err(self.bad("_all_docs: a row is not an object"));
            };
            let key = match row.remove("key") {
                Some(Value::String(s)) => s,
                Some(other) => other.to_string(),
                None => return Err(self.bad("_all_docs: a row has no key")),
            };
            let id = row.remove("id").and_then(|v| v.as_str().map(String::from));
            let value = match row.remove("value") {
                None | Some(Value::Null) => None,
                Some(v) => Some(
                    serde_json::from_value::<AllDocsValue>(v)
                        .map_err(|e| self.bad(format!("_all_docs: bad row value: {e}")))?,
                ),
            };
            // Keep an explicit `"doc": null` (a deleted document listed by `keys`).
            let doc = row.remove("doc");
            let error = row.remove("error").map(|v| match v {
                Value::String(s) => s,
                other => other.to_string(),
            });
            out.push(AllDocsRow {
                key,
                id,
                value,
                doc,
                error,
            });
        }
        Ok(AllDocsResponse {
            total_rows,
            offset,
            rows: out,
        })
    }

    fn op_bulk_docs(&self, r: &BulkDocsRequest) -> Result<BulkDocsResponse, Error> {
        let body = json!({ "docs": r.docs, "new_edits": r.new_edits });
        let rows: Vec<Value> = self.send_json(Method::POST, "/_bulk_docs", &body, "_bulk_docs")?;
        // new_edits=false: CouchDB and pouchdb-server send `[]` or only the error rows; the
        // replicator counts written = sent - error rows, so pass the rows on exactly.
        let results = rows
            .into_iter()
            .map(|row| {
                serde_json::from_value::<DocResult>(row)
                    .map_err(|e| self.bad(format!("_bulk_docs: bad row: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(BulkDocsResponse { results })
    }

    fn op_changes(&self, r: &ChangesRequest) -> Result<ChangesResponse, Error> {
        if r.limit == Some(0) || r.doc_ids.as_ref().is_some_and(Vec::is_empty) {
            // Nothing can match: pouchdb-server treats limit=0 as 1, and answers an empty
            // doc_ids list with `last_seq: 0` (going back). Answer here without a request.
            return Ok(ChangesResponse {
                results: Vec::new(),
                last_seq: r.since.clone(),
                pending: None,
            });
        }
        let mut q = Query::new();
        if r.doc_ids.is_some() {
            // Only ever together with the doc_ids body below: without it pouchdb-server looks
            // up `_design/_doc_ids` and crashes (see .ci/hub/NOTES.md).
            q.push("filter", "_doc_ids");
        }
        q.push("since", &r.since.to_string());
        if let Some(l) = r.limit {
            q.push("limit", &l.to_string());
        }
        q.flag("include_docs", r.include_docs);
        if r.style == ChangesStyle::AllDocs {
            q.push("style", "all_docs");
        }
        q.flag("descending", r.descending)
            .flag("conflicts", r.conflicts);
        let mut deadlines = None;
        if r.feed == Feed::Longpoll {
            let timeout = r.timeout_ms.unwrap_or(60_000);
            q.push("feed", "longpoll");
            q.push("timeout", &timeout.to_string());
            // The server may ignore `timeout` (pouchdb-server does): our own deadline.
            deadlines = Some(Deadlines {
                global: Some(
                    Duration::from_millis(timeout).saturating_add(self.config.longpoll_margin),
                ),
                per_read: None,
            });
        }
        let path = format!("/_changes{}", q.as_str());
        let body = match &r.doc_ids {
            Some(ids) => Some(
                serde_json::to_vec(&json!({ "doc_ids": ids }))
                    .map_err(|e| self.bad(format!("cannot encode doc_ids: {e}")))?,
            ),
            None => None,
        };
        let method = if body.is_some() {
            Method::POST
        } else {
            Method::GET
        };
        let raw = match self.exchange_raw(method, &path, body, deadlines) {
            Ok(raw) => raw,
            Err(Fail::Deadline) if r.feed == Feed::Longpoll => {
                tracing::debug!(since = %r.since, "longpoll deadline passed: no changes");
                return Ok(ChangesResponse {
                    results: Vec::new(),
                    last_seq: r.since.clone(),
                    pending: None,
                });
            }
            Err(f) => return Err(self.fail_to_error(f)),
        };
        #[derive(Deserialize)]
        struct Wire {
            results: Vec<ChangeRow>,
            #[serde(default)]
            last_seq: Option<Seq>,
            #[serde(default)]
            pending: Option<u64>,
        }
        let w: Wire = h::parse(&self.url, "_changes", &raw.body)?;
        let last_seq = w
            .last_seq
            .filter(|s| !s.0.is_null())
            .or_else(|| w.results.last().map(|row| row.seq.clone()))
            .unwrap_or_else(|| r.since.clone());
        Ok(ChangesResponse {
            results: w.results,
            last_seq,
            pending: w.pending,
        })
    }

    fn op_revs_diff(&self, r: &RevsDiffRequest) -> Result<RevsDiffResponse, Error> {
        let missing: BTreeMap<String, RevsDiffEntry> =
            self.send_json(Method::POST, "/_revs_diff", &r.revs, "_revs_diff")?;
        Ok(RevsDiffResponse { missing })
    }

    fn op_bulk_get(&mut self, r: &BulkGetRequest) -> Result<BulkGetResponse, Error> {
        if r.docs.is_empty() {
            return Ok(BulkGetResponse::default());
        }
        if self.config.use_bulk_get && self.bulk_get != BulkGetSupport::No {
            match self.bulk_get_endpoint(r) {
                Ok(resp) => {
                    self.bulk_get = BulkGetSupport::Yes;
                    return Ok(resp);
                }
                Err(Error::Status {
                    status: status @ (400 | 404 | 405),
                    error,
                    reason,
                }) if self.bulk_get == BulkGetSupport::Unknown
                    && !(status == 404 && db_missing(&reason)) =>
                {
                    tracing::info!(
                        url = %self.url.redacted(), status, %error, %reason,
                        "server has no usable _bulk_get; fetching revisions with open_revs"
                    );
                    self.bulk_get = BulkGetSupport::No;
                }
                Err(e) => return Err(e),
            }
        }
        self.bulk_get_fallback(r)
    }

    fn bulk_get_endpoint(&self, r: &BulkGetRequest) -> Result<BulkGetResponse, Error> {
        let mut q = Query::new();
        q.flag("revs", r.revs).flag("attachments", r.attachments);
        // On pouchdb-server `latest` with a rev it lacks kills the server; without it, the
        // revisions asked for (which revs_diff just listed) come back as they are.
        q.flag("latest", r.latest && self.latest_is_safe());
        let path = format!("/_bulk_get{}", q.as_str());
        #[derive(Deserialize)]
        struct Wire {
            results: Vec<WireResult>,
        }
        #[derive(Deserialize)]
        struct WireResult {
            id: String,
            #[serde(default)]
            docs: Vec<Value>,
        }
        let w: Wire =
            self.send_json(Method::POST, &path, &json!({ "docs": r.docs }), "_bulk_get")?;
        let mut results = Vec::with_capacity(w.results.len());
        for res in w.results {
            // The rev asked for, when one item names this id with exactly one rev (to fill in
            // errors that do not say which rev they are about).
            let mut asked = r
                .docs
                .iter()
                .filter(|d| d.id == res.id)
                .map(|d| d.rev.as_ref());
            let only_rev = match (asked.next(), asked.next()) {
                (Some(Some(rev)), None) => Some(rev.to_string()),
                _ => None,
            };
            let mut docs = Vec::with_capacity(res.docs.len());
            for d in res.docs {
                docs.push(self.bulk_get_entry(&res.id, only_rev.as_deref(), d)?);
            }
            results.push(BulkGetResult { id: res.id, docs });
        }
        Ok(BulkGetResponse { results })
    }

    fn bulk_get_entry(&self, id: &str, asked: Option<&str>, d: Value) -> Result<BulkGetDoc, Error> {
        let not_found = |rev: Option<String>| {
            BulkGetDoc::Error(BulkGetError {
                id: id.to_string(),
                rev,
                error: "not_found".into(),
                reason: "missing".into(),
            })
        };
        let Value::Object(mut m) = d else {
            return Err(self.bad("_bulk_get: an entry is not an object"));
        };
        if let Some(ok) = m.remove("ok") {
            return match ok {
                Value::Object(doc) => Ok(BulkGetDoc::Ok(doc)),
                _ => Err(self.bad("_bulk_get: \"ok\" is not a document")),
            };
        }
        if let Some(err) = m.remove("error") {
            #[derive(Deserialize)]
            struct E {
                #[serde(default)]
                id: Option<String>,
                #[serde(default)]
                rev: Option<String>,
                #[serde(default)]
                error: Option<String>,
                #[serde(default)]
                reason: Option<String>,
            }
            let e: E = serde_json::from_value(err)
                .map_err(|e| self.bad(format!("_bulk_get: bad error entry: {e}")))?;
            return Ok(BulkGetDoc::Error(BulkGetError {
                id: e.id.unwrap_or_else(|| id.to_string()),
                rev: e.rev.or_else(|| asked.map(String::from)),
                error: e.error.unwrap_or_else(|| "unknown_error".into()),
                reason: e.reason.unwrap_or_default(),
            }));
        }
        // pouchdb-server: a missing rev is `{"missing": rev}`, a missing doc is `{}`.
        if let Some(missing) = m.remove("missing") {
            return Ok(not_found(missing.as_str().map(String::from)));
        }
        if m.is_empty() {
            return Ok(not_found(asked.map(String::from)));
        }
        Err(self.bad("_bulk_get: an entry has neither ok, error nor missing"))
    }

    /// `_bulk_get` without the endpoint: one `GET ?open_revs=[...]` per document id.
    fn bulk_get_fallback(&self, r: &BulkGetRequest) -> Result<BulkGetResponse, Error> {
        struct Group<'a> {
            id: &'a str,
            revs: Vec<Rev>,
            winner: bool,
            atts_since: Vec<Rev>,
        }
        let mut groups: Vec<Group<'_>> = Vec::new();
        for item in &r.docs {
            let i = match groups.iter().position(|g| g.id == item.id) {
                Some(i) => i,
                None => {
                    groups.push(Group {
                        id: &item.id,
                        revs: Vec::new(),
                        winner: false,
                        atts_since: Vec::new(),
                    });
                    groups.len() - 1
                }
            };
            let g = &mut groups[i];
            match &item.rev {
                Some(rev) if !g.revs.contains(rev) => g.revs.push(rev.clone()),
                Some(_) => {}
                None => g.winner = true,
            }
            for a in &item.atts_since {
                if !g.atts_since.contains(a) {
                    g.atts_since.push(a.clone());
                }
            }
        }
        let mut results = Vec::with_capacity(groups.len());
        for g in groups {
            let mut docs = Vec::new();
            let err = |rev: Option<&Rev>, e: &Error| {
                let (error, reason) = match e {
                    Error::Status { error, reason, .. } => (error.clone(), reason.clone()),
                    other => ("unknown_error".to_string(), other.to_string()),
                };
                BulkGetDoc::Error(BulkGetError {
                    id: g.id.to_string(),
                    rev: rev.map(Rev::to_string),
                    error,
                    reason,
                })
            };
            if !g.revs.is_empty() {
                let req = OpenRevsRequest {
                    id: g.id.to_string(),
                    open_revs: OpenRevs::List(g.revs.clone()),
                    revs: r.revs,
                    attachments: r.attachments,
                    atts_since: g.atts_since.clone(),
                    latest: r.latest,
                };
                match self.op_open_revs(&req) {
                    Ok(entries) => docs.extend(entries.into_iter().map(|e| match e {
                        OpenRev::Ok(doc) => BulkGetDoc::Ok(doc),
                        OpenRev::Missing(rev) => BulkGetDoc::Error(BulkGetError {
                            id: g.id.to_string(),
                            rev: Some(rev.to_string()),
                            error: "not_found".into(),
                            reason: "missing".into(),
                        }),
                    })),
                    Err(e @ Error::Status { status: 404, .. }) => {
                        docs.extend(g.revs.iter().map(|rev| err(Some(rev), &e)))
                    }
                    Err(e) => return Err(e),
                }
            }
            if g.winner {
                let req = GetRequest {
                    id: g.id.to_string(),
                    revs: r.revs,
                    attachments: r.attachments,
                    atts_since: g.atts_since.clone(),
                    ..GetRequest::default()
                };
                match self.op_get(&req) {
                    Ok(doc) => docs.push(BulkGetDoc::Ok(doc)),
                    Err(e @ Error::Status { status: 404, .. }) => docs.push(err(None, &e)),
                    Err(e) => return Err(e),
                }
            }
            results.push(BulkGetResult {
                id: g.id.to_string(),
                docs,
            });
        }
        Ok(BulkGetResponse { results })
    }

    fn op_attachment(&self, r: &AttachmentRequest) -> Result<AttachmentData, Error> {
        let mut q = Query::new();
        if let Some(rev) = &r.rev {
            q.push("rev", &rev.to_string());
        }
        let path = format!(
            "/{}/{}{}",
            encode_doc_id(&r.id),
            encode(&r.name),
            q.as_str()
        );
        let raw = self.exchange(Method::GET, &path, None, None)?;
        Ok(AttachmentData {
            content_type: raw
                .content_type
                .unwrap_or_else(|| "application/octet-stream".into()),
            digest: digest_of(&raw.body),
            data: raw.body.into(),
        })
    }

    fn local_path(id: &str) -> String {
        let rest = id.strip_prefix(peerpouch::doc::LOCAL_PREFIX).unwrap_or(id);
        format!("/_local/{}", encode(rest))
    }

    fn written(&self, v: Value, what: &str) -> Result<DocResult, Error> {
        serde_json::from_value::<DocResult>(v).map_err(|e| self.bad(format!("{what}: {e}")))
    }

    fn op_put_local(&self, r: &PutLocalRequest) -> Result<DocResult, Error> {
        let mut doc = r.doc.clone();
        // The path names the document; CouchDB refuses a body `_id` that differs from it.
        doc.remove("_id");
        let v: Value = self.send_json(Method::PUT, &Self::local_path(&r.id), &doc, "_local put")?;
        self.written(v, "_local put")
    }

    fn op_delete_local(&self, r: &DeleteLocalRequest) -> Result<DocResult, Error> {
        let mut q = Query::new();
        if let Some(rev) = &r.rev {
            q.push("rev", &rev.to_string());
        }
        let path = format!("{}{}", Self::local_path(&r.id), q.as_str());
        let raw = self.exchange(Method::DELETE, &path, None, None)?;
        let v: Value = h::parse(&self.url, "_local delete", &raw.body)?;
        self.written(v, "_local delete")
    }
}

/// Whether a 404 reason says the database itself is missing (CouchDB / pouchdb-server words).
fn db_missing(reason: &str) -> bool {
    reason == "no_db_file" || reason.contains("Database does not exist")
}

impl Database for CouchClient {
    fn execute(&mut self, request: Request) -> Result<Response, DbError> {
        let name = request.name();
        let out = match request {
            Request::Info => self.op_info().map(Response::Info),
            Request::Get(r) => self.op_get(&r).map(|doc| Response::Doc(DocBody { doc })),
            Request::OpenRevs(r) => self
                .op_open_revs(&r)
                .map(|revs| Response::OpenRevs(OpenRevsResponse { revs })),
            Request::AllDocs(r) => self.op_all_docs(&r).map(Response::AllDocs),
            Request::BulkDocs(r) => self.op_bulk_docs(&r).map(Response::BulkDocs),
            Request::Changes(r) => self.op_changes(&r).map(Response::Changes),
            Request::RevsDiff(r) => self.op_revs_diff(&r).map(Response::RevsDiff),
            Request::BulkGet(r) => self.op_bulk_get(&r).map(Response::BulkGet),
            Request::GetAttachment(r) => self.op_attachment(&r).map(Response::Attachment),
            Request::GetLocal(r) => self
                .get_json(&Self::local_path(&r.id), "_local document")
                .map(|doc| Response::Doc(DocBody { doc })),
            Request::PutLocal(r) => self.op_put_local(&r).map(Response::Written),
            Request::DeleteLocal(r) => self.op_delete_local(&r).map(Response::Written),
            other => {
                return Err(DbError::NotImplemented(format!(
                    "{} is not supported by peerpouch-couch",
                    other.name()
                )))
            }
        };
        out.map_err(|e| {
            tracing::debug!(op = name, error = %e, "couch request failed");
            DbError::from(e)
        })
    }
}
