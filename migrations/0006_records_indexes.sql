-- Every index on `records` costs each of the millions of rows a B-tree insert, so `records`
-- keeps only the indexes sensei queries: `record_id` (late labels join by it) and `file_id`
-- (retention deletes by file). Nothing looks records up by `ts`; time-range questions go to
-- `windows`.
DROP INDEX IF EXISTS records_ts;
