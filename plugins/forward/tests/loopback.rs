//! ulog `output forward` → ulog `input forward` over loopback: acks, the
//! shared-key handshake, TLS, gzip, weights, failover, standby servers and
//! resending after an ack timeout.

mod common;

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use serde_json::json;
use ulog_engine::spec::NodeSpec;
use ulog_engine::{Batch, Event, EventTime, Record, Running, Tag, Value};
use ulog_plugins_forward::codec::Mode;

/// `n` events numbered from `first` in field `i`; odd ones as raw JSON text
/// (the transcoding path), even ones as maps.
fn events(first: i64, n: i64) -> Vec<Event> {
    (first..first + n)
        .map(|i| {
            let time =
                EventTime::from_secs_nanos(1_700_000_000 + i, (i as u32 * 7919) % 1_000_000_000);
            let record = if i % 2 == 1 {
                Record::from_json_bytes(Bytes::from(format!(
                    r#"{{"i":{i},"kind":"raw","x":[1,2.5,null]}}"#
                )))
                .unwrap()
            } else {
                Record::Map(
                    json!({"i": i, "kind": "map", "nested": {"ok": true}})
                        .as_object()
                        .unwrap()
                        .clone(),
                )
            };
            Event::new(time, record)
        })
        .collect()
}

async fn send(running: &Running, tag: &str, events: Vec<Event>) {
    let mut em = running.emitter();
    within(
        Duration::from_secs(10),
        em.emit(Batch::new(Tag::parse(tag).unwrap(), events)),
    )
    .await
    .expect("the sender pipeline accepts the batch");
}

async fn stop(running: Running) {
    running.stop();
    within(Duration::from_secs(20), running.wait()).await;
}

fn receiver(port: u16, extra: Vec<(&str, Value)>) -> (Running, Sink) {
    let (reg, sink) = registry_with_sink("capture");
    let running = start(&reg, vec![input(port, extra)], NodeSpec::new("capture"));
    (running, sink)
}

fn sender(id: &str, servers: Value, extra: Vec<(&str, Value)>) -> Running {
    let (reg, _) = registry_with_sink("unused");
    start(&reg, vec![], output(id, servers, extra))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acked_delivery_keeps_tags_times_and_records() {
    let port = free_port();
    let (rx, sink) = receiver(port, vec![]);
    wait_listening(port).await;
    let tx = sender(
        "out_ack",
        servers(&[(port, 60, false)]),
        vec![("require_ack_response", true.into())],
    );

    let sent = [
        ("a.one", events(0, 100)),
        ("b.two", events(100, 100)),
        ("a.one", events(200, 50)),
    ];
    for (tag, evs) in &sent {
        send(&tx, tag, evs.clone()).await;
    }
    wait_for(Duration::from_secs(10), "250 events", || sink.len() >= 250).await;
    stop(tx).await;
    stop(rx).await;

    let got = sink.events();
    assert_eq!(got.len(), 250);
    for (tag, evs) in &sent {
        let mine: Vec<&Event> = got
            .iter()
            .filter(|(t, _)| t == tag)
            .map(|(_, e)| e)
            .collect();
        for e in evs {
            let i = e.record.to_map()["i"].clone();
            let found = mine
                .iter()
                .find(|g| g.record.to_map()["i"] == i)
                .unwrap_or_else(|| panic!("event {i} missing under {tag}"));
            assert_eq!(found.time, e.time, "nanosecond time of event {i}");
            assert_eq!(found.record, e.record, "record of event {i}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_key_right_key_delivers_wrong_key_is_refused() {
    capture_logs();
    let port = free_port();
    let (rx, sink) = receiver(
        port,
        vec![
            ("id", "in_hs".into()),
            ("shared_key", "s3cret".into()),
            ("self_hostname", "receiver".into()),
        ],
    );
    wait_listening(port).await;

    let good = sender(
        "out_hs_good",
        servers(&[(port, 60, false)]),
        vec![
            ("shared_key", "s3cret".into()),
            ("self_hostname", "sender".into()),
            ("require_ack_response", true.into()),
        ],
    );
    send(&good, "hs.good", events(0, 10)).await;
    wait_for(Duration::from_secs(10), "10 events", || sink.len() >= 10).await;

    let bad = sender(
        "out_hs_bad",
        servers(&[(port, 60, false)]),
        vec![
            ("shared_key", "wrong".into()),
            ("self_hostname", "intruder".into()),
            ("require_ack_response", true.into()),
            ("retry_max_attempts", Value::Int(3)),
        ],
    );
    send(&bad, "hs.bad", events(100, 10)).await;
    // The server says why; the client logs it and retries.
    wait_log(&["in_hs", "forward handshake failed", "shared_key mismatch"]).await;
    wait_log(&["out_hs_bad", "authentication failed", "shared_key mismatch"]).await;
    wait_for(Duration::from_secs(10), "retries", || {
        retries(&bad, "out_hs_bad") >= 2
    })
    .await;
    wait_log(&["out_hs_bad", "giving up on a batch"]).await;

    // A client without a shared_key is told why, with or without acks.
    let no_key_ack = sender(
        "out_hs_nokey_ack",
        servers(&[(port, 60, false)]),
        vec![
            ("require_ack_response", true.into()),
            ("retry_max_attempts", Value::Int(1)),
        ],
    );
    send(&no_key_ack, "hs.nokey", events(200, 3)).await;
    wait_log(&["out_hs_nokey_ack", "the server sent HELO", "shared_key"]).await;
    let no_key = sender("out_hs_nokey", servers(&[(port, 60, false)]), vec![]);
    send(&no_key, "hs.nokey", events(300, 3)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    send(&no_key, "hs.nokey", events(400, 3)).await;
    wait_log(&["out_hs_nokey", "requires the shared_key handshake"]).await;
    stop(no_key).await;
    stop(no_key_ack).await;
    stop(bad).await;
    stop(good).await;
    stop(rx).await;
    assert_eq!(sink.len(), 10, "nothing from the wrong key got in");
    assert!(sink.events().iter().all(|(t, _)| t == "hs.good"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_auth_checks_username_and_password() {
    capture_logs();
    let port = free_port();
    let users = Value::List(vec![Value::Map(vec![
        ("username".into(), "alice".into()),
        ("password".into(), "pa55".into()),
    ])]);
    let (rx, sink) = receiver(
        port,
        vec![
            ("id", "in_users".into()),
            ("shared_key", "k".into()),
            ("self_hostname", "receiver".into()),
            ("user_auth", true.into()),
            ("users", users),
        ],
    );
    wait_listening(port).await;
    let common = |user: &str, pass: &str| -> Vec<(&'static str, Value)> {
        vec![
            ("shared_key", "k".into()),
            ("self_hostname", "sender".into()),
            ("username", user.into()),
            ("password", pass.into()),
            ("require_ack_response", true.into()),
            ("retry_max_attempts", Value::Int(2)),
        ]
    };
    let alice = sender(
        "out_alice",
        servers(&[(port, 60, false)]),
        common("alice", "pa55"),
    );
    let mallory = sender(
        "out_mallory",
        servers(&[(port, 60, false)]),
        common("alice", "guess"),
    );
    send(&alice, "users.alice", events(0, 5)).await;
    send(&mallory, "users.mallory", events(10, 5)).await;
    wait_for(Duration::from_secs(10), "alice's events", || {
        sink.len() >= 5
    })
    .await;
    wait_log(&["out_mallory", "username/password mismatch"]).await;
    wait_log(&["out_mallory", "giving up on a batch"]).await;
    stop(alice).await;
    stop(mallory).await;
    stop(rx).await;
    assert_eq!(sink.len(), 5);
    assert!(sink.events().iter().all(|(t, _)| t == "users.alice"));
}

struct Pki {
    _dir: tempfile::TempDir,
    ca: String,
    other_ca: String,
    cert: String,
    key: String,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let make_ca = |cn: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        (cert, key)
    };
    let (ca, ca_key) = make_ca("ulog test CA");
    let (other, _) = make_ca("someone else's CA");
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca: write("ca.pem", ca.pem()),
        other_ca: write("other.pem", other.pem()),
        cert: write("server.pem", leaf.pem()),
        key: write("server.key", leaf_key.serialize_pem()),
        _dir: dir,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_generated_certificates() {
    capture_logs();
    let pki = pki();
    let port = free_port();
    let (rx, sink) = receiver(
        port,
        vec![
            ("id", "in_tls".into()),
            ("tls_cert_path", pki.cert.clone().into()),
            ("tls_key_path", pki.key.clone().into()),
            ("shared_key", "over-tls".into()),
            ("self_hostname", "receiver".into()),
        ],
    );
    wait_listening(port).await;
    let tls_opts = |ca: &str, extra: Vec<(&'static str, Value)>| {
        let mut v: Vec<(&'static str, Value)> = vec![
            ("tls", true.into()),
            ("tls_ca_path", ca.into()),
            ("shared_key", "over-tls".into()),
            ("self_hostname", "sender".into()),
            ("require_ack_response", true.into()),
        ];
        v.extend(extra);
        v
    };
    // Verified against our CA, by IP address SAN.
    let trusted = sender(
        "out_tls",
        servers(&[(port, 60, false)]),
        tls_opts(&pki.ca, vec![]),
    );
    send(&trusted, "tls.ok", events(0, 20)).await;
    wait_for(Duration::from_secs(10), "20 events over TLS", || {
        sink.len() >= 20
    })
    .await;

    // A client trusting another CA refuses the server.
    let untrusted = sender(
        "out_tls_untrusted",
        servers(&[(port, 60, false)]),
        tls_opts(&pki.other_ca, vec![("retry_max_attempts", Value::Int(2))]),
    );
    send(&untrusted, "tls.bad", events(100, 5)).await;
    let line = wait_log(&["out_tls_untrusted", "TLS handshake"]).await;
    assert!(
        line.contains("UnknownIssuer") || line.contains("issuer"),
        "{line}"
    );
    wait_log(&["out_tls_untrusted", "giving up on a batch"]).await;

    // A plain-TCP client cannot talk to a TLS server.
    let plain = sender(
        "out_tls_plain",
        servers(&[(port, 60, false)]),
        vec![
            ("shared_key", "over-tls".into()),
            ("self_hostname", "sender".into()),
            ("require_ack_response", true.into()),
            ("connect_timeout", Duration::from_secs(2).into()),
            ("retry_max_attempts", Value::Int(1)),
        ],
    );
    send(&plain, "tls.plain", events(200, 5)).await;
    wait_log(&["out_tls_plain", "giving up on a batch"]).await;

    // tls_insecure skips verification (tests only), and tls_server_name
    // checks the certificate against another name it carries.
    let insecure = sender(
        "out_tls_insecure",
        servers(&[(port, 60, false)]),
        vec![
            ("tls", true.into()),
            ("tls_insecure", true.into()),
            ("shared_key", "over-tls".into()),
            ("self_hostname", "sender".into()),
            ("require_ack_response", true.into()),
        ],
    );
    send(&insecure, "tls.insecure", events(300, 5)).await;
    let by_name = sender(
        "out_tls_name",
        servers(&[(port, 60, false)]),
        tls_opts(&pki.ca, vec![("tls_server_name", "localhost".into())]),
    );
    send(&by_name, "tls.name", events(400, 5)).await;
    // A name the certificate does not carry: refused, unless only the chain
    // is checked (tls_verify_hostname = false).
    let wrong_name = sender(
        "out_tls_wrong_name",
        servers(&[(port, 60, false)]),
        tls_opts(
            &pki.ca,
            vec![
                ("tls_server_name", "elsewhere.example".into()),
                ("retry_max_attempts", Value::Int(1)),
            ],
        ),
    );
    send(&wrong_name, "tls.wrong", events(500, 5)).await;
    let line = wait_log(&["out_tls_wrong_name", "forward server failed"]).await;
    assert!(line.contains("not valid for name"), "{line}");
    let chain_only = sender(
        "out_tls_chain_only",
        servers(&[(port, 60, false)]),
        tls_opts(
            &pki.ca,
            vec![
                ("tls_server_name", "elsewhere.example".into()),
                ("tls_verify_hostname", false.into()),
            ],
        ),
    );
    send(&chain_only, "tls.chain", events(600, 5)).await;
    wait_for(Duration::from_secs(10), "35 events", || sink.len() >= 35).await;
    for r in [
        trusted, untrusted, plain, insecure, by_name, wrong_name, chain_only,
    ] {
        stop(r).await;
    }
    stop(rx).await;
    let tags: Vec<String> = sink.events().into_iter().map(|(t, _)| t).collect();
    assert_eq!(tags.iter().filter(|t| *t == "tls.ok").count(), 20);
    assert_eq!(tags.iter().filter(|t| *t == "tls.insecure").count(), 5);
    assert_eq!(tags.iter().filter(|t| *t == "tls.name").count(), 5);
    assert_eq!(tags.iter().filter(|t| *t == "tls.chain").count(), 5);
    assert_eq!(tags.len(), 35, "{tags:?}");
    assert!(Path::new(&pki.ca).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_compression_sends_compressed_packed_forward() {
    // What goes over the wire: a bare server records the frame modes.
    let raw = RawServer::start(true).await;
    let tx = sender(
        "out_gzip_raw",
        servers(&[(raw.port, 60, false)]),
        vec![
            ("compress", "gzip".into()),
            ("require_ack_response", true.into()),
        ],
    );
    send(&tx, "z.raw", events(0, 300)).await;
    wait_for(
        Duration::from_secs(10),
        "300 events at the raw server",
        || raw.events() >= 300,
    )
    .await;
    stop(tx).await;
    let frames = raw.frames();
    assert!(
        frames
            .iter()
            .all(|f| f.mode == Mode::CompressedPackedForward),
        "{frames:?}"
    );
    assert!(frames.iter().all(|f| f.chunk.is_some()));

    // And end to end into input forward.
    let port = free_port();
    let (rx, sink) = receiver(port, vec![]);
    wait_listening(port).await;
    let tx = sender(
        "out_gzip",
        servers(&[(port, 60, false)]),
        vec![
            ("compress", "gzip".into()),
            ("require_ack_response", true.into()),
        ],
    );
    let evs = events(0, 500);
    send(&tx, "z.e2e", evs.clone()).await;
    wait_for(Duration::from_secs(10), "500 events", || sink.len() >= 500).await;
    stop(tx).await;
    stop(rx).await;
    let got: Vec<Event> = sink.events().into_iter().map(|(_, e)| e).collect();
    assert_eq!(got, evs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_frames_without_ack_or_keepalive() {
    let raw = RawServer::start(true).await;
    let tx = sender(
        "out_plain",
        servers(&[(raw.port, 60, false)]),
        vec![("keepalive", false.into())],
    );
    for k in 0..5 {
        send(&tx, "p.t", events(k * 10, 10)).await;
    }
    wait_for(Duration::from_secs(10), "50 events", || raw.events() >= 50).await;
    stop(tx).await;
    let frames = raw.frames();
    assert_eq!(frames.len(), 5);
    assert!(
        frames
            .iter()
            .all(|f| f.mode == Mode::PackedForward && f.chunk.is_none()),
        "{frames:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batches_are_split_into_frames_under_max_frame_size() {
    let raw = RawServer::start(true).await;
    let tx = sender(
        "out_split",
        servers(&[(raw.port, 60, false)]),
        vec![
            ("max_frame_size", Value::Size(2048)),
            ("require_ack_response", true.into()),
        ],
    );
    send(&tx, "split", events(0, 200)).await;
    wait_for(Duration::from_secs(10), "200 events", || {
        raw.events() >= 200
    })
    .await;
    stop(tx).await;
    let frames = raw.frames();
    // ~40 bytes per event: 8 KB in frames of about 2 KB.
    assert!(frames.len() >= 3, "{frames:?}");
    assert!(frames.iter().all(|f| f.bytes < 2048 + 200), "{frames:?}");
    assert_eq!(frames.iter().map(|f| f.events).sum::<usize>(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_share_batches_between_servers() {
    let a = RawServer::start(true).await;
    let b = RawServer::start(true).await;
    let tx = sender(
        "out_weights",
        servers(&[(a.port, 60, false), (b.port, 40, false)]),
        vec![("require_ack_response", true.into())],
    );
    for k in 0..10 {
        send(&tx, "w", events(k * 10, 10)).await;
    }
    wait_for(Duration::from_secs(10), "100 events", || {
        a.events() + b.events() >= 100
    })
    .await;
    stop(tx).await;
    assert_eq!((a.events(), b.events()), (60, 40));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_fails_over_to_the_live_one() {
    capture_logs();
    let dead = free_port();
    let live = RawServer::start(true).await;
    let tx = sender(
        "out_failover",
        servers(&[(dead, 60, false), (live.port, 60, false)]),
        vec![("require_ack_response", true.into())],
    );
    for k in 0..20 {
        send(&tx, "f", events(k * 5, 5)).await;
    }
    wait_for(Duration::from_secs(10), "100 events", || {
        live.events() >= 100
    })
    .await;
    let line = wait_log(&[
        "out_failover",
        "forward server failed",
        &format!("127.0.0.1:{dead}"),
    ])
    .await;
    assert!(line.contains("connecting"), "{line}");
    assert_eq!(
        retries(&tx, "out_failover"),
        0,
        "failover happens within one write"
    );
    stop(tx).await;
    assert_eq!(live.events(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_takes_over_only_when_primaries_are_down() {
    let p1 = free_port();
    let (primary, primary_sink) = receiver(p1, vec![]);
    wait_listening(p1).await;
    let dead = free_port();
    let standby = RawServer::start(true).await;
    let tx = sender(
        "out_standby",
        servers(&[(p1, 60, false), (dead, 60, false), (standby.port, 60, true)]),
        vec![
            ("require_ack_response", true.into()),
            ("recover_wait", Duration::from_secs(60).into()),
        ],
    );
    for k in 0..5 {
        send(&tx, "s.before", events(k * 10, 10)).await;
    }
    wait_for(Duration::from_secs(10), "50 events at the primary", || {
        primary_sink.len() >= 50
    })
    .await;
    assert_eq!(
        standby.events(),
        0,
        "the standby is idle while a primary is up"
    );

    stop(primary).await;
    for k in 5..10 {
        send(&tx, "s.after", events(k * 10, 10)).await;
    }
    wait_for(Duration::from_secs(10), "50 events at the standby", || {
        standby.events() >= 50
    })
    .await;
    stop(tx).await;
    assert_eq!(primary_sink.len(), 50);
    assert_eq!(standby.events(), 50);
    assert!(standby.frames().iter().all(|f| f.tag == "s.after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_never_acks_loses_the_batch_to_another() {
    capture_logs();
    let silent = RawServer::start(false).await;
    let port = free_port();
    let (rx, sink) = receiver(port, vec![]);
    wait_listening(port).await;
    let tx = sender(
        "out_noack",
        // Equal weights: the silent server is tried first.
        servers(&[(silent.port, 60, false), (port, 60, false)]),
        vec![
            ("require_ack_response", true.into()),
            ("ack_response_timeout", Duration::from_millis(300).into()),
            ("recover_wait", Duration::from_secs(60).into()),
        ],
    );
    send(&tx, "noack", events(0, 10)).await;
    wait_for(
        Duration::from_secs(10),
        "10 events at the acking server",
        || sink.len() >= 10,
    )
    .await;
    wait_log(&["out_noack", "no ack within 300ms"]).await;
    stop(tx).await;
    stop(rx).await;
    assert_eq!(
        silent.events(),
        10,
        "the silent server got the frame too (a duplicate, as in fluentd)"
    );
    assert_eq!(sink.ints("i"), (0..10).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacked_batch_is_resent_once_the_server_recovers() {
    capture_logs();
    let silent = RawServer::start(false).await;
    let tx = sender(
        "out_recover",
        servers(&[(silent.port, 60, false)]),
        vec![
            ("require_ack_response", true.into()),
            ("ack_response_timeout", Duration::from_millis(200).into()),
            ("recover_wait", Duration::from_millis(100).into()),
        ],
    );
    send(&tx, "recover", events(0, 10)).await;
    wait_for(Duration::from_secs(10), "a retry", || {
        retries(&tx, "out_recover") >= 2
    })
    .await;
    assert!(silent.frames().len() >= 2, "resent after each timeout");
    // The server starts acknowledging: the next resend is delivered.
    silent.ack.store(true, std::sync::atomic::Ordering::SeqCst);
    let sent_before = silent.frames().len();
    wait_for(Duration::from_secs(10), "the output to settle", || {
        tx.metrics()
            .nodes
            .iter()
            .any(|n| n.id == "out_recover" && n.events_out == 10)
    })
    .await;
    stop(tx).await;
    let frames = silent.frames();
    assert!(frames.len() > sent_before);
    assert!(frames.iter().all(|f| f.events == 10));
}
