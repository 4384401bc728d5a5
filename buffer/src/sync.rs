//! Group commit: many appends, one `fdatasync`.
//!
//! Appends are numbered by the byte position their frame ends at in the
//! stream of everything written since open (a log sequence number, `lsn`).
//! `synced` is the position up to which `fdatasync` has returned. A sync
//! *round* reads the position written so far, syncs the active segment, and
//! publishes that position; everyone whose frame ends at or before it is done.
//!
//! Only one round runs at a time (the `leader` flag). A blocking append that
//! finds no round running becomes the leader and runs one itself; one that
//! finds a round running waits for it, and if that round started before its
//! frame was written, the next leader covers it. So with N writers a round
//! covers every frame written while the previous round ran: one `fdatasync`
//! per round, not per append.
//!
//! Async appends do not run rounds on a runtime thread: they ask the WAL's
//! sync thread (by raising `requested`) and wait on a `watch` channel bumped
//! at the end of each round. The same thread syncs on a timer under
//! [`SyncPolicy::Interval`](crate::SyncPolicy::Interval), and syncs the
//! confirmation file (every second under `Always`).
//!
//! A failed `fdatasync` cannot be retried into success: Linux may have
//! dropped the dirty pages it failed to write and report success next time.
//! So the failed range of positions is remembered, and every append whose
//! frame lies in it gets the error, even if a later round succeeds.

use std::io;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{error, warn};

use crate::error::{IoOp, WalError};
use crate::metrics::Counters;
use crate::wal::{lock, Shared};
use crate::SyncPolicy;

/// How often the sync thread syncs the confirmation file under
/// `SyncPolicy::Always` (appends sync the segments themselves).
const CONFIRM_SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// Failure ranges remembered; older ones are dropped (an append would have
/// to stall across this many failed syncs to miss its error).
const MAX_FAILURES: usize = 1024;

/// Group-commit bookkeeping, under its own mutex.
#[derive(Debug, Default)]
pub(crate) struct SyncState {
    /// Every frame ending at or before this position is durable.
    pub synced: u64,
    /// A round is running.
    pub leader: bool,
    /// Highest position an async append waits for (0: none).
    pub requested: u64,
    /// Ranges `(after, upto]` whose sync failed.
    failures: Vec<Failure>,
    /// The WAL is being dropped: the sync thread finishes.
    pub stop: bool,
}

#[derive(Debug)]
struct Failure {
    after: u64,
    upto: u64,
    kind: io::ErrorKind,
    message: String,
    path: PathBuf,
}

impl Failure {
    fn error(&self) -> WalError {
        WalError::io(
            IoOp::Sync,
            self.path.clone(),
            io::Error::new(self.kind, self.message.clone()),
        )
    }
}

impl SyncState {
    /// A sync reached `lsn`.
    pub fn synced_to(&mut self, lsn: u64) {
        self.synced = self.synced.max(lsn);
    }

    /// A sync meant to reach `upto` failed: frames past `synced` up to there
    /// are lost for their appenders. Returns the error to report.
    pub fn failed(
        &mut self,
        upto: u64,
        e: &io::Error,
        path: &Path,
        counters: &Counters,
    ) -> WalError {
        Counters::add(&counters.sync_errors, 1);
        error!(path = %path.display(), error = %e, "fdatasync failed; the appends it covered report the error");
        let failure = Failure {
            after: self.synced,
            upto,
            kind: e.kind(),
            message: e.to_string(),
            path: path.to_path_buf(),
        };
        let err = failure.error();
        if upto > self.synced {
            match self.failures.last_mut() {
                // Failures in a row with no success between: one range.
                Some(last) if failure.after <= last.upto => {
                    last.after = last.after.min(failure.after);
                    last.upto = last.upto.max(failure.upto);
                }
                _ => self.failures.push(failure),
            }
            if self.failures.len() > MAX_FAILURES {
                self.failures.remove(0);
            }
        }
        err
    }

    /// Where the append whose frame ends at `lsn` stands: `Some(result)` once
    /// known.
    fn outcome(&self, lsn: u64) -> Option<Result<(), WalError>> {
        if let Some(f) = self
            .failures
            .iter()
            .rev()
            .find(|f| f.after < lsn && lsn <= f.upto)
        {
            return Some(Err(f.error()));
        }
        (self.synced >= lsn).then_some(Ok(()))
    }
}

impl Shared {
    /// One round; the caller has set `leader`. Syncs the active segment if
    /// anything was written since the last round, and the confirmation file
    /// if `acks` and it is dirty (first rewriting it if a confirmation could
    /// not be written), then publishes.
    fn round(&self, acks: bool) -> Result<(), WalError> {
        let crate::wal::SyncTarget {
            written: target,
            file,
            path,
            ack,
        } = {
            let mut st = lock(&self.state);
            if acks {
                st.retry_ack_rewrite(&self.env);
            }
            st.sync_target(acks)
        };
        let synced = lock(&self.sync).synced;
        let segment = if target > synced {
            self.env.timed_sync(&file).map_err(|e| (e, path))
        } else {
            Ok(())
        };
        let mut ack_result = Ok(());
        if let Some((ack_file, ack_path)) = ack {
            if let Err(e) = self.env.timed_sync(&ack_file) {
                lock(&self.state).ack_sync_failed();
                Counters::add(&self.env.counters.sync_errors, 1);
                warn!(path = %ack_path.display(), error = %e, "cannot sync confirmations; will retry");
                ack_result = Err(WalError::io(IoOp::Sync, ack_path, e));
            }
        }
        let result = {
            let mut s = lock(&self.sync);
            s.leader = false;
            let result = match &segment {
                Ok(()) => {
                    s.synced_to(target);
                    Ok(())
                }
                Err((e, path)) => Err(s.failed(target, e, path, &self.env.counters)),
            };
            if s.requested <= target {
                s.requested = 0;
            }
            result
        };
        self.cv.notify_all();
        self.rounds.send_modify(|n| *n = n.wrapping_add(1));
        result.and(ack_result)
    }

    /// Blocks until the frame ending at `lsn` is durable, running rounds
    /// while no one else does.
    pub(crate) fn wait_durable(&self, lsn: u64) -> Result<(), WalError> {
        let mut s = lock(&self.sync);
        loop {
            if let Some(outcome) = s.outcome(lsn) {
                return outcome;
            }
            if !s.leader {
                s.leader = true;
                drop(s);
                // Let writers woken by the last round write their next frame
                // first, so this round covers them too.
                std::thread::yield_now();
                // Its outcome for this frame is read back from the state.
                let _ = self.round(false);
                s = lock(&self.sync);
                continue;
            }
            s = self
                .cv
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
    }

    /// Waits until the frame ending at `lsn` is durable, without blocking
    /// the runtime: the sync thread runs the round.
    pub(crate) async fn wait_durable_async(&self, lsn: u64) -> Result<(), WalError> {
        let mut rounds = self.rounds.subscribe();
        loop {
            // Mark the current round count seen *before* checking, so a round
            // ending after the check wakes `changed()` below.
            rounds.borrow_and_update();
            {
                let mut s = lock(&self.sync);
                if let Some(outcome) = s.outcome(lsn) {
                    return outcome;
                }
                s.requested = s.requested.max(lsn);
            }
            self.cv.notify_all();
            if rounds.changed().await.is_err() {
                // The sender lives in `self`: cannot happen while we hold it.
                return Err(WalError::io(
                    IoOp::Sync,
                    self.env.dir.clone(),
                    io::Error::other("sync thread stopped"),
                ));
            }
        }
    }

    /// Waits for the running round (if any), then runs a full one.
    pub(crate) fn sync_now(&self) -> Result<(), WalError> {
        let mut s = lock(&self.sync);
        while s.leader {
            s = self
                .cv
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        s.leader = true;
        drop(s);
        self.round(true)
    }
}

/// The WAL's background thread: rounds for async appends, the interval timer,
/// and confirmation syncs. Ends (after a last full round) when the WAL drops.
pub(crate) fn sync_thread(sh: &Shared) {
    let (tick, interval) = match sh.options.sync {
        SyncPolicy::Always => (CONFIRM_SYNC_INTERVAL, false),
        SyncPolicy::Interval(d) => (d, true),
    };
    let mut next_tick = Instant::now() + tick;
    let mut s = lock(&sh.sync);
    loop {
        if s.stop {
            break;
        }
        let now = Instant::now();
        let due = now >= next_tick;
        let wanted = s.requested > s.synced;
        if s.leader {
            // The running round notifies when it ends.
            s = sh
                .cv
                .wait(s)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            continue;
        }
        if due || wanted {
            s.leader = true;
            drop(s);
            let result = sh.round(due || interval);
            if due {
                if let Err(e) = result {
                    warn!(error = %e, "background sync failed");
                }
                next_tick = Instant::now() + tick;
            }
            s = lock(&sh.sync);
            continue;
        }
        s = sh
            .cv
            .wait_timeout(s, next_tick - now)
            .map(|(guard, _)| guard)
            .unwrap_or_else(|e| e.into_inner().0);
    }
    drop(s);
    if let Err(e) = sh.sync_now() {
        warn!(error = %e, "last sync before closing the WAL failed");
    }
}
