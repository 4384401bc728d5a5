//! Evaluating a filter condition and a computed field on a ~120-byte raw
//! JSON record, against the naive baseline of parsing the record into a map
//! first (what evaluating would cost without the raw-record fast path).

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use serde_json::{Map, Value as Json};
use ulog_engine::{EventTime, Record, Tag};
use ulog_expr::{Context, Expr, Value};

const RECORD: &[u8] = br#"{"household":"h1","device":"battery-7","soc_pct":42,"power_w":2500,"voltage":51.2,"state":"charging","ts":1777636800}"#;

const CONDITION: &str = r#"$.household == "h1" and $.soc_pct < 50"#;
const COMPUTED: &str = r#"format("{}:{}", tag[1], round($.power_w / 1000))"#;

fn bench(c: &mut Criterion) {
    let raw = Record::from_json_bytes(Bytes::from_static(RECORD)).unwrap();
    let parsed = Record::Map(serde_json::from_slice(RECORD).unwrap());
    let tag = Tag::parse("home.h1.battery").unwrap();
    let time = EventTime::from_secs_nanos(1_777_636_800, 0);
    let cx = |record| Context {
        record,
        tag: &tag,
        time,
    };
    let condition = Expr::compile_condition(CONDITION).unwrap();
    let computed = Expr::compile(COMPUTED).unwrap();
    assert_eq!(condition.eval_bool(&cx(&raw)), Ok(true));
    assert_eq!(computed.eval(&cx(&raw)), Ok(Value::String("h1:3".into())));

    let mut group = c.benchmark_group("expr");
    group.throughput(Throughput::Elements(1));
    group.bench_function("condition/raw", |b| {
        b.iter(|| condition.eval_bool(black_box(&cx(&raw))))
    });
    group.bench_function("condition/parsed", |b| {
        b.iter(|| condition.eval_bool(black_box(&cx(&parsed))))
    });
    group.bench_function("condition/parse_then_eval (baseline)", |b| {
        b.iter(|| {
            let map: Map<String, Json> = serde_json::from_slice(black_box(RECORD)).unwrap();
            let record = Record::Map(map);
            condition.eval_bool(&Context {
                record: &record,
                tag: &tag,
                time,
            })
        })
    });
    group.bench_function("computed/raw", |b| {
        b.iter(|| computed.eval(black_box(&cx(&raw))))
    });
    group.bench_function("computed/parsed", |b| {
        b.iter(|| computed.eval(black_box(&cx(&parsed))))
    });
    group.bench_function("compile/condition", |b| {
        b.iter(|| Expr::compile(black_box(CONDITION)))
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
