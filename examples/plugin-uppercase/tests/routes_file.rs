//! The out-of-tree plugin used from a routes file through its own `ulog`.

use std::process::Command;

#[test]
fn the_plugin_runs_from_a_routes_file() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.conf");
    std::fs::write(
        &routes,
        r#"
input dummy { tag = "demo.hello"  rate = 0  max_events = 3  record = { msg = "hello", who = "ops" } }
match "demo.**" uppercase { path = "loud.jsonl" }
"#,
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_ulog-uppercase");
    let check = Command::new(bin)
        .args(["check"])
        .arg(&routes)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let run = Command::new(bin)
        .args(["run"])
        .arg(&routes)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let written = std::fs::read_to_string(dir.path().join("loud.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = written
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert!(
        lines
            .iter()
            .all(|l| l["msg"] == "HELLO" && l["who"] == "OPS"),
        "{written}"
    );

    // The stock `ulog` does not know the plugin, and says so.
    let bad = Command::new(bin)
        .args(["check"])
        .arg(dir.path().join("missing.conf"))
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
