//! The parser on every construct of the language, through the public
//! `parse_str` and the AST.

use std::time::Duration;

use ulog_lang::ast::{Block, Entry, File, Item, Route, Value, ValueKind};
use ulog_lang::{parse_str, Options};

fn options() -> Options {
    Options::with_vars([("HOME_DIR", "/home/u"), ("EMPTY", ""), ("APP", "shop")])
}

fn parse(text: &str) -> File {
    match parse_str("t.conf", text, &options()) {
        Ok(f) => f,
        Err(d) => panic!("{}", ulog_lang::render_all(&d)),
    }
}

fn only_input(text: &str) -> Block {
    let f = parse(text);
    assert_eq!(f.items.len(), 1);
    match f.items.into_iter().next().unwrap() {
        Item::Input(b) => b,
        other => panic!("{other:?}"),
    }
}

fn param<'a>(b: &'a Block, name: &str) -> &'a Value {
    &b.params()
        .find(|p| p.key.value == name)
        .unwrap_or_else(|| panic!("no {name}"))
        .value
}

fn engine(v: &Value) -> ulog_engine::Value {
    v.to_engine().expect("valid value")
}

#[test]
fn the_contract_example_parses() {
    let text = r#"
# comment
include "conf.d/*.conf"                     # glob, relative to the including file
input http {                                # input <type> { params }
  id     = "phones"                         # optional node id
  listen = "${HTTP_LISTEN:-127.0.0.1:9880}" # env interpolation with default
}
input dummy { tag = "demo.tick"  rate = 5  record = { msg = "alive", n = 1 } }
input stdin { tag = "cli.lines"  format = "json" }
filter "home.*.owl" "home.*.nissan" record {
  set = { site = "mk" }
}
match "app.**" "web.{api,ui}" file {
  path   = "out/{tag}.jsonl"
  format = "json"
}
match "trial.**" copy {
  file   { path = "out/trial.jsonl" }
  stdout { }
}
match "**" null { }
label errors {
  match "**" file { path = "out/errors.jsonl" }
}
"#;
    let f = parse(text);
    let kinds: Vec<&str> = f
        .items
        .iter()
        .map(|i| match i {
            Item::Include(_) => "include",
            Item::Input(_) => "input",
            Item::Filter(_) => "filter",
            Item::Match(_) => "match",
            Item::Label(_) => "label",
        })
        .collect();
    assert_eq!(
        kinds,
        ["include", "input", "input", "input", "filter", "match", "match", "match", "label"]
    );
    let Item::Include(inc) = &f.items[0] else {
        unreachable!()
    };
    assert_eq!(inc.path.value, "conf.d/*.conf");
    let Item::Input(http) = &f.items[1] else {
        unreachable!()
    };
    assert_eq!(http.type_name.value, "http");
    assert_eq!(
        engine(param(http, "listen")),
        ulog_engine::Value::Str("127.0.0.1:9880".into())
    );
    let Item::Filter(filter) = &f.items[4] else {
        unreachable!()
    };
    let patterns: Vec<&str> = filter.patterns.iter().map(|p| p.value.as_str()).collect();
    assert_eq!(patterns, ["home.*.owl", "home.*.nissan"]);
    let Item::Match(copy) = &f.items[6] else {
        unreachable!()
    };
    assert_eq!(copy.block.type_name.value, "copy");
    let outputs: Vec<&str> = copy
        .block
        .blocks()
        .map(|b| b.type_name.value.as_str())
        .collect();
    assert_eq!(outputs, ["file", "stdout"]);
    let Item::Label(label) = &f.items[8] else {
        unreachable!()
    };
    assert_eq!(label.name.value, "errors");
    assert_eq!(label.items.len(), 1);
}

#[test]
fn every_value_kind() {
    use ulog_engine::Value as V;
    let b = only_input(
        r#"input x {
  s   = "text"
  i   = 42
  neg = -1_000_000
  f   = 0.25
  e   = 1.5e3
  t   = true
  no  = false
  d1  = 250ms
  d2  = 5s
  d3  = 2m
  d4  = 2h
  d5  = 1d
  d6  = 10us
  d7  = 3ns
  z1  = 512B
  z2  = 512KiB
  z3  = 8MiB
  z4  = 1GiB
  z5  = 2KB
  z6  = 3MB
  z7  = 4GB
  l   = [1, "two", [3], { four = 4 }]
  m   = { a = 1, "quoted key" = "v", nested = { deeper = [true] } }
  r   = /^GET \/api\/(\d+)$/
  empty_list = []
  empty_map  = {}
}"#,
    );
    let want = [
        ("s", V::Str("text".into())),
        ("i", V::Int(42)),
        ("neg", V::Int(-1_000_000)),
        ("f", V::Float(0.25)),
        ("e", V::Float(1500.0)),
        ("t", V::Bool(true)),
        ("no", V::Bool(false)),
        ("d1", V::Duration(Duration::from_millis(250))),
        ("d2", V::Duration(Duration::from_secs(5))),
        ("d3", V::Duration(Duration::from_secs(120))),
        ("d4", V::Duration(Duration::from_secs(7200))),
        ("d5", V::Duration(Duration::from_secs(86400))),
        ("d6", V::Duration(Duration::from_micros(10))),
        ("d7", V::Duration(Duration::from_nanos(3))),
        ("z1", V::Size(512)),
        ("z2", V::Size(512 * 1024)),
        ("z3", V::Size(8 << 20)),
        ("z4", V::Size(1 << 30)),
        ("z5", V::Size(2_000)),
        ("z6", V::Size(3_000_000)),
        ("z7", V::Size(4_000_000_000)),
        (
            "l",
            V::List(vec![
                V::Int(1),
                V::Str("two".into()),
                V::List(vec![V::Int(3)]),
                V::Map(vec![("four".into(), V::Int(4))]),
            ]),
        ),
        (
            "m",
            V::Map(vec![
                ("a".into(), V::Int(1)),
                ("quoted key".into(), V::Str("v".into())),
                (
                    "nested".into(),
                    V::Map(vec![("deeper".into(), V::List(vec![V::Bool(true)]))]),
                ),
            ]),
        ),
        ("r", V::Regex(r"^GET /api/(\d+)$".into())),
        ("empty_list", V::List(vec![])),
        ("empty_map", V::Map(vec![])),
    ];
    assert_eq!(b.params().count(), want.len());
    for (name, value) in want {
        assert_eq!(engine(param(&b, name)), value, "{name}");
    }
    // Spans: key and value are kept apart.
    let p = b.params().find(|p| p.key.value == "d1").unwrap();
    assert_eq!(p.key.span.text(), "d1");
    assert_eq!(p.value.span.text(), "250ms");
    let ValueKind::Map(entries) = &param(&b, "m").kind else {
        panic!()
    };
    assert_eq!(entries[1].0.span.text(), "\"quoted key\"");
}

#[test]
fn strings_escape_and_interpolate() {
    let b = only_input(
        r#"input x {
  esc     = "q\" b\\ n\n t\t r\r u\u{e9} \u00e9"
  home    = "${HOME_DIR}/logs"
  default = "${NOPE:-fallback}"
  empty   = "${EMPTY:-was empty}"
  blank   = "[${EMPTY}]"
  literal = "$${HOME_DIR} and $ alone"
}"#,
    );
    let s = |name: &str| match &param(&b, name).kind {
        ValueKind::Str(s) => s.value.clone(),
        other => panic!("{other:?}"),
    };
    assert_eq!(s("esc"), "q\" b\\ n\n t\t r\r u\u{e9} \u{e9}");
    assert_eq!(s("home"), "/home/u/logs");
    assert_eq!(s("default"), "fallback");
    assert_eq!(s("empty"), "was empty");
    assert_eq!(s("blank"), "[]");
    assert_eq!(s("literal"), "${HOME_DIR} and $ alone");
}

#[test]
fn interpolation_applies_to_patterns_labels_and_includes() {
    let f = parse(
        r#"include "${APP}.d/*.conf"
match "${APP}.**" null { }
label "${APP}-errors" { }"#,
    );
    let Item::Include(i) = &f.items[0] else {
        panic!()
    };
    assert_eq!(i.path.value, "shop.d/*.conf");
    let Item::Match(m) = &f.items[1] else {
        panic!()
    };
    assert_eq!(m.patterns[0].value, "shop.**");
    let Item::Label(l) = &f.items[2] else {
        panic!()
    };
    assert_eq!(l.name.value, "shop-errors");
}

#[test]
fn unset_variable_without_default_is_an_error() {
    let err = parse_str("t.conf", "input x { a = \"${NOPE}\" }", &options()).unwrap_err();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0].code, "E-env");
    assert_eq!(err[0].line_col(), Some(("t.conf".into(), 1, 16)));
}

#[test]
fn the_default_environment_is_the_process_environment() {
    // PATH is set in any test environment.
    let f = parse_str("t.conf", "input x { p = \"${PATH}\" }", &Options::default()).unwrap();
    let Item::Input(b) = &f.items[0] else {
        panic!()
    };
    let ValueKind::Str(s) = &param(b, "p").kind else {
        panic!()
    };
    assert_eq!(s.value, std::env::var("PATH").unwrap());
}

#[test]
fn separators_commas_newlines_and_spaces() {
    let texts = [
        "input x { a = 1, b = 2, c = [1, 2, 3], d = { k = 1, l = 2 } }",
        "input x { a = 1 b = 2 c = [1 2 3] d = { k = 1 l = 2 } }",
        "input x {\n  a = 1\n  b = 2\n  c = [\n    1\n    2,\n    3,\n  ]\n  d = {\n    k = 1\n    l = 2\n  }\n}",
        "input x { a = 1, b = 2, c = [1, 2, 3,], d = { k = 1, l = 2, }, }",
    ];
    for text in texts {
        let b = only_input(text);
        assert_eq!(b.params().count(), 4, "{text}");
        assert_eq!(
            engine(param(&b, "c")),
            ulog_engine::Value::List(vec![
                ulog_engine::Value::Int(1),
                ulog_engine::Value::Int(2),
                ulog_engine::Value::Int(3)
            ]),
            "{text}"
        );
    }
}

#[test]
fn comments_anywhere_but_in_strings() {
    let b = only_input(
        "# leading\ninput x { # after brace\n  a = \"#not a comment\" # trailing\n  # own line\n  b = [1, # inside a list\n 2]\n} # end",
    );
    let ValueKind::Str(s) = &param(&b, "a").kind else {
        panic!()
    };
    assert_eq!(s.value, "#not a comment");
    assert_eq!(b.params().count(), 2);
}

#[test]
fn multiple_patterns_and_their_spans() {
    let f = parse(r#"match "app.**" "web.{api,ui}"  "x" stdout { }"#);
    let Item::Match(Route { patterns, .. }) = &f.items[0] else {
        panic!()
    };
    let texts: Vec<&str> = patterns.iter().map(|p| p.span.text()).collect();
    assert_eq!(texts, ["\"app.**\"", "\"web.{api,ui}\"", "\"x\""]);
    // Byte 4 of the second pattern (`{`) maps to its column.
    let at = patterns[1].span_at(4);
    assert_eq!(at.text(), "{");
}

#[test]
fn labels_take_identifiers_or_strings_and_hold_blocks_and_includes() {
    let f = parse(
        r#"label errors {
  filter "**" record { }
  include "errors.d/*.conf"
  match "**" null { }
}
label "with space" { }"#,
    );
    let Item::Label(l) = &f.items[0] else {
        panic!()
    };
    assert_eq!(l.items.len(), 3);
    assert!(matches!(l.items[1], Item::Include(_)));
    let Item::Label(l2) = &f.items[1] else {
        panic!()
    };
    assert_eq!(l2.name.value, "with space");
}

#[test]
fn copy_holds_nested_output_blocks() {
    let f = parse(
        r#"match "a.**" copy {
  file { path = "x", format = "json" }, stdout { }
  null { }
}"#,
    );
    let Item::Match(m) = &f.items[0] else {
        panic!()
    };
    let nested: Vec<&Block> = m.block.blocks().collect();
    assert_eq!(nested.len(), 3);
    assert_eq!(nested[0].params().count(), 2);
    assert!(m.block.entries.iter().all(|e| matches!(e, Entry::Block(_))));
}

#[test]
fn keywords_need_a_word_boundary() {
    // `inputs` is not `input` followed by `s`.
    let err = parse_str("t.conf", "inputs x { }", &options()).unwrap_err();
    assert_eq!(err[0].code, "E-syntax");
    assert!(
        err[0].message.contains("found `inputs`"),
        "{}",
        err[0].message
    );
}

#[test]
fn identifiers_allow_dashes_and_underscores() {
    let b = only_input("input my_plugin-2 { some-key_1 = 1 }");
    assert_eq!(b.type_name.value, "my_plugin-2");
    assert!(b.params().any(|p| p.key.value == "some-key_1"));
}
