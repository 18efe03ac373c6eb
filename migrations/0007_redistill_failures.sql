-- Re-distillation that keeps failing (docs/redistill.md, "Jobs that keep failing"). The streak
-- itself (the jobs that ended failed or timed_out since the last one that succeeded) is derived
-- from redistill_jobs; this table keeps what was announced about it, so that nothing is
-- announced twice, not even across a restart.

-- One row per failure streak that was announced, written in the transaction that put its
-- notifications in alert_outbox.
CREATE TABLE redistill_failure_alerts (
    first_job    INTEGER PRIMARY KEY,         -- redistill_jobs.id of the streak's first failed job
    last_job     INTEGER NOT NULL,            -- the failed job that made the streak reach alert_after_failures
    failures     INTEGER NOT NULL,            -- jobs in a row that had failed when it was announced
    alerted_at   INTEGER NOT NULL,            -- unix ms
    resolved_job INTEGER,                     -- the job that succeeded and ended the streak
    resolved_at  INTEGER                      -- unix ms: when that was announced
);
