//! Which certificates an `https://` server may present: the platform's trust store plus a
//! private CA ([`CaCerts`]), and what a rejected certificate means ([`CertificateProblem`]).
//!
//! Why the platform's roots as a list (`rustls-native-certs`) and not ureq's
//! `platform-verifier`: ureq takes either the platform verifier or a list of roots, never both,
//! and a private CA must be trusted *besides* the platform's roots (a hub behind a company CA
//! and a CouchDB source with a public certificate in one command). On Linux both read the same
//! bundle (`/etc/ssl/certs`, or `SSL_CERT_FILE` / `SSL_CERT_DIR` as OpenSSL and curl do).

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use rustls::pki_types::CertificateDer;
use rustls::CertificateError;
use ureq::tls::{Certificate, PemItem, RootCerts};

use crate::error::Error;

/// Certificates of certificate authorities trusted besides the platform's own: a private CA
/// (a company's, a home server's). Empty by default.
///
/// ```no_run
/// use peerpouch_couch::{CaCerts, ClientConfig, CouchClient};
///
/// let ca = CaCerts::from_pem_file("company-ca.pem")?;
/// let config = ClientConfig::default().ca_certs(ca);
/// let hub = CouchClient::with_config("https://couch.internal:6984/hub", config)?;
/// # Ok::<(), peerpouch_couch::Error>(())
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct CaCerts {
    /// DER of each certificate, in file order.
    der: Arc<Vec<Vec<u8>>>,
    /// Where they came from, for messages.
    source: Option<PathBuf>,
}

impl std::fmt::Debug for CaCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaCerts")
            .field("certificates", &self.der.len())
            .field("source", &self.source)
            .finish()
    }
}

impl CaCerts {
    /// No extra certificates: only the platform's trust store.
    pub fn none() -> CaCerts {
        CaCerts::default()
    }

    /// Reads one or more PEM certificates (`-----BEGIN CERTIFICATE-----`) from `path`; other
    /// PEM sections (a private key, say) are skipped.
    ///
    /// # Errors
    /// [`Error::CaFile`] when the file cannot be read, holds no certificate, or a certificate
    /// is not a valid X.509 CA certificate.
    pub fn from_pem_file(path: impl AsRef<Path>) -> Result<CaCerts, Error> {
        let path = path.as_ref();
        let bad = |reason: String| Error::CaFile {
            path: path.display().to_string(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| {
            bad(match e.kind() {
                std::io::ErrorKind::NotFound => "no such file".to_string(),
                std::io::ErrorKind::PermissionDenied => "permission denied".to_string(),
                _ => e.to_string(),
            })
        })?;
        let mut certs = CaCerts::from_pem(&pem).map_err(|e| match e {
            Error::CaFile { reason, .. } => bad(reason),
            other => other,
        })?;
        certs.source = Some(path.to_path_buf());
        Ok(certs)
    }

    /// Parses one or more PEM certificates.
    ///
    /// ```
    /// let e = peerpouch_couch::CaCerts::from_pem(b"not a certificate").unwrap_err();
    /// assert!(e.to_string().contains("no PEM certificate"), "{e}");
    /// ```
    ///
    /// # Errors
    /// [`Error::CaFile`] (with the path `<PEM>`) as [`CaCerts::from_pem_file`].
    pub fn from_pem(pem: &[u8]) -> Result<CaCerts, Error> {
        let bad = |reason: String| Error::CaFile {
            path: "<PEM>".into(),
            reason,
        };
        let mut der = Vec::new();
        for item in ureq::tls::parse_pem(pem) {
            match item {
                Ok(PemItem::Certificate(c)) => der.push(c.der().to_vec()),
                Ok(_) => {}
                Err(e) => return Err(bad(format!("malformed PEM: {e}"))),
            }
        }
        if der.is_empty() {
            return Err(bad(
                "no PEM certificate in it (expected -----BEGIN CERTIFICATE-----)".into(),
            ));
        }
        for (i, d) in der.iter().enumerate() {
            let mut store = rustls::RootCertStore::empty();
            if let Err(e) = store.add(CertificateDer::from(d.as_slice())) {
                return Err(bad(format!(
                    "certificate {} of {} is not a valid X.509 certificate: {e}",
                    i + 1,
                    der.len()
                )));
            }
        }
        Ok(CaCerts {
            der: Arc::new(der),
            source: None,
        })
    }

    /// How many certificates.
    pub fn len(&self) -> usize {
        self.der.len()
    }

    /// No certificates.
    pub fn is_empty(&self) -> bool {
        self.der.is_empty()
    }
}

/// The platform's roots, read once per process.
fn platform_roots() -> &'static [Certificate<'static>] {
    static ROOTS: OnceLock<Vec<Certificate<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::debug!(error = %e, "reading the platform's trust store");
        }
        tracing::debug!(
            certificates = found.certs.len(),
            "platform trust store loaded"
        );
        found
            .certs
            .iter()
            .map(|c| Certificate::from_der(c.as_ref()).to_owned())
            .collect()
    })
}

/// The roots an agent trusts: the platform's plus `extra`; Mozilla's bundled roots when the
/// platform has none (a minimal container without `ca-certificates`).
pub(crate) fn root_certs(extra: &CaCerts) -> RootCerts {
    let platform = platform_roots();
    if platform.is_empty() && extra.is_empty() {
        tracing::debug!("no platform trust store found: using the bundled Mozilla roots");
        return RootCerts::WebPki;
    }
    let all = platform.iter().cloned().chain(
        extra
            .der
            .iter()
            .map(|d| Certificate::from_der(d).to_owned()),
    );
    RootCerts::from(all)
}

/// Why a server's certificate was rejected.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CertificateProblem {
    /// Not signed by a certificate authority this machine trusts (a private CA or a
    /// self-signed certificate).
    UnknownIssuer,
    /// Past its end of validity.
    Expired {
        /// The last day it was valid (`YYYY-MM-DD`, UTC), when known.
        not_after: Option<String>,
    },
    /// Not valid yet.
    NotYetValid {
        /// The first day it is valid (`YYYY-MM-DD`, UTC), when known.
        not_before: Option<String>,
    },
    /// Issued for other names than the host in the URL.
    NameMismatch {
        /// The names it was issued for, when known.
        presented: Vec<String>,
    },
    /// Revoked by its issuer.
    Revoked,
    /// Anything else the TLS library reported (bad signature, wrong key usage, ...).
    Other(String),
}

impl std::fmt::Display for CertificateProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CertificateProblem::UnknownIssuer => write!(
                f,
                "unknown issuer (it is not signed by a certificate authority this machine trusts)"
            ),
            CertificateProblem::Expired { not_after: Some(d) } => write!(f, "expired on {d}"),
            CertificateProblem::Expired { not_after: None } => write!(f, "expired"),
            CertificateProblem::NotYetValid {
                not_before: Some(d),
            } => write!(f, "not valid before {d}"),
            CertificateProblem::NotYetValid { not_before: None } => write!(f, "not valid yet"),
            CertificateProblem::NameMismatch { presented } if presented.is_empty() => {
                write!(f, "name mismatch (it was issued for another name)")
            }
            CertificateProblem::NameMismatch { presented } => write!(
                f,
                "name mismatch (it was issued for {})",
                presented.join(", ")
            ),
            CertificateProblem::Revoked => write!(f, "revoked"),
            CertificateProblem::Other(m) => write!(f, "{m}"),
        }
    }
}

impl CertificateProblem {
    /// What to do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            CertificateProblem::UnknownIssuer => {
                "if the server uses a private CA, pass its certificate with --ca-file PATH \
                 (or PEERPOUCH_CA_FILE; ClientConfig::ca_certs in the API)"
            }
            CertificateProblem::Expired { .. } | CertificateProblem::NotYetValid { .. } => {
                "the server's certificate must be renewed, or this machine's clock is wrong"
            }
            CertificateProblem::NameMismatch { .. } => {
                "use the host name the certificate was issued for, or have it reissued for this one"
            }
            CertificateProblem::Revoked | CertificateProblem::Other(_) => {
                "the server's certificate must be replaced"
            }
        }
    }

    fn of(e: &CertificateError) -> CertificateProblem {
        match e {
            CertificateError::UnknownIssuer => CertificateProblem::UnknownIssuer,
            CertificateError::Expired => CertificateProblem::Expired { not_after: None },
            CertificateError::ExpiredContext { not_after, .. } => CertificateProblem::Expired {
                not_after: Some(utc_date(not_after.as_secs())),
            },
            CertificateError::NotValidYet => CertificateProblem::NotYetValid { not_before: None },
            CertificateError::NotValidYetContext { not_before, .. } => {
                CertificateProblem::NotYetValid {
                    not_before: Some(utc_date(not_before.as_secs())),
                }
            }
            CertificateError::NotValidForName => CertificateProblem::NameMismatch {
                presented: Vec::new(),
            },
            CertificateError::NotValidForNameContext { presented, .. } => {
                CertificateProblem::NameMismatch {
                    presented: presented.iter().map(|n| bare_name(n)).collect(),
                }
            }
            CertificateError::Revoked => CertificateProblem::Revoked,
            CertificateError::BadSignature => CertificateProblem::Other(
                "bad signature (it names a trusted CA as its issuer, but that CA's key did not \
                 sign it: another CA of the same name?)"
                    .into(),
            ),
            other => CertificateProblem::Other(format!("{other:?}")),
        }
    }
}

/// `couch.example.org` from webpki's `DnsName("couch.example.org")`, `10.0.0.1` from
/// `IpAddress(10.0.0.1)`; anything else as it is.
fn bare_name(presented: &str) -> String {
    match (presented.find('('), presented.strip_suffix(')')) {
        (Some(open), Some(inner)) if open < inner.len() => {
            inner[open + 1..].trim_matches('"').to_string()
        }
        _ => presented.to_string(),
    }
}

/// `host:port` of a URL, for messages.
fn host_of(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.split('/').next().unwrap_or(rest).to_string()
}

/// Our error for a rustls failure with `url`: a typed certificate problem when it is one.
pub(crate) fn rustls_error(e: &rustls::Error, url: &str) -> Error {
    match e {
        rustls::Error::InvalidCertificate(c) => Error::Certificate {
            url: url.to_string(),
            host: host_of(url),
            problem: CertificateProblem::of(c),
        },
        other => Error::Tls {
            url: url.to_string(),
            detail: other.to_string(),
        },
    }
}

/// A rustls error inside an I/O error (how ureq reports a failed handshake), if there is one.
pub(crate) fn rustls_in_io(io: &std::io::Error) -> Option<&rustls::Error> {
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

/// `YYYY-MM-DD` of a UNIX time (UTC), by the days-to-civil algorithm (H. Hinnant).
fn utc_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_767_225_599), "2025-12-31");
    }

    #[test]
    fn hosts() {
        assert_eq!(host_of("https://127.0.0.1:6984/hub"), "127.0.0.1:6984");
        assert_eq!(
            host_of("https://couch.example.org/a/b"),
            "couch.example.org"
        );
    }

    #[test]
    fn bad_pem_is_an_error() {
        let e =
            CaCerts::from_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
                .unwrap_err();
        assert!(
            matches!(&e, Error::CaFile { reason, .. } if reason.contains("not a valid X.509")),
            "{e}"
        );
        let e = CaCerts::from_pem_file("/nonexistent/ca.pem").unwrap_err();
        assert_eq!(
            e.to_string(),
            "cannot use the CA file /nonexistent/ca.pem: no such file; \
             give a PEM file of one or more certificates (-----BEGIN CERTIFICATE-----)"
        );
    }

    #[test]
    fn problems_read_well() {
        let p = CertificateProblem::of(&CertificateError::UnknownIssuer);
        assert_eq!(p, CertificateProblem::UnknownIssuer);
        assert!(p.hint().contains("--ca-file"));
        let p = CertificateProblem::of(&CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("a.example")
                .unwrap()
                .to_owned(),
            presented: vec![
                "DnsName(\"b.example\")".into(),
                "IpAddress(10.0.0.1)".into(),
            ],
        });
        assert_eq!(
            p.to_string(),
            "name mismatch (it was issued for b.example, 10.0.0.1)"
        );
        assert_eq!(bare_name("plain"), "plain");
    }
}
