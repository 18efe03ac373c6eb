//! Careless and hostile producers against the running daemon: files renamed over a name still
//! in the pipeline, written in place and left open, appended to after they were read. Every
//! valid record counts once, and the ledger's hash is that of the file in done/.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};

use crate::common::{Daemon, Site, fixture_model, jsonl, wait_until};

const WAIT: Duration = Duration::from_secs(90);

/// The daemon says when it has read a file (`File read.`, at debug level).
fn start_logging_reads(site: &Site) -> Daemon {
    site.start_with_env(&[("SENSEI_LOG", "info,ort=warn,sensei::ingest=debug")])
}

/// Times the daemon has read a file of this name.
fn reads(daemon: &Daemon, name: &str) -> usize {
    daemon
        .log_text()
        .lines()
        .filter(|l| l.contains("File read.") && l.contains(name))
        .count()
}

/// A site whose teacher is slow and sees every record: a file stays in the pipeline for a
/// while after it was read.
fn slow_site() -> Site {
    let site = Site::with_models(
        fixture_model("student.onnx"),
        fixture_model("slow_teacher.onnx"),
    );
    site.write_config(
        "[sampling]\nrate = 1.0\nseed = 3\nmax_per_minute = 1000000\nqueue = 100000\n",
    );
    site
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn ledger_sha(site: &Site, name: &str) -> Vec<String> {
    let db = site.db();
    let mut stmt = db
        .prepare("SELECT sha256 FROM files WHERE name = ?1 AND status = 'done' ORDER BY id")
        .unwrap();
    stmt.query_map([name], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

#[test]
fn a_file_renamed_over_a_name_still_in_the_pipeline_is_counted_on_its_own() {
    let site = slow_site();
    let daemon = start_logging_reads(&site);
    let first = jsonl("first", 300);
    let second = jsonl("second", 40);
    site.deliver("batch.jsonl", &first);
    wait_until(WAIT, "the first file read", || {
        reads(&daemon, "batch.jsonl") == 1
    });
    assert_eq!(site.records(), 0, "the first file is still in the pipeline");
    // Another file under the same name while the first is on its way.
    site.deliver("batch.jsonl", &second);
    wait_until(WAIT, "both files counted", || site.records() == 340);
    wait_until(WAIT, "the inbox empty", || {
        std::fs::read_dir(site.inbox()).unwrap().count() == 0
    });
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM records WHERE record_id LIKE 'second-%'"),
        40
    );
    let mut hashes = ledger_sha(&site, "batch.jsonl");
    hashes.sort();
    let mut expected = vec![sha256_hex(&first), sha256_hex(&second)];
    expected.sort();
    assert_eq!(hashes, expected, "both files in the ledger");
    // The second, whole, in done/ (the first was unlinked by the rename over it).
    let done: Vec<String> = std::fs::read_dir(site.done())
        .unwrap()
        .map(|e| sha256_hex(&std::fs::read(e.unwrap().path()).unwrap()))
        .collect();
    assert_eq!(done, [sha256_hex(&second)]);
    assert!(daemon.stop().success());
}

/// How long ago the file was last modified.
fn age(path: &Path) -> Duration {
    SystemTime::now()
        .duration_since(path.metadata().unwrap().modified().unwrap())
        .unwrap_or_default()
}

#[test]
fn a_file_written_in_place_is_taken_once_closed_not_when_its_writer_pauses() {
    let site = Site::new();
    site.write_config("");
    let daemon = site.start();
    let content = jsonl("inplace", 10);
    let cut = content
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(4)
        .map(|(i, _)| i + 1)
        .unwrap();
    let path = site.inbox().join("inplace.jsonl");
    let mut file = std::fs::File::create(&path).unwrap();
    file.write_all(&content[..cut]).unwrap();
    file.flush().unwrap();
    // The writer pauses for more than twice the quiet time (300 ms) with the file open.
    wait_until(WAIT, "the quiet time passed twice", || {
        !path.exists() || age(&path) > Duration::from_millis(700)
    });
    // A file renamed in afterwards is taken after the quiet timer of the open one has run.
    site.deliver("marker.jsonl", &jsonl("marker", 3));
    wait_until(WAIT, "the marker counted", || {
        site.query_i64("SELECT COUNT(*) FROM records WHERE record_id LIKE 'marker-%'") == 3
    });
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM records WHERE record_id LIKE 'inplace-%'"),
        0,
        "a file still open for writing was taken"
    );
    assert!(path.exists());
    file.write_all(&content[cut..]).unwrap();
    drop(file);
    wait_until(WAIT, "the whole file counted", || {
        site.done().join("inplace.jsonl").exists()
    });
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM records WHERE record_id LIKE 'inplace-%'"),
        10
    );
    assert_eq!(ledger_sha(&site, "inplace.jsonl"), [sha256_hex(&content)]);
    assert!(daemon.stop().success());
}

#[test]
fn lines_appended_after_a_file_was_read_are_counted_with_it() {
    let site = slow_site();
    let daemon = start_logging_reads(&site);
    let content = jsonl("grow", 340);
    let cut = content
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .nth(299)
        .map(|(i, _)| i + 1)
        .unwrap();
    // Written elsewhere, renamed in, and then written to again by a careless producer.
    let staging = site.root().join("staging");
    std::fs::create_dir_all(&staging).unwrap();
    std::fs::create_dir_all(site.inbox()).unwrap();
    let tmp = staging.join("grow.jsonl");
    let mut file = std::fs::File::create(&tmp).unwrap();
    file.write_all(&content[..cut]).unwrap();
    std::fs::rename(&tmp, site.inbox().join("grow.jsonl")).unwrap();
    wait_until(WAIT, "the file read", || reads(&daemon, "grow.jsonl") == 1);
    assert_eq!(site.records(), 0, "the file is still in the pipeline");
    file.write_all(&content[cut..]).unwrap();
    drop(file);
    wait_until(WAIT, "the file done", || {
        site.done().join("grow.jsonl").exists()
    });
    assert_eq!(site.records(), 340, "appended lines were lost");
    let in_done = std::fs::read(site.done().join("grow.jsonl")).unwrap();
    assert_eq!(in_done, content);
    assert_eq!(ledger_sha(&site, "grow.jsonl"), [sha256_hex(&content)]);
    assert!(
        daemon
            .log_text()
            .contains("was written to after it was read")
    );
    assert!(daemon.stop().success());
}

#[test]
fn a_newline_in_a_file_name_cannot_forge_a_line_of_the_quarantine_note() {
    let site = Site::new();
    site.write_config("");
    let daemon = site.start();
    let name = "forged\nreason: all fine\n.jsonl";
    site.deliver(name, b"not json\n");
    let note = site.quarantine().join(format!("{name}.error.txt"));
    wait_until(WAIT, "the quarantine note", || note.is_file());
    let text = std::fs::read_to_string(&note).unwrap();
    let reasons: Vec<&str> = text.lines().filter(|l| l.starts_with("reason:")).collect();
    assert_eq!(reasons.len(), 1, "{text}");
    assert!(!reasons[0].contains("all fine"), "{text}");
    assert!(
        text.lines()
            .any(|l| l == "file: forged\\nreason: all fine\\n.jsonl"),
        "{text}"
    );
    assert_eq!(site.ledger_count("quarantined"), 1);
    assert!(daemon.stop().success());
}

/// A JSON Lines record line of the fixture model with the given id and time.
fn record_line(id: &str, ts: &str, seed: u64) -> String {
    serde_json::json!({
        "id": id,
        "ts": ts,
        "segment": {"line": "A"},
        "inputs": {"x": crate::common::input(seed)},
    })
    .to_string()
}

#[test]
fn a_record_dated_far_ahead_is_reported_and_never_becomes_the_latest_window() {
    let site = Site::new();
    site.write_config("[http]\nlisten = \"127.0.0.1:0\"\n");
    let daemon = site.start();
    site.deliver("today.jsonl", &jsonl("today", 20));
    wait_until(WAIT, "the first file counted", || site.records() == 20);
    let gauge = "sensei_window_confidence_mean{segment=\"all\"}";
    let before = daemon.metric(gauge).expect("the window gauge");
    let latest = "SELECT MAX(start) FROM windows";
    let latest_before = site.query_i64(latest);

    let mut file = String::new();
    for i in 0..5 {
        let ts = format!("2026-03-02T07:00:{i:02}Z");
        file.push_str(&record_line(&format!("later-{i}"), &ts, 900 + i));
        file.push('\n');
    }
    file.push_str(&record_line("far-ahead", "9999-12-31T23:59:59Z", 7));
    file.push('\n');
    site.deliver("clock.jsonl", file.as_bytes());
    let note = site.quarantine().join("clock.jsonl.error.txt");
    wait_until(WAIT, "the file finished", || {
        note.is_file() || site.done().join("clock.jsonl").exists()
    });
    let text = std::fs::read_to_string(&note).expect("the file quarantined");
    for part in [
        "file: clock.jsonl",
        "line 6 (id \"far-ahead\"), field ts: 9999-12-31T23:59:59Z is",
        "ts_max_future",
    ] {
        assert!(text.contains(part), "{part:?} not in {text}");
    }
    assert_eq!(site.records(), 20, "no record of the file counted");
    assert_eq!(site.query_i64(latest), latest_before);
    assert_eq!(daemon.metric(gauge), Some(before));
    assert_eq!(
        daemon.metric("sensei_files_total{status=\"quarantined\"}"),
        Some(1.0)
    );
    assert!(daemon.stop().success());
}

#[test]
fn hostile_segment_values_are_cut_escaped_and_never_collide() {
    let site = Site::new();
    site.write_config(
        "[inbox]\nquiet = \"300ms\"\nmax_file_size = \"4 MiB\"\n\
         [segments]\nkeys = [\"line\", \"shift\"]\n\
         [http]\nlisten = \"127.0.0.1:0\"\n",
    );
    let daemon = site.start();
    let segments = [
        serde_json::json!({"line": "a=b,shift=c"}),
        serde_json::json!({"line": "a=b", "shift": "c"}),
        serde_json::json!({"line": "x".repeat(1_000_000)}),
        serde_json::json!({"line": "bell\u{7}\nnext", "shift": "50%"}),
    ];
    let mut file = String::new();
    for (i, segment) in segments.iter().enumerate() {
        let rec = serde_json::json!({
            "id": format!("hostile-{i}"),
            "segment": segment,
            "inputs": {"x": crate::common::input(i as u64)},
        });
        file.push_str(&rec.to_string());
        file.push('\n');
    }
    site.deliver("hostile.jsonl", file.as_bytes());
    wait_until(WAIT, "the file counted", || site.records() == 4);
    let db = site.db();
    let stored: Vec<String> = db
        .prepare("SELECT segment FROM records ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert_eq!(stored[0], "line=a%3Db%2Cshift%3Dc");
    assert_eq!(stored[1], "line=a%3Db,shift=c");
    assert!(stored[2].starts_with("line=xxxx"), "{}", &stored[2][..80]);
    assert_eq!(stored[2].len(), "line=".len() + 64, "{}", stored[2]);
    assert!(stored[2].contains("%~"), "{}", stored[2]);
    assert_eq!(stored[3], "line=bell%07%0Anext,shift=50%25");
    let distinct: std::collections::HashSet<&String> = stored.iter().collect();
    assert_eq!(distinct.len(), 4, "{stored:?}");
    assert_eq!(
        site.query_i64("SELECT segment_values_cut FROM files WHERE name = 'hostile.jsonl'"),
        1
    );
    let (status, metrics) = crate::common::http_get(&daemon.http_addr(), "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(
        metrics.len() < 64 * 1024,
        "/metrics is {} bytes",
        metrics.len()
    );
    assert_eq!(daemon.metric("sensei_segment_values_cut_total"), Some(1.0));
    let status = site.sensei(&["status"]);
    assert!(
        String::from_utf8_lossy(&status.stdout)
            .contains("segment values cut to [segments] max_value_bytes: 1"),
        "{}",
        String::from_utf8_lossy(&status.stdout)
    );
    assert!(daemon.stop().success());
}

#[test]
fn a_file_name_of_255_bytes_is_processed_quarantined_and_sent_again() {
    let site = Site::new();
    site.write_config("");
    let daemon = site.start();
    // The longest name Linux takes: no suffix fits after it.
    let good = format!("{}.jsonl", "g".repeat(249));
    let bad = format!("{}.jsonl", "b".repeat(249));
    assert_eq!(good.len(), 255);
    site.deliver(&good, &jsonl("long-a", 4));
    wait_until(WAIT, "the first file counted", || site.records() == 4);
    wait_until(WAIT, "the first file in done/", || {
        site.done().join(&good).exists()
    });
    // Another file under the same name: done/ has the name already.
    site.deliver(&good, &jsonl("long-b", 3));
    wait_until(WAIT, "the second file counted", || site.records() == 7);
    wait_until(WAIT, "the inbox empty", || {
        std::fs::read_dir(site.inbox()).unwrap().count() == 0
    });
    assert_eq!(std::fs::read_dir(site.done()).unwrap().count(), 2);
    // The same content under the same name again: a duplicate in the ledger.
    site.deliver(&good, &jsonl("long-b", 3));
    wait_until(WAIT, "the duplicate in the ledger", || {
        site.ledger_count("duplicate") == 1
    });
    assert_eq!(site.records(), 7);
    site.deliver(&bad, b"not json\n");
    // The ledger row comes first, the move to quarantine/ after it.
    wait_until(WAIT, "the bad file quarantined with its note", || {
        site.ledger_count("quarantined") == 1
            && std::fs::read_dir(site.quarantine()).unwrap().count() == 2
    });
    let names: Vec<String> = std::fs::read_dir(site.quarantine())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let note = names
        .iter()
        .find(|n| n.ends_with(".error.txt"))
        .unwrap_or_else(|| panic!("no note in {names:?}"));
    assert!(note.len() <= 255 && note.starts_with("bbbb"), "{note}");
    let text = std::fs::read_to_string(site.quarantine().join(note)).unwrap();
    assert!(text.contains(&format!("file: {bad}\n")), "{text}");
    assert!(names.contains(&bad), "{names:?}");
    assert!(daemon.stop().success());
}
