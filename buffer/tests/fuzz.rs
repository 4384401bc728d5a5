//! Whatever the files hold, `open` neither panics nor invents chunks.
//!
//! Random bytes as a segment or as the confirmation file, and real segments
//! with random damage (flipped bytes, cuts, inserted and deleted runs).

use std::fs;
use std::path::Path;

use proptest::prelude::*;
use ulog_buffer::format::SEGMENT_HEADER_LEN;
use ulog_buffer::{ChunkId, SyncPolicy, Wal, WalError, WalOptions};

fn opts() -> WalOptions {
    WalOptions {
        segment_size: 1 << 20,
        total_limit: 1 << 24,
        sync: SyncPolicy::Interval(std::time::Duration::from_secs(3600)),
    }
}

/// Opens `dir`, reads every recovered chunk, appends and reopens: none of it
/// may panic, and only a file of another format version may make it fail.
fn open_and_use(dir: &Path) -> Result<Vec<(ChunkId, Vec<u8>)>, TestCaseError> {
    let (wal, rec) = match Wal::open(dir, opts()) {
        Ok(ok) => ok,
        Err(WalError::UnsupportedVersion { .. }) => return Ok(Vec::new()),
        Err(e) => return Err(TestCaseError::fail(format!("open failed: {e}"))),
    };
    let chunks: Vec<_> = rec
        .iter()
        .filter_map(Result::ok)
        .map(|c| (c.id, c.payload))
        .collect();
    let id = wal
        .append(b"after the damage")
        .expect("append after recovery");
    if let Some(last) = chunks.last() {
        prop_assert!(id > last.0);
    }
    drop(wal);
    let (_wal, rec) = Wal::open(dir, opts()).expect("second open");
    prop_assert_eq!(
        rec.report().torn_tail_bytes,
        0,
        "the first open cut the tail"
    );
    prop_assert!(rec.ids().any(|i| i == id), "the new chunk is kept");
    Ok(chunks)
}

fn write_segments(dir: &Path, n: u8) -> Vec<(ChunkId, Vec<u8>)> {
    let (wal, _) = Wal::open(dir, opts()).expect("open");
    let chunks: Vec<_> = (0..n)
        .map(|i| {
            let payload = vec![i; usize::from(i) * 7 % 50];
            (wal.append(&payload).expect("append"), payload)
        })
        .collect();
    drop(wal);
    chunks
}

fn only_segment(dir: &Path) -> std::path::PathBuf {
    fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .expect("a segment")
}

#[derive(Debug, Clone)]
enum Damage {
    Flip(prop::sample::Index, u8),
    Cut(prop::sample::Index),
    Insert(prop::sample::Index, Vec<u8>),
    Delete(prop::sample::Index, u8),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1..=255u8).prop_map(|(i, m)| Damage::Flip(i, m)),
        any::<prop::sample::Index>().prop_map(Damage::Cut),
        (
            any::<prop::sample::Index>(),
            prop::collection::vec(any::<u8>(), 1..40)
        )
            .prop_map(|(i, b)| Damage::Insert(i, b)),
        (any::<prop::sample::Index>(), 1..40u8).prop_map(|(i, n)| Damage::Delete(i, n)),
    ]
}

fn apply(bytes: &mut Vec<u8>, d: &Damage) {
    if bytes.is_empty() {
        return;
    }
    match d {
        Damage::Flip(i, mask) => {
            let at = i.index(bytes.len());
            bytes[at] ^= mask;
        }
        Damage::Cut(i) => bytes.truncate(i.index(bytes.len())),
        Damage::Insert(i, b) => {
            let at = i.index(bytes.len());
            bytes.splice(at..at, b.iter().copied());
        }
        Damage::Delete(i, n) => {
            let at = i.index(bytes.len());
            let end = (at + usize::from(*n)).min(bytes.len());
            bytes.drain(at..end);
        }
    }
}

/// Cases per property: `PROPTEST_CASES` if set (for a deeper run), else
/// `default` (sized for CI on two cores).
fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(256), ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_as_a_segment(bytes in prop::collection::vec(any::<u8>(), 0..2048), keep_header: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut content = bytes;
        if keep_header {
            // Start like a real segment, so the frame reader is what gets fuzzed.
            write_segments(dir.path(), 0);
            let header = fs::read(only_segment(dir.path())).expect("read");
            content.splice(0..0, header[..SEGMENT_HEADER_LEN].iter().copied());
            fs::remove_file(only_segment(dir.path())).expect("rm");
        }
        fs::write(dir.path().join("00000001.wal"), &content).expect("write");
        open_and_use(dir.path())?;
    }

    #[test]
    fn random_bytes_as_the_confirmation_file(bytes in prop::collection::vec(any::<u8>(), 0..1024)) {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write_segments(dir.path(), 8);
        fs::write(dir.path().join("acks.log"), &bytes).expect("write");
        let got = open_and_use(dir.path())?;
        // Garbage confirms nothing: every chunk is still there.
        prop_assert_eq!(got, written);
    }

    #[test]
    fn damaged_segments_yield_only_chunks_that_were_written(
        damages in prop::collection::vec(damage(), 1..6),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let written = write_segments(dir.path(), 12);
        let seg = only_segment(dir.path());
        let mut bytes = fs::read(&seg).expect("read");
        for d in &damages {
            apply(&mut bytes, d);
        }
        fs::write(&seg, &bytes).expect("write");
        let got = open_and_use(dir.path())?;
        // Every recovered chunk is one that was appended, with its own id and
        // payload, in order: damage loses chunks, it never invents or mixes them.
        let mut rest = written.iter();
        for chunk in &got {
            prop_assert!(rest.any(|w| w == chunk), "{:?} was never written", chunk.0);
        }
    }
}
