//! Hub documents: shares and signals, in the original PeerPouch format.
//!
//! Everything read from the hub is untrusted: [`parse_hub_doc`] checks types and sizes and
//! answers a typed [`HubDocError`] for anything off, never a panic.

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::ops::Doc;
pub use crate::signal::{IceCandidate, SignalData};

/// `type` of a share document.
pub const SHARE_TYPE: &str = "com.stemstorage.peerpouch.share";
/// `type` of a signal document.
pub const SIGNAL_TYPE: &str = "com.stemstorage.peerpouch.signal";
/// Id prefix of share documents.
pub const SHARE_PREFIX: &str = "share-";
/// Id prefix of connecting peers.
pub const PEER_PREFIX: &str = "peer-";
/// Id prefix of signals written by the connecting peer.
pub const PEER_SIGNAL_PREFIX: &str = "p-signal-";
/// Id prefix of signals written by the sharer.
pub const SHARER_SIGNAL_PREFIX: &str = "s-signal-";
/// The protocol version peerpouch writes into share documents.
pub const PROTOCOL_VERSION: u64 = 1;

/// Size limits on what is read from the hub.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HubLimits {
    /// A share's `name`, in bytes.
    pub max_name: usize,
    /// A share's or signal's `info`, as JSON bytes.
    pub max_info: usize,
    /// An SDP description, in bytes.
    pub max_sdp: usize,
    /// One ICE candidate line, in bytes.
    pub max_candidate: usize,
    /// An id (share, peer, signal), in bytes.
    pub max_id: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        HubLimits {
            max_name: 1024,
            max_info: 16 * 1024,
            max_sdp: 64 * 1024,
            max_candidate: 2048,
            max_id: 200,
        }
    }
}

/// What is wrong with a document on the hub.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubDocError {
    /// A required field is absent.
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    /// A field has the wrong JSON type.
    #[error("field `{0}` has the wrong type")]
    WrongType(&'static str),
    /// A field is larger than the limit.
    #[error("field `{field}` is {size} bytes, over the limit of {limit}")]
    TooLarge {
        /// The field.
        field: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An id does not have the expected prefix or characters.
    #[error("field `{0}` is not a valid id")]
    BadId(&'static str),
    /// `data` is not a description, a candidate, a refusal or a pending notice.
    #[error("signal data is not a description, candidate, refusal or pending notice: {0}")]
    BadData(&'static str),
}

/// A share as listed on the hub.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShareInfo {
    /// `share-<uuid>`.
    pub id: String,
    /// The name the sharer gave (may be absent).
    pub name: Option<String>,
    /// Anything the sharer wants joiners to see.
    pub info: Value,
    /// peerpouch protocol version (absent on original PeerPouch shares).
    pub protocol: Option<u64>,
    /// Wall-clock expiry in milliseconds since the Unix epoch (absent: never expires).
    pub expires_at: Option<u64>,
    /// The sharer refuses writes.
    pub read_only: bool,
    /// The sharer's DTLS certificate fingerprint, if it published one.
    pub fingerprint: Option<String>,
}

impl SignalData {
    /// Reads browser-shaped JSON.
    ///
    /// # Errors
    /// [`HubDocError`] when the value is none of the known shapes or is over a limit.
    pub fn from_json(v: &Value, limits: &HubLimits) -> Result<SignalData, HubDocError> {
        let Value::Object(m) = v else {
            return Err(HubDocError::WrongType("data"));
        };
        if let Some(c) = m.get("candidate") {
            return match c {
                Value::Null => Ok(SignalData::Candidate(None)),
                Value::String(s) if s.is_empty() => Ok(SignalData::Candidate(None)),
                Value::Object(o) => {
                    let cand: IceCandidate = serde_json::from_value(Value::Object(o.clone()))
                        .map_err(|_| HubDocError::BadData("candidate fields have wrong types"))?;
                    check_len("candidate", cand.candidate.len(), limits.max_candidate)?;
                    for s in [&cand.sdp_mid, &cand.username_fragment]
                        .into_iter()
                        .flatten()
                    {
                        check_len("candidate", s.len(), limits.max_candidate)?;
                    }
                    if cand.candidate.is_empty() {
                        Ok(SignalData::Candidate(None))
                    } else {
                        Ok(SignalData::Candidate(Some(cand)))
                    }
                }
                _ => Err(HubDocError::WrongType("data.candidate")),
            };
        }
        let kind = match m.get("type") {
            Some(Value::String(t)) => t.as_str(),
            Some(_) => return Err(HubDocError::WrongType("data.type")),
            None => return Err(HubDocError::BadData("neither `type` nor `candidate`")),
        };
        let sdp = || -> Result<String, HubDocError> {
            match m.get("sdp") {
                Some(Value::String(s)) => {
                    check_len("data.sdp", s.len(), limits.max_sdp)?;
                    Ok(s.clone())
                }
                Some(_) => Err(HubDocError::WrongType("data.sdp")),
                None => Err(HubDocError::Missing("data.sdp")),
            }
        };
        match kind {
            "offer" => Ok(SignalData::Offer(sdp()?)),
            "answer" => Ok(SignalData::Answer(sdp()?)),
            "refuse" => {
                let reason = match m.get("reason") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(r)) => {
                        check_len("data.reason", r.len(), limits.max_name)?;
                        Some(r.clone())
                    }
                    Some(_) => return Err(HubDocError::WrongType("data.reason")),
                };
                Ok(SignalData::Refuse(reason))
            }
            "pending" => Ok(SignalData::Pending),
            _ => Err(HubDocError::BadData("unknown `type`")),
        }
    }
}

/// A signal as read from the hub.
#[derive(Clone, Debug, PartialEq)]
pub struct SignalDoc {
    /// `p-signal-<uuid>` or `s-signal-<uuid>`.
    pub id: String,
    /// Its revision (needed to delete it).
    pub rev: String,
    /// `peer-<uuid>` or `share-<uuid>`.
    pub sender: String,
    /// `share-<uuid>` or `peer-<uuid>`.
    pub recipient: String,
    /// The payload.
    pub data: SignalData,
    /// The sender's info (the connecting peer's, shown to the sharer).
    pub info: Value,
    /// Wall-clock creation time in ms, if the writer recorded it.
    pub created_at: Option<u64>,
    /// Position in the sender's stream of signals to this recipient, if the writer numbered them.
    pub n: Option<u64>,
}

/// A document read from the hub.
#[derive(Clone, Debug, PartialEq)]
pub enum HubDoc {
    /// A share (with its revision).
    Share(ShareInfo, String),
    /// A signal.
    Signal(SignalDoc),
    /// Anything else: not ours to read.
    Other,
}

fn check_len(field: &'static str, size: usize, limit: usize) -> Result<(), HubDocError> {
    if size > limit {
        Err(HubDocError::TooLarge { field, size, limit })
    } else {
        Ok(())
    }
}

fn opt_str(m: &Map<String, Value>, field: &'static str) -> Result<Option<String>, HubDocError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(HubDocError::WrongType(field)),
    }
}

fn opt_u64(m: &Map<String, Value>, field: &'static str) -> Result<Option<u64>, HubDocError> {
    match m.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or(HubDocError::WrongType(field)),
    }
}

fn info_of(m: &Map<String, Value>, limits: &HubLimits) -> Result<Value, HubDocError> {
    let info = m.get("info").cloned().unwrap_or(Value::Null);
    let size = serde_json::to_vec(&info)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    check_len("info", size, limits.max_info)?;
    Ok(info)
}

/// Whether `id` is `prefix` followed by 1 to `max` id characters (`[A-Za-z0-9_.-]`).
pub fn valid_id(id: &str, prefix: &str, max: usize) -> bool {
    id.len() <= max
        && id.strip_prefix(prefix).is_some_and(|rest| {
            !rest.is_empty()
                && rest
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        })
}

/// Reads one hub document.
///
/// # Errors
/// [`HubDocError`] for a share or signal (by `type`) whose fields are missing, of the wrong type
/// or over the limits. Documents of other types are [`HubDoc::Other`].
pub fn parse_hub_doc(doc: &Doc, limits: &HubLimits) -> Result<HubDoc, HubDocError> {
    let kind = match doc.get("type") {
        Some(Value::String(t)) => t.as_str(),
        _ => return Ok(HubDoc::Other),
    };
    let id = match doc.get("_id") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(HubDocError::Missing("_id")),
    };
    let rev = opt_str(doc, "_rev")?.unwrap_or_default();
    match kind {
        SHARE_TYPE => {
            if !valid_id(&id, SHARE_PREFIX, limits.max_id) {
                return Err(HubDocError::BadId("_id"));
            }
            let name = opt_str(doc, "name")?;
            if let Some(n) = &name {
                check_len("name", n.len(), limits.max_name)?;
            }
            let fingerprint = opt_str(doc, "fingerprint")?;
            if let Some(f) = &fingerprint {
                check_len("fingerprint", f.len(), limits.max_name)?;
            }
            let read_only = match doc.get("read_only") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(HubDocError::WrongType("read_only")),
            };
            Ok(HubDoc::Share(
                ShareInfo {
                    id,
                    name,
                    info: info_of(doc, limits)?,
                    protocol: opt_u64(doc, "protocol")?,
                    expires_at: opt_u64(doc, "expires_at")?,
                    read_only,
                    fingerprint,
                },
                rev,
            ))
        }
        SIGNAL_TYPE => {
            if !valid_id(&id, PEER_SIGNAL_PREFIX, limits.max_id)
                && !valid_id(&id, SHARER_SIGNAL_PREFIX, limits.max_id)
            {
                return Err(HubDocError::BadId("_id"));
            }
            let sender = opt_str(doc, "sender")?.ok_or(HubDocError::Missing("sender"))?;
            let recipient = opt_str(doc, "recipient")?.ok_or(HubDocError::Missing("recipient"))?;
            for (field, v) in [("sender", &sender), ("recipient", &recipient)] {
                if !valid_id(v, SHARE_PREFIX, limits.max_id)
                    && !valid_id(v, PEER_PREFIX, limits.max_id)
                {
                    return Err(HubDocError::BadId(field));
                }
            }
            let data = doc.get("data").ok_or(HubDocError::Missing("data"))?;
            Ok(HubDoc::Signal(SignalDoc {
                id,
                rev,
                sender,
                recipient,
                data: SignalData::from_json(data, limits)?,
                info: info_of(doc, limits)?,
                created_at: opt_u64(doc, "created_at")?,
                n: opt_u64(doc, "n")?,
            }))
        }
        _ => Ok(HubDoc::Other),
    }
}

/// The JSON of a share document.
pub(crate) fn share_doc(share: &ShareInfo) -> Value {
    let mut d = json!({
        "_id": share.id,
        "type": SHARE_TYPE,
        "name": share.name,
        "info": share.info,
        "protocol": share.protocol,
        "read_only": share.read_only,
    });
    if let Some(e) = share.expires_at {
        d["expires_at"] = json!(e);
    }
    if let Some(f) = &share.fingerprint {
        d["fingerprint"] = json!(f);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_data_round_trips_in_browser_shape() {
        let l = HubLimits::default();
        let cases = [
            SignalData::Offer("v=0\r\n".into()),
            SignalData::Answer("v=0\r\n".into()),
            SignalData::Candidate(Some(IceCandidate {
                candidate: "candidate:1 1 udp 2113937151 127.0.0.1 5000 typ host".into(),
                sdp_mid: Some("0".into()),
                sdp_m_line_index: Some(0),
                username_fragment: Some("abcd".into()),
            })),
            SignalData::Candidate(None),
            SignalData::Refuse(Some("not today".into())),
            SignalData::Pending,
        ];
        for c in cases {
            let j = c.to_json();
            assert_eq!(SignalData::from_json(&j, &l).unwrap(), c, "{j}");
        }
        let browser = json!({"candidate": {"candidate": "candidate:x", "sdpMid": "0", "sdpMLineIndex": 0, "usernameFragment": "u"}});
        assert!(matches!(
            SignalData::from_json(&browser, &l),
            Ok(SignalData::Candidate(Some(_)))
        ));
        assert_eq!(
            SignalData::from_json(&json!({"candidate": ""}), &l),
            Ok(SignalData::Candidate(None))
        );
    }

    #[test]
    fn bad_signal_data_is_typed() {
        let l = HubLimits::default();
        for bad in [
            json!(1),
            json!({}),
            json!({"type": 5}),
            json!({"type": "offer"}),
            json!({"type": "offer", "sdp": 3}),
            json!({"type": "pranswer", "sdp": ""}),
            json!({"candidate": 7}),
            json!({"candidate": {"candidate": 1}}),
            json!({"type": "offer", "sdp": "x".repeat(l.max_sdp + 1)}),
        ] {
            assert!(SignalData::from_json(&bad, &l).is_err(), "{bad}");
        }
    }

    #[test]
    fn hub_docs_parse_with_limits() {
        let l = HubLimits::default();
        let share = json!({"_id": "share-abc", "_rev": "1-x", "type": SHARE_TYPE, "name": "n", "info": {"a": 1}});
        let HubDoc::Share(s, rev) = parse_hub_doc(share.as_object().unwrap(), &l).unwrap() else {
            panic!()
        };
        assert_eq!(
            (s.id.as_str(), rev.as_str(), s.expires_at, s.read_only),
            ("share-abc", "1-x", None, false)
        );
        let other = json!({"_id": "x", "type": "else"});
        assert_eq!(
            parse_hub_doc(other.as_object().unwrap(), &l),
            Ok(HubDoc::Other)
        );
        let bad = [
            json!({"_id": "nope", "type": SHARE_TYPE}),
            json!({"_id": "share-a", "type": SHARE_TYPE, "name": 5}),
            json!({"_id": "share-a", "type": SHARE_TYPE, "expires_at": "soon"}),
            json!({"_id": "share-a", "type": SHARE_TYPE, "info": "x".repeat(l.max_info)}),
            json!({"_id": "p-signal-1", "type": SIGNAL_TYPE, "recipient": "share-a", "data": {"candidate": null}}),
            json!({"_id": "p-signal-1", "type": SIGNAL_TYPE, "sender": "evil", "recipient": "share-a", "data": {"candidate": null}}),
            json!({"_id": "p-signal-1", "type": SIGNAL_TYPE, "sender": "peer-a", "recipient": "share-a"}),
            json!({"_id": "q-signal-1", "type": SIGNAL_TYPE, "sender": "peer-a", "recipient": "share-a", "data": {"candidate": null}}),
            json!({"type": SIGNAL_TYPE}),
        ];
        for b in bad {
            assert!(parse_hub_doc(b.as_object().unwrap(), &l).is_err(), "{b}");
        }
    }
}
