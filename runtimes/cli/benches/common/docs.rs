//! The documents the peer-to-peer benches replicate (`#[path]`-included by `p2p.rs` and
//! `side_by_side.rs`, so both measure the same data).

use std::sync::OnceLock;

use serde_json::{json, Value};

/// The words of the documents' text. They are drawn with a skew toward the front of the list,
/// as words are in prose, so the documents compress (zstd, as the RPC does it) about as much as
/// real JSON does (`zstd ratio` in the side-by-side table's header), not like padding.
const WORDS: &str = "the of and to in a is that for it as was with be by on not he this are or \
    his from at which but have an had they you were their one all we can her has there been if \
    more when will would who so no time people water garden window morning letter market river \
    kitchen station summer winter evening picture mountain village question history number \
    between through because another country problem service building children together \
    remember possible important something different government information development \
    experience everything understand community beautiful yesterday tomorrow afternoon \
    neighbour breakfast umbrella bicycle library hospital orchestra telescope carpenter \
    lighthouse strawberry thunderstorm wilderness harbour lantern meadow quarter journey silver \
    copper forest island bridge candle";

fn words() -> &'static [&'static str] {
    static W: OnceLock<Vec<&'static str>> = OnceLock::new();
    W.get_or_init(|| WORDS.split_whitespace().collect())
}

/// Document `i`: ~1 KiB of JSON (id, number, title, tags, date, a text of words), the same every
/// run (a seeded xorshift per document).
pub fn doc(i: usize) -> Value {
    let words = words();
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut word = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let u = (x >> 11) as f64 / (1u64 << 53) as f64;
        words[(u * u * words.len() as f64) as usize]
    };
    let title: Vec<&str> = (0..4).map(|_| word()).collect();
    let tags = [word(), word()];
    let mut text = String::new();
    while text.len() < 880 {
        text.push_str(word());
        text.push(' ');
    }
    json!({
        "_id": format!("doc{i:06}"),
        "i": i,
        "type": "note",
        "title": title.join(" "),
        "tags": tags,
        "created": format!(
            "2026-{:02}-{:02}T{:02}:{:02}:{:02}Z",
            1 + i % 12,
            1 + i % 28,
            i % 24,
            i % 60,
            (i * 7) % 60
        ),
        "text": text.trim_end(),
    })
}

/// Documents `range`.
#[allow(dead_code)] // not every bench that includes this module uses every function
pub fn docs(range: std::ops::Range<usize>) -> Vec<Value> {
    range.map(doc).collect()
}

/// How much zstd (as the RPC compresses) shrinks one batch of 100 of these documents.
#[allow(dead_code)]
pub fn zstd_ratio() -> f64 {
    let batch = serde_json::to_vec(&docs(0..100)).expect("json");
    let small = peerpouch::rpc::frame::compress(&batch).map_or(batch.len(), |c| c.len());
    batch.len() as f64 / small as f64
}

/// Writes documents `0..n` into `db` in batches of 1000, checking every write.
#[allow(dead_code)] // not every bench that includes this file writes through a `Db`
pub async fn write_into(db: &peerpouch_smol::Db, n: usize) {
    for start in (0..n).step_by(1000) {
        for r in db
            .bulk_docs(docs(start..(start + 1000).min(n)), true)
            .await
            .expect("write the source docs")
        {
            r.result.expect("a source doc");
        }
    }
}
