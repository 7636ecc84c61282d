//! `fjord-send status`: what the last push of each job did, from the
//! status files `push` writes in the config's state_dir.

use anyhow::anyhow;
use fjord_cli::CheckLevel;
use fjord_cli::Failure;
use fjord_config::config::SendConfig;
use fjord_replicate::check::{check_line, LagThresholds, Level, NEVER, UNREADABLE};
use fjord_replicate::status::{self, JobStatus};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Show each job's last push, its replication lag and whether it is healthy.
///
/// Per job: result, when it last succeeded, replication lag (age of the
/// newest snapshot both sides have), bytes, duration.
///
/// A job that never ran (no status file in state_dir) is listed as
/// `never` in the table and, with --json, as
/// {"job": NAME, "last_result": "never", ...}: it has no DR copy yet.
///
/// The last push's warnings (a child destroyed on the primary whose copy
/// the DR node kept, or destroyed) are printed under the table and listed
/// in "warnings" with --json; they do not change the exit status.
///
/// A ransomware tripwire alarm that waits for `fjord-send tripwire ack`
/// is printed under the table and listed in each job's
/// "tripwire_alarms" with --json.
///
/// Exit status: 0 every configured job's last push succeeded; 4 a job's
/// last push failed, its status file is unreadable, it never ran, or a
/// tripwire alarm waits (the table and --json alike); 5 the config is
/// invalid. With --check, the Nagios plugin convention instead (as
/// `fjord-recv status --check`): one line on stdout, and 0 ok, 1 warning
/// (a lag past --warn-lag, a failed last push), 2 critical (a lag past
/// --crit-lag, a job that never ran or diverged), 3 unknown (the config
/// or a status file unreadable).
///
/// Example (Nagios/Icinga, or a systemd timer):
///   fjord-send status --config /etc/fjord/send.toml --check --warn-lag 30m --crit-lag 2h
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The sender's config file.
    #[arg(long, value_name = "FILE", default_value = "/etc/fjord/send.toml")]
    config: PathBuf,
    /// Print JSON instead of a table: an array with one status object per
    /// configured job (`"last_result": "never"` for a job that never ran,
    /// `"unreadable"` for one whose status file cannot be read).
    #[arg(long, conflicts_with = "check")]
    json: bool,
    /// Monitoring mode: one line and a Nagios exit code (0/1/2/3).
    #[arg(long)]
    check: bool,
    /// With --check: a replication lag longer than this is a warning.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = fjord_cli::parse_duration)]
    warn_lag: Duration,
    /// With --check: a replication lag longer than this is critical.
    #[arg(long, value_name = "DURATION", default_value = "2h", value_parser = fjord_cli::parse_duration)]
    crit_lag: Duration,
}

/// Each job's status as JSON with its waiting tripwire alarms
/// (`"tripwire_alarms"`: an array; an unreadable tripwire file is an
/// alarm with `"error"`).
fn with_alarms(
    all: &[JobStatus],
    alarms: &[Result<Vec<crate::tripwire_cmd::ShownAlarm>, String>],
) -> Result<Vec<serde_json::Value>, Failure> {
    let io = |e: serde_json::Error| Failure::Io(anyhow!("writing the status as JSON: {e}"));
    all.iter()
        .zip(alarms)
        .map(|(s, a)| {
            let mut v = serde_json::to_value(s).map_err(io)?;
            let shown = match a {
                Ok(list) => serde_json::to_value(list).map_err(io)?,
                Err(e) => serde_json::json!([{ "error": e }]),
            };
            if let Some(map) = v.as_object_mut() {
                map.insert("tripwire_alarms".into(), shown);
            }
            Ok(v)
        })
        .collect()
}

/// One problem line per waiting tripwire alarm (printed under the table
/// when `print`).
fn tripwire_lines(
    all: &[JobStatus],
    alarms: &[Result<Vec<crate::tripwire_cmd::ShownAlarm>, String>],
    print: bool,
) -> Vec<String> {
    let mut out = Vec::new();
    for (s, a) in all.iter().zip(alarms) {
        let lines = match a {
            Ok(list) => list
                .iter()
                .map(|a| {
                    format!(
                        "{}: {}: TRIPWIRE at @{}: {}{}; acknowledge with fjord-send tripwire ack {} {}",
                        s.job,
                        a.dataset,
                        a.alarm.snapshot,
                        a.alarm.reason,
                        if a.pruning_paused { "; source pruning paused" } else { "" },
                        s.job,
                        a.dataset
                    )
                })
                .collect(),
            Err(e) => vec![format!("{}: tripwire state unreadable: {e}", s.job)],
        };
        for l in lines {
            if print {
                println!("{l}");
            }
            out.push(l);
        }
    }
    out
}

fn age(now: i64, t: Option<i64>) -> String {
    match t {
        None => "never".into(),
        Some(t) => {
            let s = (now - t).max(0);
            match s {
                0..=119 => format!("{s}s ago"),
                120..=7199 => format!("{}m ago", s / 60),
                _ => format!("{}h ago", s / 3600),
            }
        }
    }
}

/// A configured job's status: its file's, or a stand-in that says why
/// there is none, in the same shape (so that `--json` lists every job).
fn job_status(state_dir: &std::path::Path, job: &str) -> JobStatus {
    let stand_in = |result: &str, error: Option<String>| JobStatus {
        job: job.to_string(),
        last_attempt: 0,
        last_success: None,
        last_result: result.to_string(),
        last_error: error,
        bytes: 0,
        bytes_resent: 0,
        duration_secs: 0.0,
        newest_replicated_snapshot_time: None,
        warnings: Vec::new(),
        targets: Vec::new(),
        snapshot_only: false,
    };
    match status::load(state_dir, job) {
        Ok(Some(s)) => s,
        Ok(None) => stand_in(NEVER, None),
        Err(e) => stand_in(UNREADABLE, Some(fjord_cli::render(&anyhow!(e)))),
    }
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    let config = match SendConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) if args.check => {
            println!("FJORD-SEND UNKNOWN - {e}");
            return Err(Failure::Check(CheckLevel::Unknown, anyhow!(e)));
        }
        Err(e) => return Err(Failure::config(e)),
    };
    if args.warn_lag > args.crit_lag {
        return Err(Failure::config(anyhow!(
            "--warn-lag must not be longer than --crit-lag"
        )));
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let all: Vec<JobStatus> = config
        .jobs
        .iter()
        .map(|job| job_status(&config.state_dir, &job.name))
        .collect();
    if args.check {
        return check(&all, &args, now);
    }
    let alarms: Vec<_> = config
        .jobs
        .iter()
        .map(|job| crate::tripwire_cmd::alarms(&config.state_dir, &config, &job.name))
        .collect();
    if args.json {
        let all = with_alarms(&all, &alarms)?;
        let json = serde_json::to_string_pretty(&all)
            .map_err(|e| Failure::Io(anyhow!("writing the status as JSON: {e}")))?;
        println!("{json}");
    } else {
        println!(
            "{:<16} {:<8} {:<14} {:<10} {:>14} {:>9}  error",
            "job", "result", "last success", "lag", "bytes", "duration"
        );
        for s in &all {
            if s.last_result == NEVER {
                println!("{:<16} never run", s.job);
                continue;
            }
            println!(
                "{:<16} {:<8} {:<14} {:<10} {:>14} {:>8.1}s  {}",
                s.job,
                s.last_result,
                age(now, s.last_success),
                s.newest_replicated_snapshot_time
                    .map(|t| format!("{}s", (now - t).max(0)))
                    .unwrap_or_else(|| "-".into()),
                s.bytes,
                s.duration_secs,
                s.last_error.as_deref().unwrap_or(if s.snapshot_only {
                    "(snapshot-only)"
                } else {
                    ""
                })
            );
            // A fan-out job: one row per target, under the job's.
            for t in s.targets.iter().filter(|_| s.targets.len() > 1) {
                println!(
                    "{:<16} {:<8} {:<14} {:<10} {:>14} {:>9}  {}",
                    format!("  {}", t.name),
                    t.last_result,
                    age(now, t.last_success),
                    t.newest_replicated_snapshot_time
                        .map(|x| format!("{}s", (now - x).max(0)))
                        .unwrap_or_else(|| "-".into()),
                    "",
                    "",
                    t.last_error.as_deref().unwrap_or("")
                );
            }
        }
        for s in &all {
            for w in &s.warnings {
                println!("{}: warning: {w}", s.job);
            }
        }
    }
    let mut unhealthy: Vec<String> = all
        .iter()
        .filter(|s| s.last_result != status::result::OK)
        .map(|s| match s.last_result.as_str() {
            NEVER => format!("{} never ran", s.job),
            UNREADABLE => format!("{}: status unreadable", s.job),
            r => format!("{}: last push {r}", s.job),
        })
        .collect();
    unhealthy.extend(tripwire_lines(&all, &alarms, !args.json));
    if unhealthy.is_empty() {
        Ok(())
    } else {
        Err(Failure::JobFailed(anyhow!(
            "{} of {} job(s) not healthy: {}",
            unhealthy.len(),
            all.len(),
            unhealthy.join("; ")
        )))
    }
}

/// `--check`: prints the one line and maps the verdict to the exit code.
fn check(all: &[JobStatus], args: &Args, now: i64) -> Result<(), Failure> {
    let thresholds = LagThresholds {
        warn: args.warn_lag,
        crit: args.crit_lag,
    };
    let (level, line) = check_line(all, &thresholds, now);
    println!("{line}");
    let level = match level {
        Level::Ok => return Ok(()),
        Level::Warning => CheckLevel::Warning,
        Level::Unknown => CheckLevel::Unknown,
        Level::Critical => CheckLevel::Critical,
    };
    Err(Failure::Check(level, anyhow!(line)))
}
