//! What only a durable store has: reopening, refusing files that are not ours, migrations,
//! attachment rows, failed writes and the lock.

use std::path::{Path, PathBuf};

use peerpouch::{
    AllDocsRequest, ChangesRequest, ChangesStyle, Database, DbError, GetRequest, OpenRevsRequest,
    Seq,
};
use peerpouch_sqlite::{
    Durability, OpenError, OpenOptions, SqliteStore, APPLICATION_ID, FORMAT_VERSION,
};
use rusqlite::Connection;
use serde_json::json;

fn temp() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db.peerpouch");
    (dir, path)
}

fn rows(path: &Path, table: &str) -> i64 {
    let conn = Connection::open(path).unwrap();
    conn.query_row(&format!("SELECT count(*) FROM {table}"), [], |r| r.get(0))
        .unwrap()
}

fn header(path: &Path) -> (i32, i64) {
    let conn = Connection::open(path).unwrap();
    let app = conn
        .query_row("PRAGMA application_id", [], |r| r.get(0))
        .unwrap();
    let version = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap();
    (app, version)
}

#[test]
fn reopening_continues_where_it_was() {
    let (_dir, path) = temp();
    let options = || OpenOptions::new().name("notes").id_seed(3).revs_limit(4);
    let (r1, generated) = {
        let mut db = SqliteStore::open_with(&path, options()).unwrap();
        let r1 = db
            .put(json!({"_id": "a", "_attachments": {"x": {"data": "aGVsbG8=", "content_type": "text/plain"}}}))
            .unwrap();
        // A conflict and a long history that stemming shortens.
        db.bulk_docs(vec![json!({"_id": "a", "_rev": "1-0000", "v": 1})], false)
            .unwrap();
        let mut rev = db.put(json!({"_id": "b", "i": 0})).unwrap();
        for i in 1..10 {
            rev = db
                .put(json!({"_id": "b", "_rev": rev.to_string(), "i": i}))
                .unwrap();
        }
        db.put_local("checkpoint", json!({"seq": 5}).as_object().unwrap().clone())
            .unwrap();
        let generated = db.bulk_docs(vec![json!({"n": 1})], true).unwrap()[0]
            .id
            .clone();
        (r1, generated)
    };
    // Options given to an existing file do not change it.
    let mut db =
        SqliteStore::open_with(&path, OpenOptions::new().name("other").id_seed(99)).unwrap();
    assert_eq!(db.name(), "notes");
    assert_eq!(db.update_seq(), 13);
    let info = db.info().unwrap();
    assert_eq!((info.doc_count, info.update_seq), (3, Seq::from(13)));
    let mut g = GetRequest::new("a");
    g.conflicts = true;
    let a = db.get_with(g).unwrap();
    assert_eq!(a["_rev"], r1.to_string());
    assert_eq!(a["_conflicts"], json!(["1-0000"]));
    let att = db.get_attachment("a", "x").unwrap();
    assert_eq!(
        (&att.data[..], att.content_type.as_str()),
        (&b"hello"[..], "text/plain")
    );
    let mut g = GetRequest::new("b");
    g.revs = true;
    let b = db.get_with(g).unwrap();
    assert_eq!(b["_revisions"]["start"], 10);
    assert_eq!(
        b["_revisions"]["ids"].as_array().unwrap().len(),
        4,
        "revs_limit kept"
    );
    assert_eq!(db.get_local("checkpoint").unwrap()["_rev"], "0-1");
    // The sequence, the id counter and the local revision go on from where they were.
    let next = db.bulk_docs(vec![json!({"n": 2})], true).unwrap()[0]
        .id
        .clone();
    assert_ne!(next, generated);
    assert_eq!(db.update_seq(), 14);
    let changes = db
        .changes(ChangesRequest {
            since: Seq::from(12),
            style: ChangesStyle::AllDocs,
            ..ChangesRequest::default()
        })
        .unwrap();
    let ids: Vec<&str> = changes.results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, [generated.as_str(), next.as_str()]);
    let local = db.get_local("checkpoint").unwrap();
    let mut local = local.clone();
    local.insert("seq".into(), json!(6));
    assert_eq!(
        db.put_local("checkpoint", local).unwrap().to_string(),
        "0-2"
    );
    // The same operations on a memory store give the same generated ids.
    let mut mem = peerpouch::MemoryStore::new("notes").with_id_seed(3);
    assert_eq!(
        mem.bulk_docs(vec![json!({})], true).unwrap()[0].id,
        generated
    );
}

/// Everything a store answers about its documents, for comparing two stores.
fn contents(
    db: &mut dyn Database,
) -> (peerpouch::DbInfo, Vec<serde_json::Value>, Vec<String>, u64) {
    // The identity is each store's own.
    let info = peerpouch::DbInfo {
        db_uuid: None,
        ..db.info().unwrap()
    };
    let docs = db
        .all_docs(AllDocsRequest {
            include_docs: true,
            ..AllDocsRequest::default()
        })
        .unwrap()
        .rows
        .into_iter()
        .map(|r| r.doc.unwrap())
        .collect();
    let changes = db
        .changes(ChangesRequest {
            style: ChangesStyle::AllDocs,
            ..ChangesRequest::default()
        })
        .unwrap()
        .results
        .iter()
        .map(|r| format!("{} {} {:?} {}", r.seq.0, r.id, r.changes, r.deleted))
        .collect();
    // The offset counts the live documents before the key (the `deleted` column).
    let offset = db
        .all_docs(AllDocsRequest {
            start_key: Some("d100".into()),
            limit: Some(1),
            ..AllDocsRequest::default()
        })
        .unwrap()
        .offset;
    (info, docs, changes, offset)
}

#[test]
fn writes_of_many_documents_match_the_memory_store() {
    // Batches longer than the rows one statement writes, with new documents, edits and
    // deletions in one request, read back before and after reopening.
    let (_dir, path) = temp();
    let mut db = SqliteStore::open_with(&path, OpenOptions::new().name("many").id_seed(1)).unwrap();
    let mut mem = peerpouch::MemoryStore::new("many").with_id_seed(1);
    let first: Vec<_> = (0..150)
        .map(|i| json!({"_id": format!("d{i:03}"), "i": i}))
        .collect();
    let written = db.bulk_docs(first.clone(), true).unwrap();
    assert_eq!(written, mem.bulk_docs(first, true).unwrap());
    let second: Vec<_> = written
        .iter()
        .take(130)
        .enumerate()
        .map(|(i, w)| {
            let rev = w.result.as_ref().unwrap().to_string();
            if i % 7 == 0 {
                json!({"_id": w.id, "_rev": rev, "_deleted": true})
            } else {
                json!({"_id": w.id, "_rev": rev, "i": i, "edited": true})
            }
        })
        .chain((150..170).map(|i| json!({"_id": format!("d{i:03}"), "i": i})))
        .chain([json!({"generated": true})])
        .collect();
    assert_eq!(
        db.bulk_docs(second.clone(), true).unwrap(),
        mem.bulk_docs(second, true).unwrap()
    );
    let expected = contents(&mut mem);
    assert_eq!(expected.0.doc_count, 170 - 19 + 1);
    assert_eq!(contents(&mut db), expected);
    drop(db);
    let mut db = SqliteStore::open(&path).unwrap();
    assert_eq!(contents(&mut db), expected);
    assert_eq!(db.tree_shapes().unwrap(), mem.tree_shapes());
}

/// Opens `path` expecting an error, and checks that the file's bytes did not change and no
/// journal was left beside it.
fn refused(path: &Path) -> OpenError {
    let before = std::fs::read(path).unwrap();
    let err = SqliteStore::open(path).unwrap_err();
    assert_eq!(
        std::fs::read(path).unwrap(),
        before,
        "the file is untouched"
    );
    let wal = PathBuf::from(format!("{}-wal", path.display()));
    assert!(!wal.exists(), "no WAL was created beside it");
    err
}

#[test]
fn a_file_that_is_not_sqlite_is_refused_untouched() {
    let (_dir, path) = temp();
    std::fs::write(&path, "these are my notes, not a database\n".repeat(200)).unwrap();
    let err = refused(&path);
    assert!(matches!(err, OpenError::NotPeerpouch { .. }), "{err:?}");
    assert!(
        err.to_string().contains("not a peerpouch database"),
        "{err}"
    );
}

#[test]
fn another_programs_sqlite_file_is_refused_untouched() {
    let (_dir, path) = temp();
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY, name TEXT); INSERT INTO photos (name) VALUES ('cat');")
            .unwrap();
    }
    let err = refused(&path);
    assert!(matches!(err, OpenError::NotPeerpouch { .. }), "{err:?}");
    // The same in WAL mode: reading it leaves no WAL or shared-memory file behind.
    let (_dir3, path3) = temp();
    {
        let conn = Connection::open(&path3).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE photos (id INTEGER PRIMARY KEY);")
            .unwrap();
    }
    let err = refused(&path3);
    assert!(matches!(err, OpenError::NotPeerpouch { .. }), "{err:?}");
    assert_eq!(
        std::fs::read_dir(path3.parent().unwrap()).unwrap().count(),
        1
    );
    // Another application id, even without tables.
    let (_dir2, path2) = temp();
    {
        let conn = Connection::open(&path2).unwrap();
        conn.pragma_update(None, "application_id", 42).unwrap();
    }
    let err = refused(&path2);
    assert!(matches!(err, OpenError::NotPeerpouch { .. }), "{err:?}");
}

#[test]
fn a_newer_format_is_refused_untouched() {
    let (_dir, path) = temp();
    drop(SqliteStore::open(&path).unwrap());
    {
        let conn = Connection::open(&path).unwrap();
        conn.pragma_update(None, "user_version", FORMAT_VERSION + 1)
            .unwrap();
        // The file stays in WAL mode, as a newer peerpouch would leave it.
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
    }
    let err = refused(&path);
    match err {
        OpenError::NewerFormat {
            found, supported, ..
        } => {
            assert_eq!((found, supported), (FORMAT_VERSION + 1, FORMAT_VERSION))
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn empty_files_are_migrated_from_version_zero() {
    // No file, a zero-byte file, and an SQLite database with nothing in it are all version 0.
    let (_dir, path) = temp();
    std::fs::write(&path, b"").unwrap();
    let mut db = SqliteStore::open(&path).unwrap();
    db.put(json!({"_id": "a"})).unwrap();
    drop(db);
    assert_eq!(header(&path), (APPLICATION_ID, i64::from(FORMAT_VERSION)));
    assert_eq!(rows(&path, "docs"), 1);

    let (_dir, path) = temp();
    Connection::open(&path)
        .unwrap()
        .execute_batch("VACUUM")
        .unwrap();
    assert!(path.exists());
    drop(SqliteStore::open(&path).unwrap());
    assert_eq!(header(&path), (APPLICATION_ID, i64::from(FORMAT_VERSION)));
}

#[test]
fn attachments_are_stored_once_per_digest() {
    let (_dir, path) = temp();
    let mut db = SqliteStore::open(&path).unwrap();
    let data = "aGVsbG8=";
    let ra = db
        .put(json!({"_id": "a", "_attachments": {"x": {"data": data}}}))
        .unwrap();
    let rb = db
        .put(json!({"_id": "b", "_attachments": {"y": {"data": data}, "z": {"data": "d29ybGQ="}}}))
        .unwrap();
    drop(db);
    assert_eq!(rows(&path, "attachments"), 2, "hello once, world once");
    let mut db = SqliteStore::open(&path).unwrap();
    db.put(json!({"_id": "a", "_rev": ra.to_string(), "_deleted": true}))
        .unwrap();
    drop(db);
    assert_eq!(rows(&path, "attachments"), 2, "b still uses hello");
    let mut db = SqliteStore::open(&path).unwrap();
    db.put(json!({"_id": "b", "_rev": rb.to_string(), "_deleted": true}))
        .unwrap();
    assert_eq!(db.attachment_blobs().unwrap(), 0);
    drop(db);
    assert_eq!(
        rows(&path, "attachments"),
        0,
        "unreferenced bytes are deleted"
    );
}

#[test]
fn large_attachments_are_written_and_read_in_chunks() {
    use base64::Engine;
    use peerpouch::store::Storage;
    let (_dir, path) = temp();
    let mut db = SqliteStore::open(&path).unwrap();
    // Eleven rows of 64 KiB, the last one shorter.
    let data: Vec<u8> = (0..700_001u32).map(|i| (i * 7 % 251) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    db.put(json!({"_id": "a", "_attachments": {"x": {"data": b64, "content_type": "a/b"}}}))
        .unwrap();
    let att = db.get_attachment("a", "x").unwrap();
    assert_eq!(att.data, data);
    let d = att.digest;
    assert_eq!(db.blob_info(&d).unwrap().unwrap().length, data.len() as u64);
    let ranges = [
        (0, 10),
        (65_535, 2),
        (65_536, 65_536),
        (100, 200_000),
        (699_990, 100),
        (700_001, 5),
        (9_999_999, 1),
        (5, 0),
    ];
    for (offset, len) in ranges {
        let chunk = db.blob_chunk(&d, offset, len).unwrap().unwrap();
        let start = (offset as usize).min(data.len());
        assert_eq!(
            chunk,
            data[start..(start + len).min(data.len())],
            "{offset} {len}"
        );
    }
    assert_eq!(db.blob_chunk("md5-none", 0, 10).unwrap(), None);
    assert_eq!(db.check().unwrap(), Vec::<String>::new());
    drop(db);
    assert_eq!(rows(&path, "attachment_chunks"), 11);
    let conn = Connection::open(&path).unwrap();
    let stored: Vec<u8> = conn
        .prepare("SELECT data FROM attachment_chunks ORDER BY n")
        .unwrap()
        .query_map([], |r| r.get::<_, Vec<u8>>(0))
        .unwrap()
        .flat_map(Result::unwrap)
        .collect();
    assert_eq!(stored, data);
    // A lost chunk is damage, reported by the read that meets it and by `check`.
    conn.execute("DELETE FROM attachment_chunks WHERE n = 3", [])
        .unwrap();
    drop(conn);
    let db = SqliteStore::open(&path).unwrap();
    assert_eq!(db.blob_chunk(&d, 0, 10).unwrap().unwrap(), data[..10]);
    let e = db.blob_chunk(&d, 65_536, 200_000).unwrap_err();
    assert_eq!(e.status(), 500, "{e}");
    assert!(e.to_string().contains("restore it from a replica"), "{e}");
    let problems = db.check().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("in 10 chunks"), "{problems:?}");
}

#[test]
fn a_failed_write_leaves_nothing_behind() {
    let (_dir, path) = temp();
    let mut db = SqliteStore::open(&path).unwrap();
    db.put(json!({"_id": "before", "_attachments": {"x": {"data": "aGVsbG8="}}}))
        .unwrap();
    db.put_local("l", json!({"v": 1}).as_object().unwrap().clone())
        .unwrap();
    drop(db);
    // Make the file refuse one document, as a full disk would refuse a transaction midway.
    Connection::open(&path)
        .unwrap()
        .execute_batch(
            "CREATE TRIGGER refuse BEFORE INSERT ON docs WHEN NEW.id = 'zz-boom'
             BEGIN SELECT RAISE(ABORT, 'injected failure'); END;",
        )
        .unwrap();
    let mut db = SqliteStore::open(&path).unwrap();
    let before = db.info().unwrap();
    let err = db
        .bulk_docs(
            vec![
                json!({"_id": "a", "_attachments": {"y": {"data": "d29ybGQ="}}}),
                json!({"_id": "_local/l", "_rev": "0-1", "v": 2}),
                json!({"_id": "zz-boom"}),
            ],
            true,
        )
        .unwrap_err();
    assert_eq!((err.status(), err.error()), (500, "storage_error"), "{err}");
    assert!(err.is_transient());
    // Nothing of the request is visible, in memory or after reopening.
    let check = |db: &mut SqliteStore| {
        assert_eq!(db.info().unwrap(), before);
        assert_eq!(db.get("a"), Err(DbError::NotFound("missing".into())));
        assert_eq!(db.get_local("l").unwrap()["v"], 1);
        assert_eq!(db.attachment_blobs().unwrap(), 1);
    };
    check(&mut db);
    drop(db);
    let mut db = SqliteStore::open(&path).unwrap();
    check(&mut db);
    // The store still works for documents the file accepts.
    db.put(json!({"_id": "c"})).unwrap();
    drop(db);
    assert_eq!(rows(&path, "attachments"), 1);
    let mut db = SqliteStore::open(&path).unwrap();
    assert_eq!(db.info().unwrap().doc_count, 2);
    assert_eq!(db.get("a"), Err(DbError::NotFound("missing".into())));
}

#[test]
fn stores_share_one_file() {
    let (_dir, path) = temp();
    let mut a = SqliteStore::open(&path).unwrap();
    let mut b = SqliteStore::open(&path).unwrap();
    assert_eq!(a.uuid(), b.uuid());
    b.info().unwrap();
    assert!(!b.changed_elsewhere(), "nothing written yet");
    let rev = a.put(json!({"_id": "x", "by": "a"})).unwrap();
    assert!(
        !a.changed_elsewhere(),
        "a store's own writes are not news to it"
    );
    assert!(b.changed_elsewhere(), "b learns that a wrote");
    assert!(!b.changed_elsewhere(), "once");
    assert_eq!(b.get("x").unwrap()["_rev"], rev.to_string());
    // Writes from either side take the next sequence of the one file.
    b.put(json!({"_id": "y", "by": "b"})).unwrap();
    assert!(a.changed_elsewhere());
    let seqs: Vec<u64> = a
        .changes(ChangesRequest::default())
        .unwrap()
        .results
        .iter()
        .map(|r| r.seq.as_u64().unwrap())
        .collect();
    assert_eq!(seqs, [1, 2]);
    // An edit against a revision the other side replaced is a conflict, as in one store.
    b.put(json!({"_id": "x", "_rev": rev.to_string(), "by": "b"}))
        .unwrap();
    assert_eq!(
        a.put(json!({"_id": "x", "_rev": rev.to_string(), "by": "a"})),
        Err(DbError::Conflict)
    );
    assert_eq!(a.info().unwrap(), b.info().unwrap());
}

#[test]
fn concurrent_writers_lose_nothing_and_never_share_a_sequence() {
    let (_dir, path) = temp();
    drop(SqliteStore::open(&path).unwrap());
    let writers: Vec<_> = (0..3)
        .map(|w| {
            let path = path.clone();
            std::thread::spawn(move || {
                let mut db = SqliteStore::open(&path).unwrap();
                for i in 0..100 {
                    let docs = vec![json!({"_id": format!("w{w}-{i}")}), json!({"w": w})];
                    for r in db.bulk_docs(docs, true).unwrap() {
                        r.result.unwrap();
                    }
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let mut db = SqliteStore::open(&path).unwrap();
    let info = db.info().unwrap();
    assert_eq!(info.doc_count, 600, "every acknowledged write is there");
    assert_eq!(info.update_seq, Seq::from(600));
    let changes = db.changes(ChangesRequest::default()).unwrap();
    let seqs: std::collections::BTreeSet<u64> = changes
        .results
        .iter()
        .map(|r| r.seq.as_u64().unwrap())
        .collect();
    assert_eq!(seqs.len(), 600, "one sequence per document");
    assert_eq!(db.ids_generated().unwrap(), 300, "no generated id twice");
}

#[test]
fn a_write_lock_held_too_long_is_a_typed_error() {
    let (_dir, path) = temp();
    let options = OpenOptions::new().lock_wait(std::time::Duration::from_millis(100));
    let mut db = SqliteStore::open_with(&path, options).unwrap();
    db.put(json!({"_id": "a"})).unwrap();
    let other = Connection::open(&path).unwrap();
    other.execute_batch("BEGIN IMMEDIATE").unwrap();
    let err = db.put(json!({"_id": "b"})).unwrap_err();
    assert!(matches!(err, DbError::Unavailable(_)), "{err:?}");
    assert!(err.is_transient());
    // Reads go on meanwhile, and the write goes through once the lock is free.
    assert_eq!(db.get("a").unwrap()["_id"], "a");
    other.execute_batch("ROLLBACK").unwrap();
    db.put(json!({"_id": "b"})).unwrap();
    assert_eq!(db.info().unwrap().doc_count, 2);
}

#[test]
fn a_damaged_tree_is_reported_not_served() {
    let (_dir, path) = temp();
    let mut db = SqliteStore::open(&path).unwrap();
    db.put(json!({"_id": "a"})).unwrap();
    drop(db);
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE docs SET tree = CAST('[{\"r\":\"1-x\",\"p\":0}]' AS BLOB)",
            [],
        )
        .unwrap();
    // Opening reads nothing of the documents: the damage is reported by the request that
    // meets it, as a typed error, and the rest of the file is still served.
    let mut db = SqliteStore::open(&path).unwrap();
    let err = db.get("a").unwrap_err();
    assert_eq!((err.status(), err.error()), (500, "damaged"), "{err}");
    assert!(err.reason().contains("\"a\""), "{err}");
    let err = db.all_docs(AllDocsRequest::default()).unwrap_err();
    assert_eq!(err.error(), "damaged");
    db.put(json!({"_id": "b"})).unwrap();
    assert_eq!(db.get("b").unwrap()["_id"], "b");
    // A whole-file check names it.
    let problems = db.check().unwrap();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(problems[0].contains("\"a\""), "{problems:?}");
}

#[test]
fn power_loss_durability_opens_and_writes() {
    let (_dir, path) = temp();
    let options = OpenOptions::new().durability(Durability::PowerLoss);
    let mut db = SqliteStore::open_with(&path, options.clone()).unwrap();
    let rev = db.put(json!({"_id": "a"})).unwrap();
    drop(db);
    let mut db = SqliteStore::open_with(&path, options).unwrap();
    let mut r = OpenRevsRequest::all("a");
    r.revs = true;
    assert_eq!(db.open_revs(r).unwrap().len(), 1);
    assert_eq!(db.get("a").unwrap()["_rev"], rev.to_string());
}

fn meta_uuid(path: &Path) -> Option<String> {
    let conn = Connection::open(path).unwrap();
    conn.query_row("SELECT value FROM meta WHERE key = 'db_uuid'", [], |r| {
        r.get(0)
    })
    .ok()
}

#[test]
fn a_file_keeps_its_identity() {
    let (_dir, path) = temp();
    let first = SqliteStore::open(&path).unwrap();
    let uuid = first.uuid();
    assert_eq!(uuid.len(), 32);
    assert!(uuid.bytes().all(|b| b.is_ascii_hexdigit()), "{uuid}");
    drop(first);
    assert_eq!(meta_uuid(&path).as_deref(), Some(uuid.as_str()));
    // Reopened, even with another identity asked for: the file's own stays.
    let mut again = SqliteStore::open_with(&path, OpenOptions::new().uuid("other")).unwrap();
    assert_eq!(
        again.info().unwrap().db_uuid.as_deref(),
        Some(uuid.as_str())
    );
    // `_local` documents (replication checkpoints) live elsewhere and cannot touch it.
    again
        .put_local(
            "db_uuid",
            json!({"db_uuid": "forged"}).as_object().unwrap().clone(),
        )
        .unwrap();
    drop(again);
    assert_eq!(SqliteStore::open(&path).unwrap().uuid(), uuid);
    // Another file is another database.
    let (_dir2, path2) = temp();
    assert_ne!(SqliteStore::open(&path2).unwrap().uuid(), uuid);
    // A given identity is a new file's.
    let (_dir3, path3) = temp();
    let given = SqliteStore::open_with(&path3, OpenOptions::new().uuid("given-uuid")).unwrap();
    assert_eq!(given.uuid(), "given-uuid");
}

#[test]
fn a_file_without_an_identity_gets_one_on_open() {
    // What a build from before identities made: format version 1, no `db_uuid` in `meta`.
    let (_dir, path) = temp();
    let rev = {
        let mut db = SqliteStore::open(&path).unwrap();
        db.put(json!({"_id": "a"})).unwrap()
    };
    Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM meta WHERE key = 'db_uuid'", [])
        .unwrap();
    assert_eq!(meta_uuid(&path), None);
    let mut db = SqliteStore::open_with(&path, OpenOptions::new().uuid("from-options")).unwrap();
    assert_eq!(db.uuid(), "from-options");
    assert_eq!(db.get("a").unwrap()["_rev"], rev.to_string());
    drop(db);
    assert_eq!(meta_uuid(&path).as_deref(), Some("from-options"));
    // The identity needs no format version of its own: an older build of the same version
    // opens such a file as before and ignores the key.
    assert_eq!(header(&path), (APPLICATION_ID, i64::from(FORMAT_VERSION)));
    // Without options, a random one; kept from then on.
    Connection::open(&path)
        .unwrap()
        .execute("DELETE FROM meta WHERE key = 'db_uuid'", [])
        .unwrap();
    let made = SqliteStore::open(&path).unwrap().uuid();
    assert_eq!(made.len(), 32);
    assert_eq!(SqliteStore::open(&path).unwrap().uuid(), made);
}

#[test]
fn a_bad_identity_is_refused() {
    let (_dir, path) = temp();
    match SqliteStore::open_with(&path, OpenOptions::new().uuid("two words")) {
        Err(e @ OpenError::InvalidUuid { .. }) => {
            assert!(e.to_string().contains("invalid database uuid"), "{e}")
        }
        other => panic!("{other:?}"),
    }
    assert!(!path.exists(), "nothing was created");
    // A damaged identity in the file is reported, not served.
    drop(SqliteStore::open(&path).unwrap());
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE meta SET value = 'not valid' WHERE key = 'db_uuid'",
            [],
        )
        .unwrap();
    match SqliteStore::open(&path) {
        Err(OpenError::Damaged { detail, .. }) => assert!(detail.contains("uuid"), "{detail}"),
        other => panic!("{other:?}"),
    }
}

/// A copy of `tests/fixtures/format1.db`: a file written by the format-1 store (the one that
/// loaded the whole file on open), by the CLI: documents `a` and `b` sharing an attachment, `b`
/// with a second one, `c` deleted, `d` edited so its attachment was freed, `e` with a conflict
/// from a replication, one generated id, and two replication checkpoints as `_local` documents.
fn format1_copy() -> (tempfile::TempDir, PathBuf) {
    fixture_copy("format1.db")
}

fn fixture_copy(name: &str) -> (tempfile::TempDir, PathBuf) {
    let (dir, path) = temp();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    std::fs::copy(fixture.join(name), &path).unwrap();
    (dir, path)
}

/// Opens a copy of a fixture of format `from`, which migrates it, and checks its name, live and
/// deleted documents, `update_seq` (10 in both fixtures) and identity.
fn open_migrated(path: &Path, from: i64, info: (&str, u64, u64, &str)) -> SqliteStore {
    let (name, docs, deleted, uuid) = info;
    assert_eq!(header(path), (APPLICATION_ID, from));
    let mut db = SqliteStore::open(path).unwrap();
    assert_eq!(header(path), (APPLICATION_ID, i64::from(FORMAT_VERSION)));
    let info = db.info().unwrap();
    assert_eq!(
        (info.db_name.as_str(), info.doc_count, info.doc_del_count),
        (name, docs, deleted)
    );
    assert_eq!(info.update_seq, Seq::from(10));
    assert_eq!(info.db_uuid.as_deref(), Some(uuid));
    db
}

#[test]
fn a_format_1_file_is_migrated_on_open() {
    let (_dir, path) = format1_copy();
    let mut db = open_migrated(&path, 1, ("a", 5, 1, "85a6f8bc1067153ae6fd9604b34504e7"));
    // The conflict, the tombstone and the attachments are as they were.
    let mut g = GetRequest::new("e");
    g.conflicts = true;
    let e = db.get_with(g).unwrap();
    assert_eq!(e["_rev"], "2-87647bdf9f082db0a4c7e7c2f2b8c32b");
    assert_eq!(
        e["_conflicts"],
        json!(["2-6f0739f89ec298bf5de971d7812e2b42"])
    );
    assert_eq!(db.get("c"), Err(DbError::NotFound("deleted".into())));
    assert_eq!(&db.get_attachment("a", "x").unwrap().data[..], b"hello");
    assert_eq!(&db.get_attachment("b", "z").unwrap().data[..], b"world");
    assert_eq!(db.attachment_blobs().unwrap(), 2);
    let changes = db.changes(ChangesRequest::default()).unwrap();
    let seqs: Vec<(String, u64)> = changes
        .results
        .iter()
        .map(|r| (r.id.clone(), r.seq.as_u64().unwrap()))
        .collect();
    assert_eq!(
        seqs,
        [
            ("a".to_string(), 1),
            ("b".into(), 2),
            ("c".into(), 4),
            ("5730c7bc8e29b20b52ca192561ad999a".into(), 7),
            ("d".into(), 9),
            ("e".into(), 10)
        ]
    );
    let cp = db.get_local("7634192055a5bdb3989be573c95250cb").unwrap();
    assert_eq!(cp["source_last_seq"], 7);
    // Writing goes on from where the file was: sequences, generated ids, reference counts.
    let generated = db.put(json!({"v": "second"})).unwrap();
    assert_eq!(db.info().unwrap().update_seq, Seq::from(11));
    assert_eq!(db.ids_generated().unwrap(), 2);
    let a = db.get("a").unwrap();
    db.put(json!({"_id": "a", "_rev": a["_rev"], "_deleted": true}))
        .unwrap();
    assert_eq!(db.attachment_blobs().unwrap(), 2, "b still uses hello");
    let b = db.get("b").unwrap();
    db.put(json!({"_id": "b", "_rev": b["_rev"], "_deleted": true}))
        .unwrap();
    assert_eq!(db.attachment_blobs().unwrap(), 0);
    drop(db);
    let mut db = SqliteStore::open(&path).unwrap();
    assert_eq!(db.info().unwrap().doc_count, 4);
    assert_eq!(generated.pos, 1);
}

/// A copy of `tests/fixtures/format2.db`, written by the format-2 store (attachment bytes in one
/// blob per digest): `a` and `b` sharing `hello`, `b` with `world` too, `c` deleted, `d` edited
/// so its attachment was freed, `big` with 150,000 bytes, a generated id, `e` with a conflict
/// from a replication and a `_local` checkpoint.
fn format2_copy() -> (tempfile::TempDir, PathBuf) {
    fixture_copy("format2.db")
}

#[test]
fn a_format_2_file_is_migrated_on_open() {
    let (_dir, path) = format2_copy();
    let mut db = open_migrated(&path, 2, ("f2", 6, 1, "0f0e0d0c0b0a09080706050403020100"));
    assert_eq!(db.check().unwrap(), Vec::<String>::new());
    let big: Vec<u8> = (0..150_000u32).map(|i| (i * 31 % 253) as u8).collect();
    let att = db.get_attachment("big", "big.bin").unwrap();
    assert_eq!(att.data, big);
    assert_eq!(att.content_type, "application/octet-stream");
    assert_eq!(&db.get_attachment("a", "x").unwrap().data[..], b"hello");
    assert_eq!(&db.get_attachment("b", "z").unwrap().data[..], b"world");
    assert_eq!(db.attachment_blobs().unwrap(), 3);
    let mut g = GetRequest::new("e");
    g.conflicts = true;
    let e = db.get_with(g).unwrap();
    assert_eq!(e["_rev"], "2-bbb");
    assert_eq!(e["_conflicts"], json!(["2-aaa"]));
    assert_eq!(db.get("c"), Err(DbError::NotFound("deleted".into())));
    assert_eq!(
        db.get_local("checkpoint").unwrap()["source_last_seq"],
        json!(9)
    );
    // Writing goes on: generated ids, reference counts, chunks freed with their attachment.
    db.put(json!({"v": "second"})).unwrap();
    assert_eq!(db.ids_generated().unwrap(), 2);
    let b = db.get("big").unwrap();
    db.put(json!({"_id": "big", "_rev": b["_rev"], "_deleted": true}))
        .unwrap();
    assert_eq!(db.attachment_blobs().unwrap(), 2);
    drop(db);
    assert_eq!(
        rows(&path, "attachment_chunks"),
        2,
        "hello and world, one row each"
    );
    let columns: Vec<String> = Connection::open(&path)
        .unwrap()
        .prepare("SELECT name FROM pragma_table_info('attachments')")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(columns, ["digest", "content_type", "refs", "length"]);
}

#[test]
fn a_format_1_file_that_cannot_migrate_is_left_untouched() {
    let (_dir, path) = format1_copy();
    Connection::open(&path)
        .unwrap()
        .execute(
            "UPDATE docs SET tree = CAST('[{\"r\":\"1-x\",\"p\":0}]' AS BLOB) WHERE id = 'd'",
            [],
        )
        .unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = SqliteStore::open(&path).unwrap_err();
    assert!(matches!(err, OpenError::Damaged { .. }), "{err:?}");
    assert!(err.to_string().contains("\"d\""), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), before, "byte for byte");
    assert_eq!(header(&path), (APPLICATION_ID, 1));
}

#[test]
fn corrupted_pages_are_typed_errors_on_the_requests_that_meet_them() {
    let (_dir, path) = temp();
    let mut db = SqliteStore::open(&path).unwrap();
    let docs: Vec<_> = (0..400)
        .map(|i| json!({"_id": format!("doc-{i:04}"), "text": "x".repeat(300)}))
        .collect();
    for r in db.bulk_docs(docs, true).unwrap() {
        r.result.unwrap();
    }
    drop(db);
    // Overwrite pages in the middle of the file (not the header page): table and index pages.
    let mut bytes = std::fs::read(&path).unwrap();
    let page = 4096;
    assert!(bytes.len() > 20 * page, "{} bytes", bytes.len());
    for p in [5, 9, 14] {
        for (i, b) in bytes[p * page..(p + 1) * page].iter_mut().enumerate() {
            *b = (i * 131 % 251) as u8;
        }
    }
    std::fs::write(&path, &bytes).unwrap();
    let mut db = SqliteStore::open(&path).unwrap();
    let mut failures = 0;
    let mut check = |r: Result<(), DbError>| {
        if let Err(e) = r {
            assert_eq!(e.status(), 500, "{e}");
            assert!(matches!(e.error(), "damaged" | "storage_error"), "{e}");
            failures += 1;
        }
    };
    check(db.all_docs(AllDocsRequest::default()).map(|_| ()));
    check(db.changes(ChangesRequest::default()).map(|_| ()));
    for i in 0..400 {
        check(
            db.get(&format!("doc-{i:04}"))
                .map(|_| ())
                .or_else(|e| match e {
                    DbError::NotFound(_) => Ok(()),
                    e => Err(e),
                }),
        );
    }
    assert!(failures > 0, "the damage was met");
    assert!(!db.check().unwrap().is_empty(), "and the check reports it");
}
