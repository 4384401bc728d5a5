//! `output elasticsearch` as ops run it: the real `ulog` binary, events
//! POSTed to `input http`, written to a real OpenSearch 2.19 node with the
//! trial template; documents the mapping refuses reach the errors file
//! with the server's reason. Read back with OpenSearch's own APIs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// The shared server: `ULOG_TEST_OPENSEARCH_URL`, or started (or reused)
/// once by `scripts/test-servers`.
fn opensearch() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(u) = std::env::var("ULOG_TEST_OPENSEARCH_URL") {
            return u.trim_end_matches('/').to_string();
        }
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let out = Command::new(root.join("scripts/test-servers"))
            .args(["start", "opensearch"])
            .output()
            .expect("running scripts/test-servers");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .filter_map(|l| l.strip_prefix("export ULOG_TEST_OPENSEARCH_URL="))
            .map(|v| v.trim_matches(['"', '\'']).to_string())
            .next()
            .unwrap_or_else(|| panic!("no URL in {text:?}"))
    })
}

/// One HTTP/1.1 request with `Connection: close`; the status and body.
fn http(base: &str, method: &str, path: &str, content_type: &str, body: &str) -> (u16, String) {
    let authority = base.trim_start_matches("http://");
    let mut s = TcpStream::connect(authority).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut reply = Vec::new();
    s.read_to_end(&mut reply).unwrap();
    let reply = String::from_utf8_lossy(&reply).into_owned();
    let (head, rest) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = String::new();
        let mut rest = rest;
        while let Some((size, tail)) = rest.split_once("\r\n") {
            let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
            if n == 0 {
                break;
            }
            out.push_str(&tail[..n]);
            rest = &tail[n + 2..];
        }
        out
    } else {
        rest.to_string()
    };
    (status, body)
}

fn query(path: &str, body: &Value) -> Value {
    let (status, text) = http(
        opensearch(),
        "POST",
        path,
        "application/json",
        &body.to_string(),
    );
    assert_eq!(status, 200, "{path}: {text}");
    serde_json::from_str(&text).unwrap()
}

fn count(index: &str, q: Value) -> u64 {
    http(
        opensearch(),
        "POST",
        &format!("/{index}/_refresh"),
        "application/json",
        "",
    );
    query(&format!("/{index}/_count"), &json!({ "query": q }))["count"]
        .as_u64()
        .unwrap()
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Ulog(Child);

impl Drop for Ulog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn lines(path: &PathBuf) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// 2016-05-04T18:02:11Z.
const T0: i64 = 1_462_384_931;

fn beacon(household: &str, lat: f64, lon: f64, event: &str, i: i64) -> String {
    json!({
        "household": household, "device": "iphone-7",
        "beacon": {"uuid": "f7826da6-4fa2-4e98-8024-bc5b71e0893e", "major": 1, "minor": 7},
        "event": event, "lat": lat, "lon": lon, "accuracy_m": 12.5,
        "time": "2016-05-04T18:02:11Z", "ts": T0 + i
    })
    .to_string()
}

#[test]
fn events_posted_to_ulog_are_searchable_and_mapping_failures_reach_errors() {
    let base = opensearch();
    let name = format!(
        "cli-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let routes = dir.path().join("es.conf");
    std::fs::write(
        &routes,
        format!(
            r#"
input http {{ listen = "127.0.0.1:{port}"  time_key = "ts" }}

filter "phone.**" validate {{
  id = "phone-schema"
  fields = {{
    household = {{ type = "string", regex = /^hh-[0-9]{{4}}$/ }}
    lat       = {{ type = "number", min = -90, max = 90 }}
    lon       = {{ type = "number", min = -180, max = 180 }}
  }}
  geo_point = {{ lat = "lat", lon = "lon", into = "location" }}
}}

match "**" elasticsearch {{
  id = "search"
  hosts = ["{base}"]
  index = "{name}-%Y.%m.%d"
  template = "trial"
  template_name = "{name}"
  tag_key = "tag"
}}

label errors {{
  match "**" file {{ path = "errors.jsonl"  flush_interval = 100ms }}
}}
"#
        ),
    )
    .unwrap();

    let check = Command::new(env!("CARGO_BIN_EXE_ulog"))
        .arg("check")
        .arg(&routes)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );

    let child = Command::new(env!("CARGO_BIN_EXE_ulog"))
        .arg("run")
        .arg(&routes)
        .current_dir(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _ulog = Ulog(child);
    let listening = format!("127.0.0.1:{port}");
    let begun = Instant::now();
    while TcpStream::connect(&listening).is_err() {
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "ulog never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    // Four beacon events, two inside the Milton Keynes box.
    let phones = [
        beacon("hh-0042", 52.0406, -0.7594, "exit", 0),
        beacon("hh-0007", 52.0512, -0.7521, "enter", 1),
        beacon("hh-0042", 51.5072, -0.1276, "enter", 2),
        beacon("hh-0009", 52.2053, 0.1218, "exit", 3),
    ]
    .join("\n");
    let (status, _) = http(
        &listening,
        "POST",
        "/phone.beacon",
        "application/x-ndjson",
        &phones,
    );
    assert_eq!(status, 200);
    // OWL readings: two good, one whose battery the mapping cannot take.
    let owl = [
        json!({"packet": "solar", "device_id": "443719123456", "generating_w": 2876, "exporting_w": 333, "ts": T0 + 4}),
        json!({"packet": "solar", "device_id": "443719123456", "generating_w": 2901.5, "exporting_w": 350.25, "battery_mv": "low", "ts": T0 + 5}),
        json!({"packet": "electricity", "device_id": "443719123456", "total_power_w": 1110.0, "battery_mv": 2730, "ts": T0 + 6}),
    ]
    .map(|v| v.to_string())
    .join("\n");
    let (status, _) = http(
        &listening,
        "POST",
        "/home.hh-0042.owl",
        "application/x-ndjson",
        &owl,
    );
    assert_eq!(status, 200);

    let index = format!("{name}-2016.05.04");
    let begun = Instant::now();
    let errors_file = dir.path().join("errors.jsonl");
    loop {
        let (status, text) = http(
            base,
            "POST",
            &format!("/{index}/_refresh"),
            "application/json",
            "",
        );
        let stored = if status == 200 {
            count(&index, json!({"match_all": {}}))
        } else {
            let _ = text;
            0
        };
        if stored >= 6 && !lines(&errors_file).is_empty() {
            break;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(60),
            "{stored} documents in {index}, errors: {:?}",
            lines(&errors_file)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(count(&index, json!({"match_all": {}})), 6);
    assert_eq!(count(&index, json!({"term": {"tag": "phone.beacon"}})), 4);
    assert_eq!(count(&index, json!({"term": {"household": "hh-0042"}})), 2);

    // The trial template's types.
    let mapping = {
        let (status, text) = http(
            base,
            "GET",
            &format!("/{index}/_mapping"),
            "application/json",
            "",
        );
        assert_eq!(status, 200, "{text}");
        let v: Value = serde_json::from_str(&text).unwrap();
        v[&index]["mappings"]["properties"].clone()
    };
    assert_eq!(mapping["@timestamp"]["type"], "date");
    assert_eq!(mapping["location"]["type"], "geo_point");
    assert_eq!(mapping["generating_w"]["type"], "double");
    assert_eq!(mapping["battery_mv"]["type"], "long");
    assert_eq!(mapping["device_id"]["type"], "keyword");

    // The event time (from `ts`) is the document's @timestamp.
    let first = query(
        &format!("/{index}/_search"),
        &json!({"query": {"term": {"event": "exit"}}, "sort": ["@timestamp"]}),
    );
    assert_eq!(
        first["hits"]["hits"][0]["_source"]["@timestamp"],
        "2016-05-04T18:02:11.000Z"
    );
    assert_eq!(
        first["hits"]["hits"][0]["_source"]["location"],
        json!({"lat": 52.0406, "lon": -0.7594})
    );

    // The beacon heatmap's question: who entered or left inside the box.
    let inside = count(
        &index,
        json!({"geo_bounding_box": {"location": {
            "top_left": {"lat": 52.10, "lon": -0.85},
            "bottom_right": {"lat": 52.00, "lon": -0.70}
        }}}),
    );
    assert_eq!(inside, 2);

    // The refused reading, whole, with the server's reason.
    let errors = lines(&errors_file);
    assert_eq!(errors.len(), 1, "{errors:?}");
    let e = &errors[0];
    assert_eq!(e["battery_mv"], "low");
    assert_eq!(e["generating_w"], 2901.5);
    assert_eq!(e["_error_node"], "search");
    let reason = e["_error"].as_str().unwrap();
    assert!(
        reason.starts_with(
            "400 mapper_parsing_exception: failed to parse field [battery_mv] of type [long]"
        ),
        "{reason}"
    );
}

/// Starts `ulog run` on `routes` and waits for its HTTP input.
fn start_ulog(routes: &Path, http_port: u16) -> Ulog {
    let mut ulog = Ulog(
        Command::new(env!("CARGO_BIN_EXE_ulog"))
            .arg("run")
            .arg(routes)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let begun = Instant::now();
    while TcpStream::connect(("127.0.0.1", http_port)).is_err() {
        assert!(ulog.0.try_wait().unwrap().is_none(), "ulog exited early");
        assert!(begun.elapsed() < Duration::from_secs(30), "never listened");
        std::thread::sleep(Duration::from_millis(10));
    }
    ulog
}

#[test]
fn a_kill_9_and_a_replay_of_already_delivered_chunks_leave_one_copy_of_each_event() {
    let index = format!(
        "replay-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
    );
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("routes.conf");
    let write_routes = |hosts: &str| {
        std::fs::write(
            &routes,
            format!(
                "input http {{ listen = \"127.0.0.1:{port}\" }}\n\
                 match \"home.**\" elasticsearch {{\n\
                   id = \"store\"  hosts = [\"{hosts}\"]  index = \"{index}\"  bulk_max_events = 100  retry_wait = 100ms\n\
                   buffer = {{ type = \"file\"  path = \"buffer\"  sync = \"always\" }}\n\
                 }}\n"
            ),
        )
        .unwrap()
    };
    // 1. The destination is unreachable: 1,000 events are acknowledged into
    //    the file buffer, then ulog is killed.
    write_routes(&format!("http://127.0.0.1:{}", free_port()));
    let mut ulog = start_ulog(&routes, port);
    let base = format!("http://127.0.0.1:{port}");
    for b in 0..20 {
        let body: Vec<String> = (b * 50..b * 50 + 50)
            .map(|s| {
                format!(
                    "{{\"seq\":{s},\"household\":\"hh-{}\",\"watts\":{}}}",
                    s % 4,
                    s * 3
                )
            })
            .collect();
        let (status, text) = http(
            &base,
            "POST",
            "/home.owl",
            "application/json",
            &format!("[{}]", body.join(",")),
        );
        assert_eq!(status, 200, "{text}");
    }
    ulog.0.kill().unwrap();
    ulog.0.wait().unwrap();
    // The buffer as a crash would leave it after delivering everything but
    // before confirming anything: kept aside, put back after step 2.
    let buffer = dir.path().join("buffer");
    let kept = dir.path().join("kept");
    std::fs::create_dir(&kept).unwrap();
    for e in std::fs::read_dir(&buffer).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().is_some_and(|n| n != "LOCK") {
            std::fs::copy(&p, kept.join(p.file_name().unwrap())).unwrap();
        }
    }
    // 2. The destination is back: the restart delivers all 1,000.
    write_routes(opensearch());
    let wait_for = |n: u64| {
        let begun = Instant::now();
        loop {
            let (status, _) = http(
                opensearch(),
                "HEAD",
                &format!("/{index}"),
                "application/json",
                "",
            );
            if status == 200 && count(&index, json!({"match_all": {}})) >= n {
                return;
            }
            assert!(
                begun.elapsed() < Duration::from_secs(60),
                "never reached {n}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let mut ulog = start_ulog(&routes, port);
    wait_for(1000);
    ulog.0.kill().unwrap();
    ulog.0.wait().unwrap();
    // 3. Replay the unconfirmed buffer: every event is sent again, with the
    //    same ids, and stored once.
    for e in std::fs::read_dir(&kept).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, buffer.join(p.file_name().unwrap())).unwrap();
    }
    let api = free_port();
    let ulog = Ulog(
        Command::new(env!("CARGO_BIN_EXE_ulog"))
            .arg("run")
            .arg(&routes)
            .args(["--api", &format!("127.0.0.1:{api}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Done when the buffer has confirmed every replayed chunk: the output
    // has then written all of them again.
    let begun = Instant::now();
    loop {
        if TcpStream::connect(("127.0.0.1", api)).is_ok() {
            let (_, metrics) = http(
                &format!("http://127.0.0.1:{api}"),
                "GET",
                "/metrics",
                "text/plain",
                "",
            );
            if metrics.contains("ulog_buffer_chunks{node=\"store\"} 0\n") {
                break;
            }
        }
        assert!(
            begun.elapsed() < Duration::from_secs(60),
            "the replay never finished"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(ulog);
    assert_eq!(
        count(&index, json!({"match_all": {}})),
        1000,
        "one copy of each"
    );
    let hits = query(
        &format!("/{index}/_search"),
        &json!({"size": 0, "aggs": {"seqs": {"cardinality": {"field": "seq", "precision_threshold": 2000}}}}),
    );
    assert_eq!(hits["aggregations"]["seqs"]["value"], 1000, "{hits}");
}
