//! `[store]`: the database file, retention, the aggregate windows and when commits reach the disk.

use std::path::Path;

use super::super::raw;
use super::super::{StoreConfig, Synchronous};
use super::Check;
use super::values::{DAY, MINUTE, SECOND};

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
            synchronous: self.choice(
                "store.synchronous",
                store.synchronous,
                Synchronous::Normal,
                &[("normal", Synchronous::Normal), ("full", Synchronous::Full)],
            ),
        }
    }
}
