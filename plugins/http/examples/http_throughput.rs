//! Measures `input http` over loopback (hyper clients in the same process
//! posting NDJSON bodies, and single JSON objects), and the `output http` →
//! `input http` relay.
//!
//! ```text
//! cargo run --release -p ulog-plugins-http --example http_throughput -- [clients] [events_per_body] [seconds]
//! ```
//!
//! The senders share the machine with the receiver, so the figures are lower
//! bounds of what the input does with senders elsewhere.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use ulog_engine::spec::{FlowSpec, MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{BuildOptions, Pipeline, Registry, Running};

fn start(inputs: Vec<NodeSpec>, output: NodeSpec) -> Running {
    let mut registry = Registry::new();
    ulog_plugins_basic::register(&mut registry);
    ulog_plugins_http::register(&mut registry);
    let spec = PipelineSpec {
        inputs,
        root: FlowSpec {
            filters: vec![],
            matches: vec![MatchSpec {
                patterns: vec!["**".into()],
                outputs: vec![output],
            }],
        },
        labels: vec![],
    };
    Pipeline::build(&spec, &registry, BuildOptions::default())
        .unwrap()
        .start()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn wait_listening(port: u16) {
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `clients` senders post `body` for `seconds`; returns requests sent.
async fn load(
    port: u16,
    clients: usize,
    body: Bytes,
    content_type: &'static str,
    seconds: f64,
) -> u64 {
    let requests = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let body = body.clone();
        let requests = requests.clone();
        tasks.push(tokio::spawn(async move {
            let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
            let url = format!("http://127.0.0.1:{port}/bench.http");
            while Instant::now() < deadline {
                let req = hyper::Request::post(&url)
                    .header("content-type", content_type)
                    .body(Full::new(body.clone()))
                    .unwrap();
                let resp = client.request(req).await.expect("request");
                assert_eq!(resp.status(), 200);
                requests.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    requests.load(Ordering::Relaxed)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let clients: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(8);
    let per_body: usize = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(500);
    let seconds: f64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(5.0);

    let port = free_port();
    let running = start(
        vec![NodeSpec::new("http").param("listen", format!("127.0.0.1:{port}"))],
        NodeSpec::new("null"),
    );
    wait_listening(port).await;
    let line = r#"{"host":"10.0.0.1","method":"GET","path":"/index.html","code":200,"size":1043,"agent":"curl/8.0"}"#;
    let mut body = String::new();
    for _ in 0..per_body {
        body.push_str(line);
        body.push('\n');
    }
    let started = Instant::now();
    let n = load(
        port,
        clients,
        Bytes::from(body),
        "application/x-ndjson",
        seconds,
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "input http, ndjson x{per_body}, {clients} clients: {:>8.0} requests/s, {:>6.2} M events/s",
        n as f64 / secs,
        (n as f64 * per_body as f64) / secs / 1e6
    );
    let started = Instant::now();
    let n = load(
        port,
        clients,
        Bytes::from_static(line.as_bytes()),
        "application/json",
        seconds,
    )
    .await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "input http, one object, {clients} clients:  {:>8.0} requests/s",
        n as f64 / secs
    );
    running.stop();
    running.wait().await;

    // output http -> input http.
    let port = free_port();
    let receiver = start(
        vec![NodeSpec::new("http").param("listen", format!("127.0.0.1:{port}"))],
        NodeSpec::new("null"),
    );
    wait_listening(port).await;
    let total = 2_000_000i64;
    let started = Instant::now();
    let sender = start(
        vec![NodeSpec::new("dummy")
            .param("rate", 0i64)
            .param("size", 1000i64)
            .param("max_events", total)],
        NodeSpec::new("http").param("url", format!("http://127.0.0.1:{port}/relay")),
    );
    let report = sender.wait().await;
    let secs = started.elapsed().as_secs_f64();
    let sent = report.metrics.node("http#1").map_or(0, |n| n.events_out);
    println!(
        "dummy -> output http -> input http: {sent} events, {:>6.2} M events/s",
        sent as f64 / secs / 1e6
    );
    receiver.stop();
    receiver.wait().await;
}
