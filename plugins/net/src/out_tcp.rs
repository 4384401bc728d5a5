//! `output tcp`: writes events to a TCP (or TLS) server as JSON lines, a
//! msgpack stream, or raw text lines — to feed another ulog's `tcp` input,
//! a log server, or anything that reads lines from a socket.
//!
//! Each batch is encoded into one buffer and written with one `write_all` on
//! a connection kept open between batches. When the connection fails, or the
//! server has closed it, the batch is answered with `Retry` and the next
//! attempt connects again; the engine waits and retries with backoff.
//!
//! Plain TCP has no acknowledgements: bytes the kernel accepted just before
//! the server died can be lost, and a batch cut off mid-write is sent again
//! whole (the server may see the start of it twice). Before each write the
//! output checks whether the server closed the connection, which catches the
//! common case (a server restart) without loss. Use `forward` with acks when
//! every event must be confirmed.
//!
//! ```text
//! match "app.**" tcp { address = "logs.internal:5170"  format = "json"  tag_key = "tag" }
//! ```

use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Delivery, Event, ItemFailure, Output, ParamKind,
    ParamSpec, Params, PluginError, PluginKind, PluginSpec, Record, Registry,
};

/// The default `connect_timeout`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The default `write_timeout`.
pub const DEFAULT_WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// How records are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One JSON object per line.
    Json,
    /// One msgpack map per record, back to back.
    Msgpack,
    /// The value of `message_key`, then a newline.
    Raw,
}

/// How `time_key` values are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeFormat {
    /// Seconds since the epoch with the fraction (`1700000000.123456789`),
    /// as fluentd writes it.
    Float,
    /// Whole seconds.
    Unix,
    /// Whole milliseconds.
    UnixMs,
    /// RFC 3339 text in UTC with nanoseconds (`2023-11-14T22:13:20.123456789Z`).
    Iso8601,
}

/// The `tcp` output's declaration.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Output,
        "tcp",
        "Writes events to a TCP (optionally TLS) server: JSON lines, a msgpack stream, or one field as a raw text line. The connection is kept open; on failure the batch is retried on a new connection.",
    )
    .param(ParamSpec::with_default(
        "host",
        ParamKind::Str,
        "127.0.0.1",
        "Server host name or IP address (with `port`).",
    ))
    .param(ParamSpec::optional(
        "port",
        ParamKind::Int,
        "Server port. Either `port` (with `host`) or `address` must be given.",
    ))
    .param(ParamSpec::optional(
        "address",
        ParamKind::Str,
        "Server as \"host:port\" (\"[::1]:5170\" for IPv6), instead of `host` and `port`.",
    ))
    .param(ParamSpec::with_default(
        "format",
        ParamKind::OneOf(&["json", "msgpack", "raw"]),
        "json",
        "`json`: one JSON object per line (records that arrived as JSON are written byte for byte). `msgpack`: one msgpack map per record, back to back. `raw`: the value of `message_key` followed by a newline (strings as they are, other values as JSON).",
    ))
    .param(ParamSpec::optional(
        "tag_key",
        ParamKind::Str,
        "With `json` and `msgpack`: add the event's tag under this field.",
    ))
    .param(ParamSpec::optional(
        "time_key",
        ParamKind::Str,
        "With `json` and `msgpack`: add the event's time under this field (see `time_format`).",
    ))
    .param(ParamSpec::with_default(
        "time_format",
        ParamKind::OneOf(&["float", "unix", "unix_ms", "iso8601"]),
        "float",
        "How `time_key` is written: `float` seconds with fraction, `unix` whole seconds, `unix_ms` milliseconds, `iso8601` RFC 3339 text in UTC.",
    ))
    .param(ParamSpec::with_default(
        "message_key",
        ParamKind::Str,
        "message",
        "With `raw`: the field whose value is written. A record without it is rejected (to the `errors` label) and the others are written.",
    ))
    .param(ParamSpec::with_default(
        "connect_timeout",
        ParamKind::Duration,
        DEFAULT_CONNECT_TIMEOUT,
        "Longest wait for a connection (and the TLS handshake); then the batch is retried.",
    ))
    .param(ParamSpec::with_default(
        "write_timeout",
        ParamKind::Duration,
        DEFAULT_WRITE_TIMEOUT,
        "Longest wait for one batch to be written; then the connection is dropped and the batch retried.",
    ))
    .param(ParamSpec::with_default(
        "tls",
        ParamKind::Bool,
        false,
        "Speak TLS to the server.",
    ))
    .param(ParamSpec::optional(
        "tls_ca_path",
        ParamKind::Str,
        "PEM file of the CAs to trust for the server certificate; unset: the system bundle (/etc/ssl/certs/ca-certificates.crt and the like).",
    ))
    .param(ParamSpec::with_default(
        "tls_verify",
        ParamKind::Bool,
        true,
        "Check the server certificate against the trusted CAs and `tls_server_name`. `false` encrypts without authenticating the server (testing only).",
    ))
    .param(ParamSpec::optional(
        "tls_server_name",
        ParamKind::Str,
        "Name the server certificate must carry; unset: the host.",
    ))
}

/// Registers `output tcp`.
pub fn register(registry: &mut Registry) {
    registry.add_output(spec(), |params, ctx| {
        Ok(Box::new(TcpOutput::from_params(params, ctx)?) as Box<dyn Output>)
    });
}

struct TlsSettings {
    ca_path: Option<PathBuf>,
    verify: bool,
    server_name: rustls::pki_types::ServerName<'static>,
    /// Built on first connect (reading the CA file is I/O).
    connector: Option<TlsConnector>,
}

/// A built `tcp` output; connects on its first batch.
pub struct TcpOutput {
    id: String,
    address: String,
    format: Format,
    tag_key: Option<String>,
    time_key: Option<String>,
    time_format: TimeFormat,
    message_key: String,
    connect_timeout: Duration,
    write_timeout: Duration,
    tls: Option<TlsSettings>,
    conn: Option<ClientStream>,
    buf: Vec<u8>,
}

/// Splits "host:port" (with "[v6]:port") and checks the port.
fn split_address(address: &str) -> Option<(String, u16)> {
    let (host, port) = address.rsplit_once(':')?;
    let port: u16 = port.parse().ok()?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || port == 0 {
        return None;
    }
    Some((host.to_string(), port))
}

impl TcpOutput {
    /// Builds the output from validated parameters (no I/O).
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        let (host, port) = match (params.opt_str("address")?, params.opt_int("port")?) {
            (Some(_), Some(_)) => {
                return Err(BuildError::param(
                    "address",
                    "give either `address` or `host` and `port`, not both",
                ))
            }
            (None, None) => {
                return Err(BuildError::new(
                    "`tcp` needs the server: `address = \"host:port\"`, or `port` (and `host`)",
                ))
            }
            (Some(a), None) => split_address(a).ok_or_else(|| {
                BuildError::param(
                    "address",
                    format!("{a:?} is not \"host:port\" with a port from 1 to 65535"),
                )
            })?,
            (None, Some(p)) => {
                let port = u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| {
                    BuildError::param("port", format!("{p} is not a port (1 to 65535)"))
                })?;
                (params.str("host")?.to_string(), port)
            }
        };
        let address = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let format = match params.str("format")? {
            "msgpack" => Format::Msgpack,
            "raw" => Format::Raw,
            _ => Format::Json,
        };
        let time_format = match params.str("time_format")? {
            "unix" => TimeFormat::Unix,
            "unix_ms" => TimeFormat::UnixMs,
            "iso8601" => TimeFormat::Iso8601,
            _ => TimeFormat::Float,
        };
        let tls = if params.bool("tls")? {
            let name = params.opt_str("tls_server_name")?.unwrap_or(&host);
            let server_name =
                ulog_tls::server_name(name).map_err(|e| BuildError::param("tls_server_name", e))?;
            Some(TlsSettings {
                ca_path: params.opt_str("tls_ca_path")?.map(|p| ctx.resolve(p)),
                verify: params.bool("tls_verify")?,
                server_name,
                connector: None,
            })
        } else {
            for p in ["tls_ca_path", "tls_server_name"] {
                if params.opt_str(p)?.is_some() {
                    return Err(BuildError::param(p, "only used with `tls = true`"));
                }
            }
            None
        };
        Ok(Self {
            id: ctx.id.clone(),
            address,
            format,
            tag_key: params.opt_str("tag_key")?.map(str::to_string),
            time_key: params.opt_str("time_key")?.map(str::to_string),
            time_format,
            message_key: params.str("message_key")?.to_string(),
            connect_timeout: params.duration("connect_timeout")?,
            write_timeout: params.duration("write_timeout")?,
            tls,
            conn: None,
            buf: Vec::new(),
        })
    }

    /// Encodes `batch` into `self.buf`; returns the events that cannot be
    /// written in this format.
    fn encode(&mut self, batch: &Batch) -> Vec<ItemFailure> {
        let mut failures = Vec::new();
        let buf = &mut self.buf;
        buf.clear();
        let tag_value = Value::String(batch.tag.to_string());
        match self.format {
            Format::Json => {
                for e in &batch.events {
                    let time_value = self
                        .time_key
                        .as_ref()
                        .map(|_| time_value(e, self.time_format));
                    let mut extra: Vec<(&str, &Value)> = Vec::new();
                    if let Some(k) = &self.tag_key {
                        extra.push((k, &tag_value));
                    }
                    if let (Some(k), Some(v)) = (&self.time_key, &time_value) {
                        extra.push((k, v));
                    }
                    e.record.write_json_with(buf, &extra);
                    buf.push(b'\n');
                }
            }
            Format::Msgpack => {
                for e in &batch.events {
                    let map = e.record.to_map();
                    let extra =
                        usize::from(self.tag_key.is_some()) + usize::from(self.time_key.is_some());
                    let mut len = map.len() + extra;
                    // An extra field that the record already has replaces it.
                    for k in self.tag_key.iter().chain(self.time_key.iter()) {
                        if map.contains_key(k) {
                            len -= 1;
                        }
                    }
                    let _ = rmp::encode::write_map_len(buf, len as u32);
                    for (k, v) in map.iter() {
                        if Some(k) == self.tag_key.as_ref() || Some(k) == self.time_key.as_ref() {
                            continue;
                        }
                        let _ = rmp::encode::write_str(buf, k);
                        ulog_parsers::msgpack::write_json(buf, v);
                    }
                    if let Some(k) = &self.tag_key {
                        let _ = rmp::encode::write_str(buf, k);
                        let _ = rmp::encode::write_str(buf, &batch.tag);
                    }
                    if let Some(k) = &self.time_key {
                        let _ = rmp::encode::write_str(buf, k);
                        ulog_parsers::msgpack::write_json(buf, &time_value(e, self.time_format));
                    }
                }
            }
            Format::Raw => {
                for (index, e) in batch.events.iter().enumerate() {
                    match field(&e.record, &self.message_key) {
                        Some(Value::String(s)) => buf.extend_from_slice(s.as_bytes()),
                        Some(other) => {
                            let _ = serde_json::to_writer(&mut *buf, &other);
                        }
                        None => {
                            failures.push(ItemFailure {
                                index,
                                error: PluginError::new(format!(
                                    "record has no `{}` field to write as a raw line",
                                    self.message_key
                                )),
                                retryable: false,
                            });
                            continue;
                        }
                    }
                    buf.push(b'\n');
                }
            }
        }
        failures
    }

    async fn connect(&mut self) -> Result<ClientStream, PluginError> {
        let connect = TcpStream::connect(&self.address);
        let tcp = tokio::time::timeout(self.connect_timeout, connect)
            .await
            .map_err(|_| {
                PluginError::new(format!(
                    "connecting to {} timed out after {:?}",
                    self.address, self.connect_timeout
                ))
            })?
            .map_err(|e| PluginError::with_source(format!("connecting to {}", self.address), e))?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &mut self.tls else {
            info!(output = %self.id, address = %self.address, "connected");
            return Ok(ClientStream::Plain(tcp));
        };
        let connector = match &tls.connector {
            Some(c) => c.clone(),
            None => {
                let config = ulog_tls::client_config(
                    tls.ca_path.as_deref(),
                    if tls.verify {
                        ulog_tls::Verify::Full
                    } else {
                        ulog_tls::Verify::Insecure
                    },
                )
                .map_err(|e| PluginError::with_source("setting up TLS", e))?;
                if !tls.verify {
                    warn!(output = %self.id, "tls_verify = false: the server certificate is not checked");
                }
                let c = TlsConnector::from(config);
                tls.connector = Some(c.clone());
                c
            }
        };
        let hs = connector.connect(tls.server_name.clone(), tcp);
        let stream = tokio::time::timeout(self.connect_timeout, hs)
            .await
            .map_err(|_| {
                PluginError::new(format!("TLS handshake with {} timed out", self.address))
            })?
            .map_err(|e| {
                PluginError::with_source(format!("TLS handshake with {}", self.address), e)
            })?;
        info!(output = %self.id, address = %self.address, "connected (TLS)");
        Ok(ClientStream::Tls(Box::new(stream)))
    }
}

/// The time of `e` as `time_key` wants it.
fn time_value(e: &Event, f: TimeFormat) -> Value {
    match f {
        // An f64 holds today's times to about a quarter of a microsecond.
        TimeFormat::Float => {
            Value::from(e.time.secs() as f64 + f64::from(e.time.subsec_nanos()) / 1e9)
        }
        TimeFormat::Unix => Value::from(e.time.secs()),
        TimeFormat::UnixMs => Value::from(e.time.unix_nanos().div_euclid(1_000_000)),
        TimeFormat::Iso8601 => {
            let t = chrono::DateTime::from_timestamp(e.time.secs(), e.time.subsec_nanos())
                .unwrap_or_default();
            Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        }
    }
}

/// One field of a record; for raw records only that field is decoded, the
/// others are skipped without building them.
fn field(record: &Record, key: &str) -> Option<Value> {
    match record {
        Record::Map(m) => m.get(key).cloned(),
        Record::Raw(bytes) => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            serde::de::DeserializeSeed::deserialize(FieldSeed(key), &mut de)
                .ok()
                .flatten()
        }
    }
}

struct FieldSeed<'k>(&'k str);

impl<'de> serde::de::DeserializeSeed<'de> for FieldSeed<'_> {
    type Value = Option<Value>;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> serde::de::Visitor<'de> for FieldSeed<'_> {
    type Value = Option<Value>;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = None;
        while let Some(is_key) = map.next_key_seed(KeyIs(self.0))? {
            if is_key {
                // The last occurrence wins, as when the record is parsed.
                found = Some(map.next_value::<Value>()?);
            } else {
                map.next_value::<serde::de::IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// Compares a map key with the wanted one without allocating.
struct KeyIs<'k>(&'k str);

impl<'de> serde::de::DeserializeSeed<'de> for KeyIs<'_> {
    type Value = bool;
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<bool, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> serde::de::Visitor<'de> for KeyIs<'_> {
    type Value = bool;
    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a string key")
    }
    fn visit_str<E>(self, v: &str) -> Result<bool, E> {
        Ok(v == self.0)
    }
}

#[async_trait]
impl Output for TcpOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        let failures = self.encode(batch);
        if self.buf.is_empty() {
            return if failures.is_empty() {
                Delivery::Delivered
            } else {
                Delivery::Partial(failures)
            };
        }
        if let Some(conn) = &mut self.conn {
            if let Some(why) = conn.closed_by_peer() {
                info!(output = %self.id, address = %self.address, "{why}; reconnecting");
                self.conn = None;
            }
        }
        let mut conn = match self.conn.take() {
            Some(c) => c,
            None => match self.connect().await {
                Ok(c) => c,
                Err(e) => return Delivery::Retry(e),
            },
        };
        let write = async {
            conn.write_all(&self.buf).await?;
            conn.flush().await
        };
        match tokio::time::timeout(self.write_timeout, write).await {
            Ok(Ok(())) => {
                self.conn = Some(conn);
                if failures.is_empty() {
                    Delivery::Delivered
                } else {
                    Delivery::Partial(failures)
                }
            }
            Ok(Err(e)) => Delivery::Retry(PluginError::with_source(
                format!("writing {} bytes to {}", self.buf.len(), self.address),
                e,
            )),
            Err(_) => Delivery::Retry(PluginError::new(format!(
                "writing {} bytes to {} took longer than {:?}",
                self.buf.len(),
                self.address,
                self.write_timeout
            ))),
        }
    }

    async fn shutdown(&mut self) -> Result<(), PluginError> {
        if let Some(mut conn) = self.conn.take() {
            // Close cleanly (a TLS close_notify, then FIN) so the server
            // sees the end of the stream rather than a reset.
            if let Err(e) = tokio::time::timeout(self.write_timeout, conn.shutdown())
                .await
                .unwrap_or(Ok(()))
            {
                debug!(output = %self.id, error = %e, "closing the connection");
            }
        }
        Ok(())
    }
}

/// A client connection, plain or TLS.
enum ClientStream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// A waker that does nothing: used to look at a socket without waiting.
struct NoopWake;

impl Wake for NoopWake {
    fn wake(self: Arc<Self>) {}
}

impl ClientStream {
    /// Looks, without waiting, whether the server closed the connection (or
    /// it failed) since the last write; says why when it did. Anything the
    /// server sent is read and dropped (a log server has nothing to say; TLS
    /// session tickets are handled by the TLS layer).
    fn closed_by_peer(&mut self) -> Option<String> {
        let waker = Waker::from(Arc::new(NoopWake));
        let mut cx = Context::from_waker(&waker);
        let mut scratch = [0u8; 1024];
        loop {
            let mut rb = ReadBuf::new(&mut scratch);
            match Pin::new(&mut *self).poll_read(&mut cx, &mut rb) {
                Poll::Pending => return None,
                Poll::Ready(Ok(())) if rb.filled().is_empty() => {
                    return Some("the server closed the connection".into())
                }
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Some(format!("the connection failed ({e})")),
            }
        }
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use serde_json::json;
    use ulog_engine::{EventTime, Tag};

    fn output(given: &[(&str, ulog_engine::Value)]) -> Result<TcpOutput, BuildError> {
        let params = spec()
            .validate(
                &given
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| BuildError::new(format!("{e:?}")))?;
        TcpOutput::from_params(
            &params,
            &BuildContext {
                id: "t".into(),
                base_dir: ".".into(),
            },
        )
    }

    fn batch() -> Batch {
        let t = EventTime::from_secs_nanos(1_700_000_000, 5);
        let raw = Record::from_json_bytes(Bytes::from_static(b"{\"message\":\"a b\",\"n\" : 1}"))
            .unwrap();
        let mut map = Record::new();
        map.insert("message", json!(42));
        let none = Record::from_json_bytes(Bytes::from_static(b"{\"x\":1}")).unwrap();
        Batch::new(
            Tag::new_unchecked("app.web"),
            vec![Event::new(t, raw), Event::new(t, map), Event::new(t, none)],
        )
    }

    #[test]
    fn addresses_are_checked() {
        assert!(output(&[]).is_err());
        assert!(output(&[("port", 0i64.into())]).is_err());
        assert!(output(&[("port", 70000i64.into())]).is_err());
        assert!(output(&[("address", "nohost".into())]).is_err());
        assert!(output(&[("address", "h:1".into()), ("port", 1i64.into())]).is_err());
        assert_eq!(
            output(&[("address", "[::1]:99".into())]).unwrap().address,
            "[::1]:99"
        );
        assert_eq!(
            output(&[("port", 99i64.into()), ("host", "::1".into())])
                .unwrap()
                .address,
            "[::1]:99"
        );
        assert!(output(&[("port", 1i64.into()), ("tls_ca_path", "x".into())]).is_err());
    }

    #[test]
    fn json_keeps_raw_bytes_and_adds_tag_and_time() {
        let mut o = output(&[
            ("port", 1i64.into()),
            ("tag_key", "tag".into()),
            ("time_key", "t".into()),
        ])
        .unwrap();
        assert!(o.encode(&batch()).is_empty());
        let text = String::from_utf8(o.buf.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"message":"a b","n" : 1,"tag":"app.web","t":1700000000.0}"#
        );
        assert_eq!(
            lines[1],
            r#"{"message":42,"tag":"app.web","t":1700000000.0}"#
        );
        assert_eq!(lines.len(), 3);
        let mut plain = output(&[("port", 1i64.into())]).unwrap();
        plain.encode(&batch());
        assert!(plain.buf.starts_with(b"{\"message\":\"a b\",\"n\" : 1}\n"));
    }

    #[test]
    fn time_formats() {
        let e = Event::new(
            EventTime::from_secs_nanos(1_700_000_000, 123_000_000),
            Record::new(),
        );
        assert_eq!(time_value(&e, TimeFormat::Unix), json!(1_700_000_000));
        assert_eq!(
            time_value(&e, TimeFormat::UnixMs),
            json!(1_700_000_000_123i64)
        );
        assert_eq!(
            time_value(&e, TimeFormat::Iso8601),
            json!("2023-11-14T22:13:20.123Z")
        );
        assert_eq!(
            time_value(&e, TimeFormat::Float).as_f64(),
            Some(1_700_000_000.123)
        );
    }

    #[test]
    fn msgpack_maps_with_extra_fields() {
        let mut o = output(&[
            ("port", 1i64.into()),
            ("format", "msgpack".into()),
            ("tag_key", "n".into()),
        ])
        .unwrap();
        o.encode(&batch());
        let mut rd = &o.buf[..];
        let first = ulog_parsers::msgpack::to_json(rmpv::decode::read_value(&mut rd).unwrap());
        // `n` is replaced by the tag, not written twice.
        assert_eq!(first, json!({"message": "a b", "n": "app.web"}));
        let second = ulog_parsers::msgpack::to_json(rmpv::decode::read_value(&mut rd).unwrap());
        assert_eq!(second, json!({"message": 42, "n": "app.web"}));
        rmpv::decode::read_value(&mut rd).unwrap();
        assert!(rd.is_empty());
    }

    #[test]
    fn raw_writes_the_message_and_rejects_records_without_it() {
        let mut o = output(&[("port", 1i64.into()), ("format", "raw".into())]).unwrap();
        let failures = o.encode(&batch());
        assert_eq!(o.buf, b"a b\n42\n");
        assert_eq!(failures.len(), 1);
        assert_eq!(failures[0].index, 2);
        assert!(!failures[0].retryable);
    }

    #[test]
    fn field_extraction_skips_other_values() {
        let r = Record::Raw(Bytes::from_static(
            br#"{"a":{"message":"no"},"message":"ye\"s","z":[1,{"q":2}]}"#,
        ));
        assert_eq!(field(&r, "message"), Some(json!("ye\"s")));
        assert_eq!(field(&r, "nope"), None);
        let escaped = Record::Raw(Bytes::from_static(br#"{"mess\u0061ge":"esc"}"#));
        assert_eq!(field(&escaped, "message"), Some(json!("esc")));
    }
}
