//! A record's id identifies it, and a label reaches a record's error detectors once: the demo
//! streams replayed twice, labels sent twice, corrected, sent out of order, or out of range.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::drift::{demo, site_with_baseline};
use crate::common::Site;

fn replay(site: &Site, files: &[&Path]) -> String {
    let mut args = vec!["replay"];
    args.extend(files.iter().map(|f| f.to_str().unwrap()));
    let out = site.sensei(&args);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// Replays one file that is to be quarantined: with nothing committed, the replay exits 65.
fn replay_quarantined(site: &Site, file: &Path) -> String {
    let out = site.sensei(&["replay", file.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(65), "{text}");
    text
}

/// Observations the all-segments student-error detector has counted.
fn student_error_samples(site: &Site) -> i64 {
    site.query_i64(
        "SELECT samples FROM detector_state
         WHERE signal = 'student_error' AND segment = '*' AND detector = 'bernoulli_cusum'",
    )
}

/// A file of labels, modified at `age` before now (its arrival).
fn labels_file(site: &Site, name: &str, labels: &[(&str, i64)], age: Duration) -> PathBuf {
    let path = site.root().join(name);
    let text: String = labels
        .iter()
        .map(|(id, label)| format!("{{\"id\": \"{id}\", \"label\": {label}}}\n"))
        .collect();
    std::fs::write(&path, text).unwrap();
    let file = std::fs::File::options().write(true).open(&path).unwrap();
    file.set_modified(SystemTime::now() - age).unwrap();
    path
}

/// The demo's clean stream without its inline labels, as a file of its own.
fn clean_without_labels(site: &Site, records: usize) -> PathBuf {
    let text = std::fs::read_to_string(demo("streams/clean.jsonl")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .take(records)
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("label");
            v.to_string()
        })
        .collect();
    let path = site
        .root()
        .join(format!("clean-{records}-unlabelled.jsonl"));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn an_id_counts_once_whichever_file_brings_it_again() {
    let site = site_with_baseline();
    replay(&site, &[&demo("streams/clean.jsonl")]);
    let samples = site.query_i64("SELECT COUNT(*) FROM teacher_samples");
    let errors = student_error_samples(&site);
    // The same 450 ids again, as .npz: nothing is counted twice, not even by the detectors.
    replay(&site, &[&demo("streams/clean.npz")]);
    assert_eq!(site.records(), 450);
    assert_eq!(
        site.query_i64("SELECT COUNT(DISTINCT record_id) FROM records"),
        450
    );
    assert_eq!(
        site.query_i64("SELECT duplicates FROM files WHERE name = 'clean.npz'"),
        450
    );
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM teacher_samples"),
        samples
    );
    assert_eq!(
        site.query_i64("SELECT COUNT(DISTINCT record_id) FROM teacher_samples"),
        samples
    );
    assert_eq!(student_error_samples(&site), errors);
    assert_eq!(
        site.query_i64("SELECT SUM(records) FROM windows WHERE segment = '*'"),
        450
    );
    // The view gives each record its producer's id back.
    assert_eq!(
        site.query_i64(
            "SELECT COUNT(*) FROM records WHERE record_id = printf('clean-%06d', seq - 1)"
        ),
        450
    );
    let status = site.sensei(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["records_duplicate"], 450, "{v}");
    let text = String::from_utf8_lossy(&site.sensei(&["status"]).stdout).into_owned();
    assert!(
        text.contains("ids counted before: 450 records left out"),
        "{text}"
    );
}

#[test]
fn a_label_reaches_the_error_detectors_once_and_a_correction_is_kept_not_counted_again() {
    let site = site_with_baseline();
    // The clean stream brings its labels inline: one observation per record.
    replay(&site, &[&demo("streams/clean.jsonl")]);
    assert_eq!(student_error_samples(&site), 450);
    // The same labels again, as late labels, twice in two files: nothing changes.
    let same: Vec<(String, i64)> = std::fs::read_to_string(demo("streams/clean.labels.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["id"].as_str().unwrap().to_string(),
                v["label"].as_i64().unwrap(),
            )
        })
        .collect();
    let pairs: Vec<(&str, i64)> = same.iter().map(|(i, l)| (i.as_str(), *l)).collect();
    let first = labels_file(&site, "again.labels.jsonl", &pairs, Duration::from_secs(60));
    let second = labels_file(&site, "again2.labels.jsonl", &pairs[..100], Duration::ZERO);
    replay(&site, &[&first, &second]);
    assert_eq!(student_error_samples(&site), 450);
    assert_eq!(
        site.query_i64("SELECT duplicates FROM files WHERE name = 'again.labels.jsonl'"),
        450
    );
    // A correction: the record keeps the new label, the detectors do not count it again.
    let (id, label) = &same[7];
    let corrected = (label + 1) % 10;
    let fix = labels_file(
        &site,
        "fix.labels.jsonl",
        &[(id, corrected)],
        Duration::ZERO,
    );
    replay(&site, &[&fix]);
    assert_eq!(
        site.query_i64(&format!(
            "SELECT label FROM records WHERE record_id = '{id}'"
        )),
        corrected
    );
    assert_eq!(
        site.query_i64("SELECT conflicts FROM files WHERE name = 'fix.labels.jsonl'"),
        1
    );
    assert_eq!(student_error_samples(&site), 450);
    let status = site.sensei(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(
        (
            v["labels_corrected"].as_i64(),
            v["labels_unchanged"].as_i64()
        ),
        (Some(1), Some(550))
    );
}

#[test]
fn the_label_written_last_wins_whichever_file_is_taken_first() {
    let site = site_with_baseline();
    // Labels for records that have not arrived: the correction (written a minute after the
    // first labels) is taken first, as the start-up scan after a crash may do.
    let older = labels_file(
        &site,
        "b-older.labels.jsonl",
        &[("clean-000000", 1), ("clean-000001", 1)],
        Duration::from_secs(120),
    );
    let newer = labels_file(
        &site,
        "a-newer.labels.jsonl",
        &[("clean-000000", 2)],
        Duration::from_secs(60),
    );
    replay(&site, &[&newer, &older]);
    assert_eq!(
        site.query_i64("SELECT duplicates FROM files WHERE name = 'b-older.labels.jsonl'"),
        1,
        "the older label of clean-000000 changed nothing"
    );
    replay(&site, &[&clean_without_labels(&site, 10)]);
    let label = |id: &str| {
        site.query_i64(&format!(
            "SELECT label FROM records WHERE record_id = '{id}'"
        ))
    };
    assert_eq!((label("clean-000000"), label("clean-000001")), (2, 1));
    // Each record's waiting label was one observation.
    assert_eq!(student_error_samples(&site), 2);
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM late_labels WHERE matched = 0"),
        0
    );
    // The same again after the records arrived: an older label after a newer one.
    let late_old = labels_file(
        &site,
        "late-old.labels.jsonl",
        &[("clean-000002", 4)],
        Duration::from_secs(300),
    );
    let late_new = labels_file(
        &site,
        "late-new.labels.jsonl",
        &[("clean-000002", 5)],
        Duration::ZERO,
    );
    replay(&site, &[&late_new]);
    replay(&site, &[&late_old]);
    assert_eq!(label("clean-000002"), 5);
    assert_eq!(student_error_samples(&site), 3);
}

#[test]
fn a_label_that_is_not_a_class_of_the_model_quarantines_its_file() {
    let site = Site::with_models(demo("student.onnx"), demo("teacher.onnx"));
    site.write_config("");
    for (name, label) in [
        ("ten", "10"),
        ("minus", "-1"),
        ("huge", "9223372036854775807"),
    ] {
        let path = site.root().join(format!("{name}.labels.jsonl"));
        std::fs::write(
            &path,
            format!("{{\"id\": \"a\", \"label\": 3}}\n{{\"id\": \"b\", \"label\": {label}}}\n"),
        )
        .unwrap();
        let text = replay_quarantined(&site, &path);
        assert!(text.contains("1 quarantined"), "{name}: {text}");
    }
    let reasons: Vec<String> = {
        let db = site.db();
        let mut stmt = db
            .prepare("SELECT reason FROM files WHERE status = 'quarantined' ORDER BY id")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    assert_eq!(reasons.len(), 3);
    assert!(
        reasons[0].contains(
            "line 2: label 10 is not a class of the model: the student has 10 classes, 0 to 9"
        ),
        "{reasons:?}"
    );
    // A record's own label is checked too.
    let text = std::fs::read_to_string(demo("streams/clean.jsonl")).unwrap();
    let mut v: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    v["label"] = 12.into();
    let path = site.root().join("bad-label.jsonl");
    std::fs::write(&path, format!("{v}\n")).unwrap();
    let out = replay_quarantined(&site, &path);
    assert!(out.contains("1 quarantined"), "{out}");
    assert_eq!(site.records(), 0);
}
