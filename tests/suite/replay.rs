//! `sensei replay` and `sensei status`: the daemon's pipeline over given files.

use crate::common::{Site, jsonl};

#[test]
fn replay_counts_files_once_and_leaves_them_in_place() {
    let site = Site::new();
    site.write_config("");
    let data = site.root().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("a.jsonl"), jsonl("ra", 64)).unwrap();
    std::fs::write(data.join("b.jsonl"), jsonl("rb", 36)).unwrap();
    std::fs::write(data.join("bad.jsonl"), b"{not json\n").unwrap();
    let out = site.sensei(&["replay", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("2 files committed (100 records, 0 labels), 1 quarantined"),
        "{text}"
    );
    assert!(data.join("a.jsonl").is_file() && data.join("bad.jsonl").is_file());
    // The student's time: every record in batches of at most 16 (the config's max_batch), and
    // the model's share of the student's active time.
    let student = student_line(&text).unwrap_or_else(|| panic!("no student line: {text}"));
    assert_eq!(student.records, 100, "{text}");
    assert!(
        (100usize.div_ceil(16)..=100).contains(&student.batches),
        "{text}"
    );
    assert!(
        student.model_seconds <= student.active_seconds && student.active_seconds > 0.0,
        "{text}"
    );
    assert!(student.percent > 0.0 && student.percent <= 100.0, "{text}");
    // Replaying the same files again counts nothing new, and runs nothing.
    let again = site.sensei(&["replay", data.join("a.jsonl").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&again.stdout).into_owned();
    assert!(
        text.contains("0 files committed (0 records, 0 labels), 0 quarantined, 1 duplicates"),
        "{text}"
    );
    assert!(student_line(&text).is_none(), "{text}");
    assert_eq!(site.records(), 100);

    let status = site.sensei(&["status", "--json"]);
    assert!(status.status.success());
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["records"], 100);
    assert_eq!(v["files_done"], 2);
    assert_eq!(v["files_quarantined"], 1);
    let all = v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["segment"] == "*")
        .unwrap();
    let d = &all["disagreement"];
    let (est, low, high) = (
        d["estimate"].as_f64().unwrap(),
        d["low"].as_f64().unwrap(),
        d["high"].as_f64().unwrap(),
    );
    assert!(
        low <= est && est <= high && low >= 0.0 && high <= 1.0,
        "{d}"
    );
}

/// A replay whose every file is quarantined committed nothing: the summary names each file with
/// its reason, and the exit code (65, `EX_DATAERR`) says so to a script.
#[test]
fn a_replay_of_only_bad_files_names_each_and_fails() {
    let site = Site::new();
    site.write_config("");
    let data = site.root().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("bad.jsonl"), b"{not json\n").unwrap();
    std::fs::write(data.join("empty-inputs.jsonl"), b"{\"id\": \"x\"}\n").unwrap();
    let out = site.sensei(&["replay", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(65), "{text}");
    assert!(
        text.contains("0 files committed (0 records, 0 labels), 2 quarantined"),
        "{text}"
    );
    for name in ["bad.jsonl", "empty-inputs.jsonl"] {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("quarantined {name}: ")))
            .unwrap_or_else(|| panic!("no line for {name}: {text}"));
        assert!(line.contains("line 1"), "{line}");
    }
    assert!(text.contains("nothing was committed"), "{text}");
    // One good file beside the bad ones: the replay succeeds, and still names the bad ones.
    std::fs::write(data.join("good.jsonl"), jsonl("g", 4)).unwrap();
    let out = site.sensei(&["replay", data.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("quarantined bad.jsonl: "), "{text}");
}

#[test]
fn npz_records_carry_ids_segments_and_labels() {
    let site = Site::new();
    site.write_config("");
    let npz = crate::common::repo().join("tests/fixtures/records.npz");
    let out = site.sensei(&["replay", npz.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(site.records(), 6);
    // The summary counts the labels the records carried, not only those of label files.
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("(6 records, 6 labels)"), "{text}");
    assert_eq!(
        site.query_i64(
            "SELECT COUNT(*) FROM records WHERE record_id LIKE 'npz-%' AND label IS NOT NULL"
        ),
        6
    );
    assert_eq!(
        site.query_i64("SELECT SUM(records) FROM windows WHERE segment = 'line=B'"),
        3
    );
}

/// `sensei demo --json` on the bundled models: every stream fully counted, and the drift the
/// streams carry shows in the teacher–student agreement. The pipeline's log goes to the work
/// directory's demo.log, so the terminal shows the demo's output and nothing else.
#[test]
fn the_demo_reports_every_stream_and_sees_the_drift() {
    let work = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(crate::common::sensei_bin())
        .args(["demo", "--json", "--models"])
        .arg(crate::common::repo().join("models/demo"))
        .arg("--dir")
        .arg(work.path())
        .env("ORT_DYLIB_PATH", crate::common::ort_library())
        .env_remove("SENSEI_LOG")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.lines().count() < 5, "{stderr}");
    let log = std::fs::read_to_string(work.path().join("demo.log")).unwrap();
    assert!(log.contains("Drift detected"), "{log}");
    // One line per file that opened events, not one per event.
    let drift_lines = log.lines().filter(|l| l.contains("Drift detected")).count();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let events: usize = v["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["drift_events"].as_array().unwrap().len())
        .sum();
    assert!(
        drift_lines < events,
        "{drift_lines} lines for {events} events"
    );
    assert_eq!(
        v["log"].as_str().map(std::path::PathBuf::from),
        Some(work.path().canonicalize().unwrap().join("demo.log"))
    );
    // Each stream's config is kept and reads its database again.
    let again = std::process::Command::new(crate::common::sensei_bin())
        .arg("-c")
        .arg(work.path().join("clean.toml"))
        .args(["status", "--json"])
        .env("ORT_DYLIB_PATH", crate::common::ort_library())
        .output()
        .unwrap();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    let clean: serde_json::Value = serde_json::from_slice(&again.stdout).unwrap();
    assert_eq!(clean["records"], v["streams"][0]["records"], "{clean}");
    let streams = v["streams"].as_array().unwrap();
    assert!(streams.len() >= 4, "{} streams", streams.len());
    assert_eq!(streams[0]["name"], "clean");
    let streams_dir = crate::common::repo().join("models/demo/streams");
    for s in streams {
        let name = s["name"].as_str().unwrap();
        let lines = std::fs::read_to_string(streams_dir.join(format!("{name}.jsonl")))
            .unwrap()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count();
        assert_eq!(s["records"].as_u64().unwrap() as usize, lines, "{name}");
        assert!(s["teacher_samples"].as_u64().unwrap() > 0, "{name}");
        assert!(
            s["kl_mean"].as_f64().is_some() && s["attention_kl_mean"].as_f64().is_some(),
            "{name}"
        );
    }
    let clean_high = streams[0]["disagreement"]["high"].as_f64().unwrap();
    let worst = streams[1..]
        .iter()
        .map(|s| s["disagreement"]["estimate"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert!(
        worst > clean_high,
        "worst drifted {worst} vs clean upper bound {clean_high}"
    );
    // Drift detection: the clean stream raises no event; every drifted stream raises at least one,
    // after its documented drift start.
    for s in streams {
        let name = s["name"].as_str().unwrap();
        let events = s["drift_events"].as_array().unwrap();
        match s["drift_starts_at_record"].as_i64() {
            None => assert!(events.is_empty(), "{name}: {events:?}"),
            Some(start) => {
                assert!(!events.is_empty(), "{name}: no drift event");
                let first = events
                    .iter()
                    .map(|e| e["detected_at_record"].as_i64().unwrap())
                    .min()
                    .unwrap();
                assert!(
                    first >= start,
                    "{name}: first event at {first}, before the drift start {start}"
                );
            }
        }
    }
    // A drift confined to line B is reported on line B (and the fleet), never on line A.
    let line_b = streams
        .iter()
        .find(|s| s["name"] == "line_b_drift")
        .expect("line_b_drift stream");
    let segments: Vec<&str> = line_b["drift_events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["segment"].as_str().unwrap())
        .collect();
    assert!(segments.contains(&"line=B"), "{segments:?}");
    assert!(!segments.contains(&"line=A"), "{segments:?}");
    // The stream that drifts on one line only: that line's disagreement exceeds the other's.
    if let Some(s) = streams.iter().find(|s| s["name"] == "line_b_drift") {
        let seg = |name: &str| {
            s["segments"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| x["segment"] == name)
                .unwrap()["disagreement"]["estimate"]
                .as_f64()
                .unwrap()
        };
        assert!(
            seg("line=B") > seg("line=A"),
            "line B {} vs line A {}",
            seg("line=B"),
            seg("line=A")
        );
    }
}

/// The numbers of `sensei replay`'s "student: …" line.
struct StudentLine {
    records: u64,
    batches: usize,
    model_seconds: f64,
    percent: f64,
    active_seconds: f64,
}

fn student_line(text: &str) -> Option<StudentLine> {
    // "student: 100 records in 7 batches; 0.002 s in the model, 18% of the 0.011 s from the
    // first file to the last batch"
    let line = text.lines().find_map(|l| l.strip_prefix("student: "))?;
    let numbers: Vec<f64> = line
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .filter(|w| !w.is_empty() && *w != ".")
        .map(|w| w.parse().expect("a number"))
        .collect();
    let [records, batches, model_seconds, percent, active_seconds] = numbers[..] else {
        panic!("unexpected student line: {line}");
    };
    Some(StudentLine {
        records: records as u64,
        batches: batches as usize,
        model_seconds,
        percent,
        active_seconds,
    })
}
