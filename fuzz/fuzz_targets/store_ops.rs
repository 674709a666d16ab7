//! Sequences of operations on two `MemoryStore`s, with replications between them. After each
//! step both stores keep their invariants (`common::check_invariants`) and the operation's own
//! contract holds (an edit of the current revision succeeds, an edit of a stale one conflicts,
//! a replication writes everything it reads); after a final replication both ways the stores
//! have converged: equal revision trees and equal winning documents.
//!
//! Revision ids written with `new_edits: false` are forged from a path of choices
//! (`f1b0.0`, `f1b0.01`, `f1b0.01d`, ...), so a forged revision always has the same ancestry
//! (down to the same root), body and deletion flag wherever it is written: two replicas given
//! different contents under one revision id cannot converge, in CouchDB or here, and that would
//! not be a bug.
//!
//! Findings so far, all fixed, are replayed as readable scenarios in `tests/fuzz_regressions.rs`
//! (inputs in `tests/fuzz_regressions/store_ops/`, described in its README).
#![no_main]

mod common;

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use peerpouch::{
    replicate, Database, DbError, Doc, GetRequest, MemoryStore, ReplicatorConfig, Rev,
};
use serde_json::{json, Value};

/// Most operations per input.
const MAX_OPS: usize = 48;
/// Longest forged history.
const MAX_FORGED_DEPTH: usize = 8;

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Side {
    A,
    B,
}

/// Small attachment contents (base64) and content types to pick from.
const ATT_DATA: &[&str] = &["aGVsbG8=", "d29ybGQ=", "", "AAECAwQ="];
const ATT_TYPES: &[&str] = &["text/plain", "application/octet-stream"];

#[derive(Arbitrary, Debug)]
struct Att {
    name: u8,
    data: u8,
    content_type: u8,
}

impl Att {
    fn name(&self) -> String {
        format!("f{}.bin", self.name % 3)
    }

    fn json(&self) -> Value {
        json!({
            "content_type": ATT_TYPES[self.content_type as usize % ATT_TYPES.len()],
            "data": ATT_DATA[self.data as usize % ATT_DATA.len()],
        })
    }
}

#[derive(Arbitrary, Debug)]
enum Op {
    /// Creates a document without `_rev` (a conflict if it exists and is not deleted).
    Put {
        side: Side,
        id: u8,
        value: u8,
        att: Option<Att>,
    },
    /// Creates a document with a generated id.
    PutNoId { side: Side, value: u8 },
    /// Edits the winner with its current `_rev`, keeping its attachments as stubs.
    Edit {
        side: Side,
        id: u8,
        value: u8,
        add_att: Option<Att>,
        drop_atts: bool,
    },
    /// Edits with a revision that is not a leaf: must conflict.
    EditStale { side: Side, id: u8, value: u8 },
    /// Deletes the winner.
    Delete { side: Side, id: u8 },
    /// Writes a forged revision with its whole history (`new_edits: false`).
    Replicated {
        side: Side,
        id: u8,
        family: u8,
        /// Each step: 0, 1 or a deleted step (`d`).
        path: Vec<u8>,
        /// Where the history starts: at 1, or at a high position (CouchDB keeps only the last
        /// `revs_limit` revisions, so a history need not reach 1).
        base: u8,
    },
    /// Writes a `_local` document at its current revision.
    PutLocal { side: Side, id: u8, value: u8 },
    /// Deletes a `_local` document at its current revision.
    DeleteLocal { side: Side, id: u8 },
    /// One-shot replication from `from` to the other side.
    Replicate { from: Side, batch_size: u8 },
}

fn doc_id(id: u8) -> String {
    // A design document too: it replicates like any other.
    match id % 6 {
        5 => "_design/x".to_string(),
        n => format!("d{n}"),
    }
}

struct Stores {
    a: MemoryStore,
    b: MemoryStore,
}

impl Stores {
    fn get(&mut self, side: Side) -> &mut MemoryStore {
        match side {
            Side::A => &mut self.a,
            Side::B => &mut self.b,
        }
    }

    fn replicate(&mut self, from: Side, batch_size: usize) {
        let (src, dst, names) = match from {
            Side::A => (&mut self.a, &mut self.b, ("a", "b")),
            Side::B => (&mut self.b, &mut self.a, ("b", "a")),
        };
        let before = src.tree_shapes();
        let p = replicate(
            src,
            dst,
            ReplicatorConfig::new(names.0, names.1).batch_size(batch_size),
        )
        .unwrap_or_else(|e| panic!("replication {names:?} failed: {e:?}"));
        assert_eq!(p.doc_read_failures, 0, "{names:?}: {p:?}");
        assert_eq!(p.doc_write_failures, 0, "{names:?}: {p:?}");
        // Every revision of the source (with its parent) is now on the target.
        let after = dst.tree_shapes();
        for (id, shape) in before {
            let t = after
                .get(&id)
                .unwrap_or_else(|| panic!("{names:?}: {id:?} not replicated"));
            for (rev, parent, deleted) in shape {
                let found = t.iter().any(|(r, p, _)| *r == rev && *p == parent);
                assert!(
                    found,
                    "{names:?}: {id:?} {rev} (parent {parent:?}, deleted leaf {deleted}) missing on the target"
                );
            }
        }
    }
}

/// The current winner's `_rev`, if the document exists and is not deleted.
fn current(db: &mut MemoryStore, id: &str) -> Option<(Doc, Rev)> {
    let doc = db.get(id).ok()?;
    let rev = doc.get("_rev")?.as_str()?.parse().ok()?;
    Some((doc, rev))
}

fn apply(s: &mut Stores, op: &Op) {
    match op {
        Op::Put {
            side,
            id,
            value,
            att,
        } => {
            let db = s.get(*side);
            let id = doc_id(*id);
            let live = current(db, &id).is_some();
            let mut doc = json!({"_id": id, "v": value});
            if let Some(att) = att {
                doc["_attachments"] = json!({ att.name(): att.json() });
            }
            let r = db.put(doc);
            if live {
                assert_eq!(r, Err(DbError::Conflict), "put over live {id:?}");
            } else {
                if !at_position_cap(&r) {
                    r.unwrap_or_else(|e| panic!("put of new or deleted {id:?}: {e:?}"));
                }
            }
        }
        Op::PutNoId { side, value } => {
            let db = s.get(*side);
            let rev = db
                .put(json!({"v": value, "gen": true}))
                .expect("put without _id");
            assert_eq!(rev.pos, 1);
        }
        Op::Edit {
            side,
            id,
            value,
            add_att,
            drop_atts,
        } => {
            let db = s.get(*side);
            let id = doc_id(*id);
            let Some((mut doc, rev)) = current(db, &id) else {
                return;
            };
            doc.insert("v".into(), json!(value));
            if *drop_atts {
                doc.remove("_attachments");
            }
            if let Some(att) = add_att {
                let atts = doc
                    .entry("_attachments")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .expect("_attachments object");
                atts.insert(att.name(), att.json());
            }
            let r = db.put(Value::Object(doc));
            if at_position_cap(&r) {
                return;
            }
            let new =
                r.unwrap_or_else(|e| panic!("edit of {id:?} at its current rev {rev}: {e:?}"));
            assert_eq!(new.pos, rev.pos + 1);
            let (_, now) = current(db, &id).expect("edited doc readable");
            // The edit wins unless a longer branch exists.
            assert!(now.pos >= new.pos);
        }
        Op::EditStale { side, id, value } => {
            let db = s.get(*side);
            let id = doc_id(*id);
            let stale = db
                .get_with(GetRequest {
                    revs: true,
                    ..GetRequest::new(id.clone())
                })
                .ok()
                .and_then(|d| {
                    let r = d.get("_revisions")?;
                    let start = r.get("start")?.as_u64()?;
                    let ids = r.get("ids")?.as_array()?;
                    let h = ids.get(1)?.as_str()?;
                    Some(Rev::new(start - 1, h))
                })
                .unwrap_or_else(|| Rev::new(1, "0123456789abcdef0123456789abcdef"));
            let r = db.put(json!({"_id": id, "_rev": stale.to_string(), "v": value}));
            assert_eq!(r, Err(DbError::Conflict), "edit of {id:?} at stale {stale}");
        }
        Op::Delete { side, id } => {
            let db = s.get(*side);
            let id = doc_id(*id);
            let Some((_, rev)) = current(db, &id) else {
                return;
            };
            let r = db.put(json!({"_id": id, "_rev": rev.to_string(), "_deleted": true}));
            if !at_position_cap(&r) {
                r.unwrap_or_else(|e| panic!("delete of {id:?} at {rev}: {e:?}"));
            }
        }
        Op::Replicated {
            side,
            id,
            family,
            path,
            base,
        } => {
            if path.is_empty() {
                return;
            }
            // The highest base sits just under the position cap (2^53 - 1), so forged histories
            // stay valid while edits on top of them can reach the cap (where they must be
            // refused with a typed error).
            let base: u64 = match base % 4 {
                0 | 1 => 0,
                2 => 1_000_000,
                _ => peerpouch::MAX_REV_POS - MAX_FORGED_DEPTH as u64,
            };
            let id = doc_id(*id);
            let steps: String = path
                .iter()
                .take(MAX_FORGED_DEPTH)
                .map(|b| match b % 3 {
                    0 => '0',
                    1 => '1',
                    _ => 'd',
                })
                .collect();
            // The hash of the revision at depth n is the family and the first n steps.
            let hashes: Vec<String> = (1..=steps.len())
                .rev()
                .map(|n| format!("f{}b{base}.{}", family % 3, &steps[..n]))
                .collect();
            let leaf = &hashes[0];
            let deleted = leaf.ends_with('d');
            let start = base + hashes.len() as u64;
            let doc = json!({
                "_id": id,
                "_rev": format!("{start}-{leaf}"),
                "_revisions": {"start": start, "ids": hashes},
                "_deleted": deleted,
                "v": leaf,
            });
            let db = s.get(*side);
            let rows = db.bulk_docs(vec![doc], false).expect("bulk_docs");
            assert_eq!(rows.len(), 1);
            if let Err(e) = &rows[0].result {
                panic!("forged write of {id:?} {start}-{leaf}: {e:?}");
            }
        }
        Op::PutLocal { side, id, value } => {
            let db = s.get(*side);
            let id = format!("_local/l{}", id % 3);
            let mut doc = Doc::new();
            doc.insert("v".into(), json!(value));
            if let Ok(cur) = db.get_local(&id) {
                doc.insert("_rev".into(), cur["_rev"].clone());
            }
            db.put_local(&id, doc)
                .unwrap_or_else(|e| panic!("put_local {id:?}: {e:?}"));
            assert_eq!(db.get_local(&id).expect("get_local")["v"], json!(value));
        }
        Op::DeleteLocal { side, id } => {
            let db = s.get(*side);
            let id = format!("_local/l{}", id % 3);
            let Ok(cur) = db.get_local(&id) else {
                return;
            };
            let rev: Rev = cur["_rev"]
                .as_str()
                .expect("_rev")
                .parse()
                .expect("local rev");
            db.delete_local(&id, Some(rev))
                .unwrap_or_else(|e| panic!("delete_local {id:?}: {e:?}"));
            assert!(db.get_local(&id).is_err());
        }
        Op::Replicate { from, batch_size } => {
            s.replicate(*from, usize::from(*batch_size % 8) + 1);
        }
    }
}

fuzz_target!(|ops: Vec<Op>| {
    let mut s = Stores {
        a: MemoryStore::new("a"),
        b: MemoryStore::new("b"),
    };
    for op in ops.iter().take(MAX_OPS) {
        apply(&mut s, op);
        common::check_invariants(&mut s.a);
        common::check_invariants(&mut s.b);
    }
    s.replicate(Side::A, 100);
    s.replicate(Side::B, 100);
    common::check_invariants(&mut s.a);
    common::check_invariants(&mut s.b);
    assert_eq!(
        s.a.tree_shapes(),
        s.b.tree_shapes(),
        "trees did not converge"
    );
    let ids: BTreeSet<String> = s.a.tree_shapes().into_keys().collect();
    for id in ids {
        let (a, b) = (s.a.get(&id), s.b.get(&id));
        assert_eq!(a, b, "winners of {id:?} differ");
    }
});

/// Whether a write was refused because the document is at the highest revision position
/// (2^53 - 1), the one refusal a valid edit may get.
fn at_position_cap(r: &Result<peerpouch::Rev, DbError>) -> bool {
    matches!(r, Err(DbError::BadRequest(m)) if m.contains("highest revision position"))
}
