//! `output ntfy`: publish to each household's ntfy topic (ntfy.sh or a
//! self-hosted server), for households without the vendor apps.
//!
//! ```text
//! match "notify.**" ntfy { registry = "devices.json"  title = "{title}"  message = "{message}" }
//! ```
//!
//! The topic is the registry entry's `token` (platform `ntfy`) and must be
//! a plain topic name (letters, digits, `-`, `_`; at most 64), so it always
//! names one topic on the configured server. Each notification is a JSON
//! publish (`POST /` with `topic`, `message`, `title`, `priority`, `tags`,
//! `click`). Answers as `output webhook`: 2xx sent; 404/410 retire; 408,
//! 429 and 5xx retry; other 4xx go to `errors`.

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CONTENT_TYPE};
use hyper::{Method, Request};
use serde_json::{json, Map, Value as Json};
use ulog_engine::template::Template;
use ulog_engine::{
    BuildContext, BuildError, Event, EventId, Output, ParamKind, ParamSpec, Params, PluginKind,
    PluginSpec, Registry,
};

use crate::client::HttpClient;
use crate::fanout::{common_params, Common, Gateway, Outcome, PushOutput};
use crate::out_webhook::plain_outcome;
use crate::registry::Platform;

/// The `ntfy` output's declaration.
pub fn spec() -> PluginSpec {
    let spec = PluginSpec::new(
        PluginKind::Output,
        "ntfy",
        "Publishes each event to the ntfy topic(s) of its household (device registry, platform `ntfy`) on ntfy.sh or a self-hosted server.",
    )
    .param(ParamSpec::with_default("base_url", ParamKind::Str, "https://ntfy.sh", "The ntfy server."))
    .param(ParamSpec::with_default("message", ParamKind::Str, "{message}", "The message template ({tag}, {field})."))
    .param(ParamSpec::with_default("title", ParamKind::Str, "", "The title template; empty: none."))
    .param(ParamSpec::optional("priority", ParamKind::Int, "ntfy priority, 1 (min) to 5 (urgent); unset: the server's default (3)."))
    .param(ParamSpec::with_default("tags", ParamKind::List(Box::new(ParamKind::Str)), ulog_engine::Value::List(Vec::new()), "ntfy tags (emoji short codes or labels)."))
    .param(ParamSpec::optional("click", ParamKind::Str, "URL template opened when the notification is tapped."))
    .param(ParamSpec::optional("access_token", ParamKind::Str, "Bearer token for a server with access control (use ${ENV_VAR})."));
    common_params(spec, 50)
}

/// Registers `output ntfy`.
pub fn register(registry: &mut Registry) {
    registry.add_output(spec(), |params, ctx| {
        Ok(Box::new(NtfyOutput::from_params(params, ctx)?) as Box<dyn Output>)
    });
}

/// The `ntfy` output.
pub type NtfyOutput = PushOutput<Ntfy>;

/// The `ntfy` parameters, parsed.
#[derive(Debug, Clone)]
pub struct NtfyConfig {
    base_url: String,
    message: Template,
    title: Option<Template>,
    priority: Option<i64>,
    tags: Vec<String>,
    click: Option<Template>,
    access_token: Option<String>,
}

/// A running `ntfy` gateway.
pub struct Ntfy {
    config: NtfyConfig,
    client: HttpClient,
}

/// Whether `topic` is a plain ntfy topic name.
pub fn valid_topic(topic: &str) -> bool {
    !topic.is_empty()
        && topic.len() <= 64
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl Gateway for Ntfy {
    type Config = NtfyConfig;
    type Message = Map<String, Json>;
    const PLATFORM: Platform = Platform::Ntfy;

    fn config(params: &Params, _ctx: &BuildContext) -> Result<NtfyConfig, BuildError> {
        let t =
            |name: &str| Template::parse(params.str(name)?).map_err(|m| BuildError::param(name, m));
        let priority = params.opt_int("priority")?;
        if priority.is_some_and(|p| !(1..=5).contains(&p)) {
            return Err(BuildError::param("priority", "must be 1 to 5"));
        }
        Ok(NtfyConfig {
            base_url: params.str("base_url")?.trim_end_matches('/').to_string(),
            message: t("message")?,
            title: if params.str("title")?.is_empty() {
                None
            } else {
                Some(t("title")?)
            },
            priority,
            tags: params.str_list("tags")?,
            click: match params.opt_str("click")? {
                None => None,
                Some(c) => Some(Template::parse(c).map_err(|m| BuildError::param("click", m))?),
            },
            access_token: params.opt_str("access_token")?.map(str::to_string),
        })
    }

    fn start(config: &NtfyConfig, common: &Common) -> Result<Self, String> {
        Ok(Self {
            config: config.clone(),
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
        let mut m = Map::new();
        m.insert(
            "message".into(),
            Json::String(c.message.render(tag, record, "message")?),
        );
        if let Some(t) = &c.title {
            m.insert(
                "title".into(),
                Json::String(t.render(tag, record, "title")?),
            );
        }
        if let Some(p) = c.priority {
            m.insert("priority".into(), json!(p));
        }
        if !c.tags.is_empty() {
            m.insert("tags".into(), json!(c.tags));
        }
        if let Some(t) = &c.click {
            m.insert(
                "click".into(),
                Json::String(t.render(tag, record, "click URL")?),
            );
        }
        Ok(m)
    }

    async fn send(&self, topic: &str, _event: EventId, message: &Self::Message) -> Outcome {
        if !valid_topic(topic) {
            return Outcome::Reject(format!(
                "the registry's ntfy topic {topic:?} is not a plain topic name"
            ));
        }
        let mut m = message.clone();
        m.insert("topic".into(), Json::String(topic.to_string()));
        let body = Bytes::from(serde_json::to_vec(&m).unwrap_or_default());
        let mut req = Request::builder()
            .method(Method::POST)
            .uri(format!("{}/", self.config.base_url))
            .header(CONTENT_TYPE, "application/json");
        if let Some(t) = &self.config.access_token {
            req = req.header(AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match req.body(Full::new(body)) {
            Ok(r) => r,
            Err(e) => return Outcome::Reject(e.to_string()),
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
