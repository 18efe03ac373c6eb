//! What a fleet's monitoring takes from sensei: the Grafana dashboard and the Prometheus rules
//! under `contrib/`. The rules pass `promtool check rules` and their own unit tests
//! (`promtool test rules`); every metric the dashboard and the rules select is one a running
//! daemon exports, and every family the daemon exports is on the dashboard.
//!
//! promtool is Debian's `prometheus` package (`scripts/test.sh` installs it). Without it the
//! promtool checks are skipped with a message, except under CI, where that is a failure.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common::{Site, http_get, repo, wait_until, which};

fn contrib(path: &str) -> PathBuf {
    repo().join("contrib").join(path)
}

/// promtool, or `None` (skip) when it is not installed outside CI.
fn promtool() -> Option<PathBuf> {
    match which("promtool") {
        Some(p) => Some(p),
        None if std::env::var_os("CI").is_some() => {
            panic!("promtool is not installed (Debian package prometheus)")
        }
        None => {
            eprintln!("SKIPPED: promtool not installed (Debian package prometheus)");
            None
        }
    }
}

fn run_promtool(promtool: &PathBuf, args: &[&str]) -> String {
    let out = Command::new(promtool)
        .args(args)
        .current_dir(contrib("prometheus"))
        .output()
        .expect("run promtool");
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn the_prometheus_rules_pass_promtool_check_and_their_unit_tests() {
    let Some(promtool) = promtool() else { return };
    let check = run_promtool(&promtool, &["check", "rules", "sensei-rules.yml"]);
    // Every rule was read: the alerts and the recording rules.
    let rules = std::fs::read_to_string(contrib("prometheus/sensei-rules.yml")).unwrap();
    let count = rules
        .lines()
        .filter(|l| {
            let l = l.trim_start();
            l.starts_with("- alert:") || l.starts_with("- record:")
        })
        .count();
    assert!(
        check.contains(&format!("SUCCESS: {count} rules found")),
        "{check}"
    );
    let test = run_promtool(&promtool, &["test", "rules", "sensei-rules.test.yml"]);
    assert!(test.contains("SUCCESS"), "{test}");
}

/// The `sensei_…` metric names in an expression (recording rules' `sensei:…` names are not).
fn metric_names(expr: &str, into: &mut BTreeSet<String>) {
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut i = 0;
    while let Some(at) = expr[i..].find("sensei_") {
        let start = i + at;
        let end = start
            + expr[start..]
                .bytes()
                .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
                .count();
        if start == 0 || !ident(bytes[start - 1]) {
            into.insert(expr[start..end].to_owned());
        }
        i = end;
    }
}

/// The expressions of the Grafana dashboard: every target's `expr`, the variables' queries and
/// the annotations' expressions.
fn grafana_exprs(v: &serde_json::Value, into: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        into.push(s.clone())
                    }
                    _ => grafana_exprs(v, into),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| grafana_exprs(v, into)),
        _ => {}
    }
}

/// The sample names a scrape can hold, from its `# TYPE` lines (so a family without samples
/// yet counts) and its samples.
fn exported_names(text: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut names = BTreeSet::new();
    let mut families = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                continue;
            };
            families.insert(name.to_owned());
            match kind {
                // The text format names a counter with or without its `_total`.
                "counter" => {
                    let base = name.strip_suffix("_total").unwrap_or(name);
                    families.remove(name);
                    families.insert(base.to_owned());
                    names.insert(format!("{base}_total"));
                }
                "histogram" => {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
                _ => {
                    names.insert(name.to_owned());
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let end = line.find(['{', ' ']).unwrap_or(line.len());
            names.insert(line[..end].to_owned());
        }
    }
    (names, families)
}

#[test]
fn every_metric_the_dashboard_and_the_rules_select_is_exported_and_every_family_is_charted() {
    // A daemon with a lab baseline (detectors, the false-alarm budget) and a challenger in
    // shadow, so that every family is there.
    use super::drift::demo;
    let site = Site::with_models(demo("student.onnx"), demo("teacher.onnx"));
    site.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[[challengers]]\nname = \"big\"\npath = {:?}\n",
        demo("teacher.onnx").display().to_string()
    ));
    let out = site.sensei(&["baseline", demo("lab.jsonl").to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let daemon = site.start();
    let addr = daemon.http_addr();
    site.deliver(
        "clean.jsonl",
        &std::fs::read(demo("streams/clean.jsonl")).unwrap(),
    );
    wait_until(Duration::from_secs(60), "records committed", || {
        site.records() == 450
    });
    let (code, text) = http_get(&addr, "/metrics", &[]);
    assert_eq!(code, 200);
    let (exported, families) = exported_names(&text);
    assert!(families.len() > 30, "{families:?}");

    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(contrib("grafana/sensei.json")).unwrap())
            .expect("the Grafana dashboard is JSON");
    let mut exprs = Vec::new();
    grafana_exprs(&dashboard, &mut exprs);
    let mut on_dashboard = BTreeSet::new();
    for e in &exprs {
        metric_names(e, &mut on_dashboard);
    }

    let rules = std::fs::read_to_string(contrib("prometheus/sensei-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(contrib("prometheus/sensei-rules.test.yml")).unwrap();
    let mut in_rules = BTreeSet::new();
    for line in rules.lines().chain(tests.lines()) {
        let line = line.trim_start().trim_start_matches("- ");
        if let Some(expr) = line
            .strip_prefix("expr:")
            .or_else(|| line.strip_prefix("series:"))
        {
            metric_names(expr, &mut in_rules);
        }
    }
    assert!(in_rules.len() >= 8, "{in_rules:?}");

    for (what, names) in [("the dashboard", &on_dashboard), ("the rules", &in_rules)] {
        let unknown: Vec<&String> = names.difference(&exported).collect();
        assert!(
            unknown.is_empty(),
            "{what} select metrics sensei does not export: {unknown:?}\nexported: {exported:?}"
        );
    }
    // Every family sensei exports has a panel.
    let uncharted: Vec<&String> = families
        .iter()
        .filter(|f| {
            !on_dashboard.iter().any(|n| {
                n == *f
                    || n.strip_prefix(f.as_str())
                        .is_some_and(|s| ["_total", "_bucket", "_sum", "_count"].contains(&s))
            })
        })
        .collect();
    assert!(
        uncharted.is_empty(),
        "families without a panel: {uncharted:?}"
    );

    // The variables a fleet filters by, on every panel's selector.
    let vars: Vec<&str> = dashboard["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    for v in ["datasource", "site", "instance"] {
        assert!(vars.contains(&v), "no ${v} variable: {vars:?}");
    }
    for panel in dashboard["panels"].as_array().unwrap() {
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        for t in panel["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            assert!(
                expr.contains("instance=~\"$instance\"") && expr.contains("site=~\"$site\""),
                "panel {:?} does not filter by site and instance: {expr}",
                panel["title"]
            );
        }
    }
    assert!(daemon.stop().success());
}

#[test]
fn the_expression_scanner_finds_metric_names_only() {
    let mut names = BTreeSet::new();
    metric_names(
        "sum by (le) (rate(sensei_ingest_lag_seconds_bucket{x=\"sensei_no\"}[5m])) / sensei:records:rate5m + my_sensei_x",
        &mut names,
    );
    // A recording rule's name and a longer identifier are no metric names.
    assert!(names.contains("sensei_ingest_lag_seconds_bucket"));
    assert!(
        !names.iter().any(|n| n.starts_with("sensei_x")),
        "{names:?}"
    );
    let (exported, _) = exported_names(
        "# TYPE sensei_records counter\n# TYPE sensei_files_total counter\n# TYPE sensei_ingest_lag_seconds histogram\n# TYPE sensei_ready gauge\nsensei_ready 1\n",
    );
    for n in [
        "sensei_records_total",
        "sensei_files_total",
        "sensei_ingest_lag_seconds_bucket",
        "sensei_ready",
    ] {
        assert!(exported.contains(n), "{exported:?}");
    }
    assert!(!exported.contains("sensei_records"));
    assert!(!exported.contains("sensei_files_total_total"));
}
