//! `[store]`: the database file, retention, the aggregate windows and when commits reach the disk.

use std::path::Path;

use super::super::raw;
use super::super::raw::RawSize;
use super::super::{StoreConfig, Synchronous};
use super::Check;
use super::values::{DAY, MIB, MINUTE, SECOND};

/// The smallest `[store] max_size`: below it the budget would be spent by the windows, drift
/// events and distillation buffer alone, and every record deleted as soon as it was written.
const MIN_MAX_SIZE: u64 = 16 * MIB;

impl Check<'_> {
    pub(super) fn store(&mut self, store: raw::RawStore, state_dir: &Path) -> StoreConfig {
        StoreConfig {
            path: self.path_or("store.path", store.path, || state_dir.join("sensei.db")),
            record_retention: self.duration(
                "store.record_retention",
                store.record_retention,
                30 * DAY,
                SECOND,
            ),
            window: self.duration("store.window", store.window, 15 * MINUTE, SECOND),
            max_bytes: self.max_size(store.max_size),
            synchronous: self.choice(
                "store.synchronous",
                store.synchronous,
                Synchronous::Normal,
                &[("normal", Synchronous::Normal), ("full", Synchronous::Full)],
            ),
        }
    }

    /// `[store] max_size`: off when unset.
    fn max_size(&mut self, value: Option<RawSize>) -> Option<u64> {
        value.as_ref()?;
        let bytes = self.size_or("store.max_size", value, u64::MAX);
        if bytes < MIN_MAX_SIZE {
            self.problem(
                "store.max_size",
                format!("must be at least 16 MiB, got {bytes} bytes"),
            );
        }
        (bytes != u64::MAX).then_some(bytes)
    }
}
