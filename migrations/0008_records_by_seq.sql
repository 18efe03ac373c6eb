-- A file's records have consecutive sequence numbers (the writer assigns them in one
-- transaction), so the file keeps where they start and retention deletes them by `seq` range
-- through the primary key. The `file_id` index on `records`, which cost each record a B-tree
-- insert only for retention, goes.
ALTER TABLE files ADD COLUMN first_seq INTEGER;  -- records.seq of the file's first record; NULL without records

-- Files committed before this migration: their records' first sequence number, found through
-- the index while it still exists (NULL once retention has deleted them).
UPDATE files
SET first_seq = (SELECT MIN(seq) FROM records WHERE records.file_id = files.id)
WHERE status = 'done';

DROP INDEX IF EXISTS records_file_id;
