//! The JSON messages of the RPC and the access proof.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::CouchError;
use crate::ops::{ChangesRequest, Request, Response};

/// The RPC protocol version in hellos; peers with another major version are refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Capabilities this implementation offers.
pub const CAPABILITIES: &[&str] = &["binary-attachments", "live-changes", CAP_ATTACHMENT_RANGES];
/// The capability a server lists when it serves `read_attachment` (ranges of an attachment)
/// and `stage_attachment` (attachments received in ranges), and honours `_bulk_get`'s
/// `inline_max`: what lets a replication carry attachments of any size in bounded memory.
pub const CAP_ATTACHMENT_RANGES: &str = "attachment-ranges";
/// The optional capability a hello lists when its sender takes zstd-compressed messages
/// ([`crate::rpc::frame`]); each side compresses only towards a peer that listed it.
pub const CAP_ZSTD: &str = "zstd";

/// The `caps` of our hello.
pub(crate) fn capabilities(compress: bool) -> Vec<String> {
    let mut caps: Vec<String> = CAPABILITIES.iter().map(|s| s.to_string()).collect();
    if compress {
        caps.push(CAP_ZSTD.to_string());
    }
    caps
}

/// Which end of the link a hello comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The sharer, serving its database.
    Server,
    /// The connecting peer.
    Client,
}

/// The first message each way.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// Protocol version.
    pub v: u32,
    /// The sender's role.
    pub role: Role,
    /// The share the link is for.
    pub share: String,
    /// The connecting peer's id.
    pub peer: String,
    /// Optional features the sender supports.
    #[serde(default)]
    pub caps: Vec<String>,
    /// Largest frame the sender accepts.
    pub frame: usize,
    /// Largest message the sender accepts.
    pub max_message: usize,
    /// Requests the server takes at once (server hello), or ignored (client hello).
    #[serde(default)]
    pub max_in_flight: usize,
    /// The server refuses writes except `_local` documents.
    #[serde(default)]
    pub read_only: bool,
    /// HMAC-SHA256 proof of the share's access key, bound to both DTLS fingerprints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proof: Option<String>,
    /// The served database's stable identity ([`crate::DbInfo::db_uuid`]; server hello only).
    /// Joiners name the database by it in replication ids, so checkpoints are found again
    /// after the sharer restarts (new share id) or under another share name. Optional: older
    /// peers and the browser client send none (joiners then fall back to the share id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub db_uuid: Option<String>,
}

/// What a client asks.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Call {
    /// One database operation.
    Call(Request),
    /// A live changes subscription: batches until cancelled.
    Subscribe(ChangesRequest),
}

/// What a server answers to a call.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    /// The result.
    Ok(Response),
    /// The error.
    Err(CouchError),
    /// An attachment's metadata; its bytes follow as a binary message with the same id.
    Attachment {
        /// MIME type.
        content_type: String,
        /// `md5-<base64>`.
        digest: String,
        /// Bytes that follow.
        length: u64,
    },
    /// A range of an attachment (`read_attachment`); its bytes follow as a binary message with
    /// the same id.
    AttachmentPart {
        /// MIME type.
        content_type: String,
        /// `md5-<base64>` of the whole attachment.
        digest: String,
        /// The whole attachment's length.
        length: u64,
        /// Where the range starts.
        offset: u64,
        /// Bytes that follow (fewer than asked at the end, or when the server reads less).
        size: u64,
    },
}

impl Reply {
    /// Decodes a reply, as `serde_json::from_slice` does.
    ///
    /// `Response` is internally tagged (`"result"`), and serde buffers every internally tagged
    /// value into an intermediate tree before decoding it: for a batch of documents that is most
    /// of the client's decoding work. Our servers write the tag first, so the common shape
    /// `{"ok": {"result": TAG, ...}}` is decoded in one pass; anything else (another key order,
    /// an error, an attachment, malformed bytes) takes serde's own path, with its errors.
    ///
    /// # Errors
    /// When the bytes are not a reply.
    pub fn decode(bytes: &[u8]) -> Result<Reply, serde_json::Error> {
        use serde::de::DeserializeSeed;
        // Validate UTF-8 once, up front: the fast path skips fields it ignores without looking
        // at their bytes, and would otherwise accept what serde refuses (found by the
        // `rpc_reply` fuzz target). From a `str`, nothing is validated twice.
        let Ok(text) = std::str::from_utf8(bytes) else {
            return serde_json::from_slice(bytes);
        };
        let mut de = serde_json::Deserializer::from_str(text);
        if let Ok(Some(r)) = FastReply.deserialize(&mut de) {
            if de.end().is_ok() {
                return Ok(Reply::Ok(r));
            }
        }
        serde_json::from_str(text)
    }
}

/// Encodes `Reply::Ok(r)` exactly as `serde_json::to_vec` does.
///
/// A `_bulk_get` answer is a batch of whole documents and serde_json escapes strings byte by
/// byte, which made encoding it most of the server's share of a replication. Its documents are
/// written here with a whole-string check: a string with nothing to escape (the common case) is
/// copied as it is; anything else is left to serde_json, so the bytes are the same.
pub(crate) fn encode_ok_reply(r: Response) -> Vec<u8> {
    use crate::ops::BulkGetDoc;
    let Response::BulkGet(b) = r else {
        // Our own types always serialise.
        return serde_json::to_vec(&Reply::Ok(r)).unwrap_or_default();
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(br#"{"ok":{"result":"bulk_get","results":["#);
    for (i, res) in b.results.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"id":"#);
        write_json_str(&mut out, &res.id);
        out.extend_from_slice(br#","docs":["#);
        for (j, d) in res.docs.iter().enumerate() {
            if j > 0 {
                out.push(b',');
            }
            match d {
                BulkGetDoc::Ok(doc) => {
                    out.extend_from_slice(br#"{"ok":"#);
                    write_json_map(&mut out, doc);
                    out.push(b'}');
                }
                other => {
                    let _ = serde_json::to_writer(&mut out, other);
                }
            }
        }
        out.extend_from_slice(b"]}");
    }
    out.extend_from_slice(b"]}}");
    out
}

/// Whether serde_json would escape anything in `bytes`: it escapes `"`, `\` and control
/// characters, nothing else. Branch-free over blocks of 32 bytes, so the compiler vectorises it.
fn needs_escape(bytes: &[u8]) -> bool {
    let bad = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut blocks = bytes.chunks_exact(32);
    for block in &mut blocks {
        if block.iter().fold(false, |acc, &b| acc | bad(b)) {
            return true;
        }
    }
    blocks.remainder().iter().any(|&b| bad(b))
}

fn write_json_str(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else {
        let _ = serde_json::to_writer(&mut *out, s);
    }
}

fn write_json_map(out: &mut Vec<u8>, m: &serde_json::Map<String, serde_json::Value>) {
    out.push(b'{');
    for (i, (k, v)) in m.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_json_str(out, k);
        out.push(b':');
        write_json_value(out, v);
    }
    out.push(b'}');
}

fn write_json_value(out: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) => write_json_str(out, s),
        Value::Object(m) => write_json_map(out, m),
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_json_value(out, x);
            }
            out.push(b']');
        }
        // Null, booleans and numbers as serde_json writes them.
        other => {
            let _ = serde_json::to_writer(&mut *out, other);
        }
    }
}

/// `{"ok": {"result": TAG, ...}}` in one pass; `Ok(None)` or an error for any other shape.
struct FastReply;

impl<'de> serde::de::DeserializeSeed<'de> for FastReply {
    type Value = Option<Response>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FastReply {
    type Value = Option<Response>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a reply")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        match map.next_key::<std::borrow::Cow<'de, str>>()? {
            Some(k) if k == "ok" => {}
            _ => return Ok(None),
        }
        let r = map.next_value_seed(FastResponse)?;
        if map.next_key::<serde::de::IgnoredAny>()?.is_some() {
            return Ok(None);
        }
        Ok(r)
    }
}

/// A [`Response`] whose first key is its `"result"` tag.
struct FastResponse;

impl<'de> serde::de::DeserializeSeed<'de> for FastResponse {
    type Value = Option<Response>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FastResponse {
    type Value = Option<Response>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a response")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        use crate::ops::*;
        use serde::de::value::MapAccessDeserializer;
        match map.next_key::<std::borrow::Cow<'de, str>>()? {
            Some(k) if k == "result" => {}
            _ => return Ok(None),
        }
        let tag = map.next_value::<std::borrow::Cow<'de, str>>()?;
        // The rest of the object is the variant's own fields; a second tag is an error, as
        // serde's tagged path says (found by the `rpc_reply` fuzz target).
        let rest = MapAccessDeserializer::new(NoSecondTag(map));
        Ok(Some(match &*tag {
            "info" => Response::Info(DbInfo::deserialize(rest)?),
            "doc" => Response::Doc(DocBody::deserialize(rest)?),
            "open_revs" => Response::OpenRevs(OpenRevsResponse::deserialize(rest)?),
            "all_docs" => Response::AllDocs(AllDocsResponse::deserialize(rest)?),
            "bulk_docs" => Response::BulkDocs(BulkDocsResponse::deserialize(rest)?),
            "changes" => Response::Changes(ChangesResponse::deserialize(rest)?),
            "revs_diff" => Response::RevsDiff(RevsDiffResponse::deserialize(rest)?),
            "bulk_get" => Response::BulkGet(BulkGetResponse::deserialize(rest)?),
            "attachment" => Response::Attachment(AttachmentData::deserialize(rest)?),
            "written" => Response::Written(DocResult::deserialize(rest)?),
            _ => return Ok(None),
        }))
    }
}

/// The fields after a response's tag, refusing another `"result"` key: serde's internally tagged
/// path reads it as a duplicate field, while a variant's own deserializer would ignore it.
struct NoSecondTag<A>(A);

impl<'de, A: serde::de::MapAccess<'de>> serde::de::MapAccess<'de> for NoSecondTag<A> {
    type Error = A::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, A::Error> {
        use serde::de::value::{BorrowedStrDeserializer, StringDeserializer};
        use std::borrow::Cow;
        match self.0.next_key::<Cow<'de, str>>()? {
            None => Ok(None),
            Some(k) if k == "result" => Err(serde::de::Error::duplicate_field("result")),
            Some(Cow::Borrowed(k)) => seed.deserialize(BorrowedStrDeserializer::new(k)).map(Some),
            Some(Cow::Owned(k)) => seed.deserialize(StringDeserializer::new(k)).map(Some),
        }
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, A::Error> {
        self.0.next_value_seed(seed)
    }

    fn size_hint(&self) -> Option<usize> {
        self.0.size_hint()
    }
}

/// Why a subscription ended.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StreamEnd {
    /// `None`: cancelled by the client; otherwise the error.
    #[serde(default)]
    pub error: Option<CouchError>,
}

type HmacSha256 = Hmac<Sha256>;

fn proof_mac(
    key: &[u8],
    role: Role,
    share: &str,
    peer: &str,
    sender_fp: &str,
    receiver_fp: &str,
) -> HmacSha256 {
    // Any key length is valid for HMAC.
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes keys of any length");
    let role = match role {
        Role::Server => "server",
        Role::Client => "client",
    };
    for part in [
        "peerpouch-proof-v1",
        role,
        share,
        peer,
        sender_fp,
        receiver_fp,
    ] {
        mac.update(part.as_bytes());
        mac.update(&[0]);
    }
    mac
}

/// The proof a `role` sender puts in its hello: HMAC-SHA256 under the share's key over the role,
/// share and peer ids, the sender's own DTLS fingerprint and the one it sees for the receiver.
///
/// A hub that rewrites the SDP fingerprints to sit in the middle makes the two sides see
/// different fingerprints, so the proofs stop matching; without the key it cannot forge them.
pub fn make_proof(
    key: &[u8],
    role: Role,
    share: &str,
    peer: &str,
    own_fp: &str,
    seen_fp: &str,
) -> String {
    crate::rev::hex(
        &proof_mac(key, role, share, peer, own_fp, seen_fp)
            .finalize()
            .into_bytes(),
    )
}

/// Checks a peer's proof in constant time. `sender_fp` is the fingerprint we see for the peer;
/// `own_fp` is ours.
pub fn check_proof(
    key: &[u8],
    role: Role,
    share: &str,
    peer: &str,
    sender_fp: &str,
    own_fp: &str,
    proof: &str,
) -> bool {
    let Some(bytes) = unhex(proof) else {
        return false;
    };
    proof_mac(key, role, share, peer, sender_fp, own_fp)
        .verify_slice(&bytes)
        .is_ok()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || s.len() > 128 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proofs_bind_role_ids_and_fingerprints() {
        let k = b"secret";
        let p = make_proof(k, Role::Client, "share-a", "peer-b", "FP-C", "FP-S");
        assert!(check_proof(
            k,
            Role::Client,
            "share-a",
            "peer-b",
            "FP-C",
            "FP-S",
            &p
        ));
        assert!(!check_proof(
            b"other",
            Role::Client,
            "share-a",
            "peer-b",
            "FP-C",
            "FP-S",
            &p
        ));
        assert!(!check_proof(
            k,
            Role::Server,
            "share-a",
            "peer-b",
            "FP-C",
            "FP-S",
            &p
        ));
        assert!(!check_proof(
            k,
            Role::Client,
            "share-x",
            "peer-b",
            "FP-C",
            "FP-S",
            &p
        ));
        assert!(!check_proof(
            k,
            Role::Client,
            "share-a",
            "peer-b",
            "FP-MITM",
            "FP-S",
            &p
        ));
        assert!(!check_proof(
            k,
            Role::Client,
            "share-a",
            "peer-b",
            "FP-C",
            "FP-MITM",
            &p
        ));
        assert!(!check_proof(
            k,
            Role::Client,
            "share-a",
            "peer-b",
            "FP-C",
            "FP-S",
            "zz"
        ));
        assert!(!check_proof(
            k,
            Role::Client,
            "share-a",
            "peer-b",
            "FP-C",
            "FP-S",
            ""
        ));
    }

    #[test]
    fn bulk_get_replies_encode_as_serde_does() {
        use crate::ops::{BulkGetDoc, BulkGetError, BulkGetResponse, BulkGetResult};
        let doc = |v: serde_json::Value| match v {
            serde_json::Value::Object(m) => m,
            _ => unreachable!(),
        };
        let tricky = "quote \" backslash \\ newline \n tab \t nul \u{0} esc \u{1b} del \u{7f} é ✓ 😀 </script>";
        let r = Response::BulkGet(BulkGetResponse {
            results: vec![
                BulkGetResult {
                    id: "a".into(),
                    docs: vec![
                        BulkGetDoc::Ok(doc(serde_json::json!({
                            "_id": "a", "_rev": "1-x", "text": "0".repeat(1000),
                            "n": [1, -2, 3.5, 1e300, 0.1, null, true, false, u64::MAX, i64::MIN],
                            "nested": {"z": {"y": [[], {}], "e": ""}, tricky: tricky},
                            "_revisions": {"start": 1, "ids": ["x"]}
                        }))),
                        BulkGetDoc::Error(BulkGetError {
                            id: "a".into(),
                            rev: Some("2-y".into()),
                            error: "not_found".into(),
                            reason: tricky.into(),
                        }),
                    ],
                },
                BulkGetResult {
                    id: tricky.into(),
                    docs: vec![],
                },
            ],
        });
        let fast = encode_ok_reply(r.clone());
        assert_eq!(
            String::from_utf8(fast).unwrap(),
            serde_json::to_string(&Reply::Ok(r)).unwrap()
        );
        let empty = Response::BulkGet(BulkGetResponse { results: vec![] });
        assert_eq!(
            encode_ok_reply(empty.clone()),
            serde_json::to_vec(&Reply::Ok(empty)).unwrap()
        );
    }

    /// Arbitrary JSON, with any Unicode in strings and keys (controls, quotes, backslashes,
    /// astral planes) and numbers of every kind.
    fn json_value() -> impl proptest::strategy::Strategy<Value = serde_json::Value> {
        use proptest::prelude::*;
        use serde_json::Value;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            any::<String>().prop_map(Value::String),
            r#"[\\"\x00-\x1f\x7f a\x{e9}\x{2028}\x{1F600}]{0,12}"#.prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                proptest::collection::btree_map(any::<String>(), inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// The fast `_bulk_get` encoder writes exactly serde_json's bytes, whatever the docs.
        #[test]
        fn bulk_get_encoding_is_byte_identical_to_serde(
            id in proptest::prelude::any::<String>(),
            fields in proptest::collection::vec((proptest::prelude::any::<String>(), json_value()), 0..8),
            reason in proptest::prelude::any::<String>(),
        ) {
            use crate::ops::{BulkGetDoc, BulkGetError, BulkGetResponse, BulkGetResult};
            let doc: serde_json::Map<String, serde_json::Value> = fields.into_iter().collect();
            let r = Response::BulkGet(BulkGetResponse {
                results: vec![BulkGetResult {
                    id: id.clone(),
                    docs: vec![
                        BulkGetDoc::Ok(doc),
                        BulkGetDoc::Error(BulkGetError {
                            id,
                            rev: None,
                            error: "not_found".into(),
                            reason,
                        }),
                    ],
                }],
            });
            let fast = encode_ok_reply(r.clone());
            proptest::prop_assert_eq!(fast, serde_json::to_vec(&Reply::Ok(r)).unwrap());
        }
    }

    #[test]
    fn fast_reply_decoding_agrees_with_serde() {
        let rev = "1-967a00dff5e02add41819138abb3284d";
        let cases = [
            r#"{"ok":{"result":"info","db_name":"d","doc_count":1,"doc_del_count":0,"update_seq":3}}"#.to_string(),
            format!(r#"{{"ok":{{"result":"doc","doc":{{"_id":"a","_rev":"{rev}","x":[1,{{"y":"\u00e9\n"}}]}}}}}}"#),
            format!(r#"{{"ok":{{"result":"open_revs","revs":[{{"ok":{{"_id":"a","_rev":"{rev}"}}}}]}}}}"#),
            format!(r#"{{"ok":{{"result":"all_docs","total_rows":1,"offset":0,"rows":[{{"key":"a","id":"a","value":{{"rev":"{rev}"}}}}]}}}}"#),
            format!(r#"{{"ok":{{"result":"bulk_docs","results":[{{"ok":true,"id":"a","rev":"{rev}"}},{{"id":"b","error":"conflict","reason":"c"}}]}}}}"#),
            format!(r#"{{"ok":{{"result":"changes","results":[{{"id":"a","seq":1,"changes":[{{"rev":"{rev}"}}]}}],"last_seq":1}}}}"#),
            format!(r#"{{"ok":{{"result":"revs_diff","missing":{{"a":{{"missing":["{rev}"]}}}}}}}}"#),
            format!(r#"{{"ok":{{"result":"bulk_get","results":[{{"id":"a","docs":[{{"ok":{{"_id":"a","_rev":"{rev}","t":"x"}}}},{{"error":{{"id":"b","error":"not_found","reason":"missing"}}}}]}}]}}}}"#),
            r#"{"ok":{"result":"attachment","content_type":"text/plain","digest":"md5-x","data":"aGk="}}"#.to_string(),
            r#"{"ok":{"result":"written","ok":true,"id":"_local/a","rev":"0-1"}}"#.to_string(),
            // Other shapes take serde's path, with its results and errors.
            r#"{"ok":{"db_name":"d","result":"info","doc_count":1,"doc_del_count":0,"update_seq":3}}"#.to_string(),
            r#"{"err":{"status":404,"error":"not_found","reason":"missing"}}"#.to_string(),
            r#"{"attachment":{"content_type":"a/b","digest":"md5-x","length":3}}"#.to_string(),
            r#"{"ok":{"result":"nope"}}"#.to_string(),
            r#"{"ok":{"result":"info","db_name":"d"}}"#.to_string(),
            r#"{"ok":{"result":"changes","results":[],"last_seq":0},"more":1}"#.to_string(),
            r#"{"ok":{"result":"changes","results":[],"last_seq":0}} x"#.to_string(),
            r#"{"ok":{"result":"changes","results":[],"last_seq":0}"#.to_string(),
            r#"[]"#.to_string(),
            String::new(),
        ];
        for c in &cases {
            let slow = serde_json::from_slice::<Reply>(c.as_bytes());
            let fast = Reply::decode(c.as_bytes());
            match (&slow, &fast) {
                (Ok(a), Ok(b)) => assert_eq!(a, b, "{c}"),
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{c}"),
                _ => panic!("{c}: serde {slow:?}, fast {fast:?}"),
            }
        }
        // The well-formed cases above do decode.
        for c in &cases[..10] {
            assert!(
                matches!(Reply::decode(c.as_bytes()), Ok(Reply::Ok(_))),
                "{c}"
            );
        }
    }
}
