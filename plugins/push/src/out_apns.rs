//! `output apns`: Apple Push Notification service, HTTP/2 provider API.
//!
//! ```text
//! match "notify.**" apns {
//!   registry = "devices.json"  key_file = "AuthKey_ABC123DEFG.p8"
//!   key_id = "ABC123DEFG"  team_id = "DEF123GHIJ"  topic = "org.example.trial"
//!   title = "{title}"  body = "{message}"
//! }
//! ```
//!
//! Each notification is `POST /3/device/<token>` on one HTTP/2 connection
//! with many streams in flight. Authentication is token based: an ES256 JWT
//! (`iss` = team id, `iat`, header `kid` = key id) signed with the `.p8`
//! key, minted once and reused until `token_refresh` (default 50 minutes;
//! Apple refuses tokens older than one hour and more than one new token in
//! 20 minutes). Answers: 200 sent; `BadDeviceToken`, `Unregistered` and any
//! 410 retire the token; `ExpiredProviderToken` mints a new JWT and retries;
//! `TooManyRequests`, 5xx and connection failures retry; `PayloadTooLarge`
//! and other 4xx go to `errors` with Apple's reason.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value as Json};
use tracing::{info, warn};
use ulog_engine::template::Template;
use ulog_engine::{
    BuildContext, BuildError, Event, EventId, Output, ParamKind, ParamSpec, Params, PluginKind,
    PluginSpec, Registry,
};

use crate::client::HttpClient;
use crate::fanout::{common_params, copy_fields, unix_now, Common, Gateway, Outcome, PushOutput};
use crate::registry::Platform;

/// Apple's production endpoint.
pub const PRODUCTION: &str = "https://api.push.apple.com";

/// The `apns` output's declaration.
pub fn spec() -> PluginSpec {
    let spec = PluginSpec::new(
        PluginKind::Output,
        "apns",
        "Sends each event as a push notification to every iOS device of its household (device registry) through Apple's HTTP/2 provider API, with a cached ES256 provider token.",
    )
    .param(ParamSpec::required("key_file", ParamKind::Str, "The .p8 signing key downloaded from the Apple developer account (PKCS#8 PEM, P-256)."))
    .param(ParamSpec::required("key_id", ParamKind::Str, "The key's 10-character Key ID (the JWT `kid`)."))
    .param(ParamSpec::required("team_id", ParamKind::Str, "The 10-character Team ID (the JWT `iss`)."))
    .param(ParamSpec::required("topic", ParamKind::Str, "`apns-topic`: the app's bundle id (with `.voip`, `.complication`... for those push types)."))
    .param(ParamSpec::with_default("base_url", ParamKind::Str, PRODUCTION, "The gateway: https://api.push.apple.com, https://api.sandbox.push.apple.com for development builds, or a private stand-in."))
    .param(ParamSpec::with_default("push_type", ParamKind::OneOf(&["alert", "background", "location", "voip", "complication", "fileprovider", "mdm", "liveactivity", "pushtotalk"]), "alert", "`apns-push-type`. `background` sends `content-available` without an alert, at priority 5."))
    .param(ParamSpec::optional("priority", ParamKind::Int, "`apns-priority`: 10 (now), 5 (power considerate) or 1; unset: 10 for alerts, 5 for background."))
    .param(ParamSpec::optional("expiration", ParamKind::Duration, "`apns-expiration`: how long Apple keeps trying an offline device (from the send time); unset: Apple's default; 0s: deliver now or never."))
    .param(ParamSpec::optional("collapse_id", ParamKind::Str, "`apns-collapse-id` template ({tag}, {field}): notifications with the same id replace each other on the device. At most 64 bytes."))
    .param(ParamSpec::with_default("title", ParamKind::Str, "", "`aps.alert.title` template; empty: no title."))
    .param(ParamSpec::with_default("body", ParamKind::Str, "{message}", "`aps.alert.body` template ({tag}, {field}); an event without a field it names goes to `errors`."))
    .param(ParamSpec::optional("badge_key", ParamKind::Str, "Record field holding the badge number (`aps.badge`)."))
    .param(ParamSpec::optional("sound", ParamKind::Str, "`aps.sound`, e.g. \"default\"."))
    .param(ParamSpec::with_default("data_fields", ParamKind::List(Box::new(ParamKind::Str)), ulog_engine::Value::List(Vec::new()), "Record fields copied into the payload beside `aps`, as custom data for the app."))
    .param(ParamSpec::with_default("token_refresh", ParamKind::Duration, Duration::from_secs(50 * 60), "How long a provider JWT is reused before a new one is signed: under one hour (Apple's limit), over 20 minutes (Apple refuses more frequent updates)."));
    common_params(spec, 500)
}

/// Registers `output apns`.
pub fn register(registry: &mut Registry) {
    registry.add_output(spec(), |params, ctx| {
        Ok(Box::new(ApnsOutput::from_params(params, ctx)?) as Box<dyn Output>)
    });
}

/// The `apns` output.
pub type ApnsOutput = PushOutput<Apns>;

/// The `apns` parameters, parsed.
#[derive(Debug, Clone)]
pub struct ApnsConfig {
    key_file: PathBuf,
    key_id: String,
    team_id: String,
    topic: HeaderValue,
    base_url: String,
    push_type: String,
    priority: Option<u8>,
    expiration: Option<Duration>,
    collapse_id: Option<Template>,
    title: Option<Template>,
    body: Option<Template>,
    badge_key: Option<String>,
    sound: Option<String>,
    data_fields: Vec<String>,
    token_refresh: Duration,
}

/// The provider token: one JWT reused across notifications until it is due.
struct ProviderToken {
    key: EncodingKey,
    key_id: String,
    team_id: String,
    refresh: Duration,
    current: Mutex<Option<(Arc<str>, Instant)>>,
    mints: AtomicU64,
}

impl ProviderToken {
    fn get(&self) -> Result<Arc<str>, String> {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((jwt, at)) = &*current {
            if at.elapsed() < self.refresh {
                return Ok(jwt.clone());
            }
        }
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.key_id.clone());
        header.typ = None;
        let claims = json!({ "iss": self.team_id, "iat": unix_now() });
        let jwt: Arc<str> = jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| format!("signing the provider token: {e}"))?
            .into();
        let n = self.mints.fetch_add(1, Ordering::Relaxed) + 1;
        info!(key_id = %self.key_id, mints = n, "APNs provider token signed");
        *current = Some((jwt.clone(), Instant::now()));
        Ok(jwt)
    }

    /// Drops `stale` so the next request signs a new token (Apple said it
    /// expired); a newer token signed meanwhile is kept.
    fn invalidate(&self, stale: &str) {
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        if current.as_ref().is_some_and(|(jwt, _)| &**jwt == stale) {
            *current = None;
        }
    }
}

/// A running `apns` gateway.
pub struct Apns {
    config: ApnsConfig,
    token: ProviderToken,
    client: HttpClient,
}

impl Apns {
    /// How many provider tokens this gateway has signed: one per
    /// `token_refresh`, not one per notification.
    pub fn mints(&self) -> u64 {
        self.token.mints.load(Ordering::Relaxed)
    }

    async fn post(
        &self,
        token: &str,
        event: EventId,
        message: &Bytes,
        jwt: &str,
    ) -> Result<crate::client::Answer, String> {
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/3/device/{token}", self.config.base_url))
            .header(AUTHORIZATION, format!("bearer {jwt}"))
            .header("apns-topic", self.config.topic.clone())
            .header("apns-push-type", self.config.push_type.as_str())
            .header(CONTENT_TYPE, "application/json");
        let priority = self
            .config
            .priority
            .unwrap_or(if self.config.push_type == "background" {
                5
            } else {
                10
            });
        req = req.header("apns-priority", priority.to_string());
        if let Some(exp) = self.config.expiration {
            let at = if exp.is_zero() {
                0
            } else {
                unix_now() + exp.as_secs()
            };
            req = req.header("apns-expiration", at.to_string());
        }
        if event.is_some() {
            req = req.header("apns-id", event.to_string());
        }
        let (body, collapse) = split_message(message);
        if let Some(c) = collapse {
            req = req.header("apns-collapse-id", c);
        }
        let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
        self.client.send(req).await
    }
}

/// A message is the JSON payload, with the collapse id (if any) before it
/// and a NUL between, so one immutable buffer serves every device.
fn split_message(message: &Bytes) -> (Bytes, Option<HeaderValue>) {
    match message.iter().position(|b| *b == 0) {
        Some(n) => (
            message.slice(n + 1..),
            HeaderValue::from_bytes(&message[..n]).ok(),
        ),
        None => (message.clone(), None),
    }
}

fn opt_template(params: &Params, name: &str) -> Result<Option<Template>, BuildError> {
    match params.opt_str(name)? {
        None | Some("") => Ok(None),
        Some(t) => Template::parse(t)
            .map(Some)
            .map_err(|m| BuildError::param(name, m)),
    }
}

impl Gateway for Apns {
    type Config = ApnsConfig;
    type Message = Bytes;
    const PLATFORM: Platform = Platform::Apns;

    fn config(params: &Params, ctx: &BuildContext) -> Result<ApnsConfig, BuildError> {
        let topic = params.str("topic")?;
        let token_refresh = params.duration("token_refresh")?;
        if token_refresh >= Duration::from_secs(3600) {
            return Err(BuildError::param(
                "token_refresh",
                "must be under one hour: Apple refuses older provider tokens",
            ));
        }
        let priority = match params.opt_int("priority")? {
            None => None,
            Some(p @ (1 | 5 | 10)) => Some(p as u8),
            Some(p) => {
                return Err(BuildError::param(
                    "priority",
                    format!("must be 10, 5 or 1, got {p}"),
                ))
            }
        };
        Ok(ApnsConfig {
            key_file: ctx.resolve(params.str("key_file")?),
            key_id: params.str("key_id")?.to_string(),
            team_id: params.str("team_id")?.to_string(),
            topic: HeaderValue::from_str(topic)
                .map_err(|_| BuildError::param("topic", "not a valid header value"))?,
            base_url: params.str("base_url")?.trim_end_matches('/').to_string(),
            push_type: params.str("push_type")?.to_string(),
            priority,
            expiration: params.opt_duration("expiration")?,
            collapse_id: opt_template(params, "collapse_id")?,
            title: opt_template(params, "title")?,
            body: opt_template(params, "body")?,
            badge_key: params.opt_str("badge_key")?.map(str::to_string),
            sound: params.opt_str("sound")?.map(str::to_string),
            data_fields: params.str_list("data_fields")?,
            token_refresh,
        })
    }

    fn start(config: &ApnsConfig, common: &Common) -> Result<Self, String> {
        let pem = std::fs::read(&config.key_file)
            .map_err(|e| format!("reading {}: {e}", config.key_file.display()))?;
        let key = EncodingKey::from_ec_pem(&pem)
            .map_err(|e| format!("{} is not a P-256 .p8 key: {e}", config.key_file.display()))?;
        let token = ProviderToken {
            key,
            key_id: config.key_id.clone(),
            team_id: config.team_id.clone(),
            refresh: config.token_refresh,
            current: Mutex::new(None),
            mints: AtomicU64::new(0),
        };
        // Sign once now so a key that does not work is reported at start.
        token.get()?;
        Ok(Self {
            config: config.clone(),
            token,
            client: HttpClient::new(common.ca_file.as_deref(), true, common.timeout)?,
        })
    }

    fn message(
        &self,
        tag: &str,
        _event: &Event,
        record: &Map<String, Json>,
    ) -> Result<Bytes, String> {
        let c = &self.config;
        let mut aps = Map::new();
        if c.push_type == "background" {
            aps.insert("content-available".into(), json!(1));
        } else {
            let mut alert = Map::new();
            if let Some(t) = &c.title {
                alert.insert(
                    "title".into(),
                    Json::String(t.render(tag, record, "title")?),
                );
            }
            if let Some(t) = &c.body {
                alert.insert("body".into(), Json::String(t.render(tag, record, "body")?));
            }
            if !alert.is_empty() {
                aps.insert("alert".into(), Json::Object(alert));
            }
            if let Some(s) = &c.sound {
                aps.insert("sound".into(), Json::String(s.clone()));
            }
        }
        if let Some(k) = &c.badge_key {
            match record.get(k) {
                Some(Json::Number(n)) if n.is_u64() => {
                    aps.insert("badge".into(), Json::Number(n.clone()));
                }
                None => {}
                Some(other) => {
                    return Err(format!(
                        "field {k:?} must be a badge count (a whole number ≥ 0), found {other}"
                    ))
                }
            }
        }
        let mut payload = Map::new();
        payload.insert("aps".into(), Json::Object(aps));
        copy_fields(record, &c.data_fields, false, &mut payload);
        let mut out = Vec::with_capacity(256);
        if let Some(t) = &c.collapse_id {
            let id = t.render(tag, record, "collapse id")?;
            if id.len() > 64 || id.contains('\0') || HeaderValue::from_str(&id).is_err() {
                return Err(format!(
                    "collapse id {id:?} is longer than 64 bytes or not header text"
                ));
            }
            out.extend_from_slice(id.as_bytes());
            out.push(0);
        }
        serde_json::to_writer(&mut out, &Json::Object(payload)).map_err(|e| e.to_string())?;
        Ok(Bytes::from(out))
    }

    async fn send(&self, token: &str, event: EventId, message: &Bytes) -> Outcome {
        if token.is_empty() || !token.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Outcome::Retire("BadDeviceToken (not a hexadecimal device token)".into());
        }
        let mut fresh = false;
        loop {
            let jwt = match self.token.get() {
                Ok(j) => j,
                Err(e) => {
                    return Outcome::Retry {
                        reason: e,
                        after: None,
                    }
                }
            };
            let answer = match self.post(token, event, message, &jwt).await {
                Ok(a) => a,
                Err(e) => {
                    return Outcome::Retry {
                        reason: e,
                        after: None,
                    }
                }
            };
            if answer.status == StatusCode::OK {
                return Outcome::Sent;
            }
            let reason = serde_json::from_slice::<Json>(&answer.body)
                .ok()
                .and_then(|j| j.get("reason").and_then(Json::as_str).map(str::to_string))
                .unwrap_or_else(|| answer.excerpt());
            let status = answer.status.as_u16();
            let what = format!("{status} {reason}");
            return match (status, reason.as_str()) {
                (403, "ExpiredProviderToken") if !fresh => {
                    warn!("APNs says the provider token expired; signing a new one");
                    self.token.invalidate(&jwt);
                    fresh = true;
                    continue;
                }
                (410, _) | (_, "BadDeviceToken" | "Unregistered") => Outcome::Retire(reason),
                (403, "ExpiredProviderToken" | "InvalidProviderToken" | "MissingProviderToken") => {
                    warn!(%what, "APNs refuses the provider token: check key_file, key_id and team_id");
                    Outcome::Retry {
                        reason: what,
                        after: None,
                    }
                }
                (429, _) | (500..=599, _) => Outcome::Retry {
                    reason: what,
                    after: answer.retry_after(),
                },
                _ => Outcome::Reject(what),
            };
        }
    }
}
