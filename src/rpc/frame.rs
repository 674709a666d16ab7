//! Frames: how RPC messages travel in data channel messages.
//!
//! ```text
//! frame   = kind:u8 flags:u8 id:u32be payload
//! flags   = bit 0 MORE: the message continues in the next frame
//!           bit 1 Z: the message's payload is compressed (set on each of its frames)
//!           (other bits must be 0)
//! compressed payload = size:u32le frame   (a zstd frame of `size` bytes once decompressed)
//! ```
//!
//! A message (kind, id, payload) larger than the negotiated frame size is split into frames of
//! at most that size, sent back to back; the receiver reassembles them with a bound on memory.
//! Every frame is non-empty (str0m stalls a channel on an empty message) and at least the header
//! long.
//!
//! A peer may send compressed (`Z`) messages only when the receiver's hello listed the `zstd`
//! capability ([`crate::rpc::wire::CAP_ZSTD`]); the receiver's [`Assembler`] then accepts them
//! ([`Assembler::accept_compressed`]) and hands over the decompressed payload, never larger
//! than its message limit. Compression is what makes peer-to-peer replication cheap: the cost of a
//! WebRTC data channel (SCTP chunks, DTLS records, datagrams) grows with the bytes sent, and
//! batches of JSON documents compress well (see [`compress`]).

use super::RpcError;

/// Bytes of the frame header.
pub const HEADER_LEN: usize = 6;
/// Smallest frame size peers may negotiate.
pub const MIN_FRAME: usize = 1024;
const MORE: u8 = 1;
const Z: u8 = 2;
/// The zstd level: 1 compresses batches of JSON documents ~3.4× at several hundred MB/s (LZ4,
/// tried first, got 2.35× and made peer-to-peer replication 12% slower than zstd end to end).
const ZSTD_LEVEL: i32 = 1;
/// Messages shorter than this are sent as they are: compressing them saves too little.
pub const COMPRESS_MIN: usize = 512;

/// What a message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Kind {
    /// The first message each way: version, ids, limits, proof (JSON).
    Hello = 1,
    /// A call or a subscription (JSON).
    Request = 2,
    /// The answer to a call (JSON), or an attachment's metadata before its bytes.
    Response = 3,
    /// One batch of a live changes subscription (JSON).
    StreamItem = 4,
    /// The end of a subscription (JSON: why).
    StreamEnd = 5,
    /// The client stops a call or subscription (empty payload).
    Cancel = 6,
    /// Raw bytes that belong to the response with the same id (attachments).
    Binary = 7,
    /// The sender closes the link, with a CouchDB-shaped reason (JSON).
    Goodbye = 8,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Request,
            3 => Kind::Response,
            4 => Kind::StreamItem,
            5 => Kind::StreamEnd,
            6 => Kind::Cancel,
            7 => Kind::Binary,
            8 => Kind::Goodbye,
            _ => return None,
        })
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Message kind.
    pub kind: Kind,
    /// Message id (the request it belongs to; 0 for hello and goodbye).
    pub id: u32,
    /// More frames of this message follow.
    pub more: bool,
    /// The message's payload is compressed (see the [module docs](self)).
    pub compressed: bool,
    /// This frame's share of the payload.
    pub payload: &'a [u8],
}

impl<'a> Frame<'a> {
    /// Decodes one frame.
    ///
    /// # Errors
    /// [`RpcError::Malformed`] for a short frame, an unknown kind or unknown flags.
    pub fn decode(bytes: &'a [u8]) -> Result<Frame<'a>, RpcError> {
        if bytes.len() < HEADER_LEN {
            return Err(RpcError::Malformed(format!(
                "frame of {} bytes is shorter than its header",
                bytes.len()
            )));
        }
        let kind = Kind::from_u8(bytes[0])
            .ok_or_else(|| RpcError::Malformed(format!("unknown frame kind {}", bytes[0])))?;
        let flags = bytes[1];
        if flags & !(MORE | Z) != 0 {
            return Err(RpcError::Malformed(format!(
                "unknown frame flags {flags:#04x}"
            )));
        }
        let id = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        Ok(Frame {
            kind,
            id,
            more: flags & MORE != 0,
            compressed: flags & Z != 0,
            payload: &bytes[HEADER_LEN..],
        })
    }

    /// Encodes this frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.payload.len());
        v.push(self.kind as u8);
        v.push(flags(self.more, self.compressed));
        v.extend_from_slice(&self.id.to_be_bytes());
        v.extend_from_slice(self.payload);
        v
    }
}

/// The flags byte of a frame.
pub(crate) fn flags(more: bool, compressed: bool) -> u8 {
    (if more { MORE } else { 0 }) | (if compressed { Z } else { 0 })
}

/// Splits a message into frames of at most `frame_size` bytes (header included).
pub fn split(kind: Kind, id: u32, payload: &[u8], frame_size: usize) -> Vec<Vec<u8>> {
    split_with(kind, id, payload, frame_size, false)
}

/// [`split`] for a payload that is already compressed ([`compress`]): every frame carries the
/// `Z` flag.
pub fn split_with(
    kind: Kind,
    id: u32,
    payload: &[u8],
    frame_size: usize,
    compressed: bool,
) -> Vec<Vec<u8>> {
    let chunk = frame_size.max(MIN_FRAME) - HEADER_LEN;
    if payload.is_empty() {
        return vec![Frame {
            kind,
            id,
            more: false,
            compressed,
            payload: &[],
        }
        .encode()];
    }
    let n = payload.len().div_ceil(chunk);
    payload
        .chunks(chunk)
        .enumerate()
        .map(|(i, part)| {
            Frame {
                kind,
                id,
                more: i + 1 < n,
                compressed,
                payload: part,
            }
            .encode()
        })
        .collect()
}

/// Compresses message payloads for one link: the zstd context is made on first use and kept
/// (making one per message costs more than compressing a batch), so an idle or uncompressed
/// link holds none.
#[derive(Default)]
pub struct Compressor {
    cx: Option<zstd::bulk::Compressor<'static>>,
}

/// Debug for a holder of a zstd context (which has no `Debug`): whether it was made yet.
macro_rules! debug_context {
    ($t:ident, $field:ident) => {
        impl std::fmt::Debug for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($t))
                    .field("context", &self.$field.is_some())
                    .finish()
            }
        }
    };
}
debug_context!(Compressor, cx);
debug_context!(Decompressor, dx);

impl Compressor {
    /// The `compressed payload` of the [module docs](self) for `payload`, or `None` when that
    /// would not save at least an eighth of it (short messages, data that is already compressed
    /// such as images): such a message is sent as it is.
    pub fn compress(&mut self, payload: &[u8]) -> Option<Vec<u8>> {
        let size = u32::try_from(payload.len()).ok()?;
        if payload.len() < COMPRESS_MIN {
            return None;
        }
        if self.cx.is_none() {
            // Fails only when memory is short: then the message goes uncompressed.
            self.cx = new_compressor().ok();
        }
        let cx = self.cx.as_mut()?;
        // The output may take 7/8 of the input at most: zstd stops (an error) as soon as it
        // would not fit, so incompressible data costs little.
        let mut body = Vec::with_capacity(payload.len() - payload.len() / 8 - 4);
        cx.compress_to_buffer(payload, &mut body).ok()?;
        let mut out = Vec::with_capacity(4 + body.len());
        out.extend_from_slice(&size.to_le_bytes());
        out.extend_from_slice(&body);
        Some(out)
    }
}

/// A level-1 context with a 64 KiB window and an 8K-entry hash table: 297 KiB instead of the
/// default 494 KiB, for the same ratio on batches of documents (3.46× against 3.47× on 120 KB
/// of `_bulk_get` answer); longer messages still compress, with matches at most 64 KiB back.
fn new_compressor() -> std::io::Result<zstd::bulk::Compressor<'static>> {
    let mut cx = zstd::bulk::Compressor::new(ZSTD_LEVEL)?;
    cx.set_parameter(zstd::zstd_safe::CParameter::WindowLog(16))?;
    cx.set_parameter(zstd::zstd_safe::CParameter::HashLog(13))?;
    Ok(cx)
}

/// Decompresses the messages of one link, within a limit; its zstd context (93 KiB) is made on
/// first use and kept. It decompresses in one pass into a buffer of the stated size, so a frame
/// that claims a large window makes it allocate nothing more.
#[derive(Default)]
pub struct Decompressor {
    dx: Option<zstd::bulk::Decompressor<'static>>,
}

impl Decompressor {
    /// Decompresses a `compressed payload` (see the [module docs](self)) of at most
    /// `max_message` bytes once decompressed.
    ///
    /// # Errors
    /// [`RpcError::TooLarge`] when its stated size is over `max_message` (checked before
    /// anything is allocated); [`RpcError::Malformed`] when it is not a valid zstd frame of
    /// exactly that size.
    pub fn decompress(&mut self, payload: &[u8], max_message: usize) -> Result<Vec<u8>, RpcError> {
        let Some((size, body)) = payload.split_first_chunk::<4>() else {
            return Err(RpcError::Malformed(format!(
                "a compressed message of {} bytes is shorter than its size",
                payload.len()
            )));
        };
        let size = u32::from_le_bytes(*size) as usize;
        if size > max_message {
            return Err(RpcError::TooLarge {
                what: "decompressed message",
                size,
                limit: max_message,
            });
        }
        if self.dx.is_none() {
            self.dx = Some(zstd::bulk::Decompressor::new().map_err(|e| {
                RpcError::Malformed(format!("no zstd context for a compressed message: {e}"))
            })?);
        }
        let dx = self.dx.as_mut().expect("made above");
        // The output never grows past `size`: a frame that holds more is an error.
        let mut out = Vec::with_capacity(size);
        match dx.decompress_to_buffer(body, &mut out) {
            Ok(n) if n == size => Ok(out),
            Ok(n) => Err(RpcError::Malformed(format!(
                "a compressed message says {size} bytes but holds {n}"
            ))),
            Err(e) => Err(RpcError::Malformed(format!("zstd: {e}"))),
        }
    }
}

/// [`Compressor::compress`] with a context of its own (for one-off use; links keep theirs).
///
/// ```
/// use peerpouch::rpc::frame::{compress, decompress};
///
/// let batch = br#"{"docs":[{"_id":"a","text":"hello hello hello"},{"_id":"b","text":"hello hello"}]}"#
///     .repeat(20);
/// let small = compress(&batch).expect("JSON compresses");
/// assert!(small.len() < batch.len() / 4);
/// assert_eq!(decompress(&small, 1 << 20).unwrap(), batch);
/// assert_eq!(compress(b"short"), None);
/// ```
pub fn compress(payload: &[u8]) -> Option<Vec<u8>> {
    Compressor::default().compress(payload)
}

/// [`Decompressor::decompress`] with a context of its own.
///
/// # Errors
/// As [`Decompressor::decompress`].
pub fn decompress(payload: &[u8], max_message: usize) -> Result<Vec<u8>, RpcError> {
    Decompressor::default().decompress(payload, max_message)
}

/// A whole message, reassembled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Kind.
    pub kind: Kind,
    /// Id.
    pub id: u32,
    /// All of its payload.
    pub payload: Vec<u8>,
}

/// Reassembles messages from frames. Frames of different ids may interleave (so a small answer
/// need not wait behind a large one); frames of one id arrive in order, one message at a time.
/// All messages in progress together may hold at most `max_message` bytes.
#[derive(Debug)]
pub struct Assembler {
    max_message: usize,
    max_frame: usize,
    /// Messages in progress, with whether they are compressed.
    partial: std::collections::BTreeMap<u32, (Message, bool)>,
    held: usize,
    /// Compressed messages are accepted (and decompressed with this).
    unpack: Option<Decompressor>,
}

impl Assembler {
    /// An assembler with limits on messages and frames.
    pub fn new(max_message: usize, max_frame: usize) -> Assembler {
        Assembler {
            max_message,
            max_frame,
            partial: std::collections::BTreeMap::new(),
            held: 0,
            unpack: None,
        }
    }

    /// Accepts compressed messages (once our hello offered the `zstd` capability); they are
    /// decompressed on arrival, within the message limit. Without it, a `Z` frame is malformed.
    pub fn accept_compressed(&mut self, yes: bool) {
        self.unpack = yes.then(Decompressor::default);
    }

    /// Sets the frame limit (after the hellos agreed on one).
    pub fn set_max_frame(&mut self, max_frame: usize) {
        self.max_frame = max_frame;
    }

    /// Bytes held for messages in progress.
    pub fn buffered(&self) -> usize {
        self.held
    }

    /// Announces that the next message of `id` (of `kind`) will be `len` bytes long, so its
    /// buffer is allocated once instead of grown frame by frame (an attachment's length comes in
    /// its metadata). Announcements over the memory limit are ignored: the limit still applies
    /// as frames arrive.
    pub fn expect(&mut self, kind: Kind, id: u32, len: usize) {
        if len <= self.max_message && !self.partial.contains_key(&id) {
            self.partial.insert(
                id,
                (
                    Message {
                        kind,
                        id,
                        payload: Vec::with_capacity(len),
                    },
                    false,
                ),
            );
        }
    }

    /// Takes one frame; returns the message it completes, if any.
    ///
    /// # Errors
    /// [`RpcError::Malformed`] for a bad frame, a frame of another kind (or compression) while a
    /// message of its id is in progress, a `Z` frame not accepted or a bad zstd frame;
    /// [`RpcError::TooLarge`] over the frame or memory limit (a decompressed message included).
    /// The assembler must not be used after an error (the link closes).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Message>, RpcError> {
        if bytes.len() > self.max_frame {
            return Err(RpcError::TooLarge {
                what: "frame",
                size: bytes.len(),
                limit: self.max_frame,
            });
        }
        let f = Frame::decode(bytes)?;
        if f.compressed && self.unpack.is_none() {
            return Err(RpcError::Malformed(format!(
                "frame of {:?} {} is compressed, but zstd was not offered",
                f.kind, f.id
            )));
        }
        let mut m = match self.partial.remove(&f.id) {
            // A message announced by `expect` takes its compression from its first frame.
            Some((m, z)) if m.kind == f.kind && (z == f.compressed || m.payload.is_empty()) => {
                self.held -= m.payload.len();
                m
            }
            Some((m, _)) => {
                return Err(RpcError::Malformed(format!(
                    "frame of {:?} {} arrived inside message {:?} {} (or changed its compression)",
                    f.kind, f.id, m.kind, m.id
                )))
            }
            None => Message {
                kind: f.kind,
                id: f.id,
                payload: Vec::new(),
            },
        };
        if self.held + m.payload.len() + f.payload.len() > self.max_message {
            return Err(RpcError::TooLarge {
                what: "message",
                size: self.held + m.payload.len() + f.payload.len(),
                limit: self.max_message,
            });
        }
        m.payload.extend_from_slice(f.payload);
        if f.more {
            self.held += m.payload.len();
            self.partial.insert(f.id, (m, f.compressed));
            Ok(None)
        } else if let (true, Some(unpack)) = (f.compressed, self.unpack.as_mut()) {
            // The other messages in progress keep their share of the limit.
            m.payload = unpack.decompress(&m.payload, self.max_message - self.held)?;
            Ok(Some(m))
        } else {
            Ok(Some(m))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_and_reassemble() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| i as u8).collect();
        let frames = split(Kind::Response, 7, &payload, 1024);
        assert_eq!(frames.len(), 10_000usize.div_ceil(1024 - HEADER_LEN));
        assert!(frames.iter().all(|f| !f.is_empty() && f.len() <= 1024));
        let mut a = Assembler::new(1 << 20, 1024);
        let mut out = None;
        for f in &frames {
            out = a.push(f).unwrap().or(out);
        }
        let m = out.unwrap();
        assert_eq!((m.kind, m.id, m.payload), (Kind::Response, 7, payload));
        let empty = split(Kind::Cancel, 3, &[], 1024);
        assert_eq!(empty, vec![vec![6, 0, 0, 0, 0, 3]]);
    }

    #[test]
    fn compressed_messages_are_decompressed_within_the_limits() {
        let payload =
            br#"{"_id":"doc","text":"0000000000000000000000000000000000000042"}"#.repeat(400);
        let small = compress(&payload).unwrap();
        assert!(small.len() * 10 < payload.len());
        let frames = split_with(Kind::Response, 9, &small, 1024, true);
        // Not offered: the first compressed frame is malformed.
        let mut a = Assembler::new(1 << 20, 1024);
        assert!(matches!(a.push(&frames[0]), Err(RpcError::Malformed(_))));
        let mut a = Assembler::new(1 << 20, 1024);
        a.accept_compressed(true);
        let mut out = None;
        for f in &frames {
            out = a.push(f).unwrap().or(out);
        }
        assert_eq!(out.unwrap().payload, payload);
        assert_eq!(a.buffered(), 0);
        // The decompressed size counts against the limit, with what other messages hold.
        let mut a = Assembler::new(payload.len() + 10, 1024);
        a.accept_compressed(true);
        a.push(&[2, 1, 0, 0, 0, 5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11])
            .unwrap();
        let mut r = Ok(None);
        for f in &frames {
            r = a.push(f);
            if r.is_err() {
                break;
            }
        }
        assert!(
            matches!(
                r,
                Err(RpcError::TooLarge {
                    what: "decompressed message",
                    ..
                })
            ),
            "{r:?}"
        );
        // Incompressible or short data is not compressed.
        let mut x = 0x9e37_79b9_7f4a_7c15_u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(compress(&noise), None);
        assert_eq!(compress(&payload[..COMPRESS_MIN - 1]), None);
        assert!(matches!(
            decompress(&[1, 0], 10),
            Err(RpcError::Malformed(_))
        ));
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut a = Assembler::new(100, 1024);
        assert!(matches!(a.push(&[1, 0, 0]), Err(RpcError::Malformed(_))));
        assert!(matches!(
            a.push(&[99, 0, 0, 0, 0, 1]),
            Err(RpcError::Malformed(_))
        ));
        assert!(matches!(
            a.push(&[2, 2, 0, 0, 0, 1]),
            Err(RpcError::Malformed(_))
        ));
        let mut a = Assembler::new(10, 1024);
        assert!(matches!(
            a.push(&[2, 1, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]),
            Err(RpcError::TooLarge { .. })
        ));
        let mut a = Assembler::new(100, 1024);
        a.push(&[2, 1, 0, 0, 0, 1, 9]).unwrap();
        assert!(matches!(
            a.push(&[3, 0, 0, 0, 0, 1, 9]),
            Err(RpcError::Malformed(_))
        ));
        // Another id may interleave; together they stay under the memory limit.
        let mut a = Assembler::new(10, 1024);
        a.push(&[2, 1, 0, 0, 0, 1, 1, 2, 3, 4, 5, 6]).unwrap();
        let done = a.push(&[2, 0, 0, 0, 0, 2, 7]).unwrap().unwrap();
        assert_eq!(done.payload, vec![7]);
        assert!(matches!(
            a.push(&[2, 1, 0, 0, 0, 3, 1, 2, 3, 4, 5]),
            Err(RpcError::TooLarge { .. })
        ));
        let mut a = Assembler::new(100, 8);
        assert!(matches!(
            a.push(&[2, 0, 0, 0, 0, 1, 1, 2, 3]),
            Err(RpcError::TooLarge { .. })
        ));
    }
}
