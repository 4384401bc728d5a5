//! Output buffers end to end through the runtime: file buffers that survive
//! a stop while the destination is down and a runtime torn down mid-flight,
//! spilling to disk past `memory_limit`, overflow policies, retry limits
//! into a `secondary` output, and the build errors of a wrong `buffer`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ulog_engine::spec::{FlowSpec, LabelSpec, MatchSpec, NodeSpec, PipelineSpec};
use ulog_engine::{
    async_trait, Batch, BuildOptions, Delivery, EmitError, Event, EventId, EventTime, Output,
    ParamKind, ParamSpec, Pipeline, PluginError, PluginKind, PluginSpec, Record, Registry, Tag,
    Value,
};

/// What a capture output received: output id, tag, event id, record text.
type Sink = Arc<Mutex<Vec<(String, String, EventId, String)>>>;

struct Capture {
    id: String,
    sink: Sink,
    /// While set, every write fails with a retryable error.
    down: Option<Arc<AtomicBool>>,
    /// Writes that failed.
    failures: Arc<AtomicUsize>,
    /// Holds writes back until permits are added.
    gate: Option<Arc<tokio::sync::Semaphore>>,
    /// Writes go to `pending` and reach the sink on flush.
    buffered: bool,
    pending: Vec<(String, String, EventId, String)>,
}

#[async_trait]
impl Output for Capture {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        if let Some(g) = &self.gate {
            g.acquire().await.unwrap().forget();
        }
        if self.down.as_ref().is_some_and(|d| d.load(Ordering::SeqCst)) {
            self.failures.fetch_add(1, Ordering::SeqCst);
            return Delivery::Retry(PluginError::new("destination down"));
        }
        let rows = batch.events.iter().map(|e| {
            (
                self.id.clone(),
                batch.tag.to_string(),
                e.id,
                e.record.to_json_string(),
            )
        });
        if self.buffered {
            self.pending.extend(rows);
        } else {
            self.sink.lock().unwrap().extend(rows);
        }
        Delivery::Delivered
    }

    async fn flush(&mut self) -> Result<(), PluginError> {
        self.sink.lock().unwrap().append(&mut self.pending);
        Ok(())
    }

    fn flush_interval(&self) -> Option<Duration> {
        self.buffered.then_some(Duration::from_millis(50))
    }
}

struct Harness {
    registry: Registry,
    sink: Sink,
    down: Arc<AtomicBool>,
    failures: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
}

fn harness() -> Harness {
    let sink: Sink = Arc::default();
    let down = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut registry = Registry::new();
    let (s, d, f, g) = (sink.clone(), down.clone(), failures.clone(), gate.clone());
    registry.add_output(
        PluginSpec::new(PluginKind::Output, "capture", "test output")
            .param(ParamSpec::with_default(
                "flaky",
                ParamKind::Bool,
                false,
                "fail while down",
            ))
            .param(ParamSpec::with_default(
                "gated",
                ParamKind::Bool,
                false,
                "wait for permits",
            ))
            .param(ParamSpec::with_default(
                "buffered",
                ParamKind::Bool,
                false,
                "write on flush",
            )),
        move |p, ctx| {
            Ok(Box::new(Capture {
                id: ctx.id.clone(),
                sink: s.clone(),
                down: p.bool("flaky")?.then(|| d.clone()),
                failures: f.clone(),
                gate: p.bool("gated")?.then(|| g.clone()),
                buffered: p.bool("buffered")?,
                pending: Vec::new(),
            }))
        },
    );
    Harness {
        registry,
        sink,
        down,
        failures,
        gate,
    }
}

fn file_buffer(dir: &Path, extra: &[(&str, Value)]) -> Value {
    let mut entries = vec![
        ("type".to_string(), Value::from("file")),
        ("path".to_string(), Value::from(dir.to_str().unwrap())),
    ];
    entries.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    Value::Map(entries)
}

fn one_output(output: NodeSpec) -> PipelineSpec {
    PipelineSpec {
        inputs: vec![],
        root: FlowSpec {
            filters: vec![],
            matches: vec![MatchSpec {
                patterns: vec!["**".into()],
                outputs: vec![output],
            }],
        },
        labels: vec![],
    }
}

fn batch(tag: &str, from: usize, n: usize) -> Batch {
    let events = (from..from + n)
        .map(|i| {
            Event::new(
                EventTime::from_secs_nanos(1_700_000_000 + i as i64, 0),
                Record::from_json_bytes(
                    format!("{{\"n\":{i},\"household\":\"h{}\"}}", i % 7)
                        .into_bytes()
                        .into(),
                )
                .unwrap(),
            )
        })
        .collect();
    Batch::new(Tag::parse(tag).unwrap(), events)
}

fn build(h: &Harness, spec: &PipelineSpec) -> Pipeline {
    let options = BuildOptions {
        shutdown_timeout: Duration::from_secs(2),
        ..BuildOptions::default()
    };
    Pipeline::build(spec, &h.registry, options).unwrap_or_else(|e| panic!("{e:#?}"))
}

/// The `n` fields received, in arrival order.
fn numbers(h: &Harness) -> Vec<u64> {
    h.sink
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, _, r)| {
            let v: serde_json::Value = serde_json::from_str(r).unwrap();
            v["n"].as_u64().unwrap()
        })
        .collect()
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test]
async fn a_file_buffer_delivers_and_then_holds_nothing() {
    let h = harness();
    let dir = tempfile::tempdir().unwrap();
    let spec = one_output(
        NodeSpec::new("capture")
            .param("id", "out")
            .param("buffer", file_buffer(dir.path(), &[])),
    );
    let running = build(&h, &spec).start();
    let mut emitter = running.emitter();
    for i in 0..20 {
        emitter.emit(batch("home.1.owl", i * 10, 10)).await.unwrap();
    }
    wait_for("200 events", || h.sink.lock().unwrap().len() == 200).await;
    running.stop();
    let report = running.wait().await;
    assert_eq!(report.lost, 0);
    assert_eq!(report.left_buffered, 0);
    assert_eq!(numbers(&h), (0..200).collect::<Vec<_>>());
    // Nothing to replay: a new run delivers nothing.
    let h2 = harness();
    let running = build(&h2, &spec).start();
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.stop();
    running.wait().await;
    assert!(h2.sink.lock().unwrap().is_empty());
}

#[tokio::test]
async fn what_a_down_destination_did_not_take_is_delivered_after_a_restart_with_the_same_ids() {
    let dir = tempfile::tempdir().unwrap();
    let spec = one_output(
        NodeSpec::new("capture")
            .param("id", "out")
            .param("flaky", true)
            .param("retry_wait", Duration::from_millis(20))
            .param("buffer", file_buffer(dir.path(), &[])),
    );
    let h = harness();
    h.down.store(true, Ordering::SeqCst);
    let running = build(&h, &spec).start();
    let mut emitter = running.emitter();
    for i in 0..5 {
        emitter
            .emit(batch("home.2.nissan", i * 4, 4))
            .await
            .unwrap();
    }
    wait_for("a failed write", || h.failures.load(Ordering::SeqCst) > 0).await;
    running.stop();
    let report = running.wait().await;
    assert_eq!(report.lost, 0, "nothing lost: it is on disk");
    assert_eq!(report.left_buffered, 20);
    assert!(h.sink.lock().unwrap().is_empty());
    assert_eq!(report.metrics.node("out").unwrap().events_out, 0);

    // The destination is back; a new run delivers all 20, in order.
    let h2 = harness();
    let pipeline = build(&h2, &spec);
    let opened = pipeline.open_buffers().unwrap();
    assert_eq!(opened.len(), 1);
    assert!(opened[0].1 >= 1, "{opened:?}");
    let running = pipeline.start();
    wait_for("20 replayed events", || h2.sink.lock().unwrap().len() == 20).await;
    running.stop();
    running.wait().await;
    assert_eq!(numbers(&h2), (0..20).collect::<Vec<_>>());
    let ids: Vec<EventId> = h2.sink.lock().unwrap().iter().map(|r| r.2).collect();
    assert!(ids.iter().all(|id| id.is_some()));
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 20);

    // A third run with the same ids replays nothing more.
    let h3 = harness();
    let running = build(&h3, &spec).start();
    tokio::time::sleep(Duration::from_millis(200)).await;
    running.stop();
    running.wait().await;
    assert!(h3.sink.lock().unwrap().is_empty());
}

#[test]
fn a_runtime_torn_down_mid_flight_loses_nothing_that_emit_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let spec = one_output(
        NodeSpec::new("capture")
            .param("id", "out")
            .param("gated", true)
            .param(
                "buffer",
                file_buffer(dir.path(), &[("sync", "interval".into())]),
            ),
    );
    let h = harness();
    let acked = {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let running = rt.block_on(async { build(&h, &spec).start() });
        let acked = rt.block_on(async {
            let mut emitter = running.emitter();
            let mut acked = 0;
            for i in 0..30 {
                emitter.emit(batch("home.3.phone", i * 3, 3)).await.unwrap();
                acked += 3;
                if i == 0 {
                    // The first chunk is taken alone and waits at the gate.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            // Let one write through (the first chunk, taken alone), then
            // tear everything down while the rest, merged, is in flight.
            h.gate.add_permits(1);
            tokio::time::sleep(Duration::from_millis(50)).await;
            acked
        });
        // Dropping the runtime cancels every task where it stands, as a
        // crash would (the WAL itself survives: it is the OS's now).
        drop(rt);
        drop(running);
        acked
    };
    let delivered_before = h.sink.lock().unwrap().len();
    assert!(delivered_before < acked, "{delivered_before}");

    let h2 = harness();
    h2.gate.add_permits(1000);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let running = build(&h2, &spec).start();
        wait_for("the rest", || {
            h2.sink.lock().unwrap().len() + delivered_before >= acked
        })
        .await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        running.stop();
        running.wait().await;
    });
    let mut all: Vec<u64> = numbers(&h);
    all.extend(numbers(&h2));
    all.sort_unstable();
    let duplicates = all.len() - {
        let mut u = all.clone();
        u.dedup();
        u.len()
    };
    all.dedup();
    assert_eq!(
        all,
        (0..acked as u64).collect::<Vec<_>>(),
        "every acknowledged event arrives"
    );
    // At least once: a chunk delivered but not yet confirmed comes again.
    assert!(duplicates <= 3, "{duplicates} duplicates");
}

#[tokio::test]
async fn chunks_beyond_memory_limit_are_read_back_from_disk_in_order() {
    let h = harness();
    let dir = tempfile::tempdir().unwrap();
    let spec = one_output(
        NodeSpec::new("capture")
            .param("id", "out")
            .param("gated", true)
            .param(
                "buffer",
                file_buffer(
                    dir.path(),
                    &[
                        ("memory_limit", Value::Size(2_000)),
                        ("sync", "interval".into()),
                    ],
                ),
            ),
    );
    let running = build(&h, &spec).start();
    let mut emitter = running.emitter();
    for i in 0..100 {
        emitter.emit(batch("home.4.owl", i * 5, 5)).await.unwrap();
    }
    h.gate.add_permits(10_000);
    wait_for("500 events", || h.sink.lock().unwrap().len() == 500).await;
    running.stop();
    running.wait().await;
    assert_eq!(numbers(&h), (0..500).collect::<Vec<_>>());
}

#[tokio::test]
async fn queued_chunks_of_one_tag_are_delivered_as_one_batch() {
    let h = harness();
    let dir = tempfile::tempdir().unwrap();
    let spec = one_output(
        NodeSpec::new("capture")
            .param("id", "out")
            .param("gated", true)
            .param(
                "buffer",
                file_buffer(dir.path(), &[("sync", "interval".into())]),
            ),
    );
    let running = build(&h, &spec).start();
    let mut emitter = running.emitter();
    emitter.emit(batch("home.5.owl", 0, 2)).await.unwrap();
    // The first chunk is taken alone and held at the gate while the rest
    // queue up behind it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 1..10 {
        emitter.emit(batch("home.5.owl", i * 2, 2)).await.unwrap();
    }
    emitter.emit(batch("home.5.phone", 100, 1)).await.unwrap();
    // Three writes: the first chunk, the 9 owl chunks merged, the phone
    // chunk. Unmerged, 11 writes would be needed.
    h.gate.add_permits(3);
    wait_for("21 events", || h.sink.lock().unwrap().len() == 21).await;
    running.stop();
    let report = running.wait().await;
    assert_eq!(report.metrics.node("out").unwrap().events_in, 21);
    assert_eq!(h.gate.available_permits(), 0);
}

#[tokio::test]
async fn overflow_reject_refuses_at_once_and_keeps_what_it_acknowledged() {
    let h = harness();
    let dir = tempfile::tempdir().unwrap();
    let spec = one_output(
        NodeSpec::new("capture")
            .param("id", "out")
            .param("gated", true)
            .param(
                "buffer",
                file_buffer(
                    dir.path(),
                    &[
                        ("total_limit", Value::Size(64 << 10)),
                        ("overflow", "reject".into()),
                        ("sync", "interval".into()),
                    ],
                ),
            ),
    );
    let running = build(&h, &spec).start();
    let mut emitter = running.emitter();
    let mut acked = 0;
    let mut refused = None;
    for i in 0..2000 {
        match emitter.emit(batch("home.6.owl", i * 10, 10)).await {
            Ok(()) => acked += 10,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("a 64KiB buffer fills up");
    assert!(matches!(refused, EmitError::BufferFull { .. }), "{refused}");
    assert!(refused.retry_after().is_some());
    assert!(refused.to_string().contains("`out`"), "{refused}");
    h.gate.add_permits(100_000);
    wait_for("every acked event", || {
        h.sink.lock().unwrap().len() == acked
    })
    .await;
    // Room again: accepted.
    emitter.emit(batch("home.6.owl", 50_000, 1)).await.unwrap();
    wait_for("one more", || h.sink.lock().unwrap().len() == acked + 1).await;
    running.stop();
    running.wait().await;
}

#[tokio::test]
async fn overflow_block_waits_for_room_instead_of_refusing() {
    let h = harness();
    let dir = tempfile::tempdir().unwrap();
    let spec = one_output(
        NodeSpec::new("capture")
            .param("id", "out")
            .param("gated", true)
            .param(
                "buffer",
                file_buffer(
                    dir.path(),
                    &[
                        ("total_limit", Value::Size(64 << 10)),
                        ("sync", "interval".into()),
                    ],
                ),
            ),
    );
    let running = build(&h, &spec).start();
    let mut emitter = running.emitter();
    let blocked = Arc::new(AtomicBool::new(true));
    let b2 = blocked.clone();
    let producer = tokio::spawn(async move {
        for i in 0..600 {
            emitter.emit(batch("home.7.owl", i * 10, 10)).await.unwrap();
        }
        b2.store(false, Ordering::SeqCst);
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        blocked.load(Ordering::SeqCst),
        "6000 events cannot fit in 64KiB"
    );
    h.gate.add_permits(1_000_000);
    producer.await.unwrap();
    wait_for("6000 events", || h.sink.lock().unwrap().len() == 6000).await;
    running.stop();
    running.wait().await;
    assert_eq!(numbers(&h), (0..6000).collect::<Vec<_>>());
}

#[tokio::test]
async fn overflow_drop_oldest_discards_and_counts() {
    let h = harness();
    let dir = tempfile::tempdir().unwrap();
    let spec = one_output(
        NodeSpec::new("capture")
            .param("id", "out")
            .param("gated", true)
            .param(
                "buffer",
                file_buffer(
                    dir.path(),
                    &[
                        ("total_limit", Value::Size(64 << 10)),
                        ("overflow", "drop_oldest".into()),
                        ("sync", "interval".into()),
                    ],
                ),
            ),
    );
    let running = build(&h, &spec).start();
    let mut emitter = running.emitter();
    for i in 0..1000 {
        emitter.emit(batch("home.8.owl", i * 10, 10)).await.unwrap();
    }
    h.gate.add_permits(1_000_000);
    let newest = 9999;
    wait_for("the newest event", || numbers(&h).contains(&newest)).await;
    running.stop();
    running.wait().await;
    let got = numbers(&h);
    assert!(got.len() < 10_000, "some were dropped: {}", got.len());
    assert!(got.len() > 100, "{}", got.len());
    let mut sorted = got.clone();
    sorted.sort_unstable();
    assert_eq!(got, sorted, "what is kept stays in order");
}

#[tokio::test]
async fn an_output_that_buffers_internally_confirms_only_after_its_flush() {
    let h = harness();
    let dir = tempfile::tempdir().unwrap();
    let spec = one_output(
        NodeSpec::new("capture")
            .param("id", "out")
            .param("buffered", true)
            .param("buffer", file_buffer(dir.path(), &[])),
    );
    let running = build(&h, &spec).start();
    let mut emitter = running.emitter();
    emitter.emit(batch("home.9.owl", 0, 3)).await.unwrap();
    wait_for("the flush", || h.sink.lock().unwrap().len() == 3).await;
    running.stop();
    running.wait().await;
    let h2 = harness();
    let pipeline = build(&h2, &spec);
    assert_eq!(
        pipeline.open_buffers().unwrap()[0].1,
        0,
        "confirmed after the flush"
    );
}

#[tokio::test(start_paused = true)]
async fn a_batch_given_up_on_goes_to_the_secondary_output() {
    let h = harness();
    h.down.store(true, Ordering::SeqCst);
    let spec = PipelineSpec {
        inputs: vec![],
        root: FlowSpec {
            filters: vec![],
            matches: vec![
                MatchSpec {
                    patterns: vec!["home.**".into()],
                    outputs: vec![NodeSpec::new("capture")
                        .param("id", "primary")
                        .param("flaky", true)
                        .param("retry_wait", Duration::from_millis(100))
                        .param("retry_timeout", Duration::from_secs(2))
                        .param("secondary", "spare")],
                },
                MatchSpec {
                    patterns: vec!["spare.**".into()],
                    outputs: vec![NodeSpec::new("capture").param("id", "spare")],
                },
            ],
        },
        labels: vec![],
    };
    let running = build(&h, &spec).start();
    let mut emitter = running.emitter();
    emitter.emit(batch("home.10.owl", 0, 4)).await.unwrap();
    wait_for("the secondary", || h.sink.lock().unwrap().len() == 4).await;
    running.stop();
    let report = running.wait().await;
    let rows = h.sink.lock().unwrap().clone();
    assert!(
        rows.iter().all(|r| r.0 == "spare" && r.1 == "home.10.owl"),
        "{rows:?}"
    );
    let primary = report.metrics.node("primary").unwrap();
    assert!(
        primary.retries >= 3 && primary.retries <= 6,
        "{}",
        primary.retries
    );
}

#[tokio::test(start_paused = true)]
async fn without_a_secondary_a_timed_out_batch_goes_to_errors() {
    let h = harness();
    h.down.store(true, Ordering::SeqCst);
    let spec = PipelineSpec {
        inputs: vec![],
        root: FlowSpec {
            filters: vec![],
            matches: vec![MatchSpec {
                patterns: vec!["**".into()],
                outputs: vec![NodeSpec::new("capture")
                    .param("id", "primary")
                    .param("flaky", true)
                    .param("retry_timeout", Duration::from_secs(10))],
            }],
        },
        labels: vec![LabelSpec {
            name: "errors".into(),
            flow: FlowSpec {
                filters: vec![],
                matches: vec![MatchSpec {
                    patterns: vec!["**".into()],
                    outputs: vec![NodeSpec::new("capture").param("id", "err")],
                }],
            },
        }],
    };
    let running = build(&h, &spec).start();
    running.emitter().emit(batch("a", 0, 2)).await.unwrap();
    wait_for("errors", || h.sink.lock().unwrap().len() == 2).await;
    running.stop();
    running.wait().await;
    let rows = h.sink.lock().unwrap().clone();
    assert!(rows.iter().all(|r| r.0 == "err"));
    assert!(
        rows[0].3.contains("gave up after retrying for"),
        "{}",
        rows[0].3
    );
}

fn build_errors(h: &Harness, output: NodeSpec) -> String {
    match Pipeline::build(&one_output(output), &h.registry, BuildOptions::default()) {
        Ok(_) => panic!("built"),
        Err(e) => e
            .iter()
            .map(|e| e.message.clone())
            .collect::<Vec<_>>()
            .join("\n"),
    }
}

#[test]
fn a_wrong_buffer_is_refused_with_what_to_change() {
    let h = harness();
    let e = build_errors(
        &h,
        NodeSpec::new("capture").param("buffer", Value::Map(vec![("type".into(), "file".into())])),
    );
    assert!(e.contains("needs `path`"), "{e}");
    let e = build_errors(
        &h,
        NodeSpec::new("capture").param(
            "buffer",
            Value::Map(vec![("overflow".into(), "drop_oldest".into())]),
        ),
    );
    assert!(e.contains("needs `type = \"file\"`"), "{e}");
    let e = build_errors(
        &h,
        NodeSpec::new("capture").param("buffer", Value::Map(vec![("pth".into(), "x".into())])),
    );
    assert!(e.contains("did you mean `path`"), "{e}");
    let e = build_errors(
        &h,
        NodeSpec::new("capture").param("buffer", Value::Map(vec![("sync".into(), "never".into())])),
    );
    assert!(e.contains("always"), "{e}");
    let e = build_errors(
        &h,
        NodeSpec::new("capture").param(
            "buffer",
            Value::Map(vec![("total_limit".into(), Value::Size(1 << 20))]),
        ),
    );
    assert!(e.contains("applies to file buffers"), "{e}");
    let e = build_errors(
        &h,
        NodeSpec::new("capture")
            .param("id", "a")
            .param("secondary", "b"),
    );
    assert!(e.contains("no output with id `b`"), "{e}");
    let e = build_errors(
        &h,
        NodeSpec::new("capture")
            .param("id", "a")
            .param("secondary", "a"),
    );
    assert!(e.contains("its own secondary"), "{e}");
}

#[test]
fn two_outputs_cannot_share_a_buffer_directory_and_secondaries_cannot_loop() {
    let h = harness();
    let dir = tempfile::tempdir().unwrap();
    let spec = PipelineSpec {
        inputs: vec![],
        root: FlowSpec {
            filters: vec![],
            matches: vec![MatchSpec {
                patterns: vec!["**".into()],
                outputs: vec![
                    NodeSpec::new("capture")
                        .param("id", "a")
                        .param("secondary", "b")
                        .param("buffer", file_buffer(dir.path(), &[])),
                    NodeSpec::new("capture")
                        .param("id", "b")
                        .param("secondary", "a")
                        .param("buffer", file_buffer(dir.path(), &[])),
                ],
            }],
        },
        labels: vec![],
    };
    let errors = Pipeline::build(&spec, &h.registry, BuildOptions::default())
        .err()
        .expect("refused");
    let text: Vec<_> = errors.iter().map(|e| e.message.clone()).collect();
    assert!(
        text.iter()
            .any(|t| t.contains("both keep their file buffer")),
        "{text:?}"
    );
    assert!(text.iter().any(|t| t.contains("form a loop")), "{text:?}");
}

#[test]
fn a_buffer_another_process_holds_is_reported_before_start() {
    let h = harness();
    let dir = tempfile::tempdir().unwrap();
    let spec = one_output(
        NodeSpec::new("capture")
            .param("id", "out")
            .param("buffer", file_buffer(dir.path(), &[])),
    );
    let first = build(&h, &spec);
    first.open_buffers().unwrap();
    let second = build(&h, &spec);
    let errors = second.open_buffers().unwrap_err();
    assert!(errors[0].contains("output `out`"), "{errors:?}");
    assert!(errors[0].contains("in use"), "{errors:?}");
}

/// Unmounts on drop, also when an assertion fails.
struct Tmpfs(std::path::PathBuf);

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_stops_acknowledging_and_recovers_by_itself() {
    let base = tempfile::tempdir().unwrap();
    let mnt = base.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&mnt)
        .output()
        .unwrap();
    if !mounted.status.success() && std::env::var_os("CI").is_none() {
        eprintln!(
            "SKIPPED: cannot mount a tmpfs here ({}); CI runs as root and runs it",
            String::from_utf8_lossy(&mounted.stderr).trim()
        );
        return;
    }
    assert!(mounted.status.success(), "mounting a tmpfs failed under CI");
    let _mount = Tmpfs(mnt.clone());
    let h = harness();
    let spec = one_output(
        NodeSpec::new("capture")
            .param("id", "out")
            .param("gated", true)
            .param(
                "buffer",
                file_buffer(
                    &mnt.join("buf"),
                    &[
                        // Far above the disk: the disk is what fills.
                        ("total_limit", Value::Size(1 << 30)),
                        ("chunk_size", Value::Size(64 << 10)),
                        ("overflow", "reject".into()),
                    ],
                ),
            ),
    );
    let running = build(&h, &spec).start();
    let mut emitter = running.emitter();
    let mut acked = 0;
    let mut refused = None;
    for i in 0..10_000 {
        match emitter.emit(batch("home.11.owl", i * 50, 50)).await {
            Ok(()) => acked += 50,
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let refused = refused.expect("a 4 MiB disk fills up");
    assert!(matches!(refused, EmitError::BufferFull { .. }), "{refused}");
    assert!(acked > 1000, "{acked}");
    // Still refusing while nothing is delivered: no crash, no ack.
    assert!(emitter
        .emit(batch("home.11.owl", 900_000, 50))
        .await
        .is_err());
    // The destination takes events again: confirmed segments are deleted
    // and the buffer accepts events without being told.
    h.gate.add_permits(1_000_000);
    wait_for("every acked event", || {
        h.sink.lock().unwrap().len() >= acked
    })
    .await;
    let mut accepted = false;
    for _ in 0..200 {
        if emitter
            .emit(batch("home.11.owl", 1_000_000, 1))
            .await
            .is_ok()
        {
            accepted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(accepted, "the buffer never accepted events again");
    wait_for("the last event", || numbers(&h).contains(&1_000_000)).await;
    drop(emitter);
    running.stop();
    running.wait().await;
    let mut got = numbers(&h);
    got.retain(|n| *n < 900_000);
    assert_eq!(got, (0..acked as u64).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_corrupt_chunk_and_a_torn_tail_are_cut_out_and_the_rest_is_delivered() {
    let dir = tempfile::tempdir().unwrap();
    let spec = one_output(
        NodeSpec::new("capture")
            .param("id", "out")
            .param("flaky", true)
            .param("retry_wait", Duration::from_millis(20))
            .param("buffer", file_buffer(dir.path(), &[])),
    );
    let h = harness();
    h.down.store(true, Ordering::SeqCst);
    let running = build(&h, &spec).start();
    let mut emitter = running.emitter();
    for i in 0..10 {
        emitter
            .emit(batch("home.12.owl", i * 10, 10))
            .await
            .unwrap();
    }
    drop(emitter);
    wait_for("a failed write", || h.failures.load(Ordering::SeqCst) > 0).await;
    running.stop();
    assert_eq!(running.wait().await.left_buffered, 100);

    // Damage the segment: one byte inside the 4th chunk's records, and a
    // write torn in the middle of the last chunk.
    let seg = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .unwrap();
    let mut bytes = std::fs::read(&seg).unwrap();
    let needle = b"\"n\":35,";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .unwrap();
    bytes[at + 1] ^= 0x20;
    let torn = bytes.len() - 30;
    bytes.truncate(torn);
    std::fs::write(&seg, &bytes).unwrap();

    let h2 = harness();
    let running = build(&h2, &spec).start();
    wait_for("the intact chunks", || h2.sink.lock().unwrap().len() == 80).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    running.stop();
    running.wait().await;
    let expected: Vec<u64> = (0..30).chain(40..90).collect();
    assert_eq!(numbers(&h2), expected);
}

#[tokio::test]
async fn an_input_with_id_key_gives_resent_events_the_same_ids() {
    use ulog_engine::{Input, InputContext};
    struct Twice;
    #[async_trait]
    impl Input for Twice {
        async fn run(self: Box<Self>, mut ctx: InputContext) -> Result<(), PluginError> {
            for _ in 0..2 {
                let events = [
                    r#"{"reading":"0190f5c4-8a3b-7000-8000-1234abcd0001","w":1}"#,
                    r#"{"reading":"owl-42-1700000000","w":2}"#,
                    r#"{"reading":17,"w":3}"#,
                    r#"{"w":4}"#,
                ]
                .iter()
                .map(|t| {
                    Event::new(
                        EventTime::from_secs_nanos(1, 0),
                        Record::from_json_bytes(t.as_bytes().to_vec().into()).unwrap(),
                    )
                })
                .collect();
                ctx.emitter
                    .emit(Batch::new(Tag::parse("home.13").unwrap(), events))
                    .await
                    .map_err(|e| PluginError::with_source("emit", e))?;
            }
            Ok(())
        }
    }
    let mut h = harness();
    h.registry.add_input(
        PluginSpec::new(PluginKind::Input, "twice", "sends the same batch twice"),
        |_, _| Ok(Box::new(Twice)),
    );
    let mut spec = one_output(NodeSpec::new("capture").param("id", "out"));
    spec.inputs = vec![NodeSpec::new("twice").param("id_key", "reading")];
    let report = build(&h, &spec).start().wait().await;
    assert_eq!(report.lost, 0);
    let rows = h.sink.lock().unwrap().clone();
    assert_eq!(rows.len(), 8);
    let ids: Vec<EventId> = rows.iter().map(|r| r.2).collect();
    // A UUID is kept as it is.
    assert_eq!(ids[0].to_string(), "0190f5c4-8a3b-7000-8000-1234abcd0001");
    // The same field value gives the same id both times; different values,
    // different ids; no field, a fresh id each time.
    for i in 0..3 {
        assert_eq!(ids[i], ids[i + 4], "event {i}");
    }
    assert_ne!(ids[1], ids[2]);
    assert_ne!(ids[3], ids[7]);
    assert!(ids.iter().all(|id| id.is_some()));
    // Hashed ids are UUIDv8.
    assert_eq!(&ids[1].to_string()[14..15], "8");
}
