//! sensei keeps a distilled student model honest in the field: the student answers every record,
//! the teacher it was distilled from checks a budgeted sample, and the agreement statistics go
//! to SQLite.
//!
//! # Layout
//! - [`config`]: TOML → raw structs → validated [`config::Config`].
//! - [`record`]: field records and tensors in memory.
//! - [`ingest`]: the inbox watcher, the file formats, the ledger check, done/ and quarantine/.
//! - [`model`]: ONNX Runtime (the only module touching `ort`): library search, sessions, batches.
//! - [`compare`]: teacher-vs-student metrics of one record (pure functions).
//! - [`sampler`]: which records the teacher sees, with what weight, under what budget.
//! - [`pipeline`]: the student worker, the teacher worker and the writer thread.
//! - [`store`]: SQLite, migrations and every query.
//! - [`stats`]: intervals for the reported rates.
//! - [`daemon`]: wiring and shutdown; `run` (the daemon) and `replay`.
//! - [`commands`], [`demo`]: `check`, `status`, `demo`; [`cli`]: argument definitions.

pub mod baseline;
pub mod cli;
pub mod commands;
pub mod compare;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod ingest;
pub mod model;
pub mod monitor;
pub mod pipeline;
pub mod record;
pub mod sampler;
pub mod stats;
pub mod store;
