//! Measures `input tcp` → a counting output over loopback: how many JSON
//! lines per second one ulog process takes in.
//!
//! ```text
//! cargo run --release -p ulog-plugins-net --example tcp_throughput -- [connections] [million_lines]
//! ```
//!
//! The clients run in the same process (one task each), so the figure is a
//! lower bound of what the input does with a separate sender.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use ulog_engine::spec::{FlowSpec, MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{
    async_trait, Batch, BuildOptions, Delivery, Output, Pipeline, PluginKind, PluginSpec, Registry,
};

struct Count(Arc<AtomicU64>, Arc<AtomicU64>);

#[async_trait]
impl Output for Count {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        self.0.fetch_add(batch.len() as u64, Ordering::Relaxed);
        self.1.fetch_add(1, Ordering::Relaxed);
        Delivery::Delivered
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let conns: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1);
    let millions: f64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(2.0);
    let total = (millions * 1e6) as u64;
    let per_conn = total / conns as u64;

    let events = Arc::new(AtomicU64::new(0));
    let batches = Arc::new(AtomicU64::new(0));
    let mut registry = Registry::new();
    ulog_plugins_net::register(&mut registry);
    let (e, b) = (events.clone(), batches.clone());
    registry.add_output(
        PluginSpec::new(PluginKind::Output, "count", "counts events"),
        move |_, _| Ok(Box::new(Count(e.clone(), b.clone())) as Box<dyn Output>),
    );
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = PipelineSpec {
        inputs: vec![NodeSpec::new("tcp")
            .param("listen", format!("127.0.0.1:{port}"))
            .param("tag", "bench")],
        root: FlowSpec {
            filters: vec![],
            matches: vec![MatchSpec {
                patterns: vec!["**".into()],
                outputs: vec![NodeSpec::new("count")],
            }],
        },
        labels: vec![],
    };
    let running = Pipeline::build(&spec, &registry, BuildOptions::default())
        .expect("pipeline")
        .start();

    // ~110-byte lines, like a typical structured application log.
    let mut chunk = Vec::new();
    let lines_per_chunk = 1000u64;
    for i in 0..lines_per_chunk {
        chunk.extend_from_slice(
            format!(
                "{{\"ts\":\"2024-05-01T10:00:00.123Z\",\"level\":\"info\",\"msg\":\"request done\",\"status\":200,\"n\":{i}}}\n"
            )
            .as_bytes(),
        );
    }
    let chunk = Arc::new(chunk);
    let bytes_per_line = chunk.len() as f64 / lines_per_chunk as f64;

    let mut probe = loop {
        match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    };
    probe.shutdown().await.ok();

    let started = Instant::now();
    let mut clients = Vec::new();
    for _ in 0..conns {
        let chunk = chunk.clone();
        clients.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            let mut sent = 0;
            while sent < per_conn {
                s.write_all(&chunk).await.unwrap();
                sent += lines_per_chunk;
            }
            sent
        }));
    }
    let mut expected = 0;
    for c in clients {
        expected += c.await.unwrap();
    }
    while events.load(Ordering::Relaxed) < expected {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    let n = events.load(Ordering::Relaxed);
    println!(
        "{conns} connection(s): {n} lines in {secs:.2} s = {:.2} M lines/s, {:.0} MB/s, {:.0} lines per batch",
        n as f64 / secs / 1e6,
        n as f64 * bytes_per_line / secs / 1e6,
        n as f64 / batches.load(Ordering::Relaxed) as f64
    );
    running.stop();
    running.wait().await;
}
