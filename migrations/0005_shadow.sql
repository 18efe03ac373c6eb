-- Shadow models: challengers from [[challengers]] and a re-distillation job's pending candidate,
-- run on the teacher-sampled records only and compared with the teacher (docs/redistill.md).

-- Every shadow model the pipeline tried to load, with what it is and whether it runs.
CREATE TABLE shadow_models (
    name        TEXT    PRIMARY KEY,          -- [[challengers]] name, or 'candidate-<job id>'
    kind        TEXT    NOT NULL CHECK (kind IN ('challenger', 'candidate')),
    path        TEXT    NOT NULL,
    sha256      TEXT,                         -- first 12 hex digits; NULL when the file could not be read
    size_bytes  INTEGER,                      -- the .onnx file's size
    parameters  INTEGER,                      -- elements of its floating-point initializers, when known
    status      TEXT    NOT NULL CHECK (status IN ('running', 'failed')),
    detail      TEXT,                         -- why it failed (load or inference error)
    job_id      INTEGER,                      -- redistill_jobs.id of a candidate
    updated_at  INTEGER NOT NULL              -- unix ms
);

-- One row per teacher-sampled record and shadow model, committed with the record. Deleted with
-- the records by `[store] record_retention`; the totals below are kept.
CREATE TABLE shadow_samples (
    seq          INTEGER NOT NULL,            -- = records.seq (and teacher_samples.seq)
    model        TEXT    NOT NULL,            -- shadow_models.name
    sha256       TEXT    NOT NULL,            -- the model file's sha256 (first 12 hex digits)
    weight       REAL    NOT NULL,            -- the teacher sample's inverse inclusion probability
    disagreement INTEGER,                     -- classification: 1 when its top-1 differs from the teacher's
    kl           REAL,                        -- KL(teacher || shadow model), nats
    attention_kl REAL,                        -- when both expose attention of the same shape
    cosine_distance REAL,                     -- embeddings
    abs_error    REAL,                        -- regression
    latency_us   INTEGER NOT NULL,            -- its batch inference time / batch size
    PRIMARY KEY (seq, model)
);

-- Running sums per model version over the records that ran in shadow. The serving student has
-- rows too (kind 'student'), summed over the same records, so every row compares like for like.
CREATE TABLE shadow_totals (
    model               TEXT    NOT NULL,     -- shadow_models.name, or 'student'
    sha256              TEXT    NOT NULL,     -- first 12 hex digits
    kind                TEXT    NOT NULL CHECK (kind IN ('student', 'challenger', 'candidate')),
    samples             INTEGER NOT NULL,     -- teacher-sampled records it answered
    weight              REAL    NOT NULL,     -- Σ w
    weight_sq           REAL    NOT NULL,     -- Σ w² (effective sample size (Σw)²/Σw²)
    agreement           REAL    NOT NULL,     -- Σ w · (top-1 agrees with the teacher)
    agreement_weight    REAL    NOT NULL,     -- Σ w over records with a top-1 comparison
    agreement_weight_sq REAL    NOT NULL,
    kl                  REAL    NOT NULL,     -- Σ w · KL
    kl_weight           REAL    NOT NULL,
    attention_kl        REAL    NOT NULL,     -- Σ w · attention KL
    attention_kl_weight REAL    NOT NULL,
    latency_us          INTEGER NOT NULL,     -- Σ per-record latency
    teacher_latency_us  INTEGER NOT NULL,     -- Σ the teacher's per-record latency on the same records
    first_seq           INTEGER NOT NULL,
    last_seq            INTEGER NOT NULL,
    updated_at          INTEGER NOT NULL,     -- unix ms
    PRIMARY KEY (model, sha256)
);
