//! Every `Request` variant against the real test hub (pouchdb-server), and error mapping.

mod common;

use std::collections::BTreeSet;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{respond, FakeServer, TestDb};
use peerpouch::doc::digest_of;
use peerpouch::*;
use peerpouch_couch::{ClientConfig, CouchClient, Error};
use serde_json::{json, Value};

fn rev(s: &str) -> Rev {
    s.parse().unwrap()
}

fn hex_rev(pos: u64, n: u64) -> Rev {
    Rev::new(pos, format!("{n:032x}"))
}

/// `_revisions` for a linear history ending at `revs[0]` (newest first).
fn history(revs: &[&Rev]) -> Value {
    json!({
        "start": revs[0].pos,
        "ids": revs.iter().map(|r| r.hash.clone()).collect::<Vec<_>>(),
    })
}

fn rev_of(doc: &Doc) -> Rev {
    rev(doc["_rev"].as_str().unwrap())
}

#[test]
fn info_is_parsed_leniently() {
    let mut db = TestDb::new("info");
    let info = db.client.info().unwrap();
    assert_eq!(info.doc_count, 0);
    assert_eq!(info.update_seq.as_u64(), Some(0));
    db.client.put(json!({"_id": "a"})).unwrap();
    let r = db.client.put(json!({"_id": "b"})).unwrap();
    db.client
        .put(json!({"_id": "b", "_rev": r.to_string(), "_deleted": true}))
        .unwrap();
    let info = db.client.info().unwrap();
    assert_eq!(info.doc_count, 1);
    // pouchdb-server has no doc_del_count: lenient parsing gives 0.
    assert_eq!(info.doc_del_count, 0);
    assert_eq!(info.update_seq.as_u64(), Some(3));
    assert_eq!(&info.db_name, db.client.url().db_name());
}

#[test]
fn create_and_delete_db() {
    let db = TestDb::new("create");
    assert!(
        !db.client.create_db(true).unwrap(),
        "exists: if_missing is fine"
    );
    match db.client.create_db(false) {
        Err(Error::Status {
            status: 412, error, ..
        }) => assert_eq!(error, "file_exists"),
        other => panic!("expected 412 file_exists, got {other:?}"),
    }
    let extra =
        CouchClient::new(&format!("{}/{}", common::hub(), common::unique_name("del"))).unwrap();
    assert!(extra.create_db(false).unwrap());
    extra.delete_db().unwrap();
    let mut extra = extra;
    assert!(matches!(extra.info(), Err(DbError::NotFound(_))));
}

#[test]
fn get_with_revs_rev_latest_and_conflicts() {
    let mut db = TestDb::new("get");
    let c = &mut db.client;
    let r1 = c.put(json!({"_id": "d/1 é", "v": 1})).unwrap();
    let r2 = c
        .put(json!({"_id": "d/1 é", "_rev": r1.to_string(), "v": 2}))
        .unwrap();
    let doc = c.get("d/1 é").unwrap();
    assert_eq!(doc["v"], 2);
    assert_eq!(doc["_id"], "d/1 é");

    let doc = c
        .get_with(GetRequest {
            revs: true,
            ..GetRequest::new("d/1 é")
        })
        .unwrap();
    assert_eq!(doc["_revisions"], history(&[&r2, &r1]));

    let old = c
        .get_with(GetRequest {
            rev: Some(r1.clone()),
            ..GetRequest::new("d/1 é")
        })
        .unwrap();
    assert_eq!(old["v"], 1);
    let latest = c
        .get_with(GetRequest {
            rev: Some(r1.clone()),
            latest: true,
            ..GetRequest::new("d/1 é")
        })
        .unwrap();
    assert_eq!(rev_of(&latest), r2);

    // A conflicting branch and a deleted branch, written as a replicator would.
    let b = hex_rev(2, 0xb);
    let dead = hex_rev(2, 0x1);
    let written = c
        .bulk_docs(
            vec![
                json!({"_id": "d/1 é", "_rev": b.to_string(), "_revisions": history(&[&b, &r1]), "v": "b"}),
                json!({"_id": "d/1 é", "_rev": dead.to_string(), "_revisions": history(&[&dead, &r1]), "_deleted": true}),
            ],
            false,
        )
        .unwrap();
    assert!(
        written.is_empty(),
        "new_edits=false answers [] on the hub: {written:?}"
    );
    let doc = c
        .get_with(GetRequest {
            conflicts: true,
            deleted_conflicts: true,
            ..GetRequest::new("d/1 é")
        })
        .unwrap();
    let winner = rev_of(&doc);
    let loser = if winner == b { r2.clone() } else { b.clone() };
    assert!(winner == b || winner == r2);
    assert_eq!(doc["_conflicts"], json!([loser.to_string()]));
    assert_eq!(doc["_deleted_conflicts"], json!([dead.to_string()]));

    // New edit on a stale rev: a per-document conflict row.
    let rows = c
        .bulk_docs(
            vec![json!({"_id": "d/1 é", "_rev": r1.to_string(), "v": 9})],
            true,
        )
        .unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].id, "d/1 é");
    assert_eq!(rows[0].result, Err(DbError::Conflict));
}

/// pouchdb-server 4.2.0 dies on `latest=true` with a rev it lacks (uncaught exception); the
/// client emulates `latest` there, so these requests answer and the hub survives.
#[test]
fn latest_with_unknown_revs_is_answered_and_the_hub_survives() {
    let mut db = TestDb::new("latest");
    let c = &mut db.client;
    let r1 = c.put(json!({"_id": "x", "v": 1})).unwrap();
    let (a, b) = (hex_rev(2, 0xa), hex_rev(2, 0xb));
    c.bulk_docs(
        vec![
            json!({"_id": "x", "_rev": a.to_string(), "_revisions": history(&[&a, &r1]), "v": "a"}),
            json!({"_id": "x", "_rev": b.to_string(), "_revisions": history(&[&b, &r1]), "v": "b"}),
        ],
        false,
    )
    .unwrap();
    let unknown = hex_rev(9, 0x9);
    let e = c
        .get_with(GetRequest {
            rev: Some(unknown.clone()),
            latest: true,
            ..GetRequest::new("x")
        })
        .unwrap_err();
    assert!(matches!(e, DbError::NotFound(_)), "{e:?}");
    let got = c
        .get_with(GetRequest {
            rev: Some(r1.clone()),
            latest: true,
            revs: true,
            ..GetRequest::new("x")
        })
        .unwrap();
    assert_eq!(rev_of(&got), b, "the winning leaf descended from r1");
    assert_eq!(got["_revisions"], history(&[&b, &r1]));
    let revs = c
        .open_revs(OpenRevsRequest {
            id: "x".into(),
            open_revs: OpenRevs::List(vec![unknown.clone(), r1.clone(), a.clone()]),
            revs: false,
            attachments: false,
            atts_since: vec![],
            latest: true,
        })
        .unwrap();
    assert_eq!(revs.len(), 3, "{revs:?}");
    assert_eq!(revs[0], OpenRev::Missing(unknown.clone()));
    let found: BTreeSet<Rev> = revs[1..]
        .iter()
        .map(|o| match o {
            OpenRev::Ok(d) => {
                assert!(!d.contains_key("_revisions"), "revs=false");
                rev_of(d)
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(found, BTreeSet::from([a.clone(), b.clone()]));
    let bulk = c
        .bulk_get(BulkGetRequest {
            docs: vec![BulkGetItem {
                id: "x".into(),
                rev: Some(unknown.clone()),
                atts_since: vec![],
            }],
            revs: true,
            attachments: false,
            latest: true,
            inline_max: None,
        })
        .unwrap();
    assert!(matches!(&bulk.results[0].docs[0], BulkGetDoc::Error(e) if e.error == "not_found"));
    // Still alive.
    assert_eq!(c.info().unwrap().doc_count, 1);
}

#[test]
fn open_revs_all_list_and_missing() {
    let mut db = TestDb::new("openrevs");
    let c = &mut db.client;
    let r1 = c.put(json!({"_id": "x", "v": 1})).unwrap();
    let (a, b) = (hex_rev(2, 0xa), hex_rev(2, 0xb));
    c.bulk_docs(
        vec![
            json!({"_id": "x", "_rev": a.to_string(), "_revisions": history(&[&a, &r1])}),
            json!({"_id": "x", "_rev": b.to_string(), "_revisions": history(&[&b, &r1])}),
        ],
        false,
    )
    .unwrap();
    let all = c
        .open_revs(OpenRevsRequest {
            id: "x".into(),
            open_revs: OpenRevs::All,
            revs: true,
            attachments: false,
            atts_since: vec![],
            latest: false,
        })
        .unwrap();
    let leaves: BTreeSet<Rev> = all
        .iter()
        .map(|o| match o {
            OpenRev::Ok(d) => {
                assert_eq!(d["_revisions"]["start"], 2);
                rev_of(d)
            }
            OpenRev::Missing(r) => panic!("missing {r}"),
        })
        .collect();
    assert_eq!(leaves, BTreeSet::from([a.clone(), b.clone()]));

    let nope = hex_rev(7, 0x7);
    let list = c
        .open_revs(OpenRevsRequest {
            id: "x".into(),
            open_revs: OpenRevs::List(vec![a.clone(), nope.clone()]),
            revs: false,
            attachments: false,
            atts_since: vec![],
            latest: false,
        })
        .unwrap();
    assert_eq!(list.len(), 2);
    assert!(matches!(&list[0], OpenRev::Ok(d) if rev_of(d) == a));
    assert_eq!(list[1], OpenRev::Missing(nope.clone()));

    // Unknown document: `all` is a 404, a list answers "missing" per rev.
    let err = c
        .open_revs(OpenRevsRequest {
            id: "nobody".into(),
            open_revs: OpenRevs::All,
            revs: false,
            attachments: false,
            atts_since: vec![],
            latest: false,
        })
        .unwrap_err();
    assert!(matches!(err, DbError::NotFound(_)), "{err:?}");
}

#[test]
fn all_docs_ranges_keys_and_options() {
    let mut db = TestDb::new("alldocs");
    let c = &mut db.client;
    for id in ["a", "b", "c", "d", "e"] {
        c.put(json!({"_id": id, "n": id})).unwrap();
    }
    let gone = c.put(json!({"_id": "gone"})).unwrap();
    let gone2 = c
        .put(json!({"_id": "gone", "_rev": gone.to_string(), "_deleted": true}))
        .unwrap();
    let ids = |r: &AllDocsResponse| r.rows.iter().map(|r| r.key.clone()).collect::<Vec<_>>();

    let all = c.all_docs(AllDocsRequest::default()).unwrap();
    assert_eq!(ids(&all), ["a", "b", "c", "d", "e"]);
    assert_eq!(all.total_rows, 5);
    assert!(all
        .rows
        .iter()
        .all(|r| r.doc.is_none() && r.value.is_some()));

    let range = c
        .all_docs(AllDocsRequest {
            start_key: Some("b".into()),
            end_key: Some("d".into()),
            ..AllDocsRequest::default()
        })
        .unwrap();
    assert_eq!(ids(&range), ["b", "c", "d"]);
    let excl = c
        .all_docs(AllDocsRequest {
            start_key: Some("b".into()),
            end_key: Some("d".into()),
            inclusive_end: false,
            ..AllDocsRequest::default()
        })
        .unwrap();
    assert_eq!(ids(&excl), ["b", "c"]);
    let desc = c
        .all_docs(AllDocsRequest {
            start_key: Some("d".into()),
            end_key: Some("b".into()),
            descending: true,
            ..AllDocsRequest::default()
        })
        .unwrap();
    assert_eq!(ids(&desc), ["d", "c", "b"]);
    let page = c
        .all_docs(AllDocsRequest {
            skip: 1,
            limit: Some(2),
            include_docs: true,
            ..AllDocsRequest::default()
        })
        .unwrap();
    assert_eq!(ids(&page), ["b", "c"]);
    assert_eq!(page.rows[0].doc.as_ref().unwrap()["n"], "b");

    let keys = c
        .all_docs(AllDocsRequest {
            keys: Some(vec!["e".into(), "zz".into(), "gone".into(), "a".into()]),
            include_docs: true,
            ..AllDocsRequest::default()
        })
        .unwrap();
    assert_eq!(ids(&keys), ["e", "zz", "gone", "a"]);
    assert_eq!(keys.rows[0].doc.as_ref().unwrap()["n"], "e");
    assert_eq!(keys.rows[1].error.as_deref(), Some("not_found"));
    assert!(keys.rows[1].value.is_none());
    let g = keys.rows[2].value.as_ref().unwrap();
    assert!(g.deleted);
    assert_eq!(g.rev, gone2);
    assert_eq!(
        keys.rows[2].doc,
        Some(Value::Null),
        "explicit null doc is kept"
    );
}

#[test]
fn changes_limit_since_style_doc_ids_and_docs() {
    let mut db = TestDb::new("changes");
    let c = &mut db.client;
    for i in 0..5 {
        c.put(json!({"_id": format!("k{i}"), "i": i})).unwrap();
    }
    let r1 = c.get("k0").map(|d| rev_of(&d)).unwrap();
    c.put(json!({"_id": "k0", "_rev": r1.to_string(), "edited": true}))
        .unwrap();
    let other = hex_rev(2, 0xabc);
    c.bulk_docs(
        vec![
            json!({"_id": "k0", "_rev": other.to_string(), "_revisions": history(&[&other, &r1])}),
        ],
        false,
    )
    .unwrap();

    let all = c.changes(ChangesRequest::default()).unwrap();
    assert_eq!(all.results.len(), 5);
    assert_eq!(all.last_seq.as_u64(), Some(7));
    assert!(all.pending.is_none(), "the hub sends no pending");
    let seqs: Vec<u64> = all
        .results
        .iter()
        .map(|r| r.seq.as_u64().unwrap())
        .collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let first2 = c
        .changes(ChangesRequest {
            limit: Some(2),
            ..ChangesRequest::default()
        })
        .unwrap();
    assert_eq!(first2.results.len(), 2);
    assert_eq!(first2.last_seq, first2.results[1].seq);
    let rest = c
        .changes(ChangesRequest {
            since: first2.last_seq.clone(),
            ..ChangesRequest::default()
        })
        .unwrap();
    assert_eq!(rest.results.len(), 3);
    assert!(rest
        .results
        .iter()
        .all(|r| r.id != first2.results[0].id && r.id != first2.results[1].id));

    let zero = c
        .changes(ChangesRequest {
            limit: Some(0),
            since: Seq::from(2),
            ..ChangesRequest::default()
        })
        .unwrap();
    assert!(zero.results.is_empty());
    assert_eq!(zero.last_seq, Seq::from(2));

    let styled = c
        .changes(ChangesRequest {
            style: ChangesStyle::AllDocs,
            include_docs: true,
            conflicts: true,
            doc_ids: Some(vec!["k0".into(), "k3".into()]),
            ..ChangesRequest::default()
        })
        .unwrap();
    let ids: Vec<&str> = styled.results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["k3", "k0"]);
    let k0 = &styled.results[1];
    let leaves: BTreeSet<Rev> = k0.changes.iter().map(|c| c.rev.clone()).collect();
    assert_eq!(leaves.len(), 2, "style=all_docs lists both leaves: {k0:?}");
    assert!(leaves.contains(&other));
    let doc = k0.doc.as_ref().unwrap();
    assert_eq!(doc["_id"], "k0");
    assert_eq!(doc["_conflicts"].as_array().map(Vec::len), Some(1));

    let desc = c
        .changes(ChangesRequest {
            descending: true,
            limit: Some(1),
            ..ChangesRequest::default()
        })
        .unwrap();
    assert_eq!(desc.results[0].id, "k0");

    let none = c
        .changes(ChangesRequest {
            doc_ids: Some(vec![]),
            since: Seq::from(3),
            ..ChangesRequest::default()
        })
        .unwrap();
    assert!(none.results.is_empty());
    assert_eq!(none.last_seq, Seq::from(3), "never goes back");
    // The hub is still alive after all the doc_ids requests.
    c.info().unwrap();
}

#[test]
fn longpoll_returns_on_a_write_from_another_thread() {
    let mut db = TestDb::new("longpoll");
    db.client.put(json!({"_id": "before"})).unwrap();
    let since = db.client.info().unwrap().update_seq;
    let mut writer = db.other_client(ClientConfig::default());
    let (started_tx, started_rx) = mpsc::channel::<()>();
    let (written_tx, written_rx) = mpsc::channel::<Rev>();
    let t = std::thread::spawn(move || {
        started_rx.recv().unwrap();
        // Written after the longpoll started: if it reaches the server first, the longpoll
        // answers at once with it; either way the change is in the answer.
        let rev = writer.put(json!({"_id": "during"})).unwrap();
        written_tx.send(rev).unwrap();
    });
    let t0 = Instant::now();
    started_tx.send(()).unwrap();
    let resp = db
        .client
        .changes(ChangesRequest {
            since: since.clone(),
            feed: Feed::Longpoll,
            timeout_ms: Some(30_000),
            ..ChangesRequest::default()
        })
        .unwrap();
    let took = t0.elapsed();
    let rev = written_rx.recv().unwrap();
    t.join().unwrap();
    assert_eq!(resp.results.len(), 1, "{resp:?}");
    assert_eq!(resp.results[0].id, "during");
    assert_eq!(resp.results[0].changes[0].rev, rev);
    assert!(resp.last_seq.as_u64() > since.as_u64());
    assert!(
        took < Duration::from_secs(25),
        "answered by the write, not the timeout: {took:?}"
    );
}

#[test]
fn longpoll_times_out_empty_with_its_own_deadline() {
    let config = ClientConfig::default().longpoll_margin(Duration::from_millis(300));
    let mut db = TestDb::with_config("lptimeout", config);
    db.client.put(json!({"_id": "a"})).unwrap();
    let since = db.client.info().unwrap().update_seq;
    let t0 = Instant::now();
    let resp = db
        .client
        .changes(ChangesRequest {
            since: since.clone(),
            feed: Feed::Longpoll,
            timeout_ms: Some(400),
            ..ChangesRequest::default()
        })
        .unwrap();
    let took = t0.elapsed();
    assert!(resp.results.is_empty(), "{resp:?}");
    assert_eq!(resp.last_seq, since);
    assert!(took >= Duration::from_millis(400), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The client is usable afterwards.
    assert_eq!(db.client.info().unwrap().doc_count, 1);
}

#[test]
fn revs_diff_reports_only_missing() {
    let mut db = TestDb::new("revsdiff");
    let c = &mut db.client;
    let r1 = c.put(json!({"_id": "a"})).unwrap();
    let unknown = hex_rev(2, 0x99);
    let mut req = RevsDiffRequest::default();
    req.revs
        .insert("a".into(), vec![r1.clone(), unknown.clone()]);
    req.revs.insert("zz".into(), vec![hex_rev(1, 0x1)]);
    let diff = c.revs_diff(req).unwrap();
    assert_eq!(diff.missing.len(), 2);
    assert_eq!(diff.missing["a"].missing, vec![unknown]);
    assert_eq!(diff.missing["zz"].missing, vec![hex_rev(1, 0x1)]);
    let mut req = RevsDiffRequest::default();
    req.revs.insert("a".into(), vec![r1]);
    assert!(c.revs_diff(req).unwrap().missing.is_empty());
}

fn bulk_get_fixture(c: &mut CouchClient) -> (Rev, Rev, Vec<u8>) {
    let data: Vec<u8> = (0..=255u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    let r1 = c
        .put(json!({"_id": "a", "_attachments": {"f.bin": {"content_type": "application/octet-stream", "data": b64}}}))
        .unwrap();
    // Edit through the stub so the attachment stays.
    let mut doc = c.get("a").unwrap();
    doc.insert("v".into(), json!(2));
    let r2 = c.put(Value::Object(doc)).unwrap();
    (r1, r2, data)
}

fn bulk_get_request(r1: &Rev, r2: &Rev) -> BulkGetRequest {
    BulkGetRequest {
        docs: vec![
            BulkGetItem {
                id: "a".into(),
                rev: Some(r2.clone()),
                atts_since: vec![],
            },
            BulkGetItem {
                id: "nobody".into(),
                rev: Some(r1.clone()),
                atts_since: vec![],
            },
            BulkGetItem {
                id: "a".into(),
                rev: Some(hex_rev(9, 0x9)),
                atts_since: vec![],
            },
        ],
        revs: true,
        attachments: true,
        latest: true,
        inline_max: None,
    }
}

/// (id, rev) of every found doc, and (id, rev, error) of every error, order-independent.
type Summary = (
    BTreeSet<(String, String)>,
    BTreeSet<(String, Option<String>, String)>,
);

fn summarise(resp: &BulkGetResponse, data: &[u8]) -> Summary {
    let mut ok = BTreeSet::new();
    let mut errs = BTreeSet::new();
    for r in &resp.results {
        for d in &r.docs {
            match d {
                BulkGetDoc::Ok(doc) => {
                    assert_eq!(doc["_revisions"]["start"], 2, "revs=true");
                    let att = &doc["_attachments"]["f.bin"];
                    let got = base64::engine::general_purpose::STANDARD
                        .decode(att["data"].as_str().expect("attachments=true inlines data"))
                        .unwrap();
                    assert_eq!(got, data);
                    ok.insert((r.id.clone(), doc["_rev"].as_str().unwrap().to_string()));
                }
                BulkGetDoc::Error(e) => {
                    assert_eq!(e.id, r.id);
                    errs.insert((e.id.clone(), e.rev.clone(), e.error.clone()));
                }
            }
        }
    }
    (ok, errs)
}

#[test]
fn bulk_get_with_missing_doc_and_missing_rev_quirks() {
    let mut db = TestDb::new("bulkget");
    let (r1, r2, data) = bulk_get_fixture(&mut db.client);
    let req = bulk_get_request(&r1, &r2);
    let resp = db.client.bulk_get(req.clone()).unwrap();
    let expected_ok = BTreeSet::from([("a".to_string(), r2.to_string())]);
    let expected_err = BTreeSet::from([
        (
            "nobody".to_string(),
            Some(r1.to_string()),
            "not_found".to_string(),
        ),
        (
            "a".to_string(),
            Some(hex_rev(9, 0x9).to_string()),
            "not_found".to_string(),
        ),
    ]);
    let (ok, errs) = summarise(&resp, &data);
    assert_eq!(ok, expected_ok);
    assert_eq!(errs, expected_err);

    // The per-document fallback (servers without _bulk_get) builds the same answer.
    let mut fallback = db.other_client(ClientConfig::default().use_bulk_get(false));
    let resp2 = fallback.bulk_get(req).unwrap();
    assert_eq!(summarise(&resp2, &data), (expected_ok, expected_err));
    // Grouped per id, in order of first appearance.
    let ids: Vec<&str> = resp2.results.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["a", "nobody"]);

    assert!(db
        .client
        .bulk_get(BulkGetRequest {
            docs: vec![],
            revs: false,
            attachments: false,
            latest: false,
            inline_max: None,
        })
        .unwrap()
        .results
        .is_empty());
}

#[test]
fn bulk_get_falls_back_when_the_endpoint_is_missing() {
    // An old CouchDB: _bulk_get is 405, documents answer open_revs.
    let server = FakeServer::start(|req, conn| {
        if req.target.contains("/_bulk_get") {
            respond(
                conn,
                405,
                "application/json",
                br#"{"error":"method_not_allowed","reason":"Only GET,HEAD,PUT,DELETE allowed"}"#,
            );
        } else if req.target.starts_with("/db/a%2Fb?open_revs=") {
            respond(
                conn,
                200,
                "application/json",
                br#"[{"ok":{"_id":"a/b","_rev":"1-aa","v":1}},{"missing":"2-bb"}]"#,
            );
        } else {
            respond(
                conn,
                404,
                "application/json",
                br#"{"error":"not_found","reason":"missing"}"#,
            );
        }
    });
    let mut c = CouchClient::new(&format!("{}/db", server.base)).unwrap();
    let req = BulkGetRequest {
        docs: vec![
            BulkGetItem {
                id: "a/b".into(),
                rev: Some(rev("1-aa")),
                atts_since: vec![],
            },
            BulkGetItem {
                id: "a/b".into(),
                rev: Some(rev("2-bb")),
                atts_since: vec![],
            },
            BulkGetItem {
                id: "gone".into(),
                rev: Some(rev("1-cc")),
                atts_since: vec![],
            },
        ],
        revs: true,
        attachments: true,
        latest: true,
        inline_max: None,
    };
    for _ in 0..2 {
        let resp = c.bulk_get(req.clone()).unwrap();
        assert_eq!(resp.results.len(), 2);
        assert!(matches!(&resp.results[0].docs[0], BulkGetDoc::Ok(d) if d["v"] == 1));
        assert!(
            matches!(&resp.results[0].docs[1], BulkGetDoc::Error(e) if e.rev.as_deref() == Some("2-bb") && e.error == "not_found")
        );
        assert!(
            matches!(&resp.results[1].docs[0], BulkGetDoc::Error(e) if e.id == "gone" && e.error == "not_found")
        );
    }
    let targets: Vec<String> = server.requests().iter().map(|r| r.target.clone()).collect();
    // _bulk_get is tried once, then remembered as missing.
    assert_eq!(
        targets.iter().filter(|t| t.contains("_bulk_get")).count(),
        1,
        "{targets:?}"
    );
    let open = targets
        .iter()
        .find(|t| t.starts_with("/db/a%2Fb?"))
        .unwrap();
    assert!(
        open.contains("open_revs=%5B%221-aa%22%2C%222-bb%22%5D"),
        "{open}"
    );
    assert!(
        open.contains("revs=true")
            && open.contains("attachments=true")
            && open.contains("latest=true")
    );
}

#[test]
fn attachments_round_trip_binary_bytes_and_type() {
    let mut db = TestDb::new("att");
    let data: Vec<u8> = (0..4096u32).map(|i| (i * 31 % 256) as u8).collect();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&data);
    let r = db
        .client
        .put(json!({"_id": "dir/doc", "_attachments": {"my file.png": {"content_type": "image/png", "data": b64}}}))
        .unwrap();
    let got = db.client.get_attachment("dir/doc", "my file.png").unwrap();
    assert_eq!(got.data, data);
    assert_eq!(got.content_type, "image/png");
    assert_eq!(got.digest, digest_of(&data));
    let stub = db.client.get("dir/doc").unwrap();
    assert_eq!(
        stub["_attachments"]["my file.png"]["digest"],
        got.digest.as_str()
    );
    assert_eq!(stub["_attachments"]["my file.png"]["stub"], true);

    let by_rev = db
        .client
        .execute(Request::GetAttachment(AttachmentRequest {
            id: "dir/doc".into(),
            name: "my file.png".into(),
            rev: Some(r),
        }))
        .unwrap()
        .into_attachment()
        .unwrap();
    assert_eq!(by_rev.data, data);

    let inline = db
        .client
        .get_with(GetRequest {
            attachments: true,
            ..GetRequest::new("dir/doc")
        })
        .unwrap();
    let inline_data = base64::engine::general_purpose::STANDARD
        .decode(
            inline["_attachments"]["my file.png"]["data"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
    assert_eq!(inline_data, data);

    let missing = db.client.get_attachment("dir/doc", "nope.txt").unwrap_err();
    assert!(matches!(missing, DbError::NotFound(_)), "{missing:?}");
}

#[test]
fn local_documents() {
    let mut db = TestDb::new("local");
    let c = &mut db.client;
    let mut doc = Doc::new();
    doc.insert("seq".into(), json!(1));
    let r1 = c.put_local("ck 1/x", doc.clone()).unwrap();
    assert_eq!(r1.pos, 0);
    let got = c.get_local("ck 1/x").unwrap();
    assert_eq!(got["seq"], 1);
    assert_eq!(got["_id"], "_local/ck 1/x");
    // With the prefix it is the same document.
    assert_eq!(c.get_local("_local/ck 1/x").unwrap(), got);

    doc.insert("seq".into(), json!(2));
    doc.insert("_rev".into(), json!(r1.to_string()));
    let r2 = c.put_local("ck 1/x", doc.clone()).unwrap();
    assert_ne!(r1, r2);
    assert_eq!(
        c.put_local("ck 1/x", doc.clone()),
        Err(DbError::Conflict),
        "stale rev"
    );

    let w = c
        .execute(Request::DeleteLocal(DeleteLocalRequest {
            id: "ck 1/x".into(),
            rev: Some(r2),
        }))
        .unwrap()
        .into_written()
        .unwrap();
    assert_eq!(w.id, "_local/ck 1/x");
    assert!(w.result.is_ok());
    assert!(matches!(c.get_local("ck 1/x"), Err(DbError::NotFound(_))));
    // _local docs are in neither _all_docs nor _changes.
    assert!(c
        .all_docs(AllDocsRequest::default())
        .unwrap()
        .rows
        .is_empty());
    assert!(c
        .changes(ChangesRequest::default())
        .unwrap()
        .results
        .is_empty());
}

#[test]
fn errors_map_to_couch_errors() {
    let mut db = TestDb::new("errors");
    let c = &mut db.client;
    assert_eq!(c.get("nope"), Err(DbError::NotFound("missing".into())));
    let r = c.put(json!({"_id": "a"})).unwrap();
    assert_eq!(c.put(json!({"_id": "a"})), Err(DbError::Conflict));
    c.put(json!({"_id": "a", "_rev": r.to_string(), "_deleted": true}))
        .unwrap();
    assert!(matches!(c.get("a"), Err(DbError::NotFound(_))));
    let bad = c.put(json!({"_id": "_bad"})).unwrap_err();
    assert_eq!(bad.status(), 400, "{bad:?}");

    let mut nodb = CouchClient::new(&format!(
        "{}/{}",
        common::hub(),
        common::unique_name("nodb")
    ))
    .unwrap();
    match nodb.get("x") {
        Err(DbError::NotFound(reason)) => assert_eq!(reason, "no_db_file"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn refused_connection_is_unavailable_without_credentials() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut c = CouchClient::new(&format!("http://admin:topsecret@127.0.0.1:{port}/db")).unwrap();
    let t0 = Instant::now();
    let e = c.info().unwrap_err();
    assert!(t0.elapsed() < Duration::from_secs(5));
    let DbError::Unavailable(msg) = &e else {
        panic!("expected Unavailable, got {e:?}")
    };
    assert!(e.is_transient());
    assert!(msg.contains("connection refused"), "{msg}");
    assert!(msg.contains("server is running"), "{msg}");
    assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}");
    assert!(
        !msg.contains("topsecret") && !msg.contains("admin"),
        "{msg}"
    );
    let e2 = c.create_db(true).unwrap_err();
    assert!(!format!("{e2} {e2:?} {c:?}").contains("topsecret"));
}

#[test]
fn basic_auth_header_comes_from_the_url() {
    let server = FakeServer::start(|req, conn| {
        let body = json!({"db_name": "db", "doc_count": 1, "update_seq": "5-g1AAA", "sizes": {}});
        assert!(req.header("authorization").is_some());
        respond(conn, 200, "application/json", body.to_string().as_bytes());
    });
    let url = server.base.replace("http://", "http://us%40er:p%3Ass@");
    let mut c = CouchClient::new(&format!("{url}/db")).unwrap();
    let info = c.info().unwrap();
    assert_eq!(
        info.update_seq,
        Seq(json!("5-g1AAA")),
        "string seqs are kept"
    );
    let req = &server.requests()[0];
    let expected = base64::engine::general_purpose::STANDARD.encode("us@er:p:ss");
    assert_eq!(
        req.header("authorization"),
        Some(format!("Basic {expected}").as_str())
    );
    assert_eq!(req.header("accept"), Some("application/json"));
    assert!(
        req.header("accept-encoding")
            .is_none_or(|v| v == "identity"),
        "never ask for compression"
    );
    assert!(!req.target.contains("p%3Ass"));
}

#[test]
fn bad_bodies_are_errors_not_panics() {
    let server = FakeServer::start(|req, conn| match req.target.as_str() {
        "/db" => respond(conn, 200, "application/json", b"{\"db_name\": [1,2"),
        "/db/_changes?since=0" => respond(conn, 200, "application/json", b"[\"not\", \"changes\"]"),
        "/db/html" => respond(conn, 502, "text/html", b"<html>Bad gateway</html>"),
        "/db/big" => respond(conn, 200, "application/json", &vec![b' '; 5000]),
        "/db/_bulk_docs" => respond(conn, 201, "application/json", b"[{\"id\":\"x\"}]"),
        _ => respond(
            conn,
            418,
            "application/json",
            br#"{"error":"teapot","reason":42}"#,
        ),
    });
    let config = ClientConfig::default().max_body_bytes(4096);
    let mut c = CouchClient::with_config(&format!("{}/db", server.base), config).unwrap();
    assert!(matches!(c.info(), Err(DbError::BadResponse(_))));
    assert!(matches!(
        c.changes(ChangesRequest::default()),
        Err(DbError::BadResponse(_))
    ));
    match c.get("html") {
        Err(DbError::Other {
            status: 502,
            error,
            reason,
        }) => {
            assert_eq!(error, "http_error");
            assert!(reason.contains("Bad gateway"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    match c.get("big") {
        Err(DbError::BadResponse(m)) => assert!(m.contains("4096-byte cap"), "{m}"),
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        c.bulk_docs(vec![json!({"_id": "x"})], true),
        Err(DbError::BadResponse(_))
    ));
    match c.get("teapot") {
        Err(DbError::Other {
            status: 418,
            error,
            reason,
        }) => {
            assert_eq!((error.as_str(), reason.as_str()), ("teapot", "42"));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn bulk_get_quirk_shapes_are_mapped() {
    // The shapes pouchdb-server (and CouchDB) answer _bulk_get with, verbatim.
    let server = FakeServer::start(|req, conn| {
        let body = if req.target.starts_with("/db/_bulk_get") {
            r#"{"results":[
                {"id":"gone","docs":[{}]},
                {"id":"a","docs":[{"ok":{"_id":"a","_rev":"1-a"}},{"missing":"9-nope"}]},
                {"id":"b","docs":[{"error":{"id":"b","rev":"1-b","error":"not_found","reason":"deleted"}}]}
            ]}"#
        } else {
            r#"{"db_name":"db","update_seq":1}"#
        };
        respond(conn, 200, "application/json", body.as_bytes());
    });
    let mut c = CouchClient::new(&format!("{}/db", server.base)).unwrap();
    let item = |id: &str, r: &str| BulkGetItem {
        id: id.into(),
        rev: Some(rev(r)),
        atts_since: vec![],
    };
    let resp = c
        .bulk_get(BulkGetRequest {
            docs: vec![
                item("gone", "1-g"),
                item("a", "1-a"),
                item("a", "9-nope"),
                item("b", "1-b"),
            ],
            revs: true,
            attachments: false,
            latest: true,
            inline_max: None,
        })
        .unwrap();
    let err = |i: usize, j: usize| match &resp.results[i].docs[j] {
        BulkGetDoc::Error(e) => e.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        err(0, 0),
        BulkGetError {
            id: "gone".into(),
            rev: Some("1-g".into()),
            error: "not_found".into(),
            reason: "missing".into()
        }
    );
    assert!(matches!(&resp.results[1].docs[0], BulkGetDoc::Ok(d) if d["_rev"] == "1-a"));
    assert_eq!(err(1, 1).rev.as_deref(), Some("9-nope"));
    assert_eq!(err(1, 1).error, "not_found");
    assert_eq!(
        (err(2, 0).error.as_str(), err(2, 0).reason.as_str()),
        ("not_found", "deleted")
    );
    // Not pouchdb-server (no `X-Powered-By: Express`): latest is sent as asked.
    let bulk = server
        .requests()
        .into_iter()
        .find(|r| r.target.starts_with("/db/_bulk_get"))
        .unwrap();
    assert_eq!(bulk.target, "/db/_bulk_get?revs=true&latest=true");
    assert_eq!(bulk.header("content-type"), Some("application/json"));
    let body: Value = serde_json::from_slice(&bulk.body).unwrap();
    assert_eq!(body["docs"][0], json!({"id": "gone", "rev": "1-g"}));
}

#[test]
fn https_uses_tls() {
    // A plain-HTTP server behind an https:// URL: the TLS handshake fails, reported as such.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        use std::io::{Read, Write};
        let (mut conn, _) = listener.accept().unwrap();
        let mut hello = [0u8; 5];
        let _ = conn.read_exact(&mut hello);
        let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        hello
    });
    let mut c = CouchClient::new(&format!("https://127.0.0.1:{port}/db")).unwrap();
    match c.info() {
        // Not transient: a replication stops at once rather than retrying a broken TLS setup.
        Err(e @ DbError::Other { status: 495, .. }) => {
            assert_eq!(e.error(), "tls_error");
            assert!(e.reason().contains("TLS"), "{e}");
            assert!(!e.is_transient());
        }
        other => panic!("expected a TLS failure, got {other:?}"),
    }
    let hello = t.join().unwrap();
    assert_eq!(
        hello[0], 0x16,
        "the client opened with a TLS handshake record"
    );
}

/// Any bytes a server sends end in `Ok` or `Err`, never a panic (every variant, both server
/// kinds, so pouchdb-server's emulation paths see the garbage too).
#[test]
fn garbage_bodies_never_panic() {
    use std::io::Write;
    let bodies: &[&[u8]] = &[
        b"",
        b"null",
        b"[]",
        b"{}",
        b"[{}]",
        b"\xff\xfe\x00",
        b"[[[[[[[[[[[[",
        br#"{"results":[{}],"last_seq":{}}"#,
        br#"{"results":[{"id":"a","docs":[{"ok":1},{"error":2},{"missing":3},[]]}]}"#,
        br#"{"rows":[{"key":1,"value":"x"},{"key":"a","value":{"rev":"bad"}}],"offset":-1}"#,
        br#"[{"ok":{"_rev":5}},{"ok":{"_rev":"2-a","_revisions":7}},{"ok":{"_rev":"3-a","_revisions":{"start":1,"ids":["a","b","c"]}}}]"#,
        br#"{"_id":"x","_rev":"1-a","_revisions":{"start":"x"}}"#,
        br#"{"a":{"missing":["nope"]}}"#,
        br#"[{"id":"x"},{"ok":true}]"#,
        br#"{"update_seq":[1],"doc_count":-4}"#,
    ];
    for (i, body) in bodies.iter().enumerate() {
        let body = body.to_vec();
        let express = i % 2 == 0;
        let server = FakeServer::start(move |_, conn| {
            let extra = if express {
                "X-Powered-By: Express\r\n"
            } else {
                ""
            };
            let head = format!(
                "HTTP/1.1 200 OK\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = conn.write_all(head.as_bytes());
            let _ = conn.write_all(&body);
        });
        let mut c = CouchClient::new(&format!("{}/db", server.base)).unwrap();
        let r = hex_rev(1, 1);
        let requests = vec![
            Request::Info,
            Request::Get(GetRequest {
                rev: Some(r.clone()),
                latest: true,
                deleted_conflicts: true,
                ..GetRequest::new("x")
            }),
            Request::OpenRevs(OpenRevsRequest {
                id: "x".into(),
                open_revs: OpenRevs::List(vec![r.clone()]),
                revs: true,
                attachments: true,
                atts_since: vec![r.clone()],
                latest: true,
            }),
            Request::AllDocs(AllDocsRequest::default()),
            Request::AllDocs(AllDocsRequest {
                keys: Some(vec!["a".into()]),
                ..AllDocsRequest::default()
            }),
            Request::BulkDocs(BulkDocsRequest {
                docs: vec![json!({"_id": "x"})],
                new_edits: false,
            }),
            Request::Changes(ChangesRequest::default()),
            Request::RevsDiff(RevsDiffRequest::default()),
            Request::BulkGet(BulkGetRequest {
                docs: vec![BulkGetItem {
                    id: "x".into(),
                    rev: Some(r.clone()),
                    atts_since: vec![],
                }],
                revs: true,
                attachments: true,
                latest: true,
                inline_max: None,
            }),
            Request::GetAttachment(AttachmentRequest {
                id: "x".into(),
                name: "a".into(),
                rev: None,
            }),
            Request::GetLocal(LocalRequest { id: "x".into() }),
            Request::PutLocal(PutLocalRequest {
                id: "x".into(),
                doc: Doc::new(),
            }),
            Request::DeleteLocal(DeleteLocalRequest {
                id: "x".into(),
                rev: None,
            }),
        ];
        for req in requests {
            let name = req.name();
            // Any outcome but a panic is fine; most are BadResponse.
            let out = c.execute(req);
            if let Err(e) = &out {
                assert!(
                    !matches!(e, DbError::Unavailable(_)),
                    "body {i}, {name}: {e}"
                );
            }
        }
    }
}
