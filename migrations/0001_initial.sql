-- sensei schema, version 1. The tables and views here are a public interface (docs/schema.md):
-- change them only by adding migrations.

-- The file ledger: one row per file sensei finished with. A file's records and its 'done' row
-- commit in one transaction, so a file is counted exactly once, even across a crash.
CREATE TABLE files (
    id           INTEGER PRIMARY KEY,
    name         TEXT    NOT NULL,              -- file name as it arrived in the inbox
    sha256       TEXT    NOT NULL,              -- content hash: the identity of a file
    size         INTEGER NOT NULL,              -- bytes
    kind         TEXT    NOT NULL,              -- jsonl | labels | npy | npz | unknown
    status       TEXT    NOT NULL CHECK (status IN ('done', 'quarantined', 'duplicate')),
    records      INTEGER NOT NULL DEFAULT 0,    -- records (or labels) counted from this file
    reason       TEXT,                          -- quarantine reason / duplicate of which file
    processed_at INTEGER NOT NULL               -- unix milliseconds
);
CREATE UNIQUE INDEX files_done_sha256 ON files (sha256) WHERE status = 'done';
CREATE INDEX files_processed_at ON files (processed_at);

-- Every record the student answered.
CREATE TABLE records (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT, -- record sequence number, never reused
    file_id    INTEGER NOT NULL REFERENCES files (id),
    record_id  TEXT    NOT NULL,                -- producer's id, or '<sha256[:12]>:<n>'
    ts         INTEGER NOT NULL,                -- record time (or ingest time), unix ms
    segment    TEXT    NOT NULL,                -- 'line=A,shift=2'; '' when none
    student    TEXT    NOT NULL,                -- student model sha256 (first 12 hex digits)
    prediction INTEGER,                         -- classification: arg-max class
    confidence REAL,                            -- classification: max probability
    entropy    REAL,                            -- classification: nats
    value      REAL,                            -- regression: first output
    latency_us INTEGER NOT NULL,                -- batch inference time / batch size
    sampled    INTEGER NOT NULL,                -- 0 no, 1 teacher ran, 2 skipped: budget, 3 skipped: queue full, 4 teacher failed
    label      INTEGER                          -- ground truth, from the file or a late label
);
CREATE INDEX records_record_id ON records (record_id);
CREATE INDEX records_ts ON records (ts);
CREATE INDEX records_file_id ON records (file_id);

-- Every record the teacher also answered, with every comparison metric and what
-- re-distillation needs. Kept independently of `records` retention.
CREATE TABLE teacher_samples (
    seq                INTEGER PRIMARY KEY,     -- = records.seq of the same record
    record_id          TEXT    NOT NULL,
    ts                 INTEGER NOT NULL,
    segment            TEXT    NOT NULL,
    weight             REAL    NOT NULL,        -- inverse inclusion probability
    teacher            TEXT    NOT NULL,        -- teacher model sha256 (first 12 hex digits)
    student            TEXT    NOT NULL,
    student_prediction INTEGER,
    teacher_prediction INTEGER,
    teacher_confidence REAL,
    disagreement       INTEGER,                 -- classification: 1 when top-1 differs
    kl                 REAL,                    -- KL(teacher || student), nats
    total_variation    REAL,
    attention_kl       REAL,                    -- mean over heads and query rows
    cosine_distance    REAL,                    -- embeddings
    abs_error          REAL,                    -- regression
    teacher_latency_us INTEGER NOT NULL,
    teacher_output     BLOB    NOT NULL,        -- little-endian float32, shape output_shape
    student_output     BLOB    NOT NULL,
    output_shape       TEXT    NOT NULL,        -- JSON array, per record
    teacher_attention  BLOB,                    -- little-endian float32 [heads, seq, seq]
    attention_shape    TEXT,
    label              INTEGER
);
CREATE INDEX teacher_samples_ts ON teacher_samples (ts);
CREATE INDEX teacher_samples_record_id ON teacher_samples (record_id);

-- The inputs of teacher-sampled records (re-distillation data).
CREATE TABLE teacher_sample_inputs (
    seq   INTEGER NOT NULL REFERENCES teacher_samples (seq) ON DELETE CASCADE,
    name  TEXT    NOT NULL,                     -- model input name
    dtype TEXT    NOT NULL,                     -- float32 | int64
    shape TEXT    NOT NULL,                     -- JSON array, per record
    data  BLOB    NOT NULL,                     -- little-endian
    PRIMARY KEY (seq, name)
);

-- Late ground truth, joined to records by record_id.
CREATE TABLE late_labels (
    record_id   TEXT    PRIMARY KEY,
    label       INTEGER NOT NULL,
    file_id     INTEGER NOT NULL REFERENCES files (id),
    received_at INTEGER NOT NULL,
    matched     INTEGER NOT NULL                -- records updated when it arrived
);

-- Per-window aggregates per segment; segment '*' is all segments together. Sums, so windows
-- from several files add up; the view below turns them into rates and means.
CREATE TABLE windows (
    start                  INTEGER NOT NULL,    -- window start, unix ms
    segment                TEXT    NOT NULL,
    records                INTEGER NOT NULL DEFAULT 0,
    confidence_sum         REAL    NOT NULL DEFAULT 0,
    entropy_sum            REAL    NOT NULL DEFAULT 0,
    latency_us_sum         INTEGER NOT NULL DEFAULT 0,
    teacher_samples        INTEGER NOT NULL DEFAULT 0,
    skipped_budget         INTEGER NOT NULL DEFAULT 0,
    skipped_queue          INTEGER NOT NULL DEFAULT 0,
    weight_sum             REAL    NOT NULL DEFAULT 0,
    weight_sq_sum          REAL    NOT NULL DEFAULT 0,  -- Σ weight², for the effective sample size
    disagreement_wsum      REAL    NOT NULL DEFAULT 0,
    kl_wsum                REAL    NOT NULL DEFAULT 0,
    total_variation_wsum   REAL    NOT NULL DEFAULT 0,
    attention_kl_wsum      REAL    NOT NULL DEFAULT 0,
    attention_kl_weight    REAL    NOT NULL DEFAULT 0,
    cosine_distance_wsum   REAL    NOT NULL DEFAULT 0,
    abs_error_wsum         REAL    NOT NULL DEFAULT 0,
    teacher_latency_us_sum INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (start, segment)
);

CREATE VIEW window_stats AS
SELECT
    start,
    strftime('%Y-%m-%dT%H:%M:%SZ', start / 1000, 'unixepoch') AS start_utc,
    segment,
    records,
    teacher_samples,
    skipped_budget,
    skipped_queue,
    confidence_sum / NULLIF(records, 0)                 AS mean_confidence,
    entropy_sum / NULLIF(records, 0)                    AS mean_entropy,
    latency_us_sum * 1.0 / NULLIF(records, 0)           AS mean_latency_us,
    disagreement_wsum / NULLIF(weight_sum, 0)           AS disagreement_rate,
    kl_wsum / NULLIF(weight_sum, 0)                     AS mean_kl,
    total_variation_wsum / NULLIF(weight_sum, 0)        AS mean_total_variation,
    attention_kl_wsum / NULLIF(attention_kl_weight, 0)  AS mean_attention_kl,
    cosine_distance_wsum / NULLIF(weight_sum, 0)        AS mean_cosine_distance,
    abs_error_wsum / NULLIF(weight_sum, 0)              AS mean_abs_error,
    teacher_latency_us_sum * 1.0 / NULLIF(teacher_samples, 0) AS mean_teacher_latency_us
FROM windows;
