//! `sensei replay`: the daemon's pipeline over given files, then a report.

use std::path::PathBuf;

use anyhow::{Context, anyhow};

use super::start::start;
use crate::config::Config;
use crate::metrics::Metrics;
use crate::model::load_models;
use crate::pipeline::{Disposition, FileCallback, WriterReport};
use crate::store::{Reader, Store};

/// Runs the daemon's pipeline over the given files (directories: their files, sorted), then
/// returns. Files are left where they are; bad ones are reported, not moved.
pub fn replay(
    config: &Config,
    paths: &[PathBuf],
    on_file: Option<FileCallback>,
) -> anyhow::Result<WriterReport> {
    let _lock = super::lock::acquire(config)?;
    let mut store = Store::open(&config.store.path)?;
    store.set_synchronous(config.store.synchronous)?;
    store.checkpoint_in_background(crate::store::CHECKPOINT_INTERVAL)?;
    let models = load_models(config).map_err(|p| anyhow!("{}", p.join("\n")))?;
    let ledger = Reader::open(&config.store.path)?;
    let metrics = Metrics::new(config.store.path.clone());
    metrics.set_window(config.store.window);
    let (mut ingest, threads) = start(
        config,
        models,
        store,
        Disposition::Keep,
        None,
        Some(ledger),
        on_file,
        metrics,
    )?;
    let files = expand(paths)?;
    for file in &files {
        if ingest.process(file).is_err() {
            break;
        }
    }
    drop(ingest);
    threads.join()
}

/// Files named directly, plus the regular files of named directories (sorted, hidden and
/// temporary names skipped).
fn expand(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for p in paths {
        let meta = std::fs::metadata(p).with_context(|| format!("{}", p.display()))?;
        if meta.is_dir() {
            let mut files: Vec<PathBuf> = std::fs::read_dir(p)
                .with_context(|| format!("listing {}", p.display()))?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|f| f.is_file())
                .filter(|f| {
                    f.file_name()
                        .is_some_and(|n| !crate::format::is_ignored_name(&n.to_string_lossy()))
                })
                .collect();
            files.sort();
            out.extend(files);
        } else {
            out.push(p.clone());
        }
    }
    Ok(out)
}
