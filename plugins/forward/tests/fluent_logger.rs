//! Real clients sending to `input forward`: Python's fluent-logger (Debian's
//! python3-fluent-logger) over TCP and a Unix socket, and Go's
//! fluent-logger-golang (golang-github-fluent-fluent-logger-golang-dev) with
//! `RequestAck`, which checks every ack we send.

mod common;

use std::process::Command;
use std::time::Duration;

use common::*;
use serde_json::json;
use ulog_engine::spec::NodeSpec;
use ulog_engine::EventTime;

const PYTHON: &str = "/usr/bin/python3";

fn require_fluent_logger() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import fluent.sender"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{PYTHON} cannot import fluent.sender: install the Debian package python3-fluent-logger \
         (apt-get install -y python3-fluent-logger)"
    );
}

/// Runs a Python snippet with `sender` imported and `HOST`/`PORT` set;
/// fails the test with its output if it fails.
async fn python(host: &str, port: u16, body: &str) {
    let script = format!(
        "import sys, time\nfrom fluent import sender\nHOST = {host:?}\nPORT = {port}\n{body}\n"
    );
    let run = tokio::task::spawn_blocking(move || {
        Command::new(PYTHON)
            .args(["-c", &script])
            .stdin(std::process::Stdio::null())
            .output()
    });
    let out = within(Duration::from_secs(60), run)
        .await
        .expect("python task")
        .expect("running python3");
    assert!(
        out.status.success(),
        "python failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

const SEND: &str = r#"
def check(s, ok):
    if not ok:
        print("emit failed:", s.last_error, file=sys.stderr)
        sys.exit(1)

s = sender.FluentSender("app", host=HOST, port=PORT)
check(s, s.emit("web", {"n": 1, "msg": "hello", "nested": {"a": [1, 2.5, None, True]}}))
check(s, s.emit_with_time("fixed", 1700000001, {"n": 2, "bin": b"raw bytes"}))
s.close()

ns = sender.FluentSender("app", host=HOST, port=PORT, nanosecond_precision=True)
check(ns, ns.emit("ns", {"n": 3}))
check(ns, ns.emit_with_time("ns", 1700000000.5, {"n": 4}))
for i in range(100):
    check(ns, ns.emit("many", {"n": 10 + i}))
ns.close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fluent_logger_message_mode_over_tcp() {
    require_fluent_logger();
    let port = free_port();
    let (reg, sink) = registry_with_sink("capture");
    let running = start(&reg, vec![input(port, vec![])], NodeSpec::new("capture"));
    wait_listening(port).await;

    let before = EventTime::now();
    python("127.0.0.1", port, SEND).await;
    let after = EventTime::now();
    wait_for(Duration::from_secs(10), "104 events", || sink.len() >= 104).await;
    running.stop();
    within(Duration::from_secs(15), running.wait()).await;

    let events = sink.events();
    assert_eq!(events.len(), 104);
    let by_n = |n: i64| {
        events
            .iter()
            .find(|(_, e)| e.record.to_map().get("n") == Some(&json!(n)))
            .unwrap_or_else(|| panic!("no event with n = {n}"))
            .clone()
    };
    // Integer seconds from emit(): the current second, no fraction.
    let (tag, e) = by_n(1);
    assert_eq!(tag, "app.web");
    assert_eq!(
        serde_json::Value::Object(e.record.to_map().into_owned()),
        json!({"n": 1, "msg": "hello", "nested": {"a": [1, 2.5, null, true]}})
    );
    assert_eq!(e.time.subsec_nanos(), 0);
    assert!(e.time.secs() >= before.secs() && e.time.secs() <= after.secs());
    // A given integer time, and bytes as text.
    let (tag, e) = by_n(2);
    assert_eq!(tag, "app.fixed");
    assert_eq!(e.time, EventTime::from_secs_nanos(1_700_000_001, 0));
    assert_eq!(e.record.to_map()["bin"], json!("raw bytes"));
    // nanosecond_precision: EventTime ext with the sub-second part.
    let (tag, e) = by_n(3);
    assert_eq!(tag, "app.ns");
    assert!(e.time >= EventTime::from_unix_nanos(before.unix_nanos() - 1_000_000));
    assert!(e.time <= EventTime::from_unix_nanos(after.unix_nanos() + 1_000_000));
    let (_, e) = by_n(4);
    assert_eq!(
        e.time,
        EventTime::from_secs_nanos(1_700_000_000, 500_000_000)
    );
    // Order within one connection is kept.
    let many: Vec<i64> = events
        .iter()
        .filter(|(t, _)| t == "app.many")
        .map(|(_, e)| e.record.to_map()["n"].as_i64().unwrap())
        .collect();
    assert_eq!(many, (10..110).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_fluent_logger_over_a_unix_socket() {
    require_fluent_logger();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fluent.sock");
    let (reg, sink) = registry_with_sink("capture");
    let node = NodeSpec::new("forward")
        .param("listen", "")
        .param("unix_path", path.display().to_string())
        .param("source_address_key", "from");
    let running = start(&reg, vec![node], NodeSpec::new("capture"));
    wait_for(Duration::from_secs(10), "the socket file", || path.exists()).await;

    let body = r#"
s = sender.FluentSender("unix", host=HOST, port=0, nanosecond_precision=True)
for i in range(5):
    if not s.emit("sock", {"i": i}):
        print(s.last_error, file=sys.stderr); sys.exit(1)
s.close()
"#;
    python(&format!("unix://{}", path.display()), 0, body).await;
    wait_for(Duration::from_secs(10), "5 events", || sink.len() >= 5).await;
    running.stop();
    within(Duration::from_secs(15), running.wait()).await;
    assert_eq!(sink.ints("i"), vec![0, 1, 2, 3, 4]);
    let (tag, e) = &sink.events()[0];
    assert_eq!(tag, "unix.sock");
    assert_eq!(
        e.record.to_map()["from"],
        json!(format!("unix:{}", path.display()))
    );
    assert!(!path.exists(), "the socket file is removed on stop");
}

const GO_CLIENT: &str = r#"package main

import (
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/fluent/fluent-logger-golang/fluent"
)

func main() {
	port, _ := strconv.Atoi(os.Args[1])
	logger, err := fluent.New(fluent.Config{
		FluentHost: "127.0.0.1", FluentPort: port,
		RequestAck: true, SubSecondPrecision: true,
		Timeout: 5 * time.Second, WriteTimeout: 5 * time.Second, MaxRetry: 2,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "new:", err)
		os.Exit(1)
	}
	for i := 0; i < 20; i++ {
		t := time.Unix(1700000000+int64(i), int64(i)*1000+7)
		if err := logger.PostWithTime("go.app", t, map[string]interface{}{"i": i, "lang": "go"}); err != nil {
			fmt.Fprintln(os.Stderr, "post:", err)
			os.Exit(1)
		}
	}
	if err := logger.Close(); err != nil {
		fmt.Fprintln(os.Stderr, "close:", err)
		os.Exit(1)
	}
}
"#;

/// Builds the Go client against Debian's golang-github-fluent-fluent-logger-golang-dev.
fn build_go_client(dir: &std::path::Path) -> std::path::PathBuf {
    const PKG: &str = "/usr/share/gocode/src/github.com/fluent/fluent-logger-golang/fluent";
    assert!(
        std::path::Path::new(PKG).exists(),
        "the Go fluent-logger sources are missing: install the Debian package \
         golang-github-fluent-fluent-logger-golang-dev (apt-get install -y \
         golang-github-fluent-fluent-logger-golang-dev)"
    );
    std::fs::write(dir.join("main.go"), GO_CLIENT).unwrap();
    let bin = dir.join("client");
    let out = Command::new("go")
        .args(["build", "-o"])
        .arg(&bin)
        .arg("main.go")
        .current_dir(dir)
        .env("GOPATH", "/usr/share/gocode")
        .env("GO111MODULE", "off")
        .output()
        .unwrap_or_else(|e| {
            panic!("running `go` failed ({e}): the Go toolchain must be on PATH (Debian package golang-go)")
        });
    assert!(
        out.status.success(),
        "go build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    bin
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_fluent_logger_waits_for_our_acks() {
    let dir = tempfile::tempdir().unwrap();
    let bin = tokio::task::spawn_blocking({
        let dir = dir.path().to_path_buf();
        move || build_go_client(&dir)
    })
    .await
    .unwrap();
    let port = free_port();
    let (reg, sink) = registry_with_sink("capture");
    let running = start(&reg, vec![input(port, vec![])], NodeSpec::new("capture"));
    wait_listening(port).await;
    let run = tokio::task::spawn_blocking(move || {
        Command::new(bin)
            .arg(port.to_string())
            .stdin(std::process::Stdio::null())
            .output()
    });
    let out = within(Duration::from_secs(60), run).await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "the Go client failed (it checks every ack): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_for(Duration::from_secs(10), "20 events", || sink.len() >= 20).await;
    running.stop();
    within(Duration::from_secs(15), running.wait()).await;
    let events = sink.events();
    assert_eq!(events.len(), 20);
    for (k, (tag, e)) in events.iter().enumerate() {
        assert_eq!(tag, "go.app");
        assert_eq!(e.record.to_map()["i"], json!(k));
        assert_eq!(e.record.to_map()["lang"], json!("go"));
        assert_eq!(
            e.time,
            EventTime::from_secs_nanos(1_700_000_000 + k as i64, k as u32 * 1000 + 7)
        );
    }
}
