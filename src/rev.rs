//! Revision ids (`N-hash`) and the deterministic hash of a new edit.

use std::fmt;
use std::str::FromStr;

use md5::{Digest, Md5};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::Value;

use crate::error::DbError;

/// Longest revision hash accepted from outside. CouchDB's are 32 hex digits; PouchDB's too.
pub const MAX_REV_HASH_LEN: usize = 128;

/// Highest revision position accepted: 2^53 − 1, the largest integer JavaScript peers represent
/// exactly. A document at this depth cannot be edited further.
pub const MAX_REV_POS: u64 = (1 << 53) - 1;

/// A revision id: the edit's depth in the revision tree (`pos`) and a hash, written `pos-hash`.
///
/// Revisions order by `pos`, then by hash string; that order is CouchDB's winner rule among
/// leaves of equal deletion state.
///
/// ```
/// use peerpouch::Rev;
/// let r: Rev = "2-7051cbe5c8faecd085a3fa619e6e6337".parse().unwrap();
/// assert_eq!(r.pos, 2);
/// assert_eq!(r.to_string(), "2-7051cbe5c8faecd085a3fa619e6e6337");
/// assert!("two-abc".parse::<Rev>().is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Rev {
    /// Depth in the revision tree, starting at 1 (0 only for `_local` documents).
    pub pos: u64,
    /// The hash part: printable ASCII without `"`, at most [`MAX_REV_HASH_LEN`] bytes.
    pub hash: String,
}

impl Rev {
    /// Builds a revision from its parts.
    pub fn new(pos: u64, hash: impl Into<String>) -> Rev {
        Rev {
            pos,
            hash: hash.into(),
        }
    }
}

impl fmt::Display for Rev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.pos, self.hash)
    }
}

impl FromStr for Rev {
    type Err = DbError;

    fn from_str(s: &str) -> Result<Rev, DbError> {
        let bad = || DbError::BadRequest(format!("Invalid rev format: {:?}", truncate(s, 64)));
        let (pos, hash) = s.split_once('-').ok_or_else(bad)?;
        // Canonical decimal only: "07-x" would print back as "7-x" and compare unequal as text.
        if pos.is_empty()
            || pos.len() > 19
            || !pos.bytes().all(|b| b.is_ascii_digit())
            || (pos.len() > 1 && pos.starts_with('0'))
        {
            return Err(bad());
        }
        let pos: u64 = pos.parse().map_err(|_| bad())?;
        if pos > MAX_REV_POS || !valid_hash(hash) {
            return Err(bad());
        }
        Ok(Rev::new(pos, hash))
    }
}

/// Whether `hash` is acceptable as the hash part of a revision.
pub(crate) fn valid_hash(hash: &str) -> bool {
    !hash.is_empty()
        && hash.len() <= MAX_REV_HASH_LEN
        && hash.bytes().all(|b| b.is_ascii_graphic() && b != b'"')
}

pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl Serialize for Rev {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Rev {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Rev, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// The hash of a new edit: MD5 over the canonical JSON of the deletion flag, the parent revision,
/// the body (without `_` fields; `body` is its canonical JSON, as [`write_canonical_map`] and
/// `store::Fields` write it) and the attachments' names, content types and digests.
///
/// Like CouchDB, the same edit of the same parent yields the same revision on every replica, so an
/// edit applied twice (say, retried after a lost reply) does not create a spurious conflict.
pub(crate) fn edit_hash(
    deleted: bool,
    parent: Option<&Rev>,
    body: &[u8],
    attachments: &[(&str, &str, &str)],
) -> String {
    let mut h = Md5::new();
    // The body goes to the hash as it is: copying ~1 KiB into a growing buffer cost more than
    // hashing it.
    let mut buf = Vec::with_capacity(128);
    buf.push(b'[');
    buf.extend_from_slice(if deleted { b"true," } else { b"false," });
    match parent {
        Some(p) => {
            buf.push(b'"');
            buf.extend_from_slice(p.to_string().as_bytes());
            buf.extend_from_slice(b"\",");
        }
        None => buf.extend_from_slice(b"null,"),
    }
    h.update(&buf);
    h.update(body);
    buf.clear();
    buf.push(b',');
    buf.push(b'[');
    // Name, content type and digest of each attachment, as CouchDB hashes them: two edits that
    // differ only in an attachment's type are different revisions.
    for (i, (name, content_type, digest)) in attachments.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        for (j, part) in [name, content_type, digest].into_iter().enumerate() {
            if j > 0 {
                buf.push(b',');
            }
            write_canonical(&mut buf, &Value::String((*part).to_string()));
        }
    }
    buf.extend_from_slice(b"]]");
    h.update(&buf);
    hex(&h.finalize())
}

/// Lower-case hex of `bytes`.
pub(crate) fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// MD5 of `data`, lower-case hex.
pub(crate) fn md5_hex(data: &[u8]) -> String {
    hex(&Md5::digest(data))
}

/// Writes `v` as JSON with object keys sorted, whatever the map's own order, so hashes do not
/// depend on how a document was built or which serde_json features are on.
pub(crate) fn write_canonical(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::Object(m) => write_canonical_map(out, m),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(out, x);
            }
            out.push(b']');
        }
        other => {
            // Scalars have one serde_json form; writing into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

pub(crate) fn write_canonical_map(out: &mut Vec<u8>, m: &serde_json::Map<String, Value>) {
    let mut keys: Vec<&String> = m.keys().collect();
    keys.sort();
    out.push(b'{');
    for (i, k) in keys.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let _ = serde_json::to_writer(&mut *out, k);
        out.push(b':');
        write_canonical(out, &m[k]);
    }
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parse_rejects_malformed_revs() {
        for bad in [
            "",
            "1",
            "-abc",
            "1-",
            "a-b",
            "1-a b",
            "99999999999999999999-a",
            "+1-a",
            "1-\"",
            "07-x",
            "9007199254740992-x",
        ] {
            assert!(bad.parse::<Rev>().is_err(), "{bad:?} parsed");
        }
        assert_eq!("0-1".parse::<Rev>().unwrap(), Rev::new(0, "1"));
        let long = format!("1-{}", "a".repeat(MAX_REV_HASH_LEN + 1));
        assert!(long.parse::<Rev>().is_err());
    }

    #[test]
    fn revs_order_by_pos_then_hash() {
        let a: Rev = "2-a".parse().unwrap();
        let b: Rev = "2-b".parse().unwrap();
        let c: Rev = "10-0".parse().unwrap();
        assert!(a < b && b < c);
    }

    #[test]
    fn edit_hash_is_deterministic_and_key_order_free() {
        fn edit_hash(
            deleted: bool,
            parent: Option<&Rev>,
            body: &serde_json::Map<String, Value>,
            atts: &[(&str, &str, &str)],
        ) -> String {
            let mut canonical = Vec::new();
            write_canonical_map(&mut canonical, body);
            super::edit_hash(deleted, parent, &canonical, atts)
        }
        let b1 = json!({"a": 1, "b": [1, {"y": 2, "x": 1}]});
        let mut m = serde_json::Map::new();
        m.insert("b".into(), json!([1, {"x": 1, "y": 2}]));
        m.insert("a".into(), json!(1));
        let h1 = edit_hash(false, None, b1.as_object().unwrap(), &[]);
        let h2 = edit_hash(false, None, &m, &[]);
        assert_eq!(h1, h2);
        assert_eq!(h1.len(), 32);
        let parent = Rev::new(1, h1.clone());
        assert_ne!(edit_hash(false, Some(&parent), &m, &[]), h1);
        assert_ne!(edit_hash(true, None, &m, &[]), h1);
        let with_att = edit_hash(false, None, &m, &[("a.txt", "text/plain", "md5-x")]);
        assert_ne!(with_att, h1);
        assert_ne!(
            edit_hash(
                false,
                None,
                &m,
                &[("a.txt", "application/octet-stream", "md5-x")]
            ),
            with_att,
            "the content type is part of the revision"
        );
    }
}
