//! Joining lines into multi-line records (stack traces, wrapped messages).
//!
//! A line matching the start pattern begins a new record; every other line
//! is appended to the record being built, separated by `\n`. The record
//! being built is only handed out when the next one starts, when no line has
//! arrived for the flush interval, or when the file ends for good. Until
//! then its start offset bounds what the position database may record, so a
//! restart re-reads the whole record rather than half of it.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use regex::bytes::Regex;

use crate::lines::Piece;

/// A unit ready to become an event, or a skipped span to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unit {
    /// The text of one record (a line, or lines joined with `\n`).
    Text(Bytes),
    /// Something longer than the limit that was dropped.
    Skipped {
        /// File offset where it started.
        start: u64,
        /// Its length in bytes.
        len: u64,
    },
}

#[derive(Debug)]
struct Pending {
    text: BytesMut,
    start: u64,
    end: u64,
    oversize: bool,
    updated: Instant,
}

/// Builds multi-line records from lines.
#[derive(Debug)]
pub(crate) struct Multiline {
    start: Regex,
    flush_after: Duration,
    max: usize,
    pending: Option<Pending>,
}

impl Multiline {
    /// `start` marks first lines; records longer than `max` are skipped.
    pub(crate) fn new(start: Regex, flush_after: Duration, max: usize) -> Self {
        Self {
            start,
            flush_after,
            max,
            pending: None,
        }
    }

    /// File offset where the record being built starts, if there is one.
    pub(crate) fn pending_start(&self) -> Option<u64> {
        self.pending.as_ref().map(|p| p.start)
    }

    /// Feeds one piece; finished units are pushed to `out`.
    pub(crate) fn push(&mut self, piece: Piece, now: Instant, out: &mut Vec<Unit>) {
        match piece {
            Piece::TooLong { start, len, .. } => {
                // The long line is dropped; the record around it goes on.
                out.push(Unit::Skipped { start, len });
            }
            Piece::Line { bytes, start, end } => {
                if self.start.is_match(&bytes) {
                    out.extend(self.finish());
                }
                match &mut self.pending {
                    Some(p) => {
                        if !p.oversize && p.text.len() + 1 + bytes.len() > self.max {
                            p.oversize = true;
                            p.text = BytesMut::new();
                        }
                        if !p.oversize {
                            p.text.extend_from_slice(b"\n");
                            p.text.extend_from_slice(&bytes);
                        }
                        p.end = end;
                        p.updated = now;
                    }
                    None => {
                        self.pending = Some(Pending {
                            text: BytesMut::from(&bytes[..]),
                            start,
                            end,
                            oversize: false,
                            updated: now,
                        });
                    }
                }
            }
        }
    }

    /// Hands out the record being built, if any.
    pub(crate) fn finish(&mut self) -> Option<Unit> {
        let p = self.pending.take()?;
        Some(if p.oversize {
            Unit::Skipped {
                start: p.start,
                len: p.end - p.start,
            }
        } else {
            Unit::Text(p.text.freeze())
        })
    }

    /// Hands out the record being built when no line arrived for the flush
    /// interval.
    pub(crate) fn flush_due(&mut self, now: Instant) -> Option<Unit> {
        let due = self
            .pending
            .as_ref()
            .is_some_and(|p| now.saturating_duration_since(p.updated) >= self.flush_after);
        if due {
            self.finish()
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(s: &str, start: u64) -> Piece {
        Piece::Line {
            bytes: Bytes::copy_from_slice(s.as_bytes()),
            start,
            end: start + s.len() as u64 + 1,
        }
    }

    fn text(u: &Unit) -> String {
        match u {
            Unit::Text(b) => String::from_utf8(b.to_vec()).unwrap(),
            Unit::Skipped { start, len } => format!("<skipped {start}+{len}>"),
        }
    }

    fn ml(max: usize) -> Multiline {
        Multiline::new(Regex::new(r"^\d{4}-").unwrap(), Duration::from_secs(1), max)
    }

    #[test]
    fn continuation_lines_join_the_record_before_them() {
        let mut m = ml(1000);
        let now = Instant::now();
        let mut out = Vec::new();
        let mut off = 0;
        let mut last_start = 0;
        for l in [
            "2024-01-01 ERROR boom",
            "java.lang.IllegalStateException: x",
            "\tat a.b(C.java:1)",
            "2024-01-01 INFO ok",
        ] {
            last_start = off;
            m.push(line(l, off), now, &mut out);
            off += l.len() as u64 + 1;
        }
        assert_eq!(out.len(), 1);
        assert_eq!(
            text(&out[0]),
            "2024-01-01 ERROR boom\njava.lang.IllegalStateException: x\n\tat a.b(C.java:1)"
        );
        assert_eq!(m.pending_start(), Some(last_start));
        assert_eq!(text(&m.finish().unwrap()), "2024-01-01 INFO ok");
        assert_eq!(m.pending_start(), None);
    }

    #[test]
    fn leading_continuation_lines_form_their_own_record() {
        let mut m = ml(1000);
        let now = Instant::now();
        let mut out = Vec::new();
        m.push(line("  orphan", 0), now, &mut out);
        m.push(line("  more", 9), now, &mut out);
        m.push(line("2024-02-02 x", 16), now, &mut out);
        assert_eq!(
            out.iter().map(text).collect::<Vec<_>>(),
            ["  orphan\n  more"]
        );
    }

    #[test]
    fn flushes_after_the_interval_only() {
        let mut m = ml(1000);
        let t0 = Instant::now();
        let mut out = Vec::new();
        m.push(line("2024-01-01 a", 0), t0, &mut out);
        assert!(m.flush_due(t0 + Duration::from_millis(999)).is_none());
        assert_eq!(
            text(&m.flush_due(t0 + Duration::from_secs(1)).unwrap()),
            "2024-01-01 a"
        );
        assert!(m.pending_start().is_none());
    }

    #[test]
    fn oversized_records_are_skipped_and_reported() {
        let mut m = ml(20);
        let now = Instant::now();
        let mut out = Vec::new();
        m.push(line("2024-01-01 a", 0), now, &mut out);
        m.push(line("continuation that is long", 13), now, &mut out);
        m.push(line("2024-01-01 b", 39), now, &mut out);
        assert_eq!(out.iter().map(text).collect::<Vec<_>>(), ["<skipped 0+39>"]);
        m.push(
            Piece::TooLong {
                start: 52,
                len: 99,
                end: 152,
            },
            now,
            &mut out,
        );
        assert_eq!(text(&out[1]), "<skipped 52+99>");
        assert_eq!(text(&m.finish().unwrap()), "2024-01-01 b");
    }
}
