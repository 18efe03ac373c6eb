//! Discovery of inbox files: notify events, the catch-up scan, rescans and the quiet timer.
//!
//! The watcher is registered before the first scan, so a file arriving during the scan is seen
//! by one or the other (or both: the ledger and the in-progress check make that harmless).
//!
//! A file whose commit failed (disk full, database locked past its busy timeout) comes back as
//! [`IngestEvent::Retry`] and is taken again after a back-off that doubles per failure of that
//! file, from [`RETRY_FIRST`] up to [`RETRY_MAX`]: the retry follows the fault's end within one
//! back-off, without re-reading a failing file in a tight loop.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::{Duration, Instant, SystemTime};

use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
use notify::{Event, EventKind, RecursiveMode, Watcher};

use super::{Closed, Ingest, is_ignored_name};

/// What wakes the ingest thread.
#[derive(Debug)]
pub enum IngestEvent {
    Fs(notify::Result<Event>),
    /// The writer could not commit this file; it is still in the inbox: take it again later.
    Retry(PathBuf),
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
        // Files waiting for their quiet time: path → (size, mtime) when last looked at.
        let mut waiting: HashMap<PathBuf, Instant> = HashMap::new();
        // Failed commits per file still in the inbox, for the back-off.
        let mut failures: HashMap<PathBuf, u32> = HashMap::new();
        self.scan(ingest, &mut waiting)?;
        let mut next_rescan = Instant::now() + self.rescan_interval;
        loop {
            let next_quiet = waiting.values().min().copied();
            let wake = next_quiet.map_or(next_rescan, |q| q.min(next_rescan));
            match events.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(IngestEvent::Stop) | Err(RecvTimeoutError::Disconnected) => return Ok(()),
                Ok(IngestEvent::Retry(path)) => {
                    let n = failures.entry(path.clone()).or_insert(0);
                    *n = n.saturating_add(1);
                    let delay = retry_delay(*n);
                    tracing::warn!(file = %path.display(), failures = *n, retry_in_seconds = delay.as_secs_f64(), "Taking the file again after its failed commit.");
                    waiting.insert(path, Instant::now() + delay);
                }
                Ok(IngestEvent::Fs(Err(e))) => {
                    tracing::warn!(error = %e, "Inbox watcher error; rescanning the inbox.");
                    self.scan(ingest, &mut waiting)?;
                }
                Ok(IngestEvent::Fs(Ok(event))) => {
                    if event.need_rescan() {
                        tracing::warn!("Inbox watcher queue overflowed; rescanning the inbox.");
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
                self.scan(ingest, &mut waiting)?;
                next_rescan = now + self.rescan_interval;
            }
            self.take_quiet(ingest, &mut waiting)?;
        }
    }

    fn on_event(
        &self,
        ingest: &mut Ingest,
        waiting: &mut HashMap<PathBuf, Instant>,
        event: Event,
    ) -> Result<(), Closed> {
        match event.kind {
            // Renamed into the inbox: complete by contract, take it now.
            EventKind::Modify(ModifyKind::Name(RenameMode::To)) => {
                for p in &event.paths {
                    self.take_now(ingest, waiting, p)?;
                }
            }
            EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                if let Some(p) = event.paths.get(1) {
                    self.take_now(ingest, waiting, p)?;
                }
            }
            // Written in place and closed, or created: wait for the quiet time.
            EventKind::Access(AccessKind::Close(AccessMode::Write))
            | EventKind::Create(CreateKind::File | CreateKind::Any)
            | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Any) => {
                for p in &event.paths {
                    if self.candidate(p) {
                        waiting.insert(p.clone(), Instant::now() + self.quiet);
                    }
                }
            }
            // The poll watcher reports changes as generic events; treat them as in-place writes.
            EventKind::Any | EventKind::Other if self.poll => {
                for p in &event.paths {
                    if self.candidate(p) {
                        waiting.insert(p.clone(), Instant::now() + self.quiet);
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
        waiting: &mut HashMap<PathBuf, Instant>,
        path: &Path,
    ) -> Result<(), Closed> {
        waiting.remove(path);
        if self.candidate(path) && path.symlink_metadata().is_ok() {
            ingest.process(path)?;
        }
        Ok(())
    }

    /// Takes every waiting file whose quiet time is over and which has not been modified for
    /// the quiet time; re-arms the others.
    fn take_quiet(
        &self,
        ingest: &mut Ingest,
        waiting: &mut HashMap<PathBuf, Instant>,
    ) -> Result<(), Closed> {
        let now = Instant::now();
        let due: Vec<PathBuf> = waiting
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for path in due {
            if self.stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            waiting.remove(&path);
            match modified_ago(&path) {
                None => {} // gone
                Some(age) if age >= self.quiet => ingest.process(&path)?,
                Some(age) => {
                    waiting.insert(path, now + (self.quiet - age));
                }
            }
        }
        Ok(())
    }

    /// Lists the inbox: quiet files are taken now, the others wait.
    fn scan(
        &self,
        ingest: &mut Ingest,
        waiting: &mut HashMap<PathBuf, Instant>,
    ) -> Result<(), Closed> {
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
            if !self.candidate(&path) {
                continue;
            }
            if path.symlink_metadata().is_ok_and(|m| m.is_dir()) {
                continue;
            }
            match modified_ago(&path) {
                Some(age) if age >= self.quiet => {
                    waiting.remove(&path);
                    ingest.process(&path)?;
                }
                Some(age) => {
                    waiting.insert(path, Instant::now() + (self.quiet - age));
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
