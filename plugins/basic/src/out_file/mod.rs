//! `output file`: events appended to files named from a template.
//!
//! For keeping logs on local disk, split by tag and time
//! (`out/{tag}/%Y-%m-%d.jsonl`). Records are formatted into a buffer per file
//! (raw JSON records are copied untouched); a buffer is written out when it
//! reaches `buffer_size`, every `flush_interval`, and at shutdown. Files stay
//! open in a small map, least recently used closed first, and all disk work
//! runs on Tokio's blocking pool so a slow disk never stalls other tasks.
//!
//! Delivery is honest about errors: when a write fails (a full disk, a
//! permission change), the bytes of the batch being written are taken back
//! out of the buffer and the batch is answered with `Retry` (or `Partial` when
//! only some of its files failed); bytes of earlier batches stay buffered and
//! are tried again at every flush, and whatever still cannot be written at
//! shutdown is logged as lost.

mod path;

use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::{error, info, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Delivery, ItemFailure, Output, ParamKind,
    ParamSpec, Params, PluginError, PluginKind, PluginSpec, Record, Registry, Value,
};

pub use path::PathTemplate;

use crate::encode::{BatchFields, ExtraFields};

/// The names accepted by `format`.
pub const FORMATS: &[&str] = &["json", "msgpack", "ltsv"];

/// An open file unused this long is closed at the next flush.
const IDLE_CLOSE: Duration = Duration::from_secs(60);

/// The plugin's documentation and parameters.
pub fn spec() -> PluginSpec {
    let mut spec = PluginSpec::new(
        PluginKind::Output,
        "file",
        "Appends events to files whose path may hold {tag}, {tag_parts[N]} and strftime \
         directives (%Y %m %d %H ..., from the event time in UTC). Raw JSON records are written \
         byte for byte. A tag can never make a path leave the output's directory.",
    )
    .param(ParamSpec::required(
        "path",
        ParamKind::Str,
        "The file path template, relative to the routes file's directory: {tag}, \
         {tag_parts[N]} (negative N counts from the end), strftime directives such as \
         %Y-%m-%d (UTC); {{, }} and %% are literal.",
    ))
    .param(ParamSpec::with_default(
        "format",
        ParamKind::OneOf(FORMATS),
        "json",
        "`json`: one JSON object per line. `msgpack`: one MessagePack map per record, \
         back to back. `ltsv`: tab-separated `key:value` per line.",
    ));
    for p in ExtraFields::params() {
        spec = spec.param(p);
    }
    spec.param(ParamSpec::with_default(
        "flush_interval",
        ParamKind::Duration,
        Duration::from_secs(1),
        "How often buffered data is written to the files.",
    ))
    .param(ParamSpec::with_default(
        "buffer_size",
        ParamKind::Size,
        Value::Size(256 << 10),
        "Bytes buffered per file before they are written without waiting for the flush; \
         0 writes every batch at once.",
    ))
    .param(ParamSpec::with_default(
        "append",
        ParamKind::Bool,
        true,
        "Append to existing files. With false, a file is truncated the first time this \
         output opens it in a run.",
    ))
    .param(ParamSpec::with_default(
        "mkdir",
        ParamKind::Bool,
        true,
        "Create missing parent directories.",
    ))
    .param(ParamSpec::with_default(
        "max_open_files",
        ParamKind::Int,
        64,
        "Files kept open at once; the least recently used is closed first.",
    ))
}

/// Registers `output file`.
pub fn register(registry: &mut Registry) {
    registry.add_output(spec(), |params: &Params, ctx: &BuildContext| {
        Ok(Box::new(FileOutput::from_params(params, ctx)?) as Box<dyn Output>)
    });
}

/// How records are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// One JSON object per line.
    Json,
    /// MessagePack maps, back to back.
    Msgpack,
    /// Tab-separated `key:value` pairs per line.
    Ltsv,
}

/// Settings the blocking writer needs.
#[derive(Debug)]
struct Settings {
    append: bool,
    mkdir: bool,
    max_open: usize,
}

/// One destination file: its buffer and, while open, its handle.
#[derive(Default)]
struct Sink {
    pending: Vec<u8>,
    file: Option<File>,
    last_used: Option<Instant>,
    /// The last write failed; the next batch for this file writes at once.
    failing: bool,
}

/// Every destination, moved to the blocking pool for disk work.
#[derive(Default)]
struct Files {
    sinks: HashMap<PathBuf, Sink>,
    open: usize,
    /// With `append = false`: files already truncated in this run.
    truncated: HashSet<PathBuf>,
}

/// The outcome of writing one file's buffer.
struct WriteResult {
    path: PathBuf,
    written: usize,
    error: Option<std::io::Error>,
}

impl Files {
    /// Writes the whole buffer of each of `paths`, opening files as needed.
    fn write_out(&mut self, paths: Vec<PathBuf>, settings: &Settings) -> Vec<WriteResult> {
        paths
            .into_iter()
            .map(|path| {
                let (written, error) = match self.write_one(&path, settings) {
                    Ok(n) => (n, None),
                    Err((n, e)) => (n, Some(e)),
                };
                WriteResult {
                    path,
                    written,
                    error,
                }
            })
            .collect()
    }

    fn write_one(
        &mut self,
        path: &PathBuf,
        settings: &Settings,
    ) -> Result<usize, (usize, std::io::Error)> {
        if self.sinks.get(path).is_none_or(|s| s.pending.is_empty()) {
            return Ok(0);
        }
        if self.sinks.get(path).is_some_and(|s| s.file.is_none()) {
            self.make_room(path, settings);
            let file = self.open(path, settings).map_err(|e| (0, e))?;
            self.open += 1;
            if let Some(sink) = self.sinks.get_mut(path) {
                sink.file = Some(file);
            }
        }
        let Some(sink) = self.sinks.get_mut(path) else {
            return Ok(0);
        };
        sink.last_used = Some(Instant::now());
        let mut written = 0;
        let result = match &mut sink.file {
            Some(file) => loop {
                if written == sink.pending.len() {
                    break Ok(());
                }
                match file.write(&sink.pending[written..]) {
                    Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => break Err(e),
                }
            },
            None => Ok(()),
        };
        sink.pending.drain(..written);
        match result {
            Ok(()) => Ok(written),
            Err(e) => {
                // Reopen on the next attempt: the file may have been removed
                // or its directory remounted.
                if sink.file.take().is_some() {
                    self.open -= 1;
                }
                Err((written, e))
            }
        }
    }

    fn open(&mut self, path: &PathBuf, settings: &Settings) -> std::io::Result<File> {
        if settings.mkdir {
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
        }
        let mut options = OpenOptions::new();
        options.create(true);
        if !settings.append && self.truncated.insert(path.clone()) {
            options.write(true).truncate(true);
        } else {
            options.append(true);
        }
        options.open(path)
    }

    /// Closes the least recently used files until one more may open.
    fn make_room(&mut self, keep: &PathBuf, settings: &Settings) {
        while self.open >= settings.max_open {
            let lru = self
                .sinks
                .iter()
                .filter(|(p, s)| s.file.is_some() && *p != keep)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(p, _)| p.clone());
            let Some(lru) = lru else { return };
            if let Err((_, e)) = self.write_one(&lru, settings) {
                warn!(path = %lru.display(), error = %e, "writing a file before closing it failed");
            }
            if let Some(sink) = self.sinks.get_mut(&lru) {
                if sink.file.take().is_some() {
                    self.open -= 1;
                }
            }
        }
    }

    /// Closes files idle for [`IDLE_CLOSE`] and forgets empty, closed ones.
    fn close_idle(&mut self) {
        let now = Instant::now();
        let mut closed = 0;
        self.sinks.retain(|_, sink| {
            let idle = sink
                .last_used
                .is_none_or(|t| now.duration_since(t) >= IDLE_CLOSE);
            if idle && sink.pending.is_empty() && sink.file.take().is_some() {
                closed += 1;
            }
            sink.file.is_some() || !sink.pending.is_empty()
        });
        self.open -= closed;
    }
}

/// The configured file output.
pub struct FileOutput {
    template: PathTemplate,
    format: FileFormat,
    extra: ExtraFields,
    flush_interval: Duration,
    buffer_size: usize,
    settings: Arc<Settings>,
    files: Files,
}

/// The events of one batch that go to one file.
struct Touched {
    path: PathBuf,
    /// The file's buffer length before this batch.
    mark: usize,
    /// Indices of the events in the batch.
    events: Vec<usize>,
    /// The events, encoded.
    bytes: Vec<u8>,
}

impl FileOutput {
    /// Builds the output from its validated parameters. Opens nothing.
    ///
    /// # Errors
    /// A bad path template, time format or count.
    pub fn from_params(params: &Params, ctx: &BuildContext) -> Result<Self, BuildError> {
        let format = match params.str("format")? {
            "msgpack" => FileFormat::Msgpack,
            "ltsv" => FileFormat::Ltsv,
            _ => FileFormat::Json,
        };
        let max_open = params.usize("max_open_files")?;
        if max_open == 0 {
            return Err(BuildError::param("max_open_files", "must be at least 1"));
        }
        Ok(Self {
            template: PathTemplate::compile(params.str("path")?, ctx)?,
            format,
            extra: ExtraFields::from_params(params)?,
            flush_interval: params.duration("flush_interval")?,
            buffer_size: usize::try_from(params.size("buffer_size")?).unwrap_or(usize::MAX),
            settings: Arc::new(Settings {
                append: params.bool("append")?,
                mkdir: params.bool("mkdir")?,
                max_open,
            }),
            files: Files::default(),
        })
    }

    /// Runs `f` on the files on Tokio's blocking pool.
    async fn blocking<T: Send + 'static>(
        &mut self,
        f: impl FnOnce(&mut Files, &Settings) -> T + Send + 'static,
    ) -> Result<T, PluginError> {
        let mut files = std::mem::take(&mut self.files);
        let settings = self.settings.clone();
        match tokio::task::spawn_blocking(move || {
            let out = f(&mut files, &settings);
            (files, out)
        })
        .await
        {
            Ok((files, out)) => {
                self.files = files;
                Ok(out)
            }
            Err(e) => {
                error!(error = %e, "file writer task failed; its buffered data is lost");
                Err(PluginError::with_source("file writer task failed", e))
            }
        }
    }

    /// Marks files as failing or working after a write, logging the first
    /// failure of a streak and the recovery.
    fn note(&mut self, results: &[WriteResult]) {
        for r in results {
            let Some(sink) = self.files.sinks.get_mut(&r.path) else {
                continue;
            };
            match &r.error {
                Some(e) if !sink.failing => {
                    error!(path = %r.path.display(), error = %e, "writing to file failed; will retry");
                }
                None if sink.failing => {
                    info!(path = %r.path.display(), "writing to file works again");
                }
                _ => {}
            }
            sink.failing = r.error.is_some();
        }
    }

    /// Writes every non-empty buffer; the first error, if any.
    async fn write_all_pending(&mut self) -> Result<(), PluginError> {
        let paths: Vec<PathBuf> = self
            .files
            .sinks
            .iter()
            .filter(|(_, s)| !s.pending.is_empty())
            .map(|(p, _)| p.clone())
            .collect();
        if paths.is_empty() {
            return Ok(());
        }
        let results = self
            .blocking(move |files, s| files.write_out(paths, s))
            .await?;
        self.note(&results);
        let failed: Vec<String> = results
            .iter()
            .filter_map(|r| {
                r.error
                    .as_ref()
                    .map(|e| format!("{}: {e}", r.path.display()))
            })
            .collect();
        if failed.is_empty() {
            Ok(())
        } else {
            Err(PluginError::new(format!(
                "writing files failed: {}",
                failed.join("; ")
            )))
        }
    }
}

/// Appends one record in `format` to `out`.
fn encode(
    format: FileFormat,
    fields: &BatchFields<'_>,
    record: &Record,
    time: ulog_engine::EventTime,
    out: &mut Vec<u8>,
) {
    match format {
        FileFormat::Json => {
            fields.write_json(record, time, out);
            out.push(b'\n');
        }
        FileFormat::Msgpack => {
            ulog_parsers::msgpack::write_map(out, &fields.to_map(record, time));
        }
        FileFormat::Ltsv => {
            let map = fields.to_map(record, time);
            for (i, (k, v)) in map.iter().enumerate() {
                if i > 0 {
                    out.push(b'\t');
                }
                ltsv_escape(k, out);
                out.push(b':');
                match v {
                    serde_json::Value::String(s) => ltsv_escape(s, out),
                    other => ltsv_escape(&other.to_string(), out),
                }
            }
            out.push(b'\n');
        }
    }
}

fn ltsv_escape(s: &str, out: &mut Vec<u8>) {
    for b in s.bytes() {
        match b {
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\\' => out.extend_from_slice(b"\\\\"),
            _ => out.push(b),
        }
    }
}

#[async_trait]
impl Output for FileOutput {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        if let Err(reason) = self.template.check_tag(&batch.tag) {
            return Delivery::Rejected(PluginError::new(reason));
        }
        let fields = self.extra.for_batch(&batch.tag);
        let mut touched: Vec<Touched> = Vec::new();
        let mut current: Option<(i64, usize)> = None;
        let mut refused = Vec::new();
        for (i, event) in batch.events.iter().enumerate() {
            let key = if self.template.uses_time() {
                self.template.time_key(event.time)
            } else {
                0
            };
            let slot = match current {
                Some((k, slot)) if k == key => slot,
                _ => {
                    let path = match self.template.render(&batch.tag, event.time) {
                        Ok(p) => p,
                        Err(reason) => {
                            refused.push(ItemFailure {
                                index: i,
                                error: PluginError::new(reason),
                                retryable: false,
                            });
                            continue;
                        }
                    };
                    let slot = match touched.iter().position(|t| t.path == path) {
                        Some(s) => s,
                        None => {
                            touched.push(Touched {
                                path,
                                mark: 0,
                                events: Vec::new(),
                                bytes: Vec::new(),
                            });
                            touched.len() - 1
                        }
                    };
                    current = Some((key, slot));
                    slot
                }
            };
            let t = &mut touched[slot];
            t.events.push(i);
            encode(
                self.format,
                &fields,
                &event.record,
                event.time,
                &mut t.bytes,
            );
        }
        drop(fields);
        if refused.len() == batch.len() {
            let reason = refused.swap_remove(0).error;
            return Delivery::Rejected(reason);
        }
        // Into the files' buffers: one lookup per file, not per event.
        for t in &mut touched {
            let sink = self.files.sinks.entry(t.path.clone()).or_default();
            t.mark = sink.pending.len();
            if sink.pending.is_empty() {
                sink.pending = std::mem::take(&mut t.bytes);
            } else {
                sink.pending.extend_from_slice(&t.bytes);
            }
        }

        let due: Vec<PathBuf> = touched
            .iter()
            .filter(|t| {
                self.files
                    .sinks
                    .get(&t.path)
                    .is_some_and(|s| s.failing || s.pending.len() >= self.buffer_size)
            })
            .map(|t| t.path.clone())
            .collect();
        let mut failures = refused;
        if !due.is_empty() {
            let results = match self.blocking(move |files, s| files.write_out(due, s)).await {
                Ok(r) => r,
                Err(e) => return Delivery::Retry(e),
            };
            self.note(&results);
            for r in results {
                let Some(error) = r.error else { continue };
                let Some(t) = touched.iter().find(|t| t.path == r.path) else {
                    continue;
                };
                if r.written > t.mark {
                    // Part of this batch reached the file: the rest stays
                    // buffered and goes out with the next write or flush.
                    warn!(path = %r.path.display(), error = %error, "file write was cut short; the rest stays buffered");
                    continue;
                }
                if let Some(sink) = self.files.sinks.get_mut(&r.path) {
                    sink.pending.truncate(t.mark - r.written);
                }
                let message = format!("writing {}: {error}", r.path.display());
                failures.extend(t.events.iter().map(|&index| ItemFailure {
                    index,
                    error: PluginError::new(message.clone()),
                    retryable: true,
                }));
            }
        }
        if failures.is_empty() {
            Delivery::Delivered
        } else if failures.len() == batch.len() && failures.iter().all(|f| f.retryable) {
            Delivery::Retry(failures.swap_remove(0).error)
        } else {
            Delivery::Partial(failures)
        }
    }

    async fn flush(&mut self) -> Result<(), PluginError> {
        let result = self.write_all_pending().await;
        self.files.close_idle();
        result
    }

    fn flush_interval(&self) -> Option<Duration> {
        Some(self.flush_interval)
    }

    async fn shutdown(&mut self) -> Result<(), PluginError> {
        let result = self.write_all_pending().await;
        let mut lost = Vec::new();
        for (path, sink) in self.files.sinks.drain() {
            if !sink.pending.is_empty() {
                lost.push(format!("{} ({} bytes)", path.display(), sink.pending.len()));
            }
        }
        self.files.open = 0;
        if !lost.is_empty() {
            error!(files = %lost.join(", "), "buffered data could not be written at shutdown and is lost");
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use ulog_engine::{Event, EventTime, Tag};

    fn output(dir: &std::path::Path, given: &[(&str, Value)]) -> FileOutput {
        let params = spec()
            .validate(
                &given
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect::<Vec<_>>(),
            )
            .unwrap();
        let ctx = BuildContext {
            id: "file#1".into(),
            base_dir: dir.to_path_buf(),
        };
        FileOutput::from_params(&params, &ctx).unwrap()
    }

    fn raw(text: &'static str) -> Record {
        Record::from_json_bytes(Bytes::from_static(text.as_bytes())).unwrap()
    }

    #[tokio::test]
    async fn lru_closes_files_beyond_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = output(
            dir.path(),
            &[
                ("path", "{tag}.log".into()),
                ("max_open_files", Value::Int(2)),
                ("buffer_size", Value::Size(0)),
            ],
        );
        for tag in ["a", "b", "c", "a"] {
            let batch = Batch::single(
                Tag::new_unchecked(tag),
                Event::new(EventTime::now(), raw("{\"x\":1}")),
            );
            assert!(matches!(out.write(&batch).await, Delivery::Delivered));
            assert!(out.files.open <= 2);
        }
        out.flush().await.unwrap();
        out.shutdown().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("a.log")).unwrap(),
            "{\"x\":1}\n{\"x\":1}\n"
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("c.log")).unwrap(),
            "{\"x\":1}\n"
        );
    }

    #[tokio::test]
    async fn buffered_until_flush_and_ltsv_msgpack_encode() {
        let dir = tempfile::tempdir().unwrap();
        let mut out = output(
            dir.path(),
            &[("path", "x.ltsv".into()), ("format", "ltsv".into())],
        );
        let batch = Batch::single(
            Tag::new_unchecked("t"),
            Event::new(EventTime::now(), raw("{\"a\":\"x\\ty\",\"n\":2}")),
        );
        assert!(matches!(out.write(&batch).await, Delivery::Delivered));
        assert!(
            !dir.path().join("x.ltsv").exists(),
            "nothing is written before a flush"
        );
        out.flush().await.unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.path().join("x.ltsv")).unwrap(),
            "a:x\\ty\tn:2\n"
        );

        let mut mp = output(
            dir.path(),
            &[
                ("path", "x.mp".into()),
                ("format", "msgpack".into()),
                ("tag_key", "tag".into()),
            ],
        );
        assert!(matches!(mp.write(&batch).await, Delivery::Delivered));
        mp.shutdown().await.unwrap();
        let bytes = std::fs::read(dir.path().join("x.mp")).unwrap();
        let mut expected = Vec::new();
        ulog_parsers::msgpack::write_json(
            &mut expected,
            &serde_json::json!({"a":"x\ty","n":2,"tag":"t"}),
        );
        assert_eq!(bytes, expected);
    }
}
