//! Shadow models (`shadow_models`), their answers on teacher-sampled records (`shadow_samples`)
//! and their running sums (`shadow_totals`).

use std::collections::BTreeMap;

use rusqlite::{OptionalExtension, Transaction, params};
use serde::Serialize;

use super::{Reader, RecordRow, Result, Store, TeacherRow, finite, write_transaction};
use crate::compare::Comparison;

/// One shadow model on one teacher-sampled record.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowRow {
    /// `shadow_models.name`.
    pub model: String,
    /// The model file's sha256 (first 12 hex digits).
    pub sha256: String,
    pub kind: ShadowKind,
    /// The comparison with the teacher, or why the model did not answer.
    pub result: ShadowResult,
}

/// What became of one shadow model on one record.
#[derive(Debug, Clone, PartialEq)]
pub enum ShadowResult {
    /// It answered: its comparison with the teacher (`shadow_samples`, `shadow_totals`).
    Answered(ShadowMeasure),
    /// It failed, for this reason: it is marked failed in `shadow_models` and not run again.
    Failed(String),
    /// A model on an inference server gave no answer for this record; the record is counted
    /// in `shadow_skips` and left out of its figures.
    Skipped(ShadowSkip),
}

/// Why a shadow model on an inference server has no answer for a record (`shadow_skips.reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShadowSkip {
    /// No connection, no answer within its timeout, transient errors past its retries, or its
    /// circuit breaker open.
    Unreachable,
    /// The server answered, but not with a usable result (HTTP 4xx or 500, an answer of the
    /// wrong shape).
    Error,
    /// The queue in front of it was full: it was still busy with earlier records.
    Busy,
}

impl ShadowSkip {
    pub const ALL: [ShadowSkip; 3] = [ShadowSkip::Unreachable, ShadowSkip::Error, ShadowSkip::Busy];

    pub fn as_str(self) -> &'static str {
        match self {
            ShadowSkip::Unreachable => "unreachable",
            ShadowSkip::Error => "error",
            ShadowSkip::Busy => "busy",
        }
    }
}

/// What a shadow model is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ShadowKind {
    Student,
    Challenger,
    Candidate,
}

impl ShadowKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ShadowKind::Student => "student",
            ShadowKind::Challenger => "challenger",
            ShadowKind::Candidate => "candidate",
        }
    }

    fn parse(s: &str) -> ShadowKind {
        match s {
            "student" => ShadowKind::Student,
            "candidate" => ShadowKind::Candidate,
            _ => ShadowKind::Challenger,
        }
    }
}

/// A shadow model's answer on one record, compared with the teacher's.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ShadowMeasure {
    pub comparison: Comparison,
    /// Its batch inference time / batch size.
    pub latency_us: i64,
}

/// A shadow model as loaded (or not) at pipeline start, for `shadow_models`.
#[derive(Debug, Clone, PartialEq)]
pub struct ShadowModelRow {
    pub name: String,
    pub kind: ShadowKind,
    pub path: String,
    pub sha256: Option<String>,
    pub size_bytes: Option<u64>,
    pub parameters: Option<u64>,
    /// `None` when it runs; the reason when it does not.
    pub failure: Option<String>,
    pub job_id: Option<i64>,
}

/// The shadow models' rows of one file, gathered while its records are inserted.
#[derive(Debug, Default)]
pub(super) struct ShadowBatch {
    /// (seq, row, weight).
    samples: Vec<(i64, ShadowRow, f64)>,
    /// Per (model, sha256): its kind and sums.
    totals: BTreeMap<(String, String), (ShadowKind, crate::store::Totals)>,
    /// Models that failed on a record of this file, with the reason.
    failures: BTreeMap<String, String>,
    /// Per (model, sha256, reason): records it skipped, and their first and last seq.
    skips: BTreeMap<(String, String, ShadowSkip), (i64, i64, i64)>,
}

impl ShadowBatch {
    /// Adds one teacher-sampled record: each shadow model's answer and, when any shadow model
    /// answered, the serving student's over the same record.
    pub(super) fn add(&mut self, seq: i64, r: &RecordRow, t: &TeacherRow, student_sha: &str) {
        if t.shadow.is_empty() {
            return;
        }
        self.total(crate::config::STUDENT, student_sha, ShadowKind::Student)
            .add(seq, t.weight, &t.comparison, r.latency_us, t.latency_us);
        for s in &t.shadow {
            match &s.result {
                ShadowResult::Answered(m) => {
                    self.total(&s.model, &s.sha256, s.kind).add(
                        seq,
                        t.weight,
                        &m.comparison,
                        m.latency_us,
                        t.latency_us,
                    );
                    self.samples.push((seq, s.clone(), t.weight));
                }
                ShadowResult::Failed(reason) => {
                    self.failures.insert(s.model.clone(), reason.clone());
                }
                ShadowResult::Skipped(reason) => {
                    let entry = self
                        .skips
                        .entry((s.model.clone(), s.sha256.clone(), *reason))
                        .or_insert((0, seq, seq));
                    entry.0 += 1;
                    entry.1 = entry.1.min(seq);
                    entry.2 = entry.2.max(seq);
                }
            }
        }
    }
}

impl ShadowBatch {
    fn total(&mut self, model: &str, sha: &str, kind: ShadowKind) -> &mut crate::store::Totals {
        &mut self
            .totals
            .entry((model.to_string(), sha.to_string()))
            .or_insert_with(|| (kind, crate::store::Totals::default()))
            .1
    }
}

pub(super) fn write_shadow(tx: &Transaction<'_>, batch: &ShadowBatch, now_ms: i64) -> Result<()> {
    if batch.totals.is_empty() && batch.failures.is_empty() && batch.skips.is_empty() {
        return Ok(());
    }
    let mut ins = tx.prepare_cached(
        "INSERT INTO shadow_samples (seq, model, sha256, weight, disagreement, kl, attention_kl,
             cosine_distance, abs_error, latency_us)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?;
    for (seq, row, weight) in &batch.samples {
        let ShadowResult::Answered(m) = &row.result else {
            continue;
        };
        let c = &m.comparison;
        ins.execute(params![
            seq,
            row.model,
            row.sha256,
            weight,
            c.disagreement.map(i64::from),
            c.kl.filter(|x| x.is_finite()),
            c.attention_kl.filter(|x| x.is_finite()),
            c.cosine_distance.filter(|x| x.is_finite()),
            c.abs_error.filter(|x| x.is_finite()),
            m.latency_us,
        ])?;
    }
    let mut upsert = tx.prepare_cached(
        "INSERT INTO shadow_totals (model, sha256, kind, samples, weight, weight_sq, agreement,
             agreement_weight, agreement_weight_sq, kl, kl_weight, attention_kl,
             attention_kl_weight, latency_us, teacher_latency_us, first_seq, last_seq, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
         ON CONFLICT (model, sha256) DO UPDATE SET
             samples = samples + excluded.samples,
             weight = weight + excluded.weight,
             weight_sq = weight_sq + excluded.weight_sq,
             agreement = agreement + excluded.agreement,
             agreement_weight = agreement_weight + excluded.agreement_weight,
             agreement_weight_sq = agreement_weight_sq + excluded.agreement_weight_sq,
             kl = kl + excluded.kl,
             kl_weight = kl_weight + excluded.kl_weight,
             attention_kl = attention_kl + excluded.attention_kl,
             attention_kl_weight = attention_kl_weight + excluded.attention_kl_weight,
             latency_us = latency_us + excluded.latency_us,
             teacher_latency_us = teacher_latency_us + excluded.teacher_latency_us,
             first_seq = MIN(first_seq, excluded.first_seq),
             last_seq = MAX(last_seq, excluded.last_seq),
             updated_at = excluded.updated_at",
    )?;
    for ((model, sha), (kind, t)) in &batch.totals {
        upsert.execute(params![
            model,
            sha,
            kind.as_str(),
            t.samples,
            finite(t.weight),
            finite(t.weight_sq),
            finite(t.agreement),
            finite(t.agreement_weight),
            finite(t.agreement_weight_sq),
            finite(t.kl),
            finite(t.kl_weight),
            finite(t.attention_kl),
            finite(t.attention_kl_weight),
            t.latency_us,
            t.teacher_latency_us,
            t.first_seq,
            t.last_seq,
            now_ms,
        ])?;
    }
    let mut failed = tx.prepare_cached(
        "UPDATE shadow_models SET status = 'failed', detail = ?2, updated_at = ?3 WHERE name = ?1",
    )?;
    for (model, reason) in &batch.failures {
        failed.execute(params![model, reason, now_ms])?;
    }
    let mut skipped = tx.prepare_cached(
        "INSERT INTO shadow_skips (model, sha256, reason, records, first_seq, last_seq, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (model, sha256, reason) DO UPDATE SET
             records = records + excluded.records,
             first_seq = MIN(first_seq, excluded.first_seq),
             last_seq = MAX(last_seq, excluded.last_seq),
             updated_at = excluded.updated_at",
    )?;
    for ((model, sha, reason), (records, first, last)) in &batch.skips {
        skipped.execute(params![
            model,
            sha,
            reason.as_str(),
            records,
            first,
            last,
            now_ms
        ])?;
    }
    Ok(())
}

/// A `shadow_models` row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShadowModelStatus {
    pub name: String,
    pub kind: ShadowKind,
    pub path: String,
    pub sha256: Option<String>,
    pub size_bytes: Option<u64>,
    pub parameters: Option<u64>,
    /// `running` or `failed`.
    pub status: String,
    pub detail: Option<String>,
    pub job_id: Option<i64>,
    pub updated_at: i64,
}

impl Store {
    /// Records the shadow models of a pipeline start: each one's identity and whether it
    /// loaded. Models no longer configured leave `shadow_models` (their totals stay).
    pub fn register_shadow_models(&mut self, models: &[ShadowModelRow], now_ms: i64) -> Result<()> {
        // It reads before it writes: see `write_transaction`.
        let tx = write_transaction(&mut self.conn)?;
        {
            let names: Vec<&str> = models.iter().map(|m| m.name.as_str()).collect();
            let mut stmt = tx.prepare("SELECT name FROM shadow_models")?;
            let known: Vec<String> = stmt
                .query_map([], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            for name in known.iter().filter(|n| !names.contains(&n.as_str())) {
                tx.execute("DELETE FROM shadow_models WHERE name = ?1", [name])?;
            }
            let mut upsert = tx.prepare_cached(
                "INSERT INTO shadow_models (name, kind, path, sha256, size_bytes, parameters,
                     status, detail, job_id, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                 ON CONFLICT (name) DO UPDATE SET kind = excluded.kind, path = excluded.path,
                     sha256 = excluded.sha256, size_bytes = excluded.size_bytes,
                     parameters = excluded.parameters, status = excluded.status,
                     detail = excluded.detail, job_id = excluded.job_id,
                     updated_at = excluded.updated_at",
            )?;
            for m in models {
                upsert.execute(params![
                    m.name,
                    m.kind.as_str(),
                    m.path,
                    m.sha256,
                    m.size_bytes.map(|b| b as i64),
                    m.parameters.map(|p| p as i64),
                    if m.failure.is_some() {
                        "failed"
                    } else {
                        "running"
                    },
                    m.failure,
                    m.job_id,
                    now_ms
                ])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// The latest job's candidate when it still waits for a decision: the job succeeded, the
    /// gate passed it, and no promotion installed it. (id, output path).
    pub fn pending_candidate(&self) -> Result<Option<(i64, String)>> {
        Ok(self
            .conn
            .query_row(
                "SELECT j.id, j.output, j.gate FROM redistill_jobs j
                 WHERE j.status = 'succeeded' AND j.output IS NOT NULL
                 ORDER BY j.id DESC LIMIT 1",
                [],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                    ))
                },
            )
            .optional()?
            .filter(|(_, _, gate)| gate.as_deref() == Some("passed"))
            .map(|(id, output, _)| (id, output))
            .filter(|(id, _)| {
                !self
                    .conn
                    .prepare_cached("SELECT 1 FROM student_promotions WHERE job_id = ?1")
                    .and_then(|mut s| s.exists([id]))
                    .unwrap_or(false)
            }))
    }
}

impl Reader {
    /// The shadow models of the latest pipeline start, by name.
    pub fn shadow_models(&self) -> Result<Vec<ShadowModelStatus>> {
        if !self.table_exists("shadow_models")? {
            return Ok(Vec::new());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT name, kind, path, sha256, size_bytes, parameters, status, detail, job_id,
                    updated_at
             FROM shadow_models ORDER BY name",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(ShadowModelStatus {
                name: r.get(0)?,
                kind: ShadowKind::parse(&r.get::<_, String>(1)?),
                path: r.get(2)?,
                sha256: r.get(3)?,
                size_bytes: r.get::<_, Option<i64>>(4)?.map(|b| b as u64),
                parameters: r.get::<_, Option<i64>>(5)?.map(|p| p as u64),
                status: r.get(6)?,
                detail: r.get(7)?,
                job_id: r.get(8)?,
                updated_at: r.get(9)?,
            })
        })?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The records one model version skipped, by reason (`shadow_skips`; empty before
    /// schema 14).
    pub fn shadow_skips(&self, model: &str, sha256: &str) -> Result<BTreeMap<ShadowSkip, i64>> {
        if !self.table_exists("shadow_skips")? {
            return Ok(BTreeMap::new());
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT reason, records FROM shadow_skips WHERE model = ?1 AND sha256 = ?2",
        )?;
        let rows = stmt.query_map([model, sha256], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
        })?;
        let mut skips = BTreeMap::new();
        for row in rows {
            let (reason, records) = row?;
            if let Some(reason) = ShadowSkip::ALL.into_iter().find(|s| s.as_str() == reason) {
                skips.insert(reason, records);
            }
        }
        Ok(skips)
    }

    /// The shadow sums of one model version.
    pub fn shadow_totals(&self, model: &str, sha256: &str) -> Result<Option<crate::store::Totals>> {
        if !self.table_exists("shadow_totals")? {
            return Ok(None);
        }
        Ok(self
            .conn
            .query_row(
                "SELECT samples, weight, weight_sq, agreement, agreement_weight,
                        agreement_weight_sq, kl, kl_weight, attention_kl, attention_kl_weight,
                        latency_us, teacher_latency_us, first_seq, last_seq
                 FROM shadow_totals WHERE model = ?1 AND sha256 = ?2",
                [model, sha256],
                |r| {
                    Ok(crate::store::Totals {
                        samples: r.get(0)?,
                        weight: r.get(1)?,
                        weight_sq: r.get(2)?,
                        agreement: r.get(3)?,
                        agreement_weight: r.get(4)?,
                        agreement_weight_sq: r.get(5)?,
                        kl: r.get(6)?,
                        kl_weight: r.get(7)?,
                        attention_kl: r.get(8)?,
                        attention_kl_weight: r.get(9)?,
                        latency_us: r.get(10)?,
                        teacher_latency_us: r.get(11)?,
                        first_seq: r.get(12)?,
                        last_seq: r.get(13)?,
                    })
                },
            )
            .optional()?)
    }

    /// The serving student's shadow sums: those of `sha256` when given, otherwise the most
    /// recently updated student version. (sha256, totals).
    pub fn student_shadow_totals(
        &self,
        sha256: Option<&str>,
    ) -> Result<Option<(String, crate::store::Totals)>> {
        if !self.table_exists("shadow_totals")? {
            return Ok(None);
        }
        let sha: Option<String> = match sha256 {
            Some(s) => Some(s.to_string()),
            None => self
                .conn
                .query_row(
                    "SELECT sha256 FROM shadow_totals WHERE kind = 'student'
                     ORDER BY updated_at DESC, last_seq DESC LIMIT 1",
                    [],
                    |r| r.get(0),
                )
                .optional()?,
        };
        let Some(sha) = sha else { return Ok(None) };
        Ok(self
            .shadow_totals(crate::config::STUDENT, &sha)?
            .map(|t| (sha, t)))
    }
}

/// Running sums of one model version over the teacher-sampled records it answered, weighted
/// by the samples' inverse inclusion probabilities (`shadow_totals`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Totals {
    pub samples: i64,
    pub weight: f64,
    pub weight_sq: f64,
    /// Σ w over records whose top-1 agrees with the teacher's.
    pub agreement: f64,
    /// Σ w (and Σ w²) over records with a top-1 comparison (classification).
    pub agreement_weight: f64,
    pub agreement_weight_sq: f64,
    pub kl: f64,
    pub kl_weight: f64,
    pub attention_kl: f64,
    pub attention_kl_weight: f64,
    /// Σ per-record latency, µs.
    pub latency_us: i64,
    /// Σ the teacher's per-record latency on the same records, µs.
    pub teacher_latency_us: i64,
    pub first_seq: i64,
    pub last_seq: i64,
}

impl Totals {
    /// Adds one record (`seq`) of weight `weight`.
    pub fn add(
        &mut self,
        seq: i64,
        weight: f64,
        comparison: &Comparison,
        latency_us: i64,
        teacher_latency_us: i64,
    ) {
        if !(weight.is_finite() && weight > 0.0) {
            return;
        }
        if self.samples == 0 {
            self.first_seq = seq;
            self.last_seq = seq;
        } else {
            self.first_seq = self.first_seq.min(seq);
            self.last_seq = self.last_seq.max(seq);
        }
        self.samples += 1;
        self.weight += weight;
        self.weight_sq += weight * weight;
        if let Some(disagree) = comparison.disagreement {
            if !disagree {
                self.agreement += weight;
            }
            self.agreement_weight += weight;
            self.agreement_weight_sq += weight * weight;
        }
        if let Some(kl) = comparison.kl.filter(|k| k.is_finite()) {
            self.kl += weight * kl;
            self.kl_weight += weight;
        }
        if let Some(a) = comparison.attention_kl.filter(|a| a.is_finite()) {
            self.attention_kl += weight * a;
            self.attention_kl_weight += weight;
        }
        self.latency_us += latency_us;
        self.teacher_latency_us += teacher_latency_us;
    }
}
