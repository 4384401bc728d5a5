//! The PubNub SDK's transport, made of ulog's HTTP stack (hyper + rustls)
//! instead of the SDK's reqwest + OpenSSL.
//!
//! The SDK builds each request as a path and query parameters; this turns
//! them into `origin + path + ?k=v&…` (values percent-encoded), sends it,
//! and hands back the status, headers and body for the SDK to read. Long
//! polls (`/v2/subscribe/…`) and ordinary requests have their own timeouts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use pubnub::core::{PubNubError, Transport, TransportMethod, TransportRequest, TransportResponse};

/// Characters left as they are in query values: RFC 3986's unreserved set.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Sends the SDK's requests to one PubNub origin.
#[derive(Clone)]
pub struct HyperTransport {
    origin: Arc<str>,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    request_timeout: Duration,
    subscribe_timeout: Duration,
    /// Subscribe envelope entries the SDK would drop unseen; the input
    /// takes them and sends them to `errors`.
    malformed: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl std::fmt::Debug for HyperTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HyperTransport")
            .field("origin", &self.origin)
            .finish_non_exhaustive()
    }
}

impl HyperTransport {
    /// A transport to `origin` (`https://ps.pndsn.com`, or `http://…` for a
    /// local stand-in), verifying servers with `tls`.
    pub fn new(
        origin: &str,
        tls: Arc<rustls::ClientConfig>,
        request_timeout: Duration,
        subscribe_timeout: Duration,
    ) -> Self {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .build();
        Self {
            origin: origin.trim_end_matches('/').into(),
            client: Client::builder(TokioExecutor::new()).build(connector),
            request_timeout,
            subscribe_timeout,
            malformed: Arc::default(),
        }
    }

    /// Takes the malformed subscribe entries seen since the last call.
    pub fn take_malformed(&self) -> Vec<serde_json::Value> {
        std::mem::take(&mut *self.malformed.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// The full URL of a request: origin, path, and encoded query.
    pub fn url(&self, path: &str, query: &HashMap<String, String>) -> String {
        let mut url = String::with_capacity(self.origin.len() + path.len() + 64);
        url.push_str(&self.origin);
        url.push_str(path);
        // Sorted, so requests (and logs of them) are reproducible.
        let mut pairs: Vec<_> = query.iter().collect();
        pairs.sort();
        for (i, (k, v)) in pairs.into_iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.extend(utf8_percent_encode(k, QUERY_VALUE));
            url.push('=');
            url.extend(utf8_percent_encode(v, QUERY_VALUE));
        }
        url
    }

    /// Sends a GET to `path` with `query` and returns status and body; used
    /// for the endpoints the SDK does not cover (history v3).
    ///
    /// # Errors
    /// A transport error when there is no answer in time.
    pub async fn get(
        &self,
        path: &str,
        query: &HashMap<String, String>,
    ) -> Result<(u16, Bytes), PubNubError> {
        let url = self.url(path, query);
        let req = Request::builder()
            .method(Method::GET)
            .uri(&url)
            .header("user-agent", concat!("ulog/", env!("CARGO_PKG_VERSION")))
            .body(Full::new(Bytes::new()))
            .map_err(|e| transport_error(&url, &e))?;
        let (status, _, body) = self.exchange(&url, req, self.request_timeout).await?;
        Ok((status, body))
    }

    async fn exchange(
        &self,
        url: &str,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<(u16, HashMap<String, String>, Bytes), PubNubError> {
        let work = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| transport_error(url, &e))?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
                .collect();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| transport_error(url, &e))?
                .to_bytes();
            Ok((status, headers, body))
        };
        match tokio::time::timeout(timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(PubNubError::Transport {
                details: format!("{}: no answer within {timeout:?}", redact(url)),
                response: None,
            }),
        }
    }
}

/// The URL without its query (which holds keys and auth tokens).
fn redact(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

fn transport_error(url: &str, e: &dyn std::error::Error) -> PubNubError {
    let mut details = format!("{}: {e}", redact(url));
    let mut src = e.source();
    while let Some(c) = src {
        details.push_str(": ");
        details.push_str(&c.to_string());
        src = c.source();
    }
    PubNubError::Transport {
        details,
        response: None,
    }
}

#[ulog_engine::async_trait]
impl Transport for HyperTransport {
    async fn send(&self, request: TransportRequest) -> Result<TransportResponse, PubNubError> {
        let url = self.url(&request.path, &request.query_parameters);
        let method = match request.method {
            TransportMethod::Get => Method::GET,
            TransportMethod::Post => Method::POST,
            TransportMethod::Delete => Method::DELETE,
        };
        let mut builder = Request::builder()
            .method(method)
            .uri(&url)
            .header("user-agent", concat!("ulog/", env!("CARGO_PKG_VERSION")));
        for (k, v) in &request.headers {
            builder = builder.header(k.as_str(), v.as_str());
        }
        if request.body.is_some() && !request.headers.contains_key("Content-Type") {
            builder = builder.header("content-type", "application/json");
        }
        let req = builder
            .body(Full::new(Bytes::from(request.body.unwrap_or_default())))
            .map_err(|e| transport_error(&url, &e))?;
        let timeout = if request.path.starts_with("/v2/subscribe/") {
            self.subscribe_timeout
        } else {
            self.request_timeout
        };
        let (status, headers, body) = self.exchange(&url, req, timeout).await?;
        if status == 200 && request.path.starts_with("/v2/subscribe/") {
            let bad = crate::envelope::malformed_entries(&body);
            if !bad.is_empty() {
                self.malformed
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .extend(bad);
            }
        }
        Ok(TransportResponse {
            status,
            headers,
            body: Some(body.to_vec()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_encode_query_values_and_sort_them() {
        let tls = ulog_tls::client_config(None, ulog_tls::Verify::Insecure).unwrap();
        let t = HyperTransport::new(
            "http://127.0.0.1:9/",
            tls,
            Duration::from_secs(1),
            Duration::from_secs(1),
        );
        let q = HashMap::from([
            ("tt".to_string(), "15614817397807903".to_string()),
            ("auth".to_string(), "a b+c/d".to_string()),
        ]);
        assert_eq!(
            t.url("/v2/subscribe/sub-c-1/ch/0", &q),
            "http://127.0.0.1:9/v2/subscribe/sub-c-1/ch/0?auth=a%20b%2Bc%2Fd&tt=15614817397807903"
        );
        assert_eq!(redact("http://h/p?auth=secret"), "http://h/p");
    }
}
