//! Counts of what an input could not turn into events, with rate-limited
//! warnings.
//!
//! A broken client can send millions of bad lines; logging each would flood
//! the log and slow the input. The first few of each kind are logged one by
//! one with the reason, then only counted; the counts are logged when a
//! connection closes and when the input stops, so nothing goes missing
//! without a trace.

use std::sync::atomic::{AtomicU64, Ordering};

/// How many problems of one kind are logged one by one per input.
pub(crate) const WARN_FIRST: u64 = 10;

/// What went wrong with one unit of input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Problem {
    /// Longer than the configured maximum: skipped.
    Oversized,
    /// The parser refused it (logged, and skipped or kept per `on_error`).
    Unparsable,
    /// The framing was broken (msgpack garbage, a bad octet count): the
    /// connection was closed.
    BadFrame,
}

impl Problem {
    fn name(self) -> &'static str {
        match self {
            Problem::Oversized => "oversized",
            Problem::Unparsable => "unparsable",
            Problem::BadFrame => "bad frame",
        }
    }
}

/// Counters of one input, shared by its connections.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    oversized: AtomicU64,
    unparsable: AtomicU64,
    bad_frames: AtomicU64,
}

impl Counters {
    fn counter(&self, p: Problem) -> &AtomicU64 {
        match p {
            Problem::Oversized => &self.oversized,
            Problem::Unparsable => &self.unparsable,
            Problem::BadFrame => &self.bad_frames,
        }
    }

    /// Counts one problem; returns true when it should be logged on its own
    /// (the first [`WARN_FIRST`] of its kind). The caller logs the details;
    /// when the limit is reached a note says that the rest are only counted.
    pub(crate) fn note(&self, id: &str, p: Problem) -> bool {
        let n = self.counter(p).fetch_add(1, Ordering::Relaxed) + 1;
        if n == WARN_FIRST + 1 {
            tracing::warn!(
                input = id,
                kind = p.name(),
                "more than {WARN_FIRST} {} inputs; further ones are counted and reported when the connection closes and when the input stops",
                p.name()
            );
        }
        n <= WARN_FIRST
    }

    /// `(oversized, unparsable, bad_frames)` so far.
    pub(crate) fn totals(&self) -> (u64, u64, u64) {
        (
            self.oversized.load(Ordering::Relaxed),
            self.unparsable.load(Ordering::Relaxed),
            self.bad_frames.load(Ordering::Relaxed),
        )
    }

    /// Logs the totals when the input stops (warn when anything went wrong).
    pub(crate) fn report(&self, id: &str) {
        let (oversized, unparsable, bad_frames) = self.totals();
        if oversized + unparsable + bad_frames > 0 {
            tracing::warn!(
                input = id,
                oversized,
                unparsable,
                bad_frames,
                "input stopped; some input could not become events"
            );
        } else {
            tracing::debug!(input = id, "input stopped");
        }
    }
}

/// Counts of one connection, logged when it closes.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ConnCounts {
    /// Events emitted.
    pub events: u64,
    /// Units skipped for size.
    pub oversized: u64,
    /// Units the parser refused.
    pub unparsable: u64,
}

impl ConnCounts {
    /// Logs a summary for a closing connection: at warn level when something
    /// was skipped or refused, else at debug.
    pub(crate) fn log_close(&self, id: &str, peer: &std::net::SocketAddr, how: &str) {
        if self.oversized + self.unparsable > 0 {
            tracing::warn!(
                input = id,
                %peer,
                events = self.events,
                oversized = self.oversized,
                unparsable = self.unparsable,
                "connection {how}; some lines could not become events"
            );
        } else {
            tracing::debug!(input = id, %peer, events = self.events, "connection {how}");
        }
    }
}

/// At most `max` bytes of `bytes` as lossy text, for log messages.
pub(crate) fn preview(bytes: &[u8], max: usize) -> String {
    let cut = &bytes[..bytes.len().min(max)];
    let mut s = String::from_utf8_lossy(cut).into_owned();
    if bytes.len() > max {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warns_for_the_first_few_then_only_counts() {
        let c = Counters::default();
        let logged = (0..25).filter(|_| c.note("t", Problem::Unparsable)).count() as u64;
        assert_eq!(logged, WARN_FIRST);
        assert_eq!(c.totals(), (0, 25, 0));
        assert!(c.note("t", Problem::Oversized));
        assert_eq!(c.totals(), (1, 25, 0));
    }

    #[test]
    fn preview_cuts_long_and_binary_input() {
        assert_eq!(preview(b"abc", 10), "abc");
        assert_eq!(preview(b"abcdef", 3), "abc…");
        assert_eq!(preview(&[0xff, b'a'], 10), "\u{fffd}a");
    }
}
