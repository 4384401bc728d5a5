//! Reading literals: string escapes and `${VAR}` interpolation, numbers with
//! duration and size units, regexes. Kept apart from the grammar so each
//! rule is tested on its own and reports its own precise span.

use std::sync::Arc;
use std::time::Duration;

use crate::ast::{StrLit, ValueKind};
use crate::diag::Diagnostic;
use crate::source::{SourceFile, Span};

/// Looks up an environment variable.
pub(crate) type EnvFn<'a> = &'a (dyn Fn(&str) -> Option<String> + Send + Sync);

/// Duration units and their length in nanoseconds.
const DURATION_UNITS: &[(&str, u128)] = &[
    ("ns", 1),
    ("us", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60 * 1_000_000_000),
    ("h", 3_600 * 1_000_000_000),
    ("d", 86_400 * 1_000_000_000),
];

/// Size units and their length in bytes.
const SIZE_UNITS: &[(&str, u128)] = &[
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

/// Builds a [`StrLit`] while remembering where each piece came from.
struct Builder {
    out: String,
    pieces: Vec<(usize, usize, bool)>,
}

impl Builder {
    fn verbatim(&mut self, c: char, src: usize) {
        let at = self.out.len();
        let contiguous = matches!(self.pieces.last(), Some(&(o, s, true)) if s + (at - o) == src);
        if !contiguous {
            self.pieces.push((at, src, true));
        }
        self.out.push(c);
    }

    fn produced(&mut self, text: &str, src: usize) {
        self.pieces.push((self.out.len(), src, false));
        self.out.push_str(text);
    }
}

/// Decodes the body of a string literal. `lit` spans the whole literal,
/// quotes included. Errors (bad escapes, unset variables) are pushed to
/// `diags`; the result is then marked incomplete.
pub(crate) fn decode_string(
    lit: Span,
    closed: bool,
    env: EnvFn<'_>,
    diags: &mut Vec<Diagnostic>,
) -> StrLit {
    let file = lit.file.clone();
    let body_start = lit.start + 1;
    let body_end = if closed {
        lit.end.saturating_sub(1)
    } else {
        lit.end
    }
    .max(body_start);
    let raw = &file.text()[body_start..body_end];
    let mut b = Builder {
        out: String::new(),
        pieces: Vec::new(),
    };
    let mut complete = true;
    let chars: Vec<(usize, char)> = raw.char_indices().collect();
    let mut i = 0;
    let src = |k: usize| body_start + chars.get(k).map_or(raw.len(), |c| c.0);
    while i < chars.len() {
        let (_, c) = chars[i];
        match c {
            '\\' => match escape(&file, raw, body_start, &chars, i) {
                Ok((ch, next)) => {
                    let mut buf = [0; 4];
                    b.produced(ch.encode_utf8(&mut buf), src(i));
                    i = next;
                }
                Err((d, next)) => {
                    diags.push(d);
                    complete = false;
                    i = next;
                }
            },
            '$' if chars.get(i + 1).map(|c| c.1) == Some('$')
                && chars.get(i + 2).map(|c| c.1) == Some('{') =>
            {
                // `$${` is a literal `${`.
                b.verbatim('$', src(i + 1));
                b.verbatim('{', src(i + 2));
                i += 3;
            }
            '$' if chars.get(i + 1).map(|c| c.1) == Some('{') => {
                match interpolate(&file, &chars, i, body_start, env) {
                    Ok((text, next)) => {
                        b.produced(&text, src(i));
                        i = next;
                    }
                    Err((d, next)) => {
                        diags.push(d);
                        complete = false;
                        b.pieces.push((b.out.len(), src(i), false));
                        i = next;
                    }
                }
            }
            _ => {
                b.verbatim(c, src(i));
                i += 1;
            }
        }
    }
    StrLit {
        value: b.out,
        span: lit,
        complete: complete && closed,
        pieces: b.pieces,
    }
}

/// Reads the escape starting at `chars[i]` (a backslash). Returns the
/// character and the index after the escape.
#[allow(clippy::type_complexity)]
fn escape(
    file: &Arc<SourceFile>,
    raw: &str,
    base: usize,
    chars: &[(usize, char)],
    i: usize,
) -> Result<(char, usize), (Diagnostic, usize)> {
    let at = base + chars[i].0;
    let end_of = |k: usize| base + chars.get(k).map_or(raw.len(), |c| c.0);
    let Some(&(_, c)) = chars.get(i + 1) else {
        return Err((
            Diagnostic::error(
                "E-syntax",
                Some(Span::new(file, at, at + 1)),
                "a `\\` at the end of a string escapes nothing",
            ),
            i + 1,
        ));
    };
    let simple = match c {
        '"' => Some('"'),
        '\\' => Some('\\'),
        'n' => Some('\n'),
        't' => Some('\t'),
        'r' => Some('\r'),
        _ => None,
    };
    if let Some(ch) = simple {
        return Ok((ch, i + 2));
    }
    let bad_unicode = |k: usize, why: &str| {
        (
            Diagnostic::error(
                "E-syntax",
                Some(Span::new(file, at, end_of(k))),
                format!("invalid unicode escape: {why}"),
            )
            .note("write `\\u{1F600}` (1 to 6 hex digits) or `\\u00e9` (exactly 4)"),
            k,
        )
    };
    if c != 'u' {
        return Err((
            Diagnostic::error(
                "E-syntax",
                Some(Span::new(file, at, end_of(i + 2))),
                format!("unknown escape `\\{c}` in a string"),
            )
            .note("known escapes: \\\" \\\\ \\n \\t \\r \\u{...} \\uXXXX; write `\\\\` for a backslash"),
            i + 2,
        ));
    }
    if chars.get(i + 2).map(|c| c.1) == Some('{') {
        let mut k = i + 3;
        let mut hex = String::new();
        while let Some(&(_, h)) = chars.get(k) {
            if h == '}' {
                break;
            }
            hex.push(h);
            k += 1;
        }
        if chars.get(k).is_none() {
            return Err(bad_unicode(k, "expected `}`"));
        }
        let code = if (1..=6).contains(&hex.len()) && hex.chars().all(|h| h.is_ascii_hexdigit()) {
            u32::from_str_radix(&hex, 16).ok()
        } else {
            None
        };
        return match code.and_then(char::from_u32) {
            Some(ch) => Ok((ch, k + 1)),
            None => Err(bad_unicode(
                k + 1,
                &format!("`{hex}` is not a unicode scalar value in hex"),
            )),
        };
    }
    let four = |k: usize| -> Option<u32> {
        let hex: String = chars.get(k..k + 4)?.iter().map(|c| c.1).collect();
        if hex.chars().all(|h| h.is_ascii_hexdigit()) {
            u32::from_str_radix(&hex, 16).ok()
        } else {
            None
        }
    };
    let Some(code) = four(i + 2) else {
        return Err(bad_unicode(
            (i + 6).min(chars.len()),
            "expected 4 hex digits",
        ));
    };
    if (0xD800..0xDC00).contains(&code) {
        // A high surrogate must be followed by `\uXXXX` holding the low one.
        let low = (chars.get(i + 6).map(|c| c.1) == Some('\\')
            && chars.get(i + 7).map(|c| c.1) == Some('u'))
        .then(|| four(i + 8))
        .flatten()
        .filter(|l| (0xDC00..0xE000).contains(l));
        return match low {
            Some(low) => {
                let ch = char::from_u32(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00));
                ch.map(|ch| (ch, i + 12))
                    .ok_or_else(|| bad_unicode(i + 12, "invalid surrogate pair"))
            }
            None => Err(bad_unicode(
                i + 6,
                "a high surrogate must be followed by a low one (`\\uDC00`..`\\uDFFF`)",
            )),
        };
    }
    match char::from_u32(code) {
        Some(ch) => Ok((ch, i + 6)),
        None => Err(bad_unicode(
            i + 6,
            "a lone low surrogate is not a character",
        )),
    }
}

/// Reads `${NAME}` or `${NAME:-default}` starting at `chars[i]` (the `$`).
/// Returns the text to insert and the index after the closing `}`.
fn interpolate(
    file: &Arc<SourceFile>,
    chars: &[(usize, char)],
    i: usize,
    base: usize,
    env: EnvFn<'_>,
) -> Result<(String, usize), (Diagnostic, usize)> {
    let at = base + chars[i].0;
    let mut k = i + 2;
    let mut name = String::new();
    while let Some(&(_, c)) = chars.get(k) {
        if c == '}' || (c == ':' && chars.get(k + 1).map(|c| c.1) == Some('-')) {
            break;
        }
        name.push(c);
        k += 1;
    }
    let mut default = None;
    if chars.get(k).map(|c| c.1) == Some(':') {
        k += 2;
        let mut d = String::new();
        while let Some(&(_, c)) = chars.get(k) {
            match c {
                '}' => break,
                '\\' if chars.get(k + 1).is_some() => {
                    let n = chars[k + 1].1;
                    d.push(match n {
                        'n' => '\n',
                        't' => '\t',
                        'r' => '\r',
                        other => other,
                    });
                    k += 2;
                }
                _ => {
                    d.push(c);
                    k += 1;
                }
            }
        }
        default = Some(d);
    }
    let Some(&(close, _)) = chars.get(k) else {
        let end = chars.last().map_or(at + 2, |c| base + c.0 + c.1.len_utf8());
        return Err((
            Diagnostic::error(
                "E-env",
                Some(Span::new(file, at, end)),
                "unterminated `${`: expected `}` after the variable name",
            )
            .note("write `$${` for a literal `${`"),
            k,
        ));
    };
    let span = Span::new(file, at, base + close + 1);
    let valid = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err((
            Diagnostic::error(
                "E-env",
                Some(span),
                format!("invalid environment variable name `{name}`"),
            )
            .note("a name is letters, digits and `_`, not starting with a digit; write `$${` for a literal `${`"),
            k + 1,
        ));
    }
    let value = env(&name);
    let text = match (value, default) {
        (Some(v), Some(d)) if v.is_empty() => d,
        (Some(v), _) => v,
        (None, Some(d)) => d,
        (None, None) => {
            return Err((
                Diagnostic::error(
                    "E-env",
                    Some(span),
                    format!("environment variable `{name}` is not set"),
                )
                .note(format!("set it, or give a default: `${{{name}:-value}}`")),
                k + 1,
            ))
        }
    };
    Ok((text, k + 1))
}

/// Reads a number literal, with an optional duration or size unit.
pub(crate) fn number(span: &Span) -> Result<ValueKind, Diagnostic> {
    let text = span.text();
    let unit_len = text
        .chars()
        .rev()
        .take_while(|c| c.is_ascii_alphabetic())
        .count();
    let (num, unit) = text.split_at(text.len() - unit_len);
    let digits: String = num.chars().filter(|&c| c != '_').collect();
    let decimal = digits.contains(['.', 'e', 'E']);
    let out_of_range = || {
        Diagnostic::error(
            "E-value",
            Some(span.clone()),
            format!("the number `{text}` is out of range"),
        )
    };
    if unit.is_empty() {
        return if decimal {
            digits
                .parse::<f64>()
                .ok()
                .filter(|x| x.is_finite())
                .map(ValueKind::Float)
                .ok_or_else(out_of_range)
        } else {
            digits
                .parse::<i64>()
                .map(ValueKind::Int)
                .map_err(|_| out_of_range())
        };
    }
    let unit_span = Span::new(&span.file, span.end - unit_len, span.end);
    let lookup = |units: &[(&str, u128)]| units.iter().find(|(u, _)| *u == unit).map(|u| u.1);
    let (factor, is_size) = match (lookup(DURATION_UNITS), lookup(SIZE_UNITS)) {
        (Some(f), _) => (f, false),
        (None, Some(f)) => (f, true),
        (None, None) => {
            let all = DURATION_UNITS.iter().chain(SIZE_UNITS).map(|u| u.0);
            // Compare case-insensitively first: `kib` means `KiB`.
            let hint = all
                .clone()
                .find(|u| u.eq_ignore_ascii_case(unit))
                .or_else(|| ulog_engine::suggest::closest(unit, all));
            return Err(Diagnostic::error(
                "E-value",
                Some(unit_span),
                format!(
                    "unknown unit `{unit}` in `{text}`{}",
                    hint.map(|h| format!("; did you mean `{h}`?"))
                        .unwrap_or_default()
                ),
            )
            .note("duration units: ns, us, ms, s, m, h, d")
            .note("size units: B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"));
        }
    };
    let what = if is_size { "size" } else { "duration" };
    if digits.starts_with('-') {
        return Err(Diagnostic::error(
            "E-value",
            Some(span.clone()),
            format!("a {what} cannot be negative"),
        ));
    }
    let amount: u128 = if decimal {
        let x: f64 = digits.parse().map_err(|_| out_of_range())?;
        let scaled = x * factor as f64;
        if !scaled.is_finite() || scaled >= u128::MAX as f64 {
            return Err(out_of_range());
        }
        if is_size && scaled.fract() != 0.0 {
            return Err(Diagnostic::error(
                "E-value",
                Some(span.clone()),
                format!("`{text}` is not a whole number of bytes"),
            ));
        }
        scaled.round() as u128
    } else {
        let n: u128 = digits
            .trim_start_matches('+')
            .parse()
            .map_err(|_| out_of_range())?;
        n.checked_mul(factor).ok_or_else(out_of_range)?
    };
    if is_size {
        u64::try_from(amount)
            .map(ValueKind::Size)
            .map_err(|_| out_of_range())
    } else {
        let secs = u64::try_from(amount / 1_000_000_000).map_err(|_| out_of_range())?;
        Ok(ValueKind::Duration(Duration::new(
            secs,
            (amount % 1_000_000_000) as u32,
        )))
    }
}

/// Reads a regex literal `/.../`: `\/` becomes `/`, other escapes stay for
/// the regex engine.
pub(crate) fn regex(span: &Span) -> String {
    let text = span.text();
    let body = &text[1..text.len().saturating_sub(1).max(1)];
    let mut out = String::with_capacity(body.len());
    let mut chars = body.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' {
            match chars.next() {
                Some('/') => out.push('/'),
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

    fn file(text: &str) -> Arc<SourceFile> {
        Arc::new(SourceFile::new("t.conf", None, text))
    }

    fn env(name: &str) -> Option<String> {
        match name {
            "HOME_DIR" => Some("/home/u".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    fn string(src: &str) -> (StrLit, Vec<Diagnostic>) {
        let f = file(src);
        let mut diags = Vec::new();
        let lit = decode_string(Span::new(&f, 0, src.len()), true, &env, &mut diags);
        (lit, diags)
    }

    #[test]
    fn escapes() {
        let (s, d) = string(r#""a\"b\\c\n\t\r\u{1F600}\u00e9\uD83D\uDE00""#);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(s.value, "a\"b\\c\n\t\r😀é😀");
        assert!(s.complete);
    }

    #[test]
    fn bad_escapes_point_at_the_escape() {
        let (s, d) = string(r#""C:\logs""#);
        assert!(!s.complete);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].line_col().unwrap().2, 4);
        assert!(d[0].message.contains("unknown escape `\\l`"));
        for bad in [r#""\u{110000}""#, r#""\u12""#, r#""\uD800x""#, r#""\u{12""#] {
            let (_, d) = string(bad);
            assert_eq!(d.len(), 1, "{bad}");
            assert!(d[0].message.contains("invalid unicode escape"), "{bad}");
        }
    }

    #[test]
    fn interpolation() {
        let (s, d) =
            string(r#""${HOME_DIR}/x ${NOPE:-def} ${EMPTY:-e} [${EMPTY}] $${HOME_DIR} $x""#);
        assert!(d.is_empty(), "{d:?}");
        assert_eq!(s.value, "/home/u/x def e [] ${HOME_DIR} $x");
    }

    #[test]
    fn unset_variable_is_an_error_at_the_dollar() {
        let (s, d) = string(r#""ab ${NOPE} ${OK:-1}""#);
        assert!(!s.complete);
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].code, "E-env");
        assert_eq!(d[0].line_col().unwrap().2, 5);
        assert!(d[0].message.contains("`NOPE` is not set"));
        let (_, d) = string(r#""${1X}""#);
        assert!(d[0].message.contains("invalid environment variable name"));
        let (_, d) = string(r#""${X""#);
        assert!(d[0].message.contains("unterminated"));
    }

    #[test]
    fn offsets_map_back_to_the_source() {
        //            0 1234567 8 9
        let (s, _) = string(r#""a\tb${HOME_DIR}c""#);
        assert_eq!(s.value, "a\tb/home/uc");
        assert_eq!(s.source_offset(0), 1); // a
        assert_eq!(s.source_offset(1), 2); // \t -> the backslash
        assert_eq!(s.source_offset(2), 4); // b
        assert_eq!(s.source_offset(5), 5); // inside ${..} -> the $
        assert_eq!(s.source_offset(10), 16); // c
    }

    fn num(text: &str) -> Result<ValueKind, Diagnostic> {
        let f = file(text);
        number(&Span::new(&f, 0, text.len()))
    }

    #[test]
    fn numbers_durations_sizes() {
        assert!(matches!(num("42"), Ok(ValueKind::Int(42))));
        assert!(matches!(num("-1_000"), Ok(ValueKind::Int(-1000))));
        assert!(matches!(num("+7"), Ok(ValueKind::Int(7))));
        assert!(matches!(num("0.5"), Ok(ValueKind::Float(x)) if x == 0.5));
        assert!(matches!(num("1e3"), Ok(ValueKind::Float(x)) if x == 1000.0));
        let d = |t: &str| match num(t) {
            Ok(ValueKind::Duration(d)) => d,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(d("250ms"), Duration::from_millis(250));
        assert_eq!(d("5s"), Duration::from_secs(5));
        assert_eq!(d("2m"), Duration::from_secs(120));
        assert_eq!(d("2h"), Duration::from_secs(7200));
        assert_eq!(d("1d"), Duration::from_secs(86400));
        assert_eq!(d("10us"), Duration::from_micros(10));
        assert_eq!(d("7ns"), Duration::from_nanos(7));
        assert_eq!(d("1.5s"), Duration::from_millis(1500));
        let s = |t: &str| match num(t) {
            Ok(ValueKind::Size(s)) => s,
            other => panic!("{t}: {other:?}"),
        };
        assert_eq!(s("512B"), 512);
        assert_eq!(s("512KiB"), 512 * 1024);
        assert_eq!(s("8MiB"), 8 << 20);
        assert_eq!(s("1GiB"), 1 << 30);
        assert_eq!(s("2KB"), 2000);
        assert_eq!(s("3MB"), 3_000_000);
        assert_eq!(s("1GB"), 1_000_000_000);
        assert_eq!(s("1.5KiB"), 1536);
    }

    #[test]
    fn bad_numbers() {
        let e = num("5sec").unwrap_err();
        assert_eq!(e.code, "E-value");
        assert!(e.message.contains("unknown unit `sec`"), "{}", e.message);
        assert_eq!(e.line_col().unwrap().2, 2);
        assert!(num("8mib")
            .unwrap_err()
            .message
            .contains("did you mean `MiB`"));
        assert!(num("-5s").unwrap_err().message.contains("negative"));
        assert!(num("0.5B").unwrap_err().message.contains("whole number"));
        assert!(num("99999999999999999999").is_err());
        assert!(num("99999999999999999999999GiB").is_err());
    }

    #[test]
    fn regexes() {
        let f = file(r"/a\/b\d+/");
        assert_eq!(regex(&Span::new(&f, 0, 9)), r"a/b\d+");
    }
}
