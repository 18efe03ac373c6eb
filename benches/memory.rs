//! Memory of the running daemon: resident set size after 100k and after 1M records.
//!
//!     cargo bench --bench memory                 # MEM_RECORDS=N for the long run (default 1M)
//!
//! Starts the real `sensei run` on the demo models (teacher rate 0.1, a realistic budget of
//! 6000 samples a minute, done files deleted), renames .npz files of 1000 fresh records into its
//! inbox while keeping at most 8 waiting, and reads `VmRSS` from /proc after 100k and after the
//! last record is committed. Flat means the second figure is within ±10% of the first.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

fn committed(db: &std::path::Path) -> i64 {
    let Ok(c) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    c.query_row(
        "SELECT COALESCE(SUM(records), 0) FROM windows WHERE segment = '*'",
        [],
        |r| r.get(0),
    )
    .unwrap_or(0)
}

fn main() {
    let total: usize = std::env::var("MEM_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let first_mark = 100_000.min(total);
    let rows = field_rows();
    let tmp = tempfile::tempdir().unwrap();
    let DaemonSite {
        config,
        state,
        inbox,
        staging,
    } = DaemonSite::new(tmp.path(), "quiet = \"100ms\"\n");
    let mut child = start_daemon(&config);
    let pid = child.id();
    let db = state.join("sensei.db");
    let start = Instant::now();
    let mut sent = 0;
    let mut rss_first = None;
    while sent < total || committed(&db) < total as i64 {
        let waiting = std::fs::read_dir(&inbox).map(|d| d.count()).unwrap_or(0);
        if sent < total && waiting < 8 {
            let count = 1000.min(total - sent);
            let name = format!("m-{sent:08}.npz");
            std::fs::write(staging.join(&name), npz(&rows, "m", sent, count)).unwrap();
            std::fs::rename(staging.join(&name), inbox.join(&name)).unwrap();
            sent += count;
            continue;
        }
        if rss_first.is_none() && committed(&db) >= first_mark as i64 {
            rss_first = Some(rss_kib(pid));
        }
        assert!(
            start.elapsed() < Duration::from_secs(1800),
            "memory bench took over 30 minutes"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let rss_first = rss_first.unwrap_or_else(|| rss_kib(pid));
    let rss_last = rss_kib(pid);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
    let change = (rss_last as f64 - rss_first as f64) / rss_first as f64 * 100.0;
    println!(
        "| RSS after {first_mark} records | RSS after {total} records | change | elapsed |\n|---:|---:|---:|---:|\n| {:.1} MiB | {:.1} MiB | {change:+.1}% | {:.0} s |",
        rss_first as f64 / 1024.0,
        rss_last as f64 / 1024.0,
        start.elapsed().as_secs_f64()
    );
}
