//! Events per second into OpenSearch through `output elasticsearch`,
//! against the server's own ceiling measured by the same harness.
//!
//! ```sh
//! cargo run --release -p ulog-benches --bin elasticsearch_throughput
//! cargo run --release -p ulog-benches --bin elasticsearch_throughput -- --events 50000 --sizes 1000
//! ```
//!
//! For each batch size (100, 1,000, 10,000 events of ~120-byte JSON), the
//! same events are written twice, each time to a fresh index:
//!
//! - **ulog**: batches handed one at a time to the output's
//!   `Output::write`, as the engine does: encoding, `_bulk` requests sent
//!   by the official `elasticsearch` crate (`workers` in flight when a
//!   batch is split), reading the answers item by item.
//! - **ceiling**: the bodies ulog would send, built before the clock
//!   starts, POSTed by a bare hyper loop with the same split and the same
//!   requests in flight, reading nothing but the answer's first bytes. No
//!   client can do less work per request, so this is what the server takes.
//!
//! Event generation is outside the clock in both. The server is
//! `ULOG_TEST_OPENSEARCH_URL`, or the one `scripts/test-servers start
//! opensearch` starts or reuses.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;
use ulog_engine::{Batch, BuildContext, Delivery, EventId, Output, Value};
use ulog_plugins_elasticsearch::encode::Encoder;
use ulog_plugins_elasticsearch::out_elasticsearch::{spec, ElasticsearchOutput};
use ulog_plugins_elasticsearch::response::FILTER_PATH;

struct Options {
    events: usize,
    sizes: Vec<usize>,
    extra: Vec<(String, Value)>,
    workers: usize,
    bulk_max_events: usize,
}

fn parse_args() -> Result<Options> {
    let mut o = Options {
        events: 200_000,
        sizes: vec![100, 1_000, 10_000],
        extra: Vec::new(),
        workers: 2,
        bulk_max_events: 1000,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = || args.next().context("a value after the option");
        match a.as_str() {
            "--events" => o.events = value()?.parse()?,
            "--sizes" => {
                o.sizes = value()?
                    .split(',')
                    .map(str::parse)
                    .collect::<Result<_, _>>()?
            }
            "--workers" => {
                o.workers = value()?.parse()?;
                o.extra.push(("workers".into(), Value::Int(o.workers as i64)));
            }
            "--bulk-max-events" => {
                o.bulk_max_events = value()?.parse()?;
                o.extra.push((
                    "bulk_max_events".into(),
                    Value::Int(o.bulk_max_events as i64),
                ));
            }
            "--compress" => o.extra.push(("compress".into(), Value::Bool(true))),
            other => bail!("unknown option {other} (--events N, --sizes A,B, --workers N, --bulk-max-events N, --compress)"),
        }
    }
    Ok(o)
}

fn server_url() -> Result<String> {
    if let Ok(u) = std::env::var("ULOG_TEST_OPENSEARCH_URL") {
        return Ok(u.trim_end_matches('/').to_string());
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new(root.join("scripts/test-servers"))
        .args(["start", "opensearch"])
        .output()
        .context("running scripts/test-servers")?;
    if !out.status.success() {
        bail!(
            "scripts/test-servers: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("export ULOG_TEST_OPENSEARCH_URL="))
        .map(|v| v.trim_matches(['"', '\'']).to_string())
        .context("no ULOG_TEST_OPENSEARCH_URL in the script's output")
}

type Http = Client<HttpConnector, Full<Bytes>>;

async fn call(http: &Http, method: &str, url: &str, body: &str) -> Result<(u16, Bytes)> {
    let req = Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))?;
    let resp = http.request(req).await?;
    let status = resp.status().as_u16();
    Ok((status, resp.into_body().collect().await?.to_bytes()))
}

/// `n` events in batches of `size`, each event with its own fresh id (so
/// no write is a cheap replay).
fn batches(n: usize, size: usize) -> Vec<Batch> {
    (0..n.div_ceil(size))
        .map(|k| {
            let mut b = ulog_benches::json_batch("bench.es", size.min(n - k * size));
            let mut ids = EventId::fresh(b.len());
            for e in &mut b.events {
                e.id = ids.next().unwrap_or_default();
            }
            b
        })
        .collect()
}

fn output(url: &str, index: &str, o: &Options) -> Result<ElasticsearchOutput> {
    let mut given = vec![
        (
            "hosts".to_string(),
            Value::List(vec![Value::from(url.to_string())]),
        ),
        ("index".to_string(), Value::from(index.to_string())),
    ];
    given.extend(o.extra.iter().cloned());
    let params = spec()
        .validate(&given)
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(ElasticsearchOutput::from_params(
        &params,
        &BuildContext {
            id: "bench".into(),
            base_dir: ".".into(),
        },
    )?)
}

async fn prepare(http: &Http, url: &str, index: &str) -> Result<()> {
    let _ = call(http, "DELETE", &format!("{url}/{index}"), "").await?;
    // One shard, no replica, the default refresh: the same for both paths.
    let (status, body) = call(
        http,
        "PUT",
        &format!("{url}/{index}"),
        r#"{"settings":{"number_of_shards":1,"number_of_replicas":0}}"#,
    )
    .await?;
    if status != 200 {
        bail!(
            "creating {index}: {status} {}",
            String::from_utf8_lossy(&body)
        );
    }
    Ok(())
}

async fn stored(http: &Http, url: &str, index: &str) -> Result<u64> {
    call(http, "POST", &format!("{url}/{index}/_refresh"), "").await?;
    let (_, body) = call(http, "GET", &format!("{url}/{index}/_count"), "").await?;
    let v: serde_json::Value = serde_json::from_slice(&body)?;
    v["count"].as_u64().context("no count")
}

async fn run_ulog(url: &str, index: &str, o: &Options, batches: &[Batch]) -> Result<Duration> {
    let mut out = output(url, index, o)?;
    let begun = Instant::now();
    for b in batches {
        match out.write(b).await {
            Delivery::Delivered => {}
            other => bail!("ulog: {other:?}"),
        }
    }
    Ok(begun.elapsed())
}

async fn run_ceiling(
    http: &Http,
    url: &str,
    index: &str,
    o: &Options,
    batches: &[Batch],
) -> Result<Duration> {
    // The same bodies ulog sends, encoded (and gzipped) before the clock
    // starts.
    let gzip = o.extra.iter().any(|(k, _)| k == "compress");
    let encoder = Encoder {
        index: ulog_plugins_elasticsearch::encode::IndexName::parse("index", index)?,
        op_type: ulog_plugins_elasticsearch::encode::OpType::Create,
        id_key: None,
        time_key: "@timestamp".into(),
        precision: ulog_plugins_elasticsearch::encode::TimePrecision::Millis,
        tag_key: None,
        max_events: o.bulk_max_events,
        max_bytes: 5 << 20,
    };
    let bodies: Vec<Vec<Bytes>> = batches
        .iter()
        .map(|b| {
            encoder
                .bodies(b)
                .0
                .into_iter()
                .map(|body| {
                    if gzip {
                        Bytes::from(
                            ulog_plugins_elasticsearch::client::gzip(&body.bytes)
                                .unwrap_or_default(),
                        )
                    } else {
                        Bytes::from(body.bytes)
                    }
                })
                .collect()
        })
        .collect();
    let bulk = Arc::new(format!("{url}/_bulk?{FILTER_PATH}"));
    let encoding = if gzip { "gzip" } else { "identity" };
    let begun = Instant::now();
    for group in bodies {
        let permits = Arc::new(Semaphore::new(o.workers));
        let mut tasks = tokio::task::JoinSet::new();
        for body in group {
            let (http, bulk, permits) = (http.clone(), bulk.clone(), permits.clone());
            tasks.spawn(async move {
                let _p = permits.acquire_owned().await;
                let req = Request::builder()
                    .method("POST")
                    .uri(bulk.as_str())
                    .header("content-type", "application/x-ndjson")
                    .header("content-encoding", encoding)
                    .body(Full::new(body))?;
                let resp = http.request(req).await?;
                let ok = resp.status().is_success();
                let answer = resp.into_body().collect().await?.to_bytes();
                if !ok || !answer.starts_with(br#"{"errors":false"#) {
                    bail!(
                        "ceiling: {}",
                        String::from_utf8_lossy(&answer[..answer.len().min(300)])
                    );
                }
                Ok::<_, anyhow::Error>(())
            });
        }
        while let Some(r) = tasks.join_next().await {
            r??;
        }
    }
    Ok(begun.elapsed())
}

#[tokio::main]
async fn main() -> Result<()> {
    let o = parse_args()?;
    let url = server_url()?;
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    println!(
        "OpenSearch at {url}; {} events per run; workers {}, bulk_max_events {}{}",
        o.events,
        o.workers,
        o.bulk_max_events,
        if o.extra.iter().any(|(k, _)| k == "compress") {
            ", gzip"
        } else {
            ""
        }
    );
    // Warm the server's JIT and caches once, unmeasured.
    {
        let warm = batches(20_000, 1_000);
        prepare(&http, &url, "ulog-bench-warm").await?;
        run_ceiling(&http, &url, "ulog-bench-warm", &o, &warm).await?;
        call(&http, "DELETE", &format!("{url}/ulog-bench-warm"), "").await?;
    }
    println!(
        "{:>8}  {:>12}  {:>12}  {:>7}",
        "batch", "ulog ev/s", "ceiling ev/s", "ratio"
    );
    for &size in &o.sizes {
        let data = batches(o.events, size);
        let mut rates = Vec::new();
        // Ceiling, ulog, ceiling, ulog: alternating evens out the server's
        // drift (merges, GC) between the two.
        let mut best = [0f64; 2];
        for round in 0..2 {
            for (k, which) in ["ceiling", "ulog"].iter().enumerate() {
                let index = format!("ulog-bench-{which}-{size}-{round}");
                prepare(&http, &url, &index).await?;
                let took = if *which == "ulog" {
                    run_ulog(&url, &index, &o, &data).await?
                } else {
                    run_ceiling(&http, &url, &index, &o, &data).await?
                };
                let n = stored(&http, &url, &index).await?;
                if n != o.events as u64 {
                    bail!("{which}: {n} of {} events stored in {index}", o.events);
                }
                call(&http, "DELETE", &format!("{url}/{index}"), "").await?;
                let rate = o.events as f64 / took.as_secs_f64();
                rates.push((which.to_string(), rate));
                best[k] = best[k].max(rate);
            }
        }
        println!(
            "{:>8}  {:>12.0}  {:>12.0}  {:>6.0}%",
            size,
            best[1],
            best[0],
            100.0 * best[1] / best[0]
        );
        eprintln!("  runs: {rates:?}");
    }
    Ok(())
}
