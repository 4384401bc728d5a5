//! The HTTP client every push output shares: hyper's pooled client over
//! rustls (ulog's `tls` setup), HTTP/2 where the gateway offers it.
//!
//! APNs only speaks HTTP/2; with `http2_only` the pool keeps one connection
//! per gateway and multiplexes every request of a batch over it as separate
//! streams, which is what Apple asks providers to do. A connection that
//! breaks is replaced on the next request.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::HeaderMap;
use hyper::{Request, StatusCode};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

/// Response bodies are read up to this size (error bodies are small).
const MAX_BODY: usize = 64 << 10;

/// A gateway's answer.
#[derive(Debug)]
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    /// The `Retry-After` header in seconds, when given as a number.
    pub fn retry_after(&self) -> Option<Duration> {
        self.headers
            .get(hyper::header::RETRY_AFTER)?
            .to_str()
            .ok()?
            .trim()
            .parse::<u64>()
            .ok()
            .map(Duration::from_secs)
    }

    /// The start of the body as text, for error messages.
    pub fn excerpt(&self) -> String {
        let n = self.body.len().min(300);
        String::from_utf8_lossy(&self.body[..n]).into_owned()
    }
}

/// A pooled HTTPS (and HTTP) client with a per-request timeout.
#[derive(Clone)]
pub(crate) struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl HttpClient {
    /// A client trusting the CAs in `ca_file` (or the system's), offering
    /// HTTP/2 and HTTP/1.1 by ALPN, or HTTP/2 only.
    pub fn new(
        ca_file: Option<&Path>,
        http2_only: bool,
        timeout: Duration,
    ) -> Result<Self, String> {
        let tls =
            ulog_tls::client_config(ca_file, ulog_tls::Verify::Full).map_err(|e| e.to_string())?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let builder = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http();
        let connector = if http2_only {
            builder.enable_http2().wrap_connector(http)
        } else {
            builder.enable_all_versions().wrap_connector(http)
        };
        let mut b = Client::builder(TokioExecutor::new());
        b.pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(300))
            .http2_keep_alive_interval(Duration::from_secs(60))
            .http2_keep_alive_while_idle(true)
            .http2_initial_stream_window_size(1 << 20)
            .http2_initial_connection_window_size(8 << 20);
        if http2_only {
            b.http2_only(true);
        }
        Ok(Self {
            client: b.build(connector),
            timeout,
        })
    }

    /// Sends `request` and reads the answer.
    ///
    /// # Errors
    /// A connection failure or the timeout, as text: every such error is a
    /// reason to retry.
    pub async fn send(&self, request: Request<Full<Bytes>>) -> Result<Answer, String> {
        let uri = request.uri().clone();
        let go = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| format!("{uri}: {}", error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_BODY)
                .collect()
                .await
                .map_err(|e| format!("{uri}: reading the answer: {e}"))?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(self.timeout, go).await {
            Ok(r) => r,
            Err(_) => Err(format!("{uri}: no answer within {:?}", self.timeout)),
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
