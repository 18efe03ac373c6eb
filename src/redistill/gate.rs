//! The gate: whether a candidate student is better than the serving one, with evidence.
//!
//! Two checks, both required:
//! - **Held-out field records.** The job's held-out share (records the job never trained on)
//!   is run through the candidate and the serving student; each is compared with the teacher's
//!   top-1 class recorded for the record. The candidate must beat the student's weighted
//!   agreement by `[redistill] gate_margin`, and the improvement must be significant: on the
//!   paired records where exactly one of the two agrees with the teacher, an exact one-sided
//!   sign test (McNemar's exact test) of "the candidate wins no more often than it loses" must
//!   give a p-value below `gate_alpha`.
//! - **The lab reference set** of the active baseline (when there is one): the candidate's
//!   disagreement with the teacher, and its error where labels are known, must not exceed the
//!   serving student's by more than `gate_lab_tolerance`: fixing the field must not break the
//!   lab.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use super::safetensors::{self, Data};
use crate::config::Config;
use crate::model::{Model, runtime};
use crate::record::{Origin, Record, Tensor};

/// What the gate measured, and its verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub passed: bool,
    /// Why it failed (empty when it passed).
    pub reasons: Vec<String>,
    pub holdout: HoldoutEvidence,
    pub lab: Option<LabEvidence>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HoldoutEvidence {
    pub records: usize,
    /// Weighted agreement with the teacher's top-1 class.
    pub candidate_agreement: f64,
    pub student_agreement: f64,
    /// Records where only the candidate agrees with the teacher, and only the student.
    pub candidate_only: usize,
    pub student_only: usize,
    /// One-sided exact sign test on the discordant pairs.
    pub p_value: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LabEvidence {
    pub sources: Vec<PathBuf>,
    pub records: usize,
    pub candidate_disagreement: f64,
    pub student_disagreement: f64,
    pub labelled: usize,
    pub candidate_error: Option<f64>,
    pub student_error: Option<f64>,
}

impl Evidence {
    /// One line for people.
    pub fn summary(&self) -> String {
        let h = &self.holdout;
        let mut s = format!(
            "held-out agreement with the teacher {:.3} vs {:.3} (n = {}, {} vs {} discordant, one-sided p = {:.2e})",
            h.candidate_agreement,
            h.student_agreement,
            h.records,
            h.candidate_only,
            h.student_only,
            h.p_value
        );
        if let Some(lab) = &self.lab {
            s.push_str(&format!(
                "; lab disagreement {:.3} vs {:.3} (n = {})",
                lab.candidate_disagreement, lab.student_disagreement, lab.records
            ));
        }
        if !self.passed {
            s.push_str(&format!("; rejected: {}", self.reasons.join("; ")));
        }
        s
    }
}

/// P(X ≥ wins) for X ~ Binomial(wins + losses, ½): the one-sided exact sign test.
pub fn sign_test_p(wins: usize, losses: usize) -> f64 {
    let n = wins + losses;
    if n == 0 {
        return 1.0;
    }
    // ln C(n, k) by running sums of logs; the terms are added in log space.
    let ln_fact: Vec<f64> = std::iter::once(0.0)
        .chain((1..=n).scan(0.0, |acc, k| {
            *acc += (k as f64).ln();
            Some(*acc)
        }))
        .collect();
    let ln_half_n = n as f64 * 0.5f64.ln();
    (wins..=n)
        .map(|k| (ln_fact[n] - ln_fact[k] - ln_fact[n - k] + ln_half_n).exp())
        .sum::<f64>()
        .min(1.0)
}

fn argmax(v: &[f32]) -> usize {
    v.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |(bi, bv), (i, &x)| {
            if x > bv { (i, x) } else { (bi, bv) }
        })
        .0
}

/// The held-out dataset as records, with the teacher's top-1 class and the weight of each.
fn holdout_records(dir: &Path) -> anyhow::Result<(Vec<Record>, Vec<usize>, Vec<f64>)> {
    let tensors = safetensors::read(&dir.join("data.safetensors"))?;
    let teacher = tensors
        .get("teacher.logits")
        .context("held-out set without teacher.logits")?;
    let Data::F32(logits) = &teacher.data else {
        bail!("teacher.logits is not F32");
    };
    let n = teacher.shape[0];
    let k = logits.len() / n.max(1);
    let teacher_top: Vec<usize> = logits.chunks(k.max(1)).map(argmax).collect();
    let weights: Vec<f64> = match tensors.get("weight").map(|t| &t.data) {
        Some(Data::F32(w)) => w.iter().map(|&x| f64::from(x)).collect(),
        _ => vec![1.0; n],
    };
    let mut records: Vec<Record> = (0..n)
        .map(|i| Record {
            id: Some(format!("holdout-{i}")),
            ts: None,
            segment: BTreeMap::new(),
            inputs: BTreeMap::new(),
            label: None,
            origin: Origin::Index(i),
        })
        .collect();
    for (name, t) in &tensors {
        let Some(input) = name.strip_prefix("inputs.") else {
            continue;
        };
        let per: usize = t.shape[1..].iter().product();
        for (i, r) in records.iter_mut().enumerate() {
            let tensor = match &t.data {
                Data::F32(v) => {
                    Tensor::f32(t.shape[1..].to_vec(), v[i * per..(i + 1) * per].to_vec())
                }
                Data::I64(v) => Tensor {
                    shape: t.shape[1..].to_vec(),
                    data: crate::record::TensorData::I64(v[i * per..(i + 1) * per].to_vec()),
                },
            };
            r.inputs.insert(input.to_string(), tensor);
        }
    }
    Ok((records, teacher_top, weights))
}

/// Top-1 class of a model on every record, in batches.
fn top1(model: &mut Model, records: &[Record], batch: usize) -> anyhow::Result<Vec<usize>> {
    let mut out = Vec::with_capacity(records.len());
    for chunk in records.chunks(batch.max(1)) {
        let refs: Vec<&Record> = chunk.iter().collect();
        let b = model.run(&refs)?;
        for i in 0..chunk.len() {
            out.push(argmax(b.output_of(i)));
        }
    }
    Ok(out)
}

/// Evaluates `candidate` against the serving student of `config`, on the held-out dataset in
/// `holdout` and on the active baseline's lab set.
pub fn evaluate(config: &Config, candidate: &Path, holdout: &Path) -> anyhow::Result<Evidence> {
    let rc = &config.redistill;
    let rt = runtime(&config.onnxruntime)?;
    let mut candidate_config = config.student.clone();
    candidate_config.path = candidate.to_path_buf();
    let mut cand = Model::load(rt, "candidate", &candidate_config)?;
    let mut student = Model::load(rt, "student", &config.student)?;
    let (records, teacher_top, weights) = holdout_records(holdout)?;
    let batch = config.student.max_batch;
    let c_top = top1(&mut cand, &records, batch)?;
    let s_top = top1(&mut student, &records, batch)?;
    let (mut wc, mut ws, mut wsum, mut c_only, mut s_only) = (0.0, 0.0, 0.0, 0, 0);
    for i in 0..records.len() {
        let (c, s) = (c_top[i] == teacher_top[i], s_top[i] == teacher_top[i]);
        wsum += weights[i];
        if c {
            wc += weights[i];
        }
        if s {
            ws += weights[i];
        }
        match (c, s) {
            (true, false) => c_only += 1,
            (false, true) => s_only += 1,
            _ => {}
        }
    }
    let holdout = HoldoutEvidence {
        records: records.len(),
        candidate_agreement: wc / wsum.max(f64::MIN_POSITIVE),
        student_agreement: ws / wsum.max(f64::MIN_POSITIVE),
        candidate_only: c_only,
        student_only: s_only,
        p_value: sign_test_p(c_only, s_only),
    };
    let mut reasons = Vec::new();
    let gain = holdout.candidate_agreement - holdout.student_agreement;
    if gain < rc.gate_margin {
        reasons.push(format!(
            "held-out agreement gain {gain:+.3} is below gate_margin {}",
            rc.gate_margin
        ));
    }
    if holdout.p_value >= rc.gate_alpha {
        reasons.push(format!(
            "the gain is not significant (p = {:.3} ≥ gate_alpha {})",
            holdout.p_value, rc.gate_alpha
        ));
    }
    let lab = lab_evidence(config, candidate)?;
    if let Some(lab) = &lab {
        if lab.candidate_disagreement > lab.student_disagreement + rc.gate_lab_tolerance {
            reasons.push(format!(
                "lab disagreement regresses: {:.3} vs {:.3} (tolerance {})",
                lab.candidate_disagreement, lab.student_disagreement, rc.gate_lab_tolerance
            ));
        }
        if let (Some(c), Some(s)) = (lab.candidate_error, lab.student_error)
            && c > s + rc.gate_lab_tolerance
        {
            reasons.push(format!(
                "lab error regresses: {c:.3} vs {s:.3} (tolerance {})",
                rc.gate_lab_tolerance
            ));
        }
    }
    Ok(Evidence {
        passed: reasons.is_empty(),
        reasons,
        holdout,
        lab,
    })
}

/// Both students on the active baseline's lab files (none without a baseline).
fn lab_evidence(config: &Config, candidate: &Path) -> anyhow::Result<Option<LabEvidence>> {
    if !config.store.path.exists() {
        return Ok(None);
    }
    let reader = crate::store::Reader::open(&config.store.path)?;
    let Some(sources) = reader.baseline_sources()? else {
        return Ok(None);
    };
    let sources: Vec<PathBuf> = sources.into_iter().map(PathBuf::from).collect();
    let current =
        crate::baseline::run_lab(config, &sources).context("the lab set, serving student")?;
    let mut with_candidate = config.clone();
    with_candidate.student.path = candidate.to_path_buf();
    let cand =
        crate::baseline::run_lab(&with_candidate, &sources).context("the lab set, candidate")?;
    let rate = |v: &[bool]| v.iter().filter(|&&d| d).count() as f64 / v.len().max(1) as f64;
    let error = |run: &crate::monitor::lab::LabRun| -> (usize, Option<f64>) {
        let pairs: Vec<(i64, i64)> = run
            .labels
            .iter()
            .zip(&run.prediction)
            .filter_map(|(l, p)| l.map(|l| (l, *p)))
            .collect();
        let wrong = pairs.iter().filter(|(l, p)| l != p).count();
        (
            pairs.len(),
            (!pairs.is_empty()).then(|| wrong as f64 / pairs.len() as f64),
        )
    };
    let (labelled, student_error) = error(&current);
    let (_, candidate_error) = error(&cand);
    Ok(Some(LabEvidence {
        sources,
        records: current.records(),
        candidate_disagreement: rate(&cand.disagreement),
        student_disagreement: rate(&current.disagreement),
        labelled,
        candidate_error,
        student_error,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sign_test_matches_exact_binomial_tails() {
        assert_eq!(sign_test_p(0, 0), 1.0);
        assert!((sign_test_p(1, 0) - 0.5).abs() < 1e-12);
        // P(X >= 8 | n = 10) = (45 + 10 + 1) / 1024.
        assert!((sign_test_p(8, 2) - 56.0 / 1024.0).abs() < 1e-12);
        assert!((sign_test_p(5, 5) - 638.0 / 1024.0).abs() < 1e-12);
        assert!(sign_test_p(40, 10) < 1e-4);
        assert!(sign_test_p(10, 40) > 0.99);
    }
}
