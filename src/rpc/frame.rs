//! Frames: how RPC messages travel in data channel messages.
//!
//! ```text
//! frame   = kind:u8 flags:u8 id:u32be payload
//! flags   = bit 0 MORE: the message continues in the next frame (other bits must be 0)
//! ```
//!
//! A message (kind, id, payload) larger than the negotiated frame size is split into frames of
//! at most that size, sent back to back; the receiver reassembles them with a bound on memory.
//! Every frame is non-empty (str0m stalls a channel on an empty message) and at least the header
//! long.

use super::RpcError;

/// Bytes of the frame header.
pub const HEADER_LEN: usize = 6;
/// Smallest frame size peers may negotiate.
pub const MIN_FRAME: usize = 1024;
const MORE: u8 = 1;

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
        if flags & !MORE != 0 {
            return Err(RpcError::Malformed(format!(
                "unknown frame flags {flags:#04x}"
            )));
        }
        let id = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        Ok(Frame {
            kind,
            id,
            more: flags & MORE != 0,
            payload: &bytes[HEADER_LEN..],
        })
    }

    /// Encodes this frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.payload.len());
        v.push(self.kind as u8);
        v.push(if self.more { MORE } else { 0 });
        v.extend_from_slice(&self.id.to_be_bytes());
        v.extend_from_slice(self.payload);
        v
    }
}

/// Splits a message into frames of at most `frame_size` bytes (header included).
pub fn split(kind: Kind, id: u32, payload: &[u8], frame_size: usize) -> Vec<Vec<u8>> {
    let chunk = frame_size.max(MIN_FRAME) - HEADER_LEN;
    if payload.is_empty() {
        return vec![Frame {
            kind,
            id,
            more: false,
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
                payload: part,
            }
            .encode()
        })
        .collect()
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
    partial: std::collections::BTreeMap<u32, Message>,
    held: usize,
}

impl Assembler {
    /// An assembler with limits on messages and frames.
    pub fn new(max_message: usize, max_frame: usize) -> Assembler {
        Assembler {
            max_message,
            max_frame,
            partial: std::collections::BTreeMap::new(),
            held: 0,
        }
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
                Message {
                    kind,
                    id,
                    payload: Vec::with_capacity(len),
                },
            );
        }
    }

    /// Takes one frame; returns the message it completes, if any.
    ///
    /// # Errors
    /// [`RpcError::Malformed`] for a bad frame or a frame of another kind while a message of its
    /// id is in progress; [`RpcError::TooLarge`] over the frame or memory limit. The assembler
    /// must not be used after an error (the link closes).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Option<Message>, RpcError> {
        if bytes.len() > self.max_frame {
            return Err(RpcError::TooLarge {
                what: "frame",
                size: bytes.len(),
                limit: self.max_frame,
            });
        }
        let f = Frame::decode(bytes)?;
        let mut m = match self.partial.remove(&f.id) {
            Some(m) if m.kind == f.kind => {
                self.held -= m.payload.len();
                m
            }
            Some(m) => {
                return Err(RpcError::Malformed(format!(
                    "frame of {:?} {} arrived inside message {:?} {}",
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
            self.partial.insert(f.id, m);
            Ok(None)
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
