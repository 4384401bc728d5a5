//! The trial's per-household rules through the real `ulog` binary: Nissan
//! battery readings and OWL solar readings of two households come in over
//! stdin, `filter rule` blocks turn them into high-level events (battery low
//! with hysteresis, charging started/stopped, "plug in now"), and exactly
//! the expected events come out, for the right household and nothing for
//! the other — also when ulog is restarted halfway through the stream.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

const ROUTES: &str = r#"
input stdin { tag = "trial.readings"  time_key = "ts" }

filter "trial.readings" rule {
  kind       = "threshold"
  key        = `$.household`
  if         = `$.source == "nissan"`
  value      = `$.soc_pct`
  below      = 50
  rearm      = 55
  tag        = "alerts.{key}.battery_low"
  fields     = { message = "Your EV is below 50%" }
  state_path = "state/battery_low.state"
}

filter "trial.readings" rule {
  kind       = "change"
  key        = `$.household`
  if         = `$.source == "nissan"`
  value      = `$.charging`
  names      = { "true" = "charging_started", "false" = "charging_stopped" }
  tag        = "alerts.{key}.{change}"
  state_path = "state/charging.state"
}

filter "trial.readings" rule {
  kind        = "join"
  key         = `$.household`
  left_if     = `$.source == "nissan"`
  left_value  = `$.soc_pct`
  right_if    = `$.source == "owl"`
  right_value = `$.export_w`
  freshness   = 10m
  when        = `$.left < 50 and $.right > 1000`
  tag         = "alerts.{key}.plug_in"
  fields      = { message = "Your EV is below 50% and your panels are exporting: plug in now" }
  state_path  = "state/plug_in.state"
}

match "alerts.**" file { path = "OUT/{tag}.jsonl" }
match "trial.**" null { }
"#;

/// One reading per line, a minute apart.
fn readings() -> Vec<String> {
    let nissan = |h: &str, soc: f64, charging: bool| {
        format!(r#"{{"household":"{h}","source":"nissan","soc_pct":{soc},"charging":{charging}}}"#)
    };
    let owl = |h: &str, w: i64| format!(r#"{{"household":"{h}","source":"owl","export_w":{w}}}"#);
    let lines = vec![
        nissan("h1", 62.0, false),
        nissan("h2", 80.0, false),
        owl("h1", 200),
        owl("h2", 2000),
        nissan("h1", 55.0, false),
        nissan("h1", 51.0, false),
        nissan("h2", 79.0, false),
        nissan("h1", 49.6, false), // low: fires once
        nissan("h1", 50.2, false), // noise around 50: nothing
        nissan("h1", 49.8, false),
        owl("h1", 1500),          // below 50 and exporting: plug in now
        owl("h1", 1600),          // still so: no repeat
        nissan("h1", 50.5, true), // charging started
        nissan("h2", 78.0, false),
        nissan("h1", 56.0, true),  // re-armed
        nissan("h1", 58.0, false), // charging stopped
        owl("h2", 2200),
    ];
    lines
        .into_iter()
        .enumerate()
        .map(|(i, l)| {
            // `ts` first, read as the event time by `time_key`.
            format!(r#"{{"ts":{},{}"#, 1_777_636_800 + 60 * i as i64, &l[1..])
        })
        .collect()
}

/// Runs the routes with `lines` on stdin, writing alerts to `out`.
fn run(dir: &Path, out: &str, lines: &[String]) {
    let path = dir.join("routes.conf");
    std::fs::write(&path, ROUTES.replace("OUT", out)).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_ulog"))
        .arg("run")
        .arg(&path)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = lines.join("\n");
    input.push('\n');
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
}

/// Every alert written under `dir/out`, by tag, in file order.
fn alerts(dir: &Path, out: &str) -> BTreeMap<String, Vec<serde_json::Value>> {
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(dir.join(out)) else {
        return found;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        let tag = path.file_stem().unwrap().to_str().unwrap().to_string();
        let records = std::fs::read_to_string(&path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        found.insert(tag, records);
    }
    found
}

fn check_expected(found: &BTreeMap<String, Vec<serde_json::Value>>) {
    let tags: Vec<&str> = found.keys().map(String::as_str).collect();
    assert_eq!(
        tags,
        vec![
            "alerts.h1.battery_low",
            "alerts.h1.charging_started",
            "alerts.h1.charging_stopped",
            "alerts.h1.plug_in",
        ],
        "exactly these, and nothing for h2: {found:#?}"
    );
    assert!(
        found.values().all(|v| v.len() == 1),
        "each once: {found:#?}"
    );
    let one = |tag: &str| &found[tag][0];

    let low = one("alerts.h1.battery_low");
    assert_eq!(low["key"], "h1");
    assert_eq!(low["rule"], "threshold");
    assert_eq!(low["value"], 49.6);
    assert_eq!(low["level"], 50.0);
    assert_eq!(low["message"], "Your EV is below 50%");
    assert_eq!(low["_cause"][0]["soc_pct"], 49.6);

    let plug = one("alerts.h1.plug_in");
    assert_eq!(plug["left"], 49.8);
    assert_eq!(plug["right"], 1500);
    assert_eq!(plug["_cause"][0]["source"], "nissan");
    assert_eq!(plug["_cause"][1]["source"], "owl");

    let started = one("alerts.h1.charging_started");
    assert_eq!(started["from"], false);
    assert_eq!(started["to"], true);
    assert_eq!(started["_cause"][0]["soc_pct"], 50.5);
    let stopped = one("alerts.h1.charging_stopped");
    assert_eq!(stopped["change"], "charging_stopped");
    assert_eq!(stopped["_cause"][0]["soc_pct"], 58.0);
}

#[test]
fn the_trial_rules_emit_exactly_the_expected_events_per_household() {
    let dir = tempfile::tempdir().unwrap();
    run(dir.path(), "out", &readings());
    check_expected(&alerts(dir.path(), "out"));
    assert!(dir.path().join("state/battery_low.state").exists());
}

#[test]
fn a_restart_halfway_neither_fires_again_nor_forgets() {
    let dir = tempfile::tempdir().unwrap();
    let lines = readings();
    // The cut falls after the low alert and before the noise, the
    // plug-in advice and both charging changes.
    let (first, second) = lines.split_at(8);
    run(dir.path(), "out1", first);
    run(dir.path(), "out2", second);
    let mut found = alerts(dir.path(), "out1");
    for (tag, mut records) in alerts(dir.path(), "out2") {
        found.entry(tag).or_default().append(&mut records);
    }
    check_expected(&found);
}
