//! The tail input inside a real pipeline, on real files in temp dirs.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use ulog_engine::{Record, Value};

fn get(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_from_head_reads_existing_lines_then_appended_ones() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_lines(&log, "l", 0..100);
    let h = start(tail(&log, "app").param("read_from_head", true));
    h.wait_count(100, 10).await;
    append_lines(&log, "l", 100..150);
    h.wait_count(150, 10).await;
    settle().await;
    assert_eq!(h.messages(), expected("l", 0..150));
    assert!(h
        .captured
        .lock()
        .unwrap()
        .iter()
        .all(|(t, _)| t.as_str() == "app"));
    let report = h.stop().await;
    assert_eq!(report.metrics.node("in").unwrap().events_out, 150);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_read_from_head_only_new_lines_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_lines(&log, "old", 0..50);
    // The last line is still being written when ulog starts: it is read
    // from its beginning, not from the middle.
    append(&log, b"half-");
    let h = start(tail(&log, "app"));
    settle().await;
    assert_eq!(h.count(), 0, "existing lines must not be read");
    append(&log, b"line\n");
    append_lines(&log, "new", 0..10);
    h.wait_count(11, 10).await;
    settle().await;
    let mut want = vec!["half-line".to_string()];
    want.extend(expected("new", 0..10));
    assert_eq!(h.messages(), want);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_pos_file_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let pos = dir.path().join("state/tail.pos");
    let node = || {
        tail(&log, "app")
            .param("read_from_head", true)
            .param("pos_file", pos.to_str().unwrap())
    };
    append_lines(&log, "l", 0..500);

    let h = start(node());
    h.wait_count(500, 10).await;
    // An unfinished line at stop time is not emitted and not recorded.
    append(&log, b"half");
    settle().await;
    let first = h.messages();
    h.stop().await;
    assert_eq!(first, expected("l", 0..500));
    let recorded = read_pos(&pos);
    assert_eq!(recorded.len(), 1, "{recorded:?}");
    assert_eq!(recorded[0].0, log.to_str().unwrap());
    assert_eq!(
        recorded[0].1,
        fs::metadata(&log).unwrap().len() - 4,
        "position stops before the unfinished line"
    );

    append(&log, b"-done\n");
    append_lines(&log, "l", 500..800);
    let h = start(node());
    h.wait_count(301, 10).await;
    settle().await;
    let second = h.messages();
    h.stop().await;
    let mut want = vec!["half-done".to_string()];
    want.extend(expected("l", 500..800));
    assert_eq!(second, want, "no line lost, none read twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_by_rename_delivers_every_line_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let old = dir.path().join("app.log.1");
    let pos = dir.path().join("tail.pos");
    append_lines(&log, "l", 0..100);
    let h = start(
        tail(&log, "app")
            .param("read_from_head", true)
            .param("pos_file", pos.to_str().unwrap()),
    );
    h.wait_count(100, 10).await;

    append_lines(&log, "l", 100..150);
    fs::rename(&log, &old).unwrap();
    // The writer has not reopened yet: it still writes to the old file.
    append_lines(&old, "l", 150..160);
    append_lines(&log, "l", 160..300);
    h.wait_count(300, 10).await;

    let stats = h.stats();
    assert!(
        wait_until(Duration::from_secs(5), || get(&stats.files_closed) == 1).await,
        "the old file is closed after rotate_wait"
    );
    settle().await;
    let got = h.messages();
    assert_eq!(got.len(), 300, "each line exactly once");
    let (before, after): (Vec<_>, Vec<_>) = got
        .iter()
        .cloned()
        .partition(|m| m < &"l-000160".to_string());
    assert_eq!(before, expected("l", 0..160), "old file in order");
    assert_eq!(after, expected("l", 160..300), "new file in order");
    assert_eq!(get(&stats.rotations), 1);
    // Only the new file is left in the position database.
    let recorded = read_pos(&pos);
    assert_eq!(
        recorded,
        vec![(
            log.to_str().unwrap().to_string(),
            fs::metadata(&log).unwrap().len()
        )]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_write_to_a_rotated_file_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let old = dir.path().join("app.log.1");
    let pos = dir.path().join("tail.pos");
    let node = |rotate_wait: Duration| {
        tail_with_rotate_wait(&log, "app", rotate_wait)
            .param("read_from_head", true)
            .param("pos_file", pos.to_str().unwrap())
    };
    append_lines(&log, "a", 0..10);
    let h = start(node(Duration::from_secs(30)));
    h.wait_count(10, 10).await;
    fs::rename(&log, &old).unwrap();
    append_lines(&log, "b", 0..5);
    h.wait_count(15, 10).await;
    // While rotate_wait runs, the old file is recorded under its new name.
    assert!(
        wait_until(Duration::from_secs(5), || read_pos(&pos)
            .iter()
            .any(|(p, _)| p == old.to_str().unwrap()))
        .await,
        "rotated file recorded under its new name: {:?}",
        read_pos(&pos)
    );
    h.stop().await;

    // A slow writer adds to the old file while ulog is down.
    append_lines(&old, "a", 10..20);
    let h = start(node(Duration::from_millis(100)));
    h.wait_count(10, 10).await;
    let stats = h.stats();
    assert!(wait_until(Duration::from_secs(5), || get(&stats.files_closed) == 1).await);
    settle().await;
    assert_eq!(h.messages(), expected("a", 10..20));
    h.stop().await;
    assert_eq!(read_pos(&pos).len(), 1, "finished rotated file dropped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copytruncate_restarts_from_the_beginning() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_lines(&log, "l", 0..100);
    let h = start(tail(&log, "app").param("read_from_head", true));
    h.wait_count(100, 10).await;

    fs::copy(&log, dir.path().join("app.log.1")).unwrap();
    fs::OpenOptions::new()
        .write(true)
        .open(&log)
        .unwrap()
        .set_len(0)
        .unwrap();
    append_lines(&log, "l", 100..150);
    h.wait_count(150, 10).await;
    settle().await;
    assert_eq!(h.messages(), expected("l", 0..150));
    assert_eq!(get(&h.stats().truncations), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_appearing_later_are_read_from_the_head() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.log");
    let b = dir.path().join("b.log");
    append_lines(&a, "a", 0..10);
    let glob = dir.path().join("*.log");
    let h = start(tail(&glob, "logs.*").param("path_key", "file"));
    settle().await;
    assert_eq!(h.count(), 0, "a.log existed at startup: read from its end");
    append_lines(&a, "a", 10..20);
    h.wait_count(10, 10).await;
    append_lines(&b, "b", 0..30);
    h.wait_count(40, 10).await;
    settle().await;

    let events = h.captured.lock().unwrap().clone();
    assert_eq!(events.len(), 40);
    let (from_a, from_b): (Vec<_>, Vec<_>) =
        events.iter().partition(|(t, _)| t.ends_with(".a.log"));
    let msg = |e: &ulog_engine::Event| e.record.to_map()["message"].as_str().unwrap().to_string();
    assert_eq!(
        from_a.iter().map(|(_, e)| msg(e)).collect::<Vec<_>>(),
        expected("a", 10..20)
    );
    assert_eq!(
        from_b.iter().map(|(_, e)| msg(e)).collect::<Vec<_>>(),
        expected("b", 0..30)
    );
    let (tag, event) = &from_b[0];
    assert!(tag.starts_with("logs.") && tag.ends_with(".b.log"), "{tag}");
    assert!(ulog_engine::Tag::parse(tag).is_ok());
    assert_eq!(
        event.record.to_map()["file"],
        serde_json::Value::String(b.to_str().unwrap().to_string())
    );
    h.stop().await;
}

/// Collects log output of the current thread.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// Single-threaded so the thread-local log collector sees the input's logs.
#[tokio::test]
async fn over_long_lines_are_skipped_with_a_warning_and_counted() {
    let logs = LogBuf::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"good-1\n");
    append(&log, &vec![b'x'; 2 << 20]);
    append(&log, b"\ngood-2\n");
    let h = start(tail(&log, "app").param("read_from_head", true));
    h.wait_count(2, 10).await;
    settle().await;
    assert_eq!(h.messages(), ["good-1", "good-2"]);
    assert_eq!(get(&h.stats().lines_too_long), 1);
    h.stop().await;

    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let warn = text
        .lines()
        .find(|l| l.contains("line longer than max_line_size skipped"))
        .unwrap_or_else(|| panic!("no warning in logs:\n{text}"));
    assert!(warn.contains("WARN"), "{warn}");
    assert!(
        warn.contains(log.to_str().unwrap()),
        "names the file: {warn}"
    );
    assert!(warn.contains("offset=7"), "names the offset: {warn}");
    assert!(warn.contains(&format!("length={}", 2 << 20)), "{warn}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multiline_joins_a_java_stack_trace() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let text = "2024-05-01 10:00:00 INFO starting\n\
                2024-05-01 10:00:01 ERROR request failed\n\
                java.lang.IllegalStateException: boom\n\
                \tat com.example.Foo.bar(Foo.java:42)\n\
                \tat com.example.Main.main(Main.java:7)\n\
                Caused by: java.io.IOException: disk full\n\
                \t... 2 more\n\
                2024-05-01 10:00:02 INFO recovered\n";
    append(&log, text.as_bytes());
    let h = start(
        tail(&log, "app")
            .param("read_from_head", true)
            .param(
                "multiline_start",
                Value::Regex(r"^\d{4}-\d{2}-\d{2} ".into()),
            )
            .param("multiline_flush_interval", Duration::from_millis(200)),
    );
    h.wait_count(2, 10).await;
    assert_eq!(h.count(), 2, "the last record waits for the flush interval");
    h.wait_count(3, 10).await;
    settle().await;
    assert_eq!(
        h.messages(),
        [
            "2024-05-01 10:00:00 INFO starting",
            "2024-05-01 10:00:01 ERROR request failed\n\
             java.lang.IllegalStateException: boom\n\
             \tat com.example.Foo.bar(Foo.java:42)\n\
             \tat com.example.Main.main(Main.java:7)\n\
             Caused by: java.io.IOException: disk full\n\
             \t... 2 more",
            "2024-05-01 10:00:02 INFO recovered",
        ]
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partial_last_line_waits_for_its_newline() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"abc");
    let h = start(tail(&log, "app").param("read_from_head", true));
    settle().await;
    settle().await;
    assert_eq!(h.count(), 0, "no newline yet");
    append(&log, b"def\r\n");
    h.wait_count(1, 10).await;
    append(&log, b"windows line\r\nlast");
    h.wait_count(2, 10).await;
    settle().await;
    assert_eq!(h.messages(), ["abcdef", "windows line"]);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exclude_path_keeps_files_out() {
    let dir = tempfile::tempdir().unwrap();
    append_lines(&dir.path().join("keep.log"), "keep", 0..5);
    append_lines(&dir.path().join("skip-1.log"), "skip", 0..5);
    let exclude = dir.path().join("skip*.log");
    let h = start(
        tail(&dir.path().join("*.log"), "app")
            .param("read_from_head", true)
            .param(
                "exclude_path",
                Value::List(vec![exclude.to_str().unwrap().into()]),
            ),
    );
    h.wait_count(5, 10).await;
    append_lines(&dir.path().join("skip-2.log"), "skip", 5..10);
    append_lines(&dir.path().join("later.log"), "later", 0..3);
    h.wait_count(8, 10).await;
    settle().await;
    let mut want = expected("keep", 0..5);
    want.extend(expected("later", 0..3));
    assert_eq!(h.messages(), want);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_lines_pass_through_and_broken_ones_are_kept_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(&log, b"{\"a\":1}\nnot json {\n{\"b\": 2}\r\n");
    let h = start(
        tail(&log, "app")
            .param("read_from_head", true)
            .param("format", "json")
            .param("on_error", "keep"),
    );
    h.wait_count(3, 10).await;
    settle().await;
    let events = h.captured.lock().unwrap().clone();
    assert_eq!(events.len(), 3);
    assert!(
        matches!(&events[0].1.record, Record::Raw(b) if &b[..] == b"{\"a\":1}"),
        "JSON kept as its bytes: {:?}",
        events[0].1.record
    );
    assert_eq!(
        events[1].1.record.to_json_string(),
        r#"{"message":"not json {"}"#
    );
    assert_eq!(events[2].1.record.to_json_string(), r#"{"b": 2}"#);
    assert_eq!(get(&h.stats().parse_errors), 1);
    h.stop().await;

    let h = start(
        tail(&log, "app")
            .param("read_from_head", true)
            .param("format", "json")
            .param("on_error", "log"),
    );
    h.wait_count(2, 10).await;
    settle().await;
    assert_eq!(h.count(), 2, "on_error = log leaves the broken line out");
    assert_eq!(get(&h.stats().parse_errors), 1);
    h.stop().await;

    // The default: the broken line goes to the `errors` label with the reason.
    let h = start(
        tail(&log, "app")
            .param("read_from_head", true)
            .param("format", "json"),
    );
    h.wait_count(3, 10).await;
    settle().await;
    let events = h.captured.lock().unwrap().clone();
    assert_eq!(events.len(), 3);
    let mut refused: Vec<_> = events
        .into_iter()
        .filter_map(|(_, e)| {
            let mut r = e.record;
            r.get("_error").is_some().then_some(r)
        })
        .collect();
    assert_eq!(refused.len(), 1, "one line went to the errors label");
    assert_eq!(
        refused[0].get("message"),
        Some(&serde_json::json!("not json {"))
    );
    assert!(refused[0]
        .get("_error")
        .and_then(|v| v.as_str())
        .is_some_and(|m| m.contains("JSON")));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_files_are_closed_and_dropped_from_the_pos_file() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.log");
    let b = dir.path().join("b.log");
    let pos = dir.path().join("tail.pos");
    append_lines(&a, "a", 0..3);
    append_lines(&b, "b", 0..3);
    // The glob also matches the position database: it must not be followed.
    let h = start(
        tail(&dir.path().join("*"), "app")
            .param("read_from_head", true)
            .param("pos_file", pos.to_str().unwrap()),
    );
    h.wait_count(6, 10).await;
    assert!(wait_until(Duration::from_secs(5), || read_pos(&pos).len() == 2).await);
    fs::remove_file(&b).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || read_pos(&pos).len() == 1).await,
        "{:?}",
        read_pos(&pos)
    );
    assert_eq!(read_pos(&pos)[0].0, a.to_str().unwrap());
    assert_eq!(get(&h.stats().files_closed), 1);
    settle().await;
    assert_eq!(h.count(), 6, "nothing read from the position database");
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_pos_file_costs_only_its_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    let pos = dir.path().join("tail.pos");
    append_lines(&log, "l", 0..10);
    let meta = fs::metadata(&log).unwrap();
    // Resume after line 4 (each line is 9 bytes).
    fs::write(
        &pos,
        format!(
            "garbage\n{}\t{}\t{}\t{}\n/other\tnot-a-number\t1\t1\n",
            log.display(),
            5 * 9,
            meta.ino(),
            meta.dev()
        ),
    )
    .unwrap();
    let h = start(tail(&log, "app").param("pos_file", pos.to_str().unwrap()));
    h.wait_count(5, 10).await;
    settle().await;
    assert_eq!(h.messages(), expected("l", 5..10));
    h.stop().await;
    assert_eq!(
        read_pos(&pos),
        vec![(log.to_str().unwrap().to_string(), 90)],
        "rewritten clean"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_pos_file_stops_the_input_loudly() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_lines(&log, "l", 0..3);
    // A directory where the pos file should be: reading it fails.
    let h = start(
        tail(&log, "app")
            .param("read_from_head", true)
            .param("pos_file", dir.path().to_str().unwrap()),
    );
    // The only input ends with an error, so the pipeline ends by itself.
    let report = tokio::time::timeout(Duration::from_secs(10), h.running.wait())
        .await
        .expect("pipeline ends when its only input fails");
    assert_eq!(report.metrics.node("in").unwrap().events_out, 0);
    assert_eq!(h.captured.lock().unwrap().len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_output_paces_reading_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_lines(&log, "l", 0..4000);
    let size = fs::metadata(&log).unwrap().len();
    let node = tail(&log, "app")
        .param("read_from_head", true)
        .param("read_buffer_size", Value::Size(1024));
    // One queued batch at most, 30 ms per batch.
    let h = start_with(node, 30);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let read_so_far = get(&h.stats().bytes_read);
    assert!(
        read_so_far < size / 2,
        "reading waits for the output: {read_so_far} of {size} bytes read"
    );
    h.wait_count(4000, 30).await;
    assert_eq!(h.messages(), expected("l", 0..4000));
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_read_becomes_one_batch() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append_lines(&log, "l", 0..10_000);
    let size = fs::metadata(&log).unwrap().len();
    let chunk = 16 * 1024;
    let h = start(
        tail(&log, "app")
            .param("read_from_head", true)
            .param("read_buffer_size", Value::Size(chunk)),
    );
    h.wait_count(10_000, 10).await;
    settle().await;
    assert_eq!(h.messages(), expected("l", 0..10_000));
    // 90,000 bytes in reads of 16 KiB: 6 reads, 6 batches — not 10,000.
    assert_eq!(
        h.batches.load(Ordering::SeqCst) as u64,
        size.div_ceil(chunk),
        "one batch per read"
    );
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formats_from_the_parsers_crate_give_fields_and_times() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("app.log");
    append(
        &log,
        b"2024-05-01 10:00:00 INFO hello world\n2024-05-01 10:00:01 WARN disk at 91%\nnot matching\n",
    );
    let h = start(
        tail(&log, "app")
            .param("read_from_head", true)
            .param("format", "regex")
            .param(
                "expression",
                Value::Regex(r"^(?<time>\S+ \S+) (?<level>[A-Z]+) (?<msg>.*)$".into()),
            )
            .param("time_key", "time")
            .param("time_format", "%Y-%m-%d %H:%M:%S")
            .param("on_error", "keep"),
    );
    h.wait_count(3, 10).await;
    settle().await;
    let events = h.captured.lock().unwrap().clone();
    assert_eq!(events.len(), 3);
    // 2024-05-01T10:00:00Z
    assert_eq!(events[0].1.time.secs(), 1_714_557_600);
    assert_eq!(events[1].1.time.secs(), 1_714_557_601);
    assert_eq!(
        events[0].1.record.to_json_string(),
        r#"{"level":"INFO","msg":"hello world"}"#
    );
    assert_eq!(
        events[2].1.record.to_json_string(),
        r#"{"message":"not matching"}"#,
        "kept by on_error = keep"
    );
    assert_eq!(get(&h.stats().parse_errors), 1);
    h.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recursive_globs_and_links_follow_each_file_once() {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("a")).unwrap();
    fs::create_dir_all(dir.path().join("b/c")).unwrap();
    let x = dir.path().join("a/x.log");
    let y = dir.path().join("b/c/y.log");
    append_lines(&x, "x", 0..5);
    append_lines(&y, "y", 0..5);
    std::os::unix::fs::symlink(&x, dir.path().join("link.log")).unwrap();
    // Overlapping globs: the second one matches the link again.
    let globs = Value::List(vec![
        dir.path().join("**/*.log").to_str().unwrap().into(),
        dir.path().join("*.log").to_str().unwrap().into(),
    ]);
    let node = tail_paths(globs, "app", Duration::from_millis(300))
        .param("read_from_head", true)
        .param("path_key", "file");
    let h = start(node);
    h.wait_count(10, 10).await;
    settle().await;
    settle().await;
    let mut got = h.messages();
    got.sort();
    let mut want = expected("x", 0..5);
    want.extend(expected("y", 0..5));
    assert_eq!(
        got, want,
        "x.log is read once although two paths lead to it"
    );
    append_lines(&x, "x", 5..7);
    h.wait_count(12, 10).await;
    settle().await;
    assert_eq!(h.count(), 12);
    h.stop().await;
}
