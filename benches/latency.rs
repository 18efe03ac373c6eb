//! Ingest latency: from a file's rename into the inbox to its commit, at 1000 records/s.
//!
//!     cargo bench --bench latency        # LATENCY_SECONDS=N to change the 30 s default
//!
//! Starts the real `sensei run` on the demo models (teacher rate 0.1, an active baseline from the
//! demo lab set, so every detector runs), then renames one JSON
//! Lines file of 10 fresh records into its inbox every 10 ms, on a fixed schedule (1000
//! records/s), for 30 s. Each file's latency is its `files.processed_at` (the writer's clock when
//! it starts the file's transaction) minus the moment of its rename, both in unix milliseconds.
//! Prints p50, p90, p99 and the largest latency. The goal is p99 ≤ 50 ms.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::*;

const RECORDS_PER_FILE: usize = 10;
const EVERY: Duration = Duration::from_millis(10);

fn unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn main() {
    let seconds: u64 = std::env::var("LATENCY_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let files = (Duration::from_secs(seconds).as_millis() / EVERY.as_millis()) as usize;
    let rows = field_rows();
    let tmp = tempfile::tempdir().unwrap();
    let DaemonSite {
        config,
        state,
        inbox,
        staging,
    } = DaemonSite::new(tmp.path(), "");
    // Every file written before the clock starts, so writing costs the schedule nothing.
    for f in 0..files {
        let bytes = jsonl(
            &rows,
            &format!("l{f}-"),
            f * RECORDS_PER_FILE,
            RECORDS_PER_FILE,
        );
        std::fs::write(staging.join(format!("l-{f:06}.jsonl")), bytes).unwrap();
    }
    // An active baseline, so that every drift detector runs, as in the field.
    let baseline = Command::new(env!("CARGO_BIN_EXE_sensei"))
        .arg("--config")
        .arg(&config)
        .arg("baseline")
        .arg(demo_model("lab.npz"))
        .env("SENSEI_LOG", "warn,ort=error")
        .stdout(Stdio::null())
        .status()
        .expect("sensei baseline");
    assert!(baseline.success(), "sensei baseline failed");
    let mut child = start_daemon(&config);
    let db = state.join("sensei.db");
    let done = |db: &std::path::Path| -> i64 {
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM files WHERE status = 'done'",
                    [],
                    |r| r.get(0),
                )
            })
            .unwrap_or(0)
    };
    // Warm-up: one file through the whole pipeline before the schedule starts.
    let warm = tmp.path().join("warm.jsonl");
    std::fs::write(&warm, jsonl(&rows, "warm-", 0, RECORDS_PER_FILE)).unwrap();
    std::fs::rename(&warm, inbox.join("warm.jsonl")).unwrap();
    let started = Instant::now();
    while done(&db) < 1 {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "sensei did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }

    let mut renamed: Vec<(String, i64)> = Vec::with_capacity(files);
    let start = Instant::now();
    for f in 0..files {
        let due = start + EVERY * f as u32;
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let name = format!("l-{f:06}.jsonl");
        let at = unix_ms();
        std::fs::rename(staging.join(&name), inbox.join(&name)).unwrap();
        renamed.push((name, at));
    }
    let sent_in = start.elapsed();
    while done(&db) < files as i64 + 1 {
        assert!(
            start.elapsed() < Duration::from_secs(seconds * 4 + 60),
            "files were not all committed"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();

    let conn = rusqlite::Connection::open(&db).unwrap();
    let mut latencies: Vec<i64> = renamed
        .iter()
        .map(|(name, at)| {
            let committed: i64 = conn
                .query_row(
                    "SELECT processed_at FROM files WHERE name = ?1 AND status = 'done'",
                    [name],
                    |r| r.get(0),
                )
                .expect("every file committed");
            committed - at
        })
        .collect();
    latencies.sort_unstable();
    println!(
        "{files} files of {RECORDS_PER_FILE} records renamed in {:.1} s ({:.0} records/s); latency from rename to commit:\n",
        sent_in.as_secs_f64(),
        (files * RECORDS_PER_FILE) as f64 / sent_in.as_secs_f64()
    );
    println!("| p50 | p90 | p99 | max | goal |\n|---:|---:|---:|---:|---:|");
    println!(
        "| {} ms | {} ms | {} ms | {} ms | p99 ≤ 50 ms |",
        percentile(&latencies, 50.0),
        percentile(&latencies, 90.0),
        percentile(&latencies, 99.0),
        latencies.last().copied().unwrap_or(0)
    );
}
