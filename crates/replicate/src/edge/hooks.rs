//! The real [`Hooks`]: the operator's commands (`[job.hooks]`) and the
//! built-in PostgreSQL and MySQL/MariaDB hooks, run as child processes
//! with a time limit; one still running at the limit is killed with its
//! process group.

use super::mysql::MysqlLock;
use crate::hooks::{
    parse_wal_lsn, HookError, HookFuture, Hooks, SnapshotProps, BINLOG_POS_PROP, WAL_LSN_PROP,
};
use fjord_config::hooks::{Database, HooksConfig};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

/// The commands of one job's `[job.hooks]`.
#[derive(Debug)]
pub struct CommandHooks {
    pre: Option<Vec<String>>,
    post: Option<Vec<String>>,
    stop_writes: Option<Vec<String>>,
    timeout: Duration,
    postgres: Option<Postgres>,
    mysql: Option<MysqlLock>,
}

#[derive(Clone, Debug)]
struct Postgres {
    psql: PathBuf,
    connection: Option<String>,
}

impl CommandHooks {
    /// The hooks `config` describes.
    pub fn new(config: &HooksConfig) -> CommandHooks {
        CommandHooks {
            pre: config.pre_snapshot.clone(),
            post: config.post_snapshot.clone(),
            stop_writes: config.stop_writes.clone(),
            timeout: config.timeout(),
            postgres: (config.database == Some(Database::Postgresql)).then(|| Postgres {
                psql: config.psql.clone().unwrap_or_else(|| "psql".into()),
                connection: config.connection.clone(),
            }),
            mysql: (config.database == Some(Database::Mysql)).then(|| {
                MysqlLock::new(
                    config.mysql.clone().unwrap_or_else(|| "mysql".into()),
                    config.connection.clone(),
                    config.timeout(),
                )
            }),
        }
    }

    /// `psql`'s argv: a checkpoint, then the WAL position, in one session.
    fn psql_argv(pg: &Postgres) -> Vec<String> {
        let mut argv: Vec<String> = [
            pg.psql.to_string_lossy().as_ref(),
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        if let Some(c) = &pg.connection {
            argv.extend(["-d".to_string(), c.clone()]);
        }
        argv.extend([
            "-c".to_string(),
            "CHECKPOINT".to_string(),
            "-c".to_string(),
            "SELECT pg_current_wal_lsn()".to_string(),
        ]);
        argv
    }
}

impl Hooks for CommandHooks {
    fn stop_writes<'a>(&'a self, job: &'a str) -> HookFuture<'a, ()> {
        Box::pin(async move {
            if let Some(argv) = &self.stop_writes {
                run_command(argv, self.timeout, &[("FJORD_JOB", job)]).await?;
                tracing::info!(job, "switchover: the application's writes are stopped");
            }
            Ok(())
        })
    }

    fn pre_snapshot<'a>(&'a self, job: &'a str) -> HookFuture<'a, SnapshotProps> {
        Box::pin(async move {
            if let Some(argv) = &self.pre {
                run_command(argv, self.timeout, &[("FJORD_JOB", job)]).await?;
            }
            let mut props = Vec::new();
            if let Some(pg) = &self.postgres {
                let argv = Self::psql_argv(pg);
                let out = run_command(&argv, self.timeout, &[("FJORD_JOB", job)]).await?;
                let lsn = parse_wal_lsn(&out).ok_or_else(|| HookError::Output {
                    what: shown(&argv),
                    detail: format!(
                        "no WAL position in its output {:?} (is this a primary server?)",
                        out.trim()
                    ),
                })?;
                tracing::info!(job, lsn = %lsn, "PostgreSQL checkpoint; WAL position recorded");
                props.push((WAL_LSN_PROP.to_string(), lsn));
            }
            if let Some(m) = &self.mysql {
                if let Some(pos) = m.lock().await? {
                    tracing::info!(job, binlog = %pos, "MySQL tables locked; binary log position recorded");
                    props.push((BINLOG_POS_PROP.to_string(), pos));
                }
            }
            Ok(props)
        })
    }

    fn post_snapshot<'a>(&'a self, job: &'a str, snapshot: Option<&'a str>) -> HookFuture<'a, ()> {
        Box::pin(async move {
            // The database lock first (the reverse of pre_snapshot), and the
            // operator's command even if the unlock failed.
            let unlocked = match &self.mysql {
                Some(m) => m.unlock().await,
                None => Ok(()),
            };
            if let Some(argv) = &self.post {
                let env = [
                    ("FJORD_JOB", job),
                    ("FJORD_SNAPSHOT", snapshot.unwrap_or("")),
                ];
                run_command(argv, self.timeout, &env).await?;
            }
            unlocked
        })
    }
}

fn shown(argv: &[String]) -> String {
    argv.join(" ")
}

/// Runs `argv` (no shell) with `env` added, stdin closed; returns its
/// standard output. Past `timeout` its whole process group is killed.
pub async fn run_command(
    argv: &[String],
    timeout: Duration,
    env: &[(&str, &str)],
) -> Result<String, HookError> {
    let what = shown(argv);
    let Some((program, args)) = argv.split_first() else {
        return Err(HookError::Spawn {
            what,
            why: "empty command".into(),
        });
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let child = cmd.spawn().map_err(|e| HookError::Spawn {
        what: what.clone(),
        why: e.to_string(),
    })?;
    let pid = child.id();
    tracing::debug!(command = %what, ?pid, "hook started");
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        }
        Ok(Ok(out)) => Err(HookError::Failed {
            what,
            status: out.status.code(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }),
        Ok(Err(e)) => Err(HookError::Spawn {
            what,
            why: format!("waiting for it: {e}"),
        }),
        Err(_) => {
            // The leader is killed when its future is dropped; its children
            // (a shell's) go with the group.
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) on the process group this call created
                // (process_group(0) made the child its leader).
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            tracing::warn!(command = %what, "hook timed out; killed");
            Err(HookError::Timeout {
                what,
                after: timeout,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn a_hook_passes_its_output_and_fails_with_its_status_and_words() {
        let out = run_command(
            &sh("echo \"$FJORD_JOB\""),
            Duration::from_secs(10),
            &[("FJORD_JOB", "db")],
        )
        .await
        .expect("runs");
        assert_eq!(out, "db\n");
        let e = run_command(&sh("echo nope >&2; exit 3"), Duration::from_secs(10), &[])
            .await
            .unwrap_err();
        assert_eq!(
            e,
            HookError::Failed {
                what: "/bin/sh -c echo nope >&2; exit 3".into(),
                status: Some(3),
                stderr: "nope\n".into()
            }
        );
        let e = run_command(&["/nonexistent/hook".into()], Duration::from_secs(1), &[])
            .await
            .unwrap_err();
        assert!(matches!(e, HookError::Spawn { .. }), "{e}");
    }

    #[tokio::test]
    async fn a_hook_past_its_timeout_is_killed_with_its_children() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pidfile = dir.path().join("pid");
        // A shell that starts a child and waits for it.
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let started = std::time::Instant::now();
        let e = run_command(&sh(&script), Duration::from_millis(300), &[])
            .await
            .unwrap_err();
        assert!(matches!(e, HookError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .expect("pid file")
            .trim()
            .parse()
            .expect("a pid");
        // The grandchild (sleep) is gone too (or a zombie about to be reaped).
        let mut gone = false;
        for _ in 0..50 {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.is_empty() || stat.contains(") Z ") {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(gone, "sleep {pid} still runs");
    }

    #[test]
    fn the_postgresql_hook_checkpoints_then_reads_the_wal_position_in_one_session() {
        let argv = CommandHooks::psql_argv(&Postgres {
            psql: "/usr/bin/psql".into(),
            connection: Some("host=/run/postgresql user=postgres".into()),
        });
        assert_eq!(
            argv.join(" "),
            "/usr/bin/psql -X -q -A -t -v ON_ERROR_STOP=1 -d host=/run/postgresql user=postgres -c CHECKPOINT -c SELECT pg_current_wal_lsn()"
        );
    }
}
