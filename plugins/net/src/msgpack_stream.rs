//! Finding where one MessagePack value ends in a stream of them.
//!
//! A msgpack stream has no delimiters, and a value may arrive split across
//! any number of reads. Decoding from the start of the buffer after every
//! read would be quadratic for large values and cannot tell "not yet
//! complete" from "broken", so [`scan`] walks the markers without building
//! anything: it says how long the first value is, how many more bytes are
//! needed at least, or why the bytes cannot be msgpack. Only complete values
//! are then decoded.

/// Deepest nesting accepted; deeper values are refused as garbage (the
/// decoders that run afterwards recurse).
pub(crate) const MAX_DEPTH: usize = 100;

/// What [`scan`] found at the start of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scan {
    /// One complete value of this many bytes.
    Complete(usize),
    /// Not complete: at least this many bytes in total are needed.
    Incomplete(usize),
    /// Not msgpack, or beyond a limit.
    Invalid(&'static str),
}

/// Scans the first msgpack value in `buf`, refusing values longer than
/// `max_len` bytes or nested deeper than [`MAX_DEPTH`].
pub(crate) fn scan(buf: &[u8], max_len: usize) -> Scan {
    // Items still to read at each open level; the bottom level is the one
    // top-level value.
    let mut stack: Vec<u64> = Vec::new();
    let mut remaining: u64 = 1;
    let mut pos: usize = 0;
    loop {
        while remaining == 0 {
            match stack.pop() {
                Some(r) => remaining = r,
                None => return Scan::Complete(pos),
            }
        }
        remaining -= 1;
        let Some(&marker) = buf.get(pos) else {
            return need(pos.saturating_add(1), max_len);
        };
        // (header bytes after the marker, payload length, child items)
        let (header, children): (usize, u64) = match marker {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0),
            0x80..=0x8f => (0, u64::from(marker & 0x0f) * 2),
            0x90..=0x9f => (0, u64::from(marker & 0x0f)),
            0xa0..=0xbf => {
                pos += 1 + usize::from(marker & 0x1f);
                if pos > buf.len() {
                    return need(pos, max_len);
                }
                continue;
            }
            0xc1 => return Scan::Invalid("0xc1 is not a msgpack marker"),
            0xc4 | 0xd9 => (1, 0),
            0xc5 | 0xda => (2, 0),
            0xc6 | 0xdb => (4, 0),
            0xc7 => (2, 0),
            0xc8 => (3, 0),
            0xc9 => (5, 0),
            0xca => (4, 0),
            0xcb => (8, 0),
            0xcc | 0xd0 => (1, 0),
            0xcd | 0xd1 => (2, 0),
            0xce | 0xd2 => (4, 0),
            0xcf | 0xd3 => (8, 0),
            0xd4 => (2, 0),
            0xd5 => (3, 0),
            0xd6 => (5, 0),
            0xd7 => (9, 0),
            0xd8 => (17, 0),
            0xdc => (2, 0),
            0xdd => (4, 0),
            0xde => (2, 0),
            0xdf => (4, 0),
        };
        let body = pos + 1;
        if body + header > buf.len() {
            return need(body + header, max_len);
        }
        let h = &buf[body..body + header];
        let be = |b: &[u8]| b.iter().fold(0u64, |acc, x| (acc << 8) | u64::from(*x));
        let (payload, children) = match marker {
            // Length-prefixed payloads: bin, str, ext (ext has a type byte).
            0xc4..=0xc6 | 0xd9..=0xdb => (be(h), children),
            0xc7..=0xc9 => (be(&h[..header - 1]), children),
            0xdc | 0xdd => (0, be(h)),
            0xde | 0xdf => (0, be(h).saturating_mul(2)),
            _ => (0, children),
        };
        let Ok(payload) = usize::try_from(payload) else {
            return Scan::Invalid("value larger than the maximum size");
        };
        let end = body.saturating_add(header).saturating_add(payload);
        if end > max_len {
            return Scan::Invalid("value larger than the maximum size");
        }
        if end > buf.len() {
            return Scan::Incomplete(end);
        }
        pos = end;
        if children > 0 {
            // Every child takes at least one byte.
            if (pos as u64).saturating_add(children) > max_len as u64 {
                return Scan::Invalid("value larger than the maximum size");
            }
            if stack.len() >= MAX_DEPTH {
                return Scan::Invalid("values nested too deeply");
            }
            stack.push(remaining);
            remaining = children;
        }
    }
}

/// "Need `total` bytes", unless that is beyond the limit.
fn need(total: usize, max_len: usize) -> Scan {
    if total > max_len {
        Scan::Invalid("value larger than the maximum size")
    } else {
        Scan::Incomplete(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn encode(v: &serde_json::Value) -> Vec<u8> {
        let mut out = Vec::new();
        ulog_parsers::msgpack::write_json(&mut out, v);
        out
    }

    #[test]
    fn finds_the_end_of_every_kind_of_value() {
        let values = [
            json!({"a": 1, "b": [true, null, "x", -5, 1.5, 300, -300, 70000, 5_000_000_000u64]}),
            json!({"s": "y".repeat(40), "t": "z".repeat(300), "u": "w".repeat(70_000)}),
            json!([[[[{}]]]]),
            json!({"k": (0..20).collect::<Vec<_>>(), "m": (0..20).map(|i| (i.to_string(), json!(i))).collect::<serde_json::Map<_, _>>()}),
        ];
        for v in values {
            let bytes = encode(&v);
            assert_eq!(scan(&bytes, usize::MAX), Scan::Complete(bytes.len()), "{v}");
            // Every prefix is incomplete, never invalid, and never claims to
            // need more than the whole value.
            for cut in 0..bytes.len() {
                match scan(&bytes[..cut], usize::MAX) {
                    Scan::Incomplete(n) => assert!(n > cut && n <= bytes.len(), "{v} cut {cut}"),
                    other => panic!("{v} cut at {cut}: {other:?}"),
                }
            }
            let mut two = bytes.clone();
            two.extend_from_slice(&bytes);
            assert_eq!(scan(&two, usize::MAX), Scan::Complete(bytes.len()));
        }
    }

    #[test]
    fn bin_ext_and_float_markers() {
        let mut b = Vec::new();
        rmp::encode::write_map_len(&mut b, 3).unwrap();
        rmp::encode::write_str(&mut b, "bin").unwrap();
        rmp::encode::write_bin(&mut b, &[1, 2, 3]).unwrap();
        rmp::encode::write_str(&mut b, "ext").unwrap();
        rmp::encode::write_ext_meta(&mut b, 8, 0).unwrap();
        b.extend_from_slice(&[0; 8]);
        rmp::encode::write_str(&mut b, "f").unwrap();
        rmp::encode::write_f32(&mut b, 1.5).unwrap();
        assert_eq!(scan(&b, usize::MAX), Scan::Complete(b.len()));
        let mut e = Vec::new();
        rmp::encode::write_ext_meta(&mut e, 300, 5).unwrap();
        e.extend_from_slice(&[7; 300]);
        assert_eq!(scan(&e, usize::MAX), Scan::Complete(e.len()));
    }

    #[test]
    fn refuses_garbage_huge_and_deep_values() {
        assert!(matches!(scan(&[0xc1], 100), Scan::Invalid(_)));
        // A str32 claiming 4 GiB.
        assert!(matches!(
            scan(&[0xdb, 0xff, 0xff, 0xff, 0xff], 1 << 20),
            Scan::Invalid(_)
        ));
        // An array32 claiming 4 G items.
        assert!(matches!(
            scan(&[0xdd, 0xff, 0xff, 0xff, 0xff], 1 << 20),
            Scan::Invalid(_)
        ));
        let deep = vec![0x91u8; 500];
        assert!(matches!(scan(&deep, usize::MAX), Scan::Invalid(_)));
        assert_eq!(scan(&[], 10), Scan::Incomplete(1));
    }

    #[test]
    fn random_bytes_never_panic() {
        // A small deterministic generator: no test dependency needed.
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..20_000 {
            let len = (x % 40) as usize;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if let Scan::Complete(n) = scan(&bytes, 1 << 16) {
                assert!(n <= bytes.len());
                // A value the scanner accepts decodes.
                assert!(
                    rmpv::decode::read_value(&mut &bytes[..n]).is_ok(),
                    "{bytes:?}"
                );
            }
        }
    }
}
