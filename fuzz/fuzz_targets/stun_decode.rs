//! The STUN/TURN codec (`peerpouch::reach::stun`) on raw bytes.
//!
//! 1. `Message::decode` never panics; a message it accepts encodes back to bytes of the same
//!    length that are equal to the input except in padding, and decode to the same message.
//!    `verify_integrity` and `verify_fingerprint` never panic.
//! 2. `ChannelData::decode` likewise: an accepted message re-encodes (without padding) to a
//!    prefix of the input and decodes to itself.
//! 3. A `StreamDeframer` fed the input in chunks whose sizes come from the input's first byte
//!    never panics, never holds more than `MAX_FRAME_LEN` bytes, pops only frames of at most
//!    that size, and after an error keeps returning it.
#![no_main]

use libfuzzer_sys::fuzz_target;
use peerpouch::reach::stun::{
    verify_fingerprint, verify_integrity, ChannelData, Frame, Message, StreamDeframer,
    MAX_FRAME_LEN,
};

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        let again = m.encode().expect("a decoded message encodes");
        assert_eq!(again.len(), data.len(), "re-encoded length");
        assert_eq!(&again[..20], &data[..20], "header");
        assert_eq!(Message::decode(&again).as_ref(), Ok(&m), "decode(encode(m)) == m");
        // Equal except padding: zero the padding of both and compare.
        let strip = |b: &[u8]| {
            let mut b = b.to_vec();
            let mut i = 20;
            while i + 4 <= b.len() {
                let len = usize::from(u16::from_be_bytes([b[i + 2], b[i + 3]]));
                let end = i + 4 + len;
                let padded = i + 4 + len.div_ceil(4) * 4;
                let stop = padded.min(b.len());
                for x in &mut b[end.min(padded)..stop] {
                    *x = 0;
                }
                i = padded;
            }
            b
        };
        assert_eq!(strip(&again), strip(data), "bytes differ beyond padding");
    }
    let _ = verify_integrity(data, b"key");
    let _ = verify_fingerprint(data);

    if let Ok(cd) = ChannelData::decode(data) {
        let again = cd.encode(false).expect("a decoded ChannelData encodes");
        assert_eq!(&data[..again.len()], &again[..], "ChannelData re-encodes to a prefix");
        assert_eq!(ChannelData::decode(&again), Ok(cd.clone()));
        let padded = cd.encode(true).unwrap();
        assert_eq!(padded.len() % 4, 0);
        assert_eq!(ChannelData::decode(&padded), Ok(cd));
    }

    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let mut d = StreamDeframer::new();
    let mut chunk_rng = u32::from(first) | 1;
    let mut input = rest;
    let mut failed = None;
    // Pushing the same bytes again and again reaches the size bound with short inputs.
    let rounds = if first & 0x80 != 0 { 8 } else { 1 };
    for _ in 0..rounds {
        input = rest;
        while !input.is_empty() {
            chunk_rng ^= chunk_rng << 13;
            chunk_rng ^= chunk_rng >> 17;
            chunk_rng ^= chunk_rng << 5;
            let want = 1 + (chunk_rng as usize) % input.len().min(if first & 0x40 != 0 { 70_000 } else { 7 });
            let n = d.push(&input[..want]);
            assert!(n <= want);
            assert!(d.buffered() <= MAX_FRAME_LEN, "deframer holds {}", d.buffered());
            input = &input[n..];
            loop {
                match d.pop() {
                    Ok(Some(Frame::Stun(b))) => assert!(b.len() <= MAX_FRAME_LEN && b.len() >= 20),
                    Ok(Some(Frame::ChannelData(cd))) => assert!(cd.data.len() < MAX_FRAME_LEN),
                    Ok(None) => break,
                    Err(e) => {
                        if let Some(f) = &failed {
                            assert_eq!(f, &e, "a broken stream reports its first error");
                        }
                        failed = Some(e);
                        break;
                    }
                }
            }
            if failed.is_some() {
                assert_eq!(d.buffered(), 0);
                assert_eq!(d.pop(), Err(failed.clone().unwrap()));
            }
            // Frames were popped after every push, and a full buffer always holds a complete
            // frame: so the next push always makes progress.
            assert!(n > 0, "push made no progress with {} bytes held", d.buffered());
        }
    }
    let _ = input;
});
