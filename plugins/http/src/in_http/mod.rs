//! `input http`: events posted over HTTP, compatible with fluentd's in_http.
//!
//! `POST /<tag>` with a JSON object, a JSON array of objects, NDJSON,
//! MessagePack (a map or an array of maps) or a form with a `json=` or
//! `msgpack=` field. Every record of one request becomes one batch, and the
//! answer (200, empty body) is sent only once the pipeline has accepted that
//! batch: a client that got 200 can forget the events. Malformed bodies get a
//! 400 with a one-line reason and nothing of them is emitted; bodies over
//! `body_limit` get 413; a stopping pipeline answers 503.
//!
//! Each connection is its own task (HTTP/1.1 with keep-alive), so decoding
//! runs on as many cores as there are clients. On shutdown the listener
//! closes, idle connections are closed, and requests in flight finish.

pub mod decode;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::Value as Json;
use tokio::net::TcpListener;
use tokio::sync::Mutex;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, CancellationToken, Emitter, Event, EventTime,
    Input, InputContext, ParamKind, ParamSpec, Params, PluginError, PluginKind, PluginSpec, Record,
    Registry, Tag, Value,
};

use decode::{BodyKind, Decoder};

/// The plugin's documentation and parameters.
pub fn spec() -> PluginSpec {
    PluginSpec::new(
        PluginKind::Input,
        "http",
        "Receives events over HTTP like fluentd's in_http: POST /<tag> with a JSON object, a \
         JSON array, NDJSON, MessagePack or a form field json=/msgpack=. Answers 200 once the \
         pipeline has accepted the events, 400 for malformed bodies, 413 when too large.",
    )
    .param(ParamSpec::with_default(
        "listen",
        ParamKind::Str,
        "127.0.0.1:9880",
        "The address and port to listen on (0.0.0.0:9880 for every interface).",
    ))
    .param(ParamSpec::with_default(
        "body_limit",
        ParamKind::Size,
        Value::Size(32 << 20),
        "The largest request body accepted (after gzip decompression); larger ones get 413.",
    ))
    .param(ParamSpec::with_default(
        "add_http_headers",
        ParamKind::Bool,
        false,
        "Add each request header to the records as HTTP_<NAME> (upper case, `-` as `_`).",
    ))
    .param(ParamSpec::with_default(
        "add_remote_addr",
        ParamKind::Bool,
        false,
        "Add the client address as REMOTE_ADDR (the first X-Forwarded-For entry when present).",
    ))
    .param(ParamSpec::optional(
        "cors_allow_origins",
        ParamKind::List(Box::new(ParamKind::Str)),
        "Origins allowed to post from a browser (`*` for any). When set, preflight OPTIONS \
         requests are answered and requests from other origins get 403.",
    ))
    .param(ParamSpec::with_default(
        "keepalive_timeout",
        ParamKind::Duration,
        Duration::from_secs(10),
        "How long an idle keep-alive connection (or one still sending its headers) stays open; \
         more than 0.",
    ))
    .param(ParamSpec::with_default(
        "time_key",
        ParamKind::Str,
        "time",
        "A top-level numeric field with this name (seconds since the epoch) is the event time.",
    ))
    .param(ParamSpec::with_default(
        "keep_time_key",
        ParamKind::Bool,
        false,
        "Keep the time field in the record instead of removing it.",
    ))
}

/// Registers `input http`.
pub fn register(registry: &mut Registry) {
    registry.add_input(spec(), |params: &Params, _: &BuildContext| {
        Ok(Box::new(HttpInput::from_params(params)?) as Box<dyn Input>)
    });
}

/// Settings shared by every connection.
#[derive(Debug)]
struct Settings {
    body_limit: usize,
    add_headers: bool,
    add_remote_addr: bool,
    /// `None`: no CORS handling. `Some([])` never happens; `*` allows any.
    cors: Option<Vec<String>>,
    keepalive: Duration,
    decoder: Decoder,
}

/// The HTTP input, configured; binds its port when it runs.
#[derive(Debug)]
pub struct HttpInput {
    listen: String,
    settings: Arc<Settings>,
}

impl HttpInput {
    /// Builds the input from its validated parameters. Binds nothing.
    ///
    /// # Errors
    /// An address without a port, an empty CORS list or a zero body limit.
    pub fn from_params(params: &Params) -> Result<Self, BuildError> {
        let listen = params.str("listen")?.to_string();
        match listen.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => {
                return Err(BuildError::param(
                    "listen",
                    format!("expected host:port such as 127.0.0.1:9880, found {listen:?}"),
                ))
            }
        }
        let keepalive = params.duration("keepalive_timeout")?;
        if keepalive.is_zero() {
            return Err(BuildError::param(
                "keepalive_timeout",
                "must be more than 0",
            ));
        }
        let body_limit = params.size("body_limit")?;
        if body_limit == 0 {
            return Err(BuildError::param("body_limit", "must be more than 0 bytes"));
        }
        let cors = match params.get("cors_allow_origins") {
            None => None,
            Some(_) => {
                let list = params.str_list("cors_allow_origins")?;
                if list.is_empty() {
                    return Err(BuildError::param(
                        "cors_allow_origins",
                        "is empty; leave it out, or list origins (\"*\" for any)",
                    ));
                }
                Some(list)
            }
        };
        Ok(Self {
            listen,
            settings: Arc::new(Settings {
                body_limit: usize::try_from(body_limit).unwrap_or(usize::MAX),
                add_headers: params.bool("add_http_headers")?,
                add_remote_addr: params.bool("add_remote_addr")?,
                cors,
                keepalive,
                decoder: Decoder::new(params.str("time_key")?, params.bool("keep_time_key")?),
            }),
        })
    }
}

#[async_trait]
impl Input for HttpInput {
    async fn run(self: Box<Self>, ctx: InputContext) -> Result<(), PluginError> {
        let listener = TcpListener::bind(&self.listen)
            .await
            .map_err(|e| PluginError::with_source(format!("listening on {}", self.listen), e))?;
        let local = listener
            .local_addr()
            .map_or_else(|_| self.listen.to_string(), |a| a.to_string());
        info!(input = %ctx.id, listen = %local, "http input listening");
        let connections = TaskTracker::new();
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                _ = ctx.shutdown.cancelled() => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: wait, go on.
                        warn!(input = %ctx.id, error = %e, "accepting a connection failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
            };
            let conn = Connection {
                settings: self.settings.clone(),
                emitter: Arc::new(Mutex::new(ctx.emitter.clone())),
                peer,
            };
            connections.spawn(conn.serve(stream, ctx.shutdown.clone()));
        }
        drop(listener);
        connections.close();
        debug!(input = %ctx.id, open = connections.len(), "http input stopping; finishing requests in flight");
        connections.wait().await;
        debug!(input = %ctx.id, "http input stopped");
        Ok(())
    }
}

type Reply = Response<Full<Bytes>>;

/// One client connection.
#[derive(Clone)]
struct Connection {
    settings: Arc<Settings>,
    /// One emitter per connection keeps its routing cache warm; HTTP/1 runs
    /// one request at a time, so the lock is never contended.
    emitter: Arc<Mutex<Emitter>>,
    peer: SocketAddr,
}

impl Connection {
    async fn serve(self, stream: tokio::net::TcpStream, shutdown: CancellationToken) {
        let _ = stream.set_nodelay(true);
        let peer = self.peer;
        let keepalive = self.settings.keepalive;
        let service = service_fn(move |req| {
            let conn = self.clone();
            async move { Ok::<_, Infallible>(conn.handle(req).await) }
        });
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(keepalive);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        let result = tokio::select! {
            r = conn.as_mut() => r,
            _ = shutdown.cancelled() => {
                // Finish the request in flight, then close.
                conn.as_mut().graceful_shutdown();
                conn.await
            }
        };
        if let Err(e) = result {
            debug!(peer = %peer, error = %e, "http connection ended with an error");
        }
    }

    async fn handle(&self, req: Request<Incoming>) -> Reply {
        let origin = req.headers().get(header::ORIGIN).cloned();
        let allow_origin = match (&self.settings.cors, &origin) {
            (Some(allowed), Some(origin)) => {
                let text = origin.to_str().unwrap_or_default();
                if allowed.iter().any(|a| a == "*" || a == text) {
                    Some(origin.clone())
                } else {
                    return reply(StatusCode::FORBIDDEN, "origin not allowed");
                }
            }
            _ => None,
        };
        let mut response = match *req.method() {
            Method::POST => self.post(req).await,
            Method::OPTIONS if self.settings.cors.is_some() => preflight(req.headers()),
            Method::GET | Method::HEAD if req.uri().path() == "/" => reply(StatusCode::OK, ""),
            _ => {
                let mut r = reply(
                    StatusCode::METHOD_NOT_ALLOWED,
                    "only POST /<tag> is accepted",
                );
                r.headers_mut()
                    .insert(header::ALLOW, HeaderValue::from_static("POST"));
                r
            }
        };
        if let Some(origin) = allow_origin {
            response
                .headers_mut()
                .insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
            response
                .headers_mut()
                .insert(header::VARY, HeaderValue::from_static("Origin"));
        }
        response
    }

    async fn post(&self, req: Request<Incoming>) -> Reply {
        let settings = &self.settings;
        let path = req.uri().path();
        let tag = match Tag::parse(path.strip_prefix('/').unwrap_or(path)) {
            Ok(t) => t,
            Err(e) => {
                return reply(
                    StatusCode::BAD_REQUEST,
                    &format!("invalid tag in the path: {e}"),
                )
            }
        };
        let mut default_time = EventTime::now();
        if let Some(query) = req.uri().query() {
            for (k, v) in decode::form_pairs(query.as_bytes()) {
                if k == b"time" {
                    match std::str::from_utf8(&v)
                        .ok()
                        .and_then(|s| s.trim().parse::<f64>().ok())
                        .and_then(decode::secs_to_time)
                    {
                        Some(t) => default_time = t,
                        None => {
                            return reply(
                                StatusCode::BAD_REQUEST,
                                "the time query parameter must be seconds since the epoch",
                            )
                        }
                    }
                }
            }
        }
        let headers = req.headers();
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > settings.body_limit as u64) {
            return too_large(settings.body_limit);
        }
        let kind = BodyKind::from_content_type(
            headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        let gzip = match headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        {
            None => false,
            Some(e) if e == "identity" => false,
            Some(e) if e == "gzip" || e == "x-gzip" => true,
            Some(e) => {
                return reply(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    &format!("unsupported Content-Encoding {e:?}; send gzip or nothing"),
                )
            }
        };
        let fields = self.extra_fields(headers);
        let body = match Limited::new(req.into_body(), settings.body_limit)
            .collect()
            .await
        {
            Ok(b) => b.to_bytes(),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => {
                return too_large(settings.body_limit)
            }
            Err(e) => {
                debug!(peer = %self.peer, error = %e, "reading a request body failed");
                return reply(
                    StatusCode::BAD_REQUEST,
                    &format!("could not read the body: {e}"),
                );
            }
        };
        let body = if gzip {
            match gunzip(&body, settings.body_limit) {
                Ok(Some(b)) => b,
                Ok(None) => return too_large(settings.body_limit),
                Err(e) => {
                    return reply(StatusCode::BAD_REQUEST, &format!("invalid gzip body: {e}"))
                }
            }
        } else {
            body
        };
        let mut events = Vec::new();
        if let Err(e) = settings
            .decoder
            .decode(kind, body, default_time, &mut events)
        {
            debug!(peer = %self.peer, tag = %tag, error = %e, "refused a malformed body");
            return reply(StatusCode::BAD_REQUEST, &e.to_string());
        }
        if !fields.is_empty() {
            add_fields(&mut events, &fields);
        }
        if events.is_empty() {
            return reply(StatusCode::OK, "");
        }
        let n = events.len();
        let result = self
            .emitter
            .lock()
            .await
            .emit(Batch::new(tag, events))
            .await;
        match result {
            Ok(()) => reply(StatusCode::OK, ""),
            Err(e) => {
                // Nothing of the request is acknowledged: the client keeps
                // the events and sends them again (after `Retry-After`).
                warn!(peer = %self.peer, events = n, "refused a request: {e}");
                let mut r = reply(StatusCode::SERVICE_UNAVAILABLE, &e.to_string());
                if let Some(after) = e.retry_after() {
                    r.headers_mut().insert(
                        header::RETRY_AFTER,
                        HeaderValue::from(after.as_secs().max(1)),
                    );
                }
                r
            }
        }
    }

    /// `HTTP_*` and `REMOTE_ADDR` fields to add to every record.
    fn extra_fields(&self, headers: &HeaderMap) -> Vec<(String, Json)> {
        let mut fields = Vec::new();
        if self.settings.add_headers {
            for (name, value) in headers {
                let key = format!(
                    "HTTP_{}",
                    name.as_str().to_ascii_uppercase().replace('-', "_")
                );
                fields.push((
                    key,
                    Json::String(String::from_utf8_lossy(value.as_bytes()).into_owned()),
                ));
            }
        }
        if self.settings.add_remote_addr {
            let forwarded = headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.split(',').next())
                .map(str::trim)
                .filter(|v| !v.is_empty());
            let addr = forwarded.map_or_else(|| self.peer.ip().to_string(), str::to_string);
            fields.push(("REMOTE_ADDR".into(), Json::String(addr)));
        }
        fields
    }
}

/// Adds `fields` to every record; raw records get them spliced into their
/// text (one shared buffer for the request), parsed ones get them inserted.
fn add_fields(events: &mut [Event], fields: &[(String, Json)]) {
    let refs: Vec<(&str, &Json)> = fields.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut buf = Vec::new();
    let mut spans = Vec::with_capacity(events.len());
    for (i, event) in events.iter_mut().enumerate() {
        match &mut event.record {
            Record::Raw(_) => {
                let start = buf.len();
                event.record.write_json_with(&mut buf, &refs);
                spans.push((i, start, buf.len()));
            }
            Record::Map(map) => {
                for (k, v) in fields {
                    map.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let buf = Bytes::from(buf);
    for (i, start, end) in spans {
        events[i].record = Record::Raw(buf.slice(start..end));
    }
}

/// Decompresses a gzip body; `None` when it would exceed `limit`.
fn gunzip(body: &[u8], limit: usize) -> std::io::Result<Option<Bytes>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    let mut decoder = flate2::read::MultiGzDecoder::new(body).take(limit as u64 + 1);
    decoder.read_to_end(&mut out)?;
    if out.len() > limit {
        return Ok(None);
    }
    Ok(Some(Bytes::from(out)))
}

fn too_large(limit: usize) -> Reply {
    reply(
        StatusCode::PAYLOAD_TOO_LARGE,
        &format!("the body is larger than body_limit ({limit} bytes)"),
    )
}

fn preflight(headers: &HeaderMap) -> Reply {
    let mut r = reply(StatusCode::OK, "");
    let h = r.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, OPTIONS"),
    );
    if let Some(asked) = headers.get(header::ACCESS_CONTROL_REQUEST_HEADERS) {
        h.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, asked.clone());
    }
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    r
}

/// A response with a one-line text body (empty for success, as fluentd).
fn reply(status: StatusCode, message: &str) -> Reply {
    let body = if message.is_empty() {
        Bytes::new()
    } else {
        Bytes::from(format!("{message}\n"))
    };
    let mut r = Response::new(Full::new(body));
    *r.status_mut() = status;
    if !message.is_empty() {
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
    }
    r
}
