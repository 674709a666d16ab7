//! `Rev::from_str` never panics, and what it accepts prints back to exactly the same string and
//! parses back to the same revision.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpouch::Rev;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(rev) = s.parse::<Rev>() else {
        return;
    };
    let printed = rev.to_string();
    let again: Rev = printed
        .parse()
        .unwrap_or_else(|e| panic!("{printed:?} (from {s:?}) does not parse back: {e}"));
    assert_eq!(again, rev, "{s:?}");
    // Exact: the parser takes only canonical text (no leading zeros in the position; see
    // tests/fuzz_regressions/rev_parse/leading-zero-pos), so nothing else can print back.
    assert_eq!(
        printed, s,
        "accepted rev string does not round-trip exactly"
    );
    // Serde goes through the same text.
    let json = serde_json::to_string(&rev).expect("serialize");
    let back: Rev = serde_json::from_str(&json).expect("deserialize");
    assert_eq!(back, rev);
});
