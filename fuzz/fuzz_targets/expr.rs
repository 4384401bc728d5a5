//! Arbitrary bytes into the expression compiler and evaluator: the text up to
//! the first NUL byte is an expression, the rest a record. Checked beyond "no
//! panic":
//! - a compile error's position lies inside the expression and renders;
//! - a valid record gives the same result raw (the fast path that picks
//!   fields out of the text) and parsed into a map;
//! - a result has one of the kinds the compiler said it may have;
//! - bytes that are not JSON, passed off as a raw record, fail or give a
//!   value, never panic.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use ulog_engine::{EventTime, Record, Tag};
use ulog_expr::{Context, Expr};

fuzz_target!(|data: &[u8]| {
    let split = data.iter().position(|&b| b == 0).unwrap_or(data.len());
    let (source, rest) = data.split_at(split);
    let record = rest.get(1..).unwrap_or_default();
    let Ok(source) = std::str::from_utf8(source) else {
        return;
    };
    let expr = match Expr::compile(source) {
        Ok(expr) => expr,
        Err(e) => {
            assert!(e.offset + e.len <= source.len(), "{e:?}");
            assert!(e.line >= 1 && e.column >= 1);
            assert!(e.render("fuzz", source).starts_with("error["));
            return;
        }
    };
    let tag = Tag::parse("home.h1.battery").expect("a valid tag");
    let time = EventTime::from_secs_nanos(1_777_636_800, 0);
    let bytes = Bytes::copy_from_slice(record);
    let eval = |record: &Record| {
        expr.eval(&Context {
            record,
            tag: &tag,
            time,
        })
    };
    let Ok(raw) = Record::from_json_bytes(bytes.clone()) else {
        let _ = eval(&Record::Raw(bytes));
        return;
    };
    let parsed = Record::Map(raw.to_map().into_owned());
    let (a, b) = (eval(&raw), eval(&parsed));
    // now() differs between two evaluations; everything else must not.
    if !source.contains("now") {
        assert_eq!(a, b, "raw and parsed disagree on {source:?}");
    }
    if let Ok(v) = a {
        assert!(
            v.type_of().is_within(expr.result_type()),
            "{source:?} gave {v:?}, outside {}",
            expr.result_type()
        );
    }
});
