//! The background checkpointer: a thread with its own connection that copies committed pages from
//! the write-ahead log into the database file beside the writer, so that a file's commit does not
//! wait for it.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::Connection;

use super::{Result, Store, StoreError};

/// The longest wait between two passes of the background checkpointer, which copy committed
/// pages from the write-ahead log into the database file; passes come sooner while the log grows
/// fast (see [`Store::checkpoint_in_background`]).
pub const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// The log size, in pages, at which the writer checkpoints by itself after all: only when the
/// background checkpointer has fallen far behind (4096-byte pages: 40 MiB).
pub(super) const BACKSTOP_CHECKPOINT_PAGES: i64 = 10_000;

/// The most log pages the background checkpointer lets one interval add (10 MiB): when the
/// writer commits faster, passes come more often, down to a sixteenth of the interval (see
/// [`next_wait`]).
pub(super) const PASS_PAGES: i64 = 2_500;

/// The wait before the background checkpointer's next pass, after a pass that found
/// `log_pages` in the log. Passes come twice as often while the writer adds more than
/// [`PASS_PAGES`] between two of them (the log restarts after each pass once the writer
/// commits, so the log holds what it added since the last one), down to `every / 16`, and half
/// as often again, up to `every`, once it adds less than a quarter of that or has not
/// committed at all (`writer_idle`: the log then still holds what the last pass saw).
pub(super) fn next_wait(
    wait: Duration,
    every: Duration,
    writer_idle: bool,
    log_pages: i64,
) -> Duration {
    if !writer_idle && log_pages > PASS_PAGES {
        (wait / 2).max(every / 16)
    } else if writer_idle || log_pages < PASS_PAGES / 4 {
        (wait * 2).min(every)
    } else {
        wait
    }
}

/// What one checkpoint did: `PRAGMA wal_checkpoint(PASSIVE)`'s answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointResult {
    /// The checkpoint could not finish because another connection held a lock it needed.
    pub busy: bool,
    /// Pages in the write-ahead log.
    pub log_pages: i64,
    /// Of those, the pages now copied into the database file.
    pub checkpointed_pages: i64,
}

/// The background checkpointer: a thread with its own connection. Dropping it stops the thread.
///
/// Its passive checkpoints copy the log beside the writer, but frames the writer commits while
/// one runs stay behind, and SQLite starts the log over only once every frame is copied. So
/// after each background pass the writer copies that remainder itself, after its next commit
/// (a few pages); its next transaction then starts the log over, which keeps the log file at
/// about one interval's worth of commits, or [`PASS_PAGES`] when the writer commits faster than
/// that in an interval (passes then come more often, see [`next_wait`]).
pub(super) struct Checkpointer {
    pub(super) every: Duration,
    /// `None` once dropping: closing the channel ends the thread's wait.
    requests:
        Option<std::sync::mpsc::Sender<std::sync::mpsc::SyncSender<Result<CheckpointResult>>>>,
    remainder_due: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    pub(super) fn start(path: &Path, synchronous: i64, every: Duration) -> Result<Checkpointer> {
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(open_err)?;
        // The checkpoint's syncs follow the writer's `[store] synchronous`.
        conn.pragma_update(None, "synchronous", synchronous)
            .map_err(open_err)?;
        let (requests, rx) =
            std::sync::mpsc::channel::<std::sync::mpsc::SyncSender<Result<CheckpointResult>>>();
        let remainder_due = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let due = remainder_due.clone();
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let mut failing = false;
                let mut wait = every;
                loop {
                    let reply = match rx.recv_timeout(wait) {
                        Ok(reply) => Some(reply),
                        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => None,
                        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
                    };
                    // Still set: the writer has not committed since the last pass.
                    let writer_idle = due.load(std::sync::atomic::Ordering::Acquire);
                    let result = checkpoint(&conn);
                    if let Ok(r) = &result {
                        wait = next_wait(wait, every, writer_idle, r.log_pages);
                        if r.log_pages > 0 {
                            due.store(true, std::sync::atomic::Ordering::Release);
                        }
                    }
                    match &result {
                        Err(e) if !failing => {
                            failing = true;
                            tracing::warn!(error = %e, "Checkpointing the write-ahead log failed; retrying every {wait:?}.");
                        }
                        Ok(_) if failing => {
                            failing = false;
                            tracing::info!("Checkpointing the write-ahead log works again.");
                        }
                        _ => {}
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(result);
                    }
                }
            })
            .map_err(StoreError::Thread)?;
        Ok(Checkpointer {
            every,
            requests: Some(requests),
            remainder_due,
            thread: Some(thread),
        })
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // A checkpoint under way finishes first.
        self.requests = None;
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One passive checkpoint: copies what it can without waiting for readers or the writer.
pub(super) fn checkpoint(conn: &Connection) -> Result<CheckpointResult> {
    Ok(conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        Ok(CheckpointResult {
            busy: r.get::<_, i64>(0)? != 0,
            log_pages: r.get(1)?,
            checkpointed_pages: r.get(2)?,
        })
    })?)
}

impl Store {
    /// Moves checkpoints off the writer. By default SQLite's committing connection copies the
    /// write-ahead log into the database file, and syncs it, whenever the log passes 1000
    /// pages, so about every dozenth file's commit waits for that. Here a thread with its own
    /// connection does it beside the writer every `every` ([`CHECKPOINT_INTERVAL`] in the
    /// daemon), or down to every `every / 16` while the log grows fast (`next_wait`); the
    /// writer still checkpoints by itself if the log grows past
    /// `BACKSTOP_CHECKPOINT_PAGES`, and copies the few pages a background pass leaves
    /// behind (see `Checkpointer`). Its checkpoints sync as the writer does, also after a
    /// later [`Store::set_synchronous`].
    pub fn checkpoint_in_background(&mut self, every: Duration) -> Result<()> {
        let path = match self.conn.path() {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => return Err(StoreError::InMemory),
        };
        // SQLite takes the level as the number it reports.
        let synchronous: i64 = self
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))?;
        self.checkpointer = None; // a second call replaces the first thread
        self.checkpointer = Some(Checkpointer::start(&path, synchronous, every)?);
        self.conn
            .pragma_update(None, "wal_autocheckpoint", BACKSTOP_CHECKPOINT_PAGES)?;
        Ok(())
    }

    /// After a commit: copies what the last background pass left behind (see [`Checkpointer`]).
    pub(super) fn finish_checkpoint(&self) {
        let Some(checkpointer) = &self.checkpointer else {
            return;
        };
        if checkpointer
            .remainder_due
            .swap(false, std::sync::atomic::Ordering::AcqRel)
            && let Err(e) = checkpoint(&self.conn)
        {
            tracing::warn!(error = %e, "Checkpointing the write-ahead log after a commit failed.");
        }
    }

    /// Asks the background checkpointer for a checkpoint now and waits for its answer; `None`
    /// when there is no background checkpointer.
    pub fn background_checkpoint_now(&self) -> Option<Result<CheckpointResult>> {
        let checkpointer = self.checkpointer.as_ref()?;
        let (reply, answer) = std::sync::mpsc::sync_channel(1);
        checkpointer.requests.as_ref()?.send(reply).ok()?;
        answer.recv().ok()
    }
}
