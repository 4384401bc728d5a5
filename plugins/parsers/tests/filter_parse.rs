//! The `parse` filter inside a real pipeline: events emitted into the top
//! level, a capturing output, and an `errors` label with its own capture.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value as J};
use ulog_engine::spec::{FilterSpec, FlowSpec, LabelSpec, MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{
    async_trait, Batch, BuildOptions, Delivery, Event, EventTime, Output, ParamKind, ParamSpec,
    Pipeline, PluginKind, PluginSpec, Record, Registry, RunReport, Tag, Value,
};

type Store = Arc<Mutex<Vec<(String, Event)>>>;

struct Capture(Store);

#[async_trait]
impl Output for Capture {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        let mut s = self.0.lock().unwrap();
        for e in &batch.events {
            s.push((batch.tag.to_string(), e.clone()));
        }
        Delivery::Delivered
    }
}

/// A registry with the parse filter and `capture { name = "..." }` outputs
/// writing into the returned stores.
fn registry() -> (Registry, Store, Store) {
    let mut r = Registry::new();
    ulog_parsers::register(&mut r);
    let main: Store = Arc::default();
    let errors: Store = Arc::default();
    let (m, e) = (main.clone(), errors.clone());
    r.add_output(
        PluginSpec::new(PluginKind::Output, "capture", "test sink").param(ParamSpec::required(
            "name",
            ParamKind::Str,
            "which store",
        )),
        move |p, _| {
            let store = if p.str("name")? == "errors" {
                e.clone()
            } else {
                m.clone()
            };
            Ok(Box::new(Capture(store)) as Box<dyn Output>)
        },
    );
    (r, main, errors)
}

fn pipeline(filter: NodeSpec) -> PipelineSpec {
    PipelineSpec {
        inputs: vec![],
        root: FlowSpec {
            filters: vec![FilterSpec {
                patterns: vec!["**".into()],
                node: filter,
            }],
            matches: vec![MatchSpec {
                patterns: vec!["**".into()],
                outputs: vec![NodeSpec::new("capture").param("name", "main")],
            }],
        },
        labels: vec![LabelSpec {
            name: "errors".into(),
            flow: FlowSpec {
                filters: vec![],
                matches: vec![MatchSpec {
                    patterns: vec!["**".into()],
                    outputs: vec![NodeSpec::new("capture").param("name", "errors")],
                }],
            },
        }],
    }
}

fn event(t: i64, record: J) -> Event {
    Event::new(
        EventTime::from_secs_nanos(t, 0),
        Record::Map(record.as_object().unwrap().clone()),
    )
}

/// Runs `events` through a pipeline with `filter`; returns what reached the
/// main output and the `errors` label, and the run report.
async fn run(
    filter: NodeSpec,
    events: Vec<Event>,
) -> (Vec<(String, Event)>, Vec<(String, Event)>, RunReport) {
    let (registry, main, errors) = registry();
    let running = Pipeline::build(&pipeline(filter), &registry, BuildOptions::default())
        .unwrap_or_else(|e| panic!("build: {e:?}"))
        .start();
    let mut emitter = running.emitter();
    tokio::time::timeout(
        Duration::from_secs(10),
        emitter.emit(Batch::new(Tag::parse("app.web").unwrap(), events)),
    )
    .await
    .expect("emit in time")
    .expect("pipeline accepts");
    drop(emitter);
    running.stop();
    let report = tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .expect("pipeline stops in time");
    let main = main.lock().unwrap().clone();
    let errors = errors.lock().unwrap().clone();
    (main, errors, report)
}

fn map(e: &Event) -> J {
    J::Object(e.record.to_map().into_owned())
}

const GOOD: &str = r#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "-" "curl/8.5.0""#;

#[tokio::test]
async fn parses_fields_and_sends_failures_to_the_errors_label() {
    let filter = NodeSpec::new("parse")
        .param("key_name", "log")
        .param("format", "apache2");
    let (main, errors, report) = run(
        filter,
        vec![
            event(1, json!({"log": GOOD, "stream": "stdout"})),
            event(2, json!({"log": "not an access line", "stream": "stderr"})),
            event(3, json!({"stream": "stdout"})),
        ],
    )
    .await;
    assert_eq!(main.len(), 1, "{main:?}");
    let (tag, ev) = &main[0];
    assert_eq!(tag, "app.web");
    assert_eq!(
        ev.time.secs(),
        971_211_336,
        "the line's time became the event time"
    );
    assert_eq!(
        map(ev),
        json!({"host": "127.0.0.1", "user": "frank", "method": "GET", "path": "/apache_pb.gif",
               "protocol": "HTTP/1.0", "code": 200, "size": 2326, "referer": null, "agent": "curl/8.5.0"})
    );
    assert_eq!(errors.len(), 2, "{errors:?}");
    let bad = map(&errors[0].1);
    assert_eq!(bad["log"], "not an access line", "the raw line is kept");
    assert_eq!(bad["stream"], "stderr");
    assert!(bad["_error"].as_str().unwrap().contains("apache2"), "{bad}");
    assert_eq!(errors[0].1.time.secs(), 2);
    let missing = map(&errors[1].1);
    assert!(
        missing["_error"]
            .as_str()
            .unwrap()
            .contains("`log` is missing"),
        "{missing}"
    );
    assert_eq!(report.metrics.rejected, 2);
    assert_eq!(report.metrics.dropped, 0);
}

#[tokio::test]
async fn reserve_data_prefix_and_remove_key() {
    let filter = NodeSpec::new("parse")
        .param("format", "logfmt")
        .param("reserve_data", true)
        .param("remove_key_name_field", true)
        .param("inject_key_prefix", "app_")
        .param("types", Value::Map(vec![("status".into(), "int".into())]));
    let (main, errors, _) = run(
        filter,
        vec![event(
            5,
            json!({"host": "h1", "message": "level=warn status=503 msg=\"upstream timeout\""}),
        )],
    )
    .await;
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(
        map(&main[0].1),
        json!({"host": "h1", "app_level": "warn", "app_status": 503, "app_msg": "upstream timeout"})
    );
    assert_eq!(
        main[0].1.time.secs(),
        5,
        "no time in the line: the event keeps its own"
    );
}

#[tokio::test]
async fn json_field_with_time_and_hash_value_field() {
    let filter = NodeSpec::new("parse")
        .param("format", "json")
        .param("time_key", "ts")
        .param("time_format", "unix_ms")
        .param("reserve_data", true)
        .param("hash_value_field", "parsed");
    let (main, _, _) = run(
        filter,
        vec![event(
            1,
            json!({"message": "{\"ts\":1700000000500,\"user\":\"ann\"}"}),
        )],
    )
    .await;
    let ev = &main[0].1;
    assert_eq!(
        (ev.time.secs(), ev.time.subsec_nanos()),
        (1_700_000_000, 500_000_000)
    );
    assert_eq!(
        map(ev),
        json!({"message": "{\"ts\":1700000000500,\"user\":\"ann\"}", "parsed": {"user": "ann"}})
    );
}

#[tokio::test]
async fn plain_json_stays_raw_through_the_filter() {
    let line = r#"{"b":1,  "a":[true]}"#;
    let (main, _, _) = run(
        NodeSpec::new("parse"),
        vec![event(1, json!({"message": line}))],
    )
    .await;
    match &main[0].1.record {
        Record::Raw(bytes) => assert_eq!(&bytes[..], line.as_bytes()),
        other => panic!("expected the line kept as raw JSON, got {other:?}"),
    }
}

#[tokio::test]
async fn on_error_keep_and_drop() {
    let events = || {
        vec![
            event(1, json!({"message": "a=1", "other": "x"})),
            event(2, json!({"message": "a=\"open", "other": "y"})),
            event(3, json!({"message": 42, "other": "z"})),
        ]
    };
    let keep = NodeSpec::new("parse")
        .param("format", "logfmt")
        .param("on_error", "keep");
    let (main, errors, report) = run(keep, events()).await;
    assert!(errors.is_empty());
    assert_eq!(report.metrics.rejected, 0);
    assert_eq!(
        main.iter().map(|(_, e)| map(e)).collect::<Vec<_>>(),
        vec![
            json!({"a": "1"}),
            json!({"message": "a=\"open"}),
            json!({"message": 42})
        ]
    );
    let keep_all = NodeSpec::new("parse")
        .param("format", "logfmt")
        .param("on_error", "keep")
        .param("reserve_data", true);
    let (main, _, _) = run(keep_all, events()).await;
    assert_eq!(
        map(&main[1].1),
        json!({"message": "a=\"open", "other": "y"})
    );

    let drop = NodeSpec::new("parse")
        .param("format", "logfmt")
        .param("on_error", "drop");
    let (main, errors, report) = run(drop, events()).await;
    assert_eq!(main.len(), 1);
    assert!(errors.is_empty());
    assert_eq!(report.metrics.rejected, 0);
}

#[tokio::test]
async fn bad_parameters_fail_the_build() {
    let (registry, _, _) = registry();
    for (node, what) in [
        (
            NodeSpec::new("parse").param("format", "regex"),
            "expression",
        ),
        (NodeSpec::new("parse").param("format", "csv"), "keys"),
        (
            NodeSpec::new("parse").param("format", "jsn"),
            "did you mean",
        ),
        (
            NodeSpec::new("parse").param("time_zone", "Mars/Olympus"),
            "time zone",
        ),
        (
            NodeSpec::new("parse").param("time_format", "%Q"),
            "strftime",
        ),
        (
            NodeSpec::new("parse")
                .param("format", "regex")
                .param("expression", Value::Regex("(unclosed".into())),
            "expression",
        ),
        (
            NodeSpec::new("parse").param("on_error", "ignore"),
            "on_error",
        ),
        (
            NodeSpec::new("parse").param("types", Value::Map(vec![("a".into(), "number".into())])),
            "unknown type",
        ),
        (
            NodeSpec::new("parse")
                .param("format", "csv")
                .param("keys", Value::List(vec!["a".into()]))
                .param("delimiter", "ab"),
            "delimiter",
        ),
    ] {
        let err = match Pipeline::build(&pipeline(node), &registry, BuildOptions::default()) {
            Ok(_) => panic!("{what}: built"),
            Err(e) => format!("{e:?}"),
        };
        assert!(err.contains(what), "{what}: {err}");
    }
}
