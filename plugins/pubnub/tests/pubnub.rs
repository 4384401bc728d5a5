//! `input pubnub` and `output pubnub` against the local PubNub stand-in
//! (see `standin/mod.rs`): the real samples through the real input, resume
//! across restarts and faults without loss or repeats, history catch-up,
//! encryption, publish modes, batching and refused publishes.

mod standin;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use standin::PubNub;
use ulog_engine::{Registry, Running};
use ulog_lang::Options;

const DEADLINE: Duration = Duration::from_secs(30);
const SUB: &str = "sub-c-0d3f0e52-test";
const PUB: &str = "pub-c-7a1e5c2b-test";

fn registry() -> Registry {
    let mut r = Registry::new();
    ulog_plugins_basic::register(&mut r);
    ulog_plugins_pubnub::register(&mut r);
    r
}

fn start(routes: &str, dir: &Path) -> Running {
    let options = Options {
        shutdown_timeout: Duration::from_secs(2),
        ..Options::default()
    };
    ulog_lang::compile_str("routes.conf", routes, dir, &registry(), &options)
        .unwrap_or_else(|d| {
            panic!(
                "{}",
                d.iter().map(|d| d.render()).collect::<Vec<_>>().join("\n")
            )
        })
        .pipeline
        .start()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

async fn wait_for(path: &Path, n: usize) -> Vec<Value> {
    let begun = Instant::now();
    loop {
        let got = lines(path);
        if got.len() >= n {
            return got;
        }
        assert!(
            begun.elapsed() < DEADLINE,
            "{} has {} of {n} lines: {got:?}",
            path.display(),
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until the input polls with a timetoken (it has subscribed).
async fn wait_polling(pn: &PubNub, from: usize) {
    let begun = Instant::now();
    while pn.with(|s| s.polls.len()) <= from {
        assert!(begun.elapsed() < DEADLINE, "the input never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn stop(running: Running) {
    running.stop();
    running.wait().await;
}

fn input_routes(pn: &PubNub, extra: &str) -> String {
    format!(
        r#"
input pubnub {{ id = "pn"  origin = "{origin}"  subscribe_key = "{SUB}"  uuid = "ulog-server-1"
  channels = ["mk-smart.log"]  state_file = "state/pubnub.json"  subscribe_timeout = 2s {extra} }}
match "pubnub.**" file {{ path = "out/got.jsonl"  tag_key = "tag"  flush_interval = 20ms }}
label errors {{
  match "**" file {{ path = "out/errors.jsonl"  flush_interval = 20ms }}
}}
"#,
        origin = pn.origin()
    )
}

fn sample(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata/pubnub")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn ns(got: &[Value]) -> Vec<i64> {
    got.iter().filter_map(|v| v["n"].as_i64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_real_samples_come_through_the_input() {
    let pn = PubNub::start(SUB, PUB).await;
    pn.with(|s| {
        for f in [
            "subscribe_v2_handshake_empty.json",
            "subscribe_v2_single_message.json",
            "subscribe_v2_mixed_payload_types.json",
            "subscribe_v2_signal.json",
            "subscribe_v2_presence_interval.json",
        ] {
            s.canned.push_back(sample(f));
        }
        // An entry the SDK would skip without a word, then a good one.
        s.canned.push_back(
            r#"{"t":{"t":"15614817397807999","r":2},"m":[{"c":"TestChannel","d":{"broken":true}},
            {"a":"1","f":0,"i":"x","p":{"t":"15614817397807990","r":2},"k":"demo","c":"TestChannel","d":"after"}]}"#
                .into(),
        );
    });
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
input pubnub {{ origin = "{origin}"  subscribe_key = "{SUB}"  channels = ["TestChannel", "channelSwift"]  tag = "pn.{{type}}.{{channel}}" }}
match "pn.**" file {{ path = "out/got.jsonl"  tag_key = "tag"  flush_interval = 20ms }}
label errors {{
  match "**" file {{ path = "out/errors.jsonl"  flush_interval = 20ms }}
}}
"#,
        origin = pn.origin()
    );
    let running = start(&routes, dir.path());
    // 1 single + 6 mixed + 1 signal + 1 after the broken entry; presence
    // is skipped.
    wait_for(&dir.path().join("out/got.jsonl"), 9).await;
    let errors = wait_for(&dir.path().join("out/errors.jsonl"), 1).await;
    assert_eq!(errors[0]["entry"]["d"]["broken"], true);
    assert!(errors[0]["_error"].as_str().unwrap().contains("malformed"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(running).await;
    let got = lines(&dir.path().join("out/got.jsonl"));
    assert_eq!(got.len(), 9, "{got:#?}");
    assert_eq!(got[8]["message"], "after");
    assert_eq!(got[0]["tag"], "pn.message.TestChannel");
    assert_eq!(got[0]["message"], "Test Message");
    assert_eq!(got[0]["_timetoken"], "15614814456537442");
    assert_eq!(got[0]["_publisher"], "db9c5e39-7c95-40f5-8d71-125765b6f561");
    assert_eq!(got[0]["_channel"], "TestChannel");
    // The mixed sample: object, array, string, float, bool, int…
    assert_eq!(got[1]["tag"], "pn.message.channelSwift");
    assert_eq!(
        got[1]["message"], "Hello",
        "an object message is the record"
    );
    assert_eq!(got[2]["message"], json!([1, "Hello", {"Key": "Value"}]));
    assert_eq!(got[3]["message"], "Test Message");
    assert_eq!(got[4]["message"], json!(323525.234234));
    assert_eq!(got[5]["message"], json!(true));
    let signal = got.iter().find(|v| v["_type"] == "signal").unwrap();
    assert_eq!(signal["tag"], "pn.signal.TestChannel");
    assert_eq!(signal["message"], "Test Signal");
    assert_eq!(signal["_publisher"], "TestUser");
    assert!(got.iter().all(|v| v["_channel"] != "TestChannel-pnpres"));
    // The canned cursors were followed: each poll asked for the sample's `t`.
    let polls = pn.with(|s| s.polls.clone());
    assert_eq!(polls[0].tt, 0);
    assert_eq!(polls[1].tt, 15628652479932717);
    assert_eq!(polls[1].tr, Some(4));
    assert_eq!(polls[0].channels, ["TestChannel", "channelSwift"]);
    pn.assert_right();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_after_the_last_accepted_message_without_loss_or_repeats() {
    let pn = PubNub::start(SUB, PUB).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out/got.jsonl");
    let running = start(&input_routes(&pn, ""), dir.path());
    wait_polling(&pn, 0).await;
    for n in 0..50 {
        pn.publish("mk-smart.log", json!({"household": "h1", "n": n}));
    }
    wait_for(&out, 50).await;
    stop(running).await;
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("state/pubnub.json")).unwrap(),
    )
    .unwrap();
    let last = pn.stored("mk-smart.log")[49].timetoken;
    assert_eq!(
        state["timetoken"],
        last.to_string(),
        "the committed timetoken is the last message's, every digit"
    );
    // Published while ulog is down.
    for n in 50..120 {
        pn.publish("mk-smart.log", json!({"household": "h1", "n": n}));
    }
    let polls_before = pn.with(|s| s.polls.len());
    let running = start(&input_routes(&pn, ""), dir.path());
    let got = wait_for(&out, 120).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop(running).await;
    let got2 = lines(&out);
    assert_eq!(
        got2.len(),
        got.len(),
        "nothing more arrived after the catch-up"
    );
    assert_eq!(
        ns(&got2),
        (0..120).collect::<Vec<_>>(),
        "each message exactly once, in order"
    );
    let resumed = pn.with(|s| s.polls[polls_before].clone());
    assert_eq!(
        resumed.tt, last,
        "the restart subscribed from the committed timetoken"
    );
    assert_eq!(resumed.uuid, "ulog-server-1");
    assert_eq!(got2[0]["tag"], "pubnub.mk-smart.log");
    assert_eq!(got2[0]["_publisher"], "other-client");
    pn.assert_right();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_cuts_and_stalls_are_ridden_out_without_loss_or_repeats() {
    let pn = PubNub::start(SUB, PUB).await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out/got.jsonl");
    let running = start(&input_routes(&pn, ""), dir.path());
    wait_polling(&pn, 0).await;
    let mut n = 0;
    for fault in 0..3 {
        for _ in 0..20 {
            pn.publish("mk-smart.log", json!({"n": n}));
            n += 1;
        }
        wait_for(&out, n as usize).await;
        pn.with(|s| match fault {
            0 => s.fail_next = 3,
            1 => s.cut_next = 2,
            _ => s.stall_next = 1,
        });
        // Let the input run into the fault before publishing more.
        tokio::time::sleep(Duration::from_millis(700)).await;
    }
    for _ in 0..20 {
        pn.publish("mk-smart.log", json!({"n": n}));
        n += 1;
    }
    wait_for(&out, n as usize).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop(running).await;
    let got = lines(&out);
    assert_eq!(ns(&got), (0..n).collect::<Vec<_>>());
    pn.with(|s| {
        assert_eq!(
            (s.fail_next, s.cut_next, s.stall_next),
            (0, 0, 0),
            "every fault was met"
        );
    });
    pn.assert_right();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_fills_what_the_subscribe_catch_up_no_longer_holds() {
    let pn = PubNub::start(SUB, PUB).await;
    // Subscribe catch-up holds only the newest 100 messages of a channel.
    pn.with(|s| s.catch_up_limit = Some(100));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out/got.jsonl");
    let routes = input_routes(&pn, "history = true");
    let running = start(&routes, dir.path());
    wait_polling(&pn, 0).await;
    for n in 0..10 {
        pn.publish("mk-smart.log", json!({"n": n}));
    }
    wait_for(&out, 10).await;
    stop(running).await;
    for n in 10..260 {
        pn.publish("mk-smart.log", json!({"n": n}));
    }
    let running = start(&routes, dir.path());
    wait_for(&out, 260).await;
    wait_polling(&pn, pn.with(|s| s.polls.len())).await;
    for n in 260..270 {
        pn.publish("mk-smart.log", json!({"n": n}));
    }
    wait_for(&out, 270).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop(running).await;
    let got = lines(&out);
    assert_eq!(
        ns(&got),
        (0..270).collect::<Vec<_>>(),
        "history and subscribe, each message once"
    );
    assert!(
        pn.with(|s| s.history_calls) >= 3,
        "250 messages take three pages of 100"
    );

    // Without history the same outage loses what catch-up no longer holds:
    // the stand-in's limit is real, so the test above is not vacuous.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out/got.jsonl");
    let routes = input_routes(&pn, "");
    let running = start(&routes, dir.path());
    wait_polling(&pn, pn.with(|s| s.polls.len())).await;
    pn.publish("mk-smart.log", json!({"n": 1000}));
    wait_for(&out, 1).await;
    stop(running).await;
    for n in 1001..1250 {
        pn.publish("mk-smart.log", json!({"n": n}));
    }
    let running = start(&routes, dir.path());
    wait_for(&out, 101).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    stop(running).await;
    assert_eq!(lines(&out).len(), 101);
    pn.assert_right();
}

fn output_routes(pn: &PubNub, count: usize, extra: &str) -> String {
    format!(
        r#"
input dummy {{ tag = "hub.h1.owl"  rate = 0  size = 10  max_events = {count}  auto_increment_key = "n"
  record = {{ household = "h1", power_w = 420 }} }}
# Keeps the pipeline running after the first input has sent everything.
input dummy {{ tag = "keepalive"  rate = 1 }}
match "hub.**" pubnub {{ id = "pnout"  origin = "{origin}"  subscribe_key = "{SUB}"  publish_key = "{PUB}"
  uuid = "hub-h1"  channel = "mk-smart.{{household}}"  tag_key = "tag" {extra} }}
label errors {{
  match "**" file {{ path = "out/errors.jsonl"  flush_interval = 20ms }}
}}
"#,
        origin = pn.origin()
    )
}

async fn wait_stored(pn: &PubNub, channel: &str, n: usize) -> Vec<standin::Stored> {
    let begun = Instant::now();
    loop {
        let got = pn.stored(channel);
        if got.len() >= n {
            return got;
        }
        assert!(
            begun.elapsed() < DEADLINE,
            "{channel} has {} of {n}; wrong: {:?}; publishes: {:?}",
            got.len(),
            pn.with(|s| s.wrong.clone()),
            pn.with(|s| s.publishes.clone())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_output_publishes_each_event_in_order_and_retries_only_what_failed() {
    let pn = PubNub::start(SUB, PUB).await;
    pn.with(|s| s.fail_next = 2);
    let dir = tempfile::tempdir().unwrap();
    let running = start(
        &output_routes(&pn, 30, "store = true  meta = { site = \"mk\" }"),
        dir.path(),
    );
    let stored = wait_stored(&pn, "mk-smart.h1", 30).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(running).await;
    let stored = {
        let now = pn.stored("mk-smart.h1");
        assert_eq!(now.len(), stored.len());
        now
    };
    let n: Vec<i64> = stored
        .iter()
        .map(|m| m.message["n"].as_i64().unwrap())
        .collect();
    assert_eq!(
        n,
        (0..30).collect::<Vec<_>>(),
        "every event once, in order, after two 500s"
    );
    assert_eq!(stored[0].message["household"], "h1");
    assert_eq!(stored[0].message["tag"], "hub.h1.owl");
    assert_eq!(stored[0].uuid, "hub-h1");
    assert_eq!(stored[0].meta, Some(json!({"site": "mk"})));
    pn.with(|s| {
        let (method, channel, q) = &s.publishes[0];
        assert_eq!(method, "POST");
        assert_eq!(channel, "mk-smart.h1");
        assert_eq!(q.get("store").map(String::as_str), Some("1"));
        assert!(!q.contains_key("norep"));
    });
    assert!(lines(&dir.path().join("out/errors.jsonl")).is_empty());
    pn.assert_right();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fire_mode_reaches_functions_only_and_get_publishes_work_too() {
    let pn = PubNub::start(SUB, PUB).await;
    let dir = tempfile::tempdir().unwrap();
    let running = start(
        &output_routes(&pn, 5, "mode = \"fire\"  use_post = false"),
        dir.path(),
    );
    let begun = Instant::now();
    while pn.with(|s| s.fired.len()) < 5 {
        assert!(
            begun.elapsed() < DEADLINE,
            "fired {}",
            pn.with(|s| s.fired.len())
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop(running).await;
    assert!(
        pn.stored("mk-smart.h1").is_empty(),
        "fire does not reach subscribers or history"
    );
    pn.with(|s| {
        let (method, _, q) = &s.publishes[0];
        assert_eq!(method, "GET");
        assert_eq!(q.get("store").map(String::as_str), Some("0"));
        assert_eq!(q.get("norep").map(String::as_str), Some("true"));
        assert_eq!(s.fired[4].message["n"], 4);
    });
    pn.assert_right();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_pack_into_arrays_that_the_input_splits_again() {
    let pn = PubNub::start(SUB, PUB).await;
    let hub = tempfile::tempdir().unwrap();
    let server = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
input pubnub {{ origin = "{origin}"  subscribe_key = "{SUB}"  channels = ["mk-smart.h1"]  split_arrays = true  tag = "server.{{household}}" }}
match "server.**" file {{ path = "out/got.jsonl"  tag_key = "tag"  flush_interval = 20ms }}
"#,
        origin = pn.origin()
    );
    let receiving = start(&routes, server.path());
    wait_polling(&pn, 0).await;
    let sending = start(
        &output_routes(&pn, 200, "batch = true  max_message_size = 2KiB"),
        hub.path(),
    );
    let out = server.path().join("out/got.jsonl");
    let got = wait_for(&out, 200).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(sending).await;
    stop(receiving).await;
    assert_eq!(ns(&got), (0..200).collect::<Vec<_>>());
    assert_eq!(got[0]["tag"], "server.h1");
    assert_eq!(got[0]["_channel"], "mk-smart.h1");
    let messages = pn.stored("mk-smart.h1");
    assert!(
        messages.len() < 40,
        "{} messages for 200 events",
        messages.len()
    );
    for m in &messages {
        assert!(m.message.is_array());
        assert!(m.message.to_string().len() <= 2048);
    }
    pn.assert_right();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_messages_round_trip_and_a_wrong_key_goes_to_errors() {
    let pn = PubNub::start(SUB, PUB).await;
    let dir = tempfile::tempdir().unwrap();
    let sender = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
input pubnub {{ origin = "{origin}"  subscribe_key = "{SUB}"  channels = ["mk-smart.h1"]  cipher_key = "enigma" }}
input pubnub {{ origin = "{origin}"  subscribe_key = "{SUB}"  channels = ["mk-smart.h1"]  cipher_key = "not-enigma"  tag = "wrongkey" }}
match "pubnub.**" file {{ path = "out/got.jsonl"  flush_interval = 20ms }}
label errors {{
  match "**" file {{ path = "out/errors.jsonl"  flush_interval = 20ms }}
}}
"#,
        origin = pn.origin()
    );
    let receiving = start(&routes, dir.path());
    wait_polling(&pn, 1).await;
    let sending = start(
        &output_routes(&pn, 3, "cipher_key = \"enigma\""),
        sender.path(),
    );
    let got = wait_for(&dir.path().join("out/got.jsonl"), 3).await;
    let errors = wait_for(&dir.path().join("out/errors.jsonl"), 3).await;
    stop(sending).await;
    stop(receiving).await;
    assert_eq!(ns(&got), [0, 1, 2]);
    assert_eq!(got[0]["household"], "h1");
    let stored = pn.stored("mk-smart.h1");
    assert!(
        stored[0].message.is_string() && !stored[0].message.to_string().contains("household"),
        "PubNub saw ciphertext, not the record: {}",
        stored[0].message
    );
    let reason = errors[0]["_error"].as_str().unwrap();
    assert!(
        reason.contains("decrypt") || reason.contains("not valid JSON"),
        "{errors:?}"
    );
    pn.assert_right();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_and_oversized_publishes_go_to_errors_with_the_reason() {
    let pn = PubNub::start(SUB, PUB).await;
    pn.with(|s| s.forbid_publish = true);
    let dir = tempfile::tempdir().unwrap();
    let running = start(&output_routes(&pn, 3, ""), dir.path());
    let errors = wait_for(&dir.path().join("out/errors.jsonl"), 3).await;
    stop(running).await;
    assert!(
        errors[0]["_error"].as_str().unwrap().contains("403"),
        "{errors:?}"
    );
    assert_eq!(pn.with(|s| s.publishes.len()), 3, "a 403 is not retried");

    let pn = PubNub::start(SUB, PUB).await;
    let dir = tempfile::tempdir().unwrap();
    let running = start(&output_routes(&pn, 2, "max_message_size = 30"), dir.path());
    let errors = wait_for(&dir.path().join("out/errors.jsonl"), 2).await;
    stop(running).await;
    assert!(errors[0]["_error"]
        .as_str()
        .unwrap()
        .contains("max_message_size"));
    assert_eq!(pn.with(|s| s.publishes.len()), 0);
    pn.assert_right();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stand_in_catches_a_wrong_request() {
    // The checks are live: a request without uuid/pnsdk and with a wrong
    // key is recorded as wrong.
    let pn = PubNub::start(SUB, PUB).await;
    let url = format!("{}/v2/subscribe/sub-c-wrong/mk/0?tt=5", pn.origin());
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let resp = client.get(url.parse().unwrap()).await.unwrap();
    assert_eq!(resp.status(), 200);
    let wrong = pn.with(|s| s.wrong.clone());
    assert!(wrong.iter().any(|w| w.contains("no uuid")), "{wrong:?}");
    assert!(wrong.iter().any(|w| w.contains("no pnsdk")), "{wrong:?}");
    assert!(
        wrong.iter().any(|w| w.contains("subscribe key")),
        "{wrong:?}"
    );
    assert!(wrong.iter().any(|w| w.contains("no tr")), "{wrong:?}");
}

#[test]
fn configuration_errors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    for (routes, expect) in [
        (
            r#"input pubnub { subscribe_key = "s" }"#,
            "at least one channel",
        ),
        (
            r#"input pubnub { subscribe_key = "s"  channels = ["a b"] }"#,
            "not a valid channel",
        ),
        (
            r#"input pubnub { subscribe_key = "s"  channels = ["a"]  origin = "ftp://x" }"#,
            "https://",
        ),
        (
            r#"input pubnub { subscribe_key = "s"  channels = ["a"]  tag = "x.{channel" }"#,
            "unclosed",
        ),
        (
            r#"input dummy {}
match "**" pubnub { subscribe_key = "s"  channel = "c" }"#,
            "publish key",
        ),
    ] {
        let err = match ulog_lang::compile_str(
            "routes.conf",
            routes,
            dir.path(),
            &registry(),
            &Options::default(),
        ) {
            Ok(_) => panic!("{routes} was accepted"),
            Err(d) => d.iter().map(|d| d.render()).collect::<Vec<_>>().join("\n"),
        };
        assert!(err.contains(expect), "{routes}: {err}");
    }
}
