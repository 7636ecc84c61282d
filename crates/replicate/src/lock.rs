//! One run of a job at a time: [`JobLock`], an advisory lock on
//! `state_dir/<job>.lock`.
//!
//! The lock is `flock(2)` through [`std::fs::File::try_lock`], so the
//! kernel drops it when the process dies: a crashed run never leaves a
//! stale lock behind. The file itself is left in place (removing it would
//! let a second run lock a new file while a first still holds the old).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a job lock was not taken.
#[derive(Debug, Error)]
pub enum LockError {
    /// Another run of the job holds it.
    #[error("job {job} is already running (lock file {}); overlapping cron runs skip", path.display())]
    Held {
        /// The job.
        job: String,
        /// The lock file.
        path: PathBuf,
    },
    /// The lock file could not be created or locked.
    #[error("cannot lock {}: {source}; check that state_dir exists and is writable", path.display())]
    Io {
        /// The lock file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// A held job lock; dropping it releases the lock.
#[derive(Debug)]
pub struct JobLock {
    // Held for its lock; closing the file releases it.
    _file: File,
    path: PathBuf,
}

impl JobLock {
    /// Takes the lock of `job` without waiting. The file holds the pid of
    /// the holder, for the operator.
    pub fn acquire(state_dir: &Path, job: &str) -> Result<JobLock, LockError> {
        let path = state_dir.join(format!("{job}.lock"));
        let io = |source| LockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(LockError::Held {
                    job: job.into(),
                    path,
                })
            }
            Err(TryLockError::Error(e)) => return Err(io(e)),
        }
        // Only after locking: the pid of a run that skips must not
        // overwrite the holder's.
        file.set_len(0)
            .and_then(|()| writeln!(file, "{}", std::process::id()))
            .map_err(io)?;
        Ok(JobLock { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_acquisition_fails_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = JobLock::acquire(dir.path(), "home").unwrap();
        let err = JobLock::acquire(dir.path(), "home").unwrap_err();
        assert!(matches!(err, LockError::Held { .. }));
        let msg = err.to_string();
        assert!(msg.contains("job home is already running"), "{msg}");
        assert!(msg.contains("home.lock"), "{msg}");
        // Another job is independent.
        let other = JobLock::acquire(dir.path(), "mail").unwrap();
        drop(first);
        let again = JobLock::acquire(dir.path(), "home").unwrap();
        assert_eq!(again.path(), dir.path().join("home.lock"));
        let pid = std::fs::read_to_string(again.path()).unwrap();
        assert_eq!(pid.trim(), std::process::id().to_string());
        drop(other);
    }

    #[test]
    fn missing_state_dir_is_an_io_error_with_advice() {
        let err = JobLock::acquire(Path::new("/nonexistent/fjord-state"), "home").unwrap_err();
        assert!(matches!(err, LockError::Io { .. }));
        assert!(err.to_string().contains("state_dir exists"), "{err}");
    }
}
