//! What two peers say to each other through the hub to set up a link: descriptions (offer,
//! answer), ICE candidates, and peerpouch's refusal and pending notices, in the JSON shape a
//! browser gives them. The session machine makes and takes these; the hub machine carries them
//! in signal documents (and reads them back, checked, with `SignalData::from_json`).

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// An ICE candidate exactly as a browser's `RTCIceCandidate.toJSON()` gives it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceCandidate {
    /// `candidate:...` line.
    pub candidate: String,
    /// Media stream id.
    #[serde(rename = "sdpMid", default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    /// Media line index.
    #[serde(
        rename = "sdpMLineIndex",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub sdp_m_line_index: Option<u16>,
    /// ICE username fragment.
    #[serde(
        rename = "usernameFragment",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub username_fragment: Option<String>,
}

/// The `data` of a signal document.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum SignalData {
    /// `{"type": "offer", "sdp": ...}`.
    Offer(String),
    /// `{"type": "answer", "sdp": ...}`.
    Answer(String),
    /// `{"candidate": {...}}`; `None` is the end of candidates (`null` or an empty candidate).
    Candidate(Option<IceCandidate>),
    /// `{"type": "refuse", "reason": ...}`: the sharer will not serve this peer (peerpouch's
    /// addition; browsers that do not know it just never get an answer).
    Refuse(Option<String>),
    /// `{"type": "pending"}`: the sharer saw the peer's request and is deciding (a person
    /// answering a prompt); the answer follows if it accepts. peerpouch's addition, always
    /// written unnumbered (no `n`) so that peers that do not know it skip it without a gap in
    /// their numbered signals: browsers ignore unknown types, older peerpouch nodes count it
    /// as malformed and delete it.
    Pending,
}

impl SignalData {
    /// The browser-shaped JSON.
    pub fn to_json(&self) -> Value {
        match self {
            SignalData::Offer(sdp) => json!({"type": "offer", "sdp": sdp}),
            SignalData::Answer(sdp) => json!({"type": "answer", "sdp": sdp}),
            SignalData::Candidate(Some(c)) => json!({ "candidate": c }),
            SignalData::Candidate(None) => json!({ "candidate": null }),
            SignalData::Refuse(reason) => json!({"type": "refuse", "reason": reason}),
            SignalData::Pending => json!({"type": "pending"}),
        }
    }
}
