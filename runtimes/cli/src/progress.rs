//! What `replicate` shows a person on a terminal: a progress bar with a total, a rate and an
//! ETA, lines printed above it, and a summary whose duration reads well at any length.
//!
//! The total is an estimate made before the first change is read: the rows a changes feed
//! can still return are at most the source's documents (`doc_count + doc_del_count`, one row
//! per document) and at most the sequences left (`update_seq - since`). The smaller of the two
//! bounds is the bar's length; when more rows come (the source is being written meanwhile) the
//! length grows with them, so the bar never runs past its end.

use std::cell::{Cell, RefCell};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use peerpouch::replicate::Progress;
use peerpouch::{DbInfo, Seq};

/// How often the bar may redraw, at most (per second).
const REDRAW_HZ: u8 = 10;

/// The rows a changes feed from `since` can still return, at most.
pub(crate) fn rows_left(info: &DbInfo, since: &Seq) -> u64 {
    rows_left_of(info.doc_count, info.doc_del_count, &info.update_seq, since)
}

fn rows_left_of(doc_count: u64, doc_del_count: u64, update_seq: &Seq, since: &Seq) -> u64 {
    let docs = doc_count.saturating_add(doc_del_count);
    let seqs = match (update_seq.as_u64(), since.as_u64()) {
        (Some(update), Some(since)) => Some(update.saturating_sub(since)),
        _ => None,
    };
    // A resumed run cannot return more rows than there are documents either; a first run
    // (since 0) is bounded by both, and the documents are the tighter bound after updates.
    match seqs {
        Some(s) => s.min(docs),
        None => docs,
    }
}

/// A duration as a person reads it: `850 ms`, `2.31 s`, `4 min 05 s`, `1 h 02 min`.
pub(crate) fn human_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{:.2} s", d.as_secs_f64())
    } else if ms < 3_600_000 {
        let s = d.as_secs();
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        let m = d.as_secs() / 60;
        format!("{} h {:02} min", m / 60, m % 60)
    }
}

/// A number of bytes as a person reads it: `512 B`, `12.3 KiB`, `4.1 MiB`, `1.20 GiB`.
pub(crate) fn human_bytes(n: u64) -> String {
    const KIB: f64 = 1024.0;
    let f = n as f64;
    if f < KIB {
        format!("{n} B")
    } else if f < KIB * KIB {
        format!("{:.1} KiB", f / KIB)
    } else if f < KIB * KIB * KIB {
        format!("{:.1} MiB", f / (KIB * KIB))
    } else {
        format!("{:.2} GiB", f / (KIB * KIB * KIB))
    }
}

/// Time left, rounded as a person would say it: `12 s`, `3 min 10 s`.
pub(crate) fn human_eta(d: Duration) -> String {
    // Rounded up: "0 s" left would be a promise the last batch cannot keep.
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    if s < 60 {
        format!("{s} s")
    } else if s < 3600 {
        format!("{} min {:02} s", s / 60, s % 60)
    } else {
        format!("{} h {:02} min", s / 3600, (s / 60) % 60)
    }
}

/// A rate as a person reads it (`12,345 docs/s` is too precise; `12.3k docs/s`).
pub(crate) fn human_rate(count: u64, d: Duration) -> Option<String> {
    let secs = d.as_secs_f64();
    if count == 0 || secs < 0.001 {
        return None;
    }
    let r = count as f64 / secs;
    Some(if r >= 10_000.0 {
        format!("{:.1}k docs/s", r / 1000.0)
    } else if r >= 100.0 {
        format!("{r:.0} docs/s")
    } else {
        format!("{r:.1} docs/s")
    })
}

/// The progress display of one `replicate` command: a bar on a terminal, nothing otherwise
/// (`--json` and redirected stderr print their own lines).
pub(crate) struct ProgressView {
    bar: Option<ProgressBar>,
    live: bool,
    /// When the current run started reading, and the changes read before it: the rate and
    /// the ETA are this run's (indicatif's own estimate jumps with the first batch).
    run: Cell<Option<(Instant, u64)>>,
    /// The latest figures, and the bytes the node received from the network: while a large
    /// attachment crosses a link, the document count stands still and the bytes move.
    last: RefCell<Option<Progress>>,
    bytes: Cell<Option<u64>>,
    /// A live replication read everything there was and waits for changes.
    caught: Cell<bool>,
    /// A run started reading changes.
    reading: Cell<bool>,
}

impl ProgressView {
    /// A bar on stderr when `enabled` (stderr is a terminal and no `--json`), else a view that
    /// only passes lines through.
    pub(crate) fn new(enabled: bool, live: bool) -> ProgressView {
        let bar = enabled.then(|| {
            let bar =
                ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(REDRAW_HZ));
            bar.set_style(Self::spinner_style());
            bar.set_message("opening");
            bar.enable_steady_tick(Duration::from_millis(1000 / u64::from(REDRAW_HZ)));
            bar
        });
        ProgressView {
            bar,
            live,
            run: Cell::new(None),
            last: RefCell::new(None),
            bytes: Cell::new(None),
            caught: Cell::new(false),
            reading: Cell::new(false),
        }
    }

    fn spinner_style() -> ProgressStyle {
        ProgressStyle::with_template("{spinner} [{elapsed}] {msg}").expect("a valid template")
    }

    fn bar_style() -> ProgressStyle {
        ProgressStyle::with_template("{spinner} {bar:16} {human_pos}/{human_len} changes, {msg}")
            .expect("a valid template")
    }

    /// Whether a bar is drawn.
    pub(crate) fn is_drawn(&self) -> bool {
        self.bar.is_some()
    }

    /// The run starts reading changes from `since`; `rows_left` is the estimate of what is to
    /// come (see [`rows_left`]), `done_before` what earlier runs of this command read.
    /// `at` is when the run started (the rate counts from there).
    pub(crate) fn started(&self, rows_left: Option<u64>, done_before: u64, at: Instant) {
        let Some(bar) = &self.bar else { return };
        self.reading.set(true);
        match rows_left {
            Some(n) => {
                bar.set_style(Self::bar_style());
                bar.set_length(done_before.saturating_add(n));
                bar.set_position(done_before);
                // The rate and ETA count from here, not from the earlier runs.
                self.run.set(Some((at, done_before)));
            }
            None => bar.set_style(Self::spinner_style()),
        }
        bar.set_message("");
    }

    /// The bytes the node has received from the network so far (a peer is one side).
    pub(crate) fn bytes(&self, received: u64) {
        if self.bar.is_none() || self.bytes.replace(Some(received)) == Some(received) {
            return;
        }
        let last = self.last.borrow().clone();
        match last {
            Some(p) => self.render(&p),
            None => {
                if let Some(bar) = &self.bar {
                    // Before the first batch: opening, or reading the first one.
                    let doing = if self.reading.get() {
                        "reading"
                    } else {
                        "opening"
                    };
                    bar.set_message(format!("{doing}, {} received", human_bytes(received)));
                }
            }
        }
    }

    /// The bytes part of a message: `, 4.1 MiB received`, or nothing without a peer.
    fn bytes_part(&self) -> String {
        self.bytes
            .get()
            .map(|b| format!(", {} received", human_bytes(b)))
            .unwrap_or_default()
    }

    fn render(&self, p: &Progress) {
        if self.caught.get() {
            self.caught_up(p);
        } else {
            self.update(p);
        }
    }

    /// New figures (the whole command's, earlier runs included).
    pub(crate) fn update(&self, p: &Progress) {
        let Some(bar) = &self.bar else { return };
        self.last.replace(Some(p.clone()));
        self.caught.set(false);
        if bar.length().is_some_and(|len| p.changes_read > len) {
            bar.set_length(p.changes_read);
        }
        bar.set_position(p.changes_read);
        let mut msg = format!("{} written", p.docs_written);
        if let Some((since, base)) = self.run.get() {
            let elapsed = since.elapsed();
            let done = p.changes_read.saturating_sub(base);
            if let (Some(rate), Some(len)) = (human_rate(p.docs_written, elapsed), bar.length()) {
                msg.push_str(&format!(", {rate}"));
                let secs = elapsed.as_secs_f64();
                if done > 0 && secs > 0.0 {
                    let left = len.saturating_sub(p.changes_read) as f64 * secs / done as f64;
                    msg.push_str(&format!(
                        ", ETA {}",
                        human_eta(Duration::from_secs_f64(left))
                    ));
                }
            }
        }
        msg.push_str(&self.bytes_part());
        bar.set_message(msg);
    }

    /// A live replication read everything there was: from now on it waits for changes.
    pub(crate) fn caught_up(&self, p: &Progress) {
        let Some(bar) = &self.bar else { return };
        if self.live {
            self.last.replace(Some(p.clone()));
            self.caught.set(true);
            bar.set_style(Self::spinner_style());
            bar.set_message(format!(
                "{} docs written, {} changes read{}; following changes (Ctrl-C ends)",
                p.docs_written,
                p.changes_read,
                self.bytes_part()
            ));
        } else {
            self.update(p);
        }
    }

    /// Prints a line above the bar (or simply on stderr).
    pub(crate) fn say(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Removes the bar (before the summary, or an error).
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

impl Drop for ProgressView {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rows_left(counts: &(u64, u64, serde_json::Value), since: &Seq) -> u64 {
        rows_left_of(counts.0, counts.1, &Seq(counts.2.clone()), since)
    }

    #[test]
    fn rows_left_is_the_tighter_of_documents_and_sequences() {
        // First run over a database whose documents were each updated many times.
        assert_eq!(rows_left(&(1000, 10, json!(5000)), &Seq::zero()), 1010);
        // A resumed run: only the sequences after the checkpoint remain.
        assert_eq!(rows_left(&(1000, 0, json!(5000)), &Seq(json!(4990))), 10);
        // CouchDB's opaque sequences carry a number in front.
        assert_eq!(
            rows_left(&(20, 0, json!("30-g1AAAA")), &Seq(json!("25-g1AAAB"))),
            5
        );
        // A sequence without a number: the documents still bound it.
        assert_eq!(rows_left(&(7, 1, json!("opaque")), &Seq::zero()), 8);
        // A checkpoint ahead of the source (a restored backup): nothing left, not a wrap.
        assert_eq!(rows_left(&(3, 0, json!(2)), &Seq(json!(9))), 0);
    }

    #[test]
    fn durations_read_well_at_every_length() {
        assert_eq!(human_duration(Duration::from_millis(0)), "0 ms");
        assert_eq!(human_duration(Duration::from_millis(850)), "850 ms");
        assert_eq!(human_duration(Duration::from_millis(2312)), "2.31 s");
        assert_eq!(human_duration(Duration::from_secs(245)), "4 min 05 s");
        assert_eq!(human_duration(Duration::from_secs(3720)), "1 h 02 min");
    }

    #[test]
    fn bytes_read_well() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(12_595), "12.3 KiB");
        assert_eq!(human_bytes(4_299_161), "4.1 MiB");
        assert_eq!(human_bytes(1_288_490_189), "1.20 GiB");
    }

    #[test]
    fn etas_round_to_seconds() {
        assert_eq!(human_eta(Duration::from_millis(12_700)), "13 s");
        assert_eq!(human_eta(Duration::ZERO), "0 s");
        assert_eq!(human_eta(Duration::from_secs(190)), "3 min 10 s");
        assert_eq!(human_eta(Duration::from_secs(7300)), "2 h 01 min");
    }

    #[test]
    fn rates_have_sensible_precision() {
        assert_eq!(human_rate(0, Duration::from_secs(1)), None);
        assert_eq!(human_rate(10, Duration::ZERO), None);
        assert_eq!(human_rate(5, Duration::from_secs(2)).unwrap(), "2.5 docs/s");
        assert_eq!(
            human_rate(20_000, Duration::from_secs(2)).unwrap(),
            "10.0k docs/s"
        );
        assert_eq!(
            human_rate(1500, Duration::from_secs(3)).unwrap(),
            "500 docs/s"
        );
    }

    #[test]
    fn a_view_without_a_terminal_draws_nothing() {
        let v = ProgressView::new(false, true);
        assert!(!v.is_drawn());
        v.started(Some(10), 0, Instant::now());
        v.update(&Progress::default());
        v.finish();
    }
}
