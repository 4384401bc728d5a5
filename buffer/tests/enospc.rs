//! A real full disk: a 1 MiB tmpfs. Mounting needs root (CI runs as root);
//! where the mount is refused the test says so and passes without checking.
//! The same paths are covered without a mount by the injected write failures
//! in `src/tests.rs`.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use ulog_buffer::format::SEGMENT_HEADER_LEN;
use ulog_buffer::{ChunkId, IoOp, SyncPolicy, Wal, WalError, WalOptions};

/// Unmounts on drop, also when an assertion fails.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Result<Tmpfs, String> {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .output()
            .map_err(|e| format!("cannot run mount: {e}"))?;
        if out.status.success() {
            Ok(Tmpfs(at.to_path_buf()))
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn segment_file_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .map(|p| fs::metadata(p).expect("stat").len())
        .sum()
}

#[test]
fn disk_full_is_an_error_and_the_wal_recovers_when_space_returns() {
    let base = tempfile::tempdir().expect("tempdir");
    let mnt = base.path().join("tiny");
    fs::create_dir(&mnt).expect("mount point");
    let _mount = match Tmpfs::mount(&mnt, "1m") {
        Ok(m) => m,
        Err(why) => {
            eprintln!(
                "SKIPPED disk_full test: cannot mount a 1 MiB tmpfs here ({why}); it needs root"
            );
            return;
        }
    };
    let dir = mnt.join("wal");
    let o = WalOptions {
        segment_size: 128 << 10,
        // Far beyond the disk: the disk fills first.
        total_limit: 64 << 20,
        sync: SyncPolicy::Always,
    };
    let (wal, _) = Wal::open(&dir, o).expect("open");
    let payload = vec![0xAB; 3000];
    let mut ids: Vec<ChunkId> = Vec::new();
    let err = loop {
        match wal.append(&payload) {
            Ok(id) => ids.push(id),
            Err(e) => break e,
        }
        assert!(ids.len() < 1000, "a 1 MiB disk never filled");
    };
    assert!(err.is_disk_full(), "{err}");
    assert!(
        matches!(
            err,
            WalError::Io {
                op: IoOp::Write,
                ..
            }
        ),
        "{err}: a failed frame or segment-header write"
    );
    assert!(
        err.to_string().contains(&*dir.to_string_lossy()),
        "{err} names the file"
    );
    assert!(ids.len() > 100, "only {} chunks fitted", ids.len());

    // Still full: each further append fails the same clean way, and no half
    // frame is left behind by any of them.
    for _ in 0..3 {
        let e = wal.append(&payload).expect_err("still full");
        assert!(e.is_disk_full(), "{e}");
        assert_eq!(wal.metrics().segment_bytes, segment_file_bytes(&dir));
    }
    assert!(wal.metrics().write_errors >= 4);

    // A crash now, and a restart on the full disk: it opens and replays all.
    drop(wal);
    let (wal, rec) = Wal::open(&dir, o).expect("open on a full disk");
    assert_eq!(rec.ids().collect::<Vec<_>>(), ids);
    assert_eq!(rec.report().torn_tail_bytes, 0);
    assert_eq!(rec.report().corrupt_frames, 0);
    for c in &rec {
        assert_eq!(c.expect("readable").payload, payload);
    }

    // Confirming works without space (it is what frees space), and once
    // closed segments are gone appends work again.
    let half = ids.len() / 2;
    for &id in &ids[..half] {
        wal.confirm(id).expect("confirm on a full disk");
    }
    assert!(
        segment_file_bytes(&dir) < (ids.len() as u64 * 3036) * 3 / 4,
        "confirmed segments were deleted"
    );
    let more: Vec<ChunkId> = (0..10)
        .map(|_| wal.append(&payload).expect("room again"))
        .collect();
    drop(wal);

    let (_wal, rec) = Wal::open(&dir, o).expect("reopen");
    let expected: Vec<ChunkId> = ids[half..].iter().chain(&more).copied().collect();
    assert_eq!(rec.ids().collect::<Vec<_>>(), expected);
    assert_eq!(rec.report().torn_tail_bytes, 0);
    assert_eq!(rec.report().corrupt_frames, 0);
    assert!(segment_file_bytes(&dir) >= SEGMENT_HEADER_LEN as u64);
}
