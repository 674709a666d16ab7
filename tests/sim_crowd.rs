//! A sharer's limits with a crowd, in the simulation: how many peers a share and a node
//! keep, and that one more is told why it is turned away instead of timing out.

mod common;
mod sim;

use std::time::Duration;

use peerpouch::hub::ShareOptions;
use peerpouch::node::*;
use serde_json::json;
use sim::nodes::NodeSim;
use sim::NetConfig;

/// The reason node `i` was refused on `link`, once it was.
fn refused(s: &NodeSim, i: usize, link: &LinkId) -> Option<String> {
    s.nodes[i].events.iter().find_map(|(_, e)| match e {
        NodeEvent::Refused { link: l, reason } if l == link => {
            Some(reason.clone().unwrap_or_default())
        }
        _ => None,
    })
}

fn ready(s: &NodeSim, i: usize, link: &LinkId) -> bool {
    s.nodes[i]
        .events
        .iter()
        .any(|(_, e)| matches!(e, NodeEvent::LinkReady { link: l, .. } if l == link))
}

/// Node 0 shares "db" with `access`; returns the share id.
fn share(s: &mut NodeSim, access: ShareAccess) -> String {
    s.write(0, "db", vec![json!({"_id": "a", "v": 1})]);
    let now = s.now;
    let share = s
        .node(0)
        .share(now, "db".into(), ShareOptions::default(), access);
    s.run_for(Duration::from_millis(1));
    share
}

fn open(s: &mut NodeSim, i: usize, share: &str) -> LinkId {
    let now = s.now;
    s.node(i)
        .open(now, share, json!({"name": format!("joiner {i}")}), None)
        .unwrap()
}

#[test]
fn a_full_share_refuses_one_more_peer_with_a_reason_and_takes_it_once_a_place_is_free() {
    let mut s = NodeSim::new(31, NetConfig::default());
    s.add_node("sharer");
    for i in 1..=3 {
        s.add_node(&format!("j{i}"));
    }
    let share = share(
        &mut s,
        ShareAccess {
            max_links: Some(2),
            ..Default::default()
        },
    );
    let first = open(&mut s, 1, &share);
    let second = open(&mut s, 2, &share);
    assert!(
        s.run_until(Duration::from_secs(30), |s| ready(s, 1, &first)
            && ready(s, 2, &second)),
        "{}",
        s.trace()
    );
    let asked = s.elapsed();
    let third = open(&mut s, 3, &share);
    assert!(
        s.run_until(Duration::from_secs(30), |s| refused(s, 3, &third).is_some()),
        "the third peer hears it is refused (not a timeout)\n{}",
        s.trace()
    );
    let reason = refused(&s, 3, &third).unwrap();
    assert!(reason.contains("the share is full"), "{reason}");
    assert!(reason.contains("max_links"), "{reason}");
    assert!(!ready(&s, 3, &third));
    // The refusal came quickly: the answer timeout (5 s) did not have to run out.
    let at = s.nodes[3]
        .events
        .iter()
        .find_map(|(t, e)| matches!(e, NodeEvent::Refused { .. }).then_some(*t))
        .unwrap();
    assert!(
        at - asked < Duration::from_secs(2),
        "refused {:?} after asking",
        at - asked
    );

    // One leaves; the place is free again.
    let now = s.now;
    s.node(1).close(now, &first);
    s.run_for(Duration::from_secs(3));
    let again = open(&mut s, 3, &share);
    assert!(
        s.run_until(Duration::from_secs(30), |s| ready(s, 3, &again)),
        "a freed place is taken\n{}",
        s.trace()
    );
    assert_eq!(s.node_ready_links(0), 2);
}

#[test]
fn a_node_at_its_link_limit_refuses_peers_of_every_share_and_opens_no_more() {
    let mut s = NodeSim::new(32, NetConfig::default());
    let mut config = s.config.clone();
    config.max_links = 1;
    s.add_node_with("sharer", config);
    s.add_node("j1");
    s.add_node("j2");
    let share = share(&mut s, ShareAccess::default());
    let first = open(&mut s, 1, &share);
    assert!(s.run_until(Duration::from_secs(30), |s| ready(s, 1, &first)));
    let second = open(&mut s, 2, &share);
    assert!(
        s.run_until(Duration::from_secs(30), |s| refused(s, 2, &second)
            .is_some()),
        "{}",
        s.trace()
    );
    let reason = refused(&s, 2, &second).unwrap();
    assert!(reason.contains("the sharer keeps 1 links"), "{reason}");
    // The full node cannot open a link of its own either.
    let now = s.now;
    let err = s
        .node(0)
        .open(now, &share, json!({}), None)
        .expect_err("no room for a link");
    assert!(matches!(err, NodeError::TooManyLinks(1)), "{err}");
}
