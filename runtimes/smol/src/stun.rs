//! STUN Binding helpers (RFC 5389) and the statuses [`crate::LinkEndpoint`] reports for its
//! STUN servers.
//!
//! The codec is the core's ([`peerpouch::reach::stun`]), and so is the client: the endpoint asks
//! its servers through the core's gatherer ([`peerpouch::reach::gather::Gatherer`]), the same
//! machine `PeerNode` runs for its STUN and TURN servers, so the simulation and the fuzzers reach
//! it. The functions here are thin Binding-only wrappers over the codec (for tests and tools
//! that play a server) and never panic on bytes from the network: anything malformed is a
//! [`StunError`].
//!
//! Unknown attributes are ignored (RFC 5389 §7.3.4: comprehension-optional ones may be
//! ignored, and a client has nothing better to do with comprehension-required ones in a
//! response than to ignore them too).
//!
//! ```
//! use peerpouch_smol::stun::{decode_binding_response, encode_binding_request, encode_binding_success, BindingOutcome};
//! let request = encode_binding_request([42; 12]); // send this to the server
//! # let answer = encode_binding_success([42; 12], "203.0.113.1:50000".parse().unwrap());
//! // ... the server answers from its address:
//! let response = decode_binding_response(&answer).unwrap();
//! assert_eq!(response.transaction_id, [42; 12]);
//! assert!(matches!(response.outcome, BindingOutcome::Mapped(_)));
//! ```

use std::net::SocketAddr;

use peerpouch::reach::ClientFailure;
use peerpouch::reach::gather::{ServerReport, ServerState};
use peerpouch::reach::stun::{Attribute, Class, Message, Method};

/// The fixed magic cookie of RFC 5389 §6 (the core's [`peerpouch::reach::stun::MAGIC_COOKIE`]).
///
/// ```
/// use peerpouch_smol::stun::{encode_binding_request, MAGIC_COOKIE};
/// assert_eq!(&encode_binding_request([0; 12])[4..8], &MAGIC_COOKIE.to_be_bytes());
/// ```
pub const MAGIC_COOKIE: u32 = peerpouch::reach::stun::MAGIC_COOKIE;
/// Length of a STUN header (RFC 5389 §6).
///
/// ```
/// use peerpouch_smol::stun::{encode_binding_request, HEADER_LEN};
/// assert_eq!(encode_binding_request([0; 12]).len(), HEADER_LEN);
/// ```
pub const HEADER_LEN: usize = peerpouch::reach::stun::HEADER_LEN;

#[cfg(test)]
const BINDING_ERROR: u16 = 0x0111;
#[cfg(test)]
const ATTR_ERROR_CODE: u16 = peerpouch::reach::stun::attr::ERROR_CODE;
#[cfg(test)]
const ATTR_XOR_MAPPED_ADDRESS: u16 = peerpouch::reach::stun::attr::XOR_MAPPED_ADDRESS;

/// A STUN transaction id (96 bits, RFC 5389 §6).
///
/// ```
/// let tid: peerpouch_smol::stun::TransactionId = [0xAB; 12];
/// # let _ = tid;
/// ```
pub type TransactionId = peerpouch::reach::stun::TransactionId;

/// Why bytes are not a usable Binding response: the core codec's error.
///
/// ```
/// use peerpouch_smol::stun::{decode_binding_response, StunError};
/// assert_eq!(decode_binding_response(b"hello"), Err(StunError::TooShort { len: 5 }));
/// ```
pub use peerpouch::reach::stun::StunError;

/// What a Binding response says.
///
/// ```
/// use peerpouch_smol::stun::BindingOutcome;
/// let o = BindingOutcome::Mapped("203.0.113.5:4000".parse().unwrap());
/// assert!(matches!(o, BindingOutcome::Mapped(_)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BindingOutcome {
    /// Success: the address the server saw the request come from.
    Mapped(SocketAddr),
    /// An error response (RFC 5389 §15.6), e.g. 400 Bad Request.
    Error {
        /// The error code (300..=699).
        code: u16,
        /// The reason phrase.
        reason: String,
    },
}

/// A decoded Binding response.
///
/// ```
/// use peerpouch_smol::stun::{BindingOutcome, BindingResponse};
/// let r = BindingResponse {
///     transaction_id: [7; 12],
///     outcome: BindingOutcome::Mapped("198.51.100.1:5000".parse().unwrap()),
/// };
/// assert_eq!(r.transaction_id, [7; 12]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindingResponse {
    /// The transaction it answers.
    pub transaction_id: TransactionId,
    /// What it says.
    pub outcome: BindingOutcome,
}

/// Encodes a Binding Request (a bare header: no attributes are needed, RFC 5389 §7.1).
///
/// ```
/// use peerpouch_smol::stun::encode_binding_request;
/// let req = encode_binding_request([1; 12]);
/// assert_eq!(&req[..4], &[0x00, 0x01, 0x00, 0x00]);
/// assert_eq!(&req[8..], &[1; 12]);
/// ```
pub fn encode_binding_request(transaction_id: TransactionId) -> [u8; HEADER_LEN] {
    let mut b = [0u8; HEADER_LEN];
    // A header alone always encodes, to exactly HEADER_LEN bytes.
    if let Ok(v) = Message::new(Method::BINDING, Class::Request, transaction_id).encode() {
        b.copy_from_slice(&v);
    }
    b
}

/// The transaction id of anything that looks like an RFC 5389 STUN message (right leading bits,
/// magic cookie), without validating the rest.
///
/// ```
/// use peerpouch_smol::stun::{encode_binding_request, transaction_id};
/// assert_eq!(transaction_id(&encode_binding_request([9; 12])), Some([9; 12]));
/// assert_eq!(transaction_id(b"\x16\xfe\xfd DTLS record......"), None);
/// ```
pub fn transaction_id(bytes: &[u8]) -> Option<TransactionId> {
    peerpouch::reach::stun::transaction_id(bytes)
}

/// Decodes a Binding success or error response with the core codec.
///
/// # Errors
/// A [`StunError`] saying what is wrong with the bytes; never panics, whatever they are.
///
/// ```
/// use peerpouch_smol::stun::{decode_binding_response, encode_binding_success, BindingOutcome};
/// let addr = "192.0.2.7:3478".parse().unwrap();
/// let bytes = encode_binding_success([3; 12], addr);
/// let r = decode_binding_response(&bytes).unwrap();
/// assert_eq!(r.outcome, BindingOutcome::Mapped(addr));
/// ```
pub fn decode_binding_response(bytes: &[u8]) -> Result<BindingResponse, StunError> {
    let m = Message::decode(bytes)?;
    let outcome = match (m.method, m.class) {
        (Method::BINDING, Class::Success) => {
            BindingOutcome::Mapped(m.mapped_address().ok_or(StunError::NoMappedAddress)?)
        }
        (Method::BINDING, Class::Error) => {
            let (code, reason) = m.error_code().ok_or(StunError::BadErrorCode)?;
            BindingOutcome::Error {
                code,
                reason: reason.to_string(),
            }
        }
        _ => {
            return Err(StunError::UnexpectedType(u16::from_be_bytes([
                bytes[0], bytes[1],
            ])));
        }
    };
    Ok(BindingResponse {
        transaction_id: m.transaction_id,
        outcome,
    })
}

/// Encodes a Binding success response with `XOR-MAPPED-ADDRESS` (what a STUN server sends; for
/// tests and fake servers).
///
/// ```
/// use peerpouch_smol::stun::{decode_binding_response, encode_binding_success};
/// let addr = "[2001:db8::1]:9".parse().unwrap();
/// let r = decode_binding_response(&encode_binding_success([5; 12], addr)).unwrap();
/// assert_eq!(r.transaction_id, [5; 12]);
/// ```
pub fn encode_binding_success(transaction_id: TransactionId, mapped: SocketAddr) -> Vec<u8> {
    Message::new(Method::BINDING, Class::Success, transaction_id)
        .with(Attribute::XorMappedAddress(mapped))
        .encode()
        .unwrap_or_default() // one address attribute always fits
}

/// Where one STUN server's query stands.
///
/// ```
/// use peerpouch_smol::StunStatus;
/// let s = StunStatus::TimedOut { bad_responses: 0 };
/// assert!(s.is_settled());
/// assert!(!StunStatus::Pending.is_settled());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StunStatus {
    /// Still asking (retransmitting with exponential back-off).
    Pending,
    /// The server saw the socket as this address; a server-reflexive candidate was added to
    /// every link (str0m drops it as redundant when it equals a host candidate, as on loopback).
    Mapped(SocketAddr),
    /// The server answered with an error response.
    Refused {
        /// STUN error code.
        code: u16,
        /// Reason phrase.
        reason: String,
    },
    /// No valid answer within the configured timeout. `bad_responses` counts datagrams from the
    /// server (or with our transaction id) that did not decode.
    TimedOut {
        /// Undecodable answers seen meanwhile.
        bad_responses: u32,
    },
}

impl StunStatus {
    /// Whether the query is over (anything but [`StunStatus::Pending`]).
    ///
    /// ```
    /// use peerpouch_smol::StunStatus;
    /// assert!(StunStatus::Mapped("127.0.0.1:1".parse().unwrap()).is_settled());
    /// ```
    pub fn is_settled(&self) -> bool {
        !matches!(self, StunStatus::Pending)
    }
}

/// One STUN server and its status.
///
/// ```
/// use peerpouch_smol::{StunServerStatus, StunStatus};
/// let s = StunServerStatus { server: "127.0.0.1:3478".parse().unwrap(), status: StunStatus::Pending };
/// assert_eq!(s.server.port(), 3478);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StunServerStatus {
    /// The server's address.
    pub server: SocketAddr,
    /// Its status.
    pub status: StunStatus,
}

impl StunServerStatus {
    /// The status of one server as the core's gatherer reports it
    /// ([`peerpouch::reach::gather::ServerReport`]): the endpoint asks its STUN servers through
    /// the same client machine as [`crate::PeerNode`].
    pub(crate) fn from_report(report: &ServerReport) -> StunServerStatus {
        let bad_responses = u32::try_from(report.bad_responses).unwrap_or(u32::MAX);
        let status = match &report.state {
            ServerState::Pending => StunStatus::Pending,
            ServerState::Answered { srflx: Some(a), .. } => StunStatus::Mapped(*a),
            // A STUN server answers with an address or not at all; without one the answer
            // was of no use.
            ServerState::Answered { srflx: None, .. } | ServerState::Released => {
                StunStatus::TimedOut { bad_responses }
            }
            ServerState::Failed(f) => match f {
                ClientFailure::Refused { code, reason } => StunStatus::Refused {
                    code: *code,
                    reason: reason.clone(),
                },
                ClientFailure::Unauthorized => refused(401, "Unauthorized"),
                ClientFailure::Forbidden => refused(403, "Forbidden"),
                ClientFailure::AllocationMismatch => refused(437, "Allocation Mismatch"),
                ClientFailure::QuotaReached => refused(486, "Allocation Quota Reached"),
                ClientFailure::InsufficientCapacity => refused(508, "Insufficient Capacity"),
                // Unreachable, only undecodable answers, a closed stream: no answer in time.
                _ => StunStatus::TimedOut { bad_responses },
            },
        };
        StunServerStatus {
            server: report.addr,
            status,
        }
    }
}

fn refused(code: u16, reason: &str) -> StunStatus {
    StunStatus::Refused {
        code,
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error_response(tid: TransactionId, code: u16, reason: &str) -> Vec<u8> {
        let mut value = vec![0, 0, (code / 100) as u8, (code % 100) as u8];
        value.extend_from_slice(reason.as_bytes());
        while value.len() % 4 != 0 {
            value.push(0);
        }
        let mut b = Vec::new();
        b.extend_from_slice(&BINDING_ERROR.to_be_bytes());
        b.extend_from_slice(&((4 + value.len()) as u16).to_be_bytes());
        b.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        b.extend_from_slice(&tid);
        b.extend_from_slice(&ATTR_ERROR_CODE.to_be_bytes());
        b.extend_from_slice(&((4 + reason.len()) as u16).to_be_bytes());
        b.extend_from_slice(&value);
        b
    }

    #[test]
    fn round_trips_v4_and_v6() {
        for addr in ["203.0.113.9:61000", "[2001:db8::42]:1"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let r = decode_binding_response(&encode_binding_success([0xAB; 12], addr)).unwrap();
            assert_eq!(r.transaction_id, [0xAB; 12]);
            assert_eq!(r.outcome, BindingOutcome::Mapped(addr));
        }
    }

    #[test]
    fn decodes_rfc5769_sample_ipv4_response() {
        // RFC 5769 §2.2, without its SOFTWARE/MESSAGE-INTEGRITY/FINGERPRINT checks.
        let hex = "0101003c 2112a442 b7e7a701 bc34d686 fa87dfae 8022000b 74657374 20766563 \
                   746f7220 00200008 0001a147 e112a643 00080014 2b91f599 fd9e90c3 8c7489f9 \
                   2af9ba53 f06be7d7 80280004 c07d4c96";
        let hex: String = hex.split_whitespace().collect();
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
            .collect();
        let r = decode_binding_response(&bytes).unwrap();
        assert_eq!(
            r.outcome,
            BindingOutcome::Mapped("192.0.2.1:32853".parse().unwrap())
        );
    }

    #[test]
    fn decodes_error_responses() {
        let r = decode_binding_response(&error_response([1; 12], 420, "Unknown")).unwrap();
        assert_eq!(
            r.outcome,
            BindingOutcome::Error {
                code: 420,
                reason: "Unknown".into()
            }
        );
    }

    #[test]
    fn garbage_never_panics() {
        let good = encode_binding_success([4; 12], "10.0.0.1:1".parse().unwrap());
        for cut in 0..good.len() {
            let _ = decode_binding_response(&good[..cut]);
        }
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for round in 0..20_000 {
            let mut b = good.clone();
            let flips = 1 + round % 6;
            for _ in 0..flips {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % b.len();
                b[i] = (x >> 32) as u8;
            }
            if round % 3 == 0 {
                b.truncate((x >> 40) as usize % (b.len() + 1));
            }
            let _ = decode_binding_response(&b);
            let _ = transaction_id(&b);
        }
    }

    #[test]
    fn rejects_what_is_not_a_binding_response() {
        assert_eq!(
            decode_binding_response(&encode_binding_request([0; 12])),
            Err(StunError::UnexpectedType(0x0001))
        );
        let mut b = encode_binding_success([0; 12], "10.0.0.1:1".parse().unwrap());
        b[4] = 0;
        assert_eq!(decode_binding_response(&b), Err(StunError::NotStun));
        let mut b = encode_binding_success([0; 12], "10.0.0.1:1".parse().unwrap());
        b.push(0);
        assert!(matches!(
            decode_binding_response(&b),
            Err(StunError::BadLength { .. })
        ));
        let mut b = encode_binding_success([0; 12], "10.0.0.1:1".parse().unwrap());
        b[25] = 0x07; // address family
        assert_eq!(
            decode_binding_response(&b),
            Err(StunError::BadAddress {
                attribute: ATTR_XOR_MAPPED_ADDRESS
            })
        );
    }
}
