//! `input pubnub`: subscribe to channels and channel groups, and resume
//! exactly where the pipeline last accepted a message.
//!
//! ```text
//! input pubnub {
//!   subscribe_key = "sub-c-…"  channels = ["mk-smart.log"]
//!   state_file = "/var/lib/ulog/pubnub.json"  history = true
//! }
//! ```
//!
//! The SDK runs the subscribe long-poll (`/v2/subscribe/…?tt=&tr=`) and
//! decodes its envelope; this input turns each message and signal into an
//! event, emits, and only then writes the last emitted message's timetoken
//! to `state_file`. After a network error, a 5xx or a stall the SDK polls
//! again from its own cursor; after a restart the input subscribes from the
//! committed timetoken, so PubNub sends again whatever was published after
//! it and not yet accepted. With `history = true` it first reads what
//! Message Persistence kept since that timetoken (for outages longer than
//! PubNub's subscribe catch-up covers), and drops from the subscription
//! what history already gave.

use std::collections::HashMap;
use std::path::PathBuf;
use std::pin::Pin;
use std::time::Duration;

use base64::Engine as _;
use futures::{FutureExt, Stream, StreamExt};
use pubnub::core::CryptoProvider;
use pubnub::core::PubNubError;
use pubnub::providers::crypto::CryptoModule;
use pubnub::subscribe::{Message, Update};
use serde_json::{Map, Value as Json};
use tracing::{debug, error, info, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Event, Input, InputContext, ParamKind, ParamSpec,
    Params, PluginError, PluginKind, PluginSpec, Record, Registry, Rejected, Tag,
};

use crate::client::{with_client_params, ClientParams};
use crate::envelope::{self, Fields, Kind, TagTemplate};
use crate::history;

/// Most updates taken into one emit.
const MAX_BURST: usize = 1024;
/// Longest wait between polls after errors.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The `pubnub` input's declaration.
pub fn spec() -> PluginSpec {
    let spec = PluginSpec::new(
        PluginKind::Input,
        "pubnub",
        "Subscribes to PubNub channels and channel groups; each message becomes an event. The last accepted timetoken is kept in a state file, so a restart resumes without loss or repeats.",
    )
    .param(ParamSpec::with_default(
        "channels",
        ParamKind::List(Box::new(ParamKind::Str)),
        ulog_engine::Value::List(Vec::new()),
        "Channels to subscribe to (`mk-smart.log`, wildcards such as `hub.*` where the keyset allows them).",
    ))
    .param(ParamSpec::with_default(
        "channel_groups",
        ParamKind::List(Box::new(ParamKind::Str)),
        ulog_engine::Value::List(Vec::new()),
        "Channel groups to subscribe to.",
    ))
    .param(ParamSpec::with_default(
        "tag",
        ParamKind::Str,
        "pubnub.{channel}",
        "Tag template: {channel}, {subscription} (the group or wildcard that matched), {type} (message or signal), or a top-level field of the message ({household}). Characters a tag cannot hold become `_`.",
    ))
    .param(ParamSpec::optional(
        "state_file",
        ParamKind::Str,
        "Where the last accepted timetoken is kept. Without it a restart starts from \"now\" and what was published while ulog was down is missed.",
    ))
    .param(ParamSpec::with_default(
        "history",
        ParamKind::Bool,
        false,
        "On start with a saved timetoken, first read what Message Persistence stored since it (`/v3/history`), per channel (channel groups are not covered by history).",
    ))
    .param(ParamSpec::with_default(
        "history_max",
        ParamKind::Int,
        10_000i64,
        "Most messages read from history per channel on start; older ones beyond it are skipped with a warning.",
    ))
    .param(ParamSpec::with_default(
        "signals",
        ParamKind::Bool,
        true,
        "Emit signals too (they get `_type = \"signal\"`).",
    ))
    .param(ParamSpec::with_default(
        "split_arrays",
        ParamKind::Bool,
        false,
        "A message that is a JSON array of objects becomes one event per object (what `output pubnub` with `batch = true` publishes).",
    ))
    .param(ParamSpec::with_default(
        "message_key",
        ParamKind::Str,
        "message",
        "Field a message that is not a JSON object (a string, a number, an array) goes into.",
    ))
    .param(ParamSpec::with_default(
        "channel_key",
        ParamKind::Str,
        "_channel",
        "Field for the channel; empty to leave it out.",
    ))
    .param(ParamSpec::with_default(
        "publisher_key",
        ParamKind::Str,
        "_publisher",
        "Field for the publisher's User ID; empty to leave it out.",
    ))
    .param(ParamSpec::with_default(
        "timetoken_key",
        ParamKind::Str,
        "_timetoken",
        "Field for the publish timetoken (a string of 17 digits); empty to leave it out.",
    ))
    .param(ParamSpec::with_default(
        "subscription_key",
        ParamKind::Str,
        "_subscription",
        "Field for the group or wildcard that matched, when not the channel itself; empty to leave it out.",
    ))
    .param(ParamSpec::with_default(
        "meta_key",
        ParamKind::Str,
        "_meta",
        "Field for the publisher's `meta`; empty to leave it out.",
    ))
    .param(ParamSpec::with_default(
        "heartbeat",
        ParamKind::Int,
        300i64,
        "Presence timeout announced to PubNub, in seconds.",
    ))
    .param(ParamSpec::optional(
        "filter_expression",
        ParamKind::Str,
        "PubNub's server-side filter on `meta` (`region == \"mk\"`).",
    ));
    with_client_params(spec, "ulog-in")
}

/// Registers `input pubnub`.
pub fn register(registry: &mut Registry) {
    registry.add_input(spec(), |params, ctx| {
        Ok(Box::new(PubnubInput::from_params(params, ctx)?) as Box<dyn Input>)
    });
}

/// A built `pubnub` input; connects when it starts.
pub struct PubnubInput {
    client: ClientParams,
    channels: Vec<String>,
    groups: Vec<String>,
    tag: TagTemplate,
    state_file: Option<PathBuf>,
    history: bool,
    history_max: usize,
    signals: bool,
    split_arrays: bool,
    fields: Fields,
    heartbeat: u64,
    filter: Option<String>,
}

impl PubnubInput {
    /// Builds the input from validated parameters (no I/O).
    ///
    /// # Errors
    /// No channel and no group, a bad tag template, or a bad shared
    /// parameter.
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        let channels = params.str_list("channels")?;
        let groups = params.str_list("channel_groups")?;
        if channels.is_empty() && groups.is_empty() {
            return Err(BuildError::param(
                "channels",
                "subscribe to at least one channel or channel group",
            ));
        }
        if let Some(c) = channels.iter().chain(&groups).find(|c| {
            c.is_empty() || c.contains([',', '/', '\\', '"']) || c.chars().any(char::is_whitespace)
        }) {
            return Err(BuildError::param(
                "channels",
                format!("{c:?} is not a valid channel name (no `,` `/` `\\` `\"` or spaces)"),
            ));
        }
        let key = |name: &str| -> Result<Option<String>, BuildError> {
            Ok(Some(params.str(name)?.to_string()).filter(|k| !k.is_empty()))
        };
        let message = params.str("message_key")?.to_string();
        if message.is_empty() {
            return Err(BuildError::param("message_key", "is empty"));
        }
        Ok(Self {
            client: ClientParams::from_params(params, ctx)?,
            channels,
            groups,
            tag: TagTemplate::parse(params.str("tag")?).map_err(|e| BuildError::param("tag", e))?,
            state_file: params.opt_str("state_file")?.map(|p| ctx.base_dir.join(p)),
            history: params.bool("history")?,
            history_max: params.usize("history_max")?.max(1),
            signals: params.bool("signals")?,
            split_arrays: params.bool("split_arrays")?,
            fields: Fields {
                message,
                channel: key("channel_key")?,
                publisher: key("publisher_key")?,
                timetoken: key("timetoken_key")?,
                subscription: key("subscription_key")?,
                meta: key("meta_key")?,
            },
            heartbeat: u64::try_from(params.int("heartbeat")?)
                .map_err(|_| BuildError::param("heartbeat", "must not be negative"))?,
            filter: params.opt_str("filter_expression")?.map(str::to_string),
        })
    }
}

/// The committed position: the last accepted message's timetoken, and per
/// channel the newest timetoken taken from history (to drop repeats).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Cursor {
    /// Subscribe from here.
    pub timetoken: Option<u64>,
    /// Per channel: messages at or before this came from history.
    pub seen: HashMap<String, u64>,
}

impl Cursor {
    /// Reads the state file; a missing file is a fresh start.
    ///
    /// # Errors
    /// The file exists but cannot be read or is not a state file: the input
    /// stops rather than silently starting from "now".
    pub fn load(file: &std::path::Path) -> Result<Self, String> {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(format!("reading state file {}: {e}", file.display())),
        };
        let v: Json = serde_json::from_str(&text)
            .map_err(|e| format!("state file {} is damaged: {e}", file.display()))?;
        let tt = |v: &Json| -> Option<u64> {
            match v {
                Json::String(s) => s.parse().ok(),
                Json::Number(n) => n.as_u64(),
                _ => None,
            }
        };
        let timetoken = match v.get("timetoken") {
            None | Some(Json::Null) => None,
            Some(t) => Some(tt(t).ok_or_else(|| {
                format!(
                    "state file {}: timetoken {t} is not a timetoken",
                    file.display()
                )
            })?),
        };
        let seen = v
            .get("history")
            .and_then(Json::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(k, v)| Some((k.clone(), tt(v)?)))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Self { timetoken, seen })
    }

    /// Writes the state file atomically (temp file, fsync, rename).
    ///
    /// # Errors
    /// The reason, when the file cannot be written.
    pub fn save(&self, file: &std::path::Path) -> Result<(), String> {
        use std::io::Write as _;
        let mut history = Map::new();
        for (k, v) in &self.seen {
            history.insert(k.clone(), Json::String(v.to_string()));
        }
        let v = serde_json::json!({
            "timetoken": self.timetoken.map(|t| t.to_string()),
            "history": history,
        });
        let tmp = file.with_extension("tmp");
        let write = || -> std::io::Result<()> {
            if let Some(dir) = file.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(v.to_string().as_bytes())?;
            f.sync_data()?;
            std::fs::rename(&tmp, file)
        };
        write().map_err(|e| format!("writing state file {}: {e}", file.display()))
    }
}

/// The record for a message that could not be turned into an event.
fn reject(m: &Message, time: ulog_engine::EventTime, reason: String) -> (Tag, Rejected) {
    let mut raw = Map::new();
    raw.insert("channel".into(), Json::String(m.channel.clone()));
    raw.insert("timetoken".into(), Json::String(m.timestamp.to_string()));
    raw.insert(
        "payload".into(),
        Json::String(String::from_utf8_lossy(&m.data).into_owned()),
    );
    (
        Tag::parse("pubnub.error").expect("valid tag"),
        Rejected {
            event: Event::new(time, Record::Map(raw)),
            reason,
        },
    )
}

/// Decrypts a message the way PubNub's SDKs encrypt: the payload is a JSON
/// string of base64 ciphertext.
fn decrypt(m: &mut Message, crypto: &CryptoModule) {
    let text = String::from_utf8_lossy(&m.data);
    let b64 = text.trim().trim_matches('"');
    let result = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| PubNubError::Decryption {
            details: format!("not base64 ciphertext: {e}"),
        })
        .and_then(|bytes| crypto.decrypt(bytes));
    match result {
        Ok(plain) => m.data = plain,
        Err(e) => m.decryption_error = Some(e),
    }
}

/// Events that could not be made, with the tag they are rejected under.
type Rejects = Vec<(Tag, Rejected)>;

type Updates = Pin<Box<dyn Stream<Item = Result<Update, PubNubError>> + Send>>;

impl PubnubInput {
    /// Turns received messages into batches per tag and rejects; `events`
    /// counts what will be emitted.
    fn convert(
        &self,
        received: Vec<(Message, Kind)>,
        crypto: Option<&CryptoModule>,
    ) -> (Vec<(Tag, Vec<Event>)>, Rejects) {
        let mut batches: Vec<(Tag, Vec<Event>)> = Vec::new();
        let mut rejects = Vec::new();
        for (mut m, kind) in received {
            if let Some(c) = crypto {
                decrypt(&mut m, c);
            }
            let time = envelope::timetoken_time(m.timestamp as u64);
            let records = match envelope::record(&m, kind, &self.fields) {
                Ok(record) => self.split(record),
                Err(reason) => {
                    rejects.push(reject(&m, time, reason));
                    continue;
                }
            };
            for mut record in records {
                match self.tag.render(&m, kind, &mut record) {
                    Ok(tag) => {
                        let event = Event::new(time, record);
                        match batches.iter_mut().find(|(t, _)| *t == tag) {
                            Some((_, list)) => list.push(event),
                            None => batches.push((tag, vec![event])),
                        }
                    }
                    Err(reason) => rejects.push((
                        Tag::parse("pubnub.error").expect("valid tag"),
                        Rejected {
                            event: Event::new(time, record),
                            reason,
                        },
                    )),
                }
            }
        }
        (batches, rejects)
    }

    /// One record, or one per element when a batched message is split.
    fn split(&self, mut record: Record) -> Vec<Record> {
        if self.split_arrays {
            let key = &self.fields.message;
            let map = record.map_mut();
            let splittable = matches!(map.get(key), Some(Json::Array(items))
                if !items.is_empty() && items.iter().all(Json::is_object));
            if splittable {
                let Some(Json::Array(items)) = map.remove(key) else {
                    return vec![record];
                };
                return items
                    .into_iter()
                    .filter_map(|item| match item {
                        Json::Object(mut o) => {
                            for (k, v) in map.iter() {
                                o.entry(k.clone()).or_insert_with(|| v.clone());
                            }
                            Some(Record::Map(o))
                        }
                        _ => None,
                    })
                    .collect();
            }
        }
        vec![record]
    }

    /// Emits and rejects one burst. `Err` when the pipeline stopped.
    async fn deliver(
        &self,
        ctx: &mut InputContext,
        received: Vec<(Message, Kind)>,
        crypto: Option<&CryptoModule>,
    ) -> Result<(), ()> {
        let (batches, rejects) = self.convert(received, crypto);
        for (tag, events) in batches {
            let n = events.len();
            if let Err(e) = ctx.emitter.emit(Batch::new(tag, events)).await {
                warn!(input = %ctx.id, events = n, error = %e, "messages not accepted; the timetoken is not committed, they come again after a restart");
                return Err(());
            }
        }
        for (tag, r) in rejects {
            warn!(input = %ctx.id, reason = %r.reason, "PubNub message refused; sent to the errors label");
            if ctx.emitter.reject(tag, &ctx.id, vec![r]).await.is_err() {
                return Err(());
            }
        }
        Ok(())
    }

    fn commit(&self, cursor: &Cursor, id: &str) {
        if let Some(f) = &self.state_file {
            if let Err(e) = cursor.save(f) {
                error!(input = %id, error = %e, "could not commit the timetoken; a restart will receive these messages again");
            }
        }
    }

    /// Reads history after the committed timetoken, emits it, and records
    /// per channel what it covered.
    async fn catch_up(
        &self,
        ctx: &mut InputContext,
        transport: &crate::transport::HyperTransport,
        cursor: &mut Cursor,
        crypto: Option<&CryptoModule>,
    ) -> Result<(), ()> {
        let Some(after) = cursor.timetoken else {
            return Ok(());
        };
        let who = history::Identity {
            subscribe_key: &self.client.subscribe_key,
            uuid: &self.client.uuid,
            auth_key: self.client.auth_key.as_deref(),
        };
        for channel in &self.channels {
            let from = cursor
                .seen
                .get(channel)
                .copied()
                .unwrap_or(after)
                .max(after);
            let mut backoff = Duration::from_millis(200);
            let (messages, truncated) = loop {
                let fetched = tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Err(()),
                    r = history::after(transport, &who, channel, from, self.history_max) => r,
                };
                match fetched {
                    Ok(r) => break r,
                    Err(e) => {
                        warn!(input = %ctx.id, %channel, error = %e, retry_in = ?backoff, "history catch-up failed; retrying");
                        tokio::select! {
                            _ = ctx.shutdown.cancelled() => return Err(()),
                            _ = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            };
            if truncated {
                warn!(input = %ctx.id, %channel, history_max = self.history_max, "more messages in history than history_max; the oldest are skipped");
            }
            info!(input = %ctx.id, %channel, messages = messages.len(), after, "history catch-up");
            let newest = messages.last().map(|m| m.timestamp as u64);
            for chunk in messages.chunks(MAX_BURST) {
                let received = chunk.iter().map(|m| (m.clone(), Kind::Message)).collect();
                self.deliver(ctx, received, crypto).await?;
                cursor.seen.insert(
                    channel.clone(),
                    chunk.last().map_or(from, |m| m.timestamp as u64),
                );
                self.commit(cursor, &ctx.id);
            }
            if newest.is_none() {
                cursor.seen.remove(channel);
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Input for PubnubInput {
    async fn run(self: Box<Self>, mut ctx: InputContext) -> Result<(), PluginError> {
        let transport = self.client.transport().map_err(PluginError::new)?;
        let client = self
            .client
            .client(transport.clone(), false)
            .map_err(PluginError::new)?;
        let crypto_module = self.client.crypto().map_err(PluginError::new)?;
        let crypto = crypto_module.as_ref();
        let mut cursor = match &self.state_file {
            Some(f) => Cursor::load(f).map_err(PluginError::new)?,
            None => Cursor::default(),
        };
        if let Some(tt) = cursor.timetoken {
            info!(input = %ctx.id, timetoken = tt, "resuming from the committed timetoken");
        }
        if self.history
            && self
                .catch_up(&mut ctx, &transport, &mut cursor, crypto)
                .await
                .is_err()
        {
            return Ok(());
        }
        let mut builder = client
            .subscribe_raw()
            .channels(self.channels.clone())
            .channel_groups(self.groups.clone())
            .heartbeat(self.heartbeat);
        if let Some(tt) = cursor.timetoken {
            builder = builder.cursor(tt);
        }
        if let Some(f) = &self.filter {
            builder = builder.filter_expression(f.clone());
        }
        let mut updates: Updates = Box::pin(
            builder
                .execute()
                .map_err(|e| PluginError::new(e.to_string()))?
                .stream(),
        );
        let mut backoff = Duration::from_millis(100);
        let mut failures: u64 = 0;
        let mut skipped: u64 = 0;
        loop {
            let first = tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                u = updates.next() => u,
            };
            let Some(first) = first else { break };
            let mut burst = vec![first];
            while burst.len() < MAX_BURST {
                match updates.next().now_or_never() {
                    Some(Some(u)) => burst.push(u),
                    _ => break,
                }
            }
            let mut received = Vec::with_capacity(burst.len());
            let mut newest = None;
            let mut failed = None;
            for u in burst {
                match u {
                    Ok(Update::Message(m)) => received.push((m, Kind::Message)),
                    Ok(Update::Signal(m)) => {
                        if self.signals {
                            received.push((m, Kind::Signal));
                        } else {
                            newest = newest.max(Some(m.timestamp as u64));
                        }
                    }
                    Ok(other) => {
                        skipped += 1;
                        debug!(input = %ctx.id, update = ?other, "not a message or signal; skipped");
                    }
                    Err(e) => failed = Some(e),
                }
            }
            // What history already gave is not emitted twice.
            received.retain(|(m, _)| {
                let tt = m.timestamp as u64;
                newest = newest.max(Some(tt));
                cursor.seen.get(&m.channel).is_none_or(|&seen| tt > seen)
            });
            if !received.is_empty() {
                failures = 0;
                backoff = Duration::from_millis(100);
                if self.deliver(&mut ctx, received, crypto).await.is_err() {
                    break;
                }
            }
            for bad in transport.take_malformed() {
                warn!(input = %ctx.id, entry = %bad, "PubNub sent a malformed envelope entry; sent to the errors label");
                let r = Rejected {
                    event: Event::new(
                        ulog_engine::EventTime::now(),
                        Record::Map(Map::from_iter([("entry".to_string(), bad)])),
                    ),
                    reason: "malformed subscribe envelope entry (needs a, f, p.t, c, d)".into(),
                };
                let tag = Tag::parse("pubnub.error").expect("valid tag");
                if ctx.emitter.reject(tag, &ctx.id, vec![r]).await.is_err() {
                    break;
                }
            }
            if let Some(tt) = newest {
                if cursor.timetoken.is_none_or(|c| tt > c) {
                    cursor.timetoken = Some(tt);
                }
                cursor.seen.retain(|_, seen| *seen > tt);
                self.commit(&cursor, &ctx.id);
            }
            if let Some(e) = failed {
                failures += 1;
                if failures <= 3 || failures.is_multiple_of(50) {
                    warn!(input = %ctx.id, error = %e, failures, retry_in = ?backoff, "PubNub subscribe failed; polling again from the same timetoken");
                }
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
        if skipped > 0 {
            info!(input = %ctx.id, skipped, "pubnub input stopped; presence and other non-message updates were skipped");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trips_exactly_and_damage_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("s/pubnub.json");
        assert_eq!(Cursor::load(&f).unwrap(), Cursor::default());
        let c = Cursor {
            timetoken: Some(17_000_000_000_000_001),
            seen: HashMap::from([("a".to_string(), 16_999_999_999_999_999)]),
        };
        c.save(&f).unwrap();
        assert_eq!(Cursor::load(&f).unwrap(), c);
        std::fs::write(&f, "{\"timetoken\": 1.5e16}").unwrap();
        assert!(Cursor::load(&f).is_err());
        std::fs::write(&f, "{\"timet").unwrap();
        assert!(Cursor::load(&f).unwrap_err().contains("damaged"));
    }
}
