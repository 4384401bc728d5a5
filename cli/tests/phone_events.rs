//! The phone-events example as ops run it: the real `ulog` binary on
//! `examples/phone-events.conf`, real HTTP POSTs of good and bad iBeacon
//! events; good ones are stored with a `location`, bad ones reach the
//! errors file with the reason.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Ulog(Child);

impl Drop for Ulog {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn post(port: u16, path: &str, body: &str) -> u16 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut reply = String::new();
    s.read_to_string(&mut reply).unwrap();
    reply
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap()
}

fn lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn wait_for(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let begun = Instant::now();
    loop {
        let got = lines(path);
        if got.len() >= n {
            return got;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "{} has {} of {n} lines",
            path.display(),
            got.len()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

const GOOD: &str = r#"{"household":"hh-0042","device":"iphone-7","beacon":{"uuid":"f7826da6-4fa2-4e98-8024-bc5b71e0893e","major":1,"minor":7},"event":"exit","lat":52.0406,"lon":-0.7594,"accuracy_m":12.5,"time":"2016-05-04T18:02:11Z"}"#;

#[test]
fn good_events_are_stored_with_a_location_and_bad_ones_go_to_errors() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/phone-events.conf");
    let dir = tempfile::tempdir().unwrap();
    let routes = dir.path().join("phone-events.conf");
    std::fs::copy(&example, &routes).unwrap();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let listen = format!("127.0.0.1:{port}");

    let check = Command::new(env!("CARGO_BIN_EXE_ulog"))
        .arg("check")
        .arg(&example)
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
        .env("PHONE_LISTEN", &listen)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _ulog = Ulog(child);
    let begun = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "ulog never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let enter = GOOD
        .replace("\"exit\"", "\"enter\"")
        .replace("hh-0042", "hh-0007");
    let far_north = GOOD.replace("52.0406", "95.2");
    let left = GOOD.replace("\"exit\"", "\"left\"");
    let no_household = GOOD.replace("\"household\":\"hh-0042\",", "");
    for body in [
        GOOD,
        enter.as_str(),
        far_north.as_str(),
        left.as_str(),
        no_household.as_str(),
    ] {
        assert_eq!(post(port, "/phone.beacon", body), 200);
    }

    let out = dir.path().join("out/phone");
    let stored = wait_for(&out.join("phone.beacon.jsonl"), 2);
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[0]["household"], "hh-0042");
    assert_eq!(
        stored[0]["location"],
        serde_json::json!({"lat": 52.0406, "lon": -0.7594})
    );
    assert_eq!(stored[1]["household"], "hh-0007");
    assert_eq!(stored[1]["event"], "enter");

    let errors = wait_for(&out.join("errors.jsonl"), 3);
    let reasons: Vec<&str> = errors
        .iter()
        .map(|e| e["_error"].as_str().unwrap())
        .collect();
    assert_eq!(
        reasons,
        [
            "field \"lat\": 95.2 is above the maximum 90",
            "field \"event\": \"left\" is not one of \"enter\", \"exit\"",
            "field \"household\" is missing",
        ]
    );
    assert!(errors.iter().all(|e| e["_error_node"] == "phone-schema"));
    assert!(errors.iter().all(|e| e.get("location").is_none()));
}
