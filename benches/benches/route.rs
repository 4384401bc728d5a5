//! Routing whole batches through a built pipeline (filters none, one null
//! output per block) with 10, 100 and 1,000 match blocks. Per-event cost must
//! not grow with the number of blocks: the decision is cached per tag.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ulog_benches::{json_batch, routing_pipeline};

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("route_batch");
    for n in [10usize, 100, 1000] {
        let running = rt.block_on(async { routing_pipeline(n).start() });
        let mut emitter = running.emitter();
        let batch = json_batch("zz.host1.metrics", 1024);
        group.throughput(Throughput::Elements(batch.len() as u64));
        group.bench_with_input(BenchmarkId::new("1024_events", n), &n, |b, _| {
            b.iter(|| rt.block_on(emitter.emit(batch.clone())).unwrap())
        });
        running.stop();
        rt.block_on(running.wait());
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
