//! Helpers shared by the integration tests: a capturing output and pipeline
//! plumbing.
#![allow(dead_code)]

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

struct CaptureOutput {
    name: String,
    store: Captures,
}

#[async_trait]
impl Output for CaptureOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
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

/// A registry with this crate's plugins and the test-only `capture` output.
pub fn registry() -> (Registry, Captures) {
    let mut r = Registry::new();
    ulog_plugins_basic::register(&mut r);
    let captures = Captures::default();
    let store = captures.clone();
    r.add_output(
        PluginSpec::new(PluginKind::Output, "capture", "test sink").param(ParamSpec::required(
            "name",
            ParamKind::Str,
            "which list",
        )),
        move |p: &Params, _: &BuildContext| {
            Ok(Box::new(CaptureOutput {
                name: p.str("name")?.to_string(),
                store: store.clone(),
            }) as Box<dyn Output>)
        },
    );
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

/// Builds and starts `spec`.
pub fn start(spec: &PipelineSpec, registry: &Registry, base_dir: &std::path::Path) -> Running {
    let options = BuildOptions {
        base_dir: base_dir.to_path_buf(),
        shutdown_timeout: Duration::from_secs(10),
    };
    match Pipeline::build(spec, registry, options) {
        Ok(p) => p.start(),
        Err(errors) => panic!("pipeline did not build: {errors:?}"),
    }
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

/// Stops the pipeline and waits (at most 15 s) for it to end.
pub async fn stop(running: Running) -> ulog_engine::RunReport {
    running.stop();
    tokio::time::timeout(Duration::from_secs(15), running.wait())
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
