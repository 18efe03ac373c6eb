//! Where a finished file goes: `done/` (or deleted, or left in place by a replay) once the
//! database has the truth, or `quarantine/` with a `<name>.error.txt` that says why.
//!
//! A file is moved only while its inbox path still holds the version that was read
//! ([`FileStamp`]): a producer may rename another file over the name, or append to the file,
//! while the first version is in the pipeline. The other file is then left in the inbox and
//! taken on its own, never moved out unread.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::{Disposition, FileMeta};

/// One version of one file: which file (device and inode) and what it held (size and time of
/// last modification, to the nanosecond).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
}

impl FileStamp {
    pub fn of(m: &std::fs::Metadata) -> FileStamp {
        FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    fn same_file(&self, other: &FileStamp) -> bool {
        self.dev == other.dev && self.ino == other.ino
    }
}

/// What an inbox path holds now, against the version that was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathNow {
    /// The version that was read.
    Same,
    /// The same file, written to since it was read.
    Changed,
    /// Another file (renamed over the name), to be taken on its own.
    Replaced,
    /// Nothing (removed or moved away).
    Gone,
}

/// What `path` holds now against `stamp` (a path that cannot be read counts as gone).
pub fn path_now(path: &Path, stamp: &FileStamp) -> PathNow {
    match std::fs::symlink_metadata(path) {
        Err(_) => PathNow::Gone,
        Ok(m) => {
            let now = FileStamp::of(&m);
            if !now.same_file(stamp) {
                PathNow::Replaced
            } else if now != *stamp {
                PathNow::Changed
            } else {
                PathNow::Same
            }
        }
    }
}

/// Moves (or deletes) a finished file per its disposition. Failure is logged, not fatal: the
/// ledger already has the truth and a later scan will only move it. Returns true when the
/// inbox path holds another file than the one read, which is left there to be taken.
pub fn dispose(meta: &FileMeta) -> bool {
    if let Some(stamp) = &meta.stamp
        && path_now(&meta.path, stamp) == PathNow::Replaced
        && !matches!(meta.on_done, Disposition::Keep)
    {
        tracing::info!(file = %meta.name, "Another file took the name while this one was processed; it is left in the inbox and taken next.");
        return true;
    }
    let result = match &meta.on_done {
        Disposition::Keep => Ok(false),
        Disposition::Delete => std::fs::remove_file(&meta.path).map(|()| false),
        Disposition::MoveTo(dir) => move_checked(meta, dir).map(|(_, other)| other),
    };
    match result {
        Ok(other) => other,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => {
            tracing::error!(file = %meta.name, error = %e, "Could not move the finished file out of the inbox.");
            false
        }
    }
}

/// Moves a bad file to quarantine with `<name>.error.txt` beside it. Returns true when the
/// inbox path holds another file than the one read, which is left there to be taken.
pub fn quarantine(meta: &FileMeta, reason: &str) -> bool {
    let Some(dir) = &meta.quarantine_dir else {
        return false;
    };
    if let Some(stamp) = &meta.stamp
        && path_now(&meta.path, stamp) == PathNow::Replaced
    {
        tracing::info!(file = %meta.name, "Another file took the name while this one was checked; it is left in the inbox and taken next.");
        return true;
    }
    let target = match move_checked(meta, dir) {
        Ok((target, false)) => target,
        Ok((_, true)) => return true,
        Err(e) => {
            tracing::error!(file = %meta.name, error = %e, "Could not move the file to quarantine.");
            return false;
        }
    };
    let target_name = target.file_name().unwrap_or_default();
    let note = target.with_file_name(fit_name(target_name, ".error.txt"));
    let when = OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    // One line per field, whatever the reason quotes from the file.
    let reason: String = reason
        .chars()
        .flat_map(|c| {
            let escaped: Vec<char> = if c.is_control() {
                c.escape_default().collect()
            } else {
                vec![c]
            };
            escaped
        })
        .collect();
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
    let partial = target.with_file_name(fit_name(target_name, ".error.txt.tmp"));
    let written = std::fs::write(&partial, text).and_then(|()| std::fs::rename(&partial, &note));
    if let Err(e) = written {
        let _ = std::fs::remove_file(&partial);
        tracing::error!(file = %meta.name, error = %e, "Could not write the quarantine note.");
    }
    false
}

/// Moves the file into `dir`, then makes sure the file moved is the one that was read: another
/// file renamed over the name between the check and the move is put back under its name
/// (linked, so a third file that took the name meanwhile is not overwritten) and reported with
/// `true`.
fn move_checked(meta: &FileMeta, dir: &Path) -> std::io::Result<(PathBuf, bool)> {
    let target = move_into(&meta.path, dir)?;
    let Some(stamp) = &meta.stamp else {
        return Ok((target, false));
    };
    let moved = std::fs::symlink_metadata(&target)?;
    if FileStamp::of(&moved).same_file(stamp) {
        return Ok((target, false));
    }
    match std::fs::hard_link(&target, &meta.path) {
        Ok(()) => {
            std::fs::remove_file(&target)?;
            tracing::info!(file = %meta.name, "Another file took the name as this one was moved; it is put back in the inbox and taken next.");
        }
        Err(e) => {
            tracing::error!(file = %meta.name, moved_to = %target.display(), error = %e, "Another file took the name as this one was moved and could not be put back; it is in the done directory, not counted.");
        }
    }
    Ok((target, true))
}

/// The longest file name Linux file systems take, in bytes.
const NAME_MAX: usize = 255;

/// `name` followed by `suffix`, as a file name of at most [`NAME_MAX`] bytes: when the two are
/// longer, the name is cut (at a character) and followed by `~` and 8 hex digits of the sha256
/// of the whole name, so that two long names stay two names. A producer may use a name of 255
/// bytes, to which `.error.txt` or `.1` cannot be added.
pub fn fit_name(name: &std::ffi::OsStr, suffix: &str) -> std::ffi::OsString {
    use sha2::Digest as _;
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(NAME_MAX);
    if bytes.len() + suffix.len() <= NAME_MAX {
        out.extend_from_slice(bytes);
    } else {
        let tag: String = std::iter::once("~".to_string())
            .chain(
                sha2::Sha256::digest(bytes)[..4]
                    .iter()
                    .map(|b| format!("{b:02x}")),
            )
            .collect();
        let mut keep = NAME_MAX.saturating_sub(suffix.len() + tag.len());
        // Back to the start of a UTF-8 character.
        while keep > 0 && keep < bytes.len() && bytes[keep] & 0xC0 == 0x80 {
            keep -= 1;
        }
        out.extend_from_slice(&bytes[..keep]);
        out.extend_from_slice(tag.as_bytes());
    }
    out.extend_from_slice(suffix.as_bytes());
    std::ffi::OsString::from_vec(out)
}

/// Renames `path` into `dir`, adding `.1`, `.2`, … when the name is taken (cut to fit, see
/// [`fit_name`]). Returns the new path.
fn move_into(path: &Path, dir: &Path) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("path has no file name"))?;
    let mut target = dir.join(name);
    let mut n = 0;
    while target.exists() {
        n += 1;
        target = dir.join(fit_name(name, &format!(".{n}")));
    }
    std::fs::rename(path, &target)?;
    Ok(target)
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    use super::fit_name;

    #[test]
    fn names_with_a_suffix_never_pass_the_longest_file_name() {
        assert_eq!(
            fit_name(OsStr::new("a.jsonl"), ".error.txt"),
            "a.jsonl.error.txt"
        );
        let long = format!("{}.jsonl", "x".repeat(249));
        let other = format!("{}.jsonl", "x".repeat(248) + "y");
        for suffix in [".error.txt", ".error.txt.tmp", ".1", ".12"] {
            let fitted = fit_name(OsStr::new(&long), suffix);
            assert_eq!(fitted.len(), 255, "{suffix}");
            assert!(fitted.to_str().unwrap().ends_with(suffix));
            assert_ne!(fitted, fit_name(OsStr::new(&other), suffix));
        }
        // Never in the middle of a character.
        let wide = "é".repeat(127);
        let fitted = fit_name(OsStr::new(&wide), ".error.txt");
        assert!(fitted.len() <= 255);
        assert!(std::str::from_utf8(fitted.as_bytes()).is_ok());
    }
}
