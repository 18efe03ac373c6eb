//! Where a finished file goes: `done/` (or deleted, or left in place by a replay) once the
//! database has the truth, or `quarantine/` with a `<name>.error.txt` that says why.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::{Disposition, FileMeta};

/// Moves (or deletes) a finished file per its disposition. Failure is logged, not fatal: the
/// ledger already has the truth and a later scan will only move it.
pub fn dispose(meta: &FileMeta) {
    let result = match &meta.on_done {
        Disposition::Keep => Ok(()),
        Disposition::Delete => std::fs::remove_file(&meta.path),
        Disposition::MoveTo(dir) => move_into(&meta.path, dir).map(|_| ()),
    };
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::error!(file = %meta.name, error = %e, "Could not move the finished file out of the inbox.")
        }
    }
}

/// Moves a bad file to quarantine with `<name>.error.txt` beside it.
pub fn quarantine(meta: &FileMeta, reason: &str) {
    let Some(dir) = &meta.quarantine_dir else {
        return;
    };
    let target = match move_into(&meta.path, dir) {
        Ok(t) => t,
        Err(e) => {
            tracing::error!(file = %meta.name, error = %e, "Could not move the file to quarantine.");
            return;
        }
    };
    let mut note = target.clone().into_os_string();
    note.push(".error.txt");
    let when = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let text = format!(
        "file: {}\nsha256: {}\nsize: {} bytes\nquarantined: {when}\nreason: {reason}\n",
        meta.name,
        if meta.sha256.is_empty() {
            "(not read)"
        } else {
            &meta.sha256
        },
        meta.size
    );
    // Written beside and renamed into place, so whoever watches quarantine/ never reads half a
    // note.
    let mut partial = note.clone();
    partial.push(".tmp");
    let written = std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, &note));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        tracing::error!(file = %meta.name, error = %e, "Could not write the quarantine note.");
    }
}

/// Renames `path` into `dir`, adding `.1`, `.2`, … when the name is taken. Returns the new path.
fn move_into(path: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let mut target = dir.join(name);
    let mut n = 0;
    while target.exists() {
        n += 1;
        let mut alt = name.to_os_string();
        alt.push(format!(".{n}"));
        target = dir.join(alt);
    }
    std::fs::rename(path, &target)?;
    Ok(target)
}
