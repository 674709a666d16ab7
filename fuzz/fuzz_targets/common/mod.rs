//! Invariants every store must keep after any operation, shared by the store targets.

use std::collections::BTreeSet;

use peerpouch::{AllDocsRequest, ChangesRequest, ChangesStyle, Database, MemoryStore, Seq};
use serde_json::Value;

/// Checks that the store's views of itself agree:
/// - `info().doc_count` equals the rows of `all_docs` (and its `total_rows`);
/// - every id `all_docs` lists can be read with `get`, at the revision `all_docs` reports;
/// - the changes feed from 0 lists each document (live or deleted) exactly once, in increasing
///   sequence order, ends at `update_seq`, and reads the same in small pages;
/// - the documents in the feed are exactly the ones with a revision tree.
pub fn check_invariants(db: &mut MemoryStore) {
    let info = db.info().expect("info");
    let all = db.all_docs(AllDocsRequest::default()).expect("all_docs");
    assert_eq!(
        info.doc_count,
        all.rows.len() as u64,
        "doc_count differs from all_docs rows"
    );
    assert_eq!(all.total_rows, info.doc_count, "all_docs total_rows");
    let mut live = BTreeSet::new();
    for row in &all.rows {
        let id = row.id.as_deref().expect("all_docs row without id");
        assert_eq!(row.key, id);
        let value = row.value.as_ref().expect("all_docs row without value");
        assert!(!value.deleted, "all_docs lists deleted {id}");
        let doc = db
            .get(id)
            .unwrap_or_else(|e| panic!("all_docs lists {id:?} but get fails: {e:?}"));
        assert_eq!(
            doc.get("_rev"),
            Some(&Value::String(value.rev.to_string())),
            "get({id:?}) is not the revision all_docs reports"
        );
        assert!(live.insert(id.to_string()), "all_docs lists {id:?} twice");
    }

    let changes = db.changes(ChangesRequest::default()).expect("changes");
    let mut seen = BTreeSet::new();
    let mut deleted = 0u64;
    let mut last = 0u64;
    for row in &changes.results {
        assert!(
            seen.insert(row.id.clone()),
            "changes lists {:?} twice",
            row.id
        );
        let seq = row.seq.as_u64().expect("numeric seq");
        assert!(seq > last, "changes out of order at {:?}", row.id);
        last = seq;
        assert_eq!(row.changes.len(), 1, "main_only style gives one rev");
        if row.deleted {
            deleted += 1;
            assert!(
                !live.contains(&row.id),
                "{:?} deleted in changes, live in all_docs",
                row.id
            );
        } else {
            assert!(
                live.contains(&row.id),
                "{:?} live in changes, missing from all_docs",
                row.id
            );
        }
    }
    assert_eq!(
        deleted, info.doc_del_count,
        "doc_del_count differs from the feed"
    );
    assert_eq!(
        seen.len() as u64,
        info.doc_count + info.doc_del_count,
        "feed rows differ from doc_count + doc_del_count"
    );
    assert_eq!(
        changes.last_seq, info.update_seq,
        "feed does not end at update_seq"
    );
    let trees: BTreeSet<String> = db.tree_shapes().into_keys().collect();
    assert_eq!(
        trees, seen,
        "documents in the feed differ from the stored trees"
    );

    // The same feed in pages of 2 (style all_docs: every leaf).
    let mut since = Seq::zero();
    let mut paged = Vec::new();
    loop {
        let page = db
            .changes(ChangesRequest {
                since: since.clone(),
                limit: Some(2),
                style: ChangesStyle::AllDocs,
                ..ChangesRequest::default()
            })
            .expect("changes page");
        if page.results.is_empty() {
            break;
        }
        assert!(page.results.len() <= 2, "limit ignored");
        for row in &page.results {
            assert!(!row.changes.is_empty(), "all_docs style row without revs");
            paged.push(row.id.clone());
        }
        assert_ne!(page.last_seq, since, "paged feed does not advance");
        since = page.last_seq;
        assert!(paged.len() <= seen.len(), "paged feed longer than the feed");
    }
    let ids: Vec<String> = changes.results.iter().map(|r| r.id.clone()).collect();
    assert_eq!(paged, ids, "paged feed differs from the feed");
}
