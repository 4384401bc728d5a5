//! Shared fixtures for ulog's benchmarks: pattern sets, batches and small
//! pipelines built without a routes file.

use bytes::Bytes;
use ulog_engine::pattern::{PatternSet, TagPattern};
use ulog_engine::spec::{FlowSpec, MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{
    async_trait, Batch, BuildOptions, Delivery, Event, EventTime, Output, Pipeline, PluginKind,
    PluginSpec, Record, Registry, Tag,
};

/// The pattern text of block `i` of `n`: a mix of exact tags, `prefix.**`,
/// one-part wildcards and alternatives, with a catch-all wildcard last.
pub fn pattern_text(i: usize, n: usize) -> String {
    if i == n - 1 {
        return "zz.*.metrics".to_string();
    }
    match i % 4 {
        0 => format!("svc{i}.api.access"),
        1 => format!("app{i}.**"),
        2 => format!("home.*.dev{i}"),
        _ => format!("web{i}.{{api,ui}}.**"),
    }
}

/// `n` blocks of one pattern each, see [`pattern_text`].
pub fn pattern_blocks(n: usize) -> Vec<PatternSet> {
    (0..n)
        .map(|i| {
            PatternSet::new(vec![
                TagPattern::new(&pattern_text(i, n)).expect("valid pattern")
            ])
        })
        .collect()
}

/// A batch of `n` ~120-byte JSON events (apache common log lines in `msg`).
pub fn json_batch(tag: &str, n: usize) -> Batch {
    let events = (0..n)
        .map(|i| {
            Event::new(
                EventTime::now(),
                Record::from_json_bytes(Bytes::from(apache_json_line(i))).expect("valid json"),
            )
        })
        .collect();
    Batch::new(Tag::parse(tag).expect("valid tag"), events)
}

/// One apache common log line wrapped as `{"msg": ...}`, about 120 bytes.
pub fn apache_json_line(i: usize) -> String {
    format!(
        "{{\"msg\":\"192.168.{}.{} - frank [27/Nov/2026:10:{:02}:{:02} +0000] \\\"GET /api/v1/households/{}/readings HTTP/1.1\\\" 200 {}\"}}",
        i % 250,
        (i / 250) % 250,
        (i / 60) % 60,
        i % 60,
        i % 100000,
        1000 + i % 9000
    )
}

struct Discard;

#[async_trait]
impl Output for Discard {
    async fn write(&mut self, _batch: &Batch) -> Delivery {
        Delivery::Delivered
    }
}

/// A pipeline with `n` match blocks (see [`pattern_text`]), each sending to a
/// discarding output, and no inputs: drive it with `Running::emitter()`.
pub fn routing_pipeline(n: usize) -> Pipeline {
    let mut registry = Registry::new();
    registry.add_output(
        PluginSpec::new(PluginKind::Output, "discard", "drops everything"),
        |_, _| Ok(Box::new(Discard)),
    );
    let matches = (0..n)
        .map(|i| MatchSpec {
            patterns: vec![pattern_text(i, n)],
            outputs: vec![NodeSpec::new("discard")],
        })
        .collect();
    let spec = PipelineSpec {
        inputs: vec![],
        root: FlowSpec {
            filters: vec![],
            matches,
        },
        labels: vec![],
    };
    Pipeline::build(&spec, &registry, BuildOptions::default()).expect("valid pipeline")
}
