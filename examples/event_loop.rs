//! Driving the pure machines from a hand-written event loop, with no runtime crate: what an app
//! with its own loop (a game, a GUI, an embedded system) does.
//!
//! Two `Node`s, each with a std UDP socket on 127.0.0.1 and an in-memory database, meet on an
//! in-memory hub. Alice shares her notes; Bob opens the share and pulls it over a WebRTC data
//! channel into his own database. The loop is the whole contract of the sans-IO core:
//!
//! 1. feed inputs in (`handle_datagram`, `handle_hub_response`, `handle_feed`,
//!    `handle_store_result`, `handle_timeout`) with the current time;
//! 2. drain every output (`poll_hub_action`, `poll_store_request`, `poll_transmit`,
//!    `poll_event`) and act on it;
//! 3. wait until the next input or `poll_timeout`.
//!
//! ```sh
//! cargo run --example event_loop
//! ```

// The core forbids sockets and clocks (its clippy.toml); an app's loop is where they belong.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::net::UdpSocket;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use peerpouch::hub::{HubAction, HubEvent, MemoryHub, ShareOptions};
use peerpouch::node::{DbRef, Node, NodeConfig, NodeEvent, ShareAccess};
use peerpouch::replicate::ReplicationEvent;
use peerpouch::{Database, MemoryStore, ReplicatorConfig};
use serde_json::json;

/// One app: a node, its socket, its database, where it is in the hub's feed.
struct App {
    node: Node,
    socket: UdpSocket,
    db: MemoryStore,
    feed: Option<usize>,
    events: Vec<NodeEvent>,
}

impl App {
    fn new(seed: u64, db: &str) -> std::io::Result<App> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_nonblocking(true)?;
        let wall_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut node = Node::new(
            NodeConfig::default(),
            seed,
            Instant::now(),
            wall_ms.as_millis() as u64,
        );
        node.add_local_candidate(socket.local_addr()?);
        Ok(App {
            node,
            socket,
            db: MemoryStore::new(db),
            feed: None,
            events: Vec::new(),
        })
    }

    /// One turn: inputs in, outputs out. Returns whether anything happened.
    fn turn(&mut self, hub: &mut MemoryHub) -> bool {
        let mut busy = false;
        let now = Instant::now();
        // Inputs: datagrams, the hub's feed, due timers.
        let mut buf = [0u8; 65536];
        let local = self.socket.local_addr().expect("bound");
        while let Ok((n, from)) = self.socket.recv_from(&mut buf) {
            self.node.handle_datagram(now, from, local, &buf[..n]);
            busy = true;
        }
        if let Some(cursor) = self.feed {
            let rows = hub.poll_feed(cursor);
            if !rows.is_empty() {
                self.node.handle_feed(now, rows);
                busy = true;
            }
        }
        if self.node.poll_timeout().is_some_and(|t| t <= now) {
            self.node.handle_timeout(now);
        }
        // Outputs, until there are none.
        loop {
            let mut more = false;
            while let Some(action) = self.node.poll_hub_action() {
                more = true;
                match action {
                    HubAction::Request { id, request } => {
                        let result = hub.execute(request);
                        // Refused only for an id the node never issued: a driver bug.
                        if let Err(e) = self.node.handle_hub_response(Instant::now(), id, result) {
                            eprintln!("hub response refused: {e}");
                        }
                    }
                    HubAction::FollowChanges { since, .. } => self.feed = Some(hub.follow(&since)),
                }
            }
            while let Some(req) = self.node.poll_store_request() {
                more = true;
                // One database here; an app with several picks by `req.db`. (A real app parks
                // long-poll `changes` requests until the database changes: see
                // `peerpouch-smol`'s driver. Nothing here is live.)
                let result = self.db.execute(req.request);
                if let Err(e) = self
                    .node
                    .handle_store_result(Instant::now(), req.id, result)
                {
                    eprintln!("store result refused: {e}");
                }
            }
            while let Some(t) = self.node.poll_transmit() {
                more = true;
                let _ = self.socket.send_to(&t.contents, t.destination);
            }
            while let Some(e) = self.node.poll_event() {
                more = true;
                self.events.push(e);
            }
            if !more {
                break;
            }
            busy = true;
        }
        busy
    }
}

fn run() -> Result<usize, Box<dyn std::error::Error>> {
    let mut hub = MemoryHub::new();
    let mut alice = App::new(1, "notes")?;
    let mut bob = App::new(2, "copy")?;
    for i in 0..100 {
        alice
            .db
            .put(json!({"_id": format!("note-{i:03}"), "text": "hello"}))?;
    }

    let share = alice.node.share(
        Instant::now(),
        "notes".into(),
        ShareOptions {
            name: Some("alice's notes".into()),
            ..Default::default()
        },
        ShareAccess::default(),
    );
    let mut step = 0;
    let mut link = None;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let busy = alice.turn(&mut hub) | bob.turn(&mut hub);
        for e in bob.events.drain(..) {
            match e {
                NodeEvent::LinkReady { link: l, path } => {
                    let path = path.map(|p| p.to_string()).unwrap_or_default();
                    println!("bob: link to {} ready, {path}; pulling", l.share);
                    let config = ReplicatorConfig::new("peer:notes", "local:copy");
                    bob.node.replicate(
                        Instant::now(),
                        DbRef::Remote(l.clone()),
                        DbRef::Local("copy".into()),
                        config,
                    );
                    link = Some(l);
                }
                NodeEvent::Replication {
                    event: ReplicationEvent::Completed(p),
                    ..
                } => {
                    println!("bob: {} docs written", p.docs_written);
                    return Ok(p.docs_written as usize);
                }
                NodeEvent::Replication {
                    event: ReplicationEvent::Failed { error, .. },
                    ..
                } => return Err(error.to_string().into()),
                _ => {}
            }
        }
        for e in alice.events.drain(..) {
            if let NodeEvent::Hub(HubEvent::ShareCreated { share: s }) = e {
                println!("alice: shared as {s}");
                step = 1;
            }
        }
        if step == 1 && link.is_none() {
            bob.node
                .open(Instant::now(), &share, json!({"name": "bob"}), None)?;
            step = 2;
        }
        if !busy {
            // Nothing to do: wait for a datagram or the next timer (a real loop would block
            // in poll/epoll on the sockets with this timeout).
            let next = [alice.node.poll_timeout(), bob.node.poll_timeout()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or_else(|| Instant::now() + Duration::from_millis(1));
            let wait = next
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(1));
            std::thread::sleep(wait);
        }
    }
    Err("timed out".into())
}

fn main() {
    match run() {
        Ok(n) => println!("done: {n} documents replicated peer to peer"),
        Err(e) => {
            eprintln!("failed: {e}");
            std::process::exit(1);
        }
    }
}

#[test]
fn the_example_replicates_every_note() {
    assert_eq!(run().unwrap(), 100);
}
