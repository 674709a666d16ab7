//! Links through a real TURN server (coturn on 127.0.0.1, started by `.ci/test` through
//! `runtimes/smol/stun-server.sh`, which exports `PEERPOUCH_TEST_TURN=ADDR|USER|PASS`): relayed
//! over UDP and over TCP, the path each link reports, data byte for byte through the relay, a
//! goodbye that crosses the relay, and the clear error for wrong credentials (no path at all:
//! tests/sim_nat.rs and tests/nat).
//!
//! Without `PEERPOUCH_TEST_TURN` the relay tests say so and pass trivially only when
//! `PEERPOUCH_TEST_TURN_OPTIONAL=1` (a developer's run without coturn); `.ci/test` always sets
//! the server, so CI never skips them.

mod common;

use common::run;
use peerpouch::MemoryStore;
use peerpouch::reach::{IceServer, IceTransportPolicy, Transport};
use peerpouch::session::CandidateType;
use peerpouch_smol::{
    HubSpec, InProcessHub, LinkEvent, PeerConfig, PeerError, PeerNode, ShareConfig,
};
use serde_json::{Value, json};

/// (address, user, password) of the test TURN server.
fn turn() -> Option<(String, String, String)> {
    match std::env::var("PEERPOUCH_TEST_TURN") {
        Ok(v) => {
            let mut parts = v.splitn(3, '|');
            let addr = parts.next()?.to_string();
            let user = parts.next()?.to_string();
            let pass = parts.next()?.to_string();
            Some((addr, user, pass))
        }
        Err(_) => {
            assert!(
                std::env::var("PEERPOUCH_TEST_TURN_OPTIONAL").as_deref() == Ok("1"),
                "PEERPOUCH_TEST_TURN is not set: run through .ci/test (or set \
                 PEERPOUCH_TEST_TURN_OPTIONAL=1 to skip the relay tests)"
            );
            eprintln!("no TURN server: skipped");
            None
        }
    }
}

fn node(hub: &InProcessHub, servers: Vec<IceServer>, policy: IceTransportPolicy) -> PeerNode {
    PeerNode::start_with(
        PeerConfig::new(HubSpec::InProcess(hub.clone()))
            .bind("127.0.0.1:0".parse().unwrap())
            .ice_servers(servers)
            .ice_transport_policy(policy),
    )
    .unwrap()
}

/// Alice shares 200 docs and a 3 MiB attachment; Bob opens it and reads everything back.
async fn share_open_and_check(alice: &PeerNode, bob: &PeerNode) -> peerpouch_smol::Db {
    let db = alice
        .add_db("notes", MemoryStore::new("notes"))
        .await
        .unwrap();
    let docs: Vec<Value> = (0..200)
        .map(|i| json!({"_id": format!("doc-{i:04}"), "n": i}))
        .collect();
    for r in db.bulk_docs(docs, true).await.unwrap() {
        r.result.unwrap();
    }
    let blob: Vec<u8> = (0..3 << 20)
        .map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let b64 = serde_json::to_value(peerpouch::AttachmentData {
        content_type: String::new(),
        digest: String::new(),
        data: blob.clone().into(),
    })
    .unwrap()["data"]
        .clone();
    db.put(json!({"_id": "big", "_attachments": {"blob.bin": {
        "content_type": "application/octet-stream", "data": b64}}}))
        .await
        .unwrap();
    alice
        .share(&db, ShareConfig::new().name("notes"))
        .await
        .unwrap();
    let remote = bob.open("notes", Value::Null).await.unwrap();
    assert_eq!(remote.info().await.unwrap().doc_count, 201);
    let got = remote.get_attachment("big", "blob.bin").await.unwrap().data;
    assert!(
        got[..] == blob[..],
        "the attachment came through the relay intact"
    );
    remote
}

fn relayed_both_ways(transport: &str) {
    let Some((addr, user, pass)) = turn() else {
        return;
    };
    let url = format!("turn:{addr}?transport={transport}");
    let hub = InProcessHub::new();
    let server = IceServer::new(url).credentials(user, pass);
    let alice = node(&hub, vec![server.clone()], IceTransportPolicy::Relay);
    let bob = node(&hub, vec![server], IceTransportPolicy::Relay);
    run(60, async {
        let remote = share_open_and_check(&alice, &bob).await;
        let path = remote.path().expect("a peer's database has a path");
        assert_eq!(path.local, CandidateType::Relay, "{path}");
        let want = if transport == "tcp" {
            Transport::Tcp
        } else {
            Transport::Udp
        };
        assert_eq!(path.relay, Some(want), "{path}");
        assert!(
            path.to_string().starts_with("via relay (TURN over"),
            "{path}"
        );
        // Relay-only: the peer's address on the pair is a relayed one too.
        assert_eq!(path.remote, CandidateType::Relay, "{path}");
        // Bob's goodbye crosses the relay before his node stops (over TCP it sat in the
        // stream's queue when the process ended, and Alice only noticed at her idle timeout).
        let links = alice.watch_links().await.unwrap();
        bob.shutdown().await;
        let reason = loop {
            if let LinkEvent::Closed { reason, .. } = links.recv().await.unwrap() {
                break reason;
            }
        };
        assert_eq!(reason, "Remote");
        alice.shutdown().await;
    });
}

#[test]
fn relayed_over_udp() {
    relayed_both_ways("udp");
}

#[test]
fn relayed_over_tcp() {
    relayed_both_ways("tcp");
}

#[test]
fn wrong_turn_password_is_its_own_error_not_a_timeout() {
    let Some((addr, user, _)) = turn() else {
        return;
    };
    let hub = InProcessHub::new();
    let good = IceServer::new(format!("turn:{addr}?transport=udp"));
    let alice = node(&hub, vec![], IceTransportPolicy::All);
    let bob = node(
        &hub,
        vec![good.credentials(user, "not-the-password")],
        IceTransportPolicy::Relay,
    );
    run(60, async {
        let db = alice
            .add_db("notes", MemoryStore::new("notes"))
            .await
            .unwrap();
        alice
            .share(&db, ShareConfig::new().name("notes"))
            .await
            .unwrap();
        let err = bob.open("notes", Value::Null).await.unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, PeerError::LinkFailed(_)), "{err:?}");
        // The relay's refusal ends the open at once, not the 30 s connect timeout.
        assert!(msg.contains("401") && msg.contains("credentials"), "{msg}");
        assert!(!msg.contains("ConnectTimeout"), "{msg}");
    });
}
