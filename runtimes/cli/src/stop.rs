//! How the command line stops: the local database files it has open, closed on every way out,
//! and Ctrl-C / SIGTERM.
//!
//! Every local file is opened through [`open_local`], which keeps the store in a process-wide
//! list. [`close_all`] closes them all: SQLite copies the write-ahead log back into the main file
//! when a file's last connection closes, so afterwards the `.db` file alone holds everything
//! (a copy of it without its `-wal` is complete). `main` calls it when a command returns, and the
//! signal handler calls it before it ends the process, so no path out leaves data in the log.
//!
//! Signals: a command that can stop cleanly ([`listen`]) learns of the first Ctrl-C or SIGTERM
//! through [`Stop`] and winds down within a bounded time (unsharing, cancelling, closing links).
//! A second signal, or the first one while no command listens, closes the files and ends the
//! process at once with status 130.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_lite::future;
use peerpouch::{Database, DbError, Request, Response};
use peerpouch_sqlite::{OpenError, SqliteStore};

use crate::commands::CliError;

/// The exit status of a process ended by a signal it was told to stop by (128 + SIGINT).
pub const INTERRUPTED_STATUS: i32 = 130;

/// A local database file this process has open. Clones share the one store; once
/// [`close_all`] has run, every request answers [`DbError::Unavailable`].
#[derive(Clone)]
pub struct LocalDb {
    store: Arc<Mutex<Option<SqliteStore>>>,
}

impl std::fmt::Debug for LocalDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalDb").finish_non_exhaustive()
    }
}

impl Database for LocalDb {
    fn execute(&mut self, request: Request) -> Result<Response, DbError> {
        match lock(&self.store).as_mut() {
            Some(store) => store.execute(request),
            None => Err(DbError::Unavailable(
                "the database file is closed: peerpouch is stopping".into(),
            )),
        }
    }

    fn changed_elsewhere(&mut self) -> bool {
        lock(&self.store)
            .as_mut()
            .is_some_and(|s| s.changed_elsewhere())
    }
}

impl LocalDb {
    /// The problems [`SqliteStore::check`] finds in the file (none: it is sound).
    ///
    /// # Errors
    /// [`DbError::Unavailable`] once the file is closed; a storage error when it cannot be read.
    pub fn check(&self) -> Result<Vec<String>, DbError> {
        match lock(&self.store).as_ref() {
            Some(store) => store.check(),
            None => Err(DbError::Unavailable(
                "the database file is closed: peerpouch is stopping".into(),
            )),
        }
    }
}

/// A lock that a panic elsewhere does not poison for good: the store inside stays consistent
/// (each write is one SQLite transaction), so it is still safe to close.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Every store opened by [`open_local`] and not yet closed.
fn open_stores() -> &'static Mutex<Vec<LocalDb>> {
    static OPEN: OnceLock<Mutex<Vec<LocalDb>>> = OnceLock::new();
    OPEN.get_or_init(|| Mutex::new(Vec::new()))
}

/// Opens (and with `create`, creates) the database file at `path` and keeps it in the list
/// [`close_all`] closes.
///
/// # Errors
/// [`CliError::NoSuchFile`] when it is missing and `create` is not set (nothing is created),
/// [`CliError::PermissionDenied`] when this user may not read and write it (or create files
/// next to it), [`CliError::Store`] for the rest (another process has it open, not a peerpouch
/// database, damaged).
pub fn open_local(path: &Path, create: bool) -> Result<LocalDb, CliError> {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !create => {
            return Err(CliError::NoSuchFile(path.to_path_buf()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(CliError::PermissionDenied(path.to_path_buf()));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let dir = parent(path);
            if !dir.is_dir() {
                return Err(CliError::Store {
                    path: path.to_path_buf(),
                    error: format!(
                        "cannot create {}: there is no directory {}",
                        path.display(),
                        dir.display()
                    ),
                });
            }
        }
        Ok(m) if m.is_dir() => {
            return Err(CliError::Store {
                path: path.to_path_buf(),
                error: format!(
                    "{} is a directory: give the path of a database file",
                    path.display()
                ),
            });
        }
        _ => {}
    }
    // The list stays locked while the file opens: a signal meanwhile waits and closes it too.
    let mut open = lock(open_stores());
    let store = SqliteStore::open(path).map_err(|e| opening_failed(path, e))?;
    let db = LocalDb {
        store: Arc::new(Mutex::new(Some(store))),
    };
    open.push(db.clone());
    Ok(db)
}

/// What an open failure means to the user: SQLite says `disk I/O error` or `unable to open
/// database file` (naming the path again) where the cause is a permission, so ask the file
/// system what is wrong.
fn opening_failed(path: &Path, e: OpenError) -> CliError {
    if matches!(e, OpenError::Io { .. } | OpenError::Sqlite { .. }) && !may_write(path) {
        return CliError::PermissionDenied(path.to_path_buf());
    }
    CliError::Store {
        path: path.to_path_buf(),
        error: e.to_string(),
    }
}

/// Whether this user may read and write `path` and create files in its directory (SQLite
/// keeps its write-ahead log in `PATH-wal` beside it). Only asked after SQLite failed.
fn may_write(path: &Path) -> bool {
    let denied = |r: std::io::Result<std::fs::File>| matches!(r, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied);
    if path.exists()
        && denied(
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(path),
        )
    {
        return false;
    }
    let probe = parent(path).join(format!(".peerpouch-probe-{}", std::process::id()));
    let created = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe);
    if created.is_ok() {
        let _ = std::fs::remove_file(&probe);
    }
    !denied(created)
}

/// The directory `path` is in (`.` for a bare file name).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Closes every local database file this process has open (idempotent; from any thread).
/// A store busy with a write is closed when that write is done.
pub fn close_all() {
    // Held until every store is closed: a signal arriving meanwhile waits here instead of
    // ending the process in the middle of a checkpoint.
    let mut open = lock(open_stores());
    for db in open.drain(..) {
        let store = lock(&db.store).take();
        if let Some(store) = store {
            let path = store.path().to_path_buf();
            drop(store);
            tracing::debug!(path = %path.display(), "closed");
        }
    }
}

/// Signals received so far.
static SIGNALS: AtomicUsize = AtomicUsize::new(0);
/// Whether a command waits on [`Stop`] (else the first signal ends the process at once).
static LISTENING: AtomicBool = AtomicBool::new(false);

/// Closed (never sent on) at the first signal: every receiver then wakes, as often as asked.
fn latch() -> &'static (Sender<()>, Receiver<()>) {
    static LATCH: OnceLock<(Sender<()>, Receiver<()>)> = OnceLock::new();
    LATCH.get_or_init(|| async_channel::bounded(1))
}

/// Catches Ctrl-C, SIGTERM and SIGHUP for the whole process (once, at start).
pub fn install() {
    let result = ctrlc::set_handler(|| {
        let n = SIGNALS.fetch_add(1, Ordering::SeqCst) + 1;
        if n == 1 && LISTENING.load(Ordering::SeqCst) {
            latch().0.close();
            return;
        }
        close_all();
        eprintln!("peerpouch: stopped");
        std::process::exit(INTERRUPTED_STATUS);
    });
    if let Err(e) = result {
        tracing::warn!(error = %e, "cannot catch Ctrl-C");
    }
}

/// The stop request a command that winds down cleanly waits on; from now on the first Ctrl-C
/// or SIGTERM is delivered here instead of ending the process.
pub fn listen() -> Stop {
    LISTENING.store(true, Ordering::SeqCst);
    Stop {
        latch: latch().1.clone(),
    }
}

/// The first Ctrl-C or SIGTERM, for a command to wind down on (see [`listen`]).
#[derive(Clone, Debug)]
pub struct Stop {
    latch: Receiver<()>,
}

impl Stop {
    /// Resolves once a stop is asked for (at once if it already was).
    pub async fn wait(&self) {
        let _ = self.latch.recv().await;
    }

    /// `work`'s output, or `None` when a stop is asked for first.
    pub async fn or<T>(&self, work: impl Future<Output = T>) -> Option<T> {
        future::or(async { Some(work.await) }, async {
            self.wait().await;
            None
        })
        .await
    }
}

/// `work`'s output, or `None` after `limit`.
pub async fn within<T>(limit: Duration, work: impl Future<Output = T>) -> Option<T> {
    future::or(async { Some(work.await) }, async {
        smol::Timer::after(limit).await;
        None
    })
    .await
}
