//! Helpers shared by the runtime's tests: signal wiring (the hub's job), a time bound, and a
//! seeded byte pattern to check transfers byte by byte.
#![allow(dead_code)]

use std::future::Future;
use std::time::Duration;

use futures_lite::{StreamExt, future};
use peerpouch_smol::{Link, LinkEndpoint, LinkError, SessionRole, SignalData};

/// Runs `fut` to completion, failing the test if it takes longer than `secs` (a bound, not a
/// synchronisation: every wait inside is on an event).
pub fn run<T>(secs: u64, fut: impl Future<Output = T>) -> T {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    smol::block_on(future::or(fut, async {
        smol::Timer::after(Duration::from_secs(secs)).await;
        panic!("the test did not finish within {secs} s");
    }))
}

/// Forwards `from`'s signals to `to` (what the hub does), keeping only those `keep` accepts.
pub fn wire_filtered(from: &Link, to: &Link, keep: fn(&SignalData) -> bool) {
    // A stream and a sink: the task keeps neither link open.
    let (mut signals, sink) = (from.signals(), to.signal_sink());
    smol::spawn(async move {
        while let Some(signal) = signals.next().await {
            if !keep(&signal) {
                continue;
            }
            if let Err(e) = sink.handle_signal(signal).await {
                if matches!(e, LinkError::Closed(_) | LinkError::EndpointStopped) {
                    break;
                }
                panic!("signal refused: {e}");
            }
        }
    })
    .detach();
}

/// Forwards every signal from `from` to `to`.
pub fn wire(from: &Link, to: &Link) {
    wire_filtered(from, to, |_| true);
}

/// An offerer on `a` and an answerer on `b`, signalling wired both ways.
pub fn pair(a: &LinkEndpoint, b: &LinkEndpoint) -> (Link, Link) {
    let offerer = a.create_link(SessionRole::Offerer).expect("offerer");
    let answerer = b.create_link(SessionRole::Answerer).expect("answerer");
    wire(&offerer, &answerer);
    wire(&answerer, &offerer);
    (offerer, answerer)
}

fn splitmix(z: u64) -> u64 {
    peerpouch::rand::SplitMix64::new(z).next_u64()
}

/// A seeded byte stream: the byte at offset `i` depends only on the seed and `i`, so sender and
/// receiver produce the same bytes for the same range, however the stream is cut.
pub struct Pattern {
    seed: u64,
}

impl Pattern {
    pub fn new(seed: u64) -> Pattern {
        Pattern { seed }
    }

    /// Bytes `offset .. offset + out.len()` of the stream.
    pub fn fill(&self, offset: u64, out: &mut [u8]) {
        let mut pos = 0usize;
        let mut word = offset / 8;
        let mut skip = (offset % 8) as usize;
        while pos < out.len() {
            let bytes =
                splitmix(self.seed ^ word.wrapping_mul(0xD6E8_FEB8_6659_FD93)).to_le_bytes();
            let take = (8 - skip).min(out.len() - pos);
            out[pos..pos + take].copy_from_slice(&bytes[skip..skip + take]);
            pos += take;
            skip = 0;
            word += 1;
        }
    }
}

/// Message sizes in `1..=max`, from a seed (sender and receiver draw the same sequence).
pub struct Sizes {
    state: u64,
    max: usize,
}

impl Sizes {
    pub fn new(seed: u64, max: usize) -> Sizes {
        Sizes { state: seed, max }
    }

    pub fn next_size(&mut self) -> usize {
        self.state = splitmix(self.state);
        // Half of the messages at the maximum size, the rest anywhere from 1 byte up.
        if self.state & 1 == 0 {
            self.max
        } else {
            1 + (self.state >> 1) as usize % self.max
        }
    }
}

/// Sends `total` bytes of `Pattern::new(seed)` in messages cut by `Sizes::new(seed, max)`;
/// returns how many messages it sent.
pub async fn send_pattern(
    link: &Link,
    seed: u64,
    total: u64,
    max: usize,
) -> Result<u64, LinkError> {
    let pattern = Pattern::new(seed);
    let mut sizes = Sizes::new(seed, max);
    let (mut offset, mut count) = (0u64, 0u64);
    while offset < total {
        let len = (sizes.next_size() as u64).min(total - offset) as usize;
        let mut msg = vec![0u8; len];
        pattern.fill(offset, &mut msg);
        link.send(msg).await?;
        offset += len as u64;
        count += 1;
    }
    Ok(count)
}

/// Receives `total` bytes and checks every message's length and every byte against the
/// sender's pattern; returns the message count.
pub async fn recv_pattern(
    link: &Link,
    seed: u64,
    total: u64,
    max: usize,
) -> Result<u64, LinkError> {
    let pattern = Pattern::new(seed);
    let mut sizes = Sizes::new(seed, max);
    let (mut offset, mut count) = (0u64, 0u64);
    let mut expected = Vec::new();
    while offset < total {
        let m = link.recv().await?;
        let len = (sizes.next_size() as u64).min(total - offset) as usize;
        assert!(m.binary, "message {count} arrived as text");
        assert_eq!(
            m.data.len(),
            len,
            "message {count} at offset {offset} has the wrong length"
        );
        expected.resize(len, 0);
        pattern.fill(offset, &mut expected);
        if m.data != expected {
            let at = m
                .data
                .iter()
                .zip(&expected)
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            panic!(
                "byte {} of the stream differs (message {count})",
                offset + at as u64
            );
        }
        offset += len as u64;
        count += 1;
    }
    Ok(count)
}
