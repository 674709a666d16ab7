//! DTLS certificate fingerprints: who a peer is.
//!
//! A peer's identity is its DTLS certificate. The certificate's SHA-256 fingerprint travels in
//! the SDP (`a=fingerprint:sha-256 AB:CD:...`, RFC 8122 §5) and the DTLS handshake checks that
//! the peer holds the certificate's key, so a fingerprint can be remembered and trusted the next
//! time ("always allow"). A runtime keeps the certificate in a file and gives it to every session
//! ([`SessionConfig::dtls_cert`](crate::session::SessionConfig::dtls_cert)); the core only
//! computes, parses and compares fingerprints.
//!
//! The canonical form is the SDP's: `sha-256 ` and 32 upper-case hex bytes joined by `:`.
//!
//! ```
//! use peerpouch::fingerprint;
//!
//! let canonical = format!("sha-256 {}", ["AB"; 32].join(":"));
//! // The hash name, the colons and the case are optional on input.
//! assert_eq!(fingerprint::parse(&"ab".repeat(32)).unwrap(), canonical);
//! assert!(fingerprint::parse("sha-256 AB:CD").is_err());
//! ```

/// A DTLS certificate and its private key, DER (str0m's type): what a runtime keeps as a peer's
/// identity.
pub use str0m::config::DtlsCert;

/// Why a text is not a fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FingerprintError {
    /// Only SHA-256 fingerprints are used (what every browser and str0m offer).
    #[error("{0:?} is not a sha-256 fingerprint: give `sha-256 AB:CD:...` (32 hex bytes)")]
    Hash(String),
    /// Not 32 bytes of hex.
    #[error(
        "{0:?} is not a fingerprint: expected 32 hex bytes, `AB:CD:...` (as `peerpouch id` prints)"
    )]
    Malformed(String),
}

/// The canonical fingerprint of a DTLS certificate (SHA-256 over its DER bytes, as str0m puts
/// it in the SDP).
pub fn of_cert(cert: &DtlsCert) -> String {
    let provider = str0m::crypto::from_feature_flags();
    format_bytes(&provider.sha256_provider.sha256(&cert.certificate))
}

fn format_bytes(bytes: &[u8]) -> String {
    let hex: Vec<String> = bytes.iter().map(|b| format!("{b:02X}")).collect();
    format!("sha-256 {}", hex.join(":"))
}

/// Parses a fingerprint written by a person or an SDP: `sha-256 AB:CD:...`, with or without the
/// hash name, colons optional, any case. Returns the canonical form.
///
/// # Errors
/// [`FingerprintError`] for another hash or anything that is not 32 hex bytes.
pub fn parse(text: &str) -> Result<String, FingerprintError> {
    let t = text.trim();
    let hex = match t.split_once(|c: char| c.is_whitespace()) {
        Some((hash, rest)) => {
            if !hash.eq_ignore_ascii_case("sha-256") && !hash.eq_ignore_ascii_case("sha256") {
                return Err(FingerprintError::Hash(t.to_string()));
            }
            rest.trim()
        }
        None => t,
    };
    let digits: String = hex.chars().filter(|c| *c != ':').collect();
    let malformed = || FingerprintError::Malformed(t.to_string());
    if digits.len() != 64 || !digits.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(malformed());
    }
    // Colons, when present, separate bytes.
    if hex.contains(':') && !hex.split(':').all(|p| p.len() == 2) {
        return Err(malformed());
    }
    let bytes: Vec<u8> = (0..32)
        .map(|i| u8::from_str_radix(&digits[2 * i..2 * i + 2], 16))
        .collect::<Result<_, _>>()
        .map_err(|_| malformed())?;
    Ok(format_bytes(&bytes))
}

/// The SHA-256 fingerprint an SDP announces (session or media level), canonical; `None` when it
/// has none.
pub fn from_sdp(sdp: &str) -> Option<String> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=fingerprint:"))
        .find_map(|f| parse(f).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_written_form_to_one() {
        let canonical = format!("sha-256 {}", ["0A"; 32].join(":"));
        for t in [
            canonical.clone(),
            canonical.to_lowercase(),
            ["0a"; 32].join(":"),
            "0a".repeat(32),
            format!("SHA256  {}  ", "0A".repeat(32)),
        ] {
            assert_eq!(parse(&t).unwrap(), canonical, "{t}");
        }
    }

    #[test]
    fn refuses_other_hashes_and_garbage() {
        let hex = ["0A"; 32].join(":");
        assert!(matches!(
            parse(&format!("sha-1 {hex}")),
            Err(FingerprintError::Hash(_))
        ));
        for bad in [
            "",
            "0A:0B",
            &"0A".repeat(33),
            &"zz".repeat(32),
            &format!("{}:0A", "0A0".repeat(20)),
            "sha-256",
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn finds_the_sha256_line_of_an_sdp() {
        let hex = ["C3"; 32].join(":");
        let sdp = format!(
            "v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\na=fingerprint:sha-1 AA:BB\r\na=fingerprint:sha-256 {hex}\r\n"
        );
        assert_eq!(from_sdp(&sdp), Some(format!("sha-256 {hex}")));
        assert_eq!(from_sdp("v=0\r\n"), None);
    }

    #[test]
    fn a_certificate_has_one_stable_fingerprint() {
        let cert = str0m::crypto::from_feature_flags()
            .dtls_provider
            .generate_certificate()
            .unwrap();
        let fp = of_cert(&cert);
        assert_eq!(parse(&fp).unwrap(), fp);
        assert_eq!(of_cert(&cert.clone()), fp);
    }
}
