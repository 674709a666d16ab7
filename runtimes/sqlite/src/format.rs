//! The file format: schema, identity, migrations, and the encoding of revision trees.
//!
//! A peerpouch file is an SQLite database whose header says `application_id` =
//! [`APPLICATION_ID`] and `user_version` = the format version. See the crate README for the
//! tables.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use peerpouch::doc::AttMeta;
use peerpouch::revtree::{FlatRev, RevTree};
use peerpouch::store::Counters;
use peerpouch::store::{Fields, StoredBody};
use peerpouch::Rev;
use rusqlite::{Connection, OptionalExtension, Transaction};
use serde::Deserialize;
use serde_json::value::RawValue;

/// `PRAGMA application_id` of every peerpouch file: "ppch" in ASCII.
pub const APPLICATION_ID: i32 = 0x7070_6368;

/// The format version this build writes; files at a lower version are migrated forward when
/// opened, files at a higher one are refused.
pub const FORMAT_VERSION: u32 = 3;

/// Bytes per row of `attachment_chunks` (the last row of an attachment may be shorter): a range
/// of an attachment is read from the rows that hold it, never the whole.
pub(crate) const CHUNK: usize = 64 << 10;

/// What is at a path before we touch it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Found {
    /// No file, an empty file, or an SQLite database with no tables: free to initialise.
    Nothing,
    /// A peerpouch file at this format version.
    Peerpouch(u32),
    /// An SQLite database of some other program (it has tables, or another application id).
    Foreign(String),
}

/// Identifies a file from its first 100 bytes (the SQLite header) without opening it as a
/// database, when they are enough: `None` means an SQLite database without an application id
/// (empty, or another program's), which only its schema tells apart.
///
/// The header is read from the file itself, so it can lag behind a WAL that was never
/// checkpointed; the store identifies the file again under its lock, through SQLite.
pub(crate) fn identify_header(path: &Path) -> std::io::Result<Option<Found>> {
    let mut header = [0u8; 100];
    let n = match std::fs::File::open(path) {
        Ok(mut f) => read_up_to(&mut f, &mut header)?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Some(Found::Nothing)),
        Err(e) => return Err(e),
    };
    if n == 0 {
        return Ok(Some(Found::Nothing));
    }
    if n < header.len() || &header[..16] != b"SQLite format 3\0" {
        return Ok(Some(Found::Foreign("it is not an SQLite database".into())));
    }
    let word = |at: usize| {
        u32::from_be_bytes([header[at], header[at + 1], header[at + 2], header[at + 3]])
    };
    let (version, app) = (word(60), word(68) as i32);
    Ok(if app == APPLICATION_ID {
        Some(Found::Peerpouch(version))
    } else if app != 0 {
        Some(Found::Foreign(format!("its application_id is {app:#x}")))
    } else {
        None
    })
}

fn read_up_to(f: &mut std::fs::File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match f.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

/// Reads the identity of an existing SQLite database without writing to it.
pub(crate) fn identify(conn: &Connection) -> rusqlite::Result<Found> {
    let app: i32 = conn.query_row("PRAGMA application_id", [], |r| r.get(0))?;
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    Ok(if app == APPLICATION_ID {
        Found::Peerpouch(u32::try_from(version).unwrap_or(u32::MAX))
    } else if app != 0 {
        Found::Foreign(format!("its application_id is {app:#x}"))
    } else if tables > 0 || version != 0 {
        Found::Foreign(format!(
            "it is an SQLite database with {tables} schema objects of another program"
        ))
    } else {
        Found::Nothing
    })
}

/// What a new file starts with (ignored when the file exists).
pub(crate) struct Creation<'a> {
    pub name: &'a str,
    pub id_seed: u64,
    pub revs_limit: usize,
}

/// Brings a file from format `from` to [`FORMAT_VERSION`], one step per version, in `tx`.
///
/// Each step is the change from one version to the next and never edits an earlier step: a
/// file at any older version runs the steps after it in order. Version 0 is a file with
/// nothing in it.
pub(crate) fn migrate(
    tx: &Transaction<'_>,
    from: u32,
    new: &Creation<'_>,
) -> Result<(), FormatError> {
    if from < 1 {
        tx.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value ANY NOT NULL) STRICT;
             CREATE TABLE docs (seq INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE,
                                tree BLOB NOT NULL) STRICT;
             CREATE TABLE attachments (digest TEXT PRIMARY KEY, content_type TEXT NOT NULL,
                                       data BLOB NOT NULL) STRICT;
             CREATE TABLE local_docs (id TEXT PRIMARY KEY, rev INTEGER NOT NULL,
                                      body TEXT NOT NULL) STRICT;",
        )?;
        let mut put = tx.prepare("INSERT INTO meta (key, value) VALUES (?1, ?2)")?;
        put.execute(("name", new.name))?;
        // SQLite integers are signed: the seed's bits are kept as they are.
        put.execute(("id_seed", new.id_seed as i64))?;
        put.execute(("revs_limit", new.revs_limit as i64))?;
        put.execute(("ids_generated", 0i64))?;
    }
    if from < 2 {
        migrate_to_2(tx)?;
    }
    if from < 3 {
        migrate_to_3(tx)?;
    }
    // A future version 4 adds `if from < 4 { ... }` here.
    tx.pragma_update(None, "application_id", APPLICATION_ID)?;
    tx.pragma_update(None, "user_version", FORMAT_VERSION)?;
    Ok(())
}

/// The `meta` key of the database's identity ([`peerpouch::DbInfo::db_uuid`]).
///
/// Added after version 1 without a new version: an older build opens such a file as before,
/// never reads the key and never removes it. A file without it (made by an older build) gets
/// one when it is next opened, in the same transaction as any migration.
pub(crate) const META_UUID: &str = "db_uuid";

/// Gives the file the identity `uuid` unless it already has one; returns the file's identity.
pub(crate) fn ensure_uuid(
    tx: &Transaction<'_>,
    uuid: impl FnOnce() -> String,
) -> rusqlite::Result<String> {
    if let Some(existing) = meta::<String>(tx, META_UUID)? {
        return Ok(existing);
    }
    let uuid = uuid();
    tx.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)",
        (META_UUID, &uuid),
    )?;
    Ok(uuid)
}

/// Reads one `meta` value.
pub(crate) fn meta<T: rusqlite::types::FromSql>(
    conn: &Connection,
    key: &str,
) -> rusqlite::Result<Option<T>> {
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

#[derive(Deserialize)]
struct RevIn<'a> {
    r: Rev,
    #[serde(default)]
    p: Option<usize>,
    #[serde(default)]
    d: bool,
    #[serde(default, borrow)]
    b: Option<BodyIn<'a>>,
}

#[derive(Deserialize)]
struct BodyIn<'a> {
    /// The fields' text, as it is in the row.
    #[serde(borrow)]
    f: &'a RawValue,
    #[serde(default)]
    a: BTreeMap<String, AttMeta>,
}

/// Encodes a revision tree as the JSON array kept in `docs.tree`:
/// `[{"r": rev, "p": parent index, "d": true, "b": {"f": fields, "a": attachments}}, ...]`,
/// with `p`, `d`, `b` and `a` left out when absent, false or empty, appended to `out`. Written
/// by hand so that the fields go in as the text they are kept as.
pub(crate) fn encode_tree(tree: &RevTree<Arc<StoredBody>>, out: &mut Vec<u8>) {
    use std::io::Write;
    out.push(b'[');
    for (i, f) in tree.to_flat().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"r\":");
        // Serialising revisions and attachment metadata into a Vec cannot fail.
        serde_json::to_writer(&mut *out, &f.rev).expect("JSON into memory");
        if let Some(p) = f.parent {
            write!(out, ",\"p\":{p}").expect("into memory");
        }
        if f.deleted {
            out.extend_from_slice(b",\"d\":true");
        }
        if let Some(b) = f.body {
            out.extend_from_slice(b",\"b\":{\"f\":");
            out.extend_from_slice(b.fields.json().as_bytes());
            if !b.atts.is_empty() {
                out.extend_from_slice(b",\"a\":");
                serde_json::to_writer(&mut *out, &b.atts).expect("JSON into memory");
            }
            out.push(b'}');
        }
        out.push(b'}');
    }
    out.push(b']');
}

#[derive(Deserialize)]
struct RevShapeIn {
    r: Rev,
    #[serde(default)]
    p: Option<usize>,
    #[serde(default)]
    d: bool,
    // The body is read over, not built.
    #[serde(default, rename = "b")]
    _b: Option<serde::de::IgnoredAny>,
}

/// Decodes `docs.tree` without the leaves' bodies: revisions, parents and deletions only.
pub(crate) fn decode_shape(bytes: &[u8]) -> Result<RevTree<Arc<StoredBody>>, String> {
    let nodes: Vec<RevShapeIn> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    RevTree::from_flat(
        nodes
            .into_iter()
            .map(|n| FlatRev {
                rev: n.r,
                parent: n.p,
                deleted: n.d,
                body: None,
            })
            .collect(),
    )
}

/// Decodes `docs.tree`.
pub(crate) fn decode_tree(bytes: &[u8]) -> Result<RevTree<Arc<StoredBody>>, String> {
    let nodes: Vec<RevIn<'_>> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    let mut flat = Vec::with_capacity(nodes.len());
    for n in nodes {
        let body = match n.b {
            Some(b) if !b.f.get().starts_with('{') => {
                return Err(format!("the fields of {} are not a JSON object", n.r));
            }
            Some(b) => Some(Arc::new(StoredBody {
                fields: Fields::from_json(b.f.get()),
                atts: b.a,
            })),
            None => None,
        };
        flat.push(FlatRev {
            rev: n.r,
            parent: n.p,
            deleted: n.d,
            body,
        });
    }
    RevTree::from_flat(flat)
}

/// Version 1 to 2: the store serves from the file instead of loading it, so what loading
/// computed is kept: each document's winner-is-deleted flag (`docs.deleted`, for counts of
/// live documents in a range), each attachment's reference count (`attachments.refs`), and the
/// counters (`meta` keys `update_seq`, `doc_count`, `del_count`). Bytes no document refers to
/// (which loading ignored) are deleted. A damaged tree fails the migration, which then changes
/// nothing.
fn migrate_to_2(tx: &Transaction<'_>) -> Result<(), FormatError> {
    tx.execute_batch(
        "ALTER TABLE docs ADD COLUMN deleted INTEGER NOT NULL DEFAULT 0;
         ALTER TABLE attachments ADD COLUMN refs INTEGER NOT NULL DEFAULT 0;",
    )?;
    let mut counters = Counters {
        ids_generated: meta::<i64>(tx, "ids_generated")?.unwrap_or(0) as u64,
        ..Counters::default()
    };
    let mut refs: BTreeMap<String, i64> = BTreeMap::new();
    {
        let mut docs = tx.prepare("SELECT id, seq, tree FROM docs")?;
        let mut set_deleted = tx.prepare("UPDATE docs SET deleted = 1 WHERE seq = ?1")?;
        let mut rows = docs.query([])?;
        while let Some(r) = rows.next()? {
            let id: String = r.get(0)?;
            let seq: i64 = r.get(1)?;
            let bytes: Vec<u8> = r.get(2)?;
            let tree = decode_tree(&bytes)
                .map_err(|e| FormatError::Damaged(format!("document {id:?}: {e}")))?;
            for body in tree.bodies() {
                for m in body.atts.values() {
                    *refs.entry(m.digest.clone()).or_insert(0) += 1;
                }
            }
            counters.update_seq = counters.update_seq.max(seq as u64);
            if tree.is_deleted(tree.winner()) {
                counters.del_count += 1;
                set_deleted.execute([seq])?;
            } else {
                counters.doc_count += 1;
            }
        }
    }
    {
        let mut set_refs = tx.prepare("UPDATE attachments SET refs = ?2 WHERE digest = ?1")?;
        for (digest, n) in &refs {
            set_refs.execute((digest, n))?;
        }
    }
    tx.execute("DELETE FROM attachments WHERE refs = 0", [])?;
    for key in ["update_seq", "doc_count", "del_count"] {
        tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, 0) ON CONFLICT (key) DO NOTHING",
            [key],
        )?;
    }
    Ok(write_counters(tx, &counters)?)
}

/// Version 3 keeps attachment bytes in rows of [`CHUNK`] bytes (`attachment_chunks`) instead of
/// one `attachments.data` blob, which `attachments.length` replaces: SQLite finds a byte of a
/// blob only by walking its overflow pages from the start, so reading a large one a range at a
/// time from one blob costs time quadratic in its size. Each blob is copied a chunk at a time
/// through one incremental blob handle, which walks its pages once.
fn migrate_to_3(tx: &Transaction<'_>) -> Result<(), FormatError> {
    tx.execute_batch(
        "CREATE TABLE attachment_chunks (digest TEXT NOT NULL, n INTEGER NOT NULL,
                                         data BLOB NOT NULL, PRIMARY KEY (digest, n)) STRICT;
         ALTER TABLE attachments ADD COLUMN length INTEGER NOT NULL DEFAULT 0;
         UPDATE attachments SET length = length(data);",
    )?;
    let blobs: Vec<(i64, String, usize)> = tx
        .prepare("SELECT rowid, digest, length FROM attachments")?
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as usize))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut put =
        tx.prepare("INSERT INTO attachment_chunks (digest, n, data) VALUES (?1, ?2, ?3)")?;
    let mut buf = vec![0; CHUNK];
    for (rowid, digest, length) in blobs {
        let blob = tx.blob_open(rusqlite::MAIN_DB, c"attachments", c"data", rowid, true)?;
        for (n, at) in (0..length).step_by(CHUNK).enumerate() {
            let chunk = &mut buf[..CHUNK.min(length - at)];
            blob.read_at_exact(chunk, at)?;
            put.execute((&digest, n as i64, &chunk[..]))?;
        }
    }
    tx.execute_batch("ALTER TABLE attachments DROP COLUMN data;")?;
    Ok(())
}

/// The counters kept in `meta`.
pub(crate) fn read_counters(conn: &Connection) -> rusqlite::Result<Counters> {
    let mut c = Counters::default();
    let mut stmt = conn.prepare_cached(
        "SELECT key, value FROM meta
         WHERE key IN ('update_seq', 'doc_count', 'del_count', 'ids_generated')",
    )?;
    let mut rows = stmt.query([])?;
    while let Some(r) = rows.next()? {
        let key: String = r.get(0)?;
        let value = r.get::<_, i64>(1)? as u64;
        match key.as_str() {
            "update_seq" => c.update_seq = value,
            "doc_count" => c.doc_count = value,
            "del_count" => c.del_count = value,
            _ => c.ids_generated = value,
        }
    }
    Ok(c)
}

/// Writes the counters into `meta`.
pub(crate) fn write_counters(conn: &Connection, c: &Counters) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached("UPDATE meta SET value = ?2 WHERE key = ?1")?;
    for (key, value) in [
        ("update_seq", c.update_seq),
        ("doc_count", c.doc_count),
        ("del_count", c.del_count),
        ("ids_generated", c.ids_generated),
    ] {
        stmt.execute((key, value as i64))?;
    }
    Ok(())
}

/// Why the fixed values of a file could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum FormatError {
    #[error("{0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("{0}")]
    Damaged(String),
}

/// The values fixed when the file was made.
pub(crate) struct Fixed {
    pub name: String,
    pub id_seed: u64,
    pub revs_limit: usize,
    pub uuid: String,
}

impl Fixed {
    pub(crate) fn read(conn: &Connection) -> Result<Fixed, FormatError> {
        let damaged = |what: &str| FormatError::Damaged(what.to_string());
        let name: String = meta(conn, "name")?.ok_or_else(|| damaged("no name"))?;
        let seed: i64 = meta(conn, "id_seed")?.ok_or_else(|| damaged("no id_seed"))?;
        let limit: i64 = meta(conn, "revs_limit")?.ok_or_else(|| damaged("no revs_limit"))?;
        let uuid: String = meta(conn, META_UUID)?.ok_or_else(|| damaged("no db_uuid"))?;
        if !peerpouch::is_valid_db_uuid(&uuid) {
            return Err(damaged("an invalid db_uuid"));
        }
        read_counters(conn)?;
        Ok(Fixed {
            name,
            id_seed: seed as u64,
            revs_limit: usize::try_from(limit)
                .unwrap_or(peerpouch::store::DEFAULT_REVS_LIMIT)
                .max(1),
            uuid,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use peerpouch::store::Fields;
    use serde_json::json;

    #[test]
    fn trees_are_written_as_before_and_read_back() {
        let fields = json!({"text": "é \"q\"", "n": 1.5, "z": [null, {"b": 1, "a": 2}]});
        let mut atts = BTreeMap::new();
        atts.insert(
            "a.txt".to_string(),
            AttMeta {
                content_type: "text/plain".into(),
                digest: "md5-x".into(),
                length: 3,
                revpos: 2,
            },
        );
        let body = Arc::new(StoredBody {
            fields: Fields::from_doc(fields.as_object().unwrap()),
            atts,
        });
        let flat = vec![
            FlatRev {
                rev: "1-a".parse().unwrap(),
                parent: None,
                deleted: false,
                body: None,
            },
            FlatRev {
                rev: "2-b".parse().unwrap(),
                parent: Some(0),
                deleted: true,
                body: Some(body.clone()),
            },
        ];
        let tree = RevTree::from_flat(flat).unwrap();
        let mut out = Vec::new();
        encode_tree(&tree, &mut out);
        // The form the store wrote when bodies were serialised from parsed values.
        let expected = concat!(
            r#"[{"r":"1-a"},{"r":"2-b","p":0,"d":true,"b":{"f":"#,
            r#"{"n":1.5,"text":"é \"q\"","z":[null,{"a":2,"b":1}]},"#,
            r#""a":{"a.txt":{"content_type":"text/plain","digest":"md5-x","length":3,"revpos":2}}}}]"#
        );
        assert_eq!(String::from_utf8(out.clone()).unwrap(), expected);
        let back = decode_tree(&out).unwrap();
        assert_eq!(back.bodies().next(), Some(&body));
        assert_eq!(back.shape(), tree.shape());
    }

    #[test]
    fn fields_that_are_not_an_object_are_a_damaged_tree() {
        assert!(decode_tree(br#"[{"r":"1-a","b":{"f":[1]}}]"#).is_err());
        assert!(decode_tree(br#"[{"r":"1-a","b":{"f":{"x":}}}]"#).is_err());
        assert!(decode_tree(br#"[{"r":"1-a","b":{"f":{"x":1}}}]"#).is_ok());
    }
}
