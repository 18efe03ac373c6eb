//! Command-line arguments. Parsing only: every command is implemented in the library.

use std::path::PathBuf;

use clap::{ArgAction, Parser, Subcommand, ValueEnum};

/// Keeps a distilled student model honest in the field.
///
/// The student answers every record, the teacher checks a sample, and drift in their agreement
/// is measured in SQLite. `sensei COMMAND --help` says what each command does.
// `-V` is the program's version and is taken at the top level only (`sensei -V`): propagated to
// the subcommands, clap would print a subcommand's name as if it were a program.
#[derive(Debug, Parser)]
#[command(name = "sensei", version)]
pub struct Cli {
    /// The config file.
    #[arg(
        short = 'c',
        long,
        global = true,
        env = "SENSEI_CONFIG",
        default_value = crate::config::DEFAULT_PATH,
        value_name = "FILE"
    )]
    pub config: PathBuf,

    /// More log lines on stderr: -v info, -vv debug, -vvv trace (overrides SENSEI_LOG and
    /// `[log] filter`).
    #[arg(short = 'v', long = "verbose", global = true, action = ArgAction::Count, conflicts_with = "quiet")]
    pub verbose: u8,

    /// Fewer log lines on stderr: -q errors only, -qq none (overrides SENSEI_LOG and
    /// `[log] filter`).
    #[arg(short = 'q', long = "quiet", global = true, action = ArgAction::Count)]
    pub quiet: u8,

    /// The log lines' format on stderr (overrides `[log] format`; default: text on a terminal,
    /// JSON lines otherwise).
    #[arg(long, global = true, value_enum, value_name = "FORMAT")]
    pub log_format: Option<LogFormatArg>,

    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

impl Cli {
    /// The log level given by `-v`/`-q` relative to a command's default `base` level, or
    /// `None` when neither was given. Levels: off, error, warn, info, debug, trace.
    pub fn log_level(&self, base: &str) -> Option<&'static str> {
        const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
        if self.verbose == 0 && self.quiet == 0 {
            return None;
        }
        let base = LEVELS.iter().position(|l| *l == base).unwrap_or(2) as i32;
        let at = (base + i32::from(self.verbose) - i32::from(self.quiet)).clamp(0, 5);
        Some(LEVELS[at as usize])
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon: watch the inbox, student on every record, teacher on a sample.
    ///
    /// SIGTERM or SIGINT drains and exits, SIGHUP reloads the config.
    Run,
    /// Run the daemon's pipeline over files or directories, then print a summary.
    ///
    /// Files are not moved; the database in the config is written. Exit 1 when a commit failed,
    /// 65 when files were quarantined and none was committed.
    Replay {
        /// Record files (.jsonl, .npy, .npz, .labels.jsonl) or directories of them.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
    },
    /// The lab stage: measure the reference profile and calibrate the drift detectors.
    ///
    /// Runs both models on the lab reference set, measures the reference profile, calibrates
    /// every drift detector to the configured false-alarm rate, and stores it as a new baseline
    /// version, which becomes the active one (a running daemon picks it up at restart).
    Baseline {
        /// The lab reference set: record files or directories of them, labelled where possible.
        #[arg(required = true, value_name = "DATA")]
        paths: Vec<PathBuf>,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Check the config, ONNX Runtime, the models, the database and the directories.
    ///
    /// Checks both models and their compatibility too. Lists every problem; exits 78 when there
    /// is one.
    Check,
    /// Write the dashboard as one self-contained HTML file.
    ///
    /// With the lab-vs-field gap per signal, the return on investment (student vs teacher
    /// latency, size and agreement) and the challengers' verdict (the smallest model in shadow
    /// that agrees with the teacher enough).
    Report {
        /// The HTML file to write.
        #[arg(long, value_name = "FILE.html")]
        out: PathBuf,
        /// Also print the report's data (health, gap, return on investment, challengers) as one
        /// JSON object instead of the one-line summary.
        #[arg(long)]
        json: bool,
    },
    /// Show what the database holds: files, records, teacher samples, drift, alerts.
    ///
    /// Per segment the disagreement rate, per signal its detector against its threshold, the
    /// drift events and the alerts firing.
    Status {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Write the re-distillation dataset from the teacher-sampled records.
    ///
    /// The dataset is manifest.json and data.safetensors, as in docs/dataset-format.md.
    Export {
        /// The dataset directory (created; must not already hold a dataset).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
        /// Only records whose time is at or after this (RFC 3339, e.g. 2026-03-03T06:00:00Z).
        #[arg(long, value_name = "RFC3339")]
        since: Option<String>,
        /// Only records of segments with this key and value, e.g. line=B (the value as sent or as stored).
        #[arg(long, value_name = "K=V")]
        segment: Option<String>,
        /// Why the dataset is exported (the manifest's `trigger.reason`).
        #[arg(long, default_value = "sensei export by the operator")]
        reason: String,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-distil the student now and judge the candidate.
    ///
    /// Exports the teacher samples (holding out a share), runs the `[redistill] command` with its
    /// timeout, checks the candidate it writes and judges it against the serving student on the
    /// held-out records and the lab set (the gate). One job at a time; at least `[redistill]
    /// min_interval` between job starts unless --force. The serving student is not changed
    /// (promote the candidate with `sensei promote`).
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
    /// Make MODEL the serving student.
    ///
    /// Checks it fits the teacher, copies it into the state directory's models/ under a
    /// versioned name, and records the promotion with the gate's evidence when MODEL is a
    /// re-distillation job's candidate. Takes effect when the daemon reloads (SIGHUP) or
    /// restarts.
    Promote {
        /// The student's .onnx file, e.g. a re-distillation job's candidate.
        #[arg(value_name = "MODEL")]
        model: PathBuf,
        /// Why (recorded with the promotion).
        #[arg(long, default_value = "sensei promote by the operator")]
        reason: String,
        /// Promote a job's candidate even though the gate did not pass it.
        #[arg(long)]
        force: bool,
    },
    /// Go back to the student the serving one replaced.
    ///
    /// Recorded like a promotion. Takes effect when the daemon reloads (SIGHUP) or restarts.
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
    /// Run the bundled demo models on the clean and drifted demo streams.
    ///
    /// Everything happens in a work directory with a config of its own for each stream
    /// (`--config` is not taken); prints the agreement figures and drift events per stream, and
    /// where the work directory is. The pipeline's log goes to demo.log there; only errors reach
    /// the terminal.
    Demo {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Directory with teacher.onnx, student.onnx and streams/ (default: models/demo).
        #[arg(long, value_name = "DIR")]
        models: Option<PathBuf>,
        /// The work directory: the demo's log, each stream's config and database (created; must
        /// be empty or absent). Default: a new sensei-demo-* directory in the temporary
        /// directory, kept afterwards.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
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
