//! Property: random edit histories on three stores, replicated in random orders and directions,
//! always converge to identical documents, revision trees, winners and conflicts (the property
//! is `tests/common/convergence.rs`, shared with the SQLite store's tests).

mod common;

#[path = "common/convergence.rs"]
mod convergence;

use peerpouch::*;
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: Some(Box::new(proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"))), ..ProptestConfig::default() })]

    #[test]
    fn random_histories_converge(ops in proptest::collection::vec(convergence::op(), 1..60)) {
        convergence::check(&ops, |i| MemoryStore::new(format!("s{i}")).with_id_seed(i as u64))?;
    }
}
