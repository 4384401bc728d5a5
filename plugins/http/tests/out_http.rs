//! `output http` inside real pipelines, sending to a real hyper server run by
//! the test on loopback that checks what it receives.

mod common;

use std::convert::Infallible;
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::*;
use http_body_util::{BodyExt, Full};
use hyper::header::HeaderMap;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value as Json};
use ulog_engine::spec::NodeSpec;
use ulog_engine::{Batch, Event, EventTime, Record, Tag, Value};

/// One request the server took.
#[derive(Debug, Clone)]
struct Received {
    method: Method,
    path: String,
    headers: HeaderMap,
    records: Vec<Json>,
}

#[derive(Default)]
struct ServerState {
    received: Mutex<Vec<Received>>,
    /// Answer this many requests with 503 first.
    fail: AtomicUsize,
    /// Answer 400 to bodies holding this text.
    reject_marker: Mutex<Option<String>>,
    /// Bodies that were not valid (gzip, JSON): must stay 0.
    invalid: AtomicUsize,
    requests: AtomicUsize,
    connections: AtomicUsize,
}

struct TestServer {
    url: String,
    state: Arc<ServerState>,
}

impl TestServer {
    async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(ServerState::default());
        let shared = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let state = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let state = state.clone();
                        async move { Ok::<_, Infallible>(handle(&state, req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            url: format!("http://{addr}/ingest"),
            state,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.state.received.lock().unwrap().clone()
    }
}

fn answer(status: StatusCode, text: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(text.to_string())));
    *r.status_mut() = status;
    r
}

async fn handle(state: &ServerState, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let raw = req.into_body().collect().await.unwrap().to_bytes();
    let body = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        let mut out = Vec::new();
        if flate2::read::GzDecoder::new(&raw[..])
            .read_to_end(&mut out)
            .is_err()
        {
            state.invalid.fetch_add(1, Ordering::SeqCst);
            return answer(StatusCode::BAD_REQUEST, "bad gzip");
        }
        out
    } else {
        raw.to_vec()
    };
    let content_type = headers
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string());
    let records: Option<Vec<Json>> = match content_type.as_deref() {
        Some("application/x-ndjson") => body
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| {
                serde_json::from_slice::<Json>(l)
                    .ok()
                    .filter(Json::is_object)
            })
            .collect(),
        Some("application/json") => serde_json::from_slice::<Vec<Json>>(&body)
            .ok()
            .filter(|v| v.iter().all(Json::is_object)),
        _ => None,
    };
    let Some(records) = records else {
        state.invalid.fetch_add(1, Ordering::SeqCst);
        return answer(
            StatusCode::BAD_REQUEST,
            "not valid JSON for its content type",
        );
    };
    if state
        .fail
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return answer(StatusCode::SERVICE_UNAVAILABLE, "busy, try later");
    }
    let marker = state.reject_marker.lock().unwrap().clone();
    if marker.is_some_and(|m| String::from_utf8_lossy(&body).contains(&m)) {
        return answer(StatusCode::BAD_REQUEST, "field `bad` is not allowed\n");
    }
    state.received.lock().unwrap().push(Received {
        method,
        path,
        headers,
        records,
    });
    answer(StatusCode::OK, "")
}

fn raw(text: &str) -> Record {
    Record::from_json_bytes(Bytes::copy_from_slice(text.as_bytes())).unwrap()
}

fn http_out(url: &str) -> NodeSpec {
    NodeSpec::new("http")
        .param("url", url)
        .param("retry_wait", Duration::from_millis(10))
        .param("retry_max_wait", Duration::from_millis(50))
}

async fn emit(running: &ulog_engine::Running, tag: &str, events: Vec<Event>) {
    running
        .emitter()
        .emit(Batch::new(Tag::parse(tag).unwrap(), events))
        .await
        .unwrap();
}

fn numbered(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            Event::new(
                EventTime::from_secs_nanos(1_700_000_000, 0),
                raw(&format!(r#"{{"i":{i}}}"#)),
            )
        })
        .collect()
}

#[tokio::test]
async fn ndjson_with_headers_and_added_fields() {
    let server = TestServer::start().await;
    let (registry, _, _) = http_registry();
    let out = http_out(&server.url)
        .param(
            "headers",
            Value::Map(vec![("Authorization".into(), "Bearer s3cret".into())]),
        )
        .param("tag_key", "tag")
        .param("time_key", "ts");
    let running = run(&pipeline(vec![], out), &registry);
    emit(
        &running,
        "app.web",
        vec![
            Event::new(
                EventTime::from_secs_nanos(1_700_000_000, 500_000_000),
                raw(r#"{"msg": "hi"}"#),
            ),
            Event::new(EventTime::from_secs_nanos(1_700_000_001, 0), raw(r#"{}"#)),
        ],
    )
    .await;
    wait_for("one request", || server.received().len() == 1).await;
    let report = stop(running).await;
    let r = &server.received()[0];
    assert_eq!(r.method, Method::POST);
    assert_eq!(r.path, "/ingest");
    assert_eq!(r.headers["content-type"], "application/x-ndjson");
    assert_eq!(r.headers["authorization"], "Bearer s3cret");
    assert!(r.headers["user-agent"]
        .to_str()
        .unwrap()
        .starts_with("ulog/"));
    assert!(r.headers.get("content-encoding").is_none());
    assert_eq!(
        r.records,
        [
            json!({"msg": "hi", "tag": "app.web", "ts": 1_700_000_000.5}),
            json!({"tag": "app.web", "ts": 1_700_000_001.0}),
        ]
    );
    assert_eq!(server.state.invalid.load(Ordering::SeqCst), 0);
    assert_eq!(report.metrics.node("http#1").unwrap().events_out, 2);
}

#[tokio::test]
async fn gzip_json_arrays_with_put_split_into_requests() {
    let server = TestServer::start().await;
    let (registry, _, _) = http_registry();
    let out = http_out(&server.url)
        .param("method", "PUT")
        .param("format", "json")
        .param("gzip", true)
        .param("batch_max_events", 3i64);
    let running = run(&pipeline(vec![], out), &registry);
    emit(&running, "t", numbered(10)).await;
    wait_for("four requests", || server.received().len() == 4).await;
    stop(running).await;
    let received = server.received();
    for r in &received {
        assert_eq!(r.method, Method::PUT);
        assert_eq!(r.headers["content-type"], "application/json");
        assert_eq!(r.headers["content-encoding"], "gzip");
    }
    let sizes: Vec<usize> = received.iter().map(|r| r.records.len()).collect();
    assert_eq!(sizes, [3, 3, 3, 1]);
    let all: Vec<Json> = received.into_iter().flat_map(|r| r.records).collect();
    assert_eq!(all, (0..10).map(|i| json!({"i": i})).collect::<Vec<_>>());
    assert_eq!(server.state.invalid.load(Ordering::SeqCst), 0);
    // The pooled client kept one connection for all four requests.
    assert_eq!(server.state.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_503_is_retried_by_the_engine_until_it_is_taken() {
    let server = TestServer::start().await;
    server.state.fail.store(2, Ordering::SeqCst);
    let (registry, captures, _) = http_registry();
    let running = run(&pipeline(vec![], http_out(&server.url)), &registry);
    emit(&running, "t", numbered(5)).await;
    wait_for("the batch to be taken", || server.received().len() == 1).await;
    let report = stop(running).await;
    let node = report.metrics.node("http#1").unwrap();
    assert_eq!(node.retries, 2, "{node:?}");
    assert_eq!(node.events_out, 5);
    assert_eq!(server.state.requests.load(Ordering::SeqCst), 3);
    assert_eq!(
        server.received()[0].records.len(),
        5,
        "delivered once, not duplicated"
    );
    assert_eq!(captures.count("errors"), 0);
}

#[tokio::test]
async fn a_400_sends_the_events_to_the_errors_label_with_the_reason() {
    let server = TestServer::start().await;
    *server.state.reject_marker.lock().unwrap() = Some("\"bad\"".into());
    let (registry, captures, _) = http_registry();
    let running = run(&pipeline(vec![], http_out(&server.url)), &registry);
    emit(
        &running,
        "t",
        vec![Event::new(EventTime::now(), raw(r#"{"bad":1}"#))],
    )
    .await;
    wait_for("the event in errors", || captures.count("errors") == 1).await;
    let report = stop(running).await;
    let (tag, event) = &captures.get("errors")[0];
    assert_eq!(tag, "t");
    let m = event.record.to_map();
    assert_eq!(m["bad"], json!(1));
    let reason = m["_error"].as_str().unwrap();
    assert!(
        reason.contains("400 Bad Request") && reason.contains("field `bad` is not allowed"),
        "{reason}"
    );
    assert_eq!(m["_error_node"], json!("http#1"));
    assert_eq!(
        report.metrics.node("http#1").unwrap().retries,
        0,
        "a 400 is not retried"
    );
}

#[tokio::test]
async fn when_only_some_requests_of_a_batch_fail_only_their_events_do() {
    let server = TestServer::start().await;
    *server.state.reject_marker.lock().unwrap() = Some("\"bad\"".into());
    let (registry, captures, _) = http_registry();
    let out = http_out(&server.url).param("batch_max_events", 2i64);
    let running = run(&pipeline(vec![], out), &registry);
    let events = [
        r#"{"n":0}"#,
        r#"{"n":1}"#,
        r#"{"n":2,"bad":1}"#,
        r#"{"n":3}"#,
        r#"{"n":4}"#,
    ]
    .iter()
    .map(|t| Event::new(EventTime::now(), raw(t)))
    .collect();
    emit(&running, "t", events).await;
    wait_for("two refused events", || captures.count("errors") == 2).await;
    stop(running).await;
    let delivered: Vec<Json> = server
        .received()
        .into_iter()
        .flat_map(|r| r.records)
        .collect();
    assert_eq!(delivered, [json!({"n":0}), json!({"n":1}), json!({"n":4})]);
    let refused: Vec<i64> = captures
        .get("errors")
        .iter()
        .map(|(_, e)| e.record.to_map()["n"].as_i64().unwrap())
        .collect();
    assert_eq!(refused, [2, 3]);
}

#[tokio::test]
async fn an_unreachable_endpoint_is_retried_then_given_up_to_errors() {
    let port = free_port();
    let (registry, captures, _) = http_registry();
    let out = http_out(&format!("http://127.0.0.1:{port}/x")).param("retry_max_attempts", 3i64);
    let running = run(&pipeline(vec![], out), &registry);
    emit(&running, "t", numbered(2)).await;
    wait_for("the events in errors", || captures.count("errors") == 2).await;
    let report = stop(running).await;
    assert_eq!(report.metrics.node("http#1").unwrap().retries, 2);
    let reason = captures.get("errors")[0].1.record.to_map()["_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("gave up after 3 attempts")
            && reason.to_lowercase().contains("connection refused"),
        "{reason}"
    );
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_and_is_retried() {
    // Accepts connections and reads, but never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            held.push(s);
        }
    });
    let (registry, captures, _) = http_registry();
    let out = http_out(&format!("http://{addr}/x"))
        .param("timeout", Duration::from_millis(200))
        .param("retry_max_attempts", 2i64);
    let running = run(&pipeline(vec![], out), &registry);
    emit(&running, "t", numbered(1)).await;
    wait_for("the event in errors", || captures.count("errors") == 1).await;
    let report = stop(running).await;
    assert_eq!(report.metrics.node("http#1").unwrap().retries, 1);
    let reason = captures.get("errors")[0].1.record.to_map()["_error"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        reason.contains("no answer") && reason.contains("200ms"),
        "{reason}"
    );
}

#[tokio::test]
async fn ulog_to_ulog_over_http_keeps_records_and_times() {
    // output http → input http of a second pipeline.
    let port = free_port();
    let (registry, captures, _) = http_registry();
    let receiver = run(
        &pipeline(
            vec![NodeSpec::new("http").param("listen", format!("127.0.0.1:{port}"))],
            NodeSpec::new("capture"),
        ),
        &registry,
    );
    wait_listening(port).await;
    let sender = run(
        &pipeline(
            vec![],
            http_out(&format!("http://127.0.0.1:{port}/relay.app"))
                .param("time_key", "time")
                .param("gzip", true),
        ),
        &registry,
    );
    emit(&sender, "ignored", numbered(50)).await;
    wait_for("50 relayed events", || captures.count("capture") == 50).await;
    stop(sender).await;
    stop(receiver).await;
    for (i, (tag, e)) in captures.get("capture").iter().enumerate() {
        assert_eq!(tag, "relay.app");
        assert_eq!(e.time, EventTime::from_secs_nanos(1_700_000_000, 0));
        assert_eq!(
            Json::Object(e.record.to_map().into_owned()),
            json!({"i": i})
        );
    }
}
