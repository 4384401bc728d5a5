//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::sync::Arc;

use ulog_engine::{Params, PluginKind, PluginSpec, Value};
use ulog_parsers::{build_parser, format_params, Parser};

/// Validated format parameters, as an input would get them.
pub fn params(given: &[(&str, Value)]) -> Result<Params, String> {
    let mut spec = PluginSpec::new(PluginKind::Input, "test", "test input");
    for p in format_params("json") {
        spec = spec.param(p);
    }
    let given: Vec<(String, Value)> = given
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    spec.validate(&given).map_err(|e| {
        e.iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("; ")
    })
}

/// A parser built from routes-file style parameters.
pub fn parser(given: &[(&str, Value)]) -> Arc<dyn Parser> {
    let p = params(given).expect("valid params");
    build_parser(&p).unwrap_or_else(|e| panic!("build_parser: {e}"))
}

/// `format = name` plus what each format needs to be built.
pub fn every_format() -> Vec<(&'static str, Arc<dyn Parser>)> {
    ulog_parsers::FORMATS
        .iter()
        .map(|&f| {
            let mut given = vec![("format", Value::from(f))];
            match f {
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
            (f, parser(&given))
        })
        .collect()
}
