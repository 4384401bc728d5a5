//! The rule filter's tests: each kind, its boundaries, bounded state and
//! restarts from a snapshot.

use super::*;
use bytes::Bytes;
use std::path::Path;

fn build(given: Vec<(&str, Value)>) -> Result<RuleFilter, BuildError> {
    let given: Vec<(String, Value)> = given.into_iter().map(|(k, v)| (k.into(), v)).collect();
    RuleFilter::from_params(&spec().validate(&given).expect("valid params"))
}

fn s(v: &str) -> Value {
    Value::Str(v.into())
}

fn secs(n: u64) -> Value {
    Value::Duration(Duration::from_secs(n))
}

fn threshold() -> Vec<(&'static str, Value)> {
    vec![
        ("kind", s("threshold")),
        ("key", s("$.household")),
        ("value", s("$.soc")),
        ("below", Value::Float(50.0)),
        ("rearm", Value::Float(55.0)),
        ("tag", s("alerts.{key}.low_battery")),
    ]
}

/// One event at `t` seconds with `json` as its record.
fn ev(t: i64, json: &str) -> Event {
    Event::new(
        EventTime::from_secs_nanos(t, 0),
        Record::from_json_bytes(Bytes::from(json.to_string())).unwrap(),
    )
}

/// Runs `events` through `f` one batch each; returns what was emitted, as
/// (tag, time in seconds, record).
fn feed(f: &RuleFilter, events: Vec<Event>) -> Vec<(String, i64, Json)> {
    let mut emitted = Vec::new();
    for e in events {
        let mut b = Batch::single(Tag::parse("home.battery").unwrap(), e);
        let mut rejects = Vec::new();
        for out in f.apply(&mut b, &mut rejects) {
            for e in out.events {
                emitted.push((
                    out.tag.as_str().to_string(),
                    e.time.secs(),
                    Json::Object(e.record.to_map().into_owned()),
                ));
            }
        }
        assert!(rejects.is_empty(), "{rejects:?}");
        assert_eq!(b.events.len(), 1, "the input passes on");
    }
    emitted
}

fn socs(household: &str, values: &[f64]) -> Vec<Event> {
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            ev(
                i as i64 * 60,
                &format!(r#"{{"household":"{household}","soc":{v}}}"#),
            )
        })
        .collect()
}

#[test]
fn a_threshold_fires_once_on_noise_and_rearms_only_past_the_second_level() {
    let f = build(threshold()).unwrap();
    let out = feed(
        &f,
        socs(
            "h1",
            &[
                60.0, 51.0, 49.9, 50.1, 49.8, 50.2, 49.0, 54.9, 49.0, 55.0, 48.0,
            ],
        ),
    );
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].0, "alerts.h1.low_battery");
    assert_eq!(out[0].1, 120);
    assert_eq!(out[0].2["value"], 49.9);
    assert_eq!(out[0].2["key"], "h1");
    assert_eq!(out[0].2["direction"], "below");
    assert_eq!(out[0].2["_cause"][0]["soc"], 49.9);
    // 54.9 did not re-arm; 55.0 did, so 48.0 fires again.
    assert_eq!(out[1].1, 600);
    assert_eq!(out[1].2["value"], 48.0);
}

#[test]
fn above_thresholds_and_keys_are_independent() {
    let mut p = threshold();
    p.retain(|(k, _)| *k != "below" && *k != "rearm");
    p.push(("above", Value::Float(80.0)));
    p.push(("rearm", Value::Float(75.0)));
    let f = build(p).unwrap();
    let mut events = socs("h1", &[70.0, 81.0, 79.0, 82.0]);
    events.extend(socs("h2", &[85.0]));
    let out = feed(&f, events);
    let keys: Vec<_> = out.iter().map(|o| o.2["key"].clone()).collect();
    assert_eq!(keys, vec![Json::from("h1"), Json::from("h2")]);
}

#[test]
fn change_names_state_changes_and_ignores_repeats() {
    let f = build(vec![
        ("kind", s("change")),
        ("key", s("$.household")),
        ("value", s("$.charging")),
        (
            "names",
            Value::Map(vec![
                ("true".into(), s("charging_started")),
                ("false".into(), s("charging_stopped")),
            ]),
        ),
        ("tag", s("events.{key}.{change}")),
        ("fields", Value::Map(vec![("source".into(), s("nissan"))])),
    ])
    .unwrap();
    let rec = |h: &str, c: bool| format!(r#"{{"household":"{h}","charging":{c}}}"#);
    let out = feed(
        &f,
        vec![
            ev(1, &rec("h1", false)),
            ev(2, &rec("h1", false)),
            ev(3, &rec("h1", true)),
            ev(4, &rec("h2", true)),
            ev(5, &rec("h1", true)),
            ev(6, &rec("h1", false)),
        ],
    );
    let tags: Vec<_> = out.iter().map(|o| o.0.as_str()).collect();
    assert_eq!(
        tags,
        vec!["events.h1.charging_started", "events.h1.charging_stopped"]
    );
    assert_eq!(out[0].2["from"], false);
    assert_eq!(out[0].2["to"], true);
    assert_eq!(out[0].2["source"], "nissan");
    assert_eq!(out[1].1, 6);
}

fn window(extra: Vec<(&'static str, Value)>) -> RuleFilter {
    let mut p = vec![
        ("kind", s("window")),
        ("key", s("$.household")),
        ("value", s("$.w")),
        ("aggregate", s("sum")),
        ("window", secs(60)),
        ("tag", s("stats.{key}")),
    ];
    p.retain(|(k, _)| !extra.iter().any(|(e, _)| e == k));
    p.extend(extra);
    build(p).unwrap()
}

fn w(t: i64, v: i64) -> Event {
    ev(t, &format!(r#"{{"household":"h1","w":{v}}}"#))
}

#[test]
fn tumbling_windows_close_at_their_boundary_and_the_boundary_starts_the_next() {
    let f = window(vec![]);
    let out = feed(&f, vec![w(0, 1), w(59, 2), w(60, 4), w(119, 8), w(125, 16)]);
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].1, 60, "emitted at the window's end");
    assert_eq!(out[0].2["value"], 3.0);
    assert_eq!(out[0].2["count"], 2);
    assert_eq!(out[0].2["window_start"], 0.0);
    assert_eq!(out[0].2["_cause"][0]["w"], 2);
    assert_eq!(out[1].2["value"], 12.0);
}

#[test]
fn late_events_count_within_allowed_lateness_and_not_beyond() {
    let f = window(vec![("allowed_lateness", secs(10))]);
    // 65 moves the watermark to 55: [0,60) is still open, 58 counts.
    let out = feed(&f, vec![w(10, 1), w(65, 2), w(58, 4)]);
    assert!(out.is_empty());
    // 71: watermark 61, [0,60) closes with 1 + 4.
    let out = feed(&f, vec![w(71, 8)]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].2["value"], 5.0);
    // 59 is now beyond the lateness: not counted anywhere.
    let out = feed(&f, vec![w(59, 100), w(200, 0)]);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].2["value"], 10.0, "[60,120) has 2 + 8 only");
    assert_eq!(f.late_events(), 1);
}

#[test]
fn sliding_windows_overlap_and_every_aggregate_works() {
    let f = window(vec![("slide", secs(30)), ("aggregate", s("avg"))]);
    let out = feed(&f, vec![w(0, 2), w(40, 4), w(70, 6), w(200, 0)]);
    let starts: Vec<_> = out.iter().map(|o| o.2["window_start"].clone()).collect();
    assert_eq!(
        starts,
        vec![
            Json::from(-30.0),
            Json::from(0.0),
            Json::from(30.0),
            Json::from(60.0)
        ]
    );
    let avgs: Vec<_> = out.iter().map(|o| o.2["value"].clone()).collect();
    assert_eq!(
        avgs,
        vec![
            Json::from(2.0),
            Json::from(3.0),
            Json::from(5.0),
            Json::from(6.0)
        ]
    );
    for (agg, want) in [
        ("count", Json::from(3)),
        ("min", Json::from(2.0)),
        ("max", Json::from(6.0)),
        ("last", Json::from(4)),
    ] {
        let f = window(vec![("aggregate", s(agg))]);
        // Out of order: `last` is the latest by event time.
        let out = feed(&f, vec![w(50, 4), w(1, 2), w(10, 6), w(61, 0)]);
        assert_eq!(out[0].2["value"], want, "{agg}");
    }
}

fn join(extra: Vec<(&'static str, Value)>) -> RuleFilter {
    let mut p = vec![
        ("kind", s("join")),
        ("key", s("$.household")),
        ("left_if", s(r#"$.type == "battery""#)),
        ("left_value", s("$.soc")),
        ("right_if", s(r#"$.type == "solar""#)),
        ("right_value", s("$.export_w")),
        ("freshness", secs(300)),
        ("when", s("$.left < 50 and $.right > 1000")),
        ("tag", s("advice.{key}.plug_in")),
    ];
    p.extend(extra);
    build(p).unwrap()
}

fn bat(t: i64, h: &str, soc: i64) -> Event {
    ev(
        t,
        &format!(r#"{{"household":"{h}","type":"battery","soc":{soc}}}"#),
    )
}

fn sol(t: i64, h: &str, w: i64) -> Event {
    ev(
        t,
        &format!(r#"{{"household":"{h}","type":"solar","export_w":{w}}}"#),
    )
}

#[test]
fn a_join_fires_when_both_fresh_sides_start_to_meet_the_condition() {
    let f = join(vec![]);
    let out = feed(
        &f,
        vec![
            bat(0, "h1", 40),
            sol(10, "h2", 2000),                           // another household
            sol(400, "h1", 2000),                          // battery reading is 400 s old: stale
            bat(410, "h1", 41),                            // fresh pair, condition true: fires
            sol(420, "h1", 2100),                          // still true: no repeat
            sol(430, "h1", 500),                           // false
            sol(440, "h1", 1500),                          // true again: fires
            ev(450, r#"{"household":"h1","type":"car"}"#), // neither stream
        ],
    );
    assert_eq!(out.len(), 2, "{out:?}");
    assert_eq!(out[0].0, "advice.h1.plug_in");
    assert_eq!(out[0].1, 410);
    assert_eq!(out[0].2["left"], 41);
    assert_eq!(out[0].2["right"], 2000);
    assert_eq!(out[0].2["_cause"][1]["export_w"], 2000);
    assert_eq!(out[1].2["right"], 1500);
}

#[test]
fn idle_keys_expire_and_their_open_windows_are_emitted() {
    let f = window(vec![("key_idle", secs(100))]);
    let mut events = vec![w(0, 1)];
    events.push(ev(500, r#"{"household":"h2","w":1}"#));
    let out = feed(&f, events);
    assert_eq!(out.len(), 1, "h1's window flushed on expiry: {out:?}");
    assert_eq!(out[0].2["key"], "h1");
    assert!(!f.lock().keys.contains_key("h1"));
}

#[test]
fn max_keys_bounds_state_and_counts_the_keys_refused() {
    let mut p = threshold();
    p.push(("max_keys", Value::Int(2)));
    let f = build(p).unwrap();
    let mut events = socs("a", &[40.0]);
    events.extend(socs("b", &[40.0]));
    events.extend(socs("c", &[40.0, 30.0]));
    let out = feed(&f, events);
    assert_eq!(out.len(), 2);
    assert_eq!(f.keys_refused(), 2);
    assert_eq!(f.lock().keys.len(), 2);
}

#[test]
fn failing_expressions_reject_or_skip_and_drop_input_consumes() {
    let f = build(threshold()).unwrap();
    let mut b = Batch::new(
        Tag::parse("t").unwrap(),
        vec![
            ev(1, r#"{"household":"h1","soc":"low"}"#),
            ev(2, r#"{"household":"h1"}"#),
        ],
    );
    let mut rejects = Vec::new();
    assert!(f.apply(&mut b, &mut rejects).is_empty());
    assert_eq!(rejects.len(), 2);
    assert!(
        rejects[0].reason.contains("needs a number"),
        "{}",
        rejects[0].reason
    );

    let mut p = threshold();
    p.push(("on_error", s("skip")));
    p.push(("drop_input", Value::Bool(true)));
    p.push(("if", s(r#"$.household != "test""#)));
    let f = build(p).unwrap();
    let mut b = Batch::new(
        Tag::parse("t").unwrap(),
        vec![
            ev(1, r#"{"household":"h1","soc":"low"}"#),
            ev(2, r#"{"household":"h1","soc":40}"#),
            ev(3, r#"{"household":"test","soc":10}"#),
        ],
    );
    let mut rejects = Vec::new();
    let out = f.apply(&mut b, &mut rejects);
    assert!(rejects.is_empty());
    assert_eq!(out.len(), 1);
    let left: Vec<_> = b.events.iter().map(|e| e.time.secs()).collect();
    assert_eq!(left, vec![1, 3], "the failed and the unselected pass on");
}

#[test]
fn bad_parameters_are_located_build_errors() {
    let mut p = threshold();
    p.retain(|(k, _)| *k != "rearm");
    assert_eq!(build(p).unwrap_err().param.as_deref(), Some("rearm"));
    let mut p = threshold();
    p.retain(|(k, _)| *k != "rearm");
    p.push(("rearm", Value::Float(45.0)));
    assert_eq!(build(p).unwrap_err().param.as_deref(), Some("rearm"));
    let mut p = threshold();
    p.push(("window", secs(5)));
    let e = build(p).unwrap_err();
    assert!(e.message.contains("for window rules"), "{e}");
    let mut p = threshold();
    p.retain(|(k, _)| *k != "value");
    p.push(("value", s("$.soc +")));
    let e = build(p).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("value"));
    assert!(e.within.is_some(), "points inside the expression");
    let e = build(vec![
        ("kind", s("window")),
        ("window", secs(60)),
        ("aggregate", s("sum")),
        ("tag", s("x")),
    ])
    .unwrap_err();
    assert_eq!(e.param.as_deref(), Some("value"));
    let e = build(vec![("kind", s("join")), ("tag", s("x"))]).unwrap_err();
    assert_eq!(e.param.as_deref(), Some("left_if"));
}

/// A stream mixing every rule's inputs, for the restart tests.
fn stream() -> Vec<Event> {
    let mut events = Vec::new();
    for i in 0..200i64 {
        let h = if i % 3 == 0 { "h2" } else { "h1" };
        let soc = 60 - (i % 40) + (i % 7);
        let charging = (i / 15) % 2 == 0;
        events.push(ev(
            i * 20,
            &format!(
                r#"{{"household":"{h}","type":"battery","soc":{soc},"charging":{charging},"w":{i}}}"#
            ),
        ));
        if i % 4 == 0 {
            events.push(ev(
                i * 20 - 30,
                &format!(
                    r#"{{"household":"{h}","type":"solar","export_w":{},"w":1}}"#,
                    (i * 37) % 3000
                ),
            ));
        }
    }
    events
}

fn rules(path: &Path) -> Vec<Vec<(&'static str, Value)>> {
    let state = |name: &str| s(path.join(name).to_str().unwrap());
    let mut t = threshold();
    t.push(("if", s(r#"$.type == "battery""#)));
    t.push(("state_path", state("t.state")));
    vec![
        t,
        vec![
            ("kind", s("change")),
            ("key", s("$.household")),
            ("if", s(r#"$.type == "battery""#)),
            ("value", s("$.charging")),
            ("tag", s("c.{key}")),
            ("state_path", state("c.state")),
        ],
        vec![
            ("kind", s("window")),
            ("key", s("$.household")),
            ("value", s("$.w")),
            ("aggregate", s("sum")),
            ("window", secs(300)),
            ("slide", secs(100)),
            ("allowed_lateness", secs(40)),
            ("tag", s("w.{key}")),
            ("state_path", state("w.state")),
        ],
        {
            let mut j = vec![("state_path", state("j.state"))];
            j.extend(vec![
                ("kind", s("join")),
                ("key", s("$.household")),
                ("left_if", s(r#"$.type == "battery""#)),
                ("left_value", s("$.soc")),
                ("right_if", s(r#"$.type == "solar""#)),
                ("right_value", s("$.export_w")),
                ("freshness", secs(120)),
                ("when", s("$.left < 50 and $.right > 1000")),
                ("tag", s("j.{key}")),
            ]);
            j
        },
    ]
}

#[test]
fn a_restart_after_a_snapshot_emits_exactly_what_an_uninterrupted_run_does() {
    let events = stream();
    let half = events.len() / 2;
    for (i, rule) in rules(Path::new("/nonexistent")).into_iter().enumerate() {
        let without_state: Vec<_> = rule
            .iter()
            .filter(|(k, _)| *k != "state_path")
            .cloned()
            .collect();
        let reference = feed(&build(without_state).unwrap(), events.clone());
        assert!(!reference.is_empty(), "{rule:?} emits something");

        let dir = tempfile::tempdir().unwrap();
        let rule = rules(dir.path()).swap_remove(i);
        let first = build(rule.clone()).unwrap();
        let mut got = feed(&first, events[..half].to_vec());
        // kill -9 right after a snapshot: no shutdown path runs.
        first.snapshot().unwrap();
        std::mem::forget(first);
        let second = build(rule).unwrap();
        got.extend(feed(&second, events[half..].to_vec()));
        assert_eq!(got, reference);
    }
}

#[test]
fn dropping_the_filter_snapshots_and_a_corrupt_snapshot_is_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut p = threshold();
    p.push(("state_path", s(path.to_str().unwrap())));
    let f = build(p.clone()).unwrap();
    assert_eq!(feed(&f, socs("h1", &[40.0])).len(), 1);
    drop(f);
    // Restored: still disarmed, so no second alert.
    let f = build(p.clone()).unwrap();
    assert!(feed(&f, socs("h1", &[30.0])).is_empty());
    f.snapshot().unwrap();
    std::mem::forget(f);

    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 2;
    bytes[last] ^= 0x55;
    std::fs::write(&path, &bytes).unwrap();
    let f = build(p.clone()).unwrap();
    assert!(f.lock().keys.is_empty(), "corrupt: ignored");
    assert_eq!(feed(&f, socs("h1", &[30.0])).len(), 1);
    drop(f);

    std::fs::write(&path, b"garbage").unwrap();
    assert!(build(p.clone()).unwrap().lock().keys.is_empty());
    // A snapshot of a differently defined rule is not applied.
    let f = build(p.clone()).unwrap();
    feed(&f, socs("h1", &[40.0]));
    drop(f);
    let mut other = p;
    other.retain(|(k, _)| *k != "rearm");
    other.push(("rearm", Value::Float(60.0)));
    assert!(build(other).unwrap().lock().keys.is_empty());
}

#[test]
fn building_without_events_writes_no_state_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state");
    let mut p = threshold();
    p.push(("state_path", s(path.to_str().unwrap())));
    drop(build(p).unwrap());
    assert!(!path.exists(), "ulog check must not create state files");
}
