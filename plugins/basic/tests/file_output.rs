//! `output file` inside real pipelines: path placeholders, added fields,
//! byte-exact raw records, refusing tags that would escape the directory,
//! and a full disk answered with retries.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::{json, Value as Json};
use ulog_engine::spec::{MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{Batch, Event, EventTime, Record, Tag, Value};

fn raw(text: &str) -> Record {
    Record::from_json_bytes(Bytes::copy_from_slice(text.as_bytes())).unwrap()
}

fn file_node(path: &str) -> NodeSpec {
    NodeSpec::new("file")
        .param("path", path)
        .param("flush_interval", Duration::from_millis(50))
}

#[tokio::test]
async fn tag_and_time_placeholders_pick_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, _) = registry();
    let spec = PipelineSpec {
        root: ulog_engine::spec::FlowSpec {
            filters: vec![],
            matches: vec![match_all(file_node(
                "out/{tag_parts[0]}/%Y-%m-%d/{tag}.%H.jsonl",
            ))],
        },
        ..Default::default()
    };
    let running = start(&spec, &registry, dir.path());
    let mut emitter = running.emitter();
    // 2023-11-14T22:13:20Z and two hours later.
    let t1 = EventTime::from_secs_nanos(1_700_000_000, 0);
    let t2 = EventTime::from_secs_nanos(1_700_000_000 + 2 * 3600, 0);
    emitter
        .emit(Batch::new(
            Tag::parse("app.web").unwrap(),
            vec![
                Event::new(t1, raw(r#"{"n":1}"#)),
                Event::new(t2, raw(r#"{"n":2}"#)),
                Event::new(t1, raw(r#"{"n":3}"#)),
            ],
        ))
        .await
        .unwrap();
    emitter
        .emit(Batch::single(
            Tag::parse("db").unwrap(),
            Event::new(t1, raw(r#"{"n":4}"#)),
        ))
        .await
        .unwrap();
    let report = stop(running).await;
    assert_eq!(report.lost, 0);
    let read = |p: &str| std::fs::read_to_string(dir.path().join(p)).unwrap();
    assert_eq!(
        read("out/app/2023-11-14/app.web.22.jsonl"),
        "{\"n\":1}\n{\"n\":3}\n"
    );
    assert_eq!(read("out/app/2023-11-15/app.web.00.jsonl"), "{\"n\":2}\n");
    assert_eq!(read("out/db/2023-11-14/db.22.jsonl"), "{\"n\":4}\n");
}

#[tokio::test]
async fn raw_records_are_written_byte_for_byte_and_fields_are_added() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, _) = registry();
    let spec = PipelineSpec {
        root: ulog_engine::spec::FlowSpec {
            filters: vec![],
            matches: vec![
                MatchSpec {
                    patterns: vec!["plain".into()],
                    outputs: vec![file_node("plain.jsonl")],
                },
                MatchSpec {
                    patterns: vec!["extra".into()],
                    outputs: vec![
                        file_node("extra.jsonl")
                            .param("tag_key", "tag")
                            .param("time_key", "time"),
                        file_node("formatted.jsonl")
                            .param("time_key", "@timestamp")
                            .param("time_format", "%Y-%m-%dT%H:%M:%S%.3fZ"),
                    ],
                },
            ],
        },
        ..Default::default()
    };
    let running = start(&spec, &registry, dir.path());
    let mut emitter = running.emitter();
    // Odd spacing, key order, unicode escapes and big numbers must survive.
    let texts = [
        r#"{ "z" : 1,"a":[1, 2 ,3], "s":"\u00e9\n", "big": 123456789012345678901234567890 }"#,
        r#"{}"#,
        "{\"tab\":\"a\\tb\"}  ",
    ];
    let time = EventTime::from_secs_nanos(1_700_000_000, 250_000_000);
    for tag in ["plain", "extra"] {
        let events = texts.iter().map(|t| Event::new(time, raw(t))).collect();
        emitter
            .emit(Batch::new(Tag::parse(tag).unwrap(), events))
            .await
            .unwrap();
    }
    stop(running).await;

    let plain = std::fs::read_to_string(dir.path().join("plain.jsonl")).unwrap();
    let expected: String = texts
        .iter()
        .map(|t| format!("{}\n", t.trim_end()))
        .collect();
    assert_eq!(plain, expected, "raw records must be copied untouched");

    let extra = std::fs::read_to_string(dir.path().join("extra.jsonl")).unwrap();
    let lines: Vec<Json> = extra
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(lines[1], json!({"tag": "extra", "time": 1_700_000_000.25}));
    assert_eq!(lines[0]["z"], json!(1));
    assert_eq!(lines[0]["tag"], json!("extra"));
    // The added fields are spliced in; the original text stays as it was.
    assert!(extra.starts_with(r#"{ "z" : 1,"a":[1, 2 ,3], "s":"\u00e9\n", "big": 123456789012345678901234567890 ,"tag":"extra""#), "{extra}");

    let formatted = std::fs::read_to_string(dir.path().join("formatted.jsonl")).unwrap();
    let first: Json = serde_json::from_str(formatted.lines().nth(1).unwrap()).unwrap();
    assert_eq!(first, json!({"@timestamp": "2023-11-14T22:13:20.250Z"}));
}

#[tokio::test]
async fn tags_that_would_leave_the_directory_are_rejected_to_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, captures) = registry();
    let spec = PipelineSpec {
        root: ulog_engine::spec::FlowSpec {
            filters: vec![],
            matches: vec![match_all(file_node("logs/{tag}/events.log"))],
        },
        labels: vec![errors_label()],
        ..Default::default()
    };
    let running = start(&spec, &registry, dir.path());
    let mut emitter = running.emitter();
    for bad in ["..", ".", "../../etc", "/tmp/evil"] {
        emitter
            .emit(Batch::single(
                Tag::new_unchecked(bad),
                Event::new(EventTime::now(), raw(r#"{"evil":true}"#)),
            ))
            .await
            .unwrap();
    }
    emitter
        .emit(Batch::single(
            Tag::parse("good").unwrap(),
            Event::new(EventTime::now(), raw(r#"{"ok":1}"#)),
        ))
        .await
        .unwrap();
    wait_for("four rejected events", || captures.count("errors") == 4).await;
    let report = stop(running).await;

    let errors = captures.get("errors");
    let tags: Vec<&str> = errors.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(tags, ["..", ".", "../../etc", "/tmp/evil"]);
    for (_, e) in &errors {
        let mut record = e.record.clone();
        let reason = record
            .get("_error")
            .and_then(Json::as_str)
            .unwrap_or_default()
            .to_string();
        assert!(reason.contains("refusing to write tag"), "{reason}");
        assert_eq!(record.get("evil"), Some(&json!(true)));
    }
    assert_eq!(report.metrics.rejected, 4);
    // Only the good tag produced a file, and nothing exists outside `logs/`.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("logs/good/events.log")).unwrap(),
        "{\"ok\":1}\n"
    );
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["logs"]);
    let mut logs: Vec<String> = std::fs::read_dir(dir.path().join("logs"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    logs.sort();
    assert_eq!(logs, ["good"]);
    assert!(!dir.path().join("events.log").exists());
}

#[tokio::test]
async fn a_full_disk_goes_through_the_engine_retries_then_to_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (registry, captures) = registry();
    let spec = PipelineSpec {
        root: ulog_engine::spec::FlowSpec {
            filters: vec![],
            matches: vec![match_all(
                NodeSpec::new("file")
                    .param("path", "/dev/full")
                    .param("buffer_size", Value::Size(0))
                    .param("retry_wait", Duration::from_millis(10))
                    .param("retry_max_attempts", 3i64),
            )],
        },
        labels: vec![errors_label()],
        ..Default::default()
    };
    let running = start(&spec, &registry, dir.path());
    let mut emitter = running.emitter();
    emitter
        .emit(Batch::new(
            Tag::parse("t").unwrap(),
            vec![Event::new(EventTime::now(), raw(r#"{"a":1}"#)); 2],
        ))
        .await
        .unwrap();
    wait_for("events in errors", || captures.count("errors") == 2).await;
    let report = stop(running).await;
    let node = report.metrics.node("file#1").unwrap();
    assert_eq!(node.retries, 2, "{node:?}");
    assert_eq!(node.events_failed, 2);
    let mut rec = captures.get("errors")[0].1.record.clone();
    let reason = rec
        .get("_error")
        .and_then(Json::as_str)
        .unwrap()
        .to_string();
    assert!(
        reason.contains("gave up after 3 attempts") && reason.contains("No space left"),
        "{reason}"
    );
}
