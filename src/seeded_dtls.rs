//! A DTLS provider whose *non-cryptographic* randomness is seeded, for simulations.
//!
//! dimpl (str0m's DTLS) jitters its retransmission timer with random numbers, so two runs of the
//! same simulation drift apart in virtual time as soon as a handshake packet is lost. str0m
//! seeds that generator only in its own test builds. This provider does the same on request
//! (`SessionConfig::deterministic_dtls`): retransmission timing becomes reproducible. Keys still
//! come from the OS through the crypto backend. Never use it outside tests: it also makes
//! nonces and cookie secrets predictable.

use std::sync::Arc;
use std::time::Instant;

use str0m::config::DtlsCert;
use str0m::crypto::dtls::{
    DtlsImplError, DtlsInstance, DtlsOutput, DtlsProvider, DtlsVersion, ProtocolVersion,
};
use str0m::crypto::{CryptoError, CryptoProvider};

/// The seed str0m itself uses in its test builds.
const SEED: u64 = 42;

#[derive(Debug)]
pub(crate) struct SeededDtls;

static SEEDED_DTLS: SeededDtls = SeededDtls;

/// The feature-flag crypto provider with [`SeededDtls`] in place of its DTLS provider.
pub(crate) fn seeded_provider() -> CryptoProvider {
    let mut p = str0m::crypto::from_feature_flags();
    p.dtls_provider = &SEEDED_DTLS;
    p
}

impl DtlsProvider for SeededDtls {
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
            .dangerously_set_rng_seed(SEED);
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
        Ok(Box::new(Seeded(dtls)))
    }
}

struct Seeded(dimpl::Dtls);

impl std::fmt::Debug for Seeded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SeededDtlsInstance")
    }
}

impl DtlsInstance for Seeded {
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
