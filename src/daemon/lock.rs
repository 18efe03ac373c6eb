//! One pipeline per state directory: `run` and `replay` hold an exclusive lock on
//! `<state_dir>/sensei.lock` (and on `<database>.lock` when the database lives elsewhere) for
//! as long as they run. Two pipelines on one inbox and one database would both take files and
//! count them twice in the ledger; the second one to start exits instead, naming the process
//! that holds the lock.
//!
//! The lock is the operating system's (`flock`): it goes with the process, so a daemon killed
//! with SIGKILL leaves no stale lock behind. The file keeps the holder's pid for the message.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The name of the lock file in the state directory.
pub const LOCK_FILE: &str = "sensei.lock";

/// Why the lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another sensei (pid {pid}) is running on {what} {}: it holds the lock {}; stop it first, or give this one its own state_dir",
        dir.display(),
        lock.display()
    )]
    Held {
        what: &'static str,
        dir: PathBuf,
        lock: PathBuf,
        /// The holder's pid as it wrote it, or `unknown`.
        pid: String,
    },
    #[error("locking {}: {source}", lock.display())]
    Io {
        lock: PathBuf,
        source: std::io::Error,
    },
}

/// Creates the state directory and takes the lock of `config`'s state directory and database.
pub fn acquire(config: &crate::config::Config) -> anyhow::Result<StateLock> {
    use anyhow::Context;
    std::fs::create_dir_all(&config.state_dir)
        .with_context(|| format!("creating {}", config.state_dir.display()))?;
    Ok(StateLock::acquire(&config.state_dir, &config.store.path)?)
}

/// The held locks; dropping it releases them.
#[derive(Debug)]
pub struct StateLock {
    _files: Vec<File>,
}

impl StateLock {
    /// Locks the state directory and, when the database is outside it, the database.
    pub fn acquire(state_dir: &Path, database: &Path) -> Result<StateLock, LockError> {
        let mut files = vec![lock_one(
            "the state directory",
            state_dir,
            &state_dir.join(LOCK_FILE),
        )?];
        let db_dir = database.parent().unwrap_or(Path::new("."));
        if !same_dir(db_dir, state_dir) {
            std::fs::create_dir_all(db_dir).map_err(|source| LockError::Io {
                lock: db_dir.to_path_buf(),
                source,
            })?;
            let mut name = database.as_os_str().to_owned();
            name.push(".lock");
            files.push(lock_one("the database", database, Path::new(&name))?);
        }
        Ok(StateLock { _files: files })
    }
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn lock_one(what: &'static str, dir: &Path, lock: &Path) -> Result<File, LockError> {
    let io = |source| LockError::Io {
        lock: lock.to_path_buf(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(lock)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = pid.trim();
            return Err(LockError::Held {
                what,
                dir: dir.to_path_buf(),
                lock: lock.to_path_buf(),
                pid: if pid.is_empty() {
                    "unknown".into()
                } else {
                    pid.to_string()
                },
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    writeln!(file, "{}", std::process::id()).map_err(io)?;
    file.flush().map_err(io)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_state_directory_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("sensei.db");
        let first = StateLock::acquire(dir.path(), &db).unwrap();
        let e = StateLock::acquire(dir.path(), &db).unwrap_err().to_string();
        assert!(
            e.contains(&format!("pid {}", std::process::id())) && e.contains("sensei.lock"),
            "{e}"
        );
        drop(first);
        StateLock::acquire(dir.path(), &db).expect("free once the holder is gone");
    }

    #[test]
    fn a_database_outside_the_state_directory_is_locked_too() {
        let state = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let db = other.path().join("sensei.db");
        let _first = StateLock::acquire(state.path(), &db).unwrap();
        let state2 = tempfile::tempdir().unwrap();
        let e = StateLock::acquire(state2.path(), &db)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("the database") && e.contains("sensei.db.lock"),
            "{e}"
        );
    }
}
