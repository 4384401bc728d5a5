//! `input udp` in a real pipeline, fed by a real UDP socket.

mod common;

use std::time::{Duration, Instant};

use common::*;
use serde_json::json;
use tokio::net::UdpSocket;
use ulog_engine::spec::NodeSpec;
use ulog_engine::Value;

fn udp_input(port: u16) -> NodeSpec {
    NodeSpec::new("udp")
        .param("id", "in")
        .param("listen", format!("127.0.0.1:{port}"))
        .param("tag", "app.udp")
}

/// Sends `probe` until the input answers by emitting it (UDP has no
/// connection to wait for), then returns the number of probe events seen.
async fn wait_ready(sock: &UdpSocket, port: u16, sink: &Sink) -> usize {
    let deadline = Instant::now() + TIMEOUT;
    loop {
        sock.send_to(b"{\"probe\":true}", ("127.0.0.1", port))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n = sink.len();
        if n > 0 {
            return n;
        }
        assert!(
            Instant::now() < deadline,
            "udp input never received anything"
        );
    }
}

fn without_probes(sink: &Sink) -> Vec<serde_json::Value> {
    sink.json()
        .into_iter()
        .filter(|v| v.get("probe").is_none())
        .collect()
}

#[tokio::test]
async fn datagrams_and_lines_within_them() {
    let (logs, _guard) = LogCapture::install();
    let sink = Sink::default();
    let port = free_udp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![udp_input(port)
            .param("max_message_size", Value::Size(100))
            .param("source_address_key", "src")
            .param("on_error", "log")],
        vec![capture_all("out")],
        None,
    );
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let probes = wait_ready(&sock, port, &sink).await;
    let to = ("127.0.0.1", port);
    sock.send_to(b"{\"a\":1}", to).await.unwrap();
    sock.send_to(b"{\"b\":1}\r\n{\"b\":2}\n\n", to)
        .await
        .unwrap();
    // Larger than max_message_size: skipped and logged, not cut.
    let big = format!("{{\"big\":\"{}\"}}", "x".repeat(200));
    sock.send_to(big.as_bytes(), to).await.unwrap();
    sock.send_to(b"{\"broken\":", to).await.unwrap();
    sock.send_to(b"{\"c\":1}\0", to).await.unwrap();
    sink.wait_for(probes + 4).await;
    logs.wait_for("input longer than the maximum size").await;
    logs.wait_for("input could not be parsed; skipped").await;
    assert_eq!(
        without_probes(&sink),
        [
            json!({"a":1,"src":"127.0.0.1"}),
            json!({"b":1,"src":"127.0.0.1"}),
            json!({"b":2,"src":"127.0.0.1"}),
            json!({"c":1,"src":"127.0.0.1"})
        ]
    );
    assert!(sink.events().iter().all(|(tag, _)| tag == "app.udp"));
    stop(running).await;
    assert!(logs
        .text()
        .contains("input stopped; some input could not become events"));
}

#[tokio::test]
async fn a_burst_of_datagrams_is_batched() {
    let sink = Sink::default();
    let port = free_udp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![udp_input(port)],
        vec![capture_all("out")],
        None,
    );
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let probes = wait_ready(&sock, port, &sink).await;
    let batches_before = sink.batches().len();
    // On a current-thread runtime the input cannot run while this loop
    // sends, so every datagram waits in the socket buffer and one recv
    // burst takes them together.
    for i in 0..200 {
        let d = format!("{{\"i\":{i}}}");
        sock.send_to(d.as_bytes(), ("127.0.0.1", port))
            .await
            .unwrap();
    }
    sink.wait_for(probes + 200).await;
    let got: Vec<i64> = without_probes(&sink)
        .iter()
        .map(|v| v["i"].as_i64().unwrap())
        .collect();
    assert_eq!(got, (0..200).collect::<Vec<_>>());
    let batches = sink.batches().len() - batches_before;
    assert!(batches < 20, "{batches} batches for 200 datagrams");
    stop(running).await;
}

#[tokio::test]
async fn on_error_keep_and_format_none() {
    let sink = Sink::default();
    let port = free_udp_port();
    let running = start(
        &registry(&[("out", sink.clone())]),
        vec![udp_input(port).param("on_error", "keep")],
        vec![capture_all("out")],
        None,
    );
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let probes = wait_ready(&sock, port, &sink).await;
    sock.send_to(b"not json", ("127.0.0.1", port))
        .await
        .unwrap();
    sink.wait_for(probes + 1).await;
    assert_eq!(without_probes(&sink), [json!({"message":"not json"})]);
    stop(running).await;
}
