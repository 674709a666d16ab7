//! Replication between a remote peer and a CouchDB database over HTTP (the pouchdb-server hub
//! of `.ci/test`): remote → CouchDB and CouchDB → remote, through one node.

use std::time::Duration;

use peerpouch::node::DbRef;
use peerpouch::{Database, GetRequest};
use peerpouch_cli::local::World;
use peerpouch_couch::CouchClient;
use serde_json::json;

fn hub() -> String {
    std::env::var("PEERPOUCH_TEST_HUB").unwrap_or_else(|_| {
        panic!(
            "PEERPOUCH_TEST_HUB is not set: run the tests through `.ci/test` (which starts the \
             pouchdb-server hub), or `source .ci/hub.sh && hub_start` first"
        )
    })
}

#[test]
fn a_remote_peer_replicates_to_and_from_couchdb() {
    let url = format!(
        "{}/pp_cli_remote_{}_{}",
        hub().trim_end_matches('/'),
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let couch = CouchClient::new(&url).unwrap();
    couch.create_db(false).unwrap();
    let mut w = World::new(2).unwrap();
    let docs = (0..300)
        .map(|i| json!({"_id": format!("d{i:03}"), "i": i}))
        .collect();
    w.peers[0].write("notes", docs).unwrap();
    let share = w.share(0, "notes").unwrap();
    let link = w.open(1, &share).unwrap();
    w.peers[1].attach("couch", Box::new(couch.clone()));
    // The sharer's database, through the peer link, into CouchDB.
    let p = w
        .replicate(
            1,
            DbRef::Remote(link.clone()),
            DbRef::Local("couch".into()),
            Duration::from_secs(60),
            |_| {},
        )
        .unwrap();
    assert_eq!((p.docs_written, p.doc_write_failures), (300, 0));
    let mut c = couch.clone();
    assert_eq!(c.info().unwrap().doc_count, 300);
    assert_eq!(c.get("d042").unwrap()["i"], 42);
    // An edit made in CouchDB goes back to the sharer through the link.
    let rev = c.get("d007").unwrap()["_rev"].clone();
    c.put(json!({"_id": "d007", "_rev": rev, "i": 7, "edited": "in couchdb"}))
        .unwrap();
    let p = w
        .replicate(
            1,
            DbRef::Local("couch".into()),
            DbRef::Remote(link),
            Duration::from_secs(60),
            |_| {},
        )
        .unwrap();
    assert_eq!(p.docs_written, 1, "only the edit travels back");
    let back = w.peers[0]
        .store("notes")
        .get_with(GetRequest::new("d007"))
        .unwrap();
    assert_eq!(back["edited"], "in couchdb");
    couch.delete_db().unwrap();
}
