//! The file ledger, the per-record rows and late labels (`files`, `records`, `late_labels`): a
//! file's commit, duplicates, quarantine, the labels' join, sequence numbers and retention.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::shadow::ShadowBatch;
use super::windows::{FileWindows, upsert_windows};
use super::{
    MonitorDelta, Reader, Result, ShadowRow, Store, StoreError, write_delta, write_shadow,
    write_transaction,
};
use crate::compare::Comparison;
use crate::record::{ALL_SEGMENTS, Tensor, TensorData};

/// Retention: the sequence numbers of the records of files received before `?1`.
pub(super) const RETENTION_OLD: &str = "SELECT r.seq FROM files f JOIN records r
         ON r.seq >= f.first_seq AND r.seq < f.first_seq + f.records
     WHERE f.processed_at < ?1 AND f.first_seq IS NOT NULL
       AND f.processed_at >= (SELECT processed_at FROM files WHERE id =
               (SELECT file_id FROM records ORDER BY seq LIMIT 1))";

/// A file that finished ingest and inference, ready to commit.
#[derive(Debug)]
pub struct FileCommit {
    /// `records.seq` of the first record; the others follow in order.
    pub first_seq: i64,
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub kind: &'static str,
    pub student: String,
    pub teacher: String,
    pub records: Vec<RecordRow>,
}

#[derive(Debug)]
pub struct RecordRow {
    pub record_id: String,
    /// The record's input summary (for the drift detectors; not stored).
    pub features: Vec<f64>,
    pub ts_ms: i64,
    pub segment: String,
    pub prediction: Option<i64>,
    pub confidence: Option<f64>,
    pub entropy: Option<f64>,
    pub value: Option<f64>,
    pub latency_us: i64,
    /// [`crate::sampler::Decision::code`].
    pub sampled: i64,
    pub label: Option<i64>,
    pub teacher: Option<TeacherRow>,
}

#[derive(Debug)]
pub struct TeacherRow {
    pub weight: f64,
    pub teacher_prediction: Option<i64>,
    pub teacher_confidence: Option<f64>,
    pub comparison: Comparison,
    pub latency_us: i64,
    pub output_shape: Vec<usize>,
    pub teacher_output: Vec<f32>,
    pub student_output: Vec<f32>,
    pub teacher_attention: Option<(Vec<usize>, Vec<f32>)>,
    pub inputs: Vec<(String, Tensor)>,
    /// The shadow models' answers on this record (`crate::shadow`), compared with the teacher.
    pub shadow: Vec<ShadowRow>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed {
        file_id: i64,
        records: usize,
    },
    /// A file with the same content was already counted.
    Duplicate {
        of_id: i64,
        of_name: String,
    },
}

/// Outcome of a late-labels file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelsOutcome {
    Committed {
        file_id: i64,
        labels: usize,
        matched: usize,
    },
    Duplicate {
        of_id: i64,
    },
}

pub(super) fn f32_blob(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

pub(super) fn tensor_blob(t: &Tensor) -> (&'static str, Vec<u8>) {
    match &t.data {
        TensorData::F32(v) => ("float32", f32_blob(v)),
        TensorData::I64(v) => ("int64", v.iter().flat_map(|x| x.to_le_bytes()).collect()),
    }
}

pub(super) fn shape_json(shape: &[usize]) -> String {
    serde_json::to_string(shape).unwrap_or_else(|_| "[]".into())
}

/// Called with the records a labels file reached; returns the drift detectors' changes.
pub type LabelObserver<'a> = dyn FnMut(&[LabelJoin]) -> Option<(i64, MonitorDelta)> + 'a;

/// A label joined to a record it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelJoin {
    pub seq: i64,
    pub segment: String,
    pub prediction: Option<i64>,
    pub teacher_prediction: Option<i64>,
    pub label: i64,
}

pub(super) fn done_file(conn: &Connection, sha256: &str) -> Result<Option<(i64, String)>> {
    Ok(conn
        .prepare_cached("SELECT id, name FROM files WHERE sha256 = ?1 AND status = 'done'")?
        .query_row([sha256], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?)
}

#[allow(clippy::too_many_arguments)]
pub(super) fn insert_file(
    tx: &Transaction<'_>,
    name: &str,
    sha256: &str,
    size: u64,
    kind: &str,
    status: &str,
    records: i64,
    reason: Option<&str>,
    now_ms: i64,
) -> Result<i64> {
    tx.prepare_cached(
        "INSERT INTO files (name, sha256, size, kind, status, records, reason, processed_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        name,
        sha256,
        size as i64,
        kind,
        status,
        records,
        reason,
        now_ms
    ])?;
    Ok(tx.last_insert_rowid())
}

/// Record rows per `INSERT` statement, largest first: a file's rows go in as few statements as
/// these sizes allow (1000 rows take 15 × 64 + 32 + 8), because each statement costs SQLite a
/// fixed amount of work (compile-free, but bind, step, halt and reset) on top of its rows.
pub(super) const RECORD_CHUNKS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// Parameters of one `records` row in [`insert_records`]; the file's id (`?1`) and its student
/// (`?2`) are bound once per statement and shared by its rows. The rows' `seq` is not among
/// them: SQLite numbers them, see [`insert_records`].
pub(super) const RECORD_COLUMNS: usize = 10;

/// `INSERT INTO records … VALUES (…), (…), …` for `rows` rows, built once per size.
pub(super) fn records_insert_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        RECORD_CHUNKS
            .iter()
            .map(|&n| {
                let mut sql = String::from(
                    "INSERT INTO records (file_id, student, record_id, ts, segment, prediction, \
                     confidence, entropy, value, latency_us, sampled, label) VALUES ",
                );
                for row in 0..n {
                    if row > 0 {
                        sql.push_str(", ");
                    }
                    sql.push_str("(?1, ?2");
                    for col in 0..RECORD_COLUMNS {
                        sql.push_str(&format!(", ?{}", 3 + row * RECORD_COLUMNS + col));
                    }
                    sql.push(')');
                }
                sql
            })
            .collect()
    });
    let at = RECORD_CHUNKS
        .iter()
        .position(|&n| n == rows)
        .expect("rows is one of RECORD_CHUNKS");
    &all[at]
}

/// Inserts a file's record rows. SQLite numbers them itself, which spares it a search of the
/// table for each row: the next number of an `AUTOINCREMENT` key is the one after the largest
/// ever used, which is `file.first_seq` ([`Store::next_seq`]) when this is the only writer. The
/// last number given is checked against it, and a mismatch fails the file's transaction.
pub(super) fn insert_records(tx: &Transaction<'_>, file: &FileCommit, file_id: i64) -> Result<()> {
    let mut rest: &[RecordRow] = &file.records;
    for &chunk in &RECORD_CHUNKS {
        if rest.len() < chunk {
            continue;
        }
        let mut stmt = tx.prepare_cached(records_insert_sql(chunk))?;
        stmt.raw_bind_parameter(1, file_id)?;
        stmt.raw_bind_parameter(2, &file.student)?;
        while rest.len() >= chunk {
            let (rows, tail) = rest.split_at(chunk);
            for (j, r) in rows.iter().enumerate() {
                let at = 2 + j * RECORD_COLUMNS;
                stmt.raw_bind_parameter(at + 1, &r.record_id)?;
                stmt.raw_bind_parameter(at + 2, r.ts_ms)?;
                stmt.raw_bind_parameter(at + 3, &r.segment)?;
                stmt.raw_bind_parameter(at + 4, r.prediction)?;
                stmt.raw_bind_parameter(at + 5, r.confidence)?;
                stmt.raw_bind_parameter(at + 6, r.entropy)?;
                stmt.raw_bind_parameter(at + 7, r.value)?;
                stmt.raw_bind_parameter(at + 8, r.latency_us)?;
                stmt.raw_bind_parameter(at + 9, r.sampled)?;
                stmt.raw_bind_parameter(at + 10, r.label)?;
            }
            stmt.raw_execute()?;
            rest = tail;
        }
    }
    let count = file.records.len() as i64;
    let last = tx.last_insert_rowid();
    if count > 0 && last != file.first_seq + count - 1 {
        return Err(StoreError::Sequence {
            expected: file.first_seq,
            got: last - count + 1,
        });
    }
    Ok(())
}

impl Store {
    /// Commits one file: ledger row, records, teacher samples and window sums in one
    /// transaction. A file whose content was already counted is recorded as a duplicate instead.
    pub fn commit_file(
        &mut self,
        file: &FileCommit,
        window_ms: i64,
        now_ms: i64,
        drift: Option<(i64, &MonitorDelta)>,
    ) -> Result<CommitOutcome> {
        let tx = write_transaction(&mut self.conn)?;
        if let Some((of_id, of_name)) = done_file(&tx, &file.sha256)? {
            insert_file(
                &tx,
                &file.name,
                &file.sha256,
                file.size,
                file.kind,
                "duplicate",
                0,
                Some(&format!("same content as file #{of_id} ({of_name})")),
                now_ms,
            )?;
            tx.commit()?;
            return Ok(CommitOutcome::Duplicate { of_id, of_name });
        }
        let file_id = insert_file(
            &tx,
            &file.name,
            &file.sha256,
            file.size,
            file.kind,
            "done",
            file.records.len() as i64,
            None,
            now_ms,
        )?;
        if !file.records.is_empty() {
            tx.prepare_cached("UPDATE files SET first_seq = ?2 WHERE id = ?1")?
                .execute(params![file_id, file.first_seq])?;
        }
        insert_records(&tx, file, file_id)?;
        let mut windows = FileWindows::default();
        let mut shadow = ShadowBatch::default();
        {
            let mut ins_teacher = tx.prepare_cached(
                "INSERT INTO teacher_samples (seq, record_id, ts, segment, weight, teacher, student,
                    student_prediction, teacher_prediction, teacher_confidence, disagreement, kl,
                    total_variation, attention_kl, cosine_distance, abs_error, teacher_latency_us,
                    teacher_output, student_output, output_shape, teacher_attention, attention_shape, label)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                         ?18, ?19, ?20, ?21, ?22, ?23)",
            )?;
            let mut ins_input = tx.prepare_cached(
                "INSERT INTO teacher_sample_inputs (seq, name, dtype, shape, data) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (i, r) in file.records.iter().enumerate() {
                let seq = file.first_seq + i as i64;
                if let Some(t) = &r.teacher {
                    let c = &t.comparison;
                    let (att, att_shape) = match &t.teacher_attention {
                        Some((shape, data)) => (Some(f32_blob(data)), Some(shape_json(shape))),
                        None => (None, None),
                    };
                    ins_teacher.execute(params![
                        seq,
                        r.record_id,
                        r.ts_ms,
                        r.segment,
                        t.weight,
                        file.teacher,
                        file.student,
                        r.prediction,
                        t.teacher_prediction,
                        t.teacher_confidence,
                        c.disagreement.map(|d| d as i64),
                        c.kl,
                        c.total_variation,
                        c.attention_kl,
                        c.cosine_distance,
                        c.abs_error,
                        t.latency_us,
                        f32_blob(&t.teacher_output),
                        f32_blob(&t.student_output),
                        shape_json(&t.output_shape),
                        att,
                        att_shape,
                        r.label,
                    ])?;
                    for (name, tensor) in &t.inputs {
                        let (dtype, blob) = tensor_blob(tensor);
                        ins_input.execute(params![
                            seq,
                            name,
                            dtype,
                            shape_json(&tensor.shape),
                            blob
                        ])?;
                    }
                    shadow.add(seq, r, t, &file.student);
                }
                let start = r.ts_ms.div_euclid(window_ms) * window_ms;
                windows.sums(start, ALL_SEGMENTS).add(r);
                windows.sums(start, &r.segment).add(r);
            }
        }
        upsert_windows(&tx, &windows.into_sorted())?;
        write_shadow(&tx, &shadow, now_ms)?;
        if let Some((version, delta)) = drift {
            write_delta(&tx, version, delta, now_ms)?;
        }
        tx.commit()?;
        self.finish_checkpoint();
        Ok(CommitOutcome::Committed {
            file_id,
            records: file.records.len(),
        })
    }

    /// Records that a file with already-counted content arrived again. A file with the same name
    /// and content as the counted one is the counted file itself, left in the inbox by a crash
    /// between commit and move: nothing new is recorded. Returns the counted file's id.
    pub fn note_duplicate(
        &mut self,
        name: &str,
        sha256: &str,
        size: u64,
        kind: &str,
        now_ms: i64,
    ) -> Result<Option<i64>> {
        let tx = write_transaction(&mut self.conn)?;
        let Some((of_id, of_name)) = done_file(&tx, sha256)? else {
            return Ok(None);
        };
        if of_name != name {
            let reason = format!("same content as file #{of_id} ({of_name})");
            insert_file(
                &tx,
                name,
                sha256,
                size,
                kind,
                "duplicate",
                0,
                Some(&reason),
                now_ms,
            )?;
        }
        tx.commit()?;
        Ok(Some(of_id))
    }

    /// Records a quarantined file in the ledger.
    pub fn record_quarantine(
        &mut self,
        name: &str,
        sha256: &str,
        size: u64,
        kind: &str,
        reason: &str,
        now_ms: i64,
    ) -> Result<i64> {
        let tx = write_transaction(&mut self.conn)?;
        // The same file quarantined again (a crash between the ledger row and the move) keeps
        // its one row.
        let existing: Option<i64> = tx
            .prepare_cached(
                "SELECT id FROM files WHERE status = 'quarantined' AND name = ?1 AND sha256 = ?2 AND size = ?3",
            )?
            .query_row(params![name, sha256, size as i64], |r| r.get(0))
            .optional()?;
        if let Some(id) = existing {
            return Ok(id);
        }
        let id = insert_file(
            &tx,
            name,
            sha256,
            size,
            kind,
            "quarantined",
            0,
            Some(reason),
            now_ms,
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// Commits a late-labels file: stores each label and writes it onto the records (and teacher
    /// samples) with that id. Labels for ids not seen yet wait in `late_labels`; records arriving
    /// later pick them up in [`Store::commit_file`]'s caller via [`Store::pending_label`].
    ///
    /// `joined` is called for every record a label reaches, with what the drift detectors need
    /// (seq, segment, student prediction, teacher prediction when sampled, label); it returns
    /// the detectors' changes, which commit in the same transaction.
    pub fn commit_labels(
        &mut self,
        name: &str,
        sha256: &str,
        size: u64,
        labels: &[(String, i64)],
        now_ms: i64,
        joined: &mut LabelObserver<'_>,
    ) -> Result<LabelsOutcome> {
        let tx = write_transaction(&mut self.conn)?;
        if let Some((of_id, of_name)) = done_file(&tx, sha256)? {
            insert_file(
                &tx,
                name,
                sha256,
                size,
                "labels",
                "duplicate",
                0,
                Some(&format!("same content as file #{of_id} ({of_name})")),
                now_ms,
            )?;
            tx.commit()?;
            return Ok(LabelsOutcome::Duplicate { of_id });
        }
        let file_id = insert_file(
            &tx,
            name,
            sha256,
            size,
            "labels",
            "done",
            labels.len() as i64,
            None,
            now_ms,
        )?;
        let mut matched_total = 0;
        {
            let mut upd_records =
                tx.prepare_cached("UPDATE records SET label = ?2 WHERE record_id = ?1")?;
            let mut upd_samples =
                tx.prepare_cached("UPDATE teacher_samples SET label = ?2 WHERE record_id = ?1")?;
            let mut ins = tx.prepare_cached(
                "INSERT INTO late_labels (record_id, label, file_id, received_at, matched)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (record_id) DO UPDATE SET label = excluded.label, file_id = excluded.file_id,
                     received_at = excluded.received_at, matched = excluded.matched",
            )?;
            let mut lookup = tx.prepare_cached(
                "SELECT r.seq, r.segment, r.prediction, t.teacher_prediction
                 FROM records r LEFT JOIN teacher_samples t ON t.seq = r.seq
                 WHERE r.record_id = ?1 ORDER BY r.seq",
            )?;
            let mut joins = Vec::new();
            for (id, label) in labels {
                let matched = upd_records.execute(params![id, label])?;
                upd_samples.execute(params![id, label])?;
                ins.execute(params![id, label, file_id, now_ms, matched as i64])?;
                matched_total += matched;
                if matched > 0 {
                    let rows = lookup.query_map([id], |r| {
                        Ok(LabelJoin {
                            seq: r.get(0)?,
                            segment: r.get(1)?,
                            prediction: r.get(2)?,
                            teacher_prediction: r.get(3)?,
                            label: *label,
                        })
                    })?;
                    for row in rows {
                        joins.push(row?);
                    }
                }
            }
            if let Some((version, delta)) = joined(&joins) {
                write_delta(&tx, version, &delta, now_ms)?;
            }
        }
        tx.commit()?;
        Ok(LabelsOutcome::Committed {
            file_id,
            labels: labels.len(),
            matched: matched_total,
        })
    }

    /// The `records.seq` the next record gets (sequence numbers are never reused, even after
    /// retention deleted the rows).
    pub fn next_seq(&self) -> Result<i64> {
        let last: Option<i64> = self
            .conn
            .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'records'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        Ok(last.unwrap_or(0) + 1)
    }

    /// Whether any late label still waits for its record.
    pub fn has_waiting_labels(&self) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM late_labels WHERE matched = 0)")?
            .query_row([], |r| r.get(0))?)
    }

    /// A late label that arrived before its record.
    pub fn pending_label(&self, record_id: &str) -> Result<Option<i64>> {
        Ok(self
            .conn
            .prepare_cached("SELECT label FROM late_labels WHERE record_id = ?1")?
            .query_row([record_id], |r| r.get(0))
            .optional()?)
    }

    /// Deletes per-record rows of files processed before `cutoff_ms` (retention counts from
    /// when sensei received a record, not from the record's own timestamp, so a backfill of old
    /// data is kept as long as fresh data). Window sums and teacher samples stay.
    ///
    /// A file's records are the `records` consecutive sequence numbers from its `first_seq`, so
    /// each range is found through the primary key.
    ///
    /// The files it looks at start at the one that holds the oldest record left, so a run costs
    /// what it deletes and not every file ever received. (Should the clock have gone back, a
    /// file received "earlier" than that one waits for the next run after it.)
    pub fn apply_retention(&mut self, cutoff_ms: i64) -> Result<usize> {
        let tx = write_transaction(&mut self.conn)?;
        tx.execute(
            &format!("DELETE FROM shadow_samples WHERE seq IN ({RETENTION_OLD})"),
            [cutoff_ms],
        )?;
        let deleted = tx.execute(
            &format!("DELETE FROM records WHERE seq IN ({RETENTION_OLD})"),
            [cutoff_ms],
        )?;
        tx.commit()?;
        Ok(deleted)
    }

    /// Whether a file with this content was already counted.
    pub fn is_done(&self, sha256: &str) -> Result<bool> {
        Ok(done_file(&self.conn, sha256)?.is_some())
    }

    /// The distinct segments seen so far (for the segment bound after a restart).
    pub fn known_segments(&self) -> Result<Vec<String>> {
        let mut stmt = self
            .conn
            .prepare("SELECT DISTINCT segment FROM windows WHERE segment != ?1")?;
        let rows = stmt.query_map([ALL_SEGMENTS], |r| r.get(0))?;
        Ok(rows.collect::<rusqlite::Result<Vec<String>>>()?)
    }
}

impl Reader {
    pub fn is_done(&self, sha256: &str) -> Result<bool> {
        Ok(done_file(&self.conn, sha256)?.is_some())
    }
}
