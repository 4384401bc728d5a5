//! Requests to a cluster: hosts in turn and dead-host back-off on top of
//! the official `elasticsearch` crate, one client per host.
//!
//! The crate (elastic/elasticsearch-rs, reqwest with rustls underneath)
//! sends every request: `_bulk`, the index template, anything else. Each
//! configured host gets its own [`Elasticsearch`] client over a
//! single-node connection pool, because the crate's multi-node pool only
//! rotates: it neither leaves out a node that failed nor retries a request
//! elsewhere. That part stays ulog's ([`EsClient::send`]).
//!
//! What the crate is told, per host:
//! - credentials ([`Credentials::Basic`], [`Credentials::EncodedApiKey`]);
//! - certificate checks: [`CertificateValidation::Full`] with the CAs of
//!   `tls_ca_file`, or of the system's bundle when none is given (both
//!   added to the Mozilla roots compiled into the crate's rustls, which it
//!   always trusts as well); [`CertificateValidation::None`] for
//!   `tls_verify = false`;
//! - the request timeout (connecting included, until the answer is read);
//! - no proxy (reqwest would otherwise follow `HTTPS_PROXY` and friends,
//!   which no other ulog plugin does).
//!
//! Headers sent: `Content-Type` as the caller says (`application/x-ndjson`
//! for `_bulk`, `application/json` for the template), `Accept:
//! application/json` and `x-elastic-client-meta` (the crate's),
//! `Accept-Encoding: identity` (over reqwest's `gzip`), `User-Agent:
//! ulog/<version> elasticsearch-rs/<version>`, `Content-Encoding: gzip`
//! with `compress`, `Authorization` when configured. No `compatible-with`
//! media type (OpenSearch answers it with 406) and no product check
//! (`X-Elastic-Product` is neither required nor read), so one
//! configuration works with Elasticsearch 7.x/8.x/9.x and OpenSearch
//! 1.x/2.x.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use elasticsearch::auth::Credentials;
use elasticsearch::cert::{Certificate, CertificateValidation};
use elasticsearch::http::headers::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, DEFAULT_USER_AGENT,
    USER_AGENT,
};
use elasticsearch::http::transport::{SingleNodeConnectionPool, TransportBuilder};
use elasticsearch::http::{Method, StatusCode, Url};
use elasticsearch::Elasticsearch;
use rustls::pki_types::CertificateDer;
use tracing::{debug, info, warn};

/// Largest answer read; a `_bulk` answer trimmed with `filter_path` is
/// about 30 bytes per document, so this covers bodies of 100,000 documents
/// with errors. Checked against the answer's `Content-Length` (the crate
/// reads a body whole, so an answer without one is not capped).
const MAX_ANSWER: u64 = 32 << 20;

/// How to reach the cluster, as configured.
#[derive(Clone)]
pub struct ClientConfig {
    /// Base URLs (`https://es1:9200`, `http://proxy/es`), no trailing slash.
    pub hosts: Vec<String>,
    /// Basic auth or an API key, when auth is configured.
    pub credentials: Option<Credentials>,
    /// CA certificates for https hosts; the system's bundle when unset.
    pub ca_file: Option<PathBuf>,
    /// Whether server certificates are verified (on unless turned off).
    pub tls_verify: bool,
    /// How long one request may take, connecting included.
    pub timeout: Duration,
    /// The first wait before a failed host is used again.
    pub backoff: Duration,
    /// The longest such wait.
    pub backoff_max: Duration,
}

impl std::fmt::Debug for ClientConfig {
    /// Everything but the secret: configurations end up in logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let credentials = match &self.credentials {
            None => "none",
            Some(Credentials::Basic(..)) => "basic",
            Some(Credentials::EncodedApiKey(_) | Credentials::ApiKey(..)) => "api key",
            Some(_) => "other",
        };
        f.debug_struct("ClientConfig")
            .field("hosts", &self.hosts)
            .field("credentials", &credentials)
            .field("ca_file", &self.ca_file)
            .field("tls_verify", &self.tls_verify)
            .field("timeout", &self.timeout)
            .field("backoff", &self.backoff)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

/// What became of one request.
#[derive(Debug)]
pub enum Sent {
    /// The server answered (any status).
    Answer {
        /// Its status.
        status: StatusCode,
        /// Its body.
        body: Bytes,
        /// Which host answered.
        host: usize,
    },
    /// No host answered: connection refused, reset, timed out.
    Unreachable(String),
}

struct Host {
    base: String,
    /// This host's own client (connection pool, TLS, credentials).
    es: Elasticsearch,
    /// When this host may be used again, and how many times in a row it
    /// failed.
    dead: Mutex<(Option<Instant>, u32)>,
}

/// A client shared by all requests of one output; clone it freely.
#[derive(Clone)]
pub struct EsClient {
    hosts: Arc<Vec<Host>>,
    next: Arc<AtomicUsize>,
    user_agent: HeaderValue,
    timeout: Duration,
    backoff: Duration,
    backoff_max: Duration,
}

impl EsClient {
    /// Builds one `elasticsearch` client per host; reads the CA file (or
    /// the system's bundle) when a host is https and verification is on.
    ///
    /// # Errors
    /// An unreadable CA file or one without a usable CA, a host the crate
    /// cannot parse, or a client the crate cannot build.
    pub fn new(config: &ClientConfig) -> Result<Self, String> {
        let any_tls = config.hosts.iter().any(|h| h.starts_with("https://"));
        let roots = if any_tls && config.tls_verify {
            trust_roots(config.ca_file.as_deref())?
        } else {
            Vec::new()
        };
        let hosts = config
            .hosts
            .iter()
            .map(|base| {
                let url = Url::parse(base).map_err(|e| format!("{base:?} is not a URL: {e}"))?;
                let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url))
                    .timeout(config.timeout)
                    .disable_proxy();
                if let Some(c) = &config.credentials {
                    builder = builder.auth(c.clone());
                }
                if base.starts_with("https://") {
                    builder = builder.cert_validation(if !config.tls_verify {
                        CertificateValidation::None
                    } else {
                        match certificate(&roots)? {
                            Some(c) => CertificateValidation::Full(c),
                            None => CertificateValidation::Default,
                        }
                    });
                }
                let transport = builder
                    .build()
                    .map_err(|e| format!("{base}: setting up the client: {}", chain(&e)))?;
                Ok(Host {
                    base: base.clone(),
                    es: Elasticsearch::new(transport),
                    dead: Mutex::new((None, 0)),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let user_agent = HeaderValue::from_str(&format!(
            "ulog/{} {DEFAULT_USER_AGENT}",
            env!("CARGO_PKG_VERSION")
        ))
        .map_err(|e| e.to_string())?;
        Ok(Self {
            hosts: Arc::new(hosts),
            next: Arc::new(AtomicUsize::new(0)),
            user_agent,
            timeout: config.timeout,
            backoff: config.backoff,
            backoff_max: config.backoff_max,
        })
    }

    /// The base URL of host `i`, for messages.
    pub fn host(&self, i: usize) -> &str {
        &self.hosts[i].base
    }

    /// The hosts to try for one request, in order: the next ones in turn
    /// that are not backing off, then (so a request is never refused
    /// without trying) the backing-off ones, soonest back first.
    fn order(&self) -> Vec<usize> {
        let n = self.hosts.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let mut alive = Vec::with_capacity(n);
        let mut dead = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let until = self.hosts[i].dead.lock().map(|d| d.0).unwrap_or(None);
            match until {
                Some(t) if t > now => dead.push((t, i)),
                _ => alive.push(i),
            }
        }
        dead.sort();
        if alive.is_empty() {
            // Every host is backing off: try the soonest one only.
            alive.extend(dead.first().map(|d| d.1));
        }
        alive
    }

    /// Marks host `i` as failed: not used for a while, doubling each time.
    pub fn mark_dead(&self, i: usize, why: &str) {
        if let Ok(mut d) = self.hosts[i].dead.lock() {
            d.1 = d.1.saturating_add(1);
            let wait = self
                .backoff
                .saturating_mul(1u32 << (d.1 - 1).min(16))
                .min(self.backoff_max);
            let first = d.0.is_none();
            d.0 = Some(Instant::now() + wait);
            if first {
                warn!(host = %self.hosts[i].base, error = %why, retry_in = ?wait, "Elasticsearch host failed; using the others meanwhile");
            }
        }
    }

    fn mark_alive(&self, i: usize) {
        if let Ok(mut d) = self.hosts[i].dead.lock() {
            if d.0.is_some() {
                info!(host = %self.hosts[i].base, "Elasticsearch host answers again");
            }
            *d = (None, 0);
        }
    }

    /// Sends one request to the first host that answers. A host that does
    /// not answer is marked dead and the next is tried at once; a host
    /// that answers 5xx is marked dead too, but its answer is returned (the
    /// engine's retry goes to the next host).
    ///
    /// `path` is relative to a host's base URL and may carry a query
    /// string; `body` goes as it is (already gzipped when `gzip`: the
    /// crate's own compression is not used, as it packs at the default
    /// level on the calling task).
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &'static str,
        gzip: bool,
        body: Bytes,
    ) -> Sent {
        let mut last = String::from("no host configured");
        for i in self.order() {
            let host = &self.hosts[i];
            let mut headers = HeaderMap::with_capacity(3);
            headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
            headers.insert(USER_AGENT, self.user_agent.clone());
            // reqwest would ask for gzipped answers; the server's CPU is
            // what limits `_bulk`, and a trimmed answer is small, so ask
            // for them plain (about 15 % more events/s at 10,000-event
            // batches in the bench).
            headers.insert(ACCEPT_ENCODING, HeaderValue::from_static("identity"));
            if gzip {
                headers.insert(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
            }
            let exchange = async {
                let response = host
                    .es
                    .send(method, path, headers, None::<&()>, Some(body.clone()), None)
                    .await
                    .map_err(|e| self.describe(&e))?;
                let status = response.status_code();
                if let Some(n) = response.content_length().filter(|&n| n > MAX_ANSWER) {
                    return Err(format!(
                        "the answer is {n} bytes, more than the {MAX_ANSWER} read"
                    ));
                }
                let body = response
                    .bytes()
                    .await
                    .map_err(|e| format!("reading the answer: {}", self.describe(&e)))?;
                Ok::<_, String>((status, body))
            };
            match exchange.await {
                Ok((status, body)) => {
                    if status.is_server_error() {
                        self.mark_dead(i, &format!("answered {status}"));
                    } else {
                        self.mark_alive(i);
                    }
                    return Sent::Answer {
                        status,
                        body,
                        host: i,
                    };
                }
                Err(e) => last = format!("{}: {e}", host.base),
            }
            debug!(host = %host.base, error = %last, "request failed");
            self.mark_dead(i, &last);
        }
        Sent::Unreachable(last)
    }

    /// A transport error on one line: a timeout says so plainly, anything
    /// else with its causes (a refused certificate names the reason).
    fn describe(&self, e: &elasticsearch::Error) -> String {
        if e.is_timeout() {
            format!("no answer within {:?}", self.timeout)
        } else {
            chain(e)
        }
    }
}

/// The CAs to trust on https hosts besides the crate's built-in Mozilla
/// roots: those of `ca_file`, or of the first system bundle found (none
/// found: the built-in roots alone). Only certificates that can serve as
/// trust anchors are kept, as the crate refuses a whole client for one
/// that cannot (system bundles may hold a few).
fn trust_roots(ca_file: Option<&Path>) -> Result<Vec<CertificateDer<'static>>, String> {
    let path = match ca_file {
        Some(p) => p.to_path_buf(),
        None => match ulog_tls::SYSTEM_CA_BUNDLES
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())
        {
            Some(p) => p,
            None => {
                debug!(
                    "no system CA bundle found; https hosts are checked against the built-in roots"
                );
                return Ok(Vec::new());
            }
        },
    };
    let all = ulog_tls::load_certs(&path).map_err(|e| e.to_string())?;
    let total = all.len();
    let usable: Vec<_> = all
        .into_iter()
        .filter(|c| rustls::RootCertStore::empty().add(c.clone()).is_ok())
        .collect();
    if usable.is_empty() {
        return Err(format!(
            "{}: no CA certificate usable as a trust anchor",
            path.display()
        ));
    }
    debug!(file = %path.display(), usable = usable.len(), skipped = total - usable.len(), "CA certificates loaded");
    Ok(usable)
}

/// The crate's certificate chain for `roots`; `None` when there are none.
fn certificate(roots: &[CertificateDer<'static>]) -> Result<Option<Certificate>, String> {
    let mut out: Option<Certificate> = None;
    for der in roots {
        let c = Certificate::from_der(der.as_ref()).map_err(|e| chain(&e))?;
        match &mut out {
            Some(all) => all.append(c),
            None => out = Some(c),
        }
    }
    Ok(out)
}

/// An error and its causes on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

/// Gzips a request body (fast level: the network, not the ratio, is what
/// compression is for here).
pub fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 5 + 64),
        flate2::Compression::fast(),
    );
    encoder.write_all(body)?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    fn config(hosts: &[&str]) -> ClientConfig {
        ClientConfig {
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            credentials: None,
            ca_file: None,
            tls_verify: true,
            timeout: Duration::from_secs(1),
            backoff: Duration::from_secs(1),
            backoff_max: Duration::from_secs(4),
        }
    }

    fn client(hosts: &[&str]) -> EsClient {
        EsClient::new(&config(hosts)).unwrap()
    }

    #[tokio::test]
    async fn hosts_take_turns_and_dead_ones_wait() {
        let c = client(&["http://a:1", "http://b:1", "http://c:1"]);
        assert_eq!(c.order(), [0, 1, 2]);
        assert_eq!(c.order(), [1, 2, 0]);
        c.mark_dead(1, "test");
        assert_eq!(c.order(), [2, 0]);
        assert_eq!(c.order(), [0, 2]);
        c.mark_dead(0, "test");
        c.mark_dead(0, "test");
        c.mark_dead(2, "test");
        // All backing off: the one back soonest (1, marked once) is tried.
        assert_eq!(c.order(), [1]);
        c.mark_alive(0);
        assert_eq!(c.order(), [0]);
        let waits = {
            let d = c.hosts[2].dead.lock().unwrap();
            d.1
        };
        assert_eq!(waits, 1);
    }

    #[tokio::test]
    async fn an_unreachable_host_is_reported_after_trying_each_once() {
        // Port 9 on loopback: nothing listens, connections are refused.
        let c = client(&["http://127.0.0.1:9", "http://127.0.0.2:9"]);
        let begun = Instant::now();
        let sent = c
            .send(
                Method::Post,
                "/_bulk",
                "application/x-ndjson",
                false,
                Bytes::new(),
            )
            .await;
        assert!(begun.elapsed() < Duration::from_secs(5));
        match sent {
            Sent::Unreachable(e) => assert!(e.contains("127.0.0."), "{e}"),
            other => panic!("{other:?}"),
        }
        assert!(c.hosts.iter().all(|h| h.dead.lock().unwrap().0.is_some()));
    }

    /// Serves one request on a loopback port and hands back its head
    /// (request line and headers) and body as the crate sent them.
    async fn capture_one(
        status: &'static str,
    ) -> (String, tokio::task::JoinHandle<(String, Vec<u8>)>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            let (head, body_start, length) = loop {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "the connection closed early");
                seen.extend_from_slice(&buf[..n]);
                if let Some(p) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&seen[..p]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length: "))
                        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
                    break (head, p + 4, length);
                }
            };
            while seen.len() < body_start + length {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0, "the connection closed early");
                seen.extend_from_slice(&buf[..n]);
            }
            let answer = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: 16\r\n\r\n{{\"errors\":false}}"
            );
            tcp.write_all(answer.as_bytes()).await.unwrap();
            (head, seen[body_start..body_start + length].to_vec())
        });
        (url, task)
    }

    #[tokio::test]
    async fn the_crate_sends_ulogs_headers_auth_and_the_body_as_given() {
        let (url, server) = capture_one("200 OK").await;
        let mut cfg = config(&[&url]);
        cfg.credentials = Some(Credentials::Basic("elastic".into(), "changeme".into()));
        let c = EsClient::new(&cfg).unwrap();
        let body = gzip(b"{\"create\":{}}\n{\"a\":1}\n").unwrap();
        let sent = c
            .send(
                Method::Post,
                "/_bulk?filter_path=errors,items.*.status,items.*.error&pipeline=p-1",
                "application/x-ndjson",
                true,
                Bytes::from(body.clone()),
            )
            .await;
        let Sent::Answer {
            status,
            body: answer,
            host,
        } = sent
        else {
            panic!("{sent:?}")
        };
        assert_eq!((status.as_u16(), host), (200, 0));
        assert_eq!(&answer[..], b"{\"errors\":false}");
        let (head, got) = server.await.unwrap();
        let line = head.lines().next().unwrap();
        assert_eq!(
            line,
            "post /_bulk?filter_path=errors,items.*.status,items.*.error&pipeline=p-1 http/1.1"
        );
        let has = |h: &str| head.lines().any(|l| l == h);
        assert!(has("content-type: application/x-ndjson"), "{head}");
        assert!(has("accept: application/json"), "{head}");
        // Not reqwest's `gzip`: answers come plain.
        assert!(has("accept-encoding: identity"), "{head}");
        assert!(has("content-encoding: gzip"), "{head}");
        assert!(
            has("authorization: basic zwxhc3rpyzpjagfuz2vtzq=="),
            "{head}"
        );
        assert!(
            head.lines()
                .any(|l| l.starts_with("user-agent: ulog/") && l.contains("elasticsearch-rs/")),
            "{head}"
        );
        assert!(head.contains("x-elastic-client-meta: es="), "{head}");
        assert!(!head.contains("compatible-with"), "{head}");
        // Sent as given: the pre-gzipped bytes, not packed a second time.
        assert_eq!(got, body);
    }

    #[tokio::test]
    async fn an_api_key_goes_as_is_and_a_5xx_host_is_backed_off() {
        let (url, server) = capture_one("503 Service Unavailable").await;
        let mut cfg = config(&[&url]);
        cfg.credentials = Some(Credentials::EncodedApiKey("a2V5OnNlY3JldA==".into()));
        let c = EsClient::new(&cfg).unwrap();
        let sent = c
            .send(
                Method::Put,
                "/_index_template/ulog",
                "application/json",
                false,
                Bytes::from_static(b"{}"),
            )
            .await;
        assert!(
            matches!(sent, Sent::Answer { status, .. } if status.as_u16() == 503),
            "{sent:?}"
        );
        let (head, got) = server.await.unwrap();
        assert!(head.starts_with("put /_index_template/ulog "), "{head}");
        // Header names and values are lower-cased by the capture.
        assert!(
            head.contains("authorization: apikey a2v5onnly3jlda=="),
            "{head}"
        );
        assert!(head.contains("content-type: application/json"), "{head}");
        assert!(!head.contains("content-encoding"), "{head}");
        assert_eq!(got, b"{}");
        assert!(c.hosts[0].dead.lock().unwrap().0.is_some());
    }

    #[tokio::test]
    async fn a_silent_host_times_out_and_says_so() {
        // Accepts the connection and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let _server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
            drop(tcp);
        });
        let mut cfg = config(&[&url]);
        cfg.timeout = Duration::from_millis(300);
        let c = EsClient::new(&cfg).unwrap();
        let begun = Instant::now();
        let sent = c
            .send(
                Method::Post,
                "/_bulk",
                "application/x-ndjson",
                false,
                Bytes::new(),
            )
            .await;
        assert!(begun.elapsed() < Duration::from_secs(3));
        match sent {
            Sent::Unreachable(e) => assert!(e.contains("no answer within 300ms"), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let mut cfg = config(&["https://es1:9200"]);
        cfg.ca_file = Some(path.clone());
        let e = EsClient::new(&cfg).err().unwrap();
        assert!(e.contains("empty.pem"), "{e}");
        // Turned off, no file is read at all.
        cfg.tls_verify = false;
        assert!(EsClient::new(&cfg).is_ok());
    }

    #[test]
    fn the_system_bundle_is_trusted_when_there_is_one() {
        let roots = trust_roots(None).unwrap();
        let bundle = ulog_tls::SYSTEM_CA_BUNDLES
            .iter()
            .find(|p| Path::new(p).exists());
        // Without a bundle, the crate's built-in roots alone are used.
        assert_eq!(roots.is_empty(), bundle.is_none(), "{bundle:?}");
        assert!(certificate(&roots).unwrap().is_some() || roots.is_empty());
    }

    #[test]
    fn gzip_round_trips() {
        use std::io::Read as _;
        let body = b"{\"create\":{}}\n{\"a\":1}\n".repeat(100);
        let packed = gzip(&body).unwrap();
        assert!(packed.len() < body.len() / 5);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&packed[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, body);
    }
}
