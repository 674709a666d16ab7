//! ICE servers in the shape browsers take them (`RTCIceServer`), and their URLs.
//!
//! An [`IceServer`] is `{urls, username, credential}` exactly as in
//! `new RTCPeerConnection({iceServers: [...]})`; each URL is parsed into an [`IceServerUrl`]:
//! `stun:HOST[:PORT]`, `turn:HOST[:PORT][?transport=udp|tcp]`, with credentials either in the
//! server's `username`/`credential` or inline (`turn:USER:PASS@HOST:PORT`, a form some TURN
//! providers hand out). Host names stay names here: resolving them is IO, done by the runtime,
//! which hands the core [`ResolvedIceServer`]s.
//!
//! `turns:` (TURN over TLS) and `stuns:` are recognised and refused with
//! [`IceServerError::UnsupportedScheme`]: there is no TLS client in the core yet.

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// The default port of STUN and TURN over UDP and TCP (RFC 8489 §9, RFC 8656 §3.1).
pub const DEFAULT_PORT: u16 = 3478;

/// One ICE server, as `RTCIceServer`: one or more URLs sharing credentials.
///
/// ```
/// use peerpouch::reach::{IceServer, Transport};
///
/// let turn = IceServer::new("turn:turn.example.org:3478?transport=tcp").credentials("ann", "s3cret");
/// let urls = turn.parse().unwrap();
/// assert_eq!(urls[0].transport, Transport::Tcp);
/// assert_eq!(urls[0].username.as_deref(), Some("ann"));
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct IceServer {
    /// `stun:` / `turn:` URLs (a browser takes one string or a list; so does our JSON form).
    #[serde(deserialize_with = "one_or_many")]
    pub urls: Vec<String>,
    /// TURN user name (long-term credentials).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Urls {
        One(String),
        Many(Vec<String>),
    }
    Ok(match <Urls as serde::Deserialize>::deserialize(d)? {
        Urls::One(u) => vec![u],
        Urls::Many(v) => v,
    })
}

impl IceServer {
    /// A server with one URL and no credentials.
    ///
    /// ```
    /// let s = peerpouch::reach::IceServer::new("stun:127.0.0.1:3478");
    /// assert_eq!(s.urls, vec!["stun:127.0.0.1:3478".to_string()]);
    /// ```
    pub fn new(url: impl Into<String>) -> IceServer {
        IceServer {
            urls: vec![url.into()],
            username: None,
            credential: None,
        }
    }

    /// Sets the TURN credentials.
    ///
    /// ```
    /// let s = peerpouch::reach::IceServer::new("turn:127.0.0.1").credentials("u", "p");
    /// assert_eq!(s.credential.as_deref(), Some("p"));
    /// ```
    pub fn credentials(
        mut self,
        username: impl Into<String>,
        credential: impl Into<String>,
    ) -> Self {
        self.username = Some(username.into());
        self.credential = Some(credential.into());
        self
    }

    /// Parses every URL; inline credentials win over the server's own.
    ///
    /// # Errors
    /// The first URL that does not parse, or a `turn:` URL left without credentials.
    ///
    /// ```
    /// use peerpouch::reach::{IceServer, IceServerError};
    /// let s = IceServer::new("turn:127.0.0.1:3478");
    /// assert!(matches!(s.parse(), Err(IceServerError::MissingCredentials { .. })));
    /// ```
    pub fn parse(&self) -> Result<Vec<IceServerUrl>, IceServerError> {
        self.urls
            .iter()
            .map(|u| {
                let mut url = IceServerUrl::parse(u)?;
                if url.username.is_none() {
                    url.username.clone_from(&self.username);
                }
                if url.credential.is_none() {
                    url.credential.clone_from(&self.credential);
                }
                if url.kind == ServerKind::Turn
                    && (url.username.is_none() || url.credential.is_none())
                {
                    return Err(IceServerError::MissingCredentials { url: u.clone() });
                }
                Ok(url)
            })
            .collect()
    }
}

/// STUN (server-reflexive addresses) or TURN (relayed addresses, and server-reflexive ones too).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServerKind {
    /// `stun:`
    Stun,
    /// `turn:`
    Turn,
}

/// How we reach a STUN or TURN server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Transport {
    /// Datagrams from the node's UDP socket (the default).
    #[default]
    Udp,
    /// A TCP connection to the server, for networks that drop UDP (RFC 8656 §3.1; frames as
    /// in RFC 8656 §11.5 on the stream).
    Tcp,
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        })
    }
}

/// One parsed ICE server URL. `host` is a name or an address literal, not resolved.
///
/// ```
/// use peerpouch::reach::{IceServerUrl, ServerKind, Transport};
///
/// let u = IceServerUrl::parse("turn:bob:pw@[2001:db8::1]:5349?transport=udp").unwrap();
/// assert_eq!((u.kind, u.transport, u.port), (ServerKind::Turn, Transport::Udp, 5349));
/// assert_eq!(u.host, "2001:db8::1");
/// assert_eq!(u.username.as_deref(), Some("bob"));
/// assert_eq!(IceServerUrl::parse("stun:stun.example.org").unwrap().port, 3478);
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IceServerUrl {
    /// STUN or TURN.
    pub kind: ServerKind,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port (3478 when the URL has none).
    pub port: u16,
    /// UDP unless `?transport=tcp`.
    pub transport: Transport,
    /// TURN user name.
    pub username: Option<String>,
    /// TURN password.
    pub credential: Option<String>,
}

impl fmt::Debug for IceServerUrl {
    // Never print the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

impl fmt::Display for IceServerUrl {
    /// The URL without credentials (safe for logs and error messages).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.kind {
            ServerKind::Stun => "stun",
            ServerKind::Turn => "turn",
        };
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(f, "{scheme}:{host}:{}", self.port)?;
        if self.kind == ServerKind::Turn {
            write!(
                f,
                "?transport={}",
                self.transport.to_string().to_ascii_lowercase()
            )?;
        }
        Ok(())
    }
}

/// Why an ICE server URL was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IceServerError {
    /// Not `stun:` or `turn:`.
    #[error("{url:?} is not a stun: or turn: URL (for example stun:HOST:3478 or turn:HOST:3478?transport=udp)")]
    NotIceUrl {
        /// The URL.
        url: String,
    },
    /// `turns:` or `stuns:` (TLS), which this version cannot speak.
    #[error(
        "{url:?}: {scheme}: (over TLS) is not supported yet; use turn:HOST:PORT?transport=tcp"
    )]
    UnsupportedScheme {
        /// The URL.
        url: String,
        /// Its scheme.
        scheme: String,
    },
    /// The host or port is missing or malformed.
    #[error("{url:?} has a bad host or port: {why}")]
    BadAddress {
        /// The URL.
        url: String,
        /// What is wrong.
        why: &'static str,
    },
    /// A `transport` other than `udp` or `tcp`, or another query parameter.
    #[error("{url:?}: unknown query {query:?} (only transport=udp or transport=tcp)")]
    BadQuery {
        /// The URL.
        url: String,
        /// The query.
        query: String,
    },
    /// A TURN URL without a user name and password.
    #[error("{url:?} needs credentials: give --ice-username and --ice-credential, or write turn:USER:PASS@HOST:PORT")]
    MissingCredentials {
        /// The URL.
        url: String,
    },
}

impl IceServerUrl {
    /// Parses one URL (RFC 7064 / RFC 7065, plus inline `USER:PASS@`).
    ///
    /// # Errors
    /// [`IceServerError`] says which part is wrong.
    pub fn parse(url: &str) -> Result<IceServerUrl, IceServerError> {
        let err_addr = |why| IceServerError::BadAddress {
            url: redact(url),
            why,
        };
        let (scheme, rest) = url
            .split_once(':')
            .ok_or(IceServerError::NotIceUrl { url: redact(url) })?;
        let kind = match scheme.to_ascii_lowercase().as_str() {
            "stun" => ServerKind::Stun,
            "turn" => ServerKind::Turn,
            s @ ("turns" | "stuns") => {
                return Err(IceServerError::UnsupportedScheme {
                    url: redact(url),
                    scheme: s.to_string(),
                })
            }
            _ => return Err(IceServerError::NotIceUrl { url: redact(url) }),
        };
        // Browsers accept `stun://host` too, though the RFCs have no slashes.
        let rest = rest.strip_prefix("//").unwrap_or(rest);
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let mut transport = Transport::Udp;
        if let Some(q) = query {
            for pair in q.split('&').filter(|p| !p.is_empty()) {
                match pair.to_ascii_lowercase().as_str() {
                    "transport=udp" => transport = Transport::Udp,
                    "transport=tcp" => transport = Transport::Tcp,
                    _ => {
                        return Err(IceServerError::BadQuery {
                            url: redact(url),
                            query: pair.to_string(),
                        })
                    }
                }
            }
        }
        if kind == ServerKind::Stun && transport == Transport::Tcp {
            return Err(IceServerError::BadQuery {
                url: redact(url),
                query: "transport=tcp (STUN is queried over UDP; use a turn: URL for TCP)".into(),
            });
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (username, credential) = match userinfo {
            Some(u) => {
                let (name, pass) = u.split_once(':').ok_or(IceServerError::BadAddress {
                    url: redact(url),
                    why: "inline credentials must be USER:PASS@",
                })?;
                (Some(percent_decode(name)), Some(percent_decode(pass)))
            }
            None => (None, None),
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6
                .split_once(']')
                .ok_or(err_addr("unclosed [ of an IPv6 address"))?;
            let port = match after {
                "" => DEFAULT_PORT,
                p => p
                    .strip_prefix(':')
                    .ok_or(err_addr("junk after the IPv6 address"))?
                    .parse()
                    .map_err(|_| err_addr("the port is not a number from 1 to 65535"))?,
            };
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(err_addr("not an IPv6 address inside [ ]"));
            }
            (h.to_string(), port)
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse()
                        .map_err(|_| err_addr("the port is not a number from 1 to 65535"))?,
                ),
                None => (hostport.to_string(), DEFAULT_PORT),
            }
        };
        if port == 0 {
            return Err(err_addr("the port is not a number from 1 to 65535"));
        }
        if host.is_empty()
            || host.contains(['/', ' ', '@', '[', ']'])
            || (host.contains(':') && host.parse::<std::net::Ipv6Addr>().is_err())
        {
            return Err(err_addr("the host is missing or malformed"));
        }
        Ok(IceServerUrl {
            kind,
            host,
            port,
            transport,
            username,
            credential,
        })
    }

    /// The host as an IP address, when it is a literal (no resolution needed).
    ///
    /// ```
    /// let u = peerpouch::reach::IceServerUrl::parse("stun:192.0.2.1:3478").unwrap();
    /// assert_eq!(u.ip_addr(), Some("192.0.2.1:3478".parse().unwrap()));
    /// ```
    pub fn ip_addr(&self) -> Option<SocketAddr> {
        self.host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, self.port))
    }

    /// Parses a comma-separated list, as `PEERPOUCH_ICE_SERVERS` holds it, giving URLs without
    /// inline credentials `username` and `credential`.
    ///
    /// # Errors
    /// The first URL that is refused.
    ///
    /// ```
    /// use peerpouch::reach::IceServerUrl;
    /// let all = IceServerUrl::parse_list("stun:127.0.0.1, turn:127.0.0.1?transport=tcp", Some("u"), Some("p")).unwrap();
    /// assert_eq!(all.len(), 2);
    /// assert_eq!(all[1].credential.as_deref(), Some("p"));
    /// ```
    pub fn parse_list(
        list: &str,
        username: Option<&str>,
        credential: Option<&str>,
    ) -> Result<Vec<IceServerUrl>, IceServerError> {
        let server = IceServer {
            urls: list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(String::from)
                .collect(),
            username: username.map(String::from),
            credential: credential.map(String::from),
        };
        server.parse()
    }

    /// With the host resolved to `addr`: what the core's gatherer takes.
    ///
    /// ```
    /// let u = peerpouch::reach::IceServerUrl::parse("stun:127.0.0.1:3478").unwrap();
    /// let r = u.clone().resolved(u.ip_addr().unwrap());
    /// assert_eq!(r.addr.port(), 3478);
    /// ```
    pub fn resolved(self, addr: SocketAddr) -> ResolvedIceServer {
        ResolvedIceServer { url: self, addr }
    }
}

/// An ICE server whose host the runtime resolved.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResolvedIceServer {
    /// What the user gave (host name, credentials).
    pub url: IceServerUrl,
    /// Where to send.
    pub addr: SocketAddr,
}

/// Which candidates may leave the machine, as `RTCConfiguration.iceTransportPolicy`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IceTransportPolicy {
    /// Host, server-reflexive and relayed candidates (the default).
    #[default]
    All,
    /// Relayed candidates only: the peer never learns our addresses, only the TURN server's.
    Relay,
}

/// `user:pass@` stripped from a URL, for error messages.
fn redact(url: &str) -> String {
    match (url.find(':'), url.rfind('@')) {
        (Some(c), Some(at)) if at > c => format!("{}:***@{}", &url[..c], &url[at + 1..]),
        _ => url.to_string(),
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("");
            if let Ok(v) = u8::from_str_radix(hex, 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_like_browsers_take_them() {
        let u = IceServerUrl::parse("turn:127.0.0.1:3478?transport=tcp").unwrap();
        assert_eq!(u.kind, ServerKind::Turn);
        assert_eq!(u.transport, Transport::Tcp);
        assert_eq!(u.ip_addr(), Some("127.0.0.1:3478".parse().unwrap()));
        assert_eq!(u.to_string(), "turn:127.0.0.1:3478?transport=tcp");

        let u = IceServerUrl::parse("TURN:a%40b:p%3Aw@turn.example.org").unwrap();
        assert_eq!(u.username.as_deref(), Some("a@b"));
        assert_eq!(u.credential.as_deref(), Some("p:w"));
        assert_eq!(u.port, 3478);
        assert_eq!(u.transport, Transport::Udp);
        assert!(
            !format!("{u:?}").contains("p:w"),
            "Debug never shows the password"
        );

        let u = IceServerUrl::parse("stun:[::1]").unwrap();
        assert_eq!(u.ip_addr(), Some("[::1]:3478".parse().unwrap()));
        assert_eq!(u.to_string(), "stun:[::1]:3478");
        assert_eq!(
            IceServerUrl::parse("stun://h:1").unwrap().host,
            "h",
            "slashes are tolerated"
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        let e = |u: &str| IceServerUrl::parse(u).unwrap_err();
        assert!(matches!(e("http://x"), IceServerError::NotIceUrl { .. }));
        assert!(matches!(e("nothing"), IceServerError::NotIceUrl { .. }));
        assert!(matches!(
            e("turns:x:5349"),
            IceServerError::UnsupportedScheme { .. }
        ));
        assert!(matches!(e("stun:x:0"), IceServerError::BadAddress { .. }));
        assert!(matches!(
            e("stun:x:99999"),
            IceServerError::BadAddress { .. }
        ));
        assert!(matches!(e("stun::3478"), IceServerError::BadAddress { .. }));
        assert!(matches!(e("stun:[::1"), IceServerError::BadAddress { .. }));
        assert!(matches!(
            e("stun:[nope]:1"),
            IceServerError::BadAddress { .. }
        ));
        assert!(matches!(e("stun:a:b:c"), IceServerError::BadAddress { .. }));
        assert!(matches!(e("turn:u@x"), IceServerError::BadAddress { .. }));
        assert!(matches!(
            e("turn:x?transport=sctp"),
            IceServerError::BadQuery { .. }
        ));
        assert!(matches!(
            e("stun:x?transport=tcp"),
            IceServerError::BadQuery { .. }
        ));
        let msg = e("turn:user:hunter2@x:bad").to_string();
        assert!(!msg.contains("hunter2"), "{msg}");
    }

    #[test]
    fn credentials_come_inline_or_from_the_server() {
        let s = IceServer {
            urls: vec![
                "turn:a:1?transport=udp".into(),
                "turn:x:y@b:2?transport=tcp".into(),
                "stun:c".into(),
            ],
            username: Some("u".into()),
            credential: Some("p".into()),
        };
        let urls = s.parse().unwrap();
        assert_eq!(urls[0].username.as_deref(), Some("u"));
        assert_eq!(urls[1].username.as_deref(), Some("x"));
        assert_eq!(urls[1].credential.as_deref(), Some("y"));
        assert_eq!(urls[2].kind, ServerKind::Stun);
        let bare = IceServer::new("turn:a");
        assert!(matches!(
            bare.parse(),
            Err(IceServerError::MissingCredentials { .. })
        ));
    }

    #[test]
    fn rtc_ice_server_json_shape() {
        let one: IceServer = serde_json::from_str(r#"{"urls": "stun:127.0.0.1:3478"}"#).unwrap();
        assert_eq!(one.urls.len(), 1);
        let many: IceServer = serde_json::from_str(
            r#"{"urls": ["turn:h?transport=udp", "turn:h?transport=tcp"], "username": "u", "credential": "p"}"#,
        )
        .unwrap();
        assert_eq!(many.parse().unwrap().len(), 2);
    }
}
