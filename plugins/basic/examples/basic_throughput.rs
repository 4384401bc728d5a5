//! Measures the basic plugins in one process: `dummy` generating as fast as
//! the pipeline takes events, into `null`, through `filter record`, and into
//! `file` (JSON lines on the local disk).
//!
//! ```text
//! cargo run --release -p ulog-plugins-basic --example basic_throughput -- [million_events]
//! ```

use std::time::{Duration, Instant};

use ulog_engine::spec::{FilterSpec, FlowSpec, MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{BuildOptions, Pipeline, Registry, Value};

async fn run(
    name: &str,
    total: i64,
    filters: Vec<FilterSpec>,
    output: NodeSpec,
    dir: &std::path::Path,
) {
    let mut registry = Registry::new();
    ulog_plugins_basic::register(&mut registry);
    let spec = PipelineSpec {
        inputs: vec![NodeSpec::new("dummy")
            .param("tag", "bench.events")
            .param("rate", 0i64)
            .param("size", 1000i64)
            .param("max_events", total)
            .param(
                "record",
                Value::Map(vec![
                    ("level".into(), "info".into()),
                    (
                        "msg".into(),
                        "GET /index.html 200 1043 bytes in 3 ms".into(),
                    ),
                    (
                        "user".into(),
                        Value::Map(vec![("id".into(), Value::Int(42))]),
                    ),
                ]),
            )],
        root: FlowSpec {
            filters,
            matches: vec![MatchSpec {
                patterns: vec!["**".into()],
                outputs: vec![output],
            }],
        },
        labels: vec![],
    };
    let options = BuildOptions {
        base_dir: dir.to_path_buf(),
        shutdown_timeout: Duration::from_secs(60),
    };
    let started = Instant::now();
    let running = Pipeline::build(&spec, &registry, options).unwrap().start();
    let report = running.wait().await;
    let secs = started.elapsed().as_secs_f64();
    let out = report
        .metrics
        .nodes
        .iter()
        .filter(|n| n.kind == ulog_engine::params::PluginKind::Output)
        .map(|n| n.events_out)
        .sum::<u64>();
    println!(
        "{name:<28} {out:>10} events in {secs:>6.2} s = {:>6.2} M events/s",
        out as f64 / secs / 1e6
    );
}

#[tokio::main]
async fn main() {
    let millions: f64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5.0);
    let total = (millions * 1e6) as i64;
    let dir = tempfile::tempdir().unwrap();
    run(
        "dummy -> null",
        total,
        vec![],
        NodeSpec::new("null"),
        dir.path(),
    )
    .await;
    let record = FilterSpec {
        patterns: vec!["**".into()],
        node: NodeSpec::new("record")
            .param(
                "set",
                Value::Map(vec![
                    ("service".into(), "{tag_parts[0]}".into()),
                    ("uid".into(), "{user.id}".into()),
                ]),
            )
            .param("remove", Value::List(vec!["level".into()])),
    };
    run(
        "dummy -> record -> null",
        total,
        vec![record],
        NodeSpec::new("null"),
        dir.path(),
    )
    .await;
    run(
        "dummy -> file (json)",
        total,
        vec![],
        NodeSpec::new("file").param("path", "out/{tag}.jsonl"),
        dir.path(),
    )
    .await;
    run(
        "dummy -> file (+tag,time)",
        total,
        vec![],
        NodeSpec::new("file")
            .param("path", "out/{tag}-2.jsonl")
            .param("tag_key", "tag")
            .param("time_key", "time"),
        dir.path(),
    )
    .await;
    let bytes = std::fs::metadata(dir.path().join("out/bench.events.jsonl"))
        .map(|m| m.len())
        .unwrap_or(0);
    println!("file size: {:.1} MB", bytes as f64 / 1e6);
}
