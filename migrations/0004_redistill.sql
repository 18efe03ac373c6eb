-- Re-distillation: jobs and student promotions (docs/redistill.md).

-- Every re-distillation job, from the request to its end. At most one job is queued or running
-- at a time (enforced by sensei in the transaction that starts a job).
CREATE TABLE redistill_jobs (
    id           INTEGER PRIMARY KEY,
    status       TEXT    NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'timed_out')),
    trigger      TEXT    NOT NULL,            -- 'manual', or 'alert:<rule>'
    reason       TEXT    NOT NULL,            -- why: the operator's command or the drifts that fired
    action_id    INTEGER,                     -- alert_actions.id when an alert rule asked
    requested_at INTEGER NOT NULL,            -- unix ms
    started_at   INTEGER,                     -- unix ms: the command started
    finished_at  INTEGER,                     -- unix ms
    owner_pid    INTEGER,                     -- the sensei process supervising the job
    pid          INTEGER,                     -- the job command's process (group leader)
    dir          TEXT,                        -- the job's directory: dataset/, holdout/, job.log, output
    records      INTEGER,                     -- records in the training dataset
    holdout      INTEGER,                     -- records held out for the gate (never in the dataset)
    output       TEXT,                        -- the candidate student ONNX the command was asked to write
    exit_code    INTEGER,                     -- the command's exit status
    detail       TEXT,                        -- what happened, in words (the reason of a failure)
    gate         TEXT,                        -- the candidate's verdict: passed, rejected (NULL: not judged)
    evidence     TEXT,                        -- JSON: the gate's measurements (docs/redistill.md)
    updated_at   INTEGER NOT NULL             -- unix ms
);
CREATE INDEX redistill_jobs_active ON redistill_jobs (status) WHERE status IN ('queued', 'running');

-- Every change of the serving student: promotions (by hand, with the gate's evidence when the
-- model is a job's candidate) and rollbacks.
CREATE TABLE student_promotions (
    id              INTEGER PRIMARY KEY,
    kind            TEXT    NOT NULL CHECK (kind IN ('promote', 'rollback')),
    promoted_at     INTEGER NOT NULL,         -- unix ms
    model           TEXT    NOT NULL,         -- the student now serving (a copy in <state_dir>/models/)
    sha256          TEXT    NOT NULL,
    previous        TEXT    NOT NULL,         -- the student it replaced
    previous_sha256 TEXT    NOT NULL,
    job_id          INTEGER,                  -- redistill_jobs.id when the model is a job's candidate
    reason          TEXT    NOT NULL,
    evidence        TEXT                      -- JSON: the gate's measurements, when there are any
);
