//! Helpers shared by the integration tests: a capturing sink, pipelines
//! built by hand, free ports, bounded waits and captured logs.
#![allow(dead_code)]

use std::future::Future;
use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use ulog_engine::spec::{FlowSpec, MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{
    async_trait, Batch, BuildOptions, Delivery, Event, Output, Pipeline, PluginKind, PluginSpec,
    Registry, Running, Value,
};

/// Events a capture sink received, with their tags.
#[derive(Clone, Default)]
pub struct Sink(pub Arc<Mutex<Vec<(String, Event)>>>);

impl Sink {
    pub fn events(&self) -> Vec<(String, Event)> {
        self.0.lock().unwrap().clone()
    }
    pub fn len(&self) -> usize {
        self.0.lock().unwrap().len()
    }
    pub fn ints(&self, field: &str) -> Vec<i64> {
        let mut v: Vec<i64> = self
            .events()
            .iter()
            .filter_map(|(_, e)| e.record.to_map().get(field).and_then(|v| v.as_i64()))
            .collect();
        v.sort_unstable();
        v
    }
}

struct CaptureOut(Sink);

#[async_trait]
impl Output for CaptureOut {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        let mut v = (self.0).0.lock().unwrap();
        v.extend(
            batch
                .events
                .iter()
                .map(|e| (batch.tag.to_string(), e.clone())),
        );
        Delivery::Delivered
    }
}

/// A registry with the forward plugins and a capture output named `name`.
pub fn registry_with_sink(name: &'static str) -> (Registry, Sink) {
    let mut r = Registry::new();
    ulog_plugins_forward::register(&mut r);
    let sink = Sink::default();
    let s = sink.clone();
    r.add_output(
        PluginSpec::new(PluginKind::Output, name, "test sink"),
        move |_, _| Ok(Box::new(CaptureOut(s.clone()))),
    );
    (r, sink)
}

/// Starts a pipeline: `inputs`, every tag to `output`.
pub fn start(registry: &Registry, inputs: Vec<NodeSpec>, output: NodeSpec) -> Running {
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
    let options = BuildOptions {
        shutdown_timeout: Duration::from_secs(10),
        ..BuildOptions::default()
    };
    match Pipeline::build(&spec, registry, options) {
        Ok(p) => p.start(),
        Err(errors) => panic!("pipeline does not build: {errors:?}"),
    }
}

/// A port nobody listens on right now (bound, read back, released).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Waits until something accepts TCP connections on `port`.
pub async fn wait_listening(port: u16) {
    within(Duration::from_secs(10), async {
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}

/// Runs `f`, failing the test if it takes longer than `limit`.
pub async fn within<T>(limit: Duration, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?}"),
    }
}

/// Polls `cond` until it holds, failing with `what` after `limit`.
pub async fn wait_for(limit: Duration, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while !cond() {
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {limit:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `[{ host = "127.0.0.1", port = p, ... }]` for output forward's `servers`.
pub fn servers(list: &[(u16, i64, bool)]) -> Value {
    Value::List(
        list.iter()
            .map(|&(port, weight, standby)| {
                Value::Map(vec![
                    ("host".into(), "127.0.0.1".into()),
                    ("port".into(), Value::Int(i64::from(port))),
                    ("weight".into(), Value::Int(weight)),
                    ("standby".into(), Value::Bool(standby)),
                ])
            })
            .collect(),
    )
}

/// An input forward node on `port` with extra params.
pub fn input(port: u16, extra: Vec<(&str, Value)>) -> NodeSpec {
    let mut n = NodeSpec::new("forward").param("listen", format!("127.0.0.1:{port}"));
    for (k, v) in extra {
        n = n.param(k, v);
    }
    n
}

/// An output forward node with fast retries for tests.
pub fn output(id: &str, servers: Value, extra: Vec<(&str, Value)>) -> NodeSpec {
    let mut n = NodeSpec::new("forward")
        .param("id", id)
        .param("servers", servers)
        .param("retry_wait", Duration::from_millis(100))
        .param("retry_max_wait", Duration::from_millis(400));
    for (k, v) in extra {
        n = n.param(k, v);
    }
    n
}

/// The retries counted for node `id`.
pub fn retries(running: &Running, id: &str) -> u64 {
    running
        .metrics()
        .nodes
        .iter()
        .find(|n| n.id == id)
        .map_or(0, |n| n.retries)
}

#[derive(Clone)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl Write for LogBuf {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stderr().write_all(buf)?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();

/// Captures every log line of this test binary (also echoed to stderr).
pub fn capture_logs() {
    LOGS.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let writer = LogBuf(buf.clone());
        let _ = tracing_subscriber::fmt()
            .with_env_filter("ulog_plugins_forward=debug,ulog_engine=info")
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .try_init();
        buf
    });
}

/// The captured log lines that contain every one of `needles`.
pub fn log_lines(needles: &[&str]) -> Vec<String> {
    let logs = LOGS.get().expect("capture_logs() first");
    let text = String::from_utf8_lossy(&logs.lock().unwrap()).into_owned();
    text.lines()
        .filter(|l| needles.iter().all(|n| l.contains(n)))
        .map(str::to_string)
        .collect()
}

/// Waits until a log line contains every one of `needles`.
pub async fn wait_log(needles: &[&str]) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(l) = log_lines(needles).into_iter().next() {
            return l;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("no log line with {needles:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What a [`RawServer`] saw in one frame.
#[derive(Clone, Debug)]
pub struct SeenFrame {
    pub mode: ulog_plugins_forward::codec::Mode,
    pub tag: String,
    pub events: usize,
    pub chunk: Option<String>,
    pub bytes: usize,
}

/// A bare forward server on a real socket, built from the codec alone: it
/// records the frames it gets and acknowledges them only while `ack` is set.
pub struct RawServer {
    pub port: u16,
    pub frames: Arc<Mutex<Vec<SeenFrame>>>,
    pub ack: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl RawServer {
    pub async fn start(ack: bool) -> Self {
        use std::sync::atomic::{AtomicBool, Ordering};
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let frames = Arc::new(Mutex::new(Vec::new()));
        let ack = Arc::new(AtomicBool::new(ack));
        let (f, a) = (frames.clone(), ack.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                let (f, a) = (f.clone(), a.clone());
                tokio::spawn(async move {
                    let mut d = ulog_plugins_forward::FrameDecoder::default();
                    let mut buf = bytes::BytesMut::new();
                    loop {
                        while let Ok(Some(frame)) = d.decode(&mut buf) {
                            f.lock().unwrap().push(SeenFrame {
                                mode: frame.mode,
                                tag: frame.tag.to_string(),
                                events: frame.events.len(),
                                chunk: frame.chunk.clone(),
                                bytes: frame.encoded_len,
                            });
                            if let (Some(c), true) = (&frame.chunk, a.load(Ordering::SeqCst)) {
                                let mut out = Vec::new();
                                ulog_plugins_forward::codec::encode_ack(c, &mut out);
                                if s.write_all(&out).await.is_err() {
                                    return;
                                }
                            }
                        }
                        buf.reserve(65536);
                        match s.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(_) => {}
                        }
                    }
                });
            }
        });
        Self {
            port,
            frames,
            ack,
            task,
        }
    }

    pub fn frames(&self) -> Vec<SeenFrame> {
        self.frames.lock().unwrap().clone()
    }

    pub fn events(&self) -> usize {
        self.frames().iter().map(|f| f.events).sum()
    }
}

impl Drop for RawServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
