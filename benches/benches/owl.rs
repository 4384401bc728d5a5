//! OWL Intuition packet parsing, per packet type: the real sample packets of
//! `shared/testdata/owl`, as a gateway sends them.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ulog_plugins_owl::packet::parse;

const SAMPLES: [&str; 5] = [
    "electricity_v2_6chan_property.xml",
    "electricity_v1_timestamp_3chan.xml",
    "solar_timestamp.xml",
    "heating_v2_2zones.xml",
    "weather_clear.xml",
];

fn bench(c: &mut Criterion) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/testdata/owl");
    let mut group = c.benchmark_group("owl_parse");
    for name in SAMPLES {
        let bytes = std::fs::read(format!("{dir}/{name}"))
            .unwrap_or_else(|e| panic!("{dir}/{name}: {e} (shared/ beside the repository)"));
        assert!(parse(&bytes).is_ok(), "{name} does not parse");
        group.throughput(Throughput::Elements(1));
        group.bench_with_input(BenchmarkId::from_parameter(name), &bytes, |b, bytes| {
            b.iter(|| parse(black_box(bytes)).map(|p| p.record.len()))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
