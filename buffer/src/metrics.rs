//! What an operator watches: how much is waiting, for how long, and what the
//! disk's syncs cost.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the fsync latency buckets in [`WalMetrics::fsync_latency`].
/// Fixed so that two readings (or two hosts) can be compared bucket by bucket;
/// they span a fast NVMe flush (tens of µs) to a stalled network disk.
pub const FSYNC_BUCKETS: [Duration; 12] = [
    Duration::from_micros(100),
    Duration::from_micros(250),
    Duration::from_micros(500),
    Duration::from_millis(1),
    Duration::from_micros(2_500),
    Duration::from_millis(5),
    Duration::from_millis(10),
    Duration::from_millis(25),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_secs(1),
];

/// A snapshot of a WAL's state and counters, from [`Wal::metrics`](crate::Wal::metrics).
/// Counters count since `open`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WalMetrics {
    /// Bytes the WAL's files take: segments plus the confirmation file.
    pub bytes_on_disk: u64,
    /// Bytes of the segment files alone: what `total_limit` is checked against.
    pub segment_bytes: u64,
    /// Segment files, the active one included.
    pub segments: u64,
    /// Chunks appended (or recovered) and not yet confirmed.
    pub unconfirmed_chunks: u64,
    /// How long ago the oldest unconfirmed chunk was appended (wall clock, so
    /// it survives restarts); `None` when nothing waits.
    pub oldest_unconfirmed_age: Option<Duration>,
    /// Chunks appended since open.
    pub appended_chunks: u64,
    /// Payload bytes appended since open.
    pub appended_bytes: u64,
    /// Chunks confirmed since open.
    pub confirmed_chunks: u64,
    /// `fdatasync`/`fsync` calls made (segments, confirmation file, directory).
    pub fsyncs: u64,
    /// Histogram of those calls' latencies: `fsync_latency[i]` counts calls
    /// that took at most `FSYNC_BUCKETS[i]` (and more than the bucket before);
    /// the last entry counts calls slower than every bound.
    pub fsync_latency: [u64; FSYNC_BUCKETS.len() + 1],
    /// Total time spent in those calls.
    pub fsync_time: Duration,
    /// Corrupt frames found (on open, and when reading recovered chunks).
    pub corrupt_frames: u64,
    /// Appends refused with [`WalError::Full`](crate::WalError::Full).
    pub full_rejections: u64,
    /// Appends that failed writing (disk full, I/O error).
    pub write_errors: u64,
    /// Syncs that failed; the appends they covered returned an error.
    pub sync_errors: u64,
    /// Confirmations that could not be written to the confirmation file.
    /// They still hold in memory (and free segments); after a crash their
    /// chunks may be replayed once more.
    pub confirm_write_errors: u64,
}

/// The atomic counters behind [`WalMetrics`]; updated without the WAL's lock.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub appended_chunks: AtomicU64,
    pub appended_bytes: AtomicU64,
    pub confirmed_chunks: AtomicU64,
    pub fsyncs: AtomicU64,
    pub fsync_buckets: [AtomicU64; FSYNC_BUCKETS.len() + 1],
    pub fsync_nanos: AtomicU64,
    pub corrupt_frames: AtomicU64,
    pub full_rejections: AtomicU64,
    pub write_errors: AtomicU64,
    pub sync_errors: AtomicU64,
    pub confirm_write_errors: AtomicU64,
}

impl Counters {
    pub fn record_fsync(&self, took: Duration) {
        self.fsyncs.fetch_add(1, Relaxed);
        let bucket = FSYNC_BUCKETS
            .iter()
            .position(|&bound| took <= bound)
            .unwrap_or(FSYNC_BUCKETS.len());
        self.fsync_buckets[bucket].fetch_add(1, Relaxed);
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.fsync_nanos.fetch_add(nanos, Relaxed);
    }

    pub fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    /// Fills the counter half of a snapshot.
    pub fn snapshot_into(&self, m: &mut WalMetrics) {
        m.appended_chunks = self.appended_chunks.load(Relaxed);
        m.appended_bytes = self.appended_bytes.load(Relaxed);
        m.confirmed_chunks = self.confirmed_chunks.load(Relaxed);
        m.fsyncs = self.fsyncs.load(Relaxed);
        for (out, b) in m.fsync_latency.iter_mut().zip(&self.fsync_buckets) {
            *out = b.load(Relaxed);
        }
        m.fsync_time = Duration::from_nanos(self.fsync_nanos.load(Relaxed));
        m.corrupt_frames = self.corrupt_frames.load(Relaxed);
        m.full_rejections = self.full_rejections.load(Relaxed);
        m.write_errors = self.write_errors.load(Relaxed);
        m.sync_errors = self.sync_errors.load(Relaxed);
        m.confirm_write_errors = self.confirm_write_errors.load(Relaxed);
    }
}

impl WalMetrics {
    pub(crate) fn empty() -> Self {
        WalMetrics {
            bytes_on_disk: 0,
            segment_bytes: 0,
            segments: 0,
            unconfirmed_chunks: 0,
            oldest_unconfirmed_age: None,
            appended_chunks: 0,
            appended_bytes: 0,
            confirmed_chunks: 0,
            fsyncs: 0,
            fsync_latency: [0; FSYNC_BUCKETS.len() + 1],
            fsync_time: Duration::ZERO,
            corrupt_frames: 0,
            full_rejections: 0,
            write_errors: 0,
            sync_errors: 0,
            confirm_write_errors: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fsync_latencies_land_in_their_buckets() {
        let c = Counters::default();
        c.record_fsync(Duration::from_micros(50));
        c.record_fsync(Duration::from_micros(100));
        c.record_fsync(Duration::from_micros(101));
        c.record_fsync(Duration::from_secs(3));
        let mut m = WalMetrics::empty();
        c.snapshot_into(&mut m);
        assert_eq!(m.fsyncs, 4);
        assert_eq!(m.fsync_latency[0], 2, "50 µs and exactly 100 µs");
        assert_eq!(m.fsync_latency[1], 1, "101 µs");
        assert_eq!(m.fsync_latency[FSYNC_BUCKETS.len()], 1, "3 s overflows");
        assert_eq!(m.fsync_latency.iter().sum::<u64>(), 4);
        assert_eq!(m.fsync_time, Duration::from_micros(3_000_251));
    }
}
