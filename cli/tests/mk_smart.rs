//! The trial's collection side as it ran: `examples/mk-smart/hub.conf` on a
//! household hub and `examples/mk-smart/routes.conf` on the server, both the
//! real `ulog` binary. An OWL solar packet (UDP) and phone iBeacon events
//! (HTTP) enter the hub, which stamps the household and publishes packed
//! batches to the PubNub log channel (the local stand-in of PubNub); the
//! server subscribes and files every record under its household's tag.

#[path = "../../plugins/pubnub/tests/standin/mod.rs"]
mod standin;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
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

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn example(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../examples/mk-smart")
        .join(name)
}

fn post(port: u16, path: &str, body: &str) -> u16 {
    let begun = Instant::now();
    let mut s = loop {
        match TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(e) => {
                assert!(begun.elapsed() < Duration::from_secs(30), "hub http: {e}");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "POST {path} HTTP/1.1\r\nHost: hub\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
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

async fn wait_for(path: &Path, n: usize) -> Vec<serde_json::Value> {
    let begun = Instant::now();
    loop {
        let got = lines(path);
        if got.len() >= n {
            return got;
        }
        assert!(
            begun.elapsed() < Duration::from_secs(40),
            "{} has {} of {n} lines: {got:?}",
            path.display(),
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[test]
fn both_example_files_pass_ulog_check() {
    for f in ["routes.conf", "hub.conf"] {
        let out = Command::new(env!("CARGO_BIN_EXE_ulog"))
            .arg("check")
            .arg(example(f))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

const PHONE: &str = r#"{"household":"hh-0042","device":"iphone-7","beacon":{"uuid":"f7826da6-4fa2-4e98-8024-bc5b71e0893e","major":1,"minor":7},"event":"exit","lat":52.0406,"lon":-0.7594,"time":"2016-05-04T18:02:11Z"}"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_readings_reach_the_server_through_the_pubnub_log_channel() {
    let pn = standin::PubNub::start("sub-c-mk-smart-demo", "pub-c-mk-smart-demo").await;
    let hub = tempfile::tempdir().unwrap();
    let server = tempfile::tempdir().unwrap();
    std::fs::copy(example("hub.conf"), hub.path().join("hub.conf")).unwrap();
    std::fs::copy(example("routes.conf"), server.path().join("routes.conf")).unwrap();
    std::fs::create_dir_all(hub.path().join("secrets")).unwrap();
    std::fs::write(hub.path().join("secrets/nissan-password"), "x\n").unwrap();
    let (owl_port, phone_port, forward_port) = (free_port(), free_port(), free_port());

    let _server = Ulog(
        Command::new(env!("CARGO_BIN_EXE_ulog"))
            .args(["run", "routes.conf"])
            .current_dir(server.path())
            .env("PUBNUB_ORIGIN", pn.origin())
            .env("FORWARD_LISTEN", format!("127.0.0.1:{forward_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _hub = Ulog(
        Command::new(env!("CARGO_BIN_EXE_ulog"))
            .args(["run", "hub.conf"])
            .current_dir(hub.path())
            .env("HOUSEHOLD", "hh-0042")
            .env("PUBNUB_ORIGIN", pn.origin())
            .env("OWL_MODE", "unicast")
            .env("OWL_LISTEN", format!("127.0.0.1:{owl_port}"))
            .env("PHONE_LISTEN", format!("127.0.0.1:{phone_port}"))
            // No Nissan service here: the input backs off, nothing else.
            .env("NISSAN_BASE_URL", "http://127.0.0.1:9/gdc/")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The server is subscribed before the hub publishes.
    let begun = Instant::now();
    while pn.with(|s| s.polls.len()) < 2 {
        assert!(
            begun.elapsed() < Duration::from_secs(30),
            "the server never subscribed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(post(phone_port, "/hub.phone.beacon", PHONE), 200);
    assert_eq!(
        post(
            phone_port,
            "/hub.phone.beacon",
            r#"{"household":"hh-0042","event":"wave"}"#
        ),
        200
    );
    let solar = std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/testdata/owl/solar_timestamp.xml"),
    )
    .unwrap();
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(&solar, ("127.0.0.1", owl_port)).unwrap();

    let got = wait_for(&server.path().join("data/analytics.jsonl"), 2).await;
    let solar = got
        .iter()
        .find(|r| r["packet"] == "solar")
        .expect("solar reading");
    assert_eq!(solar["tag"], "mk.hh-0042.hub.owl.solar");
    assert_eq!(solar["household"], "hh-0042");
    assert!(solar["generating_w"].is_number());
    assert_eq!(solar["_channel"], "mk-smart.log");
    assert_eq!(solar["_publisher"], "hub-hh-0042");
    let phone = got
        .iter()
        .find(|r| r["event"] == "exit")
        .expect("phone event");
    assert_eq!(phone["tag"], "mk.hh-0042.hub.phone.beacon");
    assert_eq!(
        phone["location"],
        serde_json::json!({"lat": 52.0406, "lon": -0.7594})
    );
    let archived = wait_for(
        &server
            .path()
            .join("data/archive/mk.hh-0042.hub.owl.solar.jsonl"),
        1,
    )
    .await;
    assert_eq!(archived[0]["packet"], "solar");
    // The bad phone event stayed on the hub, in its errors file, with why.
    let errors = wait_for(&hub.path().join("state/errors.jsonl"), 1).await;
    assert_eq!(errors[0]["event"], "wave");
    assert!(errors[0]["_error"].as_str().is_some_and(|e| !e.is_empty()));
    // The hub published packed arrays.
    assert!(pn
        .stored("mk-smart.log")
        .iter()
        .all(|m| m.message.is_array()));
    pn.assert_right();
}
