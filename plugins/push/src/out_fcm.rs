//! `output fcm`: Firebase Cloud Messaging, HTTP v1 API.
//!
//! ```text
//! match "notify.**" fcm {
//!   registry = "devices.json"  service_account_file = "trial-fcm.json"
//!   title = "{title}"  body = "{message}"  data_fields = ["kind", "household"]
//! }
//! ```
//!
//! Each notification is `POST /v1/projects/<project>/messages:send` with a
//! `message` of `token`, `notification`, `data` (strings only, as FCM wants)
//! and optional `android` / `apns` / `webpush` overrides built from
//! templates. The bearer token comes from Google's token endpoint through
//! the JWT-bearer grant: an RS256 JWT signed with the service account's key
//! (`iss` = client_email, `scope` = firebase.messaging, `aud` = token_uri),
//! and is reused until shortly before its `expires_in`. Answers:
//! `UNREGISTERED` retires the token, and so does `INVALID_ARGUMENT` when it
//! is about `message.token`; other `INVALID_ARGUMENT`s and 4xx go to
//! `errors`; `UNAVAILABLE`, `INTERNAL`, `QUOTA_EXCEEDED` (429) retry after
//! the `Retry-After` given; 401 drops the access token and retries.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value as Json};
use tracing::warn;
use ulog_engine::template::Template;
use ulog_engine::{
    BuildContext, BuildError, Event, EventId, Output, ParamKind, ParamSpec, Params, PluginKind,
    PluginSpec, Registry,
};

use crate::client::HttpClient;
use crate::fanout::{
    common_params, copy_fields, unix_now, Common, Gateway, JsonTemplate, Outcome, PushOutput,
};
use crate::oauth::{request_token, TokenCache};
use crate::registry::Platform;

/// The OAuth scope FCM sends need.
pub const SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

/// The `fcm` output's declaration.
pub fn spec() -> PluginSpec {
    let spec = PluginSpec::new(
        PluginKind::Output,
        "fcm",
        "Sends each event as a push notification to every Android (or web) device of its household (device registry) through the FCM HTTP v1 API, authenticated with a service-account key.",
    )
    .param(ParamSpec::required("service_account_file", ParamKind::Str, "The service account's JSON key from the Firebase console (project_id, client_email, private_key, token_uri)."))
    .param(ParamSpec::optional("project_id", ParamKind::Str, "The Firebase project; unset: the key file's project_id."))
    .param(ParamSpec::with_default("base_url", ParamKind::Str, "https://fcm.googleapis.com", "The FCM endpoint (a private stand-in in tests)."))
    .param(ParamSpec::optional("token_uri", ParamKind::Str, "The OAuth token endpoint; unset: the key file's token_uri (https://oauth2.googleapis.com/token)."))
    .param(ParamSpec::with_default("title", ParamKind::Str, "", "`notification.title` template; empty: none."))
    .param(ParamSpec::with_default("body", ParamKind::Str, "{message}", "`notification.body` template ({tag}, {field}); empty: a data-only message."))
    .param(ParamSpec::with_default("data_fields", ParamKind::List(Box::new(ParamKind::Str)), ulog_engine::Value::List(Vec::new()), "Record fields copied into `data` (as strings, as FCM requires)."))
    .param(ParamSpec::optional("android", ParamKind::Map, "`android` override, a map whose strings are templates, e.g. { priority = \"high\"  notification = { channel_id = \"alerts\" } }."))
    .param(ParamSpec::optional("apns", ParamKind::Map, "`apns` override for iOS devices registered through FCM (map of templates)."))
    .param(ParamSpec::optional("webpush", ParamKind::Map, "`webpush` override (map of templates)."));
    common_params(spec, 100)
}

/// Registers `output fcm`.
pub fn register(registry: &mut Registry) {
    registry.add_output(spec(), |params, ctx| {
        Ok(Box::new(FcmOutput::from_params(params, ctx)?) as Box<dyn Output>)
    });
}

/// The `fcm` output.
pub type FcmOutput = PushOutput<Fcm>;

/// The `fcm` parameters, parsed.
#[derive(Debug, Clone)]
pub struct FcmConfig {
    key_file: PathBuf,
    project_id: Option<String>,
    base_url: String,
    token_uri: Option<String>,
    title: Option<Template>,
    body: Option<Template>,
    data_fields: Vec<String>,
    overrides: Vec<(&'static str, JsonTemplate)>,
}

/// A running `fcm` gateway.
pub struct Fcm {
    config: FcmConfig,
    send_url: String,
    token_uri: String,
    client_email: String,
    key_id: Option<String>,
    key: EncodingKey,
    tokens: TokenCache,
    client: HttpClient,
}

impl Fcm {
    async fn access_token(&self) -> Result<std::sync::Arc<str>, String> {
        self.tokens
            .get(|| async {
                let iat = unix_now();
                let claims = json!({
                    "iss": self.client_email, "scope": SCOPE, "aud": self.token_uri,
                    "iat": iat, "exp": iat + 3600,
                });
                let mut header = Header::new(Algorithm::RS256);
                header.kid = self.key_id.clone();
                let assertion = jsonwebtoken::encode(&header, &claims, &self.key)
                    .map_err(|e| format!("signing the OAuth assertion: {e}"))?;
                request_token(
                    &self.client,
                    &self.token_uri,
                    &[
                        ("grant_type", "urn:ietf:params:oauth:grant-type:jwt-bearer"),
                        ("assertion", &assertion),
                    ],
                )
                .await
            })
            .await
    }
}

impl Gateway for Fcm {
    type Config = FcmConfig;
    type Message = Map<String, Json>;
    const PLATFORM: Platform = Platform::Fcm;

    fn config(params: &Params, ctx: &BuildContext) -> Result<FcmConfig, BuildError> {
        let template = |name: &str| -> Result<Option<Template>, BuildError> {
            match params.str(name)? {
                "" => Ok(None),
                t => Template::parse(t)
                    .map(Some)
                    .map_err(|m| BuildError::param(name, m)),
            }
        };
        let mut overrides = Vec::new();
        for name in ["android", "apns", "webpush"] {
            if let Some(v) = params.get(name) {
                overrides.push((
                    name,
                    JsonTemplate::parse(v).map_err(|m| BuildError::param(name, m))?,
                ));
            }
        }
        Ok(FcmConfig {
            key_file: ctx.resolve(params.str("service_account_file")?),
            project_id: params.opt_str("project_id")?.map(str::to_string),
            base_url: params.str("base_url")?.trim_end_matches('/').to_string(),
            token_uri: params.opt_str("token_uri")?.map(str::to_string),
            title: template("title")?,
            body: template("body")?,
            data_fields: params.str_list("data_fields")?,
            overrides,
        })
    }

    fn start(config: &FcmConfig, common: &Common) -> Result<Self, String> {
        let path = config.key_file.display();
        let text = std::fs::read(&config.key_file).map_err(|e| format!("reading {path}: {e}"))?;
        let key: Json =
            serde_json::from_slice(&text).map_err(|e| format!("{path} is not a JSON key: {e}"))?;
        let field = |k: &str| key.get(k).and_then(Json::as_str).map(str::to_string);
        let client_email =
            field("client_email").ok_or_else(|| format!("{path} has no client_email"))?;
        let pem = field("private_key").ok_or_else(|| format!("{path} has no private_key"))?;
        let project = config
            .project_id
            .clone()
            .or_else(|| field("project_id"))
            .ok_or_else(|| format!("{path} has no project_id and none is configured"))?;
        let token_uri = config
            .token_uri
            .clone()
            .or_else(|| field("token_uri"))
            .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into());
        let signing = EncodingKey::from_rsa_pem(pem.as_bytes())
            .map_err(|e| format!("{path}: private_key is not an RSA key: {e}"))?;
        Ok(Self {
            send_url: format!("{}/v1/projects/{project}/messages:send", config.base_url),
            config: config.clone(),
            token_uri,
            client_email,
            key_id: field("private_key_id"),
            key: signing,
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
        let c = &self.config;
        let mut message = Map::new();
        let mut notification = Map::new();
        if let Some(t) = &c.title {
            notification.insert(
                "title".into(),
                Json::String(t.render(tag, record, "title")?),
            );
        }
        if let Some(t) = &c.body {
            notification.insert("body".into(), Json::String(t.render(tag, record, "body")?));
        }
        if !notification.is_empty() {
            message.insert("notification".into(), Json::Object(notification));
        }
        let mut data = Map::new();
        copy_fields(record, &c.data_fields, true, &mut data);
        if !data.is_empty() {
            message.insert("data".into(), Json::Object(data));
        }
        for (name, t) in &c.overrides {
            message.insert((*name).into(), t.render(tag, record)?);
        }
        Ok(message)
    }

    async fn send(&self, token: &str, _event: EventId, message: &Self::Message) -> Outcome {
        let mut message = message.clone();
        message.insert("token".into(), Json::String(token.to_string()));
        let body = match serde_json::to_vec(&json!({ "message": message })) {
            Ok(b) => Bytes::from(b),
            Err(e) => return Outcome::Reject(e.to_string()),
        };
        let mut refreshed = false;
        loop {
            let access = match self.access_token().await {
                Ok(t) => t,
                Err(e) => {
                    return Outcome::Retry {
                        reason: e,
                        after: None,
                    }
                }
            };
            let req = Request::builder()
                .method(Method::POST)
                .uri(&self.send_url)
                .header(AUTHORIZATION, format!("Bearer {access}"))
                .header(CONTENT_TYPE, "application/json; charset=UTF-8")
                .body(Full::new(body.clone()));
            let req = match req {
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
            if answer.status.is_success() {
                return Outcome::Sent;
            }
            let json: Json = serde_json::from_slice(&answer.body).unwrap_or(Json::Null);
            let error = json.get("error").cloned().unwrap_or(Json::Null);
            let status = error.get("status").and_then(Json::as_str).unwrap_or("");
            let details = error
                .get("details")
                .and_then(Json::as_array)
                .cloned()
                .unwrap_or_default();
            let code = details
                .iter()
                .find_map(|d| d.get("errorCode").and_then(Json::as_str))
                .unwrap_or(status)
                .to_string();
            let about_token = details.iter().any(|d| {
                d.get("fieldViolations")
                    .and_then(Json::as_array)
                    .is_some_and(|v| {
                        v.iter()
                            .any(|f| f.get("field").and_then(Json::as_str) == Some("message.token"))
                    })
            });
            let what = format!(
                "{} {code}: {}",
                answer.status.as_u16(),
                error
                    .get("message")
                    .and_then(Json::as_str)
                    .unwrap_or(&answer.excerpt())
            );
            return match (answer.status.as_u16(), code.as_str()) {
                (401, _) if !refreshed => {
                    warn!(%what, "FCM refused the access token; fetching a new one");
                    self.tokens.invalidate(&access).await;
                    refreshed = true;
                    continue;
                }
                (_, "UNREGISTERED") | (404, _) => Outcome::Retire(code),
                (_, "INVALID_ARGUMENT") if about_token => Outcome::Retire(code),
                (429 | 500..=599, _) | (_, "UNAVAILABLE" | "INTERNAL" | "QUOTA_EXCEEDED") => {
                    Outcome::Retry {
                        reason: what,
                        after: answer.retry_after(),
                    }
                }
                (401, _) | (_, "THIRD_PARTY_AUTH_ERROR") => Outcome::Retry {
                    reason: what,
                    after: None,
                },
                _ => Outcome::Reject(what),
            };
        }
    }
}
