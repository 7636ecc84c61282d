//! What runs around a job's snapshot: the operator's pre/post commands and
//! the built-in database hooks ([`Hooks`]; the real runner is
//! [`crate::edge::CommandHooks`], the tests use [`crate::fake::FakeHooks`]).
//!
//! The order, in [`crate::job`]: `pre_snapshot` (a failure means no
//! snapshot and a failed job), the snapshot with the user properties the
//! pre step returned (`fjord:wal_lsn`, ...), then `post_snapshot`, which
//! runs whenever `pre_snapshot` ran, whatever happened after.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use thiserror::Error;

/// A hook's future (boxed, so that [`Hooks`] can be a trait object).
pub type HookFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, HookError>> + Send + 'a>>;

/// User properties to set on the snapshot: (name, value).
pub type SnapshotProps = Vec<(String, String)>;

/// Why a hook failed. Each names the command.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum HookError {
    /// The command could not be started.
    #[error("{what}: cannot run it: {why}")]
    Spawn {
        /// The command line.
        what: String,
        /// The OS's reason.
        why: String,
    },
    /// The command exited non-zero (or was killed by a signal).
    #[error("{what} exited {}: {}", status.map_or("on a signal".to_string(), |s| s.to_string()), stderr.trim())]
    Failed {
        /// The command line.
        what: String,
        /// Its exit status, if it exited.
        status: Option<i32>,
        /// Its standard error.
        stderr: String,
    },
    /// The command ran past its time limit and was killed.
    #[error("{what} did not finish within {}s and was killed (hooks.timeout)", after.as_secs_f64())]
    Timeout {
        /// The command line.
        what: String,
        /// The limit.
        after: Duration,
    },
    /// The command's output is not what the hook expects.
    #[error("{what}: {detail}")]
    Output {
        /// The command line.
        what: String,
        /// What is wrong.
        detail: String,
    },
}

/// What runs around a job's snapshot.
pub trait Hooks: Send + Sync {
    /// Before the snapshot: returns the user properties to record on it.
    fn pre_snapshot<'a>(&'a self, job: &'a str) -> HookFuture<'a, SnapshotProps>;
    /// After the snapshot (`snapshot`: its short name if it was taken),
    /// whenever `pre_snapshot` ran.
    fn post_snapshot<'a>(&'a self, job: &'a str, snapshot: Option<&'a str>) -> HookFuture<'a, ()>;
    /// Before a switchover's final snapshot: stop the application's
    /// writes. None configured: nothing runs.
    fn stop_writes<'a>(&'a self, _job: &'a str) -> HookFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// No hooks: nothing runs, nothing is recorded.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {
    fn pre_snapshot<'a>(&'a self, _job: &'a str) -> HookFuture<'a, SnapshotProps> {
        Box::pin(async { Ok(Vec::new()) })
    }
    fn post_snapshot<'a>(&'a self, _job: &'a str, _snap: Option<&'a str>) -> HookFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// Hooks in memory, for tests: each call is logged, and either step can be
/// made to fail.
#[derive(Debug, Default)]
pub struct FakeHooks {
    props: std::sync::Mutex<SnapshotProps>,
    pre_fails: std::sync::Mutex<Option<HookError>>,
    post_fails: std::sync::Mutex<Option<HookError>>,
    calls: std::sync::Mutex<Vec<String>>,
}

fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl FakeHooks {
    /// The pre step returns `props` (to record on the snapshot).
    pub fn records(&self, props: &[(&str, &str)]) {
        *locked(&self.props) = props
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }
    /// The pre step fails with `e`.
    pub fn fail_pre(&self, e: HookError) {
        *locked(&self.pre_fails) = Some(e);
    }
    /// The post step fails with `e`.
    pub fn fail_post(&self, e: HookError) {
        *locked(&self.post_fails) = Some(e);
    }
    /// The calls so far: `pre JOB`, `post JOB @SNAP` or `post JOB (no snapshot)`.
    pub fn calls(&self) -> Vec<String> {
        locked(&self.calls).clone()
    }
}

impl Hooks for FakeHooks {
    fn pre_snapshot<'a>(&'a self, job: &'a str) -> HookFuture<'a, SnapshotProps> {
        Box::pin(async move {
            locked(&self.calls).push(format!("pre {job}"));
            match locked(&self.pre_fails).clone() {
                Some(e) => Err(e),
                None => Ok(locked(&self.props).clone()),
            }
        })
    }
    fn post_snapshot<'a>(&'a self, job: &'a str, snapshot: Option<&'a str>) -> HookFuture<'a, ()> {
        Box::pin(async move {
            locked(&self.calls).push(match snapshot {
                Some(s) => format!("post {job} @{s}"),
                None => format!("post {job} (no snapshot)"),
            });
            match locked(&self.post_fails).clone() {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })
    }
}

/// The user property the PostgreSQL hook records: the WAL position
/// (`pg_current_wal_lsn()`) right after its `CHECKPOINT`.
pub const WAL_LSN_PROP: &str = "fjord:wal_lsn";

/// The user property the MySQL/MariaDB hook records: the binary log
/// position (`binlog.000003:1234`) while the tables were locked.
pub const BINLOG_POS_PROP: &str = "fjord:binlog_pos";

/// The binary log position in `SHOW MASTER STATUS`'s batch output (`FILE
/// TAB POSITION ...`), as `FILE:POSITION`; `None` when binary logging is
/// off (no row).
pub fn parse_binlog_status(lines: &[String]) -> Option<String> {
    lines.iter().find_map(|l| {
        let mut f = l.split('\t');
        let file = f.next()?.trim();
        let pos = f.next()?.trim();
        (!file.is_empty() && !pos.is_empty() && pos.chars().all(|c| c.is_ascii_digit()))
            .then(|| format!("{file}:{pos}"))
    })
}

/// The WAL position in `psql -X -q -A -t`'s output (its last non-empty
/// line), checked to look like one (`16/B374D848`).
pub fn parse_wal_lsn(stdout: &str) -> Option<String> {
    let line = stdout.lines().map(str::trim).rfind(|l| !l.is_empty())?;
    let (hi, lo) = line.split_once('/')?;
    let hex = |s: &str| !s.is_empty() && s.len() <= 8 && s.chars().all(|c| c.is_ascii_hexdigit());
    (hex(hi) && hex(lo)).then(|| line.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wal_positions_are_read_from_psqls_last_line_and_checked() {
        assert_eq!(parse_wal_lsn("0/16B3F40\n").as_deref(), Some("0/16B3F40"));
        assert_eq!(
            parse_wal_lsn("\n16/B374D848\n\n").as_deref(),
            Some("16/B374D848")
        );
        for bad in [
            "",
            "CHECKPOINT\n",
            "0/xyz\n",
            "/1\n",
            "0/123456789\n",
            "ERROR: x\n",
        ] {
            assert_eq!(parse_wal_lsn(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn binlog_positions_are_read_from_show_master_status() {
        let l = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert_eq!(
            parse_binlog_status(&l(&["binlog.000003\t1234\t\t"])).as_deref(),
            Some("binlog.000003:1234")
        );
        assert_eq!(parse_binlog_status(&l(&[])), None);
        assert_eq!(parse_binlog_status(&l(&["File\tPosition"])), None);
    }

    #[test]
    fn hook_errors_name_the_command_and_what_to_change() {
        let e = HookError::Timeout {
            what: "/bin/freeze".into(),
            after: Duration::from_secs(5),
        };
        assert_eq!(
            e.to_string(),
            "/bin/freeze did not finish within 5s and was killed (hooks.timeout)"
        );
        let e = HookError::Failed {
            what: "psql".into(),
            status: Some(2),
            stderr: "could not connect\n".into(),
        };
        assert_eq!(e.to_string(), "psql exited 2: could not connect");
    }
}
