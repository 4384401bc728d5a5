//! Tests of the whole language: positions of compile errors, the type
//! checker, every operator and function, and the two record forms agreeing.

use bytes::Bytes;
use serde_json::{json, Map, Value as Json};
use ulog_engine::{EventTime, Record, Tag};

use super::*;

/// 2026-05-01T12:00:00Z, a Friday.
const NOON: i64 = 1_777_636_800;

const RECORD: &str = r#"{
    "household": "h1", "soc_pct": 42, "power_w": 2500, "ratio": 0.25,
    "battery": {"soc": 81.5, "temp": -3}, "channels": [{"power_w": 120}, {"power_w": 7.5}],
    "a.b": "dotted", "q\"k": "quoted key", "clé": "unicode key", "esc": "tab\there",
    "s": "Hello World", "n": 7, "z": 0, "zf": 0.0, "nul": null, "t": true, "f": false,
    "big": 9223372036854775807, "small": -9223372036854775808, "huge": 18446744073709551615,
    "one_f": 1.0, "e": 1e300, "num_s": " 42 ", "float_s": "4.7", "list": ["a", "b", 3],
    "mixed": [1, null], "empty": "", "msg": "user=alice id=17", "tz": "Europe/London",
    "bad_tz": "Europe/Londn", "ts": "2026-05-01 13:30:00", "iso": "2026-05-01T12:00:00.5+00:00",
    "obj": {"k": [1, 2]}
}"#;

fn tag() -> Tag {
    Tag::parse("home.h1.battery").unwrap()
}

fn raw(json: &str) -> Record {
    Record::from_json_bytes(Bytes::copy_from_slice(json.as_bytes())).unwrap()
}

fn parsed(json: &str) -> Record {
    Record::Map(serde_json::from_str::<Map<String, Json>>(json).unwrap())
}

/// Evaluates on the raw and the parsed form of `json`, which must agree.
fn eval_on(src: &str, json: &str) -> Result<Value, EvalError> {
    let expr = Expr::compile(src).unwrap_or_else(|e| panic!("{}", e.render("test", src)));
    let tag = tag();
    let time = EventTime::from_secs_nanos(NOON, 0);
    let (r, p) = (raw(json), parsed(json));
    let a = expr.eval(&Context {
        record: &r,
        tag: &tag,
        time,
    });
    let b = expr.eval(&Context {
        record: &p,
        tag: &tag,
        time,
    });
    assert_eq!(a, b, "raw and parsed records disagree on {src}");
    a
}

fn ev(src: &str) -> Value {
    eval_on(src, RECORD).unwrap_or_else(|e| panic!("{src}: {e}"))
}

fn ev_err(src: &str) -> EvalError {
    match eval_on(src, RECORD) {
        Ok(v) => panic!("{src} gave {v:?}, expected an error"),
        Err(e) => e,
    }
}

fn cerr(src: &str) -> CompileError {
    match Expr::compile(src) {
        Ok(_) => panic!("{src} compiled"),
        Err(e) => e,
    }
}

fn s(v: &str) -> Value {
    Value::String(v.into())
}

fn at(secs: i64, nanos: u32) -> Value {
    Value::Time(EventTime::from_secs_nanos(secs, nanos))
}

// ---- syntax errors and their positions ----

#[test]
fn syntax_errors_point_at_the_fault() {
    let cases: &[(&str, usize, usize, &str)] = &[
        (
            "$.a +",
            1,
            6,
            "expected an expression, found end of expression",
        ),
        (
            "$.a $.b",
            1,
            5,
            "expected an operator or end of expression, found `$`",
        ),
        (
            "upper($.x",
            1,
            10,
            "expected an operator, `,` or `)`, found end of expression",
        ),
        (
            "1 ? 2",
            1,
            6,
            "expected an operator or `:`, found end of expression",
        ),
        ("", 1, 1, "expected an expression, found end of expression"),
        (
            "$.a and and $.b",
            1,
            9,
            "expected an expression, found `and`",
        ),
        ("$.", 1, 3, "expected a field name, found end of expression"),
        ("$.a ==\n  == 1", 2, 3, "expected an expression, found `=`"),
        (
            "\"é\" == \"ü\" )",
            1,
            12,
            "expected an operator or end of expression, found `)`",
        ),
        (
            "\"abc",
            1,
            1,
            "unterminated string: this quote is never closed",
        ),
        (
            "'x' +\n r'y",
            2,
            2,
            "unterminated string: this quote is never closed",
        ),
    ];
    for &(src, line, column, message) in cases {
        let e = cerr(src);
        assert_eq!(e.kind, ErrorKind::Syntax, "{src}");
        assert_eq!((e.line, e.column), (line, column), "{src}: {e}");
        assert_eq!(e.message, message, "{src}");
    }
}

#[test]
fn c_style_operators_get_the_right_word() {
    for (src, offset, suggestion) in [
        ("$.a && $.b", 4, "and"),
        ("$.a || $.b", 4, "or"),
        ("!$.a", 0, "not"),
        ("$.a = 1", 4, "=="),
    ] {
        let e = cerr(src);
        assert_eq!(e.kind, ErrorKind::Syntax, "{src}");
        assert_eq!(e.offset, offset, "{src}");
        assert_eq!(e.suggestion.as_deref(), Some(suggestion), "{src}");
    }
    assert_eq!(
        cerr("$.a && $.b").full_message(),
        "`&&` is not an operator; did you mean `and`?"
    );
}

#[test]
fn bad_literals_point_inside_strings() {
    let e = cerr("$.a ==\n  \"ok\\d\"");
    assert_eq!(e.kind, ErrorKind::BadLiteral);
    assert_eq!((e.line, e.column, e.len), (2, 6, 2));
    assert!(e.message.contains("unknown escape `\\d`"), "{}", e.message);
    let e = cerr("'\\u{110000}'");
    assert_eq!(e.kind, ErrorKind::BadLiteral);
    assert_eq!(cerr("\"\\ud800\"").kind, ErrorKind::BadLiteral);
    assert_eq!(cerr("9223372036854775808").kind, ErrorKind::BadLiteral);
    assert_eq!(cerr("1e999").kind, ErrorKind::BadLiteral);
    assert_eq!(
        ev(r#""a\"b\\c\n\t\0\u00e9\u{1F600}\ud83d\ude00\/""#),
        s("a\"b\\c\n\t\0\u{e9}\u{1F600}\u{1F600}/")
    );
    assert_eq!(ev(r"r'\d+'"), s("\\d+"));
    assert_eq!(ev(r"'it\'s'"), s("it's"));
    assert_eq!(ev("-9223372036854775808"), Value::Int(i64::MIN));
}

#[test]
fn size_and_depth_are_bounded() {
    let long = format!("\"{}\"", "x".repeat(MAX_LEN));
    assert_eq!(cerr(&long).kind, ErrorKind::TooLong);
    let nested = |n: usize| format!("{}1{}", "(".repeat(n), ")".repeat(n));
    assert!(Expr::compile(&nested(MAX_DEPTH)).is_ok());
    let e = cerr(&nested(MAX_DEPTH + 1));
    assert_eq!((e.kind, e.offset), (ErrorKind::TooDeep, MAX_DEPTH));
    let calls = format!(
        "{}$.a{}",
        "abs(".repeat(MAX_DEPTH + 1),
        ")".repeat(MAX_DEPTH + 1)
    );
    assert_eq!(cerr(&calls).kind, ErrorKind::TooDeep);
    // Operators nest without brackets too.
    assert_eq!(
        cerr(&format!("{}1", "-".repeat(100))).kind,
        ErrorKind::TooDeep
    );
    assert_eq!(
        cerr(&format!("{}true", "not ".repeat(100))).kind,
        ErrorKind::TooDeep
    );
    // A long flat chain is not deep.
    let chain = format!("1{}", " + 1".repeat(1000));
    assert_eq!(
        Expr::compile(&chain).unwrap().eval(&cx_of(&parsed("{}"))),
        Ok(Value::Int(1001))
    );
    // Brackets inside strings do not count.
    let text = format!(
        "len('{}') == 40 and r\"{}\" != \"\"",
        "(".repeat(40),
        "[".repeat(40)
    );
    assert_eq!(ev(&text), Value::Bool(true));
}

fn cx_of(record: &Record) -> Context<'_> {
    static TAG: std::sync::OnceLock<Tag> = std::sync::OnceLock::new();
    Context {
        record,
        tag: TAG.get_or_init(tag),
        time: EventTime::from_secs_nanos(NOON, 0),
    }
}

#[test]
fn the_deepest_expressions_fit_a_small_stack() {
    // Tokio's worker threads have 2 MiB; half of that is enough for parsing,
    // compiling and evaluating the deepest accepted expressions, even in an
    // unoptimised build (pest also stops by itself before the stack ends).
    let d = MAX_DEPTH;
    let cases = [
        // `$.n` is two levels: the record and its field.
        format!("{}$.n{}", "abs(".repeat(d - 2), ")".repeat(d - 2)),
        format!(
            "{}$.n{}",
            "abs(-(1 + [".repeat((d - 2) / 5),
            "][0]))".repeat((d - 2) / 5)
        ),
        format!(
            "{}$.n{}",
            "to_int(format('{}', ".repeat(d / 2 - 1),
            "))".repeat(d / 2 - 1)
        ),
        format!("{}$.n", "-".repeat(d - 2)),
        format!("{}$.n{}", "(".repeat(d), ")".repeat(d)),
        format!("{}$.t", "not ".repeat(d - 2)),
    ];
    std::thread::Builder::new()
        .stack_size(1 << 20)
        .spawn(move || {
            let r = raw(RECORD);
            for src in &cases {
                let e = Expr::compile(src).unwrap_or_else(|e| panic!("{src}: {e}"));
                assert!(e.eval(&cx_of(&r)).is_ok(), "{src}");
            }
        })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn renders_like_ulog_diagnostics() {
    let src = "$.soc > 5 and\n  uper($.name) == \"x\"";
    let e = cerr(src);
    assert_eq!(
        e.render("routes.conf", src),
        "error[E-expr-unknown-function]: unknown function `uper`; did you mean `upper`?\n\
         \x20--> routes.conf:2:3\n\
         \x20 |\n\
         2 |   uper($.name) == \"x\"\n\
         \x20 |   ^^^^\n"
    );
    assert_eq!(
        e.to_string(),
        "2:3: unknown function `uper`; did you mean `upper`?"
    );
    assert_eq!(e.code(), "E-expr-unknown-function");
    // The expression starts at 10:20 of a routes file.
    assert_eq!(e.line_col_from(10, 20), (11, 3));
    let first_line = cerr("1 + \"a\"");
    assert_eq!((first_line.line, first_line.column), (1, 1));
    assert_eq!(first_line.line_col_from(10, 20), (10, 20));
    assert_eq!(cerr("  \"a\" + 1").line_col_from(3, 5), (3, 7));
}

// ---- names and types at compile time ----

#[test]
fn names_are_checked_with_suggestions() {
    let e = cerr("soc > 5");
    assert_eq!(
        (e.kind, e.suggestion.as_deref()),
        (ErrorKind::UnknownName, Some("$.soc"))
    );
    assert_eq!(cerr("True").suggestion.as_deref(), Some("true"));
    assert_eq!(cerr("tags == 'a'").suggestion.as_deref(), Some("tag"));
    assert_eq!(cerr("now > time").suggestion.as_deref(), Some("now()"));
    let e = cerr("$.a == 1 and stars_with($.b, 'x')");
    assert_eq!(e.kind, ErrorKind::UnknownFunction);
    assert_eq!((e.offset, e.len), (13, 10));
    assert_eq!(e.suggestion.as_deref(), Some("starts_with"));
    assert_eq!(cerr("frobnicate(1)").suggestion, None);
}

#[test]
fn type_errors_are_found_at_compile_time() {
    let cases: &[(&str, ErrorKind, usize)] = &[
        ("\"a\" < 3", ErrorKind::Type, 0),
        ("upper($.x) > 5", ErrorKind::Type, 0),
        ("upper($.x) == 5", ErrorKind::Type, 0),
        ("$.a == 1 and \"a\" + 1 > 2", ErrorKind::Type, 13),
        ("2 * 'x'", ErrorKind::Type, 0),
        ("-\"a\"", ErrorKind::Type, 1),
        ("not 5", ErrorKind::Type, 4),
        ("1 and true", ErrorKind::Type, 0),
        ("5 ? 1 : 2", ErrorKind::Type, 0),
        ("time < 5", ErrorKind::Type, 0),
        ("time + time", ErrorKind::Type, 0),
        ("upper(1)", ErrorKind::Type, 6),
        ("len(1)", ErrorKind::Type, 4),
        ("contains(1, 2)", ErrorKind::Type, 9),
        ("contains('abc', 2)", ErrorKind::Type, 16),
        ("hour(1)", ErrorKind::Type, 5),
        ("format_time('x', '%Y')", ErrorKind::Type, 12),
        ("round('x')", ErrorKind::Type, 6),
        ("round(1.5, 'x')", ErrorKind::Type, 11),
        ("to_string(null)", ErrorKind::Type, 10),
        ("format('{}', null)", ErrorKind::Type, 13),
        ("min(1, 'a')", ErrorKind::Type, 0),
        ("exists(upper($.a))", ErrorKind::Type, 7),
        ("1 ?? 2", ErrorKind::Type, 0),
        ("upper($.a) ?? ''", ErrorKind::Type, 0),
        ("tag.x", ErrorKind::Type, 0),
        ("time.x", ErrorKind::Type, 0),
        ("upper($.a)[0]", ErrorKind::Type, 0),
        ("lower()", ErrorKind::Arity, 0),
        ("upper($.a, $.b)", ErrorKind::Arity, 0),
        ("now(1)", ErrorKind::Arity, 0),
        ("min(1)", ErrorKind::Arity, 0),
        ("format('{} {}', 1)", ErrorKind::Arity, 0),
        ("format('{}', 1, 2)", ErrorKind::Arity, 0),
        ("format($.f, 1)", ErrorKind::NotLiteral, 7),
        ("matches($.a, $.re)", ErrorKind::NotLiteral, 13),
        ("capture($.a, '(a)', $.g)", ErrorKind::NotLiteral, 20),
        ("parse_time($.a, $.fmt)", ErrorKind::NotLiteral, 16),
        ("$.a[$.i]", ErrorKind::NotLiteral, 4),
        ("$.a[-1]", ErrorKind::BadLiteral, 4),
        ("matches($.a, '(')", ErrorKind::BadLiteral, 13),
        ("matches($.a, 'a{1000}{1000}')", ErrorKind::BadLiteral, 13),
        ("capture($.a, '(a)', 2)", ErrorKind::BadLiteral, 20),
        ("captures($.a, 'a(b)')", ErrorKind::BadLiteral, 0),
        ("split($.a, '')", ErrorKind::BadLiteral, 11),
        ("format('{x}', 1)", ErrorKind::BadLiteral, 7),
        ("parse_time($.a, '%Q')", ErrorKind::BadLiteral, 16),
        ("hour(time, 'Mars/Olympus')", ErrorKind::BadLiteral, 11),
        ("$.n / 0", ErrorKind::BadLiteral, 6),
        ("$.n % 0.0", ErrorKind::BadLiteral, 6),
    ];
    for &(src, kind, offset) in cases {
        let e = cerr(src);
        assert_eq!((e.kind, e.offset), (kind, offset), "{src}: {e}");
    }
    assert_eq!(
        cerr("\"a\" < 3").message,
        "`<` cannot compare a string with an int"
    );
    assert_eq!(
        cerr("upper($.x) == 5").message,
        "`==` cannot compare a string with an int (it would always be false)"
    );
    assert_eq!(
        cerr("hour(time, 'Europe/Londn')").suggestion.as_deref(),
        Some("\"Europe/London\"")
    );
    assert_eq!(
        cerr("capture($.a, '(?P<user>a)', 'usr')")
            .suggestion
            .as_deref(),
        Some("\"user\"")
    );
    assert!(cerr("matches($.a, $.re)").message.contains("compiled once"));
}

#[test]
fn result_types_are_known_up_front() {
    let cases: &[(&str, Type)] = &[
        ("1", Type::INT),
        ("1.5", Type::FLOAT),
        ("'a'", Type::STRING),
        ("null", Type::NULL),
        ("[1]", Type::ARRAY),
        ("$", Type::OBJECT),
        ("$.a", Type::ANY),
        ("tag", Type::STRING),
        ("tag[1]", Type::STRING.union(Type::NULL)),
        ("time", Type::TIME),
        ("$.a == 1", Type::BOOL),
        ("$.a + 1", Type::NUMBER.union(Type::TIME)),
        ("$.a * 2", Type::NUMBER),
        ("$.a / 2", Type::FLOAT),
        ("1 + 2", Type::INT),
        ("time + 60", Type::TIME),
        ("time - time", Type::FLOAT),
        ("$.a ?? 0", Type::ANY.without(Type::NULL)),
        ("capture($.a, '(a)', 1) ?? ''", Type::STRING),
        ("if($.c, 1, 'a')", Type::INT.union(Type::STRING)),
        ("$.c ? 1 : 2.5", Type::NUMBER),
        ("round($.x)", Type::INT),
        ("round($.x, 1)", Type::FLOAT),
        ("abs(-1)", Type::INT),
        ("abs($.x)", Type::NUMBER),
        ("min(1, 2.5)", Type::NUMBER),
        ("max($.a, 'x')", Type::STRING),
        ("captures($.m, '(?P<x>.)')", Type::OBJECT.union(Type::NULL)),
        ("split(tag, '.')[0]", Type::ANY),
    ];
    for &(src, ty) in cases {
        assert_eq!(Expr::compile(src).unwrap().result_type(), ty, "{src}");
    }
    assert!(Expr::compile_condition("$.flag").is_ok());
    assert!(Expr::compile_condition("$.a > 1 or exists($.b)").is_ok());
    let e = Expr::compile_condition("$.a + 1").unwrap_err();
    assert_eq!((e.kind, e.offset, e.len), (ErrorKind::Type, 0, 7));
    assert!(Expr::compile_condition("upper($.a)").is_err());
}

// ---- evaluation: operators ----

#[test]
fn arithmetic() {
    let cases: &[(&str, Value)] = &[
        ("7 + 3", Value::Int(10)),
        ("7 - 10", Value::Int(-3)),
        ("6 * 7", Value::Int(42)),
        ("7 / 2", Value::Float(3.5)),
        ("8 / 2", Value::Float(4.0)),
        ("7 % 3", Value::Int(1)),
        ("-7 % 3", Value::Int(-1)),
        ("7.5 % 2", Value::Float(1.5)),
        ("1 + 0.5", Value::Float(1.5)),
        ("1 + 2 * 3", Value::Int(7)),
        ("(1 + 2) * 3", Value::Int(9)),
        ("2 - 3 - 4", Value::Int(-5)),
        ("-2 * -3", Value::Int(6)),
        ("- -2", Value::Int(2)),
        ("$.power_w / 1000", Value::Float(2.5)),
        ("$.battery.soc - $.battery.temp", Value::Float(84.5)),
        ("$.small % -1", Value::Int(0)),
        ("$.huge / 2", Value::Float(u64::MAX as f64 / 2.0)),
    ];
    for (src, want) in cases {
        assert_eq!(&ev(src), want, "{src}");
    }
    for (src, kind) in [
        ("$.big + 1", EvalErrorKind::Overflow),
        ("$.small - 1", EvalErrorKind::Overflow),
        ("$.big * 2", EvalErrorKind::Overflow),
        ("-$.small", EvalErrorKind::Overflow),
        ("$.e * $.e", EvalErrorKind::Overflow),
        ("$.n / $.z", EvalErrorKind::DivisionByZero),
        ("$.n % $.z", EvalErrorKind::DivisionByZero),
        ("$.n / $.zf", EvalErrorKind::DivisionByZero),
        ("$.ratio % $.zf", EvalErrorKind::DivisionByZero),
        ("$.s + 1", EvalErrorKind::Type),
        ("$.missing + 1", EvalErrorKind::Null),
        ("-$.s", EvalErrorKind::Type),
    ] {
        assert_eq!(ev_err(src).kind, kind, "{src}");
    }
    let e = ev_err("1 + $.n / $.z");
    assert_eq!((e.offset, e.len), (4, 9), "{e}");
}

#[test]
fn comparisons() {
    let truths = [
        "$.soc_pct < 50",
        "$.soc_pct <= 42",
        "$.soc_pct >= 42.0",
        "$.soc_pct > 41.9",
        "$.one_f == 1",
        "$.household == 'h1'",
        "$.household != 'h2'",
        "'abc' < 'abd'",
        "$.household != 1",
        "$.t == true",
        "$.nul == null",
        "$.missing == null",
        "$.list == ['a', 'b', 3]",
        "$.obj == $.obj",
        "time == time",
        "time < time + 1",
        "$.big > 9223372036854775806.0 or $.big == $.big",
        "$.huge > $.big",
    ];
    for src in truths {
        assert_eq!(ev(src), Value::Bool(true), "{src}");
    }
    assert_eq!(ev("$.one_f == '1'"), Value::Bool(false));
    assert_eq!(
        ev("[1] == [1.0]"),
        Value::Bool(false),
        "arrays compare as JSON"
    );
    for (src, kind) in [
        ("$.s < 5", EvalErrorKind::Type),
        ("$.missing < 5", EvalErrorKind::Null),
        ("$.t < $.f", EvalErrorKind::Type),
        ("$.list < $.list", EvalErrorKind::Type),
    ] {
        assert_eq!(ev_err(src).kind, kind, "{src}");
    }
    assert!(ev_err("$.missing < 5").message.contains("missing field"));
}

#[test]
fn booleans_short_circuit() {
    assert_eq!(ev("false and $.missing > 1"), Value::Bool(false));
    assert_eq!(ev("true or $.missing > 1"), Value::Bool(true));
    assert_eq!(ev("not $.f and $.t"), Value::Bool(true));
    assert_eq!(ev("not ($.t and $.f)"), Value::Bool(true));
    assert_eq!(ev("$.f or $.f or $.t"), Value::Bool(true));
    assert_eq!(
        ev("not $.n == 8"),
        Value::Bool(true),
        "`not` is looser than `==`"
    );
    assert_eq!(ev_err("true and $.missing > 1").kind, EvalErrorKind::Null);
    let e = ev_err("$.t and $.n");
    assert_eq!((e.kind, e.offset), (EvalErrorKind::Type, 8));
    assert_eq!(ev_err("not $.s").kind, EvalErrorKind::Type);
}

#[test]
fn conditionals_and_null_handling() {
    assert_eq!(ev("$.n > 5 ? 'big' : 'small'"), s("big"));
    assert_eq!(ev("$.n > 9 ? 'big' : $.n > 6 ? 'mid' : 'small'"), s("mid"));
    assert_eq!(ev("if($.n > 9, 1, 2)"), Value::Int(2));
    assert_eq!(
        ev("if(true, 1, $.n / $.z)"),
        Value::Int(1),
        "branches are lazy"
    );
    assert_eq!(ev_err("$.missing ? 1 : 2").kind, EvalErrorKind::Null);
    assert_eq!(ev("$.missing ?? 5"), Value::Int(5));
    assert_eq!(ev("$.nul ?? 5"), Value::Int(5));
    assert_eq!(ev("$.n ?? $.n / $.z"), Value::Int(7), "`??` is lazy");
    assert_eq!(ev("$.missing ?? $.nul ?? 'x'"), s("x"));
    assert_eq!(
        ev("$.missing ?? 1 + 1"),
        Value::Int(2),
        "`??` is looser than `+`"
    );
    assert_eq!(
        ev("$.missing ?? 0 < 1"),
        Value::Bool(true),
        "`??` is tighter than `<`"
    );
    assert_eq!(ev("$.f ?? true"), Value::Bool(false), "false is not null");
    assert_eq!(ev("exists($.nul)"), Value::Bool(true));
    assert_eq!(ev("exists($.missing)"), Value::Bool(false));
    assert_eq!(ev("exists($.battery.soc)"), Value::Bool(true));
    assert_eq!(ev("exists($.channels[2])"), Value::Bool(false));
    assert_eq!(ev("exists(tag[2])"), Value::Bool(true));
    assert_eq!(ev("exists(tag[3])"), Value::Bool(false));
    assert_eq!(ev("is_null($.nul)"), Value::Bool(true));
    assert_eq!(ev("is_null($.missing)"), Value::Bool(true));
    assert_eq!(ev("is_null($.f)"), Value::Bool(false));
}

#[test]
fn field_access() {
    let cases: &[(&str, Value)] = &[
        ("$.battery.soc", Value::Float(81.5)),
        ("$.channels[0].power_w", Value::Int(120)),
        ("$.channels[1]['power_w']", Value::Float(7.5)),
        ("$[\"a.b\"]", s("dotted")),
        ("$['q\"k']", s("quoted key")),
        ("$['clé']", s("unicode key")),
        ("$.esc", s("tab\there")),
        ("$.one_f", Value::Float(1.0)),
        ("$.huge", Value::Float(u64::MAX as f64)),
        ("$.channels[5]", Value::Null),
        ("$.s.x", Value::Null),
        ("$.channels.x", Value::Null),
        ("$.battery[0]", Value::Null),
        ("$.nothing.deeper[3]", Value::Null),
        (
            "$.obj",
            Value::Object(json!({"k": [1, 2]}).as_object().unwrap().clone()),
        ),
        ("$.obj.k", Value::Array(vec![json!(1), json!(2)])),
        ("$.obj.k[1] + len($.obj)", Value::Int(3)),
        ("len($) > 30", Value::Bool(true)),
        ("$.household == $['household']", Value::Bool(true)),
        ("tag", s("home.h1.battery")),
        ("tag[1]", s("h1")),
        ("tag[9]", Value::Null),
        ("time", at(NOON, 0)),
        ("split(tag, '.')[2]", s("battery")),
        ("split(tag, '.')[3]", Value::Null),
        ("[10, 20, 30][1]", Value::Int(20)),
        ("$.list[2] * 2", Value::Int(6)),
        ("captures($.msg, r'user=(?P<user>\\w+)').user", s("alice")),
        ("($.missing ?? $.obj).k[0]", Value::Int(1)),
        (
            "[1, 'a', null, 1.5, true]",
            Value::Array(vec![
                json!(1),
                json!("a"),
                json!(null),
                json!(1.5),
                json!(true),
            ]),
        ),
        ("[time][0]", s("2026-05-01T12:00:00Z")),
    ];
    for (src, want) in cases {
        assert_eq!(&ev(src), want, "{src}");
    }
}

// ---- evaluation: functions ----

#[test]
fn string_functions() {
    let cases: &[(&str, Value)] = &[
        ("contains($.s, 'World')", Value::Bool(true)),
        ("contains($.s, 'world')", Value::Bool(false)),
        ("contains($.list, 3)", Value::Bool(true)),
        ("contains($.list, 3.0)", Value::Bool(true)),
        ("contains(['x', 'y'], $.household)", Value::Bool(false)),
        ("starts_with($.s, 'Hell')", Value::Bool(true)),
        ("ends_with($.s, 'Hell')", Value::Bool(false)),
        ("lower($.s)", s("hello world")),
        ("upper('straße')", s("STRASSE")),
        ("trim($.num_s)", s("42")),
        ("trim($.esc)", s("tab\there")),
        ("len('héllo')", Value::Int(5)),
        ("len($.list)", Value::Int(3)),
        ("len($.battery)", Value::Int(2)),
        ("len($.empty)", Value::Int(0)),
        (
            "split('a,b,,c', ',')",
            Value::Array(vec![json!("a"), json!("b"), json!(""), json!("c")]),
        ),
        ("join(split(tag, '.'), '/')", s("home/h1/battery")),
        ("join([1, 2.5, true, 'x'], ',')", s("1,2.5,true,x")),
        ("replace($.s, 'o', '0')", s("Hell0 W0rld")),
        ("format('{} is {}', $.household, $.soc_pct)", s("h1 is 42")),
        ("format('{{{}}} {}', 1, 2.0)", s("{1} 2.0")),
        ("format('no holes')", s("no holes")),
        (
            "format('{}:{}', tag[1], round($.power_w / 1000))",
            s("h1:3"),
        ),
        ("matches($.msg, r'id=\\d+$')", Value::Bool(true)),
        ("matches($.msg, '^id')", Value::Bool(false)),
        ("capture($.msg, r'id=(\\d+)', 1)", s("17")),
        ("capture($.msg, r'id=(\\d+)', 0)", s("id=17")),
        ("capture($.msg, r'(?P<who>\\w+)=alice', 'who')", s("user")),
        ("capture($.msg, r'x=(\\d+)', 1)", Value::Null),
        ("capture($.msg, r'user=(\\w+)|(nope)', 2)", Value::Null),
        (
            "captures($.msg, r'user=(?P<u>\\w+) id=(?P<id>\\d+)')",
            Value::Object(
                json!({"u": "alice", "id": "17"})
                    .as_object()
                    .unwrap()
                    .clone(),
            ),
        ),
        ("captures($.msg, r'(?P<x>zzz)')", Value::Null),
        (
            "regex_replace($.msg, r'(\\w+)=(\\w+)', '$2:$1')",
            s("alice:user 17:id"),
        ),
        ("regex_replace($.msg, r'\\d', '#')", s("user=alice id=##")),
        ("to_string($.n)", s("7")),
        ("to_string($.one_f)", s("1.0")),
        ("to_string($.t)", s("true")),
        ("to_string($.s)", s("Hello World")),
        ("to_string($.obj)", s("{\"k\":[1,2]}")),
        ("to_string(time)", s("2026-05-01T12:00:00Z")),
        ("type_of($.n)", s("int")),
        ("type_of($.ratio)", s("float")),
        ("type_of($.missing)", s("null")),
        ("type_of($.list)", s("array")),
        ("type_of($.obj)", s("object")),
        ("type_of(time)", s("time")),
        ("type_of($.t)", s("bool")),
        ("type_of($.s)", s("string")),
    ];
    for (src, want) in cases {
        assert_eq!(&ev(src), want, "{src}");
    }
    for (src, kind) in [
        ("upper($.missing)", EvalErrorKind::Null),
        ("upper($.n)", EvalErrorKind::Type),
        ("len($.n)", EvalErrorKind::Type),
        ("contains($.n, 1)", EvalErrorKind::Type),
        ("contains($.s, $.n)", EvalErrorKind::Type),
        ("split($.s, $.empty)", EvalErrorKind::Type),
        ("join($.mixed, ',')", EvalErrorKind::Null),
        ("join($.s, ',')", EvalErrorKind::Type),
        ("format('{}', $.missing)", EvalErrorKind::Null),
        ("to_string($.nul)", EvalErrorKind::Null),
        ("matches($.n, 'x')", EvalErrorKind::Type),
    ] {
        assert_eq!(ev_err(src).kind, kind, "{src}");
    }
    let e = ev_err("lower($.s) == upper($.missing)");
    assert_eq!((e.offset, e.len), (20, 9), "the span of the null argument");
}

#[test]
fn conversions() {
    let cases: &[(&str, Value)] = &[
        ("to_int('42')", Value::Int(42)),
        ("to_int($.num_s)", Value::Int(42)),
        ("to_int($.float_s)", Value::Int(4)),
        ("to_int(4.9)", Value::Int(4)),
        ("to_int(-4.9)", Value::Int(-4)),
        ("to_int($.t)", Value::Int(1)),
        ("to_int(time)", Value::Int(NOON)),
        ("to_int('-9223372036854775808')", Value::Int(i64::MIN)),
        ("to_float('2.5')", Value::Float(2.5)),
        ("to_float(3)", Value::Float(3.0)),
        ("to_float($.f)", Value::Float(0.0)),
        ("to_float(time + 0.5)", Value::Float(NOON as f64 + 0.5)),
        ("to_time(1777636800)", at(NOON, 0)),
        ("to_time(1777636800.25)", at(NOON, 250_000_000)),
        ("to_time($.iso)", at(NOON, 500_000_000)),
        ("to_time(time)", at(NOON, 0)),
    ];
    for (src, want) in cases {
        assert_eq!(&ev(src), want, "{src}");
    }
    for (src, kind) in [
        ("to_int($.s)", EvalErrorKind::Parse),
        ("to_int('inf')", EvalErrorKind::Parse),
        ("to_int($.e)", EvalErrorKind::Overflow),
        ("to_int('1e300')", EvalErrorKind::Overflow),
        ("to_int($.missing)", EvalErrorKind::Null),
        ("to_int($.list)", EvalErrorKind::Type),
        ("to_float('x')", EvalErrorKind::Parse),
        ("to_float('NaN')", EvalErrorKind::Parse),
        ("to_time($.s)", EvalErrorKind::Parse),
        ("to_time($.big)", EvalErrorKind::Overflow),
        ("to_time($.e)", EvalErrorKind::Overflow),
    ] {
        assert_eq!(ev_err(src).kind, kind, "{src}");
    }
}

#[test]
fn time_functions() {
    let cases: &[(&str, Value)] = &[
        ("time + 60", at(NOON + 60, 0)),
        ("60 + time", at(NOON + 60, 0)),
        ("time - 1.5", at(NOON - 2, 500_000_000)),
        ("time - (time - 90)", Value::Float(90.0)),
        ("time_diff(time, time - 0.25)", Value::Float(0.25)),
        ("parse_time($.ts, '%Y-%m-%d %H:%M:%S')", at(NOON + 5400, 0)),
        (
            "parse_time($.ts, '%Y-%m-%d %H:%M:%S', 'Europe/London')",
            at(NOON + 1800, 0),
        ),
        (
            "parse_time($.ts, '%Y-%m-%d %H:%M:%S', $.tz)",
            at(NOON + 1800, 0),
        ),
        ("parse_time('2026-05-01', '%Y-%m-%d')", at(NOON - 43200, 0)),
        (
            "parse_time('2026-05-01 12:00:00 +0200', '%Y-%m-%d %H:%M:%S %z')",
            at(NOON - 7200, 0),
        ),
        ("format_time(time, '%Y-%m-%d %H:%M')", s("2026-05-01 12:00")),
        (
            "format_time(time, '%H:%M %Z', 'Europe/London')",
            s("13:00 BST"),
        ),
        ("format_time(time, '%H:%M', $.tz)", s("13:00")),
        ("hour(time)", Value::Int(12)),
        ("hour(time, 'Europe/London')", Value::Int(13)),
        ("hour(time, 'Asia/Tokyo')", Value::Int(21)),
        ("hour(time, $.tz)", Value::Int(13)),
        ("weekday(time)", Value::Int(5)),
        ("weekday(time + 12 * 3600, 'Asia/Tokyo')", Value::Int(6)),
        (
            "time > parse_time('2026-01-01', '%Y-%m-%d')",
            Value::Bool(true),
        ),
        ("type_of(now())", s("time")),
    ];
    for (src, want) in cases {
        assert_eq!(&ev(src), want, "{src}");
    }
    for (src, kind) in [
        ("parse_time($.s, '%Y')", EvalErrorKind::Parse),
        (
            "parse_time('2026-03-29 01:30', '%Y-%m-%d %H:%M', 'Europe/London')",
            EvalErrorKind::Parse,
        ),
        ("parse_time($.n, '%Y')", EvalErrorKind::Type),
        ("hour($.missing)", EvalErrorKind::Null),
        ("hour(time, $.bad_tz)", EvalErrorKind::TimeZone),
        ("hour(time, $.n)", EvalErrorKind::Type),
        ("time + $.big", EvalErrorKind::Overflow),
        ("time_diff(time, $.n)", EvalErrorKind::Type),
    ] {
        assert_eq!(ev_err(src).kind, kind, "{src}");
    }
    assert!(ev_err("hour(time, $.bad_tz)")
        .message
        .contains("did you mean \"Europe/London\""));
    let before = EventTime::now();
    let r = raw(RECORD);
    let Ok(Value::Time(t)) = Expr::compile("now()").unwrap().eval(&cx_of(&r)) else {
        panic!("now() is not a time")
    };
    assert!(t >= before && t <= EventTime::now());
}

#[test]
fn math_functions() {
    let cases: &[(&str, Value)] = &[
        ("abs(-3)", Value::Int(3)),
        ("abs($.battery.temp)", Value::Int(3)),
        ("abs(-2.5)", Value::Float(2.5)),
        ("min(3, 1, 2)", Value::Int(1)),
        ("max(3, 1.5, 2)", Value::Int(3)),
        ("min(2, 1.5)", Value::Float(1.5)),
        ("max('a', 'b')", s("b")),
        ("min(time, time - 1)", at(NOON - 1, 0)),
        ("round(2.5)", Value::Int(3)),
        ("round(-2.5)", Value::Int(-3)),
        ("round(2.4)", Value::Int(2)),
        ("round(7)", Value::Int(7)),
        ("round(2.71828, 2)", Value::Float(2.72)),
        ("round(1234.5, -2)", Value::Float(1200.0)),
        ("round($.e, 400)", Value::Float(1e300)),
        ("floor(-2.5)", Value::Int(-3)),
        ("floor(2.9)", Value::Int(2)),
        ("ceil(2.1)", Value::Int(3)),
        ("ceil(-2.9)", Value::Int(-2)),
        ("round($.power_w / 1000)", Value::Int(3)),
    ];
    for (src, want) in cases {
        assert_eq!(&ev(src), want, "{src}");
    }
    for (src, kind) in [
        ("abs($.small)", EvalErrorKind::Overflow),
        ("abs($.s)", EvalErrorKind::Type),
        ("round($.e)", EvalErrorKind::Overflow),
        ("floor($.missing)", EvalErrorKind::Null),
        ("min($.n, $.s)", EvalErrorKind::Type),
        ("max($.n, $.missing)", EvalErrorKind::Null),
        ("round(1.5, $.s)", EvalErrorKind::Type),
    ] {
        assert_eq!(ev_err(src).kind, kind, "{src}");
    }
}

// ---- records and contexts ----

#[test]
fn raw_and_parsed_records_agree_on_awkward_json() {
    let awkward = [
        r#"{"a":{"b":1},"a":{"c":2}}"#,
        r#"{"a":1,"a":"two"}"#,
        r#"{"a":[1,{"b":[true]}],"a\u0062":"escaped key"}"#,
        r#"{"a":"\ud83d\ude00 \"q\""}"#,
        r#"{"a":-0.0,"b":1e-7,"c":123456789012345678901234567890}"#,
        r#"{}"#,
        r#"{"a":null}"#,
        r#"  {"a" : [ ] , "b" : { } }  "#,
    ];
    let exprs = [
        "$.a",
        "$.a.b",
        "$.a.c",
        "$.a[1].b[0]",
        "$.ab",
        "exists($.a)",
        "$.a ?? 'none'",
        "$",
        "type_of($.c)",
        "to_string($.b ?? 0)",
        "len($.a ?? [])",
    ];
    for json in awkward {
        for src in exprs {
            let _ = eval_on(src, json);
        }
    }
    assert_eq!(eval_on("$.a.b", awkward[0]), Ok(Value::Null));
    assert_eq!(eval_on("$.a", awkward[1]), Ok(s("two")));
    assert_eq!(eval_on("$.ab", awkward[2]), Ok(s("escaped key")));
    assert_eq!(eval_on("$.a", awkward[3]), Ok(s("\u{1F600} \"q\"")));
}

#[test]
fn a_raw_record_that_is_not_json_is_an_error_not_a_panic() {
    let tag = tag();
    let broken = Record::Raw(Bytes::from_static(b"{\"a\":"));
    let array = Record::Raw(Bytes::from_static(b"[1,2]"));
    let cx = |record| Context {
        record,
        tag: &tag,
        time: EventTime::default(),
    };
    let e = Expr::compile("$.a == 1").unwrap();
    assert_eq!(
        e.eval(&cx(&broken)).unwrap_err().kind,
        EvalErrorKind::BadRecord
    );
    assert_eq!(
        e.eval(&cx(&array)).unwrap_err().kind,
        EvalErrorKind::BadRecord
    );
    // An expression that reads no field never looks at the record.
    let t = Expr::compile("tag[0] == 'home'").unwrap();
    assert!(!t.reads_record());
    assert!(e.reads_record());
    assert_eq!(t.eval_bool(&cx(&broken)), Ok(true));
}

#[test]
fn eval_bool_wants_a_boolean() {
    let r = raw(RECORD);
    let cx = cx_of(&r);
    assert_eq!(Expr::compile("$.t").unwrap().eval_bool(&cx), Ok(true));
    assert_eq!(
        Expr::compile("$.n")
            .unwrap()
            .eval_bool(&cx)
            .unwrap_err()
            .kind,
        EvalErrorKind::Type
    );
    assert_eq!(
        Expr::compile("$.missing")
            .unwrap()
            .eval_bool(&cx)
            .unwrap_err()
            .kind,
        EvalErrorKind::Null
    );
    let e = Expr::compile_condition(r#"$.household == "h1" and $.soc_pct < 50"#).unwrap();
    assert_eq!(e.eval_bool(&cx), Ok(true));
    assert_eq!(e.source(), r#"$.household == "h1" and $.soc_pct < 50"#);
}

#[test]
fn many_paths_spill_from_the_stack_buffer() {
    let fields: Vec<String> = (0..20).map(|i| format!("\"k{i}\":{i}")).collect();
    let json = format!("{{{}}}", fields.join(","));
    let sum: Vec<String> = (0..20).map(|i| format!("$.k{i}")).collect();
    assert_eq!(eval_on(&sum.join(" + "), &json), Ok(Value::Int(190)));
}

#[test]
fn values_convert_to_json() {
    assert_eq!(ev("[1, 'a']").into_json(), json!([1, "a"]));
    assert_eq!(ev("time").to_json(), json!("2026-05-01T12:00:00Z"));
    assert_eq!(ev("$.ratio").to_json(), json!(0.25));
    assert_eq!(ev("$.n").type_of(), Type::INT);
    assert_eq!(ev("$.obj").to_string(), r#"{"k":[1,2]}"#);
    assert_eq!(ev("$.s").to_string(), "Hello World");
}

#[test]
fn expressions_are_shared_across_threads() {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Expr>();
}
