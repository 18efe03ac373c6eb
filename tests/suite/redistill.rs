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
