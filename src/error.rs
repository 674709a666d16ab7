//! CouchDB-shaped database errors.

use serde::{Deserialize, Serialize};

/// An error from a database operation, shaped like CouchDB's `{error, reason}` with an HTTP status.
///
/// Every store (memory, remote peer, CouchDB over HTTP) reports failures with this one type, so
/// callers and the replicator treat them alike. [`DbError::status`], [`DbError::error`] and
/// [`DbError::reason`] give the CouchDB triple; [`DbError::from_couch`] maps one back.
///
/// ```
/// use peerpouch::DbError;
/// let e = DbError::Conflict;
/// assert_eq!((e.status(), e.error()), (409, "conflict"));
/// assert_eq!(DbError::from_couch(409, "conflict", "Document update conflict."), e);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(into = "CouchError", from = "CouchError")]
#[non_exhaustive]
pub enum DbError {
    /// 404: no such document, revision or attachment. The reason is `missing` or `deleted`
    /// (CouchDB's words); read the document's id and rev again before retrying.
    #[error("not_found: {0}")]
    NotFound(String),
    /// 409: the `_rev` given is not a current leaf. Fetch the latest revision and re-apply the edit.
    #[error("conflict: Document update conflict.")]
    Conflict,
    /// 400: the request or a document in it is malformed; the reason names what to fix.
    #[error("bad_request: {0}")]
    BadRequest(String),
    /// 400: a document id that CouchDB would refuse (empty, or `_`-prefixed but not `_design/` or `_local/`).
    #[error("illegal_docid: {0}")]
    IllegalDocId(String),
    /// 400: a document body breaks CouchDB's rules (an unknown `_`-field, a bad attachment).
    #[error("doc_validation: {0}")]
    DocValidation(String),
    /// 412: an attachment stub refers to an attachment the database does not have; send its data.
    #[error("missing_stub: {0}")]
    MissingStub(String),
    /// 403: the database refuses this operation (read-only share, `destroy`).
    #[error("forbidden: {0}")]
    Forbidden(String),
    /// 401: credentials are missing or wrong.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// 501: the endpoint does not implement this operation.
    #[error("not_implemented: {0}")]
    NotImplemented(String),
    /// 503: the endpoint could not be reached (link down, timeout); transient, worth a retry.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// 502: the endpoint answered with something that is not a valid response to the request.
    #[error("bad_response: {0}")]
    BadResponse(String),
    /// Any other CouchDB error, kept verbatim.
    #[error("{error} ({status}): {reason}")]
    Other {
        /// HTTP status.
        status: u16,
        /// CouchDB's `error` word.
        error: String,
        /// CouchDB's `reason` text.
        reason: String,
    },
}

impl DbError {
    /// The HTTP status CouchDB would answer with.
    pub fn status(&self) -> u16 {
        match self {
            DbError::NotFound(_) => 404,
            DbError::Conflict => 409,
            DbError::BadRequest(_) | DbError::IllegalDocId(_) | DbError::DocValidation(_) => 400,
            DbError::MissingStub(_) => 412,
            DbError::Forbidden(_) => 403,
            DbError::Unauthorized(_) => 401,
            DbError::NotImplemented(_) => 501,
            DbError::Unavailable(_) => 503,
            DbError::BadResponse(_) => 502,
            DbError::Other { status, .. } => *status,
        }
    }

    /// CouchDB's `error` word (`not_found`, `conflict`, ...).
    pub fn error(&self) -> &str {
        match self {
            DbError::NotFound(_) => "not_found",
            DbError::Conflict => "conflict",
            DbError::BadRequest(_) => "bad_request",
            DbError::IllegalDocId(_) => "illegal_docid",
            DbError::DocValidation(_) => "doc_validation",
            DbError::MissingStub(_) => "missing_stub",
            DbError::Forbidden(_) => "forbidden",
            DbError::Unauthorized(_) => "unauthorized",
            DbError::NotImplemented(_) => "not_implemented",
            DbError::Unavailable(_) => "unavailable",
            DbError::BadResponse(_) => "bad_response",
            DbError::Other { error, .. } => error,
        }
    }

    /// CouchDB's human-readable `reason`.
    pub fn reason(&self) -> &str {
        match self {
            DbError::Conflict => "Document update conflict.",
            DbError::NotFound(r)
            | DbError::BadRequest(r)
            | DbError::IllegalDocId(r)
            | DbError::DocValidation(r)
            | DbError::MissingStub(r)
            | DbError::Forbidden(r)
            | DbError::Unauthorized(r)
            | DbError::NotImplemented(r)
            | DbError::Unavailable(r)
            | DbError::BadResponse(r) => r,
            DbError::Other { reason, .. } => reason,
        }
    }

    /// Whether retrying the same request later may succeed (5xx, 408, 429, unreachable).
    pub fn is_transient(&self) -> bool {
        let s = self.status();
        s >= 500 && !matches!(self, DbError::NotImplemented(_)) || s == 408 || s == 429
    }

    /// Builds the typed error from CouchDB's status, `error` and `reason`.
    pub fn from_couch(status: u16, error: &str, reason: &str) -> DbError {
        let r = reason.to_string();
        match (status, error) {
            (404, _) => DbError::NotFound(r),
            (409, "conflict") => DbError::Conflict,
            (400, "bad_request") => DbError::BadRequest(r),
            (400, "illegal_docid") => DbError::IllegalDocId(r),
            (400, "doc_validation") => DbError::DocValidation(r),
            (412, "missing_stub") => DbError::MissingStub(r),
            (403, "forbidden") => DbError::Forbidden(r),
            (401, "unauthorized") => DbError::Unauthorized(r),
            (501, "not_implemented") => DbError::NotImplemented(r),
            (503, "unavailable") => DbError::Unavailable(r),
            (502, "bad_response") => DbError::BadResponse(r),
            _ => DbError::Other {
                status,
                error: error.to_string(),
                reason: r,
            },
        }
    }
}

/// The wire form of a [`DbError`]: `{"status": 409, "error": "conflict", "reason": "..."}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CouchError {
    /// HTTP status.
    pub status: u16,
    /// CouchDB's `error` word.
    pub error: String,
    /// CouchDB's `reason` text.
    #[serde(default)]
    pub reason: String,
}

impl From<DbError> for CouchError {
    fn from(e: DbError) -> Self {
        CouchError {
            status: e.status(),
            error: e.error().to_string(),
            reason: e.reason().to_string(),
        }
    }
}

impl From<CouchError> for DbError {
    fn from(e: CouchError) -> Self {
        DbError::from_couch(e.status, &e.error, &e.reason)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_variant_round_trips_through_the_couch_triple() {
        let all = [
            DbError::NotFound("missing".into()),
            DbError::Conflict,
            DbError::BadRequest("x".into()),
            DbError::IllegalDocId("x".into()),
            DbError::DocValidation("x".into()),
            DbError::MissingStub("x".into()),
            DbError::Forbidden("x".into()),
            DbError::Unauthorized("x".into()),
            DbError::NotImplemented("x".into()),
            DbError::Unavailable("x".into()),
            DbError::BadResponse("x".into()),
            DbError::Other {
                status: 418,
                error: "teapot".into(),
                reason: "short".into(),
            },
        ];
        for e in all {
            let json = serde_json::to_string(&e).unwrap();
            let back: DbError = serde_json::from_str(&json).unwrap();
            assert_eq!(back, e, "{json}");
        }
        assert!(DbError::Unavailable("x".into()).is_transient());
        assert!(!DbError::Conflict.is_transient());
        assert!(!DbError::NotImplemented("x".into()).is_transient());
    }
}
