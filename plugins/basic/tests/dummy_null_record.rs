//! `input dummy`, `output null` and `filter record` inside real pipelines.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value as Json};
use ulog_engine::spec::{FilterSpec, FlowSpec, NodeSpec, PipelineSpec};
use ulog_engine::Value;

fn pipeline(input: NodeSpec, filters: Vec<FilterSpec>, output: NodeSpec) -> PipelineSpec {
    PipelineSpec {
        inputs: vec![input],
        root: FlowSpec {
            filters,
            matches: vec![match_all(output)],
        },
        labels: vec![],
    }
}

fn capture() -> NodeSpec {
    NodeSpec::new("capture").param("name", "out")
}

/// Runs until every input has ended by itself (bounded by a timeout).
async fn run_to_end(
    spec: &PipelineSpec,
    registry: &ulog_engine::Registry,
) -> ulog_engine::RunReport {
    let dir = tempfile::tempdir().unwrap();
    let running = start(spec, registry, dir.path());
    tokio::time::timeout(Duration::from_secs(20), running.wait())
        .await
        .expect("the pipeline should end once the input has sent max_events")
}

#[tokio::test]
async fn dummy_generates_counted_batches_and_ends_at_max_events() {
    let (registry, captures) = registry();
    let spec = pipeline(
        NodeSpec::new("dummy")
            .param("tag", "gen.test")
            .param("rate", 200i64)
            .param("size", 7i64)
            .param("max_events", 30i64)
            .param("auto_increment_key", "seq")
            .param(
                "record",
                Value::Map(vec![
                    ("level".into(), "info".into()),
                    ("n".into(), Value::Int(3)),
                ]),
            ),
        vec![],
        capture(),
    );
    let started = std::time::Instant::now();
    let report = run_to_end(&spec, &registry).await;
    // Five batches (7+7+7+7+2) at 200 events/s: the last one is due 4 * 35 ms
    // after the first, so the run cannot be shorter.
    assert!(
        started.elapsed() >= Duration::from_millis(140),
        "{:?}",
        started.elapsed()
    );
    let events = captures.get("out");
    assert_eq!(events.len(), 30);
    for (i, (tag, e)) in events.iter().enumerate() {
        assert_eq!(tag, "gen.test");
        assert_eq!(
            e.record.to_map().into_owned(),
            *json!({"level": "info", "n": 3, "seq": i})
                .as_object()
                .unwrap()
        );
    }
    let input = report.metrics.node("dummy#1").unwrap();
    assert_eq!(input.events_out, 30);
}

#[tokio::test]
async fn dummy_batches_have_the_configured_size() {
    let (registry, captures) = registry();
    let spec = pipeline(
        NodeSpec::new("dummy")
            .param("rate", 0i64)
            .param("size", 100i64)
            .param("max_events", 1050i64),
        vec![],
        capture(),
    );
    run_to_end(&spec, &registry).await;
    let sizes = captures.batch_sizes("out");
    assert_eq!(sizes.len(), 11);
    assert!(sizes[..10].iter().all(|&s| s == 100), "{sizes:?}");
    assert_eq!(sizes[10], 50);
}

#[tokio::test]
async fn dummy_stops_on_shutdown() {
    let (registry, captures) = registry();
    let spec = pipeline(
        NodeSpec::new("dummy").param("rate", 100i64),
        vec![],
        capture(),
    );
    let dir = tempfile::tempdir().unwrap();
    let running = start(&spec, &registry, dir.path());
    wait_for("a few events", || captures.count("out") >= 3).await;
    let report = stop(running).await;
    let sent = report.metrics.node("dummy#1").unwrap().events_out;
    assert_eq!(sent as usize, captures.count("out"));
    assert_eq!(report.lost, 0);
}

#[tokio::test]
async fn null_discards_everything_it_gets() {
    let (registry, _) = registry();
    let spec = pipeline(
        NodeSpec::new("dummy")
            .param("rate", 0i64)
            .param("size", 500i64)
            .param("max_events", 20_000i64),
        vec![],
        NodeSpec::new("null"),
    );
    let report = run_to_end(&spec, &registry).await;
    let null = report.metrics.node("null#1").unwrap();
    assert_eq!(null.events_in, 20_000);
    assert_eq!(null.events_out, 20_000);
    assert_eq!(null.events_failed, 0);
}

#[tokio::test]
async fn record_filter_renames_sets_removes_and_keeps_in_order() {
    let (registry, captures) = registry();
    let record = Value::Map(vec![
        ("msg".into(), "hello".into()),
        (
            "user".into(),
            Value::Map(vec![
                ("name".into(), "ann".into()),
                ("id".into(), Value::Int(7)),
            ]),
        ),
        ("secret".into(), "x".into()),
        ("noise".into(), Value::Int(1)),
    ]);
    let filter = NodeSpec::new("record")
        .param("rename", Value::Map(vec![("msg".into(), "message".into())]))
        .param(
            "set",
            Value::Map(vec![
                ("service".into(), "{tag_parts[1]}".into()),
                (
                    "summary".into(),
                    "{user.name}#{record.user.id} said {message} on {tag} {{ok}}".into(),
                ),
                ("uid".into(), "{user.id}".into()),
                (
                    "fixed".into(),
                    Value::List(vec![Value::Int(1), Value::Bool(true)]),
                ),
                ("at".into(), "{time}".into()),
                // Sees the record after rename: the old name is gone.
                ("old".into(), "{msg}".into()),
            ]),
        )
        .param("remove", Value::List(vec!["secret".into()]))
        .param(
            "keep",
            Value::List(vec![
                "message".into(),
                "service".into(),
                "summary".into(),
                "uid".into(),
                "fixed".into(),
                "at".into(),
                "old".into(),
                "secret".into(),
            ]),
        );
    let spec = pipeline(
        NodeSpec::new("dummy")
            .param("tag", "app.web.eu")
            .param("rate", 0i64)
            .param("max_events", 2i64)
            .param("record", record),
        vec![FilterSpec {
            patterns: vec!["app.**".into()],
            node: filter,
        }],
        capture(),
    );
    run_to_end(&spec, &registry).await;
    let events = captures.get("out");
    assert_eq!(events.len(), 2);
    let (_, e) = &events[0];
    let map = e.record.to_map().into_owned();
    let at = map
        .get("at")
        .and_then(Json::as_f64)
        .expect("`at` is a number");
    let expected_at = e.time.secs() as f64 + f64::from(e.time.subsec_nanos()) / 1e9;
    assert!((at - expected_at).abs() < 1e-6);
    let mut map = map;
    map.remove("at");
    assert_eq!(
        Json::Object(map),
        json!({
            "message": "hello",
            "service": "web",
            "summary": "ann#7 said hello on app.web.eu {ok}",
            "uid": 7,
            "fixed": [1, true],
            "old": null,
        })
    );
}

#[tokio::test]
async fn record_filter_templates_are_checked_when_building() {
    let (registry, _) = registry();
    let spec = pipeline(
        NodeSpec::new("dummy"),
        vec![FilterSpec {
            patterns: vec!["**".into()],
            node: NodeSpec::new("record")
                .param("set", Value::Map(vec![("x".into(), "{tag".into())])),
        }],
        capture(),
    );
    let errors = match ulog_engine::Pipeline::build(&spec, &registry, Default::default()) {
        Ok(_) => panic!("an unclosed placeholder must not build"),
        Err(e) => e,
    };
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].message.contains("field `x`") && errors[0].message.contains("unclosed"),
        "{}",
        errors[0].message
    );
}
