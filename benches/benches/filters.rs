//! The event-processing chain on the raw-JSON path: `filter grep` (a regex
//! and an expression condition) then `filter record` with one computed field,
//! over batches of ~120-byte trial records that arrived as JSON text. The
//! target is under 1 µs an event for the chain; grep alone shows what
//! reading fields without parsing the record costs. `rule_*` adds a keyed
//! threshold rule (`filter rule`, hysteresis per household) that sees every
//! event, before grep, so the stateful step runs on all 1,000.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use ulog_engine::{Batch, Event, EventTime, Filter, Record, Tag, Value};
use ulog_plugins_basic::{filter_grep, filter_record, filter_rule};

const EVENTS: usize = 1000;

fn batch() -> Batch {
    let events = (0..EVENTS)
        .map(|i| {
            let line = format!(
                r#"{{"household":"h{}","device":"battery-7","soc_pct":{},"power_w":{},"state":"{}","ts":1777636800}}"#,
                1 + i % 2,
                i % 100,
                1000 + i,
                if i % 3 == 0 { "idle" } else { "charging" }
            );
            Event::new(
                EventTime::from_secs_nanos(1_777_636_800, 0),
                Record::from_json_bytes(Bytes::from(line)).unwrap(),
            )
        })
        .collect();
    Batch::new(Tag::parse("home.h1.battery").unwrap(), events)
}

fn params(spec: ulog_engine::PluginSpec, given: Vec<(&str, Value)>) -> ulog_engine::Params {
    let given: Vec<(String, Value)> = given.into_iter().map(|(k, v)| (k.into(), v)).collect();
    spec.validate(&given).unwrap()
}

fn bench(c: &mut Criterion) {
    let grep = filter_grep::GrepFilter::from_params(&params(
        filter_grep::spec(),
        vec![
            (
                "regexp",
                Value::Map(vec![("state".into(), Value::Regex("^charging$".into()))]),
            ),
            (
                "if",
                Value::Str(r#"$.household == tag[1] and $.soc_pct < 50"#.into()),
            ),
        ],
    ))
    .unwrap();
    let record = filter_record::RecordFilter::from_params(&params(
        filter_record::spec(),
        vec![(
            "compute",
            Value::Map(vec![(
                "kw".into(),
                Value::Str("round($.power_w / 1000)".into()),
            )]),
        )],
    ))
    .unwrap();
    let rule = || {
        filter_rule::RuleFilter::from_params(&params(
            filter_rule::spec(),
            vec![
                ("kind", Value::Str("threshold".into())),
                ("key", Value::Str("$.household".into())),
                ("value", Value::Str("$.soc_pct".into())),
                ("below", Value::Float(50.0)),
                ("rearm", Value::Float(55.0)),
                ("tag", Value::Str("alerts.{key}.battery_low".into())),
            ],
        ))
        .unwrap()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let input = batch();
    // What survives grep: a sixth of the events (h1, charging, soc < 50).
    let mut probe = input.clone();
    rt.block_on(grep.filter(&mut probe, &mut Vec::new()))
        .unwrap();
    let kept = probe.events.len();
    assert!(kept > EVENTS / 8 && kept < EVENTS / 4, "{kept}");

    let mut g = c.benchmark_group("filters");
    g.throughput(Throughput::Elements(EVENTS as u64));
    g.bench_function("grep_regex_and_expression", |b| {
        b.iter_batched(
            || input.clone(),
            |mut batch| {
                rt.block_on(grep.filter(&mut batch, &mut Vec::new()))
                    .unwrap();
                batch
            },
            BatchSize::SmallInput,
        )
    });
    g.bench_function("grep_then_record_compute", |b| {
        b.iter_batched(
            || input.clone(),
            |mut batch| {
                let mut rejects = Vec::new();
                rt.block_on(grep.filter(&mut batch, &mut rejects)).unwrap();
                rt.block_on(record.filter(&mut batch, &mut rejects))
                    .unwrap();
                assert!(rejects.is_empty());
                batch
            },
            BatchSize::SmallInput,
        )
    });
    let threshold = rule();
    g.bench_function("rule_threshold_alone", |b| {
        b.iter_batched(
            || input.clone(),
            |mut batch| {
                let out = rt
                    .block_on(threshold.filter_split(&mut batch, &mut Vec::new()))
                    .unwrap();
                (batch, out)
            },
            BatchSize::SmallInput,
        )
    });
    let threshold = rule();
    g.bench_function("rule_threshold_then_grep_then_record_compute", |b| {
        b.iter_batched(
            || input.clone(),
            |mut batch| {
                let mut rejects = Vec::new();
                let out = rt
                    .block_on(threshold.filter_split(&mut batch, &mut rejects))
                    .unwrap();
                rt.block_on(grep.filter(&mut batch, &mut rejects)).unwrap();
                rt.block_on(record.filter(&mut batch, &mut rejects))
                    .unwrap();
                assert!(rejects.is_empty());
                (batch, out)
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
