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
    percent_encoding::percent_decode_str(s)
        .decode_utf8()
        .map_or_else(|_| s.to_string(), |d| d.into_owned())
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

    /// The hub part of a `peer+` URL is a database URL as `DbUrl` reads it: IPv6 hosts,
    /// ports, percent-encoded credentials and trailing slashes included.
    #[test]
    fn peer_urls_name_a_hub_database_and_a_share() {
        let cases = [
            (
                "peer+http://[::1]:5984/hub#notes",
                "http://[::1]:5984/hub",
                "notes",
            ),
            (
                "peer+https://[2001:db8::1]/couch/hub/#share-00ff",
                "https://[2001:db8::1]/couch/hub",
                "share-00ff",
            ),
            (
                "peer+http://us%40er:p%3Ass@127.0.0.1:5984/hub#caf%C3%A9",
                "http://127.0.0.1:5984/hub",
                "café",
            ),
            ("peer+https://h:6984/hub//#a#b", "https://h:6984/hub", "a#b"),
            ("peer+http://h/hub#%ff", "http://h/hub", "%ff"),
        ];
        for (arg, hub_base, share_name) in cases {
            let Endpoint::Peer { hub, share } = Endpoint::parse(arg).unwrap() else {
                panic!("{arg}: not a peer URL");
            };
            assert_eq!(share, share_name, "{arg}");
            let db = peerpouch_couch::DbUrl::parse(&hub).unwrap_or_else(|e| panic!("{arg}: {e}"));
            assert_eq!(db.redacted(), hub_base, "{arg}");
            assert_eq!(db.db_name(), "hub", "{arg}");
        }
        let with_creds = Endpoint::parse("peer+http://us%40er:p%3Ass@[::1]:5984/hub#x").unwrap();
        let Endpoint::Peer { hub, .. } = with_creds else {
            panic!("not a peer URL")
        };
        assert!(peerpouch_couch::DbUrl::parse(&hub)
            .unwrap()
            .has_credentials());
        for arg in ["peer+http://[::1]:5984/#x", "peer+http://h:99999/hub#x"] {
            let Endpoint::Peer { hub, .. } = Endpoint::parse(arg).unwrap() else {
                panic!("{arg}: not a peer URL");
            };
            assert!(peerpouch_couch::DbUrl::parse(&hub).is_err(), "{arg}");
        }
    }
}
