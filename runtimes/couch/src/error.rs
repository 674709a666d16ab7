//! The crate's error type and its mapping to [`peerpouch::DbError`].

use peerpouch::DbError;

use crate::tls::CertificateProblem;

/// What went wrong talking to a CouchDB server.
///
/// Messages name the database by its URL without credentials. [`CouchClient`](crate::CouchClient)'s
/// [`Database`](peerpouch::Database) implementation reports these as [`DbError`]s (see the
/// `From` impl): server errors keep CouchDB's status, `error` and `reason`; an unreachable server
/// becomes [`DbError::Unavailable`]; a response that makes no sense becomes
/// [`DbError::BadResponse`].
///
/// ```
/// use peerpouch::DbError;
/// use peerpouch_couch::Error;
///
/// let e = Error::Status { status: 409, error: "conflict".into(), reason: "Document update conflict".into() };
/// assert_eq!(DbError::from(e), DbError::Conflict);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The database URL cannot be used.
    #[error("invalid database URL: {0}")]
    InvalidUrl(String),
    /// No connection could be made or kept: refused, reset, DNS failure, or a timeout.
    #[error("cannot reach {url}: {detail}; check the hub URL and that the server is running and reachable")]
    Unreachable {
        /// The URL (without credentials).
        url: String,
        /// What failed (`connection refused`, `timed out after connecting`, ...).
        detail: String,
    },
    /// TLS could not be set up (certificate, protocol).
    #[error("TLS with {url} failed: {detail}; check the URL scheme and the server's certificate")]
    Tls {
        /// The URL (without credentials).
        url: String,
        /// What rustls reported.
        detail: String,
    },
    /// The server's certificate was rejected: it names the host and why (unknown issuer,
    /// expired, name mismatch, ...), and says what to do.
    #[error("the certificate of {host} was rejected: {problem}; {hint}", hint = problem.hint())]
    Certificate {
        /// The URL (without credentials).
        url: String,
        /// `host[:port]` from the URL.
        host: String,
        /// Why.
        problem: CertificateProblem,
    },
    /// A file of CA certificates ([`CaCerts::from_pem_file`](crate::CaCerts::from_pem_file))
    /// cannot be used.
    #[error(
        "cannot use the CA file {path}: {reason}; give a PEM file of one or more certificates \
         (-----BEGIN CERTIFICATE-----)"
    )]
    CaFile {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// The server answered with an error status. `error` and `reason` come from CouchDB's JSON
    /// body, or are `http_error` and a short description when the body was not JSON.
    #[error("HTTP {status} {error}: {reason}")]
    Status {
        /// HTTP status.
        status: u16,
        /// CouchDB's `error` word.
        error: String,
        /// CouchDB's `reason`.
        reason: String,
    },
    /// A response body was larger than the configured cap.
    #[error(
        "response from {url} is larger than the {limit}-byte cap (ClientConfig::max_body_bytes)"
    )]
    BodyTooLarge {
        /// The URL (without credentials).
        url: String,
        /// The cap in bytes.
        limit: u64,
    },
    /// A line of a continuous feed was longer than the configured cap.
    #[error(
        "a _changes line is longer than the {limit}-byte cap (FollowerConfig::max_line_bytes)"
    )]
    LineTooLong {
        /// The cap in bytes.
        limit: usize,
    },
    /// The server's answer is not what the protocol says (bad JSON, wrong shape, broken HTTP).
    #[error("bad response from {url}: {detail}")]
    BadResponse {
        /// The URL (without credentials).
        url: String,
        /// What was wrong.
        detail: String,
    },
}

impl From<Error> for DbError {
    fn from(e: Error) -> DbError {
        match e {
            Error::Status {
                status,
                error,
                reason,
            } => DbError::from_couch(status, &error, &reason),
            Error::InvalidUrl(m) => DbError::BadRequest(m),
            e @ Error::CaFile { .. } => DbError::BadRequest(e.to_string()),
            e @ Error::Unreachable { .. } => DbError::Unavailable(e.to_string()),
            // A certificate or TLS setup problem does not fix itself: not transient (4xx), so
            // the replicator stops at once instead of retrying.
            e @ (Error::Tls { .. } | Error::Certificate { .. }) => DbError::Other {
                status: 495,
                error: "tls_error".into(),
                reason: e.to_string(),
            },
            e @ (Error::BodyTooLarge { .. }
            | Error::LineTooLong { .. }
            | Error::BadResponse { .. }) => DbError::BadResponse(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_to_db_errors() {
        let nf = Error::Status {
            status: 404,
            error: "not_found".into(),
            reason: "missing".into(),
        };
        assert_eq!(DbError::from(nf), DbError::NotFound("missing".into()));
        let down = Error::Unreachable {
            url: "http://127.0.0.1:1/db".into(),
            detail: "connection refused".into(),
        };
        let d = DbError::from(down);
        assert!(matches!(d, DbError::Unavailable(_)));
        assert!(d.is_transient());
        assert!(d.reason().contains("server is running"), "{d}");
        let big = Error::BodyTooLarge {
            url: "u".into(),
            limit: 10,
        };
        assert!(matches!(DbError::from(big), DbError::BadResponse(m) if m.contains("10-byte")));
    }
}
