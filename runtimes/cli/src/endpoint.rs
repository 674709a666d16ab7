//! What a `SOURCE`/`TARGET` argument names: a local database file, a CouchDB database over
//! HTTP(S), or a share on a hub (`peer+http(s)://host/hubdb#share`).

use std::path::PathBuf;

/// A parsed database argument.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A local database file (SQLite), created if missing.
    Path(PathBuf),
    /// A CouchDB database URL (`http://user:pass@host:5984/db`).
    Http(String),
    /// A share on a hub: the hub database's URL and the share's id or name.
    Peer {
        /// The hub database (`http(s)://...`).
        hub: String,
        /// A share id (`share-...`) or name.
        share: String,
    },
}

/// Why an argument is not a database.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// `peer+` URLs name the share after `#`.
    #[error("{0:?} names no share: write peer+http://host:port/hubdb#SHARE (a share id or name)")]
    NoShare(String),
    /// Only `http`, `https`, `peer+http` and `peer+https` URLs are understood.
    #[error("{0:?}: unsupported URL scheme (use http(s):// for CouchDB, peer+http(s):// for a share, or a file path)")]
    Scheme(String),
    /// Empty argument.
    #[error("an empty database argument")]
    Empty,
}

impl Endpoint {
    /// Parses a `SOURCE`/`TARGET` argument.
    ///
    /// ```
    /// use peerpouch_cli::endpoint::Endpoint;
    ///
    /// assert_eq!(
    ///     Endpoint::parse("peer+http://127.0.0.1:5984/hub#notes").unwrap(),
    ///     Endpoint::Peer { hub: "http://127.0.0.1:5984/hub".into(), share: "notes".into() }
    /// );
    /// assert!(matches!(Endpoint::parse("https://h/db").unwrap(), Endpoint::Http(_)));
    /// assert!(matches!(Endpoint::parse("./notes.db").unwrap(), Endpoint::Path(_)));
    /// ```
    ///
    /// # Errors
    /// [`EndpointError`].
    pub fn parse(arg: &str) -> Result<Endpoint, EndpointError> {
        if arg.is_empty() {
            return Err(EndpointError::Empty);
        }
        if let Some(rest) = arg.strip_prefix("peer+") {
            if !(rest.starts_with("http://") || rest.starts_with("https://")) {
                return Err(EndpointError::Scheme(arg.to_string()));
            }
            return match rest.split_once('#') {
                Some((hub, share)) if !share.is_empty() && !hub.is_empty() => Ok(Endpoint::Peer {
                    hub: hub.to_string(),
                    share: percent_decode(share),
                }),
                _ => Err(EndpointError::NoShare(arg.to_string())),
            };
        }
        if arg.starts_with("http://") || arg.starts_with("https://") {
            return Ok(Endpoint::Http(arg.to_string()));
        }
        if let Some((scheme, _)) = arg.split_once("://") {
            if !scheme.contains(['/', '\\']) {
                return Err(EndpointError::Scheme(arg.to_string()));
            }
        }
        Ok(Endpoint::Path(PathBuf::from(arg)))
    }
}

/// `%20` and friends in a share name after `#`; anything malformed stays as written.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_kind_and_refuses_the_rest() {
        assert_eq!(
            Endpoint::parse("peer+https://u:p@h/hub#share-0123").unwrap(),
            Endpoint::Peer {
                hub: "https://u:p@h/hub".into(),
                share: "share-0123".into()
            }
        );
        assert_eq!(
            Endpoint::parse("peer+http://h/hub#my%20notes").unwrap(),
            Endpoint::Peer {
                hub: "http://h/hub".into(),
                share: "my notes".into()
            }
        );
        assert_eq!(
            Endpoint::parse("peer+http://h/hub#bad%zz%4").unwrap(),
            Endpoint::Peer {
                hub: "http://h/hub".into(),
                share: "bad%zz%4".into()
            }
        );
        assert!(matches!(
            Endpoint::parse("peer+http://h/hub"),
            Err(EndpointError::NoShare(_))
        ));
        assert!(matches!(
            Endpoint::parse("peer+http://h/hub#"),
            Err(EndpointError::NoShare(_))
        ));
        assert!(matches!(
            Endpoint::parse("peer+ftp://h/hub#x"),
            Err(EndpointError::Scheme(_))
        ));
        assert!(matches!(
            Endpoint::parse("ftp://h/db"),
            Err(EndpointError::Scheme(_))
        ));
        assert_eq!(
            Endpoint::parse("http://h:5984/db").unwrap(),
            Endpoint::Http("http://h:5984/db".into())
        );
        assert_eq!(
            Endpoint::parse("dir/with://odd.db").unwrap(),
            Endpoint::Path("dir/with://odd.db".into())
        );
        assert_eq!(Endpoint::parse(""), Err(EndpointError::Empty));
    }
}
