//! # peerpouch-sqlite
//!
//! A durable peerpouch database in one SQLite file: [`SqliteStore`] answers every request
//! exactly as [`peerpouch::MemoryStore`] does (same ids, revisions, sequences, results and
//! errors; one conformance suite runs against both) and keeps what it acknowledged across
//! restarts and crashes.
//!
//! ## How
//! The CouchDB request logic is the core's, written once ([`peerpouch::store::execute`]);
//! this crate is only a [`peerpouch::store::Storage`] engine over the file. There is no working
//! copy: a request reads the documents it needs (by id, or in pages of [`SCAN_PAGE`] rows for
//! `all_docs` and `changes`) inside one read transaction, and a write request's changes
//! (revision trees, new attachment bytes once per digest with a reference count, `_local`
//! documents, counters) are one SQLite transaction. Opening reads a few fixed values, so it
//! costs the same for any size of database, and memory is bounded by SQLite's page cache
//! ([`OpenOptions::cache_bytes`], 16 MiB by default) plus what one request carries.
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
//! ## Several processes, one file
//! Any number of stores, in any number of processes, open the same file: it is in WAL mode
//! with SQLite's normal locking, so readers never wait and writers take turns (a store waits up
//! to [`LOCK_WAIT`] for the write lock, then answers [`DbError::Unavailable`]). Every request
//! reads the file's current state, so one store sees another's writes on its next request;
//! [`Database::changed_elsewhere`] tells a driver that waiting longpoll changes requests have
//! something new (the smol runtime asks every 50 ms while any wait).
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

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::{Path, PathBuf};

use peerpouch::store::{
    Batch, BlobInfo, Counters, Staging, Storage, StoredDoc, TreeShapes, Visit, DEFAULT_REVS_LIMIT,
};
use peerpouch::{Bytes, Database, DbError, Doc, Request, Response};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, OpenFlags, OptionalExtension};

pub use format::{APPLICATION_ID, FORMAT_VERSION};

/// How long opening, and each request, waits for another process holding the file's write
/// lock (SQLite retries with growing pauses) before answering [`OpenError::Locked`] or
/// [`DbError::Unavailable`].
pub const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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
    cache_bytes: Option<usize>,
    lock_wait: Option<std::time::Duration>,
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

    /// The most memory SQLite's page cache of this store may hold (default
    /// [`DEFAULT_CACHE_BYTES`], 16 MiB). The store keeps no other copy of the database: its
    /// memory is this plus what one request carries.
    pub fn cache_bytes(mut self, bytes: usize) -> OpenOptions {
        self.cache_bytes = Some(bytes);
        self
    }

    /// How long a request waits for another process's write lock before answering
    /// [`DbError::Unavailable`] (default [`LOCK_WAIT`], 5 s).
    pub fn lock_wait(mut self, wait: std::time::Duration) -> OpenOptions {
        self.lock_wait = Some(wait);
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

/// A durable database in one SQLite file, with [`peerpouch::MemoryStore`]'s semantics.
///
/// Implements [`Database`] through the shared request logic ([`peerpouch::store::execute`])
/// over its [`Storage`] engine, which reads and writes the file directly: no working copy.
/// Each request reads one consistent state of the file, and each write is one SQLite
/// transaction, committed before it returns. A write the file refused (disk full, I/O error)
/// answers [`DbError::Other`] with status 500 and `storage_error`, and nothing of it remains;
/// a damaged record answers status 500 and `damaged` on the request that meets it.
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
    conn: Connection,
    path: PathBuf,
    name: String,
    id_seed: u64,
    revs_limit: usize,
    uuid: String,
    /// Whether this store has a transaction open on the connection.
    in_tx: bool,
    /// `PRAGMA data_version` when [`Database::changed_elsewhere`] last looked.
    data_version: Option<i64>,
    /// Attachments being received in ranges; their bytes are rows of a temporary table
    /// (`temp.staged_chunks`, on disk in SQLite's temporary file, gone with the connection),
    /// made the first time one arrives.
    staging: Staging,
    staging_table: bool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Documents written per statement while a write has that many left: a statement's start and
/// end (its cursors on the table and the `id` index, the reset) are paid once for them all
/// (256 parameters, far below SQLite's limit of 32766).
const DOCS_PER_INSERT: usize = 64;

/// Rows read from the file per step of a scan: a scan holds one page, never its whole result.
pub const SCAN_PAGE: usize = 64;

/// The default bound of SQLite's page cache per open store ([`OpenOptions::cache_bytes`]).
pub const DEFAULT_CACHE_BYTES: usize = 16 << 20;

impl SqliteStore {
    /// Opens the database at `path`, creating it if there is no file, with default options.
    ///
    /// # Errors
    /// As [`SqliteStore::open_with`].
    pub fn open(path: impl AsRef<Path>) -> Result<SqliteStore, OpenError> {
        SqliteStore::open_with(path, OpenOptions::new())
    }

    /// Opens the database at `path`, creating it if there is no file and migrating an older
    /// format forward. Nothing is loaded: opening reads a few fixed values, whatever the size
    /// of the database.
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
        // Normal (shared) locking in WAL mode: any number of processes open the file, readers
        // never wait, and writers take turns, one transaction at a time.
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
        // A negative cache_size is in KiB.
        let cache_kib = options.cache_bytes.unwrap_or(DEFAULT_CACHE_BYTES) / 1024;
        conn.pragma_update(None, "cache_size", -(cache_kib.max(64) as i64))
            .map_err(err)?;
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
            format::migrate(&tx, version, &creation).map_err(|e| match e {
                format::FormatError::Damaged(detail) => OpenError::Damaged {
                    path: path.clone(),
                    detail,
                },
                format::FormatError::Sqlite(e) => err(e),
            })?;
        }
        format::ensure_uuid(&tx, || options.uuid.clone().unwrap_or_else(random_uuid))
            .map_err(err)?;
        tx.commit().map_err(err)?;
        conn.busy_timeout(options.lock_wait.unwrap_or(LOCK_WAIT))
            .map_err(err)?;
        let fixed = format::Fixed::read(&conn).map_err(|e| match e {
            format::FormatError::Sqlite(e) => err(e),
            format::FormatError::Damaged(detail) => OpenError::Damaged {
                path: path.clone(),
                detail,
            },
        })?;
        Ok(SqliteStore {
            conn,
            path,
            name: fixed.name,
            id_seed: fixed.id_seed,
            revs_limit: fixed.revs_limit,
            uuid: fixed.uuid,
            in_tx: false,
            data_version: None,
            staging: Staging::default(),
            staging_table: false,
        })
    }

    /// The file this store keeps.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The database name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The database's identity ([`peerpouch::DbInfo::db_uuid`]), kept in the file.
    pub fn uuid(&self) -> String {
        self.uuid.clone()
    }

    /// The newest sequence number (0 for an empty database, or when the file cannot be read):
    /// see [`peerpouch::MemoryStore::update_seq`].
    pub fn update_seq(&self) -> u64 {
        Storage::counters(self).map_or(0, |c| c.update_seq)
    }

    /// How many ids this store has generated (the counter behind generated ids).
    ///
    /// # Errors
    /// A storage error when the file cannot be read.
    pub fn ids_generated(&self) -> Result<u64, DbError> {
        Ok(Storage::counters(self)?.ids_generated)
    }

    /// Distinct attachment contents held (each digest once, however many revisions use it).
    ///
    /// # Errors
    /// A storage error when the file cannot be read.
    pub fn attachment_blobs(&self) -> Result<usize, DbError> {
        Ok(self.blob_count()? as usize)
    }

    /// The revision tree shape of every document, for tests that compare replicas (see
    /// [`peerpouch::MemoryStore::tree_shapes`]).
    ///
    /// # Errors
    /// A storage error when the file cannot be read.
    pub fn tree_shapes(&self) -> Result<TreeShapes, DbError> {
        peerpouch::store::tree_shapes(self)
    }

    /// Checks the whole file: SQLite's `PRAGMA integrity_check` (pages, indexes), that every
    /// document's revision tree decodes, and that every attachment's chunk rows add up to its
    /// length. Returns the problems found; none means sound.
    ///
    /// ```
    /// use peerpouch_sqlite::SqliteStore;
    ///
    /// let dir = tempfile::tempdir().unwrap();
    /// let db = SqliteStore::open(dir.path().join("db.sqlite")).unwrap();
    /// assert!(db.check().unwrap().is_empty());
    /// ```
    ///
    /// # Errors
    /// A storage error when the file cannot be read at all.
    pub fn check(&self) -> Result<Vec<String>, DbError> {
        let mut problems = Vec::new();
        let integrity: rusqlite::Result<Vec<String>> = self
            .conn
            .prepare("PRAGMA integrity_check")
            .and_then(|mut s| s.query_map([], |r| r.get::<_, String>(0))?.collect());
        match integrity {
            Ok(lines) => problems.extend(lines.into_iter().filter(|l| l != "ok")),
            Err(e) => problems.push(self.corrupt_or(e)?),
        }
        let scan = (|| -> rusqlite::Result<()> {
            let mut stmt = self.conn.prepare("SELECT id, tree FROM docs")?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let id: String = r.get(0)?;
                let tree: Vec<u8> = r.get(1)?;
                if let Err(e) = format::decode_tree(&tree) {
                    problems.push(format!("document {id:?}: {e}"));
                }
            }
            Ok(())
        })();
        if let Err(e) = scan {
            problems.push(self.corrupt_or(e)?);
        }
        let chunks = (|| -> rusqlite::Result<()> {
            let mut stmt = self.conn.prepare(
                "SELECT a.digest, a.length, count(c.n), coalesce(sum(length(c.data)), 0)
                 FROM attachments a LEFT JOIN attachment_chunks c ON c.digest = a.digest
                 GROUP BY a.digest",
            )?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let (digest, length): (String, i64) = (r.get(0)?, r.get(1)?);
                let (n, held): (i64, i64) = (r.get(2)?, r.get(3)?);
                if held != length || n as u64 != (length as u64).div_ceil(format::CHUNK as u64) {
                    problems.push(format!(
                        "attachment {digest}: {held} bytes in {n} chunks, {length} expected"
                    ));
                }
            }
            Ok(())
        })();
        if let Err(e) = chunks {
            problems.push(self.corrupt_or(e)?);
        }
        Ok(problems)
    }

    /// Damage SQLite met, as a problem to report; any other failure as the error.
    fn corrupt_or(&self, e: rusqlite::Error) -> Result<String, DbError> {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
                Ok(format!("SQLite: {e}"))
            }
            _ => Err(self.sql_error(e)),
        }
    }

    /// A scanned row: the whole tree, or without `bodies` its shape alone (the bodies' JSON
    /// is skipped over, not built).
    fn read_scanned(
        &self,
        id: &str,
        seq: i64,
        tree: &[u8],
        bodies: bool,
    ) -> Result<StoredDoc, DbError> {
        if bodies {
            return self.read_doc(id, seq, tree);
        }
        let tree = format::decode_shape(tree).map_err(|e| {
            damaged(&format!(
                "document {id:?} in {} does not decode ({e}); restore it from a replica",
                self.path.display()
            ))
        })?;
        Ok(StoredDoc {
            seq: seq as u64,
            tree,
        })
    }

    fn read_doc(&self, id: &str, seq: i64, tree: &[u8]) -> Result<StoredDoc, DbError> {
        let tree = format::decode_tree(tree).map_err(|e| {
            damaged(&format!(
                "document {id:?} in {} does not decode ({e}); restore it from a replica",
                self.path.display()
            ))
        })?;
        Ok(StoredDoc {
            seq: seq as u64,
            tree,
        })
    }

    fn sql_error(&self, e: rusqlite::Error) -> DbError {
        sql_error(&self.path, e)
    }

    fn exec(&mut self, sql: &str) -> Result<(), DbError> {
        self.conn
            .execute_batch(sql)
            .map_err(|e| sql_error(&self.path, e))
    }

    /// Writes documents' rows: [`DOCS_PER_INSERT`] to a statement while there are that many
    /// left, then one by one.
    fn put_docs(&self, docs: &BTreeMap<String, StoredDoc>) -> rusqlite::Result<()> {
        const UPSERT: &str = " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq,
                               tree = excluded.tree, deleted = excluded.deleted";
        let sql = |rows: usize| {
            let mut sql = String::from("INSERT INTO docs (id, seq, tree, deleted) VALUES ");
            for r in 0..rows {
                if r > 0 {
                    sql.push(',');
                }
                sql.push_str("(?,?,?,?)");
            }
            sql.push_str(UPSERT);
            sql
        };
        // The trees of one statement, one after the other, and where each ends.
        let mut trees = Vec::new();
        let mut ends = Vec::with_capacity(DOCS_PER_INSERT);
        let mut rest = docs.iter();
        if docs.len() >= DOCS_PER_INSERT {
            let mut put = self.conn.prepare_cached(&sql(DOCS_PER_INSERT))?;
            let mut left = docs.len();
            while left >= DOCS_PER_INSERT {
                left -= DOCS_PER_INSERT;
                trees.clear();
                ends.clear();
                for (_, doc) in rest.clone().take(DOCS_PER_INSERT) {
                    format::encode_tree(&doc.tree, &mut trees);
                    ends.push(trees.len());
                }
                let mut start = 0;
                let group = rest.by_ref().take(DOCS_PER_INSERT);
                for (i, ((id, doc), end)) in group.zip(&ends).enumerate() {
                    let at = 4 * i + 1;
                    put.raw_bind_parameter(at, id.as_str())?;
                    put.raw_bind_parameter(at + 1, doc.seq as i64)?;
                    put.raw_bind_parameter(at + 2, &trees[start..*end])?;
                    put.raw_bind_parameter(at + 3, doc.tree.is_deleted(doc.tree.winner()))?;
                    start = *end;
                }
                put.raw_execute()?;
            }
        }
        let mut put_one = self.conn.prepare_cached(&sql(1))?;
        for (id, doc) in rest {
            trees.clear();
            format::encode_tree(&doc.tree, &mut trees);
            let deleted = doc.tree.is_deleted(doc.tree.winner());
            put_one.execute((id, doc.seq as i64, &trees[..], deleted))?;
        }
        Ok(())
    }

    fn apply(&self, batch: &Batch) -> rusqlite::Result<()> {
        let conn = &self.conn;
        self.put_docs(&batch.docs)?;
        {
            let mut put_blob = conn.prepare_cached(
                "INSERT INTO attachments (digest, content_type, length, refs) VALUES (?1, ?2, ?3, 0)
                 ON CONFLICT (digest) DO NOTHING",
            )?;
            let mut put_chunk = conn.prepare_cached(
                "INSERT INTO attachment_chunks (digest, n, data) VALUES (?1, ?2, ?3)",
            )?;
            for (digest, (content_type, data)) in &batch.blobs {
                if put_blob.execute((digest, content_type, data.len() as i64))? == 1 {
                    for (n, chunk) in data.chunks(format::CHUNK).enumerate() {
                        put_chunk.execute((digest, n as i64, chunk))?;
                    }
                }
            }
            // Received in ranges: their rows are copied within SQLite, never read out. (Bytes
            // not held yet were staged, so the temporary table exists; `check_staged` made
            // sure they are all there.)
            for (digest, info) in &batch.staged {
                if put_blob.execute((digest, &info.content_type, info.length as i64))? == 1 {
                    conn.prepare_cached(
                        "INSERT INTO attachment_chunks (digest, n, data)
                         SELECT digest, n, data FROM temp.staged_chunks WHERE digest = ?1",
                    )?
                    .execute([digest])?;
                }
            }
        }
        {
            let mut add_refs =
                conn.prepare_cached("UPDATE attachments SET refs = refs + ?2 WHERE digest = ?1")?;
            let mut del_blob =
                conn.prepare_cached("DELETE FROM attachments WHERE digest = ?1 AND refs <= 0")?;
            let mut del_chunks =
                conn.prepare_cached("DELETE FROM attachment_chunks WHERE digest = ?1")?;
            for (digest, delta) in &batch.blob_refs {
                if *delta != 0 {
                    add_refs.execute((digest, delta))?;
                }
                if *delta < 0 && del_blob.execute([digest])? == 1 {
                    del_chunks.execute([digest])?;
                }
            }
        }
        {
            let mut put_local = conn.prepare_cached(
                "INSERT INTO local_docs (id, rev, body) VALUES (?1, ?2, ?3)
                 ON CONFLICT (id) DO UPDATE SET rev = excluded.rev, body = excluded.body",
            )?;
            let mut del_local = conn.prepare_cached("DELETE FROM local_docs WHERE id = ?1")?;
            for (id, local) in &batch.locals {
                match local {
                    Some((rev, body)) => {
                        let body = serde_json::to_string(body).expect("JSON into memory");
                        put_local.execute((id, *rev as i64, body))?
                    }
                    None => del_local.execute([id])?,
                };
            }
        }
        format::write_counters(conn, &batch.counters)
    }
}

impl Storage for SqliteStore {
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
        self.uuid.clone()
    }

    fn counters(&self) -> Result<Counters, DbError> {
        format::read_counters(&self.conn).map_err(|e| self.sql_error(e))
    }

    fn doc(&self, id: &str) -> Result<Option<Cow<'_, StoredDoc>>, DbError> {
        let row = self
            .conn
            .prepare_cached("SELECT seq, tree FROM docs WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
                    .optional()
            })
            .map_err(|e| self.sql_error(e))?;
        match row {
            None => Ok(None),
            Some((seq, tree)) => Ok(Some(Cow::Owned(self.read_doc(id, seq, &tree)?))),
        }
    }

    fn scan_ids(
        &self,
        lo: Bound<&str>,
        hi: Bound<&str>,
        descending: bool,
        bodies: bool,
        visit: &mut Visit<'_>,
    ) -> Result<(), DbError> {
        let mut lo: Bound<String> = lo.map(str::to_string);
        let mut hi: Bound<String> = hi.map(str::to_string);
        loop {
            let (cond, mut params) = id_range("id", &lo, &hi);
            params.push(SqlValue::Integer(SCAN_PAGE as i64));
            let sql = format!(
                "SELECT id, seq, tree FROM docs WHERE {cond} ORDER BY id {} LIMIT ?{}",
                if descending { "DESC" } else { "ASC" },
                params.len()
            );
            let page: Vec<(String, i64, Vec<u8>)> = self
                .conn
                .prepare_cached(&sql)
                .and_then(|mut s| {
                    s.query_map(rusqlite::params_from_iter(params.iter()), |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect()
                })
                .map_err(|e| self.sql_error(e))?;
            let full = page.len() == SCAN_PAGE;
            let mut last = None;
            for (id, seq, tree) in page {
                let doc = self.read_scanned(&id, seq, &tree, bodies)?;
                if !visit(&id, &doc)? {
                    return Ok(());
                }
                last = Some(id);
            }
            match last {
                Some(id) if full => {
                    if descending {
                        hi = Bound::Excluded(id);
                    } else {
                        lo = Bound::Excluded(id);
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn count_live(&self, lo: Bound<&str>, hi: Bound<&str>) -> Result<u64, DbError> {
        let (cond, params) = id_range("id", &lo.map(str::to_string), &hi.map(str::to_string));
        let sql = format!("SELECT count(*) FROM docs WHERE deleted = 0 AND {cond}");
        self.conn
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_row(rusqlite::params_from_iter(params.iter()), |r| {
                    r.get::<_, i64>(0)
                })
            })
            .map(|n| n as u64)
            .map_err(|e| self.sql_error(e))
    }

    fn scan_seqs(
        &self,
        since: u64,
        descending: bool,
        bodies: bool,
        visit: &mut Visit<'_>,
    ) -> Result<(), DbError> {
        let since = i64::try_from(since).unwrap_or(i64::MAX);
        // The open end of the range: rows above `lo` ascending, below `hi` descending.
        let (mut lo, mut hi) = (since, i64::MAX);
        loop {
            let sql = if descending {
                "SELECT id, seq, tree FROM docs WHERE seq > ?1 AND seq < ?2 ORDER BY seq DESC LIMIT ?3"
            } else {
                "SELECT id, seq, tree FROM docs WHERE seq > ?1 AND seq < ?2 ORDER BY seq ASC LIMIT ?3"
            };
            let page: Vec<(String, i64, Vec<u8>)> = self
                .conn
                .prepare_cached(sql)
                .and_then(|mut s| {
                    s.query_map((lo, hi, SCAN_PAGE as i64), |r| {
                        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                    })?
                    .collect()
                })
                .map_err(|e| self.sql_error(e))?;
            let full = page.len() == SCAN_PAGE;
            let mut last = None;
            for (id, seq, tree) in page {
                let doc = self.read_scanned(&id, seq, &tree, bodies)?;
                if !visit(&id, &doc)? {
                    return Ok(());
                }
                last = Some(seq);
            }
            match last {
                Some(seq) if full => {
                    if descending {
                        hi = seq;
                    } else {
                        lo = seq;
                    }
                }
                _ => return Ok(()),
            }
        }
    }

    fn blob_info(&self, digest: &str) -> Result<Option<BlobInfo>, DbError> {
        self.conn
            .prepare_cached("SELECT content_type, length FROM attachments WHERE digest = ?1")
            .and_then(|mut s| {
                s.query_row([digest], |r| {
                    Ok(BlobInfo {
                        content_type: r.get(0)?,
                        length: r.get::<_, i64>(1)? as u64,
                    })
                })
                .optional()
            })
            .map_err(|e| self.sql_error(e))
    }

    fn blob(&self, digest: &str) -> Result<Option<Bytes>, DbError> {
        self.blob_chunk(digest, 0, usize::MAX)
    }

    fn blob_chunk(&self, digest: &str, offset: u64, len: usize) -> Result<Option<Bytes>, DbError> {
        let Some(info) = self.blob_info(digest)? else {
            return Ok(None);
        };
        let start = offset.min(info.length);
        let end = start.saturating_add(len as u64).min(info.length);
        if start == end {
            return Ok(Some(Bytes::new()));
        }
        let chunk = format::CHUNK as u64;
        let read = || -> rusqlite::Result<Vec<u8>> {
            let mut out = Vec::with_capacity((end - start) as usize);
            let mut rows = self.conn.prepare_cached(
                "SELECT n, data FROM attachment_chunks WHERE digest = ?1 AND n BETWEEN ?2 AND ?3
                 ORDER BY n",
            )?;
            let mut rows =
                rows.query((digest, (start / chunk) as i64, ((end - 1) / chunk) as i64))?;
            while let Some(r) = rows.next()? {
                let at = r.get::<_, i64>(0)? as u64 * chunk;
                let data = r.get_ref(1)?.as_blob()?;
                let from = start.saturating_sub(at).min(data.len() as u64) as usize;
                let to = (end - at).min(data.len() as u64) as usize;
                out.extend_from_slice(&data[from..to]);
            }
            Ok(out)
        };
        let out = read().map_err(|e| self.sql_error(e))?;
        if out.len() as u64 != end - start {
            return Err(damaged(&format!(
                "attachment {digest} in {} has {} of bytes {start}..{end}; restore it from a replica",
                self.path.display(),
                out.len()
            )));
        }
        Ok(Some(Bytes::from(out)))
    }

    fn blob_count(&self) -> Result<u64, DbError> {
        self.conn
            .query_row("SELECT count(*) FROM attachments", [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(|e| self.sql_error(e))
    }

    fn local(&self, id: &str) -> Result<Option<(u64, Doc)>, DbError> {
        let row = self
            .conn
            .prepare_cached("SELECT rev, body FROM local_docs WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))
                    .optional()
            })
            .map_err(|e| self.sql_error(e))?;
        match row {
            None => Ok(None),
            Some((rev, body)) => {
                let body = serde_json::from_str(&body).map_err(|e| {
                    damaged(&format!(
                        "_local document {id:?} in {} does not decode ({e})",
                        self.path.display()
                    ))
                })?;
                Ok(Some((rev as u64, body)))
            }
        }
    }

    fn staging(&self) -> Option<&Staging> {
        Some(&self.staging)
    }

    fn staging_mut(&mut self) -> Option<&mut Staging> {
        Some(&mut self.staging)
    }

    fn stage_bytes(&mut self, digest: &str, offset: u64, data: &[u8]) -> Result<(), DbError> {
        self.stage_rows(digest, offset, data).map_err(|e| {
            storage_error(&format!(
                "a range of attachment {digest} could not be kept in {}'s temporary file ({e})",
                self.path.display()
            ))
        })
    }

    fn unstage(&mut self, digest: &str) {
        if !self.staging_table {
            return;
        }
        if let Err(e) = self
            .conn
            .execute("DELETE FROM temp.staged_chunks WHERE digest = ?1", [digest])
        {
            tracing::warn!(path = %self.path.display(), %digest, error = %e, "staged bytes not dropped");
        }
    }

    fn begin_read(&mut self) -> Result<(), DbError> {
        self.note_data_version();
        self.exec("BEGIN DEFERRED")?;
        self.in_tx = true;
        Ok(())
    }

    fn end_read(&mut self) {
        self.finish("COMMIT");
    }

    fn begin_write(&mut self) -> Result<(), DbError> {
        self.note_data_version();
        self.exec("BEGIN IMMEDIATE")?;
        self.in_tx = true;
        Ok(())
    }

    fn commit(&mut self, batch: Batch) -> Result<(), DbError> {
        if let Err(e) = self.check_staged(&batch) {
            self.finish("ROLLBACK");
            return Err(e);
        }
        let before = self.counters()?;
        if batch.is_empty() && batch.counters == before {
            self.finish("COMMIT");
            return Ok(());
        }
        let applied = self
            .apply(&batch)
            .and_then(|()| self.conn.execute_batch("COMMIT"));
        match applied {
            Ok(()) => {
                self.in_tx = false;
                Ok(())
            }
            Err(e) => {
                self.finish("ROLLBACK");
                Err(storage_error(&format!(
                    "the write could not be committed to {} ({e}); nothing of it was kept",
                    self.path.display()
                )))
            }
        }
    }

    fn rollback(&mut self) {
        self.finish("ROLLBACK");
    }
}

impl SqliteStore {
    /// Appends a range of a staged attachment in rows of [`format::CHUNK`] bytes, as
    /// `attachment_chunks` keeps them, so the write that uses it copies rows without reading
    /// them: a range that starts inside a row completes that row first.
    fn stage_rows(&mut self, digest: &str, offset: u64, data: &[u8]) -> Result<(), String> {
        let sql = |e: rusqlite::Error| e.to_string();
        if !self.staging_table {
            self.conn
                .execute_batch(
                    "CREATE TEMP TABLE IF NOT EXISTS staged_chunks (
                     digest TEXT NOT NULL, n INTEGER NOT NULL, data BLOB NOT NULL,
                     PRIMARY KEY (digest, n))",
                )
                .map_err(sql)?;
            self.staging_table = true;
        }
        let chunk = format::CHUNK;
        let mut n = (offset / chunk as u64) as i64;
        let into_row = (offset % chunk as u64) as usize;
        let mut rest = data;
        let tx = self.conn.unchecked_transaction().map_err(sql)?;
        if into_row > 0 && !rest.is_empty() {
            let mut row: Vec<u8> = tx
                .query_row(
                    "SELECT data FROM temp.staged_chunks WHERE digest = ?1 AND n = ?2",
                    (digest, n),
                    |r| r.get(0),
                )
                .map_err(sql)?;
            if row.len() != into_row {
                return Err(format!(
                    "staged row {n} holds {} bytes, not {into_row}",
                    row.len()
                ));
            }
            let take = (chunk - into_row).min(rest.len());
            row.extend_from_slice(&rest[..take]);
            tx.execute(
                "UPDATE temp.staged_chunks SET data = ?3 WHERE digest = ?1 AND n = ?2",
                (digest, n, &row[..]),
            )
            .map_err(sql)?;
            rest = &rest[take..];
            n += 1;
        }
        {
            let mut put = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO temp.staged_chunks (digest, n, data) VALUES (?1, ?2, ?3)",
                )
                .map_err(sql)?;
            for piece in rest.chunks(chunk) {
                put.execute((digest, n, piece)).map_err(sql)?;
                n += 1;
            }
        }
        tx.commit().map_err(sql)
    }

    /// Checks that the staged attachments a batch uses are all there, before it is applied.
    fn check_staged(&self, batch: &Batch) -> Result<(), DbError> {
        for (digest, info) in &batch.staged {
            let held: i64 = if self.staging_table {
                self.conn
                    .query_row(
                        "SELECT coalesce(sum(length(data)), 0) FROM temp.staged_chunks WHERE digest = ?1",
                        [digest],
                        |r| r.get(0),
                    )
                    .map_err(|e| self.sql_error(e))?
            } else {
                0
            };
            if held as u64 != info.length {
                let in_file: i64 = self
                    .conn
                    .query_row(
                        "SELECT count(*) FROM attachments WHERE digest = ?1",
                        [digest],
                        |r| r.get(0),
                    )
                    .map_err(|e| self.sql_error(e))?;
                if in_file == 0 {
                    return Err(storage_error(&format!(
                        "{held} of the {} received bytes of {digest} are held",
                        info.length
                    )));
                }
            }
        }
        Ok(())
    }

    fn read_data_version(&self) -> Option<i64> {
        match self
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get::<_, i64>(0))
        {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(path = %self.path.display(), error = %e, "data_version unreadable");
                None
            }
        }
    }

    /// Notes the file's version before a request reads it: a write by another process after
    /// this point makes [`Database::changed_elsewhere`] answer `true` (one before it may too,
    /// which only costs a longpoll that finds nothing new).
    fn note_data_version(&mut self) {
        if let Some(v) = self.read_data_version() {
            self.data_version = Some(v);
        }
    }

    /// Ends the open transaction, if any, with `sql` (`COMMIT` or `ROLLBACK`).
    fn finish(&mut self, sql: &str) {
        if !self.in_tx {
            return;
        }
        self.in_tx = false;
        if let Err(e) = self.conn.execute_batch(sql) {
            if self.conn.is_autocommit() {
                return;
            }
            tracing::warn!(path = %self.path.display(), error = %e, "{sql} failed; rolling back");
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }
}

impl Database for SqliteStore {
    fn execute(&mut self, request: Request) -> Result<Response, DbError> {
        peerpouch::store::execute(self, request)
    }

    /// Whether another connection (another process, or another store on the same file)
    /// committed a write since this store's last request or the last call: SQLite's `PRAGMA
    /// data_version`, a read of the shared WAL index, no disk access.
    fn changed_elsewhere(&mut self) -> bool {
        let Some(now) = self.read_data_version() else {
            return false;
        };
        let before = self.data_version.replace(now);
        before.is_some_and(|b| b != now)
    }
}

/// A SQL condition on column `col` for the range `(lo, hi)`, with its parameters.
fn id_range(col: &str, lo: &Bound<String>, hi: &Bound<String>) -> (String, Vec<SqlValue>) {
    let mut cond = vec!["1".to_string()];
    let mut params = Vec::new();
    for (bound, incl, excl) in [(lo, ">=", ">"), (hi, "<=", "<")] {
        match bound {
            Bound::Included(k) => {
                params.push(SqlValue::Text(k.clone()));
                cond.push(format!("{col} {incl} ?{}", params.len()));
            }
            Bound::Excluded(k) => {
                params.push(SqlValue::Text(k.clone()));
                cond.push(format!("{col} {excl} ?{}", params.len()));
            }
            Bound::Unbounded => {}
        }
    }
    (cond.join(" AND "), params)
}

fn sql_error(path: &Path, e: rusqlite::Error) -> DbError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
            DbError::Unavailable(format!(
                "{} is busy: another process held its write lock too long ({e}); retry",
                path.display(),
            ))
        }
        Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase) => {
            damaged(&format!(
                "{} is damaged ({e}); restore it from a replica or a backup",
                path.display()
            ))
        }
        _ => storage_error(&format!("SQLite failed on {} ({e})", path.display())),
    }
}

fn damaged(reason: &str) -> DbError {
    DbError::Other {
        status: 500,
        error: "damaged".into(),
        reason: reason.into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>() {}

    #[test]
    fn the_store_is_send() {
        assert_send::<SqliteStore>();
    }
}
