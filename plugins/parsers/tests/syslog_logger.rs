//! Real syslog messages: util-linux `logger` (Debian package bsdutils) sends
//! RFC 5424 and RFC 3164 datagrams to a UDP socket on loopback, and the
//! syslog parsers read what it sent.

mod common;

use std::net::UdpSocket;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use serde_json::{json, Value as J};
use ulog_engine::{EventTime, Value};

/// Sends one message with `logger` and returns the datagram it sent.
fn logger(args: &[&str]) -> Vec<u8> {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let port = sock.local_addr().unwrap().port().to_string();
    let status = Command::new("logger")
        .args(["-d", "-n", "127.0.0.1", "-P", &port])
        .args(args)
        .status()
        .unwrap_or_else(|e| {
            panic!("cannot run `logger` ({e}): install the Debian package bsdutils (util-linux)")
        });
    assert!(status.success(), "logger failed: {status}");
    let mut buf = vec![0u8; 65_536];
    let n = sock
        .recv(&mut buf)
        .expect("a datagram from logger within 10s");
    buf.truncate(n);
    buf
}

fn parse(format: &'static str, datagram: &[u8]) -> (Option<EventTime>, J) {
    let p = common::parser(&[("format", Value::from(format))]);
    let parsed = p
        .parse(Bytes::copy_from_slice(datagram))
        .unwrap_or_else(|e| panic!("{format}: {e}: {:?}", String::from_utf8_lossy(datagram)));
    (parsed.time, J::Object(parsed.record.to_map().into_owned()))
}

fn near_now(t: Option<EventTime>) {
    let t = t.expect("a time").secs();
    let now = EventTime::now().secs();
    assert!(
        (now - 120..=now + 120).contains(&t),
        "time {t} is not near now {now}"
    );
}

#[test]
fn rfc5424_from_logger() {
    let d = logger(&[
        "--rfc5424",
        "-p",
        "local3.warning",
        "-t",
        "billing",
        "--id=4242",
        "--msgid",
        "INV01",
        "--sd-id",
        "order@32473",
        "--sd-param",
        "id=\"A-17\"",
        "--sd-param",
        "note=\"says \\\"hi\\\" [ok\\]\"",
        "payment declined for order A-17",
    ]);
    for format in ["syslog", "syslog_rfc5424"] {
        let (t, r) = parse(format, &d);
        near_now(t);
        assert_eq!(r["pri"], 19 * 8 + 4);
        assert_eq!(r["facility"], "local3");
        assert_eq!(r["severity"], "warning");
        assert_eq!(r["ident"], "billing");
        assert_eq!(r["pid"], "4242");
        assert_eq!(r["msgid"], "INV01");
        assert_eq!(r["message"], "payment declined for order A-17");
        assert!(r["host"].is_string(), "{r}");
        let sd = &r["structured_data"];
        assert_eq!(
            sd["order@32473"],
            json!({"id": "A-17", "note": "says \"hi\" [ok]"}),
            "{sd}"
        );
        // logger adds its own timeQuality element.
        assert!(sd["timeQuality"].is_object(), "{sd}");
    }
}

#[test]
fn rfc3164_from_logger() {
    let d = logger(&[
        "--rfc3164",
        "-p",
        "auth.err",
        "-t",
        "sshd",
        "--id=777",
        "Failed password for root from 203.0.113.9 port 4711 ssh2",
    ]);
    for format in ["syslog", "syslog_rfc3164"] {
        let (t, r) = parse(format, &d);
        near_now(t);
        assert_eq!(r["pri"], 4 * 8 + 3);
        assert_eq!(r["facility"], "auth");
        assert_eq!(r["severity"], "err");
        assert_eq!(r["ident"], "sshd");
        assert_eq!(r["pid"], "777");
        assert_eq!(
            r["message"],
            "Failed password for root from 203.0.113.9 port 4711 ssh2"
        );
        assert!(r["host"].is_string(), "{r}");
    }
}

#[test]
fn keep_time_key_keeps_the_written_timestamp() {
    let d = logger(&["--rfc5424", "-t", "app", "hello"]);
    let p = common::parser(&[
        ("format", Value::from("syslog")),
        ("keep_time_key", Value::Bool(true)),
    ]);
    let r = p.parse(Bytes::from(d)).unwrap();
    let m = r.record.to_map();
    let written = m["time"].as_str().expect("time kept as text");
    assert!(written.contains('T'), "{written}");
}
