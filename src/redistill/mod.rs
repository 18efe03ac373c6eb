//! Re-distillation: the distillation buffer's retention, the dataset export, and the job that
//! re-distils the student on the field data the teacher labelled.
//!
//! The loop closes in the database: alert rules with `action = "redistill"` leave a row in
//! `alert_actions`; the daemon's re-distillation task turns it into a `redistill_jobs` row
//! (at most one job queued or running, a minimum interval between jobs that grows while jobs
//! fail), exports the teacher
//! samples as a dataset with a held-out share the job never sees, runs the configured command
//! with a timeout, and records how it ended. `sensei redistill` does the same by hand.
//!
//! - [`buffer`]: which teacher samples the size-capped buffer keeps.
//! - [`export`](mod@export): `sensei export` and the job's dataset (docs/dataset-format.md).
//! - [`safetensors`]: the tensor file format of the dataset.
//! - [`gate`]: a candidate against the serving student, on held-out field records and the lab
//!   set, with a significance test.
//! - [`promote`]: `sensei promote` and `sensei rollback`; which student serves.
//! - [`job`]: requests, the job runner, recovery after a restart, the daemon's task.
//! - [`streak`]: jobs failing in a row: the back-off, and the notification that says so.

pub mod buffer;
pub mod export;
pub mod gate;
pub mod job;
pub mod promote;
pub mod safetensors;
pub mod streak;

pub use export::{ExportOptions, ExportSummary, export};
pub use job::{JobOutcome, RedistillTask, RequestError, run_by_hand};
