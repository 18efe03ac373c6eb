//! The one-shot commands behind the CLI, one file each: [`check`](mod@check), [`status`](mod@status)
//! and [`replay`]'s summary (`baseline` is [`crate::baseline::measure`], `demo` is
//! [`crate::demo`]). Each returns what it prints, so tests read the same text an operator does.

pub mod check;
pub mod replay;
pub mod status;

pub use check::{CheckReport, check};
pub use replay::{EX_DATAERR, replay_exit_code, replay_text};
pub use status::{SegmentReport, SignalStatus, StatusReport, segment_table, status};

/// Exit code for a configuration problem (sysexits.h `EX_CONFIG`).
pub const EX_CONFIG: i32 = 78;
