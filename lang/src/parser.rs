//! The pest grammar and the conversion of its parse tree into [`crate::ast`].
//!
//! pest types stay inside this module: the rest of the crate sees only the
//! AST and [`Diagnostic`]s. A syntax error stops the parse of its file (pest
//! does not recover), and is rewritten from pest's list of expected rules into
//! a human phrase ("expected `{`, found `listen`"). Problems the lenient
//! grammar lets through (unterminated strings, bad escapes, unknown units,
//! unset variables) are reported with exact spans and parsing goes on.

use std::sync::Arc;

use pest::error::{ErrorVariant, InputLocation};
use pest::iterators::Pair;
use pest::Parser as _;

use crate::ast::{
    Block, Entry, File, Include, Item, Label, Name, Param, Route, StrLit, Value, ValueKind,
};
use crate::diag::Diagnostic;
use crate::literal::{self, EnvFn};
use crate::source::{SourceFile, Span};

#[derive(pest_derive::Parser)]
#[grammar = "routes.pest"]
struct RoutesParser;

const KEYWORDS: [Rule; 5] = [
    Rule::kw_include,
    Rule::kw_input,
    Rule::kw_filter,
    Rule::kw_match,
    Rule::kw_label,
];

/// Parses one file. Returns `None` after a syntax error (reported in
/// `diags`); otherwise the tree, possibly holding [`ValueKind::Invalid`]
/// values for problems reported in `diags`.
pub(crate) fn parse(
    file: &Arc<SourceFile>,
    env: EnvFn<'_>,
    diags: &mut Vec<Diagnostic>,
) -> Option<File> {
    match RoutesParser::parse(Rule::file, file.text()) {
        Ok(pairs) => {
            let mut cx = Cx { file, env, diags };
            let items = pairs
                .filter(|p| p.as_rule() != Rule::EOI)
                .map(|p| cx.item(p))
                .collect();
            Some(File { items })
        }
        Err(e) => {
            let first = syntax_error(file, e, 0);
            let mut last_at = first.primary.as_ref().map_or(0, |s| s.start);
            diags.push(first);
            // Look for more syntax errors: resume at each later line that
            // starts an item in column 1, and report what fails there. A `}`
            // in column 1 is most likely the end of the block that failed,
            // so it is skipped rather than reported.
            let text = file.text();
            let mut start = 0;
            while let Some(next) = next_item_start(text, start, last_at) {
                start = next;
                let Err(e) = RoutesParser::parse(Rule::file, &text[start..]) else {
                    break;
                };
                let d = syntax_error(file, e, start);
                let at = d.primary.as_ref().map_or(start, |s| s.start);
                let stray_close = text[at..].starts_with('}') && file.line_col(at).1 == 1;
                if at != last_at && !stray_close {
                    diags.push(d);
                }
                last_at = at.max(start);
            }
            None
        }
    }
}

/// The start of the first line after `start` that begins, in column 1, with
/// an item keyword, on or after the line of `at`.
fn next_item_start(text: &str, start: usize, at: usize) -> Option<usize> {
    let from = text[..at.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let mut line = from;
    loop {
        if line > start {
            let rest = &text[line..];
            let keyword = ["input", "filter", "match", "label", "include"]
                .iter()
                .any(|k| {
                    rest.starts_with(k)
                        && !rest[k.len()..].starts_with(|c: char| {
                            c.is_ascii_alphanumeric() || c == '_' || c == '-'
                        })
                });
            if keyword {
                return Some(line);
            }
        }
        line += text[line..].find('\n')? + 1;
    }
}

struct Cx<'a, 'e> {
    file: &'a Arc<SourceFile>,
    env: EnvFn<'e>,
    diags: &'a mut Vec<Diagnostic>,
}

impl Cx<'_, '_> {
    fn span(&self, pair: &Pair<'_, Rule>) -> Span {
        let s = pair.as_span();
        Span::new(self.file, s.start(), s.end())
    }

    fn item(&mut self, pair: Pair<'_, Rule>) -> Item {
        let span = self.span(&pair);
        let rule = pair.as_rule();
        let mut inner = pair.into_inner();
        let keyword = self.span(&inner.next().expect("keyword"));
        match rule {
            Rule::include => {
                let path = self.string(inner.next().expect("path"));
                Item::Include(Include {
                    keyword,
                    path,
                    span,
                })
            }
            Rule::input_block => {
                let type_name = self.ident(inner.next().expect("type"));
                let block = self.body(type_name, inner.next().expect("body"));
                Item::Input(block)
            }
            Rule::filter_block | Rule::match_block => {
                let mut patterns = Vec::new();
                let mut type_name = None;
                let mut block = None;
                for p in inner {
                    match p.as_rule() {
                        Rule::pattern => patterns.push(self.string(p)),
                        Rule::type_name => type_name = Some(self.ident(p)),
                        Rule::body => {
                            let t = type_name.take().expect("type before body");
                            block = Some(self.body(t, p));
                        }
                        other => unreachable!("{other:?} in a route"),
                    }
                }
                let route = Route {
                    keyword,
                    patterns,
                    block: block.expect("body"),
                    span,
                };
                if rule == Rule::filter_block {
                    Item::Filter(route)
                } else {
                    Item::Match(route)
                }
            }
            Rule::label_block => {
                let name_pair = inner.next().expect("label name");
                let name = self.name(name_pair);
                let items = inner
                    .filter(|p| !matches!(p.as_rule(), Rule::open_brace | Rule::close_brace))
                    .map(|p| self.item(p))
                    .collect();
                Item::Label(Label {
                    keyword,
                    name,
                    items,
                    span,
                })
            }
            other => unreachable!("{other:?} as an item"),
        }
    }

    /// A `type_name` or `ident` pair.
    fn ident(&self, pair: Pair<'_, Rule>) -> Name {
        Name {
            value: pair.as_str().to_string(),
            span: self.span(&pair),
            complete: true,
        }
    }

    /// A `key` or `label_name` pair: an identifier or a string.
    fn name(&mut self, pair: Pair<'_, Rule>) -> Name {
        let inner = pair.into_inner().next().expect("name");
        if inner.as_rule() == Rule::ident {
            return self.ident(inner);
        }
        let lit = self.literal(inner);
        Name {
            value: lit.value,
            span: lit.span,
            complete: lit.complete,
        }
    }

    /// A pair wrapping one `string` or `bad_string`.
    fn string(&mut self, pair: Pair<'_, Rule>) -> StrLit {
        let inner = pair.into_inner().next().expect("string");
        self.literal(inner)
    }

    /// A `string` or `bad_string` pair itself.
    fn literal(&mut self, pair: Pair<'_, Rule>) -> StrLit {
        let span = self.span(&pair);
        let closed = pair.as_rule() == Rule::string;
        if !closed {
            self.diags.push(Diagnostic::error(
                "E-syntax",
                Some(span.clone()),
                "unterminated string: expected a closing `\"` before the end of the line",
            ));
        }
        literal::decode_string(span, closed, self.env, self.diags)
    }

    fn body(&mut self, type_name: Name, pair: Pair<'_, Rule>) -> Block {
        let end = pair.as_span().end();
        let mut entries = Vec::new();
        for p in pair.into_inner() {
            match p.as_rule() {
                Rule::param => {
                    let mut kv = p.into_inner();
                    let key = self.name(kv.next().expect("key"));
                    let _eq = kv.next();
                    let value = self.value(kv.next().expect("value"));
                    entries.push(Entry::Param(Param { key, value }));
                }
                Rule::nested_block => {
                    let mut tb = p.into_inner();
                    let t = self.ident(tb.next().expect("type"));
                    entries.push(Entry::Block(self.body(t, tb.next().expect("body"))));
                }
                _ => {}
            }
        }
        let span = Span::new(self.file, type_name.span.start, end);
        Block {
            type_name,
            entries,
            span,
        }
    }

    fn value(&mut self, pair: Pair<'_, Rule>) -> Value {
        let span = self.span(&pair);
        let inner = pair.into_inner().next().expect("value");
        let kind = match inner.as_rule() {
            Rule::string | Rule::bad_string => ValueKind::Str(self.literal(inner)),
            Rule::expr_lit => {
                let text = inner.as_str();
                ValueKind::Str(StrLit::verbatim(&text[1..text.len() - 1], span.clone()))
            }
            Rule::bad_expr_lit => {
                self.diags.push(Diagnostic::error(
                    "E-syntax",
                    Some(Span::char_at(self.file, span.start)),
                    "unterminated expression: no closing backtick (`) in the rest of the file",
                ));
                ValueKind::Invalid
            }
            Rule::regex => ValueKind::Regex(literal::regex(&span)),
            Rule::bad_regex => {
                self.diags.push(Diagnostic::error(
                    "E-syntax",
                    Some(span.clone()),
                    "unterminated regex: expected a closing `/` before the end of the line",
                ));
                ValueKind::Invalid
            }
            Rule::number => match literal::number(&span) {
                Ok(v) => v,
                Err(d) => {
                    self.diags.push(d);
                    ValueKind::Invalid
                }
            },
            Rule::boolean => ValueKind::Bool(inner.as_str() == "true"),
            Rule::list => ValueKind::List(
                inner
                    .into_inner()
                    .filter(|p| p.as_rule() == Rule::value)
                    .map(|p| self.value(p))
                    .collect(),
            ),
            Rule::map => {
                let mut entries: Vec<(Name, Value)> = Vec::new();
                for e in inner
                    .into_inner()
                    .filter(|p| p.as_rule() == Rule::map_entry)
                {
                    let mut kv = e.into_inner();
                    let key = self.name(kv.next().expect("key"));
                    let _eq = kv.next();
                    let value = self.value(kv.next().expect("value"));
                    if let Some((first, _)) = entries.iter().find(|(k, _)| k.value == key.value) {
                        self.diags.push(
                            Diagnostic::error(
                                "E-value",
                                Some(key.span.clone()),
                                format!("key `{}` is given twice in this map", key.value),
                            )
                            .note(format!("first given at {}", first.span.location())),
                        );
                    }
                    entries.push((key, value));
                }
                ValueKind::Map(entries)
            }
            other => unreachable!("{other:?} as a value"),
        };
        Value { kind, span }
    }
}

/// Turns pest's error into a diagnostic: the expected rules in words, what
/// was found instead, and a caret under it.
/// `e` comes from parsing the file's text from byte `base` on.
fn syntax_error(file: &Arc<SourceFile>, e: pest::error::Error<Rule>, base: usize) -> Diagnostic {
    let text = file.text();
    let pos = base
        + match e.location {
            InputLocation::Pos(p) => p,
            InputLocation::Span((s, _)) => s,
        };
    let positives = match &e.variant {
        ErrorVariant::ParsingError { positives, .. } => positives.clone(),
        ErrorVariant::CustomError { .. } => Vec::new(),
    };
    let mut rules: Vec<Rule> = Vec::new();
    for r in positives {
        if !rules.contains(&r) {
            rules.push(r);
        }
    }
    let has = |rules: &[Rule], r: Rule| rules.contains(&r);
    let any_keyword = KEYWORDS.iter().any(|k| has(&rules, *k));
    // Inside a label, a keyword or the closing brace is expected.
    let in_label = any_keyword && has(&rules, Rule::close_brace);
    let in_body = has(&rules, Rule::key) && has(&rules, Rule::type_name);
    rules.retain(|r| {
        !(KEYWORDS.contains(r) && *r != Rule::kw_input
            || *r == Rule::EOI && any_keyword
            || *r == Rule::close_brace && in_label
            || *r == Rule::type_name && in_body)
    });
    if any_keyword && !has(&rules, Rule::kw_input) {
        rules.insert(0, Rule::kw_input);
    }
    if rules.len() > 1 {
        rules.retain(|r| *r != Rule::comma);
    }
    // After a name, `=` (a parameter) is likelier meant than `{` (a block).
    if let Some(i) = rules.iter().position(|r| *r == Rule::eq) {
        rules.remove(i);
        rules.insert(0, Rule::eq);
    }
    let phrase = |r: &Rule| -> String {
        match r {
            Rule::kw_input if in_label => "`filter`, `match`, `include` or `}`".into(),
            Rule::kw_input => "`input`, `filter`, `match`, `label` or `include`".into(),
            Rule::EOI => "end of file".into(),
            Rule::type_name => "a plugin type name (like `file`)".into(),
            Rule::pattern => "a tag pattern string (like \"app.**\")".into(),
            Rule::path_string => "a quoted file path or glob (like \"conf.d/*.conf\")".into(),
            Rule::label_name => "a label name (an identifier or a string)".into(),
            Rule::key if in_body => "a parameter (`name = value`)".into(),
            Rule::key => "a map entry (`key = value`)".into(),
            Rule::value => "a value (string, number, duration, size, list, map or regex)".into(),
            Rule::open_brace => "`{`".into(),
            Rule::close_brace => "`}`".into(),
            Rule::open_bracket => "`[`".into(),
            Rule::close_bracket => "`]`".into(),
            Rule::eq => "`=`".into(),
            Rule::comma => "`,`".into(),
            other => format!("{other:?}"),
        }
    };
    let expected = pest::error::Error::new_from_pos(
        ErrorVariant::<Rule>::ParsingError {
            positives: rules.clone(),
            negatives: Vec::new(),
        },
        pest::Position::new(text, pos).unwrap_or_else(|| pest::Position::from_start(text)),
    )
    .renamed_rules(phrase)
    .variant
    .message()
    .into_owned();

    if rules.is_empty() {
        // pest gives up without expectations when its recursion guard trips.
        return Diagnostic::error(
            "E-syntax",
            Some(Span::char_at(file, pos)),
            "cannot read further: the lists or maps here are nested too deeply",
        );
    }
    let (mut found, len) = found_at(text, pos);
    let end_of_text = text.trim_end().len();
    let (mut at, mut len) = if pos >= end_of_text {
        (end_of_text, 0)
    } else {
        (pos, len)
    };
    // In the middle of a construct (after `=`, after a block's type name, ...)
    // the fault is that the line ends too early: point there rather than at
    // whatever starts the next line.
    const CONTINUATIONS: [Rule; 7] = [
        Rule::value,
        Rule::eq,
        Rule::pattern,
        Rule::type_name,
        Rule::open_brace,
        Rule::label_name,
        Rule::path_string,
    ];
    let prev_end = text[..pos.min(text.len())].trim_end().len();
    if at == pos && !rules.is_empty() && rules.iter().all(|r| CONTINUATIONS.contains(r)) {
        let (prev_line, _) = file.line_col(prev_end);
        let (line, _) = file.line_col(pos);
        if line > prev_line {
            found = if line == prev_line + 1 {
                format!("{found} on the next line")
            } else {
                format!("{found} on line {line}")
            };
            at = prev_end;
            len = 0;
        }
    }
    let mut d = Diagnostic::error(
        "E-syntax",
        Some(Span::new(file, at, at + len)),
        format!("{expected}, found {found}"),
    );
    // `input x {` without its `}` runs into the next block's keyword, which
    // then reads as a parameter name: say what probably happened.
    if has(&rules, Rule::eq) {
        let before = text[..pos].trim_end();
        let word_start = before
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
            .map_or(0, |i| i + 1);
        let word = &before[word_start..];
        if ["input", "filter", "match", "label", "include"].contains(&word) {
            d = Diagnostic::error(
                "E-syntax",
                Some(Span::new(file, word_start, before.len())),
                format!("expected `}}` before `{word}`; the block above is still open"),
            )
            .note(format!(
                "`{word}` starts a new block, so the `{{` above needs its `}}` first \
                 (read as a parameter name, `{word}` would need `=`, but {found} follows)"
            ));
        }
    }
    if found == "end of file" && has(&rules, Rule::close_brace) {
        d = d.note("a `{` is still open at the end of the file");
    }
    d
}

/// Describes the token at `pos` for "found ..." and returns its length.
fn found_at(text: &str, pos: usize) -> (String, usize) {
    let rest = &text[pos.min(text.len())..];
    let Some(c) = rest.chars().next() else {
        return ("end of file".into(), 0);
    };
    let is_word = |c: char| c.is_alphanumeric() || matches!(c, '_' | '-' | '.');
    let token: &str = if is_word(c) {
        let n = rest.find(|c: char| !is_word(c)).unwrap_or(rest.len());
        &rest[..n]
    } else if c == '"' {
        let line_end = rest.find(['\n', '\r']).unwrap_or(rest.len());
        let n = rest[1..line_end].find('"').map_or(line_end, |i| i + 2);
        &rest[..n]
    } else {
        &rest[..c.len_utf8()]
    };
    let shown: String = if token.chars().count() > 40 {
        token.chars().take(37).chain("...".chars()).collect()
    } else {
        token.to_string()
    };
    (format!("`{shown}`"), token.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_text(text: &str) -> (Option<File>, Vec<Diagnostic>) {
        let f = Arc::new(SourceFile::new("t.conf", None, text));
        let env = |name: &str| (name == "SET").then(|| "v".to_string());
        let mut diags = Vec::new();
        let file = parse(&f, &env, &mut diags);
        (file, diags)
    }

    fn syntax(text: &str) -> Diagnostic {
        let (file, diags) = parse_text(text);
        assert!(file.is_none(), "parsed: {text}");
        assert_eq!(diags.len(), 1, "{diags:?}");
        diags.into_iter().next().unwrap()
    }

    #[test]
    fn several_syntax_errors_in_one_file() {
        let text = "input http listen = 1 }\n\
                    match \"a\" file { path = }\n\
                    match \"ok\" null { }\n\
                    label l {\n\
                    match \"**\" null { x }\n\
                    }\n\
                    match file { }\n";
        let (file, diags) = parse_text(text);
        assert!(file.is_none());
        let at: Vec<(usize, usize)> = diags
            .iter()
            .map(|d| {
                let (_, l, c) = d.line_col().unwrap();
                (l, c)
            })
            .collect();
        // Line 6's `}` ends the label whose body failed: not reported.
        assert_eq!(at, [(1, 12), (2, 25), (5, 21), (7, 7)], "{diags:#?}");
    }

    #[test]
    fn expectations_read_like_english() {
        let d = syntax("input http listen = 1 }");
        assert_eq!(d.message, "expected `{`, found `listen`");
        assert_eq!(d.line_col().unwrap().2, 12);

        let d = syntax("input http {\n  listen = \n}");
        assert_eq!(
            d.message,
            "expected a value (string, number, duration, size, list, map or regex), found `}` on the next line"
        );
        assert_eq!(d.line_col().unwrap(), ("t.conf".into(), 2, 11));

        let d = syntax("match file { }");
        assert_eq!(
            d.message,
            "expected a tag pattern string (like \"app.**\"), found `file`"
        );

        let d = syntax("output file { }");
        assert_eq!(
            d.message,
            "expected `input`, `filter`, `match`, `label` or `include`, found `output`"
        );

        let d = syntax("input { }");
        assert!(
            d.message.starts_with("expected a plugin type name"),
            "{}",
            d.message
        );

        let d = syntax("input http { a = 1 ; }");
        assert_eq!(
            d.message,
            "expected a parameter (`name = value`) or `}`, found `;`"
        );

        let d = syntax("input http { a = [1, 2 }");
        assert!(d.message.contains("or `]`, found `}`"), "{}", d.message);

        let d = syntax("input http { a = { b } }");
        assert!(d.message.starts_with("expected `=`"), "{}", d.message);

        let d = syntax("label x { foo }");
        assert_eq!(
            d.message,
            "expected `filter`, `match`, `include` or `}`, found `foo`"
        );

        let d = syntax("input http { a = 1\n");
        assert!(d.message.ends_with("found end of file"), "{}", d.message);
        assert_eq!(d.line_col().unwrap().1, 1);
        assert_eq!(d.line_col().unwrap().2, 19);
    }

    #[test]
    fn missing_brace_before_next_block_is_explained() {
        let d = syntax("input http {\n  a = 1\n\nmatch \"**\" null { }\n");
        assert_eq!(d.line_col().unwrap(), ("t.conf".into(), 4, 1));
        assert_eq!(
            d.message,
            "expected `}` before `match`; the block above is still open"
        );
    }

    #[test]
    fn lenient_rules_give_precise_errors_and_go_on() {
        let (file, diags) =
            parse_text("input http {\n  a = \"open\n  b = 5sec\n  c = \"${NOPE}\"\n}\n");
        let file = file.expect("parsed");
        assert_eq!(diags.len(), 3, "{diags:?}");
        assert!(diags[0].message.starts_with("unterminated string"));
        assert_eq!(diags[1].code, "E-value");
        assert_eq!(diags[2].code, "E-env");
        let Item::Input(b) = &file.items[0] else {
            panic!()
        };
        assert_eq!(b.params().count(), 3);
    }
}
