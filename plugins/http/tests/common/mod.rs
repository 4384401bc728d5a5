//! Test plumbing: the basic crate's shared helpers (capturing and gated
//! outputs, pipelines) plus an HTTP client and ports.
#![allow(dead_code)]

#[path = "../../../basic/tests/common/mod.rs"]
mod shared;

pub use shared::*;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ulog_engine::spec::{FlowSpec, NodeSpec, PipelineSpec};
use ulog_engine::{BuildOptions, Registry, Running};

/// A registry with the basic and http plugins and the test outputs.
pub fn http_registry() -> (Registry, Captures, Arc<Gate>) {
    let mut r = Registry::new();
    ulog_plugins_basic::register(&mut r);
    ulog_plugins_http::register(&mut r);
    let (captures, gate) = add_test_outputs(&mut r);
    (r, captures, gate)
}

/// A pipeline of `inputs` whose every event goes to `output`, with an
/// `errors` label captured as "errors".
pub fn pipeline(inputs: Vec<NodeSpec>, output: NodeSpec) -> PipelineSpec {
    PipelineSpec {
        inputs,
        root: FlowSpec {
            filters: vec![],
            matches: vec![match_all(output)],
        },
        labels: vec![errors_label()],
    }
}

/// Builds and starts `spec` (no relative paths involved).
pub fn run(spec: &PipelineSpec, registry: &Registry) -> Running {
    start(spec, registry, &std::env::temp_dir())
}

/// Like [`run`], giving up on queued events `shutdown_timeout` after a stop.
pub fn run_with_timeout(
    spec: &PipelineSpec,
    registry: &Registry,
    shutdown_timeout: Duration,
) -> Running {
    let options = BuildOptions {
        base_dir: std::env::temp_dir(),
        shutdown_timeout,
    };
    start_with(spec, registry, options)
}

/// A port nothing listens on right now (bound to 127.0.0.1:0, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Waits (at most 10 s) until something accepts connections on `port`.
pub async fn wait_listening(port: u16) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing listens on port {port}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A pooled hyper client (keep-alive), as a real sender would use.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An answer: status, headers and body text.
#[derive(Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: String,
}

/// Sends one request (bounded by 10 s).
pub async fn send(
    client: &Client<HttpConnector, Full<Bytes>>,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> Answer {
    let mut req = Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body.into())).unwrap();
    let exchange = async {
        let resp = client.request(req).await.expect("request failed");
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("no answer within 10 s")
}

/// POSTs `body` with a Content-Type.
pub async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    url: &str,
    content_type: &str,
    body: impl Into<Bytes>,
) -> Answer {
    send(
        client,
        Method::POST,
        url,
        &[("content-type", content_type)],
        body,
    )
    .await
}
