//! Expressions in a routes file, as a user writes them: `filter grep` and
//! `filter record`'s `compute` run by the real `ulog` binary, and mistakes
//! inside an expression reported by `ulog check` at their line and column.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

fn ulog() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ulog"))
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `routes` with `input` on stdin until it ends; returns stderr.
fn run(dir: &Path, routes: &str, input: &str) -> String {
    let path = dir.join("routes.conf");
    std::fs::write(&path, routes).unwrap();
    let mut child = ulog()
        .arg("run")
        .arg(&path)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{err}");
    err
}

fn check(dir: &Path, routes: &str) -> (Option<i32>, String) {
    let path = dir.join("check.conf");
    std::fs::write(&path, routes).unwrap();
    let out = ulog().arg("check").arg(&path).output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const ROUTES: &str = r#"
input stdin { tag = "home.h1.battery" }

filter "home.**" grep {
  regexp  = { state = /^(charging|idle)$/ }
  exclude = { "$.source.kind" = /^test$/ }
  if      = `$.household == tag[1] and $.soc_pct < 50`
}

filter "home.**" record {
  compute = {
    kwh   = `round($.soc_pct * $.capacity_kwh / 100)`
    label = `format("{}:{}", $.household, upper($.state))`
  }
  remove = ["capacity_kwh"]
}

match "home.**" file { path = "kept.jsonl" }

label errors {
  match "**" file { path = "errors.jsonl" }
}
"#;

#[test]
fn grep_and_computed_fields_keep_and_change_exactly_the_expected_events() {
    let dir = tempfile::tempdir().unwrap();
    let input = [
        // Kept: h1, charging, below 50.
        r#"{"n":1,"household":"h1","state":"charging","soc_pct":42,"capacity_kwh":40}"#,
        // Dropped: above 50.
        r#"{"n":2,"household":"h1","state":"charging","soc_pct":80,"capacity_kwh":40}"#,
        // Dropped: another household than the tag's.
        r#"{"n":3,"household":"h2","state":"charging","soc_pct":10,"capacity_kwh":40}"#,
        // Dropped: state not matched by the regexp.
        r#"{"n":4,"household":"h1","state":"driving","soc_pct":10,"capacity_kwh":40}"#,
        // Dropped: excluded test source.
        r#"{"n":5,"household":"h1","state":"idle","soc_pct":10,"capacity_kwh":40,"source":{"kind":"test"}}"#,
        // Rejected to errors: soc_pct is text, `<` cannot compare it.
        r#"{"n":6,"household":"h1","state":"idle","soc_pct":"low","capacity_kwh":40}"#,
        // Rejected by `compute`: no capacity (null * number).
        r#"{"n":7,"household":"h1","state":"idle","soc_pct":20}"#,
        // Kept.
        r#"{"n":8,"household":"h1","state":"idle","soc_pct":25,"capacity_kwh":62,"source":{"kind":"car"}}"#,
    ]
    .join("\n")
        + "\n";
    run(dir.path(), ROUTES, &input);

    let kept = lines(&dir.path().join("kept.jsonl"));
    let ns: Vec<i64> = kept.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, vec![1, 8], "{kept:?}");
    assert_eq!(kept[0]["kwh"], 17); // 42 * 40 / 100 = 16.8
    assert_eq!(kept[0]["label"], "h1:CHARGING");
    assert_eq!(kept[1]["kwh"], 16); // 25 * 62 / 100 = 15.5
    assert_eq!(kept[1]["label"], "h1:IDLE");
    assert!(kept.iter().all(|r| r.get("capacity_kwh").is_none()));

    let errors = lines(&dir.path().join("errors.jsonl"));
    let ns: Vec<i64> = errors.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, vec![6, 7], "{errors:?}");
    let reason = |i: usize| errors[i]["_error"].as_str().unwrap().to_string();
    assert!(reason(0).starts_with("`if`: "), "{}", reason(0));
    assert!(reason(1).starts_with("compute `kwh`: "), "{}", reason(1));
    // A rejected event is the event as it came into the filter, unchanged.
    assert_eq!(errors[1]["soc_pct"], 20);
    assert!(errors[1].get("label").is_none());
}

#[test]
fn check_points_at_the_mistake_inside_a_backtick_expression() {
    let dir = tempfile::tempdir().unwrap();
    let routes = "input stdin { }\nfilter \"**\" grep {\n  if = `$.a == 1 and\n        uper($.name) == \"X\"`\n}\nmatch \"**\" null { }\n";
    let (code, err) = check(dir.path(), routes);
    assert_eq!(code, Some(1), "{err}");
    // `uper` is on line 4, column 9.
    assert!(err.contains("check.conf:4:9"), "{err}");
    assert!(err.contains("did you mean `upper`"), "{err}");
}

#[test]
fn check_points_at_the_mistake_inside_a_quoted_expression_with_escapes() {
    let dir = tempfile::tempdir().unwrap();
    // In the file: `if = "$.x == \"a\" and $.n < \"3\""`: the expression is
    // `$.x == "a" and $.n < "3"`, whose type error (a number field compared
    // to a string is fine, but `"a" < 3` is not) is set up below.
    let routes = "input stdin { }\nfilter \"**\" grep { if = \"$.x == \\\"a\\\" and \\\"b\\\" < 3\" }\nmatch \"**\" null { }\n";
    let (code, err) = check(dir.path(), routes);
    assert_eq!(code, Some(1), "{err}");
    // The expression starts at column 26; `\"b\"` is at column 43 of the
    // file (each `\"` takes two columns there, one in the expression).
    let line = routes.lines().nth(1).unwrap();
    let col = line.find("\\\"b").unwrap() + 1;
    assert!(
        err.contains(&format!("check.conf:2:{col}")),
        "col {col}: {err}"
    );
}

#[test]
fn check_reports_a_bad_regex_and_an_unterminated_expression() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = check(
        dir.path(),
        "input stdin { }\nfilter \"**\" grep { regexp = { msg = /(open/ } }\nmatch \"**\" null { }\n",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("check.conf:2:37"), "{err}");
    assert!(err.contains("invalid regex"), "{err}");

    let (code, err) = check(
        dir.path(),
        "input stdin { }\nfilter \"**\" grep {\n  if = `$.a == 1\n}\nmatch \"**\" null { }\n",
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("check.conf:3:8"), "{err}");
    assert!(err.contains("unterminated expression"), "{err}");
}

#[test]
fn throttle_limits_each_household_and_rejects_the_excess_to_errors() {
    let dir = tempfile::tempdir().unwrap();
    let routes = r#"
input stdin { tag = "home.phone" }
filter "home.**" throttle {
  key = `$.household`
  rate = 3
  interval = 1h
  excess = "reject"
}
match "home.**" file { path = "kept.jsonl" }
label errors {
  match "**" file { path = "errors.jsonl" }
}
"#;
    let mut input = String::new();
    for i in 0..20 {
        let h = if i % 2 == 0 { "h1" } else { "h2" };
        input.push_str(&format!("{{\"n\":{i},\"household\":\"{h}\"}}\n"));
    }
    run(dir.path(), routes, &input);
    let kept = lines(&dir.path().join("kept.jsonl"));
    let ns: Vec<i64> = kept.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    // The first three of each household, in order.
    assert_eq!(ns, vec![0, 1, 2, 3, 4, 5], "{kept:?}");
    let errors = lines(&dir.path().join("errors.jsonl"));
    assert_eq!(errors.len(), 14);
    assert!(errors.iter().all(|e| e["_error"]
        .as_str()
        .unwrap()
        .starts_with("throttled: key `h")));
}

#[test]
fn rewrite_tag_splits_a_batch_by_new_tag_and_routes_each_again() {
    let dir = tempfile::tempdir().unwrap();
    let routes = r#"
input stdin { tag = "phone" }
filter "phone" rewrite_tag {
  rules = [
    { key = "event", pattern = /^(enter|exit)$/, tag = "beacon.{household}.$1" },
    { if = `$.battery_pct < 20`, tag = "alerts.{household}" },
  ]
}
# Re-routed events pass the filters of their new tag.
filter "beacon.**" record { set = { routed = "{tag}" } }
match "beacon.*.enter" file { path = "enter.jsonl" }
match "beacon.*.exit"  file { path = "exit.jsonl" }
match "alerts.**"      file { path = "alerts.jsonl" }
match "phone"          file { path = "rest.jsonl" }
label errors {
  match "**" file { path = "errors.jsonl" }
}
"#;
    let input = [
        r#"{"n":1,"household":"h1","event":"enter"}"#,
        r#"{"n":2,"household":"h2","event":"exit"}"#,
        r#"{"n":3,"household":"h1","event":"ping","battery_pct":12}"#,
        r#"{"n":4,"household":"h1","event":"ping","battery_pct":80}"#,
        r#"{"n":5,"household":"h2","event":"enter"}"#,
        // A household that cannot be part of a tag.
        r#"{"n":6,"household":"a b","event":"enter"}"#,
        // No household for the template.
        r#"{"n":7,"event":"exit"}"#,
    ]
    .join("\n")
        + "\n";
    run(dir.path(), routes, &input);
    let get = |f: &str| -> Vec<(i64, String)> {
        lines(&dir.path().join(f))
            .iter()
            .map(|r| {
                (
                    r["n"].as_i64().unwrap(),
                    r.get("routed")
                        .and_then(|v| v.as_str())
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .collect()
    };
    assert_eq!(
        get("enter.jsonl"),
        vec![(1, "beacon.h1.enter".into()), (5, "beacon.h2.enter".into())]
    );
    assert_eq!(get("exit.jsonl"), vec![(2, "beacon.h2.exit".into())]);
    assert_eq!(get("alerts.jsonl"), vec![(3, String::new())]);
    assert_eq!(get("rest.jsonl"), vec![(4, String::new())]);
    let errors = lines(&dir.path().join("errors.jsonl"));
    let ns: Vec<i64> = errors.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, vec![6, 7], "{errors:?}");
    assert!(errors[0]["_error"]
        .as_str()
        .unwrap()
        .contains("not a valid tag"));
}

#[test]
fn a_rewrite_loop_ends_in_errors_instead_of_spinning() {
    let dir = tempfile::tempdir().unwrap();
    let routes = r#"
input stdin { tag = "loop" }
filter "loop.**" rewrite_tag {
  rules = [{ key = "n", pattern = /./, tag = "{tag}.again" }]
}
match "**" file { path = "out.jsonl" }
label errors {
  match "**" file { path = "errors.jsonl" }
}
"#;
    run(dir.path(), routes, "{\"n\":1}\n");
    assert!(lines(&dir.path().join("out.jsonl")).is_empty());
    let errors = lines(&dir.path().join("errors.jsonl"));
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0]["_error"]
            .as_str()
            .unwrap()
            .contains("rewrite loop"),
        "{errors:?}"
    );
}

#[test]
fn check_locates_a_mistake_inside_a_rewrite_rule() {
    let dir = tempfile::tempdir().unwrap();
    let routes = "input stdin { tag = \"p\" }\nfilter \"p\" rewrite_tag {\n  rules = [\n    { key = \"a\", pattern = /x/, tag = \"ok\" },\n    { if = `$.a >`, tag = \"b\" },\n  ]\n}\nmatch \"**\" null { }\n";
    let (code, err) = check(dir.path(), routes);
    assert_eq!(code, Some(1), "{err}");
    // The expression of the second rule ends early: reported on line 5.
    assert!(err.contains("check.conf:5:"), "{err}");
}

#[test]
fn dedupe_passes_each_reading_once_and_rejects_the_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let routes = r#"
input stdin { tag = "nissan.battery" }
filter "nissan.**" dedupe {
  key = `format("{}:{}", $.vin, $.car_time)`
  window = 1h
  duplicates = "reject"
}
match "nissan.**" file { path = "kept.jsonl" }
label errors {
  match "**" file { path = "errors.jsonl" }
}
"#;
    let input = [
        r#"{"n":1,"vin":"SJN1","car_time":"2026-12-03T07:00:00Z","soc":60}"#,
        r#"{"n":2,"vin":"SJN1","car_time":"2026-12-03T07:00:00Z","soc":60}"#,
        r#"{"n":3,"vin":"SJN2","car_time":"2026-12-03T07:00:00Z","soc":30}"#,
        r#"{"n":4,"vin":"SJN1","car_time":"2026-12-03T07:30:00Z","soc":58}"#,
        r#"{"n":5,"vin":"SJN2","car_time":"2026-12-03T07:00:00Z","soc":30}"#,
    ]
    .join("\n")
        + "\n";
    run(dir.path(), routes, &input);
    let kept = lines(&dir.path().join("kept.jsonl"));
    let ns: Vec<i64> = kept.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, vec![1, 3, 4]);
    let errors = lines(&dir.path().join("errors.jsonl"));
    let ns: Vec<i64> = errors.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    assert_eq!(ns, vec![2, 5]);
    assert_eq!(
        errors[0]["_error"],
        "duplicate: key `SJN1:2026-12-03T07:00:00Z` already seen"
    );
}
