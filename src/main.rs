//! The `sensei` binary: parses arguments, sets up logging, and calls the library.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use sensei::cli::{AlertCommand, Cli, Command};
use sensei::commands::{self, EX_CONFIG};
use sensei::config::{Config, LogFormat};

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sensei: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(path: &std::path::Path) -> Result<Config, ExitCode> {
    Config::load(path).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(EX_CONFIG as u8)
    })
}

fn dispatch(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Check => {
            init_logging(LogFormat::Auto, "warn,ort=error");
            let report = commands::check(&cli.config);
            print!("{}", report.text());
            Ok(if report.problems.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(EX_CONFIG as u8)
            })
        }
        Command::Run => {
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(config.log.format, &config.log.filter);
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
        Command::Report { out, json } => {
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(LogFormat::Auto, "warn,ort=error");
            let data = sensei::report::write_report(&config, &out)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&data)?);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "wrote {} ({}: {})",
                out.display(),
                data.health.level,
                data.health.summary
            );
            if let Some(c) = &data.challengers {
                print!("{}", sensei::report::challengers_text(c));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Replay { paths } => {
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(config.log.format, "warn,ort=error");
            let report = sensei::daemon::replay(&config, &paths, None)?;
            let status = commands::status(&config)?;
            print!("{}", commands::replay_text(&report, &status));
            Ok(ExitCode::from(commands::replay_exit_code(&report) as u8))
        }
        Command::Baseline { paths, json } => {
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(config.log.format, "warn,ort=error");
            let report = sensei::baseline::measure(&config, &paths)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => {
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let status = commands::status(&config)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", status.text());
                // Notifications not delivered yet stay in sight (details: `sensei alert outbox`).
                if let Some(outbox) = &status.outbox
                    && !outbox.receivers.is_empty()
                {
                    print!("\n{}", outbox.text(sensei::time::now_ms()));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Export {
            out,
            since,
            segment,
            reason,
            json,
        } => {
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let options = sensei::redistill::export::options(out, since, segment, reason)?;
            let summary = sensei::redistill::export(&config, &options)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                println!("{}", summary.text());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Redistill {
            reason,
            force,
            json,
        } => {
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(LogFormat::Auto, "warn,ort=error");
            let outcome = match sensei::redistill::run_by_hand(&config, &reason, force) {
                Ok(o) => o,
                Err(e) => {
                    eprintln!("sensei: no re-distillation job started: {e:#}");
                    return Ok(ExitCode::FAILURE);
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&outcome)?);
            } else {
                print!("{}", outcome.text());
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
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(LogFormat::Auto, "warn,ort=error");
            let changed = sensei::redistill::promote::promote(&config, &model, &reason, force)?;
            print!("{}", changed.text());
            Ok(ExitCode::SUCCESS)
        }
        Command::Rollback { reason } => {
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(LogFormat::Auto, "warn,ort=error");
            let changed = sensei::redistill::promote::rollback(&config, &reason)?;
            print!("{}", changed.text());
            Ok(ExitCode::SUCCESS)
        }
        Command::Alert { command } => {
            let config = match load_config(&cli.config) {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            init_logging(LogFormat::Auto, "warn,ort=error");
            alert_command(&config, command)
        }
        Command::Demo { json, models } => {
            init_logging(LogFormat::Auto, "warn,ort=error");
            let dir = sensei::demo::find_models_dir(models.as_deref())?;
            let report = sensei::demo::run(&dir)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.text());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `sensei alert test` and `sensei alert outbox`.
fn alert_command(config: &Config, command: AlertCommand) -> anyhow::Result<ExitCode> {
    match command {
        AlertCommand::Test { receiver } => {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            match runtime.block_on(sensei::alert::send_test(&config.alerts, &receiver)) {
                Ok(doc) => {
                    println!(
                        "sent: test notification to {receiver} (dedup key {})",
                        doc.dedup_key
                    );
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("sensei: test notification not delivered: {e:#}");
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
            if json {
                println!("{}", serde_json::to_string_pretty(&summary)?);
            } else {
                print!("{}", summary.text(sensei::time::now_ms()));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Logs go to stderr: text on a terminal, JSON lines otherwise (journald, files).
fn init_logging(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SENSEI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    let json = match format {
        LogFormat::Json => true,
        LogFormat::Text => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.with_ansi(std::io::stderr().is_terminal()).init();
    }
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
