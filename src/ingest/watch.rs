//! Discovery of inbox files: notify events, the catch-up scan, rescans and the quiet timer.
//!
//! The watcher is registered before the first scan, so a file arriving during the scan is seen
//! by one or the other (or both: the ledger and the in-progress check make that harmless).
//!
//! A file written in place is taken only once its writer has closed it: from its first
//! creation or write event to its close-write event it is open for writing, and neither the
//! quiet timer nor a scan takes it. (After an overflow of the event queue, or with the poll
//! watcher, the quiet time is the only guard; a file that still changes after it was read is
//! not counted and is handed back, see [`Retake::WhenQuiet`].)
//!
//! A file whose commit failed (disk full, database locked past its busy timeout) comes back as
//! [`IngestEvent::Retry`] and is taken again after a back-off that doubles per failure of that
//! file, from [`RETRY_FIRST`] up to [`RETRY_MAX`]: the retry follows the fault's end within one
//! back-off, without re-reading a failing file in a tight loop.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};

use super::{Closed, Ingest, is_ignored_name};
use crate::pipeline::Retake;

/// What wakes the ingest thread.
#[derive(Debug)]
pub enum IngestEvent {
    Fs(notify::Result<Event>),
    /// The pipeline hands this file back; it is still in the inbox: take it again as said.
    Retry(PathBuf, Retake),
    /// Stop taking files (shutdown).
    Stop,
}

/// The first back-off after a failed commit; it doubles with each further failure of the file.
pub const RETRY_FIRST: Duration = Duration::from_secs(1);
/// The longest back-off between two attempts at one file.
pub const RETRY_MAX: Duration = Duration::from_secs(30);

/// The back-off before attempt `failures + 1` of a file that failed `failures` times (≥ 1).
pub fn retry_delay(failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(16);
    RETRY_FIRST.saturating_mul(1 << doublings).min(RETRY_MAX)
}

/// Files waiting to be taken: when each is due, and which are open for writing.
#[derive(Default)]
struct Waiting {
    due: HashMap<PathBuf, Instant>,
    /// Written to (created or modified) and not closed since: not taken until closed.
    writing: HashSet<PathBuf>,
}

/// The inbox watcher and its schedule.
pub struct Watch {
    pub dir: PathBuf,
    pub quiet: Duration,
    pub rescan_interval: Duration,
    pub poll: bool,
    /// Set on shutdown: stop taking files at the next file boundary, even in the middle of a
    /// scan of a large backlog (the rest stays in the inbox for the next start).
    pub stop: Arc<AtomicBool>,
}

impl Watch {
    /// Starts the watcher feeding `tx`; keep the returned handle alive while watching.
    pub fn start(&self, tx: Sender<IngestEvent>) -> notify::Result<Box<dyn Watcher + Send>> {
        let handler = move |res: notify::Result<Event>| {
            let _ = tx.send(IngestEvent::Fs(res));
        };
        let mut watcher: Box<dyn Watcher + Send> = if self.poll {
            let cfg = notify::Config::default()
                .with_poll_interval(self.quiet.max(Duration::from_secs(1)));
            Box::new(notify::PollWatcher::new(handler, cfg)?)
        } else {
            Box::new(notify::recommended_watcher(handler)?)
        };
        watcher.watch(&self.dir, RecursiveMode::NonRecursive)?;
        Ok(watcher)
    }

    /// The ingest loop: catch-up scan, then events until `Stop` or the pipeline closes.
    pub fn run(&self, ingest: &mut Ingest, events: Receiver<IngestEvent>) -> Result<(), Closed> {
        let mut waiting = Waiting::default();
        // Failed commits per file still in the inbox, for the back-off.
        let mut failures: HashMap<PathBuf, u32> = HashMap::new();
        self.scan(ingest, &mut waiting)?;
        let mut next_rescan = Instant::now() + self.rescan_interval;
        loop {
            let next_quiet = waiting.due.values().min().copied();
            let wake = next_quiet.map_or(next_rescan, |q| q.min(next_rescan));
            match events.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(IngestEvent::Stop) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
                Ok(IngestEvent::Retry(path, Retake::AfterFailure)) => {
                    let n = failures.entry(path.clone()).or_insert(0);
                    *n = n.saturating_add(1);
                    let delay = retry_delay(*n);
                    tracing::warn!(file = %path.display(), failures = *n, retry_in_seconds = crate::stats::four_digits(delay.as_secs_f64()), "Taking the file again after its failed commit.");
                    waiting.due.insert(path, Instant::now() + delay);
                }
                Ok(IngestEvent::Retry(path, Retake::WhenQuiet)) => {
                    waiting.due.insert(path, Instant::now() + self.quiet);
                }
                Ok(IngestEvent::Retry(path, Retake::Now)) => {
                    waiting.writing.remove(&path);
                    self.take_now(ingest, &mut waiting, &path)?;
                }
                Ok(IngestEvent::Fs(Err(e))) => {
                    tracing::warn!(error = %e, "Inbox watcher error; rescanning the inbox.");
                    self.scan(ingest, &mut waiting)?;
                }
                Ok(IngestEvent::Fs(Ok(event))) => {
                    if event.need_rescan() {
                        tracing::warn!("Inbox watcher queue overflowed; rescanning the inbox.");
                        // Close events may be among those lost: the quiet time decides.
                        waiting.writing.clear();
                        self.scan(ingest, &mut waiting)?;
                        continue;
                    }
                    self.on_event(ingest, &mut waiting, event)?;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            let now = Instant::now();
            if now >= next_rescan {
                failures.retain(|path, _| path.symlink_metadata().is_ok());
                waiting
                    .writing
                    .retain(|path| path.symlink_metadata().is_ok());
                self.scan(ingest, &mut waiting)?;
                next_rescan = now + self.rescan_interval;
            }
            self.take_quiet(ingest, &mut waiting)?;
        }
    }

    fn on_event(
        &self,
        ingest: &mut Ingest,
        waiting: &mut Waiting,
        event: Event,
    ) -> Result<(), Closed> {
        match event.kind {
            // Renamed into the inbox: complete by contract, take it now.
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                for p in &event.paths {
                    waiting.writing.remove(p);
                    self.take_now(ingest, waiting, p)?;
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                if let Some(p) = event.paths.first() {
                    waiting.writing.remove(p);
                }
                if let Some(p) = event.paths.get(1) {
                    waiting.writing.remove(p);
                    self.take_now(ingest, waiting, p)?;
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::From)) | EventKind::Remove(_) => {
                for p in &event.paths {
                    waiting.writing.remove(p);
                }
            }
            // Written in place and closed: wait for the quiet time.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {
                for p in &event.paths {
                    if self.candidate(p) {
                        waiting.writing.remove(p);
                        waiting.due.insert(p.clone(), Instant::now() + self.quiet);
                    }
                }
            }
            // Created or written in place: open for writing until its close event.
            EventKind::Create(CreateKind::File | CreateKind::Any)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
                if !self.poll =>
            {
                for p in &event.paths {
                    if !self.candidate(p) {
                        continue;
                    }
                    // Symlinks, FIFOs and the like are never closed after a write: they wait
                    // for the quiet time, and ingest says why they are not taken.
                    if p.symlink_metadata().is_ok_and(|m| m.is_file()) {
                        waiting.due.remove(p);
                        waiting.writing.insert(p.clone());
                    } else {
                        waiting.due.insert(p.clone(), Instant::now() + self.quiet);
                    }
                }
            }
            // The poll watcher reports changes as generic events and no closes; treat them as
            // in-place writes and let the quiet time decide.
            EventKind::Any
            | EventKind::Other
            | EventKind::Create(_)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any)
                if self.poll =>
            {
                for p in &event.paths {
                    if self.candidate(p) {
                        waiting.due.insert(p.clone(), Instant::now() + self.quiet);
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn take_now(
        &self,
        ingest: &mut Ingest,
        waiting: &mut Waiting,
        path: &Path,
    ) -> Result<(), Closed> {
        waiting.due.remove(path);
        if self.candidate(path) && path.symlink_metadata().is_ok() {
            ingest.process(path)?;
        }
        Ok(())
    }

    /// Takes every waiting file whose quiet time is over, which has not been modified for the
    /// quiet time and is not open for writing; re-arms the others.
    fn take_quiet(&self, ingest: &mut Ingest, waiting: &mut Waiting) -> Result<(), Closed> {
        let now = Instant::now();
        let due: Vec<PathBuf> = waiting
            .due
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for path in due {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            waiting.due.remove(&path);
            if waiting.writing.contains(&path) {
                continue; // its close event brings it back
            }
            match modified_ago(&path) {
                None => {} // gone
                Some(age) if age >= self.quiet => ingest.process(&path)?,
                Some(age) => {
                    waiting.due.insert(path, now + (self.quiet - age));
                }
            }
        }
        Ok(())
    }

    /// Lists the inbox: quiet files are taken now, the others wait; files open for writing are
    /// left to their close event.
    fn scan(&self, ingest: &mut Ingest, waiting: &mut Waiting) -> Result<(), Closed> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(dir = %self.dir.display(), error = %e, "Cannot list the inbox.");
                return Ok(());
            }
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        // Oldest names first is as good an order as any and makes replays of a backlog stable.
        paths.sort();
        for path in paths {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            if !self.candidate(&path) || waiting.writing.contains(&path) {
                continue;
            }
            if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                continue;
            }
            match modified_ago(&path) {
                Some(age) if age >= self.quiet => {
                    waiting.due.remove(&path);
                    ingest.process(&path)?;
                }
                Some(age) => {
                    waiting
                        .due
                        .insert(path, Instant::now() + (self.quiet - age));
                }
                // Dangling symlinks and unreadable entries: let process() quarantine them.
                None => ingest.process(&path)?,
            }
        }
        Ok(())
    }

    fn candidate(&self, path: &Path) -> bool {
        if path.parent() != Some(self.dir.as_path()) {
            return false;
        }
        match path.file_name() {
            Some(n) => !is_ignored_name(&n.to_string_lossy()),
            None => false,
        }
    }
}

/// How long ago the file (not a symlink's target) was last modified; `None` when it is gone.
fn modified_ago(path: &Path) -> Option<Duration> {
    let m = path.symlink_metadata().ok()?;
    let mtime = m.modified().ok()?;
    Some(
        SystemTime::now()
            .duration_since(mtime)
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_retry_back_off_doubles_from_one_second_up_to_its_cap() {
        let delays: Vec<u64> = (1..=8).map(|n| retry_delay(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 16, 30, 30, 30]);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
        assert_eq!(retry_delay(0), RETRY_FIRST);
    }
}
