//! Fuzzes every parser: the first byte picks the format (and a variant of
//! its options), the rest is the line. A parser may refuse the input, never
//! panic, hang or allocate without bound.
#![no_main]

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ulog_engine::{PluginKind, PluginSpec, Value};
use ulog_parsers::{build_parser, format_params, Parser, FORMATS};

fn build(given: Vec<(&str, Value)>) -> Arc<dyn Parser> {
    let mut spec = PluginSpec::new(PluginKind::Input, "fuzz", "fuzz input");
    for p in format_params("json") {
        spec = spec.param(p);
    }
    let given: Vec<(String, Value)> = given.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
    let params = spec.validate(&given).expect("valid fuzz params");
    build_parser(&params).expect("fuzz parser builds")
}

fn parsers() -> &'static Vec<Arc<dyn Parser>> {
    static PARSERS: OnceLock<Vec<Arc<dyn Parser>>> = OnceLock::new();
    PARSERS.get_or_init(|| {
        let mut all = Vec::new();
        for &format in FORMATS {
            let base = || {
                let mut g = vec![("format", Value::from(format))];
                match format {
                    "regex" => g.push((
                        "expression",
                        Value::Regex(
                            r"^(?<host>\S+) (?<time>\S+) (?<code>\d*) (?<message>.*)$".into(),
                        ),
                    )),
                    "csv" | "tsv" => g.push((
                        "keys",
                        Value::List(vec!["time".into(), "code".into(), "msg".into()]),
                    )),
                    _ => {}
                }
                g
            };
            // Plain.
            all.push(build(base()));
            // With a time field, types and the natural time kept.
            let mut g = base();
            g.push(("time_key", Value::from("time")));
            g.push(("keep_time_key", Value::Bool(format.starts_with("syslog"))));
            g.push(("types", Value::Map(vec![("code".into(), "int".into())])));
            all.push(build(g));
            // A strftime pattern without a year, in the local zone.
            let mut g = base();
            g.push(("time_key", Value::from("time")));
            g.push(("time_format", Value::from("%b %d %H:%M:%S")));
            g.push(("time_zone", Value::from("local")));
            all.push(build(g));
        }
        all
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&pick, line)) = data.split_first() else {
        return;
    };
    let all = parsers();
    let parser = &all[usize::from(pick) % all.len()];
    if let Ok(parsed) = parser.parse(Bytes::copy_from_slice(line)) {
        // Whatever parsed must serialise.
        let mut out = Vec::new();
        parsed.record.write_json(&mut out);
        assert!(!out.is_empty());
    }
});
