//! `fjord-send switchover`: a planned switchover of one job, run through
//! `fjord_replicate::switchover` (the zfs CLI and QUIC at its edges).

use crate::push::{dr_node, now_unix, prepare};
use anyhow::anyhow;
use fjord_cli::Failure;
use fjord_config::config::SendConfig;
use fjord_replicate::edge::{CommandHooks, ZfsPool};
use fjord_replicate::switchover::{switchover, SwitchResult, SwitchoverReport};
use fjord_replicate::{JobContext, RunOptions, StateFiles, TargetNode};
use std::path::PathBuf;
use std::sync::Arc;

/// Hand the primary role to the DR node, losing no committed write.
///
/// For one job, on the primary, in order:
///   1. stop_writes: runs the job's `[job.hooks] stop_writes` command
///      (e.g. stop the database cleanly);
///   2. final push: a snapshot and its push, as `push` does;
///   3. promote: asks the DR node to promote its copy to exactly that
///      snapshot (the DR node's recv.toml must grant this client
///      `allow_promote = true`); from then on it is the primary, fenced
///      against pushes from here;
///   4. demote: makes the source here a replication target: refused if
///      anything was written after the final snapshot; unmounted,
///      readonly=on, canmount=noauto, marked fjord:demoted (its pushes stop).
///
/// Then run `fjord-recv serve` here with the DR node's key as a client,
/// and push from the DR node (README, "Game day"). Every step is printed
/// (or --json); a run interrupted at any step can be run again: it
/// finishes what is left. If a step fails the application's writes stay
/// stopped (restart it to call the switchover off).
///
/// Exit status: 0 switched over (or already, or --dry-run); 4 a step
/// failed (the message says which and what state it left); 5 the config
/// is invalid.
///
/// Example:
///   fjord-send switchover --config /etc/fjord/send.toml --job data --dry-run
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The sender's config file.
    #[arg(long, value_name = "FILE", default_value = "/etc/fjord/send.toml")]
    config: PathBuf,
    /// The job to switch over.
    #[arg(long, value_name = "NAME")]
    job: String,
    /// Print the steps; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    let config = SendConfig::load(&args.config).map_err(Failure::config)?;
    let file = args.config.display().to_string();
    let (jobs, identity) = prepare(&config, &file, Some(&args.job))?;
    let Some(p) = jobs.into_iter().next() else {
        return Err(Failure::config(anyhow!(
            "no job named {:?} in {file}",
            args.job
        )));
    };
    let state = StateFiles {
        state_dir: config.state_dir.clone(),
        metrics_file: config.metrics_file.clone(),
    };
    let ctx = Arc::new(JobContext {
        pool: ZfsPool::new(),
        targets: p
            .targets
            .iter()
            .map(|(target, key)| TargetNode {
                target: target.clone(),
                dr: dr_node(&identity, p.job, &target.host, *key),
            })
            .collect(),
        job: p.job.clone(),
        options: RunOptions {
            force: false,
            dry_run: args.dry_run,
            now_unix: now_unix(),
        },
        hooks: Arc::new(CommandHooks::new(&p.job.hooks)),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::io(anyhow!("cannot start the async runtime: {e}")))?;
    let span = tracing::info_span!("switchover", job = %p.job.name);
    let report = runtime.block_on(tracing::Instrument::instrument(
        switchover(ctx, &state),
        span,
    ));
    show(&report, args.json);
    match report.result {
        SwitchResult::Failed => Err(Failure::job_failed(anyhow!(
            "switchover of job {} failed: {}",
            report.job,
            report.error.clone().unwrap_or_default()
        ))),
        _ => Ok(()),
    }
}

fn show(report: &SwitchoverReport, json: bool) {
    if json {
        println!(
            "{}",
            serde_json::to_string(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
        return;
    }
    for s in &report.steps {
        let how = if s.done {
            "done"
        } else if report.result == SwitchResult::DryRun {
            "would"
        } else {
            "not done"
        };
        let step = serde_json::to_value(s.step)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        println!("{how}: {step}: {}", s.detail);
    }
    match report.result {
        SwitchResult::Ok => println!(
            "switched over: {} on the DR node is the primary (at @{}); {} here is a replication target: run fjord-recv serve here for the DR node's key and push from the DR node",
            report.target,
            report.final_snapshot.as_deref().unwrap_or("?"),
            report.source
        ),
        SwitchResult::AlreadyDone => println!("already switched over: {} is a replication target", report.source),
        SwitchResult::DryRun | SwitchResult::Failed => {}
    }
}
