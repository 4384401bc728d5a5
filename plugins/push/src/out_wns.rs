//! `output wns`: Windows Push Notification Services.
//!
//! ```text
//! match "notify.**" wns {
//!   registry = "devices.json"  client_id = "ms-app://S-1-15-2-..."  client_secret = "${WNS_SECRET}"
//!   type = "toast"
//!   payload = "<toast><visual><binding template=\"ToastGeneric\"><text>{title}</text><text>{message}</text></binding></visual></toast>"
//! }
//! ```
//!
//! The registry entry's `token` (platform `wns`) is the app's channel URI,
//! which must be https on a host ending in `channel_host_suffix`
//! (`notify.windows.com`), so a registry typo cannot send a bearer token
//! elsewhere. The access token comes from the OAuth client-credentials
//! grant and is reused until shortly before `expires_in`. Each notification
//! is a POST of the payload (XML for toast, tile and badge, with record
//! values XML-escaped; bytes for raw) with `X-WNS-Type`. Answers: 200 sent;
//! 404 and 410 retire the channel; 401 fetches a new token and retries; 406
//! (throttled), 429 and 5xx retry; other 4xx go to `errors`.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request};
use serde_json::{Map, Value as Json};
use tracing::warn;
use ulog_engine::template::Template;
use ulog_engine::{
    BuildContext, BuildError, Event, EventId, Output, ParamKind, ParamSpec, Params, PluginKind,
    PluginSpec, Registry,
};

use crate::client::HttpClient;
use crate::fanout::{common_params, Common, Gateway, Outcome, PushOutput};
use crate::oauth::{request_token, TokenCache};
use crate::registry::Platform;

/// The `wns` output's declaration.
pub fn spec() -> PluginSpec {
    let spec = PluginSpec::new(
        PluginKind::Output,
        "wns",
        "Sends each event as a Windows push notification (toast, tile, badge or raw) to every Windows device of its household (device registry), with an OAuth client-credentials token.",
    )
    .param(ParamSpec::required("client_id", ParamKind::Str, "The app's Package SID (ms-app://...) or Azure application id."))
    .param(ParamSpec::required("client_secret", ParamKind::Str, "The app's client secret (use ${ENV_VAR})."))
    .param(ParamSpec::with_default("token_url", ParamKind::Str, "https://login.live.com/accesstoken.srf", "The OAuth token endpoint (https://login.microsoftonline.com/<tenant>/oauth2/v2.0/token for Azure AD registered apps)."))
    .param(ParamSpec::with_default("scope", ParamKind::Str, "notify.windows.com", "The OAuth scope (https://wns.windows.com/.default with Azure AD)."))
    .param(ParamSpec::with_default("type", ParamKind::OneOf(&["toast", "tile", "badge", "raw"]), "toast", "The notification type (`X-WNS-Type: wns/<type>`)."))
    .param(ParamSpec::required("payload", ParamKind::Str, "The body template: toast/tile/badge XML with {field} placeholders (values are XML-escaped), or raw text."))
    .param(ParamSpec::optional("wns_tag", ParamKind::Str, "`X-WNS-Tag` template (toast/tile replacement), at most 16 characters."))
    .param(ParamSpec::optional("ttl", ParamKind::Duration, "`X-WNS-TTL`: how long WNS keeps the notification for an offline device."))
    .param(ParamSpec::with_default("channel_host_suffix", ParamKind::Str, "notify.windows.com", "Channel URIs must be https on a host ending in this."));
    common_params(spec, 50)
}

/// Registers `output wns`.
pub fn register(registry: &mut Registry) {
    registry.add_output(spec(), |params, ctx| {
        Ok(Box::new(WnsOutput::from_params(params, ctx)?) as Box<dyn Output>)
    });
}

/// The `wns` output.
pub type WnsOutput = PushOutput<Wns>;

/// The `wns` parameters, parsed.
#[derive(Debug, Clone)]
pub struct WnsConfig {
    client_id: String,
    client_secret: String,
    token_url: String,
    scope: String,
    kind: String,
    payload: Template,
    wns_tag: Option<Template>,
    ttl: Option<Duration>,
    host_suffix: String,
}

/// A running `wns` gateway.
pub struct Wns {
    config: WnsConfig,
    tokens: TokenCache,
    client: HttpClient,
}

fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn escaped(record: &Map<String, Json>) -> Map<String, Json> {
    record
        .iter()
        .map(|(k, v)| {
            let v = match v {
                Json::String(s) => Json::String(xml_escape(s)),
                Json::Object(o) => Json::Object(escaped(o)),
                other => other.clone(),
            };
            (k.clone(), v)
        })
        .collect()
}

/// Whether `uri` is an https channel URI on a host ending in `suffix`.
pub fn valid_channel(uri: &str, suffix: &str) -> bool {
    let Ok(u) = uri.parse::<hyper::Uri>() else {
        return false;
    };
    u.scheme_str() == Some("https")
        && u.host()
            .is_some_and(|h| h == suffix || h.ends_with(&format!(".{suffix}")) || suffix.is_empty())
}

impl Gateway for Wns {
    type Config = WnsConfig;
    type Message = (Bytes, Option<String>);
    const PLATFORM: Platform = Platform::Wns;

    fn config(params: &Params, _ctx: &BuildContext) -> Result<WnsConfig, BuildError> {
        let t =
            |name: &str| Template::parse(params.str(name)?).map_err(|m| BuildError::param(name, m));
        Ok(WnsConfig {
            client_id: params.str("client_id")?.to_string(),
            client_secret: params.str("client_secret")?.to_string(),
            token_url: params.str("token_url")?.to_string(),
            scope: params.str("scope")?.to_string(),
            kind: params.str("type")?.to_string(),
            payload: t("payload")?,
            wns_tag: match params.opt_str("wns_tag")? {
                None => None,
                Some(_) => Some(t("wns_tag")?),
            },
            ttl: params.opt_duration("ttl")?,
            host_suffix: params.str("channel_host_suffix")?.to_string(),
        })
    }

    fn start(config: &WnsConfig, common: &Common) -> Result<Self, String> {
        Ok(Self {
            config: config.clone(),
            tokens: TokenCache::default(),
            client: HttpClient::new(common.ca_file.as_deref(), false, common.timeout)?,
        })
    }

    fn message(
        &self,
        tag: &str,
        _event: &Event,
        record: &Map<String, Json>,
    ) -> Result<Self::Message, String> {
        let body = if self.config.kind == "raw" {
            self.config.payload.render(tag, record, "payload")?
        } else {
            self.config
                .payload
                .render(tag, &escaped(record), "payload")?
        };
        let wns_tag = match &self.config.wns_tag {
            Some(t) => {
                let v = t.render(tag, record, "X-WNS-Tag")?;
                if v.chars().count() > 16 {
                    return Err(format!("X-WNS-Tag {v:?} is longer than 16 characters"));
                }
                Some(v)
            }
            None => None,
        };
        Ok((Bytes::from(body), wns_tag))
    }

    async fn send(&self, channel: &str, _event: EventId, message: &Self::Message) -> Outcome {
        if !valid_channel(channel, &self.config.host_suffix) {
            return Outcome::Reject(format!(
                "the registry's channel URI is not https on *.{}",
                self.config.host_suffix
            ));
        }
        let c = &self.config;
        let mut refreshed = false;
        loop {
            let token = self
                .tokens
                .get(|| async {
                    request_token(
                        &self.client,
                        &c.token_url,
                        &[
                            ("grant_type", "client_credentials"),
                            ("client_id", &c.client_id),
                            ("client_secret", &c.client_secret),
                            ("scope", &c.scope),
                        ],
                    )
                    .await
                })
                .await;
            let token = match token {
                Ok(t) => t,
                Err(e) => {
                    return Outcome::Retry {
                        reason: e,
                        after: None,
                    }
                }
            };
            let mut req = Request::builder()
                .method(Method::POST)
                .uri(channel)
                .header(AUTHORIZATION, format!("Bearer {token}"))
                .header("X-WNS-Type", format!("wns/{}", c.kind))
                .header(
                    CONTENT_TYPE,
                    if c.kind == "raw" {
                        "application/octet-stream"
                    } else {
                        "text/xml"
                    },
                );
            if let Some(t) = &message.1 {
                req = req.header("X-WNS-Tag", t.as_str());
            }
            if let Some(ttl) = c.ttl {
                req = req.header("X-WNS-TTL", ttl.as_secs().to_string());
            }
            let req = match req.body(Full::new(message.0.clone())) {
                Ok(r) => r,
                Err(e) => return Outcome::Reject(e.to_string()),
            };
            let answer = match self.client.send(req).await {
                Ok(a) => a,
                Err(e) => {
                    return Outcome::Retry {
                        reason: e,
                        after: None,
                    }
                }
            };
            let status = answer.status.as_u16();
            let error = answer
                .headers
                .get("X-WNS-Error-Description")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_string();
            let what = format!("{status} {error}");
            return match status {
                200 => Outcome::Sent,
                401 if !refreshed => {
                    warn!("WNS refused the access token; fetching a new one");
                    self.tokens.invalidate(&token).await;
                    refreshed = true;
                    continue;
                }
                404 | 410 => Outcome::Retire(format!("HTTP {status} (channel expired or unknown)")),
                401 | 406 | 429 | 500..=599 => Outcome::Retry {
                    reason: what,
                    after: answer.retry_after(),
                },
                _ => Outcome::Reject(what),
            };
        }
    }
}
