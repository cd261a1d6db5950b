//! One gateway per SQLite file: `serve` holds an exclusive lock on `<file>.lock` (with
//! its pid inside) for as long as it runs, taken before anything touches the database.
//! A second gateway on the same file stops at once, naming the file and the process.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::PathBuf;
use std::str::FromStr;

use sqlx::sqlite::SqliteConnectOptions;

/// Held for the life of the gateway; the lock goes with the file handle.
#[derive(Debug)]
pub struct DatabaseLock {
    _file: File,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("the database {file} is in use by another infergate gateway{}; stop it first, or give this one its own database.url", .pid.map(|p| format!(" (pid {p})")).unwrap_or_default())]
    InUse { file: String, pid: Option<u32> },
    #[error("cannot lock the database {file}: {source}")]
    Io {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

/// Locks the SQLite file `url` names; `None` for PostgreSQL and in-memory SQLite, which
/// a file lock cannot guard.
pub fn lock(url: &str) -> Result<Option<DatabaseLock>, LockError> {
    let Some(path) = sqlite_file(url) else {
        return Ok(None);
    };
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let file_name = path.display().to_string();
    let io = |source| LockError::Io {
        file: file_name.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(std::fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            return Err(LockError::InUse {
                file: file_name,
                pid: holder.trim().parse().ok(),
            });
        }
        Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
    }
    file.set_len(0).map_err(io)?;
    file.rewind().map_err(io)?;
    write!(file, "{}", std::process::id()).map_err(io)?;
    Ok(Some(DatabaseLock { _file: file }))
}

/// The file of a SQLite URL, if it names one.
fn sqlite_file(url: &str) -> Option<PathBuf> {
    if !url.starts_with("sqlite:") || url.contains(":memory:") || url.contains("mode=memory") {
        return None;
    }
    let options = SqliteConnectOptions::from_str(url).ok()?;
    let file = options.get_filename();
    (!file.as_os_str().is_empty()).then(|| file.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_one_file_is_refused_with_the_holders_pid() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("g.db").display());
        let first = lock(&url).unwrap();
        assert!(first.is_some());
        match lock(&url) {
            Err(LockError::InUse { file, pid }) => {
                assert!(file.ends_with("g.db"), "{file}");
                assert_eq!(pid, Some(std::process::id()));
            }
            other => panic!("expected InUse, got {other:?}"),
        }
        drop(first);
        assert!(lock(&url).unwrap().is_some(), "free again once released");
        assert!(lock("postgres://localhost/x").unwrap().is_none());
        assert!(lock("sqlite::memory:").unwrap().is_none());
    }
}
