//! The syntax tree of one routes file.
//!
//! Every node carries a [`Span`], and parameters keep the key's and the
//! value's spans apart, so that an error found later (by the engine, which
//! only knows "parameter `x` of block 3") points at the right characters.
//! Strings are already unescaped and `${VAR}`-interpolated; each remembers
//! how its characters map back to the source so an offset inside a tag
//! pattern can be shown exactly.

use std::time::Duration;

use crate::source::Span;

/// One parsed file: its top-level items in order.
#[derive(Clone, Debug)]
pub struct File {
    /// `include`, `input`, `filter`, `match` and `label` items, in file order.
    pub items: Vec<Item>,
}

/// A top-level item (or an item inside a label).
#[derive(Clone, Debug)]
pub enum Item {
    /// `include "<glob>"`.
    Include(Include),
    /// `input <type> { ... }`.
    Input(Block),
    /// `filter <patterns...> <type> { ... }`.
    Filter(Route),
    /// `match <patterns...> <type> { ... }`.
    Match(Route),
    /// `label <name> { ... }`.
    Label(Label),
}

impl Item {
    /// The span of the whole item.
    pub fn span(&self) -> &Span {
        match self {
            Item::Include(i) => &i.span,
            Item::Input(b) => &b.span,
            Item::Filter(r) | Item::Match(r) => &r.span,
            Item::Label(l) => &l.span,
        }
    }
}

/// `include "<glob>"`.
#[derive(Clone, Debug)]
pub struct Include {
    /// The `include` keyword.
    pub keyword: Span,
    /// The glob, relative to the including file's directory.
    pub path: StrLit,
    /// The whole item.
    pub span: Span,
}

/// A `filter` or `match` item: tag patterns and the plugin block.
#[derive(Clone, Debug)]
pub struct Route {
    /// The `filter` / `match` keyword.
    pub keyword: Span,
    /// One or more tag patterns.
    pub patterns: Vec<StrLit>,
    /// The plugin (for `match`, possibly `copy` with nested output blocks).
    pub block: Block,
    /// The whole item.
    pub span: Span,
}

/// `label <name> { ... }`.
#[derive(Clone, Debug)]
pub struct Label {
    /// The `label` keyword.
    pub keyword: Span,
    /// The label's name (an identifier or a string).
    pub name: Name,
    /// The items inside, in order.
    pub items: Vec<Item>,
    /// The whole item.
    pub span: Span,
}

/// A name as written: an identifier, or a string when quoted.
#[derive(Clone, Debug)]
pub struct Name {
    /// The name, unquoted and interpolated.
    pub value: String,
    /// Where it is written (including quotes).
    pub span: Span,
    /// False when interpolating a quoted name failed (an error was reported).
    pub complete: bool,
}

/// `<type> { entries }`: a plugin block (or a nested output of `copy`).
#[derive(Clone, Debug)]
pub struct Block {
    /// The plugin type name (`http`, `file`, `copy`).
    pub type_name: Name,
    /// Parameters and nested blocks in written order.
    pub entries: Vec<Entry>,
    /// From the type name to the closing brace.
    pub span: Span,
}

impl Block {
    /// The parameters, in order.
    pub fn params(&self) -> impl Iterator<Item = &Param> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Param(p) => Some(p),
            Entry::Block(_) => None,
        })
    }

    /// The nested blocks, in order.
    pub fn blocks(&self) -> impl Iterator<Item = &Block> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Block(b) => Some(b),
            Entry::Param(_) => None,
        })
    }
}

/// One entry of a block body.
#[derive(Clone, Debug)]
pub enum Entry {
    /// `key = value`.
    Param(Param),
    /// `<type> { ... }` (only meaningful inside `copy`).
    Block(Block),
}

/// `key = value`.
#[derive(Clone, Debug)]
pub struct Param {
    /// The key and where it is written.
    pub key: Name,
    /// The value, with its own span.
    pub value: Value,
}

impl Param {
    /// From the key to the end of the value.
    pub fn span(&self) -> Span {
        self.key.span.to(&self.value.span)
    }
}

impl Entry {
    /// The span of the parameter or nested block.
    pub fn span(&self) -> Span {
        match self {
            Entry::Param(p) => p.span(),
            Entry::Block(b) => b.span.clone(),
        }
    }
}

/// A value with its span.
#[derive(Clone, Debug)]
pub struct Value {
    /// What it is.
    pub kind: ValueKind,
    /// Where it is written.
    pub span: Span,
}

/// The kinds of value the language has; they map one-to-one onto the
/// engine's [`ulog_engine::Value`].
#[derive(Clone, Debug)]
pub enum ValueKind {
    /// A string, unescaped and interpolated.
    Str(StrLit),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// A boolean.
    Bool(bool),
    /// A number with a duration unit.
    Duration(Duration),
    /// A number with a size unit, in bytes.
    Size(u64),
    /// `[...]`.
    List(Vec<Value>),
    /// `{ k = v, ... }`, in written order.
    Map(Vec<(Name, Value)>),
    /// `/.../`, its source with `\/` turned into `/`.
    Regex(String),
    /// A value that could not be read; an error was reported for it. Never
    /// present in a tree that [`crate::parse_str`] returns as `Ok`.
    Invalid,
}

impl Value {
    /// The value reached by `path`: map keys, and list indices written as
    /// decimal text; `self` for an empty path.
    pub fn find(&self, path: &[String]) -> Option<&Value> {
        let Some((step, rest)) = path.split_first() else {
            return Some(self);
        };
        let next = match &self.kind {
            ValueKind::Map(entries) => entries.iter().find(|(k, _)| &k.value == step).map(|e| &e.1),
            ValueKind::List(items) => step.parse::<usize>().ok().and_then(|i| items.get(i)),
            _ => None,
        }?;
        next.find(rest)
    }

    /// Converts to the engine's value; `None` when any part is invalid.
    pub fn to_engine(&self) -> Option<ulog_engine::Value> {
        use ulog_engine::Value as V;
        Some(match &self.kind {
            ValueKind::Str(s) if s.complete => V::Str(s.value.clone()),
            ValueKind::Str(_) | ValueKind::Invalid => return None,
            ValueKind::Int(i) => V::Int(*i),
            ValueKind::Float(x) => V::Float(*x),
            ValueKind::Bool(b) => V::Bool(*b),
            ValueKind::Duration(d) => V::Duration(*d),
            ValueKind::Size(s) => V::Size(*s),
            ValueKind::List(items) => {
                V::List(items.iter().map(Value::to_engine).collect::<Option<_>>()?)
            }
            ValueKind::Map(entries) => V::Map(
                entries
                    .iter()
                    .map(|(k, v)| Some((k.value.clone(), v.to_engine()?)))
                    .collect::<Option<_>>()?,
            ),
            ValueKind::Regex(r) => V::Regex(r.clone()),
        })
    }
}

/// A string literal after unescaping and interpolation, with a map from its
/// bytes back to the source.
#[derive(Clone, Debug)]
pub struct StrLit {
    /// The resulting text.
    pub value: String,
    /// The literal in the source, quotes included.
    pub span: Span,
    /// False when a `${VAR}` could not be resolved (an error was reported).
    pub complete: bool,
    /// Pieces of `value`: `(value_offset, source_offset, verbatim)`. A
    /// verbatim piece was copied byte for byte from the source; any other
    /// piece (an escape, an interpolated variable) maps as a whole to where
    /// it is written.
    pub(crate) pieces: Vec<(usize, usize, bool)>,
}

impl StrLit {
    /// A literal whose text maps one-to-one onto the source after the
    /// opening quote (no escapes, no interpolation).
    pub fn verbatim(value: impl Into<String>, span: Span) -> Self {
        let start = span.start + 1;
        Self {
            value: value.into(),
            span,
            complete: true,
            pieces: vec![(0, start, true)],
        }
    }

    /// The source byte offset of byte `offset` of `value`: exact for
    /// characters written as themselves, the start of the escape or `${` for
    /// the others, and the opening quote when unknown.
    pub fn source_offset(&self, offset: usize) -> usize {
        let piece = self
            .pieces
            .iter()
            .take_while(|(at, _, _)| *at <= offset)
            .last();
        match piece {
            Some(&(at, src, true)) => src + (offset - at),
            Some(&(_, src, false)) => src,
            None => self.span.start,
        }
    }

    /// A span of the source character that produced byte `offset` of the
    /// value (a one-character span; for an escape or `${VAR}`, its start).
    pub fn span_at(&self, offset: usize) -> Span {
        if offset >= self.value.len() {
            // Past the end: point at the closing quote.
            let end = self.span.end.saturating_sub(1).max(self.span.start);
            return Span::char_at(&self.span.file, end);
        }
        Span::char_at(&self.span.file, self.source_offset(offset))
    }
}
