//! The outcome of each job's last run, kept as JSON in
//! `state_dir/<job>.status.json` for `fjord-send status` and the metrics.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Why a status file could not be read or written.
#[derive(Debug, Error)]
pub enum StatusError {
    /// Reading, writing or renaming failed.
    #[error("{}: {source}; check that state_dir exists and is writable", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A status file is not valid JSON of the expected shape.
    #[error("{} is not a fjord status file ({source}); delete it, the next run rewrites it", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// The parser's error.
        #[source]
        source: serde_json::Error,
    },
}

pub use crate::metrics::{render_prometheus, write_textfile};

/// The values of [`JobStatus::last_result`]. A string rather than an
/// enum so that a status file written by a newer fjord still loads.
pub mod result {
    /// Every dataset was replicated.
    pub const OK: &str = "ok";
    /// A target diverged: an operator must look (see the error).
    pub const DIVERGED: &str = "diverged";
    /// Something else failed (see the error).
    pub const FAILED: &str = "failed";
    /// Every known result, in the order the metrics list them.
    pub const ALL: [&str; 3] = [OK, DIVERGED, FAILED];
}

/// The last run of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobStatus {
    /// The job's name.
    pub job: String,
    /// When the last run started, Unix seconds.
    pub last_attempt: i64,
    /// When the last successful run started, Unix seconds.
    pub last_success: Option<i64>,
    /// How the last run ended: one of [`result`] (`"ok"`, `"failed"`, ...).
    pub last_result: String,
    /// Its error, if it failed.
    pub last_error: Option<String>,
    /// Bytes the last run sent over the link (with packing, after dedup
    /// and compression).
    pub bytes: u64,
    /// Of those, bytes sent again after a link failure.
    pub bytes_resent: u64,
    /// How long the last run took.
    pub duration_secs: f64,
    /// Creation time of the newest snapshot known to be on the target.
    pub newest_replicated_snapshot_time: Option<i64>,
    /// The last run's warnings that need a look without failing it (a
    /// child destroyed on the primary whose copy the DR node kept).
    /// Absent in status files of older versions.
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Each target's last run, in config order (one, unnamed, for the
    /// one-target shorthand; none for a snapshot-only job). Absent in
    /// status files of older versions.
    #[serde(default)]
    pub targets: Vec<TargetStatus>,
    /// The job has no target: no DR copy, so no replication lag.
    #[serde(default)]
    pub snapshot_only: bool,
}

/// The last run of one target of a job.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TargetStatus {
    /// The target's name; empty for the one-target shorthand.
    pub name: String,
    /// How its last run ended: one of [`result`].
    pub last_result: String,
    /// Its error, if it failed.
    pub last_error: Option<String>,
    /// When its last successful run started, Unix seconds.
    pub last_success: Option<i64>,
    /// Creation time of the newest snapshot known to be on it (the oldest
    /// over the job's datasets).
    pub newest_replicated_snapshot_time: Option<i64>,
}

const SUFFIX: &str = ".status.json";

/// The status file of `job`.
pub fn status_path(state_dir: &Path, job: &str) -> PathBuf {
    state_dir.join(format!("{job}{SUFFIX}"))
}

pub use fjord_config::textfile::write_atomic;

impl JobStatus {
    /// Saves this status as `state_dir/<job>.status.json`, atomically.
    pub fn save(&self, state_dir: &Path) -> Result<(), StatusError> {
        let path = status_path(state_dir, &self.job);
        let mut json = serde_json::to_vec_pretty(self).map_err(|source| StatusError::Corrupt {
            path: path.clone(),
            source,
        })?;
        json.push(b'\n');
        write_atomic(&path, &json).map_err(|source| StatusError::Io { path, source })
    }

    /// Loads the status of `job`, `None` if it never ran.
    pub fn load(state_dir: &Path, job: &str) -> Result<Option<JobStatus>, StatusError> {
        let path = status_path(state_dir, job);
        match std::fs::read(&path) {
            Ok(bytes) => parse(&path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(StatusError::Io { path, source }),
        }
    }
}

/// Saves `status` as `state_dir/<job>.status.json`, atomically
/// (same as [`JobStatus::save`]).
pub fn save(state_dir: &Path, status: &JobStatus) -> Result<(), StatusError> {
    status.save(state_dir)
}

/// Loads the status of `job`, `None` if it never ran (same as
/// [`JobStatus::load`]).
pub fn load(state_dir: &Path, job: &str) -> Result<Option<JobStatus>, StatusError> {
    JobStatus::load(state_dir, job)
}

fn parse(path: &Path, bytes: &[u8]) -> Result<JobStatus, StatusError> {
    serde_json::from_slice(bytes).map_err(|source| StatusError::Corrupt {
        path: path.into(),
        source,
    })
}

/// Loads every `*.status.json` in `state_dir`, sorted by job name.
pub fn load_all(state_dir: &Path) -> Result<Vec<JobStatus>, StatusError> {
    let io = |source| StatusError::Io {
        path: state_dir.into(),
        source,
    };
    let mut all = Vec::new();
    for entry in std::fs::read_dir(state_dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let is_status = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.ends_with(SUFFIX) && !n.starts_with('.'));
        if !is_status {
            continue;
        }
        let bytes = std::fs::read(&path).map_err(|source| StatusError::Io {
            path: path.clone(),
            source,
        })?;
        all.push(parse(&path, &bytes)?);
    }
    all.sort_by(|a, b| a.job.cmp(&b.job));
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn sample(job: &str) -> JobStatus {
        JobStatus {
            job: job.into(),
            last_attempt: 1_769_860_800,
            last_success: Some(1_769_860_800),
            last_result: result::OK.into(),
            last_error: None,
            bytes: 123_456,
            bytes_resent: 0,
            duration_secs: 12.5,
            newest_replicated_snapshot_time: Some(1_769_860_790),
            warnings: Vec::new(),
            targets: Vec::new(),
            snapshot_only: false,
        }
    }

    #[test]
    fn save_then_load_round_trips_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut status = sample("home");
        status.save(dir.path()).unwrap();
        assert_eq!(
            JobStatus::load(dir.path(), "home").unwrap(),
            Some(status.clone())
        );
        status.last_result = result::FAILED.into();
        status.last_error = Some("boom".into());
        status.save(dir.path()).unwrap();
        assert_eq!(JobStatus::load(dir.path(), "home").unwrap(), Some(status));
        let names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["home.status.json"]);
        let json = std::fs::read_to_string(dir.path().join("home.status.json")).unwrap();
        assert!(json.contains("\"last_result\": \"failed\""), "{json}");
    }

    #[test]
    fn load_of_a_job_that_never_ran_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(JobStatus::load(dir.path(), "home").unwrap(), None);
    }

    #[test]
    fn load_all_reads_only_status_files_sorted() {
        let dir = tempfile::tempdir().unwrap();
        sample("mail").save(dir.path()).unwrap();
        save(dir.path(), &sample("home")).unwrap();
        assert_eq!(load(dir.path(), "home").unwrap(), Some(sample("home")));
        std::fs::write(dir.path().join("home.lock"), "1\n").unwrap();
        let jobs: Vec<String> = load_all(dir.path())
            .unwrap()
            .into_iter()
            .map(|s| s.job)
            .collect();
        assert_eq!(jobs, vec!["home", "mail"]);
    }

    #[test]
    fn corrupt_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("home.status.json"), "{").unwrap();
        let err = load_all(dir.path()).unwrap_err();
        assert!(matches!(err, StatusError::Corrupt { .. }));
        assert!(err.to_string().contains("home.status.json"), "{err}");
    }
}
