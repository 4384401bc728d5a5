//! What the OpenSearch tests share: the server (one per test binary, or a
//! private one), a small HTTP client for reading back with the server's
//! own APIs, and event and output builders.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value as Json;
use ulog_engine::{
    Batch, BuildContext, Event, EventId, EventTime, Output, Params, Record, Tag, Value,
};
use ulog_plugins_elasticsearch::out_elasticsearch::{spec, ElasticsearchOutput};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Parses `export KEY=VALUE` lines.
fn exports(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches(['"', '\'']).to_string()))
        .collect()
}

/// Runs `scripts/test-servers ARGS` with `run` as its run dir (the default
/// one when `None`).
fn script(args: &[&str], run: Option<&Path>) -> String {
    let mut cmd = Command::new(root().join("scripts/test-servers"));
    cmd.args(args);
    if let Some(r) = run {
        cmd.env("ULOG_SERVERS_RUN", r);
    }
    let out = cmd.output().expect("running scripts/test-servers");
    assert!(
        out.status.success(),
        "scripts/test-servers {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The shared server's base URL: `ULOG_TEST_OPENSEARCH_URL`, or one started
/// (or reused) by `scripts/test-servers` once per test binary.
pub fn url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(u) = std::env::var("ULOG_TEST_OPENSEARCH_URL") {
            return u.trim_end_matches('/').to_string();
        }
        let out = script(&["start", "opensearch"], None);
        exports(&out)
            .into_iter()
            .find(|(k, _)| k == "ULOG_TEST_OPENSEARCH_URL")
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no ULOG_TEST_OPENSEARCH_URL in {out:?}"))
    })
}

/// An OpenSearch of this test's own (its own run dir), for taking it away
/// mid-stream; stopped and removed on drop.
pub struct PrivateServer {
    run: tempfile::TempDir,
    /// Its base URL.
    pub url: String,
}

impl PrivateServer {
    /// Starts one (3-5 s).
    pub fn start() -> Self {
        let run = tempfile::tempdir().unwrap();
        let out = script(&["start", "opensearch"], Some(run.path()));
        let url = exports(&out)
            .into_iter()
            .find(|(k, _)| k == "ULOG_TEST_OPENSEARCH_URL")
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no URL in {out:?}"));
        Self { run, url }
    }

    /// Stops it, keeping its port and data.
    pub fn stop_one(&self) {
        script(&["stop-one", "opensearch"], Some(self.run.path()));
    }

    /// Starts it again on the same port with the same data.
    pub fn start_one(&self) {
        script(&["start-one", "opensearch"], Some(self.run.path()));
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        let _ = Command::new(root().join("scripts/test-servers"))
            .args(["stop", "opensearch"])
            .env("ULOG_SERVERS_RUN", self.run.path())
            .output();
    }
}

/// A name no other test (or earlier run) uses: lower case, for indices.
pub fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!(
        "{prefix}-{}-{t}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// One request to `base`; the status and the JSON answer.
pub async fn call(base: &str, method: &str, path: &str, body: Option<&str>) -> (u16, Json) {
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let request = Request::builder()
        .method(method)
        .uri(format!("{base}{path}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or("").to_string())))
        .unwrap();
    let response = client.request(request).await.expect("OpenSearch answers");
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or(Json::Null);
    (status, json)
}

/// Refreshes `index` (a name or pattern) so what was written is searchable.
pub async fn refresh(base: &str, index: &str) {
    let (status, answer) = call(base, "POST", &format!("/{index}/_refresh"), None).await;
    assert_eq!(status, 200, "{answer}");
}

/// The number of documents in `index` matching `query` (all when `None`).
pub async fn count(base: &str, index: &str, query: Option<Json>) -> u64 {
    refresh(base, index).await;
    let body = query.map(|q| serde_json::json!({ "query": q }).to_string());
    let (status, answer) = call(base, "POST", &format!("/{index}/_count"), body.as_deref()).await;
    assert_eq!(status, 200, "{answer}");
    answer["count"].as_u64().unwrap()
}

/// Every document of `index` (up to 10,000), by `_id`.
pub async fn documents(base: &str, index: &str) -> Vec<(String, Json)> {
    refresh(base, index).await;
    let (status, answer) = call(
        base,
        "POST",
        &format!("/{index}/_search"),
        Some(r#"{"size":10000,"query":{"match_all":{}}}"#),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    answer["hits"]["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["_id"].as_str().unwrap().to_string(), h["_source"].clone()))
        .collect()
}

/// A built output with these options (and `hosts = [base]`).
pub fn output(base: &str, given: &[(&str, Value)]) -> ElasticsearchOutput {
    output_hosts(&[base], given)
}

/// A built output with these options and hosts.
pub fn output_hosts(hosts: &[&str], given: &[(&str, Value)]) -> ElasticsearchOutput {
    let mut all = vec![(
        "hosts".to_string(),
        Value::List(hosts.iter().map(|h| Value::from(h.to_string())).collect()),
    )];
    all.extend(given.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let params: Params = spec().validate(&all).expect("valid options");
    ElasticsearchOutput::from_params(
        &params,
        &BuildContext {
            id: "es-test".into(),
            base_dir: std::env::temp_dir(),
        },
    )
    .expect("the output builds")
}

/// A batch of these JSON records at these times (seconds), each with a
/// fresh event id as the engine would give it.
pub fn batch(tag: &str, records: &[(i64, Json)]) -> Batch {
    let mut ids = EventId::fresh(records.len());
    let events = records
        .iter()
        .map(|(secs, r)| {
            let mut e = Event::new(
                EventTime::from_secs_nanos(*secs, 123_000_000),
                Record::from_json_bytes(Bytes::from(r.to_string())).unwrap(),
            );
            e.id = ids.next().unwrap();
            e
        })
        .collect();
    Batch::new(Tag::parse(tag).unwrap(), events)
}

/// Writes `batch` and returns the delivery.
pub async fn write(out: &mut ElasticsearchOutput, batch: &Batch) -> ulog_engine::Delivery {
    out.write(batch).await
}
