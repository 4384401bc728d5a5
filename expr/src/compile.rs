//! From syntax tree to checked, evaluable tree: names resolved, types
//! checked, literals compiled (regexes, format strings, time formats, time
//! zones), field paths collected for the raw-record fast path.

use std::borrow::Cow;

use regex::{Regex, RegexBuilder};

use crate::ast::{ArithOp, Ast, AstKind, CmpOp, Span};
use crate::error::{CompileError, ErrorKind};
use crate::eval::{Call, Func, Group, Node, NodeKind, Piece, TzArg};
use crate::record::{Seg, Trie};
use crate::time;
use crate::types::{arith_type, may_compare, Type};
use crate::value::Val;

/// Every function the language knows, for "did you mean" and the docs.
pub const FUNCTIONS: &[&str] = &[
    "abs",
    "capture",
    "captures",
    "ceil",
    "contains",
    "ends_with",
    "exists",
    "floor",
    "format",
    "format_time",
    "hour",
    "if",
    "is_null",
    "join",
    "len",
    "lower",
    "matches",
    "max",
    "min",
    "now",
    "parse_time",
    "regex_replace",
    "replace",
    "round",
    "split",
    "starts_with",
    "time_diff",
    "to_float",
    "to_int",
    "to_string",
    "to_time",
    "trim",
    "type_of",
    "upper",
    "weekday",
];

/// Regexes may not compile to more than this (bytes of program), so one
/// pattern cannot take a lot of memory or time to build.
const REGEX_SIZE_LIMIT: usize = 1 << 20;

type R<T> = Result<T, CompileError>;

/// A checked node and what it may produce.
struct Typed {
    node: Node,
    ty: Type,
}

fn typed(kind: NodeKind, span: Span, ty: Type) -> Typed {
    Typed {
        node: Node { kind, span },
        ty,
    }
}

fn type_error(span: Span, message: impl Into<String>) -> CompileError {
    CompileError::at(ErrorKind::Type, span, message)
}

/// Checks `ast` and builds its evaluable tree, its type and the paths it
/// reads.
pub(crate) fn compile(ast: Ast) -> R<(Node, Type, Trie)> {
    let Typed { mut node, ty } = lower(ast)?;
    let mut trie = Trie::new();
    assign_slots(&mut node, &mut trie);
    trie.finish();
    Ok((node, ty, trie))
}

fn assign_slots(node: &mut Node, trie: &mut Trie) {
    match &mut node.kind {
        NodeKind::Field { path, slot } | NodeKind::ExistsField { path, slot } => {
            *slot = trie.insert(path);
        }
        NodeKind::Lit(_)
        | NodeKind::Tag
        | NodeKind::TagPart(_)
        | NodeKind::Time
        | NodeKind::ExistsTagPart(_) => {}
        NodeKind::Index(x, _) | NodeKind::Neg(x) | NodeKind::Not(x) => assign_slots(x, trie),
        NodeKind::Cmp(_, a, b) => {
            assign_slots(a, trie);
            assign_slots(b, trie);
        }
        NodeKind::Array(items)
        | NodeKind::And(items)
        | NodeKind::Or(items)
        | NodeKind::Coalesce(items) => items.iter_mut().for_each(|n| assign_slots(n, trie)),
        NodeKind::Arith(first, rest) => {
            assign_slots(first, trie);
            rest.iter_mut().for_each(|(_, n)| assign_slots(n, trie));
        }
        NodeKind::Cond(arms, otherwise) => {
            for (c, v) in arms {
                assign_slots(c, trie);
                assign_slots(v, trie);
            }
            assign_slots(otherwise, trie);
        }
        NodeKind::Call(call) => call.args.iter_mut().for_each(|n| assign_slots(n, trie)),
    }
}

fn lit(v: Val<'static>, span: Span, ty: Type) -> Typed {
    typed(NodeKind::Lit(v), span, ty)
}

/// Requires that `t` may be one of `allowed`.
fn need(t: &Typed, allowed: Type, who: &str, what: &str) -> R<()> {
    if t.ty.may_be(allowed) {
        Ok(())
    } else {
        Err(type_error(
            t.node.span,
            format!("{who} needs {what}, but this is {}", article(t.ty)),
        ))
    }
}

/// "a string", "an int or float", "null".
fn article(t: Type) -> String {
    let s = t.to_string();
    if t == Type::NULL || t == Type::ANY {
        return s;
    }
    let an = s.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {s}", if an { "an" } else { "a" })
}

/// One node. Each form has its own function so this one, on the stack once
/// per level of nesting, stays small.
fn lower(a: Ast) -> R<Typed> {
    let span = a.span;
    match a.kind {
        AstKind::Null => Ok(lit(Val::Null, span, Type::NULL)),
        AstKind::Bool(b) => Ok(lit(Val::Bool(b), span, Type::BOOL)),
        AstKind::Int(i) => Ok(lit(Val::Int(i), span, Type::INT)),
        AstKind::Float(f) => Ok(lit(Val::Float(f), span, Type::FLOAT)),
        AstKind::Str(s) => Ok(lit(Val::Str(Cow::Owned(s)), span, Type::STRING)),
        AstKind::Array(items) => array(items, span),
        AstKind::Root => Ok(typed(
            NodeKind::Field {
                path: Vec::new(),
                slot: 0,
            },
            span,
            Type::OBJECT,
        )),
        AstKind::Tag => Ok(typed(NodeKind::Tag, span, Type::STRING)),
        AstKind::Time => Ok(typed(NodeKind::Time, span, Type::TIME)),
        AstKind::Ident(name) => Err(unknown_name(&name, span)),
        AstKind::Member(base, name) => index(*base, Seg::Key(name.into()), span),
        AstKind::Index(base, idx) => index(*base, segment(*idx)?, span),
        AstKind::Call {
            name,
            name_span,
            args,
        } => call(&name, name_span, args, span),
        AstKind::Neg(x) => neg(*x, span),
        AstKind::Not(x) => not(*x, span),
        AstKind::Arith(first, rest) => arith(*first, rest, span),
        AstKind::Cmp(a, op, b) => cmp(*a, op, *b, span),
        AstKind::And(items) => Ok(typed(
            NodeKind::And(booleans(items, "`and`")?),
            span,
            Type::BOOL,
        )),
        AstKind::Or(items) => Ok(typed(
            NodeKind::Or(booleans(items, "`or`")?),
            span,
            Type::BOOL,
        )),
        AstKind::Coalesce(items) => coalesce(items, span),
        AstKind::Cond(arms, otherwise) => cond(arms, *otherwise, span),
    }
}

fn array(items: Vec<Ast>, span: Span) -> R<Typed> {
    let nodes = items
        .into_iter()
        .map(|x| lower(x).map(|t| t.node))
        .collect::<R<Vec<_>>>()?;
    Ok(typed(NodeKind::Array(nodes), span, Type::ARRAY))
}

/// The literal inside `[...]`.
fn segment(idx: Ast) -> R<Seg> {
    match idx.kind {
        AstKind::Int(i) => usize::try_from(i).map(Seg::Index).map_err(|_| {
            CompileError::at(
                ErrorKind::BadLiteral,
                idx.span,
                "an index counts from 0 and cannot be negative",
            )
        }),
        AstKind::Str(s) => Ok(Seg::Key(s.into())),
        _ => Err(CompileError::at(
            ErrorKind::NotLiteral,
            idx.span,
            "an index must be a literal int (`[0]`) or string (`[\"a.b\"]`): \
             the paths an expression reads are known when it is compiled",
        )),
    }
}

fn neg(x: Ast, span: Span) -> R<Typed> {
    let t = lower(x)?;
    need(&t, Type::NUMBER, "`-`", "a number")?;
    let ty = t.ty.intersect(Type::NUMBER);
    Ok(typed(NodeKind::Neg(Box::new(t.node)), span, ty))
}

fn not(x: Ast, span: Span) -> R<Typed> {
    let t = lower(x)?;
    need(&t, Type::BOOL, "`not`", "a boolean")?;
    Ok(typed(NodeKind::Not(Box::new(t.node)), span, Type::BOOL))
}

fn arith(first: Ast, rest: Vec<(ArithOp, Ast)>, span: Span) -> R<Typed> {
    let first = lower(first)?;
    let mut ty = first.ty;
    let mut so_far = first.node.span;
    let mut out = Vec::with_capacity(rest.len());
    for (op, operand) in rest {
        let zero = matches!(operand.kind, AstKind::Int(0))
            || matches!(operand.kind, AstKind::Float(f) if f == 0.0);
        if zero && matches!(op, ArithOp::Div | ArithOp::Rem) {
            return Err(CompileError::at(
                ErrorKind::BadLiteral,
                operand.span,
                format!("`{}` by a literal zero always fails", op.symbol()),
            ));
        }
        let t = lower(operand)?;
        so_far = so_far.to(t.node.span);
        ty = arith_result(op, ty, t.ty, so_far)?;
        out.push((op, t.node));
    }
    Ok(typed(
        NodeKind::Arith(Box::new(first.node), out.into_boxed_slice()),
        span,
        ty,
    ))
}

fn arith_result(op: ArithOp, a: Type, b: Type, span: Span) -> R<Type> {
    let result = arith_type(op, a, b);
    if !result.is_never() {
        return Ok(result);
    }
    let hint = if op == ArithOp::Add && (a == Type::STRING || b == Type::STRING) {
        " (join text with format(\"{}{}\", a, b))"
    } else {
        ""
    };
    Err(type_error(
        span,
        format!(
            "`{}` cannot apply to {} and {}{hint}",
            op.symbol(),
            article(a),
            article(b)
        ),
    ))
}

fn cmp(a: Ast, op: CmpOp, b: Ast, span: Span) -> R<Typed> {
    let (x, y) = (lower(a)?, lower(b)?);
    if !may_compare(op, x.ty, y.ty) {
        let why = if op.is_equality() {
            " (it would always be false)"
        } else {
            ""
        };
        return Err(type_error(
            span,
            format!(
                "`{}` cannot compare {} with {}{why}",
                op.symbol(),
                article(x.ty),
                article(y.ty)
            ),
        ));
    }
    Ok(typed(
        NodeKind::Cmp(op, Box::new(x.node), Box::new(y.node)),
        span,
        Type::BOOL,
    ))
}

fn coalesce(items: Vec<Ast>, span: Span) -> R<Typed> {
    let n = items.len();
    let mut ty = Type::NEVER;
    let mut nodes = Vec::with_capacity(n);
    for (i, item) in items.into_iter().enumerate() {
        let t = lower(item)?;
        if i + 1 < n {
            if !t.ty.may_be(Type::NULL) {
                return Err(type_error(
                    t.node.span,
                    format!("this is never null ({}), so `??` has no effect", t.ty),
                ));
            }
            ty = ty.union(t.ty.without(Type::NULL));
        } else {
            ty = ty.union(t.ty);
        }
        nodes.push(t.node);
    }
    Ok(typed(NodeKind::Coalesce(nodes), span, ty))
}

fn cond(arms: Vec<(Ast, Ast)>, otherwise: Ast, span: Span) -> R<Typed> {
    let mut ty = Type::NEVER;
    let mut out = Vec::with_capacity(arms.len());
    for (c, v) in arms {
        let c = lower(c)?;
        need(&c, Type::BOOL, "a condition", "a boolean")?;
        let v = lower(v)?;
        ty = ty.union(v.ty);
        out.push((c.node, v.node));
    }
    let otherwise = lower(otherwise)?;
    ty = ty.union(otherwise.ty);
    Ok(typed(
        NodeKind::Cond(out, Box::new(otherwise.node)),
        span,
        ty,
    ))
}

fn booleans(items: Vec<Ast>, who: &str) -> R<Vec<Node>> {
    items
        .into_iter()
        .map(|x| {
            let t = lower(x)?;
            need(&t, Type::BOOL, who, "a boolean")?;
            Ok(t.node)
        })
        .collect()
}

fn unknown_name(name: &str, span: Span) -> CompileError {
    let e = CompileError::at(
        ErrorKind::UnknownName,
        span,
        format!("unknown name `{name}`"),
    );
    if FUNCTIONS.contains(&name) {
        return CompileError::at(
            ErrorKind::UnknownName,
            span,
            format!("`{name}` is a function"),
        )
        .suggest(format!("{name}()"));
    }
    // Only a near miss of a keyword (`True`, `tags`) is one; anything else
    // is most likely a field written without `$.`.
    let keywords = ["true", "false", "null", "tag", "time", "and", "or", "not"];
    let lower = name.to_lowercase();
    let near = keywords
        .into_iter()
        .find(|k| lower.len() >= 3 && ulog_engine::suggest::levenshtein(&lower, k) <= 1);
    match near {
        Some(k) => e.suggest(k),
        None => CompileError::at(
            ErrorKind::UnknownName,
            span,
            format!("unknown name `{name}` (record fields are read as `$.name`)"),
        )
        .suggest(format!("$.{name}")),
    }
}

/// `base.key` or `base[i]`: a longer record path, a tag part, or an index
/// into a computed value.
fn index(base: Ast, seg: Seg, span: Span) -> R<Typed> {
    let b = lower(base)?;
    Ok(match b.node.kind {
        NodeKind::Field { mut path, slot } => {
            path.push(seg);
            typed(NodeKind::Field { path, slot }, span, Type::ANY)
        }
        NodeKind::Tag => match seg {
            Seg::Index(i) => typed(NodeKind::TagPart(i), span, Type::STRING.union(Type::NULL)),
            Seg::Key(_) => {
                return Err(type_error(
                    span,
                    "a tag's parts are read by number, from 0: `tag[1]`",
                ))
            }
        },
        kind => {
            let (wanted, what) = match seg {
                Seg::Index(_) => (Type::ARRAY, "an array"),
                Seg::Key(_) => (Type::OBJECT, "an object"),
            };
            if !b.ty.may_be(wanted) {
                return Err(type_error(
                    b.node.span,
                    format!(
                        "only {what} can be indexed like this, but this is {}",
                        article(b.ty)
                    ),
                ));
            }
            let base = Node {
                kind,
                span: b.node.span,
            };
            typed(NodeKind::Index(Box::new(base), seg), span, Type::ANY)
        }
    })
}

fn arity(name: &str, got: usize, min: usize, max: usize, span: Span) -> R<()> {
    if (min..=max).contains(&got) {
        return Ok(());
    }
    let wanted = match (min, max) {
        (a, b) if a == b => format!("{a}"),
        (a, usize::MAX) => format!("at least {a}"),
        (a, b) if b == a + 1 => format!("{a} or {b}"),
        (a, b) => format!("{a} to {b}"),
    };
    let plural = if max == 1 && min == 1 { "" } else { "s" };
    Err(CompileError::at(
        ErrorKind::Arity,
        span,
        format!("`{name}` takes {wanted} argument{plural}, got {got}"),
    ))
}

/// The text of a string literal argument, or why it must be one.
fn literal_string<'t>(arg: &'t Typed, who: &str, what: &str, why: &str) -> R<&'t str> {
    match &arg.node.kind {
        NodeKind::Lit(Val::Str(s)) => Ok(s),
        _ => Err(CompileError::at(
            ErrorKind::NotLiteral,
            arg.node.span,
            format!("{who}: {what} must be a string literal: {why}"),
        )),
    }
}

fn regex_literal(arg: &Typed, who: &str) -> R<Regex> {
    let pattern = literal_string(
        arg,
        who,
        "the pattern",
        "it is compiled once, with the expression, so a bad pattern is an error \
         before any event arrives and no event pays for compiling it",
    )?;
    RegexBuilder::new(pattern)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_SIZE_LIMIT)
        .build()
        .map_err(|e| {
            let text = e.to_string();
            let line = text
                .lines()
                .find_map(|l| l.strip_prefix("error: "))
                .unwrap_or(text.lines().next().unwrap_or("invalid regex"));
            CompileError::at(
                ErrorKind::BadLiteral,
                arg.node.span,
                format!("{who}: invalid regex: {line}"),
            )
        })
}

fn format_literal(arg: &Typed, who: &str) -> R<time::Format> {
    let fmt = literal_string(
        arg,
        who,
        "the time format",
        "it is checked and prepared once, with the expression",
    )?;
    time::compile_format(fmt)
        .map_err(|m| CompileError::at(ErrorKind::BadLiteral, arg.node.span, format!("{who}: {m}")))
}

/// The optional time-zone argument of a time function: fixed when it is a
/// literal (and checked now), else evaluated per event as the last argument.
fn zone_arg(arg: Option<Typed>, who: &str, args: &mut Vec<Node>) -> R<TzArg> {
    let Some(arg) = arg else {
        return Ok(TzArg::Utc);
    };
    if let NodeKind::Lit(Val::Str(name)) = &arg.node.kind {
        return match time::zone(name) {
            Some(tz) => Ok(TzArg::Fixed(tz)),
            None => {
                let e = CompileError::at(
                    ErrorKind::BadLiteral,
                    arg.node.span,
                    format!(
                        "{who}: unknown time zone {name:?} (IANA names such as \"Europe/London\", \"UTC\")"
                    ),
                );
                Err(match time::nearest_zone(name) {
                    Some(s) => e.suggest(format!("\"{s}\"")),
                    None => e,
                })
            }
        };
    }
    need(&arg, Type::STRING, who, "a time zone name (a string)")?;
    args.push(arg.node);
    Ok(TzArg::Dynamic)
}

/// Splits a `format` template into text and `{}` placeholders.
fn format_pieces(template: &str, span: Span) -> R<Vec<Piece>> {
    let mut pieces = Vec::new();
    let mut text = String::new();
    let mut chars = template.chars().peekable();
    while let Some(c) = chars.next() {
        match (c, chars.peek()) {
            ('{', Some('{')) | ('}', Some('}')) => {
                text.push(c);
                chars.next();
            }
            ('{', Some('}')) => {
                chars.next();
                if !text.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut text).into()));
                }
                pieces.push(Piece::Arg);
            }
            ('{', _) | ('}', _) => {
                return Err(CompileError::at(
                    ErrorKind::BadLiteral,
                    span,
                    "format: a placeholder is `{}`; write `{{` and `}}` for literal braces",
                ))
            }
            _ => text.push(c),
        }
    }
    if !text.is_empty() {
        pieces.push(Piece::Text(text.into()));
    }
    Ok(pieces)
}

/// A call: the name is checked, the arguments lowered, then the signature
/// checked (in [`check_call`], which does not recurse).
fn call(name: &str, name_span: Span, args: Vec<Ast>, span: Span) -> R<Typed> {
    if !FUNCTIONS.contains(&name) {
        let e = CompileError::at(
            ErrorKind::UnknownFunction,
            name_span,
            format!("unknown function `{name}`"),
        );
        return Err(
            match ulog_engine::suggest::closest(name, FUNCTIONS.iter().copied()) {
                Some(s) => e.suggest(s),
                None => e,
            },
        );
    }
    let args = args.into_iter().map(lower).collect::<R<Vec<_>>>()?;
    check_call(name, args, span)
}

fn plain(func: Func, args: Vec<Typed>, span: Span, ty: Type) -> Typed {
    with_zone(
        func,
        args.into_iter().map(|t| t.node).collect(),
        TzArg::Utc,
        span,
        ty,
    )
}

fn with_zone(func: Func, args: Vec<Node>, tz: TzArg, span: Span, ty: Type) -> Typed {
    typed(NodeKind::Call(Box::new(Call { func, args, tz })), span, ty)
}

/// Checks a known function's arguments and builds its node.
fn check_call(name: &str, mut a: Vec<Typed>, span: Span) -> R<Typed> {
    let who = &format!("`{name}`");
    let n = a.len();
    let args = |min: usize, max: usize| arity(name, n, min, max, span);
    const TEXT: Type = Type::STRING;
    Ok(match name {
        "contains" => {
            args(2, 2)?;
            need(&a[0], TEXT.union(Type::ARRAY), who, "a string or an array")?;
            if a[0].ty.is_within(TEXT) {
                need(&a[1], TEXT, who, "a string to look for")?;
            }
            plain(Func::Contains, a, span, Type::BOOL)
        }
        "starts_with" | "ends_with" => {
            args(2, 2)?;
            need(&a[0], TEXT, who, "a string")?;
            need(&a[1], TEXT, who, "a string")?;
            let f = if name == "starts_with" {
                Func::StartsWith
            } else {
                Func::EndsWith
            };
            plain(f, a, span, Type::BOOL)
        }
        "lower" | "upper" | "trim" => {
            args(1, 1)?;
            need(&a[0], TEXT, who, "a string")?;
            let f = match name {
                "lower" => Func::Lower,
                "upper" => Func::Upper,
                _ => Func::Trim,
            };
            plain(f, a, span, TEXT)
        }
        "len" => {
            args(1, 1)?;
            let of = TEXT.union(Type::ARRAY).union(Type::OBJECT);
            need(&a[0], of, who, "a string, an array or an object")?;
            plain(Func::Len, a, span, Type::INT)
        }
        "split" => {
            args(2, 2)?;
            need(&a[0], TEXT, who, "a string")?;
            need(&a[1], TEXT, who, "a string separator")?;
            if matches!(&a[1].node.kind, NodeKind::Lit(Val::Str(s)) if s.is_empty()) {
                return Err(CompileError::at(
                    ErrorKind::BadLiteral,
                    a[1].node.span,
                    "`split`: the separator is empty",
                ));
            }
            plain(Func::Split, a, span, Type::ARRAY)
        }
        "join" => {
            args(2, 2)?;
            need(&a[0], Type::ARRAY, who, "an array")?;
            need(&a[1], TEXT, who, "a string separator")?;
            plain(Func::Join, a, span, TEXT)
        }
        "replace" => {
            args(3, 3)?;
            for t in &a {
                need(t, TEXT, who, "strings")?;
            }
            plain(Func::Replace, a, span, TEXT)
        }
        "format" => {
            args(1, usize::MAX)?;
            let template = a.remove(0);
            let t = literal_string(
                &template,
                who,
                "the template",
                "its `{}` placeholders are counted against the values when the expression is compiled",
            )?;
            let pieces = format_pieces(t, template.node.span)?;
            let holes = pieces.iter().filter(|p| matches!(p, Piece::Arg)).count();
            if holes != n - 1 {
                return Err(CompileError::at(
                    ErrorKind::Arity,
                    span,
                    format!(
                        "`format`: the template has {holes} placeholder{} `{{}}` but {} value{} given",
                        if holes == 1 { "" } else { "s" },
                        n - 1,
                        if n - 1 == 1 { " is" } else { "s are" }
                    ),
                ));
            }
            for t in &a {
                need(t, Type::ANY.without(Type::NULL), who, "values to print")?;
            }
            plain(Func::Format(pieces.into_boxed_slice()), a, span, TEXT)
        }
        "matches" | "captures" => {
            args(2, 2)?;
            let re = regex_literal(&a[1], who)?;
            a.truncate(1);
            need(&a[0], TEXT, who, "a string")?;
            if name == "matches" {
                plain(Func::Matches(re), a, span, Type::BOOL)
            } else {
                if re.capture_names().flatten().next().is_none() {
                    return Err(CompileError::at(
                        ErrorKind::BadLiteral,
                        span,
                        "`captures`: the regex has no named group such as (?P<name>...); \
                         use capture(s, regex, 1) for numbered ones",
                    ));
                }
                plain(Func::Captures(re), a, span, Type::OBJECT.union(Type::NULL))
            }
        }
        "capture" => {
            args(3, 3)?;
            let re = regex_literal(&a[1], who)?;
            let group = capture_group(&re, &a[2])?;
            a.truncate(1);
            need(&a[0], TEXT, who, "a string")?;
            plain(Func::Capture(re, group), a, span, TEXT.union(Type::NULL))
        }
        "regex_replace" => {
            args(3, 3)?;
            let re = regex_literal(&a[1], who)?;
            a.remove(1);
            need(&a[0], TEXT, who, "a string")?;
            need(&a[1], TEXT, who, "a replacement string")?;
            plain(Func::RegexReplace(re), a, span, TEXT)
        }
        "to_int" | "to_float" => {
            args(1, 1)?;
            let from = Type::BOOL.union(Type::NUMBER).union(TEXT).union(Type::TIME);
            need(&a[0], from, who, "a number, a string, a bool or a time")?;
            if name == "to_int" {
                plain(Func::ToInt, a, span, Type::INT)
            } else {
                plain(Func::ToFloat, a, span, Type::FLOAT)
            }
        }
        "to_string" => {
            args(1, 1)?;
            need(&a[0], Type::ANY.without(Type::NULL), who, "a value")?;
            plain(Func::ToString, a, span, TEXT)
        }
        "to_time" => {
            args(1, 1)?;
            let from = Type::NUMBER.union(TEXT).union(Type::TIME);
            need(&a[0], from, who, "seconds since the epoch or RFC 3339 text")?;
            plain(Func::ToTime, a, span, Type::TIME)
        }
        "type_of" => {
            args(1, 1)?;
            plain(Func::TypeOf, a, span, TEXT)
        }
        "is_null" => {
            args(1, 1)?;
            plain(Func::IsNull, a, span, Type::BOOL)
        }
        "exists" => {
            args(1, 1)?;
            let t = a.remove(0);
            let kind = match t.node.kind {
                NodeKind::Field { path, slot } => NodeKind::ExistsField { path, slot },
                NodeKind::TagPart(i) => NodeKind::ExistsTagPart(i),
                _ => {
                    return Err(type_error(
                        t.node.span,
                        "`exists` takes a record field such as `$.a.b` or a tag part such as \
                         `tag[2]`; for other values use is_null(...)",
                    ))
                }
            };
            typed(kind, span, Type::BOOL)
        }
        "if" => {
            args(3, 3)?;
            need(&a[0], Type::BOOL, who, "a boolean condition")?;
            let (y, x, c) = (a.pop(), a.pop(), a.pop());
            let (Some(c), Some(x), Some(y)) = (c, x, y) else {
                unreachable!("arity checked")
            };
            let ty = x.ty.union(y.ty);
            typed(
                NodeKind::Cond(vec![(c.node, x.node)], Box::new(y.node)),
                span,
                ty,
            )
        }
        "now" => {
            args(0, 0)?;
            plain(Func::Now, a, span, Type::TIME)
        }
        "parse_time" | "format_time" => {
            args(2, 3)?;
            let zone = if n == 3 { a.pop() } else { None };
            let fmt = format_literal(&a[1], who)?;
            a.truncate(1);
            let value = a.remove(0);
            let (func, wanted, what, ty) = if name == "parse_time" {
                (Func::ParseTime(fmt), TEXT, "a string", Type::TIME)
            } else {
                (Func::FormatTime(fmt), Type::TIME, "a time", TEXT)
            };
            need(&value, wanted, who, what)?;
            let mut nodes = vec![value.node];
            let tz = zone_arg(zone, who, &mut nodes)?;
            with_zone(func, nodes, tz, span, ty)
        }
        "time_diff" => {
            args(2, 2)?;
            need(&a[0], Type::TIME, who, "two times")?;
            need(&a[1], Type::TIME, who, "two times")?;
            plain(Func::TimeDiff, a, span, Type::FLOAT)
        }
        "hour" | "weekday" => {
            args(1, 2)?;
            let zone = if n == 2 { a.pop() } else { None };
            let t = a.remove(0);
            need(&t, Type::TIME, who, "a time")?;
            let mut nodes = vec![t.node];
            let tz = zone_arg(zone, who, &mut nodes)?;
            let f = if name == "hour" {
                Func::Hour
            } else {
                Func::Weekday
            };
            with_zone(f, nodes, tz, span, Type::INT)
        }
        "abs" => {
            args(1, 1)?;
            need(&a[0], Type::NUMBER, who, "a number")?;
            let ty = a[0].ty.intersect(Type::NUMBER);
            plain(Func::Abs, a, span, ty)
        }
        "min" | "max" => {
            args(2, usize::MAX)?;
            let ty = orderable(&a, who, span)?;
            let f = if name == "min" { Func::Min } else { Func::Max };
            plain(f, a, span, ty)
        }
        "round" => {
            args(1, 2)?;
            need(&a[0], Type::NUMBER, who, "a number")?;
            let ty = if let Some(d) = a.get(1) {
                need(d, Type::INT, who, "an int number of digits")?;
                Type::FLOAT
            } else {
                Type::INT
            };
            plain(Func::Round, a, span, ty)
        }
        "floor" | "ceil" => {
            args(1, 1)?;
            need(&a[0], Type::NUMBER, who, "a number")?;
            let f = if name == "floor" {
                Func::Floor
            } else {
                Func::Ceil
            };
            plain(f, a, span, Type::INT)
        }
        _ => unreachable!("`{name}` is in FUNCTIONS but has no signature"),
    })
}

/// The group argument of `capture`, checked against the regex.
fn capture_group(re: &Regex, arg: &Typed) -> R<Group> {
    match &arg.node.kind {
        NodeKind::Lit(Val::Int(i)) => {
            let groups = re.captures_len();
            match usize::try_from(*i) {
                Ok(g) if g < groups => Ok(Group::Index(g)),
                _ => Err(CompileError::at(
                    ErrorKind::BadLiteral,
                    arg.node.span,
                    format!(
                        "`capture`: the regex has groups 0 to {}, not {i}",
                        groups - 1
                    ),
                )),
            }
        }
        NodeKind::Lit(Val::Str(g)) => {
            if re.capture_names().flatten().any(|x| x == g) {
                return Ok(Group::Name(g.as_ref().into()));
            }
            let names: Vec<&str> = re.capture_names().flatten().collect();
            let e = CompileError::at(
                ErrorKind::BadLiteral,
                arg.node.span,
                format!(
                    "`capture`: the regex has no group named {g:?} (it has: {})",
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ),
            );
            Err(match ulog_engine::suggest::closest(g, names) {
                Some(s) => e.suggest(format!("\"{s}\"")),
                None => e,
            })
        }
        _ => Err(CompileError::at(
            ErrorKind::NotLiteral,
            arg.node.span,
            "`capture`: the group must be a literal number or name, \
             so it is checked against the regex when the expression is compiled",
        )),
    }
}

/// The type of `min`/`max`: all arguments must share an orderable class
/// (numbers, strings or times).
fn orderable(a: &[Typed], who: &str, span: Span) -> R<Type> {
    let classes = [Type::NUMBER, Type::STRING, Type::TIME];
    let class = classes
        .into_iter()
        .filter(|c| a.iter().all(|t| t.ty.may_be(*c)))
        .fold(Type::NEVER, Type::union);
    if class.is_never() {
        let types: Vec<String> = a.iter().map(|t| t.ty.to_string()).collect();
        return Err(type_error(
            span,
            format!(
                "{who} needs values of one orderable type (numbers, strings or times), got {}",
                types.join(", ")
            ),
        ));
    }
    Ok(a.iter()
        .fold(Type::NEVER, |acc, t| acc.union(t.ty))
        .intersect(class))
}
