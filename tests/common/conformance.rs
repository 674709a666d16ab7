//! The store conformance suite: every case is written once against `dyn Database` and
//! instantiated for each store with [`conformance_suite!`](crate::conformance_suite).

use peerpouch::*;
use serde_json::{json, Value};

/// Instantiates every case for one store: `conformance_suite!(memory, || MemoryStore::new("t"));`
#[macro_export]
macro_rules! conformance_suite {
    ($name:ident, $make:expr) => {
        mod $name {
            use super::common::conformance as c;
            $crate::conformance_suite!(@cases $make;
                put_then_get_round_trips, generated_ids_are_unique, create_with_rev_of_missing_doc_conflicts,
                edit_needs_current_leaf, same_edit_gives_same_rev_everywhere, delete_hides_and_counts,
                recreate_after_delete_extends_the_tombstone, get_specific_and_old_revs,
                revisions_history, replicated_writes_merge_histories, contradicting_histories_are_refused,
                winner_and_conflicts,
                deleted_conflicts_and_conflict_resolution, open_revs_all_list_and_latest,
                all_docs_ranges_and_paging, all_docs_keys_and_include_docs, changes_feed_semantics,
                changes_doc_ids_and_include_docs, revs_diff_reports_missing_and_ancestors,
                bulk_get_with_revs_and_missing, attachments_in_stubs_out, attachment_stubs_and_atts_since,
                missing_stub_is_refused, replicated_attachment_stub_resolves_by_digest,
                replicated_stub_keeps_its_content_type, reuploaded_attachment_keeps_its_revpos,
                attachments_in_ranges_read_and_staged, staged_uploads_refuse_bad_ranges_and_bytes,
                new_edits_refer_to_uploaded_attachments,
                local_docs_are_separate, local_docs_in_bulk_docs, bad_input_is_typed_and_harmless,
                bulk_docs_mixes_results, info_tracks_counts_and_seq, identity_is_stable_and_local_safe);
        }
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                let mut db = $make;
                c::$case(&mut db);
            }
        )*
    };
}

fn rev_of(v: &Value) -> Rev {
    v["_rev"]
        .as_str()
        .expect("_rev")
        .parse()
        .expect("valid rev")
}

fn put(db: &mut dyn Database, doc: Value) -> Rev {
    db.put(doc).expect("put")
}

fn get_opts(
    db: &mut dyn Database,
    id: &str,
    f: impl FnOnce(&mut GetRequest),
) -> Result<Doc, DbError> {
    let mut g = GetRequest::new(id);
    f(&mut g);
    db.get_with(g)
}

fn replicated(db: &mut dyn Database, docs: Vec<Value>) {
    for r in db.bulk_docs(docs, false).unwrap() {
        r.result.expect("replicated write");
    }
}

/// A full, comparable picture of a database (for "unchanged" checks).
pub fn dump(db: &mut dyn Database) -> Value {
    let info = db.info().unwrap();
    let all = AllDocsRequest {
        include_docs: true,
        conflicts: true,
        ..AllDocsRequest::default()
    };
    let docs = db.all_docs(all).unwrap();
    let changes = db
        .changes(ChangesRequest {
            style: ChangesStyle::AllDocs,
            ..ChangesRequest::default()
        })
        .unwrap();
    json!({"info": info, "docs": docs, "changes": changes, "local": db.get_local("probe").ok()})
}

pub fn put_then_get_round_trips(db: &mut dyn Database) {
    let rev = put(
        db,
        json!({"_id": "a", "x": 1, "nested": {"k": [1, 2, {"z": null}]}}),
    );
    assert_eq!(rev.pos, 1);
    assert_eq!(rev.hash.len(), 32);
    let d = db.get("a").unwrap();
    assert_eq!(
        Value::Object(d),
        json!({"_id": "a", "_rev": rev.to_string(), "x": 1, "nested": {"k": [1, 2, {"z": null}]}})
    );
    assert_eq!(db.get("nope"), Err(DbError::NotFound("missing".into())));
}

pub fn generated_ids_are_unique(db: &mut dyn Database) {
    let rs = db
        .bulk_docs(
            vec![json!({"v": 1}), json!({"v": 1}), json!({"v": 2})],
            true,
        )
        .unwrap();
    let ids: std::collections::BTreeSet<_> = rs.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 3);
    for r in rs {
        assert!(!r.id.is_empty());
        assert_eq!(
            db.get(&r.id).unwrap()["_rev"],
            r.result.unwrap().to_string()
        );
    }
}

pub fn create_with_rev_of_missing_doc_conflicts(db: &mut dyn Database) {
    assert_eq!(
        db.put(json!({"_id": "a", "_rev": "1-abc"})),
        Err(DbError::Conflict)
    );
    assert_eq!(db.info().unwrap().doc_count, 0);
}

pub fn edit_needs_current_leaf(db: &mut dyn Database) {
    let r1 = put(db, json!({"_id": "a", "v": 1}));
    assert_eq!(db.put(json!({"_id": "a", "v": 2})), Err(DbError::Conflict));
    let r2 = put(db, json!({"_id": "a", "_rev": r1.to_string(), "v": 2}));
    assert_eq!(r2.pos, 2);
    assert_eq!(
        db.put(json!({"_id": "a", "_rev": r1.to_string(), "v": 3})),
        Err(DbError::Conflict),
        "a stale rev must conflict"
    );
    assert_eq!(
        db.put(json!({"_id": "a", "_rev": "2-0000", "v": 3})),
        Err(DbError::Conflict)
    );
    assert_eq!(db.get("a").unwrap()["v"], 2);
}

pub fn same_edit_gives_same_rev_everywhere(db: &mut dyn Database) {
    let a = put(db, json!({"_id": "a", "v": 1, "w": [1, 2]}));
    let b = put(db, json!({"_id": "b", "w": [1, 2], "v": 1}));
    assert_eq!(
        a.hash, b.hash,
        "hash depends on content, not id or key order"
    );
    let c = put(db, json!({"_id": "c", "v": 2, "w": [1, 2]}));
    assert_ne!(a.hash, c.hash);
    let a2 = put(db, json!({"_id": "a", "_rev": a.to_string(), "v": 5}));
    let b2 = put(db, json!({"_id": "b", "_rev": b.to_string(), "v": 5}));
    assert_eq!(a2, b2);
}

pub fn delete_hides_and_counts(db: &mut dyn Database) {
    let r1 = put(db, json!({"_id": "a", "v": 1}));
    put(db, json!({"_id": "b"}));
    let r2 = put(
        db,
        json!({"_id": "a", "_rev": r1.to_string(), "_deleted": true}),
    );
    assert_eq!(r2.pos, 2);
    assert_eq!(db.get("a"), Err(DbError::NotFound("deleted".into())));
    let info = db.info().unwrap();
    assert_eq!((info.doc_count, info.doc_del_count), (1, 1));
    let tomb = get_opts(db, "a", |g| g.rev = Some(r2.clone())).unwrap();
    assert_eq!(tomb["_deleted"], true);
    let all = db.all_docs(AllDocsRequest::default()).unwrap();
    assert_eq!(all.total_rows, 1);
    assert_eq!(all.rows.len(), 1);
    let ch = db.changes(ChangesRequest::default()).unwrap();
    let row = ch.results.iter().find(|r| r.id == "a").unwrap();
    assert!(row.deleted);
    assert_eq!(row.changes[0].rev, r2);
}

pub fn recreate_after_delete_extends_the_tombstone(db: &mut dyn Database) {
    let r1 = put(db, json!({"_id": "a", "v": 1}));
    let r2 = put(
        db,
        json!({"_id": "a", "_rev": r1.to_string(), "_deleted": true}),
    );
    let r3 = put(db, json!({"_id": "a", "v": "again"}));
    assert_eq!(r3.pos, 3);
    let d = get_opts(db, "a", |g| g.revs = true).unwrap();
    assert_eq!(d["v"], "again");
    assert_eq!(
        d["_revisions"],
        json!({"start": 3, "ids": [r3.hash, r2.hash, r1.hash]})
    );
    assert_eq!(db.info().unwrap().doc_count, 1);
    assert_eq!(db.info().unwrap().doc_del_count, 0);
}

pub fn get_specific_and_old_revs(db: &mut dyn Database) {
    let r1 = put(db, json!({"_id": "a", "v": 1}));
    let r2 = put(db, json!({"_id": "a", "_rev": r1.to_string(), "v": 2}));
    let d = get_opts(db, "a", |g| g.rev = Some(r2.clone())).unwrap();
    assert_eq!(d["v"], 2);
    // Only leaves keep bodies (automatic compaction): an old revision is gone, but `latest`
    // follows it to its current leaf.
    assert_eq!(
        get_opts(db, "a", |g| g.rev = Some(r1.clone())),
        Err(DbError::NotFound("missing".into()))
    );
    let d = get_opts(db, "a", |g| {
        g.rev = Some(r1.clone());
        g.latest = true;
    })
    .unwrap();
    assert_eq!(d["_rev"], r2.to_string());
    assert!(get_opts(db, "a", |g| g.rev = Some("9-zz".parse().unwrap())).is_err());
}

pub fn revisions_history(db: &mut dyn Database) {
    let mut rev = put(db, json!({"_id": "a", "i": 0}));
    let mut hashes = vec![rev.hash.clone()];
    for i in 1..10 {
        rev = put(db, json!({"_id": "a", "_rev": rev.to_string(), "i": i}));
        hashes.push(rev.hash.clone());
    }
    hashes.reverse();
    let d = get_opts(db, "a", |g| g.revs = true).unwrap();
    assert_eq!(d["_revisions"], json!({"start": 10, "ids": hashes}));
}

pub fn replicated_writes_merge_histories(db: &mut dyn Database) {
    replicated(
        db,
        vec![
            json!({"_id": "a", "_rev": "3-c", "_revisions": {"start": 3, "ids": ["c", "b", "a"]}, "v": 3}),
        ],
    );
    // The same revision again is a no-op; a branch from 2-b adds a conflict.
    replicated(
        db,
        vec![
            json!({"_id": "a", "_rev": "3-c", "_revisions": {"start": 3, "ids": ["c", "b", "a"]}, "v": 999}),
            json!({"_id": "a", "_rev": "3-d", "_revisions": {"start": 3, "ids": ["d", "b", "a"]}, "v": 4}),
        ],
    );
    let d = get_opts(db, "a", |g| {
        g.conflicts = true;
        g.revs = true;
    })
    .unwrap();
    assert_eq!(d["_rev"], "3-d", "higher hash wins among equal positions");
    assert_eq!(d["_conflicts"], json!(["3-c"]));
    assert_eq!(d["_revisions"], json!({"start": 3, "ids": ["d", "b", "a"]}));
    let c = get_opts(db, "a", |g| g.rev = Some("3-c".parse().unwrap())).unwrap();
    assert_eq!(
        c["v"], 3,
        "a re-sent revision does not overwrite the stored body"
    );
    // Without _revisions the revision stands alone as a new root.
    replicated(db, vec![json!({"_id": "b", "_rev": "5-x"})]);
    assert_eq!(db.get("b").unwrap()["_rev"], "5-x");
    // Extending a branch continues it.
    replicated(
        db,
        vec![
            json!({"_id": "a", "_rev": "4-e", "_revisions": {"start": 4, "ids": ["e", "c"]}, "v": 5}),
        ],
    );
    let d = get_opts(db, "a", |g| g.conflicts = true).unwrap();
    assert_eq!(d["_rev"], "4-e");
    assert_eq!(d["_conflicts"], json!(["3-d"]));
}

/// A history that puts a known revision under another parent would leave a leaf with no body
/// (found by the SQLite store's differential test): it is refused and changes nothing.
pub fn contradicting_histories_are_refused(db: &mut dyn Database) {
    replicated(
        db,
        vec![
            json!({"_id": "a", "_rev": "2-b", "_revisions": {"start": 2, "ids": ["b", "z"]}, "v": 2}),
        ],
    );
    let before = dump(db);
    let r = db
        .bulk_docs(
            vec![json!({"_id": "a", "_rev": "3-c", "_revisions": {"start": 3, "ids": ["c", "b", "a"]}})],
            false,
        )
        .unwrap();
    assert!(
        matches!(&r[0].result, Err(DbError::BadRequest(m)) if m.contains("2-b")),
        "{r:?}"
    );
    assert_eq!(dump(db), before);
    let leaves = db.open_revs(OpenRevsRequest::all("a")).unwrap();
    assert_eq!(leaves.len(), 1);
    assert!(
        matches!(&leaves[0], OpenRev::Ok(d) if d["_rev"] == "2-b"),
        "{leaves:?}"
    );
    // The consistent continuation still merges.
    replicated(
        db,
        vec![
            json!({"_id": "a", "_rev": "3-c", "_revisions": {"start": 3, "ids": ["c", "b", "z"]}}),
        ],
    );
    assert_eq!(db.get("a").unwrap()["_rev"], "3-c");
}

pub fn winner_and_conflicts(db: &mut dyn Database) {
    replicated(
        db,
        vec![
            json!({"_id": "a", "_rev": "2-a", "_revisions": {"start": 2, "ids": ["a", "root"]}}),
            json!({"_id": "a", "_rev": "2-b", "_revisions": {"start": 2, "ids": ["b", "root"]}}),
            json!({"_id": "a", "_rev": "3-z", "_revisions": {"start": 3, "ids": ["z", "a", "root"]}, "_deleted": true}),
        ],
    );
    // The deleted 3-z is on the longest branch, but a live leaf beats any deleted one.
    let d = get_opts(db, "a", |g| {
        g.conflicts = true;
        g.deleted_conflicts = true;
    })
    .unwrap();
    assert_eq!(d["_rev"], "2-b");
    assert!(d.get("_conflicts").is_none());
    assert_eq!(d["_deleted_conflicts"], json!(["3-z"]));
    assert_eq!(db.info().unwrap().doc_count, 1);
}

pub fn deleted_conflicts_and_conflict_resolution(db: &mut dyn Database) {
    replicated(
        db,
        vec![
            json!({"_id": "a", "_rev": "1-a", "v": "a"}),
            json!({"_id": "a", "_rev": "1-b", "v": "b"}),
        ],
    );
    let d = get_opts(db, "a", |g| g.conflicts = true).unwrap();
    assert_eq!(d["_rev"], "1-b");
    assert_eq!(d["_conflicts"], json!(["1-a"]));
    // Resolve: delete the losing leaf.
    let del = put(db, json!({"_id": "a", "_rev": "1-a", "_deleted": true}));
    let d = get_opts(db, "a", |g| {
        g.conflicts = true;
        g.deleted_conflicts = true;
    })
    .unwrap();
    assert_eq!(d["_rev"], "1-b");
    assert!(d.get("_conflicts").is_none());
    assert_eq!(d["_deleted_conflicts"], json!([del.to_string()]));
    // Deleting the winner too makes the document deleted, with the highest tombstone winning.
    let del2 = put(db, json!({"_id": "a", "_rev": "1-b", "_deleted": true}));
    assert_eq!(db.get("a"), Err(DbError::NotFound("deleted".into())));
    let ch = db.changes(ChangesRequest::default()).unwrap();
    assert_eq!(ch.results[0].changes[0].rev, std::cmp::max(del, del2));
    assert!(ch.results[0].deleted);
}

pub fn open_revs_all_list_and_latest(db: &mut dyn Database) {
    replicated(
        db,
        vec![
            json!({"_id": "a", "_rev": "2-a", "_revisions": {"start": 2, "ids": ["a", "r"]}, "v": "a"}),
            json!({"_id": "a", "_rev": "2-b", "_revisions": {"start": 2, "ids": ["b", "r"]}, "v": "b"}),
        ],
    );
    let all = db.open_revs(OpenRevsRequest::all("a")).unwrap();
    let revs: Vec<_> = all
        .iter()
        .map(|o| match o {
            OpenRev::Ok(d) => d["_rev"].as_str().unwrap().to_string(),
            OpenRev::Missing(r) => panic!("missing {r}"),
        })
        .collect();
    assert_eq!(revs, vec!["2-b", "2-a"]);
    let some = db
        .open_revs(OpenRevsRequest {
            id: "a".into(),
            open_revs: OpenRevs::List(vec!["2-a".parse().unwrap(), "7-q".parse().unwrap()]),
            revs: true,
            attachments: false,
            atts_since: vec![],
            latest: false,
        })
        .unwrap();
    assert!(
        matches!(&some[0], OpenRev::Ok(d) if d["_revisions"] == json!({"start": 2, "ids": ["a", "r"]}))
    );
    assert_eq!(some[1], OpenRev::Missing("7-q".parse().unwrap()));
    let latest = db
        .open_revs(OpenRevsRequest {
            id: "a".into(),
            open_revs: OpenRevs::List(vec!["1-r".parse().unwrap()]),
            revs: false,
            attachments: false,
            atts_since: vec![],
            latest: true,
        })
        .unwrap();
    assert_eq!(latest.len(), 2, "latest from the root returns both leaves");
    let missing_doc = db.open_revs(OpenRevsRequest::all("zz"));
    assert_eq!(missing_doc, Err(DbError::NotFound("missing".into())));
}

fn ids(r: &AllDocsResponse) -> Vec<String> {
    r.rows.iter().map(|r| r.key.clone()).collect()
}

pub fn all_docs_ranges_and_paging(db: &mut dyn Database) {
    for id in ["b", "a", "d", "c", "e", "B", "é"] {
        put(db, json!({"_id": id}));
    }
    let rev = db.get("d").unwrap()["_rev"].clone();
    put(db, json!({"_id": "d", "_rev": rev, "_deleted": true}));
    let q = |f: &dyn Fn(&mut AllDocsRequest)| {
        let mut r = AllDocsRequest::default();
        f(&mut r);
        r
    };
    let all = db.all_docs(q(&|_| {})).unwrap();
    // Raw (byte) collation, as CouchDB's _all_docs uses; deleted docs are hidden.
    assert_eq!(ids(&all), vec!["B", "a", "b", "c", "e", "é"]);
    assert_eq!(all.total_rows, 6);
    assert_eq!(all.offset, 0);
    let r = db
        .all_docs(q(&|r| {
            r.start_key = Some("b".into());
            r.end_key = Some("e".into());
        }))
        .unwrap();
    assert_eq!(ids(&r), vec!["b", "c", "e"]);
    assert_eq!(r.offset, 2);
    let r = db
        .all_docs(q(&|r| {
            r.start_key = Some("b".into());
            r.end_key = Some("e".into());
            r.inclusive_end = false;
        }))
        .unwrap();
    assert_eq!(ids(&r), vec!["b", "c"]);
    let r = db
        .all_docs(q(&|r| {
            r.descending = true;
            r.start_key = Some("e".into());
            r.end_key = Some("b".into());
            r.inclusive_end = false;
        }))
        .unwrap();
    assert_eq!(ids(&r), vec!["e", "c"]);
    let r = db
        .all_docs(q(&|r| {
            r.skip = 1;
            r.limit = Some(2);
        }))
        .unwrap();
    assert_eq!(ids(&r), vec!["a", "b"]);
    assert_eq!(r.offset, 1);
    let r = db.all_docs(q(&|r| r.descending = true)).unwrap();
    assert_eq!(ids(&r), vec!["é", "e", "c", "b", "a", "B"]);
    let bad = db.all_docs(q(&|r| {
        r.start_key = Some("z".into());
        r.end_key = Some("a".into());
    }));
    assert!(matches!(bad, Err(DbError::BadRequest(_))));
}

pub fn all_docs_keys_and_include_docs(db: &mut dyn Database) {
    put(db, json!({"_id": "a", "v": 1}));
    let r = put(db, json!({"_id": "gone"}));
    let del = put(
        db,
        json!({"_id": "gone", "_rev": r.to_string(), "_deleted": true}),
    );
    let q = AllDocsRequest {
        keys: Some(vec!["gone".into(), "nope".into(), "a".into()]),
        include_docs: true,
        ..AllDocsRequest::default()
    };
    let res = db.all_docs(q).unwrap();
    assert_eq!(res.rows.len(), 3);
    assert_eq!(res.rows[0].value.as_ref().unwrap().rev, del);
    assert!(res.rows[0].value.as_ref().unwrap().deleted);
    assert_eq!(res.rows[0].doc, Some(Value::Null));
    assert_eq!(res.rows[1].error.as_deref(), Some("not_found"));
    assert!(res.rows[1].id.is_none());
    assert_eq!(res.rows[2].doc.as_ref().unwrap()["v"], 1);
}

pub fn changes_feed_semantics(db: &mut dyn Database) {
    let ra = put(db, json!({"_id": "a"}));
    put(db, json!({"_id": "b"}));
    put(db, json!({"_id": "c"}));
    put(db, json!({"_id": "a", "_rev": ra.to_string(), "v": 2}));
    let all = db.changes(ChangesRequest::default()).unwrap();
    let order: Vec<_> = all.results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(order, vec!["b", "c", "a"], "a moved to the end when edited");
    let seqs: Vec<u64> = all
        .results
        .iter()
        .map(|r| r.seq.as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        all.last_seq.as_u64(),
        db.info().unwrap().update_seq.as_u64()
    );
    let page = db
        .changes(ChangesRequest {
            limit: Some(2),
            ..ChangesRequest::default()
        })
        .unwrap();
    assert_eq!(page.results.len(), 2);
    assert_eq!(page.last_seq, page.results[1].seq);
    let rest = db
        .changes(ChangesRequest {
            since: page.last_seq.clone(),
            ..ChangesRequest::default()
        })
        .unwrap();
    assert_eq!(rest.results.len(), 1);
    assert_eq!(rest.results[0].id, "a");
    let none = db
        .changes(ChangesRequest {
            since: rest.last_seq.clone(),
            ..ChangesRequest::default()
        })
        .unwrap();
    assert!(none.results.is_empty());
    assert_eq!(none.last_seq, rest.last_seq);
    let now = db
        .changes(ChangesRequest {
            since: Seq(json!("now")),
            ..ChangesRequest::default()
        })
        .unwrap();
    assert!(now.results.is_empty());
    // A `since` past the end, up to the largest sequence, has nothing after it (a peer may send
    // any number; `u64::MAX + 1` wrapped to 0 and answered everything, found by fuzzing).
    for since in [u64::MAX, u64::MAX - 1, 1 << 40] {
        let past = db
            .changes(ChangesRequest {
                since: Seq(json!(since)),
                ..ChangesRequest::default()
            })
            .unwrap();
        assert!(past.results.is_empty(), "since {since}");
    }
    let desc = db
        .changes(ChangesRequest {
            descending: true,
            limit: Some(1),
            ..ChangesRequest::default()
        })
        .unwrap();
    assert_eq!(desc.results[0].id, "a");
    let bad = db.changes(ChangesRequest {
        since: Seq(json!({"x": 1})),
        ..ChangesRequest::default()
    });
    assert!(matches!(bad, Err(DbError::BadRequest(_))));
    // all_docs style lists every leaf, winner first.
    replicated(db, vec![json!({"_id": "b", "_rev": "1-0000"})]);
    let styled = db
        .changes(ChangesRequest {
            style: ChangesStyle::AllDocs,
            doc_ids: Some(vec!["b".into()]),
            ..ChangesRequest::default()
        })
        .unwrap();
    assert_eq!(styled.results[0].changes.len(), 2);
    assert_eq!(styled.results[0].changes[1].rev, "1-0000".parse().unwrap());
}

pub fn changes_doc_ids_and_include_docs(db: &mut dyn Database) {
    for id in ["a", "b", "c"] {
        put(db, json!({"_id": id, "v": id}));
    }
    let r = db
        .changes(ChangesRequest {
            doc_ids: Some(vec!["c".into(), "a".into(), "zz".into()]),
            include_docs: true,
            ..ChangesRequest::default()
        })
        .unwrap();
    let got: Vec<_> = r.results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(got, vec!["a", "c"]);
    assert_eq!(r.results[1].doc.as_ref().unwrap()["v"], "c");
    let rev = db.get("a").unwrap()["_rev"].clone();
    put(db, json!({"_id": "a", "_rev": rev, "_deleted": true}));
    let r = db
        .changes(ChangesRequest {
            since: r.last_seq,
            include_docs: true,
            ..ChangesRequest::default()
        })
        .unwrap();
    assert_eq!(r.results.len(), 1);
    assert!(r.results[0].deleted);
    assert_eq!(r.results[0].doc.as_ref().unwrap()["_deleted"], true);
}

pub fn revs_diff_reports_missing_and_ancestors(db: &mut dyn Database) {
    let r1 = put(db, json!({"_id": "a"}));
    let mut revs = std::collections::BTreeMap::new();
    revs.insert(
        "a".to_string(),
        vec![r1.clone(), "2-x".parse().unwrap(), "3-y".parse().unwrap()],
    );
    revs.insert("new".to_string(), vec!["1-q".parse().unwrap()]);
    revs.insert("a2".to_string(), vec![]);
    let d = db.revs_diff(RevsDiffRequest { revs }).unwrap();
    assert_eq!(d.missing.len(), 2);
    assert_eq!(
        d.missing["a"],
        RevsDiffEntry {
            missing: vec!["2-x".parse().unwrap(), "3-y".parse().unwrap()],
            possible_ancestors: vec![r1],
        }
    );
    assert_eq!(d.missing["new"].missing, vec!["1-q".parse().unwrap()]);
    assert!(d.missing["new"].possible_ancestors.is_empty());
}

pub fn bulk_get_with_revs_and_missing(db: &mut dyn Database) {
    let r1 = put(db, json!({"_id": "a", "v": 1}));
    let r2 = put(db, json!({"_id": "a", "_rev": r1.to_string(), "v": 2}));
    let res = db
        .bulk_get(BulkGetRequest {
            docs: vec![
                BulkGetItem {
                    id: "a".into(),
                    rev: Some(r2.clone()),
                    atts_since: vec![],
                },
                BulkGetItem {
                    id: "a".into(),
                    rev: None,
                    atts_since: vec![],
                },
                BulkGetItem {
                    id: "nope".into(),
                    rev: Some("1-x".parse().unwrap()),
                    atts_since: vec![],
                },
            ],
            revs: true,
            attachments: false,
            latest: false,
            inline_max: None,
        })
        .unwrap();
    assert_eq!(res.results.len(), 3);
    let BulkGetDoc::Ok(d) = &res.results[0].docs[0] else {
        panic!("expected ok")
    };
    assert_eq!(
        d["_revisions"],
        json!({"start": 2, "ids": [r2.hash, r1.hash]})
    );
    assert!(matches!(&res.results[1].docs[0], BulkGetDoc::Ok(d) if d["v"] == 2));
    assert!(
        matches!(&res.results[2].docs[0], BulkGetDoc::Error(e) if e.error == "not_found" && e.id == "nope")
    );
}

const HELLO_B64: &str = "aGVsbG8="; // "hello"

pub fn attachments_in_stubs_out(db: &mut dyn Database) {
    let r1 = put(
        db,
        json!({"_id": "a", "_attachments": {"h.txt": {"content_type": "text/plain", "data": HELLO_B64}}}),
    );
    let d = db.get("a").unwrap();
    assert_eq!(
        d["_attachments"],
        json!({"h.txt": {"content_type": "text/plain", "digest": "md5-XUFAKrxLKna5cZ2REBfFkg==",
            "length": 5, "revpos": 1, "stub": true}})
    );
    let full = get_opts(db, "a", |g| g.attachments = true).unwrap();
    assert_eq!(full["_attachments"]["h.txt"]["data"], HELLO_B64);
    let att = db.get_attachment("a", "h.txt").unwrap();
    assert_eq!(&att.data[..], b"hello");
    assert_eq!(att.content_type, "text/plain");
    assert!(matches!(
        db.get_attachment("a", "nope"),
        Err(DbError::NotFound(_))
    ));
    // The same bytes under another document are the same digest.
    put(
        db,
        json!({"_id": "b", "_attachments": {"x": {"content_type": "text/plain", "data": HELLO_B64}}}),
    );
    let b = db.get("b").unwrap();
    assert_eq!(
        b["_attachments"]["x"]["digest"],
        d["_attachments"]["h.txt"]["digest"]
    );
    // Changing the revision hash: attachments are part of the content.
    let plain = put(db, json!({"_id": "c"}));
    assert_ne!(plain.hash, r1.hash);
}

pub fn attachment_stubs_and_atts_since(db: &mut dyn Database) {
    let r1 = put(
        db,
        json!({"_id": "a", "_attachments": {"old": {"content_type": "text/plain", "data": HELLO_B64}}}),
    );
    let d1 = db.get("a").unwrap();
    // Edit keeping the old attachment as a stub, adding a new one.
    let mut d2 = d1.clone();
    d2.insert("v".into(), json!(2));
    d2.get_mut("_attachments")
        .unwrap()
        .as_object_mut()
        .unwrap()
        .insert(
            "new".into(),
            json!({"content_type": "text/plain", "data": "d29ybGQ="}),
        );
    let r2 = put(db, Value::Object(d2));
    let d = db.get("a").unwrap();
    assert_eq!(d["_attachments"]["old"]["revpos"], 1);
    assert_eq!(d["_attachments"]["new"]["revpos"], 2);
    // atts_since r1: only the attachment newer than r1 is inlined.
    let g = get_opts(db, "a", |g| {
        g.attachments = true;
        g.atts_since = vec![r1.clone()];
    })
    .unwrap();
    assert_eq!(g["_attachments"]["old"]["stub"], true);
    assert_eq!(g["_attachments"]["new"]["data"], "d29ybGQ=");
    // Dropping an attachment: omit it.
    put(
        db,
        json!({"_id": "a", "_rev": r2.to_string(), "_attachments": {"new": {"stub": true}}}),
    );
    let d = db.get("a").unwrap();
    assert!(d["_attachments"].get("old").is_none());
    assert_eq!(&db.get_attachment("a", "new").unwrap().data[..], b"world");
}

pub fn missing_stub_is_refused(db: &mut dyn Database) {
    let r1 = put(db, json!({"_id": "a"}));
    let before = dump(db);
    let e =
        db.put(json!({"_id": "a", "_rev": r1.to_string(), "_attachments": {"x": {"stub": true}}}));
    assert!(matches!(e, Err(DbError::MissingStub(_))), "{e:?}");
    assert_eq!(dump(db), before);
}

pub fn replicated_attachment_stub_resolves_by_digest(db: &mut dyn Database) {
    replicated(
        db,
        vec![
            json!({"_id": "a", "_rev": "1-a", "_attachments": {"f": {"content_type": "text/plain", "data": HELLO_B64, "revpos": 1}}}),
        ],
    );
    // The next revision arrives with a stub (the source saw we had revpos 1 already).
    replicated(
        db,
        vec![
            json!({"_id": "a", "_rev": "2-b", "_revisions": {"start": 2, "ids": ["b", "a"]},
            "_attachments": {"f": {"stub": true, "digest": "md5-XUFAKrxLKna5cZ2REBfFkg==", "revpos": 1, "length": 5, "content_type": "text/plain"}}}),
        ],
    );
    assert_eq!(&db.get_attachment("a", "f").unwrap().data[..], b"hello");
    let bad = db.bulk_docs(
        vec![json!({"_id": "z", "_rev": "1-z", "_attachments": {"f": {"stub": true, "digest": "md5-nope"}}})],
        false,
    );
    assert!(matches!(
        bad.unwrap()[0].result,
        Err(DbError::MissingStub(_))
    ));
}

/// A large attachment goes from one database to another a range at a time: `_bulk_get` with
/// `inline_max` describes it (`follows`), ranges are read by digest and staged on the other side,
/// and a replicated write refers to it by a stub; the bytes become an attachment only then, held
/// once, and the upload is gone.
pub fn attachments_in_ranges_read_and_staged(db: &mut dyn Database) {
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let digest = peerpouch::doc::digest_of(&blob);
    let b64 = |b: &[u8]| {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(b)
    };
    let rev = put(
        db,
        json!({"_id": "src", "small": 1, "_attachments": {
            "big.bin": {"content_type": "application/x-big", "data": b64(&blob)},
            "small.txt": {"content_type": "text/plain", "data": HELLO_B64}}}),
    );
    let got = db
        .bulk_get(BulkGetRequest {
            docs: vec![BulkGetItem {
                id: "src".into(),
                rev: Some(rev.clone()),
                atts_since: vec![],
            }],
            revs: true,
            attachments: true,
            latest: true,
            inline_max: Some(100_000),
        })
        .unwrap();
    let BulkGetDoc::Ok(doc) = &got.results[0].docs[0] else {
        panic!("{got:?}")
    };
    let big = &doc["_attachments"]["big.bin"];
    assert_eq!(big["follows"], true, "{big}");
    assert!(big.get("data").is_none());
    assert_eq!(big["length"], 300_000);
    assert_eq!(big["digest"], digest.as_str());
    assert_eq!(
        doc["_attachments"]["small.txt"]["data"], HELLO_B64,
        "small ones stay inline"
    );
    // Read it in ranges (the last one short) and stage them, in order.
    let mut at = 0u64;
    let mut last = None;
    while at < 300_000 {
        let part = db
            .execute(Request::ReadAttachment(AttachmentPartRequest {
                source: AttachmentSource::Digest(digest.clone()),
                offset: at,
                len: 70_000,
            }))
            .unwrap()
            .into_attachment_part()
            .unwrap();
        assert_eq!((part.offset, part.length), (at, 300_000));
        assert_eq!(
            &part.data[..],
            &blob[at as usize..at as usize + part.data.len()]
        );
        at += part.data.len() as u64;
        last = Some(part);
    }
    assert_eq!(last.unwrap().data.len(), 300_000 - 4 * 70_000);
    // From the end: nothing; past it: refused as CouchDB refuses a range it cannot satisfy.
    let read = |db: &mut dyn Database, offset: u64| {
        db.execute(Request::ReadAttachment(AttachmentPartRequest {
            source: AttachmentSource::Digest(digest.clone()),
            offset,
            len: 10,
        }))
        .and_then(Response::into_attachment_part)
    };
    assert!(read(db, 300_000).unwrap().data.is_empty());
    assert_eq!(read(db, 300_001).unwrap_err().status(), 416);
    // Staged into the same database the bytes are held already: nothing need travel.
    let held = db
        .execute(Request::StageAttachment(StageRequest {
            digest: digest.clone(),
            content_type: "application/x-big".into(),
            length: 300_000,
            offset: 0,
            data: Bytes::new(),
        }))
        .unwrap()
        .into_staged()
        .unwrap();
    assert_eq!(
        held,
        Staged {
            received: 300_000,
            complete: true
        }
    );
    // Other bytes, not held: staged in uneven ranges (ranges need not fall on any boundary).
    let other: Vec<u8> = blob.iter().map(|b| b ^ 0x5a).collect();
    let od = peerpouch::doc::digest_of(&other);
    let mut at = 0usize;
    for len in [1usize, 65_535, 65_537, 100_000, 0, 68_927] {
        let staged = db
            .execute(Request::StageAttachment(StageRequest {
                digest: od.clone(),
                content_type: "application/x-other".into(),
                length: other.len() as u64,
                offset: at as u64,
                data: Bytes::copy_from_slice(&other[at..at + len]),
            }))
            .unwrap()
            .into_staged()
            .unwrap();
        at += len;
        assert_eq!(staged.received, at as u64);
        assert_eq!(staged.complete, at == other.len());
    }
    assert_eq!(at, other.len());
    // Staged is not stored: reading it finds nothing until a write refers to it.
    assert!(matches!(
        db.execute(Request::ReadAttachment(AttachmentPartRequest {
            source: AttachmentSource::Digest(od.clone()),
            offset: 0,
            len: 10,
        })),
        Err(DbError::NotFound(_))
    ));
    replicated(
        db,
        vec![
            json!({"_id": "copy", "_rev": "1-c", "_attachments": {"o.bin": {
            "stub": true, "digest": od, "length": other.len(), "revpos": 1,
            "content_type": "application/x-other"}}}),
        ],
    );
    let a = db.get_attachment("copy", "o.bin").unwrap();
    assert_eq!((a.digest.as_str(), &a.data[..]), (od.as_str(), &other[..]));
    assert_eq!(a.content_type, "application/x-other");
    let part = db.read_attachment("copy", "o.bin", 299_990, 100).unwrap();
    assert_eq!(&part.data[..], &other[299_990..]);
    // The upload is done: a stub to it on a new document still resolves (the bytes are held),
    // and the bytes are held once.
    replicated(
        db,
        vec![
            json!({"_id": "copy2", "_rev": "1-d", "_attachments": {"o.bin": {
            "stub": true, "digest": od, "length": other.len(), "revpos": 1}}}),
        ],
    );
    assert_eq!(
        db.get_attachment("copy2", "o.bin").unwrap().data.len(),
        other.len()
    );
}

/// A new edit refers to an attachment uploaded ahead in ranges by a stub with its digest (how
/// a file of any size is attached); a digest nobody uploaded is still a missing stub, and bytes
/// held already need no upload, only the empty first range that asks.
pub fn new_edits_refer_to_uploaded_attachments(db: &mut dyn Database) {
    let bytes: Vec<u8> = (0..200_000u32).map(|i| (i % 241) as u8).collect();
    let digest = peerpouch::doc::digest_of(&bytes);
    let stage = |db: &mut dyn Database, offset: usize, data: &[u8]| {
        db.execute(Request::StageAttachment(StageRequest {
            digest: digest.clone(),
            content_type: "x/up".into(),
            length: bytes.len() as u64,
            offset: offset as u64,
            data: Bytes::copy_from_slice(data),
        }))
        .and_then(Response::into_staged)
        .unwrap()
    };
    let stub = json!({"stub": true, "digest": digest, "length": bytes.len()});
    let missing = db
        .bulk_docs(vec![json!({"_id": "u", "_attachments": {"f": stub}})], true)
        .unwrap();
    assert!(matches!(missing[0].result, Err(DbError::MissingStub(_))));
    assert!(!stage(db, 0, &[]).complete);
    stage(db, 0, &bytes[..150_000]);
    assert!(stage(db, 150_000, &bytes[150_000..]).complete);
    let rev = put(db, json!({"_id": "u", "_attachments": {"f": stub}}));
    let a = db.get_attachment("u", "f").unwrap();
    assert_eq!((&a.data[..], a.content_type.as_str()), (&bytes[..], "x/up"));
    let doc = db.get("u").unwrap();
    assert_eq!(doc["_attachments"]["f"]["revpos"], rev.pos);
    // Held now: the first empty range says so, and another document may refer to them.
    assert_eq!(
        stage(db, 0, &[]),
        Staged {
            received: bytes.len() as u64,
            complete: true
        }
    );
    put(db, json!({"_id": "v", "_attachments": {"g": stub}}));
    assert_eq!(db.get_attachment("v", "g").unwrap().data.len(), bytes.len());
}

/// Ranges out of order, past the end, of a bad digest, or bytes that do not hash to it are
/// refused with typed errors, and nothing of a refused upload can be referred to.
pub fn staged_uploads_refuse_bad_ranges_and_bytes(db: &mut dyn Database) {
    let bytes: Vec<u8> = (0..10_000u32).map(|i| (i % 13) as u8).collect();
    let digest = peerpouch::doc::digest_of(&bytes);
    let stage = |db: &mut dyn Database, digest: &str, offset: usize, data: &[u8]| {
        db.execute(Request::StageAttachment(StageRequest {
            digest: digest.into(),
            content_type: "x/y".into(),
            length: 10_000,
            offset: offset as u64,
            data: Bytes::copy_from_slice(data),
        }))
        .and_then(Response::into_staged)
    };
    stage(db, &digest, 0, &bytes[..4000]).unwrap();
    let gap = stage(db, &digest, 5000, &bytes[5000..6000]).unwrap_err();
    assert_eq!(gap.status(), 409, "{gap}");
    assert!(gap.to_string().contains("bytes 0..4000"), "{gap}");
    assert_eq!(
        stage(db, &digest, 4000, &bytes[4000..]).unwrap(),
        Staged {
            received: 10_000,
            complete: true
        }
    );
    // A complete upload is used by a write.
    replicated(
        db,
        vec![json!({"_id": "ok", "_rev": "1-o", "_attachments": {"f": {
            "stub": true, "digest": digest, "length": 10_000, "revpos": 1}}})],
    );
    assert_eq!(&db.get_attachment("ok", "f").unwrap().data[..], &bytes[..]);
    let past = stage(db, &digest, 9_000, &bytes[..2000]).unwrap_err();
    assert_eq!(past.status(), 400, "{past}");
    assert_eq!(stage(db, "md5-bad", 0, &bytes).unwrap_err().status(), 400);
    // Bytes that are not the digest's: refused, and forgotten.
    let mut wrong = bytes.clone();
    wrong[9_999] ^= 1;
    let other = peerpouch::doc::digest_of(&[1, 2, 3]);
    stage(db, &other, 0, &wrong[..5000]).unwrap();
    let lie = stage(db, &other, 5000, &wrong[5000..]).unwrap_err();
    assert_eq!(lie.status(), 400, "{lie}");
    let r = db
        .bulk_docs(
            vec![json!({"_id": "z", "_rev": "1-z", "_attachments": {"f": {
                "stub": true, "digest": other, "length": 10_000, "revpos": 1}}})],
            false,
        )
        .unwrap();
    assert!(matches!(r[0].result, Err(DbError::MissingStub(_))), "{r:?}");
}

/// Two branches hold the same bytes under different content types; a stub arriving on one
/// branch keeps the type it states, not the other branch's.
pub fn replicated_stub_keeps_its_content_type(db: &mut dyn Database) {
    let att = |t: &str| json!({"f": {"content_type": t, "data": HELLO_B64, "revpos": 1}});
    replicated(
        db,
        vec![
            json!({"_id": "a", "_rev": "1-a", "_attachments": att("text/plain")}),
            json!({"_id": "a", "_rev": "1-b", "_attachments": att("application/octet-stream")}),
        ],
    );
    replicated(
        db,
        vec![
            json!({"_id": "a", "_rev": "2-c", "_revisions": {"start": 2, "ids": ["c", "b"]},
            "_attachments": {"f": {"stub": true, "digest": "md5-XUFAKrxLKna5cZ2REBfFkg==", "revpos": 1, "length": 5, "content_type": "application/octet-stream"}}}),
        ],
    );
    let doc = get_opts(db, "a", |g| g.rev = Some("2-c".parse().unwrap())).unwrap();
    assert_eq!(
        doc["_attachments"]["f"]["content_type"],
        json!("application/octet-stream")
    );
    let sibling = get_opts(db, "a", |g| g.rev = Some("1-a".parse().unwrap())).unwrap();
    assert_eq!(
        sibling["_attachments"]["f"]["content_type"],
        json!("text/plain")
    );
    let att = db.get_attachment("a", "f").unwrap();
    assert_eq!(
        (att.content_type.as_str(), &att.data[..]),
        ("application/octet-stream", &b"hello"[..])
    );
}

/// Uploading again the bytes and type the parent already has under a name is no change: the
/// attachment keeps its revpos, so the edit equals one that kept the stub (same revision, same
/// document), as two replicas making them apart need.
pub fn reuploaded_attachment_keeps_its_revpos(db: &mut dyn Database) {
    let att = json!({"f": {"content_type": "text/plain", "data": HELLO_B64}});
    let r1 = put(db, json!({"_id": "a", "_attachments": att}));
    let r2 = put(
        db,
        json!({"_id": "a", "_rev": r1.to_string(), "v": 1, "_attachments": att}),
    );
    let doc = get_opts(db, "a", |_| {}).unwrap();
    assert_eq!(doc["_attachments"]["f"]["revpos"], json!(1));
    // The same edit keeping the stub gives the same revision: the two are the same document.
    let mut other = MemoryStore::new("other");
    let o1 = other.put(json!({"_id": "a", "_attachments": att})).unwrap();
    assert_eq!(o1, r1);
    let mut stubbed = other.get("a").unwrap();
    stubbed.insert("v".into(), json!(1));
    let o2 = other.put(Value::Object(stubbed)).unwrap();
    assert_eq!(o2, r2);
    assert_eq!(other.get("a").unwrap(), doc);
    // New bytes under the name are a change: revpos moves.
    let r3 = put(
        db,
        json!({"_id": "a", "_rev": r2.to_string(), "_attachments": {"f": {"content_type": "text/plain", "data": "d29ybGQ="}}}),
    );
    let doc = get_opts(db, "a", |_| {}).unwrap();
    assert_eq!(doc["_attachments"]["f"]["revpos"], json!(r3.pos));
}

pub fn local_docs_are_separate(db: &mut dyn Database) {
    let r1 = db
        .put_local("cp", json!({"seq": 1}).as_object().unwrap().clone())
        .unwrap();
    assert_eq!(r1.to_string(), "0-1");
    let d = db.get_local("_local/cp").unwrap();
    assert_eq!(
        Value::Object(d),
        json!({"_id": "_local/cp", "_rev": "0-1", "seq": 1})
    );
    assert_eq!(
        db.put_local("cp", json!({"seq": 2}).as_object().unwrap().clone()),
        Err(DbError::Conflict),
        "an existing _local doc needs its rev"
    );
    let r2 = db
        .put_local(
            "cp",
            json!({"_rev": "0-1", "seq": 2})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
    assert_eq!(r2.to_string(), "0-2");
    assert_eq!(db.get("_local/cp").unwrap()["seq"], 2);
    let info = db.info().unwrap();
    assert_eq!(info.doc_count, 0);
    assert_eq!(
        info.update_seq.as_u64(),
        Some(0),
        "local docs do not move the seq"
    );
    assert!(db
        .all_docs(AllDocsRequest::default())
        .unwrap()
        .rows
        .is_empty());
    assert!(db
        .changes(ChangesRequest::default())
        .unwrap()
        .results
        .is_empty());
    assert_eq!(
        db.delete_local("cp", Some("0-1".parse().unwrap())),
        Err(DbError::Conflict)
    );
    db.delete_local("cp", Some(r2)).unwrap();
    assert!(matches!(db.get_local("cp"), Err(DbError::NotFound(_))));
    assert!(matches!(
        db.delete_local("cp", None),
        Err(DbError::NotFound(_))
    ));
}

pub fn local_docs_in_bulk_docs(db: &mut dyn Database) {
    let r = db
        .bulk_docs(
            vec![json!({"_id": "_local/x", "v": 1}), json!({"_id": "y"})],
            true,
        )
        .unwrap();
    assert_eq!(r[0].result.as_ref().unwrap().to_string(), "0-1");
    assert_eq!(db.get_local("x").unwrap()["v"], 1);
    assert_eq!(db.info().unwrap().doc_count, 1);
}

pub fn bad_input_is_typed_and_harmless(db: &mut dyn Database) {
    put(db, json!({"_id": "keep", "v": 1}));
    db.put_local("probe", json!({"v": 1}).as_object().unwrap().clone())
        .unwrap();
    let before = dump(db);
    type IsExpected = fn(&DbError) -> bool;
    let cases: Vec<(Value, IsExpected)> = vec![
        (json!([1, 2]), |e| matches!(e, DbError::BadRequest(_))),
        (json!("str"), |e| matches!(e, DbError::BadRequest(_))),
        (json!({"_id": ""}), |e| {
            matches!(e, DbError::IllegalDocId(_))
        }),
        (json!({"_id": "_bad"}), |e| {
            matches!(e, DbError::IllegalDocId(_))
        }),
        (json!({"_id": 5}), |e| matches!(e, DbError::IllegalDocId(_))),
        (json!({"_id": "x", "_rev": "abc"}), |e| {
            matches!(e, DbError::BadRequest(_))
        }),
        (json!({"_id": "x", "_rev": "1-"}), |e| {
            matches!(e, DbError::BadRequest(_))
        }),
        (json!({"_id": "x", "_rev": 7}), |e| {
            matches!(e, DbError::BadRequest(_))
        }),
        (json!({"_id": "x", "_foo": 1}), |e| {
            matches!(e, DbError::DocValidation(_))
        }),
        (json!({"_id": "x", "_deleted": "yes"}), |e| {
            matches!(e, DbError::DocValidation(_))
        }),
        (json!({"_id": "x", "_attachments": []}), |e| {
            matches!(e, DbError::DocValidation(_))
        }),
        (
            json!({"_id": "x", "_attachments": {"a": {"data": "%%%"}}}),
            |e| matches!(e, DbError::BadRequest(_)),
        ),
        (json!({"_id": "x", "_attachments": {"a": {}}}), |e| {
            matches!(e, DbError::DocValidation(_))
        }),
        (json!({"_id": "keep", "v": 2}), |e| {
            matches!(e, DbError::Conflict)
        }),
    ];
    for (doc, ok) in cases {
        let r = db.put(doc.clone());
        assert!(matches!(&r, Err(e) if ok(e)), "{doc} gave {r:?}");
    }
    let replicated_cases = vec![
        json!({"_id": "x"}),
        json!({"_id": "x", "_rev": "0-a"}),
        json!({"_id": "x", "_rev": "2-a", "_revisions": {"start": 2, "ids": ["b", "a"]}}),
        json!({"_id": "x", "_rev": "2-a", "_revisions": {"start": 1, "ids": ["a", "b"]}}),
        json!({"_id": "x", "_rev": "2-a", "_revisions": {"start": 2, "ids": []}}),
        json!({"_id": "x", "_rev": "2-a", "_revisions": "nope"}),
        json!({"_rev": "1-a"}),
    ];
    for doc in replicated_cases {
        let r = db.bulk_docs(vec![doc.clone()], false).unwrap();
        assert!(r[0].result.is_err(), "{doc} was accepted");
    }
    assert!(db
        .put_local(
            "probe",
            json!({"_rev": "0-1", "_weird": 1})
                .as_object()
                .unwrap()
                .clone()
        )
        .is_err());
    assert!(matches!(
        db.get("_"),
        Err(DbError::NotFound(_)) | Err(DbError::IllegalDocId(_))
    ));
    assert_eq!(
        dump(db),
        before,
        "refused writes must leave the store unchanged"
    );
}

pub fn bulk_docs_mixes_results(db: &mut dyn Database) {
    let r = db
        .bulk_docs(
            vec![
                json!({"_id": "a"}),
                json!({"_id": "_x"}),
                json!({"_id": "a"}),
            ],
            true,
        )
        .unwrap();
    assert!(r[0].result.is_ok());
    assert!(matches!(r[1].result, Err(DbError::IllegalDocId(_))));
    assert_eq!(r[2].result, Err(DbError::Conflict));
    assert_eq!(r[2].id, "a");
    // The CouchDB wire form of the rows.
    let wire = serde_json::to_value(&r).unwrap();
    assert_eq!(wire[0]["ok"], true);
    assert_eq!(wire[2]["error"], "conflict");
    let back: Vec<DocResult> = serde_json::from_value(wire).unwrap();
    assert_eq!(back, r);
}

pub fn info_tracks_counts_and_seq(db: &mut dyn Database) {
    let i0 = db.info().unwrap();
    assert_eq!(
        (i0.doc_count, i0.doc_del_count, i0.update_seq.as_u64()),
        (0, 0, Some(0))
    );
    let r = put(db, json!({"_id": "a"}));
    put(db, json!({"_id": "b"}));
    put(
        db,
        json!({"_id": "a", "_rev": r.to_string(), "_deleted": true}),
    );
    let i = db.info().unwrap();
    assert_eq!(
        (i.doc_count, i.doc_del_count, i.update_seq.as_u64()),
        (1, 1, Some(3))
    );
    // A refused write moves nothing.
    let _ = db.put(json!({"_id": "b", "v": 2}));
    assert_eq!(db.info().unwrap().update_seq.as_u64(), Some(3));
}

/// The database's identity (`db_uuid`): there from the start, valid, and unchanged by writes of
/// documents and `_local` documents (a `_local` document of any id, replication checkpoints
/// included, is not where it lives).
pub fn identity_is_stable_and_local_safe(db: &mut dyn Database) {
    let uuid = db.info().unwrap().db_uuid.expect("a store has an identity");
    assert!(is_valid_db_uuid(&uuid), "{uuid:?}");
    put(db, json!({"_id": "a"}));
    for id in ["_local/db_uuid", "_local/uuid", "_local/_db_uuid"] {
        db.put_local(
            id,
            json!({"db_uuid": "forged", "uuid": "forged"})
                .as_object()
                .unwrap()
                .clone(),
        )
        .unwrap();
    }
    replicated(db, vec![json!({"_id": "b", "_rev": "1-abc"})]);
    assert_eq!(db.info().unwrap().db_uuid.as_deref(), Some(uuid.as_str()));
}
