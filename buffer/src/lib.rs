//! A durable write-ahead log of chunks: ulog's file buffer.
//!
//! An output that must not lose what it accepted appends each chunk here
//! before it acknowledges its input, and confirms the chunk once the
//! destination took it. After a crash, [`Wal::open`] hands back every chunk
//! that was appended and never confirmed, in append order. The crate knows
//! nothing of ulog's events: a chunk is bytes in, bytes out (the engine
//! encodes a tag and its events into them).
//!
//! ```
//! use ulog_buffer::{Wal, WalOptions};
//!
//! # fn main() -> Result<(), ulog_buffer::WalError> {
//! # let dir = tempfile::tempdir().unwrap();
//! let (wal, recovery) = Wal::open(dir.path(), WalOptions::default())?;
//! for chunk in &recovery {
//!     let chunk = chunk?;
//!     // ... deliver chunk.payload again, then:
//!     wal.confirm(chunk.id)?;
//! }
//! let id = wal.append(b"tag + events")?; // durable when this returns
//! // ... deliver, then:
//! wal.confirm(id)?;
//! # Ok(()) }
//! ```
//!
//! # Which guarantee, at what cost
//!
//! - [`SyncPolicy::Always`]: `append` returns once `fdatasync` covers the
//!   chunk, so it survives a power cut. Appends from many threads or tasks
//!   share one `fdatasync` (group commit, see below), so throughput grows
//!   with concurrency instead of being one sync per chunk.
//! - [`SyncPolicy::Interval`]: `append` returns after `write(2)`: the chunk
//!   survives the process crashing (it is in the kernel), and a background
//!   thread syncs every interval, so a power cut loses at most about one
//!   interval.
//!
//! Confirmations are written at once (`write(2)`) and synced in the
//! background (every interval, or every second under `Always`): a
//! confirmation lost to a power cut only replays its chunk once more. The
//! WAL is at least once: it may deliver a chunk twice, never zero times.
//!
//! # On disk
//!
//! One directory per WAL (one per output):
//!
//! - `00000001.wal`, `00000002.wal`, ...: segments. New chunks go to the
//!   newest (*active*) one; it is closed, synced, and a new one started when
//!   the next frame would take it past `segment_size`. A closed segment whose
//!   chunks are all confirmed is deleted.
//! - `acks.log`: confirmations. They are kept apart from the chunks so a
//!   segment can be deleted the moment its own chunks are confirmed, whatever
//!   order confirmations come in (a confirmation stored in segment 5 about a
//!   chunk of segment 2 would otherwise pin segment 5 until 2 goes). The file
//!   stays small: whenever it passes 1 MiB (or is found damaged at open) it
//!   is rewritten with only the confirmations of chunks whose segment still
//!   exists (write a copy, sync, rename over).
//! - `LOCK`: holds an exclusive `flock` while the WAL is open, so two
//!   writers can never interleave frames in one directory.
//!
//! Each file starts with a 32-byte header (magic, format version, and for a
//! segment the first chunk id it may hold, so ids never restart at 1 after
//! every segment has been deleted). Then frames, each a 36-byte header and a
//! payload:
//!
//! ```text
//! offset size  field
//!      0    4  magic       C1 'U' 'L' 'W' (0xC1 never occurs in UTF-8)
//!      4    1  kind        1 = chunk, 2 = confirmation ranges
//!      5    3  reserved    0
//!      8    4  len         payload length
//!     12    8  id          chunk id (0 in confirmation frames)
//!     20    8  time        append time, Unix milliseconds
//!     28    4  payload CRC CRC-32 of the payload
//!     32    4  header CRC  CRC-32 of bytes 0..32
//!     36  len  payload
//! ```
//!
//! A confirmation payload is a list of `(first id u64, count u32)` ranges.
//! Two checksums rather than one: a trusted header (its own CRC holds) gives
//! the frame's exact length, so a frame whose *payload* is damaged is
//! skipped exactly, without searching inside it for the next frame, where a
//! payload that happens to contain frame-shaped bytes could be mistaken for
//! one. All integers are little-endian; `docs/buffer.md` has the full
//! description.
//!
//! # Recovery
//!
//! `open` scans every segment. A frame counts only if both checksums hold.
//! A damaged frame followed by good ones is reported ([`RecoveryReport`],
//! `tracing::warn!`) and skipped; the reader resynchronises on the next
//! magic whose header checksum holds (and whose id is higher than the last,
//! as chunk ids always are), so the chunks after it are kept. Bad bytes at
//! the end of the newest segment are a torn write: cut off. Nothing in a
//! file's contents makes `open` panic or fail; it is fuzzed with random
//! bytes. The newest segment, once its tail is cut, stays the active one.
//!
//! # Group commit
//!
//! Frames are written under one lock, in order; the lock is released before
//! syncing. A writer that then finds no sync running becomes the *leader*:
//! it syncs the file up to everything written so far and wakes every writer
//! whose frame that covered. Writers arriving meanwhile wait; the next leader
//! covers all of them with one `fdatasync`. Async appends wait on a channel
//! and let the WAL's sync thread lead, so no runtime thread blocks on the
//! disk. A failed `fdatasync` fails every append it covered, even if a later
//! one succeeds (Linux may drop the pages a failed sync could not write).
//!
//! # Limits and errors
//!
//! - `total_limit` caps the bytes of the segment files: beyond it `append`
//!   returns [`WalError::Full`] and the caller decides (wait, drop, reject).
//! - A failed write (ENOSPC, any I/O error) returns [`WalError::Io`] with the
//!   path and the call, and cuts the file back to its last good frame: no half
//!   frame stays behind, and appends work again once there is space.
//!   Confirmations never fail for lack of space (they are what frees it): one
//!   that cannot be written holds in memory and is rewritten later.
//! - Recovered payloads are read from disk on demand ([`Recovery::iter`]),
//!   so a large buffer does not have to fit in memory at startup.
//! - Linux/Unix only (`pwrite`, `flock`).
#![deny(missing_docs)]

mod error;
pub mod format;
mod metrics;
mod recovery;
mod scan;
mod sync;
mod wal;

pub use error::{IoOp, WalError};
pub use metrics::{WalMetrics, FSYNC_BUCKETS};
pub use recovery::{RecoveredChunk, Recovery, RecoveryIter, RecoveryReport};
pub use wal::{SyncPolicy, Wal, WalOptions};

use std::fmt;

/// The id of a chunk in one WAL, given by [`Wal::append`]: increasing in
/// append order, and unique among the chunks and confirmations the directory
/// holds (ids carry on across reopens; a segment header records where, so
/// they do not restart when every segment has been deleted). Only the id of
/// a chunk torn away by a crash can be given again, as nothing refers to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ChunkId(pub(crate) u64);

impl ChunkId {
    /// The id as a number (for logs, or to keep it outside the process).
    pub fn get(self) -> u64 {
        self.0
    }

    /// An id from [`ChunkId::get`]; confirming an id the WAL never gave is
    /// an error ([`WalError::UnknownChunk`]), not a hazard.
    pub fn from_u64(id: u64) -> Self {
        ChunkId(id)
    }
}

impl fmt::Display for ChunkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests;
