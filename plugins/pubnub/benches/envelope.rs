//! PubNub subscribe envelope decoding: the SDK's decode of a response body
//! and ulog's records from it, for the real mixed-payload sample and a full
//! envelope of 100 trial-sized (~120-byte) JSON messages.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use pubnub::subscribe::Update;
use serde_json::json;
use ulog_plugins_pubnub::envelope::{decode_subscribe, record, Fields, Kind};

fn records(body: &[u8], fields: &Fields) -> usize {
    let (_, _, updates) = decode_subscribe(body).unwrap();
    let mut n = 0;
    for u in updates {
        if let Update::Message(m) = u {
            let r = record(&m, Kind::Message, fields).unwrap();
            n += usize::from(!r.is_empty_hint());
        }
    }
    n
}

trait Hint {
    fn is_empty_hint(&self) -> bool;
}
impl Hint for ulog_engine::Record {
    fn is_empty_hint(&self) -> bool {
        matches!(self, ulog_engine::Record::Map(m) if m.is_empty())
    }
}

fn full_envelope() -> Vec<u8> {
    let m: Vec<_> = (0..100)
        .map(|i| {
            json!({
                "a": "3", "f": 0, "i": "hub-h42",
                "p": {"t": (17_000_000_000_000_000u64 + i).to_string(), "r": 12},
                "k": "sub-c-5f1b", "c": "mk-smart.log", "b": "mk-smart.log",
                "d": {"household": "h42", "device": "owl-44:37:19", "type": "electricity",
                      "power_w": 1234.5, "energy_today_wh": 5678, "seq": i}
            })
        })
        .collect();
    serde_json::to_vec(&json!({"t": {"t": "17000000000000100", "r": 12}, "m": m})).unwrap()
}

fn bench(c: &mut Criterion) {
    let mixed = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/testdata/pubnub/subscribe_v2_mixed_payload_types.json"),
    )
    .unwrap();
    let full = full_envelope();
    let fields = Fields::default();
    let mut g = c.benchmark_group("pubnub_envelope");
    g.throughput(Throughput::Elements(1));
    g.bench_function("mixed_sample_decode_and_records", |b| {
        b.iter(|| records(&mixed, &fields))
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("100_messages_decode_only", |b| {
        b.iter(|| decode_subscribe(&full).unwrap().2.len())
    });
    g.bench_function("100_messages_entry_check_only", |b| {
        b.iter(|| ulog_plugins_pubnub::envelope::malformed_entries(&full).len())
    });
    g.bench_function("100_messages_decode_and_records", |b| {
        b.iter(|| records(&full, &fields))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
