//! Shared test plumbing: capturing and gated outputs, pipelines, an HTTP
//! client.
#![allow(dead_code)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use ulog_engine::spec::{FlowSpec, LabelSpec, MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildOptions, Delivery, Event, Output, ParamKind, ParamSpec,
    Params, Pipeline, PluginKind, PluginSpec, Registry, Running,
};

/// Captured events with their tags, by capture name.
type Store = HashMap<String, Vec<(String, Event)>>;

/// What the `capture` outputs received, by their `name` parameter.
#[derive(Clone, Default)]
pub struct Captures(Arc<Mutex<Store>>);

impl Captures {
    /// Events captured under `name`, with their tags.
    pub fn get(&self, name: &str) -> Vec<(String, Event)> {
        self.0
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

    /// Number of events captured under `name`.
    pub fn count(&self, name: &str) -> usize {
        self.0.lock().unwrap().get(name).map_or(0, Vec::len)
    }
}

struct CaptureOutput {
    name: String,
    store: Captures,
    /// When set, each write first takes a permit (tests open the gate).
    gate: Option<Arc<Gate>>,
}

/// Holds a gated output inside `write` until the test lets it go.
pub struct Gate {
    permits: Semaphore,
    /// Writes that have started (waiting at the gate or past it).
    pub entered: std::sync::atomic::AtomicUsize,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            permits: Semaphore::new(0),
            entered: Default::default(),
        }
    }
}

impl Gate {
    /// Lets `n` more writes through.
    pub fn open(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// Writes started so far.
    pub fn entered(&self) -> usize {
        self.entered.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait]
impl Output for CaptureOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        if let Some(gate) = &self.gate {
            gate.entered
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            gate.permits.acquire().await.unwrap().forget();
        }
        let mut all = self.store.0.lock().unwrap();
        all.entry(self.name.clone()).or_default().extend(
            batch
                .events
                .iter()
                .map(|e| (batch.tag.as_str().to_string(), e.clone())),
        );
        Delivery::Delivered
    }
}

/// A registry with this crate's plugins (and the basic ones), a `capture`
/// output and a `gated` output (a capture named "gated" behind `gate`).
pub fn registry() -> (Registry, Captures, Arc<Gate>) {
    let mut r = Registry::new();
    ulog_plugins_basic::register(&mut r);
    ulog_plugins_http::register(&mut r);
    let captures = Captures::default();
    let gate = Arc::new(Gate::default());
    for (kind, gated) in [("capture", false), ("gated", true)] {
        let store = captures.clone();
        let gate = gate.clone();
        r.add_output(
            PluginSpec::new(PluginKind::Output, kind, "test sink").param(ParamSpec::with_default(
                "name",
                ParamKind::Str,
                kind,
                "which list",
            )),
            move |p: &Params, _: &BuildContext| {
                Ok(Box::new(CaptureOutput {
                    name: p.str("name")?.to_string(),
                    store: store.clone(),
                    gate: gated.then(|| gate.clone()),
                }) as Box<dyn Output>)
            },
        );
    }
    (r, captures, gate)
}

/// `match "**" <outputs...>`.
pub fn match_all(output: NodeSpec) -> MatchSpec {
    MatchSpec {
        patterns: vec!["**".into()],
        outputs: vec![output],
    }
}

/// A label `errors` whose events go to `capture { name = "errors" }`.
pub fn errors_label() -> LabelSpec {
    LabelSpec {
        name: "errors".into(),
        flow: FlowSpec {
            filters: vec![],
            matches: vec![match_all(NodeSpec::new("capture").param("name", "errors"))],
        },
    }
}

/// A pipeline of `inputs` whose every event goes to `output`.
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

/// Builds and starts `spec` with the given shutdown timeout.
pub fn start_with(spec: &PipelineSpec, registry: &Registry, shutdown_timeout: Duration) -> Running {
    let options = BuildOptions {
        base_dir: std::env::temp_dir(),
        shutdown_timeout,
    };
    match Pipeline::build(spec, registry, options) {
        Ok(p) => p.start(),
        Err(errors) => panic!("pipeline did not build: {errors:?}"),
    }
}

/// Builds and starts `spec`.
pub fn start(spec: &PipelineSpec, registry: &Registry) -> Running {
    start_with(spec, registry, Duration::from_secs(10))
}

/// Stops the pipeline and waits (at most 20 s) for it to end.
pub async fn stop(running: Running) -> ulog_engine::RunReport {
    running.stop();
    tokio::time::timeout(Duration::from_secs(20), running.wait())
        .await
        .expect("pipeline did not stop in time")
}

/// Waits (at most 10 s) until `cond` holds.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
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
