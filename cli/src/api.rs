//! The `--api` listener of `ulog run`: `/health` and `/metrics` for service
//! managers, load balancers and Prometheus, and `POST /reload` for
//! `ulog reload`.
//!
//! It reads the engine's per-node counters ([`MetricsSnapshot`]) on each
//! request, so it costs nothing while nobody asks. Plain HTTP/1.1 on the
//! address given (bind it to loopback unless a scraper elsewhere needs it).

use std::convert::Infallible;
use std::fmt::Write as _;
use std::sync::Arc;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};
use ulog_engine::metrics::MetricsSnapshot;
use ulog_engine::PluginKind;

/// Reads the counters of the running pipeline.
pub type MetricsSource = Arc<dyn Fn() -> MetricsSnapshot + Send + Sync>;

/// The metrics of whichever pipeline runs now: a reload swaps the pipeline
/// under a listener that stays.
#[derive(Clone, Default)]
pub struct CurrentMetrics(Arc<std::sync::RwLock<Option<MetricsSource>>>);

impl CurrentMetrics {
    /// Points at a newly started pipeline.
    pub fn set(&self, source: MetricsSource) {
        *self
            .0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(source);
    }

    /// A source that reads whatever pipeline is current.
    pub fn source(&self) -> MetricsSource {
        let slot = self.0.clone();
        Arc::new(move || {
            let current = slot
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            current.map(|f| f()).unwrap_or_default()
        })
    }
}

/// A request to reload the routes file, answered with a message or the
/// diagnostics that refused it.
pub struct ReloadRequest {
    reply: tokio::sync::oneshot::Sender<Result<String, String>>,
}

impl ReloadRequest {
    /// A request and the receiver of its answer.
    pub fn new() -> (Self, tokio::sync::oneshot::Receiver<Result<String, String>>) {
        let (reply, answer) = tokio::sync::oneshot::channel();
        (Self { reply }, answer)
    }

    /// Answers whoever asked (nobody, for a SIGHUP).
    pub fn answer(self, result: Result<String, String>) {
        let _ = self.reply.send(result);
    }
}

/// Where reload requests go.
pub type ReloadSender = tokio::sync::mpsc::Sender<ReloadRequest>;

/// Serves `/health`, `/metrics` and (with `reload`) `POST /reload` on
/// `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    metrics: MetricsSource,
    reload: Option<ReloadSender>,
    shutdown: CancellationToken,
) {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "api listening (/health, /metrics)");
    }
    loop {
        let (stream, _) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "api accept failed");
                    continue;
                }
            },
        };
        let metrics = metrics.clone();
        let reload = reload.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let metrics = metrics.clone();
                let reload = reload.clone();
                async move {
                    if req.uri().path() == "/reload" {
                        return Ok::<_, Infallible>(reload_answer(&req, reload).await);
                    }
                    Ok::<_, Infallible>(answer(&req, &metrics()))
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                debug!(error = %e, "api connection ended with an error");
            }
        });
    }
}

fn answer(req: &Request<Incoming>, snapshot: &MetricsSnapshot) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET and HEAD are served\n".into(),
        );
    }
    match req.uri().path() {
        "/health" => {
            let (status, body) = health(snapshot);
            reply(status, "text/plain; charset=utf-8", body)
        }
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            prometheus_text(snapshot),
        ),
        other => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            format!("no such endpoint: {other} (try /health, /metrics or POST /reload)\n"),
        ),
    }
}

/// `POST /reload`: 200 once the new routes run, 422 with the diagnostics when
/// they are refused (the old pipeline goes on).
async fn reload_answer(
    req: &Request<Incoming>,
    reload: Option<ReloadSender>,
) -> Response<Full<Bytes>> {
    let text = "text/plain; charset=utf-8";
    if req.method() != Method::POST {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            text,
            "use POST /reload\n".into(),
        );
    }
    let Some(reload) = reload else {
        return reply(
            StatusCode::NOT_FOUND,
            text,
            "reload is not available here\n".into(),
        );
    };
    let (request, answer) = ReloadRequest::new();
    if reload.send(request).await.is_err() {
        return reply(
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            "ulog is stopping\n".into(),
        );
    }
    match answer.await {
        Ok(Ok(message)) => reply(StatusCode::OK, text, message),
        Ok(Err(diagnostics)) => reply(StatusCode::UNPROCESSABLE_ENTITY, text, diagnostics),
        Err(_) => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            text,
            "ulog stopped before reloading\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

/// 200 "ok" when no node has failed; 503 with one line per failed node.
pub fn health(snapshot: &MetricsSnapshot) -> (StatusCode, String) {
    let failed: Vec<String> = snapshot
        .nodes
        .iter()
        .filter_map(|n| {
            n.failure
                .as_ref()
                .map(|f| format!("{} {}: {f}\n", n.kind, n.id))
        })
        .collect();
    if failed.is_empty() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, failed.concat())
    }
}

/// The counters in Prometheus' text exposition format (version 0.0.4).
pub fn prometheus_text(snapshot: &MetricsSnapshot) -> String {
    let mut out = String::with_capacity(256 + snapshot.nodes.len() * 400);
    type Field = fn(&ulog_engine::metrics::NodeSnapshot) -> u64;
    let per_node: [(&str, &str, &str, Field); 5] = [
        (
            "ulog_node_events_in_total",
            "counter",
            "Events an input emitted, a filter received or an output received.",
            |n| n.events_in,
        ),
        (
            "ulog_node_events_out_total",
            "counter",
            "Events an input had accepted by the pipeline, a filter passed on or an output wrote.",
            |n| n.events_out,
        ),
        (
            "ulog_node_events_failed_total",
            "counter",
            "Events that failed for good at this node (sent to the errors label or dropped).",
            |n| n.events_failed,
        ),
        (
            "ulog_node_retries_total",
            "counter",
            "Batches an output retried.",
            |n| n.retries,
        ),
        (
            "ulog_node_queued_events",
            "gauge",
            "Events waiting in an output's queue or being written.",
            |n| n.queued,
        ),
    ];
    for (name, kind, help, field) in per_node {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for n in &snapshot.nodes {
            let _ = writeln!(
                out,
                "{name}{{node=\"{}\",kind=\"{}\"}} {}",
                escape_label(&n.id),
                kind_name(n.kind),
                field(n)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP ulog_node_up 1 while the node works, 0 once it has failed.\n# TYPE ulog_node_up gauge"
    );
    for n in &snapshot.nodes {
        let _ = writeln!(
            out,
            "ulog_node_up{{node=\"{}\",kind=\"{}\"}} {}",
            escape_label(&n.id),
            kind_name(n.kind),
            u8::from(n.failure.is_none())
        );
    }
    buffer_text(&mut out, snapshot);
    for (name, help, value) in [
        (
            "ulog_unmatched_events_total",
            "Events no match block took.",
            snapshot.unmatched,
        ),
        (
            "ulog_rejected_events_total",
            "Events rejected by a filter or an output.",
            snapshot.rejected,
        ),
        (
            "ulog_dropped_events_total",
            "Rejected events that had no errors label to go to.",
            snapshot.dropped,
        ),
    ] {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
        );
    }
    out
}

/// The file buffers' series: one per output that has a file buffer.
fn buffer_text(out: &mut String, snapshot: &MetricsSnapshot) {
    let buffered: Vec<_> = snapshot
        .nodes
        .iter()
        .filter_map(|n| n.buffer.as_ref().map(|b| (escape_label(&n.id), b)))
        .collect();
    if buffered.is_empty() {
        return;
    }
    type Field = fn(&ulog_engine::metrics::BufferSnapshot) -> String;
    let series: [(&str, &str, &str, Field); 6] = [
        (
            "ulog_buffer_bytes",
            "gauge",
            "Bytes the output's file buffer takes on disk.",
            |b| b.bytes.to_string(),
        ),
        (
            "ulog_buffer_chunks",
            "gauge",
            "Chunks in the file buffer not yet confirmed delivered.",
            |b| b.chunks.to_string(),
        ),
        (
            "ulog_buffer_oldest_chunk_age_seconds",
            "gauge",
            "Age of the oldest chunk waiting in the file buffer (0 when none waits).",
            |b| format!("{:.3}", b.oldest_chunk_age_ms.unwrap_or(0) as f64 / 1000.0),
        ),
        (
            "ulog_buffer_fsyncs_total",
            "counter",
            "fdatasync calls the file buffer made.",
            |b| b.fsyncs.to_string(),
        ),
        (
            "ulog_buffer_full_rejections_total",
            "counter",
            "Appends refused because the file buffer or its disk was full.",
            |b| b.full_rejections.to_string(),
        ),
        (
            "ulog_buffer_dropped_events_total",
            "counter",
            "Events discarded by overflow = drop_oldest or found unreadable in the buffer.",
            |b| b.dropped_events.to_string(),
        ),
    ];
    for (name, kind, help, field) in series {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (id, b) in &buffered {
            let _ = writeln!(out, "{name}{{node=\"{id}\"}} {}", field(b));
        }
    }
    let name = "ulog_buffer_fsync_seconds";
    let _ = writeln!(
        out,
        "# HELP {name} Latency of the file buffer's fdatasync calls.\n# TYPE {name} histogram"
    );
    for (id, b) in &buffered {
        for (le, count) in &b.fsync_buckets {
            let le = if *le == u64::MAX {
                "+Inf".to_string()
            } else {
                (*le as f64 / 1e6).to_string()
            };
            let _ = writeln!(out, "{name}_bucket{{node=\"{id}\",le=\"{le}\"}} {count}");
        }
        let _ = writeln!(
            out,
            "{name}_sum{{node=\"{id}\"}} {:.6}\n{name}_count{{node=\"{id}\"}} {}",
            b.fsync_micros as f64 / 1e6,
            b.fsyncs
        );
    }
}

fn kind_name(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Input => "input",
        PluginKind::Filter => "filter",
        PluginKind::Output => "output",
    }
}

/// Escapes a label value as the exposition format asks: `\`, `"` and newline.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ulog_engine::metrics::NodeSnapshot;

    fn node(id: &str, kind: PluginKind, failure: Option<&str>) -> NodeSnapshot {
        NodeSnapshot {
            id: id.into(),
            kind,
            events_in: 7,
            events_out: 5,
            events_failed: 2,
            retries: 1,
            queued: 3,
            failure: failure.map(String::from),
            buffer: None,
        }
    }

    #[test]
    fn prometheus_text_has_every_node_and_escapes_labels() {
        let snap = MetricsSnapshot {
            nodes: vec![
                node("web\"in", PluginKind::Input, None),
                node("store", PluginKind::Output, Some("x")),
            ],
            unmatched: 4,
            rejected: 2,
            dropped: 0,
        };
        let text = prometheus_text(&snap);
        assert!(text.contains("ulog_node_events_in_total{node=\"web\\\"in\",kind=\"input\"} 7"));
        assert!(text.contains("ulog_node_queued_events{node=\"store\",kind=\"output\"} 3"));
        assert!(text.contains("ulog_node_up{node=\"store\",kind=\"output\"} 0"));
        assert!(text.contains("ulog_node_up{node=\"web\\\"in\",kind=\"input\"} 1"));
        assert!(text.contains("\nulog_unmatched_events_total 4\n"));
        // Every sample line belongs to a declared family.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} has no TYPE line"
            );
        }
    }

    #[test]
    fn health_names_each_failed_node() {
        let ok = MetricsSnapshot {
            nodes: vec![node("a", PluginKind::Input, None)],
            ..Default::default()
        };
        assert_eq!(health(&ok).0, StatusCode::OK);
        let bad = MetricsSnapshot {
            nodes: vec![
                node("a", PluginKind::Input, None),
                node(
                    "tcp#1",
                    PluginKind::Input,
                    Some("input failed: address in use"),
                ),
            ],
            ..Default::default()
        };
        let (status, body) = health(&bad);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "input tcp#1: input failed: address in use\n");
    }
}
