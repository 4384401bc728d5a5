//! Output buffers: where a batch waits between the input that accepted it and
//! the output that delivers it.
//!
//! Every output has one, chosen by its `buffer = { ... }` parameter:
//!
//! - `type = "memory"` (the default): a bounded in-memory queue of
//!   `queue_batches` batches. Fast; what it holds is lost if ulog is killed.
//! - `type = "file"`: a [`ulog_buffer::Wal`] in `path`. `emit` returns only
//!   once the batch is appended (and, with `sync = "always"`, fsynced), so an
//!   input that acknowledges after `emit` acknowledges only what survives a
//!   crash. The output confirms a chunk once the destination took it (or the
//!   events went to `errors` or a `secondary`); after a restart every chunk
//!   not confirmed is delivered again, with its events' ids unchanged.
//!
//! A file buffer keeps a copy of its queued chunks in memory up to
//! `memory_limit` bytes and reads the rest back from disk when their turn
//! comes, so a destination that is down for an hour costs disk, not RAM.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tracing::{error, info, warn};
use ulog_buffer::{ChunkId, SyncPolicy, Wal, WalError, WalOptions};

use crate::event::{Batch, Event, EventId, EventTime, Record, SharedBatch};
use crate::params::{BuildError, ParamKind, ParamSpec, Params, PluginKind, PluginSpec, Value};
use crate::registry::BuildContext;
use crate::runtime::EmitError;
use crate::tag::Tag;

/// The name of the parameter every output has.
pub const BUFFER_PARAM: &str = "buffer";

/// The keys of an output's `buffer = { ... }` map. One declaration drives
/// their validation, the suggestions for misspelt keys and the reference
/// docs.
pub fn buffer_spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Output,
        "buffer",
        "Where events wait for their output: in memory, or in a write-ahead log on disk that survives a crash.",
    )
    .param(ParamSpec::with_default(
        "type",
        ParamKind::OneOf(&["memory", "file"]),
        "memory",
        "`memory`: a bounded queue, lost if ulog is killed. `file`: a write-ahead log in `path`; inputs acknowledge only what it holds, and it is delivered again after a restart.",
    ))
    .param(ParamSpec::optional(
        "path",
        ParamKind::Str,
        "Directory of a file buffer, one per output (created if missing; relative to the routes file).",
    ))
    .param(ParamSpec::with_default(
        "sync",
        ParamKind::OneOf(&["always", "interval"]),
        "always",
        "`always`: acknowledged once fsynced (survives a power cut; concurrent writes share one fsync). `interval`: acknowledged once written to the OS, fsynced every `sync_interval` (survives a crash of ulog).",
    ))
    .param(ParamSpec::with_default(
        "sync_interval",
        ParamKind::Duration,
        Duration::from_secs(1),
        "How often `sync = \"interval\"` fsyncs.",
    ))
    .param(ParamSpec::with_default(
        "total_limit",
        ParamKind::Size,
        Value::Size(1 << 30),
        "Most bytes a file buffer holds on disk; then `overflow` applies.",
    ))
    .param(ParamSpec::with_default(
        "chunk_size",
        ParamKind::Size,
        Value::Size(8 << 20),
        "Largest batch handed to the destination at once: queued chunks of one tag are merged up to it, and a larger batch is cut into chunks of about this size.",
    ))
    .param(ParamSpec::with_default(
        "memory_limit",
        ParamKind::Size,
        Value::Size(64 << 20),
        "Bytes of a file buffer's queued chunks also kept in memory; chunks beyond it are read back from disk when their turn comes.",
    ))
    .param(ParamSpec::with_default(
        "overflow",
        ParamKind::OneOf(&["block", "drop_oldest", "reject"]),
        "block",
        "When the buffer is full: `block` makes inputs wait (they stop acknowledging), `reject` refuses new events at once (HTTP 503, no forward ack), `drop_oldest` (file buffers) discards the oldest chunk, logged and counted.",
    ))
}

/// What a full buffer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Overflow {
    Block,
    DropOldest,
    Reject,
}

/// An output's buffer, as configured.
#[derive(Clone, Debug)]
pub(crate) enum BufferConfig {
    Memory { overflow: Overflow },
    File(FileConfig),
}

#[derive(Clone, Debug)]
pub(crate) struct FileConfig {
    pub dir: PathBuf,
    pub wal: WalOptions,
    pub overflow: Overflow,
    pub chunk_size: u64,
    pub memory_limit: u64,
}

impl BufferConfig {
    /// Reads and checks the `buffer` parameter of an output.
    pub(crate) fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        let given = params.map(BUFFER_PARAM)?;
        let p = buffer_spec().validate(given).map_err(|errs| {
            let text: Vec<String> = errs.iter().map(ToString::to_string).collect();
            BuildError::param(BUFFER_PARAM, text.join("; "))
        })?;
        let in_buffer = |e: BuildError| BuildError::param(BUFFER_PARAM, e.message);
        let overflow = match p.str("overflow").map_err(in_buffer)? {
            "reject" => Overflow::Reject,
            "drop_oldest" => Overflow::DropOldest,
            _ => Overflow::Block,
        };
        if p.str("type").map_err(in_buffer)? == "memory" {
            if overflow == Overflow::DropOldest {
                return Err(BuildError::param(
                    BUFFER_PARAM,
                    "`overflow = \"drop_oldest\"` needs `type = \"file\"` (a memory queue can block or reject)",
                ));
            }
            for key in [
                "path",
                "sync",
                "sync_interval",
                "total_limit",
                "memory_limit",
            ] {
                if given.iter().any(|(k, _)| k == key) {
                    return Err(BuildError::param(
                        BUFFER_PARAM,
                        format!("`{key}` applies to file buffers; add `type = \"file\"` or remove it (a memory buffer's size is `queue_batches`)"),
                    ));
                }
            }
            return Ok(BufferConfig::Memory { overflow });
        }
        let Some(path) = p.opt_str("path").map_err(in_buffer)? else {
            return Err(BuildError::param(
                BUFFER_PARAM,
                "a file buffer needs `path`, the directory to keep it in (one per output)",
            ));
        };
        let sync = match p.str("sync").map_err(in_buffer)? {
            "interval" => {
                let every = p.duration("sync_interval").map_err(in_buffer)?;
                if every.is_zero() {
                    return Err(BuildError::param(
                        BUFFER_PARAM,
                        "`sync_interval` must be above 0 (or use `sync = \"always\"`)",
                    ));
                }
                SyncPolicy::Interval(every)
            }
            _ => SyncPolicy::Always,
        };
        let total_limit = p.size("total_limit").map_err(in_buffer)?;
        let chunk_size = p.size("chunk_size").map_err(in_buffer)?.max(1);
        if total_limit < 64 << 10 {
            return Err(BuildError::param(
                BUFFER_PARAM,
                "`total_limit` must be at least 64KiB",
            ));
        }
        Ok(BufferConfig::File(FileConfig {
            dir: ctx.resolve(path),
            wal: WalOptions {
                // Segments of a few chunks each, so confirmed ones free disk
                // soon; never more than a quarter of the limit.
                segment_size: (chunk_size.saturating_mul(4))
                    .clamp(1 << 20, 64 << 20)
                    .min(total_limit / 4)
                    .max(1),
                total_limit,
                sync,
            },
            overflow,
            chunk_size,
            memory_limit: p.size("memory_limit").map_err(in_buffer)?,
        }))
    }
}

// ---------------------------------------------------------------------------
// Chunk payloads: a tag and its events, as the WAL stores them.
//
//   u8 format (1) | u16 tag length | tag | u32 event count |
//   per event: u128 id | i64 time (Unix ns) | u32 record length | record JSON
//
// Little-endian. The WAL checksums every payload, so a payload that decodes
// is the one that was written.

const CHUNK_FORMAT: u8 = 1;
const EVENT_HEADER: usize = 16 + 8 + 4;

/// Appends one event's encoding.
fn encode_event(event: &Event, out: &mut Vec<u8>) {
    out.extend_from_slice(&event.id.as_u128().to_le_bytes());
    out.extend_from_slice(&event.time.unix_nanos().to_le_bytes());
    let len_at = out.len();
    out.extend_from_slice(&[0; 4]);
    event.record.write_json(out);
    let len = (out.len() - len_at - 4) as u32;
    out[len_at..len_at + 4].copy_from_slice(&len.to_le_bytes());
}

fn chunk_header(tag: &Tag, out: &mut Vec<u8>) {
    out.push(CHUNK_FORMAT);
    let t = tag.as_str().as_bytes();
    out.extend_from_slice(&(t.len() as u16).to_le_bytes());
    out.extend_from_slice(t);
    out.extend_from_slice(&[0; 4]);
}

/// Encodes `batch` into payloads of about `chunk_size` bytes each (an event
/// larger than that gets a chunk of its own), with the events each holds.
pub(crate) fn encode_chunks(
    batch: &Batch,
    chunk_size: u64,
) -> Vec<(Vec<u8>, std::ops::Range<usize>)> {
    let mut chunks = Vec::new();
    let mut out = Vec::with_capacity(64 + batch.events.len() * 160);
    chunk_header(&batch.tag, &mut out);
    let header_len = out.len();
    let mut first = 0;
    for (i, e) in batch.events.iter().enumerate() {
        let before = out.len();
        encode_event(e, &mut out);
        if i > first && out.len() as u64 > chunk_size {
            // This event starts the next chunk.
            let tail = out.split_off(before);
            finish_chunk(&mut out, header_len, i - first);
            chunks.push((std::mem::take(&mut out), first..i));
            chunk_header(&batch.tag, &mut out);
            out.extend_from_slice(&tail);
            first = i;
        }
    }
    finish_chunk(&mut out, header_len, batch.events.len() - first);
    chunks.push((out, first..batch.events.len()));
    chunks
}

/// About how many bytes a batch takes as a chunk.
fn encoded_len(batch: &Batch) -> u64 {
    let records: usize = batch
        .events
        .iter()
        .map(|e| match &e.record {
            Record::Raw(b) => b.len(),
            Record::Map(_) => 128,
        })
        .sum();
    (7 + batch.tag.as_str().len() + batch.events.len() * EVENT_HEADER + records) as u64
}

fn finish_chunk(out: &mut [u8], header_len: usize, count: usize) {
    out[header_len - 4..header_len].copy_from_slice(&(count as u32).to_le_bytes());
}

/// Decodes a chunk payload back into its batch.
pub(crate) fn decode_chunk(payload: Vec<u8>) -> Result<Batch, String> {
    let bytes = Bytes::from(payload);
    let mut at = 0usize;
    let take = |at: &mut usize, n: usize| -> Result<std::ops::Range<usize>, String> {
        let r = *at..*at + n;
        if r.end > bytes.len() {
            return Err(format!(
                "chunk ends after {} bytes, inside an event",
                bytes.len()
            ));
        }
        *at = r.end;
        Ok(r)
    };
    let format = bytes.first().copied().ok_or("empty chunk")?;
    if format != CHUNK_FORMAT {
        return Err(format!(
            "chunk format {format}; this build reads {CHUNK_FORMAT}"
        ));
    }
    at += 1;
    let r = take(&mut at, 2)?;
    let tag_len = u16::from_le_bytes([bytes[r.start], bytes[r.start + 1]]) as usize;
    let r = take(&mut at, tag_len)?;
    let tag = std::str::from_utf8(&bytes[r]).map_err(|_| "tag is not UTF-8")?;
    let tag = Tag::parse(tag).map_err(|e| format!("stored tag: {e}"))?;
    let r = take(&mut at, 4)?;
    let count = u32::from_le_bytes(bytes[r].try_into().unwrap_or_default()) as usize;
    let mut events = Vec::with_capacity(count.min(bytes.len() / EVENT_HEADER));
    for _ in 0..count {
        let r = take(&mut at, EVENT_HEADER)?;
        let h = &bytes[r];
        let id = u128::from_le_bytes(h[0..16].try_into().unwrap_or_default());
        let time = i64::from_le_bytes(h[16..24].try_into().unwrap_or_default());
        let len = u32::from_le_bytes(h[24..28].try_into().unwrap_or_default()) as usize;
        let r = take(&mut at, len)?;
        // Written by `Record::write_json`, and checksummed by the WAL.
        let record = Record::Raw(bytes.slice(r));
        let mut event = Event::new(EventTime::from_unix_nanos(time), record);
        event.id = EventId::from_u128(id);
        events.push(event);
    }
    if at != bytes.len() {
        return Err(format!("{} bytes after the last event", bytes.len() - at));
    }
    Ok(Batch::new(tag, events))
}

// ---------------------------------------------------------------------------
// The file queue shared by the emitters appending and the output delivering.

/// One chunk waiting for its output.
struct Pending {
    id: ChunkId,
    /// `None` for a chunk recovered at start and not read yet.
    tag: Option<Tag>,
    events: usize,
    bytes: u64,
    /// The in-memory copy, if it fitted under `memory_limit`.
    batch: Option<SharedBatch>,
    /// Whether its events are counted in the output's `queued` metric
    /// (appended by this process, not recovered).
    counted: bool,
}

#[derive(Default)]
struct QueueState {
    pending: VecDeque<Pending>,
    /// Bytes of the copies held in `pending`.
    in_memory: u64,
    /// Set once the output stops taking new chunks.
    closed: bool,
}

/// A file-buffered output's queue: its WAL and the chunks in it.
pub(crate) struct FileQueue {
    pub id: Arc<str>,
    pub config: FileConfig,
    /// Set by [`FileQueue::open`], taken by [`FileQueue::release`].
    wal: RwLock<Option<Arc<Wal>>>,
    state: Mutex<QueueState>,
    /// Woken when a chunk is queued or the queue closes.
    ready: Notify,
    /// Woken when a confirmation frees space.
    space: Notify,
    /// Whether "full" has been logged since space was last available.
    full_logged: AtomicBool,
    /// Events dropped by `overflow = "drop_oldest"`.
    pub dropped: std::sync::atomic::AtomicU64,
}

/// What [`FileQueue::next`] hands the output: one batch and the chunks it
/// came from, to confirm once delivered.
pub(crate) struct Taken {
    pub batch: SharedBatch,
    pub chunks: Vec<ChunkId>,
    /// How many of its events the output's `queued` metric counts.
    pub counted: usize,
}

fn lock(m: &Mutex<QueueState>) -> std::sync::MutexGuard<'_, QueueState> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn is_full(e: &WalError) -> bool {
    matches!(e, WalError::Full { .. }) || e.is_disk_full()
}

impl FileQueue {
    pub(crate) fn new(id: Arc<str>, config: FileConfig) -> Self {
        Self {
            id,
            config,
            wal: RwLock::new(None),
            state: Mutex::new(QueueState::default()),
            ready: Notify::new(),
            space: Notify::new(),
            full_logged: AtomicBool::new(false),
            dropped: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Opens the WAL (creating its directory) and queues every chunk a
    /// previous run left unconfirmed. Returns how many chunks and bytes that
    /// is.
    pub(crate) fn open(&self) -> Result<(usize, u64), String> {
        if self.wal().is_some() {
            return Ok((0, 0));
        }
        let dir = &self.config.dir;
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the buffer directory {}: {e}", dir.display()))?;
        let (wal, recovery) = Wal::open(dir, self.config.wal)
            .map_err(|e| format!("cannot open the buffer in {}: {e}", dir.display()))?;
        let report = recovery.report();
        if report.torn_tail_bytes > 0 || report.corrupt_frames > 0 {
            error!(
                output = %self.id,
                dir = %dir.display(),
                torn_tail_bytes = report.torn_tail_bytes,
                corrupt_frames = report.corrupt_frames,
                corrupt_bytes = report.corrupt_bytes,
                "the buffer was damaged: a torn write at its end and/or corrupt chunks were cut out; the chunks around them are kept"
            );
        }
        let chunks = recovery.len();
        let bytes = recovery.payload_bytes();
        {
            let mut st = lock(&self.state);
            for id in recovery.ids() {
                st.pending.push_back(Pending {
                    id,
                    tag: None,
                    events: 0,
                    bytes: 0,
                    batch: None,
                    counted: false,
                });
            }
        }
        if chunks > 0 {
            info!(output = %self.id, chunks, bytes, "delivering what the buffer held from the last run");
        }
        *self
            .wal
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(wal));
        Ok((chunks, bytes))
    }

    /// The WAL, while open.
    pub(crate) fn wal(&self) -> Option<Arc<Wal>> {
        self.wal
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Closes the WAL once the output has stopped (its directory lock is
    /// released, so a new pipeline can open it: a reload), syncing what is
    /// left.
    pub(crate) fn release(&self) -> Result<(), WalError> {
        self.close();
        let wal = self
            .wal
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        match wal.map(Arc::try_unwrap) {
            Some(Ok(wal)) => wal.close(),
            // Still appended to by an emit that has not returned: it closes
            // when that one drops it.
            Some(Err(shared)) => shared.sync(),
            None => Ok(()),
        }
    }

    /// Appends a batch and queues it; returns once it is as durable as the
    /// buffer's `sync` promises. Waits, refuses or drops the oldest chunk
    /// when the buffer is full, as `overflow` says.
    pub(crate) async fn push(&self, batch: &SharedBatch) -> Result<u64, EmitError> {
        let Some(wal) = self.wal() else {
            if lock(&self.state).closed {
                return Err(EmitError::ShuttingDown);
            }
            return Err(EmitError::BufferFailed {
                output: self.id.clone(),
                detail: "the buffer could not be opened at start".into(),
            });
        };
        let chunks = encode_chunks(batch, self.config.chunk_size);
        let whole = chunks.len() == 1;
        let mut bytes = 0;
        for (payload, range) in chunks {
            let id = self.append(&wal, &payload).await?;
            let len = payload.len() as u64;
            bytes += len;
            let mut st = lock(&self.state);
            let keep = st.in_memory + len <= self.config.memory_limit;
            let copy = keep.then(|| {
                if whole {
                    batch.clone()
                } else {
                    Arc::new(Batch::new(
                        batch.tag.clone(),
                        batch.events[range.clone()].to_vec(),
                    ))
                }
            });
            if keep {
                st.in_memory += len;
            }
            st.pending.push_back(Pending {
                id,
                tag: Some(batch.tag.clone()),
                events: range.len(),
                bytes: len,
                batch: copy,
                counted: true,
            });
            drop(st);
            self.ready.notify_one();
        }
        Ok(bytes)
    }

    async fn append(&self, wal: &Wal, payload: &[u8]) -> Result<ChunkId, EmitError> {
        loop {
            let err = match wal.append_async(payload).await {
                Ok(id) => {
                    if self.full_logged.swap(false, Ordering::Relaxed) {
                        info!(output = %self.id, "the buffer has room again; accepting events");
                    }
                    return Ok(id);
                }
                Err(e) => e,
            };
            if !is_full(&err) {
                return Err(EmitError::BufferFailed {
                    output: self.id.clone(),
                    detail: err.to_string(),
                });
            }
            if !self.full_logged.swap(true, Ordering::Relaxed) {
                warn!(output = %self.id, error = %err, overflow = ?self.config.overflow, "the buffer is full (or its disk is): inputs are not acknowledged until it has room");
            }
            match self.config.overflow {
                Overflow::Reject => {
                    return Err(EmitError::BufferFull {
                        output: self.id.clone(),
                        detail: err.to_string(),
                    })
                }
                Overflow::DropOldest if self.drop_oldest(wal) => continue,
                Overflow::DropOldest | Overflow::Block => {}
            }
            if lock(&self.state).closed {
                return Err(EmitError::ShuttingDown);
            }
            // Woken by a confirmation; polled too, since a full disk can
            // free up by itself.
            let _ = tokio::time::timeout(Duration::from_millis(500), self.space.notified()).await;
        }
    }

    /// Discards the oldest chunk not being delivered. Returns whether one
    /// was.
    fn drop_oldest(&self, wal: &Wal) -> bool {
        let mut st = lock(&self.state);
        let Some(p) = st.pending.pop_front() else {
            return false;
        };
        if p.batch.is_some() {
            st.in_memory -= p.bytes;
        }
        drop(st);
        let events = match &p.batch {
            Some(b) => b.len(),
            None => p.events,
        };
        self.dropped
            .fetch_add(events as u64, std::sync::atomic::Ordering::Relaxed);
        error!(output = %self.id, chunk = p.id.get(), events, "buffer full: dropped its oldest chunk (overflow = \"drop_oldest\")");
        let _ = wal.confirm(p.id);
        true
    }

    /// Stops waiting for new chunks: [`FileQueue::next`] returns `None` once
    /// the queue is empty.
    pub(crate) fn close(&self) {
        lock(&self.state).closed = true;
        self.ready.notify_one();
        self.space.notify_waiters();
    }

    /// Whether [`FileQueue::close`] was called.
    pub(crate) fn is_closed(&self) -> bool {
        lock(&self.state).closed
    }

    /// The next batch to deliver: the oldest chunk, merged with the chunks
    /// after it that have the same tag, up to `chunk_size`. `None` once the
    /// queue is closed and empty.
    pub(crate) async fn next(&self) -> Option<Taken> {
        let wal = self.wal()?;
        loop {
            let notified = self.ready.notified();
            let waiting = {
                let st = lock(&self.state);
                if st.pending.is_empty() && st.closed {
                    return None;
                }
                st.pending.is_empty()
            };
            if waiting {
                notified.await;
                continue;
            }
            if let Some(taken) = self.take_run(&wal) {
                return Some(taken);
            }
        }
    }

    /// Pops the oldest chunk and those after it that merge with it; `None`
    /// if every chunk popped was unreadable.
    fn take_run(&self, wal: &Wal) -> Option<Taken> {
        let mut chunks = Vec::new();
        // The first chunk's batch as it is (no copy when nothing merges
        // with it), then an owned batch once a second chunk joins.
        let mut first: Option<SharedBatch> = None;
        let mut merged: Option<Batch> = None;
        let mut size = 0u64;
        let mut counted = 0;
        while let Some(mut p) = self.pop_front() {
            let batch = match p.batch.take() {
                Some(b) => b,
                None => match self.read(wal, &p) {
                    Some(b) => b,
                    None => continue,
                },
            };
            if p.bytes == 0 {
                // Recovered: its size is known once read.
                p.bytes = encoded_len(&batch);
            }
            let tag = merged
                .as_ref()
                .map(|m| &m.tag)
                .or(first.as_ref().map(|f| &f.tag));
            if let Some(tag) = tag {
                if *tag != batch.tag || size + p.bytes > self.config.chunk_size {
                    // Not part of this batch: back to the front, loaded.
                    p.tag = Some(batch.tag.clone());
                    p.events = batch.len();
                    p.batch = Some(batch);
                    self.push_front(p);
                    break;
                }
            }
            size += p.bytes;
            chunks.push(p.id);
            if p.counted {
                counted += batch.len();
            }
            if let Some(f) = first.take() {
                merged = Some(Arc::unwrap_or_clone(f));
            }
            match &mut merged {
                None => first = Some(batch),
                Some(m) => m.events.extend(batch.events.iter().cloned()),
            }
            // Merge only chunks already in memory or known to have the same
            // tag: never read ahead from disk just to look.
            let tag = merged
                .as_ref()
                .map(|m| &m.tag)
                .or(first.as_ref().map(|f| &f.tag));
            let next_fits = {
                let st = lock(&self.state);
                st.pending.front().is_some_and(|n| {
                    n.tag.as_ref() == tag && size + n.bytes <= self.config.chunk_size
                })
            };
            if !next_fits {
                break;
            }
        }
        let batch = match (first, merged) {
            (Some(f), _) => f,
            (None, Some(m)) => Arc::new(m),
            (None, None) => return None,
        };
        Some(Taken {
            batch,
            chunks,
            counted,
        })
    }

    fn pop_front(&self) -> Option<Pending> {
        let mut st = lock(&self.state);
        let p = st.pending.pop_front()?;
        if p.batch.is_some() {
            st.in_memory -= p.bytes;
        }
        Some(p)
    }

    fn push_front(&self, p: Pending) {
        let mut st = lock(&self.state);
        if p.batch.is_some() {
            st.in_memory += p.bytes;
        }
        st.pending.push_front(p);
    }

    /// Reads a chunk back from disk. A chunk that cannot be read or decoded
    /// is reported, confirmed (it can never be delivered) and skipped.
    fn read(&self, wal: &Wal, p: &Pending) -> Option<SharedBatch> {
        let result = wal
            .read(p.id)
            .map_err(|e| e.to_string())
            .and_then(decode_chunk);
        match result {
            Ok(b) => Some(Arc::new(b)),
            Err(e) => {
                error!(output = %self.id, chunk = p.id.get(), error = %e, "a buffered chunk is unreadable and is skipped; its events are lost");
                self.dropped
                    .fetch_add(p.events as u64, std::sync::atomic::Ordering::Relaxed);
                let _ = wal.confirm(p.id);
                None
            }
        }
    }

    /// Records that the output is done with these chunks.
    pub(crate) fn confirm(&self, chunks: &[ChunkId]) {
        if let Some(wal) = self.wal() {
            for &c in chunks {
                if let Err(e) = wal.confirm(c) {
                    warn!(output = %self.id, chunk = c.get(), error = %e, "confirming a delivered chunk failed; it may be delivered again after a restart");
                }
            }
        }
        self.space.notify_waiters();
    }

    /// The buffer's state for `/metrics`; `None` while it is not open.
    pub(crate) fn snapshot(&self) -> Option<crate::metrics::BufferSnapshot> {
        let m = self.wal()?.metrics();
        let mut cumulative = 0;
        let mut buckets: Vec<(u64, u64)> = ulog_buffer::FSYNC_BUCKETS
            .iter()
            .zip(&m.fsync_latency)
            .map(|(bound, n)| {
                cumulative += n;
                (bound.as_micros() as u64, cumulative)
            })
            .collect();
        buckets.push((u64::MAX, m.fsyncs));
        Some(crate::metrics::BufferSnapshot {
            bytes: m.bytes_on_disk,
            chunks: m.unconfirmed_chunks,
            oldest_chunk_age_ms: m.oldest_unconfirmed_age.map(|a| a.as_millis() as u64),
            fsyncs: m.fsyncs,
            fsync_micros: m.fsync_time.as_micros() as u64,
            fsync_buckets: buckets,
            full_rejections: m.full_rejections,
            dropped_events: self.dropped.load(Ordering::Relaxed),
        })
    }

    /// Chunks waiting, and how many events the ones read so far hold.
    pub(crate) fn queued(&self) -> (usize, usize) {
        let st = lock(&self.state);
        (st.pending.len(), st.pending.iter().map(|p| p.events).sum())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(n: usize, size: usize) -> Batch {
        let events = (0..n)
            .map(|i| {
                let mut e = Event::new(
                    EventTime::from_unix_nanos(1_700_000_000_123_456_789 + i as i64),
                    Record::from_json_bytes(Bytes::from(format!(
                        "{{\"n\":{i},\"pad\":\"{}\"}}",
                        "x".repeat(size)
                    )))
                    .unwrap(),
                );
                e.id = EventId::from_u128(0x0190_0000_0000_7000_8000_0000_0000_0000 + i as u128);
                e
            })
            .collect();
        Batch::new(Tag::parse("home.42.owl").unwrap(), events)
    }

    fn same(a: &Batch, b: &Batch) {
        assert_eq!(a.tag, b.tag);
        assert_eq!(a.events.len(), b.events.len());
        for (x, y) in a.events.iter().zip(&b.events) {
            assert_eq!(x.id, y.id);
            assert_eq!(x.time, y.time);
            assert_eq!(x.record.to_json_string(), y.record.to_json_string());
        }
    }

    #[test]
    fn a_chunk_decodes_to_the_batch_it_was_made_of() {
        let b = batch(50, 100);
        let chunks = encode_chunks(&b, 8 << 20);
        assert_eq!(chunks.len(), 1);
        let back = decode_chunk(chunks[0].0.clone()).unwrap();
        same(&b, &back);
    }

    #[test]
    fn a_large_batch_is_cut_into_chunks_that_together_hold_every_event() {
        let b = batch(100, 1000);
        let chunks = encode_chunks(&b, 10_000);
        assert!(chunks.len() >= 10, "{}", chunks.len());
        let mut events = Vec::new();
        for (payload, range) in chunks {
            assert!(payload.len() <= 10_000 + 1100, "{}", payload.len());
            let part = decode_chunk(payload).unwrap();
            assert_eq!(part.len(), range.len());
            events.extend(part.events);
        }
        same(&b, &Batch::new(b.tag.clone(), events));
    }

    #[test]
    fn an_event_larger_than_a_chunk_gets_one_of_its_own() {
        let b = batch(3, 5000);
        let chunks = encode_chunks(&b, 100);
        assert_eq!(chunks.len(), 3);
    }

    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        let b = batch(5, 10);
        let (payload, _) = encode_chunks(&b, 1 << 20).remove(0);
        for cut in 0..payload.len() {
            assert!(
                decode_chunk(payload[..cut].to_vec()).is_err(),
                "cut at {cut}"
            );
        }
        let mut other = payload.clone();
        other[0] = 9;
        assert!(decode_chunk(other).unwrap_err().contains("format 9"));
        let mut longer = payload;
        longer.push(0);
        assert!(decode_chunk(longer).is_err());
    }
}
