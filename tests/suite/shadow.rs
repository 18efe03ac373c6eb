//! Challengers in shadow: run beside the teacher on its samples only, persisted with the
//! records, judged by `sensei report`; a broken challenger is reported and skipped.

use std::path::Path;

use crate::common::{Site, fixture_model, jsonl};

/// `[[challengers]]` entries for (name, model path) pairs, with the verdict's floor.
fn challengers(models: &[(&str, &Path)], floor: f64) -> String {
    let mut s = format!("[shadow]\nagreement_floor = {floor}\n");
    for (name, path) in models {
        s.push_str(&format!(
            "[[challengers]]\nname = {name:?}\npath = {:?}\n",
            path.display().to_string()
        ));
    }
    s
}

fn replay(site: &Site, file: &Path) -> String {
    let out = site.sensei(&["replay", file.to_str().unwrap()]);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{text}");
    text
}

/// Rows of a query as strings, in order, for comparing two databases.
fn rows(site: &Site, sql: &str) -> Vec<String> {
    let db = site.db();
    let mut stmt = db.prepare(sql).unwrap();
    let n = stmt.column_count();
    stmt.query_map([], |r| {
        let mut cells = Vec::with_capacity(n);
        for i in 0..n {
            let v: rusqlite::types::Value = r.get(i)?;
            cells.push(format!("{v:?}"));
        }
        Ok(cells.join("|"))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

const RECORDS: usize = 240;

#[test]
fn challengers_run_on_teacher_samples_only_and_the_report_names_the_smallest_that_agrees() {
    let lite = fixture_model("teacher_no_attention.onnx");
    let tiny = fixture_model("low_rank.onnx");
    let site = Site::new();
    site.write_config(&challengers(&[("lite", &lite), ("tiny", &tiny)], 0.9));
    let data = site.root().join("field.jsonl");
    std::fs::write(&data, jsonl("f", RECORDS)).unwrap();
    replay(&site, &data);

    // The same records without challengers: the student's and teacher's rows must not change.
    let plain = Site::new();
    plain.write_config("");
    replay(&plain, &data);

    assert_eq!(site.records(), RECORDS as i64);
    let samples = site.query_i64("SELECT COUNT(*) FROM teacher_samples");
    assert!(samples > 60, "only {samples} teacher samples");
    for model in ["lite", "tiny"] {
        let n = site.query_i64(&format!(
            "SELECT COUNT(*) FROM shadow_samples WHERE model = '{model}'"
        ));
        assert_eq!(n, samples, "{model}: one row per teacher sample");
        let strays = site.query_i64(&format!(
            "SELECT COUNT(*) FROM shadow_samples s LEFT JOIN teacher_samples t ON t.seq = s.seq
             WHERE s.model = '{model}' AND t.seq IS NULL"
        ));
        assert_eq!(strays, 0, "{model}: a shadow row without a teacher sample");
        let totals = site.query_i64(&format!(
            "SELECT samples FROM shadow_totals WHERE model = '{model}'"
        ));
        assert_eq!(totals, samples, "{model}: totals count each sample once");
    }
    // The teacher's own logits without attention agree on every record; the low-rank one
    // does not; neither has an attention KL (no attention output).
    assert_eq!(
        site.query_i64("SELECT SUM(disagreement) FROM shadow_samples WHERE model = 'lite'"),
        0
    );
    assert!(
        site.query_i64("SELECT SUM(disagreement) FROM shadow_samples WHERE model = 'tiny'")
            > samples / 4
    );
    assert_eq!(
        site.query_i64("SELECT COUNT(attention_kl) FROM shadow_samples"),
        0
    );
    assert_eq!(
        site.query_i64("SELECT samples FROM shadow_totals WHERE kind = 'student'"),
        samples
    );

    let student_rows = "SELECT record_id, ts, segment, prediction, confidence, entropy, sampled
                        FROM records ORDER BY seq";
    let teacher_rows = "SELECT record_id, weight, student_prediction, teacher_prediction,
                               disagreement, kl, attention_kl, teacher_output, student_output
                        FROM teacher_samples ORDER BY seq";
    assert_eq!(rows(&site, student_rows), rows(&plain, student_rows));
    assert_eq!(rows(&site, teacher_rows), rows(&plain, teacher_rows));

    let html = site.root().join("report.html");
    let out = site.sensei(&["report", "--out", html.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let data: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let c = &data["challengers"];
    let names: Vec<&str> = c["standings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["student", "lite", "tiny"]);
    let chosen = &c["verdict"]["chosen"];
    assert_eq!(chosen["name"], "lite", "{c:#}");
    assert_eq!(chosen["size_bytes"], 3829);
    assert_eq!(chosen["teacher_bytes"], 4084);
    assert!(chosen["agreement_low"].as_f64().unwrap() >= 0.9);
    let tiny_row = &c["standings"][2];
    assert_eq!(tiny_row["meets_floor"], false);
    assert_eq!(tiny_row["size_bytes"], 812);
    assert_eq!(tiny_row["parameters"], 148);
    assert!(tiny_row["latency_us"].as_f64().is_some());
    assert_eq!(c["standings"][0]["samples"], samples);

    // /metrics says the same (read from the database at each scrape, as the daemon serves it).
    let metrics = sensei::metrics::Metrics::new(site.db_path()).encode();
    let series = |name: &str| -> f64 {
        let line = metrics
            .lines()
            .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("no series {name} in:\n{metrics}"));
        line[name.len() + 1..].parse().unwrap()
    };
    for model in ["student", "lite", "tiny"] {
        assert_eq!(
            series(&format!("sensei_shadow_samples_total{{model=\"{model}\"}}")),
            samples as f64
        );
    }
    assert_eq!(series("sensei_shadow_agreement_rate{model=\"lite\"}"), 1.0);
    assert!(series("sensei_shadow_agreement_rate{model=\"tiny\"}") < 0.75);
    assert!(series("sensei_shadow_agreement_rate_low{model=\"lite\"}") >= 0.9);
    assert!(series("sensei_shadow_latency_seconds_mean{model=\"tiny\"}") > 0.0);
    assert_eq!(
        series("sensei_shadow_model_size_bytes{model=\"lite\",kind=\"challenger\"}"),
        3829.0
    );
    assert_eq!(
        series("sensei_shadow_model_failed{model=\"tiny\",kind=\"challenger\"}"),
        0.0
    );

    // The text form says the same, and the page carries the section.
    let out = site.sensei(&["report", "--out", html.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("verdict: challenger 'lite' is the smallest model"),
        "{text}"
    );
    assert!(
        std::fs::read_to_string(&html)
            .unwrap()
            .contains("report-challengers")
    );

    // With a floor no model can meet on this many samples, the verdict says so.
    site.write_config(&challengers(&[("lite", &lite), ("tiny", &tiny)], 0.9999));
    let out = site.sensei(&["report", "--out", html.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("verdict: No model meets the agreement floor of 100.0%"),
        "{text}"
    );
}

#[test]
fn a_corrupt_challenger_is_reported_and_every_record_is_still_processed() {
    let site = Site::new();
    let corrupt = site.root().join("corrupt.onnx");
    std::fs::write(&corrupt, b"this is not an ONNX model").unwrap();
    let lite = fixture_model("teacher_no_attention.onnx");
    site.write_config(&challengers(&[("broken", &corrupt), ("lite", &lite)], 0.9));

    let check = site.sensei(&["check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(check.status.success(), "{text}");
    assert!(
        text.contains("warning: cannot load challenger 'broken' model"),
        "{text}"
    );
    assert!(text.contains("challenger 'lite': "), "{text}");

    let data = site.root().join("field.jsonl");
    std::fs::write(&data, jsonl("c", 120)).unwrap();
    let log = replay(&site, &data);
    assert!(log.contains("Shadow model skipped"), "{log}");

    assert_eq!(site.records(), 120);
    assert_eq!(site.ledger_count("done"), 1);
    let samples = site.query_i64("SELECT COUNT(*) FROM teacher_samples");
    assert!(samples > 0);
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM shadow_samples WHERE model = 'lite'"),
        samples
    );
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM shadow_samples WHERE model = 'broken'"),
        0
    );
    assert_eq!(
        site.query_i64(
            "SELECT COUNT(*) FROM shadow_models WHERE name = 'broken' AND status = 'failed'
             AND detail LIKE '%cannot load%' AND size_bytes = 25"
        ),
        1
    );

    let status = site.sensei(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("broken (challenger"), "{text}");
    assert!(text.contains("FAILED: cannot load"), "{text}");
    assert!(
        text.contains(&format!(
            "lite (challenger, {}): running, {samples} samples",
            lite.display()
        )),
        "{text}"
    );
    let status = site.sensei(&["status", "--json"]);
    let json: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let broken = json["shadow_models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "broken")
        .expect("broken listed");
    assert_eq!(broken["status"], "failed");
    let metrics = sensei::metrics::Metrics::new(site.db_path()).encode();
    assert!(
        metrics.contains("sensei_shadow_model_failed{model=\"broken\",kind=\"challenger\"} 1.0\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("sensei_shadow_model_failed{model=\"lite\",kind=\"challenger\"} 0.0\n"),
        "{metrics}"
    );
}

#[test]
fn check_reports_a_challenger_that_cannot_be_compared_with_the_teacher() {
    let site = Site::new();
    site.write_config(&challengers(
        &[
            ("five", &fixture_model("five_classes.onnx")),
            ("renamed", &fixture_model("renamed_output.onnx")),
        ],
        0.9,
    ));
    let out = site.sensei(&["check"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(
            "warning: challenger 'five' cannot be compared with the teacher: outputs are not \
             comparable: challenger 'five' 'logits' is [5], teacher 'logits' is [10]"
        ),
        "{text}"
    );
    assert!(
        text.contains("warning: challenger 'renamed' model")
            && text.contains("output 'logits' does not exist"),
        "{text}"
    );
}

#[test]
fn the_candidate_awaiting_a_decision_runs_in_shadow_until_it_is_promoted() {
    let site = Site::new();
    site.write_config("");
    let first = site.root().join("first.jsonl");
    std::fs::write(&first, jsonl("p", 20)).unwrap();
    replay(&site, &first);
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM shadow_models"),
        0,
        "nothing in shadow without challengers or a candidate"
    );

    // A job whose candidate the gate passed and nobody promoted yet.
    let candidate = site.root().join("candidate.onnx");
    std::fs::copy(fixture_model("teacher.onnx"), &candidate).unwrap();
    site.db()
        .execute(
            "INSERT INTO redistill_jobs (status, trigger, reason, requested_at, updated_at,
                 output, gate)
             VALUES ('succeeded', 'manual', 'test', 0, 0, ?1, 'passed')",
            [candidate.to_str().unwrap()],
        )
        .unwrap();
    let second = site.root().join("second.jsonl");
    std::fs::write(&second, jsonl("q", 120)).unwrap();
    replay(&site, &second);
    let job: i64 = site.query_i64("SELECT MAX(id) FROM redistill_jobs");
    let name = format!("candidate-{job}");
    assert_eq!(
        site.query_i64(&format!(
            "SELECT COUNT(*) FROM shadow_models WHERE name = '{name}' AND kind = 'candidate'
             AND status = 'running' AND job_id = {job}"
        )),
        1
    );
    let sampled_second =
        site.query_i64("SELECT COUNT(*) FROM teacher_samples WHERE record_id LIKE 'q-%'");
    assert!(sampled_second > 0);
    assert_eq!(
        site.query_i64(&format!(
            "SELECT COUNT(*) FROM shadow_samples WHERE model = '{name}'"
        )),
        sampled_second
    );
    // The teacher's own weights: it agrees on every sample, attention included.
    assert_eq!(
        site.query_i64(&format!(
            "SELECT SUM(disagreement) + SUM(attention_kl > 1e-6) FROM shadow_samples
             WHERE model = '{name}'"
        )),
        0
    );

    // Once promoted it is the student's business, not the shadow's.
    site.db()
        .execute(
            "INSERT INTO student_promotions (kind, promoted_at, model, sha256, previous,
                 previous_sha256, job_id, reason)
             VALUES ('promote', 0, ?1, 'x', 'y', 'z', ?2, 'test')",
            rusqlite::params![candidate.to_str().unwrap(), job],
        )
        .unwrap();
    let third = site.root().join("third.jsonl");
    std::fs::write(&third, jsonl("r", 40)).unwrap();
    replay(&site, &third);
    assert_eq!(site.query_i64("SELECT COUNT(*) FROM shadow_models"), 0);
    assert_eq!(
        site.query_i64(&format!(
            "SELECT COUNT(*) FROM shadow_samples WHERE model = '{name}'"
        )),
        sampled_second,
        "no candidate rows after the promotion"
    );
}

#[test]
fn a_challenger_failing_at_inference_is_marked_failed_and_skipped() {
    let site = Site::new();
    let lite = fixture_model("teacher_no_attention.onnx");
    let breaks = fixture_model("fails_at_run.onnx");
    site.write_config(&challengers(&[("breaks", &breaks), ("lite", &lite)], 0.9));
    // It loads and fits the teacher, so `check` has nothing to warn about.
    let check = site.sensei(&["check"]);
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success() && !text.contains("warning"),
        "{text}"
    );

    let data = site.root().join("field.jsonl");
    std::fs::write(&data, jsonl("e", 150)).unwrap();
    let log = replay(&site, &data);
    assert!(log.contains("Shadow model failed"), "{log}");

    assert_eq!(site.records(), 150);
    assert_eq!(site.ledger_count("done"), 1);
    let samples = site.query_i64("SELECT COUNT(*) FROM teacher_samples");
    assert!(samples > 0);
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM records WHERE sampled = 4"),
        0,
        "the teacher did not fail"
    );
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM shadow_samples WHERE model = 'lite'"),
        samples
    );
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM shadow_samples WHERE model = 'breaks'"),
        0
    );
    assert_eq!(
        site.query_i64(
            "SELECT COUNT(*) FROM shadow_models WHERE name = 'breaks' AND status = 'failed'
             AND detail LIKE '%inference failed%'"
        ),
        1
    );
    let html = site.root().join("report.html");
    let out = site.sensei(&["report", "--out", html.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("FAILED: challenger 'breaks' model inference failed"),
        "{text}"
    );
    assert!(text.contains("verdict: challenger 'lite'"), "{text}");
}
