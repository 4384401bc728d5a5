//! Crash safety: a pipeline tailing a file runs in a child process (this
//! test binary, started again with an environment switch) and is killed
//! with SIGKILL, or aborts itself, in the middle of the file. A new run then
//! resumes from the position database.
//!
//! In the child, a filter appends every event to `recorded` *before* the
//! batch is accepted (filters run inside `emit`), so `recorded` holds at
//! least everything the input was told was accepted. No loss means the new
//! run starts at or before the end of `recorded`; lines between the
//! recorded position and the end of `recorded` are the only duplicates.

mod common;

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use ulog_engine::spec::{FilterSpec, FlowSpec, MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{
    async_trait, Batch, BuildOptions, Delivery, Filter, Output, Pipeline, PluginError, PluginKind,
    PluginSpec, Registry, Rejected, Value,
};

const CHILD_ENV: &str = "ULOG_TAIL_KILL_CHILD_DIR";
const ABORT_ENV: &str = "ULOG_TAIL_ABORT_AFTER";
const LINES: usize = 100_000;
/// Bytes per line: `l-NNNNNN\n`.
const LINE: u64 = 9;

struct Recorder {
    file: Mutex<File>,
    count: AtomicUsize,
    abort_after: Option<usize>,
}

#[async_trait]
impl Filter for Recorder {
    async fn filter(
        &self,
        batch: &mut Batch,
        _rejects: &mut Vec<Rejected>,
    ) -> Result<(), PluginError> {
        let mut out = String::new();
        for e in &batch.events {
            out.push_str(e.record.to_map()["message"].as_str().unwrap_or("?"));
            out.push('\n');
        }
        // Unbuffered: once written, the lines survive the process dying.
        self.file.lock().unwrap().write_all(out.as_bytes())?;
        let n = self.count.fetch_add(batch.len(), Ordering::SeqCst) + batch.len();
        if self.abort_after.is_some_and(|a| n >= a) {
            std::process::abort();
        }
        // A pipeline that is not instantaneous, so the kill lands mid-file.
        tokio::time::sleep(Duration::from_millis(2)).await;
        Ok(())
    }
}

struct Null;

#[async_trait]
impl Output for Null {
    async fn write(&mut self, _batch: &Batch) -> Delivery {
        Delivery::Delivered
    }
}

/// The pipeline the child runs: tail → record → null.
#[test]
#[ignore = "started as a child process by the kill tests"]
fn child_pipeline() {
    let dir = PathBuf::from(std::env::var(CHILD_ENV).unwrap_or_else(|_| {
        panic!("only meant to run as a child of the kill tests ({CHILD_ENV} unset)")
    }));
    let abort_after = std::env::var(ABORT_ENV).ok().map(|v| v.parse().unwrap());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let mut r = Registry::new();
        ulog_plugins_tail::register(&mut r);
        let recorded = dir.join("recorded");
        r.add_filter(
            PluginSpec::new(PluginKind::Filter, "record", "test"),
            move |_, _| {
                let file = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&recorded)
                    .unwrap();
                Ok(Arc::new(Recorder {
                    file: Mutex::new(file),
                    count: AtomicUsize::new(0),
                    abort_after,
                }))
            },
        );
        r.add_output(
            PluginSpec::new(PluginKind::Output, "null", "test"),
            |_, _| Ok(Box::new(Null)),
        );
        let spec = PipelineSpec {
            inputs: vec![child_tail(&dir)],
            root: FlowSpec {
                filters: vec![FilterSpec {
                    patterns: vec!["**".into()],
                    node: NodeSpec::new("record"),
                }],
                matches: vec![MatchSpec {
                    patterns: vec!["**".into()],
                    outputs: vec![NodeSpec::new("null")],
                }],
            },
            labels: vec![],
        };
        let running = Pipeline::build(&spec, &r, BuildOptions::default())
            .unwrap_or_else(|e| panic!("{e:?}"))
            .start();
        // Never stops by itself; the parent kills it (60 s at most).
        tokio::time::sleep(Duration::from_secs(60)).await;
        running.stop();
        std::process::exit(2);
    });
}

fn child_tail(dir: &Path) -> NodeSpec {
    NodeSpec::new("tail")
        .param("id", "in")
        .param("path", dir.join("app.log").to_str().unwrap())
        .param("tag", "app")
        .param("read_from_head", true)
        .param("pos_file", dir.join("tail.pos").to_str().unwrap())
        .param("read_buffer_size", Value::Size(4096))
        .param("poll_interval", Duration::from_millis(20))
        .param("pos_write_interval", Duration::from_millis(50))
}

/// Kills the child if a test fails before it does.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_child(dir: &Path, abort_after: Option<usize>) -> ChildGuard {
    let log = File::create(dir.join("child.log")).unwrap();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "child_pipeline",
        "--exact",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, dir)
    .stdout(Stdio::null())
    .stderr(log);
    if let Some(n) = abort_after {
        cmd.env(ABORT_ENV, n.to_string());
    }
    ChildGuard(cmd.spawn().expect("start the child test process"))
}

fn recorded(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("recorded"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn child_log(dir: &Path) -> String {
    fs::read_to_string(dir.join("child.log")).unwrap_or_default()
}

/// Restarts in this process from the pos file the child left and checks
/// that nothing was lost. Returns (recorded by the child, resumed at).
fn resume_and_check(dir: &Path) -> (usize, usize) {
    let first = recorded(dir);
    let k = first.len();
    assert_eq!(
        first,
        expected("l", 0..k),
        "the child saw a prefix, in order"
    );
    let pos = read_pos(&dir.join("tail.pos"));
    assert_eq!(pos.len(), 1, "{pos:?}\n{}", child_log(dir));
    let offset = pos[0].1;
    assert_eq!(offset % LINE, 0, "positions fall on line boundaries");
    let j = (offset / LINE) as usize;
    assert!(
        j <= k,
        "position {j} is past what the pipeline received ({k}): lines would be lost"
    );

    append_lines(&dir.join("app.log"), "l", LINES..LINES + 1000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let log = dir.join("app.log");
        let h = start(
            tail(&log, "app")
                .param("read_from_head", true)
                .param("pos_file", dir.join("tail.pos").to_str().unwrap()),
        );
        h.wait_count(LINES + 1000 - j, 30).await;
        settle().await;
        let second = h.messages();
        h.stop().await;
        assert_eq!(
            second,
            expected("l", j..LINES + 1000),
            "the restart reads on from the recorded position"
        );
    });
    (k, j)
}

fn wait_for(what: &str, dir: &Path, f: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; child log:\n{}",
            child_log(dir)
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn sigkill_mid_file_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    append_lines(&dir.path().join("app.log"), "l", 0..LINES);
    let mut child = spawn_child(dir.path(), None);
    let pos = dir.path().join("tail.pos");
    wait_for("the child to get going", dir.path(), || {
        recorded(dir.path()).len() >= 20_000 && read_pos(&pos).first().is_some_and(|e| e.1 > 0)
    });
    child.0.kill().unwrap();
    let status = child.0.wait().unwrap();
    assert!(!status.success(), "killed: {status:?}");
    let (k, j) = resume_and_check(dir.path());
    assert!(
        k < LINES,
        "the kill landed before the end of the file ({k})"
    );
    assert!(j > 0, "the position was recorded during the run");
    eprintln!(
        "SIGKILL after {k} lines; resumed at {j}: {} lines read twice",
        k - j
    );
}

#[test]
fn abort_inside_the_pipeline_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    append_lines(&dir.path().join("app.log"), "l", 0..LINES);
    let mut child = spawn_child(dir.path(), Some(30_000));
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "child did not abort");
        std::thread::sleep(Duration::from_millis(10));
    };
    assert!(
        !status.success(),
        "aborted: {status:?}\n{}",
        child_log(dir.path())
    );
    let (k, j) = resume_and_check(dir.path());
    assert!(k >= 30_000);
    assert!(
        j < k,
        "the batch that was being accepted when the process died is read again ({j} vs {k})"
    );
    eprintln!(
        "abort after {k} lines; resumed at {j}: {} lines read twice",
        k - j
    );
}
