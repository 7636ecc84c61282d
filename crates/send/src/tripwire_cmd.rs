//! `fjord-send tripwire ack`: an operator's acknowledgement of a
//! ransomware tripwire alarm, which resumes the source-side pruning that
//! `pause_pruning` held back; and the alarms `fjord-send status` shows.

use anyhow::anyhow;
use fjord_cli::Failure;
use fjord_config::config::SendConfig;
use fjord_replicate::tripwire::{self, AckError, Alarm, Book};
use fjord_replicate::{LockError, StateFiles};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// The ransomware tripwire: acknowledge an alarm.
///
/// A push trips the tripwire when the share of incompressible or
/// rewritten block bytes in a dataset's stream jumps past its history
/// (see the README, "Ransomware tripwire"). The alarm stays, in
/// `fjord-send status` and the metrics, until acknowledged here; with
/// `pause_pruning = true` so does the pause of the dataset's source-side
/// pruning. Look at the data first (`zfs diff` between the snapshots the
/// status names): the snapshots before the trip are the clean copies.
///
/// Exit status: 0 acknowledged (or nothing to acknowledge); 5 the config
/// is invalid or names no such job; 6 a push of the job is running (try
/// again); 7 the state could not be read or written.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Clear the alarm of JOB (of every dataset, or only DATASET).
    Ack {
        /// The sender's config file.
        #[arg(long, value_name = "FILE", default_value = "/etc/fjord/send.toml")]
        config: PathBuf,
        /// The job.
        job: String,
        /// The source dataset (default: every dataset of the job).
        dataset: Option<String>,
    },
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    let Command::Ack {
        config,
        job,
        dataset,
    } = args.command;
    let cfg = SendConfig::load(&config).map_err(Failure::config)?;
    if cfg.job(&job).is_none() {
        return Err(Failure::config(anyhow!(
            "{}: no job named {job:?}",
            config.display()
        )));
    }
    let state = StateFiles {
        state_dir: cfg.state_dir.clone(),
        metrics_file: cfg.metrics_file.clone(),
    };
    match tripwire::acknowledge(&state, &job, dataset.as_deref(), now()) {
        Ok(cleared) if cleared.is_empty() => {
            println!("{job}: no tripwire alarm to acknowledge");
            Ok(())
        }
        Ok(cleared) => {
            for d in cleared {
                println!("{job}: {d}: tripwire alarm acknowledged; source pruning resumes");
            }
            Ok(())
        }
        Err(AckError::Lock(held @ LockError::Held { .. })) => Err(Failure::locked(held)),
        Err(e) => Err(Failure::state(e)),
    }
}

/// An alarm as `fjord-send status` shows it.
#[derive(Serialize)]
pub struct ShownAlarm {
    /// The source dataset.
    pub dataset: String,
    /// The alarm.
    #[serde(flatten)]
    pub alarm: Alarm,
    /// Source pruning of the dataset is paused until acknowledged.
    pub pruning_paused: bool,
}

/// The waiting alarms of `job`, and a problem reading them (as an alarm
/// of its own: monitoring must not go quiet).
pub fn alarms(state_dir: &Path, cfg: &SendConfig, job: &str) -> Result<Vec<ShownAlarm>, String> {
    let book = Book::load(state_dir, job).map_err(|e| e.to_string())?;
    let pause = cfg.job(job).is_some_and(|j| j.tripwire.pause_pruning);
    Ok(book
        .datasets
        .into_iter()
        .filter_map(|(dataset, page)| {
            page.alarm.map(|alarm| ShownAlarm {
                dataset,
                alarm,
                pruning_paused: pause,
            })
        })
        .collect())
}
