//! Malformed input for every parser: truncated lines, binary garbage, wrong
//! delimiters, huge fields. Each must give a `ParseError` (never a panic),
//! and random bytes must never panic any parser.

mod common;

use bytes::Bytes;
use common::{every_format, parser};
use ulog_engine::Value;

fn assert_error(format: &str, input: &[u8]) {
    let p = parser(&format_params_for(format));
    match p.parse(Bytes::copy_from_slice(input)) {
        Err(e) => assert!(!e.0.is_empty(), "{format}: empty error message"),
        Ok(parsed) => panic!(
            "{format}: {:?} should not parse, got {:?}",
            String::from_utf8_lossy(&input[..input.len().min(80)]),
            parsed.record
        ),
    }
}

fn format_params_for(format: &str) -> Vec<(&'static str, Value)> {
    let format: &'static str = ulog_parsers::FORMATS
        .iter()
        .find(|f| **f == format)
        .expect("known format");
    let mut given = vec![("format", Value::from(format))];
    match format {
        "regex" => given.push((
            "expression",
            Value::Regex(r"^(?<host>\S+) (?<code>\d+) (?<message>.*)$".into()),
        )),
        "csv" | "tsv" => given.push((
            "keys",
            Value::List(vec!["a".into(), "b".into(), "c".into()]),
        )),
        _ => {}
    }
    given
}

const APACHE: &[u8] = br#"127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /apache_pb.gif HTTP/1.0" 200 2326 "http://www.example.com/start.html" "Mozilla/4.08 [en] (Win98; I ;Nav)""#;
const SYSLOG5424: &[u8] = br#"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut="3" eventSource="Application"] An application event"#;
const SYSLOG3164: &[u8] = b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick";
const APACHE_ERROR: &[u8] =
    b"[Fri Sep 09 10:42:29.902022 2011] [core:error] [pid 35708:tid 4328636416] [client 72.15.99.187] File does not exist";

#[test]
fn truncated_lines_fail() {
    // Every prefix of a valid line that cuts a required part.
    let json = br#"{"a":1,"b":"two"}"#;
    for cut in 0..json.len() {
        assert_error("json", &json[..cut]);
    }
    for cut in [0, 10, 30, 45, 60, 75] {
        assert_error("apache2", &APACHE[..cut]);
        assert_error("nginx", &APACHE[..cut]);
    }
    for cut in [0, 3, 6, 20, 40, 70, 110] {
        assert_error("syslog_rfc5424", &SYSLOG5424[..cut]);
    }
    for cut in [0, 2, 8, 14] {
        assert_error("syslog_rfc3164", &SYSLOG3164[..cut]);
        assert_error("syslog", &SYSLOG3164[..cut]);
    }
    for cut in [0, 1, 20, 34, 40] {
        assert_error("apache_error", &APACHE_ERROR[..cut]);
    }
    assert_error("csv", b"1,\"2");
    assert_error("tsv", b"1\t2");
    assert_error("logfmt", b"a=1 b=\"unterminated");
    assert_error("ltsv", b"a:1\tb");
    let mut mp = Vec::new();
    ulog_parsers::msgpack::write_json(&mut mp, &serde_json::json!({"k": "value", "n": [1, 2, 3]}));
    for cut in 0..mp.len() {
        assert_error("msgpack", &mp[..cut]);
    }
}

#[test]
fn binary_garbage_fails() {
    let garbage: &[&[u8]] = &[
        b"\x00\x01\x02\x03\xff\xfe\xfd",
        b"\xde\xad\xbe\xef\x80\x81 \x82=\x83",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
    ];
    for format in ulog_parsers::FORMATS {
        if *format == "none" {
            continue;
        }
        for g in garbage {
            // msgpack reads some of these as a scalar: still not a map.
            assert_error(format, g);
        }
    }
}

#[test]
fn wrong_delimiters_fail() {
    // csv keys a,b,c given tab-separated data and vice versa.
    assert_error("csv", b"1\t2\t3");
    assert_error("tsv", b"1,2,3");
    assert_error("csv", b"1;2;3");
    assert_error("csv", b"1,2,3,4");
    // ltsv written with commas and `=`.
    assert_error("ltsv", b"a=1,b=2");
    // logfmt written as JSON.
    assert_error("logfmt", br#"{"a": "b"}"#);
    // An access line with tabs instead of spaces.
    let tabbed: Vec<u8> = APACHE
        .iter()
        .map(|&c| if c == b' ' { b'\t' } else { c })
        .collect();
    assert_error("apache2", &tabbed);
    assert_error("regex", b"host\t200\tmessage");
}

#[test]
fn huge_fields_are_handled() {
    let huge = "x".repeat(4 << 20);
    // Parse fine when well-formed...
    let p = parser(&format_params_for("logfmt"));
    let r = p.parse(Bytes::from(format!("k=\"{huge}\" n=1"))).unwrap();
    assert_eq!(r.record.to_map()["k"].as_str().unwrap().len(), huge.len());
    // ...and fail with a short message when not.
    for (format, line) in [
        ("csv", format!("\"{huge}")),
        ("apache2", format!("{huge} - - [bad]")),
        ("ltsv", huge.clone()),
        ("syslog", format!("<34>1 {huge}")),
        ("json", format!("{{\"a\":\"{huge}")),
    ] {
        let e = parser(&format_params_for(format))
            .parse(Bytes::from(line))
            .unwrap_err();
        assert!(
            e.0.len() < 400,
            "{format}: error message is {} bytes",
            e.0.len()
        );
    }
}

#[test]
fn deep_nesting_is_refused_without_overflowing_the_stack() {
    let mut json = b"{\"a\":".to_vec();
    json.resize(json.len() + 100_000, b'[');
    assert_error("json", &json);
    // msgpack: a map whose value is 100,000 nested one-element arrays.
    let mut mp = vec![0x81, 0xa1, b'a'];
    mp.resize(mp.len() + 100_000, 0x91);
    mp.push(0x01);
    assert_error("msgpack", &mp);
    // Within the limit it parses.
    let mut ok = vec![0x81, 0xa1, b'a'];
    ok.resize(ok.len() + 100, 0x91);
    ok.push(0x01);
    let p = parser(&format_params_for("msgpack"));
    if let Err(e) = p.parse(Bytes::from(ok)) {
        panic!("100 levels should parse: {e}");
    }
    // And the time-key variant of json, which skips values instead of building them.
    let p = parser(&[
        ("format", Value::from("json")),
        ("time_key", Value::from("t")),
        ("keep_time_key", Value::Bool(true)),
    ]);
    assert!(p.parse(Bytes::from(json)).is_err());
}

/// xorshift64*: a seeded generator, so a failure names its seed and repeats.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_bytes_never_panic() {
    let parsers = every_format();
    // Bytes biased towards the characters the grammars care about.
    const ALPHABET: &[u8] = b" \t\"\\[]<>:=,-/.0123456789abcTZ+{}\x00\xff\xc3\xa9\r\n";
    let seeds = [
        APACHE,
        SYSLOG5424,
        SYSLOG3164,
        APACHE_ERROR,
        br#"{"a":[1,{"b":null}]}"#,
    ];
    for seed in 1..=3000u64 {
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let input: Vec<u8> = if seed & 1 == 0 {
            // Mutate a real line.
            let mut line = seeds[(rng.next() % seeds.len() as u64) as usize].to_vec();
            for _ in 0..(rng.next() % 6 + 1) {
                let at = (rng.next() as usize) % line.len().max(1);
                match rng.next() % 3 {
                    0 if !line.is_empty() => {
                        line.remove(at);
                    }
                    1 => line.insert(at, ALPHABET[(rng.next() as usize) % ALPHABET.len()]),
                    _ => line.truncate(at),
                }
            }
            line
        } else {
            let len = (rng.next() % 200) as usize;
            (0..len)
                .map(|_| {
                    if rng.next() & 3 == 0 {
                        rng.next() as u8
                    } else {
                        ALPHABET[(rng.next() as usize) % ALPHABET.len()]
                    }
                })
                .collect()
        };
        for (name, p) in &parsers {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _ = p.parse(Bytes::copy_from_slice(&input));
            }));
            assert!(outcome.is_ok(), "{name} panicked on seed {seed}: {input:?}");
        }
    }
}
