//! The runtime end to end with small in-test plugins: routing (first match
//! wins, filters in order, copy, labels, relabel), unmatched counting, the
//! `errors` label, retries, backpressure and clean shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;
use ulog_engine::spec::{
    FilterSpec, FlowSpec, LabelSpec, MatchSpec, NodeSpec, PipelineSpec, Severity, Site,
};
use ulog_engine::{
    async_trait, Batch, BuildOptions, Delivery, Event, EventTime, Filter, Input, InputContext,
    Output, ParamKind, ParamSpec, Pipeline, PluginError, PluginKind, PluginSpec, Record, Registry,
    Rejected, Tag,
};

type Sink = Arc<Mutex<Vec<(String, String, Record)>>>;

/// Captures what it receives, under its node id.
struct Capture {
    id: String,
    sink: Sink,
    fail_first: Option<Arc<AtomicUsize>>,
    reject_field: Option<String>,
    gate: Option<Arc<tokio::sync::Semaphore>>,
}

#[async_trait]
impl Output for Capture {
    async fn write(&mut self, batch: &Batch) -> Delivery {
        if let Some(g) = &self.gate {
            g.acquire().await.unwrap().forget();
        }
        if let Some(fail) = &self.fail_first {
            if fail.load(Ordering::SeqCst) > 0 {
                fail.fetch_sub(1, Ordering::SeqCst);
                return Delivery::Retry(PluginError::new("destination down"));
            }
        }
        let mut failures = Vec::new();
        for (i, e) in batch.events.iter().enumerate() {
            let mut r = e.record.clone();
            if let Some(f) = &self.reject_field {
                if r.get(f).is_some() {
                    failures.push(ulog_engine::ItemFailure {
                        index: i,
                        error: PluginError::new(format!("field {f} not allowed")),
                        retryable: false,
                    });
                    continue;
                }
            }
            self.sink
                .lock()
                .unwrap()
                .push((self.id.clone(), batch.tag.to_string(), r));
        }
        if failures.is_empty() {
            Delivery::Delivered
        } else {
            Delivery::Partial(failures)
        }
    }
}

/// Emits `count` events for each tag in `tags`, one batch per tag.
struct Burst {
    tags: Vec<String>,
    count: usize,
}

#[async_trait]
impl Input for Burst {
    async fn run(self: Box<Self>, mut ctx: InputContext) -> Result<(), PluginError> {
        for tag in &self.tags {
            let events = (0..self.count)
                .map(|i| {
                    Event::new(
                        EventTime::from_secs_nanos(1_700_000_000, i as u32),
                        Record::from_json_bytes(
                            format!("{{\"n\":{i},\"src\":\"{tag}\"}}")
                                .into_bytes()
                                .into(),
                        )
                        .unwrap(),
                    )
                })
                .collect();
            ctx.emitter
                .emit(Batch::new(Tag::parse(tag).unwrap(), events))
                .await
                .map_err(|e| PluginError::with_source("emit", e))?;
        }
        Ok(())
    }
}

/// Adds a field; rejects events carrying `bad`; rewrites tag `old.*` to `new.*`.
struct Mark {
    field: String,
}

#[async_trait]
impl Filter for Mark {
    async fn filter(
        &self,
        batch: &mut Batch,
        rejects: &mut Vec<Rejected>,
    ) -> Result<(), PluginError> {
        let mut kept = Vec::new();
        for mut e in batch.events.drain(..) {
            if e.record.get("bad").is_some() {
                rejects.push(Rejected {
                    event: e,
                    reason: "bad event".into(),
                });
                continue;
            }
            let seen = e
                .record
                .get("marks")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string();
            e.record
                .insert("marks", json!(format!("{seen}{}", self.field)));
            kept.push(e);
        }
        batch.events = kept;
        if let Some(rest) = batch.tag.strip_prefix("old.") {
            batch.tag = Tag::parse(&format!("new.{rest}")).unwrap();
        }
        Ok(())
    }
}

struct Harness {
    registry: Registry,
    sink: Sink,
    fail_first: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
}

fn harness() -> Harness {
    let sink: Sink = Arc::default();
    let fail_first = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let mut registry = Registry::new();
    registry.add_input(
        PluginSpec::new(PluginKind::Input, "burst", "test input")
            .param(ParamSpec::required(
                "tags",
                ParamKind::List(Box::new(ParamKind::Str)),
                "tags",
            ))
            .param(ParamSpec::with_default(
                "count",
                ParamKind::Int,
                1,
                "events per tag",
            )),
        |p, _| {
            Ok(Box::new(Burst {
                tags: p.str_list("tags")?,
                count: p.usize("count")?,
            }))
        },
    );
    registry.add_filter(
        PluginSpec::new(PluginKind::Filter, "mark", "test filter").param(ParamSpec::required(
            "field",
            ParamKind::Str,
            "mark",
        )),
        |p, _| {
            Ok(Arc::new(Mark {
                field: p.str("field")?.to_string(),
            }))
        },
    );
    let (s, f, g) = (sink.clone(), fail_first.clone(), gate.clone());
    registry.add_output(
        PluginSpec::new(PluginKind::Output, "capture", "test output")
            .param(ParamSpec::optional(
                "reject_field",
                ParamKind::Str,
                "reject events with this field",
            ))
            .param(ParamSpec::with_default(
                "gated",
                ParamKind::Bool,
                false,
                "wait for permits",
            ))
            .param(ParamSpec::with_default(
                "flaky",
                ParamKind::Bool,
                false,
                "fail while the counter is positive",
            )),
        move |p, ctx| {
            Ok(Box::new(Capture {
                id: ctx.id.clone(),
                sink: s.clone(),
                fail_first: p.bool("flaky")?.then(|| f.clone()),
                reject_field: p.opt_str("reject_field")?.map(str::to_string),
                gate: p.bool("gated")?.then(|| g.clone()),
            }))
        },
    );
    Harness {
        registry,
        sink,
        fail_first,
        gate,
    }
}

fn burst(tags: &[&str], count: i64) -> NodeSpec {
    NodeSpec::new("burst")
        .param(
            "tags",
            ulog_engine::Value::List(tags.iter().map(|t| (*t).into()).collect()),
        )
        .param("count", count)
}

fn capture(id: &str) -> NodeSpec {
    NodeSpec::new("capture").param("id", id)
}

fn m(patterns: &[&str], outputs: Vec<NodeSpec>) -> MatchSpec {
    MatchSpec {
        patterns: patterns.iter().map(|s| s.to_string()).collect(),
        outputs,
    }
}

async fn run(h: &Harness, spec: PipelineSpec) -> ulog_engine::RunReport {
    let p = Pipeline::build(&spec, &h.registry, BuildOptions::default())
        .unwrap_or_else(|e| panic!("{e:#?}"));
    let running = p.start();
    tokio::time::timeout(Duration::from_secs(20), running.wait())
        .await
        .expect("pipeline ended")
}

fn landed(h: &Harness) -> Vec<(String, String)> {
    let mut v: Vec<_> = h
        .sink
        .lock()
        .unwrap()
        .iter()
        .map(|(o, t, _)| (o.clone(), t.clone()))
        .collect();
    v.sort();
    v.dedup();
    v
}

#[tokio::test]
async fn first_matching_block_wins_and_unmatched_are_counted() {
    let h = harness();
    let spec = PipelineSpec {
        inputs: vec![burst(
            &["app.web", "app.db", "web.api", "web.ui", "web.db", "other"],
            3,
        )],
        root: FlowSpec {
            filters: vec![],
            matches: vec![
                m(&["app.db"], vec![capture("db")]),
                m(&["app.**", "web.{api,ui}"], vec![capture("apps")]),
                m(&["web.*"], vec![capture("web")]),
            ],
        },
        labels: vec![],
    };
    let report = run(&h, spec).await;
    assert_eq!(
        landed(&h),
        vec![
            ("apps".into(), "app.web".into()),
            ("apps".into(), "web.api".into()),
            ("apps".into(), "web.ui".into()),
            ("db".into(), "app.db".into()),
            ("web".into(), "web.db".into()),
        ]
    );
    assert_eq!(h.sink.lock().unwrap().len(), 15);
    assert_eq!(report.metrics.unmatched, 3, "the 3 events tagged `other`");
    assert_eq!(report.metrics.node("apps").unwrap().events_out, 9);
    assert_eq!(report.lost, 0);
}

#[tokio::test]
async fn every_matching_filter_runs_in_file_order_and_copy_fans_out() {
    let h = harness();
    let spec = PipelineSpec {
        inputs: vec![burst(&["home.1.owl", "home.1.nissan", "trial.x"], 2)],
        root: FlowSpec {
            filters: vec![
                FilterSpec {
                    patterns: vec!["home.*.owl".into(), "home.*.nissan".into()],
                    node: NodeSpec::new("mark").param("field", "A"),
                },
                FilterSpec {
                    patterns: vec!["home.**".into()],
                    node: NodeSpec::new("mark").param("field", "B"),
                },
                FilterSpec {
                    patterns: vec!["home.*.nissan".into()],
                    node: NodeSpec::new("mark").param("field", "C"),
                },
            ],
            matches: vec![
                m(&["home.**"], vec![capture("home")]),
                m(&["trial.**"], vec![capture("c1"), capture("c2")]),
            ],
        },
        labels: vec![],
    };
    run(&h, spec).await;
    let sink = h.sink.lock().unwrap();
    let marks = |tag: &str| -> Vec<String> {
        sink.iter()
            .filter(|(_, t, _)| t == tag)
            .map(|(_, _, r)| {
                r.clone()
                    .get("marks")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_string()
            })
            .collect()
    };
    assert_eq!(marks("home.1.owl"), vec!["AB", "AB"]);
    assert_eq!(marks("home.1.nissan"), vec!["ABC", "ABC"]);
    let trial: Vec<_> = sink
        .iter()
        .filter(|(_, t, _)| t == "trial.x")
        .map(|(o, _, _)| o.as_str())
        .collect();
    assert_eq!(trial.iter().filter(|o| **o == "c1").count(), 2);
    assert_eq!(trial.iter().filter(|o| **o == "c2").count(), 2);
}

#[tokio::test]
async fn labels_relabel_and_tag_rewrites_route_again() {
    let h = harness();
    let spec = PipelineSpec {
        inputs: vec![
            burst(&["a.x"], 1),
            burst(&["b.x"], 1).param("label", "side"),
            burst(&["old.y"], 1),
        ],
        root: FlowSpec {
            filters: vec![FilterSpec {
                patterns: vec!["old.**".into()],
                node: NodeSpec::new("mark").param("field", "R"),
            }],
            matches: vec![
                m(
                    &["a.**"],
                    vec![NodeSpec::new("relabel").param("label", "side")],
                ),
                m(&["new.**"], vec![capture("rewritten")]),
            ],
        },
        labels: vec![LabelSpec {
            name: "side".into(),
            flow: FlowSpec {
                filters: vec![],
                matches: vec![m(&["**"], vec![capture("side")])],
            },
        }],
    };
    run(&h, spec).await;
    assert_eq!(
        landed(&h),
        vec![
            ("rewritten".into(), "new.y".into()),
            ("side".into(), "a.x".into()),
            ("side".into(), "b.x".into())
        ]
    );
}

#[tokio::test]
async fn rejected_events_reach_the_errors_label_with_the_reason() {
    let h = harness();
    let mut bad = burst(&["app.bad"], 1);
    bad.plugin = "burst".into();
    let spec = PipelineSpec {
        inputs: vec![burst(&["app.ok"], 2)],
        root: FlowSpec {
            filters: vec![],
            matches: vec![m(
                &["app.**"],
                vec![capture("main").param("reject_field", "n")],
            )],
        },
        labels: vec![LabelSpec {
            name: "errors".into(),
            flow: FlowSpec {
                filters: vec![],
                matches: vec![m(&["**"], vec![capture("errors")])],
            },
        }],
    };
    let report = run(&h, spec).await;
    let sink = h.sink.lock().unwrap();
    let errors: Vec<_> = sink.iter().filter(|(o, _, _)| o == "errors").collect();
    assert_eq!(errors.len(), 2);
    let mut rec = errors[0].2.clone();
    assert_eq!(rec.get("_error"), Some(&json!("field n not allowed")));
    assert_eq!(rec.get("_error_node"), Some(&json!("main")));
    assert_eq!(report.metrics.rejected, 2);
    assert_eq!(report.metrics.dropped, 0);
}

#[tokio::test]
async fn filter_rejects_without_errors_label_are_counted_as_dropped() {
    struct BadInput;
    #[async_trait]
    impl Input for BadInput {
        async fn run(self: Box<Self>, mut ctx: InputContext) -> Result<(), PluginError> {
            let mut e = Event::new(EventTime::now(), Record::new());
            e.record.insert("bad", json!(true));
            let ok = Event::new(EventTime::now(), Record::new());
            ctx.emitter
                .emit(Batch::new(Tag::parse("x").unwrap(), vec![e, ok]))
                .await
                .unwrap();
            Ok(())
        }
    }
    let mut h = harness();
    h.registry
        .add_input(PluginSpec::new(PluginKind::Input, "bad", "test"), |_, _| {
            Ok(Box::new(BadInput))
        });
    let spec = PipelineSpec {
        inputs: vec![NodeSpec::new("bad")],
        root: FlowSpec {
            filters: vec![FilterSpec {
                patterns: vec!["**".into()],
                node: NodeSpec::new("mark").param("field", "M"),
            }],
            matches: vec![m(&["**"], vec![capture("out")])],
        },
        labels: vec![],
    };
    let report = run(&h, spec).await;
    assert_eq!(h.sink.lock().unwrap().len(), 1);
    assert_eq!(report.metrics.rejected, 1);
    assert_eq!(report.metrics.dropped, 1);
}

#[tokio::test(start_paused = true)]
async fn a_down_destination_is_retried_until_it_recovers() {
    let h = harness();
    h.fail_first.store(3, Ordering::SeqCst);
    let spec = PipelineSpec {
        inputs: vec![burst(&["a"], 5)],
        root: FlowSpec {
            filters: vec![],
            matches: vec![m(
                &["**"],
                vec![capture("out")
                    .param("flaky", true)
                    .param("retry_wait", Duration::from_millis(10))],
            )],
        },
        labels: vec![],
    };
    let report = run(&h, spec).await;
    assert_eq!(h.sink.lock().unwrap().len(), 5);
    assert_eq!(report.metrics.node("out").unwrap().retries, 3);
    assert_eq!(report.lost, 0);
}

#[tokio::test(start_paused = true)]
async fn retries_give_up_into_the_errors_label_when_bounded() {
    let h = harness();
    h.fail_first.store(100, Ordering::SeqCst);
    let spec = PipelineSpec {
        inputs: vec![burst(&["a"], 2)],
        root: FlowSpec {
            filters: vec![],
            matches: vec![m(
                &["a"],
                vec![capture("out")
                    .param("flaky", true)
                    .param("retry_max_attempts", 3)
                    .param("retry_wait", Duration::from_millis(5))],
            )],
        },
        labels: vec![LabelSpec {
            name: "errors".into(),
            flow: FlowSpec {
                filters: vec![],
                matches: vec![m(
                    &["**"],
                    vec![NodeSpec::new("capture").param("id", "err")],
                )],
            },
        }],
    };
    let report = run(&h, spec).await;
    let total_err: u64 = report.metrics.node("err").map(|n| n.events_in).unwrap_or(0);
    assert_eq!(total_err, 2, "{report:#?}");
    assert_eq!(report.metrics.node("out").unwrap().events_failed, 2);
}

#[tokio::test]
async fn a_slow_output_holds_inputs_back_instead_of_growing_memory() {
    let h = harness();
    // The gate starts closed: the output takes nothing until permits are added.
    let gate = h.gate.clone();
    let spec = PipelineSpec {
        inputs: vec![burst(&["a", "a", "a", "a", "a", "a"], 1)],
        root: FlowSpec {
            filters: vec![],
            matches: vec![m(
                &["**"],
                vec![capture("slow")
                    .param("gated", true)
                    .param("queue_batches", 1)],
            )],
        },
        labels: vec![],
    };
    let p = Pipeline::build(&spec, &h.registry, BuildOptions::default()).unwrap();
    let running = p.start();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let m = running.metrics();
    let input = &m.nodes.iter().find(|n| n.id == "burst#1").unwrap();
    // One batch in the output's hands, one in its queue, the input waits on the third.
    assert!(
        input.events_out <= 2,
        "input got ahead of the blocked output: {m:#?}"
    );
    gate.add_permits(100);
    let report = tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .unwrap();
    assert_eq!(h.sink.lock().unwrap().len(), 6);
    assert_eq!(report.metrics.node("burst#1").unwrap().events_out, 6);
}

#[tokio::test]
async fn stop_flushes_queued_events_before_exiting() {
    struct Forever;
    #[async_trait]
    impl Input for Forever {
        async fn run(self: Box<Self>, mut ctx: InputContext) -> Result<(), PluginError> {
            let mut i = 0u64;
            loop {
                tokio::select! {
                    _ = ctx.shutdown.cancelled() => return Ok(()),
                    r = ctx.emitter.emit(Batch::single(Tag::parse("t").unwrap(), Event::new(EventTime::now(), Record::Map(json!({"i": i}).as_object().unwrap().clone())))) => {
                        r.map_err(|e| PluginError::with_source("emit", e))?;
                        i += 1;
                        tokio::task::yield_now().await;
                    }
                }
            }
        }
    }
    let mut h = harness();
    h.registry.add_input(
        PluginSpec::new(PluginKind::Input, "forever", "test"),
        |_, _| Ok(Box::new(Forever)),
    );
    let spec = PipelineSpec {
        inputs: vec![NodeSpec::new("forever")],
        root: FlowSpec {
            filters: vec![],
            matches: vec![m(&["**"], vec![capture("out")])],
        },
        labels: vec![],
    };
    let running = Pipeline::build(&spec, &h.registry, BuildOptions::default())
        .unwrap()
        .start();
    tokio::time::sleep(Duration::from_millis(100)).await;
    running.stop();
    let report = tokio::time::timeout(Duration::from_secs(10), running.wait())
        .await
        .unwrap();
    let accepted = report.metrics.node("forever#1").unwrap().events_out;
    assert!(accepted > 0);
    assert_eq!(
        h.sink.lock().unwrap().len() as u64,
        accepted,
        "every accepted event was written"
    );
    assert_eq!(report.lost, 0);
}

#[test]
fn build_errors_are_collected_with_their_sites() {
    let h = harness();
    let spec = PipelineSpec {
        inputs: vec![
            NodeSpec::new("burts"),
            burst(&["a"], 1).param("label", "nope"),
            burst(&["a"], 1).param("cont", 3),
        ],
        root: FlowSpec {
            filters: vec![],
            matches: vec![
                m(&["a.{b"], vec![capture("x")]),
                m(&["**"], vec![capture("x")]),
                m(
                    &["late"],
                    vec![NodeSpec::new("capture").param("queue_batches", "many")],
                ),
            ],
        },
        labels: vec![],
    };
    let errs = Pipeline::build(&spec, &h.registry, BuildOptions::default())
        .err()
        .expect("invalid");
    let sites: Vec<Site> = errs.iter().map(|e| e.site).collect();
    assert!(errs.iter().all(|e| e.severity == Severity::Error));
    assert!(
        errs[0].message.contains("did you mean `burst`"),
        "{errs:#?}"
    );
    assert!(sites.contains(&Site::Input(1)) && sites.contains(&Site::Input(2)));
    assert!(errs
        .iter()
        .any(|e| e.message.contains("no label named `nope`")));
    assert!(errs
        .iter()
        .any(|e| e.message.contains("did you mean `count`")));
    assert!(errs
        .iter()
        .any(|e| e.message.contains("invalid tag pattern")
            && e.site
                == Site::Match {
                    label: None,
                    index: 0
                }));
    assert!(errs.iter().any(|e| e.message.contains("`x` is used twice")));
    assert!(errs.iter().any(|e| e.message.contains("expected integer")));
}

#[test]
fn shadowed_matches_warn_and_relabel_loops_are_refused() {
    let h = harness();
    let spec = PipelineSpec {
        inputs: vec![burst(&["a"], 1)],
        root: FlowSpec {
            filters: vec![],
            matches: vec![
                m(&["**"], vec![capture("all")]),
                m(&["a"], vec![capture("never")]),
            ],
        },
        labels: vec![],
    };
    let p = Pipeline::build(&spec, &h.registry, BuildOptions::default()).unwrap();
    assert_eq!(p.warnings().len(), 1);
    assert_eq!(
        p.warnings()[0].site,
        Site::Match {
            label: None,
            index: 1
        }
    );

    let looped = PipelineSpec {
        inputs: vec![burst(&["a"], 1)],
        root: FlowSpec {
            filters: vec![],
            matches: vec![m(
                &["**"],
                vec![NodeSpec::new("relabel").param("label", "x")],
            )],
        },
        labels: vec![
            LabelSpec {
                name: "x".into(),
                flow: FlowSpec {
                    filters: vec![],
                    matches: vec![m(
                        &["**"],
                        vec![NodeSpec::new("relabel")
                            .param("id", "to-y")
                            .param("label", "y")],
                    )],
                },
            },
            LabelSpec {
                name: "y".into(),
                flow: FlowSpec {
                    filters: vec![],
                    matches: vec![m(
                        &["**"],
                        vec![NodeSpec::new("relabel")
                            .param("id", "to-x")
                            .param("label", "x")],
                    )],
                },
            },
        ],
    };
    let errs = Pipeline::build(&looped, &h.registry, BuildOptions::default())
        .err()
        .expect("a loop");
    assert!(
        errs[0].message.contains("loop forever") && errs[0].message.contains("to-x"),
        "{errs:#?}"
    );
}

#[tokio::test]
async fn inputs_can_send_unparsable_input_to_the_errors_label() {
    struct Garbled;
    #[async_trait]
    impl Input for Garbled {
        async fn run(self: Box<Self>, mut ctx: InputContext) -> Result<(), PluginError> {
            let mut raw = Record::new();
            raw.insert("message", json!("{not json"));
            let rejected = vec![Rejected {
                event: Event::new(EventTime::now(), raw),
                reason: "invalid JSON".into(),
            }];
            ctx.emitter
                .reject(Tag::parse("in.x").unwrap(), &ctx.id, rejected)
                .await
                .unwrap();
            Ok(())
        }
    }
    let mut h = harness();
    h.registry.add_input(
        PluginSpec::new(PluginKind::Input, "garbled", "test"),
        |_, _| Ok(Box::new(Garbled)),
    );
    let spec = PipelineSpec {
        inputs: vec![NodeSpec::new("garbled")],
        root: FlowSpec {
            filters: vec![],
            matches: vec![m(&["**"], vec![capture("main")])],
        },
        labels: vec![LabelSpec {
            name: "errors".into(),
            flow: FlowSpec {
                filters: vec![],
                matches: vec![m(&["**"], vec![capture("errors")])],
            },
        }],
    };
    let report = run(&h, spec).await;
    let sink = h.sink.lock().unwrap();
    assert_eq!(sink.len(), 1);
    let (out, tag, rec) = &sink[0];
    assert_eq!((out.as_str(), tag.as_str()), ("errors", "in.x"));
    let mut rec = rec.clone();
    assert_eq!(rec.get("message"), Some(&json!("{not json")));
    assert_eq!(rec.get("_error"), Some(&json!("invalid JSON")));
    assert_eq!(rec.get("_error_node"), Some(&json!("garbled#1")));
    assert_eq!(report.metrics.rejected, 1);
}

#[test]
fn an_input_and_an_output_of_the_same_type_get_distinct_default_ids() {
    let mut h = harness();
    h.registry.add_output(
        PluginSpec::new(
            PluginKind::Output,
            "burst",
            "an output sharing the input's type name",
        ),
        |_, _| {
            Ok(Box::new(Capture {
                id: "x".into(),
                sink: Arc::default(),
                fail_first: None,
                reject_field: None,
                gate: None,
            }))
        },
    );
    let spec = PipelineSpec {
        inputs: vec![burst(&["a"], 1)],
        root: FlowSpec {
            filters: vec![],
            matches: vec![m(&["**"], vec![NodeSpec::new("burst")])],
        },
        labels: vec![],
    };
    let (_, ids) = Pipeline::build_with_ids(&spec, &h.registry, BuildOptions::default())
        .unwrap_or_else(|e| panic!("{e:#?}"));
    assert_eq!(ids.ids[&Site::Input(0)], "burst#1");
    assert_eq!(
        ids.ids[&Site::Output {
            label: None,
            index: 0,
            output: 0
        }],
        "burst#2"
    );
}

/// Records the size of every batch it is given; order-independent.
struct ChunkSpy {
    seen: Arc<Mutex<Vec<usize>>>,
    independent: bool,
}

#[async_trait]
impl Filter for ChunkSpy {
    async fn filter(
        &self,
        batch: &mut Batch,
        _rejects: &mut Vec<Rejected>,
    ) -> Result<(), PluginError> {
        self.seen.lock().unwrap().push(batch.len());
        for e in &mut batch.events {
            let n = e.record.get("n").cloned().unwrap_or_default();
            e.record.insert("seen", n);
        }
        Ok(())
    }

    fn order_independent(&self) -> bool {
        self.independent
    }
}

/// Runs `count` events of one tag through a `ChunkSpy` (registered as
/// `spy`); returns the harness, the batch sizes the filter saw, and the report.
async fn through_spy(
    independent: bool,
    count: i64,
) -> (Harness, Vec<usize>, ulog_engine::RunReport) {
    let mut h = harness();
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let s = seen.clone();
    h.registry.add_filter(
        PluginSpec::new(PluginKind::Filter, "spy", "test"),
        move |_, _| {
            Ok(Arc::new(ChunkSpy {
                seen: s.clone(),
                independent,
            }))
        },
    );
    let spec = PipelineSpec {
        inputs: vec![burst(&["big"], count)],
        root: FlowSpec {
            filters: vec![FilterSpec {
                patterns: vec!["**".into()],
                node: NodeSpec::new("spy"),
            }],
            matches: vec![m(&["**"], vec![capture("out")])],
        },
        labels: vec![],
    };
    let report = run(&h, spec).await;
    let chunks = seen.lock().unwrap().clone();
    (h, chunks, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_through_order_independent_filters_are_split_and_keep_their_order() {
    let (h, chunks, report) = through_spy(true, 4000).await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(chunks.iter().sum::<usize>(), 4000);
    assert_eq!(
        chunks.len(),
        cores.min(4000 / 256),
        "one chunk per core: {chunks:?}"
    );
    let order: Vec<i64> = h
        .sink
        .lock()
        .unwrap()
        .iter()
        .map(|(_, _, r)| r.clone().get("seen").and_then(|v| v.as_i64()).unwrap())
        .collect();
    assert_eq!(
        order,
        (0..4000).collect::<Vec<i64>>(),
        "events keep their order"
    );
    assert_eq!(report.metrics.node("spy#1").unwrap().events_in, 4000);
    assert_eq!(report.metrics.node("spy#1").unwrap().events_out, 4000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stateful_filters_see_whole_batches_in_order() {
    let (h, chunks, _) = through_spy(false, 3000).await;
    assert_eq!(chunks, vec![3000], "never split");
    assert_eq!(h.sink.lock().unwrap().len(), 3000);
}
