//! Ingest: finds files in the inbox, reads and validates them into records, and hands them to
//! the pipeline; moves finished files to `done/` and bad ones to `quarantine/`.
//!
//! Discovery (see `watch`): a notify watcher on the flat inbox, a catch-up scan at start, a
//! rescan when the watcher reports an overflow or an error, and a periodic rescan. A file renamed
//! into the inbox is taken at once; a file written in place is taken once it has been closed (or
//! found by a scan) and left unmodified for the configured quiet time; one still open for
//! writing is not taken, whatever its age. Dot-files, `*.tmp` and
//! `*.part` are never taken.
//!
//! One version: the file is read through one descriptor and stamped (device, inode, size,
//! modification time) before and after; a file that changed meanwhile is handed back to be
//! taken once quiet. The writer compares the stamp again before it commits and before it moves
//! the file (see `pipeline::disposal`), so the records counted, the hash in the ledger and the
//! file in done/ are the same bytes.
//!
//! Exactly-once: a file is identified by the sha256 of its content. The writer commits a file's
//! records and its ledger row in one transaction; only then is the file moved. After a crash the
//! file is still in the inbox and is processed again from scratch; if it had already committed,
//! the ledger recognises it and it is only moved.

mod watch;

pub use watch::{IngestEvent, Watch};

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;

use sha2::{Digest, Sha256};

use crate::config::{Config, OnDone};
use crate::pipeline::{
    Disposition, FileMeta, FileStamp, FileWork, InFlightPaths, Prepared, Retake, Retry, WriterMsg,
};
use crate::record::{FileContent, InputSpec, Origin};
use crate::store::{FileOrigin, Reader};
use crate::time::now_ms;

use crate::format::{self, FileKind, FormatOptions, is_ignored_name};

/// Turns the record's segment object into the stored segment string: the configured keys, in
/// configured order, `key=value` joined by commas, each value escaped and at most
/// `max_value_bytes` long (`record::segment_value`); `""` when the record has none of them.
/// New values beyond the configured bound are pooled into `(other)` so a producer bug cannot
/// create unbounded state.
#[derive(Debug, Clone)]
pub struct Segments {
    keys: Vec<String>,
    max_values: usize,
    max_value_bytes: usize,
    known: HashSet<String>,
}

/// The segment string used once the bound on distinct segments is reached.
pub const OTHER_SEGMENT: &str = "(other)";

/// A record's stored segment, and how many of its values were cut to the length limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub segment: String,
    pub values_cut: usize,
}

impl Segments {
    pub fn new(
        keys: Vec<String>,
        max_values: usize,
        max_value_bytes: usize,
        known: impl IntoIterator<Item = String>,
    ) -> Segments {
        Segments {
            keys,
            max_values,
            max_value_bytes,
            known: known.into_iter().collect(),
        }
    }

    /// `[segments] max_value_bytes`.
    pub fn max_value_bytes(&self) -> usize {
        self.max_value_bytes
    }

    pub fn resolve(&mut self, segment: &BTreeMap<String, String>) -> Resolved {
        let mut values_cut = 0;
        let parts: Vec<String> = self
            .keys
            .iter()
            .filter_map(|k| {
                let value = crate::record::segment_value(segment.get(k)?, self.max_value_bytes);
                values_cut += usize::from(value.cut);
                Some(format!("{k}={}", value.text))
            })
            .collect();
        let s = parts.join(",");
        let segment = if s.is_empty() || self.known.contains(&s) {
            s
        } else if self.known.len() >= self.max_values {
            OTHER_SEGMENT.to_string()
        } else {
            self.known.insert(s.clone());
            s
        };
        Resolved {
            segment,
            values_cut,
        }
    }
}

/// Reads files into records and sends them on. One instance runs on the ingest thread.
pub struct Ingest {
    pub specs: Vec<InputSpec>,
    pub options: FormatOptions,
    pub max_file_bytes: u64,
    pub segments: Segments,
    pub done: Disposition,
    pub quarantine_dir: Option<PathBuf>,
    pub ledger: Option<Reader>,
    pub work: SyncSender<FileWork>,
    pub writer: SyncSender<WriterMsg>,
    /// Source of `FileMeta::key`.
    next_key: Arc<AtomicU64>,
    pub in_flight: InFlightPaths,
    /// Sends a file whose commit failed back to the ingest loop (`None` in a replay).
    pub retry: Option<Retry>,
    /// The student's classes (classification): a label must be one of `0..classes`. `None`
    /// when the task has no classes or the model does not say how many.
    pub classes: Option<usize>,
    /// How far ahead of and behind the time a file is read its records' `ts` may be
    /// (`[inbox] ts_max_future`, `ts_max_past`).
    pub ts_bounds: TsBounds,
}

/// How far a record's `ts` may be from the time its file is read. A record outside them makes
/// its file quarantined: a record from the far future would be the latest window of every
/// aggregate for good, and moving it to now would file it under a time it does not have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TsBounds {
    pub max_future: std::time::Duration,
    pub max_past: Option<std::time::Duration>,
}

impl TsBounds {
    pub fn of(config: &Config) -> TsBounds {
        TsBounds {
            max_future: config.inbox.ts_max_future,
            max_past: config.inbox.ts_max_past,
        }
    }

    /// Why a record time `ts_ms` read at `now_ms` is out of bounds, if it is.
    pub fn problem(&self, ts_ms: i64, now_ms: i64) -> Option<String> {
        let ms = |d: std::time::Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        let ts = crate::time::rfc3339(ts_ms);
        let now = crate::time::rfc3339(now_ms);
        let ahead = ts_ms.saturating_sub(now_ms);
        if ahead > ms(self.max_future) {
            return Some(format!(
                "{ts} is {} ahead of the time the file was read ({now}); at most {} ahead is \
                 taken ([inbox] ts_max_future): the producer's clock or time zone is wrong",
                span(ahead),
                crate::config::show_duration(self.max_future)
            ));
        }
        let behind = now_ms.saturating_sub(ts_ms);
        match self.max_past {
            Some(max) if behind > ms(max) => Some(format!(
                "{ts} is {} before the time the file was read ({now}); at most {} before is \
                 taken ([inbox] ts_max_past)",
                span(behind),
                crate::config::show_duration(max)
            )),
            _ => None,
        }
    }
}

/// A length of time in milliseconds, in the largest whole unit: `2914134 days`, `3 hours`.
fn span(ms: i64) -> String {
    const UNITS: [(i64, &str); 4] = [
        (86_400_000, "day"),
        (3_600_000, "hour"),
        (60_000, "minute"),
        (1_000, "second"),
    ];
    for (size, unit) in UNITS {
        if ms >= size {
            let n = ms / size;
            return format!("{n} {unit}{}", if n == 1 { "" } else { "s" });
        }
    }
    format!("{ms} ms")
}

/// The pipeline is gone (shutting down): stop reading files.
#[derive(Debug)]
pub struct Closed;

impl Ingest {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: &Config,
        specs: Vec<InputSpec>,
        known_segments: Vec<String>,
        done: Disposition,
        quarantine_dir: Option<PathBuf>,
        ledger: Option<Reader>,
        work: SyncSender<FileWork>,
        writer: SyncSender<WriterMsg>,
    ) -> Ingest {
        Ingest {
            specs,
            options: FormatOptions {
                non_finite: config.compare.non_finite,
                max_uncompressed_bytes: config.inbox.max_file_bytes.saturating_mul(4),
            },
            max_file_bytes: config.inbox.max_file_bytes,
            segments: Segments::new(
                config.segments.keys.clone(),
                config.segments.max_values,
                config.segments.max_value_bytes,
                known_segments,
            ),
            done,
            quarantine_dir,
            ledger,
            work,
            writer,
            next_key: Arc::new(AtomicU64::new(1)),
            in_flight: InFlightPaths::default(),
            retry: None,
            classes: None,
            ts_bounds: TsBounds::of(config),
        }
    }

    /// The disposition the daemon uses for done files.
    pub fn done_disposition(config: &Config) -> Disposition {
        match config.inbox.on_done {
            OnDone::Move => Disposition::MoveTo(config.inbox.done_dir.clone()),
            OnDone::Delete => Disposition::Delete,
        }
    }

    /// Reads one file and sends its records (or its quarantine) on. Errors about the file go to
    /// quarantine; only a closed pipeline is returned as an error.
    pub fn process(&mut self, path: &Path) -> Result<(), Closed> {
        // The name as logs, notes and the ledger show it: a producer's newline or escape
        // sequence in a file name cannot forge a line of its own.
        let name = one_line(
            &path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| path.display().to_string()),
        );
        let mut stamp: Option<FileStamp> = None;
        let meta_of = |sha256: String,
                       size: u64,
                       kind: &'static str,
                       records: usize,
                       key: u64,
                       origin: FileOrigin,
                       stamp: Option<FileStamp>| {
            Arc::new(FileMeta {
                key,
                path: path.to_path_buf(),
                name: name.clone(),
                sha256,
                size,
                kind,
                records,
                on_done: self.done.clone(),
                quarantine_dir: self.quarantine_dir.clone(),
                in_flight: self.in_flight.clone(),
                retry: self.retry.clone(),
                origin,
                stamp,
                segment_values_cut: 0,
            })
        };
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        // A rescan may find a file that is still on its way through the pipeline.
        {
            let Ok(mut set) = self.in_flight.lock() else {
                return Err(Closed);
            };
            if !set.insert(path.to_path_buf()) {
                return Ok(());
            }
        }

        let stat = match std::fs::symlink_metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(file = %name, "File vanished before it was read; skipped.");
                self.forget(path);
                return Ok(());
            }
            Err(e) => {
                let meta = meta_of(
                    String::new(),
                    0,
                    "unknown",
                    0,
                    key,
                    FileOrigin::default(),
                    None,
                );
                return self.reject(meta, format!("cannot stat the file: {e}"));
            }
        };
        let ft = stat.file_type();
        let origin = file_origin(&stat);
        if ft.is_symlink() {
            let meta = meta_of(String::new(), 0, "unknown", 0, key, origin, stamp);
            return self.reject(
                meta,
                "symbolic links are not followed: write or rename the file itself into the inbox"
                    .into(),
            );
        }
        if !ft.is_file() {
            let meta = meta_of(String::new(), 0, "unknown", 0, key, origin, stamp);
            return self.reject(
                meta,
                "not a regular file (directory, FIFO, socket or device)".into(),
            );
        }
        let kind = format::file_kind(&name);
        let kind_name = kind.map_or("unknown", kind_str);
        if stat.len() > self.max_file_bytes {
            let meta = meta_of(String::new(), stat.len(), kind_name, 0, key, origin, stamp);
            return self.reject(
                meta,
                format!(
                    "file is {} bytes, over the limit of {} bytes (inbox.max_file_size); it was not read",
                    stat.len(),
                    self.max_file_bytes
                ),
            );
        }
        let bytes = match read_limited(path, self.max_file_bytes) {
            Ok(read) if read.changed() && self.retry.is_some() => {
                // Written to while it was read: its writer is not done. Its bytes would not be
                // one version of the file; take it again once it is quiet.
                tracing::info!(file = %name, "File changed while it was read; taken again once it is quiet.");
                self.forget(path);
                if let Some(retry) = &self.retry {
                    retry.ask(path.to_path_buf(), Retake::WhenQuiet);
                }
                return Ok(());
            }
            Ok(read) => {
                tracing::debug!(file = %name, bytes = read.bytes.len(), "File read.");
                stamp = Some(read.opened);
                read.bytes
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::debug!(file = %name, "File vanished while it was read; skipped.");
                self.forget(path);
                return Ok(());
            }
            Err(e) if exhausted(&e) && self.retry.is_some() => {
                // The daemon's resources, not the file: take it again after a back-off.
                tracing::warn!(file = %name, error = %e, "Cannot open the file for want of resources; it stays in the inbox and is taken again after a back-off.");
                self.forget(path);
                if let Some(retry) = &self.retry {
                    retry.ask(path.to_path_buf(), Retake::AfterFailure);
                }
                return Ok(());
            }
            Err(e) => {
                let meta = meta_of(String::new(), stat.len(), kind_name, 0, key, origin, stamp);
                return self.reject(meta, format!("cannot read the file: {e}"));
            }
        };
        let sha256 = crate::model::hex(&Sha256::digest(&bytes));
        let size = bytes.len() as u64;
        if let Some(ledger) = &self.ledger
            && ledger.is_done(&sha256).unwrap_or(false)
        {
            // Counted before (a re-drop, or a crash between commit and move): tell the writer,
            // which records the duplicate and moves the file without counting it.
            let meta = meta_of(sha256, size, kind_name, 0, key, origin, stamp);
            return self
                .writer
                .send(WriterMsg::AlreadyCounted { meta })
                .map_err(|_| Closed);
        }
        if kind.is_none() {
            let meta = meta_of(sha256, size, kind_name, 0, key, origin, stamp);
            return self.reject(
                meta,
                "unsupported file type: expected .jsonl, .ndjson, .labels.jsonl, .npy or .npz"
                    .into(),
            );
        }
        let content = match format::read_file(&name, &bytes, &self.specs, &self.options) {
            Ok(c) => c,
            Err(e) => {
                let meta = meta_of(sha256, size, kind_name, 0, key, origin, stamp);
                return self.reject(meta, e.to_string());
            }
        };
        drop(bytes);
        match content {
            FileContent::Labels(labels) => {
                let meta = meta_of(sha256, size, kind_name, labels.len(), key, origin, stamp);
                let outside = labels.iter().find_map(|l| {
                    self.label_problem(l.label)
                        .map(|p| format!("line {}: {p}", l.line))
                });
                if let Some(problem) = outside {
                    return self.reject(meta, problem);
                }
                let labels = labels.into_iter().map(|l| (l.id, l.label)).collect();
                self.writer
                    .send(WriterMsg::Labels { meta, labels })
                    .map_err(|_| Closed)
            }
            FileContent::Records(records) => {
                let meta = meta_of(
                    sha256.clone(),
                    size,
                    kind_name,
                    records.len(),
                    key,
                    origin,
                    stamp,
                );
                let now = now_ms();
                let prefix = &sha256[..12];
                let mut seen_ids = HashSet::with_capacity(records.len());
                let mut prepared = Vec::with_capacity(records.len());
                if let Some(problem) = records.iter().find_map(|r| {
                    let p = self.label_problem(r.label?)?;
                    Some(format!("{}, field label: {p}", r.origin))
                }) {
                    return self.reject(meta, problem);
                }
                for record in records {
                    let record_id = match &record.id {
                        Some(id) => id.clone(),
                        None => match record.origin {
                            Origin::Line(n) => format!("{prefix}:{n}"),
                            Origin::Index(n) => format!("{prefix}:{n}"),
                        },
                    };
                    if !seen_ids.insert(record_id.clone()) {
                        return self.reject(
                            meta,
                            format!(
                                "{}: duplicate record id '{record_id}' within the file",
                                record.origin
                            ),
                        );
                    }
                    let ts_ms = match record.ts {
                        Some(t) => {
                            let ts_ms = (t.unix_timestamp_nanos() / 1_000_000) as i64;
                            if let Some(problem) = self.ts_bounds.problem(ts_ms, now) {
                                let id = record
                                    .id
                                    .as_deref()
                                    .map(|id| format!(" (id {id:?})"))
                                    .unwrap_or_default();
                                return self.reject(
                                    meta,
                                    format!("{}{id}, field ts: {problem}", record.origin),
                                );
                            }
                            ts_ms
                        }
                        None => now,
                    };
                    prepared.push(Prepared {
                        record_id,
                        ts_ms,
                        segment: String::new(),
                        label: record.label,
                        record,
                    });
                }
                // Only a file that is taken adds to the bounded set of segments.
                let mut values_cut = 0;
                for p in &mut prepared {
                    let resolved = self.segments.resolve(&p.record.segment);
                    p.segment = resolved.segment;
                    values_cut += resolved.values_cut;
                }
                let mut meta = meta;
                if values_cut > 0 {
                    tracing::warn!(file = %name, values = values_cut, limit = self.segments.max_value_bytes(), "Segment values over the length limit were cut ([segments] max_value_bytes).");
                    // Not shared yet: the file has not been sent anywhere.
                    if let Some(m) = Arc::get_mut(&mut meta) {
                        m.segment_values_cut = values_cut;
                    }
                }
                self.work
                    .send(FileWork {
                        meta,
                        records: prepared,
                    })
                    .map_err(|_| Closed)
            }
        }
    }

    /// Why a label cannot be one of the model's classes, if it cannot.
    fn label_problem(&self, label: i64) -> Option<String> {
        let classes = self.classes?;
        (label < 0 || label as u64 >= classes as u64).then(|| {
            format!(
                "label {label} is not a class of the model: the student has {classes} classes, 0 to {}",
                classes.saturating_sub(1)
            )
        })
    }

    fn forget(&self, path: &Path) {
        if let Ok(mut set) = self.in_flight.lock() {
            set.remove(path);
        }
    }

    fn reject(&mut self, meta: Arc<FileMeta>, reason: String) -> Result<(), Closed> {
        tracing::warn!(file = %meta.name, reason = %reason, "File quarantined.");
        // The writer records it in the ledger, then moves it (see `Writer::finish`).
        self.writer
            .send(WriterMsg::Quarantined { meta, reason })
            .map_err(|_| Closed)
    }
}

/// When the file was written and which file it is ([`FileOrigin`]).
fn file_origin(stat: &std::fs::Metadata) -> FileOrigin {
    use std::os::unix::fs::MetadataExt;
    let arrived_ms = stat
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    // Device and inode in one number: the device's low 16 bits above the inode's low 48.
    let inode = ((stat.dev() & 0xffff) << 48 | (stat.ino() & 0xffff_ffff_ffff)) as i64;
    FileOrigin {
        arrived_ms,
        inode: Some(inode),
    }
}

fn kind_str(kind: FileKind) -> &'static str {
    match kind {
        FileKind::JsonLines => "jsonl",
        FileKind::Labels => "labels",
        FileKind::Npy => "npy",
        FileKind::Npz => "npz",
    }
}

/// `text` with its control characters (newlines, carriage returns, escape sequences) written
/// as Rust-style escapes, so it stays on one line.
pub fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Whether an I/O error is the daemon running out of something (descriptors, memory) rather
/// than anything about the file.
fn exhausted(e: &std::io::Error) -> bool {
    // EMFILE, ENFILE, ENOMEM, EAGAIN (Linux numbers).
    matches!(e.raw_os_error(), Some(24 | 23 | 12 | 11))
}

/// A file's bytes and the versions of the file before and after they were read.
struct FileRead {
    bytes: Vec<u8>,
    opened: FileStamp,
    after: FileStamp,
}

impl FileRead {
    /// Whether the file was written to while it was read.
    fn changed(&self) -> bool {
        self.opened != self.after || self.bytes.len() as u64 != self.after.size()
    }
}

/// Reads at most `limit` bytes through one descriptor, stamped before and after; a file that
/// grew past the limit since it was measured is an error.
fn read_limited(path: &Path, limit: u64) -> std::io::Result<FileRead> {
    let file = File::open(path)?;
    let opened = FileStamp::of(&file.metadata()?);
    let mut bytes = Vec::new();
    (&file).take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(std::io::Error::other(format!(
            "file grew past the limit of {limit} bytes while being read"
        )));
    }
    let after = FileStamp::of(&file.metadata()?);
    Ok(FileRead {
        bytes,
        opened,
        after,
    })
}
