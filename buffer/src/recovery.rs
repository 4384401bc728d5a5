//! What `Wal::open` found: the chunks to replay and a report of the damage.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::error::{IoOp, WalError};
use crate::format::{decode_frame_header, FRAME_HEADER_LEN, KIND_CHUNK};
use crate::metrics::Counters;
use crate::wal::time_of;
use crate::ChunkId;

/// What recovery found and what it had to repair, for logs and alerts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RecoveryReport {
    /// Segment files scanned.
    pub segments_read: u64,
    /// Good chunk frames found in them.
    pub chunks_found: u64,
    /// Of those, chunks already confirmed (not replayed).
    pub chunks_confirmed: u64,
    /// Bytes cut from the end of the newest segment: a write a crash
    /// interrupted. Under `SyncPolicy::Always` these belong to appends that had
    /// not returned.
    pub torn_tail_bytes: u64,
    /// Damaged regions skipped in segments (each counted as one frame, or as
    /// many frames as it held recognisable headers). The chunks before and
    /// after a damaged region are kept; the damaged chunk is lost.
    pub corrupt_frames: u64,
    /// Bytes in those regions.
    pub corrupt_bytes: u64,
    /// Damaged frames in the confirmation file: their chunks are replayed
    /// again (a duplicate, not a loss).
    pub confirm_file_corrupt_frames: u64,
    /// Bytes cut from the end of the confirmation file.
    pub confirm_file_torn_bytes: u64,
}

/// A chunk read back for replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveredChunk {
    /// Its id, to [`confirm`](crate::Wal::confirm) once delivered.
    pub id: ChunkId,
    /// When it was appended (wall clock of the appending process).
    pub appended_at: SystemTime,
    /// The bytes given to `append`.
    pub payload: Vec<u8>,
}

/// The chunks that were appended and never confirmed, in append order, and
/// the [`RecoveryReport`].
///
/// Payloads are not held in memory: [`Recovery::iter`] reads them from the
/// segment files one at a time, keeping only the segment it is in open (so
/// the space of a segment deleted after its chunks are confirmed is freed at
/// once, even on a full disk). Every chunk listed stays unconfirmed in the
/// WAL until [`Wal::confirm`](crate::Wal::confirm) is called with its id:
/// read a chunk, deliver it, confirm it. A chunk confirmed before it was read
/// may have its segment deleted; reading it then is an error.
#[derive(Debug)]
pub struct Recovery {
    chunks: Vec<PendingChunk>,
    files: BTreeMap<u64, PathBuf>,
    report: RecoveryReport,
    counters: Arc<Counters>,
}

/// Where a recovered chunk is.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PendingChunk {
    pub id: u64,
    pub segment: u64,
    pub offset: u64,
    pub len: u32,
    pub time_ms: u64,
}

impl Recovery {
    pub(crate) fn new(
        chunks: Vec<PendingChunk>,
        files: BTreeMap<u64, PathBuf>,
        report: RecoveryReport,
        counters: Arc<Counters>,
    ) -> Self {
        Recovery {
            chunks,
            files,
            report,
            counters,
        }
    }

    /// Chunks to replay.
    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    /// Whether there is nothing to replay.
    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Their ids, in append order, without reading payloads.
    pub fn ids(&self) -> impl ExactSizeIterator<Item = ChunkId> + '_ {
        self.chunks.iter().map(|c| ChunkId(c.id))
    }

    /// Payload bytes to replay in total.
    pub fn payload_bytes(&self) -> u64 {
        self.chunks.iter().map(|c| u64::from(c.len)).sum()
    }

    /// What recovery found and repaired.
    pub fn report(&self) -> &RecoveryReport {
        &self.report
    }

    /// Reads the chunks back, in append order. Each item is read and its
    /// checksums verified again; an item that fails is an error and the next
    /// item is still read.
    pub fn iter(&self) -> RecoveryIter<'_> {
        RecoveryIter {
            recovery: self,
            next: 0,
            open: None,
        }
    }

    fn read(
        &self,
        c: &PendingChunk,
        open: &mut Option<Segment>,
    ) -> Result<RecoveredChunk, WalError> {
        let path = self.files.get(&c.segment).cloned().unwrap_or_default();
        if open.as_ref().is_none_or(|s| s.no != c.segment) {
            *open = None;
            let file = File::open(&path).map_err(|e| WalError::io(IoOp::Open, path.clone(), e))?;
            *open = Some(Segment {
                no: c.segment,
                file,
                buf: Vec::new(),
                start: 0,
            });
        }
        let Some(seg) = open.as_mut() else {
            unreachable!("opened above")
        };
        let (header, payload) = seg
            .frame(c.offset, c.len as usize)
            .map_err(|e| WalError::io(IoOp::Read, path.clone(), e))?;
        let intact = decode_frame_header(&header).is_some_and(|h| {
            h.kind == KIND_CHUNK
                && h.id == c.id
                && h.len == c.len
                && h.payload_crc == crc32fast::hash(&payload)
        });
        if !intact {
            Counters::add(&self.counters.corrupt_frames, 1);
            return Err(WalError::Corrupt {
                path,
                offset: c.offset,
                id: ChunkId(c.id),
            });
        }
        Ok(RecoveredChunk {
            id: ChunkId(c.id),
            appended_at: time_of(c.time_ms),
            payload,
        })
    }
}

/// How much of a segment is read at once during replay: chunks are read in
/// file order, so one read serves many small chunks.
const READ_AHEAD: usize = 1 << 20;

/// The segment a replay is in, with a read-ahead buffer.
#[derive(Debug)]
pub(crate) struct Segment {
    no: u64,
    file: File,
    buf: Vec<u8>,
    /// File offset of `buf[0]`.
    start: u64,
}

impl Segment {
    /// The header and payload of the frame at `offset`.
    fn frame(&mut self, offset: u64, len: usize) -> io::Result<([u8; FRAME_HEADER_LEN], Vec<u8>)> {
        let mut header = [0u8; FRAME_HEADER_LEN];
        let total = FRAME_HEADER_LEN + len;
        if total > READ_AHEAD {
            // Large chunks: straight into their own buffer.
            let mut payload = vec![0u8; len];
            self.file.read_exact_at(&mut header, offset)?;
            self.file
                .read_exact_at(&mut payload, offset + FRAME_HEADER_LEN as u64)?;
            return Ok((header, payload));
        }
        let end = offset + total as u64;
        if offset < self.start || end > self.start + self.buf.len() as u64 {
            self.buf.resize(READ_AHEAD, 0);
            let mut filled = 0;
            while filled < total {
                match self
                    .file
                    .read_at(&mut self.buf[filled..], offset + filled as u64)
                {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        self.buf.clear();
                        return Err(e);
                    }
                }
            }
            self.buf.truncate(filled);
            self.start = offset;
            if filled < total {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "segment shorter than a recovered frame",
                ));
            }
        }
        let at = (offset - self.start) as usize;
        header.copy_from_slice(&self.buf[at..at + FRAME_HEADER_LEN]);
        Ok((header, self.buf[at + FRAME_HEADER_LEN..at + total].to_vec()))
    }
}

impl<'a> IntoIterator for &'a Recovery {
    type Item = Result<RecoveredChunk, WalError>;
    type IntoIter = RecoveryIter<'a>;

    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

/// Iterator over recovered chunks, from [`Recovery::iter`].
#[derive(Debug)]
pub struct RecoveryIter<'a> {
    recovery: &'a Recovery,
    next: usize,
    /// The segment being read.
    open: Option<Segment>,
}

impl Iterator for RecoveryIter<'_> {
    type Item = Result<RecoveredChunk, WalError>;

    fn next(&mut self) -> Option<Self::Item> {
        let Some(c) = self.recovery.chunks.get(self.next) else {
            self.open = None;
            return None;
        };
        self.next += 1;
        Some(self.recovery.read(c, &mut self.open))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let left = self.recovery.chunks.len() - self.next;
        (left, Some(left))
    }
}

impl ExactSizeIterator for RecoveryIter<'_> {}

/// Confirmed ids as sorted, disjoint, half-open ranges (a crafted file can
/// claim billions of ids; ranges keep that to its size on disk).
#[derive(Debug, Default)]
pub(crate) struct ConfirmedSet {
    ranges: Vec<(u64, u64)>,
}

impl ConfirmedSet {
    pub fn new(mut ranges: Vec<(u64, u64)>) -> Self {
        ranges.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(ranges.len());
        for (start, end) in ranges {
            match merged.last_mut() {
                Some(last) if start <= last.1 => last.1 = last.1.max(end),
                _ => merged.push((start, end)),
            }
        }
        ConfirmedSet { ranges: merged }
    }

    pub fn contains(&self, id: u64) -> bool {
        let i = self.ranges.partition_point(|&(start, _)| start <= id);
        i > 0 && id < self.ranges[i - 1].1
    }

    /// One past the highest confirmed id (0 if none).
    pub fn end(&self) -> u64 {
        self.ranges.last().map_or(0, |r| r.1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confirmed_set_merges_and_answers() {
        let set = ConfirmedSet::new(vec![(10, 12), (1, 3), (2, 5), (12, 13), (20, 21)]);
        assert_eq!(set.ranges, [(1, 5), (10, 13), (20, 21)]);
        let inside: Vec<u64> = (0..25).filter(|&id| set.contains(id)).collect();
        assert_eq!(inside, [1, 2, 3, 4, 10, 11, 12, 20]);
        assert_eq!(set.end(), 21);
        assert!(!ConfirmedSet::default().contains(0));
    }
}
