//! `output http`: batches POSTed to an HTTP endpoint.
//!
//! For sending events to anything that takes JSON over HTTP (a collector, a
//! webhook, another ulog's `input http`). A batch becomes one request, or
//! several when it is larger than `batch_max_events` / `batch_max_bytes`.
//! Connections are kept alive and reused (hyper's pooled client).
//!
//! Answers map to deliveries: 2xx is delivered; 5xx, 408, 429, timeouts and
//! connection errors are retried by the engine; any other status is a refusal
//! of the data itself, so those events go to the `errors` label with the
//! status and the start of the response body. When a batch was split and only
//! some requests failed, only their events are retried or refused.

use std::io::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Delivery, ItemFailure, Output, ParamKind,
    ParamSpec, Params, PluginError, PluginKind, PluginSpec, Registry, Value,
};
use ulog_plugins_basic::encode::ExtraFields;

/// How much of an error response's body is quoted in the error.
const BODY_EXCERPT: usize = 512;
/// Response bodies are read (so the connection can be reused) up to this size.
const MAX_RESPONSE_BODY: usize = 64 << 10;

/// The plugin's documentation and parameters.
pub fn spec() -> PluginSpec {
    let mut spec = PluginSpec::new(
        PluginKind::Output,
        "http",
        "Sends batches to an HTTP endpoint as NDJSON or a JSON array, optionally gzipped, over \
         kept-alive connections. 2xx is success; 5xx, 408, 429, timeouts and connection errors \
         are retried; other statuses send the events to the `errors` label.",
    )
    .param(ParamSpec::required(
        "url",
        ParamKind::Str,
        "Where to send, e.g. http://collector:8080/ingest (http only; https is not supported yet).",
    ))
    .param(ParamSpec::with_default(
        "method",
        ParamKind::OneOf(&["POST", "PUT"]),
        "POST",
        "The request method.",
    ))
    .param(ParamSpec::with_default(
        "format",
        ParamKind::OneOf(&["ndjson", "json"]),
        "ndjson",
        "`ndjson`: one JSON object per line (application/x-ndjson). `json`: one JSON array \
         per request (application/json).",
    ))
    .param(ParamSpec::with_default(
        "gzip",
        ParamKind::Bool,
        false,
        "Compress request bodies (Content-Encoding: gzip).",
    ))
    .param(ParamSpec::with_default(
        "headers",
        ParamKind::Map,
        Value::Map(Vec::new()),
        "Extra request headers, name = \"value\" (e.g. Authorization); they override the \
         defaults, Content-Type included.",
    ))
    .param(ParamSpec::with_default(
        "timeout",
        ParamKind::Duration,
        Duration::from_secs(30),
        "How long one request may take, connecting and reading the answer included; then it \
         is retried.",
    ))
    .param(ParamSpec::with_default(
        "batch_max_events",
        ParamKind::Int,
        0,
        "Most events in one request; larger batches are split. 0: no limit.",
    ))
    .param(ParamSpec::with_default(
        "batch_max_bytes",
        ParamKind::Size,
        Value::Size(5 << 20),
        "Most bytes (before gzip) in one request; larger batches are split. A single larger \
         event is still sent alone. 0: no limit.",
    ));
    for p in ExtraFields::params() {
        spec = spec.param(p);
    }
    spec
}

/// Registers `output http`.
pub fn register(registry: &mut Registry) {
    registry.add_output(spec(), |params: &Params, _: &BuildContext| {
        Ok(Box::new(HttpOutput::from_params(params)?) as Box<dyn Output>)
    });
}

/// Body encodings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyFormat {
    /// One JSON object per line.
    Ndjson,
    /// One JSON array.
    Json,
}

/// How one request went.
enum Outcome {
    Sent,
    Retry(String),
    Refused(String),
}

/// The configured HTTP output.
pub struct HttpOutput {
    uri: Uri,
    method: Method,
    format: BodyFormat,
    gzip: bool,
    headers: HeaderMap,
    timeout: Duration,
    max_events: usize,
    max_bytes: usize,
    extra: ExtraFields,
    /// Made on first use: building a client needs a Tokio runtime, and
    /// factories run without one (`ulog check`).
    client: Option<Client<HttpConnector, Full<Bytes>>>,
}

impl HttpOutput {
    /// Builds the output from its validated parameters. Connects nowhere.
    ///
    /// # Errors
    /// A URL that is not http://host..., an invalid header, a negative count.
    pub fn from_params(params: &Params) -> Result<Self, BuildError> {
        let url = params.str("url")?;
        let uri: Uri = url
            .parse()
            .map_err(|e| BuildError::param("url", format!("{url:?} is not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(BuildError::param(
                    "url",
                    "https is not supported yet; send to a local TLS-terminating proxy over http",
                ))
            }
            _ => {
                return Err(BuildError::param(
                    "url",
                    format!("{url:?} must start with http://"),
                ))
            }
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(BuildError::param("url", format!("{url:?} has no host")));
        }
        let format = match params.str("format")? {
            "json" => BodyFormat::Json,
            _ => BodyFormat::Ndjson,
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(match format {
                BodyFormat::Json => "application/json",
                BodyFormat::Ndjson => "application/x-ndjson",
            }),
        );
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("ulog/", env!("CARGO_PKG_VERSION"))),
        );
        for (name, value) in params.map("headers")? {
            let Value::Str(text) = value else {
                return Err(BuildError::param(
                    "headers",
                    format!("the value of `{name}` must be a string, found {value}"),
                ));
            };
            let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                BuildError::param("headers", format!("`{name}` is not a valid header name"))
            })?;
            let value = HeaderValue::from_str(text).map_err(|_| {
                BuildError::param(
                    "headers",
                    format!("the value of `{name}` is not a valid header value"),
                )
            })?;
            headers.insert(name, value);
        }
        let timeout = params.duration("timeout")?;
        if timeout.is_zero() {
            return Err(BuildError::param("timeout", "must be more than 0"));
        }
        Ok(Self {
            uri,
            method: if params.str("method")? == "PUT" {
                Method::PUT
            } else {
                Method::POST
            },
            format,
            gzip: params.bool("gzip")?,
            headers,
            timeout,
            max_events: params.usize("batch_max_events")?,
            max_bytes: usize::try_from(params.size("batch_max_bytes")?).unwrap_or(usize::MAX),
            extra: ExtraFields::from_params(params)?,
            client: None,
        })
    }

    /// Splits `batch` into request bodies: each a range of event indices and
    /// its encoded bytes.
    fn bodies(&self, batch: &Batch) -> Vec<(std::ops::Range<usize>, Vec<u8>)> {
        let fields = self.extra.for_batch(&batch.tag);
        let mut bodies = Vec::new();
        let mut body = Vec::new();
        let mut start = 0;
        let mut record = Vec::new();
        for (i, event) in batch.events.iter().enumerate() {
            record.clear();
            fields.write_json(&event.record, event.time, &mut record);
            let count = i - start;
            let full_by_count = self.max_events > 0 && count >= self.max_events;
            let full_by_size =
                self.max_bytes > 0 && count > 0 && body.len() + record.len() + 2 > self.max_bytes;
            if full_by_count || full_by_size {
                bodies.push((start..i, self.finish(std::mem::take(&mut body))));
                start = i;
            }
            match self.format {
                BodyFormat::Ndjson => {
                    body.extend_from_slice(&record);
                    body.push(b'\n');
                }
                BodyFormat::Json => {
                    body.push(if body.is_empty() { b'[' } else { b',' });
                    body.extend_from_slice(&record);
                }
            }
        }
        if start < batch.len() {
            bodies.push((start..batch.len(), self.finish(body)));
        }
        bodies
    }

    fn finish(&self, mut body: Vec<u8>) -> Vec<u8> {
        if self.format == BodyFormat::Json {
            body.push(b']');
        }
        body
    }

    async fn send(&mut self, body: Vec<u8>) -> Outcome {
        let body = if self.gzip {
            match tokio::task::spawn_blocking(move || gzip(&body)).await {
                Ok(Ok(b)) => b,
                Ok(Err(e)) => return Outcome::Retry(format!("compressing the body: {e}")),
                Err(e) => return Outcome::Retry(format!("compressing the body: {e}")),
            }
        } else {
            body
        };
        let client = self.client.get_or_insert_with(|| {
            Client::builder(TokioExecutor::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(60))
                .build_http()
        });
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = self.uri.clone();
        *request.headers_mut() = self.headers.clone();
        if self.gzip {
            request
                .headers_mut()
                .insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
        }
        let exchange = async {
            let response = client.request(request).await.map_err(|e| error_chain(&e))?;
            let status = response.status();
            let body = read_limited(response.into_body()).await;
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => Outcome::Retry(format!(
                "no answer from {} within {:?}",
                self.uri, self.timeout
            )),
            Ok(Err(e)) => Outcome::Retry(format!("sending to {}: {e}", self.uri)),
            Ok(Ok((status, body))) => classify(status, &body),
        }
    }
}

/// The delivery meaning of a status.
fn classify(status: StatusCode, body: &[u8]) -> Outcome {
    if status.is_success() {
        return Outcome::Sent;
    }
    let excerpt = String::from_utf8_lossy(&body[..body.len().min(BODY_EXCERPT)]);
    let excerpt = excerpt.trim();
    let message = if excerpt.is_empty() {
        format!("the server answered {status}")
    } else {
        format!("the server answered {status}: {excerpt}")
    };
    if status.is_server_error()
        || status == StatusCode::TOO_MANY_REQUESTS
        || status == StatusCode::REQUEST_TIMEOUT
    {
        Outcome::Retry(message)
    } else {
        Outcome::Refused(message)
    }
}

/// Reads a response body, keeping at most [`MAX_RESPONSE_BODY`] bytes.
async fn read_limited(mut body: hyper::body::Incoming) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { break };
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > MAX_RESPONSE_BODY {
                // Dropping the rest closes the connection instead of reusing it.
                break;
            }
            out.extend_from_slice(&data);
        }
    }
    out
}

/// An error and its causes on one line ("client error (Connect): tcp connect
/// error: Connection refused").
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut encoder = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4 + 64),
        flate2::Compression::fast(),
    );
    encoder.write_all(body)?;
    encoder.finish()
}

#[async_trait]
impl Output for HttpOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        let bodies = self.bodies(batch);
        let single = bodies.len() == 1;
        let mut failures = Vec::new();
        let mut give_up: Option<String> = None;
        for (range, body) in bodies {
            let outcome = match &give_up {
                // The endpoint is unreachable: do not wait for every piece.
                Some(reason) => Outcome::Retry(reason.clone()),
                None => self.send(body).await,
            };
            match outcome {
                Outcome::Sent => {}
                Outcome::Retry(reason) if single => {
                    return Delivery::Retry(PluginError::new(reason))
                }
                Outcome::Refused(reason) if single => {
                    return Delivery::Rejected(PluginError::new(reason))
                }
                Outcome::Retry(reason) => {
                    failures.extend(range.map(|index| ItemFailure {
                        index,
                        error: PluginError::new(reason.clone()),
                        retryable: true,
                    }));
                    give_up = Some(reason);
                }
                Outcome::Refused(reason) => failures.extend(range.map(|index| ItemFailure {
                    index,
                    error: PluginError::new(reason.clone()),
                    retryable: false,
                })),
            }
        }
        if failures.is_empty() {
            Delivery::Delivered
        } else {
            Delivery::Partial(failures)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ulog_engine::{Event, EventTime, Record, Tag};

    fn output(given: &[(&str, Value)]) -> Result<HttpOutput, BuildError> {
        let mut all = vec![("url".to_string(), Value::from("http://127.0.0.1:1/x"))];
        all.extend(given.iter().map(|(k, v)| (k.to_string(), v.clone())));
        let params = spec()
            .validate(&all)
            .map_err(|e| BuildError::new(format!("{e:?}")))?;
        HttpOutput::from_params(&params)
    }

    fn batch(n: usize) -> Batch {
        let events = (0..n)
            .map(|i| {
                let mut r = Record::new();
                r.insert("i", serde_json::json!(i));
                Event::new(EventTime::from_secs_nanos(1, 0), r)
            })
            .collect();
        Batch::new(Tag::new_unchecked("t"), events)
    }

    #[test]
    fn splits_by_count_and_size() {
        let o = output(&[
            ("batch_max_events", Value::Int(3)),
            ("format", "json".into()),
        ])
        .unwrap();
        let bodies = o.bodies(&batch(7));
        let ranges: Vec<_> = bodies.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(ranges, [0..3, 3..6, 6..7]);
        assert_eq!(bodies[2].1, br#"[{"i":6}]"#);
        // Each record is 8 bytes + newline: 20 bytes hold two.
        let o = output(&[("batch_max_bytes", Value::Size(20))]).unwrap();
        let bodies = o.bodies(&batch(5));
        let ranges: Vec<_> = bodies.iter().map(|(r, _)| r.clone()).collect();
        assert_eq!(ranges, [0..2, 2..4, 4..5]);
        assert_eq!(bodies[0].1, b"{\"i\":0}\n{\"i\":1}\n");
    }

    #[test]
    fn statuses_map_to_deliveries() {
        assert!(matches!(
            classify(StatusCode::NO_CONTENT, b""),
            Outcome::Sent
        ));
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, b""),
            Outcome::Retry(_)
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, b""),
            Outcome::Retry(_)
        ));
        match classify(StatusCode::BAD_REQUEST, b"field x is bad\n") {
            Outcome::Refused(m) => {
                assert_eq!(m, "the server answered 400 Bad Request: field x is bad")
            }
            _ => panic!("400 must be refused"),
        }
    }

    #[test]
    fn bad_settings_are_build_errors() {
        let err = |given: &[(&str, Value)]| output(given).err().and_then(|e| e.param);
        assert_eq!(
            err(&[("headers", Value::Map(vec![("bad name".into(), "x".into())]))]).as_deref(),
            Some("headers")
        );
        assert_eq!(
            err(&[("timeout", Value::Duration(Duration::ZERO))]).as_deref(),
            Some("timeout")
        );
        let https = spec()
            .validate(&[("url".into(), "https://example.com/".into())])
            .unwrap();
        let Err(e) = HttpOutput::from_params(&https) else {
            panic!("https must be refused")
        };
        assert!(e.message.contains("https"));
    }
}
