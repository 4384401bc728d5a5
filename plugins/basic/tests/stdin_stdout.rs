//! `input stdin` and `output stdout` for real: this test binary runs itself
//! as a child process (the ignored `child_pipeline` test), feeds its standard
//! input through a pipe and reads its standard output and logs.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ulog_engine::spec::{FlowSpec, LabelSpec, MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{BuildOptions, Pipeline, Registry, Value};

/// The pipeline the child runs: stdin → stdout, configured from env vars.
#[test]
#[ignore = "run by the other tests of this file as a child process"]
fn child_pipeline() {
    let on_error = std::env::var("CHILD_ON_ERROR").expect("run only as a child process");
    let format = std::env::var("CHILD_FORMAT").unwrap();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The test harness has printed "test child_pipeline ... " without a
    // newline: mark where ulog's own output starts and ends.
    print!("\n{BEGIN}\n");
    std::io::stdout().flush().unwrap();
    rt.block_on(async {
        let mut registry = Registry::new();
        ulog_plugins_basic::register(&mut registry);
        let spec = PipelineSpec {
            inputs: vec![NodeSpec::new("stdin")
                .param("tag", "in.stdin")
                .param("on_error", on_error)
                .param("max_line_size", Value::Size(1024))],
            root: FlowSpec {
                filters: vec![],
                matches: vec![MatchSpec {
                    patterns: vec!["**".into()],
                    outputs: vec![NodeSpec::new("stdout").param("format", format)],
                }],
            },
            // Lines refused with on_error = "errors" come out too.
            labels: vec![LabelSpec {
                name: "errors".into(),
                flow: FlowSpec {
                    filters: vec![],
                    matches: vec![MatchSpec {
                        patterns: vec!["**".into()],
                        outputs: vec![NodeSpec::new("stdout").param("id", "errors-out")],
                    }],
                },
            }],
        };
        let running = Pipeline::build(&spec, &registry, BuildOptions::default())
            .unwrap()
            .start();
        let report = tokio::time::timeout(Duration::from_secs(30), running.wait())
            .await
            .expect("the pipeline ends at end of input");
        let input = report.metrics.node("stdin#1").unwrap();
        eprintln!(
            "CHILD-REPORT events={} lost={}",
            input.events_out, report.lost
        );
    });
    println!("{END}");
}

const BEGIN: &str = "--- child output begins ---";
const END: &str = "--- child output ends ---";

struct ChildOutput {
    stdout: String,
    stderr: String,
}

fn run_child(on_error: &str, format: &str, input: Vec<u8>) -> ChildOutput {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "child_pipeline",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("CHILD_ON_ERROR", on_error)
        .env("CHILD_FORMAT", format)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the test binary as a child");
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        stdin.write_all(&input).unwrap();
        // Dropping stdin closes the pipe: the child sees end of input.
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        out.read_to_string(&mut s).unwrap();
        s
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        err.read_to_string(&mut s).unwrap();
        s
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("child pipeline did not end at end of input");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    writer.join().unwrap();
    let stdout = reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    assert!(status.success(), "child failed:\n{stdout}\n{stderr}");
    ChildOutput { stdout, stderr }
}

/// The lines ulog wrote (the test harness prints its own lines around them).
fn ulog_lines(stdout: &str) -> Vec<&str> {
    let start = stdout.find(BEGIN).expect("begin marker") + BEGIN.len();
    let end = stdout.find(END).expect("end marker");
    stdout[start..end]
        .lines()
        .filter(|l| !l.is_empty())
        .collect()
}

#[test]
fn stdin_lines_come_out_on_stdout_untouched_and_bad_lines_are_logged() {
    let long = format!("{{\"long\":\"{}\"}}", "x".repeat(2000));
    let input = format!(
        "{{\"a\": 1}}\n\
         not json at all\n\
         {{\"b\":2}}\r\n\
         \n\
         {long}\n\
         [1,2]\n\
         {{\"last\":true}}"
    );
    let out = run_child("log", "json", input.into_bytes());
    assert_eq!(
        ulog_lines(&out.stdout),
        ["{\"a\": 1}", "{\"b\":2}", "{\"last\":true}"],
        "stdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
    // Each bad line is logged with its line number and the reason.
    assert!(
        out.stderr.contains("line=2") && out.stderr.contains("could not be parsed"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("line=5") && out.stderr.contains("longer than max_line_size"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("line=6") && out.stderr.contains("must be a JSON object"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("bad_lines=3"), "{}", out.stderr);
    assert!(
        out.stderr.contains("CHILD-REPORT events=3 lost=0"),
        "{}",
        out.stderr
    );
}

#[test]
fn on_error_keep_emits_bad_lines_as_messages() {
    let out = run_child(
        "keep",
        "json",
        b"{\"a\":1}\nplain text \"quoted\"\n".to_vec(),
    );
    let lines = ulog_lines(&out.stdout);
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert_eq!(lines[0], "{\"a\":1}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(lines[1]).unwrap(),
        serde_json::json!({"message": "plain text \"quoted\""})
    );
    assert!(out.stderr.contains("kept as a message"), "{}", out.stderr);
}

#[test]
fn many_lines_arrive_complete_and_in_order_with_fluentd_format() {
    let n = 50_000;
    let mut input = Vec::new();
    for i in 0..n {
        writeln!(input, "{{\"i\":{i},\"pad\":\"{}\"}}", "p".repeat(i % 50)).unwrap();
    }
    let out = run_child("log", "fluentd", input);
    let lines = ulog_lines(&out.stdout);
    assert_eq!(lines.len(), n, "stderr:\n{}", out.stderr);
    for (i, line) in lines.iter().enumerate() {
        let (time, rest) = line.split_once(' ').unwrap();
        assert!(
            chrono::DateTime::parse_from_rfc3339(time).is_ok(),
            "not an RFC 3339 time: {time}"
        );
        let json = rest.strip_prefix("in.stdin: ").unwrap();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["i"], i);
    }
    assert!(
        out.stderr
            .contains(&format!("CHILD-REPORT events={n} lost=0")),
        "{}",
        out.stderr
    );
}

#[test]
fn only_the_first_bad_lines_are_logged_one_by_one_then_counted() {
    let mut input = String::new();
    for i in 0..25 {
        input.push_str(&format!("bad {i}\n{{\"good\":{i}}}\n"));
    }
    let out = run_child("log", "json", input.into_bytes());
    assert_eq!(ulog_lines(&out.stdout).len(), 25);
    assert_eq!(
        out.stderr.matches("line could not be parsed").count(),
        10,
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("further bad lines are only counted"));
    assert!(
        out.stderr.contains("bad_lines=25 lines=50"),
        "{}",
        out.stderr
    );
}

#[test]
fn on_error_errors_sends_bad_lines_to_the_errors_label() {
    let out = run_child("errors", "json", b"{\"a\":1}\n{oops\n".to_vec());
    let lines = ulog_lines(&out.stdout);
    assert_eq!(lines.len(), 2, "{}", out.stdout);
    assert!(lines.contains(&"{\"a\":1}"));
    let refused: serde_json::Value =
        serde_json::from_str(lines.iter().find(|l| l.contains("_error")).unwrap()).unwrap();
    assert_eq!(refused["message"], "{oops");
    assert!(
        refused["_error"]
            .as_str()
            .unwrap()
            .starts_with("line 2: invalid JSON"),
        "{refused}"
    );
    assert_eq!(refused["_error_node"], "stdin#1");
    assert!(
        out.stderr.contains("sent to the errors label"),
        "{}",
        out.stderr
    );
}
