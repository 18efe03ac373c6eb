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
//! - [`alert`]: rules over drift events, the durable outbox, email/webhook/Alertmanager/command
//!   receivers.
//! - [`redistill`]: the distillation buffer's retention, `sensei export`, re-distillation jobs.
//! - [`shadow`]: challengers and a pending candidate run beside the teacher; their verdict.
//! - [`daemon`]: wiring and shutdown; `run` (the daemon) and `replay`.
//! - [`commands`], [`demo`]: `check`, `status`, `demo`; [`cli`]: argument definitions.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`, the JSON API and the dashboard (loopback).
//! - [`metrics`]: in-process Prometheus metrics, the database collector, the pipeline heartbeat.
//! - [`report`]: the dashboard's data and page; `sensei report`.
//! - [`notify`]: systemd notifications (READY, RELOADING, STOPPING, watchdog).

pub mod alert;
pub mod baseline;
pub mod cli;
pub mod commands;
pub mod compare;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod drift;
pub mod format;
pub mod http;
pub mod ingest;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod notify;
pub mod pipeline;
pub mod record;
pub mod redistill;
pub mod report;
pub mod sampler;
pub mod shadow;
pub mod stats;
pub mod store;
pub mod time;
