//! Shared helpers: a real engine pipeline with the tail input and a
//! capturing output, plus small file-writing helpers.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ulog_engine::spec::{MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{
    async_trait, Batch, BuildOptions, Delivery, Event, Output, ParamKind, ParamSpec, Pipeline,
    PluginKind, PluginSpec, Registry, RunReport, Running, Tag, Value,
};
use ulog_plugins_tail::{TailMonitor, TailStats};

/// Everything the capturing output received, in order.
pub type Captured = Arc<Mutex<Vec<(Tag, Event)>>>;

struct CaptureOutput {
    store: Captured,
    batches: Arc<AtomicUsize>,
    delay: Duration,
}

#[async_trait]
impl Output for CaptureOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        if !self.delay.is_zero() {
            tokio::time::sleep(self.delay).await;
        }
        self.batches.fetch_add(1, Ordering::SeqCst);
        let mut store = self.store.lock().unwrap();
        for e in &batch.events {
            store.push((batch.tag.clone(), e.clone()));
        }
        Delivery::Delivered
    }
}

/// A registry with the tail plugin and a test-only `capture` output.
pub fn registry(store: Captured, batches: Arc<AtomicUsize>, monitor: TailMonitor) -> Registry {
    let mut r = Registry::new();
    ulog_plugins_tail::register_with_monitor(&mut r, monitor);
    r.add_output(
        PluginSpec::new(PluginKind::Output, "capture", "test sink").param(ParamSpec::with_default(
            "delay_ms",
            ParamKind::Int,
            0,
            "sleep per batch",
        )),
        move |p, _| {
            Ok(Box::new(CaptureOutput {
                store: store.clone(),
                batches: batches.clone(),
                delay: Duration::from_millis(p.int("delay_ms")? as u64),
            }))
        },
    );
    r
}

/// A running pipeline `tail → capture`.
pub struct Harness {
    pub running: Running,
    pub captured: Captured,
    /// Batches the output received.
    pub batches: Arc<AtomicUsize>,
    pub monitor: TailMonitor,
}

/// The tail node with fast timings for tests; add more params on top.
pub fn tail(path: &Path, tag: &str) -> NodeSpec {
    tail_with_rotate_wait(path, tag, Duration::from_millis(300))
}

/// [`tail`] with another `rotate_wait`.
pub fn tail_with_rotate_wait(path: &Path, tag: &str, rotate_wait: Duration) -> NodeSpec {
    tail_paths(path.to_str().unwrap().into(), tag, rotate_wait)
}

/// [`tail`] with `path` given as any value (a list of globs, say).
pub fn tail_paths(path: Value, tag: &str, rotate_wait: Duration) -> NodeSpec {
    NodeSpec::new("tail")
        .param("id", "in")
        .param("path", path)
        .param("tag", tag)
        .param("poll_interval", Duration::from_millis(20))
        .param("refresh_interval", Duration::from_millis(100))
        .param("rotate_wait", rotate_wait)
        .param("pos_write_interval", Duration::from_millis(20))
}

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .try_init();
}

/// The capture output; a slow one gets a queue of one batch so the
/// pipeline pushes back on the input quickly.
fn capture_node(delay_ms: i64) -> NodeSpec {
    let node = NodeSpec::new("capture").param("delay_ms", delay_ms);
    if delay_ms > 0 {
        node.param("queue_batches", 1i64)
    } else {
        node
    }
}

/// Builds and starts `tail → capture` (the capture delay in ms per batch).
pub fn start_with(node: NodeSpec, delay_ms: i64) -> Harness {
    init_logs();
    let captured: Captured = Arc::default();
    let batches = Arc::new(AtomicUsize::new(0));
    let monitor = TailMonitor::default();
    let reg = registry(captured.clone(), batches.clone(), monitor.clone());
    let spec = PipelineSpec {
        inputs: vec![node],
        root: ulog_engine::spec::FlowSpec {
            filters: vec![],
            matches: vec![MatchSpec {
                patterns: vec!["**".into()],
                outputs: vec![capture_node(delay_ms)],
            }],
        },
        // Refused lines (`on_error = "errors"`) arrive in the same capture,
        // recognisable by their `_error` field.
        labels: vec![ulog_engine::spec::LabelSpec {
            name: "errors".into(),
            flow: ulog_engine::spec::FlowSpec {
                filters: vec![],
                matches: vec![MatchSpec {
                    patterns: vec!["**".into()],
                    outputs: vec![capture_node(0)],
                }],
            },
        }],
    };
    let pipeline = match Pipeline::build(&spec, &reg, BuildOptions::default()) {
        Ok(p) => p,
        Err(errs) => panic!("pipeline did not build: {errs:?}"),
    };
    Harness {
        running: pipeline.start(),
        captured,
        batches,
        monitor,
    }
}

pub fn start(node: NodeSpec) -> Harness {
    start_with(node, 0)
}

impl Harness {
    /// The `message` field of every captured event, in order.
    pub fn messages(&self) -> Vec<String> {
        messages(&self.captured)
    }

    pub fn count(&self) -> usize {
        self.captured.lock().unwrap().len()
    }

    pub fn stats(&self) -> Arc<TailStats> {
        self.monitor.stats("in").expect("tail input built")
    }

    /// Waits until `n` events were captured; panics with what arrived if
    /// they do not within `secs`.
    pub async fn wait_count(&self, n: usize, secs: u64) {
        let ok = wait_until(Duration::from_secs(secs), || self.count() >= n).await;
        assert!(
            ok,
            "expected {n} events within {secs}s, got {}: {:?}",
            self.count(),
            tail_of(&self.messages())
        );
    }

    /// Stops cleanly, bounded in time.
    pub async fn stop(self) -> RunReport {
        self.running.stop();
        tokio::time::timeout(Duration::from_secs(20), self.running.wait())
            .await
            .expect("pipeline stops within 20s")
    }
}

fn tail_of(v: &[String]) -> Vec<String> {
    v.iter().rev().take(5).rev().cloned().collect()
}

pub fn messages(c: &Captured) -> Vec<String> {
    c.lock()
        .unwrap()
        .iter()
        .map(|(_, e)| match e.record.to_map().get("message") {
            Some(serde_json::Value::String(s)) => s.clone(),
            other => panic!("event without a message field: {other:?} in {:?}", e.record),
        })
        .collect()
}

/// Polls `f` every 10 ms until it holds or `timeout` passes.
pub async fn wait_until(timeout: Duration, f: impl Fn() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Appends bytes to a file (creating it).
pub fn append(path: &Path, data: &[u8]) {
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(data).unwrap();
}

/// Appends `prefix-NNNNNN\n` for each `i` in `range`.
pub fn append_lines(path: &Path, prefix: &str, range: std::ops::Range<usize>) {
    let mut s = String::new();
    for i in range {
        s.push_str(&format!("{prefix}-{i:06}\n"));
    }
    append(path, s.as_bytes());
}

/// The lines `prefix-NNNNNN` for `range`, as expected in the output.
pub fn expected(prefix: &str, range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("{prefix}-{i:06}")).collect()
}

/// Sleeps long enough for several polls to have happened.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(250)).await;
}

/// The entries of a position database: (path, offset).
pub fn read_pos(path: &Path) -> Vec<(String, u64)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f[0].to_string(), f[1].parse().unwrap())
        })
        .collect()
}
