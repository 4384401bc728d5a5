//! A fast check that bytes hold one JSON object, without building anything.
//!
//! Validating every line is the main cost of moving JSON logs (tcp → null
//! spends most of its time here), and serde's "ignore" visitor still walks
//! the text through its generic deserializer. This scanner accepts exactly
//! what `serde_json` accepts into a `Value` — same grammar, the same limit of
//! 128 levels of nesting, lone surrogates in `\u` escapes and numbers that
//! overflow `f64` refused — so a record validated here always parses later.
//! A differential test against `serde_json` keeps the two in step.

/// Where and why validation failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonError {
    /// Byte offset of the fault.
    pub offset: usize,
    /// What was expected.
    pub message: &'static str,
}

const MAX_DEPTH: usize = 128;

/// Checks that `b` is exactly one JSON object, optionally surrounded by
/// whitespace.
pub fn validate_object(b: &[u8]) -> Result<(), JsonError> {
    if let Err(e) = std::str::from_utf8(b) {
        return Err(JsonError {
            offset: e.valid_up_to(),
            message: "invalid UTF-8",
        });
    }
    let mut s = Scanner { b, i: 0 };
    s.ws();
    if s.peek() != Some(b'{') {
        return Err(s.err("expected `{`"));
    }
    s.value()?;
    s.ws();
    if s.i != b.len() {
        return Err(s.err("trailing characters after the object"));
    }
    Ok(())
}

struct Scanner<'a> {
    b: &'a [u8],
    i: usize,
}

impl Scanner<'_> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn err(&self, message: &'static str) -> JsonError {
        JsonError {
            offset: self.i,
            message,
        }
    }

    #[inline]
    fn ws(&mut self) {
        while let Some(b' ' | b'\n' | b'\r' | b'\t') = self.peek() {
            self.i += 1;
        }
    }

    /// One value starting at the current position (whitespace already skipped).
    fn value(&mut self) -> Result<(), JsonError> {
        // Containers are tracked with an explicit stack, so deep input cannot
        // overflow the real one.
        let mut stack = [0u8; MAX_DEPTH];
        let mut depth = 0usize;
        'value: loop {
            match self.peek() {
                Some(b'{') => {
                    if depth == MAX_DEPTH {
                        return Err(self.err("nested more than 128 levels"));
                    }
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b'}') {
                        self.i += 1;
                    } else {
                        stack[depth] = b'{';
                        depth += 1;
                        self.key()?;
                        continue 'value;
                    }
                }
                Some(b'[') => {
                    if depth == MAX_DEPTH {
                        return Err(self.err("nested more than 128 levels"));
                    }
                    self.i += 1;
                    self.ws();
                    if self.peek() == Some(b']') {
                        self.i += 1;
                    } else {
                        stack[depth] = b'[';
                        depth += 1;
                        continue 'value;
                    }
                }
                Some(b'"') => self.string()?,
                Some(b't') => self.literal(b"true")?,
                Some(b'f') => self.literal(b"false")?,
                Some(b'n') => self.literal(b"null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                _ => return Err(self.err("expected a value")),
            }
            // After a value: close containers or move to the next element.
            loop {
                if depth == 0 {
                    return Ok(());
                }
                self.ws();
                let top = stack[depth - 1];
                match (self.peek(), top) {
                    (Some(b','), b'{') => {
                        self.i += 1;
                        self.ws();
                        self.key()?;
                        continue 'value;
                    }
                    (Some(b','), _) => {
                        self.i += 1;
                        self.ws();
                        continue 'value;
                    }
                    (Some(b'}'), b'{') | (Some(b']'), b'[') => {
                        self.i += 1;
                        depth -= 1;
                    }
                    (_, b'{') => return Err(self.err("expected `,` or `}`")),
                    _ => return Err(self.err("expected `,` or `]`")),
                }
            }
        }
    }

    /// `"key"` `:` and the whitespace before the value.
    fn key(&mut self) -> Result<(), JsonError> {
        if self.peek() != Some(b'"') {
            return Err(self.err("expected a string key"));
        }
        self.string()?;
        self.ws();
        if self.peek() != Some(b':') {
            return Err(self.err("expected `:`"));
        }
        self.i += 1;
        self.ws();
        Ok(())
    }

    fn literal(&mut self, word: &'static [u8]) -> Result<(), JsonError> {
        if self.b[self.i..].starts_with(word) {
            self.i += word.len();
            Ok(())
        } else {
            Err(self.err("expected true, false or null"))
        }
    }

    fn string(&mut self) -> Result<(), JsonError> {
        self.i += 1; // opening quote
        loop {
            // Skip plain bytes quickly: the input is valid UTF-8 already, so
            // only quotes, backslashes and control characters matter.
            let rest = &self.b[self.i..];
            let Some(pos) = rest
                .iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
            else {
                self.i = self.b.len();
                return Err(self.err("unterminated string"));
            };
            self.i += pos;
            match self.b[self.i] {
                b'"' => {
                    self.i += 1;
                    return Ok(());
                }
                b'\\' => {
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            self.i += 1;
                            let unit = self.hex4()?;
                            if (0xD800..0xDC00).contains(&unit) {
                                // A high surrogate needs a low one right after.
                                if self.b[self.i..].starts_with(b"\\u") {
                                    self.i += 2;
                                    let low = self.hex4()?;
                                    if !(0xDC00..0xE000).contains(&low) {
                                        return Err(
                                            self.err("lone leading surrogate in \\u escape")
                                        );
                                    }
                                } else {
                                    return Err(self.err("lone leading surrogate in \\u escape"));
                                }
                            } else if (0xDC00..0xE000).contains(&unit) {
                                return Err(self.err("lone trailing surrogate in \\u escape"));
                            }
                        }
                        _ => return Err(self.err("invalid escape")),
                    }
                }
                _ => return Err(self.err("control character in string")),
            }
        }
    }

    fn hex4(&mut self) -> Result<u32, JsonError> {
        let Some(digits) = self.b.get(self.i..self.i + 4) else {
            return Err(self.err("expected 4 hex digits"));
        };
        let mut v = 0u32;
        for &d in digits {
            let n = match d {
                b'0'..=b'9' => d - b'0',
                b'a'..=b'f' => d - b'a' + 10,
                b'A'..=b'F' => d - b'A' + 10,
                _ => return Err(self.err("expected 4 hex digits")),
            };
            v = v * 16 + u32::from(n);
        }
        self.i += 4;
        Ok(v)
    }

    fn digits(&mut self) -> usize {
        let start = self.i;
        while let Some(b'0'..=b'9') = self.peek() {
            self.i += 1;
        }
        self.i - start
    }

    fn number(&mut self) -> Result<(), JsonError> {
        let start = self.i;
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        let int_start = self.i;
        let int_digits = self.digits();
        if int_digits == 0 {
            return Err(self.err("expected a digit"));
        }
        if int_digits > 1 && self.b[int_start] == b'0' {
            return Err(JsonError {
                offset: int_start,
                message: "leading zero in a number",
            });
        }
        let mut float_digits = 0;
        if self.peek() == Some(b'.') {
            self.i += 1;
            float_digits = self.digits();
            if float_digits == 0 {
                return Err(self.err("expected a digit after `.`"));
            }
        }
        let mut exponent = false;
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            if self.digits() == 0 {
                return Err(self.err("expected a digit in the exponent"));
            }
            exponent = true;
        }
        // Only very long or exponent numbers can overflow f64: check those
        // the way serde_json would read them.
        if exponent || int_digits + float_digits > 300 {
            let text = std::str::from_utf8(&self.b[start..self.i]).unwrap_or("x");
            if !text.parse::<f64>().is_ok_and(f64::is_finite) {
                return Err(JsonError {
                    offset: start,
                    message: "number out of range",
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_says(b: &[u8]) -> bool {
        matches!(
            serde_json::from_slice::<serde_json::Value>(b),
            Ok(serde_json::Value::Object(_))
        )
    }

    const SEEDS: &[&str] = &[
        r#"{}"#,
        r#" { "a" : 1 } "#,
        r#"{"msg":"192.168.1.2 - frank [27/Nov/2026:10:00:01 +0000] \"GET /x HTTP/1.1\" 200 4345"}"#,
        r#"{"a":[1,2.5,-3e10,0.1E-5,true,false,null,{"b":[]},"\u00e9\n\t\\\/"],"c":{}}"#,
        r#"{"emoji":"\ud83d\ude00","raw":"é☃😀"}"#,
        r#"{"lone":"\ud800"}"#,
        r#"{"lone":"\udc00x"}"#,
        r#"{"big":1e400}"#,
        r#"{"big":-1e308,"small":1e-400}"#,
        r#"{"n":01}"#,
        r#"{"n":-}"#,
        r#"{"n":1.}"#,
        r#"{"n":.5}"#,
        r#"{"n":1e}"#,
        r#"{"a":1,}"#,
        r#"{"a" 1}"#,
        r#"{a:1}"#,
        r#"{"a":tru}"#,
        r#"{"a":"x"} {}"#,
        r#"[1,2]"#,
        r#""str""#,
        "{\"ctl\":\"a\u{1}b\"}",
        r#"{"esc":"\x"}"#,
        r#"{"u":"\u12G4"}"#,
        r#"{"a":[}"#,
        r#"{"a":{]}"#,
        r#"{"dup":1,"dup":2}"#,
        r#"{"n":123456789012345678901234567890}"#,
        r#"{"n":-0.0e+0}"#,
    ];

    #[test]
    fn agrees_with_serde_json_on_seeds() {
        for s in SEEDS {
            assert_eq!(
                validate_object(s.as_bytes()).is_ok(),
                serde_says(s.as_bytes()),
                "{s}"
            );
        }
        let deep_ok = format!("{{\"a\":{}1{}}}", "[".repeat(126), "]".repeat(126));
        let deep_bad = format!("{{\"a\":{}1{}}}", "[".repeat(128), "]".repeat(128));
        for s in [deep_ok, deep_bad] {
            assert_eq!(
                validate_object(s.as_bytes()).is_ok(),
                serde_says(s.as_bytes()),
                "depth {}",
                s.len()
            );
        }
        assert!(validate_object(b"{\"a\":\"\xff\"}").is_err());
    }

    #[test]
    fn agrees_with_serde_json_on_mutations() {
        // Seeded xorshift: deterministic, no dependency.
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"{}[]\":,.-+eE0123456789tfnrul\\/ \n\tabcxyz\x01\xc3\xa9";
        let mut checked = 0;
        for _ in 0..40_000 {
            let seed = SEEDS[(next() % SEEDS.len() as u64) as usize].as_bytes();
            let mut b = seed.to_vec();
            for _ in 0..(next() % 3 + 1) {
                let pos = (next() % (b.len() as u64 + 1)) as usize;
                match next() % 3 {
                    0 if pos < b.len() => {
                        b.remove(pos);
                    }
                    1 => b.insert(pos, alphabet[(next() % alphabet.len() as u64) as usize]),
                    _ if pos < b.len() => {
                        b[pos] = alphabet[(next() % alphabet.len() as u64) as usize]
                    }
                    _ => {}
                }
            }
            assert_eq!(
                validate_object(&b).is_ok(),
                serde_says(&b),
                "{:?}",
                String::from_utf8_lossy(&b)
            );
            checked += 1;
        }
        assert_eq!(checked, 40_000);
    }
}
