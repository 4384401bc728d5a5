//! `input tcp`: events from TCP (or TLS) connections, one per line or one per
//! msgpack map — the plainest and fastest way to push logs into ulog.
//!
//! Each connection runs on its own task, reads up to 256 KiB at a time, and
//! emits everything one read gave as **one batch** with one timestamp. JSON
//! lines are kept as slices of the read buffer (validated, not parsed), so a
//! `tcp → file` pipeline writes exactly the bytes it received.
//!
//! ```text
//! input tcp { listen = "0.0.0.0:5170"  tag = "app.logs" }
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::BytesMut;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Emitter, Event, EventTime, Input, InputContext,
    ParamKind, ParamSpec, Params, PluginError, PluginKind, PluginSpec, Record, Registry, Tag,
    Value as PValue,
};

use crate::counters::{preview, ConnCounts, Problem};
use crate::decode::{add_source, with_format_params, LineDecoder, ReadOut};
use crate::framing::{fill, LineBuffer};
use crate::listener::{self, Conn};
use ulog_parsers::msgpack_stream::{Scan, Scanned};

/// The default `listen` address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:5170";
/// The default `max_line_size`: 1 MiB.
pub const DEFAULT_MAX_LINE: u64 = 1 << 20;

/// How a connection's byte stream is cut into records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// One record per line, parsed with `format`.
    Newline,
    /// A stream of msgpack maps, one record each.
    Msgpack,
}

/// The `tcp` input's declaration: every parameter with type, default and
/// description.
pub fn spec() -> PluginSpec {
    let spec = PluginSpec::new(
        PluginKind::Input,
        "tcp",
        "Listens on a TCP port (optionally TLS) and reads one event per line (parsed with `format`, JSON by default) or one per msgpack map. Each read becomes one batch; JSON lines are kept as they arrived, not re-encoded.",
    )
    .param(ParamSpec::with_default(
        "listen",
        ParamKind::Str,
        DEFAULT_LISTEN,
        "Address and port to listen on; `0.0.0.0:5170` for every interface.",
    ))
    .param(ParamSpec::required(
        "tag",
        ParamKind::Str,
        "The tag of every event this input emits.",
    ))
    .param(ParamSpec::with_default(
        "framing",
        ParamKind::OneOf(&["newline", "msgpack"]),
        "newline",
        "`newline`: one record per line (`\\n` or `\\r\\n`), parsed with `format`. `msgpack`: a stream of msgpack maps, each one record (`format` is not used); a byte sequence that is not msgpack closes that connection.",
    ))
    .param(ParamSpec::with_default(
        "max_line_size",
        ParamKind::Size,
        PValue::Size(DEFAULT_MAX_LINE),
        "Longest line (or msgpack value) accepted. A longer line is skipped with a warning up to its newline and counted; a longer msgpack value closes the connection.",
    ));
    with_format_params(spec, "json")
        .param(ParamSpec::optional(
            "tls_cert_path",
            ParamKind::Str,
            "PEM certificate chain; with `tls_key_path`, clients must speak TLS.",
        ))
        .param(ParamSpec::optional(
            "tls_key_path",
            ParamKind::Str,
            "PEM private key of `tls_cert_path`.",
        ))
}

/// Registers `input tcp`.
pub fn register(registry: &mut Registry) {
    registry.add_input(spec(), |params, ctx| {
        Ok(Box::new(TcpInput::from_params(params, ctx)?) as Box<dyn Input>)
    });
}

/// Reads `tls_cert_path` / `tls_key_path`: both or neither.
pub(crate) fn tls_paths(
    params: &Params,
    ctx: &BuildContext,
) -> Result<Option<(PathBuf, PathBuf)>, BuildError> {
    match (
        params.opt_str("tls_cert_path")?,
        params.opt_str("tls_key_path")?,
    ) {
        (Some(c), Some(k)) => Ok(Some((ctx.resolve(c), ctx.resolve(k)))),
        (None, None) => Ok(None),
        (Some(_), None) => Err(BuildError::param(
            "tls_key_path",
            "`tls_cert_path` is set, so the key is needed too",
        )),
        (None, Some(_)) => Err(BuildError::param(
            "tls_cert_path",
            "`tls_key_path` is set, so the certificate is needed too",
        )),
    }
}

/// Loads a TLS acceptor from cert and key files (when the input starts).
pub(crate) fn acceptor(
    paths: &Option<(PathBuf, PathBuf)>,
) -> Result<Option<TlsAcceptor>, PluginError> {
    match paths {
        None => Ok(None),
        Some((cert, key)) => {
            let config = ulog_tls::server_config(cert, key)
                .map_err(|e| PluginError::with_source("loading the TLS certificate", e))?;
            Ok(Some(TlsAcceptor::from(config)))
        }
    }
}

/// Reads a `max_*_size` parameter as a usize of at least one byte.
pub(crate) fn max_size(params: &Params, name: &str) -> Result<usize, BuildError> {
    let n = params.size(name)?;
    if n == 0 {
        return Err(BuildError::param(name, "must be at least 1 byte"));
    }
    usize::try_from(n).map_err(|_| BuildError::param(name, "is too large"))
}

struct Config {
    listen: String,
    tag: Tag,
    framing: Framing,
    max_line: usize,
    decoder: LineDecoder,
    source_key: Option<String>,
    tls: Option<(PathBuf, PathBuf)>,
}

/// A built `tcp` input; binds its port when it starts.
pub struct TcpInput {
    config: Arc<Config>,
}

impl TcpInput {
    /// Builds the input from validated parameters (no I/O).
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        let tag = params.str("tag")?;
        let tag = Tag::parse(tag).map_err(|e| BuildError::param("tag", e.to_string()))?;
        let max_line = max_size(params, "max_line_size")?;
        let framing = match params.str("framing")? {
            "msgpack" => Framing::Msgpack,
            _ => Framing::Newline,
        };
        Ok(Self {
            config: Arc::new(Config {
                listen: params.str("listen")?.to_string(),
                tag,
                framing,
                max_line,
                decoder: LineDecoder::from_params(&ctx.id, params, max_line)?,
                source_key: params.opt_str("source_address_key")?.map(str::to_string),
                tls: tls_paths(params, ctx)?,
            }),
        })
    }
}

#[async_trait]
impl Input for TcpInput {
    async fn run(self: Box<Self>, ctx: InputContext) -> Result<(), PluginError> {
        let config = self.config;
        let tls = acceptor(&config.tls)?;
        let listener = listener::bind(&config.listen).await?;
        info!(
            input = %ctx.id,
            listen = %listener.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            tls = tls.is_some(),
            "tcp input listening"
        );
        let c = config.clone();
        listener::serve(listener, tls, &ctx, move |conn| {
            let c = c.clone();
            async move {
                match c.framing {
                    Framing::Newline => newline_conn(c, conn).await,
                    Framing::Msgpack => msgpack_conn(c, conn).await,
                }
            }
        })
        .await;
        config.decoder.counters.report(&ctx.id);
        Ok(())
    }
}

/// Why a connection loop ended.
enum End {
    Eof,
    Shutdown,
    Failed(std::io::Error),
}

impl End {
    fn describe(&self) -> String {
        match self {
            End::Eof => "closed by the client".into(),
            End::Shutdown => "closed at shutdown".into(),
            End::Failed(e) => format!("failed ({e})"),
        }
    }
}

/// Emits what one read gave: the events as one batch, then the refused ones
/// to the `errors` label. On failure (the pipeline is stopping) says how
/// many events were not taken and returns false.
pub(crate) async fn emit(
    emitter: &mut Emitter,
    id: &str,
    peer: &SocketAddr,
    tag: &Tag,
    out: ReadOut,
    counts: &mut ConnCounts,
) -> bool {
    let ReadOut { events, rejects } = out;
    let n = events.len();
    if n > 0 {
        if let Err(e) = emitter.emit(Batch::new(tag.clone(), events)).await {
            error!(input = id, %peer, events = n, error = %e, "events read from this connection were not accepted");
            return false;
        }
        counts.events += n as u64;
    }
    let r = rejects.len();
    if r > 0 {
        if let Err(e) = emitter.reject(tag.clone(), id, rejects).await {
            error!(input = id, %peer, events = r, error = %e, "refused input could not be sent to the errors label");
            return false;
        }
    }
    true
}

async fn newline_conn(c: Arc<Config>, conn: Conn) {
    let Conn {
        mut stream,
        peer,
        mut emitter,
        shutdown,
    } = conn;
    let id = &c.decoder.id;
    let source_ip = c.source_key.as_ref().map(|_| peer.ip().to_string());
    let mut lines = LineBuffer::new(c.max_line);
    let mut counts = ConnCounts::default();
    let mut cap_hint = 16;
    let end = loop {
        let read = tokio::select! {
            _ = shutdown.cancelled() => Err(End::Shutdown),
            r = lines.read_from(&mut stream) => match r {
                Ok(0) => Err(End::Eof),
                Ok(_) => Ok(()),
                Err(e) => Err(End::Failed(e)),
            },
        };
        let now = EventTime::now();
        let mut out = ReadOut::with_capacity(cap_hint);
        lines.drain(|l| c.decoder.take(l, now, &peer, &mut out, &mut counts));
        if read.is_err() {
            if lines.pending() > 0 {
                debug!(input = %id, %peer, bytes = lines.pending(), "stream ended without a final newline; reading the rest as a last line");
            }
            lines.finish(|l| c.decoder.take(l, now, &peer, &mut out, &mut counts));
        }
        if let (Some(key), Some(ip)) = (&c.source_key, &source_ip) {
            add_source(&mut out.events, key, ip);
        }
        cap_hint = out.events.len().max(16);
        if !emit(&mut emitter, id, &peer, &c.tag, out, &mut counts).await {
            break End::Shutdown;
        }
        if let Err(end) = read {
            break end;
        }
    };
    counts.log_close(id, &peer, &end.describe());
}

async fn msgpack_conn(c: Arc<Config>, conn: Conn) {
    let Conn {
        mut stream,
        peer,
        mut emitter,
        shutdown,
    } = conn;
    let id = &c.decoder.id;
    let mut buf = BytesMut::new();
    let mut need = 1usize;
    // Resumable: a value split over many reads is walked once, not per read.
    let mut scan = Scan::new();
    let mut counts = ConnCounts::default();
    let end = loop {
        let read = tokio::select! {
            _ = shutdown.cancelled() => Err(End::Shutdown),
            r = fill(&mut buf, &mut stream) => match r {
                Ok(0) => Err(End::Eof),
                Ok(_) => Ok(()),
                Err(e) => Err(End::Failed(e)),
            },
        };
        if read.is_ok() && buf.len() < need {
            continue;
        }
        let now = EventTime::now();
        let mut out = ReadOut::default();
        let mut broken = None;
        while !buf.is_empty() {
            match scan.scan(&buf, c.max_line) {
                Ok(Scanned::Complete(len)) => {
                    let value = buf.split_to(len);
                    push_msgpack(&c, &value, now, &peer, &mut out, &mut counts);
                    need = 1;
                }
                Ok(Scanned::Incomplete { need: n }) => {
                    need = n;
                    break;
                }
                Err(e) => {
                    broken = Some(e.to_string());
                    break;
                }
            }
        }
        if let (Some(key), false) = (&c.source_key, out.events.is_empty()) {
            add_source(&mut out.events, key, &peer.ip().to_string());
        }
        if !emit(&mut emitter, id, &peer, &c.tag, out, &mut counts).await {
            break End::Shutdown;
        }
        if let Some(why) = broken {
            c.decoder.counters.note(id, Problem::BadFrame);
            warn!(input = %id, %peer, reason = %why, bytes = buf.len(), next = %hex_preview(&buf), "not a msgpack stream; closing this connection (what came before was emitted)");
            counts.unparsable += 1;
            break End::Failed(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
        }
        if let Err(end) = read {
            if !buf.is_empty() {
                counts.unparsable += 1;
                c.decoder.counters.note(id, Problem::BadFrame);
                warn!(input = %id, %peer, bytes = buf.len(), "connection ended in the middle of a msgpack value; the partial value is dropped");
            }
            break end;
        }
    };
    counts.log_close(id, &peer, &end.describe());
}

/// Decodes one complete msgpack value into an event (maps only).
fn push_msgpack(
    c: &Config,
    bytes: &[u8],
    now: EventTime,
    peer: &SocketAddr,
    out: &mut ReadOut,
    counts: &mut ConnCounts,
) {
    let (problem, text) = match rmpv::decode::read_value(&mut &bytes[..]) {
        Ok(rmpv::Value::Map(entries)) => {
            out.events.push(Event::new(
                now,
                Record::Map(ulog_parsers::msgpack::to_map(entries)),
            ));
            return;
        }
        Ok(other) => (
            format!("a msgpack {} is not a record (a map)", kind_name(&other)),
            ulog_parsers::msgpack::to_json(other).to_string(),
        ),
        Err(e) => (format!("invalid msgpack value: {e}"), preview(bytes, 200)),
    };
    c.decoder
        .refuse(text.as_bytes(), &problem, now, peer, out, counts);
}

fn kind_name(v: &rmpv::Value) -> &'static str {
    match v {
        rmpv::Value::Nil => "nil",
        rmpv::Value::Boolean(_) => "boolean",
        rmpv::Value::Integer(_) => "integer",
        rmpv::Value::F32(_) | rmpv::Value::F64(_) => "float",
        rmpv::Value::String(_) => "string",
        rmpv::Value::Binary(_) => "binary",
        rmpv::Value::Array(_) => "array",
        rmpv::Value::Map(_) => "map",
        rmpv::Value::Ext(..) => "extension",
    }
}

/// The first bytes of `b` in hex, for messages about binary garbage.
fn hex_preview(b: &[u8]) -> String {
    let mut s: String = b.iter().take(16).map(|x| format!("{x:02x}")).collect();
    if b.len() > 16 {
        s.push('…');
    }
    s
}
