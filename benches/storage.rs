//! Bytes on disk per record, and a 30-day projection.
//!
//!     cargo bench --bench storage            # 50,000 records per layout (STORAGE_RECORDS)
//!
//! `sensei replay` (the library call) writes 1000-record `.npz` files of the demo field stream,
//! teacher rate 0.1, into a fresh database, once for each way producers name records:
//! - `sequential`: the producer's ids, `<stream>-<n>` (as the demo streams and most producers);
//! - `derived`: no ids (sensei derives `<sha256 first 12>:<n>`);
//! - `opaque`: ids that end in no number (random hex with a letter at the end), which sensei
//!   must keep one by one.
//!
//! SQLite's own page accounting (`dbstat`) gives the bytes of each table and index. "records
//! storage" is everything that holds the per-record rows: `record_rows`, `record_id_runs`,
//! `record_ids`, `segments` and their indexes. As a baseline in the same run, the same records
//! are copied into a table of the layout before schema 9 (`records` with its `record_id`
//! index) in the same database, and measured the same way.

mod support;

use std::io::Write;
use std::path::Path;

use sensei::config::Config;

use support::*;

const FILE_RECORDS: usize = 1000;

/// The ids of records `first..first + n` in one layout; `None` for derived ids.
fn ids(layout: &str, first: usize, n: usize) -> Option<Vec<String>> {
    match layout {
        "sequential" => Some(
            (first..first + n)
                .map(|i| format!("field-{i:06}"))
                .collect(),
        ),
        "opaque" => Some(
            (first..first + n)
                .map(|i| {
                    let h = (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
                    format!("{h:016x}-{}", (b'a' + (i % 26) as u8) as char)
                })
                .collect(),
        ),
        _ => None,
    }
}

/// One `.npz` file: `x`, optional `id` (`<U24`), `ts` (a record a second from 2026-03-02
/// 06:00 UTC), `segment.line` A/B.
fn npz_file(rows: &[Vec<f32>], first: usize, ids: Option<&[String]>) -> Vec<u8> {
    let n = ids.map_or(FILE_RECORDS, <[String]>::len);
    let mut x = Vec::with_capacity(n * 256);
    let mut lines = Vec::with_capacity(n * 4);
    let mut ts = Vec::with_capacity(n * 80);
    let start = time::OffsetDateTime::from_unix_timestamp(1_772_431_200).expect("a time");
    for k in first..first + n {
        for v in row(rows, k) {
            x.extend(v.to_le_bytes());
        }
        lines.extend((if k % 2 == 0 { 'A' } else { 'B' } as u32).to_le_bytes());
        let t = (start + time::Duration::seconds(k as i64))
            .format(&time::format_description::well_known::Rfc3339)
            .expect("RFC 3339");
        let mut chars: Vec<char> = t.chars().collect();
        chars.resize(20, '\0');
        for c in chars {
            ts.extend((c as u32).to_le_bytes());
        }
    }
    let mut entries = vec![
        ("x.npy", npy("<f4", &[n, 8, 8], &x)),
        ("ts.npy", npy("<U20", &[n], &ts)),
        ("segment.line.npy", npy("<U1", &[n], &lines)),
    ];
    if let Some(ids) = ids {
        let mut data = Vec::with_capacity(n * 96);
        for id in ids {
            let mut chars: Vec<char> = id.chars().collect();
            chars.resize(24, '\0');
            for c in chars {
                data.extend((c as u32).to_le_bytes());
            }
        }
        entries.push(("id.npy", npy("<U24", &[n], &data)));
    }
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        let opts = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Stored);
        for (name, bytes) in entries {
            zip.start_file(name, opts).expect("zip entry");
            zip.write_all(&bytes).expect("zip write");
        }
        zip.finish().expect("zip finish");
    }
    buf.into_inner()
}

/// Bytes per table or index, from `dbstat`.
fn sizes(db: &Path) -> Vec<(String, i64)> {
    let conn = rusqlite::Connection::open(db).expect("open");
    let mut stmt = conn
        .prepare("SELECT name, SUM(pgsize) FROM dbstat GROUP BY name ORDER BY name")
        .expect("dbstat");
    stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .expect("dbstat rows")
        .map(Result::unwrap)
        .collect()
}

fn bytes_of(sizes: &[(String, i64)], names: &[&str]) -> i64 {
    sizes
        .iter()
        .filter(|(n, _)| names.contains(&n.as_str()))
        .map(|(_, b)| b)
        .sum()
}

/// What the layout before schema 9 takes for the same records, in the same database.
fn old_layout(db: &Path) {
    let conn = rusqlite::Connection::open(db).expect("open");
    conn.execute_batch(
        "CREATE TABLE old_records (
             seq INTEGER PRIMARY KEY AUTOINCREMENT, file_id INTEGER NOT NULL, record_id TEXT NOT NULL,
             ts INTEGER NOT NULL, segment TEXT NOT NULL, student TEXT NOT NULL, prediction INTEGER,
             confidence REAL, entropy REAL, value REAL, latency_us INTEGER NOT NULL,
             sampled INTEGER NOT NULL, label INTEGER);
         CREATE INDEX old_records_record_id ON old_records (record_id);
         INSERT INTO old_records SELECT seq, file_id, record_id, ts, segment, student, prediction,
             confidence, entropy, value, latency_us, sampled, label FROM records ORDER BY seq;",
    )
    .expect("old layout");
}

struct Measured {
    records: i64,
    per_record: f64,
    old_per_record: f64,
    samples: i64,
    buffer_per_sample: f64,
    rest: i64,
}

fn measure(root: &Path, layout: &str, records: usize) -> Measured {
    let dir = tempfile::tempdir_in(root).expect("tempdir");
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).expect("data dir");
    let rows = field_rows();
    for (f, first) in (0..records).step_by(FILE_RECORDS).enumerate() {
        let n = FILE_RECORDS.min(records - first);
        let ids = ids(layout, first, n);
        let bytes = npz_file(&rows, first, ids.as_deref());
        std::fs::write(data.join(format!("part-{f:05}.npz")), bytes).expect("write part");
    }
    let config = Config::from_toml(
        &config_toml(&dir.path().join("state"), 0.1, ""),
        &dir.path().join("bench.toml"),
    )
    .expect("config");
    let report = sensei::daemon::replay(&config, &[data], None).expect("replay");
    let committed = report.records_committed as i64;
    let db = config.store.path.clone();
    old_layout(&db);
    let s = sizes(&db);
    let storage = bytes_of(
        &s,
        &[
            "record_rows",
            "record_id_runs",
            "record_id_runs_by_id",
            "record_ids",
            "sqlite_autoindex_record_ids_1",
            "segments",
            "sqlite_autoindex_segments_1",
        ],
    );
    let old = bytes_of(&s, &["old_records", "old_records_record_id"]);
    let buffer = bytes_of(
        &s,
        &[
            "teacher_samples",
            "teacher_samples_ts",
            "teacher_samples_record_id",
            "teacher_sample_inputs",
            "sqlite_autoindex_teacher_sample_inputs_1",
        ],
    );
    let conn = rusqlite::Connection::open(&db).expect("open");
    let samples: i64 = conn
        .query_row("SELECT COUNT(*) FROM teacher_samples", [], |r| r.get(0))
        .expect("samples");
    let total: i64 = s.iter().map(|(_, b)| b).sum();
    Measured {
        records: committed,
        per_record: storage as f64 / committed as f64,
        old_per_record: old as f64 / committed as f64,
        samples,
        buffer_per_sample: buffer as f64 / samples.max(1) as f64,
        rest: total - storage - old - buffer,
    }
}

fn main() {
    let records: usize = std::env::var("STORAGE_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let root = std::env::temp_dir();
    println!(
        "{records} records per layout, {FILE_RECORDS}-record .npz files, teacher rate 0.1 (bytes from dbstat)\n"
    );
    println!(
        "{:<11} {:>8} {:>22} {:>22} {:>7} {:>9} {:>15} {:>12}",
        "ids",
        "records",
        "records storage, B/rec",
        "before schema 9, B/rec",
        "ratio",
        "samples",
        "buffer, B/sample",
        "other, bytes"
    );
    let mut sequential = None;
    for layout in ["sequential", "derived", "opaque"] {
        let m = measure(&root, layout, records);
        println!(
            "{:<11} {:>8} {:>22.1} {:>22.1} {:>7.3} {:>9} {:>15.0} {:>12}",
            layout,
            m.records,
            m.per_record,
            m.old_per_record,
            m.per_record / m.old_per_record,
            m.samples,
            m.buffer_per_sample,
            m.rest
        );
        if layout == "sequential" {
            sequential = Some(m);
        }
    }
    let m = sequential.expect("the sequential layout was measured");
    println!("\n30 days of per-record rows (sequential ids; [store] record_retention = \"30d\"):");
    let days = 30.0 * 86_400.0;
    for rate in [10.0, 100.0, 1000.0] {
        let rows = rate * days;
        println!(
            "  {rate:>6} records/s: {:>6.2} GiB of records storage (before schema 9: {:.2} GiB); the distillation buffer is capped by [redistill] buffer_max_samples (about {:.1} KiB a sample)",
            rows * m.per_record / f64::from(1 << 30),
            rows * m.old_per_record / f64::from(1 << 30),
            m.buffer_per_sample / 1024.0
        );
    }
}
