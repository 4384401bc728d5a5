//! Helpers shared by the integration tests of the basic and http crates
//! (http includes this file): capturing outputs and pipeline plumbing.
#![allow(dead_code)]

pub mod docs;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ulog_engine::spec::{LabelSpec, MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildOptions, Delivery, Event, Output, ParamKind, ParamSpec,
    Params, Pipeline, PluginKind, PluginSpec, Registry, Running,
};

/// Captured events with their tags, by capture name.
type Store = HashMap<String, Vec<(String, Event)>>;

/// What the `capture` outputs received, by their `name` parameter.
#[derive(Clone, Default)]
pub struct Captures(Arc<Mutex<Store>>, Arc<Mutex<HashMap<String, Vec<usize>>>>);

impl Captures {
    /// The size of each batch captured under `name`, in order.
    pub fn batch_sizes(&self, name: &str) -> Vec<usize> {
        self.1
            .lock()
            .unwrap()
            .get(name)
            .cloned()
            .unwrap_or_default()
    }

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

/// Holds a `gated` output inside `write` until the test lets it go.
pub struct Gate {
    permits: tokio::sync::Semaphore,
    entered: std::sync::atomic::AtomicUsize,
}

impl Default for Gate {
    fn default() -> Self {
        Self {
            permits: tokio::sync::Semaphore::new(0),
            entered: Default::default(),
        }
    }
}

impl Gate {
    /// Lets `n` more writes through.
    pub fn open(&self, n: usize) {
        self.permits.add_permits(n);
    }

    /// Writes started so far (waiting at the gate or past it).
    pub fn entered(&self) -> usize {
        self.entered.load(std::sync::atomic::Ordering::SeqCst)
    }
}

struct CaptureOutput {
    name: String,
    store: Captures,
    /// When set, each write first waits for a permit.
    gate: Option<Arc<Gate>>,
}

#[async_trait]
impl Output for CaptureOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        if let Some(gate) = &self.gate {
            gate.entered
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            gate.permits.acquire().await.unwrap().forget();
        }
        self.store
            .1
            .lock()
            .unwrap()
            .entry(self.name.clone())
            .or_default()
            .push(batch.len());
        let mut all = self.store.0.lock().unwrap();
        let list = all.entry(self.name.clone()).or_default();
        list.extend(
            batch
                .events
                .iter()
                .map(|e| (batch.tag.as_str().to_string(), e.clone())),
        );
        Delivery::Delivered
    }
}

/// Registers the test-only outputs: `capture` and `gated` (a capture that
/// waits at the returned gate), each keeping events under its `name`
/// (default: its type name).
pub fn add_test_outputs(r: &mut Registry) -> (Captures, Arc<Gate>) {
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
    (captures, gate)
}

/// A registry with the basic plugins and the test outputs.
pub fn registry() -> (Registry, Captures) {
    let mut r = Registry::new();
    ulog_plugins_basic::register(&mut r);
    let (captures, _) = add_test_outputs(&mut r);
    (r, captures)
}

/// `match "**" <output>`.
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
        flow: ulog_engine::spec::FlowSpec {
            filters: vec![],
            matches: vec![match_all(NodeSpec::new("capture").param("name", "errors"))],
        },
    }
}

/// Builds and starts `spec` with `options`.
pub fn start_with(spec: &PipelineSpec, registry: &Registry, options: BuildOptions) -> Running {
    match Pipeline::build(spec, registry, options) {
        Ok(p) => p.start(),
        Err(errors) => panic!("pipeline did not build: {errors:?}"),
    }
}

/// Builds and starts `spec`, relative paths resolving in `base_dir`.
pub fn start(spec: &PipelineSpec, registry: &Registry, base_dir: &std::path::Path) -> Running {
    let options = BuildOptions {
        base_dir: base_dir.to_path_buf(),
        shutdown_timeout: Duration::from_secs(10),
    };
    start_with(spec, registry, options)
}

/// Waits (at most 10 s) until `cond` holds.
pub async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Stops the pipeline and waits (at most 20 s) for it to end.
pub async fn stop(running: Running) -> ulog_engine::RunReport {
    running.stop();
    tokio::time::timeout(Duration::from_secs(20), running.wait())
        .await
        .expect("pipeline did not stop in time")
}

/// A tracing subscriber that writes into a shared buffer, to assert on logs.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// Installs the buffer as this thread's subscriber until the guard drops.
    pub fn install(&self) -> tracing::subscriber::DefaultGuard {
        let buf = self.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .with_writer(move || buf.clone())
            .finish();
        tracing::subscriber::set_default(subscriber)
    }

    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
