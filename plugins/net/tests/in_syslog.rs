//! `input syslog` in a real pipeline, fed by util-linux `logger` (UDP, TCP
//! octet-counted and newline-framed, RFC 5424 and 3164) and by a rustls
//! client for TLS.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UdpSocket;
use ulog_engine::spec::NodeSpec;
use ulog_engine::EventTime;

const LOGGER: &str = "/usr/bin/logger";

/// Runs `logger` with `args` (off the test's thread: the input runs on it);
/// returns logger's process id, which `-i` puts into the message.
async fn logger(args: &[&str]) -> u32 {
    assert!(
        Path::new(LOGGER).exists(),
        "{LOGGER} is missing: install util-linux's logger (Debian package `bsdutils`)"
    );
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let run = tokio::task::spawn_blocking(move || {
        let child = Command::new(LOGGER)
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("starting logger");
        let pid = child.id();
        let out = child.wait_with_output().expect("waiting for logger");
        assert!(
            out.status.success(),
            "logger {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        pid
    });
    tokio::time::timeout(TIMEOUT, run)
        .await
        .expect("logger did not finish")
        .unwrap()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .unwrap()
        .trim()
        .to_string()
}

fn syslog_input(port: u16, protocol: &str) -> NodeSpec {
    NodeSpec::new("syslog")
        .param("id", "in")
        .param("listen", format!("127.0.0.1:{port}"))
        .param("protocol", protocol)
}

/// The record of the first event whose message is `msg`, with its tag.
fn find(sink: &Sink, msg: &str) -> (String, Value, EventTime) {
    sink.events()
        .into_iter()
        .find(|(_, e)| e.record.to_map().get("message") == Some(&json!(msg)))
        .map(|(t, e)| (t, Value::Object(e.record.to_map().into_owned()), e.time))
        .unwrap_or_else(|| panic!("no event with message {msg:?}: {:?}", sink.events()))
}

/// Waits until an event with `msg` arrived.
async fn wait_message(sink: &Sink, msg: &str) -> (String, Value, EventTime) {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let found = sink
            .events()
            .iter()
            .any(|(_, e)| e.record.to_map().get("message") == Some(&json!(msg)));
        if found {
            return find(sink, msg);
        }
        assert!(
            Instant::now() < deadline,
            "no event with message {msg:?}: {:?}",
            sink.events()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Sends probes until the UDP input is receiving.
async fn wait_udp_ready(port: u16, sink: &Sink) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let deadline = Instant::now() + TIMEOUT;
    while sink.len() == 0 {
        sock.send_to(b"<13>1 - - probe - - - probe", ("127.0.0.1", port))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(Instant::now() < deadline, "udp syslog input never received");
    }
}

fn assert_recent(t: EventTime, slack_secs: i64) {
    let now = EventTime::now().secs();
    assert!(
        (t.secs() - now).abs() <= slack_secs,
        "event time {} is not close to now {now}",
        t.secs()
    );
}

#[tokio::test]
async fn udp_rfc5424_from_logger() {
    let sink = Sink::default();
    let port = free_udp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![syslog_input(port, "udp").param("source_address_key", "src")],
        vec![capture_all("out")],
        None,
    );
    wait_udp_ready(port, &sink).await;
    let p = port.to_string();
    let pid = logger(&[
        "--server",
        "127.0.0.1",
        "--port",
        &p,
        "--udp",
        "--rfc5424",
        "-t",
        "myapp",
        "-i",
        "-p",
        "local3.warning",
        "--msgid",
        "M1",
        "--sd-id",
        "ex@32473",
        "--sd-param",
        "k=\"v\"",
        "hello over udp",
    ])
    .await;
    let (tag, rec, time) = wait_message(&sink, "hello over udp").await;
    assert_eq!(tag, "syslog.local3.warning");
    assert_eq!(rec["facility"], "local3");
    assert_eq!(rec["severity"], "warning");
    assert_eq!(rec["pri"], 19 * 8 + 4);
    assert_eq!(rec["host"], hostname());
    assert_eq!(rec["ident"], "myapp");
    assert_eq!(rec["pid"], pid.to_string());
    assert_eq!(rec["msgid"], "M1");
    assert_eq!(rec["structured_data"]["ex@32473"], json!({"k": "v"}));
    assert_eq!(rec["src"], "127.0.0.1");
    assert_recent(time, 60);
    stop(running).await;
}

#[tokio::test]
async fn udp_rfc3164_from_logger() {
    let sink = Sink::default();
    let port = free_udp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![syslog_input(port, "udp")],
        vec![capture_all("out")],
        None,
    );
    wait_udp_ready(port, &sink).await;
    let p = port.to_string();
    let pid = logger(&[
        "--server",
        "127.0.0.1",
        "--port",
        &p,
        "--udp",
        "--rfc3164",
        "-t",
        "old-app",
        "-i",
        "-p",
        "mail.err",
        "bsd style",
    ])
    .await;
    let (tag, rec, time) = wait_message(&sink, "bsd style").await;
    assert_eq!(tag, "syslog.mail.err");
    assert_eq!(rec["host"], hostname());
    assert_eq!(rec["ident"], "old-app");
    assert_eq!(rec["pid"], pid.to_string());
    // RFC 3164 times are local, whole seconds, and carry no year.
    assert_recent(time, 120);
    stop(running).await;
}

#[tokio::test]
async fn tcp_octet_counted_from_logger() {
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![syslog_input(port, "tcp").param("framing", "octet_counting")],
        vec![capture_all("out")],
        None,
    );
    wait_listening(port).await;
    let p = port.to_string();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lines.txt");
    std::fs::write(&file, "first of three\nsecond of three\nthird of three\n").unwrap();
    let pid = logger(&[
        "--server",
        "127.0.0.1",
        "--port",
        &p,
        "--tcp",
        "--octet-count",
        "--rfc5424",
        "-t",
        "myapp",
        "-i",
        "-p",
        "auth.info",
        "-f",
        file.to_str().unwrap(),
    ])
    .await;
    wait_message(&sink, "third of three").await;
    for msg in ["first of three", "second of three", "third of three"] {
        let (tag, rec, _) = find(&sink, msg);
        assert_eq!(tag, "syslog.auth.info");
        assert_eq!(rec["ident"], "myapp");
        assert_eq!(rec["pid"], pid.to_string());
        assert_eq!(rec["host"], hostname());
    }
    stop(running).await;
}

#[tokio::test]
async fn tcp_newline_framed_from_logger_with_auto_framing() {
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![syslog_input(port, "tcp")],
        vec![capture_all("out")],
        None,
    );
    wait_listening(port).await;
    let p = port.to_string();
    // `logger --tcp` ends each message with a newline unless --octet-count.
    let pid = logger(&[
        "--server",
        "127.0.0.1",
        "--port",
        &p,
        "--tcp",
        "--rfc3164",
        "-t",
        "myapp",
        "-i",
        "-p",
        "daemon.err",
        "newline framed 3164",
    ])
    .await;
    logger(&[
        "--server",
        "127.0.0.1",
        "--port",
        &p,
        "--tcp",
        "--rfc5424",
        "-t",
        "other",
        "-p",
        "local7.debug",
        "newline framed 5424",
    ])
    .await;
    logger(&[
        "--server",
        "127.0.0.1",
        "--port",
        &p,
        "--tcp",
        "--octet-count",
        "-t",
        "third",
        "-p",
        "user.notice",
        "octet framed under auto",
    ])
    .await;
    let (tag, rec, _) = wait_message(&sink, "newline framed 3164").await;
    assert_eq!(tag, "syslog.daemon.err");
    assert_eq!(rec["ident"], "myapp");
    assert_eq!(rec["pid"], pid.to_string());
    assert_eq!(rec["host"], hostname());
    let (tag, rec, _) = wait_message(&sink, "newline framed 5424").await;
    assert_eq!(tag, "syslog.local7.debug");
    assert_eq!(rec["ident"], "other");
    let (tag, _, _) = wait_message(&sink, "octet framed under auto").await;
    assert_eq!(tag, "syslog.user.notice");
    stop(running).await;
}

#[tokio::test]
async fn newline_client_against_octet_counting_only_is_refused_and_logged() {
    let (logs, _guard) = LogCapture::install();
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![syslog_input(port, "tcp").param("framing", "octet_counting")],
        vec![capture_all("out")],
        None,
    );
    wait_listening(port).await;
    let p = port.to_string();
    logger(&[
        "--server",
        "127.0.0.1",
        "--port",
        &p,
        "--tcp",
        "--rfc5424",
        "-p",
        "user.info",
        "wrong framing",
    ])
    .await;
    logs.wait_for("broken syslog framing; closing this connection")
        .await;
    assert_eq!(sink.len(), 0);
    stop(running).await;
}

async fn write_tcp(port: u16, bytes: &[u8]) {
    let mut c = connect(port).await;
    c.write_all(bytes).await.unwrap();
    c.shutdown().await.unwrap();
    // Wait for the input to close its side: everything was read.
    let mut b = [0u8; 1];
    let _ = tokio::time::timeout(TIMEOUT, c.read(&mut b)).await;
}

#[tokio::test]
async fn malformed_messages_follow_the_documented_policy() {
    let (logs, _guard) = LogCapture::install();
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![syslog_input(port, "tcp").param("tag", "sys")],
        vec![capture_all("out")],
        None,
    );
    write_tcp(
        port,
        b"garbage without pri\n<34>not a syslog header\n<999>bad pri\n\xff\xfe binary\n<13>1 - h app - - - fine\n",
    )
    .await;
    sink.wait_for(5).await;
    // Valid PRI, unreadable rest: kept under the PRI's tag.
    let (tag, rec, _) = find(&sink, "not a syslog header");
    assert_eq!(tag, "sys.auth.crit");
    assert_eq!(rec["pri"], 34);
    // No valid PRI, not syslog: kept under `.unmatched` as text.
    assert_eq!(find(&sink, "garbage without pri").0, "sys.unmatched");
    assert_eq!(find(&sink, "<999>bad pri").0, "sys.unmatched");
    assert_eq!(find(&sink, "\u{fffd}\u{fffd} binary").0, "sys.unmatched");
    assert_eq!(find(&sink, "fine").0, "sys.user.notice");
    let text = logs.text();
    assert!(
        text.contains("not a syslog message; kept under `<tag>.unmatched`"),
        "{text}"
    );
    assert!(
        text.contains("not RFC 5424 or RFC 3164 after its PRI"),
        "{text}"
    );
    stop(running).await;
}

#[tokio::test]
async fn on_error_log_skips_what_is_not_syslog() {
    let (logs, _guard) = LogCapture::install();
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![syslog_input(port, "tcp").param("on_error", "log")],
        vec![capture_all("out")],
        None,
    );
    write_tcp(port, b"just text\n<14>1 - h app - - - kept\n").await;
    sink.wait_for(1).await;
    logs.wait_for("unparsable=1").await;
    assert_eq!(sink.json().len(), 1);
    assert!(logs.text().contains("not a syslog message; skipped"));
    stop(running).await;
}

#[tokio::test]
async fn on_error_errors_sends_what_is_not_syslog_to_the_errors_label() {
    let sink = Sink::default();
    let errors = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone()), ("errors", errors.clone())]),
        vec![syslog_input(port, "tcp").param("on_error", "errors")],
        vec![capture_all("out")],
        Some("errors"),
    );
    write_tcp(port, b"just text\n<14>1 - h app - - - kept\n").await;
    let rejected = errors.wait_for(1).await;
    sink.wait_for(1).await;
    assert_eq!(find(&sink, "kept").0, "syslog.user.info");
    let (tag, e) = &rejected[0];
    assert_eq!(tag, "syslog.unmatched");
    let rec = e.record.to_map();
    assert_eq!(rec["message"], "just text");
    assert!(rec["_error"]
        .as_str()
        .unwrap()
        .contains("not a syslog message"));
    stop(running).await;
}

#[tokio::test]
async fn oversized_and_multiline_octet_counted_frames() {
    let (logs, _guard) = LogCapture::install();
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![syslog_input(port, "tcp").param("max_message_size", ulog_engine::Value::Size(60))],
        vec![capture_all("out")],
        None,
    );
    let big = format!("<13>1 - h app - - - {}", "x".repeat(100));
    let multi = "<13>1 - h app - - - line one\nline two";
    let stream = format!(
        "{} {big}{} {multi}\n<13>1 - h app - - - after\n",
        big.len(),
        multi.len()
    );
    write_tcp(port, stream.as_bytes()).await;
    sink.wait_for(2).await;
    assert_eq!(find(&sink, "line one\nline two").0, "syslog.user.notice");
    find(&sink, "after");
    assert_eq!(sink.len(), 2);
    logs.wait_for("oversized=1").await;
    stop(running).await;
}

#[tokio::test]
async fn tls_with_a_rustls_client() {
    let certs = test_certs();
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![syslog_input(port, "tls")
            .param("tls_cert_path", certs.cert.to_str().unwrap())
            .param("tls_key_path", certs.key.to_str().unwrap())],
        vec![capture_all("out")],
        None,
    );
    let mut c = connect_tls(port, &certs.ca).await;
    let msgs = [
        "<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\"] An application event",
        "<86>1 2024-05-01T10:00:00+02:00 web sshd 4242 - - Accepted publickey",
    ];
    let mut frames = String::new();
    for m in msgs {
        frames.push_str(&format!("{} {m}", m.len()));
    }
    c.write_all(frames.as_bytes()).await.unwrap();
    c.shutdown().await.unwrap();
    sink.wait_for(2).await;
    let (tag, rec, time) = find(&sink, "An application event");
    assert_eq!(tag, "syslog.local4.notice");
    assert_eq!(rec["host"], "mymachine.example.com");
    assert_eq!(rec["ident"], "evntslog");
    assert_eq!(rec["msgid"], "ID47");
    assert_eq!(rec["structured_data"]["exampleSDID@32473"]["iut"], "3");
    assert_eq!(
        (time.secs(), time.subsec_nanos()),
        (1_065_910_455, 3_000_000)
    );
    let (tag, rec, time) = find(&sink, "Accepted publickey");
    assert_eq!(tag, "syslog.authpriv.info");
    assert_eq!(rec["pid"], "4242");
    assert_eq!(time.secs(), 1_714_550_400);
    stop(running).await;
}

#[tokio::test]
async fn protocol_and_tls_parameters_are_checked() {
    let r = registry(&[]);
    let build = |node: NodeSpec| {
        ulog_engine::Pipeline::build(
            &ulog_engine::spec::PipelineSpec {
                inputs: vec![node],
                ..Default::default()
            },
            &r,
            ulog_engine::BuildOptions::default(),
        )
        .err()
        .map(|e| format!("{e:?}"))
        .unwrap_or_default()
    };
    assert!(build(syslog_input(1, "tls")).contains("tls_cert_path"));
    assert!(build(
        syslog_input(1, "udp")
            .param("tls_cert_path", "c")
            .param("tls_key_path", "k")
    )
    .contains("only used with"));
    assert!(build(syslog_input(1, "udp").param("tag", "bad tag")).contains("tag"));
    assert!(build(syslog_input(1, "udp").param("time_zone", "Mars")).contains("time_zone"));
    assert_eq!(build(syslog_input(1, "tcp")), "");
}
