//! Arbitrary bytes into the forward protocol's incremental frame decoder.
//!
//! The first byte picks the size of the pieces the rest arrives in, as TCP
//! reads would split it. Checked beyond "no panic":
//! - decoding piece by piece gives the same frames as decoding at once;
//! - every decoded frame re-encodes (PackedForward, plain and gzip) and
//!   decodes back to the same events.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use ulog_engine::Record;
use ulog_plugins_forward::codec::{
    Compression, EncodeMode, Encoder, Frame, FrameDecoder, Limits,
};

fn limits() -> Limits {
    Limits {
        max_frame_size: 1 << 20,
        max_decompressed_size: 64 << 10,
    }
}

/// What must not depend on how the bytes were split. Times are left out:
/// a zero time means "now", which differs between two decodes.
fn shape(f: &Frame) -> (String, usize, usize, Option<String>, Vec<String>) {
    (
        f.tag.to_string(),
        f.events.len(),
        f.skipped,
        f.chunk.clone(),
        f.events.iter().map(|e| e.record.to_json_string()).collect(),
    )
}

/// Decodes everything in `pieces`; stops at the first fatal error.
fn decode(pieces: &[&[u8]]) -> (Vec<Frame>, bool) {
    let mut decoder = FrameDecoder::new(limits());
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) if !e.is_fatal() => continue,
                Err(_) => return (frames, true),
            }
        }
    }
    (frames, false)
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(first % 64) + 1;
    let pieces: Vec<&[u8]> = data.chunks(step).collect();
    let (split, split_failed) = decode(&pieces);
    let (whole, whole_failed) = decode(&[data]);
    assert_eq!(split_failed, whole_failed, "a fatal error must not depend on the split");
    assert_eq!(
        split.iter().map(shape).collect::<Vec<_>>(),
        whole.iter().map(shape).collect::<Vec<_>>(),
        "frames must not depend on the split"
    );

    // Records kept as JSON text hold exactly what parsed maps hold.
    let mut as_maps = FrameDecoder::new(limits()).text_records(false);
    let mut buf = BytesMut::from(data);
    for frame in &whole {
        let map_frame = loop {
            match as_maps.decode(&mut buf) {
                Ok(Some(f)) => break f,
                Err(e) if !e.is_fatal() => continue,
                other => panic!("the map decoder disagrees: {other:?}"),
            }
        };
        assert_eq!(map_frame.events.len(), frame.events.len());
        for (a, b) in map_frame.events.iter().zip(&frame.events) {
            assert!(matches!(b.record, Record::Raw(_)));
            assert_eq!(a.record, b.record);
        }
    }

    // gzip state is costly to set up under the sanitizer: round-trip through
    // it for one input in eight only.
    let compressions: &[Compression] = if first & 0xe0 == 0xe0 {
        &[Compression::Text, Compression::Gzip]
    } else {
        &[Compression::Text]
    };
    for frame in &whole {
        for &compression in compressions {
            let mut out = Vec::new();
            Encoder::new(EncodeMode::PackedForward, compression).encode(
                &frame.tag,
                &frame.events,
                frame.chunk.as_deref(),
                &mut out,
            );
            let mut buf = BytesMut::from(&out[..]);
            let again = FrameDecoder::new(Limits::with_max_frame_size(64 << 20))
                .decode(&mut buf)
                .expect("our own encoding decodes")
                .expect("our own encoding is complete");
            assert_eq!(again.tag, frame.tag);
            assert_eq!(again.skipped, 0);
            assert_eq!(again.chunk, frame.chunk);
            assert_eq!(again.events.len(), frame.events.len());
            for (a, b) in again.events.iter().zip(&frame.events) {
                assert_eq!(a.record, b.record);
                // EventTime carries 1970..2106 exactly; outside that the
                // encoder falls back to integer seconds.
                if (0..=i64::from(u32::MAX)).contains(&b.time.secs()) {
                    assert_eq!(a.time, b.time);
                } else {
                    assert_eq!(a.time.secs(), b.time.secs());
                }
            }
        }
    }
});
