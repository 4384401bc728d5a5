//! Reading a file of frames back, whatever is in it.
//!
//! The scanner walks a file frame by frame. A frame counts only if its header
//! checksum and its payload checksum hold; everything else is classified:
//!
//! - a header whose checksum holds but whose payload does not (a flipped
//!   payload byte): the header is trusted, so the reader skips exactly that
//!   frame and carries on after it;
//! - a header whose checksum holds but whose payload runs past the end of the
//!   file: a frame cut short by a crash; nothing after it can be a frame;
//! - anything else (a damaged header, zeros, garbage): the reader
//!   resynchronises on the next frame magic whose header checksum holds.
//!
//! Bad bytes followed by a good frame are *corrupt*; bad bytes that reach the
//! end of the file are its *tail* (in the newest segment, a torn write). The
//! scanner only reports; [`crate::wal`] decides what to cut or count.
//!
//! Memory stays bounded whatever the file holds: the file is read through a
//! fixed window, payload checksums are computed piece by piece, and only
//! payloads the caller asks for (small confirmation lists) are kept.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::error::{IoContext, IoOp, WalError};
use crate::format::{
    decode_file_header, decode_frame_header, FileHeader, FRAME_HEADER_LEN, FRAME_MAGIC,
    SEGMENT_HEADER_LEN,
};

/// How much of a file is held in memory at once while scanning.
const WINDOW: usize = 256 << 10;

/// What a scan looks for.
pub(crate) struct Rules<'a> {
    /// The file header's magic.
    pub magic: &'a [u8; 8],
    /// The only frame kind this file holds; a checksummed frame of another
    /// kind is skipped as corrupt.
    pub kind: u8,
    /// Keep the payloads (confirmation lists) instead of only checking them.
    pub keep_payload: bool,
    /// Longest payload accepted; a longer one is skipped as corrupt.
    pub max_payload: u64,
    /// Ids must lie in `[min, end)` and strictly increase, as chunk ids in a
    /// segment do (`min` is the segment's first id, `end` the next one's);
    /// `None` for files whose frames carry no id.
    pub ids: Option<(u64, u64)>,
}

/// One good frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Frame {
    pub id: u64,
    pub time_ms: u64,
    /// Offset of the frame's header in the file.
    pub offset: u64,
    pub len: u32,
    /// The payload, if the rules asked for it.
    pub payload: Option<Vec<u8>>,
}

/// Everything a scan found.
#[derive(Debug)]
pub(crate) struct FileScan {
    pub header: FileHeader,
    pub file_len: u64,
    pub frames: Vec<Frame>,
    /// End of the last good frame (or of a good header; 0 if the header is
    /// bad and no frame follows): where a writer may continue.
    pub good_end: u64,
    /// Bad regions that a good frame follows.
    pub corrupt_frames: u64,
    pub corrupt_bytes: u64,
    /// Bytes from `good_end` to the end of the file.
    pub tail_bytes: u64,
    /// Bad frames in the tail (at least 1 when `tail_bytes > 0`).
    pub tail_frames: u64,
}

/// Scans `file` (whose path is for error messages only).
pub(crate) fn scan_file(file: &File, path: &Path, rules: &Rules<'_>) -> Result<FileScan, WalError> {
    let file_len = file.metadata().ctx(IoOp::Read, path)?.len();
    let mut win = Window::new(file, file_len);
    scan(&mut win, rules)
        .map_err(|e| WalError::io(IoOp::Read, path, e))
        .and_then(|scan| match scan.header {
            FileHeader::OtherVersion(version) => Err(WalError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            }),
            _ => Ok(scan),
        })
}

enum Probe {
    Good(Frame),
    /// Header checksum holds, payload's does not (or kind/length is wrong):
    /// skip to `end`.
    BadPayload {
        end: u64,
    },
    /// Header checksum holds, payload runs past the end of the file.
    Cut,
    /// No frame starts here.
    NotAFrame,
}

fn scan(win: &mut Window<'_>, rules: &Rules<'_>) -> io::Result<FileScan> {
    let len = win.len;
    let header_len = SEGMENT_HEADER_LEN as u64;
    let header = if len >= header_len {
        decode_file_header(win.get(0, SEGMENT_HEADER_LEN)?, rules.magic)
    } else {
        FileHeader::Invalid
    };
    let header_ok = matches!(header, FileHeader::Valid { .. });
    let mut out = FileScan {
        header,
        file_len: len,
        frames: Vec::new(),
        good_end: if header_ok { header_len } else { 0 },
        corrupt_frames: 0,
        corrupt_bytes: 0,
        tail_bytes: 0,
        tail_frames: 0,
    };
    if matches!(header, FileHeader::OtherVersion(_)) {
        return Ok(out);
    }
    let mut ids = rules.ids;
    // Start of the bad region being crossed, and how many bad frames it held.
    let mut bad: Option<(u64, u64)> = (!header_ok).then_some((0, 1));
    let mut pos = header_len.min(len);
    while pos + FRAME_HEADER_LEN as u64 <= len {
        match probe(win, pos, rules, ids)? {
            Probe::Good(frame) => {
                if let Some((start, frames)) = bad.take() {
                    out.corrupt_frames += frames;
                    out.corrupt_bytes += pos - start;
                }
                if let Some((min, _)) = &mut ids {
                    *min = frame.id.saturating_add(1);
                }
                pos = frame.offset + FRAME_HEADER_LEN as u64 + u64::from(frame.len);
                out.good_end = pos;
                out.frames.push(frame);
            }
            Probe::BadPayload { end } => {
                match &mut bad {
                    Some((_, frames)) => *frames += 1,
                    None => bad = Some((pos, 1)),
                }
                pos = end;
            }
            Probe::Cut => {
                bad.get_or_insert((pos, 1));
                break;
            }
            Probe::NotAFrame => {
                bad.get_or_insert((pos, 1));
                match win.find_magic(pos + 1)? {
                    Some(next) => pos = next,
                    None => break,
                }
            }
        }
    }
    out.tail_bytes = len - out.good_end;
    if out.tail_bytes > 0 {
        out.tail_frames = bad.map_or(1, |(_, frames)| frames);
    }
    Ok(out)
}

fn probe(
    win: &mut Window<'_>,
    pos: u64,
    rules: &Rules<'_>,
    ids: Option<(u64, u64)>,
) -> io::Result<Probe> {
    let Some(h) = decode_frame_header(win.get(pos, FRAME_HEADER_LEN)?) else {
        return Ok(Probe::NotAFrame);
    };
    if ids.is_some_and(|(min, end)| h.id < min || h.id >= end) {
        // Not an id this place can hold: no frame of ours (a frame-shaped
        // piece of some payload, found while resynchronising).
        return Ok(Probe::NotAFrame);
    }
    let payload_start = pos + FRAME_HEADER_LEN as u64;
    let end = payload_start + u64::from(h.len);
    if end > win.len {
        return Ok(Probe::Cut);
    }
    if h.kind != rules.kind || u64::from(h.len) > rules.max_payload {
        return Ok(Probe::BadPayload { end });
    }
    let payload = if rules.keep_payload {
        let bytes = win.read_vec(payload_start, u64::from(h.len))?;
        if crc32fast::hash(&bytes) != h.payload_crc {
            return Ok(Probe::BadPayload { end });
        }
        Some(bytes)
    } else {
        if win.crc(payload_start, u64::from(h.len))? != h.payload_crc {
            return Ok(Probe::BadPayload { end });
        }
        None
    };
    Ok(Probe::Good(Frame {
        id: h.id,
        time_ms: h.time_ms,
        offset: pos,
        len: h.len,
        payload,
    }))
}

/// A file read through a fixed-size window.
struct Window<'f> {
    file: &'f File,
    len: u64,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
}

impl<'f> Window<'f> {
    fn new(file: &'f File, len: u64) -> Self {
        Window {
            file,
            len,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// Bytes `[off, off + n)`; needs `n <= WINDOW` and `off + n <= len`.
    fn get(&mut self, off: u64, n: usize) -> io::Result<&[u8]> {
        let buffered_end = self.start + self.buf.len() as u64;
        if off < self.start || off + n as u64 > buffered_end {
            let want = self.len.saturating_sub(off).min(WINDOW as u64) as usize;
            if want < n {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "read past the end of the file",
                ));
            }
            self.buf.resize(want, 0);
            self.file.read_exact_at(&mut self.buf, off)?;
            self.start = off;
        }
        let at = (off - self.start) as usize;
        Ok(&self.buf[at..at + n])
    }

    /// CRC32 of `[off, off + n)`, read piece by piece.
    fn crc(&mut self, mut off: u64, n: u64) -> io::Result<u32> {
        let mut hasher = crc32fast::Hasher::new();
        let end = off + n;
        while off < end {
            let piece = (end - off).min(WINDOW as u64) as usize;
            hasher.update(self.get(off, piece)?);
            off += piece as u64;
        }
        Ok(hasher.finalize())
    }

    fn read_vec(&mut self, off: u64, n: u64) -> io::Result<Vec<u8>> {
        let mut out = vec![0; n as usize];
        self.file.read_exact_at(&mut out, off)?;
        Ok(out)
    }

    /// Offset of the next frame magic at or after `from`.
    fn find_magic(&mut self, from: u64) -> io::Result<Option<u64>> {
        let mut pos = from;
        while pos + FRAME_MAGIC.len() as u64 <= self.len {
            let n = (self.len - pos).min(WINDOW as u64) as usize;
            let piece = self.get(pos, n)?;
            if let Some(i) = piece
                .windows(FRAME_MAGIC.len())
                .position(|w| w == FRAME_MAGIC)
            {
                return Ok(Some(pos + i as u64));
            }
            // Keep the last 3 bytes: a magic may straddle two windows.
            pos += (n - (FRAME_MAGIC.len() - 1)) as u64;
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{encode_file_header, encode_frame, KIND_CHUNK, SEGMENT_MAGIC};
    use std::io::Write;

    fn rules() -> Rules<'static> {
        Rules {
            magic: &SEGMENT_MAGIC,
            kind: KIND_CHUNK,
            keep_payload: true,
            max_payload: u64::from(u32::MAX),
            ids: Some((1, 100)),
        }
    }

    fn segment(payloads: &[&[u8]]) -> Vec<u8> {
        let mut buf = encode_file_header(&SEGMENT_MAGIC, 1).to_vec();
        for (i, p) in payloads.iter().enumerate() {
            encode_frame(&mut buf, KIND_CHUNK, i as u64 + 1, 0, p);
        }
        buf
    }

    fn scan_bytes(bytes: &[u8]) -> FileScan {
        let mut f = tempfile::tempfile().expect("tempfile");
        f.write_all(bytes).expect("write");
        scan_file(&f, Path::new("test"), &rules()).expect("scan")
    }

    fn ids(scan: &FileScan) -> Vec<u64> {
        scan.frames.iter().map(|f| f.id).collect()
    }

    #[test]
    fn clean_file_reads_every_frame() {
        let bytes = segment(&[b"a", b"", b"ccc"]);
        let s = scan_bytes(&bytes);
        assert_eq!(ids(&s), [1, 2, 3]);
        assert_eq!(s.frames[2].payload.as_deref(), Some(&b"ccc"[..]));
        assert_eq!(s.good_end, bytes.len() as u64);
        assert_eq!((s.corrupt_frames, s.tail_bytes), (0, 0));
    }

    #[test]
    fn flipped_payload_byte_skips_exactly_that_frame() {
        let mut bytes = segment(&[b"first", b"second", b"third"]);
        let second_payload = SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + 5 + FRAME_HEADER_LEN;
        bytes[second_payload + 2] ^= 0x10;
        let s = scan_bytes(&bytes);
        assert_eq!(ids(&s), [1, 3]);
        assert_eq!(s.corrupt_frames, 1);
        assert_eq!(s.corrupt_bytes, (FRAME_HEADER_LEN + 6) as u64);
        assert_eq!(s.tail_bytes, 0);
    }

    #[test]
    fn flipped_header_byte_resynchronises_on_the_next_frame() {
        let mut bytes = segment(&[b"first", b"second", b"third"]);
        bytes[SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + 5 + 9] ^= 0x01; // length of frame 2
        let s = scan_bytes(&bytes);
        assert_eq!(ids(&s), [1, 3]);
        assert_eq!(
            (s.corrupt_frames, s.corrupt_bytes),
            (1, (FRAME_HEADER_LEN + 6) as u64)
        );
    }

    #[test]
    fn a_frame_hidden_in_a_payload_is_not_trusted_when_its_id_goes_back() {
        // Frame 2's payload holds a complete frame with id 1; frame 2's header
        // is damaged, so the reader resynchronises inside that payload.
        let mut inner = Vec::new();
        encode_frame(&mut inner, KIND_CHUNK, 1, 0, b"fake");
        let mut bytes = segment(&[b"first", &inner, b"third"]);
        bytes[SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + 5 + 1] ^= 0x01;
        let s = scan_bytes(&bytes);
        assert_eq!(ids(&s), [1, 3]);
    }

    #[test]
    fn a_frame_hidden_in_a_payload_is_not_trusted_when_its_id_is_beyond_the_segment() {
        let mut inner = Vec::new();
        encode_frame(&mut inner, KIND_CHUNK, 100, 0, b"fake");
        let mut bytes = segment(&[b"first", &inner, b"third"]);
        bytes[SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + 5 + 1] ^= 0x01;
        let s = scan_bytes(&bytes);
        assert_eq!(ids(&s), [1, 3]);
    }

    #[test]
    fn cut_frame_is_the_tail_and_its_payload_is_not_searched() {
        // The cut frame's payload holds a complete frame (and more after it,
        // so the cut leaves that frame whole).
        let mut inner = Vec::new();
        encode_frame(&mut inner, KIND_CHUNK, 9, 0, b"fake");
        inner.extend_from_slice(b"padding");
        let bytes = segment(&[b"first", &inner]);
        let cut = &bytes[..bytes.len() - 1];
        let s = scan_bytes(cut);
        assert_eq!(ids(&s), [1]);
        assert_eq!(
            s.good_end,
            (SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + 5) as u64
        );
        assert_eq!(s.tail_bytes, cut.len() as u64 - s.good_end);
        assert_eq!(s.corrupt_frames, 0);
    }

    #[test]
    fn bad_file_header_is_corruption_when_frames_follow() {
        let mut bytes = segment(&[b"x"]);
        bytes[3] ^= 0xFF;
        let s = scan_bytes(&bytes);
        assert_eq!(s.header, FileHeader::Invalid);
        assert_eq!(ids(&s), [1]);
        assert_eq!(
            (s.corrupt_frames, s.corrupt_bytes),
            (1, SEGMENT_HEADER_LEN as u64)
        );
    }

    #[test]
    fn short_or_empty_files_are_all_tail() {
        let bytes = segment(&[]);
        for n in 0..bytes.len() {
            let s = scan_bytes(&bytes[..n]);
            assert_eq!((s.good_end, s.tail_bytes), (0, n as u64), "{n} bytes");
            assert!(s.frames.is_empty());
        }
        let s = scan_bytes(&bytes);
        assert_eq!((s.good_end, s.tail_bytes), (SEGMENT_HEADER_LEN as u64, 0));
    }

    #[test]
    fn magic_straddling_two_windows_is_found() {
        // The search for a magic starts one byte into the damaged frame (at
        // 33) and reads WINDOW bytes at a time: put the magic across the end
        // of the first read.
        let mut bytes = segment(&[]);
        let frame_at = SEGMENT_HEADER_LEN + 1 + WINDOW - 2;
        bytes.resize(frame_at, 0xAB);
        encode_frame(&mut bytes, KIND_CHUNK, 5, 0, b"late");
        let s = scan_bytes(&bytes);
        assert_eq!(ids(&s), [5]);
        assert_eq!(s.frames[0].offset, frame_at as u64);
        assert_eq!(s.corrupt_bytes, (frame_at - SEGMENT_HEADER_LEN) as u64);
    }

    #[test]
    fn payload_larger_than_the_window_is_checked_in_pieces() {
        let big = vec![7u8; WINDOW * 2 + 3];
        let bytes = segment(&[&big, b"after"]);
        let s = scan_bytes(&bytes);
        assert_eq!(ids(&s), [1, 2]);
        let mut flipped = bytes.clone();
        flipped[SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + WINDOW + 11] ^= 1;
        let s = scan_bytes(&flipped);
        assert_eq!(ids(&s), [2]);
        assert_eq!(s.corrupt_frames, 1);
    }
}
