//! Re-distillation end to end: the demo teacher and student on a drifted demo stream, the
//! dataset written by `sensei export`, read by safetensors and by the reference distiller.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::{Site, repo};

fn demo(name: &str) -> PathBuf {
    repo().join("models/demo").join(name)
}

/// A site on the demo models that has replayed the offset-drift stream and its labels.
fn site_with_drifted_stream(extra: &str) -> Site {
    let site = Site::with_models(demo("student.onnx"), demo("teacher.onnx"));
    site.write_config(extra);
    let out = site.sensei(&[
        "replay",
        demo("streams/offset_drift.jsonl").to_str().unwrap(),
        demo("streams/offset_drift.labels.jsonl").to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    site
}

/// Writes the stream's lines `[from, to)` to a file of its own.
fn part(site: &Site, stream: &str, from: usize, to: usize) -> PathBuf {
    let text = std::fs::read_to_string(demo(&format!("streams/{stream}.jsonl"))).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let path = site.root().join(format!("{stream}-{from}-{to}.jsonl"));
    std::fs::write(&path, lines[from..to.min(lines.len())].join("\n") + "\n").unwrap();
    path
}

fn python(script: &str, args: &[&str]) -> std::process::Output {
    Command::new("python3")
        .arg("-c")
        .arg(script)
        .args(args)
        .output()
        .expect("python3")
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Loads a dataset with safetensors.torch and prints `name:shape:dtype` lines, then checks the
/// manifest agrees with the tensors.
const LOAD: &str = r#"
import json, sys
from safetensors.torch import load_file
d = sys.argv[1]
t = load_file(d + "/data.safetensors")
m = json.load(open(d + "/manifest.json"))
for k in sorted(t):
    print(f"{k}:{list(t[k].shape)}:{t[k].dtype}")
n = m["count"]
assert len(m["record_ids"]) == n, "record_ids"
assert all(v.shape[0] == n for v in t.values()), "rows"
assert (t["weight"] > 0).all(), "weights"
att = t["teacher.attention"]
assert ((att.sum(-1) - 1).abs() < 1e-4).all(), "attention rows"
print("labelled:", int((t["label"] >= 0).sum()))
print("count:", n)
"#;

#[test]
fn export_writes_a_dataset_that_safetensors_and_the_reference_distiller_read() {
    let site = site_with_drifted_stream("");
    let samples = site.query_i64("SELECT COUNT(*) FROM teacher_samples");
    assert!(samples > 150, "{samples} teacher samples");

    let dir = site.root().join("dataset");
    let out = site.sensei(&["export", "--out", dir.to_str().unwrap(), "--reason", "test"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("{samples} records")),
        "{}",
        text(&out)
    );

    let loaded = python(LOAD, &[dir.to_str().unwrap()]);
    let shown = text(&loaded);
    assert!(loaded.status.success(), "{shown}");
    for line in [
        format!("inputs.x:[{samples}, 8, 8]:torch.float32"),
        format!("label:[{samples}]:torch.int64"),
        format!("student.logits:[{samples}, 10]:torch.float32"),
        format!("teacher.attention:[{samples}, 4, 8, 8]:torch.float32"),
        format!("teacher.logits:[{samples}, 10]:torch.float32"),
        format!("weight:[{samples}]:torch.float32"),
        format!("labelled: {samples}"),
    ] {
        assert!(shown.contains(&line), "missing {line:?} in\n{shown}");
    }
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["schema_version"], 1);
    assert_eq!(manifest["trigger"]["reason"], "test");
    assert_eq!(manifest["inputs"], serde_json::json!(["x"]));
    assert_eq!(
        manifest["models"]["teacher"]["sha256"]
            .as_str()
            .unwrap()
            .len(),
        64
    );

    // The reference distiller accepts it and writes a new student.
    let new = site.root().join("new.onnx");
    let started = std::time::Instant::now();
    let out = Command::new("python3")
        .arg(repo().join("tools/distill/redistill.py"))
        .args(["--dataset", dir.to_str().unwrap()])
        .args(["--teacher", demo("teacher.onnx").to_str().unwrap()])
        .args(["--student", demo("student.onnx").to_str().unwrap()])
        .args(["--out", new.to_str().unwrap(), "--epochs", "10"])
        .output()
        .expect("redistill.py");
    assert!(out.status.success(), "{}", text(&out));
    assert!(new.metadata().unwrap().len() > 10_000);
    eprintln!(
        "redistill.py on {samples} records: {:.1} s",
        started.elapsed().as_secs_f64()
    );

    // A second export into the same directory is refused rather than mixed in.
    let again = site.sensei(&["export", "--out", dir.to_str().unwrap()]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already holds a dataset"),
        "{}",
        text(&again)
    );
}

#[test]
fn export_filters_by_time_and_segment() {
    let site = site_with_drifted_stream("");
    let export = |name: &str, args: &[&str]| -> (bool, String, PathBuf) {
        let dir = site.root().join(name);
        let mut all = vec!["export", "--out", dir.to_str().unwrap()];
        all.extend_from_slice(args);
        let out = site.sensei(&all);
        (out.status.success(), text(&out), dir)
    };
    let segments = site.query_i64("SELECT COUNT(DISTINCT segment) FROM teacher_samples");
    let line_a = site.query_i64("SELECT COUNT(*) FROM teacher_samples WHERE segment = 'line=A'");
    let (ok, shown, dir) = export("a", &["--segment", "line=A"]);
    assert!(ok, "{shown}");
    assert!(shown.contains(&format!("{line_a} records")), "{shown}");
    let m = manifest(&dir);
    assert_eq!(m["count"], line_a);
    assert_eq!(m["filters"]["segment"], "line=A");
    if segments > 1 {
        assert!(line_a < site.query_i64("SELECT COUNT(*) FROM teacher_samples"));
    }

    // --since: the records from the median time on.
    let median: i64 = site.query_i64(
        "SELECT ts FROM teacher_samples ORDER BY ts LIMIT 1 OFFSET (SELECT COUNT(*) / 2 FROM teacher_samples)",
    );
    let later = site.query_i64(&format!(
        "SELECT COUNT(*) FROM teacher_samples WHERE ts >= {median}"
    ));
    let since = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(median) * 1_000_000)
        .unwrap()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let (ok, shown, dir) = export("late", &["--since", &since]);
    assert!(ok, "{shown}");
    assert_eq!(manifest(&dir)["count"], later);

    // Bad filters and an empty selection are errors that say why.
    let (ok, shown, _) = export("bad", &["--since", "yesterday"]);
    assert!(!ok && shown.contains("RFC 3339"), "{shown}");
    let (ok, shown, _) = export("none", &["--segment", "line=Z"]);
    assert!(!ok && shown.contains("no teacher samples"), "{shown}");
}

fn manifest(dir: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap()
}

/// `[redistill]` with this argv (TOML array text) and settings.
fn redistill_config(command: &str, settings: &str) -> String {
    format!("[redistill]\ncommand = {command}\nmin_samples = 20\n{settings}\n")
}

/// The reference distiller as the job, trained for `epochs` on one thread (the suite runs other
/// tests beside it on two cores).
fn distiller_command(epochs: u32) -> String {
    format!(
        r#"["env", "OMP_NUM_THREADS=1", "python3", {:?}, "--dataset", "{{dataset}}", "--teacher", "{{teacher}}", "--student", "{{student}}", "--out", "{{output}}", "--epochs", "{epochs}"]"#,
        repo()
            .join("tools/distill/redistill.py")
            .display()
            .to_string()
    )
}

/// The gate's evidence for a job, as stored.
fn gate_evidence(site: &Site, id: i64) -> serde_json::Value {
    let text: String = site
        .db()
        .query_row(
            "SELECT evidence FROM redistill_jobs WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// (status, exit_code, detail) of a job.
fn job(site: &Site, id: i64) -> (String, Option<i64>, String) {
    site.db()
        .query_row(
            "SELECT status, exit_code, COALESCE(detail, '') FROM redistill_jobs WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap()
}

#[test]
fn a_job_by_hand_trains_a_candidate_on_the_dataset_without_the_held_out_records() {
    let site = site_with_drifted_stream(&redistill_config(
        &distiller_command(3),
        "min_interval = \"1h\"",
    ));
    let out = site.sensei(&["redistill", "--reason", "line B drifted"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("job 1 succeeded"), "{}", text(&out));
    let (status, code, detail) = job(&site, 1);
    assert_eq!((status.as_str(), code), ("succeeded", Some(0)));
    assert!(detail.contains("candidate student"), "{detail}");

    let dir = site.root().join("state/redistill/job-1");
    assert!(dir.join("student.onnx").metadata().unwrap().len() > 10_000);
    let log = std::fs::read_to_string(dir.join("job.log")).unwrap();
    assert!(log.contains("redistill: wrote"), "{log}");
    // The held-out records are not in the training dataset, and both together are the buffer.
    let train = manifest(&dir.join("dataset"));
    let held = manifest(&dir.join("holdout"));
    let ids = |m: &serde_json::Value| -> Vec<String> {
        serde_json::from_value(m["record_ids"].clone()).unwrap()
    };
    let (train_ids, held_ids) = (ids(&train), ids(&held));
    assert!(train_ids.iter().all(|id| !held_ids.contains(id)));
    assert!(!held_ids.is_empty());
    assert_eq!(
        (train_ids.len() + held_ids.len()) as i64,
        site.query_i64("SELECT COUNT(*) FROM teacher_samples")
    );
    assert_eq!(train["trigger"]["reason"], "line B drifted");
    assert_eq!(
        site.query_i64("SELECT records + holdout FROM redistill_jobs WHERE id = 1"),
        (train_ids.len() + held_ids.len()) as i64
    );

    // The minimum interval holds for the next request; --force overrides it.
    let again = site.sensei(&["redistill"]);
    assert!(!again.status.success());
    assert!(text(&again).contains("min_interval"), "{}", text(&again));
    assert_eq!(site.query_i64("SELECT COUNT(*) FROM redistill_jobs"), 1);
}

#[test]
fn failing_jobs_leave_the_student_serving_with_the_reason_recorded() {
    let cases = [
        (
            r#"["sh", "-c", "echo out of memory >&2; exit 3", "job", "{dataset}", "{output}"]"#,
            "",
            "failed",
            Some(3),
            "(exit status 3); last output: out of memory",
        ),
        (
            r#"["sh", "-c", "sleep 30", "job", "{dataset}", "{output}"]"#,
            "timeout = \"1s\"",
            "timed_out",
            None,
            "timeout of 1 s",
        ),
        (
            r#"["true", "{dataset}", "{output}"]"#,
            "",
            "failed",
            Some(0),
            "was not written",
        ),
        (
            r#"["sh", "-c", "echo garbage > \"$1\"", "job", "{output}", "{dataset}"]"#,
            "",
            "failed",
            Some(0),
            "not a usable student",
        ),
        (
            r#"["/nonexistent/distiller", "{dataset}", "{output}"]"#,
            "",
            "failed",
            None,
            "cannot start",
        ),
    ];
    let site = site_with_drifted_stream("");
    let student = std::fs::read(demo("student.onnx")).unwrap();
    for (i, (command, settings, status, code, reason)) in cases.into_iter().enumerate() {
        site.write_config(&redistill_config(command, settings));
        let started = std::time::Instant::now();
        let out = site.sensei(&["redistill", "--force"]);
        assert!(!out.status.success(), "{command}: {}", text(&out));
        let (s, c, detail) = job(&site, i as i64 + 1);
        assert_eq!((s.as_str(), c), (status, code), "{command}: {detail}");
        assert!(detail.contains(reason), "{command}: {detail}");
        assert!(text(&out).contains(reason), "{}", text(&out));
        if status == "timed_out" {
            assert!(started.elapsed().as_secs() < 15);
        }
    }
    // The serving student is untouched.
    assert_eq!(std::fs::read(demo("student.onnx")).unwrap(), student);
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM redistill_jobs WHERE status IN ('queued', 'running')"),
        0
    );
}

/// An alert rule's request, as the alert module records it.
fn request_from_alert(site: &Site, alert_id: &str) -> i64 {
    let db = site.db();
    db.execute(
        "INSERT INTO alert_actions (action, rule, alert_id, requested_at, drifts, updated_at)
         VALUES ('redistill', 'line-drift', ?1, 0,
                 '[{\"signal\": \"disagreement\", \"segment\": \"line=B\"}]', 0)",
        [alert_id],
    )
    .unwrap();
    db.last_insert_rowid()
}

fn action(site: &Site, id: i64) -> (String, String) {
    site.db()
        .query_row(
            "SELECT status, COALESCE(detail, '') FROM alert_actions WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
}

#[test]
fn the_daemon_runs_a_job_for_an_alert_action_and_rate_limits_the_next() {
    let site = site_with_drifted_stream(&redistill_config(
        r#"["sh", "-c", "echo fails; exit 1", "job", "{dataset}", "{output}"]"#,
        "min_interval = \"1h\"",
    ));
    let daemon = site.start();
    let first = request_from_alert(&site, "line-drift.1");
    crate::common::wait_until(
        std::time::Duration::from_secs(30),
        "the job for the first alert to end",
        || site.query_i64("SELECT COUNT(*) FROM redistill_jobs WHERE status = 'failed'") == 1,
    );
    let (status, detail) = action(&site, first);
    assert_eq!(status, "failed", "{detail}");
    assert!(detail.contains("job 1 failed"), "{detail}");
    let reason: String = site
        .db()
        .query_row(
            "SELECT trigger || ' ' || reason FROM redistill_jobs WHERE id = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(
        reason,
        "alert:line-drift alert line-drift.1: disagreement drift on line=B"
    );

    // A second alert within min_interval gets no job: the failure does not loop.
    let second = request_from_alert(&site, "line-drift.2");
    crate::common::wait_until(
        std::time::Duration::from_secs(30),
        "the second request to be handled",
        || action(&site, second).0 != "requested",
    );
    let (status, detail) = action(&site, second);
    assert_eq!(status, "skipped");
    assert!(detail.contains("rate-limited"), "{detail}");
    assert_eq!(site.query_i64("SELECT COUNT(*) FROM redistill_jobs"), 1);
    assert!(daemon.stop().success());
}

#[test]
fn a_daemon_killed_while_a_job_runs_records_the_job_as_failed_at_restart() {
    let site = site_with_drifted_stream(&redistill_config(
        r#"["sh", "-c", "sleep 120", "job", "{dataset}", "{output}"]"#,
        "timeout = \"10m\"",
    ));
    let daemon = site.start();
    request_from_alert(&site, "line-drift.1");
    crate::common::wait_until(
        std::time::Duration::from_secs(30),
        "the job's command to start",
        || {
            site.query_i64(
                "SELECT COUNT(*) FROM redistill_jobs WHERE status = 'running' AND pid IS NOT NULL",
            ) == 1
        },
    );
    let pid = site.query_i64("SELECT pid FROM redistill_jobs WHERE id = 1");
    daemon.kill();
    // The command outlives the daemon (its own process group).
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    assert_eq!(job(&site, 1).0, "running");

    let daemon = site.start();
    crate::common::wait_until(
        std::time::Duration::from_secs(30),
        "the interrupted job to be recorded",
        || job(&site, 1).0 == "failed",
    );
    let (_, _, detail) = job(&site, 1);
    assert!(detail.contains("supervised the job exited"), "{detail}");
    assert!(
        detail.contains(&format!("pid {pid}) was still running and was killed")),
        "{detail}"
    );
    crate::common::wait_until(
        std::time::Duration::from_secs(10),
        "the orphaned command to be gone",
        || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|s| s.contains(") Z "))
                .unwrap_or(true)
        },
    );
    assert!(daemon.stop().success());
}

#[test]
fn a_candidate_no_better_than_the_student_is_rejected_by_the_gate_with_its_evidence() {
    // The job hands back the serving student itself: same answers on every held-out record.
    let site = Site::with_models(demo("student.onnx"), demo("teacher.onnx"));
    site.write_config(&redistill_config(
        r#"["sh", "-c", "cp \"$1\" \"$2\"", "job", "{student}", "{output}", "{dataset}"]"#,
        "",
    ));
    let out = site.sensei(&["baseline", demo("lab.jsonl").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = site.sensei(&["replay", demo("streams/gain_drift.jsonl").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = site.sensei(&["redistill"]);
    // The job itself succeeded: it wrote a usable student.
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("gate: rejected"), "{}", text(&out));
    let (gate, evidence): (String, String) = site
        .db()
        .query_row(
            "SELECT gate, evidence FROM redistill_jobs WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(gate, "rejected");
    let e: serde_json::Value = serde_json::from_str(&evidence).unwrap();
    assert_eq!(e["passed"], false);
    assert_eq!(
        e["holdout"]["records"],
        site.query_i64("SELECT holdout FROM redistill_jobs WHERE id = 1")
    );
    assert_eq!(e["holdout"]["candidate_only"], 0);
    assert_eq!(e["holdout"]["student_only"], 0);
    assert_eq!(e["holdout"]["p_value"], 1.0);
    assert_eq!(
        e["holdout"]["candidate_agreement"],
        e["holdout"]["student_agreement"]
    );
    // The lab set of the active baseline was run too, with identical results.
    assert_eq!(e["lab"]["records"], 270);
    assert_eq!(
        e["lab"]["candidate_disagreement"],
        e["lab"]["student_disagreement"]
    );
    let reasons = e["reasons"].to_string();
    assert!(reasons.contains("below gate_margin"), "{reasons}");
    assert!(reasons.contains("not significant"), "{reasons}");
}

/// The student that answered the records after `seq` (one, or the query fails).
fn student_after(site: &Site, seq: i64) -> String {
    site.db()
        .query_row(
            "SELECT DISTINCT student FROM records WHERE seq > ?1",
            [seq],
            |r| r.get(0),
        )
        .unwrap()
}

#[test]
fn a_candidate_the_gate_passes_is_promoted_and_serves_the_next_records_and_rollback_restores() {
    // The job hands back a copy of the teacher: the strongest possible candidate.
    let site = Site::with_models(demo("student.onnx"), demo("teacher.onnx"));
    let config = redistill_config(
        r#"["sh", "-c", "cp \"$1\" \"$2\"", "job", "{teacher}", "{output}", "{dataset}"]"#,
        "keep_students = 1",
    );
    site.write_config(&config);
    assert!(
        site.sensei(&["baseline", demo("lab.jsonl").to_str().unwrap()])
            .status
            .success()
    );
    let stream = demo("streams/offset_drift.jsonl");
    assert!(
        site.sensei(&["replay", stream.to_str().unwrap()])
            .status
            .success()
    );
    let out = site.sensei(&["redistill"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("gate: passed"), "{}", text(&out));
    let e = gate_evidence(&site, 1);
    assert_eq!(e["holdout"]["candidate_agreement"], 1.0);
    assert!(e["holdout"]["p_value"].as_f64().unwrap() < 0.05, "{e}");
    assert_eq!(e["lab"]["candidate_disagreement"], 0.0);

    let candidate = site.root().join("state/redistill/job-1/student.onnx");
    let out = site.sensei(&[
        "promote",
        candidate.to_str().unwrap(),
        "--reason",
        "drift on line B",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("takes effect when the daemon reloads"),
        "{}",
        text(&out)
    );
    let (kind, job_id, reason, evidence): (String, i64, String, String) = site
        .db()
        .query_row(
            "SELECT kind, job_id, reason, evidence FROM student_promotions",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!(
        (kind.as_str(), job_id, reason.as_str()),
        ("promote", 1, "drift on line B")
    );
    assert!(evidence.contains("\"passed\":true"), "{evidence}");
    let models: Vec<String> = std::fs::read_dir(site.root().join("state/models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        models.iter().any(|m| m.starts_with("student-1-")),
        "{models:?}"
    );
    // The detectors re-arm on a baseline measured with the promoted student.
    assert!(text(&out).contains("baseline version 2"), "{}", text(&out));

    // The promoted student answers the next records: it agrees with the teacher everywhere.
    let before = site.query_i64("SELECT MAX(seq) FROM records");
    let more = part(&site, "gain_drift", 0, 100);
    assert!(
        site.sensei(&["replay", more.to_str().unwrap()])
            .status
            .success()
    );
    let served = student_after(&site, before);
    let teacher: String = site
        .db()
        .query_row(
            "SELECT DISTINCT teacher FROM teacher_samples LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(served, teacher);
    let active: String = site
        .db()
        .query_row("SELECT student FROM baselines WHERE version = 2", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(active, teacher);
    assert_eq!(
        site.query_i64(&format!(
            "SELECT SUM(disagreement) FROM teacher_samples WHERE seq > {before}"
        )),
        0
    );

    // Rollback: the configured student serves again; a second rollback has nothing to go to.
    let out = site.sensei(&["rollback"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("baseline version 3"), "{}", text(&out));
    let active: String = site
        .db()
        .query_row("SELECT student FROM baselines WHERE active = 1", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_ne!(active, teacher);
    assert!(!site.root().join("state/models/student.json").exists());
    let before = site.query_i64("SELECT MAX(seq) FROM records");
    let again = part(&site, "gain_drift", 100, 150);
    assert!(
        site.sensei(&["replay", again.to_str().unwrap()])
            .status
            .success()
    );
    let served = student_after(&site, before);
    assert_ne!(served, teacher);
    let out = site.sensei(&["rollback"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("nothing to roll back to"),
        "{}",
        text(&out)
    );
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM student_promotions WHERE kind = 'rollback'"),
        1
    );
}

#[test]
fn a_rejected_candidate_is_promoted_only_with_force_and_old_copies_are_pruned() {
    let site = site_with_drifted_stream(&redistill_config(
        r#"["sh", "-c", "cp \"$1\" \"$2\"", "job", "{student}", "{output}", "{dataset}"]"#,
        "keep_students = 1",
    ));
    let out = site.sensei(&["redistill"]);
    assert!(text(&out).contains("gate: rejected"), "{}", text(&out));
    let candidate = site.root().join("state/redistill/job-1/student.onnx");
    // The candidate is the serving student itself.
    let out = site.sensei(&["promote", candidate.to_str().unwrap(), "--force"]);
    assert!(
        text(&out).contains("is the serving student already"),
        "{}",
        text(&out)
    );
    // The teacher is not a job's candidate: no gate applies, and it may be promoted by hand.
    let out = site.sensei(&["promote", demo("teacher.onnx").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // Now the job's candidate (the original student) differs from the serving one, but the gate
    // rejected it.
    let out = site.sensei(&["promote", candidate.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(text(&out).contains("--force"), "{}", text(&out));
    let out = site.sensei(&["promote", candidate.to_str().unwrap(), "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = site.sensei(&["promote", demo("teacher.onnx").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    // Three promotions, keep_students = 1: the serving copy and one previous remain.
    let mut models: Vec<String> = std::fs::read_dir(site.root().join("state/models"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|m| m.ends_with(".onnx"))
        .collect();
    models.sort();
    assert_eq!(models.len(), 2, "{models:?}");
    assert!(models[0].starts_with("student-2-") && models[1].starts_with("student-3-"));
    assert_eq!(site.query_i64("SELECT COUNT(*) FROM student_promotions"), 3);
}

/// The loop in the running daemon with the reference distiller as the job: a drifted stream
/// raises a drift event, the alert rule asks for a re-distillation, the daemon runs
/// tools/distill/redistill.py on the buffer, the gate passes its candidate on the held-out
/// records, the operator promotes it, a reload serves it, and the rest of the stream disagrees
/// with the teacher less than the old student does on the same records.
#[test]
fn drift_alert_job_gate_promotion_and_reload_close_the_loop_in_the_daemon() {
    close_the_loop(Loop::Distiller);
}

/// The same with `auto_promote`: the daemon promotes the candidate the gate passed and reloads.
/// The job hands back a copy of the teacher (the ideal re-distillation), so the promoted
/// student must agree with the teacher as well as on the lab set.
#[test]
fn with_auto_promote_the_daemon_promotes_a_passed_candidate_and_serves_it() {
    close_the_loop(Loop::AutoTeacherCopy);
}

#[derive(Clone, Copy, PartialEq)]
enum Loop {
    /// The reference distiller; the operator promotes.
    Distiller,
    /// A copy of the teacher as the candidate; the daemon promotes.
    AutoTeacherCopy,
}

/// Waits for a condition like `common::wait_until`, but a timeout shows the daemon's log.
fn until(
    daemon: &crate::common::Daemon,
    timeout: std::time::Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
) {
    let deadline = std::time::Instant::now() + timeout;
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for: {what}; daemon log:\n{}",
            daemon.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

fn close_the_loop(kind: Loop) {
    let auto = kind == Loop::AutoTeacherCopy;
    let site = Site::with_models(demo("student.onnx"), demo("teacher.onnx"));
    let notifications = site.root().join("notifications.jsonl");
    site.write_config(&format!(
        "[sampling]\nrate = 1.0\nseed = 3\nmax_per_minute = 1000000\nqueue = 100000\n\
         [alerts]\nevaluation_interval = \"200ms\"\n\
         [receivers.log]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", \"cat >> \\\"$0\\\"; echo >> \\\"$0\\\"\", {:?}]\n\
         [[rules]]\nname = \"student-drifts\"\nsignal = \"disagreement\"\nreceivers = [\"log\"]\naction = \"redistill\"\n{}",
        notifications.display().to_string(),
        match kind {
            // Half the buffer held out: enough records for the gate's sign test to have power.
            Loop::Distiller => redistill_config(&distiller_command(10), "holdout = 0.5"),
            Loop::AutoTeacherCopy => redistill_config(
                r#"["sh", "-c", "cp \"$1\" \"$2\"", "job", "{teacher}", "{output}", "{dataset}"]"#,
                "auto_promote = true",
            ),
        }
    ));
    assert!(
        site.sensei(&["baseline", demo("lab.jsonl").to_str().unwrap()])
            .status
            .success()
    );
    let p0: f64 = site
        .db()
        .query_row(
            "SELECT json_extract(profile, '$.disagreement.rate') FROM baselines WHERE active = 1",
            [],
            |r| r.get::<_, Option<f64>>(0),
        )
        .unwrap()
        .unwrap_or(0.026);
    let mut daemon = site.start();
    // Generous: the suite runs this beside CPU-heavy tests on two cores.
    let wait = std::time::Duration::from_secs(180);

    // 1-2. The drifted part of the stream (the drift starts at record 201): event, alert.
    let first = std::fs::read(part(&site, "offset_drift", 0, 400)).unwrap();
    site.deliver("offset_drift-a.jsonl", &first);
    until(&daemon, wait, "a disagreement drift event", || {
        site.query_i64("SELECT COUNT(*) FROM drift_events WHERE signal = 'disagreement'") > 0
    });
    until(&daemon, wait, "the alert's re-distillation request", || {
        site.query_i64("SELECT COUNT(*) FROM alert_actions WHERE action = 'redistill'") > 0
    });
    // 3-5. The job, its candidate and the gate.
    until(&daemon, wait, "the job to end", || {
        site.query_i64(
            "SELECT COUNT(*) FROM redistill_jobs WHERE status NOT IN ('queued', 'running')",
        ) > 0
    });
    let (status, _, detail) = job(&site, 1);
    assert_eq!(status, "succeeded", "{detail}");
    let (trigger, gate): (String, String) = site
        .db()
        .query_row(
            "SELECT trigger, gate FROM redistill_jobs WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(trigger, "alert:student-drifts");
    assert_eq!(gate, "passed", "{detail}");
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM alert_actions WHERE status = 'done'"),
        1
    );
    let evidence = gate_evidence(&site, 1);
    eprintln!("gate evidence: {evidence}");
    let held = &evidence["holdout"];
    let number = |v: &serde_json::Value| v.as_f64().unwrap();
    // The records the job never saw (a fifth of the 400 in the buffer, or half with the
    // distiller), the candidate agreeing with the teacher more often, significantly.
    let held_out = if kind == Loop::Distiller { 150.0 } else { 60.0 };
    assert!(number(&held["records"]) >= held_out, "{evidence}");
    assert!(
        number(&held["candidate_agreement"]) >= number(&held["student_agreement"]) + 0.03,
        "{evidence}"
    );
    assert!(number(&held["p_value"]) < 0.05, "{evidence}");
    // The lab set was checked, and the candidate is within the tolerance on it.
    let lab = &evidence["lab"];
    assert_eq!(lab["records"], 270, "{evidence}");
    assert!(
        number(&lab["candidate_disagreement"]) <= number(&lab["student_disagreement"]) + 0.02,
        "{evidence}"
    );
    let before: f64 = site
        .db()
        .query_row(
            "SELECT AVG(disagreement) FROM teacher_samples WHERE seq > 200 AND seq <= 400",
            [],
            |r| r.get(0),
        )
        .unwrap();

    // 6. Promotion (by the daemon, or by the operator), applied by a reload.
    if auto {
        until(&daemon, wait, "the promotion", || {
            site.query_i64("SELECT COUNT(*) FROM student_promotions WHERE job_id = 1") == 1
        });
    } else {
        let candidate = site.root().join("state/redistill/job-1/student.onnx");
        let out = site.sensei(&["promote", candidate.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        daemon.signal("HUP");
    }
    until(&daemon, wait, "the reload", || {
        daemon.log_text().contains("The new config is applied")
    });
    assert!(daemon.alive());

    // 7. The rest of the drifted stream disagrees less than before, and no more than the lab.
    let rest = std::fs::read(part(&site, "offset_drift", 400, 450)).unwrap();
    site.deliver("offset_drift-b.jsonl", &rest);
    let deadline = std::time::Instant::now() + 2 * wait;
    while site.records() < 450 {
        assert!(
            std::time::Instant::now() < deadline,
            "the rest of the stream was not processed ({} records); daemon log:\n{}",
            site.records(),
            daemon.log_text()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let after: f64 = site
        .db()
        .query_row(
            "SELECT AVG(disagreement) FROM teacher_samples WHERE seq > 400",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(daemon.stop().success());
    let metrics = sensei::metrics::Metrics::new(site.db_path()).encode();
    for series in [
        "sensei_redistill_jobs_total{status=\"succeeded\"} 1.0\n",
        "sensei_student_promotions_total{kind=\"promote\"} 1.0\n",
    ] {
        assert!(metrics.contains(series), "{series} in:\n{metrics}");
    }
    assert!(before > p0 + 0.05, "before {before}, lab {p0}");
    match kind {
        Loop::Distiller => {
            // The old student on the same records, in a site of its own.
            let control = Site::with_models(demo("student.onnx"), demo("teacher.onnx"));
            control.write_config(
                "[sampling]\nrate = 1.0\nseed = 3\nmax_per_minute = 1000000\nqueue = 100000\n",
            );
            let out = control.sensei(&[
                "replay",
                part(&control, "offset_drift", 400, 450).to_str().unwrap(),
            ]);
            assert!(out.status.success(), "{}", text(&out));
            let old: f64 = control
                .db()
                .query_row("SELECT AVG(disagreement) FROM teacher_samples", [], |r| {
                    r.get(0)
                })
                .unwrap();
            eprintln!(
                "disagreement: lab {p0:.3}, drifted before promotion {before:.3}; \
                 records 401-450: old student {old:.3}, re-distilled student {after:.3}"
            );
            assert!(after <= old - 0.1, "after {after}, old student {old}");
        }
        Loop::AutoTeacherCopy => {
            eprintln!(
                "disagreement: lab {p0:.3}, drifted before promotion {before:.3}, after {after:.3}"
            );
            assert!(after <= p0, "after {after}, lab {p0}");
        }
    }
}

#[test]
fn status_lists_the_latest_jobs_and_check_finds_a_missing_job_program() {
    let site = Site::new();
    site.write_config(&redistill_config(
        r#"["true", "{dataset}", "{output}"]"#,
        "",
    ));
    let data = site.root().join("field.jsonl");
    std::fs::write(&data, crate::common::jsonl("j", 120)).unwrap();
    let out = site.sensei(&["replay", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    for _ in 0..2 {
        let out = site.sensei(&["redistill", "--force", "--reason", "status test"]);
        assert!(!out.status.success(), "{}", text(&out));
    }

    let out = site.sensei(&["status"]);
    let shown = text(&out);
    assert!(out.status.success(), "{shown}");
    let listing = shown
        .split("re-distillation jobs (latest first):\n")
        .nth(1)
        .unwrap_or_else(|| panic!("no job listing in\n{shown}"));
    let lines: Vec<&str> = listing.lines().take(2).collect();
    assert!(lines[0].starts_with("  #2 failed "), "{shown}");
    assert!(lines[1].starts_with("  #1 failed "), "{shown}");
    assert!(
        lines[0].contains("(manual)") && lines[0].contains("was not written"),
        "{shown}"
    );

    let out = site.sensei(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = json["redistill_jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    assert_eq!(
        (jobs[0]["id"].as_i64(), jobs[0]["status"].as_str()),
        (Some(2), Some("failed"))
    );
    assert_eq!(jobs[1]["reason"], "status test");

    // `check` says when the job's program cannot be started.
    assert!(site.sensei(&["check"]).status.success());
    let missing = site.root().join("no-such-distiller");
    site.write_config(&redistill_config(
        &format!(
            r#"[{:?}, "{{dataset}}", "{{output}}"]"#,
            missing.display().to_string()
        ),
        "",
    ));
    let out = site.sensei(&["check"]);
    assert_eq!(out.status.code(), Some(78), "{}", text(&out));
    assert!(
        text(&out).contains(&format!(
            "redistill.command: the program {} cannot be used",
            missing.display()
        )),
        "{}",
        text(&out)
    );
}

/// The `redistill-failing` notifications the webhook received, as JSON documents.
fn failing_notices(hook: &crate::common::alerting::Webhook) -> Vec<serde_json::Value> {
    hook.received()
        .iter()
        .filter_map(|r| serde_json::from_str::<serde_json::Value>(&r.body).ok())
        .filter(|doc| doc["rule"] == "redistill-failing")
        .collect()
}

/// Raises drift episodes that each ask for a re-distillation (the rule's action), one after
/// the other, until `jobs` jobs have ended.
fn keep_asking_for_jobs(site: &Site, jobs: i64) {
    use crate::common::alerting::{insert_drift, now_ms, resolve_all};
    let wait = std::time::Duration::from_secs(60);
    let db = site.db();
    while site.query_i64("SELECT COUNT(*) FROM redistill_jobs WHERE finished_at IS NOT NULL") < jobs
    {
        let before = site.query_i64("SELECT COALESCE(MAX(id), 0) FROM alert_actions");
        insert_drift(&db, "disagreement", "line=A", now_ms());
        crate::common::wait_until(wait, "the alert's re-distillation request", || {
            site.query_i64("SELECT COALESCE(MAX(id), 0) FROM alert_actions") > before
        });
        crate::common::wait_until(wait, "the request taken or skipped", || {
            site.query_i64(
                "SELECT COUNT(*) FROM alert_actions WHERE id = (SELECT MAX(id) FROM alert_actions)
                 AND status != 'requested'",
            ) == 1
        });
        resolve_all(&db, now_ms());
        crate::common::wait_until(wait, "the drift alert resolved", || {
            site.query_i64(
                "SELECT COUNT(*) FROM alert_state WHERE rule = 'line-drift' AND status = 'resolved'",
            ) == 1
        });
    }
}

/// A job that can never succeed while drift keeps asking for one: the jobs start ever more
/// rarely (the interval doubles per failure, up to max_backoff), the webhook hears once that
/// re-distillation keeps failing — not again after a restart, however many more jobs fail —
/// and once that it works again; the student keeps serving and files keep being processed.
#[test]
fn a_job_that_keeps_failing_backs_off_and_is_announced_once() {
    use crate::common::alerting::{Webhook, alerts_section, wait_evaluations};
    let hook = Webhook::start();
    let site = Site::new();
    let config = |command: &str, settings: &str| {
        format!(
            "{}[receivers.hook]\ntype = \"webhook\"\nurl = \"{}\"\ntimeout = \"2s\"\n\
             [[rules]]\nname = \"line-drift\"\nsegment = \"line=*\"\nrepeat_interval = \"1h\"\n\
             send_resolved = false\nreceivers = [\"hook\"]\naction = \"redistill\"\n{}",
            alerts_section(""),
            hook.url(),
            redistill_config(command, settings)
        )
    };
    let failing = r#"["false", "{dataset}", "{output}"]"#;
    site.write_config(&config(
        failing,
        "min_interval = \"1s\"\nmax_backoff = \"3s\"",
    ));
    let data = site.root().join("field.jsonl");
    std::fs::write(&data, crate::common::jsonl("j", 120)).unwrap();
    let out = site.sensei(&["replay", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let student: String = site
        .db()
        .query_row("SELECT DISTINCT student FROM records", [], |r| r.get(0))
        .unwrap();

    let daemon = site.start();
    keep_asking_for_jobs(&site, 2);
    crate::common::wait_until(
        std::time::Duration::from_secs(60),
        "the keeps-failing notification",
        || !failing_notices(&hook).is_empty(),
    );
    // A restart in the middle of the streak: it is remembered, not announced again.
    assert!(daemon.stop().success());
    let daemon = site.start();
    keep_asking_for_jobs(&site, 5);
    // The daemon keeps processing files while its jobs fail.
    site.deliver("more.jsonl", &crate::common::jsonl("k", 40));
    crate::common::wait_until(
        std::time::Duration::from_secs(60),
        "the new file processed",
        || site.records() == 160,
    );
    wait_evaluations(&site.db(), 3);
    assert!(daemon.stop().success());

    // Start to start, the wait doubles from min_interval (1 s) per failure, capped at 3 s.
    let jobs: Vec<(i64, String, i64)> = {
        let db = site.db();
        let mut stmt = db
            .prepare("SELECT id, status, started_at FROM redistill_jobs ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert!(jobs.len() >= 5, "{jobs:?}");
    let gaps: Vec<i64> = jobs.windows(2).map(|p| p[1].2 - p[0].2).collect();
    eprintln!("start-to-start gaps of the failing jobs (ms): {gaps:?}");
    assert!(jobs.iter().all(|j| j.1 == "failed"), "{jobs:?}");
    let expected_wait = |failures: usize| [1_000, 1_000, 2_000, 3_000][failures.min(3)];
    for (k, pair) in jobs.windows(2).enumerate() {
        let gap = pair[1].2 - pair[0].2;
        assert!(
            gap >= expected_wait(k + 1),
            "job {} started {gap} ms after job {}: {jobs:?}",
            pair[1].0,
            pair[0].0
        );
    }
    // Requests in between were skipped, saying why and until when.
    let skipped: Vec<String> = {
        let db = site.db();
        let mut stmt = db
            .prepare("SELECT detail FROM alert_actions WHERE status = 'skipped' ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    let mut backed_off = 0;
    for detail in &skipped {
        let Some(rest) = detail.strip_prefix("rate-limited: ") else {
            panic!("{detail}");
        };
        let Some((failures, _)) = rest.split_once(" jobs in a row failed (the latest is job ")
        else {
            continue;
        };
        let failures: usize = failures.parse().unwrap();
        let latest: i64 = rest
            .split("the latest is job ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("{detail}"));
        let started = jobs.iter().find(|j| j.0 == latest).unwrap().2;
        let next = sensei::time::rfc3339(started + expected_wait(failures));
        assert!(
            detail.ends_with(&format!("next allowed at {next}")),
            "{detail}: expected {next}"
        );
        backed_off += 1;
    }
    assert!(backed_off > 0, "no request met the back-off: {skipped:?}");

    // One notification for the streak, across the restart and the later failures.
    let notices = failing_notices(&hook);
    assert_eq!(notices.len(), 1, "{notices:#?}");
    let f = &notices[0]["redistill"];
    assert_eq!(notices[0]["status"], "firing");
    assert_eq!(notices[0]["dedup_key"], "redistill-failing.job-1.1");
    assert_eq!(
        (f["failures"].as_i64(), f["first_job"].as_i64()),
        (Some(2), Some(1))
    );
    assert_eq!(
        (f["last_job"].as_i64(), f["last_status"].as_str()),
        (Some(2), Some("failed"))
    );
    assert!(
        f["last_detail"]
            .as_str()
            .unwrap()
            .starts_with("the command failed (exit status 1)"),
        "{f}"
    );
    assert!(f["log"].as_str().unwrap().ends_with("job-2/job.log"), "{f}");
    assert_eq!(
        f["next_allowed_at"].as_str().unwrap(),
        sensei::time::rfc3339(jobs[1].2 + 2_000)
    );
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM alert_outbox WHERE rule = 'redistill-failing'"),
        1
    );

    // By hand, without --force, the back-off is what the command reports.
    let failed = jobs.len();
    site.write_config(&config(
        failing,
        "min_interval = \"1h\"\nmax_backoff = \"7d\"",
    ));
    let out = site.sensei(&["redistill"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&format!(
            "{failed} jobs in a row failed (the latest is job {failed}), so the wait after its start is [redistill] min_interval × 2^{}",
            failed - 1
        )),
        "{}",
        text(&out)
    );

    // A job that succeeds ends the streak: one resolved notification, written by the command
    // and delivered by the daemon.
    site.write_config(&config(
        r#"["sh", "-c", "cp \"$1\" \"$2\"", "job", "{student}", "{output}", "{dataset}"]"#,
        "min_interval = \"1h\"",
    ));
    let out = site.sensei(&["redistill", "--force"]);
    assert!(out.status.success(), "{}", text(&out));
    let daemon = site.start();
    crate::common::wait_until(
        std::time::Duration::from_secs(60),
        "the resolved notification",
        || failing_notices(&hook).len() == 2,
    );
    wait_evaluations(&site.db(), 3);
    let notices = failing_notices(&hook);
    assert_eq!(notices.len(), 2, "{notices:#?}");
    assert_eq!(notices[1]["status"], "resolved");
    assert_eq!(notices[1]["alert_id"], notices[0]["alert_id"]);
    assert_eq!(
        notices[1]["redistill"]["resolved_by_job"].as_i64(),
        Some(failed as i64 + 1)
    );
    assert!(daemon.stop().success());

    // The student never changed.
    assert_eq!(site.query_i64("SELECT COUNT(*) FROM student_promotions"), 0);
    assert!(!site.root().join("state/models/student.json").exists());
    let served: Vec<String> = {
        let db = site.db();
        let mut stmt = db.prepare("SELECT DISTINCT student FROM records").unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    };
    assert_eq!(served, [student]);
}
