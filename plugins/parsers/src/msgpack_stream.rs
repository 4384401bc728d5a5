//! Low-level MessagePack helpers for streams of msgpack values: the forward
//! codec and the tcp input's msgpack framing are built on them.
//!
//! Two pieces, both allocation-free until a record is built:
//!
//! - [`Scan`] finds where one msgpack value ends in a growing buffer without
//!   decoding it, and resumes where it stopped when more bytes arrive. It is
//!   what frames a TCP stream, and it enforces the size and nesting limits
//!   *before* anything is allocated: a header that announces a 4 GiB string is
//!   refused as soon as its length is read.
//! - [`Reader`] walks a byte slice item by item and builds JSON records
//!   straight from it, with no intermediate `rmpv::Value` tree. Every access is
//!   bounds-checked, so it is safe on bytes the scanner never saw (the inside
//!   of a PackedForward blob).

use serde_json::{Map, Number, Value};

/// Deepest nesting of arrays and maps accepted anywhere in a frame.
///
/// Keeps recursion (ours, serde_json's and the drop of a deep value) far from
/// the stack limit.
pub const MAX_DEPTH: usize = 128;

/// Why a msgpack byte sequence was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MsgpackError {
    /// The byte 0xc1, which msgpack never uses.
    #[error("invalid msgpack marker 0x{marker:02x} at byte {at}")]
    InvalidMarker {
        /// The marker byte.
        marker: u8,
        /// Its offset.
        at: usize,
    },
    /// The value ends before the data does.
    #[error("truncated msgpack value: {needed} bytes needed, {available} available")]
    Truncated {
        /// Bytes needed to go on.
        needed: usize,
        /// Bytes present.
        available: usize,
    },
    /// The value is (or announces that it is) larger than allowed.
    #[error("msgpack value is at least {size} bytes, more than the limit of {limit}")]
    TooLarge {
        /// Bytes known to be needed so far.
        size: u64,
        /// The limit.
        limit: usize,
    },
    /// Arrays and maps nest deeper than [`MAX_DEPTH`].
    #[error("msgpack value nests deeper than {MAX_DEPTH} levels")]
    TooDeep,
}

/// The result of scanning a buffer for one msgpack value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scanned {
    /// A whole value occupies the first `n` bytes.
    Complete(usize),
    /// More bytes are needed; at least `need` in total.
    Incomplete {
        /// The buffer must hold at least this many bytes before scanning on.
        need: usize,
    },
}

/// A resumable scan over one msgpack value at the start of a buffer.
///
/// Call [`Scan::scan`] with the whole buffer each time it grows; the scan goes
/// on from where it stopped (the bytes already walked are not walked again),
/// so framing an 8 MiB frame that arrives in 64 KiB reads stays linear.
#[derive(Debug, Default, Clone)]
pub struct Scan {
    pos: usize,
    /// Items still expected in each open array or map (map entries count 2).
    open: Vec<u64>,
    started: bool,
}

impl Scan {
    /// A scan at the start of a buffer.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets progress, for the next value.
    pub fn reset(&mut self) {
        self.pos = 0;
        self.open.clear();
        self.started = false;
    }

    /// Bytes already known to belong to the value being scanned.
    pub fn progress(&self) -> usize {
        self.pos
    }

    /// Scans `buf` (which must start with the same bytes as on the previous
    /// call) for the end of one value of at most `limit` bytes.
    ///
    /// On [`Scanned::Complete`] the scan resets itself for the next value.
    ///
    /// # Errors
    /// An invalid marker, a value larger than `limit`, or nesting deeper than
    /// [`MAX_DEPTH`]. The scan must be [`reset`](Scan::reset) before reuse.
    pub fn scan(&mut self, buf: &[u8], limit: usize) -> Result<Scanned, MsgpackError> {
        loop {
            while self.open.last() == Some(&0) {
                self.open.pop();
            }
            if self.started && self.open.is_empty() {
                let n = self.pos;
                self.reset();
                return Ok(Scanned::Complete(n));
            }
            let at = self.pos;
            let Some(&marker) = buf.get(at) else {
                return Ok(Scanned::Incomplete { need: at + 1 });
            };
            // (bytes of header after the marker, payload bytes, child items)
            let (extra, payload, children): (usize, u64, u64) = match marker {
                0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0, 0),
                0x80..=0x8f => (0, 0, 2 * u64::from(marker & 0x0f)),
                0x90..=0x9f => (0, 0, u64::from(marker & 0x0f)),
                0xa0..=0xbf => (0, u64::from(marker & 0x1f), 0),
                0xc1 => return Err(MsgpackError::InvalidMarker { marker, at }),
                0xc4 | 0xd9 => match be_len(buf, at + 1, 1) {
                    Some(n) => (1, n, 0),
                    None => return Ok(Scanned::Incomplete { need: at + 2 }),
                },
                0xc5 | 0xda => match be_len(buf, at + 1, 2) {
                    Some(n) => (2, n, 0),
                    None => return Ok(Scanned::Incomplete { need: at + 3 }),
                },
                0xc6 | 0xdb => match be_len(buf, at + 1, 4) {
                    Some(n) => (4, n, 0),
                    None => return Ok(Scanned::Incomplete { need: at + 5 }),
                },
                // ext 8/16/32: length, then a type byte, then the data.
                0xc7 => match be_len(buf, at + 1, 1) {
                    Some(n) => (2, n, 0),
                    None => return Ok(Scanned::Incomplete { need: at + 2 }),
                },
                0xc8 => match be_len(buf, at + 1, 2) {
                    Some(n) => (3, n, 0),
                    None => return Ok(Scanned::Incomplete { need: at + 3 }),
                },
                0xc9 => match be_len(buf, at + 1, 4) {
                    Some(n) => (5, n, 0),
                    None => return Ok(Scanned::Incomplete { need: at + 5 }),
                },
                0xca => (4, 0, 0),
                0xcb => (8, 0, 0),
                0xcc | 0xd0 => (1, 0, 0),
                0xcd | 0xd1 => (2, 0, 0),
                0xce | 0xd2 => (4, 0, 0),
                0xcf | 0xd3 => (8, 0, 0),
                // fixext 1/2/4/8/16: a type byte, then the data.
                0xd4 => (1, 1, 0),
                0xd5 => (1, 2, 0),
                0xd6 => (1, 4, 0),
                0xd7 => (1, 8, 0),
                0xd8 => (1, 16, 0),
                0xdc => match be_len(buf, at + 1, 2) {
                    Some(n) => (2, 0, n),
                    None => return Ok(Scanned::Incomplete { need: at + 3 }),
                },
                0xdd => match be_len(buf, at + 1, 4) {
                    Some(n) => (4, 0, n),
                    None => return Ok(Scanned::Incomplete { need: at + 5 }),
                },
                0xde => match be_len(buf, at + 1, 2) {
                    Some(n) => (2, 0, 2 * n),
                    None => return Ok(Scanned::Incomplete { need: at + 3 }),
                },
                0xdf => match be_len(buf, at + 1, 4) {
                    Some(n) => (4, 0, 2 * n),
                    None => return Ok(Scanned::Incomplete { need: at + 5 }),
                },
            };
            // Each child takes at least one byte: count them towards the size
            // so an absurd array header is refused at once.
            let end = at as u64 + 1 + extra as u64 + payload;
            let at_least = end + children + self.open.iter().sum::<u64>().saturating_sub(1);
            if at_least > limit as u64 {
                return Err(MsgpackError::TooLarge {
                    size: at_least,
                    limit,
                });
            }
            if end > buf.len() as u64 {
                return Ok(Scanned::Incomplete { need: end as usize });
            }
            if let Some(top) = self.open.last_mut() {
                *top -= 1;
            }
            self.pos = end as usize;
            self.started = true;
            if children > 0 {
                if self.open.len() >= MAX_DEPTH {
                    return Err(MsgpackError::TooDeep);
                }
                self.open.push(children);
            }
        }
    }
}

fn be_len(buf: &[u8], at: usize, width: usize) -> Option<u64> {
    let bytes = buf.get(at..at + width)?;
    Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Scans a complete buffer for the first value's length.
///
/// # Errors
/// As [`Scan::scan`], plus [`MsgpackError::Truncated`] when the buffer ends
/// inside the value.
pub fn value_len(buf: &[u8], limit: usize) -> Result<usize, MsgpackError> {
    match Scan::new().scan(buf, limit)? {
        Scanned::Complete(n) => Ok(n),
        Scanned::Incomplete { need } => Err(MsgpackError::Truncated {
            needed: need,
            available: buf.len(),
        }),
    }
}

/// One msgpack item: a scalar, or the header of an array or map.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Item<'a> {
    /// nil.
    Nil,
    /// true / false.
    Bool(bool),
    /// A non-negative integer.
    UInt(u64),
    /// A negative integer.
    Int(i64),
    /// A 32-bit float.
    F32(f32),
    /// A 64-bit float.
    F64(f64),
    /// A str (bytes as sent; not checked for UTF-8 yet).
    Str(&'a [u8]),
    /// A bin.
    Bin(&'a [u8]),
    /// An array header with its item count; the items follow.
    Array(usize),
    /// A map header with its entry count; the keys and values follow.
    Map(usize),
    /// An ext value: its type and data.
    Ext(i8, &'a [u8]),
}

impl Item<'_> {
    /// A short name of the item's type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Item::Nil => "nil",
            Item::Bool(_) => "a boolean",
            Item::UInt(_) | Item::Int(_) => "an integer",
            Item::F32(_) | Item::F64(_) => "a float",
            Item::Str(_) => "a string",
            Item::Bin(_) => "binary",
            Item::Array(_) => "an array",
            Item::Map(_) => "a map",
            Item::Ext(..) => "an ext value",
        }
    }
}

/// A bounds-checked cursor over msgpack bytes.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    /// A reader at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// The offset of the next item.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Moves back (or forward) to an offset returned by [`Reader::position`].
    pub fn seek(&mut self, pos: usize) {
        self.pos = pos.min(self.buf.len());
    }

    /// Bytes left after the cursor.
    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// True when every byte has been read.
    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], MsgpackError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(MsgpackError::Truncated {
                needed: self.pos.saturating_add(n),
                available: self.buf.len(),
            });
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn uint(&mut self, width: usize) -> Result<u64, MsgpackError> {
        Ok(self
            .take(width)?
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
    }

    fn len(&mut self, width: usize) -> Result<usize, MsgpackError> {
        // Lengths are at most 32 bits, which fit usize on every target we build.
        Ok(self.uint(width)? as usize)
    }

    /// Reads the next item (for arrays and maps, only the header).
    ///
    /// # Errors
    /// Truncated data or the invalid marker 0xc1.
    pub fn item(&mut self) -> Result<Item<'a>, MsgpackError> {
        let at = self.pos;
        let marker = self.take(1)?[0];
        Ok(match marker {
            0x00..=0x7f => Item::UInt(u64::from(marker)),
            0xe0..=0xff => Item::Int(i64::from(marker as i8)),
            0x80..=0x8f => Item::Map(usize::from(marker & 0x0f)),
            0x90..=0x9f => Item::Array(usize::from(marker & 0x0f)),
            0xa0..=0xbf => Item::Str(self.take(usize::from(marker & 0x1f))?),
            0xc0 => Item::Nil,
            0xc1 => return Err(MsgpackError::InvalidMarker { marker, at }),
            0xc2 => Item::Bool(false),
            0xc3 => Item::Bool(true),
            0xc4 => {
                let n = self.len(1)?;
                Item::Bin(self.take(n)?)
            }
            0xc5 => {
                let n = self.len(2)?;
                Item::Bin(self.take(n)?)
            }
            0xc6 => {
                let n = self.len(4)?;
                Item::Bin(self.take(n)?)
            }
            0xc7 => {
                let n = self.len(1)?;
                self.ext(n)?
            }
            0xc8 => {
                let n = self.len(2)?;
                self.ext(n)?
            }
            0xc9 => {
                let n = self.len(4)?;
                self.ext(n)?
            }
            0xca => Item::F32(f32::from_bits(self.uint(4)? as u32)),
            0xcb => Item::F64(f64::from_bits(self.uint(8)?)),
            0xcc => Item::UInt(self.uint(1)?),
            0xcd => Item::UInt(self.uint(2)?),
            0xce => Item::UInt(self.uint(4)?),
            0xcf => Item::UInt(self.uint(8)?),
            0xd0 => Item::Int(i64::from(self.uint(1)? as u8 as i8)),
            0xd1 => Item::Int(i64::from(self.uint(2)? as u16 as i16)),
            0xd2 => Item::Int(i64::from(self.uint(4)? as u32 as i32)),
            0xd3 => Item::Int(self.uint(8)? as i64),
            0xd4 => self.ext(1)?,
            0xd5 => self.ext(2)?,
            0xd6 => self.ext(4)?,
            0xd7 => self.ext(8)?,
            0xd8 => self.ext(16)?,
            0xd9 => {
                let n = self.len(1)?;
                Item::Str(self.take(n)?)
            }
            0xda => {
                let n = self.len(2)?;
                Item::Str(self.take(n)?)
            }
            0xdb => {
                let n = self.len(4)?;
                Item::Str(self.take(n)?)
            }
            0xdc => Item::Array(self.len(2)?),
            0xdd => Item::Array(self.len(4)?),
            0xde => Item::Map(self.len(2)?),
            0xdf => Item::Map(self.len(4)?),
        })
    }

    fn ext(&mut self, n: usize) -> Result<Item<'a>, MsgpackError> {
        let ty = self.take(1)?[0] as i8;
        Ok(Item::Ext(ty, self.take(n)?))
    }

    /// Skips the rest of a value whose first item was already read.
    ///
    /// # Errors
    /// Truncated or invalid data.
    pub fn skip_rest(&mut self, first: Item<'a>) -> Result<(), MsgpackError> {
        let mut left: u64 = match first {
            Item::Array(n) => n as u64,
            Item::Map(n) => 2 * n as u64,
            _ => 0,
        };
        while left > 0 {
            left -= 1;
            match self.item()? {
                Item::Array(n) => left += n as u64,
                Item::Map(n) => left += 2 * n as u64,
                _ => {}
            }
        }
        Ok(())
    }

    /// Skips one whole value.
    ///
    /// # Errors
    /// Truncated or invalid data.
    pub fn skip(&mut self) -> Result<(), MsgpackError> {
        let first = self.item()?;
        self.skip_rest(first)
    }

    /// Reads one whole value as JSON.
    ///
    /// Conversions follow `ulog_parsers::msgpack::to_json`: bin becomes a
    /// (lossy) UTF-8 string, ext values the array of their bytes, NaN and
    /// infinities null; invalid UTF-8 in strings is replaced rather than
    /// dropped.
    ///
    /// # Errors
    /// Truncated or invalid data, or nesting deeper than [`MAX_DEPTH`].
    pub fn json(&mut self) -> Result<Value, MsgpackError> {
        let first = self.item()?;
        self.json_from(first, 0)
    }

    /// Reads the rest of a value whose first item was already read, as JSON.
    ///
    /// # Errors
    /// As [`Reader::json`].
    pub fn json_from(&mut self, first: Item<'a>, depth: usize) -> Result<Value, MsgpackError> {
        Ok(match first {
            Item::Nil => Value::Null,
            Item::Bool(b) => Value::Bool(b),
            Item::UInt(u) => Value::from(u),
            Item::Int(i) => Value::from(i),
            Item::F32(f) => Number::from_f64(f64::from(f)).map_or(Value::Null, Value::Number),
            Item::F64(f) => Number::from_f64(f).map_or(Value::Null, Value::Number),
            Item::Str(s) | Item::Bin(s) => Value::String(text(s)),
            Item::Ext(_, data) => Value::Array(data.iter().map(|b| Value::from(*b)).collect()),
            Item::Array(n) => {
                if depth >= MAX_DEPTH {
                    return Err(MsgpackError::TooDeep);
                }
                // Never trust a count for an allocation: each item takes at
                // least one byte.
                let mut items = Vec::with_capacity(n.min(self.remaining()));
                for _ in 0..n {
                    let item = self.item()?;
                    items.push(self.json_from(item, depth + 1)?);
                }
                Value::Array(items)
            }
            Item::Map(n) => Value::Object(self.map_entries(n, depth)?),
        })
    }

    /// Reads `n` map entries (after a map header) into a JSON object.
    ///
    /// Keys that are not strings become their JSON text (`1`, `true`).
    ///
    /// # Errors
    /// As [`Reader::json`].
    pub fn map_entries(
        &mut self,
        n: usize,
        depth: usize,
    ) -> Result<Map<String, Value>, MsgpackError> {
        if depth >= MAX_DEPTH {
            return Err(MsgpackError::TooDeep);
        }
        let mut map = Map::with_capacity(n.min(self.remaining() / 2));
        for _ in 0..n {
            let key = match self.item()? {
                Item::Str(s) | Item::Bin(s) => text(s),
                other => {
                    let v = self.json_from(other, depth + 1)?;
                    key_text(&v)
                }
            };
            let first = self.item()?;
            let value = self.json_from(first, depth + 1)?;
            map.insert(key, value);
        }
        Ok(map)
    }
}

impl Reader<'_> {
    /// Writes the rest of a value whose first item was already read as
    /// compact JSON text, with the same conversions as [`Reader::json_from`]
    /// but without building a `serde_json::Value`: the forward input keeps
    /// records as JSON text this way (one buffer per frame instead of an
    /// allocation per field).
    ///
    /// # Errors
    /// As [`Reader::json`]; `out` then holds a partial value.
    pub fn json_text_from(
        &mut self,
        first: Item<'_>,
        depth: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), MsgpackError> {
        match first {
            Item::Nil => out.extend_from_slice(b"null"),
            Item::Bool(true) => out.extend_from_slice(b"true"),
            Item::Bool(false) => out.extend_from_slice(b"false"),
            Item::UInt(u) => write_int(out, u),
            Item::Int(i) => write_int(out, i),
            Item::F32(f) => write_float(out, f64::from(f)),
            Item::F64(f) => write_float(out, f),
            Item::Str(s) | Item::Bin(s) => write_json_str(out, s),
            Item::Ext(_, data) => {
                out.push(b'[');
                for (i, b) in data.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_int(out, *b);
                }
                out.push(b']');
            }
            Item::Array(n) => {
                if depth >= MAX_DEPTH {
                    return Err(MsgpackError::TooDeep);
                }
                out.push(b'[');
                for i in 0..n {
                    if i > 0 {
                        out.push(b',');
                    }
                    let item = self.item()?;
                    self.json_text_from(item, depth + 1, out)?;
                }
                out.push(b']');
            }
            Item::Map(n) => self.map_text(n, depth, out)?,
        }
        Ok(())
    }

    /// Writes `n` map entries (after a map header) as a JSON object's text.
    ///
    /// # Errors
    /// As [`Reader::json`].
    pub fn map_text(
        &mut self,
        n: usize,
        depth: usize,
        out: &mut Vec<u8>,
    ) -> Result<(), MsgpackError> {
        if depth >= MAX_DEPTH {
            return Err(MsgpackError::TooDeep);
        }
        out.push(b'{');
        for i in 0..n {
            if i > 0 {
                out.push(b',');
            }
            match self.item()? {
                Item::Str(s) | Item::Bin(s) => write_json_str(out, s),
                other => {
                    // A non-string key becomes its JSON text, as a string,
                    // exactly as `map_entries` makes it (rare: no fast path).
                    let key = key_text(&self.json_from(other, depth + 1)?);
                    write_json_str(out, key.as_bytes());
                }
            }
            out.push(b':');
            let value = self.item()?;
            self.json_text_from(value, depth + 1, out)?;
        }
        out.push(b'}');
        Ok(())
    }
}

fn write_int(out: &mut Vec<u8>, v: impl serde::Serialize) {
    // serde_json's integer formatting; writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &v);
}

fn write_float(out: &mut Vec<u8>, f: f64) {
    // serde_json's formatting (shortest round-trip), null for NaN/inf.
    match Number::from_f64(f) {
        Some(n) => {
            let _ = serde_json::to_writer(&mut *out, &n);
        }
        None => out.extend_from_slice(b"null"),
    }
}

fn write_json_str(out: &mut Vec<u8>, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    // Serialising a str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, &*text);
}

/// Longest text made from a non-string map key.
pub const MAX_KEY_TEXT: usize = 256;

/// The text of a non-string map key: its compact JSON, cut to
/// [`MAX_KEY_TEXT`] bytes. The cut matters: a key that is a map whose key is
/// a map ... gets its quotes escaped once more at every level, so uncut text
/// would double in size per level (a 100-byte frame could ask for 2^100
/// bytes).
fn key_text(v: &Value) -> String {
    let mut s = v.to_string();
    if s.len() > MAX_KEY_TEXT {
        let mut end = MAX_KEY_TEXT;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

/// Bytes as text, replacing invalid UTF-8.
pub fn text(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encode(v: &rmpv::Value) -> Vec<u8> {
        let mut out = Vec::new();
        rmpv::encode::write_value(&mut out, v).unwrap();
        out
    }

    fn sample() -> rmpv::Value {
        use rmpv::Value as M;
        M::Map(vec![
            (M::from("s"), M::from("text")),
            (M::from("n"), M::from(-5)),
            (M::from("u"), M::from(u64::MAX)),
            (M::from("f"), M::F64(1.5)),
            (M::from("g"), M::F32(0.25)),
            (M::from("b"), M::Binary(b"bin".to_vec())),
            (M::from("nil"), M::Nil),
            (M::from("t"), M::Boolean(true)),
            (
                M::from("a"),
                M::Array(vec![M::from(1), M::from("x"), M::Array(vec![])]),
            ),
            (M::from("e"), M::Ext(5, vec![1, 2])),
            (M::from(7), M::from("int key")),
            (M::from("long"), M::from("x".repeat(70_000))),
            (
                M::from("big"),
                M::Array((0..20).map(|i| M::from(i * 1000)).collect()),
            ),
        ])
    }

    #[test]
    fn scan_finds_value_ends_and_resumes() {
        let bytes = encode(&sample());
        assert_eq!(value_len(&bytes, usize::MAX).unwrap(), bytes.len());
        // Feed one byte at a time: never complete early, complete at the end.
        let mut scan = Scan::new();
        for n in 0..bytes.len() {
            match scan.scan(&bytes[..n], usize::MAX).unwrap() {
                Scanned::Incomplete { need } => assert!(need > n, "need {need} at {n}"),
                Scanned::Complete(k) => panic!("complete at {k} with {n} bytes"),
            }
        }
        assert_eq!(
            scan.scan(&bytes, usize::MAX).unwrap(),
            Scanned::Complete(bytes.len())
        );
        // Two values back to back: the first is found alone.
        let mut two = bytes.clone();
        two.extend_from_slice(&bytes);
        assert_eq!(value_len(&two, usize::MAX).unwrap(), bytes.len());
    }

    #[test]
    fn scan_refuses_oversized_and_invalid_values_early() {
        // A str32 header announcing 4 GiB is refused from its 5 header bytes.
        let err = Scan::new()
            .scan(&[0xdb, 0xff, 0xff, 0xff, 0xff], 1 << 20)
            .unwrap_err();
        assert!(matches!(err, MsgpackError::TooLarge { .. }), "{err}");
        // So is an array32 of 4 billion items.
        let err = Scan::new()
            .scan(&[0xdd, 0xff, 0xff, 0xff, 0xff], 1 << 20)
            .unwrap_err();
        assert!(matches!(err, MsgpackError::TooLarge { .. }), "{err}");
        assert!(matches!(
            Scan::new().scan(&[0x92, 0x01, 0xc1], 100),
            Err(MsgpackError::InvalidMarker {
                marker: 0xc1,
                at: 2
            })
        ));
        let deep = vec![0x91u8; MAX_DEPTH + 2];
        assert_eq!(
            Scan::new().scan(&deep, 1 << 20).unwrap_err(),
            MsgpackError::TooDeep
        );
        assert!(matches!(
            value_len(&[0x92, 0x01], 100),
            Err(MsgpackError::Truncated { .. })
        ));
    }

    #[test]
    fn reader_json_matches_the_rmpv_conversion() {
        let v = sample();
        let bytes = encode(&v);
        let ours = Reader::new(&bytes).json().unwrap();
        let theirs = crate::msgpack::to_json(v);
        assert_eq!(ours, theirs);
        assert_eq!(ours["u"], json!(u64::MAX));
        assert_eq!(ours["7"], json!("int key"));
    }

    #[test]
    fn json_text_matches_the_json_value() {
        let mut v = sample();
        if let rmpv::Value::Map(entries) = &mut v {
            entries.push((rmpv::Value::from("nan"), rmpv::Value::F64(f64::NAN)));
            entries.push((rmpv::Value::from("f32"), rmpv::Value::F32(0.1)));
            entries.push((
                rmpv::Value::from("esc"),
                rmpv::Value::from("a\"b\\c\n\u{1}é"),
            ));
            entries.push((
                rmpv::Value::Binary(vec![0xff, b'k']),
                rmpv::Value::Binary(vec![0xfe]),
            ));
            entries.push((
                rmpv::Value::Array(vec![rmpv::Value::from(1), rmpv::Value::from("x")]),
                rmpv::Value::Ext(0, vec![0, 255]),
            ));
        }
        let bytes = encode(&v);
        let value = Reader::new(&bytes).json().unwrap();
        let mut text = Vec::new();
        let mut r = Reader::new(&bytes);
        let first = r.item().unwrap();
        r.json_text_from(first, 0, &mut text).unwrap();
        assert!(r.is_empty());
        // Byte for byte what serde_json writes for the value.
        assert_eq!(
            String::from_utf8(text).unwrap(),
            serde_json::to_string(&value).unwrap()
        );
    }

    #[test]
    fn nested_non_string_keys_stay_small() {
        // {{{...{"k": 1}: 1}...: 1}: 1}, 120 levels of maps used as keys.
        let mut v = rmpv::Value::Map(vec![(rmpv::Value::from("k\"\\"), rmpv::Value::from(1))]);
        for _ in 0..120 {
            v = rmpv::Value::Map(vec![(v, rmpv::Value::from(1))]);
        }
        let bytes = encode(&v);
        let map = match Reader::new(&bytes).json().unwrap() {
            Value::Object(m) => m,
            other => panic!("{other}"),
        };
        let key = map.keys().next().unwrap();
        assert!(key.len() <= MAX_KEY_TEXT, "{}", key.len());
        let mut text = Vec::new();
        let mut r = Reader::new(&bytes);
        let first = r.item().unwrap();
        r.json_text_from(first, 0, &mut text).unwrap();
        assert!(text.len() < 2 * MAX_KEY_TEXT, "{}", text.len());
        assert_eq!(
            serde_json::from_slice::<Value>(&text).unwrap(),
            Value::Object(map)
        );
    }

    #[test]
    fn reader_is_safe_on_lying_headers() {
        // A map header announcing 2^32-1 entries with no data: an error, not
        // a 100 GB allocation.
        let bytes = [0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, b'k'];
        assert!(matches!(
            Reader::new(&bytes).json(),
            Err(MsgpackError::Truncated { .. })
        ));
        let bytes = [0xdd, 0xff, 0xff, 0xff, 0xff];
        assert!(Reader::new(&bytes).skip().is_err());
        let deep = vec![0x91u8; MAX_DEPTH + 2];
        assert_eq!(
            Reader::new(&deep).json().unwrap_err(),
            MsgpackError::TooDeep
        );
    }
}
