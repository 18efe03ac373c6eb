//! The `sensei` binary: parses arguments, sets up logging, and calls the library.
//!
//! Everything a command prints goes through [`out`]: a reader that goes away early
//! (`sensei status --json | head -1`) ends the command quietly with status 0, as for any Unix
//! filter, instead of a panic. SIGPIPE stays ignored (Rust's default), so the daemon's sockets
//! see EPIPE as an error on one connection and never die of a signal.

use std::io::{IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{CommandFactory, FromArgMatches};
use sensei::cli::{AlertCommand, Cli, Command, LogFormatArg};
use sensei::commands::{self, EX_CONFIG};
use sensei::config::{Config, LogFormat};

fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if matches!(cli.command, Command::Demo { .. })
        && matches.value_source("config") == Some(clap::parser::ValueSource::CommandLine)
    {
        Cli::command()
            .error(
                clap::error::ErrorKind::ArgumentConflict,
                "`sensei demo` takes no --config: it writes a config of its own for each stream \
                 into its work directory (see `sensei demo --help`)",
            )
            .exit();
    }
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            say(&format!("sensei: {e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Writes a command's output to stdout. A closed pipe comes back as an error that [`main`]
/// turns into a quiet exit.
fn out(text: &str) -> anyhow::Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}

/// A line to stderr; a closed stderr is not worth a panic.
fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        say(&e.to_string());
        ExitCode::from(EX_CONFIG as u8)
    })
}

/// The default log filter of the one-shot commands: warnings, and ONNX Runtime's errors.
const COMMAND_FILTER: &str = "warn,ort=error";

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    macro_rules! config {
        () => {
            match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            }
        };
    }
    match &cli.command {
        Command::Check => {
            init_logging(&cli, LogFormat::Auto, COMMAND_FILTER, None);
            let report = commands::check(&cli.config);
            out(&report.text())?;
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EX_CONFIG as u8)
            })
        }
        Command::Run => {
            let config = config!();
            init_logging(&cli, config.log.format, &config.log.filter, None);
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let result = runtime.block_on(async {
                let (tx, rx) = tokio::sync::mpsc::channel(8);
                tokio::spawn(forward_signals(tx));
                sensei::daemon::run(config, rx, None).await
            });
            match result {
                Ok(_) => Ok(ExitCode::SUCCESS),
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "The daemon stopped with an error.");
                    // Pipeline threads may still hold work; leave them to process exit rather
                    // than wait for them (the database is consistent at every commit).
                    runtime.shutdown_background();
                    Err(e)
                }
            }
        }
        Command::Report { out: file, json } => {
            let config = config!();
            init_logging(&cli, LogFormat::Auto, COMMAND_FILTER, None);
            let data = sensei::report::write_report(&config, file)?;
            if *json {
                out(&to_json(&data)?)?;
                return Ok(ExitCode::SUCCESS);
            }
            let mut text = format!(
                "wrote {} ({}: {})\n",
                file.display(),
                data.health.level,
                data.health.summary
            );
            if let Some(c) = &data.challengers {
                text.push_str(&sensei::report::challengers_text(c));
            }
            out(&text)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { paths } => {
            let config = config!();
            init_logging(&cli, config.log.format, COMMAND_FILTER, None);
            let report = sensei::daemon::replay(&config, paths, None)?;
            let status = commands::status(&config)?;
            out(&commands::replay_text(&report, &status))?;
            Ok(ExitCode::from(commands::replay_exit_code(&report) as u8))
        }
        Command::Baseline { paths, json } => {
            let config = config!();
            init_logging(&cli, config.log.format, COMMAND_FILTER, None);
            let report = sensei::baseline::measure(&config, paths)?;
            if *json {
                out(&to_json(&report)?)?;
            } else {
                out(&report.text())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let config = config!();
            init_logging(&cli, LogFormat::Auto, COMMAND_FILTER, None);
            let status = commands::status(&config)?;
            if *json {
                out(&to_json(&status)?)?;
            } else {
                let mut text = status.text();
                // Notifications not delivered yet stay in sight (details: `sensei alert outbox`).
                if let Some(outbox) = &status.outbox
                    && !outbox.receivers.is_empty()
                {
                    text.push('\n');
                    text.push_str(&outbox.text(sensei::time::now_ms()));
                }
                out(&text)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Export {
            out: dir,
            since,
            segment,
            reason,
            json,
        } => {
            let config = config!();
            init_logging(&cli, LogFormat::Auto, COMMAND_FILTER, None);
            let options = sensei::redistill::export::options(
                dir.clone(),
                since.clone(),
                segment.clone(),
                reason.clone(),
            )?;
            let summary = sensei::redistill::export(&config, &options)?;
            if *json {
                out(&to_json(&summary)?)?;
            } else {
                out(&format!("{}\n", summary.text()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Redistill {
            reason,
            force,
            json,
        } => {
            let config = config!();
            init_logging(&cli, LogFormat::Auto, COMMAND_FILTER, None);
            let outcome = match sensei::redistill::run_by_hand(&config, reason, *force) {
                Ok(o) => o,
                Err(e) => {
                    say(&format!("sensei: no re-distillation job started: {e:#}"));
                    return Ok(ExitCode::FAILURE);
                }
            };
            if *json {
                out(&to_json(&outcome)?)?;
            } else {
                out(&outcome.text())?;
            }
            Ok(if outcome.status == "succeeded" {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        Command::Promote {
            model,
            reason,
            force,
        } => {
            let config = config!();
            init_logging(&cli, LogFormat::Auto, COMMAND_FILTER, None);
            let changed = sensei::redistill::promote::promote(&config, model, reason, *force)?;
            out(&changed.text())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback { reason } => {
            let config = config!();
            init_logging(&cli, LogFormat::Auto, COMMAND_FILTER, None);
            let changed = sensei::redistill::promote::rollback(&config, reason)?;
            out(&changed.text())?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Alert { command } => {
            let config = config!();
            init_logging(&cli, LogFormat::Auto, COMMAND_FILTER, None);
            alert_command(&config, command)
        }
        Command::Demo { json, models, dir } => {
            let models = sensei::demo::find_models_dir(models.as_deref())?;
            let work = sensei::demo::work_dir(dir.as_deref())?;
            let log = work.join(sensei::demo::LOG_FILE);
            // The terminal shows the demo's table; the pipeline's log goes to the file.
            init_logging(
                &cli,
                LogFormat::Auto,
                "error",
                Some((&log, "info,ort=warn")),
            );
            let report = sensei::demo::run(&models, &work)?;
            if *json {
                out(&to_json(&report)?)?;
            } else {
                out(&report.text())?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A command's JSON output: pretty, and every unix-ms time with its RFC 3339 beside it.
fn to_json<T: serde::Serialize>(value: &T) -> anyhow::Result<String> {
    let mut v = serde_json::to_value(value)?;
    sensei::time::with_rfc3339(&mut v);
    let mut text = serde_json::to_string_pretty(&v)?;
    text.push('\n');
    Ok(text)
}

/// `sensei alert test` and `sensei alert outbox`.
fn alert_command(config: &Config, command: &AlertCommand) -> anyhow::Result<ExitCode> {
    match command {
        AlertCommand::Test { receiver } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            match runtime.block_on(sensei::alert::send_test(&config.alerts, receiver)) {
                Ok(doc) => {
                    out(&format!(
                        "sent: test notification to {receiver} (dedup key {})\n",
                        doc.dedup_key
                    ))?;
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    say(&format!("sensei: test notification not delivered: {e:#}"));
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        AlertCommand::Outbox { json } => {
            let summary = if config.store.path.exists() {
                sensei::alert::outbox_summary(&config.store.path)
                    .with_context(|| format!("reading {}", config.store.path.display()))?
            } else {
                sensei::alert::OutboxSummary::default()
            };
            if *json {
                out(&to_json(&summary)?)?;
            } else {
                out(&summary.text(sensei::time::now_ms()))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Logs go to stderr: text on a terminal, JSON lines otherwise (journald, files), unless
/// `--log-format` or `[log] format` says which. The filter: `-v`/`-q` relative to the
/// command's default, else `SENSEI_LOG`, else `default_filter`. With `file`, its own filter
/// applies to a copy of the log written there (the demo's log), and stderr keeps its filter.
fn init_logging(cli: &Cli, format: LogFormat, default_filter: &str, file: Option<(&Path, &str)>) {
    use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};
    // The level of the filter's first directive (`info` of `info,ort=warn`).
    let base_level = default_filter
        .split(',')
        .next()
        .and_then(|d| d.rsplit('=').next())
        .unwrap_or("warn");
    let filter = match cli.log_level(base_level) {
        // ONNX Runtime's own lines stay at warnings unless asked for fewer.
        Some(level) if matches!(level, "info" | "debug" | "trace") => {
            EnvFilter::new(format!("{level},ort=warn"))
        }
        Some(level) => EnvFilter::new(level),
        None => {
            EnvFilter::try_from_env("SENSEI_LOG").unwrap_or_else(|_| EnvFilter::new(default_filter))
        }
    };
    let json = match (cli.log_format, format) {
        (Some(LogFormatArg::Json), _) | (None, LogFormat::Json) => true,
        (Some(LogFormatArg::Text), _) | (None, LogFormat::Text) => false,
        (None, LogFormat::Auto) => !std::io::stderr().is_terminal(),
    };
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let mut layers = vec![if json {
        stderr.json().with_filter(filter).boxed()
    } else {
        stderr
            .with_ansi(std::io::stderr().is_terminal())
            .with_filter(filter)
            .boxed()
    }];
    if let Some((path, file_filter)) = file {
        match std::fs::File::create(path) {
            Ok(f) => layers.push(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::sync::Arc::new(f))
                    .with_ansi(false)
                    .with_filter(EnvFilter::new(file_filter))
                    .boxed(),
            ),
            Err(e) => say(&format!(
                "sensei: cannot write the log {}: {e}",
                path.display()
            )),
        }
    }
    tracing_subscriber::registry().with(layers).init();
}

/// Turns signals into daemon requests: the first SIGTERM or SIGINT drains, a second one forces
/// the exit, SIGHUP reloads the config.
async fn forward_signals(tx: tokio::sync::mpsc::Sender<sensei::daemon::Control>) {
    use sensei::daemon::Control;
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        tracing::error!("Cannot install signal handlers; stop with SIGKILL.");
        return std::future::pending().await;
    };
    let mut stopping = false;
    loop {
        let request = tokio::select! {
            _ = term.recv() => { tracing::info!("SIGTERM received."); if stopping { Control::Force } else { Control::Shutdown } }
            _ = int.recv() => { tracing::info!("SIGINT received."); if stopping { Control::Force } else { Control::Shutdown } }
            _ = hup.recv() => { tracing::info!("SIGHUP received."); Control::Reload }
        };
        if request == Control::Shutdown {
            stopping = true;
        }
        if request == Control::Force {
            tracing::warn!("Second stop signal: exiting without finishing the drain.");
        }
        if tx.send(request).await.is_err() {
            return;
        }
    }
}

// Records are allocated by the ingest thread and freed by the model workers; mimalloc's
// thread-local free lists make that cross-thread hand-off cheap (measured in docs/performance.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
