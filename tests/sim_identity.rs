//! Who a peer is, in the simulation of whole nodes: the certificate fingerprint a share with
//! `ask` decides on, and the pin that keeps the accepted link to that certificate.

mod common;
mod sim;

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use peerpouch::fingerprint::{self, DtlsCert};
use peerpouch::hub::ShareOptions;
use peerpouch::node::*;
use serde_json::json;
use sim::net::Fate;
use sim::nodes::NodeSim;
use sim::NetConfig;

/// Whether a datagram starts a DTLS handshake: a ClientHello in the first record of epoch 0.
fn starts_a_handshake(data: &[u8]) -> bool {
    sim::net::dtls_records(data)
        .iter()
        .any(|&(ty, epoch, seq, first)| ty == 22 && epoch == 0 && seq == 0 && first == Some(1))
}

fn has_record(data: &[u8], content_type: u8) -> bool {
    sim::net::dtls_records(data)
        .iter()
        .any(|r| r.0 == content_type)
}

/// A sharer (node 0) with an `ask` share and a joiner (node 1) with `joiner_cert` (`None`: a
/// new certificate for each of its handshakes). The sharer's final DTLS flight never arrives
/// during the first handshake, so the joiner's handshake runs out of retries and starts over
/// with a new offer. The sharer accepts the peer on the fingerprint of its first offer. Runs
/// until the sharer's link is ready or closed; returns the fingerprint the sharer was asked
/// about.
fn accepted_then_restarted(joiner_cert: Option<DtlsCert>) -> (NodeSim, LinkId, Option<String>) {
    let handshakes = Rc::new(Cell::new(0));
    let mut s = NodeSim::new(40, NetConfig::default());
    s.config.session.connect_timeout = Duration::from_secs(300);
    s.add_node("sharer");
    s.config.session.dtls_cert = joiner_cert;
    s.add_node("joiner");
    let joiner = s.nodes[1].addr;
    let counted = handshakes.clone();
    s.net.filter = Some(Box::new(move |_, t| {
        let from_joiner = t.source == joiner;
        if from_joiner && starts_a_handshake(&t.contents) {
            counted.set(counted.get() + 1);
        }
        if !from_joiner && counted.get() <= 1 && has_record(&t.contents, 20) {
            return Fate::Drop;
        }
        Fate::Pass
    }));
    let now = s.now;
    let share = s.node(0).share(
        now,
        "db".into(),
        ShareOptions::default(),
        ShareAccess {
            key: None,
            ask: true,
            max_links: None,
        },
    );
    s.run_for(Duration::from_millis(1));
    let now = s.now;
    s.node(1)
        .open(now, &share, json!({"name": "joiner"}), None)
        .unwrap();
    let requested = |s: &NodeSim| {
        s.nodes[0].events.iter().find_map(|(_, e)| match e {
            NodeEvent::PeerRequested {
                link, fingerprint, ..
            } => Some((link.clone(), fingerprint.clone())),
            _ => None,
        })
    };
    assert!(
        s.run_until(Duration::from_secs(10), |s| requested(s).is_some()),
        "{}",
        s.trace()
    );
    let (link, fp) = requested(&s).unwrap();
    let now = s.now;
    s.node(0).accept(now, &link).unwrap();
    let ended = |s: &NodeSim| {
        s.nodes[0].events.iter().any(|(_, e)| {
            matches!(
                e,
                NodeEvent::LinkReady { .. } | NodeEvent::LinkClosed { .. }
            )
        })
    };
    assert!(
        s.run_until(Duration::from_secs(300), ended),
        "{}",
        s.trace()
    );
    assert_eq!(handshakes.get(), 2, "the handshake started over once");
    (s, link, fp)
}

#[test]
fn a_peer_keeping_its_certificate_through_a_restarted_handshake_is_served() {
    let cert = str0m::crypto::from_feature_flags()
        .dtls_provider
        .generate_certificate()
        .unwrap();
    let expected = fingerprint::of_cert(&cert);
    let (mut s, link, asked) = accepted_then_restarted(Some(cert));
    assert_eq!(asked.as_deref(), Some(expected.as_str()));
    assert!(
        s.nodes[0]
            .events
            .iter()
            .any(|(_, e)| matches!(e, NodeEvent::LinkReady { link: l, .. } if *l == link)),
        "{}",
        s.trace()
    );
    assert_eq!(s.node(0).remote_fingerprint(&link), Some(expected));
}

#[test]
fn a_peer_showing_another_certificate_than_the_one_accepted_is_closed() {
    let (s, link, asked) = accepted_then_restarted(None);
    assert!(asked.is_some());
    let reason = s.nodes[0]
        .events
        .iter()
        .find_map(|(_, e)| match e {
            NodeEvent::LinkClosed { link: l, reason } if *l == link => Some(reason.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("the link was not closed\n{}", s.trace()));
    assert!(reason.contains("is not the one accepted"), "{reason}");
    assert!(
        reason.contains(asked.as_deref().unwrap()),
        "names the accepted one: {reason}"
    );
    assert!(!s.nodes[0]
        .events
        .iter()
        .any(|(_, e)| matches!(e, NodeEvent::LinkReady { .. })));
}
