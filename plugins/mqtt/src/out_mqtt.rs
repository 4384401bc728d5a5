//! `output mqtt`: publish each event to a topic built from its tag and fields.
//!
//! ```text
//! match "alerts.**" mqtt { broker = "127.0.0.1:1883"  topic = "home/{household}/alerts"  qos = 1 }
//! ```
//!
//! A batch counts as delivered only when the broker has confirmed every
//! message of it: PUBACK for QoS 1, PUBCOMP for QoS 2 (QoS 0: when written to
//! the socket). A lost connection or a broker that does not confirm within
//! `timeout` makes the batch retried on a fresh connection — at least once:
//! a message confirmed just before the connection broke may be sent again.
//! An event whose topic cannot be built (a missing field) goes to `errors`.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use serde_json::Value as Json;
use tracing::{info, warn};
use ulog_engine::template::Template;
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Delivery, ItemFailure, Output, ParamKind,
    ParamSpec, Params, PluginError, PluginKind, PluginSpec, Registry,
};

use crate::connect::{with_connection_params, Connection};

/// The `mqtt` output's declaration.
pub fn spec() -> PluginSpec {
    let spec = PluginSpec::new(
        PluginKind::Output,
        "mqtt",
        "Publishes each event as a JSON message to an MQTT topic built from its tag and fields; a batch is delivered once the broker confirmed every message (QoS 1/2).",
    )
    .param(ParamSpec::with_default(
        "topic",
        ParamKind::Str,
        "ulog/{tag_path}",
        "Topic template: {tag} (the tag), {tag_path} (the tag with `.` as `/`), {tag_parts[N]}, or {field} / {a.b} (a record field; an event without it goes to `errors`).",
    ))
    .param(ParamSpec::with_default(
        "retain",
        ParamKind::Bool,
        false,
        "Publish with the retain flag (the broker keeps the last message per topic for new subscribers).",
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
    ))
    .param(ParamSpec::with_default(
        "timeout",
        ParamKind::Duration,
        Duration::from_secs(30),
        "How long to wait for the broker to confirm a batch before retrying it.",
    ));
    with_connection_params(spec, "ulog-out")
}

/// Registers `output mqtt`.
pub fn register(registry: &mut Registry) {
    registry.add_output(spec(), |params, ctx| {
        Ok(Box::new(MqttOutput::from_params(params, ctx)?) as Box<dyn Output>)
    });
}

/// A topic template: the engine's [`Template`] without MQTT wildcards.
#[derive(Debug, Clone)]
struct TopicTemplate(Template);

impl TopicTemplate {
    fn parse(text: &str) -> Result<Self, String> {
        let t = Template::parse(text)?;
        if t.literals().any(|l| l.contains(['+', '#'])) {
            return Err(format!(
                "topic template {text:?} contains a wildcard (+ or #)"
            ));
        }
        Ok(Self(t))
    }

    fn render(&self, tag: &str, record: &serde_json::Map<String, Json>) -> Result<String, String> {
        let out = self.0.render(tag, record, "topic")?;
        if out.is_empty() || out.contains(['+', '#', '\0']) {
            return Err(format!("{out:?} is not a valid topic to publish to"));
        }
        Ok(out)
    }
}

/// A built `mqtt` output; connects on its first batch.
pub struct MqttOutput {
    conn: Connection,
    topic: TopicTemplate,
    retain: bool,
    tag_key: Option<String>,
    time_key: Option<String>,
    timeout: Duration,
    session: Option<(AsyncClient, EventLoop)>,
}

impl MqttOutput {
    /// Builds the output from validated parameters (no I/O).
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        Ok(Self {
            conn: Connection::from_params(params, ctx)?,
            topic: TopicTemplate::parse(params.str("topic")?)
                .map_err(|m| BuildError::param("topic", m))?,
            retain: params.bool("retain")?,
            tag_key: params.opt_str("tag_key")?.map(str::to_string),
            time_key: params.opt_str("time_key")?.map(str::to_string),
            timeout: params.duration("timeout")?,
            session: None,
        })
    }

    fn session(&mut self) -> Result<(AsyncClient, EventLoop), PluginError> {
        if let Some(s) = self.session.take() {
            return Ok(s);
        }
        let options = self.conn.options(true).map_err(PluginError::new)?;
        Ok(AsyncClient::new(options, 1024))
    }
}

/// Waits until the broker confirmed `n` publishes.
async fn confirmations(eventloop: &mut EventLoop, qos: QoS, n: usize) -> Result<(), String> {
    let mut done = 0;
    while done < n {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::PubAck(_))) if qos == QoS::AtLeastOnce => done += 1,
            Ok(Event::Incoming(Packet::PubComp(_))) if qos == QoS::ExactlyOnce => done += 1,
            Ok(Event::Outgoing(Outgoing::Publish(_))) if qos == QoS::AtMostOnce => done += 1,
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
    Ok(())
}

#[async_trait]
impl Output for MqttOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        let tag = batch.tag.as_str();
        let mut failures = Vec::new();
        let mut messages = Vec::with_capacity(batch.len());
        let mut indices = Vec::with_capacity(batch.len());
        let tag_json = Json::String(tag.to_string());
        for (i, event) in batch.events.iter().enumerate() {
            let map = event.record.to_map();
            let topic = match self.topic.render(tag, &map) {
                Ok(t) => t,
                Err(reason) => {
                    failures.push(ItemFailure {
                        index: i,
                        error: PluginError::new(reason),
                        retryable: false,
                    });
                    continue;
                }
            };
            let time = serde_json::Number::from_f64(event.time.as_secs_f64()).map(Json::Number);
            let mut extra: Vec<(&str, &Json)> = Vec::new();
            if let Some(k) = &self.tag_key {
                extra.push((k, &tag_json));
            }
            if let (Some(k), Some(t)) = (&self.time_key, &time) {
                extra.push((k, t));
            }
            let mut payload = Vec::with_capacity(256);
            event.record.write_json_with(&mut payload, &extra);
            if payload.len() > self.conn.max_message {
                failures.push(ItemFailure {
                    index: i,
                    error: PluginError::new(format!(
                        "message of {} bytes is larger than max_message_size ({})",
                        payload.len(),
                        self.conn.max_message
                    )),
                    retryable: false,
                });
                continue;
            }
            messages.push((topic, payload));
            indices.push(i);
        }
        if messages.is_empty() {
            return Delivery::Partial(failures);
        }
        let (client, mut eventloop) = match self.session() {
            Ok(s) => s,
            Err(e) => return Delivery::Retry(e),
        };
        let (qos, retain, n) = (self.conn.qos, self.retain, messages.len());
        let publisher = client.clone();
        let publish = async move {
            for (topic, payload) in messages {
                if let Err(e) = publisher.publish(topic, qos, retain, payload).await {
                    return Err(e.to_string());
                }
            }
            Ok(())
        };
        let outcome = tokio::time::timeout(self.timeout, async {
            let (sent, confirmed) = tokio::join!(publish, confirmations(&mut eventloop, qos, n));
            sent.and(confirmed)
        })
        .await
        .unwrap_or_else(|_| {
            Err(format!(
                "the broker did not confirm {n} messages within {:?}",
                self.timeout
            ))
        });
        match outcome {
            Ok(()) => {
                self.session = Some((client, eventloop));
                if failures.is_empty() {
                    Delivery::Delivered
                } else {
                    Delivery::Partial(failures)
                }
            }
            Err(reason) => {
                // A fresh connection next time: nothing half-sent is resent
                // behind the engine's back.
                warn!(broker = %self.conn.address(), error = %reason, "MQTT publish failed");
                let _ = client.try_disconnect();
                if failures.is_empty() {
                    return Delivery::Retry(PluginError::new(format!(
                        "publishing to {}: {reason}",
                        self.conn.address()
                    )));
                }
                failures.extend(indices.into_iter().map(|index| ItemFailure {
                    index,
                    error: PluginError::new(format!(
                        "publishing to {}: {reason}",
                        self.conn.address()
                    )),
                    retryable: true,
                }));
                Delivery::Partial(failures)
            }
        }
    }

    async fn shutdown(&mut self) -> Result<(), PluginError> {
        if let Some((client, mut eventloop)) = self.session.take() {
            let _ = client.try_disconnect();
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(ev) = eventloop.poll().await {
                    if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                        break;
                    }
                }
            })
            .await;
            info!(broker = %self.conn.address(), "mqtt output disconnected");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn topics_from_tag_and_fields() {
        let r = json!({"household": "hh-0042", "n": 7, "deep": {"k": "v"}, "obj": {}});
        let r = r.as_object().unwrap();
        let t = |s: &str| TopicTemplate::parse(s).unwrap().render("home.a.owl", r);
        assert_eq!(t("ulog/{tag_path}").unwrap(), "ulog/home/a/owl");
        assert_eq!(t("x/{tag}").unwrap(), "x/home.a.owl");
        assert_eq!(
            t("home/{household}/{tag_parts[-1]}/{n}").unwrap(),
            "home/hh-0042/owl/7"
        );
        assert_eq!(t("{record.deep.k}").unwrap(), "v");
        assert_eq!(
            t("a/{missing}").unwrap_err(),
            "the event has no field \"missing\" for the topic"
        );
        assert!(t("a/{obj}").unwrap_err().contains("not a scalar"));
        assert!(t("{tag_parts[9]}").unwrap_err().contains("no part 9"));
        assert!(TopicTemplate::parse("a/#").is_err());
        assert!(TopicTemplate::parse("a/{x").is_err());
    }
}
