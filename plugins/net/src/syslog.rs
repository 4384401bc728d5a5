//! Syslog over TCP: cutting the stream into messages (RFC 6587), and the
//! facility and severity names events are tagged with.
//!
//! Two framings exist in the wild. *Octet counting* (`LEN SP MSG`, RFC 6587
//! section 3.4.1, and the only one RFC 5425 allows over TLS) is exact: a
//! message may contain newlines. *Non-transparent framing* ends each message
//! with a newline (what `logger --tcp` and rsyslog's plain TCP forwarding
//! send by default). With `auto` each frame is looked at on its own: one that
//! starts with digits followed by a space is octet-counted, anything else
//! runs to the next newline — a syslog message proper starts with `<`.

use bytes::{Bytes, BytesMut};

/// Facility names by number (RFC 5424 table 1), the same names the syslog
/// parser of `ulog-parsers` writes into the `facility` field.
pub(crate) const FACILITIES: [&str; 24] = [
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// Severity names by number (RFC 5424 table 2), as the parser writes them.
pub(crate) const SEVERITIES: [&str; 8] = [
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// The PRI of a message that has none (RFC 3164 section 4.3.3: user.notice).
pub(crate) const DEFAULT_PRI: u8 = 13;

/// Reads a leading `<PRI>` (1 to 3 digits, at most 191); returns it and the
/// bytes it took.
pub(crate) fn read_pri(b: &[u8]) -> Option<(u8, usize)> {
    if b.first() != Some(&b'<') {
        return None;
    }
    let digits = b[1..]
        .iter()
        .take(4)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if !(1..=3).contains(&digits) || b.get(1 + digits) != Some(&b'>') {
        return None;
    }
    let v = b[1..1 + digits]
        .iter()
        .fold(0u32, |v, c| v * 10 + u32::from(c - b'0'));
    u8::try_from(v)
        .ok()
        .filter(|v| *v <= 191)
        .map(|v| (v, 2 + digits))
}

/// How TCP streams are cut into messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// Per frame: octet-counted when it starts with `DIGITS SP`, else newline.
    Auto,
    /// Only `LEN SP MSG` frames; anything else closes the connection.
    OctetCounting,
    /// One message per line.
    Newline,
}

/// One unit found in the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A message: `chunk[start..end]`.
    Msg(usize, usize),
    /// A message longer than the maximum, skipped; its length (at least).
    Oversized(usize),
}

/// What [`Framer::drain`] hands out: the frozen chunk and the frames in it.
pub(crate) struct Drained<'a> {
    /// The bytes the frames are ranges of.
    pub chunk: Bytes,
    /// The frames, in order.
    pub frames: &'a [Frame],
    /// Set when the stream is not in the expected framing: the connection
    /// should be closed after the frames before it are emitted.
    pub broken: Option<&'static str>,
}

/// The framing state of one connection.
pub(crate) struct Framer {
    buf: BytesMut,
    framing: Framing,
    max: usize,
    /// Bytes of an oversized octet-counted frame still to throw away.
    skip: usize,
    /// Throwing away an oversized line up to its newline.
    discarding_line: bool,
    frames: Vec<Frame>,
}

/// Result of reading a `LEN SP` header.
enum LenHeader {
    /// The length and the header's size.
    Count(usize, usize),
    /// Not an octet count.
    No,
    /// Only digits so far.
    Incomplete,
}

fn read_len(b: &[u8]) -> LenHeader {
    const MAX_DIGITS: usize = 10;
    let digits = b
        .iter()
        .take(MAX_DIGITS + 1)
        .take_while(|c| c.is_ascii_digit())
        .count();
    if digits == 0 || digits > MAX_DIGITS || b[0] == b'0' {
        return LenHeader::No;
    }
    match b.get(digits) {
        None => LenHeader::Incomplete,
        Some(b' ') => {
            let n = b[..digits]
                .iter()
                .fold(0u64, |v, c| v * 10 + u64::from(c - b'0'));
            match usize::try_from(n) {
                Ok(n) => LenHeader::Count(n, digits + 1),
                Err(_) => LenHeader::No,
            }
        }
        Some(_) => LenHeader::No,
    }
}

impl Framer {
    pub(crate) fn new(framing: Framing, max: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            framing,
            max: max.max(1),
            skip: 0,
            discarding_line: false,
            frames: Vec::new(),
        }
    }

    /// The read buffer, for [`crate::framing::fill`].
    pub(crate) fn buf_mut(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Bytes of an unfinished frame.
    #[cfg(test)]
    pub(crate) fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Takes every complete frame out of the buffer.
    pub(crate) fn drain(&mut self) -> Drained<'_> {
        self.frames.clear();
        let b = &self.buf[..];
        let mut pos = 0;
        let mut broken = None;
        while pos < b.len() {
            if self.skip > 0 {
                let n = self.skip.min(b.len() - pos);
                pos += n;
                self.skip -= n;
                continue;
            }
            if self.discarding_line {
                match memchr::memchr(b'\n', &b[pos..]) {
                    Some(i) => {
                        pos += i + 1;
                        self.discarding_line = false;
                        continue;
                    }
                    None => {
                        pos = b.len();
                        break;
                    }
                }
            }
            // Line ends and NULs between frames are padding some senders add.
            if matches!(b[pos], b'\n' | b'\r' | b'\0') {
                pos += 1;
                continue;
            }
            let octet = match (self.framing, read_len(&b[pos..])) {
                (Framing::Newline, _) => None,
                (_, LenHeader::Incomplete) => break,
                (_, LenHeader::Count(len, header)) => Some((len, header)),
                (Framing::Auto, LenHeader::No) => None,
                (Framing::OctetCounting, LenHeader::No) => {
                    broken = Some("expected an octet-counted frame (`LEN MSG`, RFC 6587)");
                    break;
                }
            };
            if let Some((len, header)) = octet {
                let start = pos + header;
                if len > self.max {
                    self.frames.push(Frame::Oversized(len));
                    pos = start;
                    self.skip = len;
                    continue;
                }
                if start + len > b.len() {
                    break;
                }
                if len > 0 {
                    self.frames.push(Frame::Msg(start, start + len));
                }
                pos = start + len;
                continue;
            }
            match memchr::memchr(b'\n', &b[pos..]) {
                Some(i) => {
                    let nl = pos + i;
                    let mut end = nl;
                    if end > pos && b[end - 1] == b'\r' {
                        end -= 1;
                    }
                    if end - pos > self.max {
                        self.frames.push(Frame::Oversized(end - pos));
                    } else {
                        self.frames.push(Frame::Msg(pos, end));
                    }
                    pos = nl + 1;
                }
                None => {
                    if b.len() - pos > self.max {
                        self.frames.push(Frame::Oversized(b.len() - pos));
                        self.discarding_line = true;
                        pos = b.len();
                    }
                    break;
                }
            }
        }
        let chunk = self.buf.split_to(pos).freeze();
        Drained {
            chunk,
            frames: &self.frames,
            broken,
        }
    }

    /// At the end of the stream: a newline-framed rest is the last message;
    /// a cut octet-counted frame is reported as `Err(bytes)`.
    pub(crate) fn finish(&mut self) -> Result<Option<Bytes>, usize> {
        let rest = self.buf.split().freeze();
        let skipping = self.skip > 0 || self.discarding_line;
        self.skip = 0;
        self.discarding_line = false;
        let trimmed = rest
            .iter()
            .position(|c| !matches!(c, b'\n' | b'\r' | b'\0'))
            .map_or(rest.len(), |i| i);
        if skipping || trimmed == rest.len() {
            return Ok(None);
        }
        let rest = rest.slice(trimmed..);
        let octet = !matches!(self.framing, Framing::Newline)
            && matches!(
                read_len(&rest),
                LenHeader::Count(..) | LenHeader::Incomplete
            );
        if octet {
            return Err(rest.len());
        }
        Ok(Some(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(f: &mut Framer, input: &[u8]) -> (Vec<String>, Option<&'static str>) {
        f.buf.extend_from_slice(input);
        let d = f.drain();
        let out = d
            .frames
            .iter()
            .map(|fr| match *fr {
                Frame::Msg(s, e) => String::from_utf8(d.chunk[s..e].to_vec()).unwrap(),
                Frame::Oversized(n) => format!("<oversized {n}>"),
            })
            .collect();
        (out, d.broken)
    }

    #[test]
    fn pri_bounds() {
        assert_eq!(read_pri(b"<0>x"), Some((0, 3)));
        assert_eq!(read_pri(b"<191>x"), Some((191, 5)));
        assert_eq!(read_pri(b"<192>x"), None);
        assert_eq!(read_pri(b"<1234>x"), None);
        assert_eq!(read_pri(b"<>x"), None);
        assert_eq!(read_pri(b"<13"), None);
        assert_eq!(read_pri(b"13>"), None);
    }

    #[test]
    fn auto_mixes_octet_counted_and_newline_frames() {
        let mut f = Framer::new(Framing::Auto, 1000);
        let (out, broken) = frames(&mut f, b"11 <13>a\nb c d<14>line one\n2024-01-01 no pri\n");
        assert_eq!(out, ["<13>a\nb c d", "<14>line one", "2024-01-01 no pri"]);
        assert_eq!(broken, None);
        // Split inside the length, inside the payload, inside a line.
        let (out, _) = frames(&mut f, b"1");
        assert!(out.is_empty());
        let (out, _) = frames(&mut f, b"0 <13>12");
        assert!(out.is_empty());
        let (out, _) = frames(&mut f, b"3456\n<15>par");
        assert_eq!(out, ["<13>123456"]);
        let (out, _) = frames(&mut f, b"tial\r\n");
        assert_eq!(out, ["<15>partial"]);
        assert_eq!(f.pending(), 0);
    }

    #[test]
    fn octet_counting_refuses_other_frames() {
        let mut f = Framer::new(Framing::OctetCounting, 1000);
        let (out, broken) = frames(&mut f, b"5 <1>ab<2>cd\n");
        assert_eq!(out, ["<1>ab"]);
        assert!(broken.unwrap().contains("octet-counted"));
    }

    #[test]
    fn newline_framing_keeps_leading_digits() {
        let mut f = Framer::new(Framing::Newline, 1000);
        let (out, _) = frames(&mut f, b"5 <1>ab\n");
        assert_eq!(out, ["5 <1>ab"]);
    }

    #[test]
    fn oversized_frames_are_skipped_exactly() {
        let mut f = Framer::new(Framing::Auto, 5);
        let (out, _) = frames(&mut f, b"8 <1>ab");
        assert_eq!(out, ["<oversized 8>"]);
        let (out, _) = frames(&mut f, b"cde3 <2>");
        assert_eq!(out, ["<2>"]);
        let (out, _) = frames(&mut f, b"<3>toolong");
        assert_eq!(out, ["<oversized 10>"]);
        let (out, _) = frames(&mut f, b"more\n<4>ok\n");
        assert_eq!(out, ["<4>ok"]);
    }

    #[test]
    fn end_of_stream() {
        let mut f = Framer::new(Framing::Auto, 100);
        frames(&mut f, b"<13>last line without newline");
        assert_eq!(
            f.finish().unwrap().as_deref(),
            Some(&b"<13>last line without newline"[..])
        );
        frames(&mut f, b"20 <13>cut");
        assert_eq!(f.finish(), Err(10));
        frames(&mut f, b"\n\n");
        assert_eq!(f.finish(), Ok(None));
    }

    /// A small deterministic generator, so no test dependency is needed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    fn all_frames(framing: Framing, max: usize, stream: &[u8], cuts: &[usize]) -> Vec<String> {
        let mut f = Framer::new(framing, max);
        let mut out = Vec::new();
        let mut from = 0;
        for &to in cuts.iter().chain(std::iter::once(&stream.len())) {
            let (got, broken) = frames(&mut f, &stream[from..to]);
            out.extend(got);
            if let Some(b) = broken {
                out.push(format!("<broken {b}>"));
                return out;
            }
            from = to;
        }
        match f.finish() {
            Ok(Some(rest)) => out.push(String::from_utf8_lossy(&rest).into_owned()),
            Ok(None) => {}
            Err(n) => out.push(format!("<cut {n}>")),
        }
        out
    }

    #[test]
    fn frames_do_not_depend_on_how_the_stream_is_split() {
        let mut rng = Rng(0x2545_f491_4f6c_dd1d);
        for round in 0..300 {
            // A stream of octet-counted and newline frames, some oversized.
            let mut stream = Vec::new();
            for _ in 0..(rng.next() % 8) {
                let len = (rng.next() % 40) as usize;
                let body: String = (0..len).map(|i| (b'a' + (i % 26) as u8) as char).collect();
                let msg = format!("<13>{body}");
                if rng.next() & 1 == 0 {
                    stream.extend_from_slice(format!("{} {msg}", msg.len()).as_bytes());
                } else {
                    stream.extend_from_slice(format!("{msg}\n").as_bytes());
                }
            }
            let whole = all_frames(Framing::Auto, 30, &stream, &[]);
            let mut cuts: Vec<usize> = (0..(rng.next() % 6))
                .map(|_| (rng.next() as usize) % (stream.len() + 1))
                .collect();
            cuts.sort_unstable();
            let split = all_frames(Framing::Auto, 30, &stream, &cuts);
            // A newline-framed oversized message is reported with however
            // much was buffered when it crossed the limit.
            let norm = |v: Vec<String>| -> Vec<String> {
                v.into_iter()
                    .map(|l| {
                        if l.starts_with("<oversized") {
                            "<oversized>".into()
                        } else {
                            l
                        }
                    })
                    .collect()
            };
            assert_eq!(
                norm(whole),
                norm(split),
                "round {round}: {:?} cut at {cuts:?}",
                String::from_utf8_lossy(&stream)
            );
        }
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let alphabet = b"0123456789 <>\n\r\0ab";
        for _ in 0..3000 {
            let len = (rng.next() % 64) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| alphabet[(rng.next() as usize) % alphabet.len()])
                .collect();
            for framing in [Framing::Auto, Framing::OctetCounting, Framing::Newline] {
                let cut = (rng.next() as usize) % (len + 1);
                all_frames(framing, 1 + (rng.next() % 20) as usize, &bytes, &[cut]);
            }
        }
    }
}
