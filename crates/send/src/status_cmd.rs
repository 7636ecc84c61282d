//! `fjord-send status`: what the last push of each job did, from the
//! status files `push` writes in the config's state_dir.

use fjord_config::config::SendConfig;
use fjord_replicate::exit_code;
use fjord_replicate::status::{self, JobStatus};
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

/// Show each job's last push: result, when it last succeeded, replication
/// lag (age of the newest snapshot both sides have), bytes, duration.
///
/// Exit status: 0 every configured job's last push succeeded; 4 a job's
/// last push failed or it never ran; 5 the config is invalid.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The sender's config file.
    #[arg(long, value_name = "FILE", default_value = "/etc/fjord/send.toml")]
    config: PathBuf,
    /// Print JSON (an array of job status objects) instead of a table.
    #[arg(long)]
    json: bool,
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

/// Runs the subcommand; returns the exit code.
pub fn run(args: Args) -> u8 {
    let config = match SendConfig::load(&args.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("fjord-send: error: {e}");
            return exit_code::CONFIG_ERROR;
        }
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut all: Vec<(String, Option<JobStatus>)> = Vec::new();
    for job in &config.jobs {
        let st = match status::load(&config.state_dir, &job.name) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("fjord-send: job {}: {e}", job.name);
                None
            }
        };
        all.push((job.name.clone(), st));
    }
    let healthy = all
        .iter()
        .all(|(_, s)| s.as_ref().is_some_and(|s| s.last_result == "ok"));
    if args.json {
        let known: Vec<&JobStatus> = all.iter().filter_map(|(_, s)| s.as_ref()).collect();
        match serde_json::to_string_pretty(&known) {
            Ok(j) => println!("{j}"),
            Err(e) => {
                eprintln!("fjord-send: error: {e}");
                return exit_code::JOB_FAILED;
            }
        }
    } else {
        println!(
            "{:<16} {:<8} {:<14} {:<10} {:>14} {:>9}  error",
            "job", "result", "last success", "lag", "bytes", "duration"
        );
        for (name, s) in &all {
            match s {
                None => println!("{name:<16} never run"),
                Some(s) => println!(
                    "{:<16} {:<8} {:<14} {:<10} {:>14} {:>8.1}s  {}",
                    name,
                    s.last_result,
                    age(now, s.last_success),
                    s.newest_replicated_snapshot_time
                        .map(|t| format!("{}s", (now - t).max(0)))
                        .unwrap_or_else(|| "-".into()),
                    s.bytes,
                    s.duration_secs,
                    s.last_error.as_deref().unwrap_or("")
                ),
            }
        }
    }
    if healthy {
        exit_code::OK
    } else {
        exit_code::JOB_FAILED
    }
}
