//! `input http` against a real hyper client on loopback.

mod common;

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use hyper::body::{Body, Frame};
use hyper::{Method, StatusCode};
use serde_json::{json, Value as Json};
use ulog_engine::spec::NodeSpec;
use ulog_engine::{EventTime, Value};

/// An http input on a free port plus the sink, started.
async fn server(
    output: NodeSpec,
    extra: &[(&str, Value)],
) -> (u16, ulog_engine::Running, Captures, std::sync::Arc<Gate>) {
    let port = free_port();
    let mut input = NodeSpec::new("http").param("listen", format!("127.0.0.1:{port}"));
    for (k, v) in extra {
        input = input.param(*k, v.clone());
    }
    let (registry, captures, gate) = http_registry();
    let running = run(&pipeline(vec![input], output), &registry);
    wait_listening(port).await;
    (port, running, captures, gate)
}

fn records(captured: &[(String, ulog_engine::Event)]) -> Vec<(String, Json)> {
    captured
        .iter()
        .map(|(t, e)| (t.clone(), Json::Object(e.record.to_map().into_owned())))
        .collect()
}

#[tokio::test]
async fn every_body_kind_becomes_events_tagged_from_the_path() {
    let (port, running, captures, _) = server(NodeSpec::new("capture"), &[]).await;
    let c = client();
    let url = |tag: &str| format!("http://127.0.0.1:{port}/{tag}");
    let mut msgpack_map = Vec::new();
    ulog_parsers::msgpack::write_json(&mut msgpack_map, &json!({"kind": "msgpack-map"}));
    let mut msgpack_array = Vec::new();
    ulog_parsers::msgpack::write_json(
        &mut msgpack_array,
        &json!([{"kind": "msgpack-array", "n": 1}, {"kind": "msgpack-array", "n": 2}]),
    );
    let form_msgpack: String = msgpack_map.iter().map(|b| format!("%{b:02X}")).collect();
    let cases: Vec<(&str, &str, Vec<u8>, usize)> = vec![
        (
            "object",
            "application/json",
            br#"{"kind":"object"}"#.to_vec(),
            1,
        ),
        (
            "array",
            "application/json",
            br#"[{"kind":"array","n":1},{"kind":"array","n":2}]"#.to_vec(),
            2,
        ),
        (
            "ndjson",
            "application/x-ndjson",
            b"{\"kind\":\"ndjson\"}\n{\"kind\":\"ndjson\"}\n".to_vec(),
            2,
        ),
        (
            "lines",
            "application/json",
            b"{\"kind\":\"lines\"}\n{\"kind\":\"lines\"}".to_vec(),
            2,
        ),
        ("mp.map", "application/msgpack", msgpack_map.clone(), 1),
        ("mp.array", "application/x-msgpack", msgpack_array, 2),
        (
            "form.json",
            "application/x-www-form-urlencoded",
            b"json=%7B%22kind%22%3A%22form%22%7D".to_vec(),
            1,
        ),
        (
            "form.msgpack",
            "application/x-www-form-urlencoded",
            format!("msgpack={form_msgpack}").into_bytes(),
            1,
        ),
    ];
    let mut expected = 0;
    for (tag, ct, body, n) in &cases {
        let a = post(&c, &url(tag), ct, body.clone()).await;
        assert_eq!(a.status, StatusCode::OK, "{tag}: {}", a.body);
        assert_eq!(a.body, "", "fluentd answers 200 with an empty body");
        expected += n;
    }
    wait_for("every event", || captures.count("capture") == expected).await;
    stop(running).await;
    let got = records(&captures.get("capture"));
    let by_tag = |tag: &str| -> Vec<Json> {
        got.iter()
            .filter(|(t, _)| t == tag)
            .map(|(_, r)| r.clone())
            .collect()
    };
    assert_eq!(by_tag("object"), [json!({"kind": "object"})]);
    assert_eq!(
        by_tag("array"),
        [
            json!({"kind": "array", "n": 1}),
            json!({"kind": "array", "n": 2})
        ]
    );
    assert_eq!(by_tag("ndjson").len(), 2);
    assert_eq!(
        by_tag("lines"),
        [json!({"kind": "lines"}), json!({"kind": "lines"})]
    );
    assert_eq!(by_tag("mp.map"), [json!({"kind": "msgpack-map"})]);
    assert_eq!(
        by_tag("mp.array"),
        [
            json!({"kind": "msgpack-array", "n": 1}),
            json!({"kind": "msgpack-array", "n": 2})
        ]
    );
    assert_eq!(by_tag("form.json"), [json!({"kind": "form"})]);
    assert_eq!(by_tag("form.msgpack"), [json!({"kind": "msgpack-map"})]);
}

#[tokio::test]
async fn one_request_is_one_batch_and_raw_text_is_kept() {
    let (port, running, captures, gate) = server(NodeSpec::new("gated"), &[]).await;
    gate.open(100);
    let body = r#"[ {"b" : 2,"a":1}, {"x":"é"}, {} ]"#;
    let a = post(
        &client(),
        &format!("http://127.0.0.1:{port}/raw"),
        "application/json",
        body,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    wait_for("three events", || captures.count("gated") == 3).await;
    let report = stop(running).await;
    assert_eq!(
        gate.entered(),
        1,
        "three records of one request make one batch"
    );
    let got = captures.get("gated");
    assert_eq!(got[0].1.record.to_json_string(), r#"{"b" : 2,"a":1}"#);
    assert_eq!(got[1].1.record.to_json_string(), r#"{"x":"é"}"#);
    assert_eq!(report.metrics.node("http#1").unwrap().events_in, 3);
}

#[tokio::test]
async fn bad_tags_and_malformed_bodies_get_400_and_emit_nothing() {
    let (port, running, captures, _) = server(NodeSpec::new("capture"), &[]).await;
    let c = client();
    let base = format!("http://127.0.0.1:{port}");
    for (path, reason) in [
        ("/a/b", "'/'"),
        ("/", "tag is empty"),
        ("/a..b", "empty part"),
        ("/a%20b", "'%'"),
    ] {
        let a = post(
            &c,
            &format!("{base}{path}"),
            "application/json",
            r#"{"a":1}"#,
        )
        .await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{path}");
        assert!(
            a.body.contains("invalid tag") && a.body.contains(reason),
            "{path}: {}",
            a.body
        );
        assert_eq!(a.body.lines().count(), 1);
    }
    for (ct, body, reason) in [
        ("application/json", &br#"{"a":"#[..], "invalid JSON"),
        ("application/json", br#"[{"a":1}, 42]"#, "element 2"),
        ("application/x-ndjson", b"{\"a\":1}\n{\"a\":\n", "line 2"),
        ("application/msgpack", &[0x92, 0x01][..], "invalid msgpack"),
        (
            "application/x-www-form-urlencoded",
            b"other=1",
            "`json` or `msgpack`",
        ),
        ("application/json", b"", "empty"),
    ] {
        let a = post(&c, &format!("{base}/bad"), ct, body.to_vec()).await;
        assert_eq!(a.status, StatusCode::BAD_REQUEST, "{ct} {body:?}");
        assert!(a.body.contains(reason), "{reason}: {}", a.body);
    }
    // The time query parameter must be a number.
    let a = post(
        &c,
        &format!("{base}/t?time=yesterday"),
        "application/json",
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
    let a = post(
        &c,
        &format!("{base}/good"),
        "application/json",
        r#"{"ok":true}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    wait_for("the good event", || captures.count("capture") == 1).await;
    let report = stop(running).await;
    // Only the good request reached the pipeline; the NDJSON body whose first
    // line was fine did not half-emit.
    assert_eq!(report.metrics.node("http#1").unwrap().events_in, 1);
    assert_eq!(captures.get("capture")[0].0, "good");
}

/// A body sent in chunks with no Content-Length (chunked encoding).
struct Chunks(Vec<Bytes>);

impl Body for Chunks {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Poll::Ready(if self.0.is_empty() {
            None
        } else {
            Some(Ok(Frame::data(self.0.remove(0))))
        })
    }
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let (port, running, captures, _) = server(
        NodeSpec::new("capture"),
        &[("body_limit", Value::Size(1024))],
    )
    .await;
    let url = format!("http://127.0.0.1:{port}/big");
    let big = format!(r#"{{"pad":"{}"}}"#, "x".repeat(2000));
    // Declared up front.
    let a = post(&client(), &url, "application/json", big.clone()).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(a.body.contains("body_limit (1024 bytes)"), "{}", a.body);
    // Streamed without a length: caught while reading.
    let chunked: hyper_util::client::legacy::Client<_, Chunks> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let req = hyper::Request::post(&url)
        .header("content-type", "application/json")
        .body(Chunks(
            big.as_bytes()
                .chunks(300)
                .map(Bytes::copy_from_slice)
                .collect(),
        ))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), chunked.request(req))
        .await
        .unwrap()
        .unwrap();
    assert!(resp.headers().get("content-length").is_some());
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // A small gzip body that inflates past the limit.
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    std::io::Write::write_all(&mut gz, big.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    assert!(gz.len() < 1024);
    let a = send(
        &client(),
        Method::POST,
        &url,
        &[
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ],
        gz,
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Within the limit, gzip or not, is fine.
    let mut small = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut small, br#"{"zipped":1}"#).unwrap();
    let a = send(
        &client(),
        Method::POST,
        &url,
        &[("content-encoding", "gzip")],
        small.finish().unwrap(),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    wait_for("the gzip event", || captures.count("capture") == 1).await;
    let report = stop(running).await;
    assert_eq!(report.metrics.node("http#1").unwrap().events_in, 1);
}

/// An http input in front of the `gated` output with a one-batch queue;
/// `shutdown_timeout` bounds how long stopping waits for that output.
async fn gated_server(
    shutdown_timeout: Duration,
) -> (u16, ulog_engine::Running, Captures, std::sync::Arc<Gate>) {
    let port = free_port();
    let (registry, captures, gate) = http_registry();
    let spec = pipeline(
        vec![NodeSpec::new("http").param("listen", format!("127.0.0.1:{port}"))],
        NodeSpec::new("gated").param("queue_batches", 1i64),
    );
    let running = run_with_timeout(&spec, &registry, shutdown_timeout);
    wait_listening(port).await;
    (port, running, captures, gate)
}

/// Posts `{"n":1}`, which the gated output takes and holds, and `{"n":2}`,
/// which waits in its one-batch queue — both answered 200 — then `{"n":3}`,
/// which the pipeline cannot accept yet: returns that request, pending.
async fn fill_the_queue(port: u16, gate: &Gate) -> tokio::task::JoinHandle<Answer> {
    let url = format!("http://127.0.0.1:{port}/queued");
    let c = client();
    assert_eq!(
        post(&c, &url, "application/json", r#"{"n":1}"#)
            .await
            .status,
        StatusCode::OK
    );
    wait_for("the output to hold 1", || gate.entered() == 1).await;
    assert_eq!(
        post(&c, &url, "application/json", r#"{"n":2}"#)
            .await
            .status,
        StatusCode::OK
    );
    let c2 = client();
    tokio::spawn(async move { post(&c2, &url, "application/json", r#"{"n":3}"#).await })
}

fn numbers(captures: &Captures) -> Vec<i64> {
    captures
        .get("gated")
        .iter()
        .map(|(_, e)| e.record.to_map()["n"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn the_answer_waits_until_the_pipeline_accepted_the_events() {
    let (port, running, captures, gate) = gated_server(Duration::from_secs(10)).await;
    let mut pending = fill_the_queue(port, &gate).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), &mut pending)
            .await
            .is_err(),
        "the POST must not be answered before the pipeline takes the events"
    );
    // The output takes 2; 3 now fits in the queue and is answered.
    gate.open(1);
    let answer = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .expect("answered once accepted")
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    gate.open(100);
    wait_for("all three", || captures.count("gated") == 3).await;
    stop(running).await;
    assert_eq!(numbers(&captures), [1, 2, 3]);
}

#[tokio::test]
async fn a_request_in_flight_finishes_during_shutdown() {
    let (port, running, captures, gate) = gated_server(Duration::from_secs(10)).await;
    let pending = fill_the_queue(port, &gate).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    running.stop();
    // New connections are refused once the listener is closed.
    wait_for("the listener to close", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    })
    .await;
    gate.open(100);
    let answer = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, StatusCode::OK);
    let report = tokio::time::timeout(Duration::from_secs(20), running.wait())
        .await
        .unwrap();
    assert_eq!(report.lost, 0);
    assert_eq!(numbers(&captures), [1, 2, 3]);
}

#[tokio::test]
async fn a_stopped_pipeline_answers_503() {
    // The gate never opens: stopping gives up on the output after 1 s.
    let (port, running, captures, gate) = gated_server(Duration::from_secs(1)).await;
    let pending = fill_the_queue(port, &gate).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = stop(running).await;
    let answer = tokio::time::timeout(Duration::from_secs(10), pending)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(answer.body.contains("not accepted"));
    assert!(report.lost >= 1);
    assert_eq!(captures.count("gated"), 0);
}

#[tokio::test]
async fn concurrent_clients_all_get_through() {
    let (port, running, captures, _) = server(NodeSpec::new("capture"), &[]).await;
    let clients = 16;
    let posts = 25;
    let mut tasks = Vec::new();
    for client_id in 0..clients {
        let url = format!("http://127.0.0.1:{port}/load.c{client_id}");
        tasks.push(tokio::spawn(async move {
            let c = common::client();
            for seq in 0..posts {
                let body =
                    json!([{"c": client_id, "s": seq, "k": 0}, {"c": client_id, "s": seq, "k": 1}])
                        .to_string();
                let a = post(&c, &url, "application/json", body).await;
                assert_eq!(a.status, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(30), t)
            .await
            .unwrap()
            .unwrap();
    }
    let total = clients * posts * 2;
    wait_for("every event", || captures.count("capture") == total).await;
    stop(running).await;
    let mut seen = std::collections::HashSet::new();
    for (tag, e) in captures.get("capture") {
        let m = e.record.to_map();
        assert_eq!(tag, format!("load.c{}", m["c"]));
        assert!(seen.insert((
            m["c"].as_u64().unwrap(),
            m["s"].as_u64().unwrap(),
            m["k"].as_u64().unwrap()
        )));
    }
    assert_eq!(seen.len(), total);
}

#[tokio::test]
async fn times_headers_remote_address_methods_and_cors() {
    let (port, running, captures, _) = server(
        NodeSpec::new("capture"),
        &[
            ("add_http_headers", Value::Bool(true)),
            ("add_remote_addr", Value::Bool(true)),
            (
                "cors_allow_origins",
                Value::List(vec!["https://ok.example".into()]),
            ),
        ],
    )
    .await;
    let c = client();
    let base = format!("http://127.0.0.1:{port}");
    // Time from the query, and from a record's own `time` field (removed).
    let a = send(
        &c,
        Method::POST,
        &format!("{base}/t.query?time=1700000000.5"),
        &[("x-trace", "abc")],
        r#"{"a":1}"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let a = send(
        &c,
        Method::POST,
        &format!("{base}/t.field"),
        &[("x-forwarded-for", "10.1.2.3, 10.0.0.1")],
        r#"[{"time":1600000000,"b":2}]"#,
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    // Health check and wrong methods.
    assert_eq!(
        send(&c, Method::GET, &format!("{base}/"), &[], "")
            .await
            .status,
        StatusCode::OK
    );
    let a = send(&c, Method::GET, &format!("{base}/t"), &[], "").await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.headers["allow"], "POST");
    assert_eq!(
        send(&c, Method::PUT, &format!("{base}/t"), &[], "{}")
            .await
            .status,
        StatusCode::METHOD_NOT_ALLOWED
    );
    // CORS: preflight and an allowed origin get the header; others get 403.
    let a = send(
        &c,
        Method::OPTIONS,
        &format!("{base}/t"),
        &[
            ("origin", "https://ok.example"),
            ("access-control-request-headers", "content-type"),
        ],
        "",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://ok.example"
    );
    assert_eq!(a.headers["access-control-allow-headers"], "content-type");
    let a = send(
        &c,
        Method::POST,
        &format!("{base}/t.cors"),
        &[("origin", "https://ok.example")],
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.headers["access-control-allow-origin"],
        "https://ok.example"
    );
    let a = send(
        &c,
        Method::POST,
        &format!("{base}/t.cors"),
        &[("origin", "https://evil.example")],
        "{}",
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);

    wait_for("three events", || captures.count("capture") == 3).await;
    stop(running).await;
    let got = captures.get("capture");
    let (_, q) = &got[0];
    assert_eq!(
        q.time,
        EventTime::from_secs_nanos(1_700_000_000, 500_000_000)
    );
    let m = q.record.to_map();
    assert_eq!(m["a"], json!(1));
    assert_eq!(m["HTTP_X_TRACE"], json!("abc"));
    assert_eq!(m["REMOTE_ADDR"], json!("127.0.0.1"));
    let (_, f) = &got[1];
    assert_eq!(f.time, EventTime::from_secs_nanos(1_600_000_000, 0));
    let m = f.record.to_map();
    assert!(!m.contains_key("time"));
    assert_eq!(m["REMOTE_ADDR"], json!("10.1.2.3"));
    assert_eq!(got[2].0, "t.cors");
}

#[tokio::test]
async fn idle_keepalive_connections_are_closed_after_the_timeout() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (port, running, captures, _) = server(
        NodeSpec::new("capture"),
        &[(
            "keepalive_timeout",
            Value::Duration(Duration::from_millis(300)),
        )],
    )
    .await;
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let body = r#"{"k":1}"#;
    let request = format!(
        "POST /ka HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    // Two requests on one connection: keep-alive works.
    for _ in 0..2 {
        s.write_all(request.as_bytes()).await.unwrap();
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200 OK"),
            "{}",
            String::from_utf8_lossy(&buf[..n])
        );
    }
    // Then idle: the server closes the connection (read returns 0).
    let started = std::time::Instant::now();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the idle connection should be closed by the server")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        started.elapsed() >= Duration::from_millis(200),
        "closed too early: {:?}",
        started.elapsed()
    );
    wait_for("two events", || captures.count("capture") == 2).await;
    stop(running).await;
}
