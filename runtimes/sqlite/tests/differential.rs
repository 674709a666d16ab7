//! The SQLite store and the memory store given the same random requests give the same
//! answers, while the SQLite store is closed and reopened from its file at random points:
//! nothing a write changed is lost or altered by writing it down and reading it back, through
//! conflicts, stemming (a `revs_limit` of 3), tombstones, attachments and `_local` documents.
//!
//! `PEERPOUCH_DIFF_SEEDS` (default 12) sets how many seeded sequences run.

#[path = "../../../tests/common/mod.rs"]
mod common;

use std::path::Path;

use base64::Engine;
use common::Rng;
use peerpouch::*;
use peerpouch_sqlite::{OpenOptions, SqliteStore};
use serde_json::{json, Value};

const IDS: &[&str] = &["a", "b", "c", "d", "_design/x"];
const HASHES: &[&str] = &["aa", "bb", "cc", "dd", "ee"];

fn open(path: &Path) -> SqliteStore {
    SqliteStore::open_with(
        path,
        OpenOptions::new().name("diff").id_seed(5).revs_limit(3),
    )
    .unwrap()
}

fn pick<'a>(rng: &mut Rng, xs: &[&'a str]) -> &'a str {
    xs[rng.below(xs.len() as u64) as usize]
}

fn some_rev(rng: &mut Rng, mem: &mut MemoryStore, id: &str) -> Option<Rev> {
    match rng.below(4) {
        0 => None,
        1 => Some(
            format!("{}-{}", 1 + rng.below(6), pick(rng, HASHES))
                .parse()
                .unwrap(),
        ),
        _ => {
            let leaves = mem.open_revs(OpenRevsRequest::all(id)).ok()?;
            let n = leaves.len() as u64;
            match &leaves[rng.below(n) as usize] {
                OpenRev::Ok(d) => d["_rev"].as_str()?.parse().ok(),
                OpenRev::Missing(r) => Some(r.clone()),
            }
        }
    }
}

fn attachments(rng: &mut Rng) -> Option<Value> {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    match rng.below(5) {
        0 => Some(
            json!({"f": {"data": b64(pick(rng, &["x", "yy", "zzz"])), "content_type": "text/plain"}}),
        ),
        1 => Some(json!({"f": {"stub": true}})),
        2 => Some(
            json!({"f": {"stub": true, "digest": peerpouch::doc::digest_of(b"yy")}, "g": {"data": b64("x")}}),
        ),
        _ => None,
    }
}

fn request(rng: &mut Rng, mem: &mut MemoryStore) -> Request {
    let id = pick(rng, IDS).to_string();
    match rng.below(14) {
        0..=3 => {
            let docs = (0..1 + rng.below(3))
                .map(|_| {
                    let id = pick(rng, IDS);
                    let mut d = json!({"n": rng.below(100)});
                    if rng.below(6) > 0 {
                        d["_id"] = json!(id);
                    }
                    if let Some(rev) = some_rev(rng, mem, id) {
                        d["_rev"] = json!(rev.to_string());
                    }
                    if rng.below(5) == 0 {
                        d["_deleted"] = json!(true);
                    }
                    if let Some(a) = attachments(rng) {
                        d["_attachments"] = a;
                    }
                    d
                })
                .collect();
            Request::BulkDocs(BulkDocsRequest {
                docs,
                new_edits: true,
            })
        }
        4..=5 => {
            let len = 1 + rng.below(5);
            let start = len + rng.below(3);
            let ids: Vec<&str> = (0..len).map(|_| pick(rng, HASHES)).collect();
            let mut d = json!({
                "_id": id,
                "_rev": format!("{start}-{}", ids[0]),
                "_revisions": {"start": start, "ids": ids},
                "n": rng.below(100),
            });
            if rng.below(4) == 0 {
                d["_deleted"] = json!(true);
            }
            if let Some(a) = attachments(rng) {
                d["_attachments"] = a;
            }
            Request::BulkDocs(BulkDocsRequest {
                docs: vec![d],
                new_edits: false,
            })
        }
        6 => {
            let local = format!("_local/{}", pick(rng, &["p", "q"]));
            let mut doc = json!({"v": rng.below(10)}).as_object().unwrap().clone();
            if rng.below(3) > 0 {
                if let Ok(cur) = mem.get_local(&local) {
                    doc.insert("_rev".into(), cur["_rev"].clone());
                }
            }
            if rng.below(5) == 0 {
                doc.insert("_deleted".into(), json!(true));
            }
            Request::PutLocal(PutLocalRequest { id: local, doc })
        }
        7 => Request::DeleteLocal(DeleteLocalRequest {
            id: pick(rng, &["p", "_local/q"]).into(),
            rev: Some(format!("0-{}", rng.below(4)).parse().unwrap()),
        }),
        8 => Request::Get(GetRequest {
            id,
            rev: (rng.below(2) == 0).then(|| {
                format!("{}-{}", 1 + rng.below(5), pick(rng, HASHES))
                    .parse()
                    .unwrap()
            }),
            revs: true,
            conflicts: true,
            deleted_conflicts: true,
            attachments: rng.below(2) == 0,
            atts_since: vec![],
            latest: rng.below(2) == 0,
        }),
        9 => Request::OpenRevs(OpenRevsRequest {
            id,
            open_revs: OpenRevs::All,
            revs: true,
            attachments: true,
            atts_since: vec![],
            latest: false,
        }),
        10 => Request::AllDocs(AllDocsRequest {
            start_key: (rng.below(2) == 0).then(|| pick(rng, IDS).into()),
            include_docs: true,
            conflicts: true,
            descending: rng.below(2) == 0,
            ..AllDocsRequest::default()
        }),
        11 => Request::Changes(ChangesRequest {
            since: Seq::from(rng.below(10)),
            style: ChangesStyle::AllDocs,
            include_docs: true,
            ..ChangesRequest::default()
        }),
        12 => Request::RevsDiff(RevsDiffRequest {
            revs: [(
                id,
                vec![format!("{}-{}", 1 + rng.below(6), pick(rng, HASHES))
                    .parse()
                    .unwrap()],
            )]
            .into_iter()
            .collect(),
        }),
        _ => Request::GetAttachment(AttachmentRequest {
            id,
            name: pick(rng, &["f", "g"]).into(),
            rev: None,
        }),
    }
}

#[test]
fn same_answers_as_the_memory_store_across_reopens() {
    let seeds = std::env::var("PEERPOUCH_DIFF_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12u64);
    let mut reopens = 0;
    let mut written = 0;
    for seed in 0..seeds {
        let mut rng = Rng::new(seed);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("diff.db");
        let mut mem = MemoryStore::new("diff").with_id_seed(5).with_revs_limit(3);
        let mut sql = Some(open(&path));
        for step in 0..300 {
            let req = request(&mut rng, &mut mem);
            let want = mem.execute(req.clone());
            let got = sql.as_mut().unwrap().execute(req.clone());
            assert_eq!(got, want, "seed {seed} step {step}: {req:?}");
            written += match &want {
                Ok(Response::BulkDocs(r)) => r.results.iter().filter(|r| r.result.is_ok()).count(),
                Ok(Response::Written(_)) => 1,
                _ => 0,
            };
            if rng.below(8) == 0 {
                drop(sql.take());
                sql = Some(open(&path));
                reopens += 1;
            }
        }
        let sql = sql.unwrap();
        assert_eq!(sql.tree_shapes().unwrap(), mem.tree_shapes(), "seed {seed}");
        assert_eq!(sql.attachment_blobs().unwrap(), mem.attachment_blobs());
    }
    eprintln!("{seeds} sequences of 300 requests, {written} successful writes, {reopens} reopens");
    assert!(written > seeds as usize * 50, "the sequences write");
}
