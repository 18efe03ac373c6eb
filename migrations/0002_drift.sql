-- Drift detection: lab baselines, detector state, drift events.

-- Each `sensei baseline` run makes a new version; exactly one is active.
CREATE TABLE baselines (
    version    INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,              -- unix ms
    active     INTEGER NOT NULL DEFAULT 0,    -- 1 for the baseline the detectors use
    student    TEXT    NOT NULL,              -- model sha256 prefixes the profile was measured with
    teacher    TEXT    NOT NULL,
    records    INTEGER NOT NULL,              -- lab records the profile was measured on
    sources    TEXT    NOT NULL,              -- JSON array of the data files
    profile    TEXT    NOT NULL               -- JSON: the reference profile (docs/detection.md)
);
CREATE UNIQUE INDEX baselines_one_active ON baselines (active) WHERE active = 1;

-- The state of every detector (signal x segment x detector), so that a restart neither resets
-- a detector nor re-fires an event.
CREATE TABLE detector_state (
    signal           TEXT    NOT NULL,
    segment          TEXT    NOT NULL,
    detector         TEXT    NOT NULL,
    baseline_version INTEGER NOT NULL,
    samples          INTEGER NOT NULL,        -- observations since the detector was armed
    statistic        REAL    NOT NULL,        -- current statistic
    threshold        REAL    NOT NULL,        -- alarm threshold
    state            TEXT    NOT NULL,        -- JSON, the detector's full state
    updated_at       INTEGER NOT NULL,        -- unix ms
    PRIMARY KEY (signal, segment, detector)
);

-- Every drift detection.
CREATE TABLE drift_events (
    id                      INTEGER PRIMARY KEY,
    signal                  TEXT    NOT NULL,  -- disagreement, kl, attention_kl, confidence, class_mix, input_psi, student_error, teacher_error
    segment                 TEXT    NOT NULL,  -- as in records; '*' for all segments
    detector                TEXT    NOT NULL,  -- bernoulli_cusum, cusum, ks, chi_square, psi
    detected_at             INTEGER NOT NULL,  -- unix ms
    detected_at_record      INTEGER NOT NULL,  -- records.seq of the record that completed the evidence
    estimated_change_record INTEGER,           -- records.seq where the change is estimated to start
    statistic               REAL    NOT NULL,
    threshold               REAL    NOT NULL,
    baseline_value          REAL,
    current_value           REAL,
    current_low             REAL,              -- 95% interval of current_value, when known
    current_high            REAL,
    p_value                 REAL,              -- windowed tests
    effect_size             REAL,              -- windowed tests
    baseline_version        INTEGER,
    resolved_at             INTEGER            -- unix ms when the signal was back in control
);
CREATE INDEX drift_events_detected_at ON drift_events (detected_at);
CREATE INDEX drift_events_open ON drift_events (signal, segment) WHERE resolved_at IS NULL;
