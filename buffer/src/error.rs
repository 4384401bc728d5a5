//! The one error type of the crate.

use std::fmt;
use std::io;
use std::path::PathBuf;

use crate::ChunkId;

/// What the WAL was doing when an I/O call failed, so an operator reading
/// `cannot sync /var/lib/ulog/es/00000003.wal: ...` knows which call and file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoOp {
    /// Creating the WAL directory.
    CreateDir,
    /// Listing the WAL directory.
    ListDir,
    /// Taking the exclusive lock on the directory's `LOCK` file.
    Lock,
    /// Opening an existing file.
    Open,
    /// Creating a new segment or confirmation file.
    Create,
    /// Reading a file.
    Read,
    /// Writing a frame or a header.
    Write,
    /// `fdatasync` of a file.
    Sync,
    /// `fsync` of the directory (makes created, renamed and removed names durable).
    SyncDir,
    /// Cutting a file back to its last good frame.
    Truncate,
    /// Deleting a fully confirmed segment.
    Remove,
    /// Replacing the confirmation file with its compacted copy.
    Rename,
    /// Starting the background sync thread.
    SpawnThread,
}

impl fmt::Display for IoOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoOp::CreateDir => "create directory",
            IoOp::ListDir => "list directory",
            IoOp::Lock => "lock",
            IoOp::Open => "open",
            IoOp::Create => "create",
            IoOp::Read => "read",
            IoOp::Write => "write",
            IoOp::Sync => "sync",
            IoOp::SyncDir => "sync directory",
            IoOp::Truncate => "truncate",
            IoOp::Remove => "remove",
            IoOp::Rename => "rename",
            IoOp::SpawnThread => "start sync thread for",
        })
    }
}

/// Everything that can go wrong with a [`Wal`](crate::Wal).
///
/// None of these leaves the WAL unusable: after an `Io` error on append the
/// file is cut back to its last good frame, and a later append (once the disk
/// has room again) works.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WalError {
    /// An I/O call failed. `path` is the file (or directory) and `op` the call.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// The call that failed.
        op: IoOp,
        /// The file or directory it was about.
        path: PathBuf,
        /// What the operating system said.
        #[source]
        source: io::Error,
    },
    /// Appending would take the WAL past `total_limit` bytes on disk. The
    /// caller decides: wait for confirmations to free space, drop, or reject.
    #[error("buffer full: {used} of {limit} bytes used, {needed} more needed")]
    Full {
        /// Bytes the segment files take now.
        used: u64,
        /// `WalOptions::total_limit`.
        limit: u64,
        /// Bytes this append needs (frame, plus a segment header if it rotates).
        needed: u64,
    },
    /// The chunk can never fit, even in an empty WAL: waiting would not help.
    #[error("chunk of {len} bytes can never fit: at most {max} bytes")]
    TooLarge {
        /// The payload's length.
        len: u64,
        /// The largest payload this WAL accepts.
        max: u64,
    },
    /// `confirm` of an id that is not waiting for confirmation (never
    /// appended, already confirmed, or abandoned after a failed sync).
    #[error("chunk {0} is not waiting for confirmation")]
    UnknownChunk(ChunkId),
    /// Another `Wal` (in this or another process) has the directory open.
    #[error("{} is in use by another writer", path.display())]
    Locked {
        /// The WAL directory.
        path: PathBuf,
    },
    /// A file has a valid header of a format version this build cannot read;
    /// refusing is safer than misreading it.
    #[error("{} has format version {version}, this build reads version {}", path.display(), crate::format::VERSION)]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// The version in its header.
        version: u32,
    },
    /// A recovered chunk no longer matches its checksum when read back for
    /// replay (the file changed after `open` scanned it).
    #[error("chunk {id} in {} at offset {offset} changed since it was recovered", path.display())]
    Corrupt {
        /// The segment file.
        path: PathBuf,
        /// Offset of the frame in it.
        offset: u64,
        /// The chunk.
        id: ChunkId,
    },
    /// The options cannot work (a zero segment size, say).
    #[error("invalid WAL options: {0}")]
    InvalidOptions(&'static str),
    /// All 2^64 chunk ids have been used (only a crafted file gets here).
    #[error("chunk ids exhausted")]
    IdsExhausted,
}

impl WalError {
    /// Whether this is the disk running out of space (ENOSPC) rather than
    /// `total_limit` (that is [`WalError::Full`]).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, WalError::Io { source, .. } if source.kind() == io::ErrorKind::StorageFull)
    }

    pub(crate) fn io(op: IoOp, path: impl Into<PathBuf>, source: io::Error) -> Self {
        WalError::Io {
            op,
            path: path.into(),
            source,
        }
    }
}

/// Attaches an [`IoOp`] and a path to an `io::Result`.
pub(crate) trait IoContext<T> {
    fn ctx(self, op: IoOp, path: &std::path::Path) -> Result<T, WalError>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, op: IoOp, path: &std::path::Path) -> Result<T, WalError> {
        self.map_err(|e| WalError::io(op, path, e))
    }
}
