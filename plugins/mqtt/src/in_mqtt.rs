//! `input mqtt`: subscribe to topics and acknowledge only what ulog accepted.
//!
//! ```text
//! input mqtt { broker = "127.0.0.1:1883"  client_id = "ulog-hub"  topics = ["home/+/owl/#"] }
//! ```
//!
//! Acknowledgements are manual: a QoS 1 message's PUBACK (QoS 2: PUBREC)
//! goes to the broker only after `emit` returned, that is once the pipeline
//! accepted the message. A message ulog did not accept (it stopped, or was
//! killed, while the pipeline pushed back) is delivered again by the broker
//! when ulog reconnects with the same `client_id`. With
//! `clean_session = false` (the default) the broker also keeps what is
//! published while ulog is away.
//!
//! One task drives the connection (pings, reconnects with backoff); the
//! input takes every message already received (up to 1024) into one batch
//! per tag, emits, then acknowledges them in order.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, Packet, Publish, SubscribeFilter};
use serde_json::{Map, Value as Json};
use tokio::sync::mpsc;
use tracing::{error, info, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, EventTime, Input, InputContext, ParamKind,
    ParamSpec, Params, PluginError, PluginKind, PluginSpec, Record, Registry, Rejected, Tag, Value,
};

use crate::connect::{with_connection_params, Connection};

/// Most messages taken into one emit.
const MAX_BURST: usize = 1024;
/// Longest wait between reconnect attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The `mqtt` input's declaration.
pub fn spec() -> PluginSpec {
    let spec = PluginSpec::new(
        PluginKind::Input,
        "mqtt",
        "Subscribes to MQTT topics (wildcards + and #) and emits each message as an event, tagged by its topic; messages are acknowledged to the broker only once the pipeline accepted them.",
    )
    .param(ParamSpec::required(
        "topics",
        ParamKind::List(Box::new(ParamKind::Str)),
        "Topic filters to subscribe to, such as `home/+/owl/#`.",
    ))
    .param(ParamSpec::with_default(
        "clean_session",
        ParamKind::Bool,
        false,
        "`false` keeps a persistent session: the broker queues QoS 1/2 messages while ulog is away and redelivers unacknowledged ones.",
    ))
    .param(ParamSpec::optional(
        "tag",
        ParamKind::Str,
        "A fixed tag for every message; by default the tag is the topic with `/` turned into `.` (after `tag_prefix`).",
    ))
    .param(ParamSpec::optional(
        "tag_prefix",
        ParamKind::Str,
        "Put in front of the topic-derived tag, such as `mqtt` (`mqtt.home.42.owl`).",
    ))
    .param(ParamSpec::with_default(
        "format",
        ParamKind::OneOf(&["json", "text"]),
        "json",
        "`json`: the payload is a JSON object. `text`: the payload (UTF-8) goes into the `message` field.",
    ))
    .param(ParamSpec::with_default(
        "topic_key",
        ParamKind::Str,
        "topic",
        "Field the message's topic is stored in; empty to leave it out.",
    ));
    with_connection_params(spec, "ulog-in")
}

/// Registers `input mqtt`.
pub fn register(registry: &mut Registry) {
    registry.add_input(spec(), |params, ctx| {
        Ok(Box::new(MqttInput::from_params(params, ctx)?) as Box<dyn Input>)
    });
}

/// How a payload becomes a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Text,
}

/// A built `mqtt` input; connects when it starts.
pub struct MqttInput {
    conn: Connection,
    topics: Vec<String>,
    clean_session: bool,
    fixed_tag: Option<Tag>,
    prefix: Option<String>,
    format: Format,
    topic_key: Option<String>,
}

impl MqttInput {
    /// Builds the input from validated parameters (no I/O).
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        let mut topics = Vec::new();
        for t in params.list("topics")? {
            let Value::Str(t) = t else {
                return Err(BuildError::param("topics", "topics are strings"));
            };
            if !rumqttc::valid_filter(t) {
                return Err(BuildError::param(
                    "topics",
                    format!("{t:?} is not a valid topic filter (`#` only last, `+` a whole level)"),
                ));
            }
            topics.push(t.clone());
        }
        if topics.is_empty() {
            return Err(BuildError::param(
                "topics",
                "subscribe to at least one topic",
            ));
        }
        let fixed_tag = match params.opt_str("tag")? {
            Some(t) => Some(Tag::parse(t).map_err(|e| BuildError::param("tag", e.to_string()))?),
            None => None,
        };
        let prefix = params.opt_str("tag_prefix")?.map(str::to_string);
        if let Some(p) = &prefix {
            Tag::parse(p).map_err(|e| BuildError::param("tag_prefix", e.to_string()))?;
        }
        Ok(Self {
            conn: Connection::from_params(params, ctx)?,
            topics,
            clean_session: params.bool("clean_session")?,
            fixed_tag,
            prefix,
            format: if params.str("format")? == "text" {
                Format::Text
            } else {
                Format::Json
            },
            topic_key: Some(params.str("topic_key")?.to_string()).filter(|k| !k.is_empty()),
        })
    }

    fn tag_for(&self, topic: &str) -> Result<Tag, String> {
        if let Some(t) = &self.fixed_tag {
            return Ok(t.clone());
        }
        let mut text = String::with_capacity(topic.len() + 8);
        if let Some(p) = &self.prefix {
            text.push_str(p);
            text.push('.');
        }
        text.extend(topic.chars().map(|c| if c == '/' { '.' } else { c }));
        Tag::parse(&text)
            .map_err(|e| format!("topic {topic:?} does not make a valid tag ({text:?}: {e})"))
    }

    fn record(&self, p: &Publish) -> Result<Record, String> {
        let mut record = match self.format {
            Format::Json => {
                Record::from_json_bytes(p.payload.clone()).map_err(|e| e.to_string())?
            }
            Format::Text => {
                let text = std::str::from_utf8(&p.payload)
                    .map_err(|e| format!("payload is not UTF-8 text: {e}"))?;
                let mut m = Map::new();
                m.insert("message".into(), Json::String(text.to_string()));
                Record::Map(m)
            }
        };
        if let Some(k) = &self.topic_key {
            record.insert(k.clone(), Json::String(p.topic.clone()));
        }
        Ok(record)
    }
}

fn raw_record(p: &Publish) -> Record {
    let mut m = Map::new();
    m.insert("topic".into(), Json::String(p.topic.clone()));
    m.insert(
        "payload".into(),
        Json::String(String::from_utf8_lossy(&p.payload).into_owned()),
    );
    Record::Map(m)
}

/// Drives the connection: keeps polling (pings, reconnects), resubscribes
/// when the broker has no session, and hands publishes to the input.
async fn drive(
    id: String,
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    filters: Vec<SubscribeFilter>,
    address: String,
    tx: mpsc::Sender<Publish>,
    shutdown: ulog_engine::CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut failures: u64 = 0;
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            e = eventloop.poll() => e,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                info!(input = %id, broker = %address, session_present = ack.session_present, "connected to the MQTT broker");
                failures = 0;
                backoff = Duration::from_millis(100);
                if !ack.session_present {
                    if let Err(e) = client.try_subscribe_many(filters.clone()) {
                        error!(input = %id, error = %e, "could not subscribe");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                if tx.send(p).await.is_err() {
                    return;
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    error!(input = %id, codes = ?ack.return_codes, "the broker refused a subscription");
                }
            }
            Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                if failures <= 3 || failures.is_multiple_of(50) {
                    warn!(input = %id, broker = %address, error = %e, failures, retry_in = ?backoff, "MQTT connection failed; reconnecting");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[async_trait]
impl Input for MqttInput {
    async fn run(self: Box<Self>, mut ctx: InputContext) -> Result<(), PluginError> {
        let mut options = self
            .conn
            .options(self.clean_session)
            .map_err(PluginError::new)?;
        options.set_manual_acks(true);
        let (client, eventloop) = AsyncClient::new(options, 64);
        let filters: Vec<SubscribeFilter> = self
            .topics
            .iter()
            .map(|t| SubscribeFilter::new(t.clone(), self.conn.qos))
            .collect();
        let (tx, mut rx) = mpsc::channel::<Publish>(MAX_BURST);
        // Not a child of `shutdown`: the connection must outlive the stop
        // long enough to deliver the last acknowledgements.
        let stop_driver = ulog_engine::CancellationToken::new();
        let mut driver = tokio::spawn(drive(
            ctx.id.to_string(),
            eventloop,
            client.clone(),
            filters,
            self.conn.address(),
            tx,
            stop_driver.clone(),
        ));
        let mut bad: u64 = 0;
        'run: loop {
            let first = tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                p = rx.recv() => match p { Some(p) => p, None => break },
            };
            let now = EventTime::now();
            let mut received = vec![first];
            while received.len() < MAX_BURST {
                match rx.try_recv() {
                    Ok(p) => received.push(p),
                    Err(_) => break,
                }
            }
            let mut batches: Vec<(Tag, Vec<ulog_engine::Event>)> = Vec::new();
            let mut rejects: Vec<(Tag, Rejected)> = Vec::new();
            for p in &received {
                let tagged = self.tag_for(&p.topic);
                let result = tagged.clone().and_then(|tag| {
                    if p.payload.len() > self.conn.max_message {
                        return Err(format!(
                            "payload of {} bytes is larger than max_message_size ({})",
                            p.payload.len(),
                            self.conn.max_message
                        ));
                    }
                    self.record(p).map(|r| (tag, r))
                });
                match result {
                    Ok((tag, record)) => {
                        let event = ulog_engine::Event::new(now, record);
                        match batches.iter_mut().find(|(t, _)| *t == tag) {
                            Some((_, events)) => events.push(event),
                            None => batches.push((tag, vec![event])),
                        }
                    }
                    Err(reason) => {
                        bad += 1;
                        if bad <= 5 || bad.is_multiple_of(100) {
                            warn!(input = %ctx.id, topic = %p.topic, bad_messages = bad, %reason, "MQTT message refused; sent to the errors label");
                        }
                        let tag =
                            tagged.unwrap_or_else(|_| Tag::parse("mqtt.error").expect("valid tag"));
                        rejects.push((
                            tag,
                            Rejected {
                                event: ulog_engine::Event::new(now, raw_record(p)),
                                reason,
                            },
                        ));
                    }
                }
            }
            for (tag, events) in batches {
                let n = events.len();
                if let Err(e) = ctx.emitter.emit(Batch::new(tag, events)).await {
                    // Not accepted: not acknowledged either; the broker
                    // redelivers to the next session.
                    warn!(input = %ctx.id, events = n, error = %e, "messages not accepted; they stay unacknowledged at the broker");
                    break 'run;
                }
            }
            for (tag, r) in rejects {
                if ctx.emitter.reject(tag, &ctx.id, vec![r]).await.is_err() {
                    break 'run;
                }
            }
            // Everything received is now accepted (or in `errors`).
            for p in &received {
                if let Err(e) = client.ack(p).await {
                    warn!(input = %ctx.id, error = %e, "could not acknowledge a message; the broker will redeliver it");
                }
            }
        }
        // The disconnect is queued after the last acknowledgements, so they
        // reach the broker first; then the driver ends.
        let _ = client.try_disconnect();
        if tokio::time::timeout(Duration::from_secs(5), &mut driver)
            .await
            .is_err()
        {
            stop_driver.cancel();
            let _ = driver.await;
        }
        if bad > 0 {
            info!(input = %ctx.id, bad_messages = bad, "mqtt input stopped");
        }
        Ok(())
    }
}
