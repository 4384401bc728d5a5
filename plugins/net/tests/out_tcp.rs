//! `output tcp` in a real pipeline, writing to real TCP servers: a plain
//! `TcpListener` in the test, and another pipeline's `tcp` input.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;
use ulog_engine::spec::{MatchSpec, NodeSpec};
use ulog_engine::{Batch, Event, EventTime, Record, Tag};

fn tcp_output(port: u16) -> NodeSpec {
    NodeSpec::new("tcp")
        .param("id", "out")
        .param("port", port as i64)
        .param("retry_wait", Duration::from_millis(50))
        .param("retry_max_wait", Duration::from_millis(200))
}

fn to(node: NodeSpec) -> Vec<MatchSpec> {
    vec![MatchSpec {
        patterns: vec!["**".into()],
        outputs: vec![node],
    }]
}

fn raw(text: &'static str) -> Event {
    Event::new(
        EventTime::from_secs_nanos(1_700_000_000, 0),
        Record::from_json_bytes(Bytes::from_static(text.as_bytes())).unwrap(),
    )
}

fn batch(tag: &str, events: Vec<Event>) -> Batch {
    Batch::new(Tag::parse(tag).unwrap(), events)
}

/// Reads `n` lines from the first connection to `listener`.
async fn read_lines(listener: &TcpListener, n: usize) -> Vec<String> {
    let (s, _) = tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .expect("no connection")
        .unwrap();
    let mut lines = BufReader::new(s).lines();
    let mut out = Vec::new();
    while out.len() < n {
        let line = tokio::time::timeout(TIMEOUT, lines.next_line())
            .await
            .expect("timed out reading lines")
            .unwrap()
            .expect("connection closed early");
        out.push(line);
    }
    out
}

#[tokio::test]
async fn json_lines_keep_the_bytes_and_add_tag_and_time() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let running = start(
        &registry(&[]),
        vec![],
        to(tcp_output(port)
            .param("tag_key", "tag")
            .param("time_key", "time")
            .param("time_format", "unix")),
        None,
    );
    let mut em = running.emitter();
    em.emit(batch("app.a", vec![raw("{\"x\" : 1}"), raw("{}")]))
        .await
        .unwrap();
    let lines = read_lines(&listener, 2).await;
    assert_eq!(
        lines,
        [
            r#"{"x" : 1,"tag":"app.a","time":1700000000}"#,
            r#"{"tag":"app.a","time":1700000000}"#
        ]
    );
    stop(running).await;
}

#[tokio::test]
async fn msgpack_stream_of_maps() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let running = start(
        &registry(&[]),
        vec![],
        to(tcp_output(port).param("format", "msgpack")),
        None,
    );
    let mut em = running.emitter();
    em.emit(batch(
        "m",
        vec![raw("{\"a\":[1,\"b\"]}"), raw("{\"c\":null}")],
    ))
    .await
    .unwrap();
    let (mut s, _) = tokio::time::timeout(TIMEOUT, listener.accept())
        .await
        .unwrap()
        .unwrap();
    let mut buf = Vec::new();
    let mut values = Vec::new();
    while values.len() < 2 {
        let mut chunk = [0u8; 256];
        let n = tokio::time::timeout(TIMEOUT, s.read(&mut chunk))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "closed early");
        buf.extend_from_slice(&chunk[..n]);
        let mut rd = &buf[..];
        values.clear();
        while let Ok(v) = rmpv::decode::read_value(&mut rd) {
            values.push(ulog_parsers::msgpack::to_json(v));
        }
    }
    assert_eq!(values, [json!({"a":[1,"b"]}), json!({"c":null})]);
    stop(running).await;
}

#[tokio::test]
async fn raw_lines_and_records_without_the_field_go_to_errors() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let errors = Sink::default();
    let running = start(
        &registry(&[("errors", errors.clone())]),
        vec![],
        to(tcp_output(port)
            .param("format", "raw")
            .param("message_key", "log")),
        Some("errors"),
    );
    let mut em = running.emitter();
    em.emit(batch(
        "r",
        vec![
            raw("{\"log\":\"GET /index.html 200\",\"n\":1}"),
            raw("{\"other\":1}"),
            raw("{\"log\":\"tab\\there\"}"),
        ],
    ))
    .await
    .unwrap();
    let lines = read_lines(&listener, 2).await;
    assert_eq!(lines, ["GET /index.html 200", "tab\there"]);
    let rejected = errors.wait_for(1).await;
    let rec = rejected[0].1.record.to_map();
    assert_eq!(rec["other"], json!(1));
    assert!(rec["_error"].as_str().unwrap().contains("no `log` field"));
    stop(running).await;
}

#[tokio::test]
async fn reconnects_after_the_server_restarts() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let running = start(&registry(&[]), vec![], to(tcp_output(port)), None);
    let mut em = running.emitter();
    em.emit(batch("t", vec![raw("{\"n\":1}")])).await.unwrap();
    assert_eq!(read_lines(&listener, 1).await, [r#"{"n":1}"#]);
    // The server goes away: its connection and its listener close.
    drop(listener);
    tokio::time::sleep(Duration::from_millis(100)).await;
    em.emit(batch("t", vec![raw("{\"n\":2}")])).await.unwrap();
    // While nothing listens the output retries.
    let deadline = std::time::Instant::now() + TIMEOUT;
    while running.metrics().node("out").unwrap().retries < 2 {
        assert!(std::time::Instant::now() < deadline, "no retries");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The server comes back on the same port and gets the batch.
    let listener = TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    assert_eq!(read_lines(&listener, 1).await, [r#"{"n":2}"#]);
    let report = stop(running).await;
    let out = report.metrics.node("out").unwrap();
    assert_eq!(out.events_out, 2);
    assert_eq!(out.events_failed, 0);
}

#[tokio::test]
async fn a_dead_destination_is_retried_then_sent_to_errors() {
    let (logs, _guard) = LogCapture::install();
    let port = free_tcp_port();
    let errors = Sink::default();
    let running = start(
        &registry(&[("errors", errors.clone())]),
        vec![],
        to(tcp_output(port).param("retry_max_attempts", 3i64)),
        Some("errors"),
    );
    let mut em = running.emitter();
    em.emit(batch("t", vec![raw("{\"n\":1}")])).await.unwrap();
    let rejected = errors.wait_for(1).await;
    let reason = rejected[0].1.record.to_map()["_error"].to_string();
    assert!(reason.contains("gave up after 3 attempts"), "{reason}");
    assert!(
        reason.contains(&format!("connecting to 127.0.0.1:{port}")),
        "{reason}"
    );
    assert!(logs.text().contains("write failed; will retry"));
    stop(running).await;
}

#[tokio::test]
async fn ulog_to_ulog_over_tcp() {
    for framing in ["newline", "msgpack"] {
        let sink = Sink::default();
        let port = free_tcp_port();
        let receiver = start(
            &registry(&[("got", sink.clone())]),
            vec![NodeSpec::new("tcp")
                .param("listen", format!("127.0.0.1:{port}"))
                .param("tag", "received")
                .param("framing", framing)],
            vec![capture_all("got")],
            None,
        );
        wait_listening(port).await;
        let format = if framing == "msgpack" {
            "msgpack"
        } else {
            "json"
        };
        let sender = start(
            &registry(&[]),
            vec![],
            to(tcp_output(port)
                .param("format", format)
                .param("tag_key", "origin")),
            None,
        );
        let mut em = sender.emitter();
        let mut sent = Vec::new();
        for b in 0..10 {
            let events: Vec<Event> = (0..100)
                .map(|i| {
                    let mut r = Record::new();
                    r.insert("b", json!(b));
                    r.insert("i", json!(i));
                    r.insert("text", json!("héllo \"world\"\n"));
                    Event::new(EventTime::now(), r)
                })
                .collect();
            for i in 0..100 {
                sent.push(json!({"b": b, "i": i, "text": "héllo \"world\"\n", "origin": "app.x"}));
            }
            em.emit(batch("app.x", events)).await.unwrap();
        }
        sink.wait_for(1000).await;
        assert_eq!(sink.json(), sent, "framing {framing}");
        assert!(sink.events().iter().all(|(t, _)| t == "received"));
        stop(sender).await;
        stop(receiver).await;
    }
}

#[tokio::test]
async fn tls_from_output_to_input() {
    let certs = test_certs();
    let sink = Sink::default();
    let port = free_tcp_port();
    let receiver = start(
        &registry(&[("got", sink.clone())]),
        vec![NodeSpec::new("tcp")
            .param("listen", format!("127.0.0.1:{port}"))
            .param("tag", "secure")
            .param("tls_cert_path", certs.cert.to_str().unwrap())
            .param("tls_key_path", certs.key.to_str().unwrap())],
        vec![capture_all("got")],
        None,
    );
    wait_listening(port).await;
    let sender = start(
        &registry(&[]),
        vec![],
        to(tcp_output(port)
            .param("host", "localhost")
            .param("tls", true)
            .param("tls_ca_path", certs.ca.to_str().unwrap())),
        None,
    );
    let mut em = sender.emitter();
    em.emit(batch("s", vec![raw("{\"k\":1}"), raw("{\"k\":2}")]))
        .await
        .unwrap();
    em.emit(batch("s", vec![raw("{\"k\":3}")])).await.unwrap();
    sink.wait_for(3).await;
    assert_eq!(
        sink.json(),
        [json!({"k":1}), json!({"k":2}), json!({"k":3})]
    );
    stop(sender).await;
    stop(receiver).await;
}

#[tokio::test]
async fn tls_with_an_untrusted_certificate_is_retried_not_sent() {
    let (logs, _guard) = LogCapture::install();
    let certs = test_certs();
    let other = test_certs();
    let sink = Sink::default();
    let port = free_tcp_port();
    let receiver = start(
        &registry(&[("got", sink.clone())]),
        vec![NodeSpec::new("tcp")
            .param("listen", format!("127.0.0.1:{port}"))
            .param("tag", "secure")
            .param("tls_cert_path", certs.cert.to_str().unwrap())
            .param("tls_key_path", certs.key.to_str().unwrap())],
        vec![capture_all("got")],
        None,
    );
    wait_listening(port).await;
    let sender = start(
        &registry(&[]),
        vec![],
        to(tcp_output(port)
            .param("host", "localhost")
            .param("tls", true)
            .param("tls_ca_path", other.ca.to_str().unwrap())
            .param("retry_max_attempts", 2i64)),
        None,
    );
    let mut em = sender.emitter();
    em.emit(batch("s", vec![raw("{\"k\":1}")])).await.unwrap();
    let text = logs.wait_for("TLS handshake with").await;
    assert!(text.contains("write failed; will retry"), "{text}");
    assert_eq!(sink.len(), 0);
    stop(sender).await;
    stop(receiver).await;
}
