//! From PubNub's subscribe envelope to ulog events.
//!
//! The SDK decodes the envelope (`t` cursor, `m` list of updates with `a`,
//! `f`, `i`, `p`, `c`, `b`, `d`, `e`, `u`); this module turns each message
//! or signal into a record: a JSON object message is the record itself,
//! anything else (string, number, array) goes into `message_key`. Channel,
//! publisher, timetoken and metadata are added under configured names. The
//! event time is the publish timetoken (units of 100 ns since the epoch);
//! timetokens stay integers (17 digits do not fit an f64 exactly) and are
//! written as strings, as PubNub itself writes them.

use bytes::Bytes;
use pubnub::subscribe::{Message, SubscribeResponseBody, Update};
use serde_json::{Map, Value};
use ulog_engine::{EventTime, Record, Tag};

/// Field names for what the envelope adds to a message; `None` leaves a
/// field out.
#[derive(Debug, Clone)]
pub struct Fields {
    /// Where a message that is not a JSON object goes.
    pub message: String,
    /// The channel the message was published on.
    pub channel: Option<String>,
    /// The publisher's UUID.
    pub publisher: Option<String>,
    /// The publish timetoken, as a string of digits.
    pub timetoken: Option<String>,
    /// The channel group or wildcard that matched, when not the channel.
    pub subscription: Option<String>,
    /// The publisher's `meta` object.
    pub meta: Option<String>,
}

impl Default for Fields {
    fn default() -> Self {
        Self {
            message: "message".into(),
            channel: Some("_channel".into()),
            publisher: Some("_publisher".into()),
            timetoken: Some("_timetoken".into()),
            subscription: Some("_subscription".into()),
            meta: Some("_meta".into()),
        }
    }
}

/// Whether an update was published as a message or a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `publish`: stored (if storage is on) and delivered.
    Message,
    /// `signal`: small, never stored.
    Signal,
}

impl Kind {
    /// The name used in tag templates.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Message => "message",
            Kind::Signal => "signal",
        }
    }
}

/// A timetoken (100 ns units) as an event time.
pub fn timetoken_time(tt: u64) -> EventTime {
    EventTime::from_secs_nanos((tt / 10_000_000) as i64, ((tt % 10_000_000) * 100) as u32)
}

/// A subscribe response as the SDK decodes it: the next cursor (timetoken
/// and region) and the updates.
///
/// # Errors
/// The reason, when the body is not a subscribe envelope or is PubNub's
/// error answer.
pub fn decode_subscribe(body: &[u8]) -> Result<(u64, u32, Vec<Update>), String> {
    if let Some(bad) = malformed_entries(body).first() {
        return Err(format!("malformed envelope entry: {bad}"));
    }
    let body: SubscribeResponseBody =
        serde_json::from_slice(body).map_err(|e| format!("not a subscribe envelope: {e}"))?;
    let result = pubnub::subscribe::result::SubscribeResult::try_from(body)
        .map_err(|e| format!("PubNub answered with an error: {e}"))?;
    let tt = result
        .cursor
        .timetoken
        .parse::<u64>()
        .map_err(|e| format!("cursor timetoken {:?}: {e}", result.cursor.timetoken))?;
    Ok((tt, result.cursor.region, result.messages))
}

/// The entries of a subscribe envelope that lack what every update has
/// (`a`, `f`, `p.t` as digits, `c`, `d`): the SDK skips such entries
/// without a word, so ulog finds them first and sends them to `errors`.
/// A body that is not an envelope at all yields nothing (the SDK reports
/// that as an error itself).
pub fn malformed_entries(body: &[u8]) -> Vec<Value> {
    use serde::de::IgnoredAny;
    use serde_json::value::RawValue;
    #[derive(serde::Deserialize)]
    struct Envelope<'a> {
        #[serde(borrow, default)]
        m: Vec<&'a RawValue>,
    }
    #[derive(serde::Deserialize)]
    struct Published<'a> {
        #[serde(borrow)]
        t: Option<std::borrow::Cow<'a, str>>,
    }
    #[derive(serde::Deserialize)]
    struct Entry<'a> {
        a: Option<IgnoredAny>,
        f: Option<u64>,
        c: Option<IgnoredAny>,
        d: Option<IgnoredAny>,
        #[serde(borrow)]
        p: Option<Published<'a>>,
    }
    let Ok(envelope) = serde_json::from_slice::<Envelope>(body) else {
        return Vec::new();
    };
    envelope
        .m
        .into_iter()
        .filter(|raw| {
            let ok = serde_json::from_str::<Entry>(raw.get()).is_ok_and(|e| {
                e.a.is_some()
                    && e.f.is_some()
                    && e.c.is_some()
                    && e.d.is_some()
                    && e.p
                        .and_then(|p| p.t)
                        .is_some_and(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()))
            });
            !ok
        })
        .map(|raw| serde_json::from_str(raw.get()).unwrap_or(Value::Null))
        .collect()
}

/// Builds the record of a message or signal.
///
/// # Errors
/// The reason, when the payload is not JSON (a message that could not be
/// decrypted, for one).
pub fn record(m: &Message, kind: Kind, fields: &Fields) -> Result<Record, String> {
    if let Some(e) = &m.decryption_error {
        return Err(format!("could not decrypt the message: {e}"));
    }
    let data = Bytes::copy_from_slice(&m.data);
    let first = data.iter().find(|b| !b.is_ascii_whitespace());
    let mut record = if first == Some(&b'{') {
        Record::from_json_bytes(data).map_err(|e| format!("message is not valid JSON: {e}"))?
    } else {
        let value: Value =
            serde_json::from_slice(&data).map_err(|e| format!("message is not valid JSON: {e}"))?;
        let mut map = Map::new();
        map.insert(fields.message.clone(), value);
        Record::Map(map)
    };
    let adds = fields.channel.is_some()
        || (fields.publisher.is_some() && m.sender.is_some())
        || fields.timetoken.is_some();
    if adds {
        if let Some(k) = &fields.channel {
            record.insert(k.clone(), Value::String(m.channel.clone()));
        }
        if let (Some(k), Some(s)) = (&fields.publisher, &m.sender) {
            record.insert(k.clone(), Value::String(s.clone()));
        }
        if let Some(k) = &fields.timetoken {
            record.insert(k.clone(), Value::String(m.timestamp.to_string()));
        }
    }
    if let Some(k) = &fields.subscription {
        if m.subscription != m.channel && !m.subscription.is_empty() {
            record.insert(k.clone(), Value::String(m.subscription.clone()));
        }
    }
    if let (Some(k), Some(meta)) = (&fields.meta, &m.user_metadata) {
        if !meta.is_null() {
            record.insert(k.clone(), meta.clone());
        }
    }
    if kind == Kind::Signal {
        record.insert("_type", Value::String("signal".into()));
    }
    Ok(record)
}

/// A tag template over the channel, the subscription, the kind and the
/// message's own top-level fields: `pubnub.{channel}`, `hub.{household}`.
#[derive(Debug, Clone)]
pub struct TagTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Text(String),
    Channel,
    Subscription,
    Kind,
    Field(String),
}

impl TagTemplate {
    /// Parses `{channel}`, `{subscription}`, `{type}` and `{field}`
    /// placeholders (a field of the message object).
    ///
    /// # Errors
    /// An unclosed `{` or an empty placeholder.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in tag template {text:?}"))?;
            let name = &rest[open + 1..open + close];
            parts.push(match name {
                "channel" => Part::Channel,
                "subscription" => Part::Subscription,
                "type" => Part::Kind,
                "" => return Err(format!("empty `{{}}` in tag template {text:?}")),
                f => Part::Field(f.to_string()),
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if parts.iter().all(|p| matches!(p, Part::Text(_))) {
            Tag::parse(text).map_err(|e| e.to_string())?;
        }
        Ok(Self { parts })
    }

    /// Whether rendering reads the record (so the caller must parse it).
    pub fn reads_fields(&self) -> bool {
        self.parts.iter().any(|p| matches!(p, Part::Field(_)))
    }

    /// The tag of one message. Characters a tag cannot hold (`:`, `/`,
    /// spaces…) in channel names and field values become `_`.
    ///
    /// # Errors
    /// A field the template names is missing, or the result is not a tag.
    pub fn render(&self, m: &Message, kind: Kind, record: &mut Record) -> Result<Tag, String> {
        let mut out = String::with_capacity(32);
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Channel => push_clean(&mut out, &m.channel),
                Part::Subscription => push_clean(&mut out, &m.subscription),
                Part::Kind => out.push_str(kind.name()),
                Part::Field(f) => match record.get(f) {
                    Some(Value::String(s)) => push_clean(&mut out, s),
                    Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                        push_clean(&mut out, &v.to_string())
                    }
                    Some(_) => {
                        return Err(format!(
                            "field `{f}` for the tag template is not a string or number"
                        ))
                    }
                    None => return Err(format!("the message has no `{f}` for the tag template")),
                },
            }
        }
        Tag::parse(&out).map_err(|e| format!("tag {out:?}: {e}"))
    }
}

fn push_clean(out: &mut String, s: &str) {
    out.extend(s.chars().map(|c| {
        if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
            c
        } else {
            '_'
        }
    }));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(data: &str) -> Message {
        Message {
            sender: Some("hub-7".into()),
            timestamp: 15614814456537442,
            channel: "mk:log".into(),
            subscription: "mk:log".into(),
            data: data.as_bytes().to_vec(),
            custom_message_type: None,
            user_metadata: None,
            decryption_error: None,
        }
    }

    #[test]
    fn timetokens_keep_every_digit() {
        let t = timetoken_time(15614814456537442);
        assert_eq!(t.unix_nanos(), 1_561_481_445_653_744_200);
    }

    #[test]
    fn objects_are_records_and_others_go_into_message() {
        let f = Fields::default();
        let r = record(&message(r#"{"household":"h1","w":5}"#), Kind::Message, &f).unwrap();
        let m = r.to_map();
        assert_eq!(m["household"], "h1");
        assert_eq!(m["_channel"], "mk:log");
        assert_eq!(m["_publisher"], "hub-7");
        assert_eq!(m["_timetoken"], "15614814456537442");
        assert!(!m.contains_key("_subscription"));
        let r = record(&message("\"Hello\""), Kind::Signal, &f).unwrap();
        let m = r.to_map();
        assert_eq!(m["message"], "Hello");
        assert_eq!(m["_type"], "signal");
        assert!(record(&message("{nope"), Kind::Message, &f).is_err());
    }

    #[test]
    fn tag_templates_clean_what_a_tag_cannot_hold() {
        let t = TagTemplate::parse("pubnub.{channel}").unwrap();
        let m = message(r#"{"household":"h 1"}"#);
        let mut r = record(&m, Kind::Message, &Fields::default()).unwrap();
        assert_eq!(
            t.render(&m, Kind::Message, &mut r).unwrap().as_str(),
            "pubnub.mk_log"
        );
        let t = TagTemplate::parse("hub.{household}.{type}").unwrap();
        assert_eq!(
            t.render(&m, Kind::Message, &mut r).unwrap().as_str(),
            "hub.h_1.message"
        );
        let t = TagTemplate::parse("hub.{missing}").unwrap();
        assert!(t.render(&m, Kind::Message, &mut r).is_err());
        assert!(TagTemplate::parse("hub.{channel").is_err());
        assert!(TagTemplate::parse("bad tag").is_err());
    }
}
