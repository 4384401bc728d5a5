//! `input forward`: a fluentd-compatible forward protocol server.
//!
//! Listens on TCP (optionally TLS) and/or a Unix socket, answers UDP
//! heartbeats on the TCP port, runs the shared-key handshake when configured,
//! and turns every frame into events. The events of what one read delivered
//! are emitted as one batch per tag; a frame's `chunk` is acknowledged only
//! after the pipeline has accepted its events.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use serde_json::Value as Json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket, UnixListener};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, CancellationToken, Emitter, Input, InputContext,
    ParamKind, ParamSpec, Params, PluginError, PluginKind, PluginSpec, Tag, Value,
};

use crate::codec::{encode_ack, push_grouped, DecodeError, FrameDecoder, Limits};
use crate::handshake::{self, ServerAuth};
use crate::{check_host_port, system_hostname, Stream};

/// How long a client may take for TLS and the shared-key handshake when no
/// `read_timeout` is set.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// The size of one read.
const READ_CHUNK: usize = 64 * 1024;

pub(crate) fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Input,
        "forward",
        "Receives events over fluentd's Forward protocol v1 (msgpack over TCP, TLS or a Unix \
         socket), as sent by fluentd's and Fluent Bit's forward outputs, the fluent-logger \
         libraries, Docker's fluentd log driver and ulog's own forward output. Supports all four \
         carrier modes, gzip-compressed chunks, the shared-key/user handshake, UDP heartbeats and \
         `chunk` acknowledgements, which are sent only once the pipeline has accepted the events.",
    )
    .param(ParamSpec::with_default(
        "listen",
        ParamKind::Str,
        "127.0.0.1:24224",
        "TCP address to listen on (host:port); \"0.0.0.0:24224\" for every interface, \"\" for \
         no TCP listener (with unix_path).",
    ))
    .param(ParamSpec::optional(
        "unix_path",
        ParamKind::Str,
        "Also (or only) listen on this Unix socket path; a stale socket file there is replaced.",
    ))
    .param(ParamSpec::with_default(
        "heartbeat",
        ParamKind::Bool,
        true,
        "Answer UDP heartbeats on the TCP port (fluentd's out_forward `heartbeat_type udp`).",
    ))
    .param(ParamSpec::optional(
        "tls_cert_path",
        ParamKind::Str,
        "PEM certificate chain; with tls_key_path, TCP connections must use TLS.",
    ))
    .param(ParamSpec::optional(
        "tls_key_path",
        ParamKind::Str,
        "PEM private key for tls_cert_path.",
    ))
    .param(ParamSpec::optional(
        "shared_key",
        ParamKind::Str,
        "Require the HELO/PING/PONG handshake with this shared key (fluentd's <security>).",
    ))
    .param(ParamSpec::optional(
        "self_hostname",
        ParamKind::Str,
        "The name this server gives in the handshake (default: the machine's host name).",
    ))
    .param(ParamSpec::with_default(
        "user_auth",
        ParamKind::Bool,
        false,
        "Also require a username and password from `users` in the handshake.",
    ))
    .param(ParamSpec::with_default(
        "users",
        ParamKind::List(Box::new(ParamKind::Map)),
        Value::List(Vec::new()),
        "Accepted users for user_auth: a list of { username = \"..\", password = \"..\" }.",
    ))
    .param(ParamSpec::with_default(
        "chunk_size_limit",
        ParamKind::Size,
        Value::Size(crate::codec::DEFAULT_MAX_FRAME_SIZE as u64),
        "Largest frame accepted; a larger one is logged and its connection closed. Also bounds \
         what one connection buffers (gzip chunks may inflate to 16 times this).",
    ))
    .param(ParamSpec::with_default(
        "skip_invalid_event",
        ParamKind::Bool,
        true,
        "Skip (with a warning) entries whose record is not a map or whose time is not a time; \
         false refuses the whole frame and closes the connection, unacknowledged.",
    ))
    .param(ParamSpec::with_default(
        "max_connections",
        ParamKind::Int,
        1024,
        "Connections served at once; further clients wait in the listen backlog.",
    ))
    .param(ParamSpec::with_default(
        "read_timeout",
        ParamKind::Duration,
        Duration::ZERO,
        "Close a connection that sends nothing for this long; 0s keeps idle connections open \
         (forward clients keep them for reuse).",
    ))
    .param(ParamSpec::optional(
        "source_address_key",
        ParamKind::Str,
        "Add the client's address (ip:port, or unix:<path>) to every record under this key.",
    ))
}

#[derive(Debug, Clone)]
struct AuthConfig {
    shared_key: String,
    self_hostname: Option<String>,
    user_auth: bool,
    users: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
struct Config {
    listen: Option<String>,
    unix_path: Option<PathBuf>,
    heartbeat: bool,
    tls: Option<(PathBuf, PathBuf)>,
    auth: Option<AuthConfig>,
    limits: Limits,
    skip_invalid_event: bool,
    max_connections: usize,
    read_timeout: Option<Duration>,
    source_address_key: Option<String>,
}

fn users(params: &Params) -> Result<Vec<(String, String)>, BuildError> {
    let mut out = Vec::new();
    for (i, item) in params.list("users")?.iter().enumerate() {
        let Value::Map(entries) = item else {
            return Err(BuildError::param(
                "users",
                format!("item {} must be a map", i + 1),
            ));
        };
        let mut user = None;
        let mut pass = None;
        for (k, v) in entries {
            match (k.as_str(), v) {
                ("username", Value::Str(s)) => user = Some(s.clone()),
                ("password", Value::Str(s)) => pass = Some(s.clone()),
                (k, _) => {
                    return Err(BuildError::param(
                        "users",
                        format!(
                        "item {}: `{k}` is not a user field (username and password, both strings)",
                        i + 1
                    ),
                    ))
                }
            }
        }
        match (user, pass) {
            (Some(u), Some(p)) => out.push((u, p)),
            _ => {
                return Err(BuildError::param(
                    "users",
                    format!("item {} needs both username and password", i + 1),
                ))
            }
        }
    }
    Ok(out)
}

fn config(params: &Params, ctx: &BuildContext) -> Result<Config, BuildError> {
    let listen = match params.str("listen")? {
        "" => None,
        addr => {
            check_host_port(addr).map_err(|e| BuildError::param("listen", e))?;
            Some(addr.to_string())
        }
    };
    let unix_path = params.opt_str("unix_path")?.map(|p| ctx.resolve(p));
    if listen.is_none() && unix_path.is_none() {
        return Err(BuildError::param(
            "listen",
            "nothing to listen on: give `listen` an address or set `unix_path`",
        ));
    }
    let tls = match (
        params.opt_str("tls_cert_path")?,
        params.opt_str("tls_key_path")?,
    ) {
        (Some(c), Some(k)) => Some((ctx.resolve(c), ctx.resolve(k))),
        (None, None) => None,
        (Some(_), None) => {
            return Err(BuildError::param(
                "tls_key_path",
                "tls_cert_path is set, so the key is needed too",
            ))
        }
        (None, Some(_)) => {
            return Err(BuildError::param(
                "tls_cert_path",
                "tls_key_path is set, so the certificate is needed too",
            ))
        }
    };
    if tls.is_some() && listen.is_none() {
        return Err(BuildError::param(
            "tls_cert_path",
            "TLS needs a TCP `listen` address",
        ));
    }
    let users = users(params)?;
    let user_auth = params.bool("user_auth")?;
    let auth = match params.opt_str("shared_key")? {
        Some("") => return Err(BuildError::param("shared_key", "must not be empty")),
        Some(key) => {
            if user_auth && users.is_empty() {
                return Err(BuildError::param(
                    "users",
                    "user_auth = true needs at least one user",
                ));
            }
            Some(AuthConfig {
                shared_key: key.to_string(),
                self_hostname: params.opt_str("self_hostname")?.map(str::to_string),
                user_auth,
                users,
            })
        }
        None => {
            if user_auth || !users.is_empty() {
                return Err(BuildError::param(
                    "shared_key",
                    "user authentication is part of the handshake, which needs a shared_key",
                ));
            }
            None
        }
    };
    let limit = params.size("chunk_size_limit")?;
    if limit < 64 {
        return Err(BuildError::param(
            "chunk_size_limit",
            "must be at least 64 bytes",
        ));
    }
    let max_connections = params.usize("max_connections")?;
    if max_connections == 0 {
        return Err(BuildError::param("max_connections", "must be at least 1"));
    }
    let read_timeout = params.duration("read_timeout")?;
    Ok(Config {
        listen,
        unix_path,
        heartbeat: params.bool("heartbeat")?,
        tls,
        auth,
        limits: Limits::with_max_frame_size(usize::try_from(limit).unwrap_or(usize::MAX)),
        skip_invalid_event: params.bool("skip_invalid_event")?,
        max_connections,
        read_timeout: (!read_timeout.is_zero()).then_some(read_timeout),
        source_address_key: params.opt_str("source_address_key")?.map(str::to_string),
    })
}

pub(crate) fn build(params: &Params, ctx: &BuildContext) -> Result<Box<dyn Input>, BuildError> {
    Ok(Box::new(ForwardInput {
        config: config(params, ctx)?,
    }))
}

struct ForwardInput {
    config: Config,
}

/// What every connection task shares.
struct Shared {
    id: Arc<str>,
    config: Config,
    tls: Option<TlsAcceptor>,
    auth: Option<ServerAuth>,
}

impl Shared {
    fn handshake_timeout(&self) -> Duration {
        self.config.read_timeout.unwrap_or(HANDSHAKE_TIMEOUT)
    }
}

#[async_trait]
impl Input for ForwardInput {
    async fn run(self: Box<Self>, ctx: InputContext) -> Result<(), PluginError> {
        let config = self.config;
        let id = ctx.id.clone();
        let tls = match &config.tls {
            Some((cert, key)) => {
                let sc = ulog_tls::server_config(cert, key).map_err(|e| {
                    PluginError::with_source("loading the TLS certificate and key", e)
                })?;
                Some(TlsAcceptor::from(sc))
            }
            None => None,
        };
        let auth = config.auth.as_ref().map(|a| ServerAuth {
            self_hostname: a.self_hostname.clone().unwrap_or_else(system_hostname),
            shared_key: a.shared_key.clone(),
            user_auth: a.user_auth,
            users: a.users.clone(),
        });

        let tcp = match &config.listen {
            Some(addr) => {
                let l = TcpListener::bind(addr.as_str())
                    .await
                    .map_err(|e| PluginError::with_source(format!("listening on {addr}"), e))?;
                let local = l.local_addr()?;
                info!(input = %id, addr = %local, tls = tls.is_some(), handshake = auth.is_some(), "forward input listening on TCP");
                Some(l)
            }
            None => None,
        };
        let udp = match (&tcp, config.heartbeat) {
            (Some(l), true) => {
                let local = l.local_addr()?;
                match UdpSocket::bind(local).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        warn!(input = %id, addr = %local, error = %e, "cannot answer UDP heartbeats on the TCP port; continuing without");
                        None
                    }
                }
            }
            _ => None,
        };
        let unix = match &config.unix_path {
            Some(path) => {
                if let Ok(meta) = std::fs::symlink_metadata(path) {
                    if meta.file_type().is_socket() {
                        let _ = std::fs::remove_file(path);
                    } else {
                        return Err(PluginError::new(format!(
                            "unix_path {} exists and is not a socket; refusing to replace it",
                            path.display()
                        )));
                    }
                }
                let l = UnixListener::bind(path).map_err(|e| {
                    PluginError::with_source(format!("listening on {}", path.display()), e)
                })?;
                info!(input = %id, path = %path.display(), "forward input listening on a Unix socket");
                Some(l)
            }
            None => None,
        };

        let tracker = TaskTracker::new();
        if let Some(udp) = udp {
            tracker.spawn(heartbeat(udp, ctx.shutdown.clone(), id.clone()));
        }
        let shared = Arc::new(Shared {
            id: id.clone(),
            config: config.clone(),
            tls,
            auth,
        });
        let limiter = Arc::new(Semaphore::new(config.max_connections));
        loop {
            let permit = tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                p = limiter.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            tokio::select! {
                _ = ctx.shutdown.cancelled() => break,
                r = accept_tcp(tcp.as_ref()) => match r {
                    Ok((stream, peer)) => {
                        let _ = stream.set_nodelay(true);
                        let shared = shared.clone();
                        let emitter = ctx.emitter.clone();
                        let shutdown = ctx.shutdown.clone();
                        tracker.spawn(async move {
                            let peer = peer.to_string();
                            match &shared.tls {
                                Some(acceptor) => {
                                    let accept = tokio::time::timeout(shared.handshake_timeout(), acceptor.accept(stream));
                                    match accept.await {
                                        Ok(Ok(tls)) => serve(Box::new(tls), peer, shared, emitter, shutdown).await,
                                        // A port probe (connect and close) is not worth a warning.
                                        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                                            debug!(input = %shared.id, peer = %peer, error = %e, "connection closed before TLS was set up")
                                        }
                                        Ok(Err(e)) => warn!(input = %shared.id, peer = %peer, error = %e, "TLS handshake failed"),
                                        Err(_) => warn!(input = %shared.id, peer = %peer, "TLS handshake timed out"),
                                    }
                                }
                                None => serve(Box::new(stream), peer, shared, emitter, shutdown).await,
                            }
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        warn!(input = %id, error = %e, "accepting a TCP connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                r = accept_unix(unix.as_ref()) => match r {
                    Ok(stream) => {
                        let shared = shared.clone();
                        let emitter = ctx.emitter.clone();
                        let shutdown = ctx.shutdown.clone();
                        let peer = format!(
                            "unix:{}",
                            config.unix_path.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
                        );
                        tracker.spawn(async move {
                            serve(Box::new(stream), peer, shared, emitter, shutdown).await;
                            drop(permit);
                        });
                    }
                    Err(e) => {
                        warn!(input = %id, error = %e, "accepting a Unix socket connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        drop(tcp);
        drop(unix);
        if let Some(path) = &config.unix_path {
            let _ = std::fs::remove_file(path);
        }
        tracker.close();
        tracker.wait().await;
        debug!(input = %id, "forward input stopped");
        Ok(())
    }
}

async fn accept_tcp(
    l: Option<&TcpListener>,
) -> std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)> {
    match l {
        Some(l) => l.accept().await,
        None => std::future::pending().await,
    }
}

async fn accept_unix(l: Option<&UnixListener>) -> std::io::Result<tokio::net::UnixStream> {
    match l {
        Some(l) => l.accept().await.map(|(s, _)| s),
        None => std::future::pending().await,
    }
}

/// Answers each UDP heartbeat datagram with one NUL byte, as fluentd does.
async fn heartbeat(sock: UdpSocket, shutdown: CancellationToken, id: Arc<str>) {
    let mut buf = [0u8; 128];
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = sock.recv_from(&mut buf) => match r {
                Ok((_, from)) => {
                    if let Err(e) = sock.send_to(b"\0", from).await {
                        debug!(input = %id, peer = %from, error = %e, "heartbeat answer failed");
                    }
                }
                Err(e) => {
                    debug!(input = %id, error = %e, "heartbeat receive failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

/// Adds `key: value` to every record, keeping records as JSON text (one
/// buffer for the whole frame) rather than parsing each into a map.
fn add_field(events: &mut [ulog_engine::Event], key: &str, value: &Json) {
    let mut text = Vec::new();
    let mut spans = Vec::with_capacity(events.len());
    for e in events.iter() {
        let start = text.len();
        e.record.write_json_with(&mut text, &[(key, value)]);
        spans.push((start, text.len()));
    }
    let text = bytes::Bytes::from(text);
    for (e, (a, b)) in events.iter_mut().zip(spans) {
        e.record = ulog_engine::Record::Raw(text.slice(a..b));
    }
}

/// Serves one connection until the client closes it, it breaks the
/// protocol, or ulog stops.
async fn serve(
    mut stream: Box<dyn Stream>,
    peer: String,
    shared: Arc<Shared>,
    mut emitter: Emitter,
    shutdown: CancellationToken,
) {
    let id = &shared.id;
    debug!(input = %id, peer = %peer, "connection accepted");
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    if let Some(auth) = &shared.auth {
        let hs = handshake::server(&mut stream, &mut buf, auth, shared.handshake_timeout());
        let result = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = hs => r,
        };
        match result {
            Ok(client) => {
                debug!(input = %id, peer = %peer, client = %client, "handshake succeeded")
            }
            Err(handshake::HandshakeError::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                debug!(input = %id, peer = %peer, "connection closed before the handshake");
                return;
            }
            Err(e) => {
                warn!(input = %id, peer = %peer, error = %e, "forward handshake failed; closing the connection");
                let _ = stream.shutdown().await;
                return;
            }
        }
    }
    let mut decoder = FrameDecoder::new(shared.config.limits)
        .skip_invalid_event(shared.config.skip_invalid_event);
    let mut acks = Vec::new();
    let source = shared
        .config
        .source_address_key
        .as_ref()
        .map(|k| (k.clone(), Json::String(peer.clone())));
    loop {
        let mut groups = Vec::new();
        let mut chunks = Vec::new();
        let mut fatal = None;
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(mut frame)) => {
                    if frame.skipped > 0 {
                        warn!(
                            input = %id, peer = %peer, tag = %frame.tag, skipped = frame.skipped,
                            reason = frame.first_skip_reason.as_deref().unwrap_or(""),
                            "skipped invalid events in a forward frame"
                        );
                    }
                    if let Some(n) = frame.size_option {
                        if n as usize != frame.events.len() + frame.skipped {
                            debug!(input = %id, peer = %peer, size = n, got = frame.events.len() + frame.skipped, "frame size option differs from its entry count");
                        }
                    }
                    if let Some((key, value)) = &source {
                        add_field(&mut frame.events, key, value);
                    }
                    push_grouped(&mut groups, frame.tag, frame.events);
                    chunks.extend(frame.chunk);
                }
                Ok(None) => break,
                Err(DecodeError::BadTag {
                    tag,
                    error,
                    chunk,
                    decoded,
                    ..
                }) => {
                    // Resending would fail the same way: the events go to the
                    // `errors` label with the tag they were sent with, and
                    // the frame is acknowledged once they are there. Without
                    // an `errors` label they would be dropped, so the frame
                    // is not acknowledged: the sender keeps it.
                    let n = decoded.len();
                    if !emitter.has_errors_label() {
                        error!(input = %id, peer = %peer, tag = %tag, %error, events = n, "refusing a forward frame with an invalid tag (not acknowledged; add an `errors` label to keep such events)");
                        continue;
                    }
                    warn!(input = %id, peer = %peer, tag = %tag, %error, events = n, "forward frame with an invalid tag: its events go to the errors label");
                    let original = Json::String(tag);
                    let rejected = decoded
                        .into_iter()
                        .map(|mut event| {
                            event.record.insert("_original_tag", original.clone());
                            ulog_engine::Rejected {
                                event,
                                reason: format!("invalid tag: {error}"),
                            }
                        })
                        .collect();
                    if let Err(e) = emitter.reject(invalid_tag(), id, rejected).await {
                        warn!(input = %id, peer = %peer, error = %e, "events of a frame with an invalid tag not accepted; not acknowledged");
                        return;
                    }
                    chunks.extend(chunk);
                }
                Err(e) if !e.is_fatal() => {
                    error!(input = %id, peer = %peer, error = %e, "dropping a forward frame");
                }
                Err(e) => {
                    fatal = Some(e);
                    break;
                }
            }
        }
        for (tag, events) in groups {
            let n = events.len();
            if let Err(e) = emitter.emit(Batch::new(tag, events)).await {
                warn!(input = %id, peer = %peer, events = n, error = %e, "events not accepted and not acknowledged; the connection is closed so a sender that waits for acks sends them again");
                return;
            }
        }
        if !chunks.is_empty() {
            acks.clear();
            for c in &chunks {
                encode_ack(c, &mut acks);
            }
            if let Err(e) = stream.write_all(&acks).await {
                warn!(input = %id, peer = %peer, error = %e, "sending acks failed; the sender will resend");
                return;
            }
        }
        if let Some(e) = fatal {
            error!(input = %id, peer = %peer, error = %e, "closing the forward connection");
            let _ = stream.shutdown().await;
            return;
        }
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(READ_CHUNK);
        }
        let read = async {
            match shared.config.read_timeout {
                Some(t) => match tokio::time::timeout(t, stream.read_buf(&mut buf)).await {
                    Ok(r) => r,
                    Err(_) => Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("nothing received for {t:?}"),
                    )),
                },
                None => stream.read_buf(&mut buf).await,
            }
        };
        let result = tokio::select! {
            _ = shutdown.cancelled() => {
                if !buf.is_empty() {
                    warn!(input = %id, peer = %peer, bytes = buf.len(), "ulog is stopping: an incomplete frame is discarded (unacknowledged)");
                }
                return;
            }
            r = read => r,
        };
        match result {
            Ok(0) => {
                if !buf.is_empty() {
                    error!(
                        input = %id, peer = %peer, bytes = buf.len(),
                        "connection closed in the middle of a frame: the truncated frame is discarded"
                    );
                } else {
                    debug!(input = %id, peer = %peer, "connection closed");
                }
                return;
            }
            Ok(_) => {}
            Err(e) => {
                warn!(input = %id, peer = %peer, error = %e, partial_bytes = buf.len(), "closing the forward connection");
                return;
            }
        }
    }
}

/// The tag events of a frame with an invalid tag carry to the `errors`
/// label (their own is kept in `_original_tag`).
fn invalid_tag() -> Tag {
    Tag::new_unchecked("forward.invalid_tag")
}
