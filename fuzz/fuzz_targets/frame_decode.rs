//! RPC framing (`peerpouch::rpc::frame`) on raw bytes.
//!
//! 1. The whole input as one frame: `Frame::decode` never panics, and a frame it accepts encodes
//!    back to exactly the input bytes.
//! 2. The input cut into frames by a length prefix scheme, pushed into an `Assembler` with small
//!    limits read from the input (at most 64 KiB per message, 16 KiB per frame; compression
//!    accepted or not): it never panics, compressed messages decompress within the limit,
//!    `buffered()` never exceeds `max_message`, every message it completes is at most
//!    `max_message` bytes, and it agrees push by push with a reference model written from the
//!    docs (errors, completed messages, bytes held). After its first error the assembler is not
//!    used again, as its docs require.
//! 3. `split` of a payload taken from the input: every frame is non-empty, at least the header
//!    long and at most the frame size; the frames decode, and reassemble to the payload. The
//!    same for the payload compressed by `compress` (when it compresses) and `split_with`.
//!
//! Input layout for 2 and 3:
//!
//! ```text
//! max_message:u16le max_frame:u16le split_frame:u16le piece*
//!   (the top bit of split_frame: the assembler accepts compressed messages)
//! piece = len:u16be bytes[len]              (len < 0x8000: the next len bytes, or what is left)
//!       | len:u16be head[<=6]               (len >= 0x8000: up to 6 header bytes from the input,
//!                                            then zeros up to len & 0x7fff bytes in all)
//! ```
//!
//! The padded pieces reach frames and messages over the limits with inputs of a few bytes.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use peerpouch::rpc::frame::{
    compress, split, split_with, Assembler, Frame, Kind, HEADER_LEN, MIN_FRAME,
};
use peerpouch::rpc::RpcError;

/// Largest `max_message` the assembler is given.
const MAX_MESSAGE: usize = 64 * 1024;
/// Largest `max_frame` the assembler is given.
const MAX_FRAME: usize = 16 * 1024;

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }

    fn u16le(&mut self) -> u16 {
        let b = self.take(2);
        u16::from_le_bytes([
            b.first().copied().unwrap_or(0),
            b.get(1).copied().unwrap_or(0),
        ])
    }

    fn u16be(&mut self) -> Option<u16> {
        match self.take(2) {
            [a, b] => Some(u16::from_be_bytes([*a, *b])),
            _ => None,
        }
    }
}

/// What the assembler's docs promise, written independently.
struct Model {
    max_message: usize,
    max_frame: usize,
    z: bool,
    /// id -> (kind, compressed, payload so far)
    partial: BTreeMap<u32, (u8, bool, Vec<u8>)>,
}

/// The model's outcome of a push: an error (which kind), nothing yet, or a whole message.
#[derive(Debug, PartialEq)]
enum Outcome {
    Malformed,
    TooLarge,
    Pending,
    Done(u8, u32, Vec<u8>),
}

impl Model {
    fn held(&self) -> usize {
        self.partial.values().map(|(_, _, p)| p.len()).sum()
    }

    fn push(&mut self, bytes: &[u8]) -> Outcome {
        if bytes.len() > self.max_frame {
            return Outcome::TooLarge;
        }
        if bytes.len() < HEADER_LEN || !(1..=8).contains(&bytes[0]) || bytes[1] & !3 != 0 {
            return Outcome::Malformed;
        }
        let kind = bytes[0];
        let more = bytes[1] & 1 != 0;
        let z = bytes[1] & 2 != 0;
        if z && !self.z {
            return Outcome::Malformed;
        }
        let id = u32::from_be_bytes([bytes[2], bytes[3], bytes[4], bytes[5]]);
        let payload = &bytes[HEADER_LEN..];
        if let Some((k, was_z, so_far)) = self.partial.get(&id) {
            if *k != kind || (*was_z != z && !so_far.is_empty()) {
                return Outcome::Malformed;
            }
        }
        // All messages in progress together, this frame's share included.
        if self.held() + payload.len() > self.max_message {
            return Outcome::TooLarge;
        }
        let (_, _, mut so_far) = self.partial.remove(&id).unwrap_or((kind, z, Vec::new()));
        so_far.extend_from_slice(payload);
        if more {
            self.partial.insert(id, (kind, z, so_far));
            Outcome::Pending
        } else if z {
            // size:u32le, then a zstd frame of exactly that many bytes, which must fit in what
            // the other messages in progress leave of the limit.
            let Some((size, block)) = so_far.split_first_chunk::<4>() else {
                return Outcome::Malformed;
            };
            let size = u32::from_le_bytes(*size) as usize;
            if size > self.max_message - self.held() {
                return Outcome::TooLarge;
            }
            match zstd::bulk::decompress(block, size) {
                Ok(out) if out.len() == size => Outcome::Done(kind, id, out),
                _ => Outcome::Malformed,
            }
        } else {
            Outcome::Done(kind, id, so_far)
        }
    }
}

fn check_decode(bytes: &[u8]) {
    let Ok(frame) = Frame::decode(bytes) else {
        return;
    };
    assert_eq!(
        frame.encode(),
        bytes,
        "an accepted frame does not encode back to its bytes: {frame:?}"
    );
    assert_eq!(frame.payload.len() + HEADER_LEN, bytes.len());
}

fn check_assembler(max_message: usize, max_frame: usize, z: bool, pieces: &[Vec<u8>]) {
    let mut asm = Assembler::new(max_message, max_frame);
    asm.accept_compressed(z);
    let mut model = Model {
        max_message,
        max_frame,
        z,
        partial: BTreeMap::new(),
    };
    for piece in pieces {
        let expected = model.push(piece);
        let got = asm.push(piece);
        let got = match got {
            Err(RpcError::Malformed(_)) => Outcome::Malformed,
            Err(RpcError::TooLarge { size, limit, .. }) => {
                assert!(size > limit, "TooLarge with {size} <= {limit}");
                Outcome::TooLarge
            }
            Err(e) => panic!("assembler error of an unexpected kind: {e:?}"),
            Ok(None) => Outcome::Pending,
            Ok(Some(m)) => {
                assert!(
                    m.payload.len() <= max_message,
                    "completed message of {} bytes over max_message {max_message}",
                    m.payload.len()
                );
                Outcome::Done(m.kind as u8, m.id, m.payload)
            }
        };
        assert_eq!(got, expected, "assembler and model disagree on {piece:?}");
        if matches!(got, Outcome::Malformed | Outcome::TooLarge) {
            // "The assembler must not be used after an error."
            return;
        }
        assert!(
            asm.buffered() <= max_message,
            "assembler holds {} bytes, over max_message {max_message}",
            asm.buffered()
        );
        assert_eq!(asm.buffered(), model.held(), "bytes held");
    }
}

fn kind_of(b: u8) -> Kind {
    match b % 8 {
        0 => Kind::Hello,
        1 => Kind::Request,
        2 => Kind::Response,
        3 => Kind::StreamItem,
        4 => Kind::StreamEnd,
        5 => Kind::Cancel,
        6 => Kind::Binary,
        _ => Kind::Goodbye,
    }
}

fn check_split(frame_size: usize, data: &[u8]) {
    let (kind, id, payload) = match data {
        [k, a, b, rest @ ..] => (kind_of(*k), u32::from(u16::from_be_bytes([*a, *b])), rest),
        _ => return,
    };
    let frames = split(kind, id, payload, frame_size);
    check_frames(frame_size, (kind, id, payload), &frames, false);
    if let Some(small) = compress(payload) {
        assert!(small.len() < payload.len(), "compress made it longer");
        let frames = split_with(kind, id, &small, frame_size, true);
        check_frames(frame_size, (kind, id, payload), &frames, true);
    }
}

/// The frames of one message are well formed and reassemble to `payload`.
fn check_frames(
    frame_size: usize,
    (kind, id, payload): (Kind, u32, &[u8]),
    frames: &[Vec<u8>],
    z: bool,
) {
    let limit = frame_size.max(MIN_FRAME);
    let mut asm = Assembler::new(payload.len(), limit);
    asm.accept_compressed(z);
    let mut done = None;
    for (i, f) in frames.iter().enumerate() {
        assert!(
            f.len() >= HEADER_LEN && f.len() <= limit,
            "split frame of {} bytes (frame size {frame_size})",
            f.len()
        );
        assert!(!f.is_empty());
        let last = i + 1 == frames.len();
        let d = Frame::decode(f).expect("split frame decodes");
        assert_eq!(d.more, !last, "MORE flag on frame {i} of {}", frames.len());
        assert_eq!(d.compressed, z, "Z flag on frame {i}");
        assert!(
            last || !d.payload.is_empty(),
            "empty payload before the last frame"
        );
        assert!(done.is_none(), "message completed before its last frame");
        done = asm.push(f).expect("split frames reassemble");
    }
    let m = done.expect("split frames complete a message");
    assert_eq!((m.kind, m.id), (kind, id));
    assert_eq!(m.payload, payload);
}

fuzz_target!(|data: &[u8]| {
    check_decode(data);

    let mut r = Reader(data);
    let max_message = (usize::from(r.u16le()) + 1).min(MAX_MESSAGE);
    let max_frame = usize::from(r.u16le()) % (MAX_FRAME + 1);
    let split_frame = r.u16le();
    let z = split_frame & 0x8000 != 0;
    let split_frame = usize::from(split_frame & 0x7fff);
    let rest = r.0;
    let mut pieces = Vec::new();
    while let Some(len) = r.u16be() {
        let piece = if len & 0x8000 == 0 {
            r.take(usize::from(len)).to_vec()
        } else {
            let mut p = r.take(HEADER_LEN).to_vec();
            p.resize(usize::from(len & 0x7fff).max(p.len()), 0);
            p
        };
        check_decode(&piece);
        pieces.push(piece);
    }
    check_assembler(max_message, max_frame, z, &pieces);
    check_split(split_frame, rest);
});
