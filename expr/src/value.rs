//! Values: the owned [`Value`] an evaluation returns, and the borrowed `Val`
//! used while evaluating, so reading a string field of a record copies
//! nothing.

use std::borrow::Cow;
use std::cmp::Ordering;
use std::fmt::{self, Write};

use serde_json::{Map, Value as Json};
use ulog_engine::EventTime;

use crate::types::{Kind, Type};

/// The result of evaluating an expression.
///
/// Arrays and objects are JSON (they come from records, `split` and
/// `captures`); everything else has its own variant, including times, which
/// JSON has no type for.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// A missing field, or a JSON `null`.
    Null,
    /// A boolean.
    Bool(bool),
    /// A 64-bit signed integer.
    Int(i64),
    /// A finite float (no evaluation produces NaN or infinity).
    Float(f64),
    /// Text.
    String(String),
    /// A point in time.
    Time(EventTime),
    /// A JSON array.
    Array(Vec<Json>),
    /// A JSON object.
    Object(Map<String, Json>),
}

impl Value {
    /// The value's type, as [`crate::Expr::result_type`] would name it.
    pub fn type_of(&self) -> Type {
        Type::of(self.kind())
    }

    fn kind(&self) -> Kind {
        match self {
            Value::Null => Kind::Null,
            Value::Bool(_) => Kind::Bool,
            Value::Int(_) => Kind::Int,
            Value::Float(_) => Kind::Float,
            Value::String(_) => Kind::String,
            Value::Time(_) => Kind::Time,
            Value::Array(_) => Kind::Array,
            Value::Object(_) => Kind::Object,
        }
    }

    /// The value as JSON, to store as a computed field. A time becomes its
    /// RFC 3339 text in UTC (`2026-05-01T12:00:00.5Z`).
    pub fn to_json(&self) -> Json {
        self.clone().into_json()
    }

    /// Like [`Value::to_json`], without copying.
    pub fn into_json(self) -> Json {
        match self {
            Value::Null => Json::Null,
            Value::Bool(b) => Json::Bool(b),
            Value::Int(i) => Json::from(i),
            Value::Float(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
            Value::String(s) => Json::String(s),
            Value::Time(t) => Json::String(crate::time::rfc3339(t)),
            Value::Array(a) => Json::Array(a),
            Value::Object(m) => Json::Object(m),
        }
    }
}

impl fmt::Display for Value {
    /// The text `to_string()` and `format()` give in the language: strings
    /// as they are, floats as JSON writes them (`2.0`), times in RFC 3339,
    /// arrays and objects as compact JSON, null as `null`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::new();
        match Val::from_value(self) {
            Val::Null => s.push_str("null"),
            v => {
                let _ = v.write_text(&mut s);
            }
        }
        f.write_str(&s)
    }
}

/// A value during evaluation, borrowing from the record, the expression's
/// literals or the event where it can.
#[derive(Clone, Debug)]
pub(crate) enum Val<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    Time(EventTime),
    Array(Cow<'a, [Json]>),
    Object(Cow<'a, Map<String, Json>>),
}

impl<'a> Val<'a> {
    pub fn kind(&self) -> Kind {
        match self {
            Val::Null => Kind::Null,
            Val::Bool(_) => Kind::Bool,
            Val::Int(_) => Kind::Int,
            Val::Float(_) => Kind::Float,
            Val::Str(_) => Kind::String,
            Val::Time(_) => Kind::Time,
            Val::Array(_) => Kind::Array,
            Val::Object(_) => Kind::Object,
        }
    }

    pub fn type_name(&self) -> &'static str {
        self.kind().name()
    }

    /// A JSON value read from a record, borrowed.
    pub fn from_json(v: &'a Json) -> Val<'a> {
        match v {
            Json::Null => Val::Null,
            Json::Bool(b) => Val::Bool(*b),
            Json::Number(n) => number(n),
            Json::String(s) => Val::Str(Cow::Borrowed(s)),
            Json::Array(a) => Val::Array(Cow::Borrowed(a)),
            Json::Object(m) => Val::Object(Cow::Borrowed(m)),
        }
    }

    /// A JSON value taken over.
    pub fn from_json_owned(v: Json) -> Val<'static> {
        match v {
            Json::Null => Val::Null,
            Json::Bool(b) => Val::Bool(b),
            Json::Number(n) => number(&n),
            Json::String(s) => Val::Str(Cow::Owned(s)),
            Json::Array(a) => Val::Array(Cow::Owned(a)),
            Json::Object(m) => Val::Object(Cow::Owned(m)),
        }
    }

    /// A view of a public value.
    pub fn from_value(v: &'a Value) -> Val<'a> {
        match v {
            Value::Null => Val::Null,
            Value::Bool(b) => Val::Bool(*b),
            Value::Int(i) => Val::Int(*i),
            Value::Float(f) => Val::Float(*f),
            Value::String(s) => Val::Str(Cow::Borrowed(s)),
            Value::Time(t) => Val::Time(*t),
            Value::Array(a) => Val::Array(Cow::Borrowed(a)),
            Value::Object(m) => Val::Object(Cow::Borrowed(m)),
        }
    }

    /// The same value borrowing from `self`, so a value stored once (a
    /// literal, a field extracted from a raw record) is read without copies.
    pub fn reborrow(&self) -> Val<'_> {
        match self {
            Val::Null => Val::Null,
            Val::Bool(b) => Val::Bool(*b),
            Val::Int(i) => Val::Int(*i),
            Val::Float(f) => Val::Float(*f),
            Val::Str(s) => Val::Str(Cow::Borrowed(s)),
            Val::Time(t) => Val::Time(*t),
            Val::Array(a) => Val::Array(Cow::Borrowed(a)),
            Val::Object(m) => Val::Object(Cow::Borrowed(m)),
        }
    }

    pub fn into_value(self) -> Value {
        match self {
            Val::Null => Value::Null,
            Val::Bool(b) => Value::Bool(b),
            Val::Int(i) => Value::Int(i),
            Val::Float(f) => Value::Float(f),
            Val::Str(s) => Value::String(s.into_owned()),
            Val::Time(t) => Value::Time(t),
            Val::Array(a) => Value::Array(a.into_owned()),
            Val::Object(m) => Value::Object(m.into_owned()),
        }
    }

    /// The value as JSON, for arrays built at run time.
    pub fn into_json(self) -> Json {
        self.into_value().into_json()
    }

    /// Appends the value's text (see [`Value`]'s `Display`). `Err` for null:
    /// a missing field printed as "null" is a bug hidden, not a value.
    pub fn write_text(&self, out: &mut String) -> Result<(), ()> {
        match self {
            Val::Null => return Err(()),
            Val::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Val::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Val::Float(f) => write_float(*f, out),
            Val::Str(s) => out.push_str(s),
            Val::Time(t) => out.push_str(&crate::time::rfc3339(*t)),
            Val::Array(a) => out.push_str(&serde_json::to_string(&**a).unwrap_or_default()),
            Val::Object(m) => out.push_str(&serde_json::to_string(&**m).unwrap_or_default()),
        }
        Ok(())
    }

    /// Equality as `==` sees it: ints and floats by numeric value, values of
    /// different kinds never equal, arrays and objects as JSON.
    pub fn equals(&self, other: &Val<'_>) -> bool {
        match (self, other) {
            (Val::Null, Val::Null) => true,
            (Val::Bool(a), Val::Bool(b)) => a == b,
            (Val::Str(a), Val::Str(b)) => a == b,
            (Val::Time(a), Val::Time(b)) => a == b,
            (Val::Array(a), Val::Array(b)) => a == b,
            (Val::Object(a), Val::Object(b)) => a == b,
            _ => self.order(other) == Some(Ordering::Equal),
        }
    }

    /// The order of two numbers, two strings or two times; `None` for any
    /// other pair.
    pub fn order(&self, other: &Val<'_>) -> Option<Ordering> {
        match (self, other) {
            (Val::Int(a), Val::Int(b)) => Some(a.cmp(b)),
            (Val::Float(a), Val::Float(b)) => a.partial_cmp(b),
            (Val::Int(a), Val::Float(b)) => cmp_int_float(*a, *b),
            (Val::Float(a), Val::Int(b)) => cmp_int_float(*b, *a).map(Ordering::reverse),
            (Val::Str(a), Val::Str(b)) => Some(a.cmp(b)),
            (Val::Time(a), Val::Time(b)) => Some(a.cmp(b)),
            _ => None,
        }
    }
}

/// A JSON number as the language sees it: an int when it fits in i64,
/// otherwise a float (as serde_json's own `as_i64`/`as_f64` decide).
pub(crate) fn number(n: &serde_json::Number) -> Val<'static> {
    match n.as_i64() {
        Some(i) => Val::Int(i),
        None => Val::Float(n.as_f64().unwrap_or(0.0)),
    }
}

/// Floats as serde_json writes them, so `2.0` stays `2.0` in text and JSON.
pub(crate) fn write_float(f: f64, out: &mut String) {
    match serde_json::Number::from_f64(f) {
        Some(n) => {
            let _ = write!(out, "{n}");
        }
        None => out.push_str("null"),
    }
}

/// Exact comparison of an int with a float (no rounding of large ints).
fn cmp_int_float(i: i64, f: f64) -> Option<Ordering> {
    if f.is_nan() {
        return None;
    }
    // 2^63 is exactly representable; every i64 is below it.
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    if f >= TWO_63 {
        return Some(Ordering::Less);
    }
    if f < -TWO_63 {
        return Some(Ordering::Greater);
    }
    let t = f.trunc();
    match i.cmp(&(t as i64)) {
        Ordering::Equal => 0.0f64.partial_cmp(&(f - t)),
        o => Some(o),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ints_and_floats_compare_exactly() {
        assert_eq!(cmp_int_float(3, 3.0), Some(Ordering::Equal));
        assert_eq!(cmp_int_float(3, 3.5), Some(Ordering::Less));
        assert_eq!(cmp_int_float(-3, -3.5), Some(Ordering::Greater));
        assert_eq!(cmp_int_float(i64::MAX, 9.3e18), Some(Ordering::Less));
        assert_eq!(cmp_int_float(i64::MIN, -9.3e18), Some(Ordering::Greater));
        // 2^53 + 1 is not equal to the float 2^53, though `as f64` says so.
        let big = (1i64 << 53) + 1;
        assert_eq!(
            cmp_int_float(big, (1u64 << 53) as f64),
            Some(Ordering::Greater)
        );
        assert!(Val::Int(2).equals(&Val::Float(2.0)));
        assert!(!Val::Int(2).equals(&Val::Str("2".into())));
    }

    #[test]
    fn text_forms() {
        let text = |v: Val<'_>| {
            let mut s = String::new();
            v.write_text(&mut s).map(|()| s)
        };
        assert_eq!(text(Val::Float(2.0)), Ok("2.0".into()));
        assert_eq!(text(Val::Float(0.1)), Ok("0.1".into()));
        assert_eq!(text(Val::Int(-7)), Ok("-7".into()));
        assert_eq!(text(Val::Str("a b".into())), Ok("a b".into()));
        assert_eq!(text(Val::Null), Err(()));
        let arr = json!([1, "x"]);
        assert_eq!(text(Val::from_json(&arr)), Ok(r#"[1,"x"]"#.into()));
        assert_eq!(Value::Null.to_string(), "null");
        assert_eq!(
            Value::Time(EventTime::from_secs_nanos(0, 500_000_000)).to_json(),
            json!("1970-01-01T00:00:00.500Z")
        );
    }

    #[test]
    fn numbers_are_ints_when_they_fit() {
        let n: serde_json::Number = serde_json::from_str("18446744073709551615").unwrap();
        assert!(matches!(number(&n), Val::Float(f) if f == u64::MAX as f64));
        let n: serde_json::Number = "-0".parse().unwrap();
        assert!(matches!(number(&n), Val::Float(f) if f == 0.0 && f.is_sign_negative()));
    }
}
