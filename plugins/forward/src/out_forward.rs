//! `output forward`: sends batches to fluentd-compatible forward servers.
//!
//! Each batch becomes one PackedForward frame (several when it is larger than
//! `max_frame_size`), optionally gzip-compressed, sent to one server chosen
//! by weight among the healthy primaries (standby servers only when no
//! primary is healthy). A server that fails (connection, TLS, handshake,
//! write, or a missing ack) is skipped for `recover_wait` and the frame goes
//! to the next server; when none can take it the engine retries the batch
//! with backoff. With `require_ack_response` a frame counts as delivered only
//! once the server acknowledged its chunk id; a timed-out frame is sent again
//! (possibly duplicated, as with fluentd).

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;
use tracing::{debug, info, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Delivery, ItemFailure, Output, ParamKind,
    ParamSpec, Params, PluginError, PluginKind, PluginSpec, Value,
};
use ulog_tls::Verify;

use crate::codec::{decode_ack, Compression, EncodeMode, Encoder, DEFAULT_PORT};
use crate::handshake::{self, ClientAuth, HandshakeError};
use crate::{system_hostname, Stream};

/// fluentd's default server weight.
const DEFAULT_WEIGHT: i64 = 60;
/// The CA bundle trusted when `tls_ca_path` is unset (Debian, Ubuntu, Alpine,
/// Arch); this output documents this one path as its default rather than
/// searching [`ulog_tls::SYSTEM_CA_BUNDLES`].
const SYSTEM_CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";
/// Largest ack message read.
const MAX_ACK: usize = 64 * 1024;

pub(crate) fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Output,
        "forward",
        "Sends events to fluentd, Fluent Bit, or another ulog over fluentd's Forward protocol v1 \
         (PackedForward frames with nanosecond EventTime, optionally gzip-compressed, over TCP or \
         TLS). Balances by weight across healthy servers, fails over to standby servers, supports \
         the shared-key/user handshake and at-least-once delivery with `require_ack_response`.",
    )
    .param(ParamSpec::required(
        "servers",
        ParamKind::List(Box::new(ParamKind::Map)),
        "Destinations: a list of { host = \"..\", port = 24224, weight = 60, standby = false, \
         name = \"..\" } (only host is required).",
    ))
    .param(ParamSpec::with_default(
        "require_ack_response",
        ParamKind::Bool,
        false,
        "Send a chunk id with each frame and count it delivered only when the server \
         acknowledges it (at-least-once); otherwise a frame counts as delivered once written.",
    ))
    .param(ParamSpec::with_default(
        "ack_response_timeout",
        ParamKind::Duration,
        Duration::from_secs(30),
        "How long to wait for an ack before the server is marked down and the batch retried.",
    ))
    .param(ParamSpec::with_default(
        "keepalive",
        ParamKind::Bool,
        true,
        "Reuse one connection per server; false connects for every frame.",
    ))
    .param(ParamSpec::with_default(
        "connect_timeout",
        ParamKind::Duration,
        Duration::from_secs(10),
        "Longest time for connecting, TLS and the handshake.",
    ))
    .param(ParamSpec::with_default(
        "send_timeout",
        ParamKind::Duration,
        Duration::from_secs(60),
        "Longest time for writing one frame.",
    ))
    .param(ParamSpec::with_default(
        "recover_wait",
        ParamKind::Duration,
        Duration::from_secs(10),
        "How long a failed server is left out before it is tried again.",
    ))
    .param(ParamSpec::with_default(
        "compress",
        ParamKind::OneOf(&["text", "gzip"]),
        "text",
        "gzip sends CompressedPackedForward frames (fluentd ≥ 0.14.7, Fluent Bit, ulog).",
    ))
    .param(ParamSpec::with_default(
        "time_as_integer",
        ParamKind::Bool,
        false,
        "Send times as integer seconds (for fluentd 0.12 and older) instead of EventTime.",
    ))
    .param(ParamSpec::with_default(
        "max_frame_size",
        ParamKind::Size,
        Value::Size(4 << 20),
        "Batches whose entries encode larger than this are split into several frames, to stay \
         under receivers' chunk limits (fluentd's and ulog's default to 8MiB).",
    ))
    .param(ParamSpec::with_default(
        "tls",
        ParamKind::Bool,
        false,
        "Connect with TLS.",
    ))
    .param(ParamSpec::optional(
        "tls_ca_path",
        ParamKind::Str,
        "PEM file of the CAs to trust (default: the system bundle /etc/ssl/certs/ca-certificates.crt).",
    ))
    .param(ParamSpec::with_default(
        "tls_verify_hostname",
        ParamKind::Bool,
        true,
        "Check that the certificate names the server (`tls_server_name`, else the host).",
    ))
    .param(ParamSpec::with_default(
        "tls_insecure",
        ParamKind::Bool,
        false,
        "Accept any server certificate: encrypted but unauthenticated. For tests only.",
    ))
    .param(ParamSpec::optional(
        "tls_server_name",
        ParamKind::Str,
        "The name to verify the server certificate against (and send as SNI), instead of host.",
    ))
    .param(ParamSpec::optional(
        "shared_key",
        ParamKind::Str,
        "Answer the server's HELO with this shared key (the server must have the same).",
    ))
    .param(ParamSpec::optional(
        "self_hostname",
        ParamKind::Str,
        "The name this client gives in the handshake (default: the machine's host name); must \
         differ from the server's.",
    ))
    .param(ParamSpec::with_default(
        "username",
        ParamKind::Str,
        "",
        "Username for servers with user_auth.",
    ))
    .param(ParamSpec::with_default(
        "password",
        ParamKind::Str,
        "",
        "Password for servers with user_auth.",
    ))
}

#[derive(Debug, Clone)]
struct ServerConfig {
    host: String,
    port: u16,
    weight: u32,
    standby: bool,
    name: String,
}

fn servers(params: &Params) -> Result<Vec<ServerConfig>, BuildError> {
    let list = params.list("servers")?;
    if list.is_empty() {
        return Err(BuildError::param("servers", "give at least one server"));
    }
    let mut out = Vec::new();
    for (i, item) in list.iter().enumerate() {
        let n = i + 1;
        let Value::Map(entries) = item else {
            return Err(BuildError::param(
                "servers",
                format!("server {n} must be a map"),
            ));
        };
        let mut host = None;
        let mut port = i64::from(DEFAULT_PORT);
        let mut weight = DEFAULT_WEIGHT;
        let mut standby = false;
        let mut name = None;
        for (k, v) in entries {
            match (k.as_str(), v) {
                ("host", Value::Str(s)) => host = Some(s.clone()),
                ("port", Value::Int(p)) => port = *p,
                ("weight", Value::Int(w)) => weight = *w,
                ("standby", Value::Bool(b)) => standby = *b,
                ("name", Value::Str(s)) => name = Some(s.clone()),
                ("host" | "name", v) => {
                    return Err(BuildError::param(
                        "servers",
                        format!(
                            "server {n}: `{k}` must be a string, found {}",
                            v.type_name()
                        ),
                    ))
                }
                ("port" | "weight", v) => {
                    return Err(BuildError::param(
                        "servers",
                        format!(
                            "server {n}: `{k}` must be an integer, found {}",
                            v.type_name()
                        ),
                    ))
                }
                ("standby", v) => {
                    return Err(BuildError::param(
                        "servers",
                        format!(
                            "server {n}: `standby` must be a boolean, found {}",
                            v.type_name()
                        ),
                    ))
                }
                (k, _) => {
                    let hint = ulog_engine::suggest::closest(
                        k,
                        ["host", "port", "weight", "standby", "name"],
                    )
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
                    return Err(BuildError::param(
                        "servers",
                        format!("server {n}: unknown field `{k}`{hint} (known: host, port, weight, standby, name)"),
                    ));
                }
            }
        }
        let Some(host) = host.filter(|h| !h.is_empty()) else {
            return Err(BuildError::param(
                "servers",
                format!("server {n} needs a `host`"),
            ));
        };
        let port = u16::try_from(port).ok().filter(|p| *p > 0).ok_or_else(|| {
            BuildError::param(
                "servers",
                format!("server {n}: port {port} is not in 1..65535"),
            )
        })?;
        let weight = u32::try_from(weight).map_err(|_| {
            BuildError::param(
                "servers",
                format!("server {n}: weight {weight} must not be negative"),
            )
        })?;
        let name = name.unwrap_or_else(|| format!("{host}:{port}"));
        out.push(ServerConfig {
            host,
            port,
            weight,
            standby,
            name,
        });
    }
    Ok(out)
}

#[derive(Debug, Clone)]
struct TlsSettings {
    ca_path: Option<PathBuf>,
    verify: Verify,
    server_name: Option<String>,
}

#[derive(Debug, Clone)]
struct AuthSettings {
    shared_key: String,
    self_hostname: Option<String>,
    username: String,
    password: String,
}

#[derive(Debug, Clone)]
struct Config {
    require_ack: bool,
    ack_timeout: Duration,
    keepalive: bool,
    connect_timeout: Duration,
    send_timeout: Duration,
    recover_wait: Duration,
    compression: Compression,
    time_as_integer: bool,
    max_frame_size: usize,
    tls: Option<TlsSettings>,
    auth: Option<AuthSettings>,
}

fn config(params: &Params, ctx: &BuildContext) -> Result<Config, BuildError> {
    let tls_on = params.bool("tls")?;
    let ca_path = params.opt_str("tls_ca_path")?.map(|p| ctx.resolve(p));
    let server_name = params.opt_str("tls_server_name")?.map(str::to_string);
    let verify = if params.bool("tls_insecure")? {
        Verify::Insecure
    } else if params.bool("tls_verify_hostname")? {
        Verify::Full
    } else {
        Verify::ChainOnly
    };
    if !tls_on && (ca_path.is_some() || server_name.is_some() || verify != Verify::Full) {
        return Err(BuildError::param(
            "tls",
            "TLS options are set but `tls` is false; set tls = true",
        ));
    }
    if let Some(name) = &server_name {
        ulog_tls::server_name(name).map_err(|e| BuildError::param("tls_server_name", e))?;
    }
    let username = params.str("username")?.to_string();
    let password = params.str("password")?.to_string();
    let auth = match params.opt_str("shared_key")? {
        Some("") => return Err(BuildError::param("shared_key", "must not be empty")),
        Some(key) => Some(AuthSettings {
            shared_key: key.to_string(),
            self_hostname: params.opt_str("self_hostname")?.map(str::to_string),
            username,
            password,
        }),
        None => {
            if !username.is_empty() || !password.is_empty() {
                return Err(BuildError::param(
                    "shared_key",
                    "username and password are part of the handshake, which needs a shared_key",
                ));
            }
            None
        }
    };
    let max_frame_size = params.size("max_frame_size")?;
    if max_frame_size < 1024 {
        return Err(BuildError::param("max_frame_size", "must be at least 1KiB"));
    }
    let ack_timeout = params.duration("ack_response_timeout")?;
    if ack_timeout.is_zero() {
        return Err(BuildError::param(
            "ack_response_timeout",
            "must be more than 0s",
        ));
    }
    Ok(Config {
        require_ack: params.bool("require_ack_response")?,
        ack_timeout,
        keepalive: params.bool("keepalive")?,
        connect_timeout: params
            .duration("connect_timeout")?
            .max(Duration::from_millis(1)),
        send_timeout: params
            .duration("send_timeout")?
            .max(Duration::from_millis(1)),
        recover_wait: params.duration("recover_wait")?,
        compression: match params.str("compress")? {
            "gzip" => Compression::Gzip,
            _ => Compression::Text,
        },
        time_as_integer: params.bool("time_as_integer")?,
        max_frame_size: usize::try_from(max_frame_size).unwrap_or(usize::MAX),
        tls: tls_on.then_some(TlsSettings {
            ca_path,
            verify,
            server_name,
        }),
        auth,
    })
}

pub(crate) fn build(params: &Params, ctx: &BuildContext) -> Result<Box<dyn Output>, BuildError> {
    let config = config(params, ctx)?;
    let nodes = servers(params)?
        .into_iter()
        .map(|cfg| Node {
            cfg,
            down_until: None,
            conn: None,
            current: 0,
        })
        .collect();
    let encoder = Encoder::new(EncodeMode::PackedForward, config.compression)
        .time_as_integer(config.time_as_integer);
    Ok(Box::new(ForwardOutput {
        id: ctx.id.clone(),
        config,
        nodes,
        encoder,
        frame: Vec::new(),
        connector: None,
        auth: None,
        ack_buf: BytesMut::new(),
    }))
}

struct Node {
    cfg: ServerConfig,
    /// Left out of the rotation until then, after a failure.
    down_until: Option<Instant>,
    conn: Option<Box<dyn Stream>>,
    /// Smooth weighted round-robin state.
    current: i64,
}

struct ForwardOutput {
    id: String,
    config: Config,
    nodes: Vec<Node>,
    encoder: Encoder,
    frame: Vec<u8>,
    /// Built on first use (reads the CA file).
    connector: Option<TlsConnector>,
    /// Resolved on first use (reads the host name).
    auth: Option<ClientAuth>,
    ack_buf: BytesMut,
}

/// Why one attempt to send a frame to one server failed.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("{0}")]
    Connect(String),
    #[error("handshake: {0}")]
    Handshake(#[from] HandshakeError),
    #[error("writing: {0}")]
    Write(std::io::Error),
    #[error("writing timed out after {0:?}")]
    WriteTimeout(Duration),
    #[error("no ack within {0:?}")]
    AckTimeout(Duration),
    #[error("waiting for the ack: {0}")]
    Ack(String),
}

impl SendError {
    /// Whether a kept-alive connection may simply have gone stale, so one
    /// more try on a fresh connection is worth it.
    fn maybe_stale(&self) -> bool {
        matches!(self, SendError::Write(_) | SendError::Ack(_))
    }
}

impl ForwardOutput {
    fn ensure_ready(&mut self) -> Result<(), String> {
        if let (Some(tls), None) = (&self.config.tls, &self.connector) {
            let cfg = ulog_tls::client_config(
                Some(
                    tls.ca_path
                        .as_deref()
                        .unwrap_or(Path::new(SYSTEM_CA_BUNDLE)),
                ),
                tls.verify,
            )
            .map_err(|e| format!("TLS setup: {e}"))?;
            self.connector = Some(TlsConnector::from(cfg));
        }
        if let (Some(a), None) = (&self.config.auth, &self.auth) {
            self.auth = Some(ClientAuth {
                self_hostname: a.self_hostname.clone().unwrap_or_else(system_hostname),
                shared_key: a.shared_key.clone(),
                username: a.username.clone(),
                password: a.password.clone(),
            });
        }
        Ok(())
    }

    /// The next server to try: weighted among usable primaries, else among
    /// usable standbys (and weight-0 servers).
    fn pick(&mut self, tried: &[bool]) -> Option<usize> {
        let now = Instant::now();
        let usable = |i: usize, n: &Node| !tried[i] && !matches!(n.down_until, Some(t) if t > now);
        let primaries: Vec<usize> = (0..self.nodes.len())
            .filter(|&i| {
                let n = &self.nodes[i];
                usable(i, n) && !n.cfg.standby && n.cfg.weight > 0
            })
            .collect();
        let pool = if primaries.is_empty() {
            (0..self.nodes.len())
                .filter(|&i| usable(i, &self.nodes[i]))
                .collect()
        } else {
            primaries
        };
        let weight = |n: &Node| i64::from(n.cfg.weight.max(1));
        let total: i64 = pool.iter().map(|&i| weight(&self.nodes[i])).sum();
        let mut best: Option<usize> = None;
        for &i in &pool {
            let w = weight(&self.nodes[i]);
            self.nodes[i].current += w;
            if !matches!(best, Some(b) if self.nodes[i].current <= self.nodes[b].current) {
                best = Some(i);
            }
        }
        let b = best?;
        self.nodes[b].current -= total;
        Some(b)
    }

    /// Sends `self.frame` to one server after another until one takes it.
    async fn send_frame(&mut self, chunk: Option<&str>) -> Result<(), String> {
        let mut tried = vec![false; self.nodes.len()];
        let mut errors = Vec::new();
        loop {
            let next = match self.pick(&tried) {
                Some(i) => Some(i),
                // Every server failed recently. The engine paces its retries
                // with backoff, so probe the one that failed longest ago
                // rather than wait out recover_wait.
                None if errors.is_empty() => self.soonest_back(&tried),
                None => None,
            };
            let Some(i) = next else { break };
            tried[i] = true;
            match self.send_to(i, chunk).await {
                Ok(()) => {
                    let node = &mut self.nodes[i];
                    if node.down_until.take().is_some() {
                        info!(output = %self.id, server = %node.cfg.name, "forward server is reachable again");
                    }
                    return Ok(());
                }
                Err(e) => {
                    let node = &mut self.nodes[i];
                    node.conn = None;
                    node.down_until = Some(Instant::now() + self.config.recover_wait);
                    warn!(
                        output = %self.id, server = %node.cfg.name, error = %e,
                        recover_wait = ?self.config.recover_wait,
                        "forward server failed; leaving it out for a while and trying the next one"
                    );
                    errors.push(format!("{}: {e}", node.cfg.name));
                }
            }
        }
        Err(errors.join("; "))
    }

    /// The untried server whose failure is oldest.
    fn soonest_back(&self, tried: &[bool]) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|&i| !tried[i])
            .min_by_key(|&i| self.nodes[i].down_until)
    }

    async fn send_to(&mut self, i: usize, chunk: Option<&str>) -> Result<(), SendError> {
        let reused = match self.nodes[i].conn.take() {
            Some(mut c) if self.config.keepalive => match idle_state(&mut c).await {
                Idle::Open => Some(c),
                Idle::Closed => None,
                Idle::Unexpected(data) => {
                    if handshake::parse_helo(&data).is_ok() {
                        warn!(
                            output = %self.id, server = %self.nodes[i].cfg.name,
                            "the server sent HELO: it requires the shared_key handshake, which this output is not configured for (set shared_key); frames sent without acks were refused"
                        );
                    } else {
                        debug!(output = %self.id, server = %self.nodes[i].cfg.name, bytes = data.len(), "unexpected data on an idle connection; reconnecting");
                    }
                    None
                }
            },
            _ => None,
        };
        let was_reused = reused.is_some();
        let conn = match reused {
            Some(c) => c,
            None => self.connect(i).await?,
        };
        let result = self.exchange(conn, chunk).await;
        let result = match result {
            Err(e) if was_reused && e.maybe_stale() => {
                debug!(output = %self.id, server = %self.nodes[i].cfg.name, error = %e, "kept-alive connection failed; reconnecting once");
                let conn = self.connect(i).await?;
                self.exchange(conn, chunk).await
            }
            other => other,
        };
        let conn = result?;
        if self.config.keepalive {
            self.nodes[i].conn = Some(conn);
        } else {
            let mut conn = conn;
            let _ = conn.shutdown().await;
        }
        Ok(())
    }

    /// Writes the frame and, when asked for, waits for its ack. Gives the
    /// connection back for reuse.
    async fn exchange(
        &mut self,
        mut conn: Box<dyn Stream>,
        chunk: Option<&str>,
    ) -> Result<Box<dyn Stream>, SendError> {
        let t = self.config.send_timeout;
        match tokio::time::timeout(t, async {
            conn.write_all(&self.frame).await?;
            conn.flush().await
        })
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(SendError::Write(e)),
            Err(_) => return Err(SendError::WriteTimeout(t)),
        }
        if let Some(chunk) = chunk {
            self.ack_buf.clear();
            let ack = handshake::read_value(
                &mut conn,
                &mut self.ack_buf,
                MAX_ACK,
                self.config.ack_timeout,
            )
            .await
            .map_err(|e| match e {
                HandshakeError::Timeout(d) => SendError::AckTimeout(d),
                other => SendError::Ack(other.to_string()),
            })?;
            let got = decode_ack(&ack).map_err(SendError::Ack)?;
            if got != chunk {
                return Err(SendError::Ack(format!(
                    "the ack is for chunk {got:?}, expected {chunk:?}"
                )));
            }
        }
        Ok(conn)
    }

    async fn connect(&self, i: usize) -> Result<Box<dyn Stream>, SendError> {
        let server = &self.nodes[i].cfg;
        let t = self.config.connect_timeout;
        let attempt = async {
            let tcp = TcpStream::connect((server.host.as_str(), server.port))
                .await
                .map_err(|e| SendError::Connect(format!("connecting: {e}")))?;
            let _ = tcp.set_nodelay(true);
            let mut stream: Box<dyn Stream> = match (&self.connector, &self.config.tls) {
                (Some(connector), Some(tls)) => {
                    let name = tls.server_name.as_deref().unwrap_or(&server.host);
                    let name = ulog_tls::server_name(name).map_err(SendError::Connect)?;
                    let s = connector
                        .connect(name, tcp)
                        .await
                        .map_err(|e| SendError::Connect(format!("TLS handshake: {e}")))?;
                    Box::new(s)
                }
                _ => Box::new(tcp),
            };
            if let Some(auth) = &self.auth {
                let peer = handshake::client(&mut stream, auth, t).await?;
                debug!(output = %self.id, server = %server.name, peer = %peer, "handshake succeeded");
            }
            Ok::<_, SendError>(stream)
        };
        match tokio::time::timeout(t, attempt).await {
            Ok(r) => r,
            Err(_) => Err(SendError::Connect(format!(
                "connecting timed out after {t:?}"
            ))),
        }
    }
}

/// The state of an idle kept-alive connection.
enum Idle {
    /// Nothing to read: usable.
    Open,
    /// Closed or broken.
    Closed,
    /// The server sent something unasked (a late ack, a HELO, a PONG).
    Unexpected(Vec<u8>),
}

/// Checks an idle kept-alive connection before reuse: the server never
/// sends anything unasked, so readable means closed or out of step.
async fn idle_state(conn: &mut Box<dyn Stream>) -> Idle {
    let mut b = [0u8; 1024];
    // A zero timeout polls the read exactly once.
    match tokio::time::timeout(Duration::ZERO, conn.read(&mut b)).await {
        Err(_) => Idle::Open,
        Ok(Ok(0)) | Ok(Err(_)) => Idle::Closed,
        Ok(Ok(n)) => Idle::Unexpected(b[..n].to_vec()),
    }
}

fn chunk_id() -> String {
    hex::encode(rand::random::<[u8; 16]>())
}

#[async_trait]
impl Output for ForwardOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        if batch.is_empty() {
            return Delivery::Delivered;
        }
        if let Err(e) = self.ensure_ready() {
            return Delivery::Retry(PluginError::new(e));
        }
        let n = batch.len();
        let mut start = 0;
        while start < n {
            let chunk = self.config.require_ack.then(chunk_id);
            let mut frame = std::mem::take(&mut self.frame);
            frame.clear();
            let count = self.encoder.encode_limited(
                &batch.tag,
                &batch.events[start..],
                chunk.as_deref(),
                self.config.max_frame_size,
                &mut frame,
            );
            self.frame = frame;
            if let Err(e) = self.send_frame(chunk.as_deref()).await {
                if start == 0 {
                    return Delivery::Retry(PluginError::new(e));
                }
                return Delivery::Partial(
                    (start..n)
                        .map(|index| ItemFailure {
                            index,
                            error: PluginError::new(e.clone()),
                            retryable: true,
                        })
                        .collect(),
                );
            }
            start += count.max(1);
        }
        Delivery::Delivered
    }

    async fn shutdown(&mut self) -> Result<(), PluginError> {
        for node in &mut self.nodes {
            if let Some(mut c) = node.conn.take() {
                let _ = tokio::time::timeout(Duration::from_secs(1), c.shutdown()).await;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output(servers: Vec<ServerConfig>) -> ForwardOutput {
        let spec = spec();
        let params = spec
            .validate(&[(
                "servers".into(),
                Value::List(vec![Value::Map(vec![("host".into(), "h".into())])]),
            )])
            .unwrap();
        let ctx = BuildContext {
            id: "t".into(),
            base_dir: ".".into(),
        };
        ForwardOutput {
            id: "t".into(),
            config: config(&params, &ctx).unwrap(),
            nodes: servers
                .into_iter()
                .map(|cfg| Node {
                    cfg,
                    down_until: None,
                    conn: None,
                    current: 0,
                })
                .collect(),
            encoder: Encoder::default(),
            frame: Vec::new(),
            connector: None,
            auth: None,
            ack_buf: BytesMut::new(),
        }
    }

    fn server(name: &str, weight: u32, standby: bool) -> ServerConfig {
        ServerConfig {
            host: "h".into(),
            port: 1,
            weight,
            standby,
            name: name.into(),
        }
    }

    fn picks(o: &mut ForwardOutput, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let tried = vec![false; o.nodes.len()];
                let i = o.pick(&tried).unwrap();
                o.nodes[i].cfg.name.clone()
            })
            .collect()
    }

    #[test]
    fn weights_share_the_load_smoothly() {
        let mut o = output(vec![
            server("a", 60, false),
            server("b", 40, false),
            server("s", 60, true),
        ]);
        let got = picks(&mut o, 10);
        assert_eq!(got.iter().filter(|n| *n == "a").count(), 6, "{got:?}");
        assert_eq!(got.iter().filter(|n| *n == "b").count(), 4, "{got:?}");
        // Smooth: never three of the same in a row with 60/40.
        assert!(
            !got.windows(3).any(|w| w[0] == w[1] && w[1] == w[2]),
            "{got:?}"
        );
    }

    #[test]
    fn standby_only_when_every_primary_is_down() {
        let mut o = output(vec![
            server("a", 60, false),
            server("b", 60, false),
            server("s", 60, true),
        ]);
        o.nodes[0].down_until = Some(Instant::now() + Duration::from_secs(60));
        assert!(picks(&mut o, 4).iter().all(|n| n == "b"));
        o.nodes[1].down_until = Some(Instant::now() + Duration::from_secs(60));
        assert!(picks(&mut o, 3).iter().all(|n| n == "s"));
        o.nodes[2].down_until = Some(Instant::now() + Duration::from_secs(60));
        assert_eq!(o.pick(&[false, false, false]), None);
        // A primary whose wait is over is tried again, ahead of the standby.
        o.nodes[0].down_until = Some(Instant::now());
        o.nodes[2].down_until = None;
        assert_eq!(picks(&mut o, 1), vec!["a".to_string()]);
    }

    #[test]
    fn server_lists_are_checked() {
        let spec = spec();
        let ctx = BuildContext {
            id: "t".into(),
            base_dir: ".".into(),
        };
        let check = |servers: Value| {
            let p = spec.validate(&[("servers".into(), servers)]).unwrap();
            build(&p, &ctx).map(|_| ()).map_err(|e| e.to_string())
        };
        let map = |entries: Vec<(&str, Value)>| {
            Value::List(vec![Value::Map(
                entries
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            )])
        };
        assert!(check(map(vec![("host", "a".into()), ("port", Value::Int(1))])).is_ok());
        assert!(check(Value::List(vec![]))
            .unwrap_err()
            .contains("at least one"));
        assert!(check(map(vec![("port", Value::Int(1))]))
            .unwrap_err()
            .contains("needs a `host`"));
        assert!(
            check(map(vec![("host", "a".into()), ("prot", Value::Int(1))]))
                .unwrap_err()
                .contains("did you mean `port`")
        );
        assert!(
            check(map(vec![("host", "a".into()), ("port", Value::Int(70000))]))
                .unwrap_err()
                .contains("not in 1..65535")
        );
        assert!(
            check(map(vec![("host", "a".into()), ("weight", Value::Int(-1))]))
                .unwrap_err()
                .contains("negative")
        );
    }
}
