//! The store's tests, on real SQLite files.

use std::path::{Path, PathBuf};

use super::checkpoint::{BACKSTOP_CHECKPOINT_PAGES, PASS_PAGES, next_wait};
use super::migrations::MIGRATIONS;
use super::*;
use crate::compare::Comparison;
use crate::record::Tensor;

fn record(id: &str, segment: &str, ts_ms: i64, teacher: Option<TeacherRow>) -> RecordRow {
    RecordRow {
        features: Vec::new(),
        record_id: id.into(),
        ts_ms,
        segment: segment.into(),
        prediction: Some(1),
        confidence: Some(0.9),
        entropy: Some(0.2),
        value: None,
        latency_us: 100,
        sampled: if teacher.is_some() { 1 } else { 0 },
        label: None,
        teacher,
    }
}

fn sample(disagree: bool, weight: f64) -> TeacherRow {
    TeacherRow {
        weight,
        teacher_prediction: Some(if disagree { 0 } else { 1 }),
        teacher_confidence: Some(0.8),
        comparison: Comparison {
            disagreement: Some(disagree),
            kl: Some(0.5),
            total_variation: Some(0.1),
            attention_kl: Some(0.2),
            ..Comparison::default()
        },
        latency_us: 1000,
        output_shape: vec![2],
        teacher_output: vec![0.1, 0.9],
        student_output: vec![0.2, 0.8],
        teacher_attention: None,
        inputs: vec![("x".into(), Tensor::f32(vec![2], vec![1.0, 2.0]))],
        shadow: Vec::new(),
    }
}

/// Retention by age as the writer runs it: steps until nothing is due; the records deleted.
fn apply_retention(store: &mut Store, cutoff_ms: i64) -> usize {
    let mut deleted = 0;
    while let Some(step) = store.retention_step(cutoff_ms, None, 2, 0).unwrap() {
        deleted += step.records;
    }
    deleted
}

/// Commits with the next free sequence numbers, as the writer does.
fn commit(
    store: &mut Store,
    mut file: FileCommit,
    window_ms: i64,
    now_ms: i64,
) -> Result<CommitOutcome> {
    file.first_seq = store.next_seq()?;
    store.commit_file(&file, window_ms, now_ms, None)
}

fn file(name: &str, sha: &str, records: Vec<RecordRow>) -> FileCommit {
    FileCommit {
        first_seq: 0,
        name: name.into(),
        sha256: sha.into(),
        size: 10,
        kind: "jsonl",
        student: "s".into(),
        teacher: "t".into(),
        records,
        origin: FileOrigin::default(),
        duplicates: 0,
        conflicts: 0,
        labels_taken: Vec::new(),
        segment_values_cut: 0,
    }
}

/// Records in the database file itself, without its write-ahead log: a copy of the file
/// alone, opened on its own.
fn records_in_main_file(path: &Path) -> i64 {
    let copy = path.with_file_name("copy.db");
    std::fs::copy(path, &copy).unwrap();
    let conn = Connection::open(&copy).unwrap();
    let n = conn
        .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
        .unwrap();
    drop(conn);
    std::fs::remove_file(&copy).unwrap();
    n
}

/// A writer adding more than `PASS_PAGES` per interval brings passes closer, down to a
/// sixteenth of the interval; a slower or idle writer lets them drift back to the interval.
#[test]
fn checkpoint_passes_come_sooner_while_the_log_grows_fast_and_relax_when_it_does_not() {
    let every = Duration::from_secs(1);
    let mut wait = every;
    let mut waits = Vec::new();
    for _ in 0..6 {
        wait = next_wait(wait, every, false, PASS_PAGES + 1);
        waits.push(wait.as_millis());
    }
    assert_eq!(waits, [500, 250, 125, 62, 62, 62]);
    // Between a quarter and all of PASS_PAGES per pass: the pace holds.
    assert_eq!(next_wait(wait, every, false, PASS_PAGES), wait);
    assert_eq!(next_wait(wait, every, false, PASS_PAGES / 4), wait);
    // A big log the writer has not added to since the last pass is no reason to hurry.
    assert_eq!(next_wait(wait, every, true, 3 * PASS_PAGES), wait * 2);
    let mut waits = Vec::new();
    for _ in 0..6 {
        wait = next_wait(wait, every, false, PASS_PAGES / 4 - 1);
        waits.push(wait.as_millis());
    }
    assert_eq!(waits, [125, 250, 500, 1000, 1000, 1000]);
}

/// A store in `dir` whose background checkpointer runs only when asked: its interval
/// never comes during a test.
fn checkpointing_when_asked(dir: &Path) -> (PathBuf, Store) {
    let path = dir.join("s.db");
    let mut store = Store::open(&path).unwrap();
    store
        .checkpoint_in_background(Duration::from_secs(3600))
        .unwrap();
    (path, store)
}

/// Frames a pass cannot copy (here a reader's snapshot holds them back) are copied by the
/// writer after its next commit, once the reader is gone.
#[test]
fn frames_a_pass_leaves_behind_are_copied_by_the_writer_after_its_next_commit() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = checkpointing_when_asked(dir.path());
    let one = |name: &str| file(name, name, vec![record(name, "line=A", 0, None)]);
    commit(&mut store, one("a"), 60_000, 0).unwrap();
    store.background_checkpoint_now().unwrap().unwrap();
    let reader = Connection::open(&path).unwrap();
    reader.execute_batch("BEGIN").unwrap();
    let seen: i64 = reader
        .query_row("SELECT COUNT(*) FROM records", [], |r| r.get(0))
        .unwrap();
    assert_eq!(seen, 1);
    commit(&mut store, one("b"), 60_000, 0).unwrap();
    let pass = store.background_checkpoint_now().unwrap().unwrap();
    assert!(pass.checkpointed_pages < pass.log_pages, "{pass:?}");
    assert_eq!(records_in_main_file(&path), 1);
    reader.execute_batch("COMMIT").unwrap();
    commit(&mut store, one("c"), 60_000, 0).unwrap();
    assert_eq!(
        records_in_main_file(&path),
        3,
        "the writer left the remainder"
    );
}

#[test]
fn the_background_checkpointer_and_not_the_writer_copies_the_log_into_the_database() {
    let dir = tempfile::tempdir().unwrap();
    let (path, mut store) = checkpointing_when_asked(dir.path());
    // The schema goes into the file first; the writer copies the remainder, its
    // first file, after that file's commit.
    store.background_checkpoint_now().unwrap().unwrap();
    let rows = vec![record("first", "line=A", 0, None)];
    commit(&mut store, file("first.jsonl", "first", rows), 60_000, 0).unwrap();
    assert_eq!(records_in_main_file(&path), 1);
    // Past SQLite's default threshold of 1000 pages, where the writer used to checkpoint
    // by itself, and short of the backstop.
    for f in 0..6 {
        let rows = (0..30_000)
            .map(|i| record(&format!("{f}-{i:05}"), "line=A", i, None))
            .collect();
        commit(
            &mut store,
            file(&format!("{f}.jsonl"), &format!("{f}"), rows),
            60_000,
            0,
        )
        .unwrap();
    }
    assert_eq!(records_in_main_file(&path), 1, "the writer checkpointed");

    let done = store.background_checkpoint_now().unwrap().unwrap();
    assert!(!done.busy, "{done:?}");
    assert!(
        (1000..BACKSTOP_CHECKPOINT_PAGES).contains(&done.log_pages),
        "{done:?}"
    );
    assert_eq!(done.checkpointed_pages, done.log_pages);
    assert_eq!(records_in_main_file(&path), 180_001);

    // The writer copies what the pass left behind after its next commit, and its
    // transaction after that starts the log over: the log holds that file alone.
    for f in 6..8 {
        let rows = vec![record(&format!("{f}"), "line=A", 0, None)];
        commit(
            &mut store,
            file(&format!("{f}.jsonl"), &format!("{f}"), rows),
            60_000,
            0,
        )
        .unwrap();
    }
    let again = store.background_checkpoint_now().unwrap().unwrap();
    assert!(
        again.log_pages < 50,
        "the log did not start over: {again:?}"
    );

    // Closing stops the thread; the writer, last to close, removes the log.
    drop(store);
    assert!(!dir.path().join("s.db-wal").exists());
}

#[test]
fn an_in_memory_database_has_no_background_checkpointer() {
    let mut store = Store::open(Path::new(":memory:")).unwrap();
    assert!(matches!(
        store.checkpoint_in_background(Duration::from_secs(1)),
        Err(StoreError::InMemory)
    ));
    assert!(store.background_checkpoint_now().is_none());
}

/// Another connection takes the write lock and holds it a while, well inside the busy
/// timeout; returns once it holds it.
fn hold_write_lock(path: &Path) -> std::thread::JoinHandle<()> {
    let (locked_tx, locked) = std::sync::mpsc::channel();
    let path = path.to_path_buf();
    let holder = std::thread::spawn(move || {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        locked_tx.send(()).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        conn.execute_batch("COMMIT").unwrap();
    });
    locked.recv().unwrap();
    holder
}

#[test]
fn registering_shadow_models_waits_for_a_write_lock_held_by_another_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut store = Store::open(&path).unwrap();
    let model = ShadowModelRow {
        name: "lite".into(),
        kind: ShadowKind::Challenger,
        path: "/m/lite.onnx".into(),
        sha256: Some("c0ffee".into()),
        size_bytes: Some(100),
        parameters: Some(10),
        failure: None,
        job_id: None,
    };
    let holder = hold_write_lock(&path);
    let outcome = store.register_shadow_models(&[model], 1);
    holder.join().unwrap();
    assert!(outcome.is_ok(), "{outcome:?}");
}

#[test]
fn a_commit_waits_for_a_write_lock_held_by_another_connection() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let mut store = Store::open(&path).unwrap();
    let holder = hold_write_lock(&path);
    let outcome = commit(
        &mut store,
        file("a.jsonl", "abc", vec![record("r1", "line=A", 1_000, None)]),
        60_000,
        0,
    );
    holder.join().unwrap();
    assert!(
        matches!(outcome, Ok(CommitOutcome::Committed { records: 1, .. })),
        "{outcome:?}"
    );
}

#[test]
fn every_record_row_lands_once_with_its_own_values_whatever_the_file_size() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    // 203 = 3 × 64 + 8 + 2 + 1 rows: full chunks, then every smaller statement in turn;
    // then files of one row and of exactly one chunk.
    let mut expected = Vec::new();
    for (f, n) in [(0, 203usize), (1, 1), (2, 64)] {
        let rows: Vec<RecordRow> = (0..n)
            .map(|i| {
                let mut r = record(
                    &format!("f{f}-{i}"),
                    &format!("k={}", i % 3),
                    i as i64,
                    None,
                );
                r.prediction = Some((i % 7) as i64);
                r.latency_us = (f * 1000 + i) as i64;
                r.label = (i % 2 == 0).then_some(i as i64);
                r
            })
            .collect();
        let first = store.next_seq().unwrap();
        expected.extend(rows.iter().enumerate().map(|(i, r)| {
            (
                first + i as i64,
                r.record_id.clone(),
                r.segment.clone(),
                r.prediction,
                r.latency_us,
                r.label,
            )
        }));
        commit(
            &mut store,
            file(&format!("{f}.jsonl"), &format!("sha{f}"), rows),
            60_000,
            0,
        )
        .unwrap();
    }
    let mut stmt = store
        .conn
        .prepare("SELECT seq, record_id, segment, prediction, latency_us, label FROM records ORDER BY seq")
        .unwrap();
    type Row = (i64, String, String, Option<i64>, i64, Option<i64>);
    let stored: Vec<Row> = stmt
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
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(stored.len(), 268);
    assert_eq!(stored, expected);
    let s = store.summary().unwrap();
    let all = s.segments.iter().find(|x| x.segment == "*").unwrap();
    assert_eq!(all.records, 268);
    let k0 = s.segments.iter().find(|x| x.segment == "k=0").unwrap();
    assert_eq!(k0.records, 68 + 1 + 22);
}

#[test]
fn synchronous_full_makes_every_commit_sync_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    let mode = |s: &Store| -> i64 {
        s.conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap()
    };
    assert_eq!(mode(&store), 1, "NORMAL by default");
    store
        .set_synchronous(crate::config::Synchronous::Full)
        .unwrap();
    assert_eq!(mode(&store), 2, "FULL");
}

#[test]
fn migrating_twice_is_a_no_op() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    drop(store);
    let store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    drop(Store::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    drop(conn);
    assert!(matches!(Store::open(&path), Err(StoreError::TooNew { .. })));
}

#[test]
fn every_skip_reason_is_counted_in_its_own_column_and_in_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    let skipped = |id: &str, code: i64| RecordRow {
        sampled: code,
        ..record(id, "line=A", 1_000, None)
    };
    let records = vec![
        record("r1", "line=A", 1_000, Some(sample(false, 1.0))),
        skipped("r2", 2),
        skipped("r3", 3),
        skipped("r4", 3),
        skipped("r5", 4),
        skipped("r6", 4),
        skipped("r7", 4),
        skipped("r8", 5),
    ];
    commit(&mut store, file("a.jsonl", "abc", records), 60_000, 0).unwrap();
    let s = store.summary().unwrap();
    assert_eq!(
        (
            s.teacher_samples,
            s.skipped_budget,
            s.skipped_queue,
            s.skipped_failed,
            s.skipped_unreachable
        ),
        (1, 1, 2, 3, 1)
    );
    let failed: i64 = store
        .conn
        .query_row(
            "SELECT skipped_failed FROM window_stats WHERE segment = 'line=A'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(failed, 3);
}

#[test]
fn same_content_counts_once_and_windows_sum_per_segment() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    let a = file(
        "a.jsonl",
        "abc",
        vec![
            record("r1", "line=A", 1_000, Some(sample(true, 2.0))),
            record("r2", "line=B", 2_000, Some(sample(false, 2.0))),
            record("r3", "line=A", 3_000, None),
        ],
    );
    assert_eq!(
        commit(&mut store, a, 60_000, 0).unwrap(),
        CommitOutcome::Committed {
            file_id: 1,
            records: 3
        }
    );
    let again = file(
        "a-copy.jsonl",
        "abc",
        vec![record("r1", "line=A", 1_000, None)],
    );
    assert!(matches!(
        commit(&mut store, again, 60_000, 0).unwrap(),
        CommitOutcome::Duplicate { of_id: 1, .. }
    ));
    let s = store.summary().unwrap();
    assert_eq!(
        (
            s.files_done,
            s.files_duplicate,
            s.records,
            s.teacher_samples
        ),
        (1, 1, 3, 2)
    );
    let all = s.segments.iter().find(|x| x.segment == "*").unwrap();
    assert_eq!(all.disagreement, Some(0.5));
    assert_eq!(all.weight_sq_sum, 8.0);
    let a_seg = s.segments.iter().find(|x| x.segment == "line=A").unwrap();
    assert_eq!(
        (a_seg.records, a_seg.teacher_samples, a_seg.disagreement),
        (2, 1, Some(1.0))
    );
    assert_eq!(a_seg.weight_sq_sum, 4.0);
}

#[test]
fn files_of_an_older_schema_get_their_first_seq_and_retention_finds_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.db");
    {
        // A database of schema 7, with the records of two files and a labels file.
        let mut conn = Connection::open(&path).unwrap();
        let tx = conn.transaction().unwrap();
        for (_, sql) in &MIGRATIONS[..7] {
            tx.execute_batch(sql).unwrap();
        }
        tx.pragma_update(None, "user_version", 7).unwrap();
        tx.execute_batch(
            "INSERT INTO files (id, name, sha256, size, kind, status, records, processed_at)
             VALUES (1, 'a', 'a', 1, 'jsonl', 'done', 2, 1000),
                    (2, 'l', 'l', 1, 'labels', 'done', 5, 1500),
                    (3, 'b', 'b', 1, 'jsonl', 'done', 3, 5000);
             INSERT INTO records (seq, file_id, record_id, ts, segment, student, latency_us, sampled)
             VALUES (1, 1, 'r1', 0, '', 's', 1, 0), (2, 1, 'r2', 0, '', 's', 1, 0),
                    (3, 3, 'r3', 0, '', 's', 1, 0), (4, 3, 'r4', 0, '', 's', 1, 0),
                    (5, 3, 'r5', 0, '', 's', 1, 0);",
        )
        .unwrap();
        tx.commit().unwrap();
    }
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let count =
        |store: &Store, sql: &str| -> i64 { store.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let first: Vec<Option<i64>> = store
        .conn
        .prepare("SELECT first_seq FROM files ORDER BY id")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<rusqlite::Result<_>>()
        .unwrap();
    assert_eq!(first, [Some(1), None, Some(3)]);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'records_file_id'"
        ),
        0
    );
    // A file committed now records its own first_seq; retention takes the old file's
    // records only, then the next one's.
    let c = file("c.jsonl", "c", vec![record("r6", "", 0, None)]);
    commit(&mut store, c, 60_000, 9_000).unwrap();
    assert_eq!(
        count(&store, "SELECT first_seq FROM files WHERE name = 'c.jsonl'"),
        6
    );
    assert_eq!(apply_retention(&mut store, 2_000), 2);
    assert_eq!(apply_retention(&mut store, 6_000), 3);
    assert_eq!(apply_retention(&mut store, 6_000), 0);
    assert_eq!(count(&store, "SELECT MIN(seq) FROM records"), 6);
}

/// SQLite numbers a file's records from `first_seq` on; a file that expected other numbers
/// (something else inserted records since `next_seq`) fails whole and leaves no trace.
#[test]
fn records_are_numbered_from_first_seq_and_a_mismatch_fails_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    let count =
        |store: &Store, sql: &str| -> i64 { store.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let rows = || -> Vec<RecordRow> {
        (0..150)
            .map(|i| record(&format!("r{i}"), "", 0, None))
            .collect()
    };
    commit(&mut store, file("a.jsonl", "a", rows()), 60_000, 0).unwrap();
    assert_eq!(count(&store, "SELECT MIN(seq) FROM records"), 1);
    assert_eq!(count(&store, "SELECT MAX(seq) FROM records"), 150);
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM records WHERE record_id = 'r' || (seq - 1)"
        ),
        150
    );
    let mut stale = file("b.jsonl", "b", rows());
    stale.first_seq = store.next_seq().unwrap();
    store
        .conn
        .execute(
            "INSERT INTO record_rows (ts, segment, latency_us, sampled) VALUES (0, 1, 0, 0)",
            [],
        )
        .unwrap();
    let err = store.commit_file(&stale, 60_000, 0, None).unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Sequence {
                expected: 151,
                got: 152
            }
        ),
        "{err}"
    );
    assert_eq!(
        count(&store, "SELECT COUNT(*) FROM files WHERE name = 'b.jsonl'"),
        0
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM records"), 151);
}

#[test]
fn retention_deletes_records_by_receipt_time_and_keeps_windows() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    // An old record (ts 0) received at t=1000, a fresh one received at t=5000.
    let old = file("old.jsonl", "a", vec![record("r1", "", 0, None)]);
    commit(&mut store, old, 60_000, 1_000).unwrap();
    let new = file("new.jsonl", "b", vec![record("r2", "", 0, None)]);
    commit(&mut store, new, 60_000, 5_000).unwrap();
    // Sequence numbers are never reused, even once the rows are gone.
    assert_eq!(apply_retention(&mut store, 2_000), 1);
    store.conn.execute("DELETE FROM record_rows", []).unwrap();
    assert_eq!(store.next_seq().unwrap(), 3);
    let again = file("again.jsonl", "c", vec![record("r2", "", 0, None)]);
    commit(&mut store, again, 60_000, 5_000).unwrap();
    let (left, seq): (String, i64) = store
        .conn
        .query_row("SELECT record_id, seq FROM records", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((left.as_str(), seq), ("r2", 3));
    assert_eq!(
        store.summary().unwrap().records,
        3,
        "window sums keep the history"
    );
}

#[test]
fn retention_goes_in_the_order_of_records_and_keeps_what_it_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    // Received at t=1000, 3000, then 2000: the clock stepped back before the third.
    for (name, at) in [("a", 1_000), ("b", 3_000), ("c", 2_000)] {
        let rows = vec![
            record(name, "", 0, None),
            record(&format!("{name}2"), "", 0, None),
        ];
        commit(&mut store, file(name, name, rows), 60_000, at).unwrap();
    }
    let left = |store: &Store| -> Vec<String> {
        let mut stmt = store
            .conn
            .prepare("SELECT record_id FROM records ORDER BY seq")
            .unwrap();
        stmt.query_map([], |r| r.get(0))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap()
    };
    assert_eq!(apply_retention(&mut store, 1_500), 2);
    assert_eq!(left(&store), ["b", "b2", "c", "c2"]);
    // Files go in the order of their records: c, "received" at 2000 after b at 3000 (the clock
    // stepped back), goes with b, not before it.
    assert_eq!(apply_retention(&mut store, 2_500), 0);
    assert_eq!(apply_retention(&mut store, 3_500), 4);
    assert!(left(&store).is_empty());
    assert_eq!(apply_retention(&mut store, 10_000), 0);
    let dropped = store_reader(&store).dropped().unwrap();
    assert_eq!(
        dropped
            .iter()
            .map(|d| (d.reason.as_str(), d.records, d.through_seq))
            .collect::<Vec<_>>(),
        [("age", 6, 6)]
    );
}

fn store_reader(store: &Store) -> Reader {
    Reader::open(Path::new(store.conn.path().unwrap())).unwrap()
}

fn shadow_row(model: &str, agrees: bool) -> ShadowRow {
    ShadowRow {
        model: model.into(),
        sha256: "c0ffee".into(),
        kind: ShadowKind::Challenger,
        result: ShadowResult::Answered(ShadowMeasure {
            comparison: Comparison {
                disagreement: Some(!agrees),
                kl: Some(0.25),
                ..Comparison::default()
            },
            latency_us: 40,
        }),
    }
}

#[test]
fn shadow_rows_commit_with_their_file_once_and_leave_with_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    let model = |name: &str| ShadowModelRow {
        name: name.into(),
        kind: ShadowKind::Challenger,
        path: format!("/m/{name}.onnx"),
        sha256: Some("c0ffee".into()),
        size_bytes: Some(100),
        parameters: Some(10),
        failure: None,
        job_id: None,
    };
    store
        .register_shadow_models(&[model("lite"), model("gone")], 1)
        .unwrap();
    store.register_shadow_models(&[model("lite")], 2).unwrap();
    let with_shadow = |id: &str, agrees: bool| {
        let mut t = sample(false, 2.0);
        t.shadow = vec![shadow_row("lite", agrees)];
        record(id, "", 0, Some(t))
    };
    let mut failing = sample(false, 2.0);
    failing.shadow = vec![ShadowRow {
        result: ShadowResult::Failed("inference failed".into()),
        ..shadow_row("lite", true)
    }];
    // A challenger on a server that did not answer r4: counted as skipped, not measured.
    let mut far = with_shadow("r4", true);
    if let Some(t) = far.teacher.as_mut() {
        t.shadow.push(ShadowRow {
            model: "far".into(),
            sha256: "beef".into(),
            kind: ShadowKind::Challenger,
            result: ShadowResult::Skipped(ShadowSkip::Unreachable),
        });
    }
    let records = vec![
        with_shadow("r1", true),
        with_shadow("r2", false),
        record("r3", "", 0, None),
        far,
    ];
    commit(&mut store, file("a.jsonl", "a", records), 60_000, 1_000).unwrap();
    // The same content again is a duplicate: nothing is counted twice.
    let again = vec![with_shadow("r1", true)];
    let outcome = commit(&mut store, file("b.jsonl", "a", again), 60_000, 2_000).unwrap();
    assert!(matches!(outcome, CommitOutcome::Duplicate { .. }));
    let count =
        |store: &Store, sql: &str| -> i64 { store.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(count(&store, "SELECT COUNT(*) FROM shadow_samples"), 3);
    let (samples, agreement, weight, kl): (i64, f64, f64, f64) = store
        .conn
        .query_row(
            "SELECT samples, agreement, agreement_weight, kl FROM shadow_totals
             WHERE model = 'lite'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!((samples, agreement, weight), (3, 4.0, 6.0));
    assert!((kl - 1.5).abs() < 1e-12);
    // The student's sums cover the same three records.
    assert_eq!(
        count(
            &store,
            "SELECT samples FROM shadow_totals WHERE model = 'student' AND sha256 = 's'"
        ),
        3
    );
    assert_eq!(count(&store, "SELECT COUNT(*) FROM shadow_models"), 1);
    // The skip is counted once (the duplicate file counted nothing) and measured nowhere.
    let skips = store_reader(&store).shadow_skips("far", "beef").unwrap();
    assert_eq!(
        skips.into_iter().collect::<Vec<_>>(),
        [(ShadowSkip::Unreachable, 1)]
    );
    assert_eq!(
        count(
            &store,
            "SELECT COUNT(*) FROM shadow_samples WHERE model = 'far'"
        ) + count(
            &store,
            "SELECT COUNT(*) FROM shadow_totals WHERE model = 'far'"
        ),
        0
    );

    // A failure on a later file marks the model failed, in the same commit.
    let later = vec![record("r5", "", 0, Some(failing))];
    commit(&mut store, file("c.jsonl", "c", later), 60_000, 9_000).unwrap();
    let (status, detail): (String, String) = store
        .conn
        .query_row(
            "SELECT status, detail FROM shadow_models WHERE name = 'lite'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(
        (status.as_str(), detail.as_str()),
        ("failed", "inference failed")
    );

    // Retention takes the per-record rows with their records; the totals stay.
    apply_retention(&mut store, 5_000);
    assert_eq!(count(&store, "SELECT COUNT(*) FROM shadow_samples"), 0);
    assert_eq!(
        count(
            &store,
            "SELECT samples FROM shadow_totals WHERE model = 'lite'"
        ),
        3
    );
}

#[test]
fn late_labels_join_records_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    let a = file(
        "a.jsonl",
        "abc",
        vec![record("r1", "", 0, Some(sample(false, 1.0)))],
    );
    commit(&mut store, a, 60_000, 0).unwrap();
    let out = store
        .commit_labels(
            "a.labels.jsonl",
            "def",
            5,
            &[("r1".into(), 3), ("r9".into(), 4)],
            FileOrigin::default(),
            0,
            &mut |joins: &[LabelJoin]| {
                assert_eq!(joins.len(), 1);
                assert_eq!(
                    (
                        joins[0].prediction,
                        joins[0].teacher_prediction,
                        joins[0].label
                    ),
                    (Some(1), Some(1), 3)
                );
                None
            },
        )
        .unwrap();
    assert_eq!(
        out,
        LabelsOutcome::Committed {
            file_id: 2,
            labels: 2,
            matched: 1,
            corrected: 0,
            unchanged: 0,
        }
    );
    let label: Option<i64> = store
        .conn
        .query_row(
            "SELECT label FROM teacher_samples WHERE record_id = 'r1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(label, Some(3));
    assert_eq!(store.waiting_label("r9").unwrap().map(|w| w.label), Some(4));
}

/// One record as the `records` table or view shows it: (seq, file_id, record_id, ts, segment,
/// student, prediction, confidence, entropy, latency_us, sampled, label).
type RecordView = (
    i64,
    i64,
    String,
    i64,
    String,
    String,
    Option<i64>,
    Option<f64>,
    Option<f64>,
    i64,
    i64,
    Option<i64>,
);

fn record_view(conn: &Connection) -> Vec<RecordView> {
    let mut stmt = conn
        .prepare(
            "SELECT seq, file_id, record_id, ts, segment, student, prediction, confidence, entropy,
                    latency_us, sampled, label FROM records ORDER BY seq",
        )
        .unwrap();
    stmt.query_map([], |r| {
        Ok((
            r.get(0)?,
            r.get(1)?,
            r.get(2)?,
            r.get(3)?,
            r.get(4)?,
            r.get(5)?,
            r.get(6)?,
            r.get(7)?,
            r.get(8)?,
            r.get(9)?,
            r.get(10)?,
            r.get(11)?,
        ))
    })
    .unwrap()
    .map(|r| r.unwrap())
    .collect()
}

/// A database the previous release wrote (schema 8: the demo's lab baseline, two replayed
/// streams, one with producer ids and one without, drift events, teacher samples and a late
/// labels file, one label still waiting; `tests/fixtures/release-schema8.db`) migrates in place
/// without losing or changing a row.
#[test]
fn a_database_of_the_previous_release_migrates_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sensei.db");
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/release-schema8.db"),
        &path,
    )
    .unwrap();
    let count =
        |conn: &Connection, sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    let (before, others) = {
        let conn = Connection::open(&path).unwrap();
        assert_eq!(count(&conn, "PRAGMA user_version"), 8);
        let others: Vec<i64> = [
            "SELECT COUNT(*) FROM teacher_samples",
            "SELECT COUNT(*) FROM teacher_sample_inputs",
            "SELECT COUNT(*) FROM drift_events",
            "SELECT COUNT(*) FROM late_labels",
            "SELECT COUNT(*) FROM windows",
            "SELECT COUNT(*) FROM files",
            "SELECT COUNT(*) FROM detector_state",
        ]
        .iter()
        .map(|q| count(&conn, q))
        .collect();
        (record_view(&conn), others)
    };
    assert_eq!(before.len(), 510);
    assert!(before.iter().any(|r| r.2.contains(':')), "derived ids too");
    let mut store = Store::open(&path).unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    let after = record_view(&store.conn);
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(&before) {
        let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
            (Some(x), Some(y)) => (x - y).abs() <= 5e-7,
            (x, y) => x == y,
        };
        assert!(
            (a.0, a.1, &a.2, a.3, &a.4, &a.5, a.6, a.9, a.10, a.11)
                == (b.0, b.1, &b.2, b.3, &b.4, &b.5, b.6, b.9, b.10, b.11)
                && close(a.7, b.7)
                && close(a.8, b.8),
            "{a:?} != {b:?}"
        );
    }
    let now: Vec<i64> = [
        "SELECT COUNT(*) FROM teacher_samples",
        "SELECT COUNT(*) FROM teacher_sample_inputs",
        "SELECT COUNT(*) FROM drift_events",
        "SELECT COUNT(*) FROM late_labels",
        "SELECT COUNT(*) FROM windows",
        "SELECT COUNT(*) FROM files",
        "SELECT COUNT(*) FROM detector_state",
    ]
    .iter()
    .map(|q| count(&store.conn, q))
    .collect();
    assert_eq!(now, others);
    // Every id became part of a run: two files, two runs, no id kept alone.
    assert_eq!(count(&store.conn, "SELECT COUNT(*) FROM record_ids"), 0);
    assert_eq!(count(&store.conn, "SELECT COUNT(*) FROM record_id_runs"), 2);
    for r in [&before[0], &before[300], &before[509]] {
        assert_eq!(
            record_ids::find(&store.conn, &r.2).unwrap(),
            Some(r.0),
            "{}",
            r.2
        );
    }
    // The next record goes on from the old numbering; an id counted before is recognised; the
    // label that was waiting joins its record when it comes.
    assert_eq!(store.next_seq().unwrap(), 511);
    assert_eq!(
        store
            .counted_ids(&[&before[10].2, "future-000001"])
            .unwrap(),
        [true, false]
    );
    assert_eq!(
        store
            .waiting_label("future-000001")
            .unwrap()
            .map(|w| w.label),
        Some(3)
    );
    let mut late = record("future-000001", "line=A", 0, None);
    late.label = Some(3);
    let mut f = file("future.jsonl", "future", vec![late]);
    f.labels_taken = vec!["future-000001".into()];
    commit(&mut store, f, 60_000, 0).unwrap();
    assert_eq!(store.waiting_label("future-000001").unwrap(), None);
    assert_eq!(
        count(
            &store.conn,
            "SELECT seq FROM records WHERE record_id = 'future-000001'"
        ),
        511
    );
}

/// Past `max_size`, the oldest per-record rows go, a step at a time, until the pages in use are
/// under its low water; what stays (windows, the ledger) stays, and `retention` says what went.
#[test]
fn over_its_disk_budget_the_database_deletes_its_oldest_records_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = Store::open(&dir.path().join("s.db")).unwrap();
    for f in 0..20 {
        let rows = (0..2000)
            .map(|i| record(&format!("f{f}-{i}"), "line=A", i, None))
            .collect();
        commit(
            &mut store,
            file(&format!("{f}.jsonl"), &format!("{f}"), rows),
            60_000,
            0,
        )
        .unwrap();
    }
    let full = store.database_size().unwrap().used_bytes;
    let windows_before = store.summary().unwrap().records;
    let max = full * 7 / 10;
    let mut steps = 0;
    let mut deleted = 0;
    // Nothing is old enough for age retention (cut-off 0): every deletion is for size.
    while let Some(step) = store.retention_step(0, Some(max), 5_000, 1).unwrap() {
        assert_eq!(step.reason, "size");
        assert!(step.records <= 5_000);
        deleted += step.records;
        steps += 1;
        assert!(steps < 100, "retention does not end");
    }
    let used = store.database_size().unwrap().used_bytes;
    assert!(
        used as f64 <= max as f64 * SIZE_LOW_WATER,
        "{used} of {max}"
    );
    assert!(steps > 1, "it went in steps");
    let count = |sql: &str| -> i64 { store.conn.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT COUNT(*) FROM record_rows"),
        40_000 - deleted as i64
    );
    assert_eq!(
        count("SELECT MIN(seq) FROM record_rows"),
        deleted as i64 + 1,
        "oldest first"
    );
    assert_eq!(store.summary().unwrap().records, windows_before);
    assert_eq!(
        record_ids::find(&store.conn, "f0-0").unwrap(),
        None,
        "its id is forgotten with it"
    );
    assert_eq!(
        record_ids::find(&store.conn, "f19-1999").unwrap(),
        Some(40_000)
    );
    let dropped = store_reader(&store).dropped().unwrap();
    assert_eq!(dropped.len(), 1);
    assert_eq!(
        (dropped[0].reason.as_str(), dropped[0].records),
        ("size", deleted as i64)
    );
    // Under the budget, a new file commits and nothing more is deleted.
    commit(
        &mut store,
        file("new.jsonl", "new", vec![record("n", "", 0, None)]),
        60_000,
        0,
    )
    .unwrap();
    assert_eq!(store.retention_step(0, Some(max), 5_000, 2).unwrap(), None);
}
