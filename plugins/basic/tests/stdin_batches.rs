//! `input stdin` turns each read into one batch (not one per line), and
//! gets every line through whatever the read sizes are.

mod common;

use std::time::Duration;

use common::*;
use ulog_engine::spec::{FlowSpec, PipelineSpec};
use ulog_engine::{CancellationToken, InputContext, Value};
use ulog_plugins_basic::in_stdin::{spec, StdinInput};

fn input() -> StdinInput {
    let params = spec()
        .validate(&[("tag".into(), Value::from("in"))])
        .unwrap();
    StdinInput::from_params(&params).unwrap()
}

#[tokio::test]
async fn each_read_is_one_batch_and_no_line_is_lost() {
    let (registry, captures) = registry();
    let spec = PipelineSpec {
        root: FlowSpec {
            filters: vec![],
            matches: vec![match_all(
                ulog_engine::spec::NodeSpec::new("capture").param("name", "out"),
            )],
        },
        ..Default::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let running = start(&spec, &registry, dir.path());
    let lines = 20_000;
    let mut text = String::new();
    for i in 0..lines {
        text.push_str(&format!("{{\"i\":{i}}}\n"));
    }
    // A pipe that delivers the bytes in reads of odd sizes, so lines are
    // cut across reads.
    let (mut writer, reader) = tokio::io::duplex(7_777);
    let feeder = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        for piece in text.as_bytes().chunks(5_003) {
            writer.write_all(piece).await.unwrap();
        }
    });
    let ctx = InputContext {
        id: "stdin#1".into(),
        emitter: running.emitter(),
        shutdown: CancellationToken::new(),
    };
    tokio::time::timeout(Duration::from_secs(20), input().read_from(reader, ctx))
        .await
        .expect("reading ends at end of input")
        .unwrap();
    feeder.await.unwrap();
    wait_for("every line", || captures.count("out") == lines).await;
    stop(running).await;
    let numbers: Vec<i64> = captures
        .get("out")
        .iter()
        .map(|(_, e)| e.record.to_map()["i"].as_i64().unwrap())
        .collect();
    assert_eq!(numbers, (0..lines as i64).collect::<Vec<_>>());
    let sizes = captures.batch_sizes("out");
    // About 240 KB in reads of at most 7 777 bytes (~700 lines each): a
    // batch per read, far fewer than one per line.
    assert!(sizes.len() < lines / 100, "{} batches", sizes.len());
    assert!(sizes.iter().all(|&n| n <= 7_777 / 8 + 1), "{sizes:?}");
}
