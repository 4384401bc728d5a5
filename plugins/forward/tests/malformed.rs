//! Bad input: a corpus of malformed frames the decoder refuses without
//! panicking, and a server that keeps serving a good connection while bad
//! ones are logged and closed.

mod common;

use std::io::Write as _;
use std::time::Duration;

use bytes::BytesMut;
use common::*;
use rmpv::Value as M;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use ulog_engine::spec::NodeSpec;
use ulog_engine::Value;
use ulog_plugins_forward::codec::Limits;
use ulog_plugins_forward::{DecodeError, FrameDecoder};

fn pack(v: &M) -> Vec<u8> {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, v).unwrap();
    out
}

fn rec() -> M {
    M::Map(vec![(M::from("k"), M::from("v"))])
}

fn et(secs: u32, nanos: u32) -> M {
    let mut d = secs.to_be_bytes().to_vec();
    d.extend(nanos.to_be_bytes());
    M::Ext(0, d)
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn packed(entries: Vec<u8>, option: Vec<(M, M)>) -> Vec<u8> {
    pack(&M::Array(vec![
        M::from("t"),
        M::Binary(entries),
        M::Map(option),
    ]))
}

fn message(time: M, record: M) -> Vec<u8> {
    pack(&M::Array(vec![M::from("t"), time, record]))
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Expect {
    /// A fatal error whose text contains this.
    Fatal(&'static str),
    /// Decoded, with this many events and this many skipped.
    Skips(usize, usize),
    /// A non-fatal bad-tag error.
    BadTag,
    /// Incomplete: the decoder waits for more bytes.
    Waits,
}

fn corpus() -> Vec<(&'static str, Vec<u8>, Expect)> {
    let good_entry = pack(&M::Array(vec![et(1, 2), rec()]));
    let gz = gzip(&good_entry);
    let deep = {
        let mut v = M::Nil;
        for _ in 0..200 {
            v = M::Array(vec![v]);
        }
        pack(&M::Array(vec![
            M::from("t"),
            M::from(1),
            M::Map(vec![(M::from("d"), v)]),
        ]))
    };
    vec![
        (
            "text garbage",
            b"hello world\n".to_vec(),
            Expect::Fatal("must be an array"),
        ),
        (
            "json instead of msgpack",
            br#"{"tag":"x"}"#.to_vec(),
            Expect::Fatal("JSON is not supported"),
        ),
        (
            "invalid marker 0xc1",
            vec![0x93, 0xa1, b't', 0x01, 0xc1],
            Expect::Fatal("invalid msgpack marker"),
        ),
        (
            "truncated frame",
            message(M::from(1), rec())[..6].to_vec(),
            Expect::Waits,
        ),
        (
            "tag is not a string",
            pack(&M::Array(vec![M::from(1), M::from(1), rec()])),
            Expect::Fatal("tag must be a string"),
        ),
        (
            "one element",
            pack(&M::Array(vec![M::from("t")])),
            Expect::Fatal("2 to 4 elements"),
        ),
        (
            "five elements",
            pack(&M::Array(vec![
                M::from("t"),
                M::from(1),
                rec(),
                M::Nil,
                M::Nil,
            ])),
            Expect::Fatal("2 to 4 elements"),
        ),
        (
            "message without record",
            pack(&M::Array(vec![M::from("t"), M::from(1)])),
            Expect::Fatal("needs [tag, time, record]"),
        ),
        (
            "option not a map",
            pack(&M::Array(vec![M::from("t"), M::from(1), rec(), M::from(5)])),
            Expect::Fatal("option must be a map"),
        ),
        (
            "chunk not a string",
            pack(&M::Array(vec![
                M::from("t"),
                M::from(1),
                rec(),
                M::Map(vec![(M::from("chunk"), M::from(9))]),
            ])),
            Expect::Fatal("chunk option must be a string"),
        ),
        (
            "unknown compression",
            packed(
                good_entry.clone(),
                vec![(M::from("compressed"), M::from("lz4"))],
            ),
            Expect::Fatal("unknown compression"),
        ),
        (
            "gzip flag on plain data",
            packed(
                good_entry.clone(),
                vec![(M::from("compressed"), M::from("gzip"))],
            ),
            Expect::Fatal("bad gzip"),
        ),
        (
            "truncated gzip",
            packed(
                gz[..gz.len() / 2].to_vec(),
                vec![(M::from("compressed"), M::from("gzip"))],
            ),
            Expect::Fatal("bad gzip"),
        ),
        (
            "gzip bomb",
            packed(
                gzip(&vec![0x90u8; 4 << 20]),
                vec![(M::from("compressed"), M::from("gzip"))],
            ),
            Expect::Fatal("too large"),
        ),
        (
            "truncated packed entry",
            packed(good_entry[..good_entry.len() - 2].to_vec(), vec![]),
            Expect::Fatal("packed entries broken"),
        ),
        (
            "garbage packed entries",
            packed(vec![0xc1, 0xc1], vec![]),
            Expect::Fatal("packed entries broken"),
        ),
        (
            "lying map header in packed record",
            packed(vec![0x92, 0x01, 0xdf, 0xff, 0xff, 0xff, 0xff], vec![]),
            Expect::Fatal("packed entries broken"),
        ),
        (
            "oversized string",
            {
                let mut b = vec![0x93, 0xa1, b't', 0x01, 0x81, 0xa1, b'k', 0xdb];
                b.extend((100u32 << 20).to_be_bytes());
                b
            },
            Expect::Fatal("too large"),
        ),
        ("nesting too deep", deep, Expect::Fatal("deeper")),
        (
            "bad ext length",
            message(M::Ext(0, vec![0, 0, 0, 1]), rec()),
            Expect::Skips(0, 1),
        ),
        (
            "unknown ext type",
            message(M::Ext(9, vec![0; 8]), rec()),
            Expect::Skips(0, 1),
        ),
        (
            "nanoseconds out of range",
            message(et(1, 1_000_000_000), rec()),
            Expect::Skips(0, 1),
        ),
        (
            "time is a boolean",
            message(M::Boolean(true), rec()),
            Expect::Skips(0, 1),
        ),
        // A string in second place means PackedForward: its bytes are not entries.
        (
            "time is a string",
            message(M::from("yesterday"), rec()),
            Expect::Skips(0, 9),
        ),
        (
            "record not a map",
            message(M::from(1), M::from("text")),
            Expect::Skips(0, 1),
        ),
        (
            "record nil",
            message(M::from(1), M::Nil),
            Expect::Skips(0, 1),
        ),
        (
            "forward entries not arrays",
            pack(&M::Array(vec![
                M::from("t"),
                M::Array(vec![M::from(1), M::from(2), M::Array(vec![M::from(1)])]),
            ])),
            Expect::Skips(0, 3),
        ),
        (
            "one bad entry among good ones",
            pack(&M::Array(vec![
                M::from("t"),
                M::Array(vec![
                    M::Array(vec![M::from(1), rec()]),
                    M::Array(vec![M::from(1), M::from(false)]),
                    M::Array(vec![et(5, 5), rec()]),
                ]),
            ])),
            Expect::Skips(2, 1),
        ),
        (
            "tag with a slash",
            pack(&M::Array(vec![M::from("a/b"), M::from(1), rec()])),
            Expect::BadTag,
        ),
        (
            "empty tag part",
            pack(&M::Array(vec![M::from("a..b"), M::from(1), rec()])),
            Expect::BadTag,
        ),
        (
            "tag not utf-8",
            {
                let mut b = vec![0x93, 0xa2, 0xff, 0xfe];
                b.extend(pack(&M::from(1)));
                b.extend(pack(&rec()));
                b
            },
            Expect::BadTag,
        ),
    ]
}

fn outcome(d: &mut FrameDecoder, bytes: &[u8]) -> Result<Option<(usize, usize)>, DecodeError> {
    let mut buf = BytesMut::from(bytes);
    d.decode(&mut buf)
        .map(|f| f.map(|f| (f.events.len(), f.skipped)))
}

#[test]
fn the_decoder_refuses_every_malformed_frame_without_panicking() {
    for (name, bytes, expect) in corpus() {
        let mut d = FrameDecoder::new(Limits {
            max_frame_size: 1 << 20,
            max_decompressed_size: 1 << 20,
        });
        let got = outcome(&mut d, &bytes);
        match (expect, &got) {
            (Expect::Fatal(text), Err(e)) => {
                assert!(e.is_fatal(), "{name}: {e}");
                assert!(e.to_string().contains(text), "{name}: {e:?} lacks {text:?}");
            }
            (Expect::Skips(events, skipped), Ok(Some(got))) => {
                assert_eq!(*got, (events, skipped), "{name}");
            }
            (Expect::BadTag, Err(e @ DecodeError::BadTag { .. })) => assert!(!e.is_fatal()),
            (Expect::Waits, Ok(None)) => {}
            _ => panic!("{name}: expected {expect:?}, got {got:?}"),
        }
        // Refusing invalid events instead of skipping them is fatal.
        if let Expect::Skips(_, skipped) = expect {
            assert!(skipped > 0);
            let mut strict = FrameDecoder::default().skip_invalid_event(false);
            let e = outcome(&mut strict, &bytes).unwrap_err();
            assert!(matches!(e, DecodeError::InvalidEvent(_)), "{name}: {e}");
        }
        // Every prefix is either incomplete or an error, never a panic.
        for cut in 0..bytes.len() {
            let _ = outcome(&mut FrameDecoder::default(), &bytes[..cut]);
        }
    }
}

#[test]
fn random_bytes_never_panic() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let seeds: Vec<Vec<u8>> = corpus().into_iter().map(|(_, b, _)| b).collect();
    let mut decoded = 0;
    for round in 0..3000 {
        let mut bytes = seeds[round % seeds.len()].clone();
        // Flip, insert and drop a few bytes.
        for _ in 0..rng.gen_range(1..4) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.gen_range(0..bytes.len());
            match rng.gen_range(0..3) {
                0 => bytes[at] = rng.gen(),
                1 => bytes.insert(at, rng.gen()),
                _ => {
                    bytes.remove(at);
                }
            }
        }
        let mut d = FrameDecoder::new(Limits::with_max_frame_size(1 << 16));
        let mut buf = BytesMut::from(&bytes[..]);
        while let Ok(Some(_)) = d.decode(&mut buf) {
            decoded += 1;
        }
    }
    assert!(decoded > 0, "some mutated frames still decode");
}

/// Sends `frame` with a chunk option on `conn` and waits for its ack.
async fn send_acked(conn: &mut TcpStream, n: i64) {
    let chunk = format!("good-{n}");
    let frame = pack(&M::Array(vec![
        M::from("good"),
        M::from(1_700_000_000),
        M::Map(vec![(M::from("n"), M::from(n))]),
        M::Map(vec![(M::from("chunk"), M::from(chunk.as_str()))]),
    ]));
    conn.write_all(&frame).await.unwrap();
    let mut buf = BytesMut::new();
    let ack = within(Duration::from_secs(10), async {
        loop {
            if let Ok(Some(v)) = ulog_plugins_forward::codec::split_value(&mut buf, 1024) {
                return v;
            }
            assert!(
                conn.read_buf(&mut buf).await.unwrap() > 0,
                "good connection closed"
            );
        }
    })
    .await;
    assert_eq!(
        ulog_plugins_forward::codec::decode_ack(&ack).unwrap(),
        chunk
    );
}

/// Sends `bytes` on a fresh connection and expects the server to close it.
async fn send_and_expect_close(port: u16, bytes: &[u8], then_close: bool) {
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let _ = c.write_all(bytes).await;
    if then_close {
        let _ = c.shutdown().await;
    }
    within(Duration::from_secs(10), async {
        let mut b = [0u8; 256];
        loop {
            match c.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_survives_bad_clients_while_a_good_one_keeps_working() {
    capture_logs();
    let port = free_port();
    let (reg, sink) = registry_with_sink("capture");
    let node = input(
        port,
        vec![
            ("id", "in_bad".into()),
            ("chunk_size_limit", Value::Size(64 * 1024)),
        ],
    );
    let running = start(&reg, vec![node], NodeSpec::new("capture"));
    wait_listening(port).await;

    let mut good = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    send_acked(&mut good, 0).await;
    for (n, (_name, bytes, expect)) in (1..).zip(corpus()) {
        match expect {
            Expect::Fatal(_) => send_and_expect_close(port, &bytes, false).await,
            Expect::Waits => send_and_expect_close(port, &bytes, true).await,
            Expect::Skips(..) | Expect::BadTag => {
                // The connection stays usable: a good frame after it is acked.
                let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
                c.write_all(&bytes).await.unwrap();
                send_acked(&mut c, 1000 + n).await;
            }
        }
        // Meanwhile the good connection is unaffected.
        send_acked(&mut good, n).await;
    }
    // Each kind of trouble was logged with the input's id.
    wait_log(&["in_bad", "closing the forward connection", "too large"]).await;
    wait_log(&[
        "in_bad",
        "closing the forward connection",
        "must be an array",
    ])
    .await;
    wait_log(&["in_bad", "closing the forward connection", "bad gzip"]).await;
    wait_log(&["in_bad", "connection closed in the middle of a frame"]).await;
    wait_log(&[
        "in_bad",
        "skipped invalid events",
        "EventTime ext must hold 8 bytes",
    ])
    .await;
    wait_log(&["in_bad", "refusing a forward frame with an invalid tag"]).await;

    // Stopping does not wait for the idle good connection.
    running.stop();
    within(Duration::from_secs(5), running.wait()).await;
    let goods: Vec<i64> = sink
        .events()
        .iter()
        .filter(|(t, _)| t == "good")
        .map(|(_, e)| e.record.to_map()["n"].as_i64().unwrap())
        .collect();
    let skips = corpus()
        .iter()
        .filter(|(_, _, e)| matches!(e, Expect::Skips(..) | Expect::BadTag))
        .count();
    assert_eq!(goods.len(), corpus().len() + 1 + skips);
    // The valid entries of the frame with one bad entry got through.
    assert_eq!(sink.events().iter().filter(|(t, _)| t == "t").count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusing_invalid_events_closes_without_ack() {
    capture_logs();
    let port = free_port();
    let (reg, sink) = registry_with_sink("capture");
    let node = input(
        port,
        vec![
            ("id", "in_strict".into()),
            ("skip_invalid_event", false.into()),
        ],
    );
    let running = start(&reg, vec![node], NodeSpec::new("capture"));
    wait_listening(port).await;
    let frame = pack(&M::Array(vec![
        M::from("strict"),
        M::from(1),
        M::from("not a map"),
        M::Map(vec![(M::from("chunk"), M::from("c"))]),
    ]));
    send_and_expect_close(port, &frame, false).await;
    wait_log(&["in_strict", "invalid event", "record must be a map"]).await;
    running.stop();
    within(Duration::from_secs(5), running.wait()).await;
    assert_eq!(sink.len(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_heartbeats_are_answered_on_the_tcp_port() {
    let port = free_port();
    let (reg, _sink) = registry_with_sink("capture");
    let running = start(&reg, vec![input(port, vec![])], NodeSpec::new("capture"));
    wait_listening(port).await;
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.connect(("127.0.0.1", port)).await.unwrap();
    let answer = within(Duration::from_secs(10), async {
        let mut b = [0u8; 16];
        loop {
            udp.send(b"").await.unwrap();
            if let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(200), udp.recv(&mut b)).await
            {
                return b[..n].to_vec();
            }
        }
    })
    .await;
    assert_eq!(answer, b"\0");
    running.stop();
    within(Duration::from_secs(5), running.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_time_out_and_connections_are_limited() {
    let port = free_port();
    let (reg, sink) = registry_with_sink("capture");
    let node = input(
        port,
        vec![
            ("read_timeout", Duration::from_millis(300).into()),
            ("max_connections", Value::Int(1)),
        ],
    );
    let running = start(&reg, vec![node], NodeSpec::new("capture"));
    wait_listening(port).await;
    // The probe above held the only slot until it closed; now one idle
    // connection takes it and the next client waits.
    let idle = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut second = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let started = tokio::time::Instant::now();
    send_acked(&mut second, 1).await;
    // Served only once the idle connection timed out (no wall-clock bound
    // on how late; only that it had to wait for the slot).
    assert!(
        started.elapsed() >= Duration::from_millis(150),
        "{:?}",
        started.elapsed()
    );
    send_and_expect_close(port, b"", false).await;
    drop(idle);
    running.stop();
    within(Duration::from_secs(5), running.wait()).await;
    assert_eq!(sink.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_good_and_bad_clients() {
    let port = free_port();
    let (reg, sink) = registry_with_sink("capture");
    let running = start(
        &reg,
        vec![input(
            port,
            vec![("chunk_size_limit", Value::Size(64 * 1024))],
        )],
        NodeSpec::new("capture"),
    );
    wait_listening(port).await;
    let bad: Vec<Vec<u8>> = corpus()
        .into_iter()
        .filter(|(_, _, e)| matches!(e, Expect::Fatal(_)))
        .map(|(_, b, _)| b)
        .collect();
    let mut tasks = Vec::new();
    for client in 0..4i64 {
        tasks.push(tokio::spawn(async move {
            let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
            for k in 0..200 {
                send_acked(&mut c, client * 1000 + k).await;
            }
        }));
        let bad = bad.clone();
        tasks.push(tokio::spawn(async move {
            for (k, bytes) in bad
                .iter()
                .cycle()
                .skip(client as usize)
                .take(20)
                .enumerate()
            {
                send_and_expect_close(port, bytes, k % 2 == 0).await;
            }
        }));
    }
    for t in tasks {
        within(Duration::from_secs(60), t).await.unwrap();
    }
    running.stop();
    within(Duration::from_secs(5), running.wait()).await;
    let mut want: Vec<i64> = (0..4)
        .flat_map(|c| (0..200).map(move |k| c * 1000 + k))
        .collect();
    want.sort_unstable();
    assert_eq!(sink.ints("n"), want);
}

/// A frame with a bad tag and a `chunk` option.
fn bad_tag_frame(chunk: &str) -> Vec<u8> {
    pack(&M::Array(vec![
        M::from("home/42"),
        M::Array(vec![
            M::Array(vec![M::from(1_700_000_000), rec()]),
            M::Array(vec![M::from(1_700_000_001), rec()]),
        ]),
        M::Map(vec![(M::from("chunk"), M::from(chunk))]),
    ]))
}

/// Reads until an ack arrives or `wait` passes; `None` if none did.
async fn ack_within(conn: &mut TcpStream, wait: Duration) -> Option<String> {
    let mut buf = BytesMut::new();
    tokio::time::timeout(wait, async {
        loop {
            if let Ok(Some(v)) = ulog_plugins_forward::codec::split_value(&mut buf, 1024) {
                return ulog_plugins_forward::codec::decode_ack(&v).ok();
            }
            if conn.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                return None;
            }
        }
    })
    .await
    .ok()
    .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_with_an_invalid_tag_goes_to_errors_with_its_tag_and_only_then_is_acked() {
    use ulog_engine::spec::{FlowSpec, LabelSpec, MatchSpec, PipelineSpec};
    let port = free_port();
    let (reg, sink) = registry_with_sink("capture");
    let spec = PipelineSpec {
        inputs: vec![input(port, vec![("id", "in".into())])],
        root: FlowSpec {
            filters: vec![],
            matches: vec![MatchSpec {
                patterns: vec!["**".into()],
                outputs: vec![NodeSpec::new("capture").param("id", "main")],
            }],
        },
        labels: vec![LabelSpec {
            name: "errors".into(),
            flow: FlowSpec {
                filters: vec![],
                matches: vec![MatchSpec {
                    patterns: vec!["**".into()],
                    outputs: vec![NodeSpec::new("capture").param("id", "errs")],
                }],
            },
        }],
    };
    let running = ulog_engine::Pipeline::build(&spec, &reg, ulog_engine::BuildOptions::default())
        .unwrap()
        .start();
    wait_listening(port).await;
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    c.write_all(&bad_tag_frame("bad-1")).await.unwrap();
    assert_eq!(
        ack_within(&mut c, Duration::from_secs(10)).await.as_deref(),
        Some("bad-1")
    );
    running.stop();
    within(Duration::from_secs(5), running.wait()).await;
    let events = sink.events();
    assert_eq!(events.len(), 2, "{events:?}");
    for (tag, e) in &events {
        assert_eq!(tag, "forward.invalid_tag");
        let r = e.record.to_map();
        assert_eq!(r["_original_tag"], "home/42");
        assert!(
            r["_error"].as_str().unwrap().contains("invalid tag"),
            "{r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_errors_label_a_frame_with_an_invalid_tag_is_not_acked() {
    let port = free_port();
    let (reg, sink) = registry_with_sink("capture");
    let running = start(&reg, vec![input(port, vec![])], NodeSpec::new("capture"));
    wait_listening(port).await;
    let mut c = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    c.write_all(&bad_tag_frame("bad-2")).await.unwrap();
    assert_eq!(ack_within(&mut c, Duration::from_millis(500)).await, None);
    // The connection stays usable.
    send_acked(&mut c, 7).await;
    running.stop();
    within(Duration::from_secs(5), running.wait()).await;
    assert_eq!(sink.events().len(), 1);
}
