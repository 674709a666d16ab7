//! One HTTP exchange on ureq: headers, timeouts, capped body reading and error mapping.

use std::io::Read;
use std::time::{Duration, Instant};

use ureq::http::{self, Method};

use crate::error::Error;
use crate::url::DbUrl;

/// Longest error body read (they are small JSON objects; anything longer is not one).
const MAX_ERROR_BODY: u64 = 64 * 1024;

/// A 2xx answer.
pub(crate) struct Raw {
    pub content_type: Option<String>,
    pub body: Vec<u8>,
}

/// Why an exchange did not produce a 2xx answer.
pub(crate) enum Fail {
    /// The request's own total deadline (`timeout_global`) expired.
    Deadline,
    /// Anything else.
    Err(Error),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Err(e)
    }
}

/// What software answers, as far as response headers tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ServerKind {
    /// No response seen yet.
    Unknown,
    /// `Server: CouchDB/...`.
    CouchDb,
    /// `X-Powered-By: Express`: express-pouchdb (pouchdb-server).
    ExpressPouchDb,
    /// Something else.
    Other,
}

impl ServerKind {
    fn of(headers: &http::HeaderMap) -> ServerKind {
        let has = |name: &str, needle: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| v.to_ascii_lowercase().contains(needle))
        };
        if has("x-powered-by", "express") {
            ServerKind::ExpressPouchDb
        } else if has("server", "couchdb") {
            ServerKind::CouchDb
        } else {
            ServerKind::Other
        }
    }
}

/// Per-request timeouts that override the agent's.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Deadlines {
    pub global: Option<Duration>,
    pub per_read: Option<Duration>,
}

/// What to send.
pub(crate) struct Exchange<'a> {
    pub method: Method,
    /// Path and query after the database URL (`""`, `/_changes?...`).
    pub path: &'a str,
    /// JSON body.
    pub body: Option<Vec<u8>>,
    pub deadlines: Option<Deadlines>,
    pub max_body: u64,
    /// Updated with what the response headers say about the server.
    pub server: &'a std::cell::Cell<ServerKind>,
}

pub(crate) fn run(agent: &ureq::Agent, url: &DbUrl, ex: Exchange<'_>) -> Result<Raw, Fail> {
    let started = Instant::now();
    let uri = url.join(ex.path);
    let shown = || shorten(&uri);
    let mut b = http::Request::builder()
        .method(ex.method.clone())
        .uri(&uri)
        .header("Accept", "application/json");
    if let Some(auth) = url.auth_header() {
        b = b.header("Authorization", auth);
    }
    let result = match ex.body {
        Some(body) => {
            let req = b
                .header("Content-Type", "application/json")
                .body(body)
                .map_err(|e| Error::InvalidUrl(format!("{}: {e}", shown())))?;
            send(agent, req, ex.deadlines)
        }
        None => {
            let req = b
                .body(())
                .map_err(|e| Error::InvalidUrl(format!("{}: {e}", shown())))?;
            send(agent, req, ex.deadlines)
        }
    };
    let resp = result.map_err(|e| map_ureq(e, url))?;
    let status = resp.status().as_u16();
    ex.server.set(ServerKind::of(resp.headers()));
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let ok = (200..300).contains(&status);
    let limit = if ok { ex.max_body } else { MAX_ERROR_BODY };
    let mut body = Vec::new();
    let read = resp
        .into_body()
        .into_with_config()
        .limit(u64::MAX)
        .reader()
        .take(limit.saturating_add(1))
        .read_to_end(&mut body);
    if let Err(e) = read {
        return Err(map_ureq(ureq::Error::from(e), url));
    }
    let too_long = body.len() as u64 > limit;
    tracing::debug!(
        method = %ex.method,
        url = %shown(),
        status,
        bytes = body.len(),
        ms = started.elapsed().as_millis() as u64,
        "couch request"
    );
    if ok {
        if too_long {
            return Err(Fail::Err(Error::BodyTooLarge {
                url: url.redacted().to_string(),
                limit,
            }));
        }
        return Ok(Raw { content_type, body });
    }
    body.truncate(limit as usize);
    Err(Fail::Err(status_error(status, &body)))
}

fn send<S: ureq::AsSendBody>(
    agent: &ureq::Agent,
    req: http::Request<S>,
    deadlines: Option<Deadlines>,
) -> Result<http::Response<ureq::Body>, ureq::Error> {
    match deadlines {
        None => agent.run(req),
        Some(d) => {
            let req = agent
                .configure_request(req)
                .timeout_global(d.global)
                .timeout_per_read(d.per_read)
                .build();
            agent.run(req)
        }
    }
}

/// `{"error","reason"}` from an error body, or `http_error` with a short description.
pub(crate) fn status_error(status: u16, body: &[u8]) -> Error {
    #[derive(serde::Deserialize)]
    struct Wire {
        error: serde_json::Value,
        #[serde(default)]
        reason: serde_json::Value,
    }
    let text = |v: serde_json::Value| match v {
        serde_json::Value::String(s) => s,
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    };
    match serde_json::from_slice::<Wire>(body) {
        Ok(w) => Error::Status {
            status,
            error: text(w.error),
            reason: text(w.reason),
        },
        Err(_) => Error::Status {
            status,
            error: "http_error".into(),
            reason: format!(
                "HTTP {status} {} with a non-JSON body ({} bytes{}): {:?}",
                http::StatusCode::from_u16(status)
                    .ok()
                    .and_then(|s| s.canonical_reason())
                    .unwrap_or(""),
                body.len(),
                if body.len() as u64 >= MAX_ERROR_BODY {
                    " or more"
                } else {
                    ""
                },
                prefix(body, 100),
            ),
        },
    }
}

/// The first `max` bytes of `b` as (lossy) text, for messages.
pub(crate) fn prefix(b: &[u8], max: usize) -> String {
    let cut = &b[..b.len().min(max)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if b.len() > max {
        s.push('…');
    }
    s
}

/// A URL for logs: long query strings cut.
fn shorten(uri: &str) -> String {
    if uri.len() <= 300 {
        return uri.to_string();
    }
    let mut end = 300;
    while !uri.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &uri[..end])
}

/// Maps a ureq failure to ours; the deadline of the request itself is told apart.
pub(crate) fn map_ureq(e: ureq::Error, url: &DbUrl) -> Fail {
    let u = || url.redacted().to_string();
    let unreachable = |detail: String| Error::Unreachable { url: u(), detail };
    Fail::Err(match e {
        ureq::Error::Timeout(ureq::Timeout::Global) => return Fail::Deadline,
        ureq::Error::Timeout(t) => unreachable(format!("timed out ({t})")),
        // rustls reports handshake and record errors as InvalidData I/O errors.
        ureq::Error::Io(io)
            if io.kind() == std::io::ErrorKind::InvalidData
                && url.redacted().starts_with("https://") =>
        {
            match crate::tls::rustls_in_io(&io) {
                Some(e) => crate::tls::rustls_error(e, url.redacted()),
                None => Error::Tls {
                    url: u(),
                    detail: io.to_string(),
                },
            }
        }
        ureq::Error::Io(io) => {
            use std::io::ErrorKind as K;
            let what = match io.kind() {
                K::ConnectionRefused => "connection refused".to_string(),
                K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                    "connection reset by the server".to_string()
                }
                K::UnexpectedEof => "the server closed the connection".to_string(),
                K::TimedOut | K::WouldBlock => "timed out".to_string(),
                K::NotConnected
                | K::AddrNotAvailable
                | K::NetworkUnreachable
                | K::HostUnreachable => format!("network error: {io}"),
                _ => format!("I/O error: {io}"),
            };
            unreachable(what)
        }
        ureq::Error::HostNotFound => unreachable("host not found (DNS)".into()),
        ureq::Error::ConnectionFailed => unreachable("connection failed".into()),
        ureq::Error::Tls(m) => Error::Tls {
            url: u(),
            detail: m.to_string(),
        },
        ureq::Error::Rustls(e) => crate::tls::rustls_error(&e, url.redacted()),
        ureq::Error::Pem(e) => Error::Tls {
            url: u(),
            detail: e.to_string(),
        },
        ureq::Error::TlsRequired => Error::Tls {
            url: u(),
            detail: "TLS required".into(),
        },
        ureq::Error::BodyExceedsLimit(limit) => Error::BodyTooLarge { url: u(), limit },
        ureq::Error::BadUri(m) => Error::InvalidUrl(m),
        ureq::Error::LargeResponseHeader(n, max) => Error::BadResponse {
            url: u(),
            detail: format!("response headers of {n} bytes exceed the {max}-byte limit"),
        },
        other => Error::BadResponse {
            url: u(),
            detail: other.to_string(),
        },
    })
}

/// Parses a 2xx JSON body.
pub(crate) fn parse<T: serde::de::DeserializeOwned>(
    url: &DbUrl,
    what: &str,
    body: &[u8],
) -> Result<T, Error> {
    serde_json::from_slice(body).map_err(|e| Error::BadResponse {
        url: url.redacted().to_string(),
        detail: format!("{what}: {e}; body starts {:?}", prefix(body, 120)),
    })
}
