//! Model-based property test: random sequences of appends, confirmations,
//! crashes (with torn writes) and clean reopens, checked against an
//! in-memory model of what the WAL promises.
//!
//! # What the model allows, precisely
//!
//! The model keeps the chunks whose append returned and that were not
//! confirmed, in append order. After every reopen the WAL must replay exactly
//! those (ids and payloads, in order), except for what the simulated crash
//! was allowed to take:
//!
//! - A crash is dropping the `Wal` without `close`: the process dies, the
//!   kernel keeps what `write(2)` was given. Nothing may be lost.
//! - A crash may also *tear* the newest segment, cutting bytes off its end
//!   as a power cut would with unsynced data. What may be cut depends on the
//!   policy. Under `Always` every returned append is synced, so only a frame
//!   whose append had *not* returned can be torn: the test cuts into the last
//!   frame only right after an append, and then treats that append as one
//!   still in flight when the power went (it leaves the model). Under
//!   `Interval` any suffix of the newest segment may be unsynced: the test
//!   cuts anywhere in it, and every chunk whose frame is cut is lost (and
//!   only those: older segments were synced when they were closed). When the
//!   newest segment holds no frame, its header is torn instead: no chunk may
//!   be lost, and ids must carry on.
//! - A crash may also tear the last frame of the confirmation file if the
//!   last thing written to it was a confirmation: that confirmation was not
//!   synced yet (at least once), so its chunk *may* come back (if its segment
//!   still exists), and then must be confirmable again. No other confirmed
//!   chunk may ever come back.
//!
//! Besides: ids increase within a session, and a new id is above every id
//! still waiting (so no two chunks that exist share one; an id given again
//! after a confirmation of it survived would show up as a lost chunk in the
//! replay check); the newest segment is exactly
//! its header plus the frames the model expects there (no half frame is ever
//! left behind); the segment files never take more than `total_limit`; the
//! recovery report counts exactly the torn bytes the test cut; nothing is
//! ever reported corrupt, since the test never flips a byte.

use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::Duration;

use proptest::prelude::*;
use proptest::sample::Index;
use ulog_buffer::format::{FRAME_HEADER_LEN, SEGMENT_HEADER_LEN};
use ulog_buffer::{ChunkId, SyncPolicy, Wal, WalError, WalOptions};

/// A confirmation frame: header plus one (id, count) range.
const CONFIRM_FRAME_LEN: u64 = FRAME_HEADER_LEN as u64 + 12;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<u8>),
    Confirm(Index),
    Crash {
        tear: Option<Index>,
        tear_confirm: Option<Index>,
    },
    Reopen,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(any::<u8>(), 0..100).prop_map(Op::Append),
        3 => any::<Index>().prop_map(Op::Confirm),
        1 => (prop::option::of(any::<Index>()), prop::option::of(any::<Index>()))
            .prop_map(|(tear, tear_confirm)| Op::Crash { tear, tear_confirm }),
        1 => Just(Op::Reopen),
    ]
}

struct Model {
    /// Appended, not confirmed, in append order.
    unconfirmed: Vec<(ChunkId, Vec<u8>)>,
    /// Frames in the newest segment file, in order (confirmed ones too).
    active: Vec<(ChunkId, u64)>,
    active_path: PathBuf,
    /// The chunk whose append was the last operation (a tear under `Always`
    /// may only hit it).
    last_append: Option<ChunkId>,
    /// The confirmation whose frame ends the confirmation file, with the
    /// chunk's payload.
    last_confirm: Option<(ChunkId, Vec<u8>)>,
    /// Highest id given since the last open.
    session_max: Option<ChunkId>,
}

fn newest_segment(dir: &Path) -> PathBuf {
    let mut v: Vec<_> = fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    v.sort();
    v.pop().expect("a WAL always has an active segment")
}

fn segment_bytes(dir: &Path) -> u64 {
    fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .map(|p| fs::metadata(p).expect("stat").len())
        .sum()
}

fn cut(path: &Path, bytes: u64) {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open for tear");
    let len = f.metadata().expect("stat").len();
    f.set_len(len - bytes).expect("tear");
}

fn check_files(dir: &Path, model: &Model, wal: &Wal, o: &WalOptions) {
    let newest = newest_segment(dir);
    assert_eq!(newest, model.active_path, "newest segment");
    let expected: u64 =
        SEGMENT_HEADER_LEN as u64 + model.active.iter().map(|(_, len)| len).sum::<u64>();
    assert_eq!(
        fs::metadata(&newest).expect("stat").len(),
        expected,
        "newest segment = header + expected frames"
    );
    let on_disk = segment_bytes(dir);
    assert_eq!(wal.metrics().segment_bytes, on_disk);
    assert!(on_disk <= o.total_limit, "{on_disk} > {}", o.total_limit);
    assert_eq!(
        wal.metrics().unconfirmed_chunks,
        model.unconfirmed.len() as u64
    );
}

fn run(ops: Vec<Op>, sync: SyncPolicy) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().expect("tempdir");
    let dir = dir.path();
    let o = WalOptions {
        segment_size: 300,
        total_limit: 2_000,
        sync,
    };
    let (wal, rec) = Wal::open(dir, o).expect("open");
    prop_assert!(rec.is_empty());
    let mut wal = Some(wal);
    let mut model = Model {
        unconfirmed: Vec::new(),
        active: Vec::new(),
        active_path: newest_segment(dir),
        last_append: None,
        last_confirm: None,
        session_max: None,
    };

    for op in ops {
        let w = wal.as_ref().expect("open WAL");
        match op {
            Op::Append(payload) => {
                model.last_append = None;
                match w.append(&payload) {
                    Ok(id) => {
                        prop_assert!(model.session_max < Some(id), "ids increase");
                        if let Some(last) = model.unconfirmed.last() {
                            prop_assert!(id > last.0, "{} after waiting {}", id, last.0);
                        }
                        model.session_max = Some(id);
                        let newest = newest_segment(dir);
                        if newest != model.active_path {
                            model.active.clear();
                            model.active_path = newest;
                        }
                        model
                            .active
                            .push((id, (FRAME_HEADER_LEN + payload.len()) as u64));
                        model.unconfirmed.push((id, payload));
                        model.last_append = Some(id);
                    }
                    Err(WalError::Full {
                        used,
                        limit,
                        needed,
                    }) => {
                        prop_assert_eq!(limit, o.total_limit);
                        prop_assert_eq!(used, segment_bytes(dir));
                        prop_assert!(used + needed > limit);
                    }
                    Err(e) => return Err(TestCaseError::fail(format!("append: {e}"))),
                }
            }
            Op::Confirm(i) => {
                model.last_append = None;
                if model.unconfirmed.is_empty() {
                    continue;
                }
                let (id, payload) = model.unconfirmed.remove(i.index(model.unconfirmed.len()));
                w.confirm(id).expect("confirm an unconfirmed chunk");
                model.last_confirm = Some((id, payload));
            }
            Op::Reopen | Op::Crash { .. } => {
                let w = wal.take().expect("open WAL");
                let mut torn_bytes = 0;
                let mut confirm_torn_bytes = 0;
                let mut may_come_back = None;
                match op {
                    Op::Reopen => w.close().expect("close"),
                    Op::Crash { tear, tear_confirm } => {
                        drop(w);
                        if let Some(t) = tear {
                            torn_bytes = tear_segment(&mut model, t, sync);
                        }
                        if let (Some(t), Some((id, payload))) =
                            (tear_confirm, model.last_confirm.take())
                        {
                            let k = 1 + t.index(CONFIRM_FRAME_LEN as usize) as u64;
                            cut(&dir.join("acks.log"), k);
                            confirm_torn_bytes = CONFIRM_FRAME_LEN - k;
                            may_come_back = Some((id, payload));
                        }
                    }
                    _ => unreachable!(),
                }

                let (w, rec) = Wal::open(dir, o).expect("reopen");
                let report = rec.report().clone();
                prop_assert_eq!(report.torn_tail_bytes, torn_bytes, "{:?}", report);
                prop_assert_eq!(report.confirm_file_torn_bytes, confirm_torn_bytes);
                prop_assert_eq!(report.corrupt_frames, 0);
                prop_assert_eq!(report.confirm_file_corrupt_frames, 0);
                let replayed: Vec<(ChunkId, Vec<u8>)> = rec
                    .iter()
                    .map(|c| c.map(|c| (c.id, c.payload)))
                    .collect::<Result<_, _>>()
                    .expect("recovered chunks read back");
                let expected = model.unconfirmed.clone();
                match may_come_back {
                    Some(back) if replayed != expected => {
                        let mut with_back = expected;
                        let at = with_back.partition_point(|c| c.0 < back.0);
                        with_back.insert(at, back);
                        prop_assert_eq!(
                            &replayed,
                            &with_back,
                            "at most the torn confirmation returns"
                        );
                        model.unconfirmed = with_back;
                    }
                    _ => prop_assert_eq!(&replayed, &expected),
                }
                let newest = newest_segment(dir);
                if newest != model.active_path {
                    prop_assert!(
                        model.active.is_empty(),
                        "only an empty newest segment is replaced"
                    );
                    model.active_path = newest;
                }
                model.last_append = None;
                model.last_confirm = None;
                model.session_max = None;
                wal = Some(w);
            }
        }
        check_files(dir, &model, wal.as_ref().expect("open WAL"), &o);
    }
    Ok(())
}

/// Cuts the newest segment as a power cut could under `sync`; updates the
/// model and returns the torn bytes recovery must report.
fn tear_segment(model: &mut Model, t: Index, sync: SyncPolicy) -> u64 {
    let path = model.active_path.clone();
    if model.active.is_empty() {
        // Only a header: tear it.
        let k = 1 + t.index(SEGMENT_HEADER_LEN) as u64;
        cut(&path, k);
        return SEGMENT_HEADER_LEN as u64 - k;
    }
    let frames: u64 = model.active.iter().map(|(_, len)| len).sum();
    let k = match sync {
        SyncPolicy::Always => match (model.last_append, model.active.last()) {
            // Only the frame of an append still in flight.
            (Some(last), Some(&(id, len))) if last == id => 1 + t.index(len as usize) as u64,
            _ => return 0,
        },
        SyncPolicy::Interval(_) => 1 + t.index(frames as usize) as u64,
    };
    cut(&path, k);
    let new_len = frames - k;
    let mut end = 0;
    let mut kept = 0;
    for &(_, len) in &model.active {
        if end + len > new_len {
            break;
        }
        end += len;
        kept += 1;
    }
    for (id, _) in model.active.drain(kept..) {
        // Gone from disk: lost if unconfirmed; if its confirmation is torn
        // too, it cannot come back either.
        model.unconfirmed.retain(|c| c.0 != id);
        if model.last_confirm.as_ref().is_some_and(|c| c.0 == id) {
            model.last_confirm = None;
        }
    }
    new_len - end
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
    // Every append under `Always` is an fdatasync: fewer cases.
    #![proptest_config(ProptestConfig { cases: cases(64), ..ProptestConfig::default() })]

    #[test]
    fn model_always(ops in prop::collection::vec(op(), 1..60)) {
        run(ops, SyncPolicy::Always)?;
    }

}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(96), ..ProptestConfig::default() })]

    #[test]
    fn model_interval(ops in prop::collection::vec(op(), 1..80)) {
        run(ops, SyncPolicy::Interval(Duration::from_secs(3600)))?;
    }
}
