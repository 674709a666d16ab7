//! The JSON messages of the RPC and the access proof.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::CouchError;
use crate::ops::{ChangesRequest, Request, Response};

/// The RPC protocol version in hellos; peers with another major version are refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// Capabilities this implementation offers.
pub const CAPABILITIES: &[&str] = &["binary-attachments", "live-changes"];

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
}
