//! `ulog` as a user runs it: a real routes file, a real process, events
//! POSTed over HTTP with many tags, and the output files checked.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn ulog() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ulog"))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One HTTP/1.1 request; returns the status code.
fn post(port: u16, path: &str, content_type: &str, body: &str) -> std::io::Result<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len())?;
    let mut reply = String::new();
    s.read_to_string(&mut reply)?;
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad reply: {reply:?}")))
}

fn wait_until_listening(child: &mut Child, port: u16) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("ulog exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ulog did not start listening"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn stop(child: &mut Child) -> String {
    // SIGTERM, as a service manager would.
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            child
                .stderr
                .take()
                .unwrap()
                .read_to_string(&mut err)
                .unwrap();
            assert!(status.success(), "ulog exited with {status}:\n{err}");
            return err;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "ulog did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn events_posted_over_http_land_in_the_file_their_tag_routes_to() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    std::fs::create_dir_all(dir.path().join("conf.d")).unwrap();
    std::fs::write(
        dir.path().join("conf.d/errors.conf"),
        "label errors {\n  match \"**\" file { path = \"out/errors.jsonl\" }\n}\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("routes.conf"),
        r#"
# The trial's routes, in miniature.
include "conf.d/*.conf"
input http { id = "phones"  listen = "${E2E_LISTEN}" }
filter "home.*.owl" "home.*.nissan" record { set = { site = "mk" } }
match "home.*.owl" file { path = "out/energy/{tag}.jsonl"  tag_key = "tag" }
match "home.**" file { path = "out/home.jsonl"  tag_key = "tag" }
match "app.**" "web.{api,ui}" file { path = "out/apps.jsonl"  tag_key = "tag" }
match "trial.**" copy {
  file { path = "out/trial-a.jsonl" }
  file { path = "out/trial-b.jsonl" }
}
"#,
    )
    .unwrap();
    let check = ulog()
        .arg("check")
        .arg(dir.path().join("routes.conf"))
        .env("E2E_LISTEN", format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "check failed: {}",
        String::from_utf8_lossy(&check.stderr)
    );

    let mut child = ulog()
        .arg("run")
        .arg(dir.path().join("routes.conf"))
        .env("E2E_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_until_listening(&mut child, port);

    let sends = [
        ("/home.1.owl", r#"{"watts":512}"#),
        ("/home.2.owl", r#"[{"watts":1},{"watts":2}]"#),
        ("/home.1.nissan", r#"{"soc":91}"#),
        ("/home.1.beacon", r#"{"event":"enter"}"#),
        ("/app.web", r#"{"path":"/"}"#),
        ("/web.api", "{\"a\":1}\n{\"a\":2}\n"),
        ("/web.ui", r#"{"b":1}"#),
        ("/web.db", r#"{"nobody":"routes this"}"#),
        ("/trial.ev.1", r#"{"kwh":3.5}"#),
    ];
    for (path, body) in sends {
        let ct = if body.contains('\n') {
            "application/x-ndjson"
        } else {
            "application/json"
        };
        assert_eq!(post(port, path, ct, body).unwrap(), 200, "POST {path}");
    }
    // Bad requests are refused with 4xx and never written anywhere.
    assert_eq!(
        post(port, "/home.1.owl", "application/json", "{\"watts\":").unwrap(),
        400
    );
    assert_eq!(
        post(port, "/bad..tag", "application/json", "{}").unwrap(),
        400
    );

    let log = stop(&mut child);
    let out = dir.path().join("out");
    let owl1 = lines(&out.join("energy/home.1.owl.jsonl"));
    assert_eq!(owl1.len(), 1);
    assert_eq!(owl1[0]["watts"], 512);
    assert_eq!(owl1[0]["site"], "mk");
    assert_eq!(owl1[0]["tag"], "home.1.owl");
    assert_eq!(lines(&out.join("energy/home.2.owl.jsonl")).len(), 2);
    let home = lines(&out.join("home.jsonl"));
    let home_tags: Vec<&str> = home.iter().map(|l| l["tag"].as_str().unwrap()).collect();
    assert_eq!(home_tags, vec!["home.1.nissan", "home.1.beacon"]);
    assert_eq!(home[0]["site"], "mk", "the nissan filter ran");
    assert!(
        home[1].get("site").is_none(),
        "the beacon matched no filter"
    );
    let apps: Vec<String> = lines(&out.join("apps.jsonl"))
        .iter()
        .map(|l| l["tag"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(apps, vec!["app.web", "web.api", "web.api", "web.ui"]);
    assert_eq!(
        lines(&out.join("trial-a.jsonl")),
        lines(&out.join("trial-b.jsonl"))
    );
    assert_eq!(lines(&out.join("trial-a.jsonl")).len(), 1);
    assert!(!out.join("errors.jsonl").exists());
    // web.db matched nothing: counted and reported, not silently dropped.
    assert!(log.contains("web.db"), "unmatched tag reported:\n{log}");
    assert!(
        log.contains("unmatched=1"),
        "unmatched count reported:\n{log}"
    );
}

#[test]
fn check_reports_errors_with_line_and_column_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("bad.conf");
    std::fs::write(
        &routes,
        "input dummy { tag = \"a\" }\nmatch \"a.{b\" stdot { }\n",
    )
    .unwrap();
    let out = ulog().arg("check").arg(&routes).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.conf:2:"), "{err}");
    assert!(
        err.contains("stdout"),
        "suggests the nearest plugin name: {err}"
    );
}

#[test]
fn graph_prints_dot_with_patterns_on_edges() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("g.conf");
    std::fs::write(&routes, "input dummy { id = \"tick\" tag = \"a.b\" }\nmatch \"a.**\" null { id = \"sink\" }\nlabel errors { match \"**\" stdout { } }\n").unwrap();
    let out = ulog().arg("graph").arg(&routes).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dot = String::from_utf8(out.stdout).unwrap();
    assert!(dot.starts_with("digraph ulog {"), "{dot}");
    assert!(dot.contains("\"in:tick\" -> \"flow:top\""), "{dot}");
    assert!(
        dot.contains("\"flow:top\" -> \"out:sink\" [label=\"#1 a.**\"]"),
        "{dot}"
    );
    assert!(dot.contains("flow:label:errors"), "{dot}");
}

#[test]
fn stdin_pipeline_ends_at_eof_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("s.conf");
    std::fs::write(
        &routes,
        "input stdin { tag = \"cli.lines\" }\nmatch \"cli.**\" file { path = \"lines.jsonl\" }\n",
    )
    .unwrap();
    let mut child = ulog()
        .arg("run")
        .arg(&routes)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"n\":1}\n{\"n\":2}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(lines(&dir.path().join("lines.jsonl")).len(), 2);
}

#[test]
fn docs_reference_matches_the_plugins() {
    let out = ulog().args(["plugins", "--markdown"]).output().unwrap();
    assert!(out.status.success());
    let generated = String::from_utf8(out.stdout).unwrap();
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/reference.md");
    let committed = std::fs::read_to_string(&docs).unwrap_or_default();
    assert!(
        generated == committed,
        "docs/reference.md is out of date: run `cargo run -p ulog-cli -- plugins --markdown > docs/reference.md`"
    );
}
