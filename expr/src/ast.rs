//! The syntax tree the parser hands to the compiler: what was written, with
//! where, before any name or type is checked.

use crate::error::{CompileError, ErrorKind};
use crate::MAX_DEPTH;

/// A byte range of the expression's source.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub(crate) struct Span {
    pub start: usize,
    pub end: usize,
}

impl Span {
    pub fn new(start: usize, end: usize) -> Self {
        Self { start, end }
    }

    /// From the start of `self` to the end of `other`.
    pub fn to(self, other: Span) -> Span {
        Span::new(self.start, other.end.max(self.start))
    }
}

/// Arithmetic operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ArithOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl ArithOp {
    pub fn symbol(self) -> &'static str {
        match self {
            ArithOp::Add => "+",
            ArithOp::Sub => "-",
            ArithOp::Mul => "*",
            ArithOp::Div => "/",
            ArithOp::Rem => "%",
        }
    }
}

/// Comparison operators.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl CmpOp {
    pub fn symbol(self) -> &'static str {
        match self {
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
        }
    }

    /// `==` and `!=`, which accept any two values; the others order them.
    pub fn is_equality(self) -> bool {
        matches!(self, CmpOp::Eq | CmpOp::Ne)
    }
}

/// One node of the syntax tree.
#[derive(Debug)]
pub(crate) struct Ast {
    pub kind: AstKind,
    pub span: Span,
    /// Levels of nodes below and including this one.
    pub depth: usize,
}

#[derive(Debug)]
pub(crate) enum AstKind {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Array(Vec<Ast>),
    /// `$`, the whole record.
    Root,
    Tag,
    Time,
    /// A bare name that is not a keyword (always an error, with a hint).
    Ident(String),
    /// `base.name`.
    Member(Box<Ast>, String),
    /// `base[index]`; the index is checked to be a literal by the compiler.
    Index(Box<Ast>, Box<Ast>),
    Call {
        name: String,
        name_span: Span,
        args: Vec<Ast>,
    },
    Neg(Box<Ast>),
    Not(Box<Ast>),
    /// `first op x op y ...`, all of one precedence level, left to right.
    Arith(Box<Ast>, Vec<(ArithOp, Ast)>),
    Cmp(Box<Ast>, CmpOp, Box<Ast>),
    And(Vec<Ast>),
    Or(Vec<Ast>),
    Coalesce(Vec<Ast>),
    /// `c1 ? v1 : c2 ? v2 : otherwise`.
    Cond(Vec<(Ast, Ast)>, Box<Ast>),
}

impl Ast {
    /// A node over `span`; refuses trees deeper than [`MAX_DEPTH`], so that
    /// compiling and evaluating (both recursive) stay within a small stack.
    pub fn new(kind: AstKind, span: Span) -> Result<Ast, CompileError> {
        let below = match &kind {
            AstKind::Null
            | AstKind::Bool(_)
            | AstKind::Int(_)
            | AstKind::Float(_)
            | AstKind::Str(_)
            | AstKind::Root
            | AstKind::Tag
            | AstKind::Time
            | AstKind::Ident(_) => 0,
            AstKind::Array(items)
            | AstKind::And(items)
            | AstKind::Or(items)
            | AstKind::Coalesce(items)
            | AstKind::Call { args: items, .. } => max_depth(items.iter()),
            AstKind::Member(base, _) | AstKind::Neg(base) | AstKind::Not(base) => base.depth,
            AstKind::Index(a, b) | AstKind::Cmp(a, _, b) => a.depth.max(b.depth),
            AstKind::Arith(first, rest) => first.depth.max(max_depth(rest.iter().map(|(_, a)| a))),
            AstKind::Cond(arms, otherwise) => otherwise
                .depth
                .max(max_depth(arms.iter().flat_map(|(c, v)| [c, v]))),
        };
        let depth = below + 1;
        if depth > MAX_DEPTH {
            return Err(CompileError::at(
                ErrorKind::TooDeep,
                span,
                format!("expression nested more than {MAX_DEPTH} levels deep"),
            ));
        }
        Ok(Ast { kind, span, depth })
    }
}

fn max_depth<'a>(items: impl Iterator<Item = &'a Ast>) -> usize {
    items.map(|a| a.depth).max().unwrap_or(0)
}
