//! DTLS's handshake budget (`SessionConfig::crypto_provider`): a handshake nobody answers is
//! retried for as long as the session's connect timeout, within dimpl's jitter.

mod common;

use std::time::Duration;

use peerpouch::session::SessionConfig;
use str0m::crypto::dtls::{DtlsOutput, DtlsVersion};

/// Drives a client handshake nobody answers; returns when it failed and how many times its
/// first flight went out.
fn unanswered(deterministic: bool, connect_timeout: Duration) -> (Duration, usize) {
    let mut config = SessionConfig::default();
    config.connect_timeout = connect_timeout;
    config.deterministic_dtls = deterministic;
    let p = config.crypto_provider();
    let cert = p
        .dtls_provider
        .generate_certificate()
        .expect("a certificate");
    let start = common::epoch();
    let mut d = p
        .dtls_provider
        .new_dtls(&cert, start, DtlsVersion::Dtls12, None)
        .expect("a DTLS instance");
    d.set_active(true);
    let mut buf = vec![0; 2048];
    let mut sent = 0;
    let mut now = start;
    loop {
        match d.poll_output(&mut buf) {
            DtlsOutput::Packet(_) => sent += 1,
            DtlsOutput::Timeout(at) => {
                now = at.max(now);
                if d.handle_timeout(now).is_err() {
                    return (now - start, sent);
                }
                assert!(now - start < Duration::from_secs(600), "never gave up");
            }
            _ => {}
        }
    }
}

#[test]
fn an_unanswered_handshake_is_retried_as_long_as_the_connect_timeout() {
    // dimpl's default (4 retries, ~31 s) for the default 30 s; more for longer timeouts.
    for (timeout, retries) in [(30, 4), (60, 5), (300, 6)] {
        for deterministic in [true, false] {
            let timeout = Duration::from_secs(timeout);
            let mut config = SessionConfig::default();
            config.connect_timeout = timeout;
            assert_eq!(config.dtls_flight_retries(), retries);
            let (failed_after, sent) = unanswered(deterministic, timeout);
            assert_eq!(sent, 1 + retries, "timeout {timeout:?}");
            let span = ((1u64 << (retries + 1)) - 1) as f64;
            let secs = failed_after.as_secs_f64();
            // dimpl jitters each wait by up to ±25%.
            assert!(
                secs > span * 0.7 && secs < span * 1.3,
                "timeout {timeout:?}: gave up after {secs:.1} s, span {span} s"
            );
        }
    }
}
