//! Drift detection end to end: `sensei baseline` on the lab set, then the daemon's pipeline on
//! the demo field streams, with the demo teacher and student.

use std::path::PathBuf;

use crate::common::{Site, repo};

pub(super) fn demo(name: &str) -> PathBuf {
    repo().join("models/demo").join(name)
}

/// A site on the demo models, with a baseline from the demo lab set.
pub(super) fn site_with_baseline() -> Site {
    let site = Site::with_models(demo("student.onnx"), demo("teacher.onnx"));
    site.write_config(
        "[sampling]\nrate = 0.5\nseed = 7\nmax_per_minute = 1000000\nqueue = 100000\n",
    );
    let out = site.sensei(&["baseline", demo("lab.jsonl").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("baseline version 1 (active), 270 lab records"),
        "{text}"
    );
    site
}

/// (signal, segment, detector, detected_at_record) of every event, in order.
fn events(site: &Site) -> Vec<(String, String, String, i64)> {
    let db = site.db();
    let mut stmt = db
        .prepare(
            "SELECT signal, segment, detector, detected_at_record FROM drift_events ORDER BY id",
        )
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Writes the stream's lines `[from, to)` to a file of its own.
fn part(site: &Site, stream: &str, from: usize, to: usize) -> PathBuf {
    let text = std::fs::read_to_string(demo(&format!("streams/{stream}.jsonl"))).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let path = site.root().join(format!("{stream}-{from}-{to}.jsonl"));
    std::fs::write(&path, lines[from..to.min(lines.len())].join("\n") + "\n").unwrap();
    path
}

#[test]
fn the_clean_stream_raises_no_event_and_a_drifted_one_does_after_its_start() {
    let clean = site_with_baseline();
    let out = clean.sensei(&["replay", demo("streams/clean.jsonl").to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(events(&clean), Vec::new());

    let drifted = site_with_baseline();
    let out = drifted.sensei(&[
        "replay",
        demo("streams/offset_drift.jsonl").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let found = events(&drifted);
    assert!(found.iter().any(|e| e.0 == "disagreement"), "{found:?}");
    // One naming of signals: every stored name is a family or a family's member.
    for e in &found {
        let name: sensei::signal::SignalName = e.0.parse().unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(name.index.is_some(), e.2 == "psi", "{e:?}");
    }
    // Records are numbered from 1; the drift starts at stream index 200, i.e. record 201.
    assert!(found.iter().all(|e| e.3 >= 201), "{found:?}");
    // Every event carries its statistic, threshold and the values it compares.
    let incomplete = drifted.query_i64(
        "SELECT COUNT(*) FROM drift_events WHERE detector IN ('cusum', 'bernoulli_cusum')
         AND (baseline_value IS NULL OR current_value IS NULL OR estimated_change_record IS NULL
              OR statistic < threshold)",
    );
    assert_eq!(incomplete, 0);
    // status shows the baseline, the detectors and the events.
    let status = drifted.sensei(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(text.contains("baseline: version 1"), "{text}");
    assert!(text.contains("DRIFT") && text.contains(" open; "), "{text}");
}

/// Every alarm of every sequential detector is a row of `drift_alarms` and counts on its event:
/// the database's counts equal the alarms the detectors' own state counted.
#[test]
fn every_alarm_is_counted_in_the_database() {
    let site = site_with_baseline();
    let out = site.sensei(&["replay", demo("streams/noise.jsonl").to_str().unwrap()]);
    assert!(out.status.success());
    let db = site.db();
    let mut stmt = db
        .prepare(
            "SELECT d.signal, d.segment, d.detector,
                    COALESCE(json_extract(d.state, '$.detector.Rate.core.alarms'),
                             json_extract(d.state, '$.detector.Value.core.alarms')),
                    (SELECT COALESCE(SUM(e.alarms), 0) FROM drift_events e
                      WHERE e.signal = d.signal AND e.segment = d.segment AND e.detector = d.detector),
                    (SELECT COUNT(*) FROM drift_alarms a JOIN drift_events e ON e.id = a.event_id
                      WHERE e.signal = d.signal AND e.segment = d.segment AND e.detector = d.detector)
             FROM detector_state d WHERE d.detector IN ('cusum', 'bernoulli_cusum')",
        )
        .unwrap();
    let rows: Vec<(String, String, String, i64, i64, i64)> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!rows.is_empty());
    let total: i64 = rows.iter().map(|r| r.3).sum();
    assert!(total > 0, "{rows:?}");
    for r in &rows {
        assert_eq!((r.3, r.3), (r.4, r.5), "{r:?}");
    }
    // Each event's alarm count and latest alarm agree with its rows.
    let inconsistent = site.query_i64(
        "SELECT COUNT(*) FROM drift_events e WHERE e.alarms !=
            (SELECT COUNT(*) FROM drift_alarms a WHERE a.event_id = e.id)
         OR e.last_alarm_record != (SELECT MAX(a.detected_at_record) FROM drift_alarms a WHERE a.event_id = e.id)",
    );
    assert_eq!(inconsistent, 0);
}

/// `status` and `drift_events` show the same reference number for a signal (p0 for a rate), and
/// name record positions as `seq`, the `records.seq` they are.
#[test]
fn status_and_events_agree_on_the_reference_and_name_seq() {
    let site = site_with_baseline();
    let out = site.sensei(&[
        "replay",
        demo("streams/offset_drift.jsonl").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let db = site.db();
    let from_events: f64 = db
        .query_row(
            "SELECT baseline_value FROM drift_events WHERE signal = 'disagreement' LIMIT 1",
            [],
            |r| r.get(0),
        )
        .expect("a disagreement event");
    let status = site.sensei(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let shown = v["signals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["signal"] == "disagreement" && s["segment"] == "*")
        .unwrap()["baseline_value"]
        .as_f64()
        .unwrap();
    assert!(
        (shown - from_events).abs() < 1e-12,
        "status {shown} vs event {from_events}"
    );
    let text = String::from_utf8_lossy(&site.sensei(&["status"]).stdout).into_owned();
    assert!(text.contains(&format!("{from_events:.4}")), "{text}");
    let last_seq =
        site.query_i64("SELECT detected_at_record FROM drift_events ORDER BY id DESC LIMIT 1");
    assert!(text.contains(&format!(" at seq {last_seq}")), "{text}");
    assert!(!text.contains(" at record "), "{text}");
}

/// A teacher budget far below the record rate leaves the disagreement detector blind: the
/// replay summary, `status`, `/metrics` and the log say so, with the records it would need.
#[test]
fn a_starved_teacher_makes_a_blind_detector_that_is_reported() {
    let site = site_with_baseline();
    site.write_config("[sampling]\nrate = 0.5\nseed = 7\nmax_per_minute = 1\nqueue = 1\n");
    let out = site.sensei(&["replay", demo("streams/clean.jsonl").to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{text}{log}");
    let line = text
        .lines()
        .find(|l| l.starts_with("cannot see drift in this replay: disagreement on (all): "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("the replay committed 450 records"), "{line}");
    assert!(text.contains("BLIND detectors"), "{text}");
    assert!(log.contains("Drift detectors blind"), "{log}");
    let status = site.sensei(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let d = v["sightlines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["signal"] == "disagreement" && d["segment"] == "*")
        .expect("a disagreement sightline");
    assert_eq!(d["blind"], true, "{d}");
    assert!(
        d["expected_delay_records"]
            .as_f64()
            .unwrap_or(f64::INFINITY)
            > 450.0,
        "{d}"
    );
    // The confidence detector sees every record: not blind.
    let c = v["sightlines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["signal"] == "confidence" && d["segment"] == "*")
        .expect("a confidence sightline");
    assert_eq!(c["blind"], false, "{c}");
    let metrics = sensei::metrics::Metrics::new(site.db_path()).encode();
    assert!(
        metrics.contains(r#"sensei_detector_blind{signal="disagreement",segment="all",detector="bernoulli_cusum"} 1"#),
        "{metrics}"
    );
}

/// Processing a stream in two runs (a restart in between) gives exactly the events of one
/// uninterrupted run: detector state survives, and nothing fires twice.
#[test]
fn a_restart_neither_resets_nor_refires_a_detector() {
    let whole = site_with_baseline();
    let first = part(&whole, "gain_drift", 0, 300);
    let second = part(&whole, "gain_drift", 300, 450);
    let out = whole.sensei(&["replay", first.to_str().unwrap(), second.to_str().unwrap()]);
    assert!(out.status.success());

    let split = site_with_baseline();
    let first = part(&split, "gain_drift", 0, 300);
    let second = part(&split, "gain_drift", 300, 450);
    assert!(
        split
            .sensei(&["replay", first.to_str().unwrap()])
            .status
            .success()
    );
    assert!(
        split
            .sensei(&["replay", second.to_str().unwrap()])
            .status
            .success()
    );
    // Replaying the first part again is a duplicate: it must not feed the detectors again.
    assert!(
        split
            .sensei(&["replay", first.to_str().unwrap()])
            .status
            .success()
    );

    let expected = events(&whole);
    assert!(!expected.is_empty());
    assert_eq!(events(&split), expected);
}

#[test]
fn a_baseline_from_too_few_records_is_refused_clearly() {
    let site = Site::with_models(demo("student.onnx"), demo("teacher.onnx"));
    site.write_config("");
    let text = std::fs::read_to_string(demo("lab.jsonl")).unwrap();
    let few = site.root().join("few.jsonl");
    std::fs::write(
        &few,
        text.lines().take(40).collect::<Vec<_>>().join("\n") + "\n",
    )
    .unwrap();
    let out = site.sensei(&["baseline", few.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains("the lab set has 40 records; a baseline needs at least 100"),
        "{err}"
    );
    // Nothing was stored: the daemon would run without drift detection, and says so.
    assert_eq!(site.query_i64("SELECT COUNT(*) FROM baselines"), 0);
}

#[test]
fn a_class_that_never_occurs_in_the_lab_set_is_a_warning_not_a_nan() {
    let site = Site::with_models(demo("student.onnx"), demo("teacher.onnx"));
    site.write_config("");
    // Keep only lab records of labels 0..=4: the student rarely predicts 5..=9.
    let text = std::fs::read_to_string(demo("lab.jsonl")).unwrap();
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["label"].as_i64().unwrap() < 5
        })
        .collect();
    let path = site.root().join("half.jsonl");
    std::fs::write(&path, kept.join("\n") + "\n").unwrap();
    let out = site.sensei(&["baseline", "--json", path.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let warnings = v["reference"]["warnings"].as_array().unwrap();
    assert!(
        warnings.iter().any(|w| w
            .as_str()
            .unwrap()
            .contains("never occur in the lab predictions")),
        "{warnings:?}"
    );
    // The field then sees those classes: the class-mix test reports, with finite numbers.
    let out = site.sensei(&["replay", demo("streams/clean.jsonl").to_str().unwrap()]);
    assert!(out.status.success());
    let nan = site.query_i64(
        "SELECT COUNT(*) FROM drift_events WHERE statistic != statistic OR p_value != p_value
         OR effect_size != effect_size",
    );
    assert_eq!(nan, 0);
    assert!(site.query_i64("SELECT COUNT(*) FROM drift_events WHERE signal = 'class_mix'") > 0);
}

/// `[sampling] policy = "uncertainty"`: the teacher sees uncertain records more often, every
/// sample carries its inverse-probability weight, and the weighted disagreement estimate stays
/// close to the truth measured with the teacher on every record.
#[test]
fn uncertainty_weighted_sampling_is_fitted_on_the_lab_set_and_weighted() {
    let site = Site::with_models(demo("student.onnx"), demo("teacher.onnx"));
    site.write_config("[sampling]\npolicy = \"uncertainty\"\nrate = 0.3\nfloor = 0.2\nseed = 7\nmax_per_minute = 1000000\nqueue = 100000\n");
    let out = site.sensei(&["baseline", "--json", demo("lab.jsonl").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let policy = &v["reference"]["sampling_policy"];
    assert!(policy["scale"].as_f64().unwrap() > 0.0, "{policy}");
    let out = site.sensei(&["replay", demo("streams/noise.jsonl").to_str().unwrap()]);
    assert!(out.status.success());
    // Distinct weights: the inclusion probability depends on the record.
    assert!(site.query_i64("SELECT COUNT(DISTINCT weight) FROM teacher_samples") > 10);
    // Sampled records are less confident on average than the stream as a whole.
    let db = site.db();
    let (sampled, all): (f64, f64) = db
        .query_row(
            "SELECT (SELECT AVG(confidence) FROM records WHERE sampled = 1), (SELECT AVG(confidence) FROM records)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(sampled < all, "sampled {sampled} vs all {all}");
    // The weighted (Hájek) estimate against the raw share among sampled records: weighting
    // moves the estimate towards the population, i.e. down, because uncertain records disagree more.
    let (weighted, raw): (f64, f64) = db
        .query_row(
            "SELECT SUM(weight * disagreement) / SUM(weight), AVG(disagreement) FROM teacher_samples",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert!(weighted < raw, "weighted {weighted} vs raw {raw}");
}

#[test]
fn a_new_baseline_re_arms_the_running_daemon_at_sighup() {
    let site = site_with_baseline();
    let daemon = site.start();
    let first = std::fs::read(part(&site, "clean", 0, 100)).unwrap();
    site.deliver("first.jsonl", &first);
    let wait = std::time::Duration::from_secs(60);
    crate::common::wait_until(wait, "the first file", || site.records() == 100);
    let armed_on = |version: i64| {
        site.query_i64(&format!(
            "SELECT COUNT(*) FROM detector_state WHERE baseline_version = {version}"
        ))
    };
    assert!(armed_on(1) > 0, "detectors armed on baseline 1");

    // A second lab run makes version 2 active while the daemon runs.
    let out = site.sensei(&["baseline", demo("lab.jsonl").to_str().unwrap()]);
    assert!(out.status.success());
    daemon.signal("HUP");
    crate::common::wait_until(wait, "the reload to re-arm", || {
        daemon
            .log_text()
            .contains("Another baseline is active; the detectors re-arm on it.")
    });
    crate::common::wait_until(wait, "the reload to finish", || {
        daemon.log_text().contains("The new config is applied.")
    });
    let second = std::fs::read(part(&site, "clean", 100, 200)).unwrap();
    site.deliver("second.jsonl", &second);
    crate::common::wait_until(wait, "the second file", || site.records() == 200);
    assert!(armed_on(2) > 0, "detectors armed on baseline 2");

    // Without a change, a reload applies nothing.
    daemon.signal("HUP");
    crate::common::wait_until(wait, "the second reload", || {
        daemon.log_text().contains("nothing to apply")
    });
    assert!(daemon.stop().success());
}

/// `(labels, value)` of every sample of `family` in a Prometheus exposition.
fn samples(exposition: &str, family: &str) -> Vec<(String, f64)> {
    exposition
        .lines()
        .filter_map(|l| l.strip_prefix(family)?.strip_prefix('{'))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            Some((labels.to_string(), value.parse().ok()?))
        })
        .collect()
}

/// statistic / threshold per detector, from `/metrics`' exposition of the site's database.
fn standings(site: &Site) -> Vec<(String, f64)> {
    let text = sensei::metrics::Metrics::new(site.db_path()).encode();
    let thresholds = samples(&text, "sensei_detector_threshold");
    samples(&text, "sensei_detector_statistic")
        .into_iter()
        .map(|(labels, statistic)| {
            let threshold = thresholds
                .iter()
                .find(|(l, _)| *l == labels)
                .unwrap_or_else(|| panic!("no threshold for {labels}"))
                .1;
            (labels, statistic / threshold)
        })
        .collect()
}

/// A windowed test reads as every detector does: `statistic / threshold` is under 1 while it is
/// in control and at least 1 while it fires (it was a p-value over α: 100 for a healthy test).
#[test]
fn windowed_tests_stand_under_their_threshold_in_control_and_over_it_when_they_fire() {
    let clean = site_with_baseline();
    let out = clean.sensei(&["replay", demo("streams/clean.jsonl").to_str().unwrap()]);
    assert!(out.status.success());
    assert_eq!(events(&clean), Vec::new());
    let standing = standings(&clean);
    let windowed: Vec<_> = standing
        .iter()
        .filter(|(l, _)| l.contains("detector=\"windowed:"))
        .collect();
    assert!(
        windowed.iter().any(|(l, _)| l.contains("windowed:ks"))
            && windowed.iter().any(|(l, _)| l.contains("windowed:psi")),
        "{standing:?}"
    );
    for (labels, ratio) in &standing {
        assert!(ratio.is_finite() && *ratio < 1.0, "{labels}: {ratio}");
    }

    let drifted = site_with_baseline();
    let out = drifted.sensei(&[
        "replay",
        demo("streams/dead_channel.jsonl").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let open_windowed = drifted.query_i64(
        "SELECT COUNT(*) FROM drift_events WHERE detector IN ('ks', 'chi_square', 'psi')
         AND resolved_at IS NULL",
    );
    assert!(open_windowed > 0, "{:?}", events(&drifted));
    // Every windowed event and every open windowed test stands at or over its threshold.
    assert_eq!(
        drifted.query_i64(
            "SELECT COUNT(*) FROM drift_events WHERE detector IN ('ks', 'chi_square', 'psi')
             AND statistic < threshold"
        ),
        0
    );
    assert_eq!(
        drifted.query_i64(
            "SELECT COUNT(*) FROM detector_state WHERE detector LIKE 'windowed:%'
             AND (state = 'open') != (statistic >= threshold)"
        ),
        0
    );
}

/// `sensei status` after a drift: every event list says how much it shows, windowed events give
/// their p-value and effect size, a firing alert is listed, and `--json` carries RFC 3339 times.
#[test]
fn status_says_what_it_lists_and_reads_windowed_events_and_firing_alerts() {
    let site = site_with_baseline();
    let out = site.sensei(&[
        "replay",
        demo("streams/dead_channel.jsonl").to_str().unwrap(),
    ]);
    assert!(out.status.success());
    let total = site.query_i64("SELECT COUNT(*) FROM drift_events");
    let open = site.query_i64("SELECT COUNT(*) FROM drift_events WHERE resolved_at IS NULL");
    assert!(total > 0);
    site.db()
        .execute(
            "INSERT INTO alert_state (rule, status, fired_at, sent, members, updated_at)
             VALUES ('input-shift', 'firing', 1772431200000, 1, '[{}, {}]', 1772431200000)",
            [],
        )
        .unwrap();
    let text = String::from_utf8_lossy(&site.sensei(&["status"]).stdout).into_owned();
    assert!(
        text.contains(&format!("drift events: {total}, {open} open;")),
        "{text}"
    );
    assert!(
        text.contains("alerts firing:\n  input-shift since 2026-03-02T06:00:00Z: 2 drifts"),
        "{text}"
    );
    let windowed: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("(psi)") || l.contains("(ks)") || l.contains("(chi_square)"))
        .collect();
    assert!(!windowed.is_empty(), "{text}");
    for line in windowed {
        assert!(
            line.contains("adjusted p ") && line.contains("effect size "),
            "{line}"
        );
        assert!(!line.contains("baseline -"), "{line}");
    }
    let json: serde_json::Value =
        serde_json::from_slice(&site.sensei(&["status", "--json"]).stdout).unwrap();
    let first = &json["recent_events"][0];
    assert!(
        first["detected_at_rfc3339"]
            .as_str()
            .is_some_and(|t| t.ends_with('Z')),
        "{first}"
    );
    assert_eq!(json["events_total"], total);
}

/// The armed thresholds follow the site's false-alarm budget, `[detect] arl0` overrides it for
/// a family, and `status` shows the allocation and the events spent against it.
#[test]
fn the_false_alarm_budget_arms_the_thresholds_and_status_shows_its_allocation() {
    let site = site_with_baseline();
    let armed = |site: &Site| -> f64 {
        site.db()
            .query_row(
                "SELECT threshold FROM detector_state
                 WHERE signal = 'disagreement' AND segment = '*' AND detector = 'bernoulli_cusum'",
                [],
                |r| r.get(0),
            )
            .expect("the disagreement detector")
    };
    let simulated: f64 = site
        .db()
        .query_row(
            "SELECT json_extract(profile, '$.disagreement.threshold') FROM baselines WHERE active = 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let out = site.sensei(&["replay", demo("streams/clean.jsonl").to_str().unwrap()]);
    assert!(out.status.success());
    // 1 per 90 days at the lab's 1 record/s is an ARL0 far beyond the 10,000 simulated.
    let by_budget = armed(&site);
    assert!(by_budget > simulated + 3.0, "{by_budget} vs {simulated}");
    let status = site.sensei(&["status", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["false_alarms"], "1 per 90d");
    let b = &v["budget"];
    assert_eq!(b["events_per_period"], 1.0);
    assert_eq!(b["rate_source"], "lab");
    let families = b["families"].as_array().unwrap();
    let share = |name: &str| {
        families.iter().find(|f| f["family"] == name).unwrap()["share"]
            .as_f64()
            .unwrap()
    };
    let total: f64 = families.iter().map(|f| f["share"].as_f64().unwrap()).sum();
    assert!((total - 1.0).abs() < 1e-9, "{b}");
    assert!(share("disagreement") > share("kl"), "{b}");
    assert!(share("windowed") > 0.0, "{b}");
    assert_eq!(b["events"], 0, "the clean stream spends nothing: {b}");
    let text = String::from_utf8_lossy(&site.sensei(&["status"]).stdout).into_owned();
    assert!(text.contains("false-alarm budget: 1 per 90d"), "{text}");

    // A tighter budget arms lower thresholds; an explicit ARL0 of the simulated target arms
    // exactly the simulated threshold.
    site.write_config(
        "[sampling]\nrate = 0.5\nseed = 7\nmax_per_minute = 1000000\nqueue = 100000\n\
         [detect]\nfalse_alarms = \"1 per 1h\"\n",
    );
    let out = site.sensei(&["replay", demo("streams/noise.jsonl").to_str().unwrap()]);
    assert!(out.status.success());
    let tighter = armed(&site);
    assert!(tighter < by_budget, "{tighter} vs {by_budget}");
    site.write_config(
        "[sampling]\nrate = 0.5\nseed = 7\nmax_per_minute = 1000000\nqueue = 100000\n\
         [detect]\narl0 = { disagreement = 10000 }\n",
    );
    let out = site.sensei(&["replay", demo("streams/gain_drift.jsonl").to_str().unwrap()]);
    assert!(out.status.success());
    assert!(
        (armed(&site) - simulated).abs() < 1e-9,
        "{} vs {simulated}",
        armed(&site)
    );
    let text = String::from_utf8_lossy(&site.sensei(&["status"]).stdout).into_owned();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("disagreement") && l.contains("share"))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(line.contains("(set in the config)"), "{line}");
}

/// A file whose records open many drift events (a drift reaching many signals and segments)
/// makes one log line, not one per (signal, segment, detector): it says how many opened and
/// names the file and the record that raised the first, with numbers to four significant digits.
#[test]
fn a_file_that_opens_many_drift_events_logs_one_line() {
    let site = site_with_baseline();
    let stream = part(&site, "offset_drift", 0, 450);
    let out = std::process::Command::new(crate::common::sensei_bin())
        .arg("--config")
        .arg(site.config_path())
        .arg("replay")
        .arg(&stream)
        // Info lines too; JSON, as stderr is not a terminal.
        .env("SENSEI_LOG", "info,ort=warn")
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "{log}");
    let opened = events(&site).len();
    assert!(opened > 3, "{opened} events");
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap_or_else(|e| panic!("{e}: {l}"))
        })
        .filter(|v| {
            v["fields"]["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("Drift detected"))
        })
        .collect();
    assert_eq!(lines.len(), 1, "{log}");
    let f = &lines[0]["fields"];
    assert_eq!(f["opened"].as_u64(), Some(opened as u64), "{f}");
    assert_eq!(f["file"], "offset_drift-0-450.jsonl", "{f}");
    let seq = f["seq"].as_i64().unwrap();
    let id: String = site
        .db()
        .query_row("SELECT record_id FROM records WHERE seq = ?1", [seq], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(f["record"].as_str(), Some(id.as_str()), "{f}");
    // The all-segments aggregate is named `all` in the log, as in /metrics and Alertmanager.
    let segments = f["segments"].as_str().unwrap();
    assert!(!segments.contains('*'), "{f}");
    let first = &events(&site)[0].1;
    let label = if first == "*" { "all" } else { first.as_str() };
    assert_eq!(f["segment"].as_str(), Some(label), "{f}");
    for key in ["baseline", "current"] {
        if let Some(x) = f[key].as_f64() {
            let digits = format!("{x}")
                .trim_start_matches(['-', '0', '.'])
                .replace('.', "")
                .trim_end_matches('0')
                .len();
            assert!(digits <= 4, "{key} = {x}");
        }
    }
}
