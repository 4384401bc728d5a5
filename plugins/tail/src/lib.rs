//! Following log files for ulog: the `tail` input.
//!
//! `input tail` reads lines appended to files matching globs, the way
//! fluentd's in_tail and Fluent Bit's tail do: it follows files through
//! rotation (rename and copytruncate), finds files that appear later, joins
//! multi-line records, skips over-long lines without losing its place, and
//! keeps a position database so a restart resumes exactly where the last
//! run stopped. See `docs/plugins/tail.md` for every parameter and the
//! guarantees.
#![deny(missing_docs)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use ulog_engine::Registry;

pub mod in_tail;
mod lines;
mod multiline;
mod pos_file;
mod tailer;

/// Counters of one tail input.
///
/// The engine counts events per node, but not what a file reader skips or
/// works around; these counters make skipped lines, parse errors and
/// rotations visible to tests, embedders and (later) metrics endpoints.
#[derive(Debug, Default)]
pub struct TailStats {
    /// Events accepted by the pipeline.
    pub events: AtomicU64,
    /// Bytes read from files.
    pub bytes_read: AtomicU64,
    /// Files opened for following.
    pub files_opened: AtomicU64,
    /// Rotated or deleted files closed after being read to their end.
    pub files_closed: AtomicU64,
    /// Files rotated by rename (or moved away).
    pub rotations: AtomicU64,
    /// Files truncated under the reader (copytruncate).
    pub truncations: AtomicU64,
    /// Lines or multi-line records skipped for exceeding `max_line_size`.
    pub lines_too_long: AtomicU64,
    /// Lines the `format` could not parse.
    pub parse_errors: AtomicU64,
    /// Successful writes of the position database.
    pub pos_writes: AtomicU64,
    /// Failed writes of the position database (retried).
    pub pos_write_errors: AtomicU64,
}

impl TailStats {
    /// Reads a counter (a shorthand for `load(Relaxed)`).
    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Collects the [`TailStats`] of every tail input built through one
/// registry, by node id.
///
/// Inputs do not get a metrics handle from the engine, so an embedder (or a
/// test) that wants these counters passes a monitor to
/// [`register_with_monitor`] and looks them up by the node's id.
#[derive(Clone, Debug, Default)]
pub struct TailMonitor {
    inputs: Arc<Mutex<HashMap<String, Arc<TailStats>>>>,
}

impl TailMonitor {
    /// The counters of the tail input with node id `id`, once built.
    pub fn stats(&self, id: &str) -> Option<Arc<TailStats>> {
        self.inputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
    }

    /// Fresh counters for the input `id` (a rebuild starts from zero).
    fn register(&self, id: &str) -> Arc<TailStats> {
        let stats = Arc::new(TailStats::default());
        self.inputs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id.to_string(), stats.clone());
        stats
    }
}

/// Registers this crate's plugins (`input tail`).
pub fn register(registry: &mut Registry) {
    register_with_monitor(registry, TailMonitor::default());
}

/// Registers this crate's plugins, recording each tail input's counters in
/// `monitor`.
pub fn register_with_monitor(registry: &mut Registry, monitor: TailMonitor) {
    registry.add_input(in_tail::spec(), move |params, ctx| {
        in_tail::build(params, ctx, &monitor)
    });
}
