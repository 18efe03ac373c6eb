//! The schema's migrations: `migrations/NNNN_*.sql`, applied in order inside one transaction and
//! tracked by `PRAGMA user_version`. The list is append-only: never edit a released migration,
//! add a new one (`build.rs` makes cargo rebuild when the directory changes).

use rusqlite::Connection;

use super::{Result, StoreError, write_transaction};

/// The migrations, in order. `build.rs` makes cargo rebuild when the directory changes.
pub(super) const MIGRATIONS: &[(&str, &str)] = &[
    (
        "0001_initial",
        include_str!("../../migrations/0001_initial.sql"),
    ),
    (
        "0002_drift",
        include_str!("../../migrations/0002_drift.sql"),
    ),
    (
        "0003_alerts",
        include_str!("../../migrations/0003_alerts.sql"),
    ),
    (
        "0004_redistill",
        include_str!("../../migrations/0004_redistill.sql"),
    ),
    (
        "0005_shadow",
        include_str!("../../migrations/0005_shadow.sql"),
    ),
    (
        "0006_records_indexes",
        include_str!("../../migrations/0006_records_indexes.sql"),
    ),
    (
        "0007_redistill_failures",
        include_str!("../../migrations/0007_redistill_failures.sql"),
    ),
    (
        "0008_records_by_seq",
        include_str!("../../migrations/0008_records_by_seq.sql"),
    ),
    (
        "0009_records_compact",
        include_str!("../../migrations/0009_records_compact.sql"),
    ),
    (
        "0010_drift_alarms",
        include_str!("../../migrations/0010_drift_alarms.sql"),
    ),
    (
        "0011_windows_skipped_unreachable",
        include_str!("../../migrations/0011_windows_skipped_unreachable.sql"),
    ),
    (
        "0012_drift_signal_names",
        include_str!("../../migrations/0012_drift_signal_names.sql"),
    ),
    (
        "0013_files_segment_values_cut",
        include_str!("../../migrations/0013_files_segment_values_cut.sql"),
    ),
    (
        "0014_shadow_skips",
        include_str!("../../migrations/0014_shadow_skips.sql"),
    ),
    (
        "0015_windows_skipped_failed",
        include_str!("../../migrations/0015_windows_skipped_failed.sql"),
    ),
];

/// What a migration needs beyond its SQL, run after it in the same transaction: by name.
fn after(name: &str, conn: &Connection) -> Result<()> {
    match name {
        "0009_records_compact" => super::record_ids::canonicalise(conn),
        _ => Ok(()),
    }
}

/// The schema version this binary writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

pub(super) fn migrate(conn: &mut Connection) -> Result<()> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > SCHEMA_VERSION {
        return Err(StoreError::TooNew {
            found: current,
            supported: SCHEMA_VERSION,
        });
    }
    if current == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = write_transaction(conn)?;
    for (i, (name, sql)) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        tx.execute_batch(sql)
            .map_err(|source| StoreError::Migration {
                name: (*name).to_string(),
                source,
            })?;
        after(name, &tx)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
    }
    tx.commit()?;
    Ok(())
}
