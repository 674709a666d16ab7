//! The convergence property, written once for every storage engine: random edit histories on
//! three stores, replicated in random orders and directions, always converge to identical
//! documents, revision trees, winners and conflicts. Included by `tests/convergence.rs` (memory
//! stores) and by the SQLite store's tests, each with its own `proptest!` block calling
//! [`check`].

use std::collections::BTreeSet;

use peerpouch::store::{tree_shapes, Storage};
use peerpouch::*;
use proptest::prelude::*;
use serde_json::{json, Value};

#[derive(Clone, Debug)]
pub enum Op {
    /// Edit the winner of doc `doc` on `store` (create it if missing or deleted).
    Put { store: usize, doc: u8, v: u8 },
    /// Delete the winner.
    Delete { store: usize, doc: u8 },
    /// Edit a losing conflict leaf (what conflict resolution does).
    EditLoser { store: usize, doc: u8, v: u8 },
    /// Attach bytes to the winner.
    Attach { store: usize, doc: u8, byte: u8 },
    /// One-shot replication.
    Replicate {
        from: usize,
        to: usize,
        batch: usize,
    },
}

pub fn op() -> impl Strategy<Value = Op> {
    let s = 0..3usize;
    let d = 0..6u8;
    prop_oneof![
        4 => (s.clone(), d.clone(), any::<u8>()).prop_map(|(store, doc, v)| Op::Put { store, doc, v }),
        1 => (s.clone(), d.clone()).prop_map(|(store, doc)| Op::Delete { store, doc }),
        1 => (s.clone(), d.clone(), any::<u8>()).prop_map(|(store, doc, v)| Op::EditLoser { store, doc, v }),
        1 => (s.clone(), d.clone(), any::<u8>()).prop_map(|(store, doc, byte)| Op::Attach { store, doc, byte }),
        3 => (s.clone(), s, 1..6usize).prop_map(|(from, to, batch)| Op::Replicate { from, to, batch }),
    ]
}

fn id(doc: u8) -> String {
    format!("doc{doc}")
}

fn winner<S: Database>(db: &mut S, doc: u8) -> Option<Doc> {
    db.get(&id(doc)).ok()
}

pub fn apply<S: Database>(stores: &mut [S], op: &Op) {
    match *op {
        Op::Put { store, doc, v } => {
            let db = &mut stores[store];
            let mut d = winner(db, doc).unwrap_or_default();
            d.insert("_id".into(), json!(id(doc)));
            d.insert("v".into(), json!(v));
            d.insert("by".into(), json!(store));
            db.put(Value::Object(d))
                .expect("edit of the winner succeeds");
        }
        Op::Delete { store, doc } => {
            let db = &mut stores[store];
            if let Some(d) = winner(db, doc) {
                db.put(json!({"_id": id(doc), "_rev": d["_rev"], "_deleted": true}))
                    .expect("delete of the winner succeeds");
            }
        }
        Op::EditLoser { store, doc, v } => {
            let db = &mut stores[store];
            let mut g = GetRequest::new(id(doc));
            g.conflicts = true;
            if let Ok(d) = db.get_with(g) {
                if let Some(loser) = d.get("_conflicts").and_then(|c| c[0].as_str()) {
                    db.put(json!({"_id": id(doc), "_rev": loser, "v": v, "resolved": true}))
                        .expect("a losing leaf can be edited");
                }
            }
        }
        Op::Attach { store, doc, byte } => {
            let db = &mut stores[store];
            if let Some(mut d) = winner(db, doc) {
                let data = base64(&[byte; 5]);
                let atts = d
                    .entry("_attachments")
                    .or_insert_with(|| json!({}))
                    .as_object_mut()
                    .unwrap();
                atts.insert(
                    format!("a{byte}"),
                    json!({"content_type": "x/y", "data": data}),
                );
                db.put(Value::Object(d)).expect("attach succeeds");
            }
        }
        Op::Replicate { from, to, batch } => {
            if from == to {
                return;
            }
            let (src, dst) = pair(stores, from, to);
            let cfg = ReplicatorConfig::new(format!("s{from}"), format!("s{to}")).batch_size(batch);
            replicate(src, dst, cfg).expect("replication completes");
        }
    }
}

fn pair<S>(stores: &mut [S], a: usize, b: usize) -> (&mut S, &mut S) {
    assert_ne!(a, b);
    if a < b {
        let (l, r) = stores.split_at_mut(b);
        (&mut l[a], &mut r[0])
    } else {
        let (l, r) = stores.split_at_mut(a);
        (&mut r[0], &mut l[b])
    }
}

fn base64(b: &[u8]) -> String {
    // 5 equal bytes: encode with the store's own digest-free path by going through serde.
    let v = serde_json::to_value(AttachmentData {
        content_type: String::new(),
        digest: String::new(),
        data: b.to_vec().into(),
    })
    .unwrap();
    v["data"].as_str().unwrap().to_string()
}

/// Asserts two stores hold the same documents, revision trees, winners and conflicts.
fn assert_converged<S: Database + Storage>(a: &mut S, b: &mut S) {
    assert_eq!(
        tree_shapes(a).unwrap(),
        tree_shapes(b).unwrap(),
        "revision trees differ"
    );
    assert_eq!(
        crate::common::winners(a),
        crate::common::winners(b),
        "winning documents differ"
    );
    let (ia, ib) = (a.info().unwrap(), b.info().unwrap());
    assert_eq!(
        (ia.doc_count, ia.doc_del_count),
        (ib.doc_count, ib.doc_del_count)
    );
}

/// Runs `ops` on three stores made by `make(i)`, then replicates around the ring and checks that
/// they converged, that no document was lost, and that replicating again changes nothing.
pub fn check<S: Database + Storage>(
    ops: &[Op],
    mut make: impl FnMut(usize) -> S,
) -> Result<(), TestCaseError> {
    let mut stores: Vec<S> = (0..3).map(&mut make).collect();
    let mut created = BTreeSet::new();
    for op in ops {
        if let Op::Put { doc, .. } = op {
            created.insert(id(*doc));
        }
        apply(&mut stores, op);
    }
    for (from, to) in [(0, 1), (1, 2), (2, 0), (0, 1)] {
        apply(&mut stores, &Op::Replicate { from, to, batch: 3 });
    }
    let (a, rest) = stores.split_at_mut(1);
    let (b, c) = rest.split_at_mut(1);
    assert_converged(&mut a[0], &mut b[0]);
    assert_converged(&mut b[0], &mut c[0]);
    // No document is lost: every id ever written is known everywhere.
    let shapes = tree_shapes(&a[0]).unwrap();
    for id in &created {
        prop_assert!(shapes.contains_key(id), "{} lost", id);
    }
    // Replicating again changes nothing.
    let before = tree_shapes(&a[0]).unwrap();
    let p = replicate(&mut b[0], &mut a[0], ReplicatorConfig::new("s1", "s0")).unwrap();
    prop_assert_eq!(p.docs_written, 0);
    prop_assert_eq!(tree_shapes(&a[0]).unwrap(), before);
    Ok(())
}
