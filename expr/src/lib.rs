//! ulog's expression language: small, safe, compiled once.
//!
//! Filters use expressions for conditions (`$.household == "h1" and
//! $.soc_pct < 50`) and computed fields (`format("{}:{}", tag[1],
//! round($.power_w / 1000))`); the routes language will embed them too. The
//! reference of the language is `docs/expressions.md`.
//!
//! # Why compiled, and why so small
//!
//! An expression runs once per event, on every event of a busy pipeline, so
//! all the work that does not depend on the event happens once, in
//! [`Expr::compile`]: parsing, name and type checking, building regexes,
//! parsing time formats and zones, and collecting the record paths the
//! expression reads. Mistakes (`"a" < 3`, `upper($.x) > 5`, a bad regex, a
//! misspelt function) are compile errors with a position, found by
//! `ulog check` before any event arrives.
//!
//! There are no loops, no variables, no I/O and no user functions; the text
//! is at most [`MAX_LEN`] bytes and nested at most [`MAX_DEPTH`] levels. So
//! evaluating takes time bounded by the expression's size and the values it
//! reads, and a routes file cannot hang or crash the router.
//!
//! # Raw records stay raw
//!
//! A record that arrived as JSON text ([`Record::Raw`]) is not parsed into a
//! map: the fields the expression uses are picked out of the text in one
//! streaming pass, borrowing strings from it (see the `record` module). A
//! parsed record ([`Record::Map`]) is read in place. Both give the same
//! result.
//!
//! # Example
//!
//! ```
//! use bytes::Bytes;
//! use ulog_engine::{EventTime, Record, Tag};
//! use ulog_expr::{Context, Expr, Value};
//!
//! let cond = Expr::compile_condition(r#"$.household == "h1" and $.soc_pct < 50"#).unwrap();
//! let label = Expr::compile(r#"format("{}:{}", tag[1], round($.power_w / 1000))"#).unwrap();
//!
//! let record = Record::from_json_bytes(Bytes::from_static(
//!     br#"{"household":"h1","soc_pct":42,"power_w":2500}"#,
//! ))
//! .unwrap();
//! let tag = Tag::parse("home.h1.battery").unwrap();
//! let cx = Context { record: &record, tag: &tag, time: EventTime::now() };
//! assert!(cond.eval_bool(&cx).unwrap());
//! assert_eq!(label.eval(&cx).unwrap(), Value::String("h1:3".into()));
//!
//! let err = Expr::compile("uper($.name)").unwrap_err();
//! assert_eq!(err.full_message(), "unknown function `uper`; did you mean `upper`?");
//! ```
#![deny(missing_docs)]

mod ast;
mod compile;
mod error;
mod eval;
mod parser;
mod record;
mod time;
mod types;
mod value;

use std::fmt;

use ulog_engine::{EventTime, Record, Tag};

pub use compile::FUNCTIONS;
pub use error::{CompileError, ErrorKind, EvalError, EvalErrorKind};
pub use types::Type;
pub use value::Value;

use ast::Span;
use eval::{Env, Fields, Node};
use record::Trie;
use value::Val;

/// The longest expression accepted, in bytes: far more than a condition or a
/// computed field needs, small enough that evaluation time stays trivially
/// bounded.
pub const MAX_LEN: usize = 4096;

/// The deepest nesting accepted (brackets, calls, operators inside one
/// another). Parsing, compiling and evaluating recurse over the tree, so
/// this bounds their stack use on any thread.
pub const MAX_DEPTH: usize = 32;

/// Paths up to this many are extracted from a raw record into a buffer on
/// the stack; more take one allocation per evaluation.
const INLINE_SLOTS: usize = 8;

/// What an expression sees of one event.
#[derive(Clone, Copy)]
pub struct Context<'a> {
    /// The event's fields: `$`, `$.a.b`.
    pub record: &'a Record,
    /// The batch's tag: `tag`, `tag[1]`.
    pub tag: &'a Tag,
    /// The event's time: `time`.
    pub time: EventTime,
}

/// A compiled expression: checked, with its literals prepared, ready to run
/// on any number of events (and threads: it is `Send + Sync`).
pub struct Expr {
    source: Box<str>,
    root: Node,
    result: Type,
    trie: Trie,
}

impl fmt::Debug for Expr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Expr")
            .field("source", &self.source)
            .field("result", &self.result)
            .finish()
    }
}

impl Expr {
    /// Parses and checks `source`.
    ///
    /// # Errors
    ///
    /// A [`CompileError`] with the position (relative to `source`) of the
    /// first problem: a syntax error, an unknown name or function (with the
    /// nearest known one), a wrong number of arguments, a type that can
    /// never fit (`"a" < 3`), a non-literal or invalid regex, format, time
    /// zone; or `source` longer than [`MAX_LEN`] or deeper than
    /// [`MAX_DEPTH`].
    pub fn compile(source: &str) -> Result<Expr, CompileError> {
        let compiled = parser::parse(source).and_then(compile::compile);
        let (root, result, trie) = compiled.map_err(|e| e.locate(source))?;
        Ok(Expr {
            source: source.into(),
            root,
            result,
            trie,
        })
    }

    /// Like [`Expr::compile`], and also refuses an expression that can never
    /// be a boolean (`$.a + 1`), so a filter condition is checked up front.
    /// One that may be (`$.flag`) is checked per event by
    /// [`Expr::eval_bool`].
    ///
    /// # Errors
    ///
    /// As [`Expr::compile`], plus an [`ErrorKind::Type`] error over the whole
    /// expression when its type has no boolean in it.
    pub fn compile_condition(source: &str) -> Result<Expr, CompileError> {
        let expr = Self::compile(source)?;
        if !expr.result.may_be(Type::BOOL) {
            let e = CompileError::at(
                ErrorKind::Type,
                Span::new(0, source.len()),
                format!(
                    "a condition must be a boolean, but this expression gives {}",
                    expr.result
                ),
            );
            return Err(e.locate(source));
        }
        Ok(expr)
    }

    /// The text the expression was compiled from.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// What the expression may produce, known at compile time: callers that
    /// need a boolean, a string or a number check it here.
    pub fn result_type(&self) -> Type {
        self.result
    }

    /// True when the expression reads some field of the record (`$...`);
    /// one that only reads the tag or the time can be evaluated once per
    /// batch.
    pub fn reads_record(&self) -> bool {
        self.trie.slot_count() > 0
    }

    /// Evaluates the expression on one event.
    ///
    /// A field that is missing reads as null; operations on null fail,
    /// except `??`, `exists`, `is_null`, `type_of`, `==` and `!=`.
    ///
    /// # Errors
    ///
    /// An [`EvalError`] naming the failing sub-expression: null or a wrong
    /// type where a value is needed, division by zero, overflow, text that
    /// does not parse as a number or time, or a raw record whose bytes are
    /// not a JSON object. Never a panic.
    pub fn eval(&self, cx: &Context<'_>) -> Result<Value, EvalError> {
        self.run(cx, |v| Ok(v.into_value()))
    }

    /// Evaluates a condition: the result must be a boolean.
    ///
    /// # Errors
    ///
    /// As [`Expr::eval`], and an [`EvalErrorKind::Type`] (or
    /// [`EvalErrorKind::Null`]) error when the result is not a boolean.
    pub fn eval_bool(&self, cx: &Context<'_>) -> Result<bool, EvalError> {
        let span = Span::new(0, self.source.len());
        self.run(cx, |v| match v {
            Val::Bool(b) => Ok(b),
            Val::Null => Err(EvalError::new(
                EvalErrorKind::Null,
                span,
                "the condition gave null (a missing field?), not a boolean",
            )),
            v => Err(EvalError::new(
                EvalErrorKind::Type,
                span,
                format!("the condition gave {}, not a boolean", v.type_name()),
            )),
        })
    }

    /// Sets up where fields come from, evaluates, and hands the result to
    /// `finish` while what it borrows is still alive.
    fn run<T>(
        &self,
        cx: &Context<'_>,
        finish: impl for<'x> FnOnce(Val<'x>) -> Result<T, EvalError>,
    ) -> Result<T, EvalError> {
        let n = self.trie.slot_count();
        match cx.record {
            Record::Raw(bytes) if n > 0 => {
                let mut inline: [Option<Val<'_>>; INLINE_SLOTS] = Default::default();
                let mut heap = Vec::new();
                let slots: &mut [Option<Val<'_>>] = if n <= INLINE_SLOTS {
                    &mut inline[..n]
                } else {
                    heap.resize(n, None);
                    &mut heap
                };
                record::extract(&self.trie, bytes, slots).map_err(|e| {
                    EvalError::new(
                        EvalErrorKind::BadRecord,
                        Span::new(0, self.source.len()),
                        format!("the record is not a JSON object: {e}"),
                    )
                })?;
                let env = Env {
                    fields: Fields::Slots(slots),
                    tag: cx.tag,
                    time: cx.time,
                };
                finish(self.root.eval(&env).map_err(|e| *e)?)
            }
            Record::Raw(_) => {
                let env = Env {
                    fields: Fields::None,
                    tag: cx.tag,
                    time: cx.time,
                };
                finish(self.root.eval(&env).map_err(|e| *e)?)
            }
            Record::Map(map) => {
                let env = Env {
                    fields: Fields::Map(map),
                    tag: cx.tag,
                    time: cx.time,
                };
                finish(self.root.eval(&env).map_err(|e| *e)?)
            }
        }
    }
}

#[cfg(test)]
mod tests;
