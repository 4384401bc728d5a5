//! `input stdin`: one event per line of standard input.
//!
//! For shell pipes (`tail -F app.log | ulog run routes.ulog`) and one-shot
//! imports. Each read (up to 64 KiB) becomes one batch, so routing and output
//! work is per chunk, not per line; with the default `json` format every line
//! is kept as its validated text and written out untouched.
//!
//! Lines that do not parse are never dropped silently: each is counted, the
//! first few are logged with their line number and the parser's message, a
//! total is logged at the end, and with `on_error = "keep"` the line is kept
//! as `{<message_key>: <line>}` (`message` unless `message_key` says otherwise).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use serde_json::Value as Json;
use tokio::io::{AsyncRead, AsyncReadExt};
use tracing::{debug, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Emitter, Event, EventTime, Input, InputContext,
    ParamKind, ParamSpec, Params, PluginError, PluginKind, PluginSpec, Record, Registry, Rejected,
    Tag,
};
use ulog_parsers::Parser;

/// Bytes asked for per read.
const READ_CHUNK: usize = 64 * 1024;
/// Bad lines logged one by one before only counting.
const BAD_LINES_LOGGED: u64 = 10;

/// The plugin's documentation and parameters.
pub fn spec() -> PluginSpec {
    let mut spec = PluginSpec::new(
        PluginKind::Input,
        "stdin",
        "Reads standard input line by line, one event per line, until end of input \
         (then the input ends, and ulog stops once every input has ended).",
    )
    .param(ParamSpec::required(
        "tag",
        ParamKind::Str,
        "The tag of the events read.",
    ))
    .param(ParamSpec::with_default(
        "on_error",
        ParamKind::OneOf(&["errors", "keep", "log"]),
        "errors",
        "What happens to a line the format cannot parse (always counted, the first 10 logged \
         with line number and reason): `errors` sends {<message_key>: <line>} to the `errors` \
         label with the parser's reason in `_error`; `keep` emits that record as an ordinary \
         event; `log` drops it.",
    ))
    .param(ParamSpec::with_default(
        "max_line_size",
        ParamKind::Size,
        ulog_engine::Value::Size(1 << 20),
        "Longest line accepted; a longer one is logged with its line number and skipped.",
    ));
    for p in ulog_parsers::format_params("json") {
        spec = spec.param(p);
    }
    spec
}

/// Registers `input stdin`.
pub fn register(registry: &mut Registry) {
    registry.add_input(spec(), |params: &Params, _: &BuildContext| {
        Ok(Box::new(StdinInput::from_params(params)?) as Box<dyn Input>)
    });
}

/// The standard-input reader, configured.
pub struct StdinInput {
    lines: LineReader,
}

impl StdinInput {
    /// Builds the input from its validated parameters.
    ///
    /// # Errors
    /// An invalid tag or format option.
    pub fn from_params(params: &Params) -> Result<Self, BuildError> {
        let tag =
            Tag::parse(params.str("tag")?).map_err(|e| BuildError::param("tag", e.to_string()))?;
        let max = params.size("max_line_size")?;
        if max == 0 {
            return Err(BuildError::param(
                "max_line_size",
                "must be at least 1 byte",
            ));
        }
        Ok(Self {
            lines: LineReader {
                tag,
                parser: ulog_parsers::build_parser(params)?,
                on_error: match params.str("on_error")? {
                    "keep" => OnError::Keep(params.str("message_key")?.to_string()),
                    "errors" => OnError::Errors(params.str("message_key")?.to_string()),
                    _ => OnError::Log,
                },
                max_line: usize::try_from(max).unwrap_or(usize::MAX),
                line_no: 0,
                bad: 0,
                discarding: false,
            },
        })
    }
}

impl StdinInput {
    /// Reads `reader` instead of standard input, as `run` would: for tests
    /// and for embedders that feed a pipe of their own.
    ///
    /// # Errors
    /// A read error of `reader`.
    pub async fn read_from<R: AsyncRead + Unpin>(
        mut self,
        reader: R,
        ctx: InputContext,
    ) -> Result<(), PluginError> {
        let result = self
            .lines
            .read_all(reader, ctx.emitter, &ctx.shutdown, &ctx.id)
            .await;
        debug!(input = %ctx.id, lines = self.lines.line_no, "stdin input stopped");
        result
    }
}

#[async_trait]
impl Input for StdinInput {
    async fn run(self: Box<Self>, ctx: InputContext) -> Result<(), PluginError> {
        self.read_from(tokio::io::stdin(), ctx).await
    }
}

/// What happens to a line that does not parse (it is always counted and,
/// the first few times, logged).
#[derive(Clone, Debug, PartialEq, Eq)]
enum OnError {
    /// Drop it.
    Log,
    /// Emit `{<key>: <line>}`.
    Keep(String),
    /// Send `{<key>: <line>}` to the `errors` label with the reason.
    Errors(String),
}

/// The events and refused lines of one read.
#[derive(Default)]
struct Chunk {
    events: Vec<Event>,
    rejects: Vec<Rejected>,
}

/// Splits a byte stream into lines, parses them and emits one batch per read.
/// Separate from the stdin handle so any reader can drive it.
struct LineReader {
    tag: Tag,
    parser: Arc<dyn Parser>,
    on_error: OnError,
    max_line: usize,
    line_no: u64,
    bad: u64,
    /// Inside a line longer than `max_line`: skip to its end.
    discarding: bool,
}

impl LineReader {
    /// Reads `reader` to its end (or until `shutdown`), emitting a batch per
    /// read. Returns `Ok` at end of input or when the pipeline stops.
    ///
    /// # Errors
    /// A read error of the underlying stream.
    async fn read_all<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: R,
        mut emitter: Emitter,
        shutdown: &ulog_engine::CancellationToken,
        node: &str,
    ) -> Result<(), PluginError> {
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let mut scanned = 0;
        let result = loop {
            if buf.capacity() - buf.len() < READ_CHUNK / 4 {
                buf.reserve(READ_CHUNK);
            }
            let n = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                r = reader.read_buf(&mut buf) => match r {
                    Ok(n) => n,
                    Err(e) => break Err(PluginError::with_source("reading standard input", e)),
                },
            };
            let mut chunk = Chunk::default();
            if n == 0 {
                // End of input: a last line without a newline still counts.
                if !buf.is_empty() && !self.discarding {
                    self.line(buf.split().freeze(), EventTime::now(), &mut chunk);
                }
                self.emit(&mut emitter, chunk, node).await;
                break Ok(());
            }
            let now = EventTime::now();
            match memchr::memrchr(b'\n', &buf[scanned..]) {
                Some(i) => {
                    let complete = buf.split_to(scanned + i + 1).freeze();
                    // What is left is a partial line: no newline in it.
                    scanned = buf.len();
                    self.lines(complete, now, &mut chunk);
                }
                None => scanned = buf.len(),
            }
            if buf.len() > self.max_line {
                if !self.discarding {
                    self.line_no += 1;
                    self.bad += 1;
                    warn!(tag = %self.tag, line = self.line_no, max_line_size = self.max_line,
                        "line longer than max_line_size; skipped");
                }
                self.discarding = true;
                buf.clear();
                scanned = 0;
            }
            if !self.emit(&mut emitter, chunk, node).await {
                break Ok(());
            }
        };
        if self.bad > 0 {
            warn!(tag = %self.tag, bad_lines = self.bad, lines = self.line_no,
                "lines that could not be parsed{}", self.fate());
        }
        result
    }

    /// Sends the events (and refused lines) of one read; false when the
    /// pipeline no longer takes events.
    async fn emit(&self, emitter: &mut Emitter, chunk: Chunk, node: &str) -> bool {
        let n = chunk.events.len() + chunk.rejects.len();
        let mut result = Ok(());
        if !chunk.events.is_empty() {
            result = emitter
                .emit(Batch::new(self.tag.clone(), chunk.events))
                .await;
        }
        if result.is_ok() && !chunk.rejects.is_empty() {
            result = emitter.reject(self.tag.clone(), node, chunk.rejects).await;
        }
        match result {
            Ok(()) => true,
            Err(e) => {
                warn!(tag = %self.tag, events = n, error = %e, "events read from stdin were not accepted");
                false
            }
        }
    }

    /// What becomes of bad lines, for the logs.
    fn fate(&self) -> &'static str {
        match self.on_error {
            OnError::Log => "; dropped",
            OnError::Keep(_) => "; kept as a message",
            OnError::Errors(_) => "; sent to the errors label",
        }
    }

    /// Handles every complete line in `chunk` (which ends with a newline).
    fn lines(&mut self, chunk: Bytes, now: EventTime, out: &mut Chunk) {
        let mut start = 0;
        for end in memchr::memchr_iter(b'\n', &chunk) {
            let line = chunk.slice(start..end);
            start = end + 1;
            if self.discarding {
                // The rest of an over-long line.
                self.discarding = false;
                continue;
            }
            self.line(line, now, out);
        }
    }

    /// Parses one line (without its `\n`).
    fn line(&mut self, mut line: Bytes, now: EventTime, out: &mut Chunk) {
        self.line_no += 1;
        if line.last() == Some(&b'\r') {
            line.truncate(line.len() - 1);
        }
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        if line.len() > self.max_line {
            self.bad += 1;
            warn!(tag = %self.tag, line = self.line_no, max_line_size = self.max_line,
                "line longer than max_line_size; skipped");
            return;
        }
        match self.parser.parse(line.clone()) {
            Ok(parsed) => out
                .events
                .push(Event::new(parsed.time.unwrap_or(now), parsed.record)),
            Err(e) => {
                self.bad += 1;
                if self.bad <= BAD_LINES_LOGGED {
                    warn!(tag = %self.tag, line = self.line_no, error = %e,
                        "line could not be parsed{}", self.fate());
                    if self.bad == BAD_LINES_LOGGED {
                        warn!(tag = %self.tag, "further bad lines are only counted");
                    }
                }
                let as_message = |key: &String| {
                    let mut record = Record::new();
                    record.insert(
                        key.clone(),
                        Json::String(String::from_utf8_lossy(&line).into_owned()),
                    );
                    Event::new(now, record)
                };
                match &self.on_error {
                    OnError::Log => {}
                    OnError::Keep(key) => out.events.push(as_message(key)),
                    OnError::Errors(key) => out.rejects.push(Rejected {
                        event: as_message(key),
                        reason: format!("line {}: {e}", self.line_no),
                    }),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(on_error: OnError, max_line: usize) -> LineReader {
        let params = spec().validate(&[("tag".into(), "t".into())]).unwrap();
        LineReader {
            tag: Tag::new_unchecked("t"),
            parser: ulog_parsers::build_parser(&params).unwrap(),
            on_error,
            max_line,
            line_no: 0,
            bad: 0,
            discarding: false,
        }
    }

    #[test]
    fn good_lines_stay_raw_bad_lines_are_counted() {
        let mut r = reader(OnError::Log, 1024);
        let mut out = Chunk::default();
        r.lines(
            Bytes::from_static(b"{\"a\":1}\r\n\n{broken\n{\"b\":2}\n"),
            EventTime::from_unix_nanos(7),
            &mut out,
        );
        assert_eq!(r.line_no, 4);
        assert_eq!(r.bad, 1);
        let texts: Vec<String> = out
            .events
            .iter()
            .map(|e| e.record.to_json_string())
            .collect();
        assert_eq!(texts, [r#"{"a":1}"#, r#"{"b":2}"#]);
        assert!(out
            .events
            .iter()
            .all(|e| matches!(e.record, Record::Raw(_))));
        assert!(out.rejects.is_empty());
    }

    #[test]
    fn keep_and_errors_turn_bad_lines_into_messages() {
        let mut r = reader(OnError::Keep("line".into()), 1024);
        let mut out = Chunk::default();
        r.lines(
            Bytes::from_static(b"not json\n"),
            EventTime::now(),
            &mut out,
        );
        assert_eq!(out.events.len(), 1);
        assert_eq!(
            out.events[0].record.to_json_string(),
            r#"{"line":"not json"}"#
        );
        assert_eq!(r.bad, 1);

        let mut r = reader(OnError::Errors("message".into()), 1024);
        let mut out = Chunk::default();
        r.lines(
            Bytes::from_static(b"{\"ok\":1}\nnot json\n"),
            EventTime::now(),
            &mut out,
        );
        assert_eq!(out.events.len(), 1);
        assert_eq!(out.rejects.len(), 1);
        assert_eq!(
            out.rejects[0].event.record.to_json_string(),
            r#"{"message":"not json"}"#
        );
        assert!(
            out.rejects[0].reason.starts_with("line 2: invalid JSON"),
            "{}",
            out.rejects[0].reason
        );
    }
}
