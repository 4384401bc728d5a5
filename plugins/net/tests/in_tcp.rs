//! `input tcp` in a real pipeline, fed by real TCP (and TLS) clients.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ulog_engine::spec::NodeSpec;
use ulog_engine::{Record, Value};

fn tcp_input(port: u16) -> NodeSpec {
    NodeSpec::new("tcp")
        .param("id", "in")
        .param("listen", format!("127.0.0.1:{port}"))
        .param("tag", "app.tcp")
}

/// Lets the input read what was written so far as a separate read.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(30)).await;
}

#[tokio::test]
async fn json_lines_split_across_writes_with_crlf_and_no_final_newline() {
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![tcp_input(port)],
        vec![capture_all("out")],
        None,
    );
    let mut c = connect(port).await;
    c.write_all(b"{\"a\":1}\r\n{\"b\":").await.unwrap();
    pause().await;
    c.write_all(b" [2, 3]}\n  \n{\"c\"").await.unwrap();
    pause().await;
    c.write_all(b":\"x\"}").await.unwrap();
    drop(c);
    let events = sink.wait_for(3).await;
    assert_eq!(
        sink.json(),
        [json!({"a":1}), json!({"b":[2,3]}), json!({"c":"x"})]
    );
    for (tag, e) in &events {
        assert_eq!(tag, "app.tcp");
        assert!(matches!(e.record, Record::Raw(_)), "JSON lines stay raw");
    }
    // The bytes are the ones sent (the `\r` is not part of the record).
    let mut out = Vec::new();
    events[1].1.record.write_json(&mut out);
    assert_eq!(out, b"{\"b\": [2, 3]}");
    let report = stop(running).await;
    assert_eq!(report.metrics.node("in").unwrap().events_out, 3);
}

#[tokio::test]
async fn one_read_becomes_one_batch() {
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![tcp_input(port)],
        vec![capture_all("out")],
        None,
    );
    let mut text = Vec::new();
    for i in 0..2000 {
        text.extend_from_slice(format!("{{\"i\":{i}}}\n").as_bytes());
    }
    let mut c = connect(port).await;
    c.write_all(&text).await.unwrap();
    drop(c);
    sink.wait_for(2000).await;
    let batches = sink.batches();
    // ~20 KB arrive in a handful of reads, not one batch per line.
    assert!(
        batches.len() <= 20,
        "{} batches for 2000 lines",
        batches.len()
    );
    let got: Vec<i64> = sink
        .json()
        .iter()
        .map(|v| v["i"].as_i64().unwrap())
        .collect();
    assert_eq!(got, (0..2000).collect::<Vec<_>>());
    stop(running).await;
}

#[tokio::test]
async fn oversized_line_is_skipped_counted_and_the_stream_resyncs() {
    let (logs, _guard) = LogCapture::install();
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![tcp_input(port).param("max_line_size", Value::Size(64))],
        vec![capture_all("out")],
        None,
    );
    let mut c = connect(port).await;
    c.write_all(b"{\"n\":1}\n{\"big\":\"").await.unwrap();
    pause().await;
    // The oversized line arrives over several reads, longer than the limit
    // long before its newline.
    for _ in 0..5 {
        c.write_all(&[b'x'; 50]).await.unwrap();
        pause().await;
    }
    c.write_all(b"\"}\n{\"n\":2}\n").await.unwrap();
    // And one oversized line inside a single read.
    c.write_all(format!("{{\"big\":\"{}\"}}\n{{\"n\":3}}\n", "y".repeat(100)).as_bytes())
        .await
        .unwrap();
    drop(c);
    sink.wait_for(3).await;
    let text = logs
        .wait_for("connection closed by the client; some lines could not become events")
        .await;
    assert_eq!(
        sink.json(),
        [json!({"n":1}), json!({"n":2}), json!({"n":3})]
    );
    assert!(
        text.contains("input longer than the maximum size; skipped"),
        "{text}"
    );
    assert!(text.contains("oversized=2"), "{text}");
    stop(running).await;
    assert!(
        logs.text()
            .contains("input stopped; some input could not become events"),
        "the totals are logged at stop"
    );
}

#[tokio::test]
async fn malformed_json_is_logged_and_skipped_with_on_error_log() {
    let (logs, _guard) = LogCapture::install();
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![tcp_input(port).param("on_error", "log")],
        vec![capture_all("out")],
        None,
    );
    let mut c = connect(port).await;
    c.write_all(b"{\"ok\":1}\n{\"broken\":\n[1,2]\nnot json at all\n{\"ok\":2}\n")
        .await
        .unwrap();
    drop(c);
    sink.wait_for(2).await;
    let text = logs.wait_for("unparsable=3").await;
    assert_eq!(sink.json(), [json!({"ok":1}), json!({"ok":2})]);
    assert!(
        text.contains("input could not be parsed; skipped"),
        "{text}"
    );
    assert!(
        text.contains("not json at all"),
        "the line is shown: {text}"
    );
    stop(running).await;
}

#[tokio::test]
async fn malformed_json_is_kept_as_message_with_on_error_keep() {
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![tcp_input(port).param("on_error", "keep")],
        vec![capture_all("out")],
        None,
    );
    let mut c = connect(port).await;
    c.write_all(b"{\"ok\":1}\n{\"broken\":\r\nplain text\n")
        .await
        .unwrap();
    drop(c);
    sink.wait_for(3).await;
    assert_eq!(
        sink.json(),
        [
            json!({"ok":1}),
            json!({"message":"{\"broken\":"}),
            json!({"message":"plain text"})
        ]
    );
    stop(running).await;
}

#[tokio::test]
async fn malformed_json_goes_to_the_errors_label_with_on_error_errors() {
    let sink = Sink::default();
    let errors = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone()), ("errors", errors.clone())]),
        vec![tcp_input(port).param("on_error", "errors")],
        vec![capture_all("out")],
        Some("errors"),
    );
    let mut c = connect(port).await;
    c.write_all(b"{\"ok\":1}\n{\"broken\":\n{\"ok\":2}\n")
        .await
        .unwrap();
    drop(c);
    sink.wait_for(2).await;
    let rejected = errors.wait_for(1).await;
    assert_eq!(sink.json(), [json!({"ok":1}), json!({"ok":2})]);
    assert_eq!(rejected.len(), 1);
    let (tag, e) = &rejected[0];
    assert_eq!(tag, "app.tcp");
    let rec = e.record.to_map();
    assert_eq!(rec["message"], json!("{\"broken\":"));
    assert_eq!(rec["_error_node"], json!("in"));
    assert!(
        rec["_error"].as_str().unwrap().contains("format json"),
        "{rec:?}"
    );
    stop(running).await;
}

#[tokio::test]
async fn other_formats_come_from_the_parsers_crate() {
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![tcp_input(port)
            .param("format", "none")
            .param("message_key", "log")],
        vec![capture_all("out")],
        None,
    );
    let mut c = connect(port).await;
    c.write_all(b"hello world\r\nsecond line\n").await.unwrap();
    drop(c);
    sink.wait_for(2).await;
    assert_eq!(
        sink.json(),
        [json!({"log":"hello world"}), json!({"log":"second line"})]
    );
    stop(running).await;
}

#[tokio::test]
async fn source_address_key_adds_the_client_ip() {
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![tcp_input(port).param("source_address_key", "src")],
        vec![capture_all("out")],
        None,
    );
    let mut c = connect(port).await;
    c.write_all(b"{\"a\":1}\n{}\n").await.unwrap();
    drop(c);
    sink.wait_for(2).await;
    assert_eq!(
        sink.json(),
        [json!({"a":1,"src":"127.0.0.1"}), json!({"src":"127.0.0.1"})]
    );
    stop(running).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections() {
    const CONNS: usize = 50;
    const LINES: usize = 400;
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![tcp_input(port)],
        vec![capture_all("out")],
        None,
    );
    wait_listening(port).await;
    let mut clients = Vec::new();
    for c in 0..CONNS {
        clients.push(tokio::spawn(async move {
            let mut s = connect(port).await;
            for chunk in 0..4 {
                let mut text = String::new();
                for i in chunk * LINES / 4..(chunk + 1) * LINES / 4 {
                    text.push_str(&format!("{{\"c\":{c},\"i\":{i}}}\n"));
                }
                s.write_all(text.as_bytes()).await.unwrap();
                tokio::task::yield_now().await;
            }
        }));
    }
    for c in clients {
        c.await.unwrap();
    }
    sink.wait_for(CONNS * LINES).await;
    // Every line arrived once, and each connection's lines in order.
    let mut next = vec![0i64; CONNS];
    for v in sink.json() {
        let c = v["c"].as_u64().unwrap() as usize;
        assert_eq!(
            v["i"].as_i64().unwrap(),
            next[c],
            "connection {c} out of order"
        );
        next[c] += 1;
    }
    assert!(next.iter().all(|&n| n == LINES as i64));
    let report = stop(running).await;
    assert_eq!(
        report.metrics.node("in").unwrap().events_out,
        (CONNS * LINES) as u64
    );
}

#[tokio::test]
async fn shutdown_emits_what_was_already_read() {
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![tcp_input(port)],
        vec![capture_all("out")],
        None,
    );
    let mut c = connect(port).await;
    c.write_all(b"{\"a\":1}\n{\"a\":2}").await.unwrap();
    sink.wait_for(1).await;
    // The client stays connected; stopping ulog still delivers the
    // unterminated last line, which is complete JSON.
    let report = stop(running).await;
    assert_eq!(sink.json(), [json!({"a":1}), json!({"a":2})]);
    assert_eq!(report.lost, 0);
    // And the connection is closed.
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(TIMEOUT, c.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)));
}

fn msgpack_map(v: &serde_json::Value) -> Vec<u8> {
    let mut out = Vec::new();
    ulog_parsers::msgpack::write_json(&mut out, v);
    out
}

#[tokio::test]
async fn msgpack_values_split_across_reads() {
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![tcp_input(port).param("framing", "msgpack")],
        vec![capture_all("out")],
        None,
    );
    let values = [
        json!({"a": 1, "s": "x".repeat(300)}),
        json!({"nested": {"list": [1, 2.5, null, true]}}),
        json!({"big": "y".repeat(70_000)}),
    ];
    let mut stream = Vec::new();
    for v in &values {
        stream.extend_from_slice(&msgpack_map(v));
    }
    let mut c = connect(port).await;
    // Cut the stream at awkward places: inside headers and payloads.
    let cuts = [1, 2, 3, 150, 310, 311, 40_000, stream.len()];
    let mut from = 0;
    for to in cuts {
        c.write_all(&stream[from..to]).await.unwrap();
        from = to;
        pause().await;
    }
    drop(c);
    sink.wait_for(3).await;
    assert_eq!(sink.json(), values);
    stop(running).await;
}

#[tokio::test]
async fn msgpack_garbage_closes_only_that_connection() {
    let (logs, _guard) = LogCapture::install();
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![tcp_input(port)
            .param("framing", "msgpack")
            .param("on_error", "log")],
        vec![capture_all("out")],
        None,
    );
    let mut bad = connect(port).await;
    let mut good = connect(port).await;
    good.write_all(&msgpack_map(&json!({"good": 1})))
        .await
        .unwrap();
    let mut junk = msgpack_map(&json!({"bad": 1}));
    junk.extend_from_slice(&[0xc1, 0x00, 0x01]);
    junk.extend_from_slice(&msgpack_map(&json!({"bad": 2})));
    bad.write_all(&junk).await.unwrap();
    // The bad connection is closed by the input.
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(TIMEOUT, bad.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // The good one still works.
    good.write_all(&msgpack_map(&json!({"good": 2})))
        .await
        .unwrap();
    // A non-map value is skipped, not fatal.
    good.write_all(&msgpack_map(&json!([1, 2]))).await.unwrap();
    good.write_all(&msgpack_map(&json!({"good": 3})))
        .await
        .unwrap();
    drop(good);
    sink.wait_for(4).await;
    let mut got = sink.json();
    got.sort_by_key(|v| v.to_string());
    assert_eq!(
        got,
        [
            json!({"bad": 1}),
            json!({"good": 1}),
            json!({"good": 2}),
            json!({"good": 3})
        ]
    );
    let text = logs
        .wait_for("a msgpack array is not a record (a map)")
        .await;
    assert!(
        text.contains("input could not be parsed; skipped"),
        "{text}"
    );
    assert!(
        text.contains("not a msgpack stream; closing this connection"),
        "{text}"
    );
    assert!(text.contains("invalid msgpack marker 0xc1"), "{text}");
    stop(running).await;
}

#[tokio::test]
async fn msgpack_stream_cut_mid_value_is_reported() {
    let (logs, _guard) = LogCapture::install();
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![tcp_input(port).param("framing", "msgpack")],
        vec![capture_all("out")],
        None,
    );
    let mut c = connect(port).await;
    let mut bytes = msgpack_map(&json!({"whole": 1}));
    let second = msgpack_map(&json!({"cut": "z".repeat(50)}));
    bytes.extend_from_slice(&second[..20]);
    c.write_all(&bytes).await.unwrap();
    drop(c);
    sink.wait_for(1).await;
    logs.wait_for("connection ended in the middle of a msgpack value")
        .await;
    assert_eq!(sink.json(), [json!({"whole": 1})]);
    stop(running).await;
}

#[tokio::test]
async fn tls_round_trip() {
    let (logs, _guard) = LogCapture::install();
    let certs = test_certs();
    let sink = Sink::default();
    let port = free_tcp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![tcp_input(port)
            .param("tls_cert_path", certs.cert.to_str().unwrap())
            .param("tls_key_path", certs.key.to_str().unwrap())],
        vec![capture_all("out")],
        None,
    );
    let mut c = connect_tls(port, &certs.ca).await;
    c.write_all(b"{\"secret\":1}\n{\"secret\":").await.unwrap();
    c.flush().await.unwrap();
    pause().await;
    c.write_all(b"2}\n").await.unwrap();
    c.shutdown().await.unwrap();
    sink.wait_for(2).await;
    assert_eq!(sink.json(), [json!({"secret":1}), json!({"secret":2})]);
    // A client speaking plain TCP to the TLS port gets nothing in.
    let mut plain = connect(port).await;
    plain.write_all(b"{\"plain\":1}\n").await.unwrap();
    logs.wait_for("TLS handshake failed").await;
    assert_eq!(sink.len(), 2);
    stop(running).await;
}

#[tokio::test]
async fn bad_parameters_are_refused_when_building() {
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
    assert!(build(NodeSpec::new("tcp")).contains("tag"));
    assert!(build(NodeSpec::new("tcp").param("tag", "bad tag!")).contains("has the character"));
    assert!(build(tcp_input(1).param("max_line_size", Value::Size(0))).contains("max_line_size"));
    assert!(build(tcp_input(1).param("tls_cert_path", "c.pem")).contains("tls_key_path"));
    assert!(build(tcp_input(1).param("framing", "newlines")).contains("did you mean"));
    // Nothing is bound while building: the same port twice is fine.
    assert_eq!(build(tcp_input(1)), "");
}
