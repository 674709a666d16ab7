//! Shared test helpers: a seeded RNG, a virtual clock and a replication driver with faults.
#![allow(dead_code)]

pub mod conformance;
pub mod turn_server;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use peerpouch::{
    ChangesRequest, Database, DbError, Endpoint, EndpointRequest, Feed, MemoryStore, Progress,
    ReplicationEvent, Replicator, ReplicatorConfig, Request, Response,
};
use serde_json::Value;

/// The core's splitmix64, with the draws tests use to pick faults and orders.
#[derive(Clone, Debug)]
pub struct Rng(peerpouch::rand::SplitMix64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(peerpouch::rand::SplitMix64::new(seed))
    }
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// A fixed origin for virtual time; only offsets from it matter, so runs are reproducible.
pub fn epoch() -> Instant {
    #[allow(clippy::disallowed_methods)]
    Instant::now()
}

/// How the driver misbehaves.
#[derive(Clone, Debug, Default)]
pub struct Faults {
    /// Answer the queued requests in a random order (seeded).
    pub shuffle: bool,
    /// Probability that a request fails with 503 instead of running.
    pub unavailable: f64,
    /// Stop the run (as if the process died) after this many responses were delivered.
    pub crash_after: Option<usize>,
    /// Cancel the replication after this many responses were delivered.
    pub cancel_after: Option<usize>,
}

/// What a driven replication ended with.
#[derive(Debug)]
pub struct Outcome {
    pub events: Vec<ReplicationEvent>,
    pub progress: Progress,
    pub crashed: bool,
    /// Requests executed per operation name and endpoint.
    pub requests: BTreeMap<(Endpoint, &'static str), usize>,
    pub virtual_elapsed: Duration,
}

impl Outcome {
    pub fn completed(&self) -> Option<&Progress> {
        self.events.iter().find_map(|e| match e {
            ReplicationEvent::Completed(p) => Some(p),
            _ => None,
        })
    }
    pub fn failed(&self) -> bool {
        self.events
            .iter()
            .any(|e| matches!(e, ReplicationEvent::Failed { .. }))
    }
}

/// Runs a one-shot replication between two in-memory stores with injected faults, on virtual
/// time. Panics if it does not settle within a step bound.
pub fn drive(
    source: &mut MemoryStore,
    target: &mut MemoryStore,
    config: ReplicatorConfig,
    seed: u64,
    faults: Faults,
) -> Outcome {
    let start = epoch();
    let mut now = start;
    let mut rng = Rng::new(seed);
    let mut rep = Replicator::new(config, seed);
    let mut queue: Vec<EndpointRequest> = Vec::new();
    let mut events = Vec::new();
    let mut delivered = 0usize;
    let mut requests = BTreeMap::new();
    for _step in 0..1_000_000 {
        while let Some(r) = rep.poll_request() {
            queue.push(r);
        }
        while let Some(e) = rep.poll_event() {
            events.push(e);
        }
        if rep.is_finished() {
            return Outcome {
                events,
                progress: rep.progress().clone(),
                crashed: false,
                requests,
                virtual_elapsed: now - start,
            };
        }
        if faults.crash_after.is_some_and(|n| delivered >= n) {
            return Outcome {
                events,
                progress: rep.progress().clone(),
                crashed: true,
                requests,
                virtual_elapsed: now - start,
            };
        }
        if faults.cancel_after.is_some_and(|n| delivered >= n) {
            rep.cancel();
            continue;
        }
        if queue.is_empty() {
            let t = rep
                .poll_timeout()
                .expect("replicator waits for nothing: stalled");
            now = now.max(t);
            rep.handle_timeout(now);
            continue;
        }
        let i = if faults.shuffle {
            rng.below(queue.len() as u64) as usize
        } else {
            0
        };
        let req = queue.remove(i);
        let result = if rng.chance(faults.unavailable) {
            Err(DbError::Unavailable("injected".into()))
        } else {
            *requests
                .entry((req.endpoint, req.request.name()))
                .or_insert(0) += 1;
            let db = match req.endpoint {
                Endpoint::Source => &mut *source,
                Endpoint::Target => &mut *target,
            };
            db.execute(req.request)
        };
        now += Duration::from_millis(1);
        delivered += 1;
        rep.handle_response(now, req.id, result)
            .expect("response to an issued request");
    }
    panic!("replication did not settle within the step bound; events: {events:#?}");
}

/// Every document of a store as `get` with conflicts sees it, keyed by id; deleted ones as 404s.
pub fn winners(db: &mut dyn Database) -> BTreeMap<String, Result<Value, DbError>> {
    let ids: Vec<String> = db
        .changes(ChangesRequest::default())
        .unwrap()
        .results
        .into_iter()
        .map(|r| r.id)
        .collect();
    ids.into_iter()
        .map(|id| {
            let mut g = peerpouch::GetRequest::new(id.clone());
            g.conflicts = true;
            g.deleted_conflicts = true;
            let d = db.get_with(g).map(Value::Object);
            (id, d)
        })
        .collect()
}

/// Asserts two stores hold the same documents, revision trees, winners and conflicts.
pub fn assert_converged(a: &mut MemoryStore, b: &mut MemoryStore) {
    assert_eq!(a.tree_shapes(), b.tree_shapes(), "revision trees differ");
    assert_eq!(winners(a), winners(b), "winning documents differ");
    let (ia, ib) = (a.info().unwrap(), b.info().unwrap());
    assert_eq!(
        (ia.doc_count, ia.doc_del_count),
        (ib.doc_count, ib.doc_del_count)
    );
}

/// Holds live-mode changes requests that have nothing to answer, like a CouchDB longpoll.
pub fn is_parked(db: &MemoryStore, req: &Request) -> bool {
    match req {
        Request::Changes(c) if c.feed == Feed::Longpoll => {
            c.since.as_u64().unwrap_or(0) >= db.update_seq()
        }
        _ => false,
    }
}

pub fn ok_response(r: Result<Response, DbError>) -> Response {
    r.expect("request failed")
}
