//! Properties over generated input:
//! - compiling any string never panics, and whatever compiles evaluates
//!   without panicking;
//! - a raw JSON record and the same record parsed give the same result, with
//!   duplicate keys, escapes and odd numbers included;
//! - a result always has one of the kinds the compiler said it may have.

use bytes::Bytes;
use proptest::prelude::*;
use serde_json::{Map, Value as Json};
use ulog_engine::{EventTime, Record, Tag};
use ulog_expr::{Context, Expr, Value};

/// Expressions that read the generated records' fields in every way the
/// language allows.
const EXPRESSIONS: &[&str] = &[
    "$.a",
    "$.a.b",
    "$.a[0]",
    "$.a[1].b",
    "$['a.b']",
    "$['q\"k']",
    "$",
    "exists($.a)",
    "exists($.a.b)",
    "is_null($.b)",
    "type_of($.a)",
    "$.a ?? $.b ?? 'none'",
    "$.n + 1",
    "$.n * $.n",
    "$.n / $.m",
    "$.n % $.m",
    "-$.n",
    "$.n < $.m",
    "$.n == $.m",
    "$.s == 'x'",
    "$.s < $.a",
    "$.a and $.b",
    "not $.a or $.b",
    "$.a ? $.n : $.m",
    "upper($.s)",
    "lower($.s) == 'x'",
    "len($.a)",
    "len($.s ?? '')",
    "contains($.a, $.s)",
    "starts_with($.s, 'a')",
    "split($.s, ',')",
    "join($.a, '-')",
    "format('{}/{}', $.s, $.n)",
    "matches($.s, r'^\\w+$')",
    "capture($.s, r'(\\d+)', 1)",
    "captures($.s, r'(?P<d>\\d)').d",
    "regex_replace($.s, r'\\d', '#')",
    "replace($.s, 'a', 'b')",
    "to_int($.s)",
    "to_int($.n)",
    "to_float($.s)",
    "to_string($.a)",
    "to_time($.n)",
    "parse_time($.s, '%Y-%m-%d')",
    "format_time(to_time($.n), '%H:%M', 'Europe/London')",
    "hour(time, $.s)",
    "weekday(time + $.n)",
    "time_diff(time, to_time($.m))",
    "abs($.n)",
    "min($.n, $.m, 3)",
    "max($.s, 'm')",
    "round($.n)",
    "round($.n, $.m)",
    "floor($.n / 3)",
    "ceil($.n)",
    "if($.a == $.b, $.n, $.s)",
    "[$.a, $.n][0] == $.a",
    "trim($.s) != $.s",
    "tag[1] == $.s",
];

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["a", "b", "n", "m", "s", "a.b", "q\"k"]).prop_map(String::from),
        1 => "[a-z\u{e9}\"\\\\]{0,3}",
    ]
}

fn scalar() -> impl Strategy<Value = Json> {
    prop_oneof![
        Just(Json::Null),
        any::<bool>().prop_map(Json::Bool),
        any::<i64>().prop_map(Json::from),
        any::<u64>().prop_map(Json::from),
        (-5i64..5).prop_map(Json::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Json::from),
        prop::sample::select(vec![0.0, -0.0, 0.5, 1e300, -2.5]).prop_map(Json::from),
        "[a-z0-9 ,\\-:\u{e9}\u{1F600}\"\\\\\n]{0,12}".prop_map(Json::String),
        prop::sample::select(vec!["2026-05-01", "17", " 4.5 ", "Europe/London", "x,y"])
            .prop_map(|s| Json::String(s.into())),
    ]
}

fn value() -> impl Strategy<Value = Json> {
    scalar().prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Json::Array),
            prop::collection::vec((key(), inner), 0..4)
                .prop_map(|kv| Json::Object(kv.into_iter().collect())),
        ]
    })
}

/// A record as JSON text, keys possibly repeated, with some whitespace.
fn record_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec((key(), value()), 0..8),
        prop::sample::select(vec!["", " ", "\n  "]),
    )
        .prop_map(|(pairs, ws)| {
            let fields: Vec<String> = pairs
                .iter()
                .map(|(k, v)| format!("{ws}{}{ws}:{ws}{v}", Json::String(k.clone())))
                .collect();
            format!("{{{}{ws}}}", fields.join(","))
        })
}

fn tag() -> Tag {
    Tag::parse("home.x.battery").unwrap()
}

/// Evaluates on both forms; they must agree, and the result must fit the
/// compiled type.
fn check(expr: &Expr, text: &str) -> Result<(), TestCaseError> {
    let raw = Record::from_json_bytes(Bytes::copy_from_slice(text.as_bytes()))
        .map_err(|e| TestCaseError::fail(format!("generated invalid JSON {text}: {e}")))?;
    let parsed = Record::Map(serde_json::from_str::<Map<String, Json>>(text).unwrap());
    let tag = tag();
    let time = EventTime::from_secs_nanos(1_777_636_800, 0);
    let a = expr.eval(&Context {
        record: &raw,
        tag: &tag,
        time,
    });
    let b = expr.eval(&Context {
        record: &parsed,
        tag: &tag,
        time,
    });
    prop_assert_eq!(&a, &b, "{} on {}", expr.source(), text);
    if let Ok(v) = &a {
        prop_assert!(
            v.type_of().is_within(expr.result_type()),
            "{} gave {:?}, outside its type {}",
            expr.source(),
            v,
            expr.result_type()
        );
        if let Value::Float(f) = v {
            prop_assert!(f.is_finite());
        }
    }
    Ok(())
}

/// Pieces that make mostly well-formed expressions when strung together.
fn token_soup() -> impl Strategy<Value = String> {
    let tokens = vec![
        "$",
        ".a",
        ".b",
        ".n",
        "[0]",
        "['s']",
        "(",
        ")",
        "[",
        "]",
        ",",
        "1",
        "0",
        "-3",
        "2.5",
        "'x'",
        "\"a.b\"",
        "r'\\d+'",
        "'{}'",
        "'%Y'",
        "'UTC'",
        "+",
        "-",
        "*",
        "/",
        "%",
        "==",
        "!=",
        "<",
        ">=",
        " and ",
        " or ",
        " not ",
        "?",
        ":",
        "??",
        "tag",
        "tag[1]",
        "time",
        "null",
        "true",
        "upper(",
        "len(",
        "format(",
        "matches(",
        "capture(",
        "round(",
        "if(",
        "exists(",
        "min(",
        "to_int(",
        "split(",
        "join(",
        "hour(",
        "parse_time(",
        " ",
        "\n",
        "&&",
        "=",
        "\"",
        "\\",
    ];
    prop::collection::vec(prop::sample::select(tokens), 0..24).prop_map(|t| t.concat())
}

/// Well-formed expressions (every operand parenthesised), of any types: many
/// fail the type checker, the rest are evaluated.
fn expression() -> impl Strategy<Value = String> {
    let leaf = prop::sample::select(vec![
        "$.a",
        "$.b",
        "$.n",
        "$.m",
        "$.s",
        "$.a.b",
        "$.a[0]",
        "$['a.b']",
        "$",
        "tag",
        "tag[1]",
        "tag[7]",
        "time",
        "1",
        "0",
        "-3",
        "2.5",
        "0.0",
        "'x'",
        "'2026-05-01'",
        "'a,b'",
        "''",
        "null",
        "true",
        "false",
        "[1, 'a']",
        "[]",
        "9223372036854775807",
    ])
    .prop_map(String::from);
    leaf.prop_recursive(4, 32, 3, |inner| {
        let op = prop::sample::select(vec![
            "+", "-", "*", "/", "%", "==", "!=", "<", "<=", ">", ">=", "and", "or", "??",
        ]);
        let unary = prop::sample::select(vec!["-", "not "]);
        let one = prop::sample::select(vec![
            "upper",
            "lower",
            "trim",
            "len",
            "to_int",
            "to_float",
            "to_string",
            "to_time",
            "type_of",
            "is_null",
            "exists",
            "abs",
            "round",
            "floor",
            "ceil",
            "hour",
            "weekday",
        ]);
        let two = prop::sample::select(vec![
            "contains",
            "starts_with",
            "ends_with",
            "split",
            "join",
            "min",
            "max",
            "round",
            "time_diff",
            "hour",
            "weekday",
        ]);
        prop_oneof![
            (inner.clone(), op, inner.clone()).prop_map(|(a, o, b)| format!("({a} {o} {b})")),
            (unary, inner.clone()).prop_map(|(u, a)| format!("{u}({a})")),
            (one, inner.clone()).prop_map(|(f, a)| format!("{f}({a})")),
            (two, inner.clone(), inner.clone()).prop_map(|(f, a, b)| format!("{f}({a}, {b})")),
            (inner.clone(), inner.clone(), inner.clone())
                .prop_map(|(c, a, b)| format!("(({c}) ? ({a}) : ({b}))")),
            (inner.clone(), inner.clone())
                .prop_map(|(a, b)| format!("format('{{}}:{{}}', {a}, {b})")),
            inner.clone().prop_map(|a| format!("matches({a}, r'^\\w')")),
            inner
                .clone()
                .prop_map(|a| format!("capture({a}, r'(\\d+)', 1)")),
            inner
                .clone()
                .prop_map(|a| format!("parse_time({a}, '%Y-%m-%d', 'Europe/London')")),
            inner
                .clone()
                .prop_map(|a| format!("format_time({a}, '%d %H:%M')")),
            (inner.clone(), inner.clone()).prop_map(|(a, b)| format!("replace({a}, 'a', {b})")),
            inner.clone().prop_map(|a| format!("({a})[0]")),
            inner.prop_map(|a| format!("({a}).b")),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn raw_and_parsed_records_agree(text in record_text()) {
        for src in EXPRESSIONS {
            let expr = Expr::compile(src).unwrap_or_else(|e| panic!("{src}: {e}"));
            check(&expr, &text)?;
        }
    }

    #[test]
    fn compiling_any_text_never_panics(src in any::<String>()) {
        if let Err(e) = Expr::compile(&src) {
            prop_assert!(e.offset <= src.len());
            prop_assert!(e.line >= 1 && e.column >= 1);
            let _ = e.render("p", &src);
        }
    }

    #[test]
    fn generated_expressions_evaluate_without_panics(src in expression(), text in record_text()) {
        if let Ok(expr) = Expr::compile(&src) {
            check(&expr, &text)?;
        }
    }

    #[test]
    fn token_soup_compiles_or_fails_cleanly(src in token_soup(), text in record_text()) {
        match Expr::compile(&src) {
            Ok(expr) => check(&expr, &text)?,
            Err(e) => {
                prop_assert!(e.offset + e.len <= src.len(), "{:?}: {:?}", src, e);
                prop_assert!(!e.render("p", &src).is_empty());
            }
        }
    }
}
