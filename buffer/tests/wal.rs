//! Examples of the WAL's contract, through the public API and the files.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ulog_buffer::format::{FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use ulog_buffer::{ChunkId, Recovery, SyncPolicy, Wal, WalError, WalOptions};

fn opts() -> WalOptions {
    WalOptions {
        segment_size: 1 << 20,
        total_limit: 1 << 30,
        sync: SyncPolicy::Always,
    }
}

fn small_segments(segment_size: u64) -> WalOptions {
    WalOptions {
        segment_size,
        ..opts()
    }
}

fn chunks(rec: &Recovery) -> Vec<(ChunkId, Vec<u8>)> {
    rec.iter()
        .map(|c| {
            let c = c.expect("recovered chunk reads back");
            (c.id, c.payload)
        })
        .collect()
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v
}

fn dir_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != "LOCK"))
        .map(|p| fs::metadata(p).expect("stat").len())
        .sum()
}

fn frame_len(payload: usize) -> u64 {
    (FRAME_HEADER_LEN + payload) as u64
}

fn copy_dir(from: &Path, to: &Path) {
    for e in fs::read_dir(from).expect("list") {
        let p = e.expect("entry").path();
        fs::copy(&p, to.join(p.file_name().expect("name"))).expect("copy");
    }
}

#[test]
fn append_confirm_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, rec) = Wal::open(dir.path(), opts()).expect("open");
    assert!(rec.is_empty());
    let a = wal.append(b"alpha").expect("a");
    let b = wal.append(b"").expect("empty chunks are chunks");
    let c = wal.append(b"gamma").expect("c");
    assert!(a < b && b < c, "ids increase in append order");
    wal.confirm(b).expect("confirm b");
    drop(wal);

    let (wal, rec) = Wal::open(dir.path(), opts()).expect("reopen");
    assert_eq!(
        chunks(&rec),
        [(a, b"alpha".to_vec()), (c, b"gamma".to_vec())]
    );
    let r = rec.report();
    assert_eq!(
        (r.segments_read, r.chunks_found, r.chunks_confirmed),
        (1, 3, 1)
    );
    assert_eq!((r.torn_tail_bytes, r.corrupt_frames), (0, 0));
    assert_eq!(rec.payload_bytes(), 10);

    // Recovered chunks are confirmed like any other, and stay confirmed.
    wal.confirm(a).expect("confirm a");
    let d = wal.append(b"delta").expect("d");
    assert!(d > c, "ids continue after a reopen");
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), opts()).expect("reopen");
    assert_eq!(
        chunks(&rec),
        [(c, b"gamma".to_vec()), (d, b"delta".to_vec())]
    );
}

#[test]
fn reopen_after_confirming_everything_replays_nothing_and_keeps_ids_growing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = small_segments(256);
    let mut last = None;
    for round in 0..3 {
        let (wal, rec) = Wal::open(dir.path(), o).expect("open");
        assert!(
            rec.is_empty(),
            "round {round}: {:?}",
            rec.ids().collect::<Vec<_>>()
        );
        for _ in 0..10 {
            let id = wal.append(&[round; 100]).expect("append");
            assert!(last < Some(id), "ids never repeat");
            last = Some(id);
            wal.confirm(id).expect("confirm");
        }
        // Every closed segment is gone; the active one stays.
        assert_eq!(segments(dir.path()).len(), 1);
        assert_eq!(wal.metrics().unconfirmed_chunks, 0);
    }
}

#[test]
fn torn_tail_at_every_byte_of_the_last_frame() {
    let src = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(src.path(), opts()).expect("open");
    let a = wal.append(b"first chunk").expect("a");
    let b = wal.append(b"second chunk").expect("b");
    let c = wal.append(b"the third chunk, torn").expect("c");
    drop(wal);
    let seg = segments(src.path()).pop().expect("a segment");
    let full = fs::metadata(&seg).expect("stat").len();
    let last = frame_len(21);

    for cut in 1..=last {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(src.path(), dir.path());
        let seg = segments(dir.path()).pop().expect("segment");
        OpenOptions::new()
            .write(true)
            .open(&seg)
            .expect("open segment")
            .set_len(full - cut)
            .expect("tear");

        let (wal, rec) = Wal::open(dir.path(), opts()).expect("open torn");
        assert_eq!(
            chunks(&rec),
            [(a, b"first chunk".to_vec()), (b, b"second chunk".to_vec())],
            "cut {cut}"
        );
        assert_eq!(rec.report().torn_tail_bytes, last - cut, "cut {cut}");
        assert_eq!(rec.report().corrupt_frames, 0, "cut {cut}");
        assert_eq!(
            fs::metadata(&seg).expect("stat").len(),
            full - last,
            "cut back"
        );

        // The segment takes new frames cleanly after the cut. (The torn
        // chunk's id may be given again: nothing on disk refers to it.)
        let d = wal.append(b"after").expect("append after tear");
        assert!(d > b && d >= c, "cut {cut}");
        drop(wal);
        let (_wal, rec) = Wal::open(dir.path(), opts()).expect("reopen");
        assert_eq!(rec.ids().collect::<Vec<_>>(), [a, b, d], "cut {cut}");
        assert_eq!(rec.report().torn_tail_bytes, 0);
    }
}

#[test]
fn flipped_byte_in_a_middle_frame_loses_only_that_chunk() {
    let src = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(src.path(), opts()).expect("open");
    let a = wal.append(b"before").expect("a");
    wal.append(b"the damaged one").expect("b");
    let c = wal.append(b"after").expect("c");
    drop(wal);
    let seg = segments(src.path()).pop().expect("segment");
    let bytes = fs::read(&seg).expect("read");
    let middle = SEGMENT_HEADER_LEN + frame_len(6) as usize;
    let middle_len = frame_len(15) as usize;

    for at in middle..middle + middle_len {
        for mask in [0x01u8, 0x80, 0xFF] {
            let dir = tempfile::tempdir().expect("tempdir");
            copy_dir(src.path(), dir.path());
            let mut flipped = bytes.clone();
            flipped[at] ^= mask;
            fs::write(segments(dir.path()).pop().expect("segment"), &flipped).expect("write");

            let (_wal, rec) = Wal::open(dir.path(), opts()).expect("open");
            assert_eq!(
                chunks(&rec),
                [(a, b"before".to_vec()), (c, b"after".to_vec())],
                "byte {at} ^ {mask:#x}"
            );
            let r = rec.report();
            assert_eq!(r.corrupt_frames, 1, "byte {at}");
            assert_eq!(r.corrupt_bytes, middle_len as u64, "byte {at}");
            assert_eq!(r.torn_tail_bytes, 0, "byte {at}");
        }
    }
}

#[test]
fn damaged_segment_header_loses_no_chunk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), opts()).expect("open");
    let a = wal.append(b"one").expect("a");
    let b = wal.append(b"two").expect("b");
    drop(wal);
    let seg = segments(dir.path()).pop().expect("segment");
    let mut bytes = fs::read(&seg).expect("read");
    bytes[20] ^= 0x40;
    fs::write(&seg, &bytes).expect("write");

    let (wal, rec) = Wal::open(dir.path(), opts()).expect("open");
    assert_eq!(rec.ids().collect::<Vec<_>>(), [a, b]);
    assert_eq!(rec.report().corrupt_frames, 1);
    // A segment with a damaged header is not written to again.
    let c = wal.append(b"three").expect("c");
    assert_eq!(segments(dir.path()).len(), 2);
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), opts()).expect("open");
    assert_eq!(rec.ids().collect::<Vec<_>>(), [a, b, c]);
}

#[test]
fn segments_rotate_and_confirmed_ones_are_deleted_in_any_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Two 100-byte chunks per segment.
    let size = SEGMENT_HEADER_LEN as u64 + 2 * frame_len(100);
    let (wal, _) = Wal::open(dir.path(), small_segments(size)).expect("open");
    let ids: Vec<ChunkId> = (0..6u8)
        .map(|i| wal.append(&[i; 100]).expect("append"))
        .collect();
    let files = segments(dir.path());
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        assert_eq!(fs::metadata(f).expect("stat").len(), size);
    }
    assert_eq!(wal.metrics().bytes_on_disk, dir_bytes(dir.path()));

    // The middle segment first: it goes, the first stays.
    wal.confirm(ids[3]).expect("confirm");
    assert_eq!(segments(dir.path()).len(), 3, "half confirmed stays");
    wal.confirm(ids[2]).expect("confirm");
    assert_eq!(segments(dir.path()), [files[0].clone(), files[2].clone()]);
    // The active segment is never deleted, even when fully confirmed.
    wal.confirm(ids[4]).expect("confirm");
    wal.confirm(ids[5]).expect("confirm");
    assert_eq!(segments(dir.path()), [files[0].clone(), files[2].clone()]);
    let m = wal.metrics();
    assert_eq!(m.segments, 2);
    assert_eq!(m.unconfirmed_chunks, 2);
    assert_eq!(m.bytes_on_disk, dir_bytes(dir.path()));
    // The next append closes the fully confirmed active segment: deleted.
    let g = wal.append(&[9; 100]).expect("append");
    assert_eq!(segments(dir.path()).len(), 2);
    drop(wal);

    let (_wal, rec) = Wal::open(dir.path(), small_segments(size)).expect("reopen");
    assert_eq!(rec.ids().collect::<Vec<_>>(), [ids[0], ids[1], g]);
}

#[test]
fn a_chunk_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), small_segments(128)).expect("open");
    let small = wal.append(b"small").expect("small");
    // Larger than the replay's read-ahead too.
    let big = wal.append(&vec![5u8; 1_500_000]).expect("big");
    let after = wal.append(b"small again").expect("after");
    assert_eq!(segments(dir.path()).len(), 3);
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), small_segments(128)).expect("reopen");
    let got = chunks(&rec);
    assert_eq!(
        got.iter().map(|c| c.0).collect::<Vec<_>>(),
        [small, big, after]
    );
    assert_eq!(got[1].1, vec![5u8; 1_500_000]);
    assert_eq!(got[2].1, b"small again");
}

#[test]
fn replay_reads_back_many_chunks_across_read_ahead_windows() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = WalOptions {
        sync: SyncPolicy::Interval(Duration::from_secs(3600)),
        ..small_segments(8 << 20)
    };
    let (wal, _) = Wal::open(dir.path(), o).expect("open");
    let payload = |i: u32| {
        let mut p = i.to_le_bytes().repeat(1 + (i % 700) as usize);
        p.push(0xC1);
        p
    };
    let ids: Vec<ChunkId> = (0..5000u32)
        .map(|i| wal.append(&payload(i)).expect("append"))
        .collect();
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), o).expect("reopen");
    let got = chunks(&rec);
    assert_eq!(got.len(), ids.len());
    for (i, (id, p)) in got.iter().enumerate() {
        assert_eq!(*id, ids[i]);
        assert_eq!(*p, payload(i as u32), "chunk {i}");
    }
}

#[test]
fn full_refuses_without_writing_and_confirming_makes_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = SEGMENT_HEADER_LEN as u64 + 2 * frame_len(100);
    let o = WalOptions {
        segment_size: size,
        total_limit: 3 * size,
        sync: SyncPolicy::Always,
    };
    let (wal, _) = Wal::open(dir.path(), o).expect("open");
    let ids: Vec<ChunkId> = (0..6u8)
        .map(|i| wal.append(&[i; 100]).expect("fits"))
        .collect();
    let before = dir_bytes(dir.path());
    let err = wal.append(&[9; 100]).expect_err("full");
    assert!(!err.is_disk_full(), "the limit, not the disk");
    match err {
        WalError::Full {
            used,
            limit,
            needed,
        } => {
            assert_eq!((used, limit), (3 * size, 3 * size));
            assert_eq!(needed, frame_len(100) + SEGMENT_HEADER_LEN as u64);
        }
        other => panic!("expected Full, got {other}"),
    }
    assert_eq!(dir_bytes(dir.path()), before, "nothing written");
    assert_eq!(wal.metrics().full_rejections, 1);

    // Half a segment confirmed frees nothing...
    wal.confirm(ids[0]).expect("confirm");
    assert!(matches!(wal.append(&[9; 100]), Err(WalError::Full { .. })));
    // ...a whole one does.
    wal.confirm(ids[1]).expect("confirm");
    let g = wal.append(&[9; 100]).expect("room again");
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), o).expect("reopen");
    assert_eq!(
        rec.ids().collect::<Vec<_>>(),
        [ids[2], ids[3], ids[4], ids[5], g]
    );
}

#[test]
fn a_chunk_that_can_never_fit_is_too_large_not_full() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = WalOptions {
        segment_size: 1024,
        total_limit: 1024,
        sync: SyncPolicy::Always,
    };
    let (wal, _) = Wal::open(dir.path(), o).expect("open");
    let max = 1024 - SEGMENT_HEADER_LEN - FRAME_HEADER_LEN;
    match wal.append(&vec![0; max + 1]) {
        Err(WalError::TooLarge { len, max: m }) => {
            assert_eq!((len, m), (max as u64 + 1, max as u64))
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    wal.append(&vec![0; max])
        .expect("the largest chunk fits an empty WAL");
}

#[test]
fn confirming_twice_or_an_unknown_id_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), opts()).expect("open");
    let a = wal.append(b"x").expect("a");
    wal.confirm(a).expect("first");
    assert!(matches!(wal.confirm(a), Err(WalError::UnknownChunk(id)) if id == a));
    let never = ChunkId::from_u64(a.get() + 100);
    assert!(matches!(wal.confirm(never), Err(WalError::UnknownChunk(_))));
}

#[test]
fn one_writer_per_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), opts()).expect("open");
    assert!(matches!(
        Wal::open(dir.path(), opts()),
        Err(WalError::Locked { .. })
    ));
    drop(wal);
    Wal::open(dir.path(), opts()).expect("free again after drop");
}

#[test]
fn invalid_options_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    for o in [
        WalOptions {
            segment_size: 0,
            ..opts()
        },
        WalOptions {
            total_limit: 10,
            ..opts()
        },
        WalOptions {
            sync: SyncPolicy::Interval(Duration::ZERO),
            ..opts()
        },
    ] {
        assert!(
            matches!(Wal::open(dir.path(), o), Err(WalError::InvalidOptions(_))),
            "{o:?}"
        );
    }
}

#[test]
fn another_format_version_is_refused_not_misread() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), opts()).expect("open");
    wal.append(b"x").expect("append");
    drop(wal);
    let seg = segments(dir.path()).pop().expect("segment");
    let mut bytes = fs::read(&seg).expect("read");
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32(&bytes[..28]);
    bytes[28..32].copy_from_slice(&crc.to_le_bytes());
    fs::write(&seg, &bytes).expect("write");
    match Wal::open(dir.path(), opts()) {
        Err(WalError::UnsupportedVersion { version: 2, .. }) => {}
        other => panic!("expected UnsupportedVersion, got {other:?}"),
    }
}

/// CRC-32 (IEEE), bit by bit: the test's own, not the crate's.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn damaged_confirmations_replay_their_chunks_rather_than_lose_any() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), opts()).expect("open");
    let ids: Vec<ChunkId> = (0..4u8)
        .map(|i| wal.append(&[i]).expect("append"))
        .collect();
    wal.confirm(ids[1]).expect("confirm");
    wal.confirm(ids[2]).expect("confirm");
    drop(wal);
    // The confirmation file holds its header (written when it was compacted
    // at open) and two confirmation frames; damage the first one's payload.
    let acks = dir.path().join("acks.log");
    let mut bytes = fs::read(&acks).expect("read acks");
    bytes[SEGMENT_HEADER_LEN + FRAME_HEADER_LEN + 3] ^= 1;
    fs::write(&acks, &bytes).expect("write");

    let (_wal, rec) = Wal::open(dir.path(), opts()).expect("open");
    assert_eq!(rec.report().confirm_file_corrupt_frames, 1);
    assert_eq!(rec.ids().collect::<Vec<_>>(), [ids[0], ids[1], ids[3]]);
}

#[test]
fn a_recovered_chunk_changed_on_disk_is_an_error_for_that_chunk_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), opts()).expect("open");
    let a = wal.append(b"aaaa").expect("a");
    wal.append(b"bbbb").expect("b");
    let c = wal.append(b"cccc").expect("c");
    drop(wal);
    let (wal, rec) = Wal::open(dir.path(), opts()).expect("open");
    let seg = segments(dir.path()).pop().expect("segment");
    let b_payload = SEGMENT_HEADER_LEN as u64 + frame_len(4) + FRAME_HEADER_LEN as u64;
    let f = OpenOptions::new().write(true).open(&seg).expect("open");
    std::os::unix::fs::FileExt::write_all_at(&f, b"XXXX", b_payload).expect("overwrite");

    let got: Vec<_> = rec.iter().collect();
    assert_eq!(got.len(), 3);
    assert_eq!(got[0].as_ref().expect("a").id, a);
    assert!(
        matches!(got[1], Err(WalError::Corrupt { .. })),
        "{:?}",
        got[1]
    );
    assert_eq!(got[2].as_ref().expect("c").id, c);
    assert_eq!(wal.metrics().corrupt_frames, 1);
}

#[test]
fn interval_appends_survive_a_crash_and_sync_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = WalOptions {
        sync: SyncPolicy::Interval(Duration::from_millis(50)),
        ..opts()
    };
    let (wal, _) = Wal::open(dir.path(), o).expect("open");
    let fsyncs_at_open = wal.metrics().fsyncs;
    let ids: Vec<ChunkId> = (0..200u32)
        .map(|i| wal.append(&i.to_le_bytes()).expect("append"))
        .collect();
    let m = wal.metrics();
    assert!(
        m.fsyncs - fsyncs_at_open < 10,
        "appends do not sync: {} syncs",
        m.fsyncs - fsyncs_at_open
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while wal.metrics().fsyncs == m.fsyncs {
        assert!(
            std::time::Instant::now() < deadline,
            "the timer never synced"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    // A crash (no close) after write(2): everything is there.
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), o).expect("reopen");
    assert_eq!(rec.ids().collect::<Vec<_>>(), ids);
}

#[test]
fn group_commit_shares_syncs_between_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), opts()).expect("open");
    let wal = Arc::new(wal);
    let before = wal.metrics().fsyncs;
    let per_thread = 50;
    let threads = 8;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = Arc::clone(&wal);
            std::thread::spawn(move || {
                (0..per_thread)
                    .map(|i| wal.append(format!("{t}/{i}").as_bytes()).expect("append"))
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    let mut ids: Vec<ChunkId> = handles
        .into_iter()
        .flat_map(|h| h.join().expect("thread"))
        .collect();
    let syncs = wal.metrics().fsyncs - before;
    let appends = (threads * per_thread) as u64;
    assert!(
        syncs < appends * 3 / 4,
        "{syncs} syncs for {appends} appends: no group commit"
    );
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len() as u64, appends, "ids are unique");
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), opts()).expect("reopen");
    assert_eq!(rec.ids().collect::<Vec<_>>(), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_and_blocking_appends_share_syncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), opts()).expect("open");
    let wal = Arc::new(wal);
    let before = wal.metrics().fsyncs;
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let wal = Arc::clone(&wal);
        tasks.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..40u32 {
                ids.push(
                    wal.append_async(format!("{t}/{i}").as_bytes())
                        .await
                        .expect("append"),
                );
            }
            ids
        }));
    }
    let blocking = {
        let wal = Arc::clone(&wal);
        tokio::task::spawn_blocking(move || {
            (0..40)
                .map(|i| wal.append(format!("b/{i}").as_bytes()).expect("append"))
                .collect::<Vec<_>>()
        })
    };
    let mut ids = blocking.await.expect("blocking task");
    for t in tasks {
        ids.extend(t.await.expect("task"));
    }
    let syncs = wal.metrics().fsyncs - before;
    assert!(syncs < 360 * 3 / 4, "{syncs} syncs for 360 appends");
    ids.sort();
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), opts()).expect("reopen");
    assert_eq!(rec.ids().collect::<Vec<_>>(), ids);
}

#[test]
fn metrics_follow_the_state() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), opts()).expect("open");
    let m = wal.metrics();
    assert_eq!((m.unconfirmed_chunks, m.oldest_unconfirmed_age), (0, None));
    let a = wal.append(b"12345").expect("a");
    std::thread::sleep(Duration::from_millis(20));
    let b = wal.append(b"678").expect("b");
    let m = wal.metrics();
    assert_eq!(m.unconfirmed_chunks, 2);
    assert_eq!((m.appended_chunks, m.appended_bytes), (2, 8));
    assert!(m.oldest_unconfirmed_age >= Some(Duration::from_millis(20)));
    assert!(m.fsyncs >= 2, "each lone append synced");
    assert_eq!(m.fsync_latency.iter().sum::<u64>(), m.fsyncs);
    assert_eq!(m.bytes_on_disk, dir_bytes(dir.path()));
    assert_eq!(
        m.segment_bytes,
        SEGMENT_HEADER_LEN as u64 + frame_len(5) + frame_len(3)
    );
    wal.confirm(a).expect("confirm");
    let age_b = wal.metrics().oldest_unconfirmed_age.expect("b waits");
    assert!(age_b < m.oldest_unconfirmed_age.expect("a waited"));
    wal.confirm(b).expect("confirm");
    let m = wal.metrics();
    assert_eq!((m.unconfirmed_chunks, m.oldest_unconfirmed_age), (0, None));
    assert_eq!(m.confirmed_chunks, 2);
    assert_eq!(m.bytes_on_disk, dir_bytes(dir.path()));
}

#[test]
fn recovered_chunks_keep_their_append_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let start = std::time::SystemTime::now();
    let (wal, _) = Wal::open(dir.path(), opts()).expect("open");
    wal.append(b"x").expect("append");
    drop(wal);
    std::thread::sleep(Duration::from_millis(30));
    let (wal, rec) = Wal::open(dir.path(), opts()).expect("reopen");
    let c = rec.iter().next().expect("one").expect("readable");
    let ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .expect("after 1970")
            .as_millis()
    };
    assert!(ms(c.appended_at) >= ms(start));
    assert!(wal.metrics().oldest_unconfirmed_age >= Some(Duration::from_millis(30)));
}
