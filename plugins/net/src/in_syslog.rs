//! `input syslog`: a syslog receiver for RFC 5424 and RFC 3164 messages over
//! UDP, TCP and TLS, so rsyslog, syslog-ng, `logger`, network devices and
//! anything else that speaks syslog can send to ulog directly.
//!
//! Every message is parsed with the syslog parsers of `ulog-parsers` and
//! tagged `<tag>.<facility>.<severity>` (`syslog.auth.info`), as fluentd's
//! in_syslog does, so routes can pick by facility and severity. A TCP read
//! or a UDP burst becomes one batch per tag.
//!
//! What is not syslog is never dropped silently:
//! - a message whose PRI is readable but whose rest is not RFC 5424 or 3164
//!   is kept with the rest as its `message` (RFC 3164 section 4.3.2 says a
//!   receiver treats such a rest as the content), tagged by its PRI;
//! - a message without PRI that still parses (a file line relayed as is) is
//!   treated as `user.notice` (RFC 3164 section 4.3.3);
//! - anything else is emitted as `{message = "<the text>"}` under
//!   `<tag>.unmatched` (`on_error = "keep"`, the default) or skipped with a
//!   warning and counted (`on_error = "log"`).
//!
//! ```text
//! input syslog { listen = "0.0.0.0:5140"  protocol = "tcp" }
//! match "syslog.auth.**" file { path = "auth.jsonl" }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio::net::UdpSocket;
use tracing::{debug, error, info, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Emitter, Event, EventTime, Input, InputContext,
    ParamKind, ParamSpec, Params, PluginError, PluginKind, PluginSpec, Record, Registry, Rejected,
    Tag, Value as PValue,
};
use ulog_parsers::Parser;

use crate::counters::{preview, ConnCounts, Counters, Problem};
use crate::framing::fill;
use crate::in_tcp::{acceptor, max_size, tls_paths};
use crate::in_udp::Burst;
use crate::listener::{self, Conn};
use crate::syslog::{read_pri, Frame, Framer, Framing, DEFAULT_PRI, FACILITIES, SEVERITIES};

/// The default `listen` address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5140";
/// The default `max_message_size`: 64 KiB.
pub const DEFAULT_MAX_MESSAGE: u64 = 64 * 1024;

/// Which transport the input listens on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    /// RFC 5426: one message per datagram.
    Udp,
    /// RFC 6587: octet-counted or newline-framed messages on a TCP stream.
    Tcp,
    /// RFC 5425: the TCP framings inside TLS.
    Tls,
}

/// The `syslog` input's declaration.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Input,
        "syslog",
        "Receives syslog messages (RFC 5424 and RFC 3164) over UDP, TCP or TLS and tags each `<tag>.<facility>.<severity>`. Fields: pri, facility, severity, host, ident, pid, msgid, structured_data, message; the event time is the message's.",
    )
    .param(ParamSpec::with_default(
        "listen",
        ParamKind::Str,
        DEFAULT_LISTEN,
        "Address and port to listen on; `0.0.0.0:514` for every interface on the standard port (needs privileges).",
    ))
    .param(ParamSpec::with_default(
        "protocol",
        ParamKind::OneOf(&["udp", "tcp", "tls"]),
        "udp",
        "`udp` (RFC 5426, one message per datagram), `tcp` (RFC 6587), or `tls` (RFC 5425; needs `tls_cert_path` and `tls_key_path`).",
    ))
    .param(ParamSpec::with_default(
        "framing",
        ParamKind::OneOf(&["auto", "octet_counting", "newline"]),
        "auto",
        "How TCP and TLS streams are cut into messages: `octet_counting` (`LEN SP MSG`), `newline` (one per line), or `auto`: a frame starting with digits and a space is octet-counted, any other runs to the newline.",
    ))
    .param(ParamSpec::with_default(
        "tag",
        ParamKind::Str,
        "syslog",
        "Tag prefix: events are tagged `<tag>.<facility>.<severity>` (`syslog.local3.warning`); messages that are not syslog at all `<tag>.unmatched`.",
    ))
    .param(ParamSpec::with_default(
        "format",
        ParamKind::OneOf(&["auto", "rfc5424", "rfc3164"]),
        "auto",
        "Which syslog grammar to read: `auto` takes `<PRI>1 ` as RFC 5424 and anything else as RFC 3164.",
    ))
    .param(ParamSpec::with_default(
        "time_zone",
        ParamKind::Str,
        "local",
        "Zone of RFC 3164 timestamps, which carry none: \"local\" (this machine's), \"UTC\", or an offset like \"+09:00\". RFC 5424 timestamps carry their offset.",
    ))
    .param(ParamSpec::with_default(
        "max_message_size",
        ParamKind::Size,
        PValue::Size(DEFAULT_MAX_MESSAGE),
        "Longest message accepted; a longer one is skipped with a warning and counted (TCP resumes at the next frame).",
    ))
    .param(ParamSpec::with_default(
        "on_error",
        ParamKind::OneOf(&["keep", "log", "errors"]),
        "keep",
        "Messages that are not syslog (no valid PRI and no syslog header), always warned about (the first 10, then counted): `keep` emits `{message = \"<the text>\"}` under `<tag>.unmatched`; `log` skips them; `errors` sends that record to the `errors` label with the parser's reason.",
    ))
    .param(ParamSpec::optional(
        "source_address_key",
        ParamKind::Str,
        "When set, every record gets this field with the IP address of the sender.",
    ))
    .param(ParamSpec::optional(
        "tls_cert_path",
        ParamKind::Str,
        "With `protocol = \"tls\"`: the PEM certificate chain.",
    ))
    .param(ParamSpec::optional(
        "tls_key_path",
        ParamKind::Str,
        "With `protocol = \"tls\"`: the PEM private key.",
    ))
}

/// Registers `input syslog`.
pub fn register(registry: &mut Registry) {
    registry.add_input(spec(), |params, ctx| {
        Ok(Box::new(SyslogInput::from_params(params, ctx)?) as Box<dyn Input>)
    });
}

/// The syslog parser of `ulog-parsers` for `format` and `time_zone`.
fn build_parser(format: &str, time_zone: &str) -> Result<Arc<dyn Parser>, BuildError> {
    let name = match format {
        "rfc5424" => "syslog_rfc5424",
        "rfc3164" => "syslog_rfc3164",
        _ => "syslog",
    };
    let mut spec = PluginSpec::new(PluginKind::Input, "syslog", "");
    for p in ulog_parsers::format_params("syslog") {
        spec = spec.param(p);
    }
    let given = [
        ("format".to_string(), PValue::from(name)),
        ("time_zone".to_string(), PValue::from(time_zone)),
    ];
    let params = spec.validate(&given).map_err(|errs| {
        let e = errs
            .into_iter()
            .next()
            .map(|e| e.to_string())
            .unwrap_or_default();
        BuildError::param("time_zone", e)
    })?;
    ulog_parsers::build_parser(&params).map_err(|e| BuildError {
        param: Some(
            if e.param.as_deref() == Some("format") {
                "format"
            } else {
                "time_zone"
            }
            .into(),
        ),
        message: e.message,
        within: None,
    })
}

/// What to do with messages that are not syslog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnError {
    Keep,
    Log,
    Errors,
}

struct Config {
    id: Arc<str>,
    listen: String,
    protocol: Protocol,
    framing: Framing,
    max: usize,
    /// `<tag>.<facility>.<severity>` by PRI (0..=191), then `<tag>.unmatched`.
    tags: Vec<Tag>,
    parser: Arc<dyn Parser>,
    on_error: OnError,
    source_key: Option<String>,
    tls: Option<(PathBuf, PathBuf)>,
    counters: Counters,
}

const UNMATCHED: usize = 192;

/// A built `syslog` input; binds its socket when it starts.
pub struct SyslogInput {
    config: Arc<Config>,
}

impl SyslogInput {
    /// Builds the input from validated parameters (no I/O).
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        let prefix = params.str("tag")?;
        let mut tags = Vec::with_capacity(UNMATCHED + 1);
        for pri in 0..=191usize {
            let t = format!("{prefix}.{}.{}", FACILITIES[pri >> 3], SEVERITIES[pri & 7]);
            tags.push(Tag::parse(&t).map_err(|e| BuildError::param("tag", e.to_string()))?);
        }
        tags.push(
            Tag::parse(&format!("{prefix}.unmatched"))
                .map_err(|e| BuildError::param("tag", e.to_string()))?,
        );
        let protocol = match params.str("protocol")? {
            "tcp" => Protocol::Tcp,
            "tls" => Protocol::Tls,
            _ => Protocol::Udp,
        };
        let tls = tls_paths(params, ctx)?;
        match (protocol, &tls) {
            (Protocol::Tls, None) => {
                return Err(BuildError::param(
                    "protocol",
                    "`tls` needs `tls_cert_path` and `tls_key_path`",
                ))
            }
            (Protocol::Udp | Protocol::Tcp, Some(_)) => {
                return Err(BuildError::param(
                    "tls_cert_path",
                    "only used with `protocol = \"tls\"`",
                ))
            }
            _ => {}
        }
        let framing = match params.str("framing")? {
            "octet_counting" => Framing::OctetCounting,
            "newline" => Framing::Newline,
            _ => Framing::Auto,
        };
        Ok(Self {
            config: Arc::new(Config {
                id: Arc::from(ctx.id.as_str()),
                listen: params.str("listen")?.to_string(),
                protocol,
                framing,
                max: max_size(params, "max_message_size")?,
                tags,
                parser: build_parser(params.str("format")?, params.str("time_zone")?)?,
                on_error: match params.str("on_error")? {
                    "log" => OnError::Log,
                    "errors" => OnError::Errors,
                    _ => OnError::Keep,
                },
                source_key: params.opt_str("source_address_key")?.map(str::to_string),
                tls,
                counters: Counters::default(),
            }),
        })
    }
}

/// Events of one read, grouped by tag index (few tags per read, so a short
/// list beats a map).
/// Messages refused with `on_error = "errors"` are kept apart for the
/// `errors` label.
#[derive(Default)]
struct ByTag(Vec<(usize, Vec<Event>)>, Vec<Rejected>);

impl ByTag {
    fn push(&mut self, tag: usize, e: Event) {
        match self.0.iter_mut().find(|(t, _)| *t == tag) {
            Some((_, events)) => events.push(e),
            None => self.0.push((tag, vec![e])),
        }
    }
}

impl Config {
    /// Parses one message and files it under its tag.
    fn message(
        &self,
        msg: Bytes,
        now: EventTime,
        peer: &SocketAddr,
        out: &mut ByTag,
        counts: &mut ConnCounts,
    ) {
        let (tag, mut record, time) = match self.parser.parse(msg.clone()) {
            Ok(parsed) => {
                let mut record = parsed.record;
                let map = record.map_mut();
                let pri = match map.get("pri").and_then(Value::as_u64) {
                    Some(p) if p <= 191 => p as usize,
                    _ => {
                        // No PRI: RFC 3164's default, in the fields too.
                        let p = usize::from(DEFAULT_PRI);
                        map.insert("facility".into(), Value::from(FACILITIES[p >> 3]));
                        map.insert("severity".into(), Value::from(SEVERITIES[p & 7]));
                        p
                    }
                };
                (pri, record, parsed.time.unwrap_or(now))
            }
            Err(e) => {
                counts.unparsable += 1;
                let log = self.counters.note(&self.id, Problem::Unparsable);
                match read_pri(&msg) {
                    Some((pri, used)) => {
                        if log {
                            warn!(input = %self.id, %peer, error = %e, text = %preview(&msg, 200), "not RFC 5424 or RFC 3164 after its PRI; kept with the rest as the message");
                        }
                        let p = usize::from(pri);
                        let mut record = Record::new();
                        let map = record.map_mut();
                        map.insert("pri".into(), Value::from(pri));
                        map.insert("facility".into(), Value::from(FACILITIES[p >> 3]));
                        map.insert("severity".into(), Value::from(SEVERITIES[p & 7]));
                        map.insert("message".into(), text(&msg[used..]));
                        (p, record, now)
                    }
                    None => {
                        let what = match self.on_error {
                            OnError::Keep => "kept under `<tag>.unmatched`",
                            OnError::Log => "skipped",
                            OnError::Errors => "sent to the errors label",
                        };
                        if log {
                            warn!(input = %self.id, %peer, error = %e, text = %preview(&msg, 200), "not a syslog message; {what}");
                        }
                        let mut record = Record::new();
                        record.insert("message", text(&msg));
                        match self.on_error {
                            OnError::Keep => (UNMATCHED, record, now),
                            OnError::Log => return,
                            OnError::Errors => {
                                if let Some(key) = &self.source_key {
                                    record
                                        .insert(key.clone(), Value::String(peer.ip().to_string()));
                                }
                                out.1.push(Rejected {
                                    event: Event::new(now, record),
                                    reason: format!("not a syslog message: {e}"),
                                });
                                return;
                            }
                        }
                    }
                }
            }
        };
        if let Some(key) = &self.source_key {
            record.insert(key.clone(), Value::String(peer.ip().to_string()));
        }
        out.push(tag, Event::new(time, record));
    }

    fn oversized(&self, n: usize, peer: &SocketAddr, counts: &mut ConnCounts) {
        counts.oversized += 1;
        if self.counters.note(&self.id, Problem::Oversized) {
            warn!(input = %self.id, %peer, bytes = n, max = self.max, "syslog message longer than max_message_size; skipped");
        }
    }

    /// Emits one batch per tag; false when the pipeline no longer accepts.
    async fn emit(&self, emitter: &mut Emitter, out: ByTag, counts: &mut ConnCounts) -> bool {
        let ByTag(by_tag, rejects) = out;
        if !rejects.is_empty() {
            let tag = self.tags[UNMATCHED].clone();
            if let Err(e) = emitter.reject(tag, &self.id, rejects).await {
                error!(input = %self.id, error = %e, "refused messages could not be sent to the errors label");
                return false;
            }
        }
        for (tag, events) in by_tag {
            let n = events.len();
            if let Err(e) = emitter
                .emit(Batch::new(self.tags[tag].clone(), events))
                .await
            {
                error!(input = %self.id, events = n, error = %e, "syslog messages were not accepted");
                return false;
            }
            counts.events += n as u64;
        }
        true
    }
}

/// Message text: a UTF-8 BOM dropped, invalid bytes replaced.
fn text(b: &[u8]) -> Value {
    let b = b.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(b);
    Value::String(String::from_utf8_lossy(b).into_owned())
}

#[async_trait]
impl Input for SyslogInput {
    async fn run(self: Box<Self>, mut ctx: InputContext) -> Result<(), PluginError> {
        let c = self.config;
        match c.protocol {
            Protocol::Udp => udp(&c, &mut ctx).await?,
            Protocol::Tcp | Protocol::Tls => {
                let tls = if c.protocol == Protocol::Tls {
                    acceptor(&c.tls)?
                } else {
                    None
                };
                let listener = listener::bind(&c.listen).await?;
                info!(
                    input = %ctx.id,
                    listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
                    protocol = ?c.protocol,
                    "syslog input listening"
                );
                let conf = c.clone();
                listener::serve(listener, tls, &ctx, move |conn| {
                    tcp_conn(conf.clone(), conn)
                })
                .await;
            }
        }
        c.counters.report(&ctx.id);
        Ok(())
    }
}

async fn udp(c: &Arc<Config>, ctx: &mut InputContext) -> Result<(), PluginError> {
    let socket = UdpSocket::bind(&c.listen)
        .await
        .map_err(|e| PluginError::with_source(format!("binding UDP {}", c.listen), e))?;
    info!(
        input = %ctx.id,
        listen = %socket.local_addr().map(|a| a.to_string()).unwrap_or_default(),
        protocol = "udp",
        "syslog input listening"
    );
    let mut burst = Burst::new(c.max);
    let mut received = Vec::new();
    let mut counts = ConnCounts::default();
    while let Some(now) = burst.recv(&socket, &ctx.shutdown, &mut received).await {
        let mut out = ByTag::default();
        for r in received.drain(..) {
            match r {
                Ok((dgram, peer)) if dgram.len() > c.max => {
                    c.oversized(dgram.len(), &peer, &mut counts)
                }
                Ok((dgram, peer)) => {
                    let end = dgram
                        .iter()
                        .rposition(|b| !matches!(b, b'\n' | b'\r' | b'\0'))
                        .map_or(0, |i| i + 1);
                    if end > 0 {
                        c.message(dgram.slice(..end), now, &peer, &mut out, &mut counts);
                    }
                }
                Err(e) => warn!(input = %ctx.id, error = %e, "receiving a datagram failed"),
            }
        }
        if !c.emit(&mut ctx.emitter, out, &mut counts).await {
            break;
        }
    }
    Ok(())
}

async fn tcp_conn(c: Arc<Config>, conn: Conn) {
    let Conn {
        mut stream,
        peer,
        mut emitter,
        shutdown,
    } = conn;
    let mut framer = Framer::new(c.framing, c.max);
    let mut counts = ConnCounts::default();
    let how = loop {
        let read = tokio::select! {
            _ = shutdown.cancelled() => Err("closed at shutdown".to_string()),
            r = fill(framer.buf_mut(), &mut stream) => match r {
                Ok(0) => Err("closed by the client".to_string()),
                Ok(_) => Ok(()),
                Err(e) => Err(format!("failed ({e})")),
            },
        };
        let now = EventTime::now();
        let mut out = ByTag::default();
        let drained = framer.drain();
        for f in drained.frames {
            match *f {
                Frame::Msg(s, e) => {
                    c.message(drained.chunk.slice(s..e), now, &peer, &mut out, &mut counts)
                }
                Frame::Oversized(n) => c.oversized(n, &peer, &mut counts),
            }
        }
        let broken = drained.broken;
        if broken.is_none() && read.is_err() {
            match framer.finish() {
                Ok(Some(rest)) => c.message(rest, now, &peer, &mut out, &mut counts),
                Ok(None) => {}
                Err(bytes) => {
                    counts.unparsable += 1;
                    c.counters.note(&c.id, Problem::BadFrame);
                    warn!(input = %c.id, %peer, bytes, "connection ended in the middle of an octet-counted frame; the partial message is dropped");
                }
            }
        }
        if !c.emit(&mut emitter, out, &mut counts).await {
            break "closed: the pipeline is stopping".to_string();
        }
        if let Some(why) = broken {
            counts.unparsable += 1;
            c.counters.note(&c.id, Problem::BadFrame);
            warn!(input = %c.id, %peer, reason = why, next = %preview(&framer_head(&mut framer), 40), "broken syslog framing; closing this connection (what came before was emitted)");
            break "closed after a framing error".to_string();
        }
        if let Err(how) = read {
            break how;
        }
    };
    debug!(input = %c.id, %peer, "syslog connection ended");
    counts.log_close(&c.id, &peer, &how);
}

/// The first bytes still buffered, for the framing error message.
fn framer_head(f: &mut Framer) -> Vec<u8> {
    let b = f.buf_mut();
    b[..b.len().min(40)].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_agree_with_the_parser_fields() {
        let parser = build_parser("auto", "UTC").unwrap();
        for pri in 0..=191u8 {
            let msg = format!("<{pri}>1 - host app - - - hi");
            let parsed = parser.parse(Bytes::from(msg)).unwrap();
            let map = parsed.record.to_map();
            let p = usize::from(pri);
            assert_eq!(map["facility"], FACILITIES[p >> 3], "pri {pri}");
            assert_eq!(map["severity"], SEVERITIES[p & 7], "pri {pri}");
        }
    }

    #[test]
    fn bad_time_zone_is_a_build_error() {
        let e = build_parser("auto", "Mars/Olympus").err().unwrap();
        assert_eq!(e.param.as_deref(), Some("time_zone"));
    }
}
