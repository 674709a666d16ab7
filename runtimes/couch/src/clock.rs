//! The wall clock, read in one place for every runtime.

use std::time::{SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch by the system clock (`0` for a clock set before 1970):
/// what the core's machines take once, at start, to date hub documents.
///
/// ```
/// let ms = peerpouch_couch::wall_clock_ms();
/// assert!(ms > 1_600_000_000_000);
/// ```
pub fn wall_clock_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
