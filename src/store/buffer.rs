//! The distillation buffer: teacher samples and their inputs (`teacher_samples`,
//! `teacher_sample_inputs`), pruned to the buffer's cap, and read whole by `sensei export`.

use rusqlite::{OptionalExtension, params};

use super::{Reader, Result, Store, write_transaction};

/// What the policy needs to know of one teacher sample.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BufferEntry {
    pub seq: i64,
    /// Classification: whether the top-1 classes differ.
    pub disagreement: Option<bool>,
    /// KL, total variation, cosine distance or absolute error: ranks samples without a
    /// disagreement flag (embeddings, regression).
    pub divergence: Option<f64>,
}

/// A teacher sample as the re-distillation export reads it (blobs as stored).
#[derive(Debug, Clone)]
pub struct ExportSample {
    pub seq: i64,
    pub record_id: String,
    pub ts_ms: i64,
    pub segment: String,
    pub weight: f64,
    /// The student's sha256 prefix.
    pub student: String,
    pub label: Option<i64>,
    pub output_shape: String,
    pub teacher_output: Vec<u8>,
    pub student_output: Vec<u8>,
    pub attention_shape: Option<String>,
    pub teacher_attention: Option<Vec<u8>>,
    pub inputs: Vec<ExportInput>,
}

/// One input tensor of a teacher sample.
#[derive(Debug, Clone)]
pub struct ExportInput {
    pub name: String,
    pub dtype: String,
    pub shape: String,
    pub data: Vec<u8>,
}

impl Store {
    /// Applies the distillation buffer's retention policy to `teacher_samples` (their inputs
    /// go with them): once more than `max_samples` are kept, `to_delete` picks the `seq`s to
    /// delete from every sample, oldest first (`crate::redistill::buffer`). Returns how many
    /// samples were deleted.
    pub fn prune_teacher_samples(
        &mut self,
        max_samples: usize,
        to_delete: impl FnOnce(&[BufferEntry]) -> Vec<i64>,
    ) -> Result<usize> {
        let count: i64 = self
            .conn
            .query_row("SELECT COUNT(*) FROM teacher_samples", [], |r| r.get(0))?;
        if count as usize <= max_samples {
            return Ok(0);
        }
        let entries = {
            let mut stmt = self.conn.prepare(
                "SELECT seq, disagreement, COALESCE(kl, total_variation, cosine_distance, abs_error)
                 FROM teacher_samples ORDER BY seq",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(BufferEntry {
                    seq: r.get(0)?,
                    disagreement: r.get::<_, Option<i64>>(1)?.map(|d| d != 0),
                    divergence: r.get(2)?,
                })
            })?;
            rows.collect::<rusqlite::Result<Vec<_>>>()?
        };
        let doomed = to_delete(&entries);
        let tx = write_transaction(&mut self.conn)?;
        {
            let mut del = tx.prepare_cached("DELETE FROM teacher_samples WHERE seq = ?1")?;
            for seq in &doomed {
                del.execute([seq])?;
            }
        }
        tx.commit()?;
        Ok(doomed.len())
    }
}

impl Reader {
    /// Teacher samples answered by `teacher` (a sha256 prefix), received at or after `since_ms`,
    /// in `seq` order, with their inputs; labels include late labels.
    pub fn export_samples(
        &self,
        teacher: &str,
        since_ms: Option<i64>,
    ) -> Result<Vec<ExportSample>> {
        // One read transaction: the samples and their inputs come from one snapshot. Read in
        // separate statements, a buffer cap or retention the writer applies in between (the
        // daemon applies them at start, while its re-distillation task may be exporting) would
        // leave samples whose inputs are gone.
        let tx = self.conn.unchecked_transaction()?;
        let mut stmt = tx.prepare(
            "SELECT t.seq, t.record_id, t.ts, t.segment, t.weight, t.student,
                    COALESCE(t.label, l.label), t.output_shape, t.teacher_output, t.student_output,
                    t.attention_shape, t.teacher_attention
             FROM teacher_samples t LEFT JOIN late_labels l ON l.record_id = t.record_id
             WHERE t.teacher = ?1 AND t.ts >= ?2 ORDER BY t.seq",
        )?;
        let rows = stmt.query_map(params![teacher, since_ms.unwrap_or(i64::MIN)], |r| {
            Ok(ExportSample {
                seq: r.get(0)?,
                record_id: r.get(1)?,
                ts_ms: r.get(2)?,
                segment: r.get(3)?,
                weight: r.get(4)?,
                student: r.get(5)?,
                label: r.get(6)?,
                output_shape: r.get(7)?,
                teacher_output: r.get(8)?,
                student_output: r.get(9)?,
                attention_shape: r.get(10)?,
                teacher_attention: r.get(11)?,
                inputs: Vec::new(),
            })
        })?;
        let mut samples = rows.collect::<rusqlite::Result<Vec<_>>>()?;
        drop(stmt);
        {
            let mut inputs = tx.prepare_cached(
                "SELECT name, dtype, shape, data FROM teacher_sample_inputs WHERE seq = ?1 ORDER BY name",
            )?;
            for s in &mut samples {
                let rows = inputs.query_map([s.seq], |r| {
                    Ok(ExportInput {
                        name: r.get(0)?,
                        dtype: r.get(1)?,
                        shape: r.get(2)?,
                        data: r.get(3)?,
                    })
                })?;
                s.inputs = rows.collect::<rusqlite::Result<_>>()?;
            }
        }
        tx.commit()?;
        Ok(samples)
    }

    /// The data files of the active baseline (the lab set), if there is one.
    pub fn baseline_sources(&self) -> Result<Option<Vec<String>>> {
        let sources: Option<String> = self
            .conn
            .query_row("SELECT sources FROM baselines WHERE active = 1", [], |r| {
                r.get(0)
            })
            .optional()?;
        Ok(sources.map(|s| serde_json::from_str(&s).unwrap_or_default()))
    }
}
