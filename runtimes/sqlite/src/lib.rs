//! # peerpouch-sqlite
//!
//! A durable peerpouch database in one SQLite file: [`SqliteStore`] answers every request
//! exactly as [`peerpouch::MemoryStore`] does (same ids, revisions, sequences, results and
//! errors; one conformance suite runs against both) and keeps what it acknowledged across
//! restarts and crashes.
//!
//! ## How
//! The store holds a [`MemoryStore`] as its working copy and writes every change through to
//! SQLite before it answers: each `bulk_docs` (or `_local` write) is one SQLite transaction
//! holding the touched documents' revision trees, their new attachment bytes (once per digest),
//! the `_local` documents and the generated-id counter. Reads are answered from memory, so they
//! cost what the memory store's cost; the whole database is loaded when the file is opened, so
//! memory grows with the database like the memory store's does.
//!
//! ## Durability
//! The file is in WAL mode. A write that returned is committed: it survives the process being
//! killed at any point (the crash test kills a writer with SIGKILL at random points). With the
//! default [`Durability::Process`] (`synchronous=NORMAL`) a power loss or OS crash may lose the
//! last transactions, never the file's consistency; [`Durability::PowerLoss`]
//! (`synchronous=FULL`) also survives those, at the cost of an `fsync` per write.
//!
//! The file format (tables, version, migrations) is described in the crate's `README.md`.
//!
//! One process opens a file at a time: the store holds SQLite's exclusive lock while it is open,
//! and a second [`SqliteStore::open`] of the same file fails with [`OpenError::Locked`].
//!
//! ```
//! use peerpouch::Database;
//! use peerpouch_sqlite::SqliteStore;
//! use serde_json::json;
//!
//! let dir = tempfile::tempdir().unwrap();
//! let path = dir.path().join("notes.peerpouch");
//! let rev = {
//!     let mut db = SqliteStore::open(&path).unwrap();
//!     db.put(json!({"_id": "a", "text": "hello"})).unwrap()
//! };
//! // Reopened (as after a restart): everything acknowledged is there.
//! let mut db = SqliteStore::open(&path).unwrap();
//! assert_eq!(db.get("a").unwrap()["_rev"], rev.to_string());
//! ```

#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod format;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use peerpouch::doc::LOCAL_PREFIX;
use peerpouch::store::DEFAULT_REVS_LIMIT;
use peerpouch::{Database, DbError, MemoryStore, Request, Response};
use rusqlite::{Connection, OpenFlags};

pub use format::{APPLICATION_ID, FORMAT_VERSION};

/// How long opening waits for another holder of the file's lock before answering
/// [`OpenError::Locked`].
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_millis(200);

/// How much a committed write survives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Durability {
    /// Survives the process being killed at any point (`synchronous=NORMAL` in WAL mode); a
    /// power loss may lose the last writes but never corrupts the file.
    #[default]
    Process,
    /// Also survives power loss and OS crashes (`synchronous=FULL`): one `fsync` per write.
    PowerLoss,
}

/// Options for [`SqliteStore::open_with`].
///
/// `name`, `id_seed` and `revs_limit` are fixed when the file is created and read back from
/// it afterwards (the values given when opening an existing file are ignored); `durability`
/// applies to this opening.
///
/// ```
/// use peerpouch_sqlite::{Durability, OpenOptions, SqliteStore};
///
/// let dir = tempfile::tempdir().unwrap();
/// let options = OpenOptions::new()
///     .name("notes")
///     .id_seed(7)
///     .revs_limit(100)
///     .durability(Durability::PowerLoss);
/// let db = SqliteStore::open_with(dir.path().join("notes.db"), options).unwrap();
/// assert_eq!(db.name(), "notes");
/// ```
#[derive(Clone, Debug, Default)]
pub struct OpenOptions {
    name: Option<String>,
    id_seed: Option<u64>,
    revs_limit: Option<usize>,
    durability: Durability,
    uuid: Option<String>,
}

impl OpenOptions {
    /// The defaults: name from the file name, a random id seed, CouchDB's `revs_limit` of 1000,
    /// [`Durability::Process`].
    pub fn new() -> OpenOptions {
        OpenOptions::default()
    }

    /// The database name of a new file (default: the file name without its extension).
    pub fn name(mut self, name: impl Into<String>) -> OpenOptions {
        self.name = Some(name.into());
        self
    }

    /// The seed of generated document ids of a new file (default: drawn at random, so two
    /// files of one name never generate the same ids). Tests pass a constant.
    pub fn id_seed(mut self, seed: u64) -> OpenOptions {
        self.id_seed = Some(seed);
        self
    }

    /// How many ancestors each leaf keeps, for a new file (CouchDB's `revs_limit`).
    pub fn revs_limit(mut self, limit: usize) -> OpenOptions {
        self.revs_limit = Some(limit.max(1));
        self
    }

    /// The identity ([`peerpouch::DbInfo::db_uuid`]) of a new file, or of an existing file
    /// that has none yet (made by an older build); default: 32 random hex digits. A file keeps
    /// its identity for good, so replications with it resume from their checkpoints however it
    /// is reached. Tests pass a constant.
    pub fn uuid(mut self, uuid: impl Into<String>) -> OpenOptions {
        self.uuid = Some(uuid.into());
        self
    }

    /// What a committed write survives.
    pub fn durability(mut self, durability: Durability) -> OpenOptions {
        self.durability = durability;
        self
    }
}

/// Why a file could not be opened as a peerpouch database. The file is left as it was.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The file is not a peerpouch database (not SQLite at all, or another program's SQLite
    /// database). Nothing was written to it; choose another path.
    #[error(
        "{path} is not a peerpouch database ({detail}); it was left untouched: choose another path"
    )]
    NotPeerpouch {
        /// The file.
        path: PathBuf,
        /// What was found instead.
        detail: String,
    },
    /// The file was written by a newer peerpouch with a format this build cannot read.
    /// Nothing was written to it; open it with a newer peerpouch.
    #[error("{path} has peerpouch format version {found}, newer than version {supported} that this build reads; it was left untouched: use a newer peerpouch")]
    NewerFormat {
        /// The file.
        path: PathBuf,
        /// The file's format version.
        found: u32,
        /// The newest version this build reads ([`FORMAT_VERSION`]).
        supported: u32,
    },
    /// [`OpenOptions::uuid`] is not a valid identity. Nothing was written.
    #[error("invalid database uuid {uuid:?} for {path}: use 1 to {max} visible ASCII characters, such as 32 hex digits", max = peerpouch::MAX_DB_UUID_LEN)]
    InvalidUuid {
        /// The file.
        path: PathBuf,
        /// The identity given.
        uuid: String,
    },
    /// Another process (or another store in this one) has the file open.
    #[error("{path} is open elsewhere (SQLite lock held); close the other store first")]
    Locked {
        /// The file.
        path: PathBuf,
    },
    /// The file is a peerpouch database whose content does not hold together.
    #[error("{path} is damaged: {detail}; restore it from a replica or a backup")]
    Damaged {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// SQLite failed (permissions, disk full, I/O error).
    #[error("SQLite failed on {path}: {source}")]
    Sqlite {
        /// The file.
        path: PathBuf,
        /// SQLite's error.
        #[source]
        source: rusqlite::Error,
    },
}

impl OpenError {
    fn sqlite(path: &Path, e: rusqlite::Error) -> OpenError {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                OpenError::Locked {
                    path: path.to_path_buf(),
                }
            }
            Some(rusqlite::ErrorCode::NotADatabase) => OpenError::NotPeerpouch {
                path: path.to_path_buf(),
                detail: "it is not an SQLite database".into(),
            },
            _ => OpenError::Sqlite {
                path: path.to_path_buf(),
                source: e,
            },
        }
    }
}

/// A durable database in one SQLite file, with [`MemoryStore`]'s semantics.
///
/// Implements [`Database`]; reads are served from memory, each write is committed to the file
/// in one transaction before it returns. A write the file refused (disk full, I/O error)
/// answers [`DbError::Other`] with status 500 and `storage_error`, and the store goes back to
/// the file's last committed state, so nothing of the failed request remains.
///
/// ```
/// use peerpouch::{Database, DbError};
/// use peerpouch_sqlite::SqliteStore;
/// use serde_json::json;
///
/// let dir = tempfile::tempdir().unwrap();
/// let mut db = SqliteStore::open(dir.path().join("db.sqlite")).unwrap();
/// let r1 = db.put(json!({"_id": "doc", "n": 1})).unwrap();
/// assert_eq!(db.put(json!({"_id": "doc", "n": 2})), Err(DbError::Conflict));
/// db.put(json!({"_id": "doc", "_rev": r1.to_string(), "n": 2})).unwrap();
/// assert_eq!(db.info().unwrap().doc_count, 1);
/// ```
pub struct SqliteStore {
    mem: MemoryStore,
    conn: Connection,
    path: PathBuf,
    /// Set when a failed write could not even be undone by reloading: every request fails.
    broken: Option<DbError>,
    /// Scratch buffer for encoded trees.
    buf: Vec<u8>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("name", &self.mem.name())
            .field("update_seq", &self.mem.update_seq())
            .finish_non_exhaustive()
    }
}

impl SqliteStore {
    /// Opens the database at `path`, creating it if there is no file, with default options.
    ///
    /// # Errors
    /// As [`SqliteStore::open_with`].
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, OpenError> {
        SqliteStore::open_with(path, OpenOptions::new())
    }

    /// Opens the database at `path`, creating it if there is no file, migrating an older format
    /// forward, and loading it.
    ///
    /// # Errors
    /// [`OpenError::NotPeerpouch`] or [`OpenError::NewerFormat`] for a file this build must not
    /// write to (it is left byte for byte as it was), [`OpenError::Locked`] when it is open
    /// elsewhere, [`OpenError::Damaged`] when its content does not hold together,
    /// [`OpenError::Io`] or [`OpenError::Sqlite`] for I/O failures.
    pub fn open_with(
        path: impl AsRef<Path>,
        options: OpenOptions,
    ) -> Result<SqliteStore, OpenError> {
        let path = path.as_ref().to_path_buf();
        if let Some(uuid) = options
            .uuid
            .as_ref()
            .filter(|u| !peerpouch::is_valid_db_uuid(u))
        {
            return Err(OpenError::InvalidUuid {
                path,
                uuid: uuid.clone(),
            });
        }
        let err = |e| OpenError::sqlite(&path, e);
        // Identify the file before anything can write to it (setting WAL mode alone would
        // change its header): from its first 100 bytes when they decide, else on a connection
        // that only reads.
        let found = match format::identify_header(&path).map_err(|e| OpenError::Io {
            path: path.clone(),
            source: e,
        })? {
            Some(found) => found,
            None => {
                let probe = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_WRITE)
                    .map_err(err)?;
                probe.busy_timeout(LOCK_WAIT).map_err(err)?;
                format::identify(&probe).map_err(err)?
            }
        };
        accept(&path, found)?;
        let mut conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(err)?;
        conn.busy_timeout(LOCK_WAIT).map_err(err)?;
        // Exclusive locking before WAL: the file is ours alone while open, and SQLite keeps the
        // WAL index in process memory instead of a shared-memory file.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE")
            .map_err(err)?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
            .map_err(err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(OpenError::Locked { path });
        }
        let sync = match options.durability {
            Durability::Process => "NORMAL",
            Durability::PowerLoss => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync).map_err(err)?;
        // Copy the WAL back into the file every ~40 MiB rather than every 4 MiB: fewer
        // checkpoints, so fewer fsyncs, for the same bytes (reads never touch the file).
        conn.pragma_update(None, "wal_autocheckpoint", 10_000)
            .map_err(err)?;
        // ... and give the disk back after a checkpoint past 64 MiB.
        conn.pragma_update(None, "journal_size_limit", 64i64 << 20)
            .map_err(err)?;
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Exclusive)
            .map_err(err)?;
        // Recheck under the lock: another process may have created the file meanwhile.
        let version = accept(&path, format::identify(&tx).map_err(err)?)?;
        if version < FORMAT_VERSION {
            let default_name = path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "db".into());
            let creation = format::Creation {
                name: options.name.as_deref().unwrap_or(&default_name),
                id_seed: options.id_seed.unwrap_or_else(random_seed),
                revs_limit: options.revs_limit.unwrap_or(DEFAULT_REVS_LIMIT),
            };
            format::migrate(&tx, version, &creation).map_err(err)?;
        }
        format::ensure_uuid(&tx, || options.uuid.clone().unwrap_or_else(random_uuid))
            .map_err(err)?;
        tx.commit().map_err(err)?;
        let mem = load(&conn).map_err(|e| match e {
            LoadError::Sqlite(e) => err(e),
            LoadError::Damaged(detail) => OpenError::Damaged {
                path: path.clone(),
                detail,
            },
        })?;
        Ok(SqliteStore {
            mem,
            conn,
            path,
            broken: None,
            buf: Vec::new(),
        })
    }

    /// The file this store keeps.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database name.
    pub fn name(&self) -> &str {
        self.mem.name()
    }

    /// The database's identity ([`peerpouch::DbInfo::db_uuid`]), kept in the file.
    pub fn uuid(&self) -> String {
        self.mem.uuid()
    }

    /// The newest sequence number (0 for an empty database): see
    /// [`MemoryStore::update_seq`].
    pub fn update_seq(&self) -> u64 {
        self.mem.update_seq()
    }

    /// The working copy, for read-only inspection (tree shapes, attachment counts).
    pub fn memory(&self) -> &MemoryStore {
        &self.mem
    }

    /// Writes a request's changes through to the file in one transaction.
    fn write(&mut self, request: Request) -> Result<Response, DbError> {
        // Digests the touched documents' leaves use before the write: the write may free them.
        let mut digests = BTreeSet::new();
        if let Request::BulkDocs(r) = &request {
            for id in r
                .docs
                .iter()
                .filter_map(|d| d.get("_id").and_then(serde_json::Value::as_str))
            {
                if let Some((_, tree)) = self.mem.stored_doc(id) {
                    digests.extend(
                        tree.bodies()
                            .flat_map(|b| b.atts.values().map(|m| m.digest.clone())),
                    );
                }
            }
        }
        let ids_generated = self.mem.ids_generated();
        let response = self.mem.execute(request)?;
        let mut docs = BTreeSet::new();
        let mut locals = BTreeSet::new();
        match &response {
            Response::BulkDocs(r) => {
                for row in &r.results {
                    if row.id.starts_with(LOCAL_PREFIX) {
                        locals.insert(row.id.as_str());
                    } else if row.result.is_ok() {
                        docs.insert(row.id.as_str());
                    }
                }
            }
            Response::Written(w) => {
                locals.insert(w.id.as_str());
            }
            _ => {}
        }
        let persisted = persist(
            &mut self.conn,
            &self.mem,
            &docs,
            &locals,
            digests,
            (ids_generated != self.mem.ids_generated()).then(|| self.mem.ids_generated()),
            &mut self.buf,
        );
        match persisted {
            Ok(()) => Ok(response),
            Err(e) => {
                // The transaction rolled back: go back to what the file holds.
                match load(&self.conn) {
                    Ok(mem) => self.mem = mem,
                    Err(reload) => {
                        self.broken = Some(storage_error(&format!(
                        "the store could not reload {} after a failed write ({reload}); reopen it",
                        self.path.display()
                    )))
                    }
                }
                Err(storage_error(&format!(
                    "the write could not be committed to {} ({e}); nothing of it was kept",
                    self.path.display()
                )))
            }
        }
    }
}

impl Database for SqliteStore {
    fn execute(&mut self, request: Request) -> Result<Response, DbError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        if request.is_write() {
            self.write(request)
        } else {
            self.mem.execute(request)
        }
    }
}

/// The format version of a file we may open and write, or why not.
fn accept(path: &Path, found: format::Found) -> Result<u32, OpenError> {
    match found {
        format::Found::Foreign(detail) => Err(OpenError::NotPeerpouch {
            path: path.to_path_buf(),
            detail,
        }),
        format::Found::Peerpouch(v) if v > FORMAT_VERSION => Err(OpenError::NewerFormat {
            path: path.to_path_buf(),
            found: v,
            supported: FORMAT_VERSION,
        }),
        format::Found::Peerpouch(v) => Ok(v),
        format::Found::Nothing => Ok(0),
    }
}

fn storage_error(reason: &str) -> DbError {
    DbError::Other {
        status: 500,
        error: "storage_error".into(),
        reason: reason.into(),
    }
}

/// A seed nobody else draws: std's per-process random hash keys, mixed with the time.
fn random_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// 128 bits from the OS as 32 hex digits (a CouchDB UUID's shape); should the OS refuse,
/// two [`random_seed`]s.
fn random_uuid() -> String {
    let mut bytes = [0u8; 16];
    if let Err(e) = getrandom::fill(&mut bytes) {
        tracing::warn!(error = %e, "no OS randomness for a database uuid; using a hashed seed");
        bytes[..8].copy_from_slice(&random_seed().to_le_bytes());
        bytes[8..].copy_from_slice(&random_seed().to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// One transaction: the touched documents, `_local` documents, attachment bytes that appeared
/// or were freed, and the generated-id counter.
fn persist(
    conn: &mut Connection,
    mem: &MemoryStore,
    docs: &BTreeSet<&str>,
    locals: &BTreeSet<&str>,
    mut digests: BTreeSet<String>,
    ids_generated: Option<u64>,
    buf: &mut Vec<u8>,
) -> rusqlite::Result<()> {
    if docs.is_empty() && locals.is_empty() && ids_generated.is_none() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    {
        let mut put_doc = tx.prepare_cached(
            "INSERT INTO docs (id, seq, tree) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, tree = excluded.tree",
        )?;
        for id in docs {
            let Some((seq, tree)) = mem.stored_doc(id) else {
                continue;
            };
            digests.extend(
                tree.bodies()
                    .flat_map(|b| b.atts.values().map(|m| m.digest.clone())),
            );
            format::encode_tree(tree, buf);
            put_doc.execute((id, seq as i64, &buf[..]))?;
        }
        let mut put_local = tx.prepare_cached(
            "INSERT INTO local_docs (id, rev, body) VALUES (?1, ?2, ?3)
             ON CONFLICT (id) DO UPDATE SET rev = excluded.rev, body = excluded.body",
        )?;
        let mut del_local = tx.prepare_cached("DELETE FROM local_docs WHERE id = ?1")?;
        for id in locals {
            match mem.stored_local(id) {
                Some((rev, body)) => {
                    let body = serde_json::to_string(body).expect("JSON into memory");
                    put_local.execute((id, rev as i64, body))?
                }
                None => del_local.execute([id])?,
            };
        }
        let mut put_blob = tx.prepare_cached(
            "INSERT INTO attachments (digest, content_type, data) VALUES (?1, ?2, ?3)
             ON CONFLICT (digest) DO NOTHING",
        )?;
        let mut del_blob = tx.prepare_cached("DELETE FROM attachments WHERE digest = ?1")?;
        for digest in &digests {
            match mem.stored_blob(digest) {
                Some((content_type, data)) => put_blob.execute((digest, content_type, data))?,
                None => del_blob.execute([digest])?,
            };
        }
        if let Some(n) = ids_generated {
            tx.prepare_cached("UPDATE meta SET value = ?1 WHERE key = 'ids_generated'")?
                .execute([n as i64])?;
        }
    }
    tx.commit()
}

#[derive(Debug, thiserror::Error)]
enum LoadError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Damaged(String),
}

/// Reads a whole file into a fresh working copy.
fn load(conn: &Connection) -> Result<MemoryStore, LoadError> {
    let damaged = |what: &str| LoadError::Damaged(what.to_string());
    let name: String = format::meta(conn, "name")?.ok_or_else(|| damaged("no name"))?;
    let seed: i64 = format::meta(conn, "id_seed")?.ok_or_else(|| damaged("no id_seed"))?;
    let limit: i64 = format::meta(conn, "revs_limit")?.ok_or_else(|| damaged("no revs_limit"))?;
    let ids: i64 =
        format::meta(conn, "ids_generated")?.ok_or_else(|| damaged("no ids_generated"))?;
    let uuid: String =
        format::meta(conn, format::META_UUID)?.ok_or_else(|| damaged("no db_uuid"))?;
    let mut mem = MemoryStore::new(name)
        .with_id_seed(seed as u64)
        .with_revs_limit(usize::try_from(limit).unwrap_or(DEFAULT_REVS_LIMIT))
        .with_uuid(uuid)
        .map_err(|e| LoadError::Damaged(e.reason().to_string()))?;
    mem.restore_ids_generated(ids as u64);
    let mut blobs = conn.prepare("SELECT digest, content_type, data FROM attachments")?;
    let mut rows = blobs.query([])?;
    while let Some(r) = rows.next()? {
        mem.restore_blob(r.get(0)?, r.get(1)?, r.get(2)?);
    }
    let mut docs = conn.prepare("SELECT id, seq, tree FROM docs")?;
    let mut rows = docs.query([])?;
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        let seq: i64 = r.get(1)?;
        let bytes: Vec<u8> = r.get(2)?;
        let tree = format::decode_tree(&bytes)
            .map_err(|e| LoadError::Damaged(format!("document {id:?}: {e}")))?;
        mem.restore_doc(id, seq as u64, tree)
            .map_err(|e| LoadError::Damaged(e.reason().to_string()))?;
    }
    let mut locals = conn.prepare("SELECT id, rev, body FROM local_docs")?;
    let mut rows = locals.query([])?;
    while let Some(r) = rows.next()? {
        let id: String = r.get(0)?;
        let rev: i64 = r.get(1)?;
        let body: String = r.get(2)?;
        let body = serde_json::from_str(&body)
            .map_err(|e| LoadError::Damaged(format!("_local document {id:?}: {e}")))?;
        mem.restore_local(id, rev as u64, body);
    }
    // Bytes no document refers to are never written (they are deleted with their last
    // reference), so none should be left; any that are are ignored, not served.
    mem.drop_unreferenced_blobs();
    Ok(mem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn the_store_is_send() {
        assert_send::<SqliteStore>();
    }
}
