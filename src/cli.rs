//! Command-line arguments. Parsing only: every command is implemented in the library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// sensei keeps a distilled student model honest in the field: the student answers every
/// record, the teacher checks a sample, and drift in their agreement is measured in SQLite.
#[derive(Debug, Parser)]
#[command(name = "sensei", version, propagate_version = true)]
pub struct Cli {
    /// The config file.
    #[arg(long, global = true, default_value = crate::config::DEFAULT_PATH, value_name = "FILE")]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: watch the inbox, student on every record, teacher on a sample.
    Run,
    /// Run the daemon's pipeline over the given files (or directories), then exit with a summary.
    /// Files are not moved; the database in the config is written. Exit 1 when a commit failed,
    /// 65 when files were quarantined and none was committed.
    Replay {
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// The lab stage: run both models on the lab reference set, measure the reference profile,
    /// calibrate every drift detector to the configured false-alarm rate, and store it as a new
    /// baseline version, which becomes the active one (a running daemon picks it up at restart).
    Baseline {
        #[arg(required = true, value_name = "DATA")]
        paths: Vec<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check the config, ONNX Runtime, both models and their compatibility, the database and the
    /// directories. Lists every problem; exits 78 when there is one.
    Check,
    /// Write the dashboard as one self-contained HTML file, with the lab-vs-field gap per signal,
    /// the return on investment (student vs teacher latency, size and agreement) and the
    /// challengers' verdict (the smallest model in shadow that agrees with the teacher enough).
    Report {
        /// The HTML file to write.
        #[arg(long, value_name = "FILE.html")]
        out: PathBuf,
        /// Also print the report's data (health, gap, return on investment, challengers) as one
        /// JSON object instead of the one-line summary.
        #[arg(long)]
        json: bool,
    },
    /// Show what the database holds: files, records, teacher samples, disagreement per segment.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the re-distillation dataset (manifest.json and data.safetensors, as in
    /// docs/dataset-format.md) from the teacher-sampled records in the database.
    Export {
        /// The dataset directory (created; must not already hold a dataset).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Only records whose time is at or after this (RFC 3339, e.g. 2026-03-03T06:00:00Z).
        #[arg(long, value_name = "RFC3339")]
        since: Option<String>,
        /// Only records of segments with this key and value, e.g. line=B.
        #[arg(long, value_name = "K=V")]
        segment: Option<String>,
        /// Why the dataset is exported (the manifest's `trigger.reason`).
        #[arg(long, default_value = "sensei export by the operator")]
        reason: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-distil the student now: export the teacher samples (holding out a share), run the
    /// `[redistill] command` with its timeout, check the candidate it writes and judge it against
    /// the serving student on the held-out records and the lab set (the gate). One job at a time;
    /// at least `[redistill] min_interval` between job starts unless --force. The serving student
    /// is not changed (promote the candidate with `sensei promote`).
    Redistill {
        /// Why (recorded with the job and in the dataset's manifest).
        #[arg(long, default_value = "sensei redistill by the operator")]
        reason: String,
        /// Start even if the last job started less than min_interval ago.
        #[arg(long)]
        force: bool,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Make MODEL the serving student: check it fits the teacher, copy it into the state
    /// directory's models/ under a versioned name, and record the promotion with the gate's
    /// evidence when MODEL is a re-distillation job's candidate. Takes effect when the daemon
    /// reloads (SIGHUP) or restarts.
    Promote {
        #[arg(value_name = "MODEL")]
        model: PathBuf,
        /// Why (recorded with the promotion).
        #[arg(long, default_value = "sensei promote by the operator")]
        reason: String,
        /// Promote a job's candidate even though the gate did not pass it.
        #[arg(long)]
        force: bool,
    },
    /// Go back to the student the serving one replaced (recorded like a promotion). Takes effect
    /// when the daemon reloads (SIGHUP) or restarts.
    Rollback {
        /// Why (recorded with the rollback).
        #[arg(long, default_value = "sensei rollback by the operator")]
        reason: String,
    },
    /// Alerts: send a test notification, or show the outbox.
    Alert {
        #[command(subcommand)]
        command: AlertCommand,
    },
    /// Run the bundled demo teacher and student on the clean and drifted demo streams in a
    /// temporary directory and print the agreement figures per stream.
    Demo {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Directory with teacher.onnx, student.onnx and streams/ (default: models/demo).
        #[arg(long, value_name = "DIR")]
        models: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub enum AlertCommand {
    /// Send a test notification to one receiver now, and say whether it was accepted.
    Test {
        /// The receiver, as in `[receivers.NAME]`.
        #[arg(long, value_name = "NAME")]
        receiver: String,
    },
    /// Show the outbox per receiver: sent, pending, and undelivered notifications.
    Outbox {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
}
