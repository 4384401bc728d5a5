//! `Wal::open`: scanning what is on disk and building the state from it.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

use tokio::sync::watch;
use tracing::{info, warn};

use super::{
    create_segment, AckLog, Env, Faults, SegmentMeta, Shared, State, Unconfirmed, Wal, WalOptions,
    ACK_COMPACT_MIN, ACK_FILE, ACK_TMP, LOCK_FILE, MAX_CONFIRM_PAYLOAD,
};
use crate::error::{IoContext, IoOp, WalError};
use crate::format::{
    decode_file_header, FileHeader, ACK_MAGIC, KIND_CHUNK, KIND_CONFIRM, SEGMENT_HEADER_LEN,
    SEGMENT_MAGIC,
};
use crate::metrics::Counters;
use crate::recovery::{ConfirmedSet, PendingChunk, Recovery, RecoveryReport};
use crate::scan::{scan_file, Rules};
use crate::sync::SyncState;

impl Wal {
    /// Opens (or creates) the WAL in `dir` and recovers what it holds.
    ///
    /// Every segment is scanned: a torn tail of the newest one is cut off
    /// (reported in [`RecoveryReport::torn_tail_bytes`]), corrupt frames
    /// elsewhere are skipped with a warning and the chunks after them kept,
    /// and fully confirmed segments are deleted. The returned [`Recovery`] lists, in append order, every chunk
    /// that was appended and never confirmed; confirm each once it has been
    /// delivered again.
    ///
    /// # Errors
    ///
    /// [`WalError::Locked`] if another `Wal` has `dir` open,
    /// [`WalError::UnsupportedVersion`] for files of another format version,
    /// [`WalError::InvalidOptions`], and [`WalError::Io`] if the directory
    /// cannot be read or the active segment cannot be created. File *contents*
    /// never make `open` fail or panic.
    pub fn open(dir: impl AsRef<Path>, options: WalOptions) -> Result<(Wal, Recovery), WalError> {
        options.validate()?;
        let dir = dir.as_ref().to_path_buf();
        fs::create_dir_all(&dir).ctx(IoOp::CreateDir, &dir)?;
        let lock_file = lock_dir(&dir)?;
        let env = Env {
            dir: dir.clone(),
            counters: Arc::new(Counters::default()),
            #[cfg(test)]
            fail_syncs: std::sync::atomic::AtomicU32::new(0),
            #[cfg(test)]
            pass_syncs: std::sync::atomic::AtomicU32::new(0),
        };
        let counters = &env.counters;

        let tmp = dir.join(ACK_TMP);
        if let Err(e) = fs::remove_file(&tmp) {
            if e.kind() != io::ErrorKind::NotFound {
                warn!(path = %tmp.display(), error = %e, "cannot remove stale compaction file");
            }
        }

        let mut report = RecoveryReport::default();
        let ack_path = dir.join(ACK_FILE);
        let (confirmed, old_acks) = read_acks(&ack_path, &mut report)?;

        let found = list_segments(&dir)?;
        let mut segments = BTreeMap::new();
        let mut unconfirmed = BTreeMap::new();
        let mut pending = Vec::new();
        let mut files = BTreeMap::new();
        let mut next_id = 1u64;
        let mut reusable: Option<(u64, File)> = None;
        let mut files_open = Vec::with_capacity(found.len());
        for (i, (_, path)) in found.iter().enumerate() {
            let newest = i + 1 == found.len();
            let file = OpenOptions::new()
                .read(true)
                .write(newest)
                .open(path)
                .ctx(IoOp::Open, path)?;
            files_open.push(file);
        }
        let bases = segment_bases(&files_open, &found)?;
        for (i, ((no, path), file)) in found.iter().zip(files_open).enumerate() {
            let newest = i + 1 == found.len();
            let rules = Rules {
                magic: &SEGMENT_MAGIC,
                kind: KIND_CHUNK,
                keep_payload: false,
                max_payload: u64::from(u32::MAX),
                ids: Some(bases[i]),
            };
            let scan = scan_file(&file, path, &rules)?;
            report.segments_read += 1;
            if let FileHeader::Valid { base_id } = scan.header {
                next_id = next_id.max(base_id);
            }
            let mut meta = SegmentMeta {
                path: path.clone(),
                len: scan.file_len,
                first_id: None,
                last_id: None,
                pending: 0,
            };
            for frame in &scan.frames {
                next_id = next_id.max(frame.id.saturating_add(1));
                meta.first_id.get_or_insert(frame.id);
                meta.last_id = Some(frame.id);
                report.chunks_found += 1;
                if confirmed.contains(frame.id) {
                    report.chunks_confirmed += 1;
                    continue;
                }
                meta.pending += 1;
                unconfirmed.insert(
                    frame.id,
                    Unconfirmed {
                        segment: *no,
                        offset: frame.offset,
                        len: frame.len,
                        time_ms: frame.time_ms,
                    },
                );
                pending.push(PendingChunk {
                    id: frame.id,
                    segment: *no,
                    offset: frame.offset,
                    len: frame.len,
                    time_ms: frame.time_ms,
                });
            }
            if scan.corrupt_frames > 0 {
                warn!(
                    path = %path.display(),
                    frames = scan.corrupt_frames,
                    bytes = scan.corrupt_bytes,
                    "skipped corrupt frames; the chunks around them are kept"
                );
                report.corrupt_frames += scan.corrupt_frames;
                report.corrupt_bytes += scan.corrupt_bytes;
            }
            let mut clean = true;
            if scan.tail_bytes > 0 && newest {
                // The newest segment is the only one a crash can leave half
                // written: cut it back to its last good frame.
                report.torn_tail_bytes += scan.tail_bytes;
                warn!(
                    path = %path.display(),
                    bytes = scan.tail_bytes,
                    at = scan.good_end,
                    "truncating torn tail"
                );
                match file.set_len(scan.good_end).and_then(|()| file.sync_data()) {
                    Ok(()) => meta.len = scan.good_end,
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "cannot truncate torn tail");
                        clean = false;
                    }
                }
            } else if scan.tail_bytes > 0 {
                // Older segments were synced before the next one began: bad
                // bytes at their end are damage, not a torn write.
                warn!(
                    path = %path.display(),
                    bytes = scan.tail_bytes,
                    "corrupt bytes at the end of a closed segment"
                );
                report.corrupt_frames += scan.tail_frames;
                report.corrupt_bytes += scan.tail_bytes;
            }
            if meta.pending > 0 {
                files.insert(*no, path.clone());
            }
            if newest && clean && matches!(scan.header, FileHeader::Valid { .. }) {
                reusable = Some((*no, file));
            }
            segments.insert(*no, meta);
        }
        next_id = next_id.max(confirmed.end());
        counters.corrupt_frames.fetch_add(
            report.corrupt_frames + report.confirm_file_corrupt_frames,
            std::sync::atomic::Ordering::Relaxed,
        );

        // The active segment: the newest one if it is intact, else a new one
        // (synced, with its directory entry, before anything is deleted: its
        // header keeps `next_id` even if every older segment goes).
        let (active_no, active_file) = match reusable {
            Some(found) => found,
            None => {
                let no = found.last().map_or(1, |(no, _)| no + 1);
                let (file, path) = create_segment(&env, no, next_id)?;
                segments.insert(
                    no,
                    SegmentMeta {
                        path,
                        len: SEGMENT_HEADER_LEN as u64,
                        first_id: None,
                        last_id: None,
                        pending: 0,
                    },
                );
                (no, file)
            }
        };
        let segment_bytes = segments.values().map(|m| m.len).sum();

        let ack_log = AckLog {
            path: ack_path,
            file: None,
            len: 0,
            dirty: false,
            compact_at: ACK_COMPACT_MIN,
            needs_rewrite: false,
        };
        let mut state = State {
            segments,
            active_no,
            active_file: Arc::new(active_file),
            dirty_tail: false,
            segment_bytes,
            next_id,
            written: 0,
            unconfirmed,
            acks: ack_log,
            buf: Vec::new(),
            ack_buf: Vec::new(),
            faults: Faults::default(),
        };

        state.collect_garbage(&env);
        match old_acks {
            // Small and intact: append to it. The confirmations of deleted
            // segments it still holds are harmless (`next_id` is above them)
            // and go at its next compaction.
            Some((file, len)) if len < ACK_COMPACT_MIN => {
                state.acks.file = Some(Arc::new(file));
                state.acks.len = len;
            }
            old => {
                if let Err(e) = state.compact_acks(&env) {
                    warn!(error = %e, "cannot rewrite the confirmation file");
                    // Confirmations hold in memory; the file is rewritten
                    // once the disk lets it be.
                    state.acks.needs_rewrite = true;
                    if let Some((file, len)) = old {
                        state.acks.file = Some(Arc::new(file));
                        state.acks.len = len;
                    }
                }
            }
        }

        let counters = Arc::clone(&env.counters);
        let (rounds, _) = watch::channel(0u64);
        let shared = Arc::new(Shared {
            env,
            options,
            state: Mutex::new(state),
            sync: Mutex::new(SyncState::default()),
            cv: Condvar::new(),
            rounds,
            _lock: lock_file,
        });

        let syncer = std::thread::Builder::new()
            .name("ulog-wal-sync".into())
            .spawn({
                let shared = Arc::clone(&shared);
                move || crate::sync::sync_thread(&shared)
            })
            .ctx(IoOp::SpawnThread, &shared.env.dir)?;

        info!(
            dir = %shared.env.dir.display(),
            replay = pending.len(),
            segments = report.segments_read,
            torn_tail_bytes = report.torn_tail_bytes,
            corrupt_frames = report.corrupt_frames,
            "opened WAL"
        );
        let recovery = Recovery::new(pending, files, report, counters);
        Ok((
            Wal {
                shared,
                syncer: Some(syncer),
            },
            recovery,
        ))
    }
}

/// The segment files in `dir`, oldest first. Other files are ignored.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).ctx(IoOp::ListDir, dir)? {
        let entry = entry.ctx(IoOp::ListDir, dir)?;
        let name = entry.file_name();
        let Some(stem) = name.to_str().and_then(|n| n.strip_suffix(".wal")) else {
            continue;
        };
        if stem.is_empty() || !stem.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(no) = stem.parse::<u64>() {
            out.push((no, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// The ids each segment can hold, `[first, end)`: from its own header's
/// first id (or, if that header is damaged, the nearest earlier one's) to
/// the next segment's. The scanner rejects frame-shaped bytes whose id is
/// outside, so a fake frame (found inside a payload after a damaged header)
/// cannot claim an id that belongs elsewhere.
fn segment_bases(files: &[File], found: &[(u64, PathBuf)]) -> Result<Vec<(u64, u64)>, WalError> {
    let mut firsts = Vec::with_capacity(files.len());
    for (file, (_, path)) in files.iter().zip(found) {
        let mut header = [0u8; SEGMENT_HEADER_LEN];
        let first = match file.read_exact_at(&mut header, 0) {
            Ok(()) => match decode_file_header(&header, &SEGMENT_MAGIC) {
                FileHeader::Valid { base_id } => Some(base_id),
                _ => None,
            },
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => None,
            Err(e) => return Err(WalError::io(IoOp::Read, path.clone(), e)),
        };
        firsts.push(first);
    }
    let mut out = Vec::with_capacity(files.len());
    let mut lower = 1;
    for (i, first) in firsts.iter().enumerate() {
        if let Some(first) = first {
            lower = lower.max(*first);
        }
        let end = firsts[i + 1..]
            .iter()
            .flatten()
            .next()
            .copied()
            .unwrap_or(u64::MAX);
        out.push((lower, end.max(lower)));
    }
    Ok(out)
}

/// Takes the directory's exclusive lock: two writers would interleave frames.
fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .ctx(IoOp::Open, &path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(fs::TryLockError::WouldBlock) => Err(WalError::Locked {
            path: dir.to_path_buf(),
        }),
        Err(fs::TryLockError::Error(e)) => Err(WalError::io(IoOp::Lock, path, e)),
    }
}

/// Reads the confirmation file: the confirmed ids, and the file itself with
/// the length of its good part (to append to if it cannot be compacted).
fn read_acks(
    path: &Path,
    report: &mut RecoveryReport,
) -> Result<(ConfirmedSet, Option<(File, u64)>), WalError> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Ok((ConfirmedSet::default(), None))
        }
        Err(e) => return Err(WalError::io(IoOp::Open, path, e)),
    };
    let rules = Rules {
        magic: &ACK_MAGIC,
        kind: KIND_CONFIRM,
        keep_payload: true,
        max_payload: MAX_CONFIRM_PAYLOAD,
        ids: None,
    };
    let scan = scan_file(&file, path, &rules)?;
    let mut ranges = Vec::new();
    for frame in &scan.frames {
        match frame
            .payload
            .as_deref()
            .and_then(crate::format::decode_ranges)
        {
            Some(r) => ranges.extend(r),
            None => report.confirm_file_corrupt_frames += 1,
        }
    }
    report.confirm_file_corrupt_frames += scan.corrupt_frames;
    if scan.corrupt_frames > 0 {
        warn!(path = %path.display(), frames = scan.corrupt_frames, "skipped corrupt confirmations; their chunks will be replayed");
    }
    report.confirm_file_torn_bytes = scan.tail_bytes;
    let mut reusable = matches!(scan.header, FileHeader::Valid { .. });
    if scan.tail_bytes > 0 {
        warn!(path = %path.display(), bytes = scan.tail_bytes, "truncating torn tail of the confirmation file");
        if file.set_len(scan.good_end).is_err() {
            reusable = false;
        }
    }
    Ok((
        ConfirmedSet::new(ranges),
        reusable.then_some((file, scan.good_end)),
    ))
}
