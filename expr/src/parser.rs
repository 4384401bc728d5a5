//! The pest grammar and the conversion of its parse tree into [`crate::ast`].
//!
//! pest types stay inside this module. Before pest runs, the text is checked
//! against [`MAX_LEN`] and its bracket depth against [`MAX_DEPTH`]: pest
//! parses by recursion, and the grammar only recurses through brackets and
//! calls, so bounding their depth bounds the stack. Syntax errors are
//! rewritten from pest's list of expected rules into a phrase ("expected an
//! operator or end of expression, found `$`").

use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser as _;

use crate::ast::{ArithOp, Ast, AstKind, CmpOp, Span};
use crate::error::{CompileError, ErrorKind};
use crate::{MAX_DEPTH, MAX_LEN};

#[derive(pest_derive::Parser)]
#[grammar = "expr.pest"]
struct ExprParser;

type R<T> = Result<T, CompileError>;

/// Parses an expression into its syntax tree.
pub(crate) fn parse(source: &str) -> R<Ast> {
    if source.len() > MAX_LEN {
        return Err(CompileError::at(
            ErrorKind::TooLong,
            Span::new(MAX_LEN, source.len()),
            format!(
                "expression is {} bytes long, more than the {MAX_LEN} allowed",
                source.len()
            ),
        ));
    }
    check_nesting(source)?;
    let mut pairs = ExprParser::parse(Rule::main, source).map_err(|e| syntax_error(source, e))?;
    let main = pairs.next().expect("the grammar's main rule");
    let ternary = main.into_inner().next().expect("main holds one expression");
    lower(ternary)
}

fn is_ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Refuses brackets nested deeper than [`MAX_DEPTH`], reading strings the
/// way the grammar does so brackets inside them do not count.
fn check_nesting(source: &str) -> R<()> {
    let b = source.as_bytes();
    let mut depth = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'(' | b'[' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(CompileError::at(
                        ErrorKind::TooDeep,
                        Span::new(i, i + 1),
                        format!("brackets nested more than {MAX_DEPTH} levels deep"),
                    ));
                }
            }
            b')' | b']' => depth = depth.saturating_sub(1),
            quote @ (b'"' | b'\'') => {
                let raw = i > 0 && b[i - 1] == b'r' && (i < 2 || !is_ident_byte(b[i - 2]));
                i += 1;
                while i < b.len() && b[i] != quote {
                    i += if !raw && b[i] == b'\\' { 2 } else { 1 };
                }
            }
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// What a rule stands for in "expected ..." messages.
fn describe(rule: Rule) -> &'static str {
    match rule {
        Rule::EOI => "end of expression",
        Rule::member
        | Rule::index
        | Rule::question
        | Rule::coalesce_op
        | Rule::or_op
        | Rule::and_op
        | Rule::cmp_op
        | Rule::c_eq
        | Rule::open_bracket
        | Rule::add_op
        | Rule::mul_op => "an operator",
        Rule::colon => "`:`",
        Rule::comma => "`,`",
        Rule::close_paren => "`)`",
        Rule::close_bracket => "`]`",
        Rule::name => "a field name",
        _ => "an expression",
    }
}

/// The offending text at `at`, for "found ...".
fn found(source: &str, at: usize) -> String {
    let rest = &source[at..];
    let Some(c) = rest.chars().next() else {
        return "end of expression".into();
    };
    let word: String = if c.is_alphanumeric() || c == '_' {
        rest.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .take(20)
            .collect()
    } else {
        c.to_string()
    };
    format!("`{word}`")
}

fn syntax_error(source: &str, e: pest::error::Error<Rule>) -> CompileError {
    let at = match e.location {
        InputLocation::Pos(p) => p,
        InputLocation::Span((s, _)) => s,
    }
    .min(source.len());
    let message = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => {
            let mut wanted: Vec<&str> = Vec::new();
            for r in positives {
                let d = describe(*r);
                if !wanted.contains(&d) {
                    wanted.push(d);
                }
            }
            wanted.sort_by_key(|w| {
                [
                    "an expression",
                    "a field name",
                    "an operator",
                    "`,`",
                    "`)`",
                    "`]`",
                    "`:`",
                    "end of expression",
                ]
                .iter()
                .position(|x| x == w)
            });
            let list = match wanted.as_slice() {
                [] => "something else".to_string(),
                [one] => (*one).to_string(),
                [init @ .., last] => format!("{} or {last}", init.join(", ")),
            };
            format!("expected {list}, found {}", found(source, at))
        }
        // pest's own guard: it stops before the thread's stack runs out.
        ErrorVariant::CustomError { message } if message.contains("limit reached") => {
            return CompileError::at(
                ErrorKind::TooDeep,
                Span::new(at, at),
                "expression nested too deeply for this thread's stack",
            );
        }
        ErrorVariant::CustomError { message } => message.clone(),
    };
    let len = source[at..].chars().next().map_or(0, char::len_utf8);
    CompileError::at(ErrorKind::Syntax, Span::new(at, at + len), message)
}

fn span(p: &Pair<'_, Rule>) -> Span {
    let s = p.as_span();
    Span::new(s.start(), s.end())
}

fn wrong_operator(p: &Pair<'_, Rule>, message: &str, instead: &str) -> CompileError {
    CompileError::at(ErrorKind::Syntax, span(p), message).suggest(instead)
}

/// Skips the levels of the precedence ladder that hold a single operand
/// (and the parentheses around one), so `((1))` or a lone `$.a` costs no
/// recursion: only real operators and brackets nest calls.
fn skip_single(mut p: Pair<'_, Rule>) -> Pair<'_, Rule> {
    loop {
        match p.as_rule() {
            Rule::ternary
            | Rule::or_expr
            | Rule::and_expr
            | Rule::not_expr
            | Rule::cmp_expr
            | Rule::coalesce
            | Rule::sum
            | Rule::product
            | Rule::unary
            | Rule::postfix => {
                let mut inner = p.clone().into_inner();
                match (inner.next(), inner.next()) {
                    (Some(only), None) => p = only,
                    _ => return p,
                }
            }
            Rule::paren => match p
                .clone()
                .into_inner()
                .find(|q| q.as_rule() == Rule::ternary)
            {
                Some(inner) => p = inner,
                None => return p,
            },
            _ => return p,
        }
    }
}

/// One expression-level pair into a tree. Kept small (each form has its own
/// function), because it is on the stack once per level of nesting.
fn lower(p: Pair<'_, Rule>) -> R<Ast> {
    let p = skip_single(p);
    match p.as_rule() {
        Rule::ternary => ternary(p),
        Rule::or_expr | Rule::and_expr | Rule::coalesce => chain(p),
        Rule::not_expr => not_expr(p),
        Rule::cmp_expr => cmp_expr(p),
        Rule::sum | Rule::product => arith(p),
        Rule::unary => unary(p),
        Rule::postfix => postfix(p),
        _ => primary(p),
    }
}

fn ternary(p: Pair<'_, Rule>) -> R<Ast> {
    let sp = span(&p);
    let mut inner = p.into_inner();
    let first = lower(inner.next().expect("a condition"))?;
    let mut conds = vec![first];
    let mut values = Vec::new();
    while let Some(_question) = inner.next() {
        values.push(lower(inner.next().expect("a value"))?);
        let _colon = inner.next();
        conds.push(lower(inner.next().expect("an alternative"))?);
    }
    if values.is_empty() {
        return Ok(conds.pop().expect("one operand"));
    }
    // a ? b : c ? d : e  is  a ? b : (c ? d : e).
    let otherwise = conds.pop().expect("an alternative");
    let arms = conds.into_iter().zip(values).collect();
    Ast::new(AstKind::Cond(arms, Box::new(otherwise)), sp)
}

/// `or`, `and` and `??`: operands of one operator, flat.
fn chain(p: Pair<'_, Rule>) -> R<Ast> {
    let sp = span(&p);
    let rule = p.as_rule();
    let mut items = Vec::new();
    for q in p.into_inner() {
        match q.as_rule() {
            Rule::or_op | Rule::and_op => {
                let c_style = q.clone().into_inner().next().map(|x| x.as_rule());
                if c_style == Some(Rule::c_or) {
                    return Err(wrong_operator(&q, "`||` is not an operator", "or"));
                }
                if c_style == Some(Rule::c_and) {
                    return Err(wrong_operator(&q, "`&&` is not an operator", "and"));
                }
            }
            Rule::coalesce_op => {}
            _ => items.push(lower(q)?),
        }
    }
    if items.len() == 1 {
        return Ok(items.pop().expect("one operand"));
    }
    let kind = match rule {
        Rule::or_expr => AstKind::Or(items),
        Rule::and_expr => AstKind::And(items),
        _ => AstKind::Coalesce(items),
    };
    Ast::new(kind, sp)
}

fn not_expr(p: Pair<'_, Rule>) -> R<Ast> {
    let mut nots = Vec::new();
    let mut operand = None;
    for q in p.into_inner() {
        if q.as_rule() == Rule::not_op {
            if q.clone().into_inner().next().map(|x| x.as_rule()) == Some(Rule::c_not) {
                return Err(wrong_operator(&q, "`!` is not an operator", "not"));
            }
            nots.push(span(&q));
        } else {
            operand = Some(lower(q)?);
        }
    }
    let mut x = operand.expect("an operand");
    for at in nots.into_iter().rev() {
        let s = at.to(x.span);
        x = Ast::new(AstKind::Not(Box::new(x)), s)?;
    }
    Ok(x)
}

fn cmp_expr(p: Pair<'_, Rule>) -> R<Ast> {
    let sp = span(&p);
    let mut inner = p.into_inner();
    let a = lower(inner.next().expect("an operand"))?;
    let Some(op) = inner.next() else {
        return Ok(a);
    };
    let cmp = match op.as_str() {
        "==" => CmpOp::Eq,
        "!=" => CmpOp::Ne,
        "<" => CmpOp::Lt,
        "<=" => CmpOp::Le,
        ">" => CmpOp::Gt,
        ">=" => CmpOp::Ge,
        _ => return Err(wrong_operator(&op, "`=` is not an operator", "==")),
    };
    let b = lower(inner.next().expect("an operand"))?;
    Ast::new(AstKind::Cmp(Box::new(a), cmp, Box::new(b)), sp)
}

fn arith(p: Pair<'_, Rule>) -> R<Ast> {
    let sp = span(&p);
    let mut inner = p.into_inner();
    let first = lower(inner.next().expect("an operand"))?;
    let mut rest = Vec::new();
    while let Some(op) = inner.next() {
        let arith = match op.as_str() {
            "+" => ArithOp::Add,
            "-" => ArithOp::Sub,
            "*" => ArithOp::Mul,
            "/" => ArithOp::Div,
            _ => ArithOp::Rem,
        };
        rest.push((arith, lower(inner.next().expect("an operand"))?));
    }
    if rest.is_empty() {
        return Ok(first);
    }
    Ast::new(AstKind::Arith(Box::new(first), rest), sp)
}

fn unary(p: Pair<'_, Rule>) -> R<Ast> {
    let mut negs: Vec<Span> = Vec::new();
    let mut operand = None;
    for q in p.into_inner() {
        if q.as_rule() == Rule::neg {
            negs.push(span(&q));
        } else {
            operand = Some(q);
        }
    }
    let operand = operand.expect("an operand");
    // `-9223372036854775808` is a literal, not the negation of an int too
    // large to exist.
    let mut x = match (negs.last(), bare_number(&operand)) {
        (Some(&minus), Some(digits)) => {
            negs.pop();
            number(&format!("-{}", digits.as_str()), minus.to(span(&digits)))?
        }
        _ => lower(operand)?,
    };
    for at in negs.into_iter().rev() {
        let s = at.to(x.span);
        x = Ast::new(AstKind::Neg(Box::new(x)), s)?;
    }
    Ok(x)
}

fn postfix(p: Pair<'_, Rule>) -> R<Ast> {
    let mut inner = p.into_inner();
    let mut x = lower(inner.next().expect("a primary"))?;
    for q in inner {
        let s = x.span.to(span(&q));
        x = match q.as_rule() {
            Rule::member => {
                let name = q.into_inner().next().expect("a name").as_str().to_owned();
                Ast::new(AstKind::Member(Box::new(x), name), s)?
            }
            _ => {
                let idx = q
                    .into_inner()
                    .find(|r| r.as_rule() == Rule::ternary)
                    .expect("an index");
                Ast::new(AstKind::Index(Box::new(x), Box::new(lower(idx)?)), s)?
            }
        };
    }
    Ok(x)
}

/// The `number` pair when `postfix` is a bare number literal.
fn bare_number<'i>(postfix: &Pair<'i, Rule>) -> Option<Pair<'i, Rule>> {
    let mut inner = postfix.clone().into_inner();
    let first = inner.next()?;
    (first.as_rule() == Rule::number && inner.next().is_none()).then_some(first)
}

fn number(text: &str, sp: Span) -> R<Ast> {
    let is_float = text.contains(['.', 'e', 'E']);
    let kind = if is_float {
        match text.parse::<f64>() {
            Ok(f) if f.is_finite() => AstKind::Float(f),
            _ => {
                return Err(CompileError::at(
                    ErrorKind::BadLiteral,
                    sp,
                    "float literal out of range",
                ))
            }
        }
    } else {
        match text.parse::<i64>() {
            Ok(i) => AstKind::Int(i),
            Err(_) => {
                return Err(CompileError::at(
                    ErrorKind::BadLiteral,
                    sp,
                    "integer literal out of range (an int is 64 bits: ±9223372036854775807)",
                ))
            }
        }
    };
    Ast::new(kind, sp)
}

fn items(p: Pair<'_, Rule>) -> R<Vec<Ast>> {
    p.into_inner()
        .filter(|q| q.as_rule() == Rule::ternary)
        .map(lower)
        .collect()
}

fn primary(p: Pair<'_, Rule>) -> R<Ast> {
    let sp = span(&p);
    let kind = match p.as_rule() {
        Rule::paren => {
            let inner = p
                .into_inner()
                .find(|q| q.as_rule() == Rule::ternary)
                .expect("an expression in parentheses");
            return lower(inner);
        }
        Rule::array => AstKind::Array(items(p)?),
        Rule::number => return number(p.as_str(), sp),
        Rule::string => {
            let text = p.into_inner().next().expect("string text");
            AstKind::Str(unescape(text.as_str(), text.as_span().start())?)
        }
        Rule::raw_string => {
            let text = p.into_inner().next().expect("string text");
            AstKind::Str(text.as_str().to_owned())
        }
        Rule::unterminated => {
            let quote = if p.as_str().starts_with('r') { 2 } else { 1 };
            return Err(CompileError::at(
                ErrorKind::Syntax,
                Span::new(sp.start, sp.start + quote),
                "unterminated string: this quote is never closed",
            ));
        }
        Rule::call => {
            let mut inner = p.into_inner();
            let name = inner.next().expect("a function name");
            let name_span = span(&name);
            let name = name.as_str().to_owned();
            let args = inner
                .filter(|q| q.as_rule() == Rule::ternary)
                .map(lower)
                .collect::<R<Vec<_>>>()?;
            AstKind::Call {
                name,
                name_span,
                args,
            }
        }
        Rule::kw_true => AstKind::Bool(true),
        Rule::kw_false => AstKind::Bool(false),
        Rule::kw_null => AstKind::Null,
        Rule::root => AstKind::Root,
        Rule::kw_tag => AstKind::Tag,
        Rule::kw_time => AstKind::Time,
        Rule::ident => AstKind::Ident(p.as_str().to_owned()),
        rule => unreachable!("the grammar has no other primary: {rule:?}"),
    };
    Ast::new(kind, sp)
}

/// The value of a quoted string's text starting at byte `start` of the
/// source: `\n \r \t \0 \\ \" \' \/`, `\u{1F600}` and `\u00e9` (with
/// surrogate pairs).
fn unescape(text: &str, start: usize) -> R<String> {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        let bad = |len: usize, msg: String| {
            CompileError::at(
                ErrorKind::BadLiteral,
                Span::new(start + i, start + i + len),
                msg,
            )
        };
        let Some((_, e)) = chars.next() else {
            return Err(bad(1, "a backslash ends the string".into()));
        };
        match e {
            'n' => out.push('\n'),
            'r' => out.push('\r'),
            't' => out.push('\t'),
            '0' => out.push('\0'),
            '\\' | '"' | '\'' | '/' => out.push(e),
            'u' => {
                let rest = &text[i + 2..];
                let (code, used) = if let Some(braced) = rest.strip_prefix('{') {
                    let end = braced.find('}').filter(|&n| (1..=6).contains(&n));
                    let Some(end) = end else {
                        return Err(bad(
                            2,
                            "`\\u{...}` needs 1 to 6 hex digits and a `}`".into(),
                        ));
                    };
                    let Ok(code) = u32::from_str_radix(&braced[..end], 16) else {
                        return Err(bad(end + 4, "`\\u{...}` needs hex digits".into()));
                    };
                    (code, end + 2)
                } else {
                    let hex = |s: &str| {
                        s.get(..4)
                            .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                            .and_then(|h| u32::from_str_radix(h, 16).ok())
                    };
                    let Some(hi) = hex(rest) else {
                        return Err(bad(2, "`\\u` needs 4 hex digits (or `\\u{...}`)".into()));
                    };
                    if (0xD800..0xDC00).contains(&hi) {
                        let lo = rest
                            .get(4..)
                            .and_then(|r| r.strip_prefix("\\u"))
                            .and_then(hex);
                        match lo {
                            Some(lo) if (0xDC00..0xE000).contains(&lo) => {
                                (0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00), 10)
                            }
                            _ => return Err(bad(6, "a lone surrogate in `\\u` escape".into())),
                        }
                    } else {
                        (hi, 4)
                    }
                };
                let Some(ch) = char::from_u32(code) else {
                    return Err(bad(
                        used + 2,
                        format!("`\\u` escape {code:#x} is not a character"),
                    ));
                };
                out.push(ch);
                for _ in 0..used {
                    chars.next();
                }
            }
            other => {
                return Err(bad(
                    1 + other.len_utf8(),
                    format!(
                        "unknown escape `\\{other}`: write `\\\\{other}`, or use a raw string r\"...\" (for regexes)"
                    ),
                ));
            }
        }
    }
    Ok(out)
}
