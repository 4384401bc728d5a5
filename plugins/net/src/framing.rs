//! Cutting a byte stream into lines without copying them.
//!
//! A connection reads into one large [`BytesMut`]. After each read the part
//! up to the last newline is frozen into a [`Bytes`] chunk and every line is
//! handed out as a range of that chunk, so a line becomes a record by
//! slicing (a reference-count increment), not by copying. The unfinished
//! tail stays in the buffer for the next read.
//!
//! Lines longer than the configured maximum are skipped: once the buffered
//! tail grows past the maximum without a newline it is thrown away and
//! everything up to the next newline is ignored (resynchronisation), so a
//! client cannot make ulog buffer without bound.

use std::io;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;

use crate::listener::NetStream;

/// Size of the read buffer allocated at a time; reads fill what is free.
pub(crate) const READ_BUF: usize = 256 * 1024;
/// Below this much free space a new buffer is allocated before reading, so a
/// read is never tiny.
const MIN_SPARE: usize = 32 * 1024;

/// Reads once from `s` into the spare capacity of `buf`, making room first.
///
/// Frozen chunks handed out earlier keep their part of the old allocation
/// alive; `reserve` moves the unfinished tail to a fresh buffer when the old
/// one is still shared. A plain TCP connection with nothing buffered and
/// nothing to read gives its buffer back while it waits, so idle
/// connections cost no read buffer ([`NetStream::release_while_idle`]).
///
/// # Cancel safety
/// Cancel safe: when cancelled before completing, nothing was read.
pub(crate) async fn fill(buf: &mut BytesMut, s: &mut NetStream) -> io::Result<usize> {
    s.release_while_idle(buf).await?;
    if buf.capacity() - buf.len() < MIN_SPARE {
        buf.reserve(READ_BUF);
    }
    s.read_buf(buf).await
}

/// One unit found by [`LineBuffer::drain`].
#[derive(Debug)]
pub(crate) enum Line<'a> {
    /// A line: `chunk[start..end]`, without its `\n` or a trailing `\r`.
    Text {
        /// The frozen chunk the line is part of; slice it to keep the line.
        chunk: &'a Bytes,
        /// First byte of the line.
        start: usize,
        /// One past its last byte.
        end: usize,
    },
    /// A line longer than the maximum, skipped; at least this many bytes.
    Oversized(usize),
}

/// The buffer of one newline-framed connection.
#[derive(Debug)]
pub(crate) struct LineBuffer {
    buf: BytesMut,
    max_line: usize,
    /// Skipping the rest of an oversized line, up to its newline.
    discarding: bool,
}

impl LineBuffer {
    /// A buffer that skips lines longer than `max_line` bytes.
    pub(crate) fn new(max_line: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            max_line: max_line.max(1),
            discarding: false,
        }
    }

    /// Reads once; `Ok(0)` is the end of the stream.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub(crate) async fn read_from(&mut self, s: &mut NetStream) -> io::Result<usize> {
        fill(&mut self.buf, s).await
    }

    /// Bytes buffered of an unfinished line.
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Hands every complete line in the buffer to `each`, in order. Empty and
    /// whitespace-only lines are skipped (they hold no record).
    pub(crate) fn drain(&mut self, mut each: impl FnMut(Line<'_>)) {
        let Some(last_nl) = memchr::memrchr(b'\n', &self.buf) else {
            self.check_tail(&mut each);
            return;
        };
        let chunk = self.buf.split_to(last_nl + 1).freeze();
        let mut start = 0;
        if self.discarding {
            // The head of this chunk is the end of an oversized line that was
            // already reported: skip to its newline.
            start = memchr::memchr(b'\n', &chunk).map_or(chunk.len(), |i| i + 1);
            self.discarding = false;
        }
        while start < chunk.len() {
            let nl = memchr::memchr(b'\n', &chunk[start..]).map_or(chunk.len(), |i| start + i);
            self.emit_line(&chunk, start, nl, &mut each);
            start = nl + 1;
        }
        self.check_tail(&mut each);
    }

    /// At the end of the stream: the unterminated rest, if any, as a last
    /// line (a sender may omit the final newline).
    pub(crate) fn finish(&mut self, mut each: impl FnMut(Line<'_>)) {
        if self.discarding {
            self.buf.clear();
            self.discarding = false;
            return;
        }
        if self.buf.is_empty() {
            return;
        }
        let len = self.buf.len();
        let chunk = self.buf.split().freeze();
        self.emit_line(&chunk, 0, len, &mut each);
    }

    fn emit_line(&self, chunk: &Bytes, start: usize, nl: usize, each: &mut impl FnMut(Line<'_>)) {
        let mut end = nl;
        if end > start && chunk[end - 1] == b'\r' {
            end -= 1;
        }
        if end - start > self.max_line {
            each(Line::Oversized(end - start));
        } else if chunk[start..end].iter().any(|b| !b.is_ascii_whitespace()) {
            each(Line::Text { chunk, start, end });
        }
    }

    /// An unfinished line already longer than the maximum is dropped now and
    /// the rest of it skipped when its newline arrives.
    fn check_tail(&mut self, each: &mut impl FnMut(Line<'_>)) {
        if self.discarding {
            self.buf.clear();
        } else if self.buf.len() > self.max_line {
            each(Line::Oversized(self.buf.len()));
            self.buf.clear();
            self.discarding = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(lb: &mut LineBuffer, input: &[u8], out: &mut Vec<String>) {
        lb.buf.extend_from_slice(input);
        lb.drain(|l| out.push(render(l)));
    }

    fn render(l: Line<'_>) -> String {
        match l {
            Line::Text { chunk, start, end } => {
                String::from_utf8(chunk.slice(start..end).to_vec()).unwrap()
            }
            Line::Oversized(n) => format!("<oversized {n}>"),
        }
    }

    #[test]
    fn splits_lines_across_reads_and_strips_crlf() {
        let mut lb = LineBuffer::new(100);
        let mut out = Vec::new();
        collect(&mut lb, b"one\r\ntw", &mut out);
        assert_eq!(out, ["one"]);
        assert_eq!(lb.pending(), 2);
        collect(&mut lb, b"o\n\n  \r\nthree", &mut out);
        assert_eq!(out, ["one", "two"]);
        lb.finish(|l| out.push(render(l)));
        assert_eq!(out, ["one", "two", "three"]);
        assert_eq!(lb.pending(), 0);
    }

    #[test]
    fn oversized_line_in_one_chunk_is_skipped() {
        let mut lb = LineBuffer::new(5);
        let mut out = Vec::new();
        collect(&mut lb, b"ok\n0123456789\nfine\n", &mut out);
        assert_eq!(out, ["ok", "<oversized 10>", "fine"]);
    }

    #[test]
    fn oversized_tail_is_dropped_then_resynced_at_the_newline() {
        let mut lb = LineBuffer::new(5);
        let mut out = Vec::new();
        collect(&mut lb, b"ok\n01234567", &mut out);
        assert_eq!(out, ["ok", "<oversized 8>"]);
        assert_eq!(lb.pending(), 0);
        collect(&mut lb, b"89abc", &mut out);
        assert_eq!(lb.pending(), 0);
        collect(&mut lb, b"def\nnext\n", &mut out);
        assert_eq!(out, ["ok", "<oversized 8>", "next"]);
        // A stream ending inside an oversized line yields nothing more.
        collect(&mut lb, b"0123456789", &mut out);
        lb.finish(|l| out.push(render(l)));
        assert_eq!(out, ["ok", "<oversized 8>", "next", "<oversized 10>"]);
    }

    #[test]
    fn lines_share_the_read_buffer() {
        let mut lb = LineBuffer::new(100);
        lb.buf.extend_from_slice(b"a\nb\n");
        let base = lb.buf.as_ptr();
        let mut ptrs = Vec::new();
        lb.drain(|l| {
            if let Line::Text { chunk, start, end } = l {
                ptrs.push(chunk.slice(start..end).as_ptr());
            }
        });
        assert_eq!(ptrs, [base, base.wrapping_add(2)]);
    }

    #[test]
    fn lines_do_not_depend_on_how_the_stream_is_split() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..500 {
            let stream: Vec<u8> = (0..(next() % 120))
                .map(|_| b"ab\r\n xyz\n"[(next() % 9) as usize])
                .collect();
            let run = |cuts: &[usize]| {
                let mut lb = LineBuffer::new(8);
                let mut out = Vec::new();
                let mut from = 0;
                for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
                    collect(&mut lb, &stream[from..to], &mut out);
                    from = to;
                }
                lb.finish(|l| out.push(render(l)));
                out
            };
            let whole = run(&[]);
            let mut cuts: Vec<usize> = (0..(next() % 8))
                .map(|_| (next() as usize) % (stream.len() + 1))
                .collect();
            cuts.sort_unstable();
            // Oversized lines are reported with however much was buffered,
            // so compare which lines came out and how many were skipped.
            let norm = |v: Vec<String>| -> Vec<String> {
                v.into_iter()
                    .map(|l| {
                        if l.starts_with("<oversized") {
                            "<oversized>".into()
                        } else {
                            l
                        }
                    })
                    .collect()
            };
            assert_eq!(
                norm(whole),
                norm(run(&cuts)),
                "round {round}: {:?} cut at {cuts:?}",
                String::from_utf8_lossy(&stream)
            );
        }
    }
}
