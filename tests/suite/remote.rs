//! A teacher on an inference server (`[teacher] url`): `sensei check` reads and checks the
//! remote model's metadata, and a replay graded by the remote teacher stores the same per-record
//! metrics as one graded by the same model run locally. Challengers on an inference server
//! (`[[challengers]] url`) likewise: checked by `sensei check`, the same shadow figures as the
//! same model from a file, and a server that dies costs them comparisons, counted, and nothing
//! else. Each test runs against every real server of `tests/common/oip.rs` (KServe's Python
//! model server and NVIDIA Triton, both serving the ONNX models with ONNX Runtime): the
//! `kserve::` and `triton::` modules at the end.

use std::collections::BTreeMap;

use crate::common::oip::{Kind, Server};
use crate::common::{Site, fixture_model, repo};

pub(crate) fn output(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
}

pub(crate) fn remote_teacher(url: &str, model: &str) -> String {
    format!("[teacher]\nurl = \"{url}\"\nmodel = \"{model}\"\nattention = \"attention\"\n")
}

fn check_reads_the_remote_models_metadata_and_names_the_url_of_every_problem(kind: Kind) {
    let site = Site::new();
    let server = Server::start(
        kind,
        &[
            ("teacher", fixture_model("teacher.onnx")),
            ("five", fixture_model("five_classes.onnx")),
        ],
        &[],
        site.root(),
    );
    let url = server.url();

    site.write_config(&remote_teacher(&url, "teacher"));
    let out = site.sensei(&["check"]);
    let text = output(&out);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "teacher: {url}/v2/models/teacher on an inference server"
        )) && text.contains(
            "inputs: x float32 [8, 8]; output: logits [10]; attention: attention [4, 8, 8]"
        ),
        "{text}"
    );
    // Triton lists the binary tensor extension in its metadata; KServe's server does not.
    let tensors = match kind {
        Kind::Triton => "binary tensors)",
        Kind::KServe => "JSON tensors)",
    };
    assert!(text.contains(tensors), "{text}");

    // A model the server does not have; an output the student cannot be compared with.
    for (model, expected) in [
        (
            "nobody",
            "the server has no such model (HTTP 404".to_string(),
        ),
        (
            "five",
            "outputs are not comparable: student 'logits' is [10], teacher 'logits' is [5]"
                .to_string(),
        ),
    ] {
        site.write_config(&remote_teacher(&url, model));
        let out = site.sensei(&["check"]);
        let text = output(&out);
        assert_eq!(out.status.code(), Some(78), "{text}");
        assert!(text.contains(&expected), "{model}: {text}");
        if model == "nobody" {
            assert!(
                text.contains(&format!("teacher model {url}/v2/models/nobody: ")),
                "{text}"
            );
        }
    }

    // A server that is down.
    let down = format!("http://127.0.0.1:{}", crate::common::free_port());
    site.write_config(&remote_teacher(&down, "teacher"));
    let out = site.sensei(&["check"]);
    let text = output(&out);
    assert_eq!(out.status.code(), Some(78), "{text}");
    assert!(
        text.contains(&format!(
            "teacher model {down}/v2/models/teacher: the server does not answer"
        )),
        "{text}"
    );
}

/// Per record id: (teacher prediction, disagreement, KL, total variation, attention KL).
type Graded = BTreeMap<String, (i64, i64, f64, f64, f64)>;

fn graded(site: &Site) -> Graded {
    let db = site.db();
    let mut stmt = db
        .prepare(
            "SELECT record_id, teacher_prediction, disagreement, kl, total_variation, attention_kl
             FROM teacher_samples",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// `tensors`: the `[teacher] tensors` key, when set.
fn a_remote_teacher_grades_a_demo_stream_as_the_local_teacher_does(
    kind: Kind,
    tensors: Option<&str>,
) {
    let demo = repo().join("models/demo");
    let stream = demo.join("streams/line_b_drift.jsonl");
    let sampling = "[sampling]\nrate = 0.5\nseed = 11\nmax_per_minute = 1000000\nqueue = 100000\n";

    let local = Site::with_models(demo.join("student.onnx"), demo.join("teacher.onnx"));
    local.write_config(sampling);
    let out = local.sensei(&["replay", stream.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output(&out));

    let remote = Site::with_models(demo.join("student.onnx"), demo.join("teacher.onnx"));
    let server = Server::start(
        kind,
        &[("teacher", demo.join("teacher.onnx"))],
        &[],
        remote.root(),
    );
    remote.write_config(&format!(
        "{sampling}{}max_batch = 8\n{}",
        remote_teacher(&server.url(), "teacher"),
        tensors.map_or(String::new(), |t| format!("tensors = \"{t}\"\n"))
    ));
    let out = remote.sensei(&["replay", stream.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output(&out));

    let (expected, got) = (graded(&local), graded(&remote));
    assert!(expected.len() > 150, "{} samples", expected.len());
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "the same records are sampled"
    );
    for (id, (e, g)) in expected
        .iter()
        .zip(got.values())
        .map(|((id, e), g)| (id, (e, g)))
    {
        assert_eq!((e.0, e.1), (g.0, g.1), "{id}: prediction and disagreement");
        for (what, a, b) in [
            ("kl", e.2, g.2),
            ("total variation", e.3, g.3),
            ("attention kl", e.4, g.4),
        ] {
            assert!(
                (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
                "{id}: {what} {a} locally, {b} remotely"
            );
        }
    }
    // Nothing was skipped or failed: every sampled record has its teacher row.
    assert_eq!(
        remote.query_i64("SELECT count(*) FROM records WHERE sampled NOT IN (0, 1)"),
        0
    );
    // The database knows the remote teacher by its address, not as the local file.
    let teacher = |site: &Site| -> Vec<String> {
        let db = site.db();
        let mut stmt = db
            .prepare("SELECT DISTINCT teacher FROM teacher_samples")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let (local_teacher, remote_teacher) = (teacher(&local), teacher(&remote));
    assert_eq!((local_teacher.len(), remote_teacher.len()), (1, 1));
    assert_ne!(local_teacher, remote_teacher);
}

pub(crate) const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

pub(crate) fn status_json(site: &Site) -> serde_json::Value {
    let out = site.sensei(&["status", "--json"]);
    assert!(out.status.success(), "{}", output(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `records.sampled` code → records.
pub(crate) fn sampled_codes(site: &Site) -> BTreeMap<i64, i64> {
    let db = site.db();
    let mut stmt = db
        .prepare("SELECT sampled, count(*) FROM records GROUP BY sampled")
        .unwrap();
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn transient_server_errors_are_retried_and_what_stays_unanswered_is_skipped(kind: Kind) {
    let data = repo().join("models/demo/streams/clean.jsonl");
    let student = repo().join("models/demo/student.onnx");
    let teacher = repo().join("models/demo/teacher.onnx");
    let dir = tempfile::tempdir().unwrap();
    // Every second inference request is refused with HTTP 503.
    let server = Server::start(
        kind,
        &[("teacher", teacher.clone())],
        &["--fail-every", "2"],
        dir.path(),
    );
    let sampling = "[sampling]\nrate = 1.0\nmax_per_minute = 1000000\nqueue = 100000\n";
    let run = |retries: u32| -> Site {
        let site = Site::with_models(student.clone(), teacher.clone());
        site.write_config(&format!(
            "{sampling}{}max_batch = 16\nretries = {retries}\nbackoff = \"5ms\"\nin_flight = 1\nbreaker_after = 1000\n",
            remote_teacher(&server.url(), "teacher")
        ));
        let out = site.sensei(&["replay", data.to_str().unwrap()]);
        assert!(out.status.success(), "{}", output(&out));
        site
    };

    // Without retries, every second batch stays unanswered: skipped, with their own code,
    // counted in status; the student answered every record.
    let without = run(0);
    let codes = sampled_codes(&without);
    let skipped = codes.get(&5).copied().unwrap_or(0);
    assert_eq!(without.records(), 450);
    assert!(skipped > 0 && skipped < 450, "{codes:?}");
    assert_eq!(
        codes.get(&1).copied().unwrap_or(0) + skipped,
        450,
        "{codes:?}"
    );
    let status = status_json(&without);
    assert_eq!(status["skipped_unreachable"], skipped, "{status}");
    assert_eq!(status["teacher_samples"], 450 - skipped, "{status}");

    // With retries, a refused request is sent again and every sample is answered.
    let with = run(2);
    assert_eq!(sampled_codes(&with), BTreeMap::from([(1, 450)]));
}

fn a_server_killed_mid_run_costs_no_record_and_is_probed_until_it_answers(kind: Kind) {
    let demo = repo().join("models/demo");
    let site = Site::with_models(demo.join("student.onnx"), demo.join("teacher.onnx"));
    let mut server = Server::start(
        kind,
        &[("teacher", demo.join("teacher.onnx"))],
        &[],
        site.root(),
    );
    // An alert when the teacher has been out of reach for a while (here 300 ms), by a command
    // that appends each notification to a file.
    let notifications = site.root().join("notifications.jsonl");
    site.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n[sampling]\nrate = 1.0\nmax_per_minute = 1000000\nqueue = 100000\n{}timeout = \"2s\"\nretries = 1\nbackoff = \"10ms\"\nbreaker_after = 2\nbreaker_open = \"300ms\"\n{}\
         [receivers.script]\ntype = \"command\"\ncommand = [\"sh\", \"-c\", \"cat >> \\\"$0\\\"; echo >> \\\"$0\\\"\", {:?}]\n\
         [[rules]]\nname = \"teacher-gone\"\nsignal = \"teacher_unreachable\"\nfor = \"300ms\"\nreceivers = [\"script\"]\n",
        remote_teacher(&server.url(), "teacher"),
        crate::common::alerting::alerts_section(""),
        notifications.display().to_string()
    ));
    let notified = || -> Vec<serde_json::Value> {
        std::fs::read_to_string(&notifications)
            .unwrap_or_default()
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).expect("a JSON notification"))
            .collect()
    };
    let unreachable_events = |open: &str| {
        site.query_i64(&format!(
            "SELECT count(*) FROM drift_events WHERE signal = 'teacher_unreachable' \
             AND segment = '*' AND detector = 'circuit_breaker' AND resolved_at IS {open}"
        ))
    };
    let daemon = site.start();
    site.deliver("a.jsonl", &crate::common::jsonl("a", 40));
    wait_until_records(&site, 40);
    assert_eq!(sampled_codes(&site), BTreeMap::from([(1, 40)]));

    // The server dies: the student goes on, the samples are skipped as out of reach.
    server.kill();
    site.deliver("b.jsonl", &crate::common::jsonl("b", 60));
    site.deliver("c.jsonl", &crate::common::jsonl("c", 60));
    wait_until_records(&site, 160);
    let codes = sampled_codes(&site);
    assert_eq!(codes.get(&1), Some(&40), "{codes:?}");
    assert_eq!(codes.get(&5), Some(&120), "{codes:?}");
    crate::common::wait_until(WAIT, "the circuit breaker's warning", || {
        daemon
            .log_text()
            .contains("inference server is out of reach")
    });
    assert_eq!(
        daemon.metric("sensei_teacher_samples_skipped_total{reason=\"unreachable\"}"),
        Some(120.0)
    );
    assert_eq!(status_json(&site)["skipped_unreachable"], 120);
    let (code, dashboard) = crate::common::http_get(&daemon.http_addr(), "/api/dashboard", &[]);
    assert_eq!(code, 200, "{dashboard}");
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert_eq!(
        dashboard["status"]["skipped_unreachable"], 120,
        "{dashboard}"
    );
    // Out of reach is a drift event of its own, open while the server is gone; a rule on it
    // fires once it has been open for its `for`.
    assert_eq!(
        (unreachable_events("NULL"), unreachable_events("NOT NULL")),
        (1, 0)
    );
    crate::common::wait_until(WAIT, "the teacher-gone alert", || !notified().is_empty());
    let firing = &notified()[0];
    assert_eq!(
        (&firing["status"], &firing["rule"]),
        (
            &serde_json::json!("firing"),
            &serde_json::json!("teacher-gone")
        ),
        "{firing}"
    );
    assert_eq!(
        firing["drifts"][0]["signal"], "teacher_unreachable",
        "{firing}"
    );

    // It comes back on the same port: a probe finds it and the samples go to it again.
    server.restart();
    let n = deliver_until_answered(&site, 160);
    assert!(
        daemon.log_text().contains("answers again"),
        "{}",
        daemon.log_text()
    );
    // The event is resolved, and so is the alert.
    assert_eq!(
        (unreachable_events("NULL"), unreachable_events("NOT NULL")),
        (0, 1)
    );
    crate::common::wait_until(WAIT, "the teacher-gone alert resolved", || {
        notified().last().is_some_and(|n| n["status"] == "resolved")
    });
    // Every record counted once, every file done.
    assert_eq!(
        site.query_i64("SELECT count(DISTINCT record_id) FROM records"),
        160 + 10 * n as i64
    );
    assert_eq!(site.ledger_count("done"), 3 + n as i64);
    daemon.stop();
}

pub(crate) fn wait_until_records(site: &Site, n: usize) {
    crate::common::wait_until(WAIT, &format!("{n} records committed"), || {
        site.db_path().exists() && site.records() == n as i64
    });
}

/// Delivers files of 10 records (`d1.jsonl`, `d2.jsonl`, …) after the `before` records counted
/// so far, one at a time, until the teacher answers samples of them again (a probe of the
/// circuit breaker found the server): returns how many files that took.
pub(crate) fn deliver_until_answered(site: &Site, before: usize) -> usize {
    let mut n = 0;
    crate::common::wait_until(WAIT, "teacher samples answered again", || {
        n += 1;
        site.deliver(
            &format!("d{n}.jsonl"),
            &crate::common::jsonl(&format!("d{n}"), 10),
        );
        wait_until_records(site, before + 10 * n);
        site.query_i64("SELECT count(*) FROM records WHERE sampled = 1 AND record_id LIKE 'd%'") > 0
    });
    n
}

/// A `[[challengers]]` entry for a model on a server (`url`, `model`) or in a file (`path`),
/// compared on its logits and attention; `extra` keys appended.
fn challenger(name: &str, at: &str, model: Option<&str>, extra: &str) -> String {
    let source = match model {
        Some(model) => format!("url = \"{at}\"\nmodel = \"{model}\"\n"),
        None => format!("path = {at:?}\n"),
    };
    format!("[[challengers]]\nname = \"{name}\"\n{source}attention = \"attention\"\n{extra}")
}

fn check_reads_a_remote_challengers_metadata_and_names_its_url(kind: Kind) {
    let site = Site::new();
    let server = Server::start(
        kind,
        &[
            ("lite", fixture_model("teacher.onnx")),
            ("five", fixture_model("five_classes.onnx")),
        ],
        &[],
        site.root(),
    );
    let url = server.url();
    site.write_config(&format!(
        "{}{}{}",
        challenger("ok", &url, Some("lite"), ""),
        challenger("nobody", &url, Some("nobody"), ""),
        challenger("five", &url, Some("five"), "")
    ));
    let out = site.sensei(&["check"]);
    let text = output(&out);
    // A challenger that cannot run is a warning: the daemon runs without it.
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains(&format!(
            "challenger 'ok': {url}/v2/models/lite on an inference server (platform "
        )) && text.contains("output: logits [10]; attention: attention [4, 8, 8]"),
        "{text}"
    );
    assert!(
        text.contains(&format!(
            "warning: challenger 'nobody' model {url}/v2/models/nobody: the server has no such model (HTTP 404"
        )),
        "{text}"
    );
    assert!(
        text.contains(
            "warning: challenger 'five' cannot be compared with the teacher: outputs are not \
             comparable: challenger 'five' 'logits' is [5], teacher 'logits' is [10]"
        ),
        "{text}"
    );
    assert!(!text.contains("warning: challenger 'ok'"), "{text}");
}

/// Per record id, one shadow model's row: (disagreement, KL, attention KL).
type Shadowed = BTreeMap<String, (Option<i64>, Option<f64>, Option<f64>)>;

fn shadowed(site: &Site, model: &str) -> Shadowed {
    let db = site.db();
    let mut stmt = db
        .prepare(
            "SELECT r.record_id, s.disagreement, s.kl, s.attention_kl
             FROM shadow_samples s JOIN records r ON r.seq = s.seq WHERE s.model = ?1",
        )
        .unwrap();
    stmt.query_map([model], |r| {
        Ok((r.get::<_, String>(0)?, (r.get(1)?, r.get(2)?, r.get(3)?)))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => (a - b).abs() <= 1e-5 * (1.0 + a.abs()),
        (None, None) => true,
        _ => false,
    }
}

fn a_remote_challenger_gives_the_shadow_figures_of_the_same_model_from_a_file(kind: Kind) {
    let demo = repo().join("models/demo");
    let stream = demo.join("streams/line_b_drift.jsonl");
    let sampling = "[sampling]\nrate = 0.5\nseed = 11\nmax_per_minute = 1000000\nqueue = 100000\n";
    // The demo student as a challenger: it disagrees with the teacher on part of the stream.
    let student = demo.join("student.onnx");

    let local = Site::with_models(student.clone(), demo.join("teacher.onnx"));
    local.write_config(&format!(
        "{sampling}{}",
        challenger("distilled", &student.display().to_string(), None, "")
    ));
    let out = local.sensei(&["replay", stream.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output(&out));

    let remote = Site::with_models(student.clone(), demo.join("teacher.onnx"));
    let server = Server::start(kind, &[("distilled", student.clone())], &[], remote.root());
    remote.write_config(&format!(
        "{sampling}{}",
        challenger("distilled", &server.url(), Some("distilled"), "")
    ));
    let out = remote.sensei(&["replay", stream.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output(&out));

    let (expected, got) = (
        shadowed(&local, "distilled"),
        shadowed(&remote, "distilled"),
    );
    assert!(expected.len() > 150, "{} shadow samples", expected.len());
    assert!(
        expected.values().any(|e| e.0 == Some(1)),
        "the challenger disagrees somewhere, so the figures say something"
    );
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>(),
        "the same records are compared"
    );
    for (id, e) in &expected {
        let g = &got[id];
        assert_eq!(e.0, g.0, "{id}: disagreement");
        assert!(
            close(e.1, g.1),
            "{id}: kl {:?} locally, {:?} remotely",
            e.1,
            g.1
        );
        assert!(
            close(e.2, g.2),
            "{id}: attention kl {:?} locally, {:?} remotely",
            e.2,
            g.2
        );
    }
    // The sums the verdict reads: the same records, the same agreement and mean KL.
    let totals = |site: &Site| -> (i64, f64, f64, f64, f64) {
        site.db()
            .query_row(
                "SELECT samples, agreement, agreement_weight, kl, kl_weight FROM shadow_totals
                 WHERE model = 'distilled'",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
            )
            .unwrap()
    };
    let (e, g) = (totals(&local), totals(&remote));
    assert_eq!((e.0, e.1, e.2), (g.0, g.1, g.2), "{e:?} {g:?}");
    assert!(close(Some(e.3 / e.4), Some(g.3 / g.4)), "{e:?} {g:?}");
    // Nothing skipped; the model is known by its address.
    assert_eq!(remote.query_i64("SELECT count(*) FROM shadow_skips"), 0);
    assert_eq!(
        remote.query_i64(&format!(
            "SELECT count(*) FROM shadow_models WHERE name = 'distilled' AND status = 'running'
             AND path = '{}/v2/models/distilled' AND size_bytes IS NULL",
            server.url()
        )),
        1
    );
}

/// Per record id, the teacher's row: (prediction, disagreement, KL, attention KL).
type TeacherRows = BTreeMap<String, (Option<i64>, Option<i64>, Option<f64>, Option<f64>)>;

fn teacher_rows(site: &Site) -> TeacherRows {
    let db = site.db();
    let mut stmt = db
        .prepare(
            "SELECT record_id, teacher_prediction, disagreement, kl, attention_kl
             FROM teacher_samples",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get::<_, String>(0)?,
            (r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?),
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

fn a_challengers_server_killed_mid_run_costs_comparisons_counted_and_nothing_else(kind: Kind) {
    let demo = repo().join("models/demo");
    let student = demo.join("student.onnx");
    let site = Site::with_models(student.clone(), demo.join("teacher.onnx"));
    let mut server = Server::start(kind, &[("distilled", student.clone())], &[], site.root());
    let sampling = "[sampling]\nrate = 1.0\nmax_per_minute = 1000000\nqueue = 100000\n";
    site.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n{sampling}{}",
        challenger(
            "distilled",
            &server.url(),
            Some("distilled"),
            "timeout = \"2s\"\nretries = 1\nbackoff = \"10ms\"\nbreaker_after = 2\nbreaker_open = \"300ms\"\n"
        )
    ));
    let answered =
        || site.query_i64("SELECT count(*) FROM shadow_samples WHERE model = 'distilled'");
    let skipped = |reason: &str| {
        site.query_i64(&format!(
            "SELECT coalesce(sum(records), 0) FROM shadow_skips
             WHERE model = 'distilled' AND reason = '{reason}'"
        ))
    };
    let daemon = site.start();
    site.deliver("a.jsonl", &crate::common::jsonl("a", 40));
    wait_until_records(&site, 40);
    assert_eq!((answered(), skipped("unreachable")), (40, 0));

    // The challenger's server dies: the student and the teacher go on; its comparisons are
    // skipped and counted.
    server.kill();
    site.deliver("b.jsonl", &crate::common::jsonl("b", 60));
    site.deliver("c.jsonl", &crate::common::jsonl("c", 60));
    wait_until_records(&site, 160);
    assert_eq!(
        site.query_i64("SELECT count(DISTINCT record_id) FROM records"),
        160
    );
    assert_eq!(site.ledger_count("done"), 3);
    assert_eq!(sampled_codes(&site), BTreeMap::from([(1, 160)]));
    assert_eq!((answered(), skipped("unreachable")), (40, 120));
    assert_eq!(
        site.query_i64("SELECT count(*) FROM shadow_skips WHERE reason != 'unreachable'"),
        0
    );
    // Its figures are those of the records it answered.
    assert_eq!(
        site.query_i64("SELECT samples FROM shadow_totals WHERE model = 'distilled'"),
        40
    );
    crate::common::wait_until(WAIT, "the challenger's circuit breaker warning", || {
        daemon
            .log_text()
            .contains("inference server of a shadow model is out of reach")
    });
    assert_eq!(
        daemon.metric("sensei_shadow_skipped_total{model=\"distilled\",reason=\"unreachable\"}"),
        Some(120.0)
    );
    assert_eq!(
        daemon.metric("sensei_shadow_samples_total{model=\"distilled\"}"),
        Some(40.0)
    );
    let status = status_json(&site);
    let entry = status["shadow_models"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == "distilled")
        .cloned()
        .unwrap_or_default();
    assert_eq!(
        (&entry["status"], &entry["samples"], &entry["skipped"]),
        (
            &serde_json::json!("running"),
            &serde_json::json!(40),
            &serde_json::json!(120)
        ),
        "{status}"
    );
    assert_eq!(entry["skipped_by_reason"]["unreachable"], 120, "{status}");
    let text = output(&site.sensei(&["status"]));
    assert!(
        text.contains("running, 40 samples, 120 skipped (unreachable 120)"),
        "{text}"
    );

    // It comes back: a probe finds it and it compares the samples again.
    server.restart();
    let mut n = 0;
    crate::common::wait_until(WAIT, "the challenger answering again", || {
        n += 1;
        site.deliver(
            &format!("d{n}.jsonl"),
            &crate::common::jsonl(&format!("d{n}"), 10),
        );
        wait_until_records(&site, 160 + 10 * n);
        site.query_i64(
            "SELECT count(*) FROM shadow_samples s JOIN records r ON r.seq = s.seq
             WHERE s.model = 'distilled' AND r.record_id LIKE 'd%'",
        ) > 0
    });
    let records = 160 + 10 * n as i64;
    daemon.stop();
    // Every sampled record is either compared or counted as skipped, once.
    assert_eq!(
        answered() + skipped("unreachable"),
        records,
        "{} answered, {} skipped",
        answered(),
        skipped("unreachable")
    );
    assert_eq!(sampled_codes(&site), BTreeMap::from([(1, records)]));

    // The teacher's comparisons are those of a run without the challenger.
    let plain = Site::with_models(student, demo.join("teacher.onnx"));
    plain.write_config(sampling);
    let mut files = vec![
        ("a".to_string(), 40),
        ("b".to_string(), 60),
        ("c".to_string(), 60),
    ];
    files.extend((1..=n).map(|i| (format!("d{i}"), 10)));
    let data = plain.root().join("data");
    std::fs::create_dir_all(&data).unwrap();
    for (prefix, count) in &files {
        std::fs::write(
            data.join(format!("{prefix}.jsonl")),
            crate::common::jsonl(prefix, *count),
        )
        .unwrap();
    }
    let out = plain.sensei(&["replay", data.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output(&out));
    // The same answers, but batched otherwise: equal up to float rounding.
    let (got, expected) = (teacher_rows(&site), teacher_rows(&plain));
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>()
    );
    for (id, e) in &expected {
        let g = &got[id];
        assert_eq!((e.0, e.1), (g.0, g.1), "{id}: prediction and disagreement");
        assert!(
            close(e.2, g.2) && close(e.3, g.3),
            "{id}: {e:?} without the challenger, {g:?} with it"
        );
    }
}

#[test]
fn a_teacher_behind_tls_with_a_client_certificate_and_a_token() {
    let demo = repo().join("models/demo");
    let site = Site::with_models(demo.join("student.onnx"), demo.join("teacher.onnx"));
    let server = Server::start(
        Kind::KServe,
        &[("teacher", demo.join("teacher.onnx"))],
        &[],
        site.root(),
    );
    let pki = crate::common::oip::Pki::make(&site.root().join("pki"));
    let token = "s3cret-teacher-token-7f2c";
    let nginx =
        crate::common::oip::Nginx::start(&site.root().join("nginx"), &pki, token, server.port);
    std::fs::write(site.root().join("token"), format!("{token}\n")).unwrap();
    std::fs::write(site.root().join("wrong-token"), "not-the-token\n").unwrap();
    let tls = |token_file: &str, with_ca: bool, with_client: bool| -> String {
        let mut s = remote_teacher(&nginx.url(), "teacher");
        if with_ca {
            s.push_str(&format!("ca_file = {:?}\n", pki.ca.display().to_string()));
        }
        if with_client {
            s.push_str(&format!(
                "client_cert_file = {:?}\nclient_key_file = {:?}\n",
                pki.client_cert.display().to_string(),
                pki.client_key.display().to_string()
            ));
        }
        s.push_str(&format!("token_file = \"{token_file}\"\n"));
        s
    };
    let check = |config: &str| -> (Option<i32>, String) {
        site.write_config(config);
        let out = site.sensei(&["check"]);
        let text = output(&out);
        assert!(!text.contains(token), "the token was shown: {text}");
        (out.status.code(), text)
    };

    let (code, text) = check(&tls("token", true, true));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("teacher: {}/v2/models/teacher", nginx.url())),
        "{text}"
    );

    // The wrong token, no client certificate, a CA the system does not know: each named.
    let (code, text) = check(&tls("wrong-token", true, true));
    assert_eq!(code, Some(78), "{text}");
    assert!(text.contains("HTTP 401"), "{text}");
    let (code, text) = check(&tls("token", true, false));
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("HTTP 400"),
        "nginx answers 400 without a client certificate: {text}"
    );
    let (code, text) = check(&tls("token", false, true));
    assert_eq!(code, Some(78), "{text}");
    assert!(
        text.contains("the server does not answer") && text.to_lowercase().contains("certificate"),
        "{text}"
    );

    // A replay graded through the proxy: every sample answered; the token in no log line.
    site.write_config(&format!(
        "[sampling]\nrate = 1.0\nmax_per_minute = 1000000\nqueue = 100000\n[log]\nfilter = \"debug\"\n{}",
        tls("token", true, true)
    ));
    let data = site.root().join("records.jsonl");
    std::fs::write(&data, crate::common::jsonl("tls", 30)).unwrap();
    let out = site.sensei(&["replay", data.to_str().unwrap()]);
    let text = output(&out);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains(token), "the token was logged: {text}");
    assert_eq!(sampled_codes(&site), BTreeMap::from([(1, 30)]));
}

/// A challenger's server that is down when the daemon starts: the challenger waits for it
/// (its samples skipped as out of reach, counted) and joins once the server answers.
#[test]
fn a_challenger_whose_server_is_down_at_the_start_joins_when_it_answers() {
    let demo = repo().join("models/demo");
    let student = demo.join("student.onnx");
    let site = Site::with_models(student.clone(), demo.join("teacher.onnx"));
    let mut server = Server::start(Kind::KServe, &[("distilled", student)], &[], site.root());
    server.kill();
    site.write_config(&format!(
        "[sampling]\nrate = 1.0\nmax_per_minute = 1000000\nqueue = 100000\n{}",
        challenger(
            "distilled",
            &server.url(),
            Some("distilled"),
            "retries = 0\nbreaker_open = \"200ms\"\n"
        )
    ));
    let daemon = site.start();
    site.deliver("a.jsonl", &crate::common::jsonl("a", 30));
    wait_until_records(&site, 30);
    assert_eq!(sampled_codes(&site), BTreeMap::from([(1, 30)]));
    assert_eq!(
        site.query_i64(
            "SELECT records FROM shadow_skips WHERE model = 'distilled' AND reason = 'unreachable'"
        ),
        30
    );
    assert_eq!(
        site.query_i64(
            "SELECT count(*) FROM shadow_models WHERE name = 'distilled' AND status = 'running'"
        ),
        1
    );
    assert!(
        daemon.log_text().contains("does not answer yet"),
        "{}",
        daemon.log_text()
    );

    server.restart();
    let mut n = 0;
    crate::common::wait_until(WAIT, "the challenger answering", || {
        n += 1;
        site.deliver(
            &format!("d{n}.jsonl"),
            &crate::common::jsonl(&format!("d{n}"), 10),
        );
        wait_until_records(&site, 30 + 10 * n);
        site.query_i64("SELECT count(*) FROM shadow_samples WHERE model = 'distilled'") > 0
    });
    let records = 30 + 10 * n as i64;
    let skipped = site.query_i64("SELECT sum(records) FROM shadow_skips WHERE model = 'distilled'");
    assert_eq!(
        site.query_i64("SELECT count(*) FROM shadow_samples WHERE model = 'distilled'") + skipped,
        records
    );
    assert!(
        daemon
            .log_text()
            .contains("The inference server of a shadow model answers")
    );
    daemon.stop();
}

/// Every test above, against one server.
macro_rules! against {
    ($server:ident, $kind:expr) => {
        mod $server {
            use crate::common::oip::Kind;

            #[test]
            fn check_reads_the_remote_models_metadata_and_names_the_url_of_every_problem() {
                super::check_reads_the_remote_models_metadata_and_names_the_url_of_every_problem(
                    $kind,
                );
            }

            #[test]
            fn a_remote_teacher_grades_a_demo_stream_as_the_local_teacher_does() {
                super::a_remote_teacher_grades_a_demo_stream_as_the_local_teacher_does($kind, None);
            }

            #[test]
            fn transient_server_errors_are_retried_and_what_stays_unanswered_is_skipped() {
                super::transient_server_errors_are_retried_and_what_stays_unanswered_is_skipped(
                    $kind,
                );
            }

            #[test]
            fn check_reads_a_remote_challengers_metadata_and_names_its_url() {
                super::check_reads_a_remote_challengers_metadata_and_names_its_url($kind);
            }

            #[test]
            fn a_remote_challenger_gives_the_shadow_figures_of_the_same_model_from_a_file() {
                super::a_remote_challenger_gives_the_shadow_figures_of_the_same_model_from_a_file(
                    $kind,
                );
            }

            #[test]
            fn a_challengers_server_killed_mid_run_costs_comparisons_counted_and_nothing_else() {
                super::a_challengers_server_killed_mid_run_costs_comparisons_counted_and_nothing_else(
                    $kind,
                );
            }

            #[test]
            fn a_server_killed_mid_run_costs_no_record_and_is_probed_until_it_answers() {
                super::a_server_killed_mid_run_costs_no_record_and_is_probed_until_it_answers(
                    $kind,
                );
            }
        }
    };
}

against!(kserve, Kind::KServe);
against!(triton, Kind::Triton);

/// KServe's server takes the binary tensor extension without listing it: forced by the config.
#[test]
fn binary_tensors_forced_on_a_server_that_does_not_list_them() {
    a_remote_teacher_grades_a_demo_stream_as_the_local_teacher_does(Kind::KServe, Some("binary"));
}
