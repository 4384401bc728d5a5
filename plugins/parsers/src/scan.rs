//! A small cursor for the hand-written scanners of fixed line grammars
//! (access logs, ltsv, logfmt, csv): no regex, no copies unless a value has
//! escapes, and errors that say what was expected where.

use std::borrow::Cow;

use crate::ParseError;

/// A position in a line of text.
pub(crate) struct Cursor<'a> {
    text: &'a str,
    pos: usize,
    /// Prefixes error messages ("apache2").
    format: &'static str,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(text: &'a str, format: &'static str) -> Self {
        Self {
            text,
            pos: 0,
            format,
        }
    }

    /// Where the cursor is, in bytes from the start.
    pub(crate) fn pos(&self) -> usize {
        self.pos
    }

    /// Moves to `pos` (a byte offset at a character boundary, not before
    /// the current position).
    pub(crate) fn advance_to(&mut self, pos: usize) {
        self.pos = pos.clamp(self.pos, self.text.len());
    }

    /// What is left.
    pub(crate) fn rest(&self) -> &'a str {
        &self.text[self.pos..]
    }

    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    pub(crate) fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.pos).copied()
    }

    /// An error at the current position.
    pub(crate) fn error(&self, what: &str) -> ParseError {
        let near = &self.text.as_bytes()[self.pos.min(self.text.len())..];
        let near = &near[..near.len().min(20)];
        ParseError::new(format!(
            "{}: {what} at byte {} (near {})",
            self.format,
            self.pos,
            crate::snippet(near)
        ))
    }

    /// Consumes `c` if it is next.
    pub(crate) fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.pos += 1;
            true
        } else {
            false
        }
    }

    /// Consumes `c` or fails saying `what` was expected.
    pub(crate) fn expect(&mut self, c: u8, what: &str) -> Result<(), ParseError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.error(&format!("expected {what}")))
        }
    }

    /// Consumes spaces; returns how many.
    pub(crate) fn spaces(&mut self) -> usize {
        let start = self.pos;
        while self.peek() == Some(b' ') {
            self.pos += 1;
        }
        self.pos - start
    }

    /// Consumes bytes up to (not including) the next `c` or the end.
    pub(crate) fn until(&mut self, c: u8) -> &'a str {
        let start = self.pos;
        let end = memchr::memchr(c, &self.text.as_bytes()[start..])
            .map_or(self.text.len(), |i| start + i);
        self.pos = end;
        &self.text[start..end]
    }

    /// Consumes a non-empty run of bytes up to the next space.
    pub(crate) fn token(&mut self, what: &str) -> Result<&'a str, ParseError> {
        let t = self.until(b' ');
        if t.is_empty() {
            return Err(self.error(&format!("expected {what}")));
        }
        Ok(t)
    }

    /// Consumes a double-quoted string (the cursor is on its opening quote)
    /// where a backslash escapes the next byte. `\"` and `\\` are unescaped;
    /// other escapes (`\x22`, `\n`) are kept as written, as the access-log
    /// writers escape for humans.
    pub(crate) fn quoted(&mut self, what: &str) -> Result<Cow<'a, str>, ParseError> {
        self.expect(b'"', &format!("`\"` opening {what}"))?;
        let start = self.pos;
        let bytes = self.text.as_bytes();
        let mut escaped = false;
        let mut i = start;
        loop {
            match memchr::memchr2(b'"', b'\\', &bytes[i..]) {
                None => {
                    self.pos = bytes.len();
                    return Err(self.error(&format!("unterminated {what}")));
                }
                Some(off) => {
                    let at = i + off;
                    if bytes[at] == b'\\' {
                        escaped = true;
                        i = at + 2;
                        if i > bytes.len() {
                            self.pos = bytes.len();
                            return Err(self.error(&format!("unterminated {what}")));
                        }
                    } else {
                        self.pos = at + 1;
                        let raw = &self.text[start..at];
                        return Ok(if escaped {
                            Cow::Owned(unescape_quotes(raw))
                        } else {
                            Cow::Borrowed(raw)
                        });
                    }
                }
            }
        }
    }
}

/// `\"` → `"`, `\\` → `\`; other escapes stay.
fn unescape_quotes(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some(n @ ('"' | '\\')) => out.push(n),
                Some(n) => {
                    out.push('\\');
                    out.push(n);
                }
                None => out.push('\\'),
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_strings() {
        let mut c = Cursor::new(r#""a \"b\" \x22c\\" rest"#, "t");
        assert_eq!(c.quoted("q").unwrap(), r#"a "b" \x22c\"#);
        assert_eq!(c.rest(), " rest");
        let mut c = Cursor::new(r#""plain" x"#, "t");
        assert!(matches!(c.quoted("q").unwrap(), Cow::Borrowed("plain")));
        let mut c = Cursor::new(r#""open \"#, "t");
        assert!(c
            .quoted("referer")
            .unwrap_err()
            .0
            .contains("unterminated referer"));
        let mut c = Cursor::new("x", "t");
        assert!(c.quoted("agent").unwrap_err().0.contains("opening agent"));
    }
}
