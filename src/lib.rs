//! sensei keeps a distilled student model honest in the field: the student answers every record,
//! the teacher it was distilled from checks a budgeted sample, and the agreement statistics go
//! to SQLite.
//!
//! # Layers
//!
//! From the foundation up. A module imports only modules listed before it here, in its own
//! layer or below (`tests/suite/layers.rs` checks every `crate::` path of `src/`), so each layer
//! can be read, tested and changed without the ones above it. A type or constant several layers
//! share lives in the lowest layer that needs it.
//!
//! 1. Foundation, pure data and rules: [`record`], [`signal`], [`stats`], [`time`], [`config`],
//!    [`compare`], [`monitor`], [`format`](mod@format), [`sampler`], [`notify`].
//! 2. Storage and models: [`store`], [`model`], [`metrics`].
//! 3. The pipeline's parts: [`drift`], [`baseline`], [`shadow`], [`alert`], [`redistill`],
//!    [`pipeline`], [`ingest`].
//! 4. What operators read: [`commands`], [`report`], [`http`].
//! 5. Wiring: [`daemon`].
//! 6. The top: [`demo`], [`cli`] (and `main.rs`, which only parses arguments and calls the
//!    library).
//!
//! # Modules
//! - [`record`]: field records and tensors in memory; the all-segments name.
//! - [`signal`]: the names of the monitored signals (family and feature index).
//! - [`stats`]: intervals for the reported rates.
//! - [`time`]: unix milliseconds, RFC 3339.
//! - [`config`]: TOML → raw structs → validated [`config::Config`], every section (alerts
//!   included), and which student serves after a promotion.
//! - [`compare`]: teacher-vs-student metrics of one record (pure functions).
//! - [`monitor`]: the statistics of drift detection: detectors, calibration, windowed tests,
//!   sampling weights, the lab run's measurements.
//! - [`format`](mod@format): the bytes of one file (JSON Lines, `.npy`, `.npz`, late labels) into validated
//!   records.
//! - [`sampler`]: which records the teacher sees, with what weight, under what budget.
//! - [`notify`]: systemd notifications (READY, RELOADING, STOPPING, watchdog).
//! - [`store`]: SQLite: the connection, migrations and every query of the crate, one file per
//!   family of tables.
//! - [`model`]: ONNX Runtime (the only module touching `ort`): library search, sessions,
//!   batches; the student and teacher as a comparable pair.
//! - [`metrics`]: in-process Prometheus metrics, the database collector, the pipeline heartbeat.
//! - [`drift`]: which detector watches which signal, drift events, the reference profile.
//! - [`baseline`]: the lab stage (`sensei baseline`).
//! - [`shadow`]: challengers (from files or on inference servers) and a pending candidate run
//!   beside the teacher; their verdict.
//! - [`alert`]: rules over drift events, the durable outbox, email/webhook/Alertmanager/command
//!   receivers.
//! - [`redistill`]: the distillation buffer's retention, `sensei export`, re-distillation jobs,
//!   the gate, promotion.
//! - [`pipeline`]: the student, dispatcher, teacher, remote shadow and writer threads, and where a
//!   finished file goes.
//! - [`ingest`]: the inbox watcher and the ledger check; files into the pipeline.
//! - [`commands`]: `check`, `status` and `replay`'s summary, each returning what it prints.
//! - [`report`]: the dashboard's data and page; `sensei report`.
//! - [`http`]: `/metrics`, `/healthz`, `/readyz`, the JSON API and the dashboard (loopback).
//! - [`daemon`]: wiring and shutdown; `run` (the daemon) and `replay`.
//! - [`demo`]: `sensei demo`; [`cli`]: argument definitions.
//!
//! `docs/architecture.md` follows one record through these files and lists the files to touch
//! for a new signal, detector, receiver or input format.

pub mod compare;
pub mod config;
pub mod format;
pub mod monitor;
pub mod notify;
pub mod record;
pub mod sampler;
pub mod signal;
pub mod stats;
pub mod time;

pub mod metrics;
pub mod model;
pub mod store;

pub mod alert;
pub mod baseline;
pub mod drift;
pub mod ingest;
pub mod pipeline;
pub mod redistill;
pub mod shadow;

pub mod commands;
pub mod http;
pub mod report;

pub mod daemon;

pub mod cli;
pub mod demo;
