//! `fjord-send push`: run the push jobs of a config file (from cron or a
//! systemd timer): snapshot, plan against the DR node, send, hold the new
//! base, prune, record status and metrics.

use crate::progress::Progress;
use crate::replicate::{replicate, DatasetReport, JobContext};
use anyhow::Context;
use fjord_config::config::{CongestionChoice, Job, SendConfig};
use fjord_replicate::exit_code;
use fjord_replicate::lock::JobLock;
use fjord_replicate::metrics;
use fjord_replicate::plan::PlanError;
use fjord_replicate::status::{self, JobStatus};
use fjord_transport::{Congestion, Identity, LinkConfig, PublicKey};
use fjord_zfs::{snapname, SendKind, SendSpec, Zfs};
use std::collections::HashSet;
use std::io::IsTerminal;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::Instrument;

/// Replicate ZFS datasets to the DR node, as configured.
///
/// For each job (or only --job NAME): takes a snapshot named
/// PREFIX_YYYY-MM-DDTHHMMSSZ (recursively with `recursive = true`), asks
/// the receiver what the target has, and sends what is missing: a full
/// stream if the target is new, an incremental from the newest common
/// snapshot (-I by default), or the rest of an interrupted transfer from
/// the target's receive_resume_token. A stale token (its snapshot was
/// destroyed here) is discarded and the push falls back to the common
/// snapshot. The new base is held (`zfs holds`, tag fjord-JOB) so nothing
/// can destroy it; then retention prunes old PREFIX_ snapshots on both
/// sides. A target that was changed or has snapshots newer than the
/// common one is refused; --force rolls it back.
///
/// Silent on success unless --verbose or stdout is a terminal, so cron
/// mails only failures. Logs: FJORD_LOG=info.
///
/// Exit status: 0 every job succeeded (or was up to date); 4 a job failed;
/// 5 the config is invalid; 6 a job was skipped because an earlier run
/// still holds its lock.
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
    /// Print the plan and send nothing (no snapshot is taken either).
    #[arg(long)]
    dry_run: bool,
    /// Roll back a diverged target to the newest common snapshot,
    /// destroying its newer snapshots and changes.
    #[arg(long)]
    force: bool,
    /// Print what each job did, also when not on a terminal.
    #[arg(long, short)]
    verbose: bool,
}

/// How a job ended, worst last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum JobResult {
    Ok,
    Locked,
    /// Failed because a target diverged (needs an operator: --force).
    Diverged,
    Failed,
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
    let jobs: Vec<&Job> = config
        .jobs
        .iter()
        .filter(|j| args.job.as_ref().is_none_or(|n| *n == j.name))
        .collect();
    if jobs.is_empty() {
        eprintln!(
            "fjord-send: error: no job named {:?} in {}",
            args.job.as_deref().unwrap_or_default(),
            args.config.display()
        );
        return exit_code::CONFIG_ERROR;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fjord-send: error: cannot start the async runtime: {e}");
            return exit_code::JOB_FAILED;
        }
    };
    let talk = args.verbose || std::io::stdout().is_terminal();
    let mut worst = JobResult::Ok;
    for job in jobs {
        let span = tracing::info_span!("job", job = %job.name);
        let result = runtime.block_on(run_job(&config, job, &args, talk).instrument(span));
        worst = worst.max(result);
    }
    match worst {
        JobResult::Ok => exit_code::OK,
        JobResult::Locked => exit_code::LOCKED,
        JobResult::Failed | JobResult::Diverged => exit_code::JOB_FAILED,
    }
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn resolve(host: &str) -> anyhow::Result<SocketAddr> {
    host.to_socket_addrs()
        .with_context(|| format!("cannot resolve target_host {host:?}; expected HOST:PORT"))?
        .next()
        .with_context(|| format!("target_host {host:?} resolves to no address"))
}

async fn run_job(config: &SendConfig, job: &Job, args: &Args, talk: bool) -> JobResult {
    let _lock = if args.dry_run {
        None
    } else {
        match JobLock::acquire(&config.state_dir, &job.name) {
            Ok(l) => Some(l),
            Err(e) => {
                eprintln!("fjord-send: job {}: {e}", job.name);
                return JobResult::Locked;
            }
        }
    };
    let started = Instant::now();
    let attempt = now_unix();
    let outcome = push_job(config, job, args).await;
    let (result, lines, error, totals) = match outcome {
        Ok((reports, failures, diverged)) => {
            let mut lines = Vec::new();
            let mut totals = (0u64, 0u64, None::<i64>);
            for r in &reports {
                lines.extend(r.lines.iter().cloned());
                totals.0 += r.bytes;
                totals.1 += r.bytes_resent;
                // The job's lag is its most-lagging dataset's.
                totals.2 = match (totals.2, r.replicated_creation) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let result = match (failures.is_empty(), diverged) {
                (true, _) => JobResult::Ok,
                (false, true) => JobResult::Diverged,
                (false, false) => JobResult::Failed,
            };
            let error = (!failures.is_empty()).then(|| failures.join("; "));
            (result, lines, error, totals)
        }
        Err(e) => (
            JobResult::Failed,
            Vec::new(),
            Some(format!("{e:#}")),
            (0, 0, None),
        ),
    };
    if talk {
        for l in &lines {
            println!("{}: {l}", job.name);
        }
        if result == JobResult::Ok {
            println!(
                "{}: ok in {:.1}s, {} bytes sent, {} re-sent",
                job.name,
                started.elapsed().as_secs_f64(),
                totals.0,
                totals.1
            );
        }
    }
    if let Some(e) = &error {
        eprintln!("fjord-send: job {} failed: {e}", job.name);
    }
    if args.dry_run {
        return result;
    }
    let previous = status::load(&config.state_dir, &job.name).ok().flatten();
    let st = JobStatus {
        job: job.name.clone(),
        last_attempt: attempt,
        last_success: if result == JobResult::Ok {
            Some(attempt)
        } else {
            previous.as_ref().and_then(|p| p.last_success)
        },
        last_result: match result {
            JobResult::Ok => status::result::OK,
            JobResult::Diverged => status::result::DIVERGED,
            JobResult::Locked | JobResult::Failed => status::result::FAILED,
        }
        .to_string(),
        last_error: error,
        bytes: totals.0,
        bytes_resent: totals.1,
        duration_secs: started.elapsed().as_secs_f64(),
        newest_replicated_snapshot_time: totals
            .2
            .or(previous.and_then(|p| p.newest_replicated_snapshot_time)),
    };
    if let Err(e) = status::save(&config.state_dir, &st) {
        eprintln!("fjord-send: job {}: cannot record status: {e}", job.name);
    }
    if let Some(path) = &config.metrics_file {
        let all = status::load_all(&config.state_dir).unwrap_or_default();
        if let Err(e) = metrics::write_textfile(path, &metrics::render_prometheus(&all, now_unix()))
        {
            eprintln!("fjord-send: cannot write metrics {}: {e}", path.display());
        }
    }
    result
}

/// Runs one job: returns each dataset's report, the failures, and whether
/// one of them is a diverged target.
async fn push_job(
    config: &SendConfig,
    job: &Job,
    args: &Args,
) -> anyhow::Result<(Vec<DatasetReport>, Vec<String>, bool)> {
    let zfs = Zfs::new();
    let identity = Identity::load(&config.key)
        .with_context(|| format!("loading the sender key {}", config.key.display()))?;
    let server_key: PublicKey = job
        .target_key
        .parse()
        .map_err(|e| anyhow::anyhow!("job {}: target_key: {e}", job.name))?;
    let to = resolve(&job.target_host)?;
    let datasets = if job.recursive {
        zfs.children(&job.source)
            .await
            .with_context(|| format!("listing {} and its children", job.source))?
    } else {
        vec![job.source.clone()]
    };
    if datasets.is_empty() {
        anyhow::bail!("source dataset {} does not exist", job.source);
    }
    if !args.dry_run {
        let short = snapname::format_snapshot_name(&job.snapshot_prefix, now_unix());
        zfs.snapshot_recursive(&job.source, &short, job.recursive)
            .await
            .with_context(|| format!("taking snapshot {}@{short}", job.source))?;
        tracing::info!(snapshot = %short, "snapshot taken");
    }
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
    let progress = Progress::default();
    let ctx = Arc::new(JobContext {
        job: job.name.clone(),
        zfs,
        identity,
        to,
        server_key,
        link,
        grace: job.grace.unwrap_or(Duration::from_secs(300)),
        send_flags: SendSpec {
            kind: SendKind::Full {
                snap: String::new(),
            },
            raw: job.raw,
            compressed: job.compressed,
            large_blocks: job.large_blocks,
            embedded: job.compressed || job.raw,
        },
        intermediates: job.intermediates,
        pack: job.pack,
        prefix: job.snapshot_prefix.clone(),
        keep_source: job.retention.source,
        keep_target: job.retention.target,
        force: args.force,
        dry_run: args.dry_run,
        progress: progress.clone(),
    });
    let drawing = progress.spawn(!args.dry_run);
    let result = replicate_tree(ctx, job, datasets).await;
    Progress::clear(drawing);
    Ok(result)
}

/// Replicates parents before children (a child's target needs its parent),
/// up to `parallelism` datasets of one depth at a time. A failed dataset's
/// children are skipped.
async fn replicate_tree(
    ctx: Arc<JobContext>,
    job: &Job,
    datasets: Vec<String>,
) -> (Vec<DatasetReport>, Vec<String>, bool) {
    let mut by_depth: Vec<Vec<String>> = Vec::new();
    for d in datasets {
        let depth = d.matches('/').count() - job.source.matches('/').count();
        if by_depth.len() <= depth {
            by_depth.resize(depth + 1, Vec::new());
        }
        by_depth[depth].push(d);
    }
    let limit = Arc::new(Semaphore::new(job.parallelism.max(1)));
    let mut reports = Vec::new();
    let mut failures: Vec<String> = Vec::new();
    let mut diverged = false;
    let mut failed: HashSet<String> = HashSet::new();
    for level in by_depth {
        let mut set = JoinSet::new();
        for source in level {
            if let Some(parent) = failed.iter().find(|f| source.starts_with(&format!("{f}/"))) {
                failures.push(format!("{source}: skipped, its parent {parent} failed"));
                failed.insert(source);
                continue;
            }
            let Some(target) = job.target_for(&source) else {
                failures.push(format!(
                    "{source}: no valid target name below {} for it",
                    job.target_dataset
                ));
                failed.insert(source);
                continue;
            };
            let ctx = ctx.clone();
            let limit = limit.clone();
            set.spawn(async move {
                let _permit = limit.acquire_owned().await;
                let r = replicate(ctx, source.clone(), target).await;
                (source, r)
            });
        }
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((_, Ok(report))) => reports.push(report),
                Ok((source, Err(e))) => {
                    diverged |= e.chain().any(|c| {
                        matches!(
                            c.downcast_ref::<PlanError>(),
                            Some(PlanError::Diverged { .. })
                        )
                    });
                    failures.push(format!("{e:#}"));
                    failed.insert(source);
                }
                Err(e) => failures.push(format!("internal error: {e}")),
            }
        }
    }
    (reports, failures, diverged)
}
