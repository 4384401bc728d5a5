//! OAuth 2 access tokens, fetched once and reused until shortly before they
//! expire: FCM's JWT-bearer grant (RFC 7523) with a service-account key and
//! WNS's client-credentials grant both end in `{access_token, expires_in}`.
//!
//! One fetch at a time: concurrent sends that find no valid token wait for
//! the one request in flight instead of each asking for a token.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::CONTENT_TYPE;
use hyper::{Method, Request};
use serde_json::Value as Json;
use tracing::info;

use crate::client::HttpClient;

/// A cached bearer token.
#[derive(Default)]
pub(crate) struct TokenCache {
    current: tokio::sync::Mutex<Option<(Arc<str>, Instant)>>,
    fetches: AtomicU64,
}

impl TokenCache {
    /// The cached token, or a new one from `fetch` when none is valid.
    pub async fn get<F, Fut>(&self, fetch: F) -> Result<Arc<str>, String>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<(String, Duration), String>>,
    {
        let mut current = self.current.lock().await;
        if let Some((token, until)) = &*current {
            if Instant::now() < *until {
                return Ok(token.clone());
            }
        }
        let (token, lifetime) = fetch().await?;
        let margin = (lifetime / 10).min(Duration::from_secs(300));
        let token: Arc<str> = token.into();
        let n = self.fetches.fetch_add(1, Ordering::Relaxed) + 1;
        info!(
            fetches = n,
            lifetime_s = lifetime.as_secs_f64(),
            "OAuth access token fetched"
        );
        *current = Some((token.clone(), Instant::now() + lifetime - margin));
        Ok(token)
    }

    /// Forgets `stale` (the gateway refused it) unless a newer one replaced it.
    pub async fn invalidate(&self, stale: &str) {
        let mut current = self.current.lock().await;
        if current.as_ref().is_some_and(|(t, _)| &**t == stale) {
            *current = None;
        }
    }
}

/// POSTs a form to a token endpoint and reads `access_token` and
/// `expires_in` from the answer.
pub(crate) async fn request_token(
    client: &HttpClient,
    url: &str,
    form: &[(&str, &str)],
) -> Result<(String, Duration), String> {
    let body = {
        let mut body = form_urlencoded::Serializer::new(String::new());
        for (k, v) in form {
            body.append_pair(k, v);
        }
        body.finish()
    };
    let req = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| format!("token endpoint {url}: {e}"))?;
    let answer = client.send(req).await?;
    let json: Json = serde_json::from_slice(&answer.body).unwrap_or(Json::Null);
    if !answer.status.is_success() {
        let error = json.get("error").and_then(Json::as_str).unwrap_or("");
        let description = json
            .get("error_description")
            .and_then(Json::as_str)
            .unwrap_or("");
        return Err(format!(
            "token endpoint {url} answered {}: {error} {description}",
            answer.status
        ));
    }
    let token = json
        .get("access_token")
        .and_then(Json::as_str)
        .ok_or_else(|| format!("token endpoint {url} answered without access_token"))?;
    let lifetime = json
        .get("expires_in")
        .and_then(Json::as_f64)
        .filter(|s| *s > 0.0)
        .unwrap_or(3600.0);
    Ok((token.to_string(), Duration::from_secs_f64(lifetime)))
}
