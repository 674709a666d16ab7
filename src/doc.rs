//! Validation of documents coming in, and the attachment model.

use std::collections::BTreeMap;

use base64::Engine;
use md5::{Digest, Md5};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::DbError;
use crate::ops::Doc;
use crate::rev::{valid_hash, Rev};

/// Prefix of `_local` document ids.
pub const LOCAL_PREFIX: &str = "_local/";
/// Prefix of design document ids.
pub const DESIGN_PREFIX: &str = "_design/";

/// Output-only fields a client may send back unchanged; they are ignored on input, as CouchDB does.
const IGNORED_SPECIALS: &[&str] = &[
    "_conflicts",
    "_deleted_conflicts",
    "_local_seq",
    "_revs_info",
];

/// Checks a document id as CouchDB does.
///
/// # Errors
/// [`DbError::IllegalDocId`] for an empty id or a `_`-prefixed one other than `_design/...` and
/// `_local/...`.
pub fn validate_id(id: &str) -> Result<(), DbError> {
    if id.is_empty() {
        return Err(DbError::IllegalDocId(
            "Document id must not be empty".into(),
        ));
    }
    if id.starts_with('_')
        && !(id.starts_with(DESIGN_PREFIX) && id.len() > DESIGN_PREFIX.len()
            || id.starts_with(LOCAL_PREFIX) && id.len() > LOCAL_PREFIX.len())
    {
        return Err(DbError::IllegalDocId(
            "Only reserved document ids may start with underscore.".into(),
        ));
    }
    Ok(())
}

/// Metadata of a stored attachment (what a stub shows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttMeta {
    /// MIME type.
    pub content_type: String,
    /// `md5-<base64>` of the bytes, as CouchDB writes it.
    pub digest: String,
    /// Size in bytes.
    pub length: u64,
    /// The revision position at which this attachment's content was last set.
    pub revpos: u64,
}

/// An attachment as a document brings it in.
#[derive(Clone, Debug, PartialEq)]
pub(crate) enum AttIn {
    /// New content.
    Data {
        content_type: String,
        data: Vec<u8>,
        revpos: Option<u64>,
    },
    /// A reference to content the database should already have.
    Stub {
        digest: Option<String>,
        revpos: Option<u64>,
        content_type: Option<String>,
    },
}

/// [`digest_of`] for bytes read from `reader` a buffer at a time (a file of any size), with
/// their length.
///
/// ```
/// let (digest, len) = peerpouch::doc::digest_of_reader(&b"hello"[..]).unwrap();
/// assert_eq!((digest, len), (peerpouch::doc::digest_of(b"hello"), 5));
/// ```
///
/// # Errors
/// The reader's.
pub fn digest_of_reader(mut reader: impl std::io::Read) -> std::io::Result<(String, u64)> {
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut len = 0u64;
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                md5.update(&buf[..n]);
                len += n as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let digest = base64::engine::general_purpose::STANDARD.encode(md5.finalize());
    Ok((format!("md5-{digest}"), len))
}

/// The digest CouchDB gives `data`: `md5-` and the base64 of its MD5.
pub fn digest_of(data: &[u8]) -> String {
    format!(
        "md5-{}",
        base64::engine::general_purpose::STANDARD.encode(Md5::digest(data))
    )
}

/// A document split into CouchDB's special fields and its body.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ParsedDoc {
    pub id: Option<String>,
    pub rev: Option<Rev>,
    pub deleted: bool,
    /// Ancestry, newest first, starting with `rev` (from `_revisions`).
    pub revisions: Option<Vec<Rev>>,
    pub attachments: BTreeMap<String, AttIn>,
    pub body: Doc,
}

fn validation(msg: impl Into<String>) -> DbError {
    DbError::DocValidation(msg.into())
}

/// Splits and validates one incoming document.
pub(crate) fn parse_doc(v: Value) -> Result<ParsedDoc, DbError> {
    let Value::Object(map) = v else {
        return Err(DbError::BadRequest("Document must be a JSON object".into()));
    };
    let mut out = ParsedDoc {
        id: None,
        rev: None,
        deleted: false,
        revisions: None,
        attachments: BTreeMap::new(),
        body: Doc::new(),
    };
    let mut revisions_raw = None;
    for (k, v) in map {
        if !k.starts_with('_') {
            out.body.insert(k, v);
            continue;
        }
        match k.as_str() {
            "_id" => match v {
                Value::String(s) => {
                    validate_id(&s)?;
                    out.id = Some(s);
                }
                _ => return Err(DbError::IllegalDocId("Document id must be a string".into())),
            },
            "_rev" => match v {
                Value::String(s) => out.rev = Some(s.parse()?),
                _ => return Err(DbError::BadRequest("Invalid rev format".into())),
            },
            "_deleted" => match v {
                Value::Bool(b) => out.deleted = b,
                _ => return Err(validation("_deleted must be a boolean")),
            },
            "_revisions" => revisions_raw = Some(v),
            "_attachments" => out.attachments = parse_attachments(v)?,
            k if IGNORED_SPECIALS.contains(&k) => {}
            other => {
                return Err(validation(format!(
                    "Bad special document member: {}",
                    crate::rev::truncate(other, 64)
                )))
            }
        }
    }
    if let Some(raw) = revisions_raw {
        out.revisions = Some(parse_revisions(raw, out.rev.as_ref())?);
    }
    Ok(out)
}

#[derive(Deserialize)]
struct RevisionsWire {
    start: u64,
    ids: Vec<String>,
}

fn parse_revisions(v: Value, rev: Option<&Rev>) -> Result<Vec<Rev>, DbError> {
    let bad = |why: &str| DbError::BadRequest(format!("Invalid _revisions: {why}"));
    let w: RevisionsWire = serde_json::from_value(v).map_err(|_| bad("needs start and ids"))?;
    if w.ids.is_empty() {
        return Err(bad("ids is empty"));
    }
    if w.start > crate::rev::MAX_REV_POS {
        return Err(bad("start is past the highest revision position"));
    }
    if (w.ids.len() as u64) > w.start {
        return Err(bad("more ids than start"));
    }
    let mut revs = Vec::with_capacity(w.ids.len());
    for (i, h) in w.ids.into_iter().enumerate() {
        if !valid_hash(&h) {
            return Err(bad("malformed id"));
        }
        revs.push(Rev::new(w.start - i as u64, h));
    }
    if let Some(rev) = rev {
        if revs[0] != *rev {
            return Err(bad("does not start with _rev"));
        }
    }
    Ok(revs)
}

fn parse_attachments(v: Value) -> Result<BTreeMap<String, AttIn>, DbError> {
    let Value::Object(map) = v else {
        return Err(validation("_attachments must be an object"));
    };
    let mut out = BTreeMap::new();
    for (name, att) in map {
        if name.is_empty() || name.starts_with('_') {
            return Err(validation(format!(
                "Attachment name {:?} is empty or starts with '_'",
                crate::rev::truncate(&name, 64)
            )));
        }
        let Value::Object(att) = att else {
            return Err(validation(format!("Attachment {name:?} must be an object")));
        };
        let revpos = match att.get("revpos") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .ok_or_else(|| validation(format!("Attachment {name:?}: bad revpos")))?,
            ),
        };
        let a = if att.get("stub").and_then(Value::as_bool) == Some(true) {
            let digest = match att.get("digest") {
                None | Some(Value::Null) => None,
                Some(Value::String(d)) => Some(d.clone()),
                Some(_) => return Err(validation(format!("Attachment {name:?}: bad digest"))),
            };
            let content_type = att
                .get("content_type")
                .and_then(Value::as_str)
                .map(String::from);
            AttIn::Stub {
                digest,
                revpos,
                content_type,
            }
        } else if let Some(data) = att.get("data") {
            let Value::String(data) = data else {
                return Err(DbError::BadRequest(format!(
                    "Attachment {name:?}: data must be a base64 string"
                )));
            };
            let data = base64::engine::general_purpose::STANDARD
                .decode(data)
                .map_err(|_| {
                    DbError::BadRequest(format!("Invalid attachment data for {name:?}"))
                })?;
            let content_type = match att.get("content_type") {
                None | Some(Value::Null) => "application/octet-stream".to_string(),
                Some(Value::String(c)) => c.clone(),
                Some(_) => {
                    return Err(validation(format!("Attachment {name:?}: bad content_type")))
                }
            };
            AttIn::Data {
                content_type,
                data,
                revpos,
            }
        } else if att.contains_key("follows") {
            return Err(DbError::BadRequest(format!(
                "Attachment {name:?}: multipart `follows` is not supported; send data inline"
            )));
        } else {
            return Err(validation(format!(
                "Attachment {name:?} needs `data` or `stub: true`"
            )));
        };
        out.insert(name, a);
    }
    Ok(out)
}

/// Serde helper: bytes as a base64 string.
pub mod base64_bytes {
    use base64::Engine;
    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes bytes as standard base64.
    pub fn serialize<S: Serializer>(data: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(data))
    }

    /// Reads standard base64, into a `Vec<u8>` or anything made from one without a copy
    /// (`Bytes`).
    pub fn deserialize<'de, D: Deserializer<'de>, T: From<Vec<u8>>>(d: D) -> Result<T, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        base64::engine::general_purpose::STANDARD
            .decode(s.as_bytes())
            .map(T::from)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ids_follow_couchdb_rules() {
        for ok in ["a", "_design/x", "_local/x", "ü", "a b"] {
            validate_id(ok).unwrap();
        }
        for bad in ["", "_x", "_design/", "_local/", "_users"] {
            assert!(
                matches!(validate_id(bad), Err(DbError::IllegalDocId(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn parse_splits_specials_and_rejects_unknown_ones() {
        let p = parse_doc(
            json!({"_id": "a", "_rev": "2-b", "_revisions": {"start": 2, "ids": ["b", "a"]},
            "_conflicts": [], "x": 1}),
        )
        .unwrap();
        assert_eq!(p.id.as_deref(), Some("a"));
        assert_eq!(
            p.revisions.unwrap(),
            vec![Rev::new(2, "b"), Rev::new(1, "a")]
        );
        assert_eq!(p.body, json!({"x": 1}).as_object().unwrap().clone());
        assert!(matches!(
            parse_doc(json!({"_foo": 1})),
            Err(DbError::DocValidation(_))
        ));
        assert!(matches!(parse_doc(json!([1])), Err(DbError::BadRequest(_))));
        assert!(matches!(
            parse_doc(json!({"_id": 3})),
            Err(DbError::IllegalDocId(_))
        ));
        assert!(parse_doc(json!({"_rev": "x"})).is_err());
        assert!(
            parse_doc(json!({"_rev": "2-b", "_revisions": {"start": 2, "ids": ["c"]}})).is_err()
        );
        assert!(parse_doc(json!({"_revisions": {"start": 1, "ids": ["a", "b"]}})).is_err());
        assert!(parse_doc(json!({"_attachments": {"a": {"data": "!!"}}})).is_err());
        assert!(parse_doc(json!({"_attachments": {"_a": {"data": ""}}})).is_err());
    }

    #[test]
    fn digest_matches_couchdb() {
        // CouchDB's digest of "hello" (md5 5d41402abc4b2a76b9719d911017c592, base64).
        assert_eq!(digest_of(b"hello"), "md5-XUFAKrxLKna5cZ2REBfFkg==");
    }
}
