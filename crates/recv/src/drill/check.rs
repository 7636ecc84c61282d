//! The checks a drill runs against its mounted clone: the operator's
//! command (argv, with `FJORD_DRILL_*` in its environment) and the
//! built-in PostgreSQL check (a server started on the clone's data
//! directory on its own port and socket directory, one query, stopped).
//! Each ends within its time limit: a command still running then is
//! killed with its process group; PostgreSQL is stopped whatever happened.

use anyhow::{anyhow, bail, Context};
use fjord_config::drill::{DrillCheck, DrillTarget};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Where the check runs and what it is told.
pub struct Env<'a> {
    /// The copy.
    pub dataset: &'a str,
    /// The snapshot cloned (short name).
    pub snapshot: &'a str,
    /// The clone.
    pub clone: &'a str,
    /// Where the clone is mounted.
    pub mountpoint: &'a Path,
    /// A private directory for the check (PostgreSQL's socket and log).
    pub scratch_dir: &'a Path,
}

/// What the check printed, and whether it passed (`Err` says why not).
pub struct CheckOutcome {
    /// stdout and stderr.
    pub output: String,
    /// Passed, or why not.
    pub result: anyhow::Result<()>,
}

/// The check in words.
pub fn describe(check: &DrillCheck, target: &DrillTarget) -> String {
    match check {
        DrillCheck::Command(argv) => argv.join(" "),
        DrillCheck::Postgresql => format!(
            "PostgreSQL on {} (port {}): {}",
            target.data_dir.display(),
            target.port,
            target.query
        ),
    }
}

/// Runs `check` against the clone.
pub async fn run(check: &DrillCheck, target: &DrillTarget, env: &Env<'_>) -> CheckOutcome {
    match check {
        DrillCheck::Command(argv) => {
            let vars = [
                ("FJORD_DRILL_DATASET", env.dataset.to_string()),
                ("FJORD_DRILL_SNAPSHOT", env.snapshot.to_string()),
                (
                    "FJORD_DRILL_MOUNTPOINT",
                    env.mountpoint.display().to_string(),
                ),
                ("FJORD_DRILL_CLONE", env.clone.to_string()),
            ];
            let (output, result) = command(argv, &vars, None, target.timeout).await;
            CheckOutcome {
                output,
                result: result.map(drop),
            }
        }
        DrillCheck::Postgresql => postgresql(target, env).await,
    }
}

/// Runs `argv` (as `run_as`, (uid, gid), when given), stdin closed, with
/// `vars` added; returns its stdout and stderr, and whether it exited 0
/// within `timeout` (past it, its process group is killed).
async fn command(
    argv: &[String],
    vars: &[(&str, String)],
    run_as: Option<(u32, u32)>,
    timeout: Duration,
) -> (String, anyhow::Result<String>) {
    let shown = argv.join(" ");
    let Some((program, args)) = argv.split_first() else {
        return (String::new(), Err(anyhow!("an empty command")));
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .envs(vars.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some((uid, gid)) = run_as {
        cmd.uid(uid).gid(gid).current_dir("/");
    }
    let child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (String::new(), Err(anyhow!("cannot run {shown}: {e}"))),
    };
    let pid = child.id();
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) => {
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            let text = format!("{stdout}{}", String::from_utf8_lossy(&out.stderr));
            if out.status.success() {
                (text, Ok(stdout))
            } else {
                let status = out.status.code().map_or_else(
                    || "was killed by a signal".to_string(),
                    |c| format!("exited {c}"),
                );
                (text, Err(anyhow!("{shown} {status}")))
            }
        }
        Ok(Err(e)) => (String::new(), Err(anyhow!("waiting for {shown}: {e}"))),
        Err(_) => {
            if let Some(pid) = pid.and_then(|p| i32::try_from(p).ok()) {
                // SAFETY: kill(2) on the process group this call created
                // (process_group(0) made the child its leader).
                unsafe {
                    libc::kill(-pid, libc::SIGKILL);
                }
            }
            (
                String::new(),
                Err(anyhow!(
                    "{shown} did not finish within {}s: killed",
                    timeout.as_secs()
                )),
            )
        }
    }
}

fn pg_program(target: &DrillTarget, name: &str) -> String {
    match &target.pg_bin {
        Some(dir) => dir.join(name).display().to_string(),
        None => name.to_string(),
    }
}

/// The user PostgreSQL runs as: the data directory's owner. As root, the
/// server is started as that user (it refuses to run as root); as anyone
/// else, only that user's own data directory works.
async fn server_user(data: &Path) -> anyhow::Result<Option<(u32, u32)>> {
    let meta = tokio::fs::metadata(data).await.with_context(|| {
        format!(
            "PostgreSQL's data directory {} on the clone",
            data.display()
        )
    })?;
    let (uid, gid) = (meta.uid(), meta.gid());
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    match (me, uid) {
        (_, 0) => bail!("{} belongs to root: PostgreSQL will not run as root", data.display()),
        (0, _) => Ok(Some((uid, gid))),
        (me, uid) if me == uid => Ok(None),
        (me, uid) => bail!(
            "{} belongs to uid {uid}, and the drill runs as uid {me}: run it as root (it starts PostgreSQL as uid {uid}) or as that user",
            data.display()
        ),
    }
}

/// The built-in PostgreSQL check.
async fn postgresql(target: &DrillTarget, env: &Env<'_>) -> CheckOutcome {
    let data = env.mountpoint.join(&target.data_dir);
    let started = Instant::now();
    let mut output = String::new();
    let result = match pg_prepare(&data, env.scratch_dir).await {
        Err(e) => Err(e),
        Ok(run_as) => {
            let r = pg_start_and_query(target, env, &data, run_as, &mut output).await;
            // Always stopped, whatever happened (immediate: the clone is
            // thrown away).
            let left = target
                .timeout
                .saturating_sub(started.elapsed())
                .max(Duration::from_secs(30));
            let stop = pg_ctl_argv(
                target,
                &data,
                &["-m", "immediate", "-w", "-t", "30", "stop"],
            );
            let (_, stopped) = command(&stop, &[], run_as, left).await;
            if stopped.is_err() {
                kill_postmaster(&data).await;
            }
            r
        }
    };
    if let Ok(log) = tokio::fs::read_to_string(env.scratch_dir.join("postgresql.log")).await {
        output = format!("{log}{output}");
    }
    CheckOutcome { output, result }
}

/// The socket directory, owned by the server's user; a stale
/// `postmaster.pid` (the primary's, taken with the snapshot) removed.
async fn pg_prepare(data: &Path, sock: &Path) -> anyhow::Result<Option<(u32, u32)>> {
    let run_as = server_user(data).await?;
    if let Some((uid, gid)) = run_as {
        let dir = sock.to_path_buf();
        tokio::task::spawn_blocking(move || std::os::unix::fs::chown(&dir, Some(uid), Some(gid)))
            .await
            .map_err(|e| anyhow!("chown {}: {e}", sock.display()))?
            .with_context(|| format!("chown {}", sock.display()))?;
    }
    match tokio::fs::remove_file(data.join("postmaster.pid")).await {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(anyhow!("removing the snapshot's postmaster.pid: {e}"))
        }
        _ => {}
    }
    Ok(run_as)
}

fn pg_ctl_argv(target: &DrillTarget, data: &Path, tail: &[&str]) -> Vec<String> {
    let mut argv = vec![
        pg_program(target, "pg_ctl"),
        "-D".into(),
        data.display().to_string(),
    ];
    argv.extend(tail.iter().map(|s| s.to_string()));
    argv
}

async fn pg_start_and_query(
    target: &DrillTarget,
    env: &Env<'_>,
    data: &Path,
    run_as: Option<(u32, u32)>,
    output: &mut String,
) -> anyhow::Result<()> {
    let sock = env.scratch_dir.display().to_string();
    let log = env.scratch_dir.join("postgresql.log");
    let started = Instant::now();
    let wait = target.timeout.as_secs().max(1).to_string();
    let options = format!(
        "-k {sock} -p {} -c listen_addresses='' -c archive_mode=off",
        target.port
    );
    let log_arg = log.display().to_string();
    let start = pg_ctl_argv(
        target,
        data,
        &["-o", &options, "-l", &log_arg, "-w", "-t", &wait, "start"],
    );
    let (out, r) = command(&start, &[], run_as, target.timeout).await;
    output.push_str(&out);
    r.context("PostgreSQL did not start on the clone")?;
    let left = target.timeout.saturating_sub(started.elapsed());
    let psql = vec![
        pg_program(target, "psql"),
        "-X".into(),
        "-A".into(),
        "-t".into(),
        "-v".into(),
        "ON_ERROR_STOP=1".into(),
        "-d".into(),
        format!("host={sock} port={} dbname=postgres", target.port),
        "-c".into(),
        target.query.clone(),
    ];
    let (out, r) = command(&psql, &[], run_as, left.max(Duration::from_secs(1))).await;
    output.push_str(&out);
    let answer = r.context("the query failed")?;
    tracing::info!(answer = %answer.trim(), "PostgreSQL answered on the clone");
    Ok(())
}

/// The server of `data`, if `pg_ctl stop` could not stop it: SIGKILL to
/// the pid in its `postmaster.pid` (so that the clone can be destroyed).
async fn kill_postmaster(data: &Path) {
    let pid = tokio::fs::read_to_string(data.join("postmaster.pid"))
        .await
        .ok()
        .and_then(|t| t.lines().next().and_then(|l| l.trim().parse::<i32>().ok()))
        .filter(|p| *p > 1);
    if let Some(pid) = pid {
        tracing::warn!(pid, "pg_ctl stop failed; killing the postmaster");
        // SAFETY: kill(2) of the postmaster this drill started.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
        }
    }
}

/// A private directory for one drill's check (mode 0700).
pub async fn private_dir(path: &Path) -> anyhow::Result<PathBuf> {
    tokio::fs::DirBuilder::new()
        .mode(0o700)
        .create(path)
        .await
        .with_context(|| format!("creating {}", path.display()))?;
    Ok(path.to_path_buf())
}
