//! The STUN (RFC 8489) and TURN (RFC 8656) wire format: messages, attributes, ChannelData and
//! TCP framing.
//!
//! Pure functions and one small buffer ([`StreamDeframer`]); the transactions, retransmissions
//! and the allocation live in [`crate::reach::client`]. Decoding never panics and never
//! allocates more than the input's size: anything malformed is a [`StunError`]. Everything
//! [`Message::decode`] accepts re-encodes with [`Message::encode`] to the same bytes, except the
//! values of padding bytes (written as zeros).
//!
//! ```
//! use peerpouch::reach::stun::{Attribute, Class, Message, Method};
//!
//! let request = Message::new(Method::ALLOCATE, Class::Request, [7; 12])
//!     .with(Attribute::RequestedTransport(17));
//! let bytes = request.encode().unwrap();
//! assert_eq!(Message::decode(&bytes).unwrap(), request);
//! ```

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use sha1::Sha1;

/// The fixed magic cookie of every RFC 5389/8489 message (RFC 8489 §5).
///
/// ```
/// use peerpouch::reach::stun::{Class, Message, Method, MAGIC_COOKIE};
/// let b = Message::new(Method::BINDING, Class::Request, [0; 12]).encode().unwrap();
/// assert_eq!(&b[4..8], &MAGIC_COOKIE.to_be_bytes());
/// ```
pub const MAGIC_COOKIE: u32 = 0x2112_A442;

/// Length of a STUN message header (RFC 8489 §5).
///
/// ```
/// use peerpouch::reach::stun::{Class, Message, Method, HEADER_LEN};
/// let b = Message::new(Method::BINDING, Class::Request, [0; 12]).encode().unwrap();
/// assert_eq!(b.len(), HEADER_LEN);
/// ```
pub const HEADER_LEN: usize = 20;

/// At most this many attributes in one message: more is [`StunError::TooManyAttributes`]. Real
/// messages carry fewer than a dozen; the bound keeps a 64 KiB message of empty attributes from
/// becoming 16k allocations.
///
/// ```
/// assert_eq!(peerpouch::reach::stun::MAX_ATTRIBUTES, 64);
/// ```
pub const MAX_ATTRIBUTES: usize = 64;

/// The first and last channel numbers a client may bind (RFC 8656 §12).
///
/// ```
/// use peerpouch::reach::stun::CHANNEL_NUMBERS;
/// assert!(CHANNEL_NUMBERS.contains(&0x4000) && !CHANNEL_NUMBERS.contains(&0x5000));
/// ```
pub const CHANNEL_NUMBERS: std::ops::RangeInclusive<u16> = 0x4000..=0x4FFF;

/// The largest frame on a TCP stream: a ChannelData message with 65535 bytes of data padded to
/// a multiple of 4 (a STUN message is at most 20 + 65532 bytes).
///
/// ```
/// assert_eq!(peerpouch::reach::stun::MAX_FRAME_LEN, 4 + 65536);
/// ```
pub const MAX_FRAME_LEN: usize = 4 + 65536;

/// What FINGERPRINT's CRC-32 is xored with (RFC 8489 §14.7).
const FINGERPRINT_XOR: u32 = 0x5354_554E;

/// A STUN transaction id (96 bits, RFC 8489 §5).
///
/// ```
/// let tid: peerpouch::reach::stun::TransactionId = [0xAB; 12];
/// # let _ = tid;
/// ```
pub type TransactionId = [u8; 12];

/// Attribute type numbers (RFC 8489 §18.3, RFC 8656 §18).
///
/// ```
/// use peerpouch::reach::stun::attr;
/// assert_eq!(attr::XOR_MAPPED_ADDRESS, 0x0020);
/// ```
pub mod attr {
    /// MAPPED-ADDRESS (RFC 8489 §14.1).
    pub const MAPPED_ADDRESS: u16 = 0x0001;
    /// USERNAME (RFC 8489 §14.3).
    pub const USERNAME: u16 = 0x0006;
    /// MESSAGE-INTEGRITY (RFC 8489 §14.5).
    pub const MESSAGE_INTEGRITY: u16 = 0x0008;
    /// ERROR-CODE (RFC 8489 §14.8).
    pub const ERROR_CODE: u16 = 0x0009;
    /// CHANNEL-NUMBER (RFC 8656 §18.1).
    pub const CHANNEL_NUMBER: u16 = 0x000C;
    /// LIFETIME (RFC 8656 §18.2).
    pub const LIFETIME: u16 = 0x000D;
    /// XOR-PEER-ADDRESS (RFC 8656 §18.3).
    pub const XOR_PEER_ADDRESS: u16 = 0x0012;
    /// DATA (RFC 8656 §18.4).
    pub const DATA: u16 = 0x0013;
    /// REALM (RFC 8489 §14.9).
    pub const REALM: u16 = 0x0014;
    /// NONCE (RFC 8489 §14.10).
    pub const NONCE: u16 = 0x0015;
    /// XOR-RELAYED-ADDRESS (RFC 8656 §18.5).
    pub const XOR_RELAYED_ADDRESS: u16 = 0x0016;
    /// REQUESTED-TRANSPORT (RFC 8656 §18.7).
    pub const REQUESTED_TRANSPORT: u16 = 0x0019;
    /// XOR-MAPPED-ADDRESS (RFC 8489 §14.2).
    pub const XOR_MAPPED_ADDRESS: u16 = 0x0020;
    /// SOFTWARE (RFC 8489 §14.14).
    pub const SOFTWARE: u16 = 0x8022;
    /// FINGERPRINT (RFC 8489 §14.7).
    pub const FINGERPRINT: u16 = 0x8028;
}

/// Why bytes are not a well-formed STUN message, ChannelData message or stream.
///
/// ```
/// use peerpouch::reach::stun::{Message, StunError};
/// assert_eq!(Message::decode(b"hello"), Err(StunError::TooShort { len: 5 }));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StunError {
    /// Fewer bytes than a header.
    #[error("{len} bytes is shorter than a STUN header (20 bytes)")]
    TooShort {
        /// How many bytes there were.
        len: usize,
    },
    /// The first two bits are not zero or the magic cookie is wrong: not RFC 5389/8489 STUN.
    #[error("not a STUN message (bad leading bits or magic cookie)")]
    NotStun,
    /// A STUN message, but not of the type the caller expected.
    #[error("unexpected STUN message type {0:#06x}")]
    UnexpectedType(u16),
    /// The header's length field disagrees with the bytes, or is not a multiple of 4.
    #[error("STUN length field says {declared} bytes of attributes, there are {actual}")]
    BadLength {
        /// Length from the header.
        declared: usize,
        /// Bytes after the header.
        actual: usize,
    },
    /// More than [`MAX_ATTRIBUTES`] attributes.
    #[error("more than {max} STUN attributes in one message")]
    TooManyAttributes {
        /// The bound.
        max: usize,
    },
    /// An attribute (with its padding) runs past the end of the message.
    #[error("STUN attribute {attribute:#06x} runs past the end of the message")]
    TruncatedAttribute {
        /// Its type.
        attribute: u16,
    },
    /// An address attribute with a bad family, length or reserved byte.
    #[error("STUN address attribute {attribute:#06x} is malformed")]
    BadAddress {
        /// Its type.
        attribute: u16,
    },
    /// A text attribute that is not UTF-8.
    #[error("STUN text attribute {attribute:#06x} is not UTF-8")]
    BadText {
        /// Its type.
        attribute: u16,
    },
    /// A fixed-size attribute of the wrong size, or with reserved bits set.
    #[error("STUN attribute {attribute:#06x} has a bad length or reserved bits set")]
    BadValue {
        /// Its type.
        attribute: u16,
    },
    /// A malformed ERROR-CODE (class outside 3..=6, number above 99, reserved bits set).
    #[error("malformed STUN ERROR-CODE")]
    BadErrorCode,
    /// A channel number outside 0x4000..=0x4FFF (RFC 8656 §12).
    #[error("TURN channel number {channel:#06x} is outside 0x4000..=0x4FFF")]
    BadChannel {
        /// The number.
        channel: u16,
    },
    /// Not a ChannelData message (the first two bits are not 01), or its length disagrees with
    /// the bytes.
    #[error("not a well-formed TURN ChannelData message")]
    NotChannelData,
    /// A message too long to encode (an attribute value or the whole body over 65535 bytes).
    #[error("{len} bytes do not fit a STUN message or attribute")]
    TooLong {
        /// The length that did not fit.
        len: usize,
    },
    /// A success response without (XOR-)MAPPED-ADDRESS where one is required.
    #[error("the success response has no (XOR-)MAPPED-ADDRESS")]
    NoMappedAddress,
    /// A frame on a TCP stream longer than [`MAX_FRAME_LEN`].
    #[error("a {len}-byte frame on the TURN TCP stream exceeds {MAX_FRAME_LEN} bytes")]
    FrameTooLarge {
        /// Its length.
        len: usize,
    },
}

/// A STUN method: the 12 bits of the message type that name the operation.
///
/// ```
/// use peerpouch::reach::stun::Method;
/// assert_eq!(Method::ALLOCATE.0, 0x003);
/// assert_eq!(Method::CHANNEL_BIND.to_string(), "ChannelBind");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Method(pub u16);

impl Method {
    /// Binding (RFC 8489 §18.2).
    pub const BINDING: Method = Method(0x001);
    /// Allocate (RFC 8656 §18).
    pub const ALLOCATE: Method = Method(0x003);
    /// Refresh.
    pub const REFRESH: Method = Method(0x004);
    /// Send (indication).
    pub const SEND: Method = Method(0x006);
    /// Data (indication).
    pub const DATA: Method = Method(0x007);
    /// CreatePermission.
    pub const CREATE_PERMISSION: Method = Method(0x008);
    /// ChannelBind.
    pub const CHANNEL_BIND: Method = Method(0x009);
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Method::BINDING => f.write_str("Binding"),
            Method::ALLOCATE => f.write_str("Allocate"),
            Method::REFRESH => f.write_str("Refresh"),
            Method::SEND => f.write_str("Send"),
            Method::DATA => f.write_str("Data"),
            Method::CREATE_PERMISSION => f.write_str("CreatePermission"),
            Method::CHANNEL_BIND => f.write_str("ChannelBind"),
            Method(m) => write!(f, "method {m:#05x}"),
        }
    }
}

/// The class of a STUN message (RFC 8489 §5).
///
/// ```
/// use peerpouch::reach::stun::Class;
/// assert_ne!(Class::Success, Class::Error);
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Class {
    /// A request (expects a response).
    Request,
    /// An indication (no response).
    Indication,
    /// A success response.
    Success,
    /// An error response.
    Error,
}

impl Class {
    fn bits(self) -> u16 {
        match self {
            Class::Request => 0,
            Class::Indication => 1,
            Class::Success => 2,
            Class::Error => 3,
        }
    }
}

/// The 16-bit message type from a method and a class (RFC 8489 §5, figure 3).
///
/// ```
/// use peerpouch::reach::stun::{message_type, Class, Method};
/// assert_eq!(message_type(Method::BINDING, Class::Success), 0x0101);
/// assert_eq!(message_type(Method::ALLOCATE, Class::Error), 0x0113);
/// ```
pub fn message_type(method: Method, class: Class) -> u16 {
    let m = method.0 & 0x0FFF;
    let c = class.bits();
    (m & 0x000F) | ((m & 0x0070) << 1) | ((m & 0x0F80) << 2) | ((c & 1) << 4) | ((c & 2) << 7)
}

/// Splits a 16-bit message type (top two bits zero) into method and class.
///
/// ```
/// use peerpouch::reach::stun::{split_message_type, Class, Method};
/// assert_eq!(split_message_type(0x0017), (Method::DATA, Class::Indication));
/// ```
pub fn split_message_type(t: u16) -> (Method, Class) {
    let m = (t & 0x000F) | ((t >> 1) & 0x0070) | ((t >> 2) & 0x0F80);
    let class = match ((t >> 4) & 1) | ((t >> 7) & 2) {
        0 => Class::Request,
        1 => Class::Indication,
        2 => Class::Success,
        _ => Class::Error,
    };
    (Method(m), class)
}

/// One STUN attribute. Attributes this codec does not know stay as raw bytes
/// ([`Attribute::Unknown`]) so a message re-encodes exactly.
///
/// ```
/// use peerpouch::reach::stun::{attr, Attribute};
/// let a = Attribute::Lifetime(600);
/// assert_eq!(a.kind(), attr::LIFETIME);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Attribute {
    /// MAPPED-ADDRESS (RFC 3489 servers).
    MappedAddress(SocketAddr),
    /// XOR-MAPPED-ADDRESS: the server-reflexive address.
    XorMappedAddress(SocketAddr),
    /// XOR-RELAYED-ADDRESS: the relayed address of an allocation.
    XorRelayedAddress(SocketAddr),
    /// XOR-PEER-ADDRESS: a peer of the allocation.
    XorPeerAddress(SocketAddr),
    /// USERNAME.
    Username(String),
    /// REALM.
    Realm(String),
    /// NONCE.
    Nonce(String),
    /// ERROR-CODE: `code` is class × 100 + number (300..=699).
    ErrorCode {
        /// The code, e.g. 401.
        code: u16,
        /// The reason phrase.
        reason: String,
    },
    /// LIFETIME in seconds.
    Lifetime(u32),
    /// DATA: a relayed datagram.
    Data(Vec<u8>),
    /// CHANNEL-NUMBER (0x4000..=0x4FFF).
    ChannelNumber(u16),
    /// REQUESTED-TRANSPORT: an IP protocol number (17 = UDP).
    RequestedTransport(u8),
    /// SOFTWARE.
    Software(String),
    /// MESSAGE-INTEGRITY: HMAC-SHA1 (check it with [`verify_integrity`]).
    MessageIntegrity([u8; 20]),
    /// FINGERPRINT: CRC-32 xor 0x5354554e (check it with [`verify_fingerprint`]).
    Fingerprint(u32),
    /// Any other attribute, kept as its type and value bytes.
    Unknown {
        /// The attribute type.
        kind: u16,
        /// The value (without padding).
        value: Vec<u8>,
    },
}

impl Attribute {
    /// The attribute's type number.
    ///
    /// ```
    /// use peerpouch::reach::stun::Attribute;
    /// assert_eq!(Attribute::Unknown { kind: 0x8030, value: vec![] }.kind(), 0x8030);
    /// ```
    pub fn kind(&self) -> u16 {
        match self {
            Attribute::MappedAddress(_) => attr::MAPPED_ADDRESS,
            Attribute::XorMappedAddress(_) => attr::XOR_MAPPED_ADDRESS,
            Attribute::XorRelayedAddress(_) => attr::XOR_RELAYED_ADDRESS,
            Attribute::XorPeerAddress(_) => attr::XOR_PEER_ADDRESS,
            Attribute::Username(_) => attr::USERNAME,
            Attribute::Realm(_) => attr::REALM,
            Attribute::Nonce(_) => attr::NONCE,
            Attribute::ErrorCode { .. } => attr::ERROR_CODE,
            Attribute::Lifetime(_) => attr::LIFETIME,
            Attribute::Data(_) => attr::DATA,
            Attribute::ChannelNumber(_) => attr::CHANNEL_NUMBER,
            Attribute::RequestedTransport(_) => attr::REQUESTED_TRANSPORT,
            Attribute::Software(_) => attr::SOFTWARE,
            Attribute::MessageIntegrity(_) => attr::MESSAGE_INTEGRITY,
            Attribute::Fingerprint(_) => attr::FINGERPRINT,
            Attribute::Unknown { kind, .. } => *kind,
        }
    }

    fn decode(kind: u16, v: &[u8], tid: &TransactionId) -> Result<Attribute, StunError> {
        let text = |v: &[u8]| {
            String::from_utf8(v.to_vec()).map_err(|_| StunError::BadText { attribute: kind })
        };
        let fixed = |n: usize| {
            if v.len() == n {
                Ok(())
            } else {
                Err(StunError::BadValue { attribute: kind })
            }
        };
        Ok(match kind {
            attr::MAPPED_ADDRESS => Attribute::MappedAddress(decode_address(kind, v, None)?),
            attr::XOR_MAPPED_ADDRESS => {
                Attribute::XorMappedAddress(decode_address(kind, v, Some(tid))?)
            }
            attr::XOR_RELAYED_ADDRESS => {
                Attribute::XorRelayedAddress(decode_address(kind, v, Some(tid))?)
            }
            attr::XOR_PEER_ADDRESS => {
                Attribute::XorPeerAddress(decode_address(kind, v, Some(tid))?)
            }
            attr::USERNAME => Attribute::Username(text(v)?),
            attr::REALM => Attribute::Realm(text(v)?),
            attr::NONCE => Attribute::Nonce(text(v)?),
            attr::SOFTWARE => Attribute::Software(text(v)?),
            attr::ERROR_CODE => {
                // Reserved bits must be zero so the attribute re-encodes to the same bytes.
                if v.len() < 4 || v[0] != 0 || v[1] != 0 || v[2] & 0xF8 != 0 {
                    return Err(StunError::BadErrorCode);
                }
                let class = u16::from(v[2]);
                let number = u16::from(v[3]);
                if !(3..=6).contains(&class) || number > 99 {
                    return Err(StunError::BadErrorCode);
                }
                Attribute::ErrorCode {
                    code: class * 100 + number,
                    reason: text(&v[4..])?,
                }
            }
            attr::LIFETIME => {
                fixed(4)?;
                Attribute::Lifetime(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
            }
            attr::DATA => Attribute::Data(v.to_vec()),
            attr::CHANNEL_NUMBER => {
                fixed(4)?;
                if v[2] != 0 || v[3] != 0 {
                    return Err(StunError::BadValue { attribute: kind });
                }
                let channel = u16::from_be_bytes([v[0], v[1]]);
                if !CHANNEL_NUMBERS.contains(&channel) {
                    return Err(StunError::BadChannel { channel });
                }
                Attribute::ChannelNumber(channel)
            }
            attr::REQUESTED_TRANSPORT => {
                fixed(4)?;
                if v[1..] != [0, 0, 0] {
                    return Err(StunError::BadValue { attribute: kind });
                }
                Attribute::RequestedTransport(v[0])
            }
            attr::MESSAGE_INTEGRITY => {
                fixed(20)?;
                let mut mac = [0u8; 20];
                mac.copy_from_slice(v);
                Attribute::MessageIntegrity(mac)
            }
            attr::FINGERPRINT => {
                fixed(4)?;
                Attribute::Fingerprint(u32::from_be_bytes([v[0], v[1], v[2], v[3]]))
            }
            _ => Attribute::Unknown {
                kind,
                value: v.to_vec(),
            },
        })
    }

    /// Appends type, length, value and zero padding.
    fn encode_into(&self, tid: &TransactionId, out: &mut Vec<u8>) -> Result<(), StunError> {
        let start = out.len();
        out.extend_from_slice(&self.kind().to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        match self {
            Attribute::MappedAddress(a) => encode_address(*a, None, out),
            Attribute::XorMappedAddress(a)
            | Attribute::XorRelayedAddress(a)
            | Attribute::XorPeerAddress(a) => encode_address(*a, Some(tid), out),
            Attribute::Username(s)
            | Attribute::Realm(s)
            | Attribute::Nonce(s)
            | Attribute::Software(s) => out.extend_from_slice(s.as_bytes()),
            Attribute::ErrorCode { code, reason } => {
                if !(300..=699).contains(code) {
                    return Err(StunError::BadErrorCode);
                }
                // Both fit a byte: the class is 3..=6, the number below 100.
                out.extend_from_slice(&[0, 0, (code / 100) as u8, (code % 100) as u8]);
                out.extend_from_slice(reason.as_bytes());
            }
            Attribute::Lifetime(s) => out.extend_from_slice(&s.to_be_bytes()),
            Attribute::Data(d) => out.extend_from_slice(d),
            Attribute::ChannelNumber(c) => {
                out.extend_from_slice(&c.to_be_bytes());
                out.extend_from_slice(&[0, 0]);
            }
            Attribute::RequestedTransport(p) => out.extend_from_slice(&[*p, 0, 0, 0]),
            Attribute::MessageIntegrity(m) => out.extend_from_slice(m),
            Attribute::Fingerprint(f) => out.extend_from_slice(&f.to_be_bytes()),
            Attribute::Unknown { value, .. } => out.extend_from_slice(value),
        }
        let len = out.len() - start - 4;
        let len16 = u16::try_from(len).map_err(|_| StunError::TooLong { len })?;
        out[start + 2..start + 4].copy_from_slice(&len16.to_be_bytes());
        out.resize(out.len() + pad(len), 0);
        Ok(())
    }
}

/// Bytes of padding after `len` bytes to reach a multiple of 4.
fn pad(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// Decodes (XOR-)MAPPED-ADDRESS-shaped values (RFC 8489 §14.1, §14.2).
fn decode_address(
    attribute: u16,
    v: &[u8],
    xor_with: Option<&TransactionId>,
) -> Result<SocketAddr, StunError> {
    let bad = StunError::BadAddress { attribute };
    if v.len() < 4 || v[0] != 0 {
        return Err(bad);
    }
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let mut port = u16::from_be_bytes([v[2], v[3]]);
    if xor_with.is_some() {
        port ^= (MAGIC_COOKIE >> 16) as u16;
    }
    let ip = match (v[1], v.len()) {
        (0x01, 8) => {
            let mut o = [v[4], v[5], v[6], v[7]];
            if xor_with.is_some() {
                for (b, k) in o.iter_mut().zip(cookie) {
                    *b ^= k;
                }
            }
            IpAddr::V4(Ipv4Addr::from(o))
        }
        (0x02, 20) => {
            let mut o = [0u8; 16];
            o.copy_from_slice(&v[4..20]);
            if let Some(tid) = xor_with {
                for (b, k) in o.iter_mut().zip(cookie.iter().chain(tid.iter())) {
                    *b ^= k;
                }
            }
            IpAddr::V6(Ipv6Addr::from(o))
        }
        _ => return Err(bad),
    };
    Ok(SocketAddr::new(ip, port))
}

fn encode_address(a: SocketAddr, xor_with: Option<&TransactionId>, out: &mut Vec<u8>) {
    let cookie = MAGIC_COOKIE.to_be_bytes();
    let port = if xor_with.is_some() {
        a.port() ^ (MAGIC_COOKIE >> 16) as u16
    } else {
        a.port()
    };
    match a.ip() {
        IpAddr::V4(ip) => {
            out.extend_from_slice(&[0, 0x01]);
            out.extend_from_slice(&port.to_be_bytes());
            if xor_with.is_some() {
                out.extend(ip.octets().iter().zip(cookie).map(|(b, k)| b ^ k));
            } else {
                out.extend_from_slice(&ip.octets());
            }
        }
        IpAddr::V6(ip) => {
            out.extend_from_slice(&[0, 0x02]);
            out.extend_from_slice(&port.to_be_bytes());
            match xor_with {
                Some(tid) => out.extend(
                    ip.octets()
                        .iter()
                        .zip(cookie.iter().chain(tid.iter()))
                        .map(|(b, k)| b ^ k),
                ),
                None => out.extend_from_slice(&ip.octets()),
            }
        }
    }
}

/// A STUN message: header fields and attributes in wire order.
///
/// ```
/// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
/// let m = Message::new(Method::BINDING, Class::Success, [1; 12])
///     .with(Attribute::XorMappedAddress("192.0.2.1:32853".parse().unwrap()));
/// assert_eq!(m.xor_mapped_address(), Some("192.0.2.1:32853".parse().unwrap()));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// The method.
    pub method: Method,
    /// The class.
    pub class: Class,
    /// The transaction id.
    pub transaction_id: TransactionId,
    /// The attributes, in order.
    pub attributes: Vec<Attribute>,
}

impl Message {
    /// A message without attributes.
    ///
    /// ```
    /// use peerpouch::reach::stun::{Class, Message, Method};
    /// let m = Message::new(Method::REFRESH, Class::Request, [2; 12]);
    /// assert!(m.attributes.is_empty());
    /// ```
    pub fn new(method: Method, class: Class, transaction_id: TransactionId) -> Message {
        Message {
            method,
            class,
            transaction_id,
            attributes: Vec::new(),
        }
    }

    /// Adds an attribute (builder style).
    ///
    /// ```
    /// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
    /// let m = Message::new(Method::REFRESH, Class::Request, [2; 12]).with(Attribute::Lifetime(0));
    /// assert_eq!(m.lifetime(), Some(0));
    /// ```
    pub fn with(mut self, attribute: Attribute) -> Message {
        self.attributes.push(attribute);
        self
    }

    /// Decodes a STUN message (RFC 8489 §5, §14). Does not check MESSAGE-INTEGRITY or
    /// FINGERPRINT: see [`verify_integrity`] and [`verify_fingerprint`].
    ///
    /// # Errors
    /// A [`StunError`] saying what is wrong; never panics, whatever the bytes.
    ///
    /// ```
    /// use peerpouch::reach::stun::{Message, StunError};
    /// let mut b = vec![0, 1, 0, 0, 0x21, 0x12, 0xA4, 0x42];
    /// b.extend_from_slice(&[9; 12]);
    /// assert_eq!(Message::decode(&b).unwrap().transaction_id, [9; 12]);
    /// b[4] = 0;
    /// assert_eq!(Message::decode(&b), Err(StunError::NotStun));
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<Message, StunError> {
        let (kind, tid) = header(bytes)?;
        let declared = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        let body = &bytes[HEADER_LEN..];
        if declared != body.len() || declared % 4 != 0 {
            return Err(StunError::BadLength {
                declared,
                actual: body.len(),
            });
        }
        let (method, class) = split_message_type(kind);
        let mut attributes = Vec::new();
        let mut rest = body;
        while !rest.is_empty() {
            if attributes.len() == MAX_ATTRIBUTES {
                return Err(StunError::TooManyAttributes {
                    max: MAX_ATTRIBUTES,
                });
            }
            let (kind, value, next) = split_attribute(rest)?;
            attributes.push(Attribute::decode(kind, value, &tid)?);
            rest = next;
        }
        Ok(Message {
            method,
            class,
            transaction_id: tid,
            attributes,
        })
    }

    /// Encodes the message with its attributes as they are (MESSAGE-INTEGRITY and FINGERPRINT
    /// values included verbatim: use [`Message::encode_signed`] to compute them).
    ///
    /// # Errors
    /// [`StunError::TooLong`] when an attribute or the body exceeds 65535 bytes;
    /// [`StunError::BadErrorCode`] for a code outside 300..=699.
    ///
    /// ```
    /// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
    /// let m = Message::new(Method::SEND, Class::Indication, [3; 12]).with(Attribute::Data(vec![1, 2, 3]));
    /// let b = m.encode().unwrap();
    /// assert_eq!(b.len(), 20 + 4 + 4); // DATA padded to 4 bytes
    /// ```
    pub fn encode(&self) -> Result<Vec<u8>, StunError> {
        let mut out = Vec::with_capacity(HEADER_LEN + 64);
        out.extend_from_slice(&message_type(self.method, self.class).to_be_bytes());
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&MAGIC_COOKIE.to_be_bytes());
        out.extend_from_slice(&self.transaction_id);
        for a in &self.attributes {
            a.encode_into(&self.transaction_id, &mut out)?;
        }
        let len = out.len() - HEADER_LEN;
        set_length(&mut out, len)?;
        Ok(out)
    }

    /// Encodes the message, leaving out any MESSAGE-INTEGRITY or FINGERPRINT among its
    /// attributes, then appends MESSAGE-INTEGRITY computed with `key` (when given, RFC 8489
    /// §14.5) and FINGERPRINT (when asked, §14.7).
    ///
    /// # Errors
    /// As [`Message::encode`].
    ///
    /// ```
    /// use peerpouch::reach::stun::{long_term_key, verify_fingerprint, verify_integrity, Class, Message, Method};
    /// let key = long_term_key("user", "realm", "pass");
    /// let b = Message::new(Method::REFRESH, Class::Request, [4; 12]).encode_signed(Some(&key), true).unwrap();
    /// assert!(verify_integrity(&b, &key));
    /// assert!(verify_fingerprint(&b));
    /// ```
    pub fn encode_signed(
        &self,
        key: Option<&[u8]>,
        fingerprint: bool,
    ) -> Result<Vec<u8>, StunError> {
        let mut plain = self.clone();
        plain.attributes.retain(|a| {
            !matches!(
                a,
                Attribute::MessageIntegrity(_) | Attribute::Fingerprint(_)
            )
        });
        let mut out = plain.encode()?;
        if let Some(key) = key {
            // The length covers the MESSAGE-INTEGRITY attribute itself (RFC 8489 §14.5).
            let len = out.len() - HEADER_LEN + 24;
            set_length(&mut out, len)?;
            let mac = hmac_sha1(key, &out);
            out.extend_from_slice(&attr::MESSAGE_INTEGRITY.to_be_bytes());
            out.extend_from_slice(&20u16.to_be_bytes());
            out.extend_from_slice(&mac);
        }
        if fingerprint {
            let len = out.len() - HEADER_LEN + 8;
            set_length(&mut out, len)?;
            let crc = crc32fast::hash(&out) ^ FINGERPRINT_XOR;
            out.extend_from_slice(&attr::FINGERPRINT.to_be_bytes());
            out.extend_from_slice(&4u16.to_be_bytes());
            out.extend_from_slice(&crc.to_be_bytes());
        }
        Ok(out)
    }

    /// The attributes that count: those before MESSAGE-INTEGRITY (RFC 8489 §14.5: anything
    /// after it but FINGERPRINT is ignored).
    ///
    /// ```
    /// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
    /// let m = Message::new(Method::BINDING, Class::Success, [0; 12])
    ///     .with(Attribute::MessageIntegrity([0; 20]))
    ///     .with(Attribute::Software("sneaked in".into()));
    /// assert_eq!(m.trusted_attributes().count(), 0);
    /// ```
    pub fn trusted_attributes(&self) -> impl Iterator<Item = &Attribute> {
        self.attributes
            .iter()
            .take_while(|a| !matches!(a, Attribute::MessageIntegrity(_)))
    }

    /// Whether the message carries MESSAGE-INTEGRITY.
    ///
    /// ```
    /// use peerpouch::reach::stun::{Class, Message, Method};
    /// assert!(!Message::new(Method::BINDING, Class::Request, [0; 12]).has_integrity());
    /// ```
    pub fn has_integrity(&self) -> bool {
        self.attributes
            .iter()
            .any(|a| matches!(a, Attribute::MessageIntegrity(_)))
    }

    /// Whether the message carries FINGERPRINT.
    ///
    /// ```
    /// use peerpouch::reach::stun::{Class, Message, Method};
    /// assert!(!Message::new(Method::BINDING, Class::Request, [0; 12]).has_fingerprint());
    /// ```
    pub fn has_fingerprint(&self) -> bool {
        self.attributes
            .iter()
            .any(|a| matches!(a, Attribute::Fingerprint(_)))
    }

    fn find<'a, T>(&'a self, f: impl Fn(&'a Attribute) -> Option<T>) -> Option<T> {
        self.trusted_attributes().find_map(f)
    }

    /// The first XOR-MAPPED-ADDRESS (before MESSAGE-INTEGRITY).
    ///
    /// ```
    /// use peerpouch::reach::stun::{Class, Message, Method};
    /// assert_eq!(Message::new(Method::BINDING, Class::Success, [0; 12]).xor_mapped_address(), None);
    /// ```
    pub fn xor_mapped_address(&self) -> Option<SocketAddr> {
        self.find(|a| match a {
            Attribute::XorMappedAddress(x) => Some(*x),
            _ => None,
        })
    }

    /// XOR-MAPPED-ADDRESS, else MAPPED-ADDRESS (RFC 3489 servers).
    ///
    /// ```
    /// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
    /// let a = "198.51.100.2:1".parse().unwrap();
    /// let m = Message::new(Method::BINDING, Class::Success, [0; 12]).with(Attribute::MappedAddress(a));
    /// assert_eq!(m.mapped_address(), Some(a));
    /// ```
    pub fn mapped_address(&self) -> Option<SocketAddr> {
        self.xor_mapped_address().or_else(|| {
            self.find(|a| match a {
                Attribute::MappedAddress(x) => Some(*x),
                _ => None,
            })
        })
    }

    /// The first XOR-RELAYED-ADDRESS.
    ///
    /// ```
    /// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
    /// let a = "203.0.113.9:49152".parse().unwrap();
    /// let m = Message::new(Method::ALLOCATE, Class::Success, [0; 12]).with(Attribute::XorRelayedAddress(a));
    /// assert_eq!(m.relayed_address(), Some(a));
    /// ```
    pub fn relayed_address(&self) -> Option<SocketAddr> {
        self.find(|a| match a {
            Attribute::XorRelayedAddress(x) => Some(*x),
            _ => None,
        })
    }

    /// The first XOR-PEER-ADDRESS.
    ///
    /// ```
    /// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
    /// let a = "203.0.113.9:5000".parse().unwrap();
    /// let m = Message::new(Method::DATA, Class::Indication, [0; 12]).with(Attribute::XorPeerAddress(a));
    /// assert_eq!(m.peer_address(), Some(a));
    /// ```
    pub fn peer_address(&self) -> Option<SocketAddr> {
        self.find(|a| match a {
            Attribute::XorPeerAddress(x) => Some(*x),
            _ => None,
        })
    }

    /// ERROR-CODE as (code, reason).
    ///
    /// ```
    /// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
    /// let m = Message::new(Method::ALLOCATE, Class::Error, [0; 12])
    ///     .with(Attribute::ErrorCode { code: 401, reason: "Unauthorized".into() });
    /// assert_eq!(m.error_code(), Some((401, "Unauthorized")));
    /// ```
    pub fn error_code(&self) -> Option<(u16, &str)> {
        self.find(|a| match a {
            Attribute::ErrorCode { code, reason } => Some((*code, reason.as_str())),
            _ => None,
        })
    }

    /// REALM.
    ///
    /// ```
    /// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
    /// let m = Message::new(Method::ALLOCATE, Class::Error, [0; 12]).with(Attribute::Realm("r".into()));
    /// assert_eq!(m.realm(), Some("r"));
    /// ```
    pub fn realm(&self) -> Option<&str> {
        self.find(|a| match a {
            Attribute::Realm(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// NONCE.
    ///
    /// ```
    /// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
    /// let m = Message::new(Method::ALLOCATE, Class::Error, [0; 12]).with(Attribute::Nonce("n".into()));
    /// assert_eq!(m.nonce(), Some("n"));
    /// ```
    pub fn nonce(&self) -> Option<&str> {
        self.find(|a| match a {
            Attribute::Nonce(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// USERNAME.
    ///
    /// ```
    /// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
    /// let m = Message::new(Method::ALLOCATE, Class::Request, [0; 12]).with(Attribute::Username("u".into()));
    /// assert_eq!(m.username(), Some("u"));
    /// ```
    pub fn username(&self) -> Option<&str> {
        self.find(|a| match a {
            Attribute::Username(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// LIFETIME in seconds.
    ///
    /// ```
    /// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
    /// let m = Message::new(Method::ALLOCATE, Class::Success, [0; 12]).with(Attribute::Lifetime(600));
    /// assert_eq!(m.lifetime(), Some(600));
    /// ```
    pub fn lifetime(&self) -> Option<u32> {
        self.find(|a| match a {
            Attribute::Lifetime(s) => Some(*s),
            _ => None,
        })
    }

    /// DATA.
    ///
    /// ```
    /// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
    /// let m = Message::new(Method::DATA, Class::Indication, [0; 12]).with(Attribute::Data(vec![7]));
    /// assert_eq!(m.data(), Some(&[7u8][..]));
    /// ```
    pub fn data(&self) -> Option<&[u8]> {
        self.find(|a| match a {
            Attribute::Data(d) => Some(d.as_slice()),
            _ => None,
        })
    }

    /// CHANNEL-NUMBER.
    ///
    /// ```
    /// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
    /// let m = Message::new(Method::CHANNEL_BIND, Class::Request, [0; 12]).with(Attribute::ChannelNumber(0x4001));
    /// assert_eq!(m.channel_number(), Some(0x4001));
    /// ```
    pub fn channel_number(&self) -> Option<u16> {
        self.find(|a| match a {
            Attribute::ChannelNumber(c) => Some(*c),
            _ => None,
        })
    }

    /// REQUESTED-TRANSPORT.
    ///
    /// ```
    /// use peerpouch::reach::stun::{Attribute, Class, Message, Method};
    /// let m = Message::new(Method::ALLOCATE, Class::Request, [0; 12]).with(Attribute::RequestedTransport(17));
    /// assert_eq!(m.requested_transport(), Some(17));
    /// ```
    pub fn requested_transport(&self) -> Option<u8> {
        self.find(|a| match a {
            Attribute::RequestedTransport(p) => Some(*p),
            _ => None,
        })
    }
}

/// Checks the fixed header: length, leading bits, magic cookie. Returns (type, transaction id).
fn header(bytes: &[u8]) -> Result<(u16, TransactionId), StunError> {
    if bytes.len() < HEADER_LEN {
        return Err(StunError::TooShort { len: bytes.len() });
    }
    let tid = transaction_id(bytes).ok_or(StunError::NotStun)?;
    Ok((u16::from_be_bytes([bytes[0], bytes[1]]), tid))
}

/// Splits one attribute off `rest`: (type, value, what follows its padding).
fn split_attribute(rest: &[u8]) -> Result<(u16, &[u8], &[u8]), StunError> {
    if rest.len() < 4 {
        return Err(StunError::TruncatedAttribute { attribute: 0 });
    }
    let (t0, t1, l0, l1) = (rest[0], rest[1], rest[2], rest[3]);
    let kind = u16::from_be_bytes([t0, t1]);
    let len = usize::from(u16::from_be_bytes([l0, l1]));
    let end = 4 + len + pad(len);
    if end > rest.len() {
        return Err(StunError::TruncatedAttribute { attribute: kind });
    }
    Ok((kind, &rest[4..4 + len], &rest[end..]))
}

fn set_length(out: &mut [u8], len: usize) -> Result<(), StunError> {
    let len16 = u16::try_from(len).map_err(|_| StunError::TooLong { len })?;
    out[2..4].copy_from_slice(&len16.to_be_bytes());
    Ok(())
}

fn hmac_sha1(key: &[u8], data: &[u8]) -> [u8; 20] {
    // new_from_slice accepts keys of any length for HMAC; the error branch cannot happen.
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
        return [0; 20];
    };
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// The transaction id of anything that looks like an RFC 5389/8489 STUN message (leading bits
/// zero, magic cookie), without validating the rest.
///
/// ```
/// use peerpouch::reach::stun::{transaction_id, Class, Message, Method};
/// let b = Message::new(Method::BINDING, Class::Request, [9; 12]).encode().unwrap();
/// assert_eq!(transaction_id(&b), Some([9; 12]));
/// assert_eq!(transaction_id(b"\x16\xfe\xfd DTLS record......"), None);
/// ```
pub fn transaction_id(bytes: &[u8]) -> Option<TransactionId> {
    if bytes.len() < HEADER_LEN || bytes[0] & 0xC0 != 0 {
        return None;
    }
    if bytes[4..8] != MAGIC_COOKIE.to_be_bytes() {
        return None;
    }
    let mut tid = [0u8; 12];
    tid.copy_from_slice(&bytes[8..20]);
    Some(tid)
}

/// The local ufrag of an ICE connectivity check: the part of the USERNAME attribute before
/// `:` (`RFRAG:LFRAG`, where RFRAG is the receiver's, RFC 8445 §7.2.2), found without decoding
/// or allocating. `None` for anything that is not a well-formed STUN message with a USERNAME
/// holding a `:` (DTLS, SCTP, answers, garbage).
///
/// ```
/// use peerpouch::reach::stun::{ice_local_ufrag, Attribute, Class, Message, Method};
/// let m = Message::new(Method::BINDING, Class::Request, [1; 12])
///     .with(Attribute::Username("ours:theirs".into()));
/// assert_eq!(ice_local_ufrag(&m.encode().unwrap()), Some("ours"));
/// assert_eq!(ice_local_ufrag(b"\x16\xfe\xfd DTLS record......"), None);
/// ```
pub fn ice_local_ufrag(bytes: &[u8]) -> Option<&str> {
    transaction_id(bytes)?;
    let declared = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    if declared + HEADER_LEN != bytes.len() || declared % 4 != 0 {
        return None;
    }
    let mut rest = &bytes[HEADER_LEN..];
    for _ in 0..MAX_ATTRIBUTES {
        if rest.is_empty() {
            return None;
        }
        let (kind, value, next) = split_attribute(rest).ok()?;
        if kind == attr::USERNAME {
            let colon = value.iter().position(|b| *b == b':')?;
            return std::str::from_utf8(&value[..colon]).ok();
        }
        rest = next;
    }
    None
}

/// The long-term credential key: MD5(username ":" realm ":" password) (RFC 8489 §9.2.2).
/// The password is used as given (no OpaqueString preparation: ASCII passwords are unchanged
/// by it, and coturn does not apply it either).
///
/// ```
/// use peerpouch::reach::stun::long_term_key;
/// assert_eq!(long_term_key("user", "realm", "pass"), long_term_key("user", "realm", "pass"));
/// assert_ne!(long_term_key("user", "realm", "pass"), long_term_key("user", "realm", "pasS"));
/// ```
pub fn long_term_key(username: &str, realm: &str, password: &str) -> [u8; 16] {
    let mut h = Md5::new();
    h.update(username.as_bytes());
    h.update(b":");
    h.update(realm.as_bytes());
    h.update(b":");
    h.update(password.as_bytes());
    h.finalize().into()
}

/// Walks the attributes of a structurally valid message and returns the offset of the first
/// attribute of type `kind` with `len` bytes of value.
fn find_attribute_offset(bytes: &[u8], kind: u16, len: usize) -> Option<usize> {
    header(bytes).ok()?;
    let declared = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
    if declared + HEADER_LEN != bytes.len() || declared % 4 != 0 {
        return None;
    }
    let mut offset = HEADER_LEN;
    for _ in 0..MAX_ATTRIBUTES {
        let rest = bytes.get(offset..).filter(|r| !r.is_empty())?;
        let (k, value, next) = split_attribute(rest).ok()?;
        if k == kind {
            return (value.len() == len).then_some(offset);
        }
        offset = bytes.len() - next.len();
    }
    None
}

/// Whether `bytes` carry a MESSAGE-INTEGRITY that matches `key` (RFC 8489 §14.5): HMAC-SHA1
/// over the message up to the attribute, with the header's length adjusted to end with it.
/// Only the attributes before it are covered; callers must ignore those after it (see
/// [`Message::trusted_attributes`]).
///
/// ```
/// use peerpouch::reach::stun::{verify_integrity, Class, Message, Method};
/// let b = Message::new(Method::ALLOCATE, Class::Success, [5; 12]).encode_signed(Some(b"key"), false).unwrap();
/// assert!(verify_integrity(&b, b"key"));
/// assert!(!verify_integrity(&b, b"other key"));
/// ```
pub fn verify_integrity(bytes: &[u8], key: &[u8]) -> bool {
    let Some(offset) = find_attribute_offset(bytes, attr::MESSAGE_INTEGRITY, 20) else {
        return false;
    };
    let mut head = [0u8; HEADER_LEN];
    head.copy_from_slice(&bytes[..HEADER_LEN]);
    // offset + 24 <= bytes.len() <= 20 + 65535, so this fits.
    let adjusted = (offset + 24 - HEADER_LEN) as u16;
    head[2..4].copy_from_slice(&adjusted.to_be_bytes());
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(key) else {
        return false;
    };
    mac.update(&head);
    mac.update(&bytes[HEADER_LEN..offset]);
    mac.verify_slice(&bytes[offset + 4..offset + 24]).is_ok()
}

/// Whether `bytes` end with a FINGERPRINT that matches (RFC 8489 §14.7).
///
/// ```
/// use peerpouch::reach::stun::{verify_fingerprint, Class, Message, Method};
/// let mut b = Message::new(Method::BINDING, Class::Request, [5; 12]).encode_signed(None, true).unwrap();
/// assert!(verify_fingerprint(&b));
/// b[8] ^= 1;
/// assert!(!verify_fingerprint(&b));
/// ```
pub fn verify_fingerprint(bytes: &[u8]) -> bool {
    let Some(offset) = find_attribute_offset(bytes, attr::FINGERPRINT, 4) else {
        return false;
    };
    if offset + 8 != bytes.len() {
        return false; // FINGERPRINT must be the last attribute
    }
    let crc = crc32fast::hash(&bytes[..offset]) ^ FINGERPRINT_XOR;
    bytes[offset + 4..offset + 8] == crc.to_be_bytes()
}

/// A TURN ChannelData message (RFC 8656 §12.4): data for or from the peer bound to `channel`.
///
/// ```
/// use peerpouch::reach::stun::ChannelData;
/// let m = ChannelData { channel: 0x4000, data: vec![1, 2, 3] };
/// assert_eq!(m.encode(false).unwrap(), [0x40, 0x00, 0x00, 0x03, 1, 2, 3]);
/// assert_eq!(m.encode(true).unwrap(), [0x40, 0x00, 0x00, 0x03, 1, 2, 3, 0]);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChannelData {
    /// The channel number (0x4000..=0x4FFF).
    pub channel: u16,
    /// The application data.
    pub data: Vec<u8>,
}

impl ChannelData {
    /// Encodes the message; `padded` adds the zero padding to a multiple of 4 that TCP needs
    /// (RFC 8656 §12.5; over UDP it is optional and we leave it out).
    ///
    /// # Errors
    /// [`StunError::BadChannel`] outside 0x4000..=0x4FFF, [`StunError::TooLong`] for more than
    /// 65535 bytes of data.
    ///
    /// ```
    /// use peerpouch::reach::stun::{ChannelData, StunError};
    /// let m = ChannelData { channel: 0x5000, data: vec![] };
    /// assert_eq!(m.encode(false), Err(StunError::BadChannel { channel: 0x5000 }));
    /// ```
    pub fn encode(&self, padded: bool) -> Result<Vec<u8>, StunError> {
        if !CHANNEL_NUMBERS.contains(&self.channel) {
            return Err(StunError::BadChannel {
                channel: self.channel,
            });
        }
        let len = self.data.len();
        let len16 = u16::try_from(len).map_err(|_| StunError::TooLong { len })?;
        let mut out = Vec::with_capacity(4 + len + 3);
        out.extend_from_slice(&self.channel.to_be_bytes());
        out.extend_from_slice(&len16.to_be_bytes());
        out.extend_from_slice(&self.data);
        if padded {
            out.resize(out.len() + pad(len), 0);
        }
        Ok(out)
    }

    /// Decodes a ChannelData message from a datagram; up to 3 padding bytes after the data are
    /// accepted and dropped.
    ///
    /// # Errors
    /// [`StunError::NotChannelData`] for wrong leading bits or a length that disagrees with the
    /// bytes, [`StunError::BadChannel`] for a reserved channel number.
    ///
    /// ```
    /// use peerpouch::reach::stun::ChannelData;
    /// let m = ChannelData::decode(&[0x40, 0x01, 0x00, 0x01, 9, 0, 0, 0]).unwrap();
    /// assert_eq!((m.channel, m.data), (0x4001, vec![9]));
    /// ```
    pub fn decode(bytes: &[u8]) -> Result<ChannelData, StunError> {
        if bytes.len() < 4 || bytes[0] & 0xC0 != 0x40 {
            return Err(StunError::NotChannelData);
        }
        let channel = u16::from_be_bytes([bytes[0], bytes[1]]);
        if !CHANNEL_NUMBERS.contains(&channel) {
            return Err(StunError::BadChannel { channel });
        }
        let len = usize::from(u16::from_be_bytes([bytes[2], bytes[3]]));
        let body = &bytes[4..];
        if body.len() < len || body.len() > len + pad(len) {
            return Err(StunError::NotChannelData);
        }
        Ok(ChannelData {
            channel,
            data: body[..len].to_vec(),
        })
    }
}

/// Whether a datagram looks like ChannelData (first two bits 01) rather than STUN (00), as
/// RFC 8656 §12 distinguishes them.
///
/// ```
/// use peerpouch::reach::stun::is_channel_data;
/// assert!(is_channel_data(&[0x40, 0, 0, 0]));
/// assert!(!is_channel_data(&[0x00, 1, 0, 0]));
/// ```
pub fn is_channel_data(bytes: &[u8]) -> bool {
    bytes.first().is_some_and(|b| b & 0xC0 == 0x40)
}

/// One frame taken off a TCP stream.
///
/// ```
/// use peerpouch::reach::stun::{ChannelData, Frame};
/// let f = Frame::ChannelData(ChannelData { channel: 0x4000, data: vec![] });
/// assert!(matches!(f, Frame::ChannelData(_)));
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A STUN message's bytes (undecoded, so integrity can be checked on them).
    Stun(Vec<u8>),
    /// A ChannelData message, padding removed.
    ChannelData(ChannelData),
}

/// Cuts a TCP byte stream into STUN messages and ChannelData messages (RFC 8656 §12.5: the
/// first two bits tell them apart; STUN lengths are multiples of 4 and ChannelData is padded to
/// one). Holds at most [`MAX_FRAME_LEN`] bytes: [`StreamDeframer::push`] takes what fits and
/// says how much, so a caller pops frames and pushes the rest. After a framing error the stream
/// cannot be resynchronised: every later [`StreamDeframer::pop`] returns the same error.
///
/// ```
/// use peerpouch::reach::stun::{ChannelData, Frame, StreamDeframer};
/// let bytes = ChannelData { channel: 0x4000, data: vec![1, 2, 3] }.encode(true).unwrap();
/// let mut d = StreamDeframer::new();
/// assert_eq!(d.push(&bytes[..5]), 5);
/// assert_eq!(d.pop(), Ok(None));
/// d.push(&bytes[5..]);
/// assert_eq!(d.pop(), Ok(Some(Frame::ChannelData(ChannelData { channel: 0x4000, data: vec![1, 2, 3] }))));
/// ```
#[derive(Clone, Debug, Default)]
pub struct StreamDeframer {
    buf: Vec<u8>,
    start: usize,
    broken: Option<StunError>,
}

impl StreamDeframer {
    /// An empty deframer.
    ///
    /// ```
    /// assert_eq!(peerpouch::reach::stun::StreamDeframer::new().buffered(), 0);
    /// ```
    pub fn new() -> StreamDeframer {
        StreamDeframer::default()
    }

    /// Bytes held (an incomplete frame, or frames not popped yet); never above
    /// [`MAX_FRAME_LEN`].
    ///
    /// ```
    /// let mut d = peerpouch::reach::stun::StreamDeframer::new();
    /// d.push(&[0, 1]);
    /// assert_eq!(d.buffered(), 2);
    /// ```
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Takes as many of `bytes` as fit and returns how many (0 when full: pop first). A broken
    /// stream takes (and drops) everything, so a push/pop loop always ends.
    ///
    /// ```
    /// use peerpouch::reach::stun::{StreamDeframer, MAX_FRAME_LEN};
    /// let mut d = StreamDeframer::new();
    /// assert_eq!(d.push(&vec![0; MAX_FRAME_LEN + 10]), MAX_FRAME_LEN);
    /// ```
    pub fn push(&mut self, bytes: &[u8]) -> usize {
        if self.broken.is_some() {
            return bytes.len();
        }
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let n = bytes.len().min(MAX_FRAME_LEN - self.buf.len());
        self.buf.extend_from_slice(&bytes[..n]);
        n
    }

    /// The next complete frame, if any.
    ///
    /// # Errors
    /// A framing error (leading bits 10 or 11, no magic cookie, a STUN length that is not a
    /// multiple of 4, a reserved channel number); the stream is then broken for good.
    ///
    /// ```
    /// use peerpouch::reach::stun::{StreamDeframer, StunError};
    /// let mut d = StreamDeframer::new();
    /// d.push(&[0x80, 0, 0, 0]);
    /// assert_eq!(d.pop(), Err(StunError::NotStun));
    /// ```
    pub fn pop(&mut self) -> Result<Option<Frame>, StunError> {
        if let Some(e) = &self.broken {
            return Err(e.clone());
        }
        match self.next_frame() {
            Ok(Some(len)) => {
                let bytes = &self.buf[self.start..self.start + len];
                let frame = if is_channel_data(bytes) {
                    match ChannelData::decode(bytes) {
                        Ok(cd) => Frame::ChannelData(cd),
                        Err(e) => return Err(self.fail(e)),
                    }
                } else {
                    Frame::Stun(bytes.to_vec())
                };
                self.start += len;
                if self.start == self.buf.len() {
                    self.buf.clear();
                    self.start = 0;
                }
                Ok(Some(frame))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(self.fail(e)),
        }
    }

    fn fail(&mut self, e: StunError) -> StunError {
        self.broken = Some(e.clone());
        self.buf = Vec::new();
        self.start = 0;
        e
    }

    /// The length of the complete frame at the front, if it is all there.
    fn next_frame(&self) -> Result<Option<usize>, StunError> {
        let b = &self.buf[self.start..];
        if b.len() < 4 {
            if let Some(first) = b.first() {
                if first & 0x80 != 0 {
                    return Err(StunError::NotStun);
                }
            }
            return Ok(None);
        }
        let len = usize::from(u16::from_be_bytes([b[2], b[3]]));
        let frame_len = match b[0] & 0xC0 {
            0x00 => {
                if len % 4 != 0 {
                    return Err(StunError::BadLength {
                        declared: len,
                        actual: len,
                    });
                }
                if b.len() >= 8 && b[4..8] != MAGIC_COOKIE.to_be_bytes() {
                    return Err(StunError::NotStun);
                }
                HEADER_LEN + len
            }
            0x40 => {
                let channel = u16::from_be_bytes([b[0], b[1]]);
                if !CHANNEL_NUMBERS.contains(&channel) {
                    return Err(StunError::BadChannel { channel });
                }
                4 + len + pad(len)
            }
            _ => return Err(StunError::NotStun),
        };
        if frame_len > MAX_FRAME_LEN {
            return Err(StunError::FrameTooLarge { len: frame_len });
        }
        Ok((b.len() >= frame_len).then_some(frame_len))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 5769 §2.1: a request with short-term credentials, SOFTWARE, PRIORITY, ICE-CONTROLLED,
    /// USERNAME, MESSAGE-INTEGRITY and FINGERPRINT.
    const RFC5769_REQUEST: &str = "
        00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
        00 24 00 04 6e 00 01 ff 80 29 00 08 93 2f f9 b1 51 26 3b 36
        00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20 00 08 00 14
        9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
        80 28 00 04 e5 7a 3b cf";

    /// RFC 5769 §2.2: IPv4 response (192.0.2.1:32853), short-term password "VOkJxbRl1RmTxUk/WvJxBt".
    const RFC5769_RESPONSE_V4: &str = "
        01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20 00 20 00 08
        00 01 a1 47 e1 12 a6 43 00 08 00 14 2b 91 f5 99 fd 9e 90 c3
        8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7 80 28 00 04 c0 7d 4c 96";

    /// RFC 5769 §2.3: IPv6 response (2001:db8:1234:5678:11:2233:4455:6677, port 32853).
    const RFC5769_RESPONSE_V6: &str = "
        01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
        80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20 00 20 00 14
        00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
        00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75
        bf e3 ed 41 80 28 00 04 c8 fb 0b 4c";

    /// RFC 5769 §2.4: a request with long-term credentials (USERNAME "マトリックス",
    /// password "TheMatrIX", REALM "example.org"), per its errata the password as given.
    const RFC5769_LONG_TERM: &str = "
        00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
        00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3
        82 b9 00 00 00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36
        4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41 00 14 00 0b
        65 78 61 6d 70 6c 65 2e 6f 72 67 00 00 08 00 14 f6 70 24 65
        6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

    #[test]
    fn rfc5769_request_short_term() {
        let b = hex(RFC5769_REQUEST);
        let m = Message::decode(&b).unwrap();
        assert_eq!((m.method, m.class), (Method::BINDING, Class::Request));
        assert_eq!(m.username(), Some("evtj:h6vY"));
        assert!(verify_integrity(&b, b"VOkJxbRl1RmTxUk/WvJxBt"));
        assert!(!verify_integrity(&b, b"VOkJxbRl1RmTxUk/WvJxBT"));
        assert!(verify_fingerprint(&b));
        // Re-encoding gives the same bytes except padding (the vector pads USERNAME with
        // spaces, we with zeros).
        let mut again = m.encode().unwrap();
        let user = b.windows(9).position(|w| w == b"evtj:h6vY").unwrap();
        assert_eq!(&again[user + 9..user + 12], &[0, 0, 0]);
        again[user + 9..user + 12].copy_from_slice(b"   ");
        assert_eq!(again, b);
    }

    #[test]
    fn rfc5769_responses_ipv4_and_ipv6() {
        for (vector, addr) in [
            (RFC5769_RESPONSE_V4, "192.0.2.1:32853"),
            (
                RFC5769_RESPONSE_V6,
                "[2001:db8:1234:5678:11:2233:4455:6677]:32853",
            ),
        ] {
            let b = hex(vector);
            let m = Message::decode(&b).unwrap();
            assert_eq!((m.method, m.class), (Method::BINDING, Class::Success));
            assert_eq!(m.xor_mapped_address(), Some(addr.parse().unwrap()));
            assert!(verify_integrity(&b, b"VOkJxbRl1RmTxUk/WvJxBt"));
            assert!(verify_fingerprint(&b));
            // Byte-exact except SOFTWARE's one padding byte (a space in the vector).
            let mut again = m.encode().unwrap();
            assert_eq!(again.len(), b.len());
            again[20 + 4 + 11] = b' ';
            assert_eq!(again, b);
            // And signing our own encoding of it reproduces the vector's MAC and CRC.
            let mut plain = m.clone();
            plain.attributes.truncate(2);
            let mut signed = plain.encode_signed(None, false).unwrap();
            signed[20 + 4 + 11] = b' ';
            let tail = &b[signed.len()..];
            let mut head = signed.clone();
            let adjusted = (head.len() - 20 + 24) as u16;
            head[2..4].copy_from_slice(&adjusted.to_be_bytes());
            assert_eq!(&tail[4..24], &hmac_sha1(b"VOkJxbRl1RmTxUk/WvJxBt", &head));
        }
    }

    #[test]
    fn rfc5769_long_term_credentials() {
        let b = hex(RFC5769_LONG_TERM);
        let m = Message::decode(&b).unwrap();
        assert_eq!(m.username(), Some("マトリックス"));
        assert_eq!(m.realm(), Some("example.org"));
        assert_eq!(m.nonce(), Some("f//499k954d6OL34oL9FSTvy64sA"));
        let key = long_term_key("マトリックス", "example.org", "TheMatrIX");
        assert!(verify_integrity(&b, &key));
        assert!(!verify_integrity(
            &b,
            &long_term_key("マトリックス", "example.org", "thematrix")
        ));
        // Our own signing of the same attributes gives the same bytes.
        let mut plain = m.clone();
        plain
            .attributes
            .retain(|a| !matches!(a, Attribute::MessageIntegrity(_)));
        assert_eq!(plain.encode_signed(Some(&key), false).unwrap(), b);
    }

    #[test]
    fn message_type_bits() {
        for t in 0..0x4000u16 {
            let (m, c) = split_message_type(t);
            assert_eq!(message_type(m, c), t);
        }
        assert_eq!(message_type(Method::CHANNEL_BIND, Class::Success), 0x0109);
        assert_eq!(message_type(Method::SEND, Class::Indication), 0x0016);
    }

    #[test]
    fn every_attribute_round_trips() {
        let tid = [0x5A; 12];
        let v6: SocketAddr = "[2001:db8::7]:4000".parse().unwrap();
        let v4: SocketAddr = "203.0.113.4:3478".parse().unwrap();
        let m = Message::new(Method::ALLOCATE, Class::Success, tid)
            .with(Attribute::MappedAddress(v4))
            .with(Attribute::XorMappedAddress(v6))
            .with(Attribute::XorRelayedAddress(v4))
            .with(Attribute::XorPeerAddress(v6))
            .with(Attribute::Username("u".into()))
            .with(Attribute::Realm("realm".into()))
            .with(Attribute::Nonce("nonce!".into()))
            .with(Attribute::ErrorCode {
                code: 438,
                reason: "Stale Nonce".into(),
            })
            .with(Attribute::Lifetime(u32::MAX))
            .with(Attribute::Data(vec![1, 2, 3, 4, 5]))
            .with(Attribute::ChannelNumber(0x4FFF))
            .with(Attribute::RequestedTransport(17))
            .with(Attribute::Software("peerpouch".into()))
            .with(Attribute::Unknown {
                kind: 0xC001,
                value: vec![9; 3],
            })
            .with(Attribute::MessageIntegrity([3; 20]))
            .with(Attribute::Fingerprint(0xDEAD_BEEF));
        let b = m.encode().unwrap();
        assert_eq!(Message::decode(&b).unwrap(), m);
        assert_eq!(b.len() % 4, 0);
    }

    #[test]
    fn decoder_refuses_malformed_input() {
        let tid = [1; 12];
        let ok = Message::new(Method::BINDING, Class::Success, tid)
            .with(Attribute::XorMappedAddress("10.0.0.1:1".parse().unwrap()))
            .encode()
            .unwrap();
        let mut b = ok.clone();
        b.push(0);
        assert!(matches!(
            Message::decode(&b),
            Err(StunError::BadLength { .. })
        ));
        let mut b = ok.clone();
        b[25] = 0x07; // family
        assert_eq!(
            Message::decode(&b),
            Err(StunError::BadAddress {
                attribute: attr::XOR_MAPPED_ADDRESS
            })
        );
        let mut b = ok.clone();
        b[23] = 200; // attribute length past the end
        assert_eq!(
            Message::decode(&b),
            Err(StunError::TruncatedAttribute {
                attribute: attr::XOR_MAPPED_ADDRESS
            })
        );
        // A channel number out of range.
        let mut m = Message::new(Method::CHANNEL_BIND, Class::Request, tid)
            .with(Attribute::ChannelNumber(0x4000))
            .encode()
            .unwrap();
        m[24] = 0x50;
        assert_eq!(
            Message::decode(&m),
            Err(StunError::BadChannel { channel: 0x5000 })
        );
        // Bad UTF-8.
        let mut m = Message::new(Method::ALLOCATE, Class::Error, tid)
            .with(Attribute::Realm("ab".into()))
            .encode()
            .unwrap();
        m[24] = 0xFF;
        assert_eq!(
            Message::decode(&m),
            Err(StunError::BadText {
                attribute: attr::REALM
            })
        );
        // Too many attributes.
        let mut many = Message::new(Method::BINDING, Class::Success, tid);
        for _ in 0..=MAX_ATTRIBUTES {
            many = many.with(Attribute::Unknown {
                kind: 0x8001,
                value: vec![],
            });
        }
        assert_eq!(
            Message::decode(&many.encode().unwrap()),
            Err(StunError::TooManyAttributes {
                max: MAX_ATTRIBUTES
            })
        );
        // An error code with a bad class.
        let mut m = Message::new(Method::ALLOCATE, Class::Error, tid)
            .with(Attribute::ErrorCode {
                code: 401,
                reason: String::new(),
            })
            .encode()
            .unwrap();
        m[26] = 7;
        assert_eq!(Message::decode(&m), Err(StunError::BadErrorCode));
    }

    #[test]
    fn integrity_covers_only_what_precedes_it() {
        let key = long_term_key("u", "r", "p");
        let m =
            Message::new(Method::ALLOCATE, Class::Success, [2; 12]).with(Attribute::Lifetime(600));
        let mut b = m.encode_signed(Some(&key), false).unwrap();
        assert!(verify_integrity(&b, &key));
        // Flip a bit before the MAC: refused.
        b[26] ^= 1;
        assert!(!verify_integrity(&b, &key));
        b[26] ^= 1;
        // No MESSAGE-INTEGRITY at all: refused.
        assert!(!verify_integrity(&m.encode().unwrap(), &key));
        // Garbage: refused, no panic.
        assert!(!verify_integrity(b"", &key));
        assert!(!verify_fingerprint(&[0; 27]));
    }

    #[test]
    fn channel_data_and_deframer() {
        let cd = ChannelData {
            channel: 0x4001,
            data: vec![7; 5],
        };
        let udp = cd.encode(false).unwrap();
        assert_eq!(ChannelData::decode(&udp).unwrap(), cd);
        let tcp = cd.encode(true).unwrap();
        assert_eq!(tcp.len(), 12);
        assert_eq!(ChannelData::decode(&tcp).unwrap(), cd);
        let mut long = tcp.clone();
        long.extend_from_slice(&[0; 4]);
        assert_eq!(ChannelData::decode(&long), Err(StunError::NotChannelData));
        assert_eq!(
            ChannelData::decode(&udp[..8]),
            Err(StunError::NotChannelData)
        );

        let stun = Message::new(Method::BINDING, Class::Request, [3; 12])
            .encode()
            .unwrap();
        let mut stream = tcp.clone();
        stream.extend_from_slice(&stun);
        stream.extend_from_slice(&tcp);
        for chunk in 1..stream.len() {
            let mut d = StreamDeframer::new();
            let mut frames = Vec::new();
            for piece in stream.chunks(chunk) {
                assert_eq!(d.push(piece), piece.len());
                while let Some(f) = d.pop().unwrap() {
                    frames.push(f);
                }
            }
            assert_eq!(
                frames,
                vec![
                    Frame::ChannelData(cd.clone()),
                    Frame::Stun(stun.clone()),
                    Frame::ChannelData(cd.clone())
                ]
            );
            assert_eq!(d.buffered(), 0);
        }
        let mut d = StreamDeframer::new();
        d.push(&[0x50, 0x00, 0, 0]);
        assert_eq!(d.pop(), Err(StunError::BadChannel { channel: 0x5000 }));
        assert_eq!(d.push(&[1, 2, 3]), 3);
        assert_eq!(d.buffered(), 0);
        assert_eq!(d.pop(), Err(StunError::BadChannel { channel: 0x5000 }));
        // The largest ChannelData fits exactly.
        let big = ChannelData {
            channel: 0x4000,
            data: vec![1; 65535],
        }
        .encode(true)
        .unwrap();
        assert_eq!(big.len(), MAX_FRAME_LEN);
        let mut d = StreamDeframer::new();
        assert_eq!(d.push(&big), MAX_FRAME_LEN);
        assert_eq!(d.push(&[0x40]), 0);
        assert!(matches!(d.pop(), Ok(Some(Frame::ChannelData(_)))));
        assert_eq!(d.push(&[0x40]), 1);
    }

    #[test]
    fn encode_refuses_what_does_not_fit() {
        let m = Message::new(Method::SEND, Class::Indication, [0; 12])
            .with(Attribute::Data(vec![0; 70_000]));
        assert_eq!(m.encode(), Err(StunError::TooLong { len: 70_000 }));
        let m = Message::new(Method::SEND, Class::Indication, [0; 12])
            .with(Attribute::Data(vec![0; 40_000]))
            .with(Attribute::Data(vec![0; 40_000]));
        assert!(matches!(m.encode(), Err(StunError::TooLong { .. })));
    }
}
