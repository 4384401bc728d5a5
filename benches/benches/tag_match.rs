//! Tag matching with 10, 100 and 1,000 match blocks: the uncached
//! first-match search (what a never-seen tag costs) against the per-tag cache
//! (what every later batch of that tag costs).

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ulog_benches::pattern_blocks;
use ulog_engine::router::{MatchTable, RouteCache};
use ulog_engine::Tag;

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("tag_match");
    for n in [10usize, 100, 1000] {
        let table = MatchTable::new(pattern_blocks(n));
        // A tag that only the last block's wildcard takes: the worst case.
        let unseen: Vec<Tag> = (0..1024)
            .map(|i| Tag::new_unchecked(&format!("zz.host{i}.metrics")))
            .collect();
        assert_eq!(table.first_match(unseen[0].as_str()), Some(n - 1));
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::new("unseen_tag_uncached", n), &n, |b, _| {
            let mut i = 0;
            b.iter(|| {
                i = (i + 1) & 1023;
                black_box(table.first_match(black_box(unseen[i].as_str())))
            })
        });
        let mut cache = RouteCache::new(4096);
        let seen = Tag::new_unchecked("zz.host1.metrics");
        cache.get_or_insert_with(&seen, || table.first_match(seen.as_str()));
        group.bench_with_input(BenchmarkId::new("seen_tag_cached", n), &n, |b, _| {
            b.iter(|| {
                black_box(
                    cache.get_or_insert_with(black_box(&seen), || table.first_match(seen.as_str())),
                )
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
