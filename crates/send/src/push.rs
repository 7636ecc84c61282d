//! `fjord-send push`: parse the arguments, load the config, and run each
//! job through `fjord_replicate` (the zfs CLI and QUIC at its edges);
//! print the reports and turn the outcome into one `Failure`.

use crate::progress::Progress;
use anyhow::anyhow;
use fjord_cli::Failure;
use fjord_config::config::{CongestionChoice, Job, SendConfig};
use fjord_proto::PublicKey;
use fjord_replicate::edge::{QuicDrNode, WatchTransfer, ZfsPool};
use fjord_replicate::{
    run_job, verdict, JobContext, JobOutcome, JobResult, RunOptions, StateFiles, TargetNode,
    Verdict,
};
use fjord_transport::{Congestion, Identity, LinkConfig};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tracing::Instrument;

/// Replicate ZFS datasets to the DR node, as configured.
///
/// For each job (or only --job NAME): takes a snapshot named
/// PREFIX_YYYY-MM-DDTHHMMSSZ (recursively with `recursive = true`), asks
/// the DR node what the target has, and sends what is missing: a full
/// stream if the target is new, an incremental from the newest common
/// snapshot (-I by default), or the rest of an interrupted transfer from
/// the target's receive_resume_token. A stale token (its snapshot was
/// destroyed here) is discarded and the push falls back to the common
/// snapshot. After a successful transfer the new base is held (`zfs
/// holds`, tag fjord-JOB, or fjord-JOB-NAME for a [[job.target]] table)
/// and the old one released; then retention prunes old PREFIX_ snapshots
/// on both sides (the DR node's policy decides on its side; the source
/// keeps every target's base). A job with several targets pushes to each
/// at its own pace; one with none only snapshots and prunes. A target
/// that was changed or has snapshots newer than the common one is refused;
/// --force asks the DR node to roll it back.
///
/// Silent on success unless --verbose or stdout is a terminal, so cron
/// mails only failures. --json prints one JSON object per dataset and one
/// per job (see the README). Logs: FJORD_LOG=info.
///
/// Exit status: 0 every job succeeded (or was up to date); 4 a job failed
/// or its target diverged; 5 the config is invalid (nothing was run);
/// 6 a job was skipped because an earlier run still holds its lock (and
/// nothing else went wrong); 7 state_dir, the job lock, the status or the
/// metrics file could not be written (monitoring would not see the run).
///
/// Example (cron, every 5 minutes):
///   */5 * * * * root fjord-send push --config /etc/fjord/send.toml
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The sender's config file (see examples/send.toml).
    #[arg(long, value_name = "FILE", default_value = "/etc/fjord/send.toml")]
    config: PathBuf,
    /// Run only this job.
    #[arg(long, value_name = "NAME")]
    job: Option<String>,
    /// Print the plan and send nothing (no snapshot, no lock, no status).
    #[arg(long)]
    dry_run: bool,
    /// Roll back a diverged target to the newest common snapshot,
    /// destroying its newer snapshots and changes (if the DR node's
    /// policy allows it: allow_rollback).
    #[arg(long)]
    force: bool,
    /// Print what each job did, also when not on a terminal.
    #[arg(long, short)]
    verbose: bool,
    /// Print one JSON object per dataset and one per job on stdout
    /// (JSON Lines), instead of text.
    #[arg(long)]
    json: bool,
}

/// A job whose DR nodes' keys parsed (one per target, in order; none for a
/// snapshot-only job).
pub(crate) struct Prepared<'a> {
    pub(crate) job: &'a Job,
    pub(crate) targets: Vec<(fjord_config::Target, PublicKey)>,
}

/// The jobs of `config` (all, or the one named `only`) with their DR
/// nodes' keys parsed, and this sender's key loaded: everything a push
/// checks before it runs. Every error is [`Failure::Config`] naming the
/// file, the job and the key.
pub(crate) fn prepare<'a>(
    config: &'a SendConfig,
    file: &str,
    only: Option<&str>,
) -> Result<(Vec<Prepared<'a>>, Arc<Identity>), Failure> {
    let jobs: Vec<Prepared> = config
        .jobs
        .iter()
        .filter(|j| only.is_none_or(|n| n == j.name))
        .map(|job| {
            let targets = job
                .targets()
                .into_iter()
                .map(|t| {
                    let key = t.key.trim().parse().map_err(|e| {
                        let which = if t.name.is_empty() {
                            "target_key".to_string()
                        } else {
                            format!("target {:?}: key", t.name)
                        };
                        Failure::config(anyhow!(
                            "{file}: job {}: {which} {:?} is not a public key ({e}); put the DR node's key there (fjord-recv keygen or pubkey prints it)",
                            job.name,
                            t.key
                        ))
                    })?;
                    Ok((t, key))
                })
                .collect::<Result<_, Failure>>()?;
            Ok(Prepared { job, targets })
        })
        .collect::<Result<_, Failure>>()?;
    if jobs.is_empty() {
        return Err(Failure::config(anyhow!(
            "no job named {:?} in {file}",
            only.unwrap_or_default()
        )));
    }
    let identity = Identity::load(&config.key)
        .map(Arc::new)
        .map_err(|e| Failure::config(anyhow!("{file}: key {}: {e}", config.key.display())))?;
    Ok((jobs, identity))
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    let config = SendConfig::load(&args.config).map_err(Failure::config)?;
    let file = args.config.display().to_string();
    let (jobs, identity) = prepare(&config, &file, args.job.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::io(anyhow!("cannot start the async runtime: {e}")))?;
    let state = StateFiles {
        state_dir: config.state_dir.clone(),
        metrics_file: config.metrics_file.clone(),
    };
    let talk = !args.json && (args.verbose || std::io::stdout().is_terminal());
    let mut outcomes = Vec::new();
    for p in jobs {
        let span = tracing::info_span!("job", job = %p.job.name);
        let outcome = runtime.block_on(run_one(&args, &identity, &state, &p).instrument(span));
        show(&outcome, &args, talk);
        outcomes.push(outcome);
    }
    conclude(&outcomes)
}

pub(crate) fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

async fn run_one(
    args: &Args,
    identity: &Arc<Identity>,
    state: &StateFiles,
    p: &Prepared<'_>,
) -> JobOutcome {
    let job = p.job;
    let progress = Progress::new(!args.dry_run && !args.json);
    let targets = p
        .targets
        .iter()
        .map(|(target, key)| {
            let mut dr = dr_node(identity, job, &target.host, *key);
            let shown = progress.clone();
            // Several targets may receive the same dataset: the bar says which.
            let label = (!target.name.is_empty()).then(|| target.name.clone());
            let watch: WatchTransfer = Arc::new(move |name, counters, estimate| {
                let name = match &label {
                    Some(l) => format!("{l}:{name}"),
                    None => name.to_string(),
                };
                Box::new(shown.add(name, counters, estimate))
            });
            dr.watch = Some(watch);
            TargetNode {
                target: target.clone(),
                dr,
            }
        })
        .collect();
    let ctx = Arc::new(JobContext {
        pool: ZfsPool::new(),
        targets,
        job: job.clone(),
        options: RunOptions {
            force: args.force,
            dry_run: args.dry_run,
            now_unix: now_unix(),
        },
        hooks: Arc::new(fjord_replicate::edge::CommandHooks::new(&job.hooks)),
    });
    let drawing = progress.spawn();
    let outcome = run_job(ctx, state).await;
    progress.clear(drawing);
    outcome
}

/// The DR node at `host` over QUIC, with the job's link settings.
pub(crate) fn dr_node(
    identity: &Arc<Identity>,
    job: &Job,
    host: &str,
    server_key: PublicKey,
) -> QuicDrNode {
    let mut link = LinkConfig {
        rate_limit: job.bwlimit,
        congestion: match job.congestion {
            CongestionChoice::Cubic => Congestion::Cubic,
            CongestionChoice::Bbr => Congestion::Bbr,
        },
        ..LinkConfig::default()
    };
    if let Some(t) = job.idle_timeout {
        link = link.with_idle_timeout(t);
    }
    QuicDrNode::new(
        identity.clone(),
        host.to_string(),
        server_key,
        link,
        job.grace.unwrap_or(Duration::from_secs(300)),
        job.pack,
    )
}

/// Prints a job's report: JSON lines, or text when talking; failures
/// always on stderr (cron mails them).
fn show(outcome: &JobOutcome, args: &Args, talk: bool) {
    let report = &outcome.report;
    if args.json {
        for line in report.json_lines() {
            println!("{line}");
        }
    } else if talk {
        for d in &report.dataset_reports {
            for l in d.lines() {
                println!("{}: {l}", report.job);
            }
        }
        for w in &report.warnings {
            println!("{}: warning: {w}", report.job);
        }
        if report.result == JobResult::Ok {
            println!(
                "{}: ok in {:.1}s, {} bytes sent, {} re-sent",
                report.job, report.duration_secs, report.bytes, report.bytes_resent
            );
        }
    }
    for d in &report.dataset_reports {
        if let Some(e) = &d.error {
            // With several targets, the same dataset may fail on one only.
            let target = match d.target_name.as_deref() {
                Some(name) if report.targets.len() > 1 => format!("target {name}: "),
                _ => String::new(),
            };
            eprintln!("fjord-send: job {}: {target}{}: {e}", report.job, d.source);
        }
    }
    if let Some(e) = &report.error {
        match report.result {
            JobResult::Locked => eprintln!("fjord-send: job {}: skipped: {e}", report.job),
            _ => eprintln!("fjord-send: job {} failed: {e}", report.job),
        }
    }
    for e in &outcome.state_errors {
        // A lock that could not be taken is already the job's error.
        if report.error.as_deref() != Some(e.to_string().as_str()) {
            eprintln!("fjord-send: job {}: {e}", report.job);
        }
    }
}

/// The failed jobs, each with its failed targets when it has several:
/// `home (target bergen), mail`.
fn failed_names(outcomes: &[JobOutcome]) -> String {
    outcomes
        .iter()
        .filter(|o| matches!(o.report.result, JobResult::Failed | JobResult::Diverged))
        .map(|o| {
            let r = &o.report;
            let bad: Vec<&str> = r
                .targets
                .iter()
                .filter(|t| !matches!(t.result, JobResult::Ok | JobResult::DryRun))
                .map(|t| t.name.as_str())
                .collect();
            if r.targets.len() > 1 && !bad.is_empty() {
                format!("{} (target {})", r.job, bad.join(", "))
            } else {
                r.job.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// One `Failure` for the whole run, from the worst outcome.
fn conclude(outcomes: &[JobOutcome]) -> Result<(), Failure> {
    let names = |pred: &dyn Fn(&JobOutcome) -> bool| {
        outcomes
            .iter()
            .filter(|o| pred(o))
            .map(|o| o.report.job.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match verdict(outcomes) {
        Verdict::Ok => Ok(()),
        Verdict::Locked => Err(Failure::locked(anyhow!(
            "skipped, an earlier run still holds the lock: {}",
            names(&|o| o.report.result == JobResult::Locked)
        ))),
        Verdict::Failed => Err(Failure::job_failed(anyhow!(
            "jobs failed: {}",
            failed_names(outcomes)
        ))),
        Verdict::Promoted => Err(Failure::promoted(anyhow!(
            "the DR node refuses pushes of: {} (a target was promoted there: failover happened; see the errors above for when and how to fail back)",
            names(&|o| o.report.result == JobResult::Promoted)
        ))),
        Verdict::StateLost => Err(Failure::state(anyhow!(
            "could not keep the local state (lock, status or metrics) of: {}; see the errors above",
            names(&|o| !o.state_errors.is_empty())
        ))),
    }
}
