//! Database URLs: parsing, credentials kept apart, and percent-encoding of path parts.

use base64::Engine;
use percent_encoding::{percent_decode_str, utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use url::Url;

use crate::error::Error;

/// A parsed database URL: where the database is, and the credentials to send (if any).
///
/// The credentials never appear in [`DbUrl::redacted`], in `Debug` output or in errors; they only
/// become an `Authorization: Basic` header.
///
/// ```
/// use peerpouch_couch::DbUrl;
/// let url = DbUrl::parse("http://admin:s%40cret@127.0.0.1:5984/my_db/").unwrap();
/// assert_eq!(url.redacted(), "http://127.0.0.1:5984/my_db");
/// assert_eq!(url.db_name(), "my_db");
/// assert!(url.has_credentials());
/// assert!(!format!("{url:?}").contains("cret"));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DbUrl {
    /// `http://host:port/path/db`, no credentials, no trailing slash.
    base: String,
    db_name: String,
    /// The `Authorization` header value.
    auth: Option<String>,
}

impl std::fmt::Debug for DbUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DbUrl")
            .field("url", &self.base)
            .field("credentials", &self.auth.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl DbUrl {
    /// Parses `http(s)://[user[:password]@]host[:port]/[prefix/]db`.
    ///
    /// The user and password may be percent-encoded (`%40` for `@`). The last path segment is
    /// the database name, used as is (percent-encode `/` in it as `%2F` yourself).
    ///
    /// ```
    /// use peerpouch_couch::DbUrl;
    /// assert!(DbUrl::parse("http://127.0.0.1:5984/db").is_ok());
    /// assert!(DbUrl::parse("ftp://127.0.0.1/db").is_err());
    /// assert!(DbUrl::parse("http://127.0.0.1:5984/").is_err());
    /// ```
    ///
    /// # Errors
    /// [`Error::InvalidUrl`] for another scheme, no host, no database name, a query or fragment,
    /// or credentials that do not percent-decode to UTF-8. The message never contains the
    /// credentials.
    pub fn parse(url: &str) -> Result<DbUrl, Error> {
        let bad = |why: &str| Error::InvalidUrl(format!("{why} (in {})", redact_raw(url)));
        let mut parsed = Url::parse(url.trim()).map_err(|e| match e {
            url::ParseError::RelativeUrlWithoutBase => bad("expected http:// or https://"),
            url::ParseError::EmptyHost => bad("no host"),
            e => bad(&e.to_string()),
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(bad("expected http:// or https://"));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(bad("a database URL takes no query or fragment"));
        }
        if parsed.host().is_none() {
            return Err(bad("no host"));
        }
        let auth = match (parsed.username(), parsed.password()) {
            ("", None) => None,
            (user, pass) => {
                let user = percent_decode(user).ok_or_else(|| bad("bad user name encoding"))?;
                let pass = percent_decode(pass.unwrap_or(""))
                    .ok_or_else(|| bad("bad password encoding"))?;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                Some(format!("Basic {token}"))
            }
        };
        // Neither fails on an http(s) URL with a host.
        let (_, _) = (parsed.set_username(""), parsed.set_password(None));
        let base = parsed.as_str().trim_end_matches('/').to_string();
        let db_name = parsed
            .path()
            .trim_end_matches('/')
            .rsplit('/')
            .next()
            .unwrap_or("")
            .to_string();
        if db_name.is_empty() {
            return Err(bad("no database name in the path"));
        }
        Ok(DbUrl {
            base,
            db_name,
            auth,
        })
    }

    /// The URL without credentials, for logs, errors and replication ids.
    ///
    /// ```
    /// let u = peerpouch_couch::DbUrl::parse("http://a:b@127.0.0.1:5984/db").unwrap();
    /// assert_eq!(u.redacted(), "http://127.0.0.1:5984/db");
    /// ```
    pub fn redacted(&self) -> &str {
        &self.base
    }

    /// The database name (the last path segment, as written in the URL).
    ///
    /// ```
    /// let u = peerpouch_couch::DbUrl::parse("https://example.com/couch/notes").unwrap();
    /// assert_eq!(u.db_name(), "notes");
    /// ```
    pub fn db_name(&self) -> &str {
        &self.db_name
    }

    /// Whether the URL carried credentials.
    ///
    /// ```
    /// let u = peerpouch_couch::DbUrl::parse("http://127.0.0.1:5984/db").unwrap();
    /// assert!(!u.has_credentials());
    /// ```
    pub fn has_credentials(&self) -> bool {
        self.auth.is_some()
    }

    pub(crate) fn auth_header(&self) -> Option<&str> {
        self.auth.as_deref()
    }

    /// `base` + `path_and_query` (which starts with `/` or `?`, or is empty).
    pub(crate) fn join(&self, path_and_query: &str) -> String {
        format!("{}{}", self.base, path_and_query)
    }
}

/// Removes `user:password@` from a URL-looking string, for error messages.
fn redact_raw(url: &str) -> String {
    match Url::parse(url.trim()) {
        Ok(mut u) if u.has_host() => {
            let (_, _) = (u.set_username(""), u.set_password(None));
            u.as_str().chars().take(200).collect()
        }
        // Not URL-shaped: whatever it is may hold a secret; show only its length.
        _ => format!("<{} characters>", url.len()),
    }
}

/// Decodes `%XX` escapes; `None` if an escape is broken or the result is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    // The crate's decoder keeps a broken escape as written; a credential with one is a typo
    // better refused than sent.
    let broken = s.match_indices('%').any(|(i, _)| {
        s.as_bytes()
            .get(i + 1..i + 3)
            .is_none_or(|h| !h.iter().all(u8::is_ascii_hexdigit))
    });
    if broken {
        return None;
    }
    percent_decode_str(s)
        .decode_utf8()
        .ok()
        .map(|c| c.into_owned())
}

/// Everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
const NOT_UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Percent-encodes everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
pub(crate) fn encode(s: &str) -> String {
    utf8_percent_encode(s, NOT_UNRESERVED).to_string()
}

/// A document id as a path segment: `_design/` and `_local/` keep their slash, the rest is
/// percent-encoded (so `a/b` becomes `a%2Fb`).
pub(crate) fn encode_doc_id(id: &str) -> String {
    for prefix in ["_design/", "_local/"] {
        if let Some(rest) = id.strip_prefix(prefix) {
            return format!("{prefix}{}", encode(rest));
        }
    }
    encode(id)
}

/// Builds `?k=v&k2=v2` (values percent-encoded), or `""` when there are no pairs.
#[derive(Default)]
pub(crate) struct Query(String);

impl Query {
    pub(crate) fn new() -> Query {
        Query::default()
    }

    pub(crate) fn push(&mut self, key: &str, value: &str) -> &mut Query {
        self.0.push(if self.0.is_empty() { '?' } else { '&' });
        self.0.push_str(key);
        self.0.push('=');
        self.0.push_str(&encode(value));
        self
    }

    /// `key=true` when `flag` is set.
    pub(crate) fn flag(&mut self, key: &str, flag: bool) -> &mut Query {
        if flag {
            self.push(key, "true");
        }
        self
    }

    /// `key=<JSON of value>`.
    pub(crate) fn json(&mut self, key: &str, value: &impl serde::Serialize) -> &mut Query {
        let s = serde_json::to_string(value).unwrap_or_else(|_| "null".into());
        self.push(key, &s)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_are_split_off_and_never_shown() {
        let u = DbUrl::parse("https://us%3Aer:p%40ss@example.com:6984/pre/fix/db%2Fx/").unwrap();
        assert_eq!(u.redacted(), "https://example.com:6984/pre/fix/db%2Fx");
        assert_eq!(u.db_name(), "db%2Fx");
        let expected = base64::engine::general_purpose::STANDARD.encode("us:er:p@ss");
        assert_eq!(u.auth_header(), Some(format!("Basic {expected}").as_str()));
        let e = DbUrl::parse("http://user:hunter2@host").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = DbUrl::parse("http://user:hunter2@host/db?x=1").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = DbUrl::parse("user:hunter2").unwrap_err();
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = DbUrl::parse("http://u:%zz@host/db").unwrap_err();
        assert!(!e.to_string().contains("%zz"), "{e}");
    }

    #[test]
    fn hosts_ports_and_trailing_slashes() {
        let cases = [
            ("http://[::1]:5984/hub", "http://[::1]:5984/hub", "hub"),
            ("http://[::1]/hub/", "http://[::1]/hub", "hub"),
            (
                "https://[2001:db8::7]:6984/a/b//",
                "https://[2001:db8::7]:6984/a/b",
                "b",
            ),
            ("http://127.0.0.1:5984/db", "http://127.0.0.1:5984/db", "db"),
            ("http://127.0.0.1:80/db", "http://127.0.0.1/db", "db"),
            ("https://example.org:443/db", "https://example.org/db", "db"),
            (
                "http://Example.ORG:8080/db/",
                "http://example.org:8080/db",
                "db",
            ),
            ("HTTP://h/db", "http://h/db", "db"),
            ("  http://h/db  ", "http://h/db", "db"),
            (
                "http://h/couch/my%20db",
                "http://h/couch/my%20db",
                "my%20db",
            ),
        ];
        for (url, base, db) in cases {
            let u = DbUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!((u.redacted(), u.db_name()), (base, db), "{url}");
            assert!(!u.has_credentials(), "{url}");
        }
        for url in [
            "http://[::1]:5984/",
            "http://[::1]:5984",
            "http://[::1/db",
            "http://h:99999/db",
            "http:///db",
            "ftp://h/db",
            "h/db",
            "http://h/db#frag",
            "http://h/db?q",
        ] {
            assert!(DbUrl::parse(url).is_err(), "{url}");
        }
    }

    #[test]
    fn percent_encoded_users_and_passwords() {
        let basic = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        let cases = [
            ("http://admin:s%40cret@[::1]:5984/hub", "admin:s@cret"),
            ("http://a%20b:p%3Aq%2F%25@h/db", "a b:p:q/%"),
            ("http://%C3%A9l%C3%A8ve:x@h/db", "élève:x"),
            ("http://user@h/db", "user:"),
            ("http://user:@h/db", "user:"),
            ("http://:pw@h/db", ":pw"),
        ];
        for (url, creds) in cases {
            let u = DbUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(u.auth_header(), Some(basic(creds).as_str()), "{url}");
            assert!(!u.redacted().contains('@'), "{url}: {}", u.redacted());
        }
        for url in ["http://u:%zz@h/db", "http://u:%4@h/db", "http://%ff:x@h/db"] {
            let e = DbUrl::parse(url).unwrap_err().to_string();
            assert!(!e.contains("%zz") && !e.contains("%ff"), "{e}");
        }
    }

    #[test]
    fn encoding() {
        assert_eq!(encode("a b/c?d&é"), "a%20b%2Fc%3Fd%26%C3%A9");
        assert_eq!(encode_doc_id("_design/x/y"), "_design/x%2Fy");
        assert_eq!(encode_doc_id("_local/ck 1"), "_local/ck%201");
        assert_eq!(encode_doc_id("a/b"), "a%2Fb");
        assert_eq!(encode_doc_id("_designer"), "_designer");
        let mut q = Query::new();
        q.flag("revs", true).flag("no", false).json("k", &"a\"b");
        assert_eq!(q.as_str(), "?revs=true&k=%22a%5C%22b%22");
        assert_eq!(percent_decode("a%2fb%41").as_deref(), Some("a/bA"));
        assert_eq!(percent_decode("%4"), None);
        assert_eq!(percent_decode("%ff"), None);
    }
}
