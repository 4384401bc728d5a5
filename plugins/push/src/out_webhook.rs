//! `output webhook`: a JSON POST to each household's own URL, for
//! households without the vendor apps (a home automation hub, a chat bot).
//!
//! ```text
//! match "notify.**" webhook {
//!   registry = "devices.json"  hmac_secret = "${WEBHOOK_SECRET}"
//!   body = { text = "{message}"  household = "{household}" }
//! }
//! ```
//!
//! The URL is the registry entry's `token` (platform `webhook`), so an event
//! can only reach its own household's endpoint. With `hmac_secret` each
//! request carries `X-Ulog-Timestamp` (Unix seconds) and a signature header
//! `sha256=<hex HMAC-SHA256 of "<timestamp>.<body>">`, so the receiver can
//! check both origin and freshness. Answers: 2xx sent; 404 and 410 retire
//! the URL; 408, 429 and 5xx retry (honouring `Retry-After`); other 4xx go
//! to `errors`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request};
use serde_json::{Map, Value as Json};
use ulog_engine::{
    BuildContext, BuildError, Event, EventId, Output, ParamKind, ParamSpec, Params, PluginKind,
    PluginSpec, Registry,
};

use crate::client::{Answer, HttpClient};
use crate::fanout::{common_params, unix_now, Common, Gateway, JsonTemplate, Outcome, PushOutput};
use crate::registry::Platform;

/// The `webhook` output's declaration.
pub fn spec() -> PluginSpec {
    let spec = PluginSpec::new(
        PluginKind::Output,
        "webhook",
        "POSTs each event as JSON to the webhook URL(s) of its household (device registry, platform `webhook`), optionally signed with HMAC-SHA256.",
    )
    .param(ParamSpec::optional("body", ParamKind::Map, "The JSON body: a map whose strings are templates ({tag}, {field}); unset: the record as it is."))
    .param(ParamSpec::optional("hmac_secret", ParamKind::Str, "Secret for the HMAC-SHA256 signature header (use ${ENV_VAR}); unset: requests are not signed."))
    .param(ParamSpec::with_default("signature_header", ParamKind::Str, "X-Ulog-Signature", "The header carrying `sha256=<hex>` of \"<X-Ulog-Timestamp>.<body>\"."));
    common_params(spec, 50)
}

/// Registers `output webhook`.
pub fn register(registry: &mut Registry) {
    registry.add_output(spec(), |params, ctx| {
        Ok(Box::new(WebhookOutput::from_params(params, ctx)?) as Box<dyn Output>)
    });
}

/// The `webhook` output.
pub type WebhookOutput = PushOutput<Webhook>;

/// The `webhook` parameters, parsed.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    body: Option<JsonTemplate>,
    secret: Option<Vec<u8>>,
    header: hyper::header::HeaderName,
}

/// A running `webhook` gateway.
pub struct Webhook {
    config: WebhookConfig,
    key: Option<ring::hmac::Key>,
    client: HttpClient,
}

/// The signature header's value for `body` sent at `timestamp`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    sign(&key, timestamp, body)
}

fn sign(key: &ring::hmac::Key, timestamp: u64, body: &[u8]) -> String {
    let mut ctx = ring::hmac::Context::with_key(key);
    ctx.update(timestamp.to_string().as_bytes());
    ctx.update(b".");
    ctx.update(body);
    format!("sha256={}", hex::encode(ctx.sign().as_ref()))
}

/// Maps a plain HTTP answer (webhook, ntfy) onto an outcome.
pub(crate) fn plain_outcome(answer: &Answer) -> Outcome {
    let status = answer.status.as_u16();
    let what = format!("{status} {}", answer.excerpt());
    match status {
        200..=299 => Outcome::Sent,
        404 | 410 => Outcome::Retire(format!("HTTP {status}")),
        408 | 429 | 500..=599 => Outcome::Retry {
            reason: what,
            after: answer.retry_after(),
        },
        _ => Outcome::Reject(what),
    }
}

impl Gateway for Webhook {
    type Config = WebhookConfig;
    type Message = Bytes;
    const PLATFORM: Platform = Platform::Webhook;

    fn config(params: &Params, _ctx: &BuildContext) -> Result<WebhookConfig, BuildError> {
        let body = match params.get("body") {
            None => None,
            Some(v) => Some(JsonTemplate::parse(v).map_err(|m| BuildError::param("body", m))?),
        };
        let header =
            hyper::header::HeaderName::from_bytes(params.str("signature_header")?.as_bytes())
                .map_err(|_| BuildError::param("signature_header", "not a valid header name"))?;
        Ok(WebhookConfig {
            body,
            secret: params
                .opt_str("hmac_secret")?
                .map(|s| s.as_bytes().to_vec()),
            header,
        })
    }

    fn start(config: &WebhookConfig, common: &Common) -> Result<Self, String> {
        Ok(Self {
            key: config
                .secret
                .as_ref()
                .map(|s| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, s)),
            config: config.clone(),
            client: HttpClient::new(common.ca_file.as_deref(), false, common.timeout)?,
        })
    }

    fn message(
        &self,
        tag: &str,
        _event: &Event,
        record: &Map<String, Json>,
    ) -> Result<Bytes, String> {
        let body = match &self.config.body {
            Some(t) => t.render(tag, record)?,
            None => Json::Object(record.clone()),
        };
        serde_json::to_vec(&body)
            .map(Bytes::from)
            .map_err(|e| e.to_string())
    }

    async fn send(&self, url: &str, event: EventId, body: &Bytes) -> Outcome {
        if !(url.starts_with("https://") || url.starts_with("http://")) {
            return Outcome::Reject(format!(
                "the registry's webhook {url:?} is not an http(s) URL"
            ));
        }
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(url)
            .header(CONTENT_TYPE, "application/json")
            .header(USER_AGENT, "ulog-webhook");
        if event.is_some() {
            req = req.header("X-Ulog-Event-Id", event.to_string());
        }
        if let Some(key) = &self.key {
            let ts = unix_now();
            req = req.header("X-Ulog-Timestamp", ts.to_string());
            if let Ok(v) = HeaderValue::from_str(&sign(key, ts, body)) {
                req = req.header(self.config.header.clone(), v);
            }
        }
        let req = match req.body(Full::new(body.clone())) {
            Ok(r) => r,
            Err(e) => return Outcome::Reject(format!("the registry's webhook {url:?}: {e}")),
        };
        match self.client.send(req).await {
            Ok(a) => plain_outcome(&a),
            Err(e) => Outcome::Retry {
                reason: e,
                after: None,
            },
        }
    }
}
