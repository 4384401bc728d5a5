//! Local stand-ins for the push gateways, shared by the tests and the bench.
//!
//! Each stand-in checks what the real gateway checks (paths, required
//! headers, the JWT's signature against the test public key and its claims,
//! the OAuth exchange, payload schema and size) and answers with the
//! documented status codes and error bodies. Anything a real gateway would
//! refuse but that has no documented error body is also written to
//! `violations()`, which every test asserts empty: a client bug fails a test
//! either way.
#![allow(dead_code)]

pub mod apns;
pub mod fcm;
pub mod simple;
pub mod wns;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use ulog_engine::CancellationToken;

/// A request as a stand-in handler sees it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// "HTTP/2.0" or "HTTP/1.1".
    pub version: String,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// A stand-in's answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Self {
            status,
            headers: vec![("content-type".into(), "application/json".into())],
            body: serde_json::to_vec(&body).unwrap(),
        }
    }
    pub fn empty(status: u16) -> Self {
        Self {
            status,
            headers: Vec::new(),
            body: Vec::new(),
        }
    }
    pub fn with_header(mut self, k: &str, v: &str) -> Self {
        self.headers.push((k.into(), v.into()));
        self
    }
}

pub type Handler = Arc<dyn Fn(Req) -> Resp + Send + Sync>;

/// A test CA and a server certificate for 127.0.0.1 and localhost.
pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_file: PathBuf,
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
}

impl Pki {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "ulog push test CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).unwrap();
        Self {
            dir,
            ca_file,
            cert_der: leaf.der().to_vec(),
            key_der: leaf_key.serialize_der(),
        }
    }

    fn acceptor(&self, alpn: &[&[u8]]) -> TlsAcceptor {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(
                    self.cert_der.clone(),
                )],
                rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into()),
            )
            .unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        TlsAcceptor::from(Arc::new(config))
    }
}

/// How a stand-in is reached.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Transport {
    /// TLS, HTTP/2 only (APNs).
    TlsH2,
    /// TLS, HTTP/2 or HTTP/1.1 by ALPN (FCM, WNS).
    TlsAny,
    /// Plain HTTP/1.1 (a household's webhook, a local ntfy).
    Plain,
}

/// A running stand-in: can be taken down and brought back on the same port.
pub struct Server {
    pub addr: SocketAddr,
    transport: Transport,
    acceptor: Option<TlsAcceptor>,
    handler: Handler,
    stop: Mutex<CancellationToken>,
    /// Connections accepted, to show connection reuse.
    pub connections: Arc<Mutex<u64>>,
}

impl Server {
    pub async fn start(pki: &Pki, transport: Transport, handler: Handler) -> Arc<Self> {
        let acceptor = match transport {
            Transport::TlsH2 => Some(pki.acceptor(&[b"h2"])),
            Transport::TlsAny => Some(pki.acceptor(&[b"h2", b"http/1.1"])),
            Transport::Plain => None,
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server = Arc::new(Self {
            addr: listener.local_addr().unwrap(),
            transport,
            acceptor,
            handler,
            stop: Mutex::new(CancellationToken::new()),
            connections: Arc::new(Mutex::new(0)),
        });
        server.clone().run(listener);
        server
    }

    pub fn base_url(&self) -> String {
        match self.transport {
            Transport::Plain => format!("http://{}", self.addr),
            _ => format!("https://{}", self.addr),
        }
    }

    /// Closes the listener and every connection: the gateway is down.
    pub fn down(&self) {
        self.stop.lock().unwrap().cancel();
    }

    /// Listens again on the same port.
    pub async fn up(self: &Arc<Self>) {
        *self.stop.lock().unwrap() = CancellationToken::new();
        let listener = TcpListener::bind(self.addr).await.unwrap();
        self.clone().run(listener);
    }

    fn run(self: Arc<Self>, listener: TcpListener) {
        let stop = self.stop.lock().unwrap().clone();
        tokio::spawn(async move {
            loop {
                let (tcp, _) = tokio::select! {
                    _ = stop.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                *self.connections.lock().unwrap() += 1;
                let _ = tcp.set_nodelay(true);
                let this = self.clone();
                let stop = stop.clone();
                tokio::spawn(async move {
                    let handler = this.handler.clone();
                    let service = service_fn(move |req: Request<Incoming>| {
                        let handler = handler.clone();
                        async move {
                            let (parts, body) = req.into_parts();
                            let body = body
                                .collect()
                                .await
                                .map(|b| b.to_bytes())
                                .unwrap_or_default();
                            let r = Req {
                                method: parts.method.to_string(),
                                path: parts
                                    .uri
                                    .path_and_query()
                                    .map(|p| p.to_string())
                                    .unwrap_or_default(),
                                headers: parts.headers,
                                body,
                                version: format!("{:?}", parts.version),
                            };
                            let resp = handler(r);
                            let mut b = Response::builder()
                                .status(StatusCode::from_u16(resp.status).unwrap());
                            for (k, v) in &resp.headers {
                                b = b.header(k, v);
                            }
                            Ok::<_, std::convert::Infallible>(
                                b.body(Full::new(Bytes::from(resp.body))).unwrap(),
                            )
                        }
                    });
                    match &this.acceptor {
                        Some(acceptor) => {
                            let Ok(tls) = acceptor.accept(tcp).await else {
                                return;
                            };
                            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
                            let io = TokioIo::new(tls);
                            if h2 {
                                let mut b =
                                    hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                                b.max_concurrent_streams(1000);
                                let conn = b.serve_connection(io, service);
                                tokio::select! { _ = stop.cancelled() => {}, _ = conn => {} }
                            } else {
                                let conn = hyper::server::conn::http1::Builder::new()
                                    .serve_connection(io, service);
                                tokio::select! { _ = stop.cancelled() => {}, _ = conn => {} }
                            }
                        }
                        None => {
                            let conn = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(tcp), service);
                            tokio::select! { _ = stop.cancelled() => {}, _ = conn => {} }
                        }
                    }
                });
            }
        });
    }
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A compact JWS split and decoded: (header, claims, signing input, signature).
pub fn split_jwt(
    jwt: &str,
) -> Result<(serde_json::Value, serde_json::Value, String, Vec<u8>), String> {
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = jwt.split('.').collect();
    if parts.len() != 3 {
        return Err("not a compact JWS".into());
    }
    let header = b64.decode(parts[0]).map_err(|e| format!("header: {e}"))?;
    let claims = b64.decode(parts[1]).map_err(|e| format!("claims: {e}"))?;
    let sig = b64
        .decode(parts[2])
        .map_err(|e| format!("signature: {e}"))?;
    Ok((
        serde_json::from_slice(&header).map_err(|e| format!("header: {e}"))?,
        serde_json::from_slice(&claims).map_err(|e| format!("claims: {e}"))?,
        format!("{}.{}", parts[0], parts[1]),
        sig,
    ))
}

/// Writes a registry file.
pub fn write_registry(dir: &Path, devices: serde_json::Value) -> PathBuf {
    let p = dir.join("devices.json");
    std::fs::write(
        &p,
        serde_json::to_vec_pretty(&serde_json::json!({ "devices": devices })).unwrap(),
    )
    .unwrap();
    p
}

/// Parameters for an output, from `(name, value)` pairs, validated against
/// its spec the way a routes file would be.
pub fn params(
    spec: &ulog_engine::PluginSpec,
    given: Vec<(&str, ulog_engine::Value)>,
) -> ulog_engine::Params {
    let given: Vec<(String, ulog_engine::Value)> =
        given.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    spec.validate(&given).unwrap()
}

pub fn ctx() -> ulog_engine::BuildContext {
    ulog_engine::BuildContext {
        id: "push-test".into(),
        base_dir: PathBuf::from("/"),
    }
}

/// A batch of events with fresh ids.
pub fn batch(tag: &str, records: Vec<serde_json::Value>) -> ulog_engine::Batch {
    let ids = ulog_engine::EventId::fresh(records.len());
    let events = records
        .into_iter()
        .zip(ids)
        .map(|(r, id)| {
            let mut e = ulog_engine::Event::new(
                ulog_engine::EventTime::now(),
                ulog_engine::Record::Map(r.as_object().unwrap().clone()),
            );
            e.id = id;
            e
        })
        .collect();
    ulog_engine::Batch::new(ulog_engine::Tag::parse(tag).unwrap(), events)
}
