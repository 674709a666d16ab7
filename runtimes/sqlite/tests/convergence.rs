//! The convergence property (`tests/common/convergence.rs` of the core, written once for every
//! store) on SQLite stores: random edit histories on three files, replicated in random orders
//! and directions, converge to identical documents, revision trees, winners and conflicts.
//!
//! `PEERPOUCH_CONVERGENCE_CASES` (default 64) sets how many histories run.

#[path = "../../../tests/common/mod.rs"]
mod common;

#[path = "../../../tests/common/convergence.rs"]
mod convergence;

use peerpouch_sqlite::{OpenOptions, SqliteStore};
use proptest::prelude::*;

fn cases() -> u32 {
    std::env::var("PEERPOUCH_CONVERGENCE_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_histories_converge(ops in proptest::collection::vec(convergence::op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        convergence::check(&ops, |i| {
            let options = OpenOptions::new().name(format!("s{i}")).id_seed(i as u64);
            SqliteStore::open_with(dir.path().join(format!("s{i}.db")), options).unwrap()
        })?;
    }
}
