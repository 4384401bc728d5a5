//! Measures how fast `input tail` reads a file into a pipeline.
//!
//! Writes a temporary file of JSON lines (about 120 bytes each), then runs
//! `tail → count` with `read_from_head = true` and reports the time until
//! every line was delivered, for `format = "json"` (lines kept as their
//! bytes) and `format = "none"` (each line copied into a `message` field).
//!
//! ```text
//! cargo run --release -p ulog-plugins-tail --example tail_throughput -- [lines]
//! ```

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ulog_engine::spec::{FlowSpec, MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{
    async_trait, Batch, BuildOptions, Delivery, Output, Pipeline, PluginKind, PluginSpec, Registry,
};

struct Count(Arc<AtomicU64>);

#[async_trait]
impl Output for Count {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        Delivery::Delivered
    }
}

async fn run(path: &std::path::Path, format: &str, lines: u64, bytes: u64) {
    let count = Arc::new(AtomicU64::new(0));
    let mut r = Registry::new();
    ulog_plugins_tail::register(&mut r);
    let c = count.clone();
    r.add_output(
        PluginSpec::new(PluginKind::Output, "count", "counts events"),
        move |_, _| Ok(Box::new(Count(c.clone()))),
    );
    let spec = PipelineSpec {
        inputs: vec![NodeSpec::new("tail")
            .param("path", path.to_str().unwrap())
            .param("tag", "bench")
            .param("format", format)
            .param("read_from_head", true)
            .param("poll_interval", Duration::from_millis(10))],
        root: FlowSpec {
            filters: vec![],
            matches: vec![MatchSpec {
                patterns: vec!["**".into()],
                outputs: vec![NodeSpec::new("count")],
            }],
        },
        labels: vec![],
    };
    let running = Pipeline::build(&spec, &r, BuildOptions::default())
        .unwrap_or_else(|e| panic!("{e:?}"))
        .start();
    let t0 = Instant::now();
    while count.load(Ordering::Relaxed) < lines {
        tokio::time::sleep(Duration::from_millis(2)).await;
        assert!(t0.elapsed() < Duration::from_secs(300), "took too long");
    }
    let secs = t0.elapsed().as_secs_f64();
    running.stop();
    running.wait().await;
    println!(
        "format={format:<5} {lines} lines, {:.1} MiB in {secs:.3}s: {:.0} lines/s, {:.1} MiB/s",
        bytes as f64 / (1 << 20) as f64,
        lines as f64 / secs,
        bytes as f64 / (1 << 20) as f64 / secs
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let lines: u64 = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("a number of lines"))
        .unwrap_or(2_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bench.log");
    let mut w = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
    for i in 0..lines {
        writeln!(
            w,
            r#"{{"time":"2024-05-01T10:00:00Z","level":"info","host":"web-{}","msg":"request served","status":200,"n":{i}}}"#,
            i % 16
        )
        .unwrap();
    }
    w.flush().unwrap();
    drop(w);
    let bytes = std::fs::metadata(&path).unwrap().len();
    for format in ["json", "none"] {
        run(&path, format, lines, bytes).await;
    }
}
