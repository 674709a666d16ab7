//! Database URLs: parsing, credentials kept apart, and percent-encoding of path parts.

use base64::Engine;

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
        let url = url.trim();
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected http:// or https://"))?;
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "http" && scheme != "https" {
            return Err(bad("expected http:// or https://"));
        }
        if rest.contains(['?', '#']) {
            return Err(bad("a database URL takes no query or fragment"));
        }
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (userinfo, hostport) = match authority.rfind('@') {
            Some(i) => (Some(&authority[..i]), &authority[i + 1..]),
            None => (None, authority),
        };
        if hostport.is_empty() || hostport.contains(char::is_whitespace) {
            return Err(bad("no host"));
        }
        let path = path.trim_end_matches('/');
        let db_name = path.rsplit('/').next().unwrap_or("");
        if db_name.is_empty() {
            return Err(bad("no database name in the path"));
        }
        let auth = match userinfo {
            None => None,
            Some(ui) => {
                let (user, pass) = ui.split_once(':').unwrap_or((ui, ""));
                let user = percent_decode(user).ok_or_else(|| bad("bad user name encoding"))?;
                let pass = percent_decode(pass).ok_or_else(|| bad("bad password encoding"))?;
                let token =
                    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
                Some(format!("Basic {token}"))
            }
        };
        Ok(DbUrl {
            base: format!("{scheme}://{hostport}{path}"),
            db_name: db_name.to_string(),
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
    let s: String = url.chars().take(200).collect();
    let Some((scheme, rest)) = s.split_once("://") else {
        // Not URL-shaped: whatever it is may hold a secret; show only its length.
        return format!("<{} characters>", url.len());
    };
    let end = rest.find('/').unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => format!("{scheme}://<credentials>@{}", &rest[at + 1..]),
        None => s,
    }
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes `%XX` escapes; `None` if an escape is broken or the result is not UTF-8.
pub(crate) fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hi = hex_val(*b.get(i + 1)?)?;
            let lo = hex_val(*b.get(i + 2)?)?;
            out.push(hi << 4 | lo);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Percent-encodes everything but RFC 3986's unreserved characters (`A-Z a-z 0-9 - . _ ~`).
pub(crate) fn encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
    out
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
