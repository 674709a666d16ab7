//! The DTLS provider of every session: str0m's own (dimpl on aws-lc-rs, without server cookies,
//! as str0m configures it) with two changes.
//!
//! - **A retransmission budget that follows [`SessionConfig::connect_timeout`].** dimpl retries
//!   an unanswered flight 4 times by default, doubling its timer from 1 s, and gives up after
//!   ~31 s whatever the session's own limit says: at 17% loss a handshake failed there while
//!   the session would have waited 300 s (found by the simulation soak). Here a flight gets
//!   enough retries to span the connect timeout (4 at the least, dimpl's default; 6 at the most,
//!   127 s, after which the next wait alone would be 64 s), and the session's connect timeout,
//!   not dimpl's whole-handshake deadline, ends a handshake that does not finish.
//! - **Seeded non-cryptographic randomness, on request, for simulations.** dimpl jitters its
//!   retransmission timer with random numbers, so two runs of the same simulation drift apart in
//!   virtual time as soon as a handshake packet is lost. str0m seeds that generator only in its
//!   own test builds; [`SessionConfig::deterministic_dtls`] does the same here, making
//!   retransmission timing reproducible. Keys still come from the OS through the crypto
//!   backend. Never use it outside tests: it also makes nonces and cookie secrets predictable.
//!
//! [`SessionConfig::connect_timeout`]: crate::session::SessionConfig::connect_timeout
//! [`SessionConfig::deterministic_dtls`]: crate::session::SessionConfig::deterministic_dtls

use std::sync::Arc;
use std::time::{Duration, Instant};

use str0m::config::DtlsCert;
use str0m::crypto::dtls::{
    DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
};
use str0m::crypto::{CryptoError, CryptoProvider};

/// The seed str0m itself uses in its test builds.
const SEED: u64 = 42;

/// Retries per flight: dimpl's default at the least, and at the most the count after which the
/// next wait alone (64 s) is longer than any useful handshake.
const MIN_RETRIES: usize = 4;
const MAX_RETRIES: usize = 6;

/// How long a flight is retried with `retries` retransmissions: dimpl waits 1 s, then twice as
/// long each time, so `2^(retries + 1) - 1` seconds (± its jitter).
pub(crate) fn retry_span(retries: usize) -> Duration {
    Duration::from_secs((1u64 << (retries + 1)) - 1)
}

/// The fewest retries per flight whose span covers `connect_timeout`, within
/// [`MIN_RETRIES`]..=[`MAX_RETRIES`].
pub(crate) fn flight_retries(connect_timeout: Duration) -> usize {
    (MIN_RETRIES..MAX_RETRIES)
        .find(|&r| retry_span(r) >= connect_timeout)
        .unwrap_or(MAX_RETRIES)
}

/// The crypto provider of a session: the feature-flag provider with our DTLS in place of its own.
pub(crate) fn provider(deterministic: bool, connect_timeout: Duration) -> CryptoProvider {
    let retries = flight_retries(connect_timeout);
    let mut p = str0m::crypto::from_feature_flags();
    // `dtls_provider` is a `&'static`: one static per (seeded, retries).
    let row = usize::from(deterministic) * (MAX_RETRIES - MIN_RETRIES + 1);
    p.dtls_provider = &PROVIDERS[row + retries - MIN_RETRIES];
    p
}

static PROVIDERS: [BudgetedDtls; 2 * (MAX_RETRIES - MIN_RETRIES + 1)] = [
    BudgetedDtls {
        seeded: false,
        retries: 4,
    },
    BudgetedDtls {
        seeded: false,
        retries: 5,
    },
    BudgetedDtls {
        seeded: false,
        retries: 6,
    },
    BudgetedDtls {
        seeded: true,
        retries: 4,
    },
    BudgetedDtls {
        seeded: true,
        retries: 5,
    },
    BudgetedDtls {
        seeded: true,
        retries: 6,
    },
];

/// dimpl configured as str0m does, with `retries` per flight, seeded when `seeded`.
#[derive(Debug)]
struct BudgetedDtls {
    seeded: bool,
    retries: usize,
}

impl DtlsProvider for BudgetedDtls {
    fn generate_certificate(&self) -> Option<DtlsCert> {
        str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
    }

    fn new_dtls(
        &self,
        cert: &DtlsCert,
        now: Instant,
        dtls_version: DtlsVersion,
        mtu: Option<usize>,
    ) -> Result<Box<dyn DtlsInstance>, CryptoError> {
        // ICE checks return routability before DTLS starts: cookies add nothing (as str0m).
        let mut builder = dimpl::Config::builder()
            .use_server_cookie(false)
            .flight_retries(self.retries)
            // The session's connect timeout ends a handshake that does not finish.
            .handshake_timeout(Duration::from_secs(24 * 3600));
        if self.seeded {
            builder = builder.dangerously_set_rng_seed(SEED);
        }
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        let config = Arc::new(
            builder
                .build()
                .map_err(|e| CryptoError::Other(format!("dimpl config: {e}")))?,
        );
        let c = dimpl::DtlsCertificate {
            certificate: cert.certificate.clone(),
            private_key: cert.private_key.clone(),
        };
        let dtls = match dtls_version {
            DtlsVersion::Dtls12 => dimpl::Dtls::new_12(config, c, now),
            DtlsVersion::Dtls13 => dimpl::Dtls::new_13(config, c, now),
            DtlsVersion::Auto => dimpl::Dtls::new_auto(config, c, now),
            other => return Err(CryptoError::Other(format!("unsupported DTLS {other}"))),
        };
        Ok(Box::new(Instance(dtls)))
    }
}

struct Instance(dimpl::Dtls);

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DtlsInstance")
    }
}

impl DtlsInstance for Instance {
    fn set_active(&mut self, active: bool) {
        self.0.set_active(active)
    }
    fn handle_packet(&mut self, packet: &[u8]) -> Result<(), DtlsImplError> {
        self.0.handle_packet(packet)
    }
    fn poll_output<'a>(&mut self, buf: &'a mut [u8]) -> DtlsOutput<'a> {
        self.0.poll_output(buf)
    }
    fn handle_timeout(&mut self, now: Instant) -> Result<(), DtlsImplError> {
        self.0.handle_timeout(now)
    }
    fn send_application_data(&mut self, data: &[u8]) -> Result<usize, DtlsImplError> {
        self.0.send_application_data(data)
    }
    fn is_active(&self) -> bool {
        self.0.is_active()
    }
    fn protocol_version(&self) -> Option<ProtocolVersion> {
        self.0.protocol_version()
    }
    fn is_closing(&self) -> bool {
        self.0.is_closing()
    }
    fn is_closed(&self) -> bool {
        self.0.is_closed()
    }
    fn close(&mut self) -> Result<(), DtlsImplError> {
        self.0.close()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_cover_the_connect_timeout_within_bounds() {
        assert_eq!(flight_retries(Duration::from_secs(10)), 4);
        assert_eq!(flight_retries(Duration::from_secs(30)), 4);
        assert_eq!(flight_retries(Duration::from_secs(31)), 4);
        assert_eq!(flight_retries(Duration::from_secs(32)), 5);
        assert_eq!(flight_retries(Duration::from_secs(63)), 5);
        assert_eq!(flight_retries(Duration::from_secs(300)), 6);
        assert_eq!(retry_span(6), Duration::from_secs(127));
    }
    // An unanswered handshake driven to its end: `tests/dtls.rs` (it needs a clock).
}
