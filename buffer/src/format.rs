//! The bytes on disk: file headers, frame headers and confirmation ranges.
//!
//! Everything is little-endian. The layouts are described in the crate docs
//! and in `docs/buffer.md`; this module is the only place that knows them, so
//! a format change is a change here plus a new [`VERSION`].
//!
//! Every magic starts with the byte `0xC1`, which never occurs in valid UTF-8:
//! a chunk whose payload is text (JSON lines, say) can never contain a false
//! frame start for the resynchronising reader to trip over.

/// Length of the header at the start of every segment file and of the
/// confirmation file. Frames start right after it.
pub const SEGMENT_HEADER_LEN: usize = 32;

/// Length of the header in front of every frame's payload: a chunk of `n`
/// bytes takes `FRAME_HEADER_LEN + n` bytes on disk.
pub const FRAME_HEADER_LEN: usize = 36;

/// The format version written into file headers. A file whose header carries
/// another version (with a valid checksum) was written by a different ulog and
/// is refused rather than misread.
pub const VERSION: u32 = 1;

/// First bytes of every frame.
pub(crate) const FRAME_MAGIC: [u8; 4] = [0xC1, b'U', b'L', b'W'];
/// First bytes of a segment file.
pub(crate) const SEGMENT_MAGIC: [u8; 8] = *b"\xC1ULOGSEG";
/// First bytes of the confirmation file.
pub(crate) const ACK_MAGIC: [u8; 8] = *b"\xC1ULOGACK";

/// Frame kind of a chunk (lives in segment files).
pub(crate) const KIND_CHUNK: u8 = 1;
/// Frame kind of a list of confirmed id ranges (lives in the confirmation file).
pub(crate) const KIND_CONFIRM: u8 = 2;

/// Size of one `(first id u64, count u32)` range in a confirm frame's payload.
pub(crate) const RANGE_LEN: usize = 12;

/// A frame header whose magic and checksum were verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FrameHeader {
    pub kind: u8,
    pub len: u32,
    pub id: u64,
    pub time_ms: u64,
    pub payload_crc: u32,
}

/// Appends one complete frame (header and payload) to `buf`.
pub(crate) fn encode_frame(buf: &mut Vec<u8>, kind: u8, id: u64, time_ms: u64, payload: &[u8]) {
    debug_assert!(u32::try_from(payload.len()).is_ok());
    let start = buf.len();
    buf.extend_from_slice(&FRAME_MAGIC);
    buf.extend_from_slice(&[kind, 0, 0, 0]);
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&time_ms.to_le_bytes());
    buf.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    let header_crc = crc32fast::hash(&buf[start..start + FRAME_HEADER_LEN - 4]);
    buf.extend_from_slice(&header_crc.to_le_bytes());
    buf.extend_from_slice(payload);
}

/// Checks a frame header's magic, reserved bytes and checksum. `None` means
/// these bytes are not the start of a frame.
pub(crate) fn decode_frame_header(bytes: &[u8]) -> Option<FrameHeader> {
    let bytes: &[u8; FRAME_HEADER_LEN] = bytes.get(..FRAME_HEADER_LEN)?.try_into().ok()?;
    if bytes[0..4] != FRAME_MAGIC || bytes[5..8] != [0, 0, 0] {
        return None;
    }
    let header_crc = u32_at(bytes, 32);
    if crc32fast::hash(&bytes[..32]) != header_crc {
        return None;
    }
    Some(FrameHeader {
        kind: bytes[4],
        len: u32_at(bytes, 8),
        id: u64_at(bytes, 12),
        time_ms: u64_at(bytes, 20),
        payload_crc: u32_at(bytes, 28),
    })
}

/// The 32-byte header of a segment (`SEGMENT_MAGIC`) or confirmation
/// (`ACK_MAGIC`) file. `base_id` is the first chunk id the segment may hold.
pub(crate) fn encode_file_header(magic: &[u8; 8], base_id: u64) -> [u8; SEGMENT_HEADER_LEN] {
    let mut h = [0u8; SEGMENT_HEADER_LEN];
    h[0..8].copy_from_slice(magic);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    // 12..16 flags, 24..28 reserved: zero.
    h[16..24].copy_from_slice(&base_id.to_le_bytes());
    let crc = crc32fast::hash(&h[..28]);
    h[28..32].copy_from_slice(&crc.to_le_bytes());
    h
}

/// What a file header turned out to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileHeader {
    /// Magic, checksum and version are right.
    Valid { base_id: u64 },
    /// A correct header of a format version this code does not know.
    OtherVersion(u32),
    /// Not a header (torn, flipped, or not our file).
    Invalid,
}

/// Reads a file header; `bytes` may be shorter than a header (torn file).
pub(crate) fn decode_file_header(bytes: &[u8], magic: &[u8; 8]) -> FileHeader {
    let Some(h) = bytes.get(..SEGMENT_HEADER_LEN) else {
        return FileHeader::Invalid;
    };
    if &h[0..8] != magic || crc32fast::hash(&h[..28]) != u32_at(h, 28) {
        return FileHeader::Invalid;
    }
    match u32_at(h, 8) {
        VERSION => FileHeader::Valid {
            base_id: u64_at(h, 16),
        },
        other => FileHeader::OtherVersion(other),
    }
}

/// Appends `(first, count)` ranges as a confirm frame payload.
pub(crate) fn encode_ranges(buf: &mut Vec<u8>, ranges: &[(u64, u32)]) {
    for &(first, count) in ranges {
        buf.extend_from_slice(&first.to_le_bytes());
        buf.extend_from_slice(&count.to_le_bytes());
    }
}

/// Reads a confirm frame payload as half-open `[start, end)` id ranges.
/// `None` if the length is not a whole number of ranges.
pub(crate) fn decode_ranges(payload: &[u8]) -> Option<Vec<(u64, u64)>> {
    if !payload.len().is_multiple_of(RANGE_LEN) {
        return None;
    }
    Some(
        payload
            .chunks_exact(RANGE_LEN)
            .filter_map(|r| {
                let first = u64_at(r, 0);
                let count = u64::from(u32_at(r, 8));
                // Saturate: a range reaching past u64::MAX (only a crafted
                // file has one) simply ends there.
                (count > 0).then(|| (first, first.saturating_add(count)))
            })
            .collect(),
    )
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(x)
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_round_trips_and_every_header_bit_matters() {
        let mut buf = Vec::new();
        encode_frame(&mut buf, KIND_CHUNK, 42, 1_700_000_000_000, b"hello");
        assert_eq!(buf.len(), FRAME_HEADER_LEN + 5);
        let h = decode_frame_header(&buf).expect("valid header");
        assert_eq!(
            h,
            FrameHeader {
                kind: KIND_CHUNK,
                len: 5,
                id: 42,
                time_ms: 1_700_000_000_000,
                payload_crc: crc32fast::hash(b"hello"),
            }
        );
        for bit in 0..FRAME_HEADER_LEN * 8 {
            let mut flipped = buf.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(decode_frame_header(&flipped), None, "bit {bit}");
        }
        assert_eq!(decode_frame_header(&buf[..FRAME_HEADER_LEN - 1]), None);
    }

    #[test]
    fn file_header_round_trips_and_rejects_damage() {
        let h = encode_file_header(&SEGMENT_MAGIC, 7);
        assert_eq!(
            decode_file_header(&h, &SEGMENT_MAGIC),
            FileHeader::Valid { base_id: 7 }
        );
        assert_eq!(decode_file_header(&h, &ACK_MAGIC), FileHeader::Invalid);
        assert_eq!(
            decode_file_header(&h[..31], &SEGMENT_MAGIC),
            FileHeader::Invalid
        );
        let mut flipped = h;
        flipped[17] ^= 4;
        assert_eq!(
            decode_file_header(&flipped, &SEGMENT_MAGIC),
            FileHeader::Invalid
        );

        let mut v2 = h;
        v2[8..12].copy_from_slice(&2u32.to_le_bytes());
        let crc = crc32fast::hash(&v2[..28]);
        v2[28..32].copy_from_slice(&crc.to_le_bytes());
        assert_eq!(
            decode_file_header(&v2, &SEGMENT_MAGIC),
            FileHeader::OtherVersion(2)
        );
    }

    #[test]
    fn ranges_round_trip_and_reject_ragged_payloads() {
        let mut buf = Vec::new();
        encode_ranges(&mut buf, &[(1, 3), (10, 1), (u64::MAX - 1, 5), (20, 0)]);
        assert_eq!(
            decode_ranges(&buf),
            Some(vec![(1, 4), (10, 11), (u64::MAX - 1, u64::MAX)])
        );
        assert_eq!(decode_ranges(&buf[..13]), None);
        assert_eq!(decode_ranges(&[]), Some(vec![]));
    }

    #[test]
    fn magics_start_with_a_byte_utf8_never_has() {
        for first in [FRAME_MAGIC[0], SEGMENT_MAGIC[0], ACK_MAGIC[0]] {
            let alone = vec![first];
            assert!(std::str::from_utf8(&alone).is_err());
            // Not even as a continuation byte inside a longer sequence.
            let inside = vec![0xE2, first, 0x80];
            assert!(std::str::from_utf8(&inside).is_err());
        }
    }
}
