//! `output pubnub`: publish events to a channel built from their tag and
//! fields.
//!
//! ```text
//! match "hub.**" pubnub {
//!   publish_key = "pub-c-…"  subscribe_key = "sub-c-…"
//!   channel = "mk-smart.log"  batch = true
//! }
//! ```
//!
//! `mode = "publish"` stores the message (when the keyset has Message
//! Persistence) and delivers it to subscribers; `mode = "fire"` sends it only
//! to PubNub Functions (`store=0&norep=true`), never to subscribers or
//! history. With `batch = false` every event is one message; with
//! `batch = true` consecutive events for the same channel are packed into a
//! JSON array of up to `max_message_size` bytes (PubNub refuses messages
//! over 32 KiB), which `input pubnub` with `split_arrays = true` unpacks.
//!
//! Messages are published in order, one at a time. The answer decides per
//! message: 2xx is delivered; 400/403/413 (bad key, no permission, too
//! large) go to `errors` with PubNub's reason; 429, 5xx and transport
//! failures are retried — only those events, so nothing already published
//! is published twice.

use std::collections::HashMap;

use pubnub::core::PubNubError;
use serde_json::value::RawValue;
use serde_json::Value as Json;
use tracing::warn;
use ulog_engine::template::Template;
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Delivery, ItemFailure, Output, ParamKind,
    ParamSpec, Params, PluginError, PluginKind, PluginSpec, Registry, Value,
};

use crate::client::{with_client_params, Client, ClientParams};

/// PubNub's own limit on a message, with room for the envelope.
const DEFAULT_MAX_MESSAGE: u64 = 32_000;

/// The `pubnub` output's declaration.
pub fn spec() -> PluginSpec {
    let spec = PluginSpec::new(
        PluginKind::Output,
        "pubnub",
        "Publishes events to PubNub channels (one message per event, or packed into arrays), in order; refused messages go to `errors`, throttled or failed ones are retried.",
    )
    .param(ParamSpec::required(
        "channel",
        ParamKind::Str,
        "Channel template: {tag}, {tag_parts[N]}, or {field} / {a.b} from the record (`hub.{household}`).",
    ))
    .param(ParamSpec::with_default(
        "mode",
        ParamKind::OneOf(&["publish", "fire"]),
        "publish",
        "`publish`: to subscribers (and history). `fire`: to PubNub Functions only, not stored, not delivered to subscribers.",
    ))
    .param(ParamSpec::optional(
        "store",
        ParamKind::Bool,
        "Store in Message Persistence (`publish` mode); unset follows the keyset's setting.",
    ))
    .param(ParamSpec::optional(
        "ttl",
        ParamKind::Int,
        "Hours to keep the message in history (`publish` mode); unset follows the keyset's retention.",
    ))
    .param(ParamSpec::with_default(
        "batch",
        ParamKind::Bool,
        false,
        "Pack consecutive events for one channel into a JSON array message of up to `max_message_size` bytes.",
    ))
    .param(ParamSpec::with_default(
        "max_message_size",
        ParamKind::Size,
        Value::Size(DEFAULT_MAX_MESSAGE),
        "Largest message (JSON text) to send; a larger event goes to `errors`.",
    ))
    .param(ParamSpec::with_default(
        "use_post",
        ParamKind::Bool,
        true,
        "Send the message in a POST body rather than in the URL of a GET (shorter URLs, no escaping).",
    ))
    .param(ParamSpec::optional(
        "meta",
        ParamKind::Map,
        "String fields sent as the message's `meta` (what subscribers' `filter_expression` can test).",
    ))
    .param(ParamSpec::optional(
        "tag_key",
        ParamKind::Str,
        "Add the tag to each message under this field.",
    ))
    .param(ParamSpec::optional(
        "time_key",
        ParamKind::Str,
        "Add the event time (float seconds) to each message under this field.",
    ));
    with_client_params(spec, "ulog-out")
}

/// Registers `output pubnub`.
pub fn register(registry: &mut Registry) {
    registry.add_output(spec(), |params, ctx| {
        Ok(Box::new(PubnubOutput::from_params(params, ctx)?) as Box<dyn Output>)
    });
}

/// A built `pubnub` output; makes its client on the first batch.
pub struct PubnubOutput {
    params: ClientParams,
    channel: Template,
    fire: bool,
    store: Option<bool>,
    ttl: Option<u32>,
    batch: bool,
    max_message: usize,
    use_post: bool,
    meta: Option<HashMap<String, String>>,
    tag_key: Option<String>,
    time_key: Option<String>,
    client: Option<Client>,
}

impl PubnubOutput {
    /// Builds the output from validated parameters (no I/O).
    ///
    /// # Errors
    /// No publish key, a bad channel template or a bad shared parameter.
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        let client = ClientParams::from_params(params, ctx)?;
        if client.publish_key.is_none() {
            return Err(BuildError::param(
                "publish_key",
                "publishing needs the keyset's publish key",
            ));
        }
        let channel =
            Template::parse(params.str("channel")?).map_err(|e| BuildError::param("channel", e))?;
        if channel
            .literals()
            .any(|l| l.contains([',', '/', '\\', '"', '*']))
        {
            return Err(BuildError::param(
                "channel",
                "a channel name cannot hold `,` `/` `\\` `\"` or `*`",
            ));
        }
        let meta = match params.get("meta") {
            Some(Value::Map(entries)) => {
                let mut m = HashMap::new();
                for (k, v) in entries {
                    let Value::Str(s) = v else {
                        return Err(BuildError::param("meta", format!("`{k}` must be a string")));
                    };
                    m.insert(k.clone(), s.clone());
                }
                Some(m)
            }
            _ => None,
        };
        let ttl = params
            .opt_int("ttl")?
            .map(|t| u32::try_from(t).map_err(|_| BuildError::param("ttl", "hours, 0 or more")))
            .transpose()?;
        Ok(Self {
            params: client,
            channel,
            fire: params.str("mode")? == "fire",
            store: params.get("store").and_then(|v| match v {
                Value::Bool(b) => Some(*b),
                _ => None,
            }),
            ttl,
            batch: params.bool("batch")?,
            max_message: usize::try_from(params.size("max_message_size")?)
                .unwrap_or(usize::MAX)
                .max(16),
            use_post: params.bool("use_post")?,
            meta,
            tag_key: params.opt_str("tag_key")?.map(str::to_string),
            time_key: params.opt_str("time_key")?.map(str::to_string),
            client: None,
        })
    }

    fn client(&mut self) -> Result<&Client, PluginError> {
        if self.client.is_none() {
            let transport = self.params.transport().map_err(PluginError::new)?;
            self.client = Some(
                self.params
                    .client(transport, true)
                    .map_err(PluginError::new)?,
            );
        }
        Ok(self.client.as_ref().expect("just made"))
    }

    /// Publishes one message; `Err((retryable, error))` when it failed.
    async fn publish(
        &mut self,
        channel: &str,
        message: Box<RawValue>,
    ) -> Result<(), (bool, PluginError)> {
        let (fire, store, ttl, use_post, meta) = (
            self.fire,
            self.store,
            self.ttl,
            self.use_post,
            self.meta.clone(),
        );
        let client = self.client().map_err(|e| (false, e))?;
        let mut req = client
            .publish_message(message)
            .channel(channel.to_string())
            .use_post(use_post);
        if fire {
            req = req.store(false).replicate(false);
        } else {
            if let Some(s) = store {
                req = req.store(s);
            }
            if let Some(t) = ttl {
                req = req.ttl(t);
            }
        }
        if let Some(m) = meta {
            req = req.meta(m);
        }
        match req.execute().await {
            Ok(_) => Ok(()),
            Err(e) => Err(classify(&e)),
        }
    }

    /// The JSON text of one event, with the tag and time when configured.
    fn message_text(&self, tag: &str, event: &ulog_engine::Event) -> Vec<u8> {
        let tag_v = Json::String(tag.to_string());
        let time_v =
            serde_json::Number::from_f64(event.time.as_secs_f64()).map_or(Json::Null, Json::Number);
        let mut extra: Vec<(&str, &Json)> = Vec::new();
        if let Some(k) = &self.tag_key {
            extra.push((k, &tag_v));
        }
        if let Some(k) = &self.time_key {
            extra.push((k, &time_v));
        }
        let mut out = Vec::with_capacity(128);
        event.record.write_json_with(&mut out, &extra);
        out
    }
}

/// Whether a failed publish may work when retried.
fn classify(e: &PubNubError) -> (bool, PluginError) {
    let retryable = match e {
        PubNubError::API { status, .. } => {
            !(400..500).contains(status) || *status == 408 || *status == 429
        }
        PubNubError::Transport { response, .. } => response
            .as_ref()
            .is_none_or(|r| !(400..500).contains(&r.status) || r.status == 429),
        PubNubError::Serialization { .. } | PubNubError::Encryption { .. } => false,
        _ => true,
    };
    let reason = match e {
        PubNubError::API {
            status, message, ..
        } => format!("PubNub publish: HTTP {status}: {message}"),
        other => format!("PubNub publish: {other}"),
    };
    (retryable, PluginError::new(reason))
}

fn raw(text: Vec<u8>) -> Result<Box<RawValue>, PluginError> {
    let s = String::from_utf8(text).map_err(|e| PluginError::new(e.to_string()))?;
    RawValue::from_string(s).map_err(|e| PluginError::new(format!("not JSON: {e}")))
}

#[async_trait]
impl Output for PubnubOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        let tag = batch.tag.as_str();
        // (channel, text) per event, or why the event cannot be sent.
        let mut prepared: Vec<Result<(String, Vec<u8>), String>> =
            Vec::with_capacity(batch.events.len());
        for e in &batch.events {
            let channel = if self.channel.reads_fields() {
                self.channel.render(tag, &e.record.to_map(), "channel")
            } else {
                self.channel.render(tag, &serde_json::Map::new(), "channel")
            };
            prepared.push(channel.and_then(|c| {
                if c.is_empty() {
                    return Err("the channel name is empty".into());
                }
                let text = self.message_text(tag, e);
                if text.len() > self.max_message {
                    return Err(format!(
                        "message of {} bytes is larger than max_message_size ({})",
                        text.len(),
                        self.max_message
                    ));
                }
                Ok((c, text))
            }));
        }
        // Messages to send: the channel, the text, and the events it holds.
        let mut messages: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
        let mut failures = Vec::new();
        for (i, p) in prepared.into_iter().enumerate() {
            match p {
                Err(reason) => failures.push(ItemFailure {
                    index: i,
                    error: PluginError::new(reason),
                    retryable: false,
                }),
                Ok((channel, text)) => {
                    if self.batch {
                        if let Some((c, body, idx)) = messages.last_mut() {
                            if *c == channel && body.len() + 1 + text.len() < self.max_message {
                                body.pop();
                                body.push(b',');
                                body.extend_from_slice(&text);
                                body.push(b']');
                                idx.push(i);
                                continue;
                            }
                        }
                        let mut body = Vec::with_capacity(text.len() + 2);
                        body.push(b'[');
                        body.extend_from_slice(&text);
                        body.push(b']');
                        messages.push((channel, body, vec![i]));
                    } else {
                        messages.push((channel, text, vec![i]));
                    }
                }
            }
        }
        let mut broken: Option<PluginError> = None;
        for (channel, text, idx) in messages {
            let outcome = match &broken {
                // After a transport failure the rest waits for the retry.
                Some(e) => Err((true, PluginError::new(e.to_string()))),
                None => match raw(text) {
                    Ok(m) => self.publish(&channel, m).await,
                    Err(e) => Err((false, e)),
                },
            };
            if let Err((retryable, error)) = outcome {
                if retryable && broken.is_none() {
                    warn!(%channel, error = %error, "PubNub publish failed; retrying");
                    broken = Some(PluginError::new(error.to_string()));
                    // A fresh client after failures (new connections).
                    self.client = None;
                }
                for index in idx {
                    failures.push(ItemFailure {
                        index,
                        error: PluginError::new(error.to_string()),
                        retryable,
                    });
                }
            }
        }
        if failures.is_empty() {
            Delivery::Delivered
        } else if failures.len() == batch.events.len() && failures.iter().all(|f| f.retryable) {
            Delivery::Retry(PluginError::new(
                broken.map_or_else(|| "PubNub publish failed".into(), |e| e.to_string()),
            ))
        } else {
            failures.sort_by_key(|f| f.index);
            Delivery::Partial(failures)
        }
    }
}
