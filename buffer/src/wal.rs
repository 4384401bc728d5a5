//! The write-ahead log itself: appending, confirming, rotating and deleting
//! segments, and the confirmation file. Opening (recovery) is in [`open`].
//!
//! Locking: one mutex (`State`) orders every write to the files and guards
//! the index of unconfirmed chunks; a second one (`SyncState`, in
//! [`crate::sync`]) guards the group-commit bookkeeping. Code that holds both
//! takes `State` first; nothing takes them the other way round.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::watch;
use tracing::{debug, warn};

use crate::error::{IoContext, IoOp, WalError};
use crate::format::{
    decode_frame_header, encode_file_header, encode_frame, encode_ranges, ACK_MAGIC,
    FRAME_HEADER_LEN, KIND_CHUNK, KIND_CONFIRM, RANGE_LEN, SEGMENT_HEADER_LEN, SEGMENT_MAGIC,
};
use crate::metrics::{Counters, WalMetrics};
use crate::sync::SyncState;
use crate::ChunkId;

mod open;

/// Name of the confirmation file in the WAL directory.
pub(crate) const ACK_FILE: &str = "acks.log";
/// Its compacted copy while it is being written.
const ACK_TMP: &str = "acks.log.tmp";
/// The file whose `flock` says the directory is in use.
const LOCK_FILE: &str = "LOCK";
/// The confirmation file is compacted once it is this large (and at least
/// twice its size right after the last compaction).
const ACK_COMPACT_MIN: u64 = 1 << 20;
/// Ranges per frame in a compacted confirmation file (48 KiB frames).
const RANGES_PER_FRAME: usize = 4096;
/// Longest confirm frame payload the reader accepts.
const MAX_CONFIRM_PAYLOAD: u64 = (RANGES_PER_FRAME * RANGE_LEN) as u64;

/// When an append is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncPolicy {
    /// `append` returns only once `fdatasync` covers the chunk: it survives a
    /// power cut. Concurrent appends share one `fdatasync` (group commit), so
    /// many writers cost barely more than one.
    Always,
    /// `append` returns after `write(2)`: the chunk survives the process
    /// crashing, and a background thread syncs every interval, so a power cut
    /// loses at most about one interval of chunks.
    Interval(Duration),
}

/// How a [`Wal`] is laid out and when it syncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalOptions {
    /// A segment file is closed and a new one started once the next frame
    /// would take it past this many bytes. Smaller segments free disk sooner
    /// after confirmations; larger ones mean fewer files. A chunk larger than
    /// this gets a segment of its own.
    pub segment_size: u64,
    /// Most bytes the segment files may take; an append beyond it returns
    /// [`WalError::Full`]. The small confirmation file is not counted.
    pub total_limit: u64,
    /// When appends are durable.
    pub sync: SyncPolicy,
}

impl Default for WalOptions {
    /// 64 MiB segments, 1 GiB in total, every append synced.
    fn default() -> Self {
        WalOptions {
            segment_size: 64 << 20,
            total_limit: 1 << 30,
            sync: SyncPolicy::Always,
        }
    }
}

impl WalOptions {
    fn validate(&self) -> Result<(), WalError> {
        if self.segment_size == 0 {
            return Err(WalError::InvalidOptions("segment_size must be above 0"));
        }
        if self.total_limit < (SEGMENT_HEADER_LEN + FRAME_HEADER_LEN) as u64 {
            return Err(WalError::InvalidOptions(
                "total_limit must leave room for at least one frame",
            ));
        }
        if self.sync == SyncPolicy::Interval(Duration::ZERO) {
            return Err(WalError::InvalidOptions(
                "a sync interval must be above 0 (use SyncPolicy::Always)",
            ));
        }
        Ok(())
    }

    /// The largest payload an append accepts.
    pub(crate) fn max_payload(&self) -> u64 {
        let room = self.total_limit - (SEGMENT_HEADER_LEN + FRAME_HEADER_LEN) as u64;
        room.min(u64::from(u32::MAX))
    }
}

/// A durable log of chunks in one directory: see the [crate docs](crate).
///
/// `Wal` is `Send + Sync`; share it with `Arc<Wal>`. Dropping it syncs what
/// is still unsynced and stops its background thread; a crash instead loses
/// nothing that an `append` returned for under [`SyncPolicy::Always`].
pub struct Wal {
    shared: Arc<Shared>,
    syncer: Option<JoinHandle<()>>,
}

/// What the file operations need besides the state: where, and what to count.
pub(crate) struct Env {
    pub dir: PathBuf,
    pub counters: Arc<Counters>,
    /// Test hook: the next this-many syncs fail.
    #[cfg(test)]
    pub fail_syncs: std::sync::atomic::AtomicU32,
    /// Test hook: this many syncs succeed before `fail_syncs` applies.
    #[cfg(test)]
    pub pass_syncs: std::sync::atomic::AtomicU32,
}

/// What the appenders, the confirmers and the sync thread share.
pub(crate) struct Shared {
    pub env: Env,
    pub options: WalOptions,
    pub state: Mutex<State>,
    pub sync: Mutex<SyncState>,
    /// Signalled when a sync round ends, an async append asks for a sync, or
    /// the WAL stops.
    pub cv: Condvar,
    /// Bumped at the end of every sync round: what async appends wait on.
    pub rounds: watch::Sender<u64>,
    /// Held (with its `flock`) for as long as the WAL is open.
    _lock: File,
}

/// The writer's state: files, offsets and the index of unconfirmed chunks.
pub(crate) struct State {
    segments: BTreeMap<u64, SegmentMeta>,
    active_no: u64,
    active_file: Arc<File>,
    /// The active file may hold junk past its last good frame (a failed write
    /// that could not be cut back); cut it before the file is closed.
    dirty_tail: bool,
    segment_bytes: u64,
    next_id: u64,
    /// Frame bytes written since open: the log sequence number that syncs
    /// are measured in.
    pub written: u64,
    unconfirmed: BTreeMap<u64, Unconfirmed>,
    acks: AckLog,
    buf: Vec<u8>,
    ack_buf: Vec<u8>,
    faults: Faults,
}

/// What one sync round syncs, read under the state lock.
pub(crate) struct SyncTarget {
    /// Position written so far: what the round covers.
    pub written: u64,
    /// The active segment.
    pub file: Arc<File>,
    pub path: PathBuf,
    /// The confirmation file, if asked for and dirty.
    pub ack: Option<(Arc<File>, PathBuf)>,
}

#[derive(Debug)]
struct SegmentMeta {
    path: PathBuf,
    /// Bytes of the file that hold good frames (its length on disk).
    len: u64,
    first_id: Option<u64>,
    last_id: Option<u64>,
    /// Unconfirmed chunks in this segment; at 0 a closed segment is deleted.
    pending: u64,
}

#[derive(Debug, Clone, Copy)]
struct Unconfirmed {
    segment: u64,
    /// Where its frame starts in the segment, and its payload length: what
    /// [`Wal::read`] needs.
    offset: u64,
    len: u32,
    time_ms: u64,
}

/// The confirmation file.
struct AckLog {
    path: PathBuf,
    /// `None` if it could not be opened or created (disk full at open); the
    /// confirmations then live in memory until a compaction succeeds.
    file: Option<Arc<File>>,
    len: u64,
    /// Written since the last sync.
    dirty: bool,
    compact_at: u64,
    /// A confirmation could not be written: rewrite the whole file as soon
    /// as space is freed.
    needs_rewrite: bool,
}

/// Test hooks for failing writes; empty outside tests.
#[derive(Default)]
pub(crate) struct Faults {
    /// The next `times` writes write only `written` bytes, then fail with
    /// ENOSPC.
    #[cfg(test)]
    pub write: Option<(usize, u32)>,
}

/// Locks a mutex, carrying on if a thread panicked while holding it: every
/// section under these locks leaves the state consistent before anything in
/// it can panic, and refusing all appends of an output for ever would be
/// worse than that.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Wal {
    /// Appends one chunk and returns its id.
    ///
    /// Under [`SyncPolicy::Always`] this returns once `fdatasync` covers the
    /// chunk; concurrent callers share syncs (the first waiter syncs for all
    /// whose frames are written by then). Under [`SyncPolicy::Interval`] it
    /// returns after `write(2)`. Blocks the calling thread: from async code
    /// use [`Wal::append_async`].
    ///
    /// # Errors
    ///
    /// [`WalError::Full`] past `total_limit` (nothing was written),
    /// [`WalError::TooLarge`] for a chunk that can never fit, and
    /// [`WalError::Io`] when writing or syncing fails. After an `Io` error the
    /// chunk is not in the WAL (not replayed after a restart, no id to
    /// confirm) and the WAL stays usable.
    pub fn append(&self, payload: &[u8]) -> Result<ChunkId, WalError> {
        let sh = &*self.shared;
        let (id, lsn) = sh.write_chunk(payload)?;
        if sh.options.sync == SyncPolicy::Always {
            if let Err(e) = sh.wait_durable(lsn) {
                sh.abandon(id);
                return Err(e);
            }
        }
        Ok(id)
    }

    /// [`Wal::append`] for async code: the `write(2)` runs on the calling
    /// task (a copy into the page cache, normally microseconds), and the wait
    /// for `fdatasync` is a future. Async appends share syncs with each other
    /// and with blocking appends; the WAL's sync thread runs them.
    ///
    /// # Errors
    ///
    /// As [`Wal::append`].
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropped after its write, the chunk stays in the WAL
    /// unconfirmed (and is replayed by the next `open`), but its id is lost.
    pub async fn append_async(&self, payload: &[u8]) -> Result<ChunkId, WalError> {
        let sh = &*self.shared;
        let (id, lsn) = sh.write_chunk(payload)?;
        if sh.options.sync == SyncPolicy::Always {
            if let Err(e) = sh.wait_durable_async(lsn).await {
                sh.abandon(id);
                return Err(e);
            }
        }
        Ok(id)
    }

    /// Records that the destination took chunk `id`: it will not be replayed,
    /// and once every chunk of a closed segment is confirmed the segment file
    /// is deleted.
    ///
    /// The confirmation is written (`write(2)`, so it survives the process
    /// crashing) but synced later: by the next sync round under
    /// [`SyncPolicy::Interval`], within a second under [`SyncPolicy::Always`],
    /// or by [`Wal::sync`]. A confirmation lost to a power cut only means the
    /// chunk is delivered once more (at least once), never that one is lost.
    /// Cheap and non-blocking enough to call from async code.
    ///
    /// # Errors
    ///
    /// [`WalError::UnknownChunk`] if `id` is not waiting for confirmation.
    /// A failed write of the confirmation is not an error: it still frees the
    /// chunk's segment, is counted in [`WalMetrics::confirm_write_errors`],
    /// and the confirmation file is rewritten once the disk has room.
    pub fn confirm(&self, id: ChunkId) -> Result<(), WalError> {
        lock(&self.shared.state).confirm(&self.shared.env, id.get())
    }

    /// Reads back the payload of an unconfirmed chunk, checksums verified:
    /// for an output that let go of its in-memory copy (a long outage
    /// filling the buffer) and needs the chunk again to deliver it.
    ///
    /// # Errors
    ///
    /// [`WalError::UnknownChunk`] if `id` is not waiting for confirmation,
    /// [`WalError::Corrupt`] if the frame on disk no longer matches its
    /// checksums, [`WalError::Io`] if reading fails.
    pub fn read(&self, id: ChunkId) -> Result<Vec<u8>, WalError> {
        let (file, path, at) = {
            let st = lock(&self.shared.state);
            let u = *st
                .unconfirmed
                .get(&id.get())
                .ok_or(WalError::UnknownChunk(id))?;
            let seg = st
                .segments
                .get(&u.segment)
                .ok_or(WalError::UnknownChunk(id))?;
            let file = if u.segment == st.active_no {
                Ok(Arc::clone(&st.active_file))
            } else {
                File::open(&seg.path).map(Arc::new)
            };
            let file = file.map_err(|e| WalError::io(IoOp::Open, seg.path.clone(), e))?;
            (file, seg.path.clone(), u)
        };
        let mut frame = vec![0u8; FRAME_HEADER_LEN + at.len as usize];
        file.read_exact_at(&mut frame, at.offset)
            .map_err(|e| WalError::io(IoOp::Read, path.clone(), e))?;
        let payload = frame.split_off(FRAME_HEADER_LEN);
        let intact = decode_frame_header(&frame).is_some_and(|h| {
            h.kind == KIND_CHUNK
                && h.id == id.get()
                && h.len == at.len
                && h.payload_crc == crc32fast::hash(&payload)
        });
        if !intact {
            Counters::add(&self.shared.env.counters.corrupt_frames, 1);
            return Err(WalError::Corrupt {
                path,
                offset: at.offset,
                id,
            });
        }
        Ok(payload)
    }

    /// Makes everything appended and confirmed so far durable, now.
    ///
    /// # Errors
    ///
    /// [`WalError::Io`] if a sync fails.
    pub fn sync(&self) -> Result<(), WalError> {
        self.shared.sync_now()
    }

    /// A snapshot of sizes and counters; cheap (one short lock).
    pub fn metrics(&self) -> WalMetrics {
        let mut m = WalMetrics::empty();
        {
            let st = lock(&self.shared.state);
            m.segment_bytes = st.segment_bytes;
            m.bytes_on_disk = st.segment_bytes + st.acks.len;
            m.segments = st.segments.len() as u64;
            m.unconfirmed_chunks = st.unconfirmed.len() as u64;
            m.oldest_unconfirmed_age = st.unconfirmed.first_key_value().map(|(_, u)| {
                SystemTime::now()
                    .duration_since(time_of(u.time_ms))
                    .unwrap_or(Duration::ZERO)
            });
        }
        self.shared.env.counters.snapshot_into(&mut m);
        m
    }

    /// The directory this WAL lives in.
    pub fn dir(&self) -> &Path {
        &self.shared.env.dir
    }

    /// The options it was opened with.
    pub fn options(&self) -> &WalOptions {
        &self.shared.options
    }

    /// Syncs everything and closes the WAL, reporting a failing last sync
    /// (which dropping the `Wal` can only log).
    ///
    /// # Errors
    ///
    /// [`WalError::Io`] if the last sync fails.
    pub fn close(self) -> Result<(), WalError> {
        self.shared.sync_now()
    }

    /// Test hook: the next `times` writes write `written` bytes and fail.
    #[cfg(test)]
    pub(crate) fn fail_next_writes(&self, written: usize, times: u32) {
        lock(&self.shared.state).faults.write = Some((written, times));
    }

    /// Test hook: compact the confirmation file once it reaches `bytes`.
    #[cfg(test)]
    pub(crate) fn compact_confirmations_at(&self, bytes: u64) {
        lock(&self.shared.state).acks.compact_at = bytes;
    }

    /// Test hook: the next `n` file syncs fail.
    #[cfg(test)]
    pub(crate) fn fail_next_syncs(&self, n: u32) {
        self.fail_syncs_after(0, n);
    }

    /// Test hook: `pass` file syncs succeed, then `n` fail.
    #[cfg(test)]
    pub(crate) fn fail_syncs_after(&self, pass: u32, n: u32) {
        use std::sync::atomic::Ordering::SeqCst;
        self.shared.env.pass_syncs.store(pass, SeqCst);
        self.shared.env.fail_syncs.store(n, SeqCst);
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        lock(&self.shared.sync).stop = true;
        self.shared.cv.notify_all();
        if let Some(handle) = self.syncer.take() {
            if handle.join().is_err() {
                warn!(dir = %self.shared.env.dir.display(), "WAL sync thread panicked");
            }
        }
    }
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.shared.env.dir)
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl Shared {
    /// Writes one chunk frame; returns its id and the sequence number a sync
    /// must reach to cover it.
    fn write_chunk(&self, payload: &[u8]) -> Result<(ChunkId, u64), WalError> {
        let opts = &self.options;
        let len = payload.len() as u64;
        let max = opts.max_payload();
        if len > max {
            return Err(WalError::TooLarge { len, max });
        }
        let frame_len = FRAME_HEADER_LEN as u64 + len;
        let mut guard = lock(&self.state);
        if guard.rotation_due(frame_len, opts.segment_size) {
            // Closing a segment syncs it under the lock. Flush the bulk of
            // its dirty pages first, without the lock, so that appends and
            // confirmations wait only for what is written meanwhile, not for
            // the writeback of a whole segment (under `Interval`, up to one
            // interval's worth).
            let file = Arc::clone(&guard.active_file);
            let path = guard.active().path.clone();
            let upto = guard.written;
            drop(guard);
            if let Err(e) = self.env.timed_sync(&file) {
                let err = lock(&self.sync).failed(upto, &e, &path, &self.env.counters);
                self.cv.notify_all();
                return Err(err);
            }
            lock(&self.sync).synced_to(upto);
            guard = lock(&self.state);
        }
        let st = &mut *guard;
        let rotate = st.rotation_due(frame_len, opts.segment_size);
        let active = st.active();
        // A fully confirmed active segment is deleted as soon as it is closed.
        let freed = if rotate && active.pending == 0 {
            active.len
        } else {
            0
        };
        let needed = frame_len + if rotate { SEGMENT_HEADER_LEN as u64 } else { 0 };
        if st.segment_bytes.saturating_sub(freed) + needed > opts.total_limit {
            Counters::add(&self.env.counters.full_rejections, 1);
            return Err(WalError::Full {
                used: st.segment_bytes,
                limit: opts.total_limit,
                needed,
            });
        }
        if rotate {
            st.rotate(self)?;
        }
        let id = st.next_id;
        // Ids are never reused, not even after a failed write.
        st.next_id = id.checked_add(1).ok_or(WalError::IdsExhausted)?;
        let time_ms = now_ms();
        st.buf.clear();
        encode_frame(&mut st.buf, KIND_CHUNK, id, time_ms, payload);
        let at = st.active().len;
        if let Err(e) = pwrite(&st.active_file, &st.buf, at, &mut st.faults) {
            Counters::add(&self.env.counters.write_errors, 1);
            // Leave no half frame behind: cut the file back.
            if let Err(cut) = st.active_file.set_len(at) {
                warn!(path = %st.active().path.display(), error = %cut, "cannot cut back a failed write");
                st.dirty_tail = true;
            }
            return Err(WalError::io(IoOp::Write, st.active().path.clone(), e));
        }
        let active_no = st.active_no;
        let seg = st.active_mut();
        seg.len += frame_len;
        seg.first_id.get_or_insert(id);
        seg.last_id = Some(id);
        seg.pending += 1;
        st.segment_bytes += frame_len;
        st.written += frame_len;
        st.unconfirmed.insert(
            id,
            Unconfirmed {
                segment: active_no,
                offset: at,
                len: len as u32,
                time_ms,
            },
        );
        Counters::add(&self.env.counters.appended_chunks, 1);
        Counters::add(&self.env.counters.appended_bytes, len);
        Ok((ChunkId(id), st.written))
    }

    /// Drops a chunk whose sync failed: its appender was told it is not in
    /// the WAL, so it must not be replayed (its frame may still be on disk).
    fn abandon(&self, id: ChunkId) {
        let mut st = lock(&self.state);
        if st.confirm(&self.env, id.get()).is_ok() {
            // Not a delivery.
            self.env
                .counters
                .confirmed_chunks
                .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

impl Env {
    /// `fdatasync` of one file, timed into the metrics.
    pub(crate) fn timed_sync(&self, file: &File) -> io::Result<()> {
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering::SeqCst;
            let passing = self
                .pass_syncs
                .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if !passing
                && self
                    .fail_syncs
                    .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
                    .is_ok()
            {
                return Err(io::Error::other("injected sync failure"));
            }
        }
        timed_sync(file, &self.counters)
    }
}

impl State {
    /// Whether a frame of `frame_len` bytes closes the active segment (one
    /// that holds no frame takes any frame, however large).
    fn rotation_due(&self, frame_len: u64, segment_size: u64) -> bool {
        let active = self.active();
        active.first_id.is_some() && active.len + frame_len > segment_size
    }

    fn active(&self) -> &SegmentMeta {
        // The active segment is in the map from open to drop.
        &self.segments[&self.active_no]
    }

    fn active_mut(&mut self) -> &mut SegmentMeta {
        self.segments
            .get_mut(&self.active_no)
            .expect("the active segment is always in the map")
    }

    /// What a sync round needs: the sequence number written so far, the
    /// active file, and (if asked and dirty) the confirmation file.
    pub(crate) fn sync_target(&mut self, acks: bool) -> SyncTarget {
        let ack = if acks && self.acks.dirty {
            self.acks.dirty = false;
            self.acks
                .file
                .as_ref()
                .map(|f| (Arc::clone(f), self.acks.path.clone()))
        } else {
            None
        };
        SyncTarget {
            written: self.written,
            file: Arc::clone(&self.active_file),
            path: self.active().path.clone(),
            ack,
        }
    }

    /// A confirmation could not be written earlier: try to rewrite the file
    /// now (the disk may have room again).
    pub(crate) fn retry_ack_rewrite(&mut self, env: &Env) {
        if self.acks.needs_rewrite {
            if let Err(e) = self.compact_acks(env) {
                debug!(error = %e, "confirmation file still cannot be rewritten");
            }
        }
    }

    /// A sync of the confirmation file failed: try again next round.
    pub(crate) fn ack_sync_failed(&mut self) {
        self.acks.dirty = true;
    }

    /// Closes the active segment (synced) and starts the next one.
    fn rotate(&mut self, sh: &Shared) -> Result<(), WalError> {
        let old_path = self.active().path.clone();
        if self.dirty_tail {
            let len = self.active().len;
            self.active_file
                .set_len(len)
                .ctx(IoOp::Truncate, &old_path)?;
            self.dirty_tail = false;
        }
        // Closed segments are durable: only the active one can have a torn
        // tail, which is what lets recovery tell a crash from damage.
        if let Err(e) = sh.env.timed_sync(&self.active_file) {
            let err = lock(&sh.sync).failed(self.written, &e, &old_path, &sh.env.counters);
            sh.cv.notify_all();
            return Err(err);
        }
        lock(&sh.sync).synced_to(self.written);
        let no = self.active_no + 1;
        let (file, path) = create_segment(&sh.env, no, self.next_id)?;
        debug!(path = %path.display(), first_id = self.next_id, "started segment");
        self.segments.insert(
            no,
            SegmentMeta {
                path,
                len: SEGMENT_HEADER_LEN as u64,
                first_id: None,
                last_id: None,
                pending: 0,
            },
        );
        self.segment_bytes += SEGMENT_HEADER_LEN as u64;
        self.active_no = no;
        self.active_file = Arc::new(file);
        self.collect_garbage(&sh.env);
        Ok(())
    }

    fn confirm(&mut self, sh: &Env, id: u64) -> Result<(), WalError> {
        let u = self
            .unconfirmed
            .remove(&id)
            .ok_or(WalError::UnknownChunk(ChunkId(id)))?;
        let emptied = match self.segments.get_mut(&u.segment) {
            Some(seg) => {
                seg.pending = seg.pending.saturating_sub(1);
                seg.pending == 0 && u.segment != self.active_no
            }
            None => false,
        };
        self.write_ack(sh, id);
        Counters::add(&sh.counters.confirmed_chunks, 1);
        if emptied {
            self.collect_garbage(sh);
        }
        if self.acks.len >= self.acks.compact_at {
            if let Err(e) = self.compact_acks(sh) {
                warn!(error = %e, "cannot compact the confirmation file");
                self.acks.compact_at = self.acks.len.saturating_mul(2);
            }
        }
        Ok(())
    }

    fn write_ack(&mut self, sh: &Env, id: u64) {
        let Some(file) = self.acks.file.clone() else {
            Counters::add(&sh.counters.confirm_write_errors, 1);
            self.acks.needs_rewrite = true;
            return;
        };
        let mut payload = [0u8; RANGE_LEN];
        payload[..8].copy_from_slice(&id.to_le_bytes());
        payload[8..].copy_from_slice(&1u32.to_le_bytes());
        self.ack_buf.clear();
        encode_frame(&mut self.ack_buf, KIND_CONFIRM, 0, now_ms(), &payload);
        let at = self.acks.len;
        match pwrite(&file, &self.ack_buf, at, &mut self.faults) {
            Ok(()) => {
                self.acks.len += self.ack_buf.len() as u64;
                self.acks.dirty = true;
            }
            Err(e) => {
                warn!(path = %self.acks.path.display(), error = %e, "cannot write a confirmation; it holds in memory");
                Counters::add(&sh.counters.confirm_write_errors, 1);
                self.acks.needs_rewrite = true;
                // A half frame left here is cut by the next open as a torn tail.
                let _ = file.set_len(at);
            }
        }
    }

    /// Deletes every closed segment whose chunks are all confirmed.
    fn collect_garbage(&mut self, sh: &Env) {
        let done: Vec<u64> = self
            .segments
            .iter()
            .filter(|(no, m)| **no != self.active_no && m.pending == 0)
            .map(|(no, _)| *no)
            .collect();
        let mut freed = false;
        for no in done {
            let Some(meta) = self.segments.get(&no) else {
                continue;
            };
            match fs::remove_file(&meta.path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    warn!(path = %meta.path.display(), error = %e, "cannot delete a confirmed segment; will retry");
                }
                _ => {
                    debug!(path = %meta.path.display(), "deleted confirmed segment");
                    self.segment_bytes -= meta.len;
                    self.segments.remove(&no);
                    freed = true;
                }
            }
        }
        if freed && self.acks.needs_rewrite {
            if let Err(e) = self.compact_acks(sh) {
                warn!(error = %e, "cannot rewrite the confirmation file");
            }
        }
    }

    /// The confirmed ids that still matter (those inside live segments), as
    /// `(first, count)` ranges.
    fn confirmed_ranges(&self) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        for seg in self.segments.values() {
            let (Some(first), Some(last)) = (seg.first_id, seg.last_id) else {
                continue;
            };
            let mut next = first;
            for &id in self.unconfirmed.range(first..=last).map(|(id, _)| id) {
                push_range(&mut out, next, id);
                next = id + 1;
            }
            push_range(&mut out, next, last.saturating_add(1));
        }
        out
    }

    /// Rewrites the confirmation file with only the confirmations that still
    /// matter: write a copy, sync it, rename it over the old one.
    fn compact_acks(&mut self, sh: &Env) -> Result<(), WalError> {
        let ranges = self.confirmed_ranges();
        let tmp = sh.dir.join(ACK_TMP);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx(IoOp::Create, &tmp)?;
        let mut buf = encode_file_header(&ACK_MAGIC, 0).to_vec();
        let mut payload = Vec::new();
        let time_ms = now_ms();
        for part in ranges.chunks(RANGES_PER_FRAME) {
            payload.clear();
            encode_ranges(&mut payload, part);
            encode_frame(&mut buf, KIND_CONFIRM, 0, time_ms, &payload);
        }
        let written = pwrite(&file, &buf, 0, &mut self.faults)
            .ctx(IoOp::Write, &tmp)
            .and_then(|()| sh.timed_sync(&file).ctx(IoOp::Sync, &tmp))
            .and_then(|()| fs::rename(&tmp, &self.acks.path).ctx(IoOp::Rename, &tmp));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let len = buf.len() as u64;
        self.acks.file = Some(Arc::new(file));
        self.acks.len = len;
        self.acks.dirty = false;
        self.acks.needs_rewrite = false;
        self.acks.compact_at = ACK_COMPACT_MIN.max(len.saturating_mul(2));
        if let Err(e) = sync_dir(&sh.dir, &sh.counters) {
            // The new file is in place; only the rename's durability waits
            // for the next directory sync.
            warn!(error = %e, "cannot sync the WAL directory after compaction");
        }
        debug!(
            ranges = ranges.len(),
            bytes = len,
            "compacted confirmation file"
        );
        Ok(())
    }
}

/// Appends `[start, end)` as ranges of at most `u32::MAX` ids.
fn push_range(out: &mut Vec<(u64, u32)>, mut start: u64, end: u64) {
    while start < end {
        let n = (end - start).min(u64::from(u32::MAX));
        out.push((start, n as u32));
        start += n;
    }
}

/// Writes all of `buf` at `at`.
#[cfg_attr(not(test), allow(unused_variables))]
fn pwrite(file: &File, buf: &[u8], at: u64, faults: &mut Faults) -> io::Result<()> {
    #[cfg(test)]
    if let Some((written, times)) = &mut faults.write {
        if *times > 0 {
            *times -= 1;
            file.write_all_at(&buf[..(*written).min(buf.len())], at)?;
            return Err(io::Error::from(io::ErrorKind::StorageFull));
        }
    }
    file.write_all_at(buf, at)
}

pub(crate) fn timed_sync(file: &File, counters: &Counters) -> io::Result<()> {
    let start = std::time::Instant::now();
    let result = file.sync_data();
    counters.record_fsync(start.elapsed());
    result
}

/// Makes created, renamed and removed names in `dir` durable.
fn sync_dir(dir: &Path, counters: &Counters) -> Result<(), WalError> {
    let handle = File::open(dir).ctx(IoOp::Open, dir)?;
    let start = std::time::Instant::now();
    let result = handle.sync_all();
    counters.record_fsync(start.elapsed());
    result.ctx(IoOp::SyncDir, dir)
}

/// Creates segment `no` whose first chunk will be `base_id`, with its header
/// and directory entry durable. On failure nothing is left behind.
fn create_segment(env: &Env, no: u64, base_id: u64) -> Result<(File, PathBuf), WalError> {
    let path = env.dir.join(segment_name(no));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .ctx(IoOp::Create, &path)?;
    let done = file
        .write_all_at(&encode_file_header(&SEGMENT_MAGIC, base_id), 0)
        .ctx(IoOp::Write, &path)
        .and_then(|()| env.timed_sync(&file).ctx(IoOp::Sync, &path))
        .and_then(|()| sync_dir(&env.dir, &env.counters));
    match done {
        Ok(()) => Ok((file, path)),
        Err(e) => {
            let _ = fs::remove_file(&path);
            Err(e)
        }
    }
}

/// `00000001.wal`: fixed width so that names sort like numbers (the width
/// grows past 99,999,999, and parsing does not depend on it).
pub(crate) fn segment_name(no: u64) -> String {
    format!("{no:08}.wal")
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

pub(crate) fn time_of(ms: u64) -> SystemTime {
    UNIX_EPOCH
        .checked_add(Duration::from_millis(ms))
        .unwrap_or(UNIX_EPOCH)
}
