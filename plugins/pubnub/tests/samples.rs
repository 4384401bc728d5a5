//! Every PubNub sample in `shared/testdata/pubnub` through ulog's decoding:
//! the subscribe envelopes into records, history into messages with exact
//! timetokens, and the publish answer the stand-in imitates. Truncated,
//! malformed and reordered variants are errors or the same result, never a
//! panic.

mod standin;

use std::path::Path;

use pubnub::subscribe::Update;
use serde_json::{json, Value};
use ulog_plugins_pubnub::envelope::{decode_subscribe, record, Fields, Kind};
use ulog_plugins_pubnub::history::parse_page;

fn sample(name: &str) -> String {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/testdata/pubnub")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The records of the messages and signals of an envelope.
fn records(name: &str) -> (u64, u32, Vec<Value>, usize) {
    let (tt, region, updates) = decode_subscribe(sample(name).as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut other = 0;
    for u in updates {
        let (m, kind) = match u {
            Update::Message(m) => (m, Kind::Message),
            Update::Signal(m) => (m, Kind::Signal),
            _ => {
                other += 1;
                continue;
            }
        };
        let r = record(&m, kind, &Fields::default()).unwrap();
        out.push(Value::Object(r.to_map().into_owned()));
    }
    (tt, region, out, other)
}

#[test]
fn handshake() {
    let (tt, region, got, other) = records("subscribe_v2_handshake_empty.json");
    assert_eq!((tt, region), (15628652479932717, 4));
    assert!(got.is_empty());
    assert_eq!(other, 0);
}

#[test]
fn single_message() {
    let (tt, region, got, _) = records("subscribe_v2_single_message.json");
    assert_eq!((tt, region), (15614817397807903, 2));
    assert_eq!(
        got,
        [json!({
            "message": "Test Message",
            "_channel": "TestChannel",
            "_publisher": "db9c5e39-7c95-40f5-8d71-125765b6f561",
            "_timetoken": "15614814456537442",
        })]
    );
}

#[test]
fn mixed_payload_types() {
    let (_, _, got, _) = records("subscribe_v2_mixed_payload_types.json");
    let messages: Vec<&Value> = got
        .iter()
        .map(|r| r.get("message").unwrap_or(&Value::Null))
        .collect();
    // An object message is the record itself: its own `message` field.
    assert_eq!(messages[0], "Hello");
    assert_eq!(got[0].as_object().unwrap().len(), 4);
    assert_eq!(messages[1], &json!([1, "Hello", {"Key": "Value"}]));
    assert_eq!(messages[2], "Test Message");
    assert_eq!(messages[3], &json!(323525.234234));
    assert_eq!(messages[4], &json!(true));
    assert!(got.len() >= 6, "{got:#?}");
    assert_eq!(got.last().unwrap()["_timetoken"], "15614817397828462");
    assert!(got.iter().all(|r| r["_channel"] == "channelSwift"));
}

#[test]
fn signal() {
    let (_, _, got, _) = records("subscribe_v2_signal.json");
    assert_eq!(
        got,
        [json!({
            "message": "Test Signal",
            "_channel": "TestChannel",
            "_publisher": "TestUser",
            "_timetoken": "15670248886386268",
            "_type": "signal",
        })]
    );
}

#[test]
fn presence_is_not_a_message() {
    let (_, _, got, other) = records("subscribe_v2_presence_interval.json");
    assert!(got.is_empty());
    assert_eq!(other, 1);
}

#[test]
fn history_v3_keeps_every_digit() {
    let page = parse_page(
        sample("history_v3_fetch_success.json").as_bytes(),
        "TestChannel",
    )
    .unwrap();
    let tts: Vec<usize> = page.iter().map(|m| m.timestamp).collect();
    assert_eq!(tts, [15653750239963666, 15654070724737575]);
    let r = record(&page[0], Kind::Message, &Fields::default()).unwrap();
    assert_eq!(r.to_map()["message"], "Hello");
}

#[test]
fn history_v2_timetokens_above_2_pow_53_stay_exact() {
    // v2 writes timetokens as bare JSON integers; ulog reads integers as
    // u64, never f64 (15653750239963666 is not a double).
    let v: Value = serde_json::from_str(&sample("history_v2_success_include_token.json")).unwrap();
    assert_eq!(v[0][0]["timetoken"].as_u64(), Some(15653750239963666));
    let tt = v[0][1]["timetoken"].as_u64().unwrap();
    assert_eq!(tt, 15654070724737575);
    assert_ne!(
        tt as f64 as u64, tt,
        "the sample does exercise the f64 trap"
    );
    assert_eq!(v[2].as_u64(), Some(15654070724737575));
}

#[test]
fn the_stand_in_answers_publish_as_the_sample_does() {
    let sample: Value = serde_json::from_str(&sample("publish_v1_success.json")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let pn = standin::PubNub::start("sub-c-x", "pub-c-x").await;
        let url = format!(
            "{}/publish/pub-c-x/sub-c-x/0/ch/0/%7B%22a%22%3A1%7D?uuid=u&pnsdk=t&seqn=1",
            pn.origin()
        );
        let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http();
        let resp = client.get(url.parse().unwrap()).await.unwrap();
        use http_body_util::BodyExt;
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let got: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(got[0], sample[0]);
        assert_eq!(got[1], sample[1]);
        let (a, b) = (got[2].as_str().unwrap(), sample[2].as_str().unwrap());
        assert_eq!(a.len(), b.len(), "a 17-digit timetoken string");
        assert!(a.bytes().all(|c| c.is_ascii_digit()));
        assert_eq!(pn.stored("ch")[0].message, json!({"a": 1}));
        pn.assert_right();
    });
}

#[test]
fn every_truncation_is_an_error_not_a_panic() {
    for name in [
        "subscribe_v2_single_message.json",
        "subscribe_v2_mixed_payload_types.json",
        "subscribe_v2_signal.json",
        "subscribe_v2_presence_interval.json",
    ] {
        let text = sample(name);
        let trimmed = text.trim_end();
        for cut in 0..trimmed.len() {
            if !trimmed.is_char_boundary(cut) {
                continue;
            }
            assert!(
                decode_subscribe(&trimmed.as_bytes()[..cut]).is_err(),
                "{name} cut at {cut} was accepted"
            );
        }
    }
    let history = sample("history_v3_fetch_success.json");
    let trimmed = history.trim_end();
    for cut in 0..trimmed.len() {
        assert!(parse_page(&trimmed.as_bytes()[..cut], "TestChannel").is_err());
    }
}

#[test]
fn malformed_envelopes_are_errors() {
    for body in [
        r#"{"t":{"t":"x","r":1},"m":[]}"#,
        r#"{"t":{"t":"1","r":1},"m":[{"c":"a"}]}"#,
        r#"{"t":{"t":"1","r":1},"m":[{"a":"1","f":0,"p":{"t":"x","r":1},"c":"a","d":1}]}"#,
        r#"{"m":[]}"#,
        r#"[1,2,3]"#,
        r#"{"status":403,"error":true,"message":"Forbidden","service":"Access Manager"}"#,
    ] {
        let got = decode_subscribe(body.as_bytes());
        assert!(got.is_err(), "{body}: {got:?}");
    }
}

#[test]
fn reordered_keys_decode_the_same() {
    let mut v: Value = serde_json::from_str(&sample("subscribe_v2_single_message.json")).unwrap();
    let forward = serde_json::to_string(&v).unwrap();
    // Rebuild every object with its keys in reverse order.
    fn reverse(v: &mut Value) {
        match v {
            Value::Object(m) => {
                let mut entries: Vec<(String, Value)> = std::mem::take(m).into_iter().collect();
                entries.reverse();
                for (k, mut val) in entries {
                    reverse(&mut val);
                    m.insert(k, val);
                }
            }
            Value::Array(a) => a.iter_mut().for_each(reverse),
            _ => {}
        }
    }
    reverse(&mut v);
    let backward = serde_json::to_string(&v).unwrap();
    assert_ne!(forward, backward);
    let a = decode_subscribe(forward.as_bytes()).unwrap();
    let b = decode_subscribe(backward.as_bytes()).unwrap();
    assert_eq!((a.0, a.1), (b.0, b.1));
    assert_eq!(format!("{:?}", a.2), format!("{:?}", b.2));
}
