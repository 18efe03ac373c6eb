//! Retention of the per-record rows (`record_rows` and their ids, `shadow_samples`): by age
//! (`[store] record_retention`, counted from when sensei received a file, not from the record's
//! own time, so a backfill of old data is kept as long as fresh data) and by size (`[store]
//! max_size`: once the database's pages in use pass it, the oldest records go until it is back
//! under [`SIZE_LOW_WATER`] of it). Windows, drift events, alerts, jobs and the distillation
//! buffer (which has its own cap) are never deleted here.
//!
//! Records are numbered in the order their files were committed, so "the oldest" is "the
//! lowest `seq`", and both kinds delete a prefix of the table through its primary key. A step
//! deletes at most a given number of rows in one short transaction; the writer runs steps
//! between files until nothing is due, so retention never holds the write lock for long.
//! What was deleted, and why, is kept in `retention`.

use rusqlite::params;

use super::{Result, Store, record_ids, write_transaction};

/// Size retention, once started, goes on until the pages in use are below this share of
/// `max_size`, so that it does not start again at the next commit.
pub const SIZE_LOW_WATER: f64 = 0.95;

/// Files one age step looks at, at most.
const RETENTION_FILES: i64 = 1_000;

/// What one retention step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetentionStep {
    /// `age` or `size`.
    pub reason: &'static str,
    pub records: usize,
    /// Every record up to this `seq` is gone.
    pub through_seq: i64,
    /// More may be due: run another step.
    pub more: bool,
}

/// The database's size as SQLite counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseSize {
    /// Bytes of the pages in use (the file's size less its free pages).
    pub used_bytes: u64,
    /// Bytes of the file's free pages, which new rows fill before the file grows.
    pub free_bytes: u64,
}

/// What retention has deleted since the database was made, per reason.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Dropped {
    pub reason: String,
    pub records: i64,
    pub through_seq: i64,
    pub last_at: i64,
}

/// The pages in use and free.
fn database_size(conn: &rusqlite::Connection) -> Result<DatabaseSize> {
    let pragma = |name: &str| -> Result<u64> {
        Ok(conn
            .pragma_query_value(None, name, |r| r.get::<_, i64>(0))?
            .max(0) as u64)
    };
    let (pages, free, page) = (
        pragma("page_count")?,
        pragma("freelist_count")?,
        pragma("page_size")?,
    );
    Ok(DatabaseSize {
        used_bytes: pages.saturating_sub(free) * page,
        free_bytes: free * page,
    })
}

impl Store {
    /// The pages in use and free.
    pub fn database_size(&self) -> Result<DatabaseSize> {
        database_size(&self.conn)
    }

    /// One step of retention: deletes at most `max_rows` of the oldest per-record rows that
    /// are due, by size first (while the pages in use are over `max_bytes`, or, once that
    /// started, over its low water) and then by age (files received before `cutoff_ms`).
    /// `None` when nothing is due.
    pub fn retention_step(
        &mut self,
        cutoff_ms: i64,
        max_bytes: Option<u64>,
        max_rows: usize,
        now_ms: i64,
    ) -> Result<Option<RetentionStep>> {
        let oldest: Option<i64> = self
            .conn
            .prepare_cached("SELECT MIN(seq) FROM record_rows")?
            .query_row([], |r| r.get(0))?;
        let Some(oldest) = oldest else {
            // Nothing to delete; whether the database is still over its budget is said by
            // `retention_stuck`.
            self.shrinking = match max_bytes {
                Some(max) => self.database_size()?.used_bytes > max,
                None => false,
            };
            return Ok(None);
        };
        let chunk_end = oldest.saturating_add(max_rows.max(1) as i64);
        let by_size = match max_bytes {
            Some(max) => {
                let used = self.database_size()?.used_bytes as f64;
                let limit = if self.shrinking {
                    max as f64 * SIZE_LOW_WATER
                } else {
                    max as f64
                };
                self.shrinking = used > limit;
                self.shrinking
            }
            None => false,
        };
        let (reason, before) = if by_size {
            ("size", chunk_end)
        } else {
            // Files in the order of their records, from the one holding the oldest record
            // left: those received before the cut-off go, up to the first one received after
            // it (should the clock have stepped back, a file received "earlier" than one
            // before it waits for that one).
            let files: Vec<(i64, i64, i64)> = {
                let mut stmt = self.conn.prepare_cached(
                    "SELECT first_seq, records, processed_at FROM files
                     WHERE first_seq >= COALESCE((SELECT first_seq FROM files
                                                  WHERE first_seq <= ?1
                                                  ORDER BY first_seq DESC LIMIT 1), ?1)
                     ORDER BY first_seq LIMIT ?2",
                )?;
                let rows = stmt.query_map(params![oldest, RETENTION_FILES], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut keep_from = oldest;
            for (first_seq, records, processed_at) in files {
                if processed_at >= cutoff_ms || keep_from >= chunk_end {
                    break;
                }
                keep_from = first_seq + records;
            }
            if keep_from <= oldest {
                return Ok(None);
            }
            ("age", keep_from.min(chunk_end))
        };
        let tx = write_transaction(&mut self.conn)?;
        tx.prepare_cached("DELETE FROM shadow_samples WHERE seq < ?1")?
            .execute([before])?;
        let deleted = tx
            .prepare_cached("DELETE FROM record_rows WHERE seq < ?1")?
            .execute([before])?;
        record_ids::delete_before(&tx, before)?;
        tx.prepare_cached(
            "INSERT INTO retention (reason, records, through_seq, last_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (reason) DO UPDATE SET records = records + excluded.records,
                 through_seq = MAX(through_seq, excluded.through_seq), last_at = excluded.last_at",
        )?
        .execute(params![reason, deleted as i64, before - 1, now_ms])?;
        tx.commit()?;
        // The next step says whether more is due (it finds nothing once all is done).
        let more = deleted > 0;
        Ok(Some(RetentionStep {
            reason,
            records: deleted,
            through_seq: before - 1,
            more,
        }))
    }
}

impl Store {
    /// Size retention is under way but has no per-record row left to delete.
    pub fn retention_stuck(&self) -> bool {
        self.shrinking
            && self
                .conn
                .query_row("SELECT NOT EXISTS (SELECT 1 FROM record_rows)", [], |r| {
                    r.get::<_, bool>(0)
                })
                .unwrap_or(false)
    }
}

impl super::Reader {
    /// The pages in use and free.
    pub fn database_size(&self) -> Result<DatabaseSize> {
        database_size(&self.conn)
    }

    /// What retention has deleted, per reason (empty before it first deleted anything).
    pub fn dropped(&self) -> Result<Vec<Dropped>> {
        if !self.table_exists("retention")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT reason, records, through_seq, last_at FROM retention ORDER BY reason",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(Dropped {
                reason: r.get(0)?,
                records: r.get(1)?,
                through_seq: r.get(2)?,
                last_at: r.get(3)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}
