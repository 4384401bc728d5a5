//! A small JSON-over-HTTPS client for the Nissan services: form POSTs
//! (Carwings, OAuth token requests) and bearer GETs (Kamereon), with a
//! timeout, `Retry-After` read from 429/503 answers, and rustls for TLS.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// No answer: connection refused, reset, timed out.
    #[error("{url}: {message}")]
    Transport {
        /// The URL asked.
        url: String,
        /// What happened.
        message: String,
    },
    /// An answer that is not JSON.
    #[error("{url}: HTTP {status}, body is not JSON: {body}")]
    NotJson {
        /// The URL asked.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the body.
        body: String,
    },
}

/// An answer: the HTTP status, the JSON body, and how long the server asked
/// to wait (`Retry-After` in seconds), if it did.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Value,
    /// `Retry-After`, when given in seconds.
    pub retry_after: Option<Duration>,
}

/// The client; cheap to clone (connections are pooled).
#[derive(Clone)]
pub struct Http {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    timeout: Duration,
}

impl Http {
    /// A client verifying servers with `tls`.
    pub fn new(tls: std::sync::Arc<rustls::ClientConfig>, timeout: Duration) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            timeout,
        }
    }

    /// POSTs `fields` as `application/x-www-form-urlencoded`.
    ///
    /// # Errors
    /// [`HttpError`] when there is no answer, or it is not JSON.
    pub async fn post_form(
        &self,
        url: &str,
        fields: &[(&str, &str)],
        headers: &[(&str, String)],
    ) -> Result<Answer, HttpError> {
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .header("user-agent", concat!("ulog/", env!("CARGO_PKG_VERSION")));
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        self.send(url, req.body(Full::new(Bytes::from(body)))).await
    }

    /// GETs `url` with a bearer token.
    ///
    /// # Errors
    /// As [`Http::post_form`].
    pub async fn get_json(&self, url: &str, bearer: &str) -> Result<Answer, HttpError> {
        let req = Request::builder()
            .method(Method::GET)
            .uri(url)
            .header("authorization", format!("Bearer {bearer}"))
            .header("accept", "application/vnd.api+json")
            .header("user-agent", concat!("ulog/", env!("CARGO_PKG_VERSION")));
        self.send(url, req.body(Full::new(Bytes::new()))).await
    }

    async fn send(
        &self,
        url: &str,
        req: Result<Request<Full<Bytes>>, hyper::http::Error>,
    ) -> Result<Answer, HttpError> {
        let transport = |message: String| HttpError::Transport {
            url: url.to_string(),
            message,
        };
        let req = req.map_err(|e| transport(format!("bad request: {e}")))?;
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| transport(chain(&e)))?;
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| transport(format!("reading the body: {e}")))?
                .to_bytes();
            let body = if bytes.iter().all(u8::is_ascii_whitespace) {
                Value::Null
            } else {
                serde_json::from_slice(&bytes).map_err(|_| HttpError::NotJson {
                    url: url.to_string(),
                    status,
                    body: String::from_utf8_lossy(&bytes[..bytes.len().min(200)]).into_owned(),
                })?
            };
            Ok(Answer {
                status,
                body,
                retry_after,
            })
        };
        tokio::time::timeout(self.timeout, work)
            .await
            .unwrap_or_else(|_| Err(transport(format!("no answer within {:?}", self.timeout))))
    }
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}
