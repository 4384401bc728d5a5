//! Counters the engine keeps per node and for the pipeline as a whole.
//!
//! Plain atomics, updated once per batch; `ulog run` logs a summary when it
//! stops, and later issues expose them over HTTP and in `ulog top`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use crate::params::PluginKind;

/// Counters of one node.
#[derive(Default)]
pub struct NodeMetrics {
    /// Events this node received (outputs) or emitted (inputs).
    pub events_in: AtomicU64,
    /// Events written (outputs) or accepted by the pipeline (inputs).
    pub events_out: AtomicU64,
    /// Events that failed for good (sent to `errors` or dropped).
    pub events_failed: AtomicU64,
    /// Retries of batches.
    pub retries: AtomicU64,
    /// Events waiting in this output's queue or being written.
    pub queued: AtomicU64,
    /// Why this node stopped working (an input whose `run` returned an
    /// error), for health checks; `None` while it runs.
    pub failure: std::sync::Mutex<Option<String>>,
    /// Reads the state of the output's file buffer, if it has one.
    pub(crate) buffer: std::sync::OnceLock<Arc<dyn Fn() -> Option<BufferSnapshot> + Send + Sync>>,
}

/// A file buffer's state: what an operator watches while a destination is
/// down (how much waits, since when) and what durability costs (fsyncs).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BufferSnapshot {
    /// Bytes its files take on disk.
    pub bytes: u64,
    /// Chunks appended and not yet confirmed.
    pub chunks: u64,
    /// Age of the oldest unconfirmed chunk, milliseconds.
    pub oldest_chunk_age_ms: Option<u64>,
    /// `fdatasync` calls since start.
    pub fsyncs: u64,
    /// Time spent in them, microseconds.
    pub fsync_micros: u64,
    /// Cumulative fsync latency histogram: (upper bound in microseconds,
    /// calls that took at most that long), ending with `u64::MAX` for all.
    pub fsync_buckets: Vec<(u64, u64)>,
    /// Appends refused because the buffer (or its disk) was full.
    pub full_rejections: u64,
    /// Events discarded by `overflow = "drop_oldest"` or unreadable chunks.
    pub dropped_events: u64,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics")
            .field("events_in", &self.events_in)
            .field("events_out", &self.events_out)
            .field("queued", &self.queued)
            .finish_non_exhaustive()
    }
}

impl NodeMetrics {
    pub(crate) fn add(counter: &AtomicU64, n: usize) {
        counter.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn sub(counter: &AtomicU64, n: usize) {
        counter.fetch_sub(n as u64, Ordering::Relaxed);
    }

    /// Records that the node stopped working, and why.
    pub(crate) fn set_failure(&self, reason: String) {
        if let Ok(mut f) = self.failure.lock() {
            *f = Some(reason);
        }
    }
}

/// Counters of a pipeline.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) nodes: Vec<(Arc<str>, PluginKind, Arc<NodeMetrics>)>,
    /// Events no `match` block took.
    pub unmatched: AtomicU64,
    /// Events rejected by a filter or output.
    pub rejected: AtomicU64,
    /// Rejected events that had no `errors` label to go to (logged, counted).
    pub dropped: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Per node: id, kind and counters.
    pub nodes: Vec<NodeSnapshot>,
    /// Events no `match` block took.
    pub unmatched: u64,
    /// Events rejected by a filter or output.
    pub rejected: u64,
    /// Rejected events with nowhere to go.
    pub dropped: u64,
}

/// One node's counters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeSnapshot {
    /// The node id.
    pub id: String,
    /// Input, filter or output.
    pub kind: PluginKind,
    /// See [`NodeMetrics::events_in`].
    pub events_in: u64,
    /// See [`NodeMetrics::events_out`].
    pub events_out: u64,
    /// See [`NodeMetrics::events_failed`].
    pub events_failed: u64,
    /// See [`NodeMetrics::retries`].
    pub retries: u64,
    /// See [`NodeMetrics::queued`].
    pub queued: u64,
    /// See [`NodeMetrics::failure`].
    pub failure: Option<String>,
    /// The file buffer's state, for outputs with one (while it is open).
    pub buffer: Option<BufferSnapshot>,
}

impl Metrics {
    pub(crate) fn node(&mut self, id: &Arc<str>, kind: PluginKind) -> Arc<NodeMetrics> {
        let m = Arc::new(NodeMetrics::default());
        self.nodes.push((id.clone(), kind, m.clone()));
        m
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MetricsSnapshot {
            nodes: self
                .nodes
                .iter()
                .map(|(id, kind, m)| NodeSnapshot {
                    id: id.to_string(),
                    kind: *kind,
                    events_in: get(&m.events_in),
                    events_out: get(&m.events_out),
                    events_failed: get(&m.events_failed),
                    retries: get(&m.retries),
                    queued: get(&m.queued),
                    failure: m.failure.lock().ok().and_then(|f| f.clone()),
                    buffer: m.buffer.get().and_then(|probe| probe()),
                })
                .collect(),
            unmatched: get(&self.unmatched),
            rejected: get(&self.rejected),
            dropped: get(&self.dropped),
        }
    }
}

impl MetricsSnapshot {
    /// The counters of the node `id`.
    pub fn node(&self, id: &str) -> Option<&NodeSnapshot> {
        self.nodes.iter().find(|n| n.id == id)
    }
}
