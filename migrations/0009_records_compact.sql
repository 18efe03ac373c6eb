-- Per-record rows, stored compactly behind a `records` view with the columns and meaning
-- `records` always had (docs/schema.md). What every record of a file shares moves to its `files`
-- row (the student that answered it, the base its times are counted from); segments are
-- numbered once; record ids are not stored per record where they follow a pattern (the derived
-- `<sha256 first 12>:<n>`, or a producer's `prefix` + consecutive numbers) but as runs; only the
-- ids that do not are kept one by one. Confidence and entropy are kept to 6 decimal places.
--
-- After this script, sensei itself turns the ids kept one by one that follow a pattern into
-- runs (`store::record_ids::canonicalise`), in the same transaction.

ALTER TABLE files ADD COLUMN student TEXT;       -- the student (sha256 prefix) that answered the file's records
ALTER TABLE files ADD COLUMN ts_base INTEGER;    -- record_rows.ts counts from this (unix ms)
ALTER TABLE files ADD COLUMN duplicates INTEGER NOT NULL DEFAULT 0;  -- records whose id was counted before; labels that changed nothing
ALTER TABLE files ADD COLUMN conflicts INTEGER NOT NULL DEFAULT 0;   -- labels that replaced a different label
ALTER TABLE files ADD COLUMN arrived_at INTEGER; -- the file's modification time when it was taken (unix ms)
ALTER TABLE files ADD COLUMN inode INTEGER;      -- device and inode of the file taken (a leftover of a crash is the same file)
CREATE INDEX files_first_seq ON files (first_seq);

ALTER TABLE late_labels ADD COLUMN arrived_at INTEGER; -- the labels file's modification time when it was taken (unix ms): the later arrival wins
-- The labels still waiting for their record (each file's commit asks whether there are any).
CREATE INDEX late_labels_waiting ON late_labels (record_id) WHERE matched = 0;

CREATE TABLE segments (
    id      INTEGER PRIMARY KEY,
    segment TEXT    NOT NULL UNIQUE
);

CREATE TABLE record_rows (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT, -- records.seq
    ts         INTEGER NOT NULL,                -- records.ts − files.ts_base of its file
    segment    INTEGER NOT NULL,                -- segments.id
    prediction INTEGER,
    confidence INTEGER,                         -- records.confidence × 10⁶, rounded
    entropy    INTEGER,                         -- records.entropy × 10⁶, rounded
    value      REAL,
    latency_us INTEGER NOT NULL,
    sampled    INTEGER NOT NULL,
    label      INTEGER
);

-- Ids of consecutive records that are one prefix followed by consecutive numbers: record
-- `first_seq + k` has the id `prefix || (first_number + k)`, the number zero-padded to `digits`
-- digits when `digits` > 0.
CREATE TABLE record_id_runs (
    first_seq    INTEGER PRIMARY KEY,
    records      INTEGER NOT NULL,
    prefix       TEXT    NOT NULL,
    digits       INTEGER NOT NULL,
    first_number INTEGER NOT NULL
);
CREATE INDEX record_id_runs_by_id ON record_id_runs (prefix, digits, first_number);

-- The ids no run holds.
CREATE TABLE record_ids (
    seq       INTEGER PRIMARY KEY,
    record_id TEXT    NOT NULL UNIQUE
);

-- What retention deleted, by reason (`age`: `[store] record_retention`, `size`:
-- `[store] max_size`).
CREATE TABLE retention (
    reason      TEXT    PRIMARY KEY,
    records     INTEGER NOT NULL,               -- per-record rows deleted, in all
    through_seq INTEGER NOT NULL,               -- every record up to this seq is gone
    last_at     INTEGER NOT NULL                -- unix ms of the last deletion
);

-- The rows as they are.
UPDATE files SET
    student = (SELECT student FROM records WHERE seq = files.first_seq),
    ts_base = (SELECT ts FROM records WHERE seq = files.first_seq)
WHERE first_seq IS NOT NULL;
INSERT INTO segments (segment) SELECT DISTINCT segment FROM records ORDER BY segment;
INSERT INTO record_rows (seq, ts, segment, prediction, confidence, entropy, value, latency_us,
                         sampled, label)
SELECT r.seq, r.ts - COALESCE(f.ts_base, 0), s.id, r.prediction,
       CAST(round(r.confidence * 1000000.0) AS INTEGER),
       CAST(round(r.entropy * 1000000.0) AS INTEGER),
       r.value, r.latency_us, r.sampled, r.label
FROM records r
JOIN files f ON f.id = r.file_id
JOIN segments s ON s.segment = r.segment
ORDER BY r.seq;
INSERT INTO record_ids (seq, record_id) SELECT seq, record_id FROM records ORDER BY seq;
-- Sequence numbers are never reused: the new table goes on from the old one's last.
DELETE FROM sqlite_sequence WHERE name = 'record_rows';
INSERT INTO sqlite_sequence (name, seq)
SELECT 'record_rows', seq FROM sqlite_sequence WHERE name = 'records';

DROP TABLE records;

CREATE VIEW records AS
SELECT
    r.seq                                   AS seq,
    f.id                                    AS file_id,
    COALESCE(
        (SELECT i.record_id FROM record_ids i WHERE i.seq = r.seq),
        (SELECT u.prefix || CASE WHEN u.digits > 0
                                 THEN printf('%0*d', u.digits, u.first_number + r.seq - u.first_seq)
                                 ELSE u.first_number + r.seq - u.first_seq END
         FROM record_id_runs u
         WHERE u.first_seq <= r.seq ORDER BY u.first_seq DESC LIMIT 1)
    )                                       AS record_id,
    f.ts_base + r.ts                        AS ts,
    s.segment                               AS segment,
    f.student                               AS student,
    r.prediction                            AS prediction,
    r.confidence / 1000000.0                AS confidence,
    r.entropy / 1000000.0                   AS entropy,
    r.value                                 AS value,
    r.latency_us                            AS latency_us,
    r.sampled                               AS sampled,
    r.label                                 AS label
FROM record_rows r
JOIN files f ON f.id = (SELECT id FROM files WHERE first_seq <= r.seq ORDER BY first_seq DESC LIMIT 1)
JOIN segments s ON s.id = r.segment;
