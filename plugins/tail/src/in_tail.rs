//! `input tail`: follows log files as they grow, like fluentd's in_tail and
//! Fluent Bit's tail input.
//!
//! One task per input polls its files: every `poll_interval` it checks each
//! file (has it grown, been truncated, renamed away or deleted?) and reads
//! what is new in chunks of `read_buffer_size`. Each chunk becomes one batch,
//! emitted before the next chunk is read, so a slow pipeline slows reading
//! down instead of filling memory. Every `refresh_interval` the globs are
//! expanded again to find new files.
//!
//! The position database records, per file, the offset up to which lines
//! were *accepted by the pipeline* (`emit` returned): it is written only after
//! that, atomically, so a crash never skips data — it may re-read the lines
//! emitted since the last write (at-least-once) — and a clean stop writes it
//! last, so a restart neither loses nor repeats anything.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use regex::bytes::Regex;
use tracing::{debug, error, info, warn};
use ulog_engine::{
    async_trait, Batch, BuildContext, BuildError, Emitter, Event, EventTime, Input, InputContext,
    ParamKind, ParamSpec, Params, PluginError, PluginKind, PluginSpec, Record, Rejected, Tag,
    Value,
};
use ulog_parsers::Parser;

use crate::lines::Piece;
use crate::multiline::{Multiline, Unit};
use crate::pos_file::{self, FileId, PosEntry};
use crate::tailer::{open_at, Opened, Start, Tailer};
use crate::{TailMonitor, TailStats};

/// Chunks read from one file before the others get their turn.
const CHUNKS_PER_TURN: usize = 16;
/// Parse-error warnings shown per window before the rest are only counted.
const WARNINGS_PER_WINDOW: u32 = 5;
/// Length of a parse-error warning window.
const WARNING_WINDOW: Duration = Duration::from_secs(10);

/// What to do with a line the parser refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OnError {
    /// Warn, count, and emit the line as `{message_key: line}`.
    Keep,
    /// Warn, count, and leave the line out.
    Log,
    /// Warn, count, and send `{message_key: line}` to the `errors` label
    /// with the parser's reason.
    Errors,
}

/// Everything the input was configured with, checked.
struct Config {
    patterns: Vec<String>,
    excludes: Vec<glob::Pattern>,
    tag: String,
    pos_file: Option<PathBuf>,
    read_from_head: bool,
    refresh_interval: Duration,
    poll_interval: Duration,
    rotate_wait: Duration,
    max_line_size: usize,
    read_size: usize,
    multiline_start: Option<Regex>,
    multiline_flush: Duration,
    path_key: Option<String>,
    on_error: OnError,
    parser: Arc<dyn Parser>,
    message_key: String,
    pos_write_interval: Duration,
}

/// The plugin's documentation and parameters.
pub fn spec() -> PluginSpec {
    let mut spec = PluginSpec::new(
        PluginKind::Input,
        "tail",
        "Follows log files as they grow, like `tail -F`: reads new lines from files matching \
         glob patterns, survives rotation by rename and by copytruncate, picks up files that \
         appear later, and remembers in a position database how far each file was handed to \
         the pipeline so a restart resumes without losing lines.",
    )
    .param(ParamSpec::required(
        "path",
        ParamKind::Any,
        "The files to follow: a glob (`/var/log/*.log`, `**` allowed) or a list of globs. \
         Relative paths are relative to the routes file.",
    ))
    .param(ParamSpec::with_default(
        "exclude_path",
        ParamKind::List(Box::new(ParamKind::Str)),
        Value::List(Vec::new()),
        "Globs of files never to follow, matched against the full path (`/var/log/*.gz`).",
    ))
    .param(ParamSpec::required(
        "tag",
        ParamKind::Str,
        "The tag of the events. A `*` is replaced by the file's path with `/` turned into `.` \
         (`app.*` + `/var/log/a.log` → `app.var.log.a.log`); other characters not allowed in \
         tags become `_`.",
    ))
    .param(ParamSpec::optional(
        "pos_file",
        ParamKind::Str,
        "The position database: where each file's read position is kept across restarts. \
         Strongly recommended; without it every start follows `read_from_head`. Give each \
         tail input its own file.",
    ))
    .param(ParamSpec::with_default(
        "read_from_head",
        ParamKind::Bool,
        false,
        "For files found at startup that the position database does not know: read them from \
         the start (true) or only what is written from now on (false). Files that appear \
         later are always read from the start.",
    ))
    .param(ParamSpec::with_default(
        "refresh_interval",
        ParamKind::Duration,
        Duration::from_secs(5),
        "How often the globs are expanded again to find new files.",
    ))
    .param(ParamSpec::with_default(
        "poll_interval",
        ParamKind::Duration,
        Duration::from_millis(250),
        "How often followed files are checked for new data, rotation and truncation.",
    ))
    .param(ParamSpec::with_default(
        "rotate_wait",
        ParamKind::Duration,
        Duration::from_secs(5),
        "After a file is renamed away, keep reading the old file this long (for writers that \
         have not reopened yet); it is closed once this time has passed and it is read to \
         its end.",
    ))
    .param(ParamSpec::with_default(
        "max_line_size",
        ParamKind::Size,
        Value::Size(1 << 20),
        "Longest line (or multi-line record) kept. Longer ones are skipped with a warning \
         naming the file and offset, and counted; reading goes on after them.",
    ))
    .param(ParamSpec::with_default(
        "read_buffer_size",
        ParamKind::Size,
        Value::Size(256 << 10),
        "How much is read from a file at a time; what one read holds becomes one batch.",
    ))
    .param(ParamSpec::optional(
        "multiline_start",
        ParamKind::Regex,
        "A regex matching the first line of a record (`/^\\d{4}-\\d\\d-\\d\\d/`). Lines that do \
         not match are appended to the record before them with `\\n`, so a stack trace \
         becomes one event.",
    ))
    .param(ParamSpec::with_default(
        "multiline_flush_interval",
        ParamKind::Duration,
        Duration::from_secs(1),
        "With `multiline_start`: emit the last record once no line has arrived for this long.",
    ))
    .param(ParamSpec::optional(
        "path_key",
        ParamKind::Str,
        "When set, every event gets a field of this name holding the file's path.",
    ))
    .param(ParamSpec::with_default(
        "on_error",
        ParamKind::OneOf(&["errors", "keep", "log"]),
        "errors",
        "Lines the `format` cannot parse are always warned about (the first few per 10 s, \
         then counted) and counted; `errors` sends `{message_key: line}` to the `errors` label \
         with the parser's reason in `_error`; `keep` emits them as `{message_key: line}`; \
         `log` leaves them out.",
    ))
    .param(ParamSpec::with_default(
        "pos_write_interval",
        ParamKind::Duration,
        Duration::from_secs(1),
        "How often, at most, the position database is rewritten while lines flow (it is \
         always written when files are added and on stop). Shorter means fewer lines read \
         twice after a crash; 0 writes after every polling round.",
    ));
    for p in ulog_parsers::format_params("none") {
        spec = spec.param(p);
    }
    spec
}

fn resolve_glob(ctx: &BuildContext, param: &str, text: &str) -> Result<String, BuildError> {
    let resolved = ctx.resolve(text);
    let s = resolved
        .to_str()
        .ok_or_else(|| BuildError::param(param, format!("{text:?} is not valid UTF-8")))?
        .to_string();
    glob::Pattern::new(&s)
        .map_err(|e| BuildError::param(param, format!("invalid glob {text:?}: {e}")))?;
    Ok(s)
}

fn positive(params: &Params, name: &str) -> Result<Duration, BuildError> {
    let d = params.duration(name)?;
    if d.is_zero() {
        return Err(BuildError::param(name, "must be longer than 0"));
    }
    Ok(d)
}

fn size_in(params: &Params, name: &str, min: u64, max: u64) -> Result<usize, BuildError> {
    let s = params.size(name)?;
    if s < min || s > max {
        return Err(BuildError::param(
            name,
            format!("must be between {min} and {max} bytes, got {s}"),
        ));
    }
    Ok(s as usize)
}

/// Builds a tail input from its parameters (no I/O happens here).
pub fn build(
    params: &Params,
    ctx: &BuildContext,
    monitor: &TailMonitor,
) -> Result<Box<dyn Input>, BuildError> {
    let path_texts: Vec<String> = match params.get("path") {
        Some(Value::Str(s)) => vec![s.clone()],
        Some(Value::List(items)) => items
            .iter()
            .map(|v| match v {
                Value::Str(s) => Ok(s.clone()),
                other => Err(BuildError::param(
                    "path",
                    format!(
                        "expected a string or a list of strings, found a {} in the list",
                        other.type_name()
                    ),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(BuildError::param(
                "path",
                format!(
                    "expected a glob string or a list of them, found {}",
                    other.type_name()
                ),
            ))
        }
        None => return Err(BuildError::param("path", "`tail` needs a value for `path`")),
    };
    if path_texts.is_empty() {
        return Err(BuildError::param("path", "give at least one path"));
    }
    let patterns = path_texts
        .iter()
        .map(|p| resolve_glob(ctx, "path", p))
        .collect::<Result<Vec<_>, _>>()?;
    let excludes = params
        .str_list("exclude_path")?
        .iter()
        .map(|p| {
            resolve_glob(ctx, "exclude_path", p)
                .map(|s| glob::Pattern::new(&s).expect("checked by resolve_glob"))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let tag = params.str("tag")?.to_string();
    if let Err(e) = Tag::parse(&tag.replace('*', "x")) {
        return Err(BuildError::param("tag", e.to_string()));
    }
    let multiline_start = match params.opt_str("multiline_start")? {
        Some(re) => Some(
            Regex::new(re)
                .map_err(|e| BuildError::param("multiline_start", format!("invalid regex: {e}")))?,
        ),
        None => None,
    };
    let on_error = match params.str("on_error")? {
        "log" => OnError::Log,
        "errors" => OnError::Errors,
        _ => OnError::Keep,
    };
    let config = Config {
        patterns,
        excludes,
        tag,
        pos_file: params.opt_str("pos_file")?.map(|p| ctx.resolve(p)),
        read_from_head: params.bool("read_from_head")?,
        refresh_interval: positive(params, "refresh_interval")?,
        poll_interval: positive(params, "poll_interval")?,
        rotate_wait: params.duration("rotate_wait")?,
        max_line_size: size_in(params, "max_line_size", 1, 1 << 30)?,
        read_size: size_in(params, "read_buffer_size", 1, 64 << 20)?,
        multiline_start,
        multiline_flush: positive(params, "multiline_flush_interval")?,
        path_key: params.opt_str("path_key")?.map(str::to_string),
        on_error,
        parser: ulog_parsers::build_parser(params)?,
        message_key: params
            .opt_str("message_key")
            .ok()
            .flatten()
            .unwrap_or("message")
            .to_string(),
        pos_write_interval: params.duration("pos_write_interval")?,
    };
    let stats = monitor.register(&ctx.id);
    Ok(Box::new(TailInput {
        config: Arc::new(config),
        stats,
    }))
}

/// The tail input, built and waiting to run.
struct TailInput {
    config: Arc<Config>,
    stats: Arc<TailStats>,
}

#[async_trait]
impl Input for TailInput {
    async fn run(self: Box<Self>, ctx: InputContext) -> Result<(), PluginError> {
        let mut runner = Runner {
            sink: Sink {
                cfg: self.config.clone(),
                id: ctx.id.clone(),
                emitter: ctx.emitter,
                stats: self.stats.clone(),
                warn_limit: WarnLimiter::new(),
                rejected: Vec::new(),
                dirty: false,
            },
            cfg: self.config,
            shutdown: ctx.shutdown,
            slots: BTreeMap::new(),
            rotated: Vec::new(),
            open_warned: HashSet::new(),
            last_pos_write: Instant::now(),
            pos_urgent: false,
        };
        runner.run().await
    }
}

/// The input stopped because the pipeline no longer accepts events.
#[derive(Debug)]
struct Stopped;

/// Warns about the first few problems of a window and counts the rest, so
/// a file full of garbage cannot flood the log.
struct WarnLimiter {
    window: Instant,
    shown: u32,
    suppressed: u64,
}

impl WarnLimiter {
    fn new() -> Self {
        Self {
            window: Instant::now(),
            shown: 0,
            suppressed: 0,
        }
    }

    fn allow(&mut self, id: &str) -> bool {
        let now = Instant::now();
        if now.duration_since(self.window) >= WARNING_WINDOW {
            self.report(id);
            self.window = now;
            self.shown = 0;
        }
        if self.shown < WARNINGS_PER_WINDOW {
            self.shown += 1;
            true
        } else {
            self.suppressed += 1;
            false
        }
    }

    fn report(&mut self, id: &str) {
        if self.suppressed > 0 {
            warn!(input = %id, count = self.suppressed, "more lines failed to parse (warnings suppressed)");
            self.suppressed = 0;
        }
    }
}

/// Turns lines into events and hands them to the pipeline.
struct Sink {
    cfg: Arc<Config>,
    id: Arc<str>,
    emitter: Emitter,
    stats: Arc<TailStats>,
    warn_limit: WarnLimiter,
    /// Lines refused by the parser, for the `errors` label.
    rejected: Vec<Rejected>,
    /// Some file's committed offset changed since the last position write.
    dirty: bool,
}

fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl Sink {
    /// Assembles `pieces` into records, emits them as one batch, and then —
    /// only then — moves the file's committed offset. With `last`, the
    /// record still being assembled is finished too (the file ends here).
    async fn deliver(
        &mut self,
        t: &mut Tailer,
        pieces: Vec<Piece>,
        last: bool,
    ) -> Result<(), Stopped> {
        let mut units = Vec::with_capacity(pieces.len());
        match &mut t.multiline {
            None => units.extend(pieces.into_iter().map(|p| match p {
                Piece::Line { bytes, .. } => Unit::Text(bytes),
                Piece::TooLong { start, len, .. } => Unit::Skipped { start, len },
            })),
            Some(ml) => {
                let now = Instant::now();
                for p in pieces {
                    ml.push(p, now, &mut units);
                }
                if last {
                    units.extend(ml.finish());
                }
            }
        }
        self.emit_units(t, units).await
    }

    /// Emits the multi-line record whose flush interval has passed.
    async fn flush_multiline(&mut self, t: &mut Tailer, now: Instant) -> Result<(), Stopped> {
        let Some(unit) = t.multiline.as_mut().and_then(|m| m.flush_due(now)) else {
            return Ok(());
        };
        self.emit_units(t, vec![unit]).await
    }

    async fn emit_units(&mut self, t: &mut Tailer, units: Vec<Unit>) -> Result<(), Stopped> {
        let commit_to = t.commit_point();
        let now = EventTime::now();
        let mut events = Vec::with_capacity(units.len());
        for unit in units {
            match unit {
                Unit::Text(bytes) => {
                    if let Some(event) = self.make_event(t, bytes, now) {
                        events.push(event);
                    }
                }
                Unit::Skipped { start, len } => {
                    add(&self.stats.lines_too_long, 1);
                    warn!(
                        input = %self.id,
                        path = %t.path.display(),
                        offset = start,
                        length = len,
                        max_line_size = self.cfg.max_line_size,
                        "line longer than max_line_size skipped"
                    );
                }
            }
        }
        if !events.is_empty() {
            let n = events.len() as u64;
            if self
                .emitter
                .emit(Batch::new(t.tag.clone(), events))
                .await
                .is_err()
            {
                debug!(input = %self.id, path = %t.path.display(), "pipeline stopped; batch not accepted, its lines stay unrecorded");
                return Err(Stopped);
            }
            add(&self.stats.events, n);
        }
        if !self.rejected.is_empty() {
            let rejected = std::mem::take(&mut self.rejected);
            if self
                .emitter
                .reject(t.tag.clone(), &self.id, rejected)
                .await
                .is_err()
            {
                return Err(Stopped);
            }
        }
        if commit_to != t.committed {
            t.committed = commit_to;
            self.dirty = true;
        }
        Ok(())
    }

    fn make_event(&mut self, t: &Tailer, bytes: Bytes, now: EventTime) -> Option<Event> {
        let (time, mut record) = match self.cfg.parser.parse(bytes.clone()) {
            Ok(parsed) => (parsed.time.unwrap_or(now), parsed.record),
            Err(e) => {
                add(&self.stats.parse_errors, 1);
                if self.warn_limit.allow(&self.id) {
                    let excerpt = String::from_utf8_lossy(&bytes[..bytes.len().min(120)]);
                    warn!(
                        input = %self.id,
                        path = %t.path.display(),
                        error = %e,
                        line = %excerpt,
                        kept = self.cfg.on_error == OnError::Keep,
                        "line could not be parsed"
                    );
                }
                let mut record = Record::new();
                record.insert(
                    self.cfg.message_key.clone(),
                    serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                );
                match self.cfg.on_error {
                    OnError::Log => return None,
                    OnError::Errors => {
                        self.rejected.push(Rejected {
                            event: Event::new(now, record),
                            reason: e.to_string(),
                        });
                        return None;
                    }
                    OnError::Keep => (now, record),
                }
            }
        };
        if let (Some(key), Some(value)) = (&self.cfg.path_key, &t.path_value) {
            record.insert(key.clone(), value.clone());
        }
        Some(Event::new(time, record))
    }
}

/// What a check of one followed path found.
enum PathState {
    /// The path still names the file we follow.
    Same,
    /// The path names another file (rotated by rename, new file created).
    Other(FileId),
    /// Nothing is at the path.
    Missing,
    /// The check failed.
    Error(std::io::Error),
}

/// What a check of one open descriptor found.
#[derive(Clone, Copy)]
struct FdState {
    size: u64,
    nlink: u64,
}

/// Blocking checks of every path and descriptor in one go.
struct Probe {
    slots: Vec<(PathState, Option<FdState>)>,
    rotated: Vec<Option<FdState>>,
}

fn fd_state(file: &std::fs::File) -> Option<FdState> {
    use std::os::unix::fs::MetadataExt;
    file.metadata().ok().map(|m| FdState {
        size: m.len(),
        nlink: m.nlink(),
    })
}

/// A followed path and, when a file is open for it, its descriptor and id.
type SlotRef = (PathBuf, Option<(Arc<std::fs::File>, FileId)>);

fn probe(slots: Vec<SlotRef>, rotated: Vec<Arc<std::fs::File>>) -> Probe {
    let slots = slots
        .into_iter()
        .map(|(path, open)| {
            let state = match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => match &open {
                    Some((_, id)) if FileId::of(&m) == *id => PathState::Same,
                    _ => PathState::Other(FileId::of(&m)),
                },
                Ok(_) => PathState::Missing,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => PathState::Missing,
                Err(e) => PathState::Error(e),
            };
            let fd = open.as_ref().and_then(|(f, _)| fd_state(f));
            (state, fd)
        })
        .collect();
    let rotated = rotated.iter().map(|f| fd_state(f)).collect();
    Probe { slots, rotated }
}

/// Expands the globs (blocking): every regular file matched and not
/// excluded, with its id.
fn expand(cfg: &Config) -> Vec<(PathBuf, FileId)> {
    let mut seen = HashSet::new();
    // Never follow our own position database (a glob over its directory
    // would turn every write of it into events, and those into writes).
    if let Some(pos) = &cfg.pos_file {
        seen.insert(pos.clone());
        let mut tmp = pos.as_os_str().to_os_string();
        tmp.push(".tmp");
        seen.insert(PathBuf::from(tmp));
    }
    let mut found = Vec::new();
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    for pattern in &cfg.patterns {
        let paths = match glob::glob_with(pattern, opts) {
            Ok(paths) => paths,
            Err(e) => {
                error!(pattern = %pattern, error = %e, "invalid glob");
                continue;
            }
        };
        for entry in paths {
            let path = match entry {
                Ok(p) => p,
                Err(e) => {
                    debug!(path = %e.path().display(), error = %e.error(), "cannot look into a directory while expanding a glob");
                    continue;
                }
            };
            if cfg
                .excludes
                .iter()
                .any(|x| x.matches_path_with(&path, opts))
            {
                continue;
            }
            if !seen.insert(path.clone()) {
                continue;
            }
            match std::fs::metadata(&path) {
                Ok(m) if m.is_file() => found.push((path, FileId::of(&m))),
                _ => {}
            }
        }
    }
    found
}

/// Where a rotated file is now, so the position database can find it after
/// a restart: the descriptor's current name (Linux), else where it was.
fn current_path(t: &Tailer) -> Option<PathBuf> {
    use std::os::fd::AsRawFd;
    let file = t.file();
    let link = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    match std::fs::read_link(link) {
        Ok(p) if p.to_string_lossy().ends_with(" (deleted)") => None,
        Ok(p) => Some(p),
        Err(_) => Some(t.path.clone()),
    }
}

/// Replaces `*` in a tag template by the sanitised path.
pub(crate) fn expand_tag(template: &str, path: &Path) -> Tag {
    if !template.contains('*') {
        return Tag::new_unchecked(template);
    }
    let mut part = String::with_capacity(path.as_os_str().len());
    for ch in path.to_string_lossy().chars() {
        let c = match ch {
            '/' => '.',
            c if c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.' => c,
            _ => '_',
        };
        part.push(c);
    }
    let joined = template.replace('*', &part);
    let mut tag = String::with_capacity(joined.len());
    for c in joined.chars() {
        if c == '.' && (tag.is_empty() || tag.ends_with('.')) {
            continue;
        }
        tag.push(c);
    }
    while tag.len() > ulog_engine::tag::MAX_TAG_LEN || tag.ends_with('.') {
        tag.pop();
    }
    match Tag::parse(&tag) {
        Ok(t) => t,
        // Cannot happen after the clean-up above; the template itself was
        // checked when the input was built.
        Err(_) => Tag::new_unchecked(&template.replace('*', "file")),
    }
}

/// The input's running state.
struct Runner {
    cfg: Arc<Config>,
    sink: Sink,
    shutdown: ulog_engine::CancellationToken,
    /// Followed paths; `None` while a rotated path waits for its new file.
    slots: BTreeMap<PathBuf, Option<Tailer>>,
    /// Files renamed away or deleted, read until they end.
    rotated: Vec<Tailer>,
    /// Paths whose open failure was already warned about.
    open_warned: HashSet<PathBuf>,
    last_pos_write: Instant,
    /// A file was added: write the position database without waiting.
    pos_urgent: bool,
}

impl Runner {
    async fn run(&mut self) -> Result<(), PluginError> {
        let known = self.load_positions().await?;
        self.refresh(Some(&known)).await;
        self.resume_rotated(&known).await;
        self.write_positions(true).await;
        let mut next_refresh = Instant::now() + self.cfg.refresh_interval;
        info!(input = %self.sink.id, files = self.slots.values().flatten().count(), "tail started");
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            if Instant::now() >= next_refresh {
                self.refresh(None).await;
                next_refresh = Instant::now() + self.cfg.refresh_interval;
            }
            let more = match self.round().await {
                Ok(more) => more,
                Err(Stopped) => break,
            };
            self.write_positions(false).await;
            if more {
                tokio::task::yield_now().await;
            } else {
                tokio::select! {
                    _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                    _ = self.shutdown.cancelled() => {}
                }
            }
        }
        self.write_positions(true).await;
        self.sink.warn_limit.report(&self.sink.id);
        let s = &self.sink.stats;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        info!(
            input = %self.sink.id,
            events = get(&s.events),
            files_opened = get(&s.files_opened),
            rotations = get(&s.rotations),
            truncations = get(&s.truncations),
            lines_too_long = get(&s.lines_too_long),
            parse_errors = get(&s.parse_errors),
            "tail stopped"
        );
        Ok(())
    }

    /// Reads the position database (an unreadable one stops the input: going
    /// on would silently re-read or skip files).
    async fn load_positions(&mut self) -> Result<Vec<PosEntry>, PluginError> {
        let Some(path) = self.cfg.pos_file.clone() else {
            return Ok(Vec::new());
        };
        let p = path.clone();
        let loaded = tokio::task::spawn_blocking(move || {
            if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            pos_file::load(&p)
        })
        .await
        .map_err(|e| PluginError::new(format!("loading the position database: {e}")))?;
        let (entries, problems) = loaded.map_err(|e| {
            PluginError::with_source(
                format!("reading the position database {}", path.display()),
                e,
            )
        })?;
        for p in &problems {
            warn!(input = %self.sink.id, pos_file = %path.display(), problem = %p, "ignoring a damaged line of the position database; that file starts as if new");
        }
        debug!(input = %self.sink.id, entries = entries.len(), "position database loaded");
        Ok(entries)
    }

    /// Writes the position database when something changed and the write
    /// interval has passed (or always, with `force`).
    async fn write_positions(&mut self, force: bool) {
        let Some(path) = self.cfg.pos_file.clone() else {
            return;
        };
        if !self.sink.dirty && !self.pos_urgent && !force {
            return;
        }
        // A file just added is written at once: were it missing after a
        // crash, a restart would take it for a file found at startup and
        // (without read_from_head) skip what it holds.
        if !force && !self.pos_urgent && self.last_pos_write.elapsed() < self.cfg.pos_write_interval
        {
            return;
        }
        let mut entries: Vec<PosEntry> = self
            .slots
            .iter()
            .filter_map(|(path, t)| {
                t.as_ref().map(|t| PosEntry {
                    path: path.clone(),
                    offset: t.committed,
                    id: t.id,
                })
            })
            .collect();
        for t in self.rotated.iter().filter(|t| !t.deleted) {
            if let Some(p) = current_path(t) {
                entries.push(PosEntry {
                    path: p,
                    offset: t.committed,
                    id: t.id,
                });
            }
        }
        self.sink.dirty = false;
        self.pos_urgent = false;
        self.last_pos_write = Instant::now();
        let p = path.clone();
        let res = tokio::task::spawn_blocking(move || pos_file::store(&p, &entries)).await;
        let err = match res {
            Ok(Ok(())) => {
                add(&self.sink.stats.pos_writes, 1);
                return;
            }
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        add(&self.sink.stats.pos_write_errors, 1);
        self.sink.dirty = true;
        warn!(input = %self.sink.id, pos_file = %path.display(), error = %err, "could not write the position database; will retry (a restart now would re-read lines)");
    }

    fn new_tailer(&self, path: PathBuf, opened: Opened) -> Tailer {
        let tag = expand_tag(&self.cfg.tag, &path);
        let path_value = self
            .cfg
            .path_key
            .as_ref()
            .map(|_| serde_json::Value::String(path.to_string_lossy().into_owned()));
        let multiline =
            self.cfg.multiline_start.as_ref().map(|re| {
                Multiline::new(re.clone(), self.cfg.multiline_flush, self.cfg.max_line_size)
            });
        Tailer::new(
            path,
            opened,
            tag,
            path_value,
            self.cfg.max_line_size,
            multiline,
        )
    }

    /// Opens `path` and starts following it from `start`.
    async fn open(&mut self, path: PathBuf, start: Start) -> Option<Tailer> {
        let p = path.clone();
        let opened = tokio::task::spawn_blocking(move || open_at(&p, start)).await;
        let opened = match opened {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => {
                if e.kind() != std::io::ErrorKind::NotFound && self.open_warned.insert(path.clone())
                {
                    warn!(input = %self.sink.id, path = %path.display(), error = %e, "cannot open file; will try again");
                }
                return None;
            }
            Err(e) => {
                error!(input = %self.sink.id, path = %path.display(), error = %e, "open task failed");
                return None;
            }
        };
        self.open_warned.remove(&path);
        if opened.shrunk {
            warn!(input = %self.sink.id, path = %path.display(), size = opened.size, "file is shorter than its recorded position (truncated while stopped); reading it from the start");
        }
        add(&self.sink.stats.files_opened, 1);
        info!(input = %self.sink.id, path = %path.display(), offset = opened.offset, "following file");
        self.sink.dirty = true;
        Some(self.new_tailer(path, opened))
    }

    /// Expands the globs and starts following new files. At startup
    /// (`known` given) files are placed by the position database, else by
    /// `read_from_head`; later, new files are read from the start.
    async fn refresh(&mut self, known: Option<&[PosEntry]>) {
        let cfg = self.cfg.clone();
        let found = match tokio::task::spawn_blocking(move || expand(&cfg)).await {
            Ok(found) => found,
            Err(e) => {
                error!(input = %self.sink.id, error = %e, "glob expansion failed");
                return;
            }
        };
        let found_paths: HashSet<&PathBuf> = found.iter().map(|(p, _)| p).collect();
        // A rotated path that no glob matches any more stops being watched.
        self.slots
            .retain(|path, t| t.is_some() || found_paths.contains(path));
        for (path, id) in &found {
            if self.slots.contains_key(path) {
                continue;
            }
            let start = match known {
                None => Start::Head,
                Some(known) => {
                    if let Some(e) = known.iter().find(|e| e.id == *id) {
                        Start::Offset(e.offset)
                    } else if known.iter().any(|e| e.path == *path) {
                        // A different file now has the recorded name: it was
                        // rotated while ulog was stopped, so it is new.
                        Start::Head
                    } else if self.cfg.read_from_head {
                        Start::Head
                    } else {
                        Start::End
                    }
                }
            };
            self.place(path, *id, start).await;
        }
    }

    /// Starts following the file `id` found at `path`: nothing when it is
    /// already followed under another name (a link), the rotated tailer when
    /// it is a rotated file the globs match again (`app.log.1`), else a new
    /// tailer reading from `start`.
    async fn place(&mut self, path: &Path, id: FileId, start: Start) {
        if self.slots.values().flatten().any(|t| t.id == id) {
            return;
        }
        if let Some(i) = self.rotated.iter().position(|t| t.id == id && !t.deleted) {
            let mut t = self.rotated.remove(i);
            debug!(input = %self.sink.id, from = %t.path.display(), to = %path.display(), "rotated file matched again; following it under its new name");
            t.deadline = None;
            t.tag = expand_tag(&self.cfg.tag, path);
            if t.path_value.is_some() {
                t.path_value = Some(serde_json::Value::String(
                    path.to_string_lossy().into_owned(),
                ));
            }
            t.path = path.to_path_buf();
            self.slots.insert(path.to_path_buf(), Some(t));
            self.pos_urgent = true;
            return;
        }
        if let Some(t) = self.open(path.to_path_buf(), start).await {
            // The file may have been replaced between the check and the open.
            if t.id != id && self.slots.values().flatten().any(|o| o.id == t.id) {
                return;
            }
            self.slots.insert(path.to_path_buf(), Some(t));
            self.pos_urgent = true;
        }
    }

    /// After a restart, goes on reading rotated files the database knows
    /// about (that no glob matches) until they end.
    async fn resume_rotated(&mut self, known: &[PosEntry]) {
        for e in known {
            let followed = self.slots.values().flatten().any(|t| t.id == e.id);
            if followed {
                continue;
            }
            let same = std::fs::metadata(&e.path)
                .map(|m| m.is_file() && FileId::of(&m) == e.id)
                .unwrap_or(false);
            if !same {
                debug!(input = %self.sink.id, path = %e.path.display(), "dropping the position of a file that is gone");
                continue;
            }
            if let Some(mut t) = self.open(e.path.clone(), Start::Offset(e.offset)).await {
                if t.id != e.id {
                    continue;
                }
                info!(input = %self.sink.id, path = %t.path.display(), "finishing a rotated file recorded by the last run");
                t.deadline = Some(Instant::now() + self.cfg.rotate_wait);
                self.rotated.push(t);
            }
        }
    }

    /// One pass over every file: rotation and truncation checks, reading,
    /// finishing rotated files, multi-line flushes. Returns whether some file
    /// still has data to read right away.
    async fn round(&mut self) -> Result<bool, Stopped> {
        let slot_list: Vec<_> = self
            .slots
            .iter()
            .map(|(p, t)| (p.clone(), t.as_ref().map(|t| (t.file(), t.id))))
            .collect();
        let rotated_list: Vec<_> = self.rotated.iter().map(Tailer::file).collect();
        let probed = match tokio::task::spawn_blocking(move || probe(slot_list, rotated_list)).await
        {
            Ok(p) => p,
            Err(e) => {
                error!(input = %self.sink.id, error = %e, "file check task failed");
                return Ok(false);
            }
        };
        let now = Instant::now();
        for (t, fd) in self.rotated.iter_mut().zip(probed.rotated) {
            if let Some(fd) = fd {
                t.size = fd.size;
                if fd.nlink == 0 {
                    t.deleted = true;
                }
            }
        }
        let mut reopen = Vec::new();
        let paths: Vec<PathBuf> = self.slots.keys().cloned().collect();
        for (path, (state, fd)) in paths.into_iter().zip(probed.slots) {
            let slot = self.slots.get_mut(&path).expect("slot listed above");
            let Some(mut t) = slot.take() else {
                if let PathState::Other(id) = state {
                    reopen.push((path, id));
                }
                continue;
            };
            if let Some(fd) = fd {
                t.size = fd.size;
            }
            match state {
                PathState::Same => {
                    if let Some(fd) = fd.filter(|fd| fd.size < t.splitter.read_offset()) {
                        add(&self.sink.stats.truncations, 1);
                        info!(input = %self.sink.id, path = %path.display(), size = fd.size, offset = t.splitter.read_offset(), "file was truncated (copytruncate); reading it again from the start");
                        let partial: Vec<Piece> = t.splitter.take_partial().into_iter().collect();
                        if let Err(s) = self.sink.deliver(&mut t, partial, true).await {
                            *self.slots.get_mut(&path).expect("slot") = Some(t);
                            return Err(s);
                        }
                        t.splitter.reset(0);
                        t.committed = 0;
                        self.sink.dirty = true;
                    }
                    *self.slots.get_mut(&path).expect("slot") = Some(t);
                }
                PathState::Other(_) | PathState::Missing => {
                    let deleted =
                        matches!(state, PathState::Missing) && fd.is_some_and(|fd| fd.nlink == 0);
                    if deleted {
                        info!(input = %self.sink.id, path = %path.display(), "file was deleted; reading what is left, then closing it");
                        t.deleted = true;
                        t.deadline = Some(now);
                    } else {
                        add(&self.sink.stats.rotations, 1);
                        info!(input = %self.sink.id, path = %path.display(), rotate_wait = ?self.cfg.rotate_wait, "file was rotated; finishing the old file");
                        t.deadline = Some(now + self.cfg.rotate_wait);
                    }
                    self.rotated.push(t);
                    self.sink.dirty = true;
                    if let PathState::Other(id) = state {
                        reopen.push((path, id));
                    }
                }
                PathState::Error(e) => {
                    if self.open_warned.insert(path.clone()) {
                        warn!(input = %self.sink.id, path = %path.display(), error = %e, "cannot check file; still reading the open descriptor");
                    }
                    *self.slots.get_mut(&path).expect("slot") = Some(t);
                }
            }
        }
        for (path, id) in reopen {
            self.place(&path, id, Start::Head).await;
        }

        let mut more = false;
        // Rotated files first: their lines were written before the new ones.
        for t in self.rotated.iter_mut() {
            more |= pump(&mut self.sink, t, &self.shutdown).await?;
        }
        for t in self.slots.values_mut().flatten() {
            more |= pump(&mut self.sink, t, &self.shutdown).await?;
        }

        // Close rotated files that are finished.
        let now = Instant::now();
        let mut i = 0;
        while i < self.rotated.len() {
            let t = &mut self.rotated[i];
            let done = t.at_eof()
                && match t.deadline {
                    Some(d) => now >= d,
                    None => true,
                };
            if !done || self.shutdown.is_cancelled() {
                i += 1;
                continue;
            }
            // Read what arrived since the check, then the unfinished line.
            loop {
                match t.read_chunk(self.cfg.read_size).await {
                    Ok(0) => break,
                    Ok(n) => {
                        add(&self.sink.stats.bytes_read, n as u64);
                        let pieces = t.take_pieces();
                        self.sink.deliver(t, pieces, false).await?;
                    }
                    Err(e) => {
                        warn!(input = %self.sink.id, path = %t.path.display(), error = %e, "read failed while finishing a rotated file");
                        break;
                    }
                }
            }
            let partial: Vec<Piece> = t.splitter.take_partial().into_iter().collect();
            self.sink.deliver(t, partial, true).await?;
            let t = self.rotated.remove(i);
            add(&self.sink.stats.files_closed, 1);
            info!(input = %self.sink.id, path = %t.path.display(), deleted = t.deleted, "closed finished file");
            self.sink.dirty = true;
        }

        if self.cfg.multiline_start.is_some() {
            let now = Instant::now();
            for t in self
                .rotated
                .iter_mut()
                .chain(self.slots.values_mut().flatten())
            {
                self.sink.flush_multiline(t, now).await?;
            }
        }
        Ok(more)
    }
}

/// Reads one file's new data, a few chunks at most, emitting a batch per
/// chunk. Returns whether data is left to read.
async fn pump(
    sink: &mut Sink,
    t: &mut Tailer,
    shutdown: &ulog_engine::CancellationToken,
) -> Result<bool, Stopped> {
    for _ in 0..CHUNKS_PER_TURN {
        if t.at_eof() || shutdown.is_cancelled() {
            return Ok(false);
        }
        match t.read_chunk(sink.cfg.read_size).await {
            Ok(0) => {
                // Shorter than it was: the truncation check will see it.
                t.size = t.splitter.read_offset();
                return Ok(false);
            }
            Ok(n) => {
                t.read_failing = false;
                add(&sink.stats.bytes_read, n as u64);
                let pieces = t.take_pieces();
                sink.deliver(t, pieces, false).await?;
            }
            Err(e) => {
                if !t.read_failing {
                    warn!(input = %sink.id, path = %t.path.display(), offset = t.splitter.read_offset(), error = %e, "read failed; retrying every poll_interval");
                    t.read_failing = true;
                }
                return Ok(false);
            }
        }
    }
    Ok(!t.at_eof())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_take_the_sanitised_path() {
        let t = |tpl: &str, p: &str| expand_tag(tpl, Path::new(p)).as_str().to_string();
        assert_eq!(t("app.*", "/var/log/a.log"), "app.var.log.a.log");
        assert_eq!(t("*", "/var/log/a.log"), "var.log.a.log");
        assert_eq!(t("x.*.y", "/a b/ü+c.log"), "x.a_b.__c.log.y");
        assert_eq!(t("fixed", "/whatever"), "fixed");
        assert_eq!(t("a.*", "//double//slash/"), "a.double.slash");
        let long = format!("/{}", "d/".repeat(300));
        let tag = t("app.*", &long);
        assert!(tag.len() <= 256 && Tag::parse(&tag).is_ok(), "{tag}");
    }

    fn params(pairs: &[(&str, Value)]) -> Result<Params, Vec<ulog_engine::params::ParamError>> {
        let given: Vec<(String, Value)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        spec().validate(&given)
    }

    fn build_err(pairs: &[(&str, Value)]) -> BuildError {
        let p = params(pairs).expect("valid params");
        let ctx = BuildContext {
            id: "tail#1".into(),
            base_dir: PathBuf::from("/base"),
        };
        match build(&p, &ctx, &TailMonitor::default()) {
            Ok(_) => panic!("expected a build error"),
            Err(e) => e,
        }
    }

    #[test]
    fn bad_parameters_are_refused_with_the_parameter_named() {
        let base = [("tag", Value::from("t"))];
        let with = |extra: (&'static str, Value)| -> Vec<(&'static str, Value)> {
            let mut v = base.to_vec();
            v.push(extra);
            v
        };
        let e = build_err(&with(("path", Value::Int(3))));
        assert_eq!(e.param.as_deref(), Some("path"));
        let e = build_err(&with(("path", Value::List(vec![]))));
        assert_eq!(e.param.as_deref(), Some("path"));
        let e = build_err(&with(("path", Value::from("/a/[b"))));
        assert!(e.message.contains("invalid glob"), "{e}");
        let e = build_err(&[("path", Value::from("/a")), ("tag", Value::from("bad tag"))]);
        assert_eq!(e.param.as_deref(), Some("tag"));
        let mut v = with(("path", Value::from("/a")));
        v.push(("multiline_start", Value::Regex("(".into())));
        assert_eq!(build_err(&v).param.as_deref(), Some("multiline_start"));
        let mut v = with(("path", Value::from("/a")));
        v.push(("poll_interval", Value::Duration(Duration::ZERO)));
        assert_eq!(build_err(&v).param.as_deref(), Some("poll_interval"));
        let mut v = with(("path", Value::from("/a")));
        v.push(("max_line_size", Value::Size(0)));
        assert_eq!(build_err(&v).param.as_deref(), Some("max_line_size"));
        assert!(
            params(&[("tag", Value::from("t"))]).is_err(),
            "path is required"
        );
    }

    #[test]
    fn lists_of_paths_and_relative_paths_build() {
        let p = params(&[
            (
                "path",
                Value::List(vec!["logs/*.log".into(), "/abs/x.log".into()]),
            ),
            ("tag", Value::from("t.*")),
            ("pos_file", Value::from("state/tail.pos")),
        ])
        .unwrap();
        let ctx = BuildContext {
            id: "tail#1".into(),
            base_dir: PathBuf::from("/base"),
        };
        let monitor = TailMonitor::default();
        assert!(build(&p, &ctx, &monitor).is_ok());
        assert!(monitor.stats("tail#1").is_some());
    }
}
