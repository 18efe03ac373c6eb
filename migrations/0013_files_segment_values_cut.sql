-- Segment values are stored escaped and at most `[segments] max_value_bytes` long: `%`, `,`,
-- `=`, control and invisible characters as `%XX` escapes of their UTF-8 bytes, a longer value
-- cut and marked with `%~` and a hash of the whole value. A file's records whose values were
-- cut are counted on its ledger row. Segment strings stored before keep their old form: only
-- values that held one of those characters, or were longer, are written differently now.

ALTER TABLE files ADD COLUMN segment_values_cut INTEGER NOT NULL DEFAULT 0;
