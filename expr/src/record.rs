//! Reading the fields an expression uses, from either form of record.
//!
//! A parsed record (`Record::Map`) is read by walking the path at each access.
//! A raw one (`Record::Raw`, validated JSON text) is *not* parsed into a map:
//! the compiler collects every path the expression reads into a [`Trie`], and
//! [`extract`] makes one pass over the text, descending only into keys and
//! indexes on some path, skipping every other value with a byte scan (as
//! `ulog_engine::json` validates), and borrowing strings straight from the
//! text when they have no escapes. An expression like
//! `$.household == "h1" and $.soc_pct < 50` thus allocates nothing per event.
//!
//! Both ways give the same values: numbers, escaped strings and whole
//! containers that are read are handed to serde_json, the parser that built
//! the map; and a key that appears twice counts by its last occurrence, as in
//! serde_json's map (the subtree of a repeated key is cleared on each visit).

use std::borrow::Cow;
use std::fmt;

use serde_json::{Map, Value as Json};

use crate::value::{number as number_val, Val};

/// One step of a field path: `.key` / `["key"]`, or `[index]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Key(Box<str>),
    Index(usize),
}

/// The value at `path` in a parsed record; `None` when it is missing (a key
/// that is not there, an index past the end, or a step into a scalar).
pub(crate) fn lookup<'a>(map: &'a Map<String, Json>, path: &[Seg]) -> Option<&'a Json> {
    let (first, rest) = path.split_first()?;
    let Seg::Key(k) = first else {
        return None;
    };
    let mut v = map.get(&**k)?;
    for seg in rest {
        v = step(v, seg)?;
    }
    Some(v)
}

fn step<'a>(v: &'a Json, seg: &Seg) -> Option<&'a Json> {
    match (v, seg) {
        (Json::Object(m), Seg::Key(k)) => m.get(&**k),
        (Json::Array(a), Seg::Index(i)) => a.get(*i),
        _ => None,
    }
}

/// Every path an expression reads, merged into a tree; each path that is
/// read as a value has a slot that [`extract`] fills.
#[derive(Debug, Default)]
pub(crate) struct Trie {
    nodes: Vec<TrieNode>,
    slots: usize,
}

#[derive(Debug, Default)]
struct TrieNode {
    /// Where the value at this path goes, when the expression reads it.
    slot: Option<usize>,
    keys: Vec<(Box<str>, usize)>,
    indexes: Vec<(usize, usize)>,
    /// The slots of this node and every node below it.
    subtree: Vec<usize>,
}

impl Trie {
    pub fn new() -> Self {
        Self {
            nodes: vec![TrieNode::default()],
            slots: 0,
        }
    }

    /// The slot for `path`, shared by every read of the same path.
    pub fn insert(&mut self, path: &[Seg]) -> usize {
        let mut node = 0;
        for seg in path {
            let existing = match seg {
                Seg::Key(k) => self.nodes[node]
                    .keys
                    .iter()
                    .find(|(key, _)| key == k)
                    .map(|(_, n)| *n),
                Seg::Index(i) => self.nodes[node]
                    .indexes
                    .iter()
                    .find(|(idx, _)| idx == i)
                    .map(|(_, n)| *n),
            };
            node = match existing {
                Some(n) => n,
                None => {
                    let n = self.nodes.len();
                    self.nodes.push(TrieNode::default());
                    match seg {
                        Seg::Key(k) => self.nodes[node].keys.push((k.clone(), n)),
                        Seg::Index(i) => self.nodes[node].indexes.push((*i, n)),
                    }
                    n
                }
            };
        }
        match self.nodes[node].slot {
            Some(s) => s,
            None => {
                let s = self.slots;
                self.slots += 1;
                self.nodes[node].slot = Some(s);
                s
            }
        }
    }

    /// Computes each node's subtree once every path is in.
    pub fn finish(&mut self) {
        // Children always come after their parent, so a reverse pass sees
        // every child before it.
        for n in (0..self.nodes.len()).rev() {
            let mut subtree: Vec<usize> = self.nodes[n].slot.into_iter().collect();
            let children: Vec<usize> = self.nodes[n]
                .keys
                .iter()
                .map(|(_, c)| *c)
                .chain(self.nodes[n].indexes.iter().map(|(_, c)| *c))
                .collect();
            for c in children {
                subtree.extend_from_slice(&self.nodes[c].subtree);
            }
            self.nodes[n].subtree = subtree;
        }
    }

    /// How many slots [`extract`] fills.
    pub fn slot_count(&self) -> usize {
        self.slots
    }
}

/// Why [`extract`] could not read a raw record. Small and without
/// allocation, so the scanner's results stay cheap to pass around.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ScanError {
    pub offset: usize,
    pub message: &'static str,
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.message, self.offset)
    }
}

/// Fills `slots` (all `None`, [`Trie::slot_count`] long) with the values of
/// the trie's paths in the JSON object `bytes`; a path that is missing stays
/// `None`.
///
/// Values off every path are skipped by a byte scan that only tracks
/// strings and brackets; a value that is read is handed to serde_json when it
/// is more than a plain string or literal (numbers, escaped strings, whole
/// objects and arrays), so it means exactly what it means in a parsed map.
/// Raw records are validated when they are made; on bytes that are not JSON
/// this fails or reads garbage, but never panics.
pub(crate) fn extract<'a>(
    trie: &Trie,
    bytes: &'a [u8],
    slots: &mut [Option<Val<'a>>],
) -> Result<(), ScanError> {
    let mut s = Scan { b: bytes, i: 0 };
    s.ws();
    if s.peek() != Some(b'{') {
        return Err(s.err("a record must be a JSON object"));
    }
    s.value(trie, 0, slots)?;
    s.ws();
    if s.i != bytes.len() {
        return Err(s.err("trailing characters after the object"));
    }
    Ok(())
}

struct Scan<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Scan<'a> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn err(&self, message: &'static str) -> ScanError {
        ScanError {
            offset: self.i,
            message,
        }
    }

    #[inline(always)]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    fn colon(&mut self) -> Result<(), ScanError> {
        if self.peek() == Some(b':') {
            self.i += 1;
            Ok(())
        } else {
            Err(self.err("expected `:`"))
        }
    }

    /// A string at `"`: the range of its contents, and whether it has
    /// escapes. Leaves `i` after the closing quote.
    #[inline]
    fn string(&mut self) -> Result<(usize, usize, bool), ScanError> {
        self.i += 1;
        let start = self.i;
        let mut escaped = false;
        loop {
            let rest = self.b.get(self.i..).unwrap_or_default();
            let Some(pos) = memchr::memchr2(b'"', b'\\', rest) else {
                self.i = self.b.len();
                return Err(self.err("unterminated string"));
            };
            self.i += pos;
            if self.b[self.i] == b'"' {
                self.i += 1;
                return Ok((start, self.i - 1, escaped));
            }
            escaped = true;
            self.i += 2;
        }
    }

    /// Moves past one value without looking inside it.
    fn skip(&mut self) -> Result<(), ScanError> {
        match self.peek() {
            Some(b'"') => self.string().map(|_| ()),
            Some(b'{' | b'[') => {
                // Containers by counting, strings skipped whole, so a deep
                // value costs no recursion.
                let mut depth = 0usize;
                while let Some(&c) = self.b.get(self.i) {
                    match c {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'{' | b'[' => depth += 1,
                        b'}' | b']' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i += 1;
                                return Ok(());
                            }
                        }
                        _ => {}
                    }
                    self.i += 1;
                }
                Err(self.err("unterminated object or array"))
            }
            Some(_) => {
                let rest = &self.b[self.i..];
                let len = rest
                    .iter()
                    .position(|c| matches!(c, b',' | b'}' | b']' | b' ' | b'\n' | b'\r' | b'\t'))
                    .unwrap_or(rest.len());
                if len == 0 {
                    return Err(self.err("expected a value"));
                }
                self.i += len;
                Ok(())
            }
            None => Err(self.err("expected a value")),
        }
    }

    /// The value for trie node `node`, at its first byte.
    fn value(
        &mut self,
        trie: &Trie,
        node: usize,
        slots: &mut [Option<Val<'a>>],
    ) -> Result<(), ScanError> {
        let n = &trie.nodes[node];
        // A key seen again replaces what its first occurrence gave.
        for &s in &n.subtree {
            slots[s] = None;
        }
        let Some(slot) = n.slot else {
            return match self.peek() {
                Some(b'{') if !n.keys.is_empty() => self.object(trie, node, slots),
                Some(b'[') if !n.indexes.is_empty() => self.array(trie, node, slots),
                _ => self.skip(),
            };
        };
        let start = self.i;
        let bad = |_: serde_json::Error| ScanError {
            offset: start,
            message: "invalid JSON value",
        };
        let v = match self.peek() {
            Some(b'"') => {
                let (s, e, escaped) = self.string()?;
                if escaped {
                    let text: String = serde_json::from_slice(&self.b[s - 1..=e]).map_err(bad)?;
                    Val::Str(Cow::Owned(text))
                } else {
                    let text = std::str::from_utf8(&self.b[s..e])
                        .map_err(|_| self.err("invalid UTF-8 in a string"))?;
                    Val::Str(Cow::Borrowed(text))
                }
            }
            Some(b'{' | b'[') => {
                self.skip()?;
                let whole: Json = serde_json::from_slice(&self.b[start..self.i]).map_err(bad)?;
                fill(trie, node, &whole, slots);
                Val::from_json_owned(whole)
            }
            Some(b't') if self.b[self.i..].starts_with(b"true") => {
                self.i += 4;
                Val::Bool(true)
            }
            Some(b'f') if self.b[self.i..].starts_with(b"false") => {
                self.i += 5;
                Val::Bool(false)
            }
            Some(b'n') if self.b[self.i..].starts_with(b"null") => {
                self.i += 4;
                Val::Null
            }
            _ => {
                self.skip()?;
                let digits = &self.b[start..self.i];
                match small_int(digits) {
                    Some(i) => Val::Int(i),
                    None => {
                        let text =
                            std::str::from_utf8(digits).map_err(|_| self.err("invalid UTF-8"))?;
                        let number: serde_json::Number = text.parse().map_err(bad)?;
                        number_val(&number)
                    }
                }
            }
        };
        slots[slot] = Some(v);
        Ok(())
    }

    /// An object at `{` whose keys lead to trie children of `node`.
    fn object(
        &mut self,
        trie: &Trie,
        node: usize,
        slots: &mut [Option<Val<'a>>],
    ) -> Result<(), ScanError> {
        let keys = &trie.nodes[node].keys;
        self.i += 1;
        self.ws();
        if self.peek() == Some(b'}') {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if self.peek() != Some(b'"') {
                return Err(self.err("expected a string key"));
            }
            let (s, e, escaped) = self.string()?;
            let child = if escaped {
                let key: String =
                    serde_json::from_slice(&self.b[s - 1..=e]).map_err(|_| ScanError {
                        offset: s,
                        message: "invalid string key",
                    })?;
                keys.iter().find(|(k, _)| **k == *key)
            } else {
                let key = &self.b[s..e];
                keys.iter().find(|(k, _)| k.as_bytes() == key)
            };
            self.ws();
            self.colon()?;
            self.ws();
            match child {
                Some(&(_, c)) => self.value(trie, c, slots)?,
                None => self.skip()?,
            }
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(b'}') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected `,` or `}`")),
            }
        }
    }

    /// An array at `[` whose indexes lead to trie children of `node`.
    fn array(
        &mut self,
        trie: &Trie,
        node: usize,
        slots: &mut [Option<Val<'a>>],
    ) -> Result<(), ScanError> {
        let indexes = &trie.nodes[node].indexes;
        self.i += 1;
        self.ws();
        if self.peek() == Some(b']') {
            self.i += 1;
            return Ok(());
        }
        let mut index = 0;
        loop {
            self.ws();
            match indexes.iter().find(|(i, _)| *i == index) {
                Some(&(_, c)) => self.value(trie, c, slots)?,
                None => self.skip()?,
            }
            self.ws();
            match self.peek() {
                Some(b',') => {
                    self.i += 1;
                    index += 1;
                }
                Some(b']') => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected `,` or `]`")),
            }
        }
    }
}

/// The common case of a number without serde_json: up to 18 digits, an
/// optional minus, no leading zero, no fraction or exponent. Anything else
/// (including `-0`, which serde_json reads as the float -0.0) is `None`.
fn small_int(b: &[u8]) -> Option<i64> {
    let (negative, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 18 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        n = n * 10 + i64::from(d - b'0');
    }
    match (negative, n) {
        (true, 0) => None,
        (true, n) => Some(-n),
        (false, n) => Some(n),
    }
}

/// Fills the slots below `node` from its value, already built.
fn fill(trie: &Trie, node: usize, v: &Json, slots: &mut [Option<Val<'_>>]) {
    let n = &trie.nodes[node];
    for (key, child) in &n.keys {
        if let Some(x) = v.as_object().and_then(|m| m.get(&**key)) {
            visit_built(trie, *child, x, slots);
        }
    }
    for (i, child) in &n.indexes {
        if let Some(x) = v.as_array().and_then(|a| a.get(*i)) {
            visit_built(trie, *child, x, slots);
        }
    }
}

fn visit_built(trie: &Trie, node: usize, v: &Json, slots: &mut [Option<Val<'_>>]) {
    if let Some(s) = trie.nodes[node].slot {
        slots[s] = Some(Val::from_json_owned(v.clone()));
    }
    fill(trie, node, v, slots);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> Seg {
        Seg::Key(k.into())
    }

    fn run<'a>(trie: &Trie, text: &'a str) -> Result<Vec<Option<Val<'a>>>, ScanError> {
        let mut slots = vec![None; trie.slot_count()];
        extract(trie, text.as_bytes(), &mut slots)?;
        Ok(slots)
    }

    #[test]
    fn reads_only_the_paths_asked_for() {
        let mut t = Trie::new();
        let a = t.insert(&[key("a")]);
        let c0 = t.insert(&[key("c"), Seg::Index(1), key("d")]);
        let esc = t.insert(&[key("e\"x")]);
        let missing = t.insert(&[key("zz")]);
        assert_eq!(t.insert(&[key("a")]), a);
        t.finish();
        let slots = run(
            &t,
            r#"{"a":"plain","b":{"x":[1,2,{"y":3}]},"c":[{"d":1},{"d":"two\n"}],"e\"x":-5}"#,
        )
        .unwrap();
        assert!(matches!(&slots[a], Some(Val::Str(Cow::Borrowed("plain")))));
        assert!(matches!(&slots[c0], Some(Val::Str(s)) if s == "two\n"));
        assert!(matches!(slots[esc], Some(Val::Int(-5))));
        assert!(slots[missing].is_none());
    }

    #[test]
    fn whole_values_and_paths_below_them() {
        let mut t = Trie::new();
        let obj = t.insert(&[key("o")]);
        let inner = t.insert(&[key("o"), key("k")]);
        let root = t.insert(&[]);
        t.finish();
        let slots = run(&t, r#"{"o":{"k":[1,2]},"n":null}"#).unwrap();
        assert!(matches!(&slots[obj], Some(Val::Object(m)) if m.len() == 1));
        assert!(matches!(&slots[inner], Some(Val::Array(a)) if a.len() == 2));
        assert!(matches!(&slots[root], Some(Val::Object(m)) if m.len() == 2));
    }

    #[test]
    fn the_last_duplicate_wins_as_in_a_map() {
        let mut t = Trie::new();
        let b = t.insert(&[key("a"), key("b")]);
        t.finish();
        let slots = run(&t, r#"{"a":{"b":1},"a":{"c":2}}"#).unwrap();
        assert!(slots[b].is_none());
        let map: Map<String, Json> = serde_json::from_str(r#"{"a":{"b":1},"a":{"c":2}}"#).unwrap();
        assert!(lookup(&map, &[key("a"), key("b")]).is_none());
    }

    #[test]
    fn refuses_what_is_not_an_object() {
        let mut t = Trie::new();
        t.insert(&[key("a")]);
        t.finish();
        assert!(run(&t, "[1]").is_err());
        assert!(run(&t, "3").is_err());
        assert!(run(&t, r#"{"a":1"#).is_err());
        assert!(run(&t, r#"{"a":1} x"#).is_err());
        assert!(run(&t, r#"{"a":tru}"#).is_err());
        assert!(run(&t, r#"{"a":1e999}"#).is_err());
        assert!(run(&t, "{\"a\":\"\\ud800\"}").is_err());
        // Broken bytes anywhere are an error or a value, never a panic.
        let text = br#"{"a":"x\"y","b":[1,{"c":"]"}],"a":{"d":-0.5e3}}"#;
        for end in 0..=text.len() {
            for cut in [&text[..end], &text[end..]] {
                let mut slots = vec![None; t.slot_count()];
                let _ = extract(&t, cut, &mut slots);
            }
        }
    }

    #[test]
    fn small_ints_skip_serde_only_when_the_result_is_the_same() {
        assert_eq!(small_int(b"0"), Some(0));
        assert_eq!(small_int(b"-17"), Some(-17));
        assert_eq!(
            small_int(b"999999999999999999"),
            Some(999_999_999_999_999_999)
        );
        for other in [
            &b"-0"[..],
            b"01",
            b"1.0",
            b"1e3",
            b"-",
            b"",
            b"9999999999999999999",
        ] {
            assert_eq!(
                small_int(other),
                None,
                "{:?}",
                String::from_utf8_lossy(other)
            );
        }
    }

    #[test]
    fn lookup_walks_parsed_maps() {
        let map: Map<String, Json> = serde_json::from_str(r#"{"a":[{"b":true}],"s":"x"}"#).unwrap();
        assert_eq!(
            lookup(&map, &[key("a"), Seg::Index(0), key("b")]),
            Some(&Json::Bool(true))
        );
        assert_eq!(lookup(&map, &[key("s"), key("b")]), None);
        assert_eq!(lookup(&map, &[key("a"), key("0")]), None);
        assert_eq!(lookup(&map, &[Seg::Index(0)]), None);
    }
}
