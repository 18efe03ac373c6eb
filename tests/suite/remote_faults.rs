//! A teacher on an inference server in trouble, against the real servers of
//! `tests/common/oip.rs`: slow past the timeout, hung (the server's process stopped with
//! SIGSTOP), answering errors that are not transient, or answers of the wrong shape, datatype
//! or format. The student answers every record and each one is counted once; what the teacher
//! could not answer is skipped with its own `records.sampled` code (5 out of reach, 4 failed),
//! in the database and in `sensei status`; a wrong answer is never compared with the student.
//! The servers count the inference requests that reach them (`--count-file`), so the tests can
//! tell what was retried and that the circuit breaker stopped sending.

use std::collections::BTreeMap;
use std::path::Path;

use super::remote::{
    WAIT, deliver_until_answered, output, remote_teacher, sampled_codes, status_json,
    wait_until_records,
};
use crate::common::oip::{Kind, Server};
use crate::common::{Site, fixture_model, jsonl, wait_until};

/// Inference requests the server has counted so far.
fn requests(count_file: &Path) -> usize {
    std::fs::read_to_string(count_file)
        .unwrap_or_default()
        .lines()
        .count()
}

/// Waits until the server has counted at least `n` requests, and returns how many it counted.
fn wait_for_requests(count_file: &Path, n: usize) -> usize {
    wait_until(WAIT, &format!("{n} requests counted by the server"), || {
        requests(count_file) >= n
    });
    requests(count_file)
}

/// A site with the test fixture models, its teacher `model` on `server`, every record sampled;
/// `teacher` is the rest of the `[teacher]` table.
fn site_on(server: &Server, teacher: &str, extra: &str) -> Site {
    let site = Site::new();
    site.write_config(&format!(
        "{extra}[sampling]\nrate = 1.0\nmax_per_minute = 1000000\nqueue = 100000\n{}{teacher}",
        remote_teacher(&server.url(), "teacher")
    ));
    site
}

/// Replays `n` fresh records; the command's output.
fn replay(site: &Site, prefix: &str, n: usize) -> String {
    let data = site.root().join(format!("{prefix}.jsonl"));
    std::fs::write(&data, jsonl(prefix, n)).unwrap();
    let out = site.sensei(&["replay", data.to_str().unwrap()]);
    let text = output(&out);
    assert!(out.status.success(), "{text}");
    text
}

/// Every record has its student row, each id once.
fn assert_every_record_counted_once(site: &Site, n: i64) {
    assert_eq!(site.records(), n);
    assert_eq!(
        site.query_i64(
            "SELECT count(DISTINCT record_id) FROM records WHERE prediction IS NOT NULL"
        ),
        n
    );
}

fn a_server_slower_than_the_timeout_costs_samples_not_records(kind: Kind) {
    let dir = tempfile::tempdir().unwrap();
    let counted = dir.path().join("requests");
    // Ten times slower than the timeout.
    let server = Server::start(
        kind,
        &[("teacher", fixture_model("teacher.onnx"))],
        &["--delay", "5", "--count-file", counted.to_str().unwrap()],
        dir.path(),
    );
    // A timeout is not tried again, whatever `retries` says; three timeouts in a row open the
    // breaker for longer than the test.
    let site = site_on(
        &server,
        "max_batch = 8\ntimeout = \"500ms\"\nretries = 3\nbackoff = \"5ms\"\nin_flight = 1\n\
         breaker_after = 3\nbreaker_open = \"1h\"\n",
        "",
    );
    let text = replay(&site, "slow", 100);

    assert_every_record_counted_once(&site, 100);
    assert_eq!(sampled_codes(&site), BTreeMap::from([(5, 100)]));
    assert_eq!(site.query_i64("SELECT count(*) FROM teacher_samples"), 0);
    let status = status_json(&site);
    assert_eq!(
        (&status["skipped_unreachable"], &status["teacher_samples"]),
        (&serde_json::json!(100), &serde_json::json!(0)),
        "{status}"
    );
    assert_eq!(
        site.query_i64(
            "SELECT COALESCE(SUM(skipped_unreachable), 0) FROM windows WHERE segment = '*'"
        ),
        100
    );
    assert!(
        text.contains("inference server is out of reach")
            && text.contains(&format!("{}/v2/models/teacher", server.url())),
        "{text}"
    );
    // Three requests, one per batch before the breaker opened: none sent again. (Triton's
    // Python backend takes one request at a time and counts it only then: its count says
    // nothing of what was sent.)
    if kind == Kind::KServe {
        assert_eq!(wait_for_requests(&counted, 3), 3);
    }
}

/// A hung server: one that accepts connections and answers nothing. KServe's is held by its
/// `--hold-file` and counts each request as it arrives, so the test can count what the
/// breaker let through while it hung; Triton's process is stopped (SIGSTOP) and let go on
/// (SIGCONT). Triton's Python backend takes one request at a time and counts it only then,
/// so its count tells nothing of what was sent while it hung.
fn a_hung_server_is_left_alone_by_the_breaker_and_probed_after_it_wakes(kind: Kind) {
    let site = Site::new();
    let counted = site.root().join("requests");
    let hold = site.root().join("hold");
    let mut flags = vec!["--count-file", counted.to_str().unwrap()];
    if kind == Kind::KServe {
        flags.extend(["--hold-file", hold.to_str().unwrap()]);
    }
    let server = Server::start(
        kind,
        &[("teacher", fixture_model("teacher.onnx"))],
        &flags,
        site.root(),
    );
    let breaker_after = 2;
    site.write_config(&format!(
        "[http]\nlisten = \"127.0.0.1:0\"\n\
         [sampling]\nrate = 1.0\nmax_per_minute = 1000000\nqueue = 100000\n{}\
         max_batch = 4\ntimeout = \"500ms\"\nretries = 2\nbackoff = \"5ms\"\nin_flight = 1\n\
         breaker_after = {breaker_after}\nbreaker_open = \"2s\"\n",
        remote_teacher(&server.url(), "teacher"),
    ));
    let daemon = site.start();
    site.deliver("warm.jsonl", &jsonl("warm", 8));
    wait_until_records(&site, 8);
    assert_eq!(sampled_codes(&site), BTreeMap::from([(1, 8)]));
    let before = wait_for_requests(&counted, 1);

    // The server hangs.
    match kind {
        Kind::KServe => std::fs::write(&hold, "").unwrap(),
        Kind::Triton => server.pause(),
    }
    site.deliver("a.jsonl", &jsonl("a", 200));
    wait_until_records(&site, 208);
    let codes = sampled_codes(&site);
    assert_eq!(codes, BTreeMap::from([(1, 8), (5, 200)]), "{codes:?}");
    crate::common::wait_until(WAIT, "the circuit breaker's warning", || {
        daemon
            .log_text()
            .contains("inference server is out of reach")
    });
    assert_eq!(
        daemon.metric("sensei_teacher_samples_skipped_total{reason=\"unreachable\"}"),
        Some(200.0)
    );
    assert_eq!(status_json(&site)["skipped_unreachable"], 200);
    if kind == Kind::KServe {
        // Without the breaker, the 200 samples in batches of at most 4 would have been 50
        // requests or more, each waiting for its timeout; a timeout tried again would have
        // been 3 per batch. With it, `breaker_after` batches timed out and the rest were skipped
        // at once (at most one probe more, were the daemon held up for the 2 s the breaker
        // stays open before all of them were in).
        let hung = wait_for_requests(&counted, before + breaker_after) - before;
        assert!(
            (breaker_after..=breaker_after + 1).contains(&hung),
            "{hung} requests reached the hung server"
        );
    }

    // It wakes: a probe finds it answering, and the samples go to it again.
    match kind {
        Kind::KServe => std::fs::remove_file(&hold).unwrap(),
        Kind::Triton => server.resume(),
    }
    let n = deliver_until_answered(&site, 208);
    assert!(
        daemon.log_text().contains("answers again"),
        "{}",
        daemon.log_text()
    );
    assert_eq!(
        site.query_i64("SELECT count(DISTINCT record_id) FROM records"),
        208 + 10 * n as i64
    );
    assert_eq!(site.ledger_count("done"), 2 + n as i64);
    daemon.stop();
}

/// One record per request (`max_batch = 1`), so that the server's count is the number of
/// requests sensei sent per record; `breaker_after = 1`, so that a fault the breaker took for
/// the server being out of reach would stop the requests after the first.
const ONE_PER_REQUEST: &str = "max_batch = 1\ntimeout = \"10s\"\nretries = 3\nbackoff = \"5ms\"\n\
                               in_flight = 1\nbreaker_after = 1\nbreaker_open = \"1h\"\n";

/// What sensei says of each wrong answer of `kserve_teacher.py --answer`, and the records
/// replayed against it (an answer too long is read up to its limit, 64 MiB, for each).
const WRONG_ANSWERS: [(&str, &str, usize); 5] = [
    (
        "wrong-shape",
        "output 'logits' came back shaped [1, 5], the metadata says [10]",
        20,
    ),
    (
        "wrong-dtype",
        "output 'logits' came back as INT64, expected FP32",
        20,
    ),
    ("missing-output", "the answer has no output 'logits'", 20),
    (
        "garbage",
        "the answer is not Open Inference Protocol JSON (expected value",
        20,
    ),
    (
        "too-long",
        "HTTP 200 OK: the answer is longer than 67108864 bytes, the most read for this batch",
        3,
    ),
];

#[test]
fn answers_of_the_wrong_shape_datatype_or_format_are_refused_and_never_compared() {
    for (fault, why, n) in WRONG_ANSWERS {
        let dir = tempfile::tempdir().unwrap();
        let counted = dir.path().join("requests");
        let server = Server::start(
            Kind::KServe,
            &[("teacher", fixture_model("teacher.onnx"))],
            &["--answer", fault, "--count-file", counted.to_str().unwrap()],
            dir.path(),
        );
        let site = site_on(&server, ONE_PER_REQUEST, "");
        let text = replay(&site, fault, n);

        assert_every_record_counted_once(&site, n as i64);
        assert_eq!(
            sampled_codes(&site),
            BTreeMap::from([(4, n as i64)]),
            "{fault}: {text}"
        );
        assert_eq!(
            site.query_i64("SELECT count(*) FROM teacher_samples"),
            0,
            "{fault}: a wrong answer was compared with the student"
        );
        let status = status_json(&site);
        assert_eq!(
            (
                &status["skipped_failed"],
                &status["skipped_unreachable"],
                &status["teacher_samples"]
            ),
            (
                &serde_json::json!(n),
                &serde_json::json!(0),
                &serde_json::json!(0)
            ),
            "{fault}: {status}"
        );
        // The refusal logged with the model's address and what was wrong: the first at once,
        // the rest at most once a minute with their counts, not once per record.
        let line = format!("{}/v2/models/teacher: {why}", server.url());
        let lines = text.matches(&line).count();
        assert!(lines >= 1, "{fault}: {line}\n{text}");
        assert!(
            lines < n.max(2),
            "{fault}: {lines} lines for {n} records\n{text}"
        );
        // Not retried, and the server that answered is not taken for out of reach.
        assert_eq!(requests(&counted), n, "{fault}");
        assert!(!text.contains("out of reach"), "{fault}: {text}");
    }
}

#[test]
fn errors_that_are_not_transient_are_not_retried_and_transient_ones_are() {
    for status in ["400", "404", "500"] {
        let dir = tempfile::tempdir().unwrap();
        let counted = dir.path().join("requests");
        let server = Server::start(
            Kind::KServe,
            &[("teacher", fixture_model("teacher.onnx"))],
            &[
                "--fail-every",
                "1",
                "--fail-status",
                status,
                "--count-file",
                counted.to_str().unwrap(),
            ],
            dir.path(),
        );
        let site = site_on(&server, ONE_PER_REQUEST, "");
        let text = replay(&site, &format!("e{status}"), 20);
        assert_every_record_counted_once(&site, 20);
        assert_eq!(sampled_codes(&site), BTreeMap::from([(4, 20)]), "{text}");
        assert_eq!(status_json(&site)["skipped_failed"], 20);
        let lines = text
            .matches(&format!(
                "{}/v2/models/teacher: HTTP {status} ",
                server.url()
            ))
            .count();
        assert!(
            (1..20).contains(&lines),
            "{lines} lines for 20 records\n{text}"
        );
        // One request per record: none sent again.
        assert_eq!(requests(&counted), 20, "HTTP {status}");
    }

    // HTTP 503 is transient: each try is sent `retries` times more, then the batch counts as out
    // of reach, which opens the breaker (`breaker_after = 1`) for longer than the test.
    let dir = tempfile::tempdir().unwrap();
    let counted = dir.path().join("requests");
    let server = Server::start(
        Kind::KServe,
        &[("teacher", fixture_model("teacher.onnx"))],
        &[
            "--fail-every",
            "1",
            "--count-file",
            counted.to_str().unwrap(),
        ],
        dir.path(),
    );
    let site = site_on(&server, ONE_PER_REQUEST, "");
    let text = replay(&site, "e503", 20);
    assert_every_record_counted_once(&site, 20);
    assert_eq!(sampled_codes(&site), BTreeMap::from([(5, 20)]), "{text}");
    assert_eq!(status_json(&site)["skipped_unreachable"], 20);
    assert_eq!(requests(&counted), 4, "one request and three retries");
}

/// The tests above that every server can play, against each.
macro_rules! against {
    ($server:ident, $kind:expr) => {
        mod $server {
            use crate::common::oip::Kind;

            #[test]
            fn a_server_slower_than_the_timeout_costs_samples_not_records() {
                super::a_server_slower_than_the_timeout_costs_samples_not_records($kind);
            }

            #[test]
            fn a_hung_server_is_left_alone_by_the_breaker_and_probed_after_it_wakes() {
                super::a_hung_server_is_left_alone_by_the_breaker_and_probed_after_it_wakes($kind);
            }
        }
    };
}

against!(kserve, Kind::KServe);
against!(triton, Kind::Triton);
