//! The compiled tree and its evaluation.
//!
//! Nodes are checked and resolved at compile time (regexes built, formats
//! parsed, field paths given slots), so evaluating is a walk of the tree that
//! touches each node at most once: its time is bounded by the expression's
//! size and the sizes of the values it reads. Every failure is an
//! [`EvalError`] naming the sub-expression; nothing here panics on data.

use std::borrow::Cow;
use std::cmp::Ordering;

use chrono_tz::Tz;
use serde_json::{Map, Value as Json};
use ulog_engine::{EventTime, Tag};

use crate::ast::{ArithOp, CmpOp, Span};
use crate::error::{EvalError, EvalErrorKind};
use crate::record::{lookup, Seg};
use crate::time::{self, Format};
use crate::types::{arith_kind, comparable, Kind};
use crate::value::Val;

pub(crate) struct Node {
    pub kind: NodeKind,
    pub span: Span,
}

pub(crate) enum NodeKind {
    Lit(Val<'static>),
    /// A record field; `slot` is its place in a raw record's extraction.
    Field {
        path: Vec<Seg>,
        slot: usize,
    },
    Tag,
    TagPart(usize),
    Time,
    Index(Box<Node>, Seg),
    Array(Vec<Node>),
    Neg(Box<Node>),
    Not(Box<Node>),
    Arith(Box<Node>, Box<[(ArithOp, Node)]>),
    Cmp(CmpOp, Box<Node>, Box<Node>),
    And(Vec<Node>),
    Or(Vec<Node>),
    Coalesce(Vec<Node>),
    Cond(Vec<(Node, Node)>, Box<Node>),
    ExistsField {
        path: Vec<Seg>,
        slot: usize,
    },
    ExistsTagPart(usize),
    Call(Box<Call>),
}

pub(crate) struct Call {
    pub func: Func,
    /// The arguments evaluated at run time (literals compiled into `func`
    /// are not among them).
    pub args: Vec<Node>,
    pub tz: TzArg,
}

/// Where a time function's zone comes from.
pub(crate) enum TzArg {
    Utc,
    Fixed(Tz),
    /// The last argument, evaluated per event.
    Dynamic,
}

pub(crate) enum Piece {
    Text(Box<str>),
    Arg,
}

pub(crate) enum Group {
    Index(usize),
    Name(Box<str>),
}

pub(crate) enum Func {
    Contains,
    StartsWith,
    EndsWith,
    Lower,
    Upper,
    Trim,
    Len,
    Split,
    Join,
    Replace,
    Format(Box<[Piece]>),
    Matches(regex::Regex),
    Capture(regex::Regex, Group),
    Captures(regex::Regex),
    RegexReplace(regex::Regex),
    ToInt,
    ToFloat,
    ToString,
    ToTime,
    TypeOf,
    IsNull,
    Now,
    ParseTime(Format),
    FormatTime(Format),
    TimeDiff,
    Hour,
    Weekday,
    Abs,
    Min,
    Max,
    Round,
    Floor,
    Ceil,
}

/// Where field values come from during one evaluation.
pub(crate) enum Fields<'e> {
    /// A parsed record: paths are walked at each access.
    Map(&'e Map<String, Json>),
    /// A raw record's extracted paths, by slot.
    Slots(&'e [Option<Val<'e>>]),
    /// The expression reads no field; the record was not looked at.
    None,
}

pub(crate) struct Env<'e> {
    pub fields: Fields<'e>,
    pub tag: &'e Tag,
    pub time: EventTime,
}

/// Boxed, so the `Result` every node returns is as small as a value: a
/// failure is rare, and the success path should not move its size around.
pub(crate) type R<T> = Result<T, Box<EvalError>>;

fn err(kind: EvalErrorKind, span: Span, message: impl Into<String>) -> Box<EvalError> {
    Box::new(EvalError::new(kind, span, message))
}

/// "null" reads better with a hint: it is usually a missing field.
fn what(v: &Val<'_>) -> &'static str {
    match v {
        Val::Null => "null (a missing field?)",
        v => v.type_name(),
    }
}

fn wrong(span: Span, wanted: &str, got: &Val<'_>) -> Box<EvalError> {
    let kind = if matches!(got, Val::Null) {
        EvalErrorKind::Null
    } else {
        EvalErrorKind::Type
    };
    err(kind, span, format!("{wanted}, got {}", what(got)))
}

impl Node {
    pub fn eval<'e>(&'e self, env: &Env<'e>) -> R<Val<'e>> {
        match &self.kind {
            NodeKind::Lit(v) => Ok(v.reborrow()),
            NodeKind::Field { path, slot } => Ok(match env.fields {
                Fields::Map(m) => {
                    if path.is_empty() {
                        Val::Object(Cow::Borrowed(m))
                    } else {
                        lookup(m, path).map_or(Val::Null, Val::from_json)
                    }
                }
                Fields::Slots(s) => s
                    .get(*slot)
                    .and_then(Option::as_ref)
                    .map_or(Val::Null, Val::reborrow),
                Fields::None => Val::Null,
            }),
            NodeKind::ExistsField { path, slot } => Ok(Val::Bool(match env.fields {
                Fields::Map(m) => path.is_empty() || lookup(m, path).is_some(),
                Fields::Slots(s) => s.get(*slot).is_some_and(Option::is_some),
                Fields::None => false,
            })),
            NodeKind::Tag => Ok(Val::Str(Cow::Borrowed(env.tag.as_str()))),
            NodeKind::TagPart(i) => Ok(env
                .tag
                .parts()
                .nth(*i)
                .map_or(Val::Null, |p| Val::Str(Cow::Borrowed(p)))),
            NodeKind::ExistsTagPart(i) => Ok(Val::Bool(env.tag.parts().nth(*i).is_some())),
            NodeKind::Time => Ok(Val::Time(env.time)),
            NodeKind::Index(base, seg) => Ok(index(base.eval(env)?, seg)),
            NodeKind::Array(items) => {
                let mut out = Vec::with_capacity(items.len());
                for item in items {
                    out.push(item.eval(env)?.into_json());
                }
                Ok(Val::Array(Cow::Owned(out)))
            }
            NodeKind::Neg(x) => match x.eval(env)? {
                Val::Int(i) => i.checked_neg().map(Val::Int).ok_or_else(|| {
                    err(
                        EvalErrorKind::Overflow,
                        self.span,
                        "integer overflow in `-`",
                    )
                }),
                Val::Float(f) => Ok(Val::Float(-f)),
                v => Err(wrong(x.span, "`-` needs a number", &v)),
            },
            NodeKind::Not(x) => Ok(Val::Bool(!truth(x, env, "`not`")?)),
            NodeKind::And(items) => {
                for item in items {
                    if !truth(item, env, "`and`")? {
                        return Ok(Val::Bool(false));
                    }
                }
                Ok(Val::Bool(true))
            }
            NodeKind::Or(items) => {
                for item in items {
                    if truth(item, env, "`or`")? {
                        return Ok(Val::Bool(true));
                    }
                }
                Ok(Val::Bool(false))
            }
            NodeKind::Coalesce(items) => {
                let (last, rest) = items.split_last().expect("`??` has two sides");
                for item in rest {
                    let v = item.eval(env)?;
                    if !matches!(v, Val::Null) {
                        return Ok(v);
                    }
                }
                last.eval(env)
            }
            NodeKind::Cond(arms, otherwise) => {
                for (cond, value) in arms {
                    if truth(cond, env, "the condition")? {
                        return value.eval(env);
                    }
                }
                otherwise.eval(env)
            }
            NodeKind::Cmp(op, a, b) => {
                let (x, y) = (a.eval(env)?, b.eval(env)?);
                compare(*op, &x, &y, self.span).map(Val::Bool)
            }
            NodeKind::Arith(first, rest) => {
                let mut acc = first.eval(env)?;
                let mut span = first.span;
                for (op, operand) in rest.iter() {
                    let rhs = operand.eval(env)?;
                    span = span.to(operand.span);
                    acc = arith(*op, acc, rhs, span)?;
                }
                Ok(acc)
            }
            NodeKind::Call(call) => call.eval(env, self.span),
        }
    }
}

/// A boolean operand of `and`, `or`, `not` or a condition.
fn truth<'e>(node: &'e Node, env: &Env<'e>, who: &str) -> R<bool> {
    match node.eval(env)? {
        Val::Bool(b) => Ok(b),
        v => Err(wrong(node.span, &format!("{who} needs a boolean"), &v)),
    }
}

/// `base[seg]` on a computed value: null when the key or index is not
/// there, or the value is not an object or array (as for record paths).
fn index<'e>(base: Val<'e>, seg: &Seg) -> Val<'e> {
    match (base, seg) {
        (Val::Array(Cow::Borrowed(a)), Seg::Index(i)) => {
            a.get(*i).map_or(Val::Null, Val::from_json)
        }
        (Val::Array(Cow::Owned(mut a)), Seg::Index(i)) if *i < a.len() => {
            Val::from_json_owned(a.swap_remove(*i))
        }
        (Val::Object(Cow::Borrowed(m)), Seg::Key(k)) => {
            m.get(&**k).map_or(Val::Null, Val::from_json)
        }
        (Val::Object(Cow::Owned(mut m)), Seg::Key(k)) => {
            m.remove(&**k).map_or(Val::Null, Val::from_json_owned)
        }
        _ => Val::Null,
    }
}

fn compare(op: CmpOp, x: &Val<'_>, y: &Val<'_>, span: Span) -> R<bool> {
    if op.is_equality() {
        let eq = x.equals(y);
        return Ok(if op == CmpOp::Eq { eq } else { !eq });
    }
    let refuse = || {
        let kind = if matches!(x, Val::Null) || matches!(y, Val::Null) {
            EvalErrorKind::Null
        } else {
            EvalErrorKind::Type
        };
        err(
            kind,
            span,
            format!(
                "`{}` cannot compare {} with {}",
                op.symbol(),
                what(x),
                what(y)
            ),
        )
    };
    if !comparable(op, x.kind(), y.kind()) {
        return Err(refuse());
    }
    let ord = x.order(y).ok_or_else(refuse)?;
    Ok(match op {
        CmpOp::Lt => ord == Ordering::Less,
        CmpOp::Le => ord != Ordering::Greater,
        CmpOp::Gt => ord == Ordering::Greater,
        CmpOp::Ge => ord != Ordering::Less,
        CmpOp::Eq | CmpOp::Ne => unreachable!("handled above"),
    })
}

fn finite(f: f64, op: ArithOp, span: Span) -> R<Val<'static>> {
    if f.is_finite() {
        Ok(Val::Float(f))
    } else {
        Err(err(
            EvalErrorKind::Overflow,
            span,
            format!("`{}` gives a float out of range", op.symbol()),
        ))
    }
}

fn as_f64(v: &Val<'_>) -> f64 {
    match v {
        Val::Int(i) => *i as f64,
        Val::Float(f) => *f,
        _ => 0.0,
    }
}

fn arith<'e>(op: ArithOp, a: Val<'e>, b: Val<'e>, span: Span) -> R<Val<'e>> {
    let Some(kind) = arith_kind(op, a.kind(), b.kind()) else {
        let k = if matches!(a, Val::Null) || matches!(b, Val::Null) {
            EvalErrorKind::Null
        } else {
            EvalErrorKind::Type
        };
        return Err(err(
            k,
            span,
            format!(
                "`{}` cannot apply to {} and {}",
                op.symbol(),
                what(&a),
                what(&b)
            ),
        ));
    };
    let overflow = || {
        err(
            EvalErrorKind::Overflow,
            span,
            format!("integer overflow in `{}`", op.symbol()),
        )
    };
    let zero = || {
        err(
            EvalErrorKind::DivisionByZero,
            span,
            format!("division by zero in `{}`", op.symbol()),
        )
    };
    let time_range = || {
        err(
            EvalErrorKind::Overflow,
            span,
            "time out of range (1677–2262)",
        )
    };
    match (kind, &a, &b) {
        (Kind::Int, Val::Int(x), Val::Int(y)) => {
            let (x, y) = (*x, *y);
            let r = match op {
                ArithOp::Add => x.checked_add(y),
                ArithOp::Sub => x.checked_sub(y),
                ArithOp::Mul => x.checked_mul(y),
                ArithOp::Rem => {
                    if y == 0 {
                        return Err(zero());
                    }
                    // i64::MIN % -1 is 0, not an overflow.
                    Some(x.wrapping_rem(y))
                }
                ArithOp::Div => unreachable!("int / int is a float"),
            };
            r.map(Val::Int).ok_or_else(overflow)
        }
        (Kind::Float, Val::Time(x), Val::Time(y)) => {
            let d = x
                .unix_nanos()
                .checked_sub(y.unix_nanos())
                .ok_or_else(time_range)?;
            Ok(Val::Float(d as f64 / 1e9))
        }
        (Kind::Float, _, _) => {
            let (x, y) = (as_f64(&a), as_f64(&b));
            if matches!(op, ArithOp::Div | ArithOp::Rem) && y == 0.0 {
                return Err(zero());
            }
            let r = match op {
                ArithOp::Add => x + y,
                ArithOp::Sub => x - y,
                ArithOp::Mul => x * y,
                ArithOp::Div => x / y,
                ArithOp::Rem => x % y,
            };
            finite(r, op, span)
        }
        (Kind::Time, _, _) => {
            let (t, secs, sign) = match (&a, &b) {
                (Val::Time(t), n) => (*t, n, if op == ArithOp::Sub { -1 } else { 1 }),
                (n, Val::Time(t)) => (*t, n, 1),
                _ => unreachable!("the table gives a time only with a time operand"),
            };
            let nanos = match secs {
                Val::Int(s) => time::secs_to_nanos(*s).and_then(|n| n.checked_mul(sign)),
                Val::Float(f) => time::secs_to_nanos_f(*f * sign as f64),
                _ => None,
            }
            .ok_or_else(time_range)?;
            time::add_nanos(t, nanos)
                .map(Val::Time)
                .ok_or_else(time_range)
        }
        _ => unreachable!("arith_kind admits no other combination"),
    }
}

/// The zone of a time function: fixed at compile time, or read from the
/// last argument.
fn zone<'e>(call: &'e Call, env: &Env<'e>) -> R<Tz> {
    match &call.tz {
        TzArg::Utc => Ok(Tz::UTC),
        TzArg::Fixed(tz) => Ok(*tz),
        TzArg::Dynamic => {
            let node = call
                .args
                .last()
                .expect("a dynamic zone is the last argument");
            let name = string(node, env, "a time zone must be a string")?;
            time::zone(&name).ok_or_else(|| {
                let mut e = format!("unknown time zone {name:?}");
                if let Some(s) = time::nearest_zone(&name) {
                    e.push_str(&format!("; did you mean {s:?}?"));
                }
                err(EvalErrorKind::TimeZone, node.span, e)
            })
        }
    }
}

fn string<'e>(node: &'e Node, env: &Env<'e>, wanted: &str) -> R<Cow<'e, str>> {
    match node.eval(env)? {
        Val::Str(s) => Ok(s),
        v => Err(wrong(node.span, wanted, &v)),
    }
}

fn time_arg<'e>(node: &'e Node, env: &Env<'e>, wanted: &str) -> R<EventTime> {
    match node.eval(env)? {
        Val::Time(t) => Ok(t),
        v => Err(wrong(node.span, wanted, &v)),
    }
}

fn number_arg<'e>(node: &'e Node, env: &Env<'e>, wanted: &str) -> R<Val<'e>> {
    match node.eval(env)? {
        v @ (Val::Int(_) | Val::Float(_)) => Ok(v),
        v => Err(wrong(node.span, wanted, &v)),
    }
}

fn text_of(v: &Val<'_>, span: Span, who: &str) -> R<String> {
    let mut s = String::new();
    v.write_text(&mut s).map_err(|()| {
        err(
            EvalErrorKind::Null,
            span,
            format!("{who} got null (a missing field?)"),
        )
    })?;
    Ok(s)
}

/// A float rounded to an int, if it fits.
fn float_to_int(f: f64, span: Span, who: &str) -> R<Val<'static>> {
    // -2^63 ≤ f < 2^63.
    if f.is_finite() && (-9.223_372_036_854_776e18..9.223_372_036_854_776e18).contains(&f) {
        Ok(Val::Int(f as i64))
    } else {
        Err(err(
            EvalErrorKind::Overflow,
            span,
            format!("{who}: {f} does not fit in an int"),
        ))
    }
}

fn owned(s: String) -> Val<'static> {
    Val::Str(Cow::Owned(s))
}

impl Call {
    /// Dispatches by family, so the frame on the stack while arguments are
    /// evaluated (once per level of nesting) holds one family's locals only.
    fn eval<'e>(&'e self, env: &Env<'e>, span: Span) -> R<Val<'e>> {
        match &self.func {
            Func::Contains
            | Func::StartsWith
            | Func::EndsWith
            | Func::Lower
            | Func::Upper
            | Func::Trim
            | Func::Len
            | Func::Split
            | Func::Join
            | Func::Replace
            | Func::Format(_) => self.text(env),
            Func::Matches(_) | Func::Capture(..) | Func::Captures(_) | Func::RegexReplace(_) => {
                self.regex(env)
            }
            Func::ToInt
            | Func::ToFloat
            | Func::ToString
            | Func::ToTime
            | Func::TypeOf
            | Func::IsNull => self.convert(env),
            Func::Now
            | Func::ParseTime(_)
            | Func::FormatTime(_)
            | Func::TimeDiff
            | Func::Hour
            | Func::Weekday => self.time(env, span),
            Func::Abs | Func::Min | Func::Max | Func::Round | Func::Floor | Func::Ceil => {
                self.math(env, span)
            }
        }
    }

    fn text<'e>(&'e self, env: &Env<'e>) -> R<Val<'e>> {
        let a = &self.args;
        match &self.func {
            Func::Contains => match a[0].eval(env)? {
                Val::Str(s) => {
                    let needle = string(
                        &a[1],
                        env,
                        "`contains` on a string needs a string to look for",
                    )?;
                    Ok(Val::Bool(s.contains(&*needle)))
                }
                Val::Array(items) => {
                    let needle = a[1].eval(env)?;
                    Ok(Val::Bool(
                        items.iter().any(|x| Val::from_json(x).equals(&needle)),
                    ))
                }
                v => Err(wrong(
                    a[0].span,
                    "`contains` needs a string or an array",
                    &v,
                )),
            },
            Func::StartsWith | Func::EndsWith => {
                let s = string(&a[0], env, "expected a string")?;
                let p = string(&a[1], env, "expected a string")?;
                Ok(Val::Bool(if matches!(self.func, Func::StartsWith) {
                    s.starts_with(&*p)
                } else {
                    s.ends_with(&*p)
                }))
            }
            Func::Lower => Ok(owned(
                string(&a[0], env, "`lower` needs a string")?.to_lowercase(),
            )),
            Func::Upper => Ok(owned(
                string(&a[0], env, "`upper` needs a string")?.to_uppercase(),
            )),
            Func::Trim => Ok(match string(&a[0], env, "`trim` needs a string")? {
                Cow::Borrowed(s) => Val::Str(Cow::Borrowed(s.trim())),
                Cow::Owned(s) => owned(s.trim().to_owned()),
            }),
            Func::Len => {
                let n = match a[0].eval(env)? {
                    Val::Str(s) => s.chars().count(),
                    Val::Array(x) => x.len(),
                    Val::Object(m) => m.len(),
                    v => {
                        return Err(wrong(
                            a[0].span,
                            "`len` needs a string, an array or an object",
                            &v,
                        ))
                    }
                };
                Ok(Val::Int(i64::try_from(n).unwrap_or(i64::MAX)))
            }
            Func::Split => {
                let s = string(&a[0], env, "`split` needs a string")?;
                let sep = string(&a[1], env, "`split` needs a string separator")?;
                if sep.is_empty() {
                    return Err(err(
                        EvalErrorKind::Type,
                        a[1].span,
                        "`split` separator is empty",
                    ));
                }
                let parts = s.split(&*sep).map(|p| Json::String(p.to_owned())).collect();
                Ok(Val::Array(Cow::Owned(parts)))
            }
            Func::Join => {
                let items = match a[0].eval(env)? {
                    Val::Array(x) => x,
                    v => return Err(wrong(a[0].span, "`join` needs an array", &v)),
                };
                let sep = string(&a[1], env, "`join` needs a string separator")?;
                let mut out = String::new();
                for (i, x) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&sep);
                    }
                    Val::from_json(x).write_text(&mut out).map_err(|()| {
                        err(
                            EvalErrorKind::Null,
                            a[0].span,
                            format!("`join`: element {i} is null"),
                        )
                    })?;
                }
                Ok(owned(out))
            }
            Func::Replace => {
                let s = string(&a[0], env, "`replace` needs a string")?;
                let from = string(&a[1], env, "`replace` needs a string to look for")?;
                let to = string(&a[2], env, "`replace` needs a replacement string")?;
                Ok(owned(s.replace(&*from, &to)))
            }
            Func::Format(pieces) => {
                let mut out = String::new();
                let mut next = a.iter();
                for piece in pieces.iter() {
                    match piece {
                        Piece::Text(t) => out.push_str(t),
                        Piece::Arg => {
                            let node = next.next().expect("placeholders were counted");
                            let v = node.eval(env)?;
                            v.write_text(&mut out).map_err(|()| {
                                err(
                                    EvalErrorKind::Null,
                                    node.span,
                                    "`format` got null (a missing field?)",
                                )
                            })?;
                        }
                    }
                }
                Ok(owned(out))
            }
            _ => unreachable!("dispatched by family"),
        }
    }

    fn regex<'e>(&'e self, env: &Env<'e>) -> R<Val<'e>> {
        let a = &self.args;
        match &self.func {
            Func::Matches(re) => {
                let s = string(&a[0], env, "`matches` needs a string")?;
                Ok(Val::Bool(re.is_match(&s)))
            }
            Func::Capture(re, group) => {
                let s = string(&a[0], env, "`capture` needs a string")?;
                let Some(caps) = re.captures(&s) else {
                    return Ok(Val::Null);
                };
                let m = match group {
                    Group::Index(i) => caps.get(*i),
                    Group::Name(n) => caps.name(n),
                };
                Ok(m.map_or(Val::Null, |m| match &s {
                    Cow::Borrowed(b) => Val::Str(Cow::Borrowed(&b[m.range()])),
                    Cow::Owned(_) => owned(m.as_str().to_owned()),
                }))
            }
            Func::Captures(re) => {
                let s = string(&a[0], env, "`captures` needs a string")?;
                let Some(caps) = re.captures(&s) else {
                    return Ok(Val::Null);
                };
                let mut m = Map::new();
                for name in re.capture_names().flatten() {
                    let v = caps
                        .name(name)
                        .map_or(Json::Null, |c| Json::String(c.as_str().to_owned()));
                    m.insert(name.to_owned(), v);
                }
                Ok(Val::Object(Cow::Owned(m)))
            }
            Func::RegexReplace(re) => {
                let s = string(&a[0], env, "`regex_replace` needs a string")?;
                let with = string(&a[1], env, "`regex_replace` needs a replacement string")?;
                Ok(owned(re.replace_all(&s, &*with).into_owned()))
            }
            _ => unreachable!("dispatched by family"),
        }
    }

    fn convert<'e>(&'e self, env: &Env<'e>) -> R<Val<'e>> {
        let a = &self.args;
        match &self.func {
            Func::ToInt => to_int(a[0].eval(env)?, a[0].span),
            Func::ToFloat => {
                let f = match a[0].eval(env)? {
                    Val::Int(i) => i as f64,
                    Val::Float(f) => f,
                    Val::Bool(b) => f64::from(u8::from(b)),
                    Val::Time(t) => t.as_secs_f64(),
                    Val::Str(s) => parse_float(&s, a[0].span, "to_float")?,
                    v => {
                        return Err(wrong(
                            a[0].span,
                            "`to_float` needs a number, a string, a bool or a time",
                            &v,
                        ))
                    }
                };
                Ok(Val::Float(f))
            }
            Func::ToString => match a[0].eval(env)? {
                v @ Val::Str(_) => Ok(v),
                v => Ok(owned(text_of(&v, a[0].span, "`to_string`")?)),
            },
            Func::ToTime => match a[0].eval(env)? {
                Val::Time(t) => Ok(Val::Time(t)),
                Val::Int(s) => time::secs_to_nanos(s)
                    .map(|n| Val::Time(EventTime::from_unix_nanos(n)))
                    .ok_or_else(|| {
                        err(
                            EvalErrorKind::Overflow,
                            a[0].span,
                            "time out of range (1677–2262)",
                        )
                    }),
                Val::Float(f) => time::secs_to_nanos_f(f)
                    .map(|n| Val::Time(EventTime::from_unix_nanos(n)))
                    .ok_or_else(|| {
                        err(
                            EvalErrorKind::Overflow,
                            a[0].span,
                            "time out of range (1677–2262)",
                        )
                    }),
                Val::Str(s) => time::parse_rfc3339(&s)
                    .map(Val::Time)
                    .map_err(|m| err(EvalErrorKind::Parse, a[0].span, m)),
                v => Err(wrong(
                    a[0].span,
                    "`to_time` needs seconds since the epoch or RFC 3339 text",
                    &v,
                )),
            },
            Func::TypeOf => Ok(Val::Str(Cow::Borrowed(a[0].eval(env)?.type_name()))),
            Func::IsNull => Ok(Val::Bool(matches!(a[0].eval(env)?, Val::Null))),
            _ => unreachable!("dispatched by family"),
        }
    }

    fn time<'e>(&'e self, env: &Env<'e>, span: Span) -> R<Val<'e>> {
        let a = &self.args;
        match &self.func {
            Func::Now => Ok(Val::Time(EventTime::now())),
            Func::ParseTime(fmt) => {
                let s = string(&a[0], env, "`parse_time` needs a string")?;
                let tz = zone(self, env)?;
                time::parse(&s, fmt, tz)
                    .map(Val::Time)
                    .map_err(|m| err(EvalErrorKind::Parse, a[0].span, m))
            }
            Func::FormatTime(fmt) => {
                let t = time_arg(&a[0], env, "`format_time` needs a time")?;
                let tz = zone(self, env)?;
                time::format(t, fmt, tz)
                    .map(owned)
                    .map_err(|m| err(EvalErrorKind::Type, span, m))
            }
            Func::TimeDiff => {
                let x = time_arg(&a[0], env, "`time_diff` needs two times")?;
                let y = time_arg(&a[1], env, "`time_diff` needs two times")?;
                arith(ArithOp::Sub, Val::Time(x), Val::Time(y), span)
            }
            Func::Hour => {
                let t = time_arg(&a[0], env, "`hour` needs a time")?;
                Ok(Val::Int(time::hour(t, zone(self, env)?)))
            }
            Func::Weekday => {
                let t = time_arg(&a[0], env, "`weekday` needs a time")?;
                Ok(Val::Int(time::weekday(t, zone(self, env)?)))
            }
            _ => unreachable!("dispatched by family"),
        }
    }

    fn math<'e>(&'e self, env: &Env<'e>, span: Span) -> R<Val<'e>> {
        let a = &self.args;
        match &self.func {
            Func::Abs => match number_arg(&a[0], env, "`abs` needs a number")? {
                Val::Int(i) => i
                    .checked_abs()
                    .map(Val::Int)
                    .ok_or_else(|| err(EvalErrorKind::Overflow, span, "integer overflow in `abs`")),
                v => Ok(Val::Float(as_f64(&v).abs())),
            },
            Func::Min | Func::Max => {
                let want = if matches!(self.func, Func::Min) {
                    Ordering::Less
                } else {
                    Ordering::Greater
                };
                let mut best = a[0].eval(env)?;
                for node in &a[1..] {
                    let v = node.eval(env)?;
                    let refuse = || {
                        let k = if matches!(best, Val::Null) || matches!(v, Val::Null) {
                            EvalErrorKind::Null
                        } else {
                            EvalErrorKind::Type
                        };
                        err(
                            k,
                            span,
                            format!("cannot order {} and {}", what(&best), what(&v)),
                        )
                    };
                    if !comparable(CmpOp::Lt, best.kind(), v.kind()) {
                        return Err(refuse());
                    }
                    if v.order(&best).ok_or_else(refuse)? == want {
                        best = v;
                    }
                }
                Ok(best)
            }
            Func::Round | Func::Floor | Func::Ceil => {
                let x = number_arg(&a[0], env, "expected a number")?;
                if let Some(digits) = a.get(1) {
                    let d = match digits.eval(env)? {
                        Val::Int(d) => d.clamp(-400, 400) as i32,
                        v => {
                            return Err(wrong(
                                digits.span,
                                "the number of digits must be an int",
                                &v,
                            ))
                        }
                    };
                    return Ok(Val::Float(round_to(as_f64(&x), d)));
                }
                match x {
                    Val::Int(i) => Ok(Val::Int(i)),
                    v => {
                        let f = as_f64(&v);
                        let r = match self.func {
                            Func::Round => f.round(),
                            Func::Floor => f.floor(),
                            _ => f.ceil(),
                        };
                        float_to_int(r, span, "rounding")
                    }
                }
            }

            _ => unreachable!("dispatched by family"),
        }
    }
}

/// `x` rounded to `digits` decimals (negative: tens, hundreds...), half away
/// from zero; `x` itself when scaling would leave the float range.
fn round_to(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits.abs());
    let r = if digits >= 0 {
        (x * p).round() / p
    } else {
        (x / p).round() * p
    };
    if r.is_finite() {
        r
    } else {
        x
    }
}

fn parse_float(s: &str, span: Span, who: &str) -> R<f64> {
    match s.trim().parse::<f64>() {
        Ok(f) if f.is_finite() => Ok(f),
        _ => Err(err(
            EvalErrorKind::Parse,
            span,
            format!("`{who}` cannot read {s:?} as a number"),
        )),
    }
}

fn to_int(v: Val<'_>, span: Span) -> R<Val<'static>> {
    match v {
        Val::Int(i) => Ok(Val::Int(i)),
        Val::Bool(b) => Ok(Val::Int(i64::from(b))),
        Val::Float(f) => float_to_int(f.trunc(), span, "`to_int`"),
        Val::Time(t) => Ok(Val::Int(t.secs())),
        Val::Str(s) => match s.trim().parse::<i64>() {
            Ok(i) => Ok(Val::Int(i)),
            Err(_) => float_to_int(parse_float(&s, span, "to_int")?.trunc(), span, "`to_int`"),
        },
        v => Err(wrong(
            span,
            "`to_int` needs a number, a string, a bool or a time",
            &v,
        )),
    }
}
