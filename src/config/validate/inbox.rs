//! `[inbox]`: the watched directory, done/ and quarantine/, and when a file is taken.

use std::path::Path;
use std::time::Duration;

use super::super::raw::RawInbox;
use super::super::{InboxConfig, OnDone};
use super::Check;
use super::values::{DAY, MINUTE, SECOND};

impl Check<'_> {
    pub(super) fn inbox(&mut self, inbox: RawInbox, state_dir: &Path) -> InboxConfig {
        InboxConfig {
            dir: self.path_or("inbox.dir", inbox.dir, || state_dir.join("inbox")),
            done_dir: self.path_or("inbox.done_dir", inbox.done_dir, || state_dir.join("done")),
            quarantine_dir: self.path_or("inbox.quarantine_dir", inbox.quarantine_dir, || {
                state_dir.join("quarantine")
            }),
            on_done: self.choice(
                "inbox.on_done",
                inbox.on_done,
                OnDone::Move,
                &[("move", OnDone::Move), ("delete", OnDone::Delete)],
            ),
            max_file_bytes: self.size("inbox.max_file_size", inbox.max_file_size),
            quiet: self.duration("inbox.quiet", inbox.quiet, 2 * SECOND, Duration::ZERO),
            rescan_interval: self.duration(
                "inbox.rescan_interval",
                inbox.rescan_interval,
                MINUTE,
                SECOND,
            ),
            poll: inbox.poll.unwrap_or(false),
            ts_max_future: self.duration(
                "inbox.ts_max_future",
                inbox.ts_max_future,
                DAY,
                Duration::ZERO,
            ),
            ts_max_past: inbox
                .ts_max_past
                .map(|d| self.duration("inbox.ts_max_past", Some(d), DAY, SECOND)),
        }
    }
}
