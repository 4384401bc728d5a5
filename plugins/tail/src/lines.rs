//! Splitting what was read from a file into lines.
//!
//! The splitter owns the read buffer. Data is read straight into it, complete
//! lines are cut off the front as one frozen [`Bytes`] and handed out as
//! slices of it (no copy per line), and an incomplete last line stays in the
//! buffer until its newline arrives. Lines longer than the limit are never
//! kept whole in memory: once the unfinished line outgrows the limit the
//! splitter drops what it holds and discards bytes up to the next newline,
//! then reports the skipped span so it can be logged and counted.

use bytes::{Buf, Bytes, BytesMut};

/// One unit found in the data: a line, or a line that was too long.
///
/// Offsets are byte positions in the file, so a caller can record exactly
/// how far it got and a log message can point at the skipped line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Piece {
    /// A complete line without its `\n` or `\r\n`.
    Line {
        /// The line's bytes.
        bytes: Bytes,
        /// File offset of the line's first byte.
        start: u64,
        /// File offset just past its terminator.
        end: u64,
    },
    /// A line longer than the limit, skipped.
    TooLong {
        /// File offset of the line's first byte.
        start: u64,
        /// Its length in bytes, without the terminator.
        len: u64,
        /// File offset just past its terminator.
        end: u64,
    },
}

impl Piece {
    /// File offset just past this piece.
    #[cfg(test)]
    pub(crate) fn end(&self) -> u64 {
        match self {
            Piece::Line { end, .. } | Piece::TooLong { end, .. } => *end,
        }
    }
}

/// Accumulates bytes read from one file and cuts them into [`Piece`]s.
#[derive(Debug)]
pub(crate) struct LineSplitter {
    /// Bytes read but not yet cut: the start of an unfinished line.
    buf: BytesMut,
    /// File offset of `buf[0]`.
    buf_offset: u64,
    /// Start offset of an over-long line being discarded, if any.
    skipping: Option<u64>,
    /// Longest line kept, in bytes (terminator excluded).
    max_line: usize,
}

impl LineSplitter {
    /// A splitter whose next byte is at file offset `offset`.
    pub(crate) fn new(offset: u64, max_line: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            buf_offset: offset,
            skipping: None,
            max_line,
        }
    }

    /// The file offset the next read should start at.
    pub(crate) fn read_offset(&self) -> u64 {
        self.buf_offset + self.buf.len() as u64
    }

    /// The offset before which every byte has been handed out as a piece:
    /// the start of the unfinished line (or of the long line being skipped).
    pub(crate) fn consumed_offset(&self) -> u64 {
        self.skipping.unwrap_or(self.buf_offset)
    }

    /// Bytes held for an unfinished line.
    #[cfg(test)]
    pub(crate) fn pending_len(&self) -> usize {
        self.buf.len()
    }

    /// Takes the buffer out so a blocking read can fill it on another thread;
    /// give it back with [`LineSplitter::put_buffer`].
    pub(crate) fn take_buffer(&mut self) -> BytesMut {
        std::mem::take(&mut self.buf)
    }

    /// Returns the buffer after a read appended what it got to it.
    pub(crate) fn put_buffer(&mut self, buf: BytesMut) {
        self.buf = buf;
    }

    /// Forgets everything and starts again at `offset` (after a truncation).
    pub(crate) fn reset(&mut self, offset: u64) {
        self.buf.clear();
        self.buf_offset = offset;
        self.skipping = None;
    }

    /// Cuts every complete line out of the buffer.
    pub(crate) fn take_pieces(&mut self) -> Vec<Piece> {
        let mut pieces = Vec::new();
        if let Some(start) = self.skipping {
            match memchr::memchr(b'\n', &self.buf) {
                None => {
                    self.buf_offset += self.buf.len() as u64;
                    self.buf.clear();
                    return pieces;
                }
                Some(i) => {
                    let nl = self.buf_offset + i as u64;
                    let len = nl - start - u64::from(i > 0 && self.buf[i - 1] == b'\r');
                    self.buf.advance(i + 1);
                    self.buf_offset = nl + 1;
                    self.skipping = None;
                    pieces.push(Piece::TooLong {
                        start,
                        len,
                        end: nl + 1,
                    });
                }
            }
        }
        if let Some(last) = memchr::memrchr(b'\n', &self.buf) {
            let complete = self.buf.split_to(last + 1).freeze();
            let base = self.buf_offset;
            self.buf_offset += (last + 1) as u64;
            pieces.reserve(complete.len() / 64 + 1);
            let mut s = 0;
            for nl in memchr::memchr_iter(b'\n', &complete) {
                let mut e = nl;
                if e > s && complete[e - 1] == b'\r' {
                    e -= 1;
                }
                let start = base + s as u64;
                let end = base + nl as u64 + 1;
                if e - s > self.max_line {
                    pieces.push(Piece::TooLong {
                        start,
                        len: (e - s) as u64,
                        end,
                    });
                } else {
                    pieces.push(Piece::Line {
                        bytes: complete.slice(s..e),
                        start,
                        end,
                    });
                }
                s = nl + 1;
            }
        }
        // An unfinished line already longer than the limit (plus room for a
        // `\r` that may precede its newline) can only end up too long: stop
        // holding it.
        if self.buf.len() > self.max_line + 1 {
            self.skipping = Some(self.buf_offset);
            self.buf_offset += self.buf.len() as u64;
            self.buf.clear();
        }
        pieces
    }

    /// Hands out the unfinished last line as if it were complete: used when
    /// the file will not grow any more (rotated away, deleted, truncated).
    pub(crate) fn take_partial(&mut self) -> Option<Piece> {
        if let Some(start) = self.skipping.take() {
            let end = self.read_offset();
            self.buf.clear();
            self.buf_offset = end;
            return Some(Piece::TooLong {
                start,
                len: end - start,
                end,
            });
        }
        if self.buf.is_empty() {
            return None;
        }
        let start = self.buf_offset;
        let mut bytes = self.buf.split().freeze();
        self.buf_offset += bytes.len() as u64;
        let end = self.buf_offset;
        if bytes.last() == Some(&b'\r') {
            bytes.truncate(bytes.len() - 1);
        }
        if bytes.len() > self.max_line {
            return Some(Piece::TooLong {
                start,
                len: bytes.len() as u64,
                end,
            });
        }
        Some(Piece::Line { bytes, start, end })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(s: &mut LineSplitter, data: &[u8]) -> Vec<Piece> {
        let mut buf = s.take_buffer();
        buf.extend_from_slice(data);
        s.put_buffer(buf);
        s.take_pieces()
    }

    fn texts(pieces: &[Piece]) -> Vec<String> {
        pieces
            .iter()
            .map(|p| match p {
                Piece::Line { bytes, .. } => String::from_utf8(bytes.to_vec()).unwrap(),
                Piece::TooLong { len, .. } => format!("<skipped {len}>"),
            })
            .collect()
    }

    #[test]
    fn splits_lines_and_keeps_the_partial_one() {
        let mut s = LineSplitter::new(100, 1024);
        let p = feed(&mut s, b"one\r\ntwo\nthr");
        assert_eq!(texts(&p), ["one", "two"]);
        assert_eq!(p[0].end(), 105);
        assert_eq!(p[1].end(), 109);
        assert_eq!(s.consumed_offset(), 109);
        assert_eq!(s.read_offset(), 112);
        let p = feed(&mut s, b"ee\n\n");
        assert_eq!(texts(&p), ["three", ""]);
        assert_eq!(
            p[0],
            Piece::Line {
                bytes: Bytes::from_static(b"three"),
                start: 109,
                end: 115
            }
        );
        assert_eq!(s.consumed_offset(), 116);
        assert_eq!(s.pending_len(), 0);
    }

    #[test]
    fn long_lines_in_one_chunk_are_skipped() {
        let mut s = LineSplitter::new(0, 4);
        let p = feed(&mut s, b"ok\ntoolong\r\nfine\n");
        assert_eq!(texts(&p), ["ok", "<skipped 7>", "fine"]);
        assert_eq!(
            p[1],
            Piece::TooLong {
                start: 3,
                len: 7,
                end: 12
            }
        );
    }

    #[test]
    fn a_line_exactly_at_the_limit_is_kept_even_across_a_split_crlf() {
        let mut s = LineSplitter::new(0, 4);
        assert!(feed(&mut s, b"abcd\r").is_empty());
        assert_eq!(texts(&feed(&mut s, b"\n")), ["abcd"]);
    }

    #[test]
    fn long_lines_across_chunks_are_discarded_without_being_held() {
        let mut s = LineSplitter::new(0, 8);
        assert_eq!(texts(&feed(&mut s, b"a\nxxxxxxxxxxxx")), ["a"]);
        assert_eq!(s.pending_len(), 0, "an over-long line is not kept");
        assert_eq!(s.consumed_offset(), 2);
        assert!(feed(&mut s, &[b'x'; 100]).is_empty());
        assert_eq!(s.consumed_offset(), 2);
        let p = feed(&mut s, b"xx\r\nb\nc");
        assert_eq!(texts(&p), ["<skipped 114>", "b"]);
        assert_eq!(p[0].end(), 2 + 114 + 2);
        assert_eq!(s.consumed_offset(), 2 + 114 + 2 + 2);
        assert_eq!(texts(&[s.take_partial().unwrap()]), ["c"]);
        assert_eq!(s.read_offset(), 121);
    }

    #[test]
    fn partial_lines_come_out_only_when_asked() {
        let mut s = LineSplitter::new(0, 100);
        assert!(feed(&mut s, b"no newline\r").is_empty());
        assert_eq!(texts(&[s.take_partial().unwrap()]), ["no newline"]);
        assert!(s.take_partial().is_none());
        assert_eq!(s.consumed_offset(), 11);
    }

    #[test]
    fn reset_starts_over() {
        let mut s = LineSplitter::new(0, 100);
        feed(&mut s, b"abc\ndef");
        s.reset(0);
        assert_eq!(s.read_offset(), 0);
        assert_eq!(texts(&feed(&mut s, b"x\n")), ["x"]);
    }

    #[test]
    fn lines_share_the_read_buffer() {
        let mut s = LineSplitter::new(0, 100);
        let p = feed(&mut s, b"aaaa\nbbbb\n");
        let (Piece::Line { bytes: a, .. }, Piece::Line { bytes: b, .. }) = (&p[0], &p[1]) else {
            panic!("expected lines");
        };
        // Both are views into one allocation, 5 bytes apart.
        assert_eq!(b.as_ptr() as usize - a.as_ptr() as usize, 5);
    }
}
