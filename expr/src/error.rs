//! What can go wrong: [`CompileError`] when an expression is compiled (syntax,
//! names, types, literals), [`EvalError`] when a compiled one meets an event.

use std::fmt::{self, Write};

use crate::ast::Span;

/// What kind of problem a [`CompileError`] is, for callers that map errors
/// onto their own diagnostic codes and for tests.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The text does not follow the grammar.
    Syntax,
    /// Longer than [`crate::MAX_LEN`] bytes.
    TooLong,
    /// Nested more than [`crate::MAX_DEPTH`] levels.
    TooDeep,
    /// A bare name that is neither a keyword nor a function call.
    UnknownName,
    /// A call of a function that does not exist.
    UnknownFunction,
    /// A function called with too few or too many arguments.
    Arity,
    /// An operator or function applied to values of a type it never accepts.
    Type,
    /// An argument that must be a literal (a regex, a format) is not one.
    NotLiteral,
    /// A literal that is malformed: a bad escape, an out-of-range number, a
    /// regex or time format that does not compile, an unknown time zone.
    BadLiteral,
}

impl ErrorKind {
    /// A short stable code in the style of ulog's other diagnostics
    /// (`E-expr-syntax`, `E-expr-type`, ...).
    pub fn code(self) -> &'static str {
        match self {
            ErrorKind::Syntax => "E-expr-syntax",
            ErrorKind::TooLong => "E-expr-too-long",
            ErrorKind::TooDeep => "E-expr-too-deep",
            ErrorKind::UnknownName => "E-expr-unknown-name",
            ErrorKind::UnknownFunction => "E-expr-unknown-function",
            ErrorKind::Arity => "E-expr-arity",
            ErrorKind::Type => "E-expr-type",
            ErrorKind::NotLiteral => "E-expr-not-literal",
            ErrorKind::BadLiteral => "E-expr-bad-literal",
        }
    }
}

/// Why an expression did not compile, and where.
///
/// Positions are relative to the expression's own text: `offset`/`len` in
/// bytes, `line`/`column` 1-based with the column counted in characters. A
/// caller that found the expression inside a larger file (a routes file)
/// shifts them with [`CompileError::line_col_from`] or adds its own start
/// offset to `offset`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{line}:{column}: {}", self.full_message())]
pub struct CompileError {
    /// What kind of problem this is.
    pub kind: ErrorKind,
    /// Byte offset of the first byte at fault.
    pub offset: usize,
    /// Number of bytes at fault (0 at the end of the text).
    pub len: usize,
    /// 1-based line of `offset` within the expression.
    pub line: usize,
    /// 1-based column of `offset` within its line, in characters.
    pub column: usize,
    /// What is wrong, on one line, without the suggestion.
    pub message: String,
    /// A replacement that would probably fix it (the nearest function name,
    /// `and` for `&&`, ...).
    pub suggestion: Option<String>,
}

impl CompileError {
    /// An error over `span`; line and column are filled in by
    /// [`CompileError::locate`] once the source is at hand.
    pub(crate) fn at(kind: ErrorKind, span: Span, message: impl Into<String>) -> Self {
        Self {
            kind,
            offset: span.start,
            len: span.end.saturating_sub(span.start),
            line: 1,
            column: 1,
            message: message.into(),
            suggestion: None,
        }
    }

    pub(crate) fn suggest(mut self, suggestion: impl Into<String>) -> Self {
        self.suggestion = Some(suggestion.into());
        self
    }

    /// Fills in line and column from the expression's text.
    pub(crate) fn locate(mut self, source: &str) -> Self {
        let offset = clamp(source, self.offset);
        self.offset = offset;
        self.len = clamp(source, offset + self.len) - offset;
        let before = &source[..offset];
        self.line = before.matches('\n').count() + 1;
        let line_start = before.rfind('\n').map_or(0, |i| i + 1);
        self.column = before[line_start..].chars().count() + 1;
        self
    }

    /// The stable code of this error's kind (`E-expr-type`, ...).
    pub fn code(&self) -> &'static str {
        self.kind.code()
    }

    /// The message with the suggestion, as ulog's diagnostics phrase it:
    /// "unknown function `uper`; did you mean `upper`?".
    pub fn full_message(&self) -> String {
        match &self.suggestion {
            Some(s) => format!("{}; did you mean `{s}`?", self.message),
            None => self.message.clone(),
        }
    }

    /// Line and column in a file where the expression's first character is
    /// at `line`:`column` (both 1-based): lines after the first keep their
    /// own column, the first is shifted right.
    pub fn line_col_from(&self, line: usize, column: usize) -> (usize, usize) {
        if self.line == 1 {
            (line, column + self.column - 1)
        } else {
            (line + self.line - 1, self.column)
        }
    }

    /// The error as ulog prints diagnostics: a header with the code, the
    /// location as `name:line:col`, the line of `source` (the expression this
    /// error came from) and carets under the fault.
    ///
    /// ```text
    /// error[E-expr-unknown-function]: unknown function `uper`; did you mean `upper`?
    ///  --> condition:1:1
    ///   |
    /// 1 | uper($.name) == "x"
    ///   | ^^^^
    /// ```
    pub fn render(&self, name: &str, source: &str) -> String {
        let mut out = format!("error[{}]: {}\n", self.code(), self.full_message());
        let width = self.line.to_string().len();
        let pad = " ".repeat(width);
        let _ = writeln!(out, "{pad}--> {name}:{}:{}", self.line, self.column);
        let _ = writeln!(out, "{pad} |");
        let text = source
            .split('\n')
            .nth(self.line - 1)
            .unwrap_or("")
            .trim_end_matches('\r');
        let _ = writeln!(out, "{:>width$} | {text}", self.line);
        let before: String = text
            .chars()
            .take(self.column - 1)
            .map(|c| if c == '\t' { '\t' } else { ' ' })
            .collect();
        let rest = text.chars().skip(self.column - 1).count();
        let offset = clamp(source, self.offset);
        let span_chars = source[offset..clamp(source, offset + self.len)]
            .chars()
            .count();
        let carets = span_chars.min(rest).max(1);
        let _ = writeln!(out, "{pad} | {before}{}", "^".repeat(carets));
        out
    }
}

fn clamp(s: &str, offset: usize) -> usize {
    let mut offset = offset.min(s.len());
    while !s.is_char_boundary(offset) {
        offset -= 1;
    }
    offset
}

/// What kind of run-time failure an [`EvalError`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum EvalErrorKind {
    /// A value was null (often a missing field) where an operation needs one.
    Null,
    /// A value of the wrong type for the operation.
    Type,
    /// Division or remainder by zero.
    DivisionByZero,
    /// An integer result out of the i64 range, a float that is not finite,
    /// or a time outside 1677–2262.
    Overflow,
    /// A string that does not parse as the number or time asked for.
    Parse,
    /// An unknown time zone name computed at run time.
    TimeZone,
    /// A raw record whose bytes are not a JSON object.
    BadRecord,
}

/// Why evaluating an expression on one event failed, and which part of the
/// expression failed (byte offsets into its source).
///
/// Never a panic: a filter decides what a failure means for the event (drop
/// it, keep it, send it to the `errors` label).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at bytes {offset}..{} of the expression)", offset + len)]
pub struct EvalError {
    /// What kind of failure this is.
    pub kind: EvalErrorKind,
    /// Byte offset of the sub-expression that failed.
    pub offset: usize,
    /// Its length in bytes.
    pub len: usize,
    /// What went wrong, with the values' types.
    pub message: String,
}

impl EvalError {
    pub(crate) fn new(kind: EvalErrorKind, span: Span, message: impl Into<String>) -> Self {
        Self {
            kind,
            offset: span.start,
            len: span.end.saturating_sub(span.start),
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}
