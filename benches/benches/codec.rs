//! Decoding and encoding events: JSON lines in and out (the tcp/file path)
//! and fluentd forward frames in and out, 1,024 ~120-byte events per batch.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ulog_benches::{apache_json_line, json_batch};
use ulog_engine::Record;
use ulog_plugins_forward::codec::{Compression, EncodeMode};
use ulog_plugins_forward::{decode_frames, Encoder};

fn bench(c: &mut Criterion) {
    let mut text = Vec::new();
    for i in 0..1024 {
        text.extend_from_slice(apache_json_line(i).as_bytes());
        text.push(b'\n');
    }
    let text = Bytes::from(text);
    let batch = json_batch("bench.access", 1024);

    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("json_lines_validate_1024", |b| {
        b.iter(|| {
            let mut n = 0;
            let mut rest = text.clone();
            while let Some(end) = rest.iter().position(|&c| c == b'\n') {
                let line = rest.split_to(end + 1);
                black_box(Record::from_json_bytes(line.slice(..end)).unwrap());
                n += 1;
            }
            n
        })
    });
    for (name, mode, compression) in [
        (
            "forward_packed_1024",
            EncodeMode::PackedForward,
            Compression::Text,
        ),
        ("forward_mode_1024", EncodeMode::Forward, Compression::Text),
        (
            "forward_gzip_1024",
            EncodeMode::PackedForward,
            Compression::Gzip,
        ),
    ] {
        let mut frame = Vec::new();
        Encoder::new(mode, compression).encode("bench.access", &batch.events, None, &mut frame);
        g.throughput(Throughput::Elements(1024));
        g.bench_function(name, |b| {
            b.iter(|| {
                let mut buf = BytesMut::from(&frame[..]);
                let groups = decode_frames(&mut buf).unwrap();
                assert_eq!(groups[0].1.len(), 1024);
                black_box(groups)
            })
        });
    }
    g.finish();

    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1024));
    let mut out = Vec::with_capacity(256 * 1024);
    g.bench_function("json_lines_raw_1024", |b| {
        b.iter(|| {
            out.clear();
            for e in &batch.events {
                e.record.write_json(&mut out);
                out.push(b'\n');
            }
            black_box(out.len())
        })
    });
    let parsed = {
        let mut b = batch.clone();
        for e in &mut b.events {
            e.record.map_mut();
        }
        b
    };
    g.bench_function("json_lines_parsed_1024", |b| {
        b.iter(|| {
            out.clear();
            for e in &parsed.events {
                e.record.write_json(&mut out);
                out.push(b'\n');
            }
            black_box(out.len())
        })
    });
    let mut enc = Encoder::new(EncodeMode::PackedForward, Compression::Text);
    g.bench_function("forward_packed_1024", |b| {
        b.iter(|| {
            out.clear();
            enc.encode("bench.access", &batch.events, None, &mut out);
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
