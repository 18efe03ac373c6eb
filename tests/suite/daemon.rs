//! The running daemon: files dropped into its inbox, duplicates, crashes, bad input.

use std::time::Duration;

use crate::common::{Site, jsonl, wait_until};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn a_file_renamed_into_the_inbox_is_processed_and_moved_to_done() {
    let site = Site::new();
    site.write_config("");
    let daemon = site.start();
    site.deliver("batch-001.jsonl", &jsonl("a", 200));
    wait_until(WAIT, "200 records committed", || site.records() == 200);
    wait_until(WAIT, "file moved to done/", || {
        site.done().join("batch-001.jsonl").is_file()
    });
    assert!(!site.inbox().join("batch-001.jsonl").exists());
    // Teacher samples carry every comparison metric and what re-distillation needs.
    let samples = site.query_i64("SELECT COUNT(*) FROM teacher_samples");
    assert!(
        samples > 50 && samples < 150,
        "rate 0.5 of 200 gave {samples}"
    );
    assert_eq!(
        site.query_i64(
            "SELECT COUNT(*) FROM teacher_samples WHERE kl IS NULL OR attention_kl IS NULL
             OR disagreement IS NULL OR total_variation IS NULL OR teacher_attention IS NULL"
        ),
        0
    );
    assert_eq!(
        site.query_i64(
            "SELECT COUNT(*) FROM teacher_sample_inputs WHERE name = 'x' AND length(data) = 256"
        ),
        samples
    );
    // Per-segment windows add up to the all-segments row.
    assert_eq!(
        site.query_i64("SELECT SUM(records) FROM windows WHERE segment = '*'"),
        200
    );
    assert_eq!(
        site.query_i64("SELECT SUM(records) FROM windows WHERE segment = 'line=A'"),
        100
    );
    assert!(daemon.stop().success());
}

/// Runs sensei with `args` and waits for its exit, at most `limit` (then kills it and fails):
/// its exit code and stderr.
fn exit_within(site: &Site, args: &[&str], limit: Duration) -> (Option<i32>, String) {
    let err = site.root().join("second.err");
    let mut child = std::process::Command::new(crate::common::sensei_bin())
        .arg("--config")
        .arg(site.config_path())
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("spawn sensei");
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("sensei {args:?} still runs beside the first daemon");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (
        status.code(),
        std::fs::read_to_string(&err).unwrap_or_default(),
    )
}

/// A second `sensei run` (or `replay`) on the state directory of a running daemon exits at once,
/// naming the daemon's pid, and takes no file; the first goes on counting each file once.
#[test]
fn a_second_daemon_on_one_state_directory_exits_naming_the_first() {
    let site = Site::new();
    site.write_config("");
    let daemon = site.start();
    let pid = daemon.child.id();
    site.deliver("batch-001.jsonl", &jsonl("a", 50));
    for args in [&["run"][..], &["replay", "/dev/null"][..]] {
        let (code, text) = exit_within(&site, args, WAIT);
        assert_ne!(code, Some(0), "{args:?}: {text}");
        assert!(
            text.contains(&format!(
                "another sensei (pid {pid}) is running on the state directory"
            )) && text.contains("sensei.lock"),
            "{args:?}: {text}"
        );
    }
    site.deliver("batch-002.jsonl", &jsonl("b", 50));
    wait_until(WAIT, "100 records committed", || site.records() == 100);
    assert_eq!(site.ledger_count("done"), 2);
    drop(daemon);
    // Once the first is gone (even without a clean exit), the next one starts.
    let daemon = site.start();
    drop(daemon);
}

#[test]
fn the_same_file_dropped_twice_counts_once() {
    let site = Site::new();
    site.write_config("");
    let daemon = site.start();
    let content = jsonl("dup", 120);
    site.deliver("first.jsonl", &content);
    wait_until(WAIT, "first file done", || {
        site.done().join("first.jsonl").is_file()
    });
    // Same content under another name, then under the same name again.
    site.deliver("second.jsonl", &content);
    wait_until(WAIT, "second file moved", || {
        site.done().join("second.jsonl").is_file()
    });
    site.deliver("first.jsonl", &content);
    wait_until(WAIT, "re-dropped file moved", || {
        site.done().join("first.jsonl.1").is_file()
    });
    assert_eq!(site.records(), 120);
    assert_eq!(site.ledger_count("done"), 1);
    // Both copies are in the ledger, the one under the counted file's name too: it is another
    // file (not the counted one left behind by a crash).
    assert_eq!(site.ledger_count("duplicate"), 2);
    assert!(daemon.stop().success());
}

#[test]
fn a_daemon_killed_mid_stream_and_restarted_counts_every_record_once() {
    let site = Site::new();
    site.write_config("[inbox]\nquiet = \"300ms\"\nmax_file_size = \"16 MiB\"\n");
    let files = 8;
    let per_file = 1500;
    let daemon = site.start();
    for f in 0..files {
        site.deliver(
            &format!("part-{f:02}.jsonl"),
            &jsonl(&format!("k{f}"), per_file),
        );
    }
    // Kill once some, but not all, files have committed.
    wait_until(WAIT, "a first commit", || site.ledger_count("done") >= 1);
    daemon.kill();
    let committed_before = site.ledger_count("done");
    let daemon = site.start();
    wait_until(Duration::from_secs(180), "every file done", || {
        site.ledger_count("done") == files
    });
    let total = files * per_file as i64;
    assert_eq!(
        site.records(),
        total,
        "killed after {committed_before} files"
    );
    assert_eq!(
        site.query_i64("SELECT COUNT(DISTINCT record_id) FROM records"),
        total
    );
    assert_eq!(
        site.query_i64("SELECT SUM(records) FROM windows WHERE segment = '*'"),
        total
    );
    wait_until(WAIT, "inbox empty", || {
        std::fs::read_dir(site.inbox()).unwrap().count() == 0
    });
    assert_eq!(site.integrity_check(), "ok");
    assert!(daemon.stop().success());
}

/// One bad file of each kind the issue names; each must be quarantined with a reason that says
/// what was wrong, while a good file delivered after them is still processed.
#[test]
fn bad_files_are_quarantined_with_a_reason_and_the_daemon_goes_on() {
    let site = Site::new();
    site.write_config("[inbox]\nquiet = \"300ms\"\nmax_file_size = \"64 KiB\"\n");
    let mut daemon = site.start();
    let row = |x: &str| format!("{{\"id\": \"r\", \"inputs\": {{\"x\": {x}}}}}\n");
    let good_x = serde_json::to_string(&crate::common::input(1)).unwrap();
    let nan_npy = {
        let header = "{'descr': '<f4', 'fortran_order': False, 'shape': (1, 8, 8), }";
        let mut h = header.to_string();
        while !(10 + h.len() + 1).is_multiple_of(64) {
            h.push(' ');
        }
        h.push('\n');
        let mut b = b"\x93NUMPY\x01\x00".to_vec();
        b.extend((h.len() as u16).to_le_bytes());
        b.extend(h.as_bytes());
        for i in 0..64 {
            let v = if i == 10 { f32::NAN } else { 0.5 };
            b.extend(v.to_le_bytes());
        }
        b
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "malformed.jsonl",
            format!("{}{{\"inputs\": {{\"x\": [[1,2\n", row(&good_x)).into_bytes(),
            "line 2",
        ),
        (
            "wrong_shape.jsonl",
            row("[[1.0, 2.0], [3.0, 4.0]]").into_bytes(),
            "expected shape [8, 8]",
        ),
        (
            "wrong_dtype.jsonl",
            row(&good_x.replacen("0.", "\"a\" ,0.", 1)).into_bytes(),
            "expected float32",
        ),
        ("nan.npy", nan_npy, "NaN"),
        ("empty.jsonl", Vec::new(), "empty"),
        (
            "garbage.jsonl",
            (0..2000u32)
                .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
                .collect(),
            "line 1",
        ),
        ("too_big.jsonl", vec![b' '; 70 * 1024], "over the limit"),
        (
            "missing_input.jsonl",
            b"{\"id\": \"r\", \"inputs\": {}}\n".to_vec(),
            "missing input 'x'",
        ),
        (
            "unknown_input.jsonl",
            format!("{{\"inputs\": {{\"x\": {good_x}, \"y\": [1]}}}}\n").into_bytes(),
            "unknown input 'y'",
        ),
    ];
    for (name, content, _) in &cases {
        site.deliver(name, content);
    }
    site.deliver("good.jsonl", &jsonl("good", 10));
    wait_until(WAIT, "good file done", || {
        site.done().join("good.jsonl").is_file()
    });
    wait_until(WAIT, "every bad file quarantined", || {
        site.ledger_count("quarantined") == cases.len() as i64
    });
    for (name, _, expected) in &cases {
        let note = site.quarantine().join(format!("{name}.error.txt"));
        let text = std::fs::read_to_string(&note)
            .unwrap_or_else(|e| panic!("{name}: no quarantine note {}: {e}", note.display()));
        assert!(
            text.contains(expected),
            "{name}: note does not mention {expected:?}:\n{text}"
        );
        assert!(
            site.quarantine().join(name).is_file(),
            "{name} not moved to quarantine"
        );
    }
    assert_eq!(site.records(), 10);
    assert!(daemon.alive());
    assert!(daemon.stop().success());
}

#[test]
fn a_file_written_in_place_is_taken_once_quiet_and_temporary_names_are_ignored() {
    let site = Site::new();
    site.write_config("");
    let daemon = site.start();
    std::fs::write(site.inbox().join(".hidden.jsonl"), jsonl("h", 5)).unwrap();
    std::fs::write(site.inbox().join("upload.jsonl.part"), jsonl("p", 5)).unwrap();
    std::fs::write(site.inbox().join("upload.tmp"), jsonl("t", 5)).unwrap();
    std::fs::write(site.inbox().join("inplace.jsonl"), jsonl("inplace", 30)).unwrap();
    wait_until(WAIT, "in-place file done", || {
        site.done().join("inplace.jsonl").is_file()
    });
    assert_eq!(site.records(), 30);
    for ignored in [".hidden.jsonl", "upload.jsonl.part", "upload.tmp"] {
        assert!(
            site.inbox().join(ignored).is_file(),
            "{ignored} was touched"
        );
    }
    assert!(daemon.stop().success());
}

#[test]
fn files_present_at_start_are_caught_up() {
    let site = Site::new();
    site.write_config("");
    std::fs::create_dir_all(site.inbox()).unwrap();
    std::fs::write(site.inbox().join("backlog-1.jsonl"), jsonl("b1", 40)).unwrap();
    std::fs::write(site.inbox().join("backlog-2.jsonl"), jsonl("b2", 40)).unwrap();
    let daemon = site.start();
    wait_until(WAIT, "backlog done", || site.ledger_count("done") == 2);
    assert_eq!(site.records(), 80);
    assert!(daemon.stop().success());
}

#[test]
fn late_labels_join_records_by_id_in_either_order() {
    let site = Site::new();
    site.write_config("");
    let daemon = site.start();
    site.deliver("early.labels.jsonl", b"{\"id\": \"lab-3\", \"label\": 7}\n");
    wait_until(WAIT, "early labels done", || site.ledger_count("done") == 1);
    site.deliver("records.jsonl", &jsonl("lab", 10));
    wait_until(WAIT, "records done", || site.records() == 10);
    site.deliver(
        "late.labels.jsonl",
        b"{\"id\": \"lab-1\", \"label\": 4}\n{\"id\": 2, \"label\": 1}\n",
    );
    wait_until(WAIT, "late labels done", || site.ledger_count("done") == 3);
    assert_eq!(
        site.query_i64("SELECT label FROM records WHERE record_id = 'lab-3'"),
        7
    );
    assert_eq!(
        site.query_i64("SELECT label FROM records WHERE record_id = 'lab-1'"),
        4
    );
    assert_eq!(
        site.query_i64("SELECT COUNT(*) FROM records WHERE label IS NOT NULL"),
        2
    );
    assert_eq!(
        site.query_i64("SELECT matched FROM late_labels WHERE record_id = '2'"),
        0
    );
    assert!(daemon.stop().success());
}

#[test]
fn the_teacher_budget_holds_and_skipped_samples_are_counted() {
    let site = Site::new();
    site.write_config("[sampling]\nrate = 1.0\nmax_per_minute = 10\nqueue = 1000\n");
    let daemon = site.start();
    site.deliver("burst.jsonl", &jsonl("burst", 300));
    wait_until(WAIT, "burst done", || site.records() == 300);
    let samples = site.query_i64("SELECT COUNT(*) FROM teacher_samples");
    let skipped = site.query_i64("SELECT COUNT(*) FROM records WHERE sampled = 2");
    // 10 tokens at start, plus at most a fraction refilled while the burst ran.
    assert!((10..=11).contains(&samples), "{samples} teacher samples");
    assert_eq!(samples + skipped, 300);
    assert_eq!(
        site.query_i64("SELECT SUM(skipped_budget) FROM windows WHERE segment = '*'"),
        skipped
    );
    assert!(daemon.stop().success());
}

/// Every file of the malformed-input corpus (`tests/corpus/EXPECTED.tsv`) plus filesystem
/// oddities dropped into one running daemon: each is quarantined with its reason, and the valid
/// files beside them are all counted.
#[test]
fn the_bad_input_corpus_is_quarantined_and_valid_files_still_count() {
    let site = Site::new();
    site.write_config("[inbox]\nquiet = \"300ms\"\nmax_file_size = \"2 MiB\"\n");
    let corpus = crate::common::repo().join("tests/corpus");
    let expected: Vec<(String, String)> = std::fs::read_to_string(corpus.join("EXPECTED.tsv"))
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let (f, e) = l.split_once('\t').expect("file<TAB>expected");
            (f.to_string(), e.to_string())
        })
        .collect();
    assert!(expected.len() >= 30, "corpus has {} cases", expected.len());
    let daemon = site.start();
    for (file, _) in &expected {
        site.deliver(file, &std::fs::read(corpus.join(file)).unwrap());
    }
    // Filesystem oddities: a symlink pointing out of the inbox and a FIFO.
    let outside = site.root().join("outside.jsonl");
    std::fs::write(&outside, jsonl("outside", 3)).unwrap();
    std::os::unix::fs::symlink(&outside, site.inbox().join("link.jsonl")).unwrap();
    let fifo = site.inbox().join("pipe.jsonl");
    assert!(
        std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let mut valid = 0;
    for entry in std::fs::read_dir(corpus.join("valid")).unwrap() {
        let path = entry.unwrap().path();
        let name = format!("valid-{}", path.file_name().unwrap().to_string_lossy());
        site.deliver(&name, &std::fs::read(&path).unwrap());
        valid += 1;
    }
    let bad = expected.len() as i64 + 2;
    wait_until(WAIT, "every corpus file quarantined", || {
        site.ledger_count("quarantined") == bad
    });
    wait_until(WAIT, "every valid file done", || {
        site.ledger_count("done") == valid
    });
    // The ledger row commits before the file moves and its note is written.
    let notes = expected
        .iter()
        .map(|(file, _)| file.as_str())
        .chain(["link.jsonl", "pipe.jsonl"]);
    for file in notes {
        let note = site.quarantine().join(format!("{file}.error.txt"));
        wait_until(WAIT, &format!("the quarantine note of {file}"), || {
            note.is_file()
        });
    }
    for (file, fragment) in &expected {
        let note = std::fs::read_to_string(site.quarantine().join(format!("{file}.error.txt")))
            .unwrap_or_else(|e| panic!("{file}: no quarantine note: {e}"));
        assert!(
            note.contains(fragment.as_str()),
            "{file}: expected {fragment:?} in\n{note}"
        );
    }
    let link_note =
        std::fs::read_to_string(site.quarantine().join("link.jsonl.error.txt")).unwrap();
    assert!(
        link_note.contains("symbolic links are not followed"),
        "{link_note}"
    );
    let fifo_note =
        std::fs::read_to_string(site.quarantine().join("pipe.jsonl.error.txt")).unwrap();
    assert!(fifo_note.contains("not a regular file"), "{fifo_note}");
    // The symlink was moved, not its target.
    assert!(outside.is_file());
    assert!(site.records() > 0);
    assert!(daemon.stop().success());
}

/// The running daemon deletes per-record rows past `[store] record_retention` by itself, keeps
/// the window sums, and says what it deleted in `status`.
#[test]
fn the_daemon_deletes_records_past_their_retention_and_says_so() {
    let site = Site::new();
    site.write_config("[store]\nrecord_retention = \"1s\"\n");
    let daemon = site.start();
    site.deliver("old.jsonl", &jsonl("old", 50));
    wait_until(WAIT, "old.jsonl done", || {
        site.done().join("old.jsonl").is_file()
    });
    assert_eq!(site.records(), 50);
    wait_until(Duration::from_secs(60), "the records deleted", || {
        site.records() == 0
    });
    assert_eq!(
        site.query_i64("SELECT SUM(records) FROM windows WHERE segment = '*'"),
        50
    );
    assert_eq!(
        site.query_i64("SELECT records FROM retention WHERE reason = 'age'"),
        50
    );
    let out = site.sensei(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(
            "deleted past [store] record_retention: 50 per-record rows, every record up to seq 50"
        ),
        "{text}"
    );
    assert!(daemon.stop().success());
}
