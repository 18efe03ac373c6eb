//! The file ledger and the per-record rows (`files`, `record_rows` behind the `records` view,
//! `segments`): a file's commit, duplicate files and duplicate record ids, quarantine and
//! sequence numbers.
//!
//! A record row keeps only what differs from record to record: what its file shares (the
//! student, the base of its times) is on the file's row, its segment is a number
//! (`segments`), its id a run or a single id (`super::record_ids`), and confidence and entropy
//! are integers in millionths. The `records` view puts the columns back together.

use std::collections::HashMap;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::record_ids;
use super::shadow::ShadowBatch;
use super::windows::{FileWindows, upsert_windows};
use super::{
    MonitorDelta, Reader, Result, ShadowRow, Store, StoreError, write_delta, write_shadow,
    write_transaction,
};
use crate::compare::Comparison;
use crate::record::{ALL_SEGMENTS, Tensor, TensorData};

/// A file that finished ingest and inference, ready to commit.
#[derive(Debug, Default)]
pub struct FileCommit {
    /// `records.seq` of the first record; the others follow in order.
    pub first_seq: i64,
    pub name: String,
    pub sha256: String,
    pub size: u64,
    pub kind: &'static str,
    pub student: String,
    pub teacher: String,
    /// The records to keep: the file's records but those whose id was counted before.
    pub records: Vec<RecordRow>,
    /// Where and when the file was taken ([`FileOrigin`]).
    pub origin: FileOrigin,
    /// The file's records left out because a record with the same id was counted before
    /// ([`Store::counted_ids`]): the first arrival of an id is the one that counts.
    pub duplicates: i64,
    /// Records whose own label differed from a late label that arrived for them earlier; the
    /// later arrival is the label kept.
    pub conflicts: i64,
    /// Ids whose waiting late label ([`Store::waiting_label`]) a record of this file took.
    pub labels_taken: Vec<String>,
    /// Segment values of the file's records cut to `[segments] max_value_bytes`.
    pub segment_values_cut: i64,
}

/// When a file was written (its modification time as it was taken: the arrival that orders
/// labels) and which file it was (device and inode: a file left in the inbox by a crash after
/// its commit is the same file, a re-sent copy is another).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FileOrigin {
    pub arrived_ms: i64,
    pub inode: Option<i64>,
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

pub(super) fn done_file(conn: &Connection, sha256: &str) -> Result<Option<(i64, String)>> {
    Ok(done_file_origin(conn, sha256)?.map(|(id, name, _)| (id, name)))
}

/// The counted file with this content: id, name and where it came from.
fn done_file_origin(conn: &Connection, sha256: &str) -> Result<Option<(i64, String, FileOrigin)>> {
    Ok(conn
        .prepare_cached(
            "SELECT id, name, COALESCE(arrived_at, 0), inode FROM files
             WHERE sha256 = ?1 AND status = 'done'",
        )?
        .query_row([sha256], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                FileOrigin {
                    arrived_ms: r.get(2)?,
                    inode: r.get(3)?,
                },
            ))
        })
        .optional()?)
}

/// Writes a ledger row.
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
    origin: FileOrigin,
    now_ms: i64,
) -> Result<i64> {
    tx.prepare_cached(
        "INSERT INTO files (name, sha256, size, kind, status, records, reason, processed_at,
                            arrived_at, inode)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        name,
        sha256,
        size as i64,
        kind,
        status,
        records,
        reason,
        now_ms,
        origin.arrived_ms,
        origin.inode
    ])?;
    Ok(tx.last_insert_rowid())
}

/// Record rows per `INSERT` statement, largest first: a file's rows go in as few statements as
/// these sizes allow (1000 rows take 15 × 64 + 32 + 8), because each statement costs SQLite a
/// fixed amount of work (compile-free, but bind, step, halt and reset) on top of its rows.
pub(super) const RECORD_CHUNKS: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];

/// Parameters of one `record_rows` row in [`insert_records`]. The rows' `seq` is not among
/// them: SQLite numbers them, see [`insert_records`].
pub(super) const RECORD_COLUMNS: usize = 9;

/// `INSERT INTO record_rows … VALUES (…), (…), …` for `rows` rows, built once per size.
pub(super) fn records_insert_sql(rows: usize) -> &'static str {
    static SQL: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let all = SQL.get_or_init(|| {
        RECORD_CHUNKS
            .iter()
            .map(|&n| {
                let mut sql = String::from(
                    "INSERT INTO record_rows (ts, segment, prediction, confidence, entropy, \
                     value, latency_us, sampled, label) VALUES ",
                );
                for row in 0..n {
                    if row > 0 {
                        sql.push_str(", ");
                    }
                    sql.push('(');
                    for col in 0..RECORD_COLUMNS {
                        if col > 0 {
                            sql.push_str(", ");
                        }
                        sql.push_str(&format!("?{}", 1 + row * RECORD_COLUMNS + col));
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

/// Confidence and entropy as stored: millionths, rounded (`NULL` for what is not finite).
fn millionths(x: Option<f64>) -> Option<i64> {
    x.filter(|x| x.is_finite())
        .map(|x| (x * 1e6).round() as i64)
}

/// Inserts a file's record rows, their times counted from `ts_base` and their segments as
/// numbers. SQLite numbers the rows itself, which spares it a search of the table for each row:
/// the next number of an `AUTOINCREMENT` key is the one after the largest ever used, which is
/// `file.first_seq` ([`Store::next_seq`]) when this is the only writer. The last number given
/// is checked against it, and a mismatch fails the file's transaction.
fn insert_records(
    tx: &Transaction<'_>,
    file: &FileCommit,
    ts_base: i64,
    segments: &[i64],
) -> Result<()> {
    let mut rest: &[RecordRow] = &file.records;
    let mut segment_ids: &[i64] = segments;
    for &chunk in &RECORD_CHUNKS {
        if rest.len() < chunk {
            continue;
        }
        let mut stmt = tx.prepare_cached(records_insert_sql(chunk))?;
        while rest.len() >= chunk {
            let (rows, tail) = rest.split_at(chunk);
            let (ids, ids_tail) = segment_ids.split_at(chunk);
            for (j, (r, segment)) in rows.iter().zip(ids).enumerate() {
                let at = j * RECORD_COLUMNS;
                stmt.raw_bind_parameter(at + 1, r.ts_ms.saturating_sub(ts_base))?;
                stmt.raw_bind_parameter(at + 2, segment)?;
                stmt.raw_bind_parameter(at + 3, r.prediction)?;
                stmt.raw_bind_parameter(at + 4, millionths(r.confidence))?;
                stmt.raw_bind_parameter(at + 5, millionths(r.entropy))?;
                stmt.raw_bind_parameter(at + 6, r.value.filter(|v| v.is_finite()))?;
                stmt.raw_bind_parameter(at + 7, r.latency_us)?;
                stmt.raw_bind_parameter(at + 8, r.sampled)?;
                stmt.raw_bind_parameter(at + 9, r.label)?;
            }
            stmt.raw_execute()?;
            rest = tail;
            segment_ids = ids_tail;
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

/// Every segment and its number (`segments`).
pub(super) fn load_segments(conn: &Connection) -> Result<HashMap<String, i64>> {
    let mut stmt = conn.prepare("SELECT segment, id FROM segments")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

/// Segments a commit adds, with their numbers.
type NewSegments = Vec<(String, i64)>;

/// The numbers of the records' segments (`known`: the store's cache), adding the segments not
/// seen before to the transaction; returns them with the segments it added (the cache learns
/// them only once the transaction has committed).
fn segment_numbers(
    known: &HashMap<String, i64>,
    tx: &Transaction<'_>,
    records: &[RecordRow],
) -> Result<(Vec<i64>, NewSegments)> {
    let mut added: Vec<(String, i64)> = Vec::new();
    let mut numbers = Vec::with_capacity(records.len());
    for r in records {
        let number = known
            .get(&r.segment)
            .copied()
            .or_else(|| added.iter().find(|(s, _)| *s == r.segment).map(|(_, n)| *n));
        let n = match number {
            Some(n) => n,
            None => {
                tx.prepare_cached("INSERT INTO segments (segment) VALUES (?1)")?
                    .execute([&r.segment])?;
                let n = tx.last_insert_rowid();
                added.push((r.segment.clone(), n));
                n
            }
        };
        numbers.push(n);
    }
    Ok((numbers, added))
}

impl Store {
    /// Commits one file: ledger row, records, their ids, teacher samples and window sums in one
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
                file.origin,
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
            file.origin,
            now_ms,
        )?;
        let ts_base = file.records.first().map_or(0, |r| r.ts_ms);
        tx.prepare_cached(
            "UPDATE files SET first_seq = ?2, student = ?3, ts_base = ?4, duplicates = ?5,
                 conflicts = ?6, segment_values_cut = ?7
             WHERE id = ?1",
        )?
        .execute(params![
            file_id,
            (!file.records.is_empty()).then_some(file.first_seq),
            file.student,
            ts_base,
            file.duplicates,
            file.conflicts,
            file.segment_values_cut
        ])?;
        let (segments, added) = segment_numbers(&self.segments, &tx, &file.records)?;
        insert_records(&tx, file, ts_base, &segments)?;
        record_ids::insert(
            &tx,
            &record_ids::encode(
                file.first_seq,
                file.records.iter().map(|r| r.record_id.as_str()),
            ),
        )?;
        let mut taken =
            tx.prepare_cached("UPDATE late_labels SET matched = 1 WHERE record_id = ?1")?;
        for id in &file.labels_taken {
            taken.execute([id])?;
        }
        drop(taken);
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
        self.segments.extend(added);
        self.finish_checkpoint();
        Ok(CommitOutcome::Committed {
            file_id,
            records: file.records.len(),
        })
    }

    /// For each id of a file about to be committed, whether a kept record already has it
    /// (de-duplication by record id: the first arrival counts, a later one is left out and
    /// counted in `files.duplicates`).
    pub fn counted_ids(&self, ids: &[&str]) -> Result<Vec<bool>> {
        record_ids::already_kept(&self.conn, ids)
    }

    /// Records that a file with already-counted content arrived again, and returns the counted
    /// file's id. The counted file itself, left in the inbox by a crash between commit and move
    /// (the same name, device, inode and modification time), is not a new arrival: nothing is
    /// recorded for it. A copy sent again, under any name, gets a `duplicate` row.
    pub fn note_duplicate(
        &mut self,
        name: &str,
        sha256: &str,
        size: u64,
        kind: &str,
        origin: FileOrigin,
        now_ms: i64,
    ) -> Result<Option<i64>> {
        let tx = write_transaction(&mut self.conn)?;
        let Some((of_id, of_name, of_origin)) = done_file_origin(&tx, sha256)? else {
            return Ok(None);
        };
        let leftover = of_name == name && of_origin == origin && origin.inode.is_some();
        if !leftover {
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
                origin,
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
            FileOrigin::default(),
            now_ms,
        )?;
        tx.commit()?;
        Ok(id)
    }

    /// The `records.seq` the next record gets (sequence numbers are never reused, even after
    /// retention deleted the rows).
    pub fn next_seq(&self) -> Result<i64> {
        let last: Option<i64> = self
            .conn
            .prepare_cached("SELECT seq FROM sqlite_sequence WHERE name = 'record_rows'")?
            .query_row([], |r| r.get(0))
            .optional()?;
        Ok(last.unwrap_or(0) + 1)
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
