//! Unit tests that need the internals: injected write and sync failures.
//! (The real disk-full case, on a tiny tmpfs, is `tests/enospc.rs`.)

use std::fs;
use std::path::Path;
use std::time::Duration;

use crate::{IoOp, SyncPolicy, Wal, WalError, WalOptions};

fn opts(sync: SyncPolicy) -> WalOptions {
    WalOptions {
        segment_size: 1 << 20,
        total_limit: 1 << 30,
        sync,
    }
}

fn replayed(dir: &Path, o: WalOptions) -> Vec<(u64, Vec<u8>)> {
    let (_wal, rec) = Wal::open(dir, o).expect("reopen");
    assert_eq!(rec.report().corrupt_frames, 0, "{:?}", rec.report());
    assert_eq!(rec.report().torn_tail_bytes, 0, "{:?}", rec.report());
    rec.iter()
        .map(|c| {
            let c = c.expect("readable");
            (c.id.get(), c.payload)
        })
        .collect()
}

fn segment_lengths(dir: &Path) -> Vec<u64> {
    let mut v: Vec<_> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v.iter()
        .map(|p| fs::metadata(p).expect("stat").len())
        .collect()
}

#[test]
fn failed_write_is_cut_back_and_the_wal_stays_usable() {
    for written in [0, 1, 20, 36, 40] {
        let dir = tempfile::tempdir().expect("tempdir");
        let o = opts(SyncPolicy::Always);
        let (wal, _) = Wal::open(dir.path(), o).expect("open");
        let a = wal.append(b"before").expect("append");
        let before = segment_lengths(dir.path());

        wal.fail_next_writes(written, 1);
        let err = wal.append(b"this write fails").expect_err("injected");
        assert!(
            matches!(
                err,
                WalError::Io {
                    op: IoOp::Write,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.is_disk_full(), "{err}");
        assert_eq!(
            segment_lengths(dir.path()),
            before,
            "{written} bytes cut back"
        );
        assert_eq!(wal.metrics().write_errors, 1);
        assert_eq!(wal.metrics().unconfirmed_chunks, 1);

        let b = wal.append(b"after").expect("usable again");
        assert!(b > a);
        drop(wal);
        assert_eq!(
            replayed(dir.path(), o),
            [(a.get(), b"before".to_vec()), (b.get(), b"after".to_vec())]
        );
    }
}

#[test]
fn failed_sync_fails_the_append_and_it_is_not_replayed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = opts(SyncPolicy::Always);
    let (wal, _) = Wal::open(dir.path(), o).expect("open");
    wal.fail_next_syncs(1);
    let err = wal.append(b"lost").expect_err("sync fails");
    assert!(matches!(err, WalError::Io { op: IoOp::Sync, .. }), "{err}");
    let m = wal.metrics();
    assert_eq!(m.sync_errors, 1);
    assert_eq!(m.unconfirmed_chunks, 0, "the failed chunk is abandoned");
    assert_eq!(m.confirmed_chunks, 0, "abandoning is not a delivery");

    let ok = wal.append(b"kept").expect("next append syncs");
    drop(wal);
    assert_eq!(replayed(dir.path(), o), [(ok.get(), b"kept".to_vec())]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_sync_fails_an_async_append_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = opts(SyncPolicy::Always);
    let (wal, _) = Wal::open(dir.path(), o).expect("open");
    wal.fail_next_syncs(1);
    let err = wal.append_async(b"lost").await.expect_err("sync fails");
    assert!(matches!(err, WalError::Io { op: IoOp::Sync, .. }), "{err}");
    let ok = wal.append_async(b"kept").await.expect("next append");
    drop(wal);
    assert_eq!(replayed(dir.path(), o), [(ok.get(), b"kept".to_vec())]);
}

#[test]
fn failed_sync_at_rotation_fails_that_append_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = WalOptions {
        segment_size: 200,
        total_limit: 1 << 20,
        sync: SyncPolicy::Interval(Duration::from_secs(3600)),
    };
    let (wal, _) = Wal::open(dir.path(), o).expect("open");
    let payload = [7u8; 100];
    let a = wal.append(&payload).expect("first fits");
    wal.fail_next_syncs(1);
    let err = wal
        .append(&payload)
        .expect_err("rotation syncs the old segment");
    assert!(matches!(err, WalError::Io { op: IoOp::Sync, .. }), "{err}");
    assert_eq!(segment_lengths(dir.path()).len(), 1, "no new segment");
    let b = wal.append(&payload).expect("rotation works now");
    assert_eq!(segment_lengths(dir.path()).len(), 2);
    drop(wal);
    let ids: Vec<u64> = replayed(dir.path(), o).into_iter().map(|c| c.0).collect();
    assert_eq!(ids, [a.get(), b.get()]);
}

#[test]
fn failed_sync_under_the_lock_at_rotation_fails_the_unsynced_appends() {
    // The flush before the lock succeeds; the sync under it (which covers
    // what was written meanwhile) fails.
    let dir = tempfile::tempdir().expect("tempdir");
    let o = WalOptions {
        segment_size: 200,
        total_limit: 1 << 20,
        sync: SyncPolicy::Interval(Duration::from_secs(3600)),
    };
    let (wal, _) = Wal::open(dir.path(), o).expect("open");
    let payload = [7u8; 100];
    wal.append(&payload).expect("first fits");
    wal.fail_syncs_after(1, 1);
    let err = wal.append(&payload).expect_err("the locked sync fails");
    assert!(matches!(err, WalError::Io { op: IoOp::Sync, .. }), "{err}");
    assert_eq!(wal.metrics().sync_errors, 1);
    assert_eq!(segment_lengths(dir.path()).len(), 1, "no new segment");
    wal.append(&payload).expect("rotation works now");
    assert_eq!(segment_lengths(dir.path()).len(), 2);
}

#[test]
fn failed_confirmation_write_still_frees_the_segment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = WalOptions {
        segment_size: 200,
        total_limit: 1 << 20,
        sync: SyncPolicy::Always,
    };
    let (wal, _) = Wal::open(dir.path(), o).expect("open");
    let payload = [1u8; 100];
    let a = wal.append(&payload).expect("a");
    let b = wal.append(&payload).expect("b, in a second segment");
    assert_eq!(segment_lengths(dir.path()).len(), 2);

    wal.fail_next_writes(5, 1);
    wal.confirm(a)
        .expect("a confirmation that cannot be written still holds");
    assert_eq!(wal.metrics().confirm_write_errors, 1);
    assert_eq!(
        segment_lengths(dir.path()).len(),
        1,
        "a's segment is deleted"
    );
    assert_eq!(wal.metrics().unconfirmed_chunks, 1);
    assert!(matches!(wal.confirm(a), Err(WalError::UnknownChunk(id)) if id == a));
    drop(wal);
    assert_eq!(replayed(dir.path(), o), [(b.get(), payload.to_vec())]);
}

#[test]
fn confirmation_written_after_a_failed_one_is_kept() {
    // The failed write leaves a half frame; the next confirmation overwrites
    // it, so nothing in the confirmation file is torn or lost.
    let dir = tempfile::tempdir().expect("tempdir");
    let o = opts(SyncPolicy::Always);
    let (wal, _) = Wal::open(dir.path(), o).expect("open");
    let ids: Vec<_> = (0..3u8)
        .map(|i| wal.append(&[i]).expect("append"))
        .collect();
    wal.fail_next_writes(10, 1);
    wal.confirm(ids[0]).expect("held in memory");
    wal.confirm(ids[1]).expect("written");
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), o).expect("reopen");
    assert_eq!(rec.report().confirm_file_torn_bytes, 0);
    assert_eq!(rec.report().confirm_file_corrupt_frames, 0);
    let left: Vec<_> = rec.ids().collect();
    // ids[0]'s confirmation could not be written at the time; the last sync
    // before closing rewrote the file with it.
    assert_eq!(left, [ids[2]]);
}

#[test]
fn the_confirmation_file_is_compacted_and_keeps_what_matters() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = WalOptions {
        segment_size: 2_000,
        ..opts(SyncPolicy::Interval(Duration::from_secs(3600)))
    };
    let (wal, _) = Wal::open(dir.path(), o).expect("open");
    let acks = dir.path().join("acks.log");
    let ids: Vec<_> = (0..300u32)
        .map(|i| wal.append(&i.to_le_bytes()).expect("append"))
        .collect();
    // Confirm all but every tenth: the live confirmations are many small
    // ranges, the file would grow by a frame per confirmation.
    let mut max_len = 0;
    for (i, id) in ids.iter().enumerate() {
        if i % 10 != 0 {
            wal.compact_confirmations_at(1_000);
            wal.confirm(*id).expect("confirm");
            max_len = max_len.max(fs::metadata(&acks).expect("stat").len());
        }
    }
    assert!(
        max_len <= 1_000 + 48,
        "compacted as it grew: {max_len} bytes"
    );
    drop(wal);
    let (_wal, rec) = Wal::open(dir.path(), o).expect("reopen");
    let left: Vec<_> = rec.ids().collect();
    let expected: Vec<_> = ids.iter().step_by(10).copied().collect();
    assert_eq!(left, expected);
    assert_eq!(rec.report().confirm_file_corrupt_frames, 0);
}

#[test]
fn read_returns_unconfirmed_chunks_from_every_segment_and_refuses_confirmed_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let o = WalOptions {
        segment_size: 256,
        ..opts(SyncPolicy::Interval(Duration::from_millis(50)))
    };
    let (wal, _) = Wal::open(dir.path(), o).expect("open");
    let payloads: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 40 + usize::from(i)]).collect();
    let ids: Vec<_> = payloads
        .iter()
        .map(|p| wal.append(p).expect("append"))
        .collect();
    assert!(
        segment_lengths(dir.path()).len() > 3,
        "spread over segments"
    );
    for (id, p) in ids.iter().zip(&payloads) {
        assert_eq!(&wal.read(*id).expect("read"), p);
    }
    wal.confirm(ids[3]).expect("confirm");
    assert!(matches!(wal.read(ids[3]), Err(WalError::UnknownChunk(_))));
    drop(wal);
    // After a reopen the recovered chunks are readable by id too.
    let (wal, rec) = Wal::open(dir.path(), o).expect("reopen");
    let recovered: Vec<_> = rec.ids().collect();
    assert_eq!(recovered.len(), 19);
    for id in recovered {
        let i = ids.iter().position(|x| *x == id).expect("known id");
        assert_eq!(wal.read(id).expect("read recovered"), payloads[i]);
    }
}

#[test]
fn read_detects_a_chunk_damaged_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (wal, _) = Wal::open(dir.path(), opts(SyncPolicy::Always)).expect("open");
    let id = wal.append(b"precious reading").expect("append");
    let seg = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").path())
        .find(|p| p.extension().is_some_and(|x| x == "wal"))
        .expect("segment");
    let mut bytes = fs::read(&seg).expect("read segment");
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    fs::write(&seg, &bytes).expect("damage");
    assert!(matches!(wal.read(id), Err(WalError::Corrupt { .. })));
}
