//! Helpers shared by the integration tests: a capturing output, pipelines
//! built by hand, free ports, log capture and test certificates.
#![allow(dead_code)]

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ulog_engine::spec::{FlowSpec, LabelSpec, MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{
    async_trait, Batch, BuildOptions, Delivery, Event, Output, ParamSpec, Pipeline, PluginKind,
    PluginSpec, Registry, Running,
};

/// Everything a test waits for is bounded by this.
pub const TIMEOUT: Duration = Duration::from_secs(15);

/// Batches an output received, shared with the test.
#[derive(Clone, Default)]
pub struct Sink(Arc<Mutex<Vec<Batch>>>);

impl Sink {
    pub fn batches(&self) -> Vec<Batch> {
        self.0.lock().unwrap().clone()
    }

    pub fn events(&self) -> Vec<(String, Event)> {
        self.batches()
            .into_iter()
            .flat_map(|b| {
                let tag = b.tag.to_string();
                b.events.into_iter().map(move |e| (tag.clone(), e))
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.0.lock().unwrap().iter().map(|b| b.len()).sum()
    }

    /// Waits until at least `n` events arrived; panics after [`TIMEOUT`].
    pub async fn wait_for(&self, n: usize) -> Vec<(String, Event)> {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let have = self.len();
            if have >= n {
                return self.events();
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {n} events; got {have}: {:?}",
                self.events()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Records as JSON values, in arrival order.
    pub fn json(&self) -> Vec<serde_json::Value> {
        self.events()
            .into_iter()
            .map(|(_, e)| serde_json::Value::Object(e.record.to_map().into_owned()))
            .collect()
    }
}

struct Capture(Sink);

#[async_trait]
impl Output for Capture {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        self.0 .0.lock().unwrap().push(batch.clone());
        Delivery::Delivered
    }
}

/// A registry with this crate's plugins and `capture` outputs: `capture {
/// sink = "name" }` writes into the sink of that name.
pub fn registry(sinks: &[(&'static str, Sink)]) -> Registry {
    let mut r = Registry::new();
    ulog_plugins_net::register(&mut r);
    let sinks: Vec<(&'static str, Sink)> = sinks.to_vec();
    r.add_output(
        PluginSpec::new(PluginKind::Output, "capture", "test sink").param(ParamSpec::required(
            "sink",
            ulog_engine::ParamKind::Str,
            "which sink",
        )),
        move |params, _| {
            let name = params.str("sink")?;
            let sink = sinks
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| s.clone())
                .expect("unknown sink");
            Ok(Box::new(Capture(sink)) as Box<dyn Output>)
        },
    );
    r
}

/// `match "**" capture { sink = name }`.
pub fn capture_all(name: &str) -> MatchSpec {
    MatchSpec {
        patterns: vec!["**".into()],
        outputs: vec![NodeSpec::new("capture").param("sink", name)],
    }
}

/// Builds and starts a pipeline: `inputs`, then `matches` at top level, and
/// an `errors` label capturing into `errors_sink` when given.
pub fn start(
    registry: &Registry,
    inputs: Vec<NodeSpec>,
    matches: Vec<MatchSpec>,
    errors_sink: Option<&str>,
) -> Running {
    let spec = PipelineSpec {
        inputs,
        root: FlowSpec {
            filters: vec![],
            matches,
        },
        labels: errors_sink
            .map(|s| LabelSpec {
                name: "errors".into(),
                flow: FlowSpec {
                    filters: vec![],
                    matches: vec![capture_all(s)],
                },
            })
            .into_iter()
            .collect(),
    };
    let options = BuildOptions {
        shutdown_timeout: Duration::from_secs(10),
        ..BuildOptions::default()
    };
    Pipeline::build(&spec, registry, options)
        .unwrap_or_else(|e| panic!("pipeline does not build: {e:?}"))
        .start()
}

/// Stops a pipeline and waits for it, bounded by [`TIMEOUT`].
pub async fn stop(running: Running) -> ulog_engine::RunReport {
    running.stop();
    tokio::time::timeout(TIMEOUT, running.wait())
        .await
        .expect("pipeline did not stop in time")
}

/// A TCP port that was free a moment ago (inputs bind in `run`, so the test
/// has to choose the port).
pub fn free_tcp_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Connects, retrying until the input listens (bounded by [`TIMEOUT`]).
pub async fn connect(port: u16) -> tokio::net::TcpStream {
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => return s,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "input on {port} never listened: {e}"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// Waits until something listens on `port` (then closes the probe).
pub async fn wait_listening(port: u16) {
    drop(connect(port).await);
}

/// Log lines written while a [`LogCapture`] is the thread's subscriber.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

pub struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogWriter;
    fn make_writer(&'a self) -> LogWriter {
        LogWriter(self.0.clone())
    }
}

impl LogCapture {
    /// Captures logs of this thread (tests run on a current-thread runtime,
    /// so the pipeline's tasks log here too) until the guard is dropped.
    pub fn install() -> (Self, tracing::subscriber::DefaultGuard) {
        let cap = LogCapture::default();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(cap.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::DEBUG)
            .finish();
        let guard = tracing::subscriber::set_default(subscriber);
        (cap, guard)
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Waits until the log contains `needle`; panics after [`TIMEOUT`].
    pub async fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + TIMEOUT;
        loop {
            let text = self.text();
            if text.contains(needle) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "log never said {needle:?}:\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// A CA and a certificate for `localhost` / 127.0.0.1 signed by it, written
/// as PEM files.
pub struct TestCerts {
    pub dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

pub fn test_certs() -> TestCerts {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "ulog test CA");
    let ca_key = KeyPair::generate().unwrap();
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_params =
        CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = leaf_params.signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let write = |name: &str, text: String| -> PathBuf {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    TestCerts {
        ca: write("ca.pem", ca.pem()),
        cert: write("cert.pem", leaf.pem()),
        key: write("key.pem", leaf_key.serialize_pem()),
        dir,
    }
}

/// A rustls client connector trusting `ca`.
pub fn tls_connector(ca: &Path) -> tokio_rustls::TlsConnector {
    let config = ulog_tls::client_config(Some(ca), ulog_tls::Verify::Full).unwrap();
    tokio_rustls::TlsConnector::from(config)
}

/// Connects with TLS to the input on `port`, retrying until it listens.
pub async fn connect_tls(
    port: u16,
    ca: &Path,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let tcp = connect(port).await;
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    tokio::time::timeout(TIMEOUT, tls_connector(ca).connect(name, tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake failed")
}
