//! Static types: the set of kinds of value an expression can produce.
//!
//! A type is a set rather than a single kind because much is only known at
//! run time: a field (`$.soc`) can hold anything, `capture(...)` gives a
//! string or null. The checker refuses an operation only when *no*
//! combination of its operands' kinds is valid, which catches `"a" < 3` and
//! `upper($.x) > 5` while leaving `$.x > 5` to be checked per event. The same
//! per-kind tables ([`arith_kind`], [`comparable`]) decide at run time, so
//! the two checks cannot drift apart.

use std::fmt;

use crate::ast::{ArithOp, CmpOp};

/// One kind of run-time value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    Null,
    Bool,
    Int,
    Float,
    String,
    Time,
    Array,
    Object,
}

const KINDS: [Kind; 8] = [
    Kind::Null,
    Kind::Bool,
    Kind::Int,
    Kind::Float,
    Kind::String,
    Kind::Time,
    Kind::Array,
    Kind::Object,
];

impl Kind {
    /// The kind's name as messages and `type_of` spell it.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Null => "null",
            Kind::Bool => "bool",
            Kind::Int => "int",
            Kind::Float => "float",
            Kind::String => "string",
            Kind::Time => "time",
            Kind::Array => "array",
            Kind::Object => "object",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }

    fn is_number(self) -> bool {
        matches!(self, Kind::Int | Kind::Float)
    }
}

/// The set of kinds a value may have: what the compiler knows about an
/// expression's result before it runs.
///
/// Use [`Expr::result_type`](crate::Expr::result_type) to require, say, a
/// boolean for a condition: `t.may_be(Type::BOOL)` accepts `$.flag` (known
/// per event) and refuses `$.a + 1`; `t == Type::BOOL` demands certainty.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Type(u8);

impl Type {
    /// Only `null`.
    pub const NULL: Type = Type(1 << Kind::Null as u8);
    /// `true` or `false`.
    pub const BOOL: Type = Type(1 << Kind::Bool as u8);
    /// A 64-bit signed integer.
    pub const INT: Type = Type(1 << Kind::Int as u8);
    /// A finite 64-bit float.
    pub const FLOAT: Type = Type(1 << Kind::Float as u8);
    /// Text.
    pub const STRING: Type = Type(1 << Kind::String as u8);
    /// A point in time, nanoseconds since the epoch.
    pub const TIME: Type = Type(1 << Kind::Time as u8);
    /// A JSON array.
    pub const ARRAY: Type = Type(1 << Kind::Array as u8);
    /// A JSON object.
    pub const OBJECT: Type = Type(1 << Kind::Object as u8);
    /// An int or a float.
    pub const NUMBER: Type = Type(Self::INT.0 | Self::FLOAT.0);
    /// Anything: what a field holds until the event is seen.
    pub const ANY: Type = Type(u8::MAX);
    /// No kind at all (no value is possible).
    pub(crate) const NEVER: Type = Type(0);

    /// Every kind in `self` or in `other`.
    pub const fn union(self, other: Type) -> Type {
        Type(self.0 | other.0)
    }

    /// The kinds in both.
    pub const fn intersect(self, other: Type) -> Type {
        Type(self.0 & other.0)
    }

    /// The kinds of `self` that are not in `other`.
    pub const fn without(self, other: Type) -> Type {
        Type(self.0 & !other.0)
    }

    /// True when a value of this type may be of one of `other`'s kinds.
    pub const fn may_be(self, other: Type) -> bool {
        self.0 & other.0 != 0
    }

    /// True when every kind of `self` is one of `other`'s: a value of this
    /// type is certainly an `other`.
    pub const fn is_within(self, other: Type) -> bool {
        self.0 & !other.0 == 0
    }

    pub(crate) fn is_never(self) -> bool {
        self.0 == 0
    }

    pub(crate) fn of(kind: Kind) -> Type {
        Type(kind.bit())
    }

    pub(crate) fn kinds(self) -> impl Iterator<Item = Kind> {
        KINDS.into_iter().filter(move |k| self.0 & k.bit() != 0)
    }
}

impl fmt::Display for Type {
    /// `any`, `string`, `int or float`, `string or null`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == Type::ANY {
            return f.write_str("any");
        }
        if self.is_never() {
            return f.write_str("nothing");
        }
        let names: Vec<&str> = self.kinds().map(Kind::name).collect();
        f.write_str(&names.join(" or "))
    }
}

impl fmt::Debug for Type {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Type({self})")
    }
}

/// The kind `a op b` produces, or `None` when the operator refuses the pair.
///
/// `/` always divides exactly (int / int is a float); times move by seconds
/// and two times subtract to the seconds between them.
pub(crate) fn arith_kind(op: ArithOp, a: Kind, b: Kind) -> Option<Kind> {
    use Kind::{Float, Int, Time};
    match (op, a, b) {
        (ArithOp::Div, Int, Int) => Some(Float),
        (_, Int, Int) => Some(Int),
        (_, x, y) if x.is_number() && y.is_number() => Some(Float),
        (ArithOp::Add, Time, y) | (ArithOp::Sub, Time, y) if y.is_number() => Some(Time),
        (ArithOp::Add, x, Time) if x.is_number() => Some(Time),
        (ArithOp::Sub, Time, Time) => Some(Float),
        _ => None,
    }
}

/// Every kind `a op b` may produce for operands of types `a` and `b`.
pub(crate) fn arith_type(op: ArithOp, a: Type, b: Type) -> Type {
    let mut out = Type::NEVER;
    for x in a.kinds() {
        for y in b.kinds() {
            if let Some(k) = arith_kind(op, x, y) {
                out = out.union(Type::of(k));
            }
        }
    }
    out
}

/// Whether `op` accepts a value of kind `a` on the left and `b` on the right.
///
/// Equality takes values of one kind (ints and floats count as one); the
/// order operators take two numbers, two strings or two times.
pub(crate) fn comparable(op: CmpOp, a: Kind, b: Kind) -> bool {
    if a.is_number() && b.is_number() {
        return true;
    }
    if op.is_equality() {
        a == b
    } else {
        a == b && matches!(a, Kind::String | Kind::Time)
    }
}

/// Whether some pair of kinds of `a` and `b` is [`comparable`].
pub(crate) fn may_compare(op: CmpOp, a: Type, b: Type) -> bool {
    a.kinds().any(|x| b.kinds().any(|y| comparable(op, x, y)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_combine_and_print() {
        assert_eq!(Type::NUMBER.to_string(), "int or float");
        assert_eq!(Type::ANY.to_string(), "any");
        assert_eq!(Type::STRING.union(Type::NULL).to_string(), "null or string");
        assert!(Type::ANY.may_be(Type::BOOL));
        assert!(!Type::ANY.is_within(Type::BOOL));
        assert!(Type::INT.is_within(Type::NUMBER));
        assert!(!Type::ANY.without(Type::NULL).may_be(Type::NULL));
    }

    #[test]
    fn arithmetic_table() {
        use Kind::*;
        assert_eq!(arith_kind(ArithOp::Add, Int, Int), Some(Int));
        assert_eq!(arith_kind(ArithOp::Div, Int, Int), Some(Float));
        assert_eq!(arith_kind(ArithOp::Mul, Int, Float), Some(Float));
        assert_eq!(arith_kind(ArithOp::Add, Time, Int), Some(Time));
        assert_eq!(arith_kind(ArithOp::Add, Float, Time), Some(Time));
        assert_eq!(arith_kind(ArithOp::Sub, Int, Time), None);
        assert_eq!(arith_kind(ArithOp::Sub, Time, Time), Some(Float));
        assert_eq!(arith_kind(ArithOp::Add, Time, Time), None);
        assert_eq!(arith_kind(ArithOp::Add, String, String), None);
        assert_eq!(arith_kind(ArithOp::Add, Null, Int), None);
        assert_eq!(
            arith_type(ArithOp::Add, Type::ANY, Type::INT),
            Type::NUMBER.union(Type::TIME)
        );
        assert!(arith_type(ArithOp::Mul, Type::STRING, Type::ANY).is_never());
    }

    #[test]
    fn comparison_table() {
        use Kind::*;
        assert!(comparable(CmpOp::Lt, Int, Float));
        assert!(comparable(CmpOp::Lt, String, String));
        assert!(!comparable(CmpOp::Lt, Bool, Bool));
        assert!(comparable(CmpOp::Eq, Bool, Bool));
        assert!(!comparable(CmpOp::Eq, String, Int));
        assert!(comparable(CmpOp::Eq, Null, Null));
        assert!(!may_compare(CmpOp::Lt, Type::STRING, Type::INT));
        assert!(may_compare(CmpOp::Lt, Type::ANY, Type::INT));
    }
}
