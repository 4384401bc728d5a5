//! Parser throughput on realistic lines, in bytes per second: every format,
//! plus baselines that show what the hand-written scanners save (apache2 and
//! syslog against the equivalent `regex` format, raw json against json parsed
//! into a map for its time field).

use std::sync::Arc;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ulog_engine::{PluginKind, PluginSpec, Value};
use ulog_parsers::{build_parser, format_params, Parser};

fn parser(given: &[(&str, Value)]) -> Arc<dyn Parser> {
    let mut spec = PluginSpec::new(PluginKind::Input, "bench", "bench input");
    for p in format_params("json") {
        spec = spec.param(p);
    }
    let given: Vec<(String, Value)> = given
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    build_parser(&spec.validate(&given).expect("valid params")).expect("parser builds")
}

const APACHE_COMMON: &str = r#"192.168.10.24 - alice [10/Oct/2023:13:55:36 +0200] "GET /api/v2/orders/8812?expand=items HTTP/1.1" 200 2326"#;
const APACHE_COMBINED: &str = r#"192.168.10.24 - alice [10/Oct/2023:13:55:36 +0200] "GET /api/v2/orders/8812?expand=items HTTP/1.1" 200 2326 "https://shop.example.com/cart" "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0""#;
const SYSLOG_5424: &str = r#"<165>1 2023-10-11T22:14:15.003Z web-03.example.com nginx 2211 ACCESS [meta@32473 region="eu-west-1" zone="b"] upstream response time 0.031s for /api/v2/orders"#;
const SYSLOG_3164: &str =
    "<38>Oct 11 22:14:15 web-03 sshd[2211]: Accepted publickey for deploy from 10.0.4.17 port 52144 ssh2";
const JSON: &str = r#"{"time":"2023-10-11T22:14:15.003Z","level":"info","service":"orders","trace_id":"4bf92f3577b34da6","msg":"order created","order_id":8812,"amount":129.5}"#;
const LTSV: &str = "time:10/Oct/2023:13:55:36 +0200\thost:192.168.10.24\tmethod:GET\turi:/api/v2/orders/8812\tstatus:200\tsize:2326\treqtime:0.031\tua:Mozilla/5.0";
const LOGFMT: &str = r#"time=2023-10-11T22:14:15.003Z level=info service=orders msg="order created" order_id=8812 amount=129.5 duration=31ms"#;
const CSV: &str = r#"2023-10-11T22:14:15.003Z,orders,info,"order created, paid",8812,129.5"#;
const APACHE_ERROR: &str = "[Wed Oct 11 14:32:52.902022 2023] [core:error] [pid 35708:tid 4328636416] [client 72.15.99.187:52144] AH00128: File does not exist: /var/www/html/favicon.ico";
/// fluentd's apache2 expression, as a user of `format regex` would write it.
const APACHE_REGEX: &str = r#"^(?<host>[^ ]*) [^ ]* (?<user>[^ ]*) \[(?<time>[^\]]*)\] "(?<method>\S+)(?: +(?<path>(?:[^\"]|\\.)*?)(?: +\S*)?)?" (?<code>[^ ]*) (?<size>[^ ]*)(?: "(?<referer>(?:[^\"]|\\.)*)" "(?<agent>(?:[^\"]|\\.)*)")?$"#;
/// fluentd's rfc3164 expression.
const SYSLOG_REGEX: &str = r"^<(?<pri>[0-9]+)>(?<time>[^ ]* {1,2}[^ ]* [^ ]*) (?<host>[^ ]*) (?<ident>[^ :\[]*)(?:\[(?<pid>[0-9]+)\])?(?:[^:]*:)? *(?<message>.*)$";

fn bench(c: &mut Criterion) {
    let s = |v: &str| Value::from(v);
    let cases: Vec<(&str, &str, Arc<dyn Parser>)> = vec![
        (
            "apache2_common",
            APACHE_COMMON,
            parser(&[("format", s("apache2"))]),
        ),
        (
            "apache2_combined",
            APACHE_COMBINED,
            parser(&[("format", s("apache2"))]),
        ),
        (
            "regex_apache2_baseline",
            APACHE_COMBINED,
            parser(&[
                ("format", s("regex")),
                ("expression", Value::Regex(APACHE_REGEX.into())),
                ("time_key", s("time")),
                ("time_format", s("%d/%b/%Y:%H:%M:%S %z")),
            ]),
        ),
        ("nginx", APACHE_COMBINED, parser(&[("format", s("nginx"))])),
        (
            "apache_error",
            APACHE_ERROR,
            parser(&[("format", s("apache_error"))]),
        ),
        (
            "syslog_rfc5424",
            SYSLOG_5424,
            parser(&[("format", s("syslog"))]),
        ),
        (
            "syslog_rfc3164",
            SYSLOG_3164,
            parser(&[("format", s("syslog"))]),
        ),
        (
            "regex_rfc3164_baseline",
            SYSLOG_3164,
            parser(&[
                ("format", s("regex")),
                ("expression", Value::Regex(SYSLOG_REGEX.into())),
                ("time_key", s("time")),
                ("time_format", s("%b %d %H:%M:%S")),
            ]),
        ),
        ("json_raw", JSON, parser(&[("format", s("json"))])),
        (
            "json_time_key",
            JSON,
            parser(&[("format", s("json")), ("time_key", s("time"))]),
        ),
        (
            "json_time_key_kept",
            JSON,
            parser(&[
                ("format", s("json")),
                ("time_key", s("time")),
                ("keep_time_key", Value::Bool(true)),
            ]),
        ),
        ("ltsv", LTSV, parser(&[("format", s("ltsv"))])),
        ("logfmt", LOGFMT, parser(&[("format", s("logfmt"))])),
        (
            "csv",
            CSV,
            parser(&[
                ("format", s("csv")),
                (
                    "keys",
                    Value::List(
                        ["time", "service", "level", "msg", "order_id", "amount"]
                            .map(Value::from)
                            .to_vec(),
                    ),
                ),
            ]),
        ),
        ("none", APACHE_COMMON, parser(&[("format", s("none"))])),
    ];
    let mut group = c.benchmark_group("parsers");
    for (name, line, p) in &cases {
        let input = Bytes::from_static(line.as_bytes());
        p.parse(input.clone())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        group.throughput(Throughput::Bytes(line.len() as u64));
        group.bench_with_input(BenchmarkId::new(*name, line.len()), &input, |b, input| {
            b.iter(|| black_box(p.parse(black_box(input.clone())).is_ok()))
        });
    }
    let mut mp = Vec::new();
    let value: serde_json::Value = serde_json::from_str(JSON).unwrap();
    ulog_parsers::msgpack::write_json(&mut mp, &value);
    let input = Bytes::from(mp);
    let p = parser(&[("format", s("msgpack"))]);
    p.parse(input.clone()).expect("msgpack parses");
    group.throughput(Throughput::Bytes(input.len() as u64));
    group.bench_with_input(
        BenchmarkId::new("msgpack", input.len()),
        &input,
        |b, input| b.iter(|| black_box(p.parse(black_box(input.clone())).is_ok())),
    );
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
