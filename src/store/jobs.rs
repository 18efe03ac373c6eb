//! Re-distillation jobs (`redistill_jobs`), the alerts on their failure streaks
//! (`redistill_failure_alerts`), promotions of the serving student (`student_promotions`) and the
//! alert actions (`alert_actions`) that asked for jobs.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{Reader, Result, Store, write_transaction};

/// The rule name of the notifications about re-distillation that keeps failing (their alert ids
/// are `redistill-failing.job-<first job>`, which no alert rule's id collides with: those end in
/// a timestamp).
pub const REDISTILL_FAILING_RULE: &str = "redistill-failing";

/// A job's id, its gate verdict and the evidence (JSON).
pub type JobVerdict = (i64, Option<String>, Option<String>);

/// A `student_promotions` row.
#[derive(Debug, Clone, PartialEq)]
pub struct Promotion {
    /// `promote` or `rollback`.
    pub kind: String,
    pub model: String,
    pub sha256: String,
    pub previous: String,
    pub previous_sha256: String,
    pub job_id: Option<i64>,
    pub reason: String,
    pub evidence: Option<String>,
}

/// Who asks for a re-distillation job, and why.
#[derive(Debug, Clone)]
pub struct JobRequest {
    /// `manual`, or `alert:<rule>`.
    pub trigger: String,
    pub reason: String,
    pub action_id: Option<i64>,
}

/// What became of a job request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Enqueued {
    Queued {
        job: i64,
    },
    /// Another job is queued or running.
    Busy {
        job: i64,
    },
    /// The minimum interval since the last job (longer after failures) has not passed.
    TooSoon {
        last_job: i64,
        /// Jobs in a row that failed (the back-off doubles the interval for each after the
        /// first).
        failures: u32,
        next_allowed_ms: i64,
    },
}

/// Jobs that ended `failed` or `timed_out` since the last one that `succeeded`.
fn consecutive_failures(conn: &Connection) -> rusqlite::Result<u32> {
    conn.query_row(
        "SELECT COUNT(*) FROM redistill_jobs
         WHERE status IN ('failed', 'timed_out')
           AND id > COALESCE((SELECT MAX(id) FROM redistill_jobs WHERE status = 'succeeded'), 0)",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
}

/// A job that ended, as the failure streak sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedJob {
    pub id: i64,
    /// `succeeded`, `failed` or `timed_out`.
    pub status: String,
    /// When it started (when it was requested, if it never started).
    pub started_at: i64,
    pub detail: String,
    /// The job's directory (its `job.log` is there).
    pub dir: Option<String>,
}

/// A `redistill_failure_alerts` row: a failure streak that was announced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureAlertRow {
    pub first_job: i64,
    pub last_job: i64,
    pub failures: u32,
    pub alerted_at: i64,
    pub resolved_job: Option<i64>,
}

/// What the failure-streak announcement decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureState {
    /// Finished jobs from the last success on (or all of them), oldest first.
    pub finished: Vec<FinishedJob>,
    pub last_success: Option<i64>,
    /// The latest streak announced.
    pub alerted: Option<FailureAlertRow>,
}

/// A notification about a failure streak, with the rows that record it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureNotice {
    Failing {
        first_job: i64,
        last_job: i64,
        failures: u32,
        dedup_key: String,
        alert_id: String,
        /// The notification document (JSON).
        payload: String,
        receivers: Vec<String>,
    },
    Resolved {
        first_job: i64,
        by_job: i64,
        dedup_key: String,
        alert_id: String,
        payload: String,
        receivers: Vec<String>,
    },
}

/// A `redistill_jobs` row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct JobRow {
    pub id: i64,
    pub status: String,
    pub trigger: String,
    pub reason: String,
    pub action_id: Option<i64>,
    pub requested_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub owner_pid: Option<i64>,
    pub pid: Option<i64>,
    pub dir: Option<String>,
    pub records: Option<i64>,
    pub holdout: Option<i64>,
    pub output: Option<String>,
    pub exit_code: Option<i64>,
    pub detail: Option<String>,
    pub gate: Option<String>,
    pub evidence: Option<String>,
}

fn jobs(conn: &Connection, tail: &str, limit: i64) -> Result<Vec<JobRow>> {
    let sql = format!(
        "SELECT id, status, trigger, reason, action_id, requested_at, started_at, finished_at,
                owner_pid, pid, dir, records, holdout, output, exit_code, detail, gate, evidence
         FROM redistill_jobs {tail} LIMIT ?1"
    );
    let mut stmt = conn.prepare(&sql)?;
    let rows = stmt.query_map([limit], |r| {
        Ok(JobRow {
            id: r.get(0)?,
            status: r.get(1)?,
            trigger: r.get(2)?,
            reason: r.get(3)?,
            action_id: r.get(4)?,
            requested_at: r.get(5)?,
            started_at: r.get(6)?,
            finished_at: r.get(7)?,
            owner_pid: r.get(8)?,
            pid: r.get(9)?,
            dir: r.get(10)?,
            records: r.get(11)?,
            holdout: r.get(12)?,
            output: r.get(13)?,
            exit_code: r.get(14)?,
            detail: r.get(15)?,
            gate: r.get(16)?,
            evidence: r.get(17)?,
        })
    })?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

impl Store {
    /// Queues a re-distillation job unless one is queued or running, or (unless `force`) it is
    /// too soon: `next_allowed_ms(last start, failures in a row)` is when the back-off lets the
    /// next job start (`crate::redistill::streak::Backoff`: `min_interval`, doubled for each
    /// further job in the current failure streak, up to `max_backoff`).
    pub fn enqueue_redistill_job(
        &mut self,
        request: &JobRequest,
        next_allowed_ms: impl FnOnce(i64, u32) -> i64,
        force: bool,
        now_ms: i64,
    ) -> Result<Enqueued> {
        let tx = write_transaction(&mut self.conn)?;
        let active: Option<i64> = tx
            .query_row(
                "SELECT id FROM redistill_jobs WHERE status IN ('queued', 'running') ORDER BY id LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()?;
        if let Some(id) = active {
            return Ok(Enqueued::Busy { job: id });
        }
        let last: Option<(i64, i64)> = tx
            .query_row(
                "SELECT id, COALESCE(started_at, requested_at) FROM redistill_jobs
                 ORDER BY COALESCE(started_at, requested_at) DESC LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        if let Some((id, at)) = last
            && !force
        {
            let failures = consecutive_failures(&tx)?;
            let next_allowed_ms = next_allowed_ms(at, failures);
            if now_ms < next_allowed_ms {
                return Ok(Enqueued::TooSoon {
                    last_job: id,
                    failures,
                    next_allowed_ms,
                });
            }
        }
        tx.execute(
            "INSERT INTO redistill_jobs (status, trigger, reason, action_id, requested_at, updated_at)
             VALUES ('queued', ?1, ?2, ?3, ?4, ?4)",
            params![request.trigger, request.reason, request.action_id, now_ms],
        )?;
        let id = tx.last_insert_rowid();
        tx.commit()?;
        Ok(Enqueued::Queued { job: id })
    }

    /// Reads the jobs since the last success and the latest announced failure streak, lets
    /// `decide` say what to announce, and writes it in the same transaction: each notice's
    /// `redistill_failure_alerts` change and its outbox rows (one per receiver). A notice whose
    /// change was already made (by another process) writes nothing. Returns the receivers that
    /// got a notification.
    pub fn announce_redistill_failures(
        &mut self,
        now_ms: i64,
        decide: impl FnOnce(&FailureState) -> Vec<FailureNotice>,
    ) -> Result<Vec<String>> {
        let tx = write_transaction(&mut self.conn)?;
        let last_success: Option<i64> = tx.query_row(
            "SELECT MAX(id) FROM redistill_jobs WHERE status = 'succeeded'",
            [],
            |r| r.get(0),
        )?;
        let finished = {
            let mut stmt = tx.prepare(
                "SELECT id, status, COALESCE(started_at, requested_at), COALESCE(detail, ''), dir
                 FROM redistill_jobs
                 WHERE status IN ('succeeded', 'failed', 'timed_out') AND id >= ?1
                 ORDER BY id",
            )?;
            let rows = stmt.query_map([last_success.unwrap_or(0)], |r| {
                Ok(FinishedJob {
                    id: r.get(0)?,
                    status: r.get(1)?,
                    started_at: r.get(2)?,
                    detail: r.get(3)?,
                    dir: r.get(4)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let alerted = tx
            .query_row(
                "SELECT first_job, last_job, failures, alerted_at, resolved_job
                 FROM redistill_failure_alerts ORDER BY first_job DESC LIMIT 1",
                [],
                |r| {
                    Ok(FailureAlertRow {
                        first_job: r.get(0)?,
                        last_job: r.get(1)?,
                        failures: r.get(2)?,
                        alerted_at: r.get(3)?,
                        resolved_job: r.get(4)?,
                    })
                },
            )
            .optional()?;
        let notices = decide(&FailureState {
            finished,
            last_success,
            alerted,
        });
        let mut receivers: Vec<String> = Vec::new();
        for notice in &notices {
            let (changed, kind, dedup_key, alert_id, payload, to) = match notice {
                FailureNotice::Failing {
                    first_job,
                    last_job,
                    failures,
                    dedup_key,
                    alert_id,
                    payload,
                    receivers,
                } => (
                    tx.execute(
                        "INSERT INTO redistill_failure_alerts (first_job, last_job, failures, alerted_at)
                         VALUES (?1, ?2, ?3, ?4) ON CONFLICT (first_job) DO NOTHING",
                        params![first_job, last_job, failures, now_ms],
                    )?,
                    "firing",
                    dedup_key,
                    alert_id,
                    payload,
                    receivers,
                ),
                FailureNotice::Resolved {
                    first_job,
                    by_job,
                    dedup_key,
                    alert_id,
                    payload,
                    receivers,
                } => (
                    tx.execute(
                        "UPDATE redistill_failure_alerts SET resolved_job = ?2, resolved_at = ?3
                         WHERE first_job = ?1 AND resolved_job IS NULL",
                        params![first_job, by_job, now_ms],
                    )?,
                    "resolved",
                    dedup_key,
                    alert_id,
                    payload,
                    receivers,
                ),
            };
            if changed == 0 {
                continue;
            }
            let mut ins = tx.prepare_cached(
                "INSERT INTO alert_outbox (dedup_key, alert_id, receiver, rule, kind, payload,
                                           created_at, next_attempt_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)
                 ON CONFLICT (dedup_key, receiver) DO NOTHING",
            )?;
            for receiver in to {
                ins.execute(params![
                    dedup_key,
                    alert_id,
                    receiver,
                    REDISTILL_FAILING_RULE,
                    kind,
                    payload,
                    now_ms
                ])?;
                if !receivers.contains(receiver) {
                    receivers.push(receiver.clone());
                }
            }
        }
        tx.commit()?;
        Ok(receivers)
    }

    /// Moves a queued job to running under this process; false when it is no longer queued.
    pub fn start_redistill_job(
        &mut self,
        job: i64,
        owner_pid: u32,
        dir: &str,
        now_ms: i64,
    ) -> Result<bool> {
        let n = self.conn.execute(
            "UPDATE redistill_jobs SET status = 'running', owner_pid = ?2, dir = ?3,
                 started_at = ?4, updated_at = ?4
             WHERE id = ?1 AND status = 'queued'",
            params![job, owner_pid, dir, now_ms],
        )?;
        Ok(n == 1)
    }

    /// Records the exported dataset and the output the command is asked to write.
    pub fn note_redistill_dataset(
        &mut self,
        job: i64,
        records: usize,
        holdout: usize,
        output: &str,
        now_ms: i64,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE redistill_jobs SET records = ?2, holdout = ?3, output = ?4, updated_at = ?5
             WHERE id = ?1",
            params![job, records as i64, holdout as i64, output, now_ms],
        )?;
        Ok(())
    }

    /// Records the pid of the job's command.
    pub fn note_redistill_pid(&mut self, job: i64, pid: u32, now_ms: i64) -> Result<()> {
        self.conn.execute(
            "UPDATE redistill_jobs SET pid = ?2, updated_at = ?3 WHERE id = ?1",
            params![job, pid, now_ms],
        )?;
        Ok(())
    }

    /// Ends a job (`succeeded`, `failed` or `timed_out`) with the reason in words, and moves the
    /// alert action that asked for it (if any) to `done` or `failed`.
    pub fn finish_redistill_job(
        &mut self,
        job: i64,
        status: &str,
        exit_code: Option<i32>,
        detail: &str,
        now_ms: i64,
    ) -> Result<()> {
        let tx = write_transaction(&mut self.conn)?;
        tx.execute(
            "UPDATE redistill_jobs SET status = ?2, exit_code = COALESCE(?3, exit_code),
                 detail = ?4, finished_at = ?5, updated_at = ?5
             WHERE id = ?1",
            params![job, status, exit_code, detail, now_ms],
        )?;
        let action_status = if status == "succeeded" {
            "done"
        } else {
            "failed"
        };
        tx.execute(
            "UPDATE alert_actions SET status = ?2, detail = ?3, updated_at = ?4
             WHERE id = (SELECT action_id FROM redistill_jobs WHERE id = ?1)",
            params![
                job,
                action_status,
                format!("job {job} {status}: {detail}"),
                now_ms
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    /// Jobs that are queued or running.
    pub fn active_redistill_jobs(&self) -> Result<Vec<JobRow>> {
        jobs(
            &self.conn,
            "WHERE status IN ('queued', 'running') ORDER BY id",
            -1,
        )
    }

    /// One job.
    pub fn redistill_job(&self, job: i64) -> Result<Option<JobRow>> {
        Ok(jobs(&self.conn, &format!("WHERE id = {job}"), 1)?.pop())
    }

    /// Re-distillation requests from alert rules not yet taken: (id, rule, alert_id, drifts).
    pub fn requested_redistill_actions(&self) -> Result<Vec<(i64, String, String, String)>> {
        let mut stmt = self.conn.prepare(
            "SELECT id, rule, alert_id, drifts FROM alert_actions
             WHERE action = 'redistill' AND status = 'requested' ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Records the gate's verdict on a job's candidate.
    pub fn note_redistill_gate(
        &mut self,
        job: i64,
        passed: bool,
        evidence: &str,
        now_ms: i64,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE redistill_jobs SET gate = ?2, evidence = ?3, updated_at = ?4 WHERE id = ?1",
            params![
                job,
                if passed { "passed" } else { "rejected" },
                evidence,
                now_ms
            ],
        )?;
        Ok(())
    }

    /// The job whose candidate is `output`: (id, gate, evidence).
    pub fn job_for_output(&self, output: &str) -> Result<Option<JobVerdict>> {
        Ok(self
            .conn
            .query_row(
                "SELECT id, gate, evidence FROM redistill_jobs WHERE output = ?1 ORDER BY id DESC LIMIT 1",
                [output],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?)
    }

    /// Records a change of the serving student; returns its id.
    pub fn insert_promotion(&mut self, p: &Promotion, now_ms: i64) -> Result<i64> {
        self.conn.execute(
            "INSERT INTO student_promotions (kind, promoted_at, model, sha256, previous,
                 previous_sha256, job_id, reason, evidence)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                p.kind,
                now_ms,
                p.model,
                p.sha256,
                p.previous,
                p.previous_sha256,
                p.job_id,
                p.reason,
                p.evidence
            ],
        )?;
        Ok(self.conn.last_insert_rowid())
    }

    /// The latest promotion that made `model` the serving student.
    pub fn promotion_of(&self, model: &str) -> Result<Option<Promotion>> {
        Ok(self
            .conn
            .query_row(
                "SELECT kind, model, sha256, previous, previous_sha256, job_id, reason, evidence
                 FROM student_promotions WHERE model = ?1 AND kind = 'promote'
                 ORDER BY id DESC LIMIT 1",
                [model],
                |r| {
                    Ok(Promotion {
                        kind: r.get(0)?,
                        model: r.get(1)?,
                        sha256: r.get(2)?,
                        previous: r.get(3)?,
                        previous_sha256: r.get(4)?,
                        job_id: r.get(5)?,
                        reason: r.get(6)?,
                        evidence: r.get(7)?,
                    })
                },
            )
            .optional()?)
    }

    /// Moves an alert action on (`started`, `skipped`, `done`, `failed`) with a note.
    pub fn update_alert_action(
        &mut self,
        id: i64,
        status: &str,
        detail: &str,
        now_ms: i64,
    ) -> Result<()> {
        self.conn.execute(
            "UPDATE alert_actions SET status = ?2, detail = ?3, updated_at = ?4 WHERE id = ?1",
            params![id, status, detail, now_ms],
        )?;
        Ok(())
    }
}

impl Reader {
    /// The newest re-distillation jobs, newest first.
    pub fn redistill_jobs(&self, limit: i64) -> Result<Vec<JobRow>> {
        if !self.table_exists("redistill_jobs")? {
            return Ok(Vec::new());
        }
        jobs(&self.conn, "ORDER BY id DESC", limit)
    }

    /// How many rows of `table` have each value of `column` (one of the re-distillation tables:
    /// jobs by status, promotions by kind); empty while the table does not exist.
    pub fn counts_by(&self, table: CountedTable) -> Result<Vec<(String, i64)>> {
        let (table, column) = match table {
            CountedTable::JobsByStatus => ("redistill_jobs", "status"),
            CountedTable::PromotionsByKind => ("student_promotions", "kind"),
        };
        if !self.table_exists(table)? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT {column}, COUNT(*) FROM {table} GROUP BY {column} ORDER BY {column}"
        ))?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }
}

/// The tables [`Reader::counts_by`] counts.
#[derive(Debug, Clone, Copy)]
pub enum CountedTable {
    JobsByStatus,
    PromotionsByKind,
}
