//! SQLite: the connection, migrations and every query of the crate. No other module writes SQL.
//!
//! One thread owns the writing [`Store`] (a `rusqlite::Connection` is not `Sync`); readers
//! (ingest's ledger check, `sensei status`, the dashboard) open a read-only [`Reader`], which WAL
//! lets run beside the writer, and alerting has its own read-write [`AlertDb`]. A file's records,
//! teacher samples, window sums and ledger row commit in one transaction, which is what makes
//! "counted exactly once" hold across crashes.
//!
//! One file per family of tables:
//! - [`migrations`]: `migrations/NNNN_*.sql`, applied in order inside one transaction and tracked
//!   by `PRAGMA user_version` (append-only: never edit a released migration);
//! - [`checkpoint`]: the background checkpointer that copies the write-ahead log beside the writer;
//! - [`ledger`]: the file ledger, records and late labels (`files`, `record_rows` behind the
//!   `records` view, `segments`, `late_labels`); `record_ids`: how record ids are kept (runs) and
//!   found;
//! - [`windows`]: the per-window sums (`windows`, the `window_stats` view);
//! - [`drift`]: baselines, detector state and drift events;
//! - [`sightline`]: whether each detector can see the minimum shift at the observed rates;
//! - [`buffer`]: the distillation buffer (`teacher_samples`, their inputs) and the export's read;
//! - [`shadow`]: shadow models, their samples and sums;
//! - [`jobs`]: re-distillation jobs, their failure alerts, promotions and the actions that asked
//!   for them;
//! - [`alerts`]: rule state, the outbox and requested actions (the alert evaluator's connection);
//! - [`reader`]: the read-only [`Reader`] and the summary behind `sensei status`.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;
pub mod alerts;
pub mod budget;
pub mod buffer;
pub mod checkpoint;
pub mod drift;
pub mod jobs;
pub mod labels;
pub mod ledger;
pub mod migrations;
pub mod reader;
mod record_ids;
pub mod retention;
pub mod shadow;
pub mod sightline;
pub mod windows;
pub use alerts::*;
pub use budget::*;
pub use buffer::*;
pub use checkpoint::{CHECKPOINT_INTERVAL, CheckpointResult};
pub use drift::*;
pub use jobs::*;
pub use labels::*;
pub use ledger::*;
pub use migrations::SCHEMA_VERSION;
pub use reader::*;
pub use retention::*;
pub use shadow::*;
pub use sightline::*;
pub use windows::*;

use checkpoint::Checkpointer;
use migrations::migrate;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error(
        "database schema version {found} is newer than this sensei supports ({supported}); upgrade sensei"
    )]
    TooNew { found: i64, supported: i64 },
    #[error("migration {name} failed: {source}")]
    Migration {
        name: String,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Sql(#[from] rusqlite::Error),
    #[error("starting the checkpoint thread: {0}")]
    Thread(std::io::Error),
    #[error("a background checkpointer needs a database file, not an in-memory database")]
    InMemory,
    #[error(
        "the file's records were numbered from {got} instead of {expected}: something other than sensei's writer inserted records"
    )]
    Sequence { expected: i64, got: i64 },
}

pub type Result<T> = std::result::Result<T, StoreError>;

/// The writing connection.
pub struct Store {
    // Stopped before the writer's connection closes, so that the writer's close, as the last
    // connection, still checkpoints and removes the log.
    checkpointer: Option<Checkpointer>,
    conn: Connection,
    /// `segments`, by segment: each file's commit numbers its records' segments from it.
    segments: std::collections::HashMap<String, i64>,
    /// Size retention has started and goes on to its low water (`retention`).
    shrinking: bool,
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.busy_timeout(Duration::from_secs(10))?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(())
}

/// Starts a transaction that will write. `IMMEDIATE` takes the write lock at `BEGIN`, where
/// SQLite waits for it up to the busy timeout. A deferred transaction that reads first and then
/// writes is refused `SQLITE_BUSY` at once when another connection holds the lock (the busy
/// handler is not consulted for a read-to-write upgrade), so one short write by anyone else (the
/// alert evaluator, `sensei promote`, an operator's script) would fail a file's commit.
fn write_transaction(conn: &mut Connection) -> rusqlite::Result<rusqlite::Transaction<'_>> {
    conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
}

impl Store {
    /// Opens (creating if needed) the database and applies pending migrations.
    pub fn open(path: &Path) -> Result<Store> {
        if let Some(dir) = path.parent()
            && !dir.as_os_str().is_empty()
        {
            let _ = std::fs::create_dir_all(dir);
        }
        let open_err = |source| StoreError::Open {
            path: path.display().to_string(),
            source,
        };
        let mut conn = Connection::open(path).map_err(open_err)?;
        configure(&conn).map_err(open_err)?;
        migrate(&mut conn)?;
        // The writer keeps every statement it uses prepared (the record inserts alone are one
        // per size in `RECORD_CHUNKS`).
        conn.set_prepared_statement_cache_capacity(64);
        let segments = ledger::load_segments(&conn)?;
        Ok(Store {
            conn,
            checkpointer: None,
            segments,
            shrinking: false,
        })
    }

    /// checkpointer too.
    pub fn set_synchronous(&mut self, mode: crate::config::Synchronous) -> Result<()> {
        let value = match mode {
            crate::config::Synchronous::Normal => "NORMAL",
            crate::config::Synchronous::Full => "FULL",
        };
        self.conn.pragma_update(None, "synchronous", value)?;
        if let Some(every) = self.checkpointer.as_ref().map(|c| c.every) {
            self.checkpoint_in_background(every)?;
        }
        Ok(())
    }

    /// The current schema version (`PRAGMA user_version`).
    pub fn schema_version(&self) -> Result<i64> {
        Ok(self
            .conn
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }
}

/// SQLite stores NaN as NULL, which a NOT NULL column refuses: never let one through.
fn finite(x: f64) -> f64 {
    if x.is_finite() { x } else { 0.0 }
}

#[cfg(test)]
mod tests;
