//! Tag patterns with fluentd's semantics.
//!
//! fluentd turns a pattern into a regular expression (`lib/fluent/match.rb`);
//! ulog compiles the same constructs into a small node list and matches it by
//! backtracking over the tag's bytes, with shortcuts for the common shapes
//! (exact tag, `prefix.**`, `**`). The rules:
//!
//! - `*` matches any run of characters within one part (no `.`);
//! - `**` matches zero or more parts: `a.**` matches `a`, `a.b` and `a.b.c`;
//!   `**.a` matches `a` and `x.y.a`; a `**` not next to a dot (`a**`) matches
//!   any characters, dots included;
//! - `{x,y}` matches either alternative; alternatives may hold wildcards and
//!   nest;
//! - `\c` matches the character `c` literally.

use std::fmt;

/// A pattern that could not be compiled, with the byte offset of the fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct PatternError {
    /// Byte offset in the pattern text where the problem is.
    pub offset: usize,
    /// What is wrong and what was expected.
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    /// One literal byte.
    Lit(u8),
    /// `*`: any run of bytes without a dot.
    Star,
    /// `**` not followed by a dot: any run of bytes.
    Any,
    /// A dot before `**`: the tag is at its end or at a dot (nothing consumed).
    AtDotOrEnd,
    /// `**.`: the start of the tag, or any bytes ending in a dot.
    StartOrAnyDot,
    /// `{a,b}`.
    Alt(Vec<Vec<Node>>),
}

#[derive(Clone, Debug)]
enum Shape {
    /// No wildcard at all.
    Exact(Box<str>),
    /// `**`.
    All,
    /// `literal.**`.
    Prefix(Box<str>),
    /// Anything else.
    General(Vec<Node>),
}

/// One compiled tag pattern.
#[derive(Clone)]
pub struct TagPattern {
    text: Box<str>,
    shape: Shape,
}

impl fmt::Debug for TagPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TagPattern({:?})", self.text)
    }
}

impl fmt::Display for TagPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl TagPattern {
    /// Compiles a pattern, refusing one that is malformed or can never match a
    /// valid tag.
    pub fn new(text: &str) -> Result<Self, PatternError> {
        check_parts(text)?;
        let nodes = Compiler { text, pos: 0 }.compile()?;
        let shape = shape_of(text, nodes);
        Ok(Self {
            text: text.into(),
            shape,
        })
    }

    /// The pattern's source text.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// True if the pattern matches every tag (`**`).
    pub fn matches_everything(&self) -> bool {
        matches!(self.shape, Shape::All)
    }

    /// The exact tag this pattern matches, when it has no wildcard.
    pub fn exact(&self) -> Option<&str> {
        match &self.shape {
            Shape::Exact(s) => Some(s),
            _ => None,
        }
    }

    /// Does `tag` match?
    pub fn matches(&self, tag: &str) -> bool {
        match &self.shape {
            Shape::Exact(s) => **s == *tag,
            Shape::All => true,
            Shape::Prefix(p) => {
                tag.starts_with(&**p) && (tag.len() == p.len() || tag.as_bytes()[p.len()] == b'.')
            }
            Shape::General(nodes) => match_seq(nodes, &Cont::End, tag.as_bytes(), 0),
        }
    }
}

/// Several patterns of one block: it matches if any of them does.
#[derive(Clone, Debug, Default)]
pub struct PatternSet {
    patterns: Vec<TagPattern>,
}

impl PatternSet {
    /// A set from already compiled patterns.
    pub fn new(patterns: Vec<TagPattern>) -> Self {
        Self { patterns }
    }

    /// Compiles every pattern; the error names the index of the first bad one.
    pub fn parse<S: AsRef<str>>(texts: &[S]) -> Result<Self, (usize, PatternError)> {
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| TagPattern::new(t.as_ref()).map_err(|e| (i, e)))
            .collect::<Result<Vec<_>, _>>()
            .map(Self::new)
    }

    /// The patterns.
    pub fn patterns(&self) -> &[TagPattern] {
        &self.patterns
    }

    /// Does any pattern match `tag`?
    pub fn matches(&self, tag: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(tag))
    }

    /// True if one of the patterns is `**`.
    pub fn matches_everything(&self) -> bool {
        self.patterns.iter().any(TagPattern::matches_everything)
    }
}

impl fmt::Display for PatternSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.patterns.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{:?}", p.as_str())?;
        }
        Ok(())
    }
}

fn check_parts(text: &str) -> Result<(), PatternError> {
    if text.is_empty() {
        return Err(PatternError {
            offset: 0,
            message: "empty tag pattern; use \"**\" to match every tag".into(),
        });
    }
    let bytes = text.as_bytes();
    let mut escaped = false;
    for (i, &b) in bytes.iter().enumerate() {
        if escaped {
            escaped = false;
            continue;
        }
        if b == b'\\' {
            escaped = true;
            continue;
        }
        if b == b'.' {
            let prev = if i == 0 { None } else { Some(bytes[i - 1]) };
            let next = bytes.get(i + 1).copied();
            let empty_before = matches!(prev, None | Some(b'.' | b'{' | b','));
            let empty_after = matches!(next, None | Some(b'.' | b'}' | b','));
            if empty_before || empty_after {
                return Err(PatternError {
                    offset: i,
                    message: "empty tag part: a '.' must stand between two non-empty parts".into(),
                });
            }
        }
    }
    Ok(())
}

fn shape_of(text: &str, nodes: Vec<Node>) -> Shape {
    let literal = |ns: &[Node]| -> Option<String> {
        ns.iter()
            .map(|n| match n {
                Node::Lit(b) => Some(*b as char),
                _ => None,
            })
            .collect()
    };
    if let Some(s) = literal(&nodes) {
        return Shape::Exact(s.into());
    }
    if text == "**" {
        return Shape::All;
    }
    if let [head @ .., Node::AtDotOrEnd, Node::Any] = nodes.as_slice() {
        if let Some(p) = literal(head) {
            return Shape::Prefix(p.into());
        }
    }
    Shape::General(nodes)
}

struct Compiler<'a> {
    text: &'a str,
    pos: usize,
}

impl Compiler<'_> {
    fn compile(mut self) -> Result<Vec<Node>, PatternError> {
        let nodes = self.sequence(0)?;
        Ok(nodes)
    }

    fn err(&self, offset: usize, message: impl Into<String>) -> PatternError {
        PatternError {
            offset,
            message: message.into(),
        }
    }

    /// Compiles until the end, or until `,`/`}` when inside `depth` braces.
    fn sequence(&mut self, depth: usize) -> Result<Vec<Node>, PatternError> {
        let bytes = self.text.as_bytes();
        let mut out = Vec::new();
        let mut dot = false;
        while self.pos < bytes.len() {
            let i = self.pos;
            let c = bytes[i];
            if c == b'*' && bytes.get(i + 1) == Some(&b'*') {
                if dot {
                    out.push(Node::AtDotOrEnd);
                    dot = false;
                }
                if bytes.get(i + 2) == Some(&b'.') {
                    out.push(Node::StartOrAnyDot);
                    self.pos += 3;
                } else {
                    out.push(Node::Any);
                    self.pos += 2;
                }
                continue;
            }
            if dot {
                out.push(Node::Lit(b'.'));
                dot = false;
            }
            match c {
                b'\\' => {
                    let Some(&next) = bytes.get(i + 1) else {
                        return Err(self.err(i, "a '\\' at the end of a pattern escapes nothing"));
                    };
                    out.push(Node::Lit(next));
                    self.pos += 2;
                    continue;
                }
                b'.' => dot = true,
                b'*' => out.push(Node::Star),
                b'{' => {
                    self.pos += 1;
                    let mut alts = Vec::new();
                    loop {
                        alts.push(self.sequence(depth + 1)?);
                        match bytes.get(self.pos) {
                            Some(b',') => self.pos += 1,
                            Some(b'}') => break,
                            _ => return Err(self.err(
                                i,
                                "unclosed '{': expected ',' or '}' before the end of the pattern",
                            )),
                        }
                    }
                    out.push(Node::Alt(alts));
                }
                b'}' | b',' if depth > 0 => return Ok(out),
                b'}' => return Err(self.err(i, "'}' without a matching '{'")),
                b',' => {
                    return Err(self.err(
                        i,
                        "',' outside '{...}'; to match several tags write several patterns",
                    ))
                }
                c if c.is_ascii_alphanumeric() || c == b'_' || c == b'-' => out.push(Node::Lit(c)),
                _ => {
                    let ch = self.text[i..].chars().next().unwrap_or('?');
                    return Err(self.err(
                        i,
                        format!(
                            "the character {ch:?} can never appear in a tag (allowed: A-Z a-z 0-9 _ - . and the wildcards * ** {{a,b}})"
                        ),
                    ));
                }
            }
            self.pos += 1;
        }
        if dot {
            // Unreachable thanks to check_parts, kept for safety: a trailing
            // dot adds nothing, as in fluentd.
        }
        Ok(out)
    }
}

/// What remains to match after the current sequence.
enum Cont<'a> {
    End,
    Then(&'a [Node], &'a Cont<'a>),
}

fn match_cont(k: &Cont<'_>, s: &[u8], i: usize) -> bool {
    match k {
        Cont::End => i == s.len(),
        Cont::Then(seq, rest) => match_seq(seq, rest, s, i),
    }
}

fn match_seq(seq: &[Node], k: &Cont<'_>, s: &[u8], i: usize) -> bool {
    let Some((node, tail)) = seq.split_first() else {
        return match_cont(k, s, i);
    };
    match node {
        Node::Lit(c) => s.get(i) == Some(c) && match_seq(tail, k, s, i + 1),
        Node::Star => {
            let end = s[i..]
                .iter()
                .position(|&b| b == b'.')
                .map_or(s.len(), |p| i + p);
            (i..=end).any(|j| match_seq(tail, k, s, j))
        }
        Node::Any => (i..=s.len()).any(|j| match_seq(tail, k, s, j)),
        Node::AtDotOrEnd => (i == s.len() || s[i] == b'.') && match_seq(tail, k, s, i),
        Node::StartOrAnyDot => {
            (i == 0 && match_seq(tail, k, s, 0))
                || (i + 1..=s.len()).any(|j| s[j - 1] == b'.' && match_seq(tail, k, s, j))
        }
        Node::Alt(alts) => {
            let next = Cont::Then(tail, k);
            alts.iter().any(|alt| match_seq(alt, &next, s, i))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (pattern, tag, expected): fluentd's documented behaviour, case by case.
    const CASES: &[(&str, &str, bool)] = &[
        // literals
        ("a", "a", true),
        ("a.b", "a.b", true),
        ("a", "b", false),
        ("a.b", "aab", false),
        ("a.b", "a.b.c", false),
        ("a.b.c", "a.b", false),
        // * within one part
        ("a*", "a", true),
        ("a*", "ab", true),
        ("a*", "a.b", false),
        ("*a", "cba", true),
        ("*a*", "bac", true),
        ("*", "anything", true),
        ("*", "a.b", false),
        ("a.*", "a.b", true),
        ("a.*", "a", false),
        ("a.*", "a.b.c", false),
        ("*.a", "b.a", true),
        ("*.a", "a", false),
        ("a.*.c", "a.b.c", true),
        ("a.*.c", "a.b.x.c", false),
        // ** at the end
        ("a.**", "a", true),
        ("a.**", "a.b", true),
        ("a.**", "a.b.c.d.e", true),
        ("a.**", "ab", false),
        ("a.**", "ab.c", false),
        ("a**", "a", true),
        ("a**", "ab.d.e", true),
        ("**", "a", true),
        ("**", "a.b.c", true),
        // ** at the start
        ("**.a", "a", true),
        ("**.a", "b.a", true),
        ("**.a", "d.e.a", true),
        ("**.a", "ba", false),
        ("**.a", "c.ba", false),
        ("**a", "c.ba", true),
        // ** in the middle
        ("a.**.b", "a.b", true),
        ("a.**.b", "a.x.b", true),
        ("a.**.b", "a.x.y.z.b", true),
        ("a.**.b", "ab", false),
        ("a.**.b", "a.xb", false),
        ("a.**.b", "a.b.c", false),
        ("x**.a", "x.a", true),
        ("x**.a", "xb.a", true),
        ("x**.a", "xa", false),
        // alternatives
        ("a.{b,c}", "a.b", true),
        ("a.{b,c}", "a.c", true),
        ("a.{b,c}", "a.d", false),
        ("a.{b,c}.**", "a.b", true),
        ("a.{b,c}.**", "a.c.d", true),
        ("a.{b,c}.**", "a.cd", false),
        ("a.{b.**,c}", "a.b", true),
        ("a.{b.**,c}", "a.b.c", true),
        ("a.{b.**,c}", "a.c", true),
        ("a.{b.**,c}", "a.c.d", false),
        ("web.{api,ui}", "web.api", true),
        ("web.{api,ui}", "web.db", false),
        ("{a,b*}.x", "bz.x", true),
        ("{a,{b,c}.d}", "c.d", true),
        ("{a,{b,c}.d}", "c", false),
        ("home.*.owl", "home.42.owl", true),
        ("home.*.owl", "home.42.nissan", false),
        ("home.*.owl", "home.owl", false),
        // escapes
        ("a\\*", "a*", true),
        ("a\\*", "ab", false),
    ];

    #[test]
    fn pattern_table() {
        assert!(CASES.len() >= 40);
        let mut failures = Vec::new();
        for &(pattern, tag, want) in CASES {
            let p = TagPattern::new(pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
            if p.matches(tag) != want {
                failures.push(format!("{pattern:?} vs {tag:?}: expected {want}"));
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn shortcuts_agree_with_the_general_matcher() {
        for (pattern, tags) in [
            ("a.b", vec!["a.b", "a.bc", "a", "a.b.c"]),
            ("app.**", vec!["app", "app.x", "apps", "app.x.y", "ap"]),
            ("**", vec!["a", "a.b"]),
        ] {
            let fast = TagPattern::new(pattern).unwrap();
            let general = Compiler {
                text: pattern,
                pos: 0,
            }
            .compile()
            .unwrap();
            for tag in tags {
                assert_eq!(
                    fast.matches(tag),
                    match_seq(&general, &Cont::End, tag.as_bytes(), 0),
                    "{pattern} vs {tag}"
                );
            }
        }
        assert!(matches!(
            TagPattern::new("app.web").unwrap().shape,
            Shape::Exact(_)
        ));
        assert!(matches!(
            TagPattern::new("app.web.**").unwrap().shape,
            Shape::Prefix(_)
        ));
        assert!(matches!(TagPattern::new("**").unwrap().shape, Shape::All));
    }

    #[test]
    fn malformed_patterns_say_where() {
        let cases = [
            ("a.{b,c", 2, "unclosed '{'"),
            ("{a", 0, "unclosed '{'"),
            ("a}", 1, "without a matching"),
            ("a,b", 1, "outside"),
            ("a..b", 1, "empty tag part"),
            (".a", 0, "empty tag part"),
            ("a.", 1, "empty tag part"),
            ("a b", 1, "can never appear"),
            ("a/b", 1, "can never appear"),
            ("a\\", 1, "escapes nothing"),
            ("", 0, "empty tag pattern"),
        ];
        for (pattern, offset, msg) in cases {
            let err = TagPattern::new(pattern).expect_err(pattern);
            assert_eq!(err.offset, offset, "{pattern}: {err}");
            assert!(err.message.contains(msg), "{pattern}: {err}");
        }
    }

    #[test]
    fn a_set_matches_if_any_pattern_does() {
        let set = PatternSet::parse(&["a.b", "a.c"]).unwrap();
        assert!(set.matches("a.b") && set.matches("a.c") && !set.matches("a.d"));
        let set = PatternSet::parse(&["a.**", "a.c"]).unwrap();
        assert!(set.matches("a.b"));
        assert_eq!(PatternSet::parse(&["ok", "bad{"]).unwrap_err().0, 1);
    }
}
