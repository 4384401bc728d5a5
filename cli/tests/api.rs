//! `ulog run --api`: the real binary serves `/health` and `/metrics` while
//! events flow, and `/health` turns 503 when an input fails.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the child when the test ends, however it ends.
struct Ulog(Child);

impl Drop for Ulog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start(routes: &str, api_port: u16) -> (Ulog, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.conf");
    std::fs::write(&file, routes).unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_ulog"))
        .arg("run")
        .arg(&file)
        .args(["--api", &format!("127.0.0.1:{api_port}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ulog = Ulog(child);
    let begun = Instant::now();
    while TcpStream::connect(("127.0.0.1", api_port)).is_err() {
        if let Ok(Some(status)) = ulog.0.try_wait() {
            panic!("ulog exited early: {status}");
        }
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "api never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    (ulog, dir)
}

/// One request; returns the status code and the body.
fn request(port: u16, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    let status = reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("bad reply: {reply:?}"));
    let body = reply
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of one sample line, such as `ulog_unmatched_events_total`.
fn sample(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"))
}

#[test]
fn metrics_count_the_events_that_flow_and_health_is_ok() {
    let (http, api) = (free_port(), free_port());
    let (_ulog, _dir) = start(
        &format!(
            "input http {{ id = \"phones\"  listen = \"127.0.0.1:{http}\" }}\n\
             match \"home.**\" null {{ id = \"sink\" }}\n"
        ),
        api,
    );
    let begun = Instant::now();
    while TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "http input never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut sent = 0;
    for n in 1..=4 {
        let body: Vec<String> = (0..n).map(|i| format!("{{\"i\":{i}}}")).collect();
        let (status, _) = request(http, "POST", "/home.a", &format!("[{}]", body.join(",")));
        assert_eq!(status, 200);
        sent += n;
    }
    let (status, _) = request(http, "POST", "/other.tag", "{\"x\":1}");
    assert_eq!(status, 200);

    // The output task counts after the write: wait for it to catch up.
    let begun = Instant::now();
    let text = loop {
        let (status, text) = request(api, "GET", "/metrics", "");
        assert_eq!(status, 200);
        if sample(
            &text,
            "ulog_node_events_out_total{node=\"sink\",kind=\"output\"}",
        ) == sent
        {
            break text;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "sink never counted {sent}:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        sample(
            &text,
            "ulog_node_events_in_total{node=\"phones\",kind=\"input\"}"
        ),
        sent + 1
    );
    assert_eq!(sample(&text, "ulog_unmatched_events_total"), 1);
    assert_eq!(
        sample(&text, "ulog_node_up{node=\"phones\",kind=\"input\"}"),
        1
    );

    assert_eq!(
        request(api, "GET", "/health", ""),
        (200, "ok\n".to_string())
    );
    assert_eq!(request(api, "GET", "/nope", "").0, 404);
    assert_eq!(request(api, "POST", "/metrics", "").0, 405);
}

#[test]
fn health_is_503_and_names_the_input_that_failed() {
    // Hold the port the tcp input wants, so its bind fails.
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let api = free_port();
    let (_ulog, _dir) = start(
        &format!(
            "input tcp {{ id = \"readings\"  listen = \"127.0.0.1:{port}\"  tag = \"t\" }}\n\
             input dummy {{ tag = \"demo\"  rate = 1 }}\n\
             match \"**\" null {{ }}\n"
        ),
        api,
    );
    let begun = Instant::now();
    let body = loop {
        let (status, body) = request(api, "GET", "/health", "");
        if status == 503 {
            break body;
        }
        assert_eq!(status, 200);
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "health never turned 503"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(body.starts_with("input readings: input failed"), "{body}");
    let (_, text) = request(api, "GET", "/metrics", "");
    assert_eq!(
        sample(&text, "ulog_node_up{node=\"readings\",kind=\"input\"}"),
        0
    );
    drop(taken);
}

#[test]
fn a_taken_api_address_fails_the_run_at_once() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("routes.conf");
    std::fs::write(
        &file,
        "input dummy { tag = \"d\" }\nmatch \"**\" null { }\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_ulog"))
        .arg("run")
        .arg(&file)
        .args(["--api", &format!("127.0.0.1:{port}")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("binding the api address"), "{err}");
}

#[test]
fn a_file_buffer_shows_what_waits_for_a_down_destination() {
    let (http, api, dead) = (free_port(), free_port(), free_port());
    let (_ulog, _dir) = start(
        &format!(
            "input http {{ listen = \"127.0.0.1:{http}\" }}\n\
             match \"home.**\" tcp {{ id = \"archive\"  port = {dead}  retry_wait = 50ms\n\
               buffer = {{ type = \"file\"  path = \"buf\" }} }}\n"
        ),
        api,
    );
    let begun = Instant::now();
    while TcpStream::connect(("127.0.0.1", http)).is_err() {
        assert!(begun.elapsed() < Duration::from_secs(30));
        std::thread::sleep(Duration::from_millis(20));
    }
    for i in 0..3 {
        let (status, _) = request(http, "POST", "/home.a", &format!("{{\"i\":{i}}}"));
        assert_eq!(status, 200);
    }
    let (_, text) = request(api, "GET", "/metrics", "");
    assert!(
        sample(&text, "ulog_buffer_chunks{node=\"archive\"}") >= 1,
        "{text}"
    );
    assert!(sample(&text, "ulog_buffer_bytes{node=\"archive\"}") > 0);
    // Every append was fsynced (sync = "always" by default) and timed.
    let fsyncs = sample(&text, "ulog_buffer_fsyncs_total{node=\"archive\"}");
    assert!(fsyncs >= 3, "{text}");
    assert_eq!(
        sample(
            &text,
            "ulog_buffer_fsync_seconds_bucket{node=\"archive\",le=\"+Inf\"}"
        ),
        fsyncs
    );
    assert!(text.contains("ulog_buffer_oldest_chunk_age_seconds{node=\"archive\"}"));
}
