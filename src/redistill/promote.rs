//! Promotion and rollback of the serving student, by hand (`sensei promote MODEL`,
//! `sensei rollback`).
//!
//! The serving student is the `[student] path` of the config unless a promotion has replaced it:
//! a promoted model is copied into `<state_dir>/models/` under a versioned name
//! (`student-<n>-<sha256 prefix>.onnx`) and `<state_dir>/models/student.json` names it. Every
//! command that loads the config (the daemon at start and at reload, `check`, `export`,
//! `redistill`) serves that copy, so a promotion takes effect when the daemon reloads
//! (SIGHUP: the new model loads beside the old one, the pipeline drains and restarts on it, so no
//! record is lost and none is answered by a half-loaded model) or restarts. The pointer also
//! records which `[student] path` it overrides: editing that path in the config wins over an
//! older promotion.
//!
//! Each promotion and rollback is a `student_promotions` row with the reason and, when the model
//! is a job's candidate, the gate's evidence. A candidate the gate rejected is promoted only
//! with `--force`. The `keep_students` newest previous copies are kept.
//!
//! The drift detectors compare the field with a baseline measured with the student that serves;
//! after a change of student that reference is stale. So a promotion or rollback measures a new
//! baseline on the active baseline's lab files with the new student (as `sensei baseline`
//! does), and the detectors re-arm on it when the daemon reloads.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Serialize;

use super::export::ModelFile;
use crate::config::Config;
use crate::config::promoted::{Pointer, pointer_path, read_pointer};
use crate::store::{Promotion, Store};
use crate::time::now_ms;

fn models_dir(config: &Config) -> PathBuf {
    config.state_dir.join("models")
}

/// The configured `[student] path` behind any promotion.
fn configured_student(config: &Config) -> PathBuf {
    match read_pointer(&config.state_dir) {
        Some(p) if p.path == config.student.path => p.configured,
        _ => config.student.path.clone(),
    }
}

fn write_pointer(config: &Config, pointer: Option<&Pointer>) -> anyhow::Result<()> {
    let path = pointer_path(&config.state_dir);
    match pointer {
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", path.display()))
            }
            _ => Ok(()),
        },
        Some(p) => {
            let tmp = path.with_extension("json.tmp");
            std::fs::write(&tmp, serde_json::to_vec_pretty(p)?)
                .with_context(|| format!("writing {}", tmp.display()))?;
            std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
        }
    }
}

/// What a promotion or rollback did.
#[derive(Debug, Clone, Serialize)]
pub struct Changed {
    pub kind: String,
    pub model: PathBuf,
    pub sha256: String,
    pub previous: PathBuf,
    pub job: Option<i64>,
    pub evidence: Option<serde_json::Value>,
    /// The baseline version measured with the new student, or why there is none.
    pub baseline: Result<Option<i64>, String>,
}

impl Changed {
    pub fn text(&self) -> String {
        let verb = if self.kind == "promote" {
            "promoted"
        } else {
            "rolled back to"
        };
        let mut s = format!(
            "{verb} {} (sha256 {}), replacing {}\n",
            self.model.display(),
            &self.sha256[..12],
            self.previous.display()
        );
        if let Some(job) = self.job {
            s.push_str(&format!("candidate of job {job}\n"));
        }
        if let Some(e) = &self.evidence
            && let Ok(e) = serde_json::from_value::<super::gate::Evidence>(e.clone())
        {
            s.push_str(&format!("gate: {}\n", e.summary()));
        }
        match &self.baseline {
            Ok(Some(v)) => s.push_str(&format!(
                "baseline version {v} measured with it on the lab set: the detectors re-arm on it\n"
            )),
            Ok(None) => s.push_str("no baseline to re-measure (run sensei baseline)\n"),
            Err(e) => s.push_str(&format!(
                "the lab set could not be re-measured ({e}); run sensei baseline\n"
            )),
        }
        s.push_str(
            "takes effect when the daemon reloads (systemctl reload sensei, or SIGHUP) or restarts\n",
        );
        s
    }
}

/// `sensei promote MODEL`.
pub fn promote(
    config: &Config,
    model: &Path,
    reason: &str,
    force: bool,
) -> anyhow::Result<Changed> {
    let sha = super::job::check_candidate(config, model)?;
    let current = ModelFile::read(&config.student.path)?;
    if sha == current.sha256 {
        bail!("{} is the serving student already", model.display());
    }
    let mut store = Store::open(&config.store.path)?;
    let absolute = std::path::absolute(model).unwrap_or_else(|_| model.to_path_buf());
    let mut job = store.job_for_output(&absolute.display().to_string())?;
    if job.is_none() {
        job = store.job_for_output(&model.display().to_string())?;
    }
    let (job_id, evidence) = match job {
        Some((id, gate, evidence)) => {
            if gate.as_deref() != Some("passed") && !force {
                let why = evidence
                    .as_deref()
                    .and_then(|e| serde_json::from_str::<serde_json::Value>(e).ok())
                    .map(|e| e["reasons"].to_string())
                    .unwrap_or_else(|| "it was not judged".into());
                bail!(
                    "the gate did not pass job {id}'s candidate ({why}); --force promotes it anyway"
                );
            }
            (Some(id), evidence)
        }
        None => (None, None),
    };
    let dir = models_dir(config);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let n = next_version(&dir);
    let target = dir.join(format!("student-{n}-{}.onnx", &sha[..12]));
    let tmp = target.with_extension("onnx.tmp");
    std::fs::copy(model, &tmp).with_context(|| format!("copying {}", model.display()))?;
    std::fs::rename(&tmp, &target).with_context(|| format!("writing {}", target.display()))?;
    let configured = configured_student(config);
    write_pointer(
        config,
        Some(&Pointer {
            path: target.clone(),
            sha256: sha.clone(),
            configured,
        }),
    )?;
    let row = Promotion {
        kind: "promote".into(),
        model: target.display().to_string(),
        sha256: sha.clone(),
        previous: config.student.path.display().to_string(),
        previous_sha256: current.sha256,
        job_id,
        reason: reason.into(),
        evidence: evidence.clone(),
    };
    store.insert_promotion(&row, now_ms())?;
    prune(&dir, &target, config.redistill.keep_students);
    let baseline = rearm(config, &target);
    Ok(Changed {
        baseline,
        kind: "promote".into(),
        model: target,
        sha256: sha,
        previous: config.student.path.clone(),
        job: job_id,
        evidence: evidence.and_then(|e| serde_json::from_str(&e).ok()),
    })
}

/// `sensei rollback`: back to the student the serving one replaced.
pub fn rollback(config: &Config, reason: &str) -> anyhow::Result<Changed> {
    let mut store = Store::open(&config.store.path)?;
    let serving = config.student.path.display().to_string();
    let Some(last) = store.promotion_of(&serving)? else {
        bail!(
            "the serving student {serving} was not promoted by sensei; there is nothing to roll back to"
        );
    };
    let previous = PathBuf::from(&last.previous);
    let file = ModelFile::read(&previous)
        .with_context(|| format!("the previous student {} is gone", previous.display()))?;
    super::job::check_candidate(config, &previous)?;
    let configured = configured_student(config);
    if previous == configured {
        write_pointer(config, None)?;
    } else {
        write_pointer(
            config,
            Some(&Pointer {
                path: previous.clone(),
                sha256: file.sha256.clone(),
                configured,
            }),
        )?;
    }
    store.insert_promotion(
        &Promotion {
            kind: "rollback".into(),
            model: last.previous.clone(),
            sha256: file.sha256.clone(),
            previous: serving,
            previous_sha256: last.sha256,
            job_id: None,
            reason: reason.into(),
            evidence: None,
        },
        now_ms(),
    )?;
    let baseline = rearm(config, &previous);
    Ok(Changed {
        baseline,
        kind: "rollback".into(),
        model: previous,
        sha256: file.sha256,
        previous: config.student.path.clone(),
        job: None,
        evidence: None,
    })
}

/// A new baseline on the active baseline's lab files, measured with `student`.
fn rearm(config: &Config, student: &Path) -> Result<Option<i64>, String> {
    let sources = crate::store::Reader::open(&config.store.path)
        .and_then(|r| r.baseline_sources())
        .map_err(|e| e.to_string())?;
    let Some(sources) = sources else {
        return Ok(None);
    };
    let mut with_student = config.clone();
    with_student.student.path = student.to_path_buf();
    let paths: Vec<PathBuf> = sources.into_iter().map(PathBuf::from).collect();
    crate::baseline::measure(&with_student, &paths)
        .map(|report| Some(report.version))
        .map_err(|e| format!("{e:#}"))
}

/// `student-<n>-…` numbers: one more than the highest in the directory.
fn next_version(dir: &Path) -> u64 {
    versions(dir).into_iter().map(|(n, _)| n).max().unwrap_or(0) + 1
}

fn versions(dir: &Path) -> Vec<(u64, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter_map(|p| {
            let name = p.file_name()?.to_str()?.to_string();
            let n = name
                .strip_prefix("student-")?
                .strip_suffix(".onnx")?
                .split('-')
                .next()?
                .parse()
                .ok()?;
            Some((n, p))
        })
        .collect()
}

/// Keeps the serving copy and the `keep` newest others.
fn prune(dir: &Path, serving: &Path, keep: usize) {
    let mut others: Vec<(u64, PathBuf)> = versions(dir)
        .into_iter()
        .filter(|(_, p)| p != serving)
        .collect();
    others.sort_by_key(|o| std::cmp::Reverse(o.0));
    for (_, p) in others.into_iter().skip(keep) {
        if let Err(e) = std::fs::remove_file(&p) {
            tracing::warn!(path = %p.display(), error = %e, "Could not remove an old student.");
        }
    }
}
