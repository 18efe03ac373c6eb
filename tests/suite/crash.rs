//! Crash consistency: the daemon is killed with SIGKILL at seeded random points while it works
//! through a backlog, and restarted each time. Whatever the kill points, every record must be
//! counted exactly once, every file must end up done or quarantined, and the database must be
//! intact.
//!
//! The suite runs a short version (`SENSEI_CRASH_KILLS`, default 6 kills);
//! `scripts/crash-harness.sh` runs the long one (60 kills over 2000 files).

use std::time::Duration;

use crate::common::{Site, jsonl, wait_until};

/// SplitMix64: the kill schedule is reproducible from the seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn sigkill_at_random_points_loses_nothing_and_counts_nothing_twice() {
    let kills = env_or("SENSEI_CRASH_KILLS", 6);
    let files = env_or("SENSEI_CRASH_FILES", 60) as usize;
    let per_file = env_or("SENSEI_CRASH_RECORDS", 200) as usize;
    let mut rng = Rng(env_or("SENSEI_CRASH_SEED", 20261127));
    let site = Site::new();
    site.write_config("[inbox]\nquiet = \"200ms\"\nmax_file_size = \"16 MiB\"\n");
    std::fs::create_dir_all(site.inbox()).unwrap();
    // The backlog, with one bad file in every twenty.
    let mut bad = 0;
    for f in 0..files {
        if f % 20 == 7 {
            std::fs::write(
                site.inbox().join(format!("f{f:05}.jsonl")),
                b"{\"inputs\": {\"x\": [1, 2]}}\n",
            )
            .unwrap();
            bad += 1;
        } else {
            std::fs::write(
                site.inbox().join(format!("f{f:05}.jsonl")),
                jsonl(&format!("c{f}"), per_file),
            )
            .unwrap();
        }
    }
    let good = files - bad;
    let mut killed = 0;
    while killed < kills {
        let before = site.ledger_count("done") + site.ledger_count("quarantined");
        if before as usize >= files {
            break;
        }
        let daemon = site.start();
        // A seeded random point: after the next commit, plus 0–120 ms into the next file.
        wait_until(Duration::from_secs(60), "progress before the kill", || {
            site.ledger_count("done") + site.ledger_count("quarantined") > before
        });
        std::thread::sleep(Duration::from_millis(rng.next() % 120));
        daemon.kill();
        killed += 1;
    }
    let daemon = site.start();
    wait_until(Duration::from_secs(300), "every file finished", || {
        (site.ledger_count("done") + site.ledger_count("quarantined")) as usize == files
    });
    assert!(daemon.stop().success());
    assert!(killed >= kills.min(3), "only {killed} kills happened");
    let total = (good * per_file) as i64;
    assert_eq!(site.records(), total, "after {killed} kills");
    assert_eq!(
        site.query_i64("SELECT COUNT(DISTINCT record_id) FROM records"),
        total
    );
    assert_eq!(
        site.query_i64("SELECT SUM(records) FROM windows WHERE segment = '*'"),
        total
    );
    assert_eq!(site.ledger_count("done") as usize, good);
    assert_eq!(site.ledger_count("quarantined") as usize, bad);
    assert_eq!(std::fs::read_dir(site.inbox()).unwrap().count(), 0);
    let ok: String = site
        .db()
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(ok, "ok");
}
