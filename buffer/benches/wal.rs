//! WAL throughput against the disk's own durable write speed.
//!
//! `cargo bench -p ulog-buffer --bench wal -- --warm-up-time 1 --measurement-time 3`
//!
//! - `append/interval`: appends that return after `write(2)`.
//! - `append/always/threads=N`: appends that return after `fdatasync`, from
//!   1 and 8 threads; with 8, group commit shares each sync.
//! - `replay`: `open` plus reading back 100k recovered chunks.
//! - `disk`: the baseline, with no WAL: `pwrite` + `fdatasync` of one 4 KiB
//!   block (the floor for one synced append) and of 1 MiB blocks (the disk's
//!   durable bandwidth).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ulog_buffer::{ChunkId, SyncPolicy, Wal, WalOptions};

const CHUNK: usize = 4096;

fn options(sync: SyncPolicy) -> WalOptions {
    WalOptions {
        segment_size: 64 << 20,
        total_limit: 8 << 30,
        sync,
    }
}

/// Times `iters` appends spread over `threads` threads; confirms them
/// afterwards (untimed) so that segments are deleted and the disk use stays
/// bounded.
fn timed_appends(wal: &Arc<Wal>, threads: u64, iters: u64, payload: &Arc<Vec<u8>>) -> Duration {
    let start = Instant::now();
    let ids: Vec<ChunkId> = if threads == 1 {
        (0..iters)
            .map(|_| wal.append(payload).expect("append"))
            .collect()
    } else {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let wal = Arc::clone(wal);
                let payload = Arc::clone(payload);
                let n = iters / threads + u64::from(t < iters % threads);
                std::thread::spawn(move || {
                    (0..n)
                        .map(|_| wal.append(&payload).expect("append"))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("append thread"))
            .collect()
    };
    let took = start.elapsed();
    for id in ids {
        wal.confirm(id).expect("confirm");
    }
    took
}

fn append(c: &mut Criterion) {
    let payload = Arc::new(vec![0x5Au8; CHUNK]);
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Bytes(CHUNK as u64));

    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(
        dir.path(),
        options(SyncPolicy::Interval(Duration::from_millis(200))),
    )
    .expect("open");
    let wal = Arc::new(wal);
    group.bench_function("interval/4KiB", |b| {
        b.iter_custom(|iters| timed_appends(&wal, 1, iters, &payload));
    });
    drop(wal);

    for threads in [1u64, 8] {
        let dir = tempfile::tempdir().expect("tempdir");
        let (wal, _) = Wal::open(dir.path(), options(SyncPolicy::Always)).expect("open");
        let wal = Arc::new(wal);
        let before = wal.metrics();
        let mut appends = 0;
        group.bench_function(BenchmarkId::new("always/4KiB/threads", threads), |b| {
            b.iter_custom(|iters| {
                appends += iters;
                timed_appends(&wal, threads, iters, &payload)
            });
        });
        let after = wal.metrics();
        let syncs = after.fsyncs - before.fsyncs;
        eprintln!(
            "always, {threads} thread(s): {appends} appends, {syncs} fsyncs ({:.1} appends per fsync), mean fsync {:?}",
            appends as f64 / syncs.max(1) as f64,
            (after.fsync_time - before.fsync_time) / syncs.max(1) as u32,
        );
    }
    group.finish();
}

fn replay(c: &mut Criterion) {
    const CHUNKS: u64 = 100_000;
    const SIZE: usize = 256;
    let dir = tempfile::tempdir().expect("tempdir");
    let o = options(SyncPolicy::Interval(Duration::from_secs(1)));
    {
        let (wal, _) = Wal::open(dir.path(), o).expect("open");
        let payload = vec![0xA5u8; SIZE];
        for _ in 0..CHUNKS {
            wal.append(&payload).expect("append");
        }
        wal.close().expect("close");
    }
    let mut group = c.benchmark_group("replay");
    group.throughput(Throughput::Elements(CHUNKS));
    group.sample_size(10);
    group.bench_function("open+read/100k chunks of 256B", |b| {
        b.iter(|| {
            let (wal, rec) = Wal::open(dir.path(), o).expect("open");
            let mut bytes = 0;
            for chunk in &rec {
                bytes += chunk.expect("chunk").payload.len();
            }
            assert_eq!(bytes, CHUNKS as usize * SIZE);
            drop(wal);
        });
    });
    group.finish();
}

fn disk(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("baseline");
    let file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .read(true)
        .write(true)
        .open(&path)
        .expect("open");
    let mut group = c.benchmark_group("disk");
    for size in [CHUNK, 1 << 20] {
        let block = vec![0x33u8; size];
        let mut at = 0u64;
        group.throughput(Throughput::Bytes(size as u64));
        let name = if size == CHUNK { "4KiB" } else { "1MiB" };
        group.bench_function(BenchmarkId::new("pwrite+fdatasync", name), |b| {
            b.iter(|| {
                file.write_all_at(&block, at).expect("write");
                file.sync_data().expect("sync");
                at += size as u64;
                if at > 256 << 20 {
                    // Keep the file bounded, as the WAL's segments are.
                    file.set_len(0).expect("truncate");
                    at = 0;
                }
            });
        });
    }
    group.finish();
}

criterion_group!(benches, disk, append, replay);
criterion_main!(benches);
