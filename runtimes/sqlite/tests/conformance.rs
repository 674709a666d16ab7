//! The store conformance suite (`tests/common/conformance.rs` of the core, written once for
//! every store) on SQLite: once on a plain store, once on a store closed and reopened from its
//! file after every write, which proves that everything a write changed was written down.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::PathBuf;

use peerpouch::{Database, DbError, OpenRevsRequest, Request, Response};
use peerpouch_sqlite::{OpenOptions, SqliteStore};
use serde_json::{json, Value};
use tempfile::TempDir;

/// A store in a fresh temporary directory, named and seeded like the memory store's cases, so
/// generated ids are the same too.
struct TempStore {
    store: Option<SqliteStore>,
    path: PathBuf,
    reopen_after_writes: bool,
    _dir: TempDir,
}

impl TempStore {
    fn new(reopen_after_writes: bool) -> TempStore {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conformance.db");
        TempStore {
            store: Some(Self::open(&path)),
            path,
            reopen_after_writes,
            _dir: dir,
        }
    }

    fn open(path: &PathBuf) -> SqliteStore {
        SqliteStore::open_with(path, OpenOptions::new().name("conformance").id_seed(0)).unwrap()
    }
}

impl Database for TempStore {
    fn execute(&mut self, request: Request) -> Result<Response, DbError> {
        // Staged attachment ranges are not written down: they live with the connection (a
        // sender starts an upload over after a restart), so reopening after one would only
        // forget them. The write that uses them is reopened after, as any.
        let write = request.is_write() && !matches!(request, Request::StageAttachment(_));
        let store = self.store.as_mut().unwrap();
        let before = self.reopen_after_writes.then(|| snapshot(store));
        let result = store.execute(request);
        if write && self.reopen_after_writes {
            let after = snapshot(store);
            drop(self.store.take());
            let reopened = self.store.insert(Self::open(&self.path));
            assert_eq!(
                snapshot(reopened),
                after,
                "the file holds what the store answered"
            );
            if result.is_err() {
                assert_eq!(Some(after), before, "a refused write changes nothing");
            }
        }
        result
    }
}

/// Everything a client can see: the conformance dump, every leaf of every document with its
/// history and attachment bytes, the tree shapes, and the id counter.
fn snapshot(store: &mut SqliteStore) -> Value {
    let shapes = store.tree_shapes().unwrap();
    let mut leaves = serde_json::Map::new();
    for id in shapes.keys() {
        let revs = store
            .open_revs(OpenRevsRequest {
                revs: true,
                attachments: true,
                ..OpenRevsRequest::all(id.clone())
            })
            .unwrap();
        leaves.insert(id.clone(), serde_json::to_value(revs).unwrap());
    }
    json!({
        "dump": common::conformance::dump(store),
        "leaves": leaves,
        "shapes": format!("{shapes:?}"),
        "blobs": store.attachment_blobs().unwrap(),
        "ids_generated": store.ids_generated().unwrap(),
    })
}

conformance_suite!(sqlite, crate::TempStore::new(false));
conformance_suite!(sqlite_reopened, crate::TempStore::new(true));
