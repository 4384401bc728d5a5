//! `output stdout`: one line per event on standard output.
//!
//! For trying routes out and for debugging (`match "**" stdout {}`), and for
//! running ulog as a filter in a shell pipe. The whole batch is formatted into
//! one buffer and written with one call, then flushed, so lines of different
//! batches never interleave and nothing waits in a buffer.

use std::io::Write as _;

use tokio::io::{AsyncWrite, AsyncWriteExt};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Delivery, Output, ParamKind, ParamSpec, Params,
    PluginError, PluginKind, PluginSpec, Registry,
};

use crate::encode::{to_datetime, ExtraFields};

/// The names accepted by `format`.
pub const FORMATS: &[&str] = &["json", "fluentd"];

/// The plugin's documentation and parameters.
pub fn spec() -> PluginSpec {
    let mut spec = PluginSpec::new(
        PluginKind::Output,
        "stdout",
        "Writes one line per event to standard output: the record as JSON, or fluentd's \
         `<time> <tag>: <json>` look. Each batch is written and flushed in one go.",
    )
    .param(ParamSpec::with_default(
        "format",
        ParamKind::OneOf(FORMATS),
        "json",
        "`json`: the record as one JSON object per line. `fluentd`: \
         `<RFC 3339 time, UTC, nanoseconds> <tag>: <record JSON>`.",
    ));
    for p in ExtraFields::params() {
        spec = spec.param(p);
    }
    spec
}

/// Registers `output stdout`.
pub fn register(registry: &mut Registry) {
    registry.add_output(spec(), |params: &Params, _: &BuildContext| {
        let out = StdoutOutput::from_params(params, Box::new(tokio::io::stdout()))?;
        Ok(Box::new(out) as Box<dyn Output>)
    });
}

/// How each line looks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineFormat {
    /// The record as JSON.
    Json,
    /// `<RFC 3339 time> <tag>: <json>`.
    Fluentd,
}

/// Writes batches as lines to any async writer (standard output in
/// production; a buffer in tests).
pub struct StdoutOutput {
    format: LineFormat,
    extra: ExtraFields,
    writer: Box<dyn AsyncWrite + Send + Unpin>,
    buf: Vec<u8>,
}

impl StdoutOutput {
    /// Builds the output from its validated parameters, writing to `writer`.
    ///
    /// # Errors
    /// An invalid `time_format`.
    pub fn from_params(
        params: &Params,
        writer: Box<dyn AsyncWrite + Send + Unpin>,
    ) -> Result<Self, BuildError> {
        let format = match params.str("format")? {
            "fluentd" => LineFormat::Fluentd,
            _ => LineFormat::Json,
        };
        Ok(Self::new(format, ExtraFields::from_params(params)?, writer))
    }

    /// An output with explicit settings.
    pub fn new(
        format: LineFormat,
        extra: ExtraFields,
        writer: Box<dyn AsyncWrite + Send + Unpin>,
    ) -> Self {
        Self {
            format,
            extra,
            writer,
            buf: Vec::new(),
        }
    }

    /// Formats `batch` into `out`, one line per event.
    pub fn format_batch(&self, batch: &Batch, out: &mut Vec<u8>) {
        let fields = self.extra.for_batch(&batch.tag);
        for event in &batch.events {
            if self.format == LineFormat::Fluentd {
                // Writing into a Vec cannot fail.
                let _ = write!(
                    out,
                    "{} {}: ",
                    to_datetime(event.time).format("%Y-%m-%dT%H:%M:%S%.9fZ"),
                    batch.tag
                );
            }
            fields.write_json(&event.record, event.time, out);
            out.push(b'\n');
        }
    }
}

#[async_trait]
impl Output for StdoutOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        let mut buf = std::mem::take(&mut self.buf);
        buf.clear();
        self.format_batch(batch, &mut buf);
        let result = async {
            self.writer.write_all(&buf).await?;
            self.writer.flush().await
        }
        .await;
        // Keep the allocation for the next batch unless one batch made it huge.
        if buf.capacity() <= 4 << 20 {
            self.buf = buf;
        }
        match result {
            Ok(()) => Delivery::Delivered,
            // The reader went away (`ulog run ... | head`): that will not
            // get better, so the events go to `errors` instead of waiting.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {
                tracing::error!(error = %e, "standard output is closed");
                Delivery::Rejected(PluginError::with_source("standard output is closed", e))
            }
            Err(e) => {
                tracing::error!(error = %e, "writing to standard output failed");
                Delivery::Retry(PluginError::with_source("writing to standard output", e))
            }
        }
    }

    async fn shutdown(&mut self) -> Result<(), PluginError> {
        self.writer
            .flush()
            .await
            .map_err(|e| PluginError::with_source("flushing standard output", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ulog_engine::{Event, EventTime, Record, Tag};

    fn batch() -> Batch {
        Batch::new(
            Tag::new_unchecked("app.web"),
            vec![
                Event::new(
                    EventTime::from_secs_nanos(1_700_000_000, 5),
                    Record::from_json_bytes(Bytes::from_static(b"{\"a\": 1}")).unwrap(),
                ),
                Event::new(
                    EventTime::from_secs_nanos(1_700_000_001, 0),
                    Record::from_json_bytes(Bytes::from_static(b"{}")).unwrap(),
                ),
            ],
        )
    }

    /// A writer that fails every write with `kind`.
    struct Failing(std::io::ErrorKind);

    impl AsyncWrite for Failing {
        fn poll_write(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            _: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::task::Poll::Ready(Err(self.0.into()))
        }
        fn poll_flush(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn poll_shutdown(
            self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::task::Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn write_errors_retry_but_a_closed_pipe_is_final() {
        let mut out = StdoutOutput::new(
            LineFormat::Json,
            ExtraFields::default(),
            Box::new(Failing(std::io::ErrorKind::BrokenPipe)),
        );
        assert!(matches!(out.write(&batch()).await, Delivery::Rejected(_)));
        let mut out = StdoutOutput::new(
            LineFormat::Json,
            ExtraFields::default(),
            Box::new(Failing(std::io::ErrorKind::Other)),
        );
        assert!(matches!(out.write(&batch()).await, Delivery::Retry(_)));
    }

    #[test]
    fn json_lines_keep_raw_text() {
        let out = StdoutOutput::new(
            LineFormat::Json,
            ExtraFields::default(),
            Box::new(tokio::io::sink()),
        );
        let mut buf = Vec::new();
        out.format_batch(&batch(), &mut buf);
        assert_eq!(String::from_utf8(buf).unwrap(), "{\"a\": 1}\n{}\n");
    }

    #[test]
    fn fluentd_look_has_time_and_tag() {
        let out = StdoutOutput::new(
            LineFormat::Fluentd,
            ExtraFields::new(Some("tag"), None),
            Box::new(tokio::io::sink()),
        );
        let mut buf = Vec::new();
        out.format_batch(&batch(), &mut buf);
        assert_eq!(
            String::from_utf8(buf).unwrap(),
            "2023-11-14T22:13:20.000000005Z app.web: {\"a\": 1,\"tag\":\"app.web\"}\n\
             2023-11-14T22:13:21.000000000Z app.web: {\"tag\":\"app.web\"}\n"
        );
    }
}
