//! Late labels (`late_labels`): ground truth that arrives in `*.labels.jsonl` files, before or
//! after its record, joined to the record by id.
//!
//! The rules, in the order of arrival (a file's modification time when it was taken; lines of
//! one file in their order):
//! - a record's first label, inline or late, is the one its error detectors see, once;
//! - a later label with the same value changes nothing;
//! - a later label with another value is a correction: the record keeps the later one (and
//!   `files.conflicts` of the file that brought it counts it), but the detectors, which have
//!   already counted the record, are not fed again;
//! - a label that arrives after another one for the same record but was written before it (an
//!   older file taken late, as after a crash) changes nothing.

use rusqlite::{OptionalExtension, params};

use super::ledger::{FileOrigin, done_file, insert_file};
use super::{MonitorDelta, Result, Store, record_ids, write_delta, write_transaction};

/// Outcome of a late-labels file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelsOutcome {
    Committed {
        file_id: i64,
        labels: usize,
        /// Records that got their first label from this file (each such label reaches the
        /// error detectors, once).
        matched: usize,
        /// Labels that replaced a different, older label of their record.
        corrected: usize,
        /// Labels that changed nothing: the record already had that label, or a label that
        /// arrived later.
        unchanged: usize,
    },
    Duplicate {
        of_id: i64,
    },
}

/// Called with the records a labels file reached; returns the drift detectors' changes.
pub type LabelObserver<'a> = dyn FnMut(&[LabelJoin]) -> Option<(i64, MonitorDelta)> + 'a;

/// A label joined to a record it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelJoin {
    pub seq: i64,
    pub record_id: String,
    pub segment: String,
    pub prediction: Option<i64>,
    pub teacher_prediction: Option<i64>,
    pub label: i64,
}

/// A label waiting for its record (or the last one its record got): its value and arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitingLabel {
    pub label: i64,
    pub arrived_ms: i64,
}

impl Store {
    /// Commits a late-labels file (the rules are in the module's documentation): stores each
    /// label by id and writes it onto the record (and teacher sample) with that id. Labels for
    /// ids not seen yet wait in `late_labels`; records arriving later pick them up through
    /// [`Store::waiting_label`].
    ///
    /// `joined` is called with every record that got its first label here, with what the
    /// drift detectors need (seq, segment, student prediction, teacher prediction when
    /// sampled, label); it returns the detectors' changes, which commit in the same
    /// transaction.
    #[allow(clippy::too_many_arguments)]
    pub fn commit_labels(
        &mut self,
        name: &str,
        sha256: &str,
        size: u64,
        labels: &[(String, i64)],
        origin: FileOrigin,
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
                origin,
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
            origin,
            now_ms,
        )?;
        let arrived = origin.arrived_ms;
        let (mut matched, mut corrected, mut unchanged) = (0, 0, 0);
        let mut joins = Vec::new();
        {
            let mut previous = tx.prepare_cached(
                "SELECT label, COALESCE(arrived_at, 0) FROM late_labels WHERE record_id = ?1",
            )?;
            let mut upsert = tx.prepare_cached(
                "INSERT INTO late_labels (record_id, label, file_id, received_at, matched, arrived_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (record_id) DO UPDATE SET label = excluded.label,
                     file_id = excluded.file_id, received_at = excluded.received_at,
                     matched = MAX(matched, excluded.matched), arrived_at = excluded.arrived_at",
            )?;
            let mut record = tx.prepare_cached(
                "SELECT r.label, s.segment, r.prediction, t.teacher_prediction,
                        COALESCE(f.arrived_at, 0)
                 FROM record_rows r
                 JOIN segments s ON s.id = r.segment
                 JOIN files f ON f.id = (SELECT id FROM files WHERE first_seq <= r.seq
                                         ORDER BY first_seq DESC LIMIT 1)
                 LEFT JOIN teacher_samples t ON t.seq = r.seq
                 WHERE r.seq = ?1",
            )?;
            let mut set_record =
                tx.prepare_cached("UPDATE record_rows SET label = ?2 WHERE seq = ?1")?;
            let mut set_sample =
                tx.prepare_cached("UPDATE teacher_samples SET label = ?2 WHERE seq = ?1")?;
            for (id, label) in labels {
                let before: Option<(i64, i64)> = previous
                    .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()?;
                if let Some((_, at)) = before
                    && at > arrived
                {
                    unchanged += 1; // a later label is known already
                    continue;
                }
                let seq = record_ids::find(&tx, id)?;
                let found = match seq {
                    Some(seq) => record
                        .query_row([seq], |r| {
                            Ok((
                                seq,
                                r.get::<_, Option<i64>>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, Option<i64>>(2)?,
                                r.get::<_, Option<i64>>(3)?,
                                r.get::<_, i64>(4)?,
                            ))
                        })
                        .optional()?,
                    None => None,
                };
                let Some((seq, current, segment, prediction, teacher_prediction, record_arrived)) =
                    found
                else {
                    // Waits for its record.
                    upsert.execute(params![id, label, file_id, now_ms, 0, arrived])?;
                    continue;
                };
                match current {
                    None => {
                        set_record.execute(params![seq, label])?;
                        set_sample.execute(params![seq, label])?;
                        matched += 1;
                        joins.push(LabelJoin {
                            seq,
                            record_id: id.clone(),
                            segment,
                            prediction,
                            teacher_prediction,
                            label: *label,
                        });
                    }
                    Some(current) if current == *label => unchanged += 1,
                    Some(_) => {
                        // The record's label came late (then `before` says when it arrived) or
                        // with the record itself.
                        let current_arrived = match before {
                            Some((l, at)) if Some(l) == current => at,
                            _ => record_arrived,
                        };
                        if arrived >= current_arrived {
                            set_record.execute(params![seq, label])?;
                            set_sample.execute(params![seq, label])?;
                            corrected += 1;
                        } else {
                            unchanged += 1;
                            continue;
                        }
                    }
                }
                upsert.execute(params![id, label, file_id, now_ms, 1, arrived])?;
            }
            if let Some((version, delta)) = joined(&joins) {
                write_delta(&tx, version, &delta, now_ms)?;
            }
        }
        tx.prepare_cached("UPDATE files SET duplicates = ?2, conflicts = ?3 WHERE id = ?1")?
            .execute(params![file_id, unchanged as i64, corrected as i64])?;
        tx.commit()?;
        Ok(LabelsOutcome::Committed {
            file_id,
            labels: labels.len(),
            matched,
            corrected,
            unchanged,
        })
    }

    /// Whether any late label still waits for its record.
    pub fn has_waiting_labels(&self) -> Result<bool> {
        Ok(self
            .conn
            .prepare_cached("SELECT EXISTS (SELECT 1 FROM late_labels WHERE matched = 0)")?
            .query_row([], |r| r.get(0))?)
    }

    /// A late label that arrived before its record.
    pub fn waiting_label(&self, record_id: &str) -> Result<Option<WaitingLabel>> {
        Ok(self
            .conn
            .prepare_cached(
                "SELECT label, COALESCE(arrived_at, 0) FROM late_labels
                 WHERE record_id = ?1 AND matched = 0",
            )?
            .query_row([record_id], |r| {
                Ok(WaitingLabel {
                    label: r.get(0)?,
                    arrived_ms: r.get(1)?,
                })
            })
            .optional()?)
    }
}
