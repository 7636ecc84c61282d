//! A push job from start to finish: lock, snapshot, replicate the tree
//! (parents before children), then record status and metrics.

use crate::dataset::{fail, replicate_dataset, DatasetError};
use crate::dr_node::DrNode;
use crate::lock::{JobLock, LockError};
use crate::pool::{Pool, PoolError};
use crate::report::{DatasetReport, DatasetResult, JobReport, JobResult};
use crate::status::{self, JobStatus, StatusError};
use crate::{metrics, tripwire, JobContext};
use fjord_zfs::snapname;
use fjord_zfs::SnapshotInfo;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use thiserror::Error;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Where a job's local state lives.
#[derive(Clone, Debug)]
pub struct StateFiles {
    /// `state_dir`: job locks and status files.
    pub state_dir: PathBuf,
    /// The Prometheus textfile, if configured.
    pub metrics_file: Option<PathBuf>,
}

/// The local state could not be kept: replication may have run, but the
/// next run, the status command and monitoring cannot see it. Never
/// confused with "another run holds the lock".
#[derive(Debug, Error)]
pub enum StateError {
    /// The job lock could not be created or taken (not: held by another
    /// run; that is [`JobResult::Locked`]).
    #[error("{0}")]
    Lock(LockError),
    /// The status file could not be written.
    #[error("job {job}: cannot record its status: {cause}; check that state_dir {} exists and is writable", state_dir.display())]
    Status {
        /// The job.
        job: String,
        /// The state directory.
        state_dir: PathBuf,
        /// Why.
        cause: StatusError,
    },
    /// The metrics file could not be written.
    #[error("cannot write the metrics file {}: {cause}; check that its directory exists and is writable", path.display())]
    Metrics {
        /// The metrics file.
        path: PathBuf,
        /// Why.
        cause: std::io::Error,
    },
}

/// A job's report, and the local state it could not keep.
#[derive(Debug)]
pub struct JobOutcome {
    /// What happened.
    pub report: JobReport,
    /// Status, lock or metrics that could not be written: a failure of its
    /// own, whatever the report says.
    pub state_errors: Vec<StateError>,
}

/// Runs one job: takes its lock (not with `--dry-run`), snapshots the
/// source tree, replicates every dataset, and records status and metrics.
pub async fn run_job<P: Pool + 'static, D: DrNode + 'static>(
    ctx: Arc<JobContext<P, D>>,
    state: &StateFiles,
) -> JobOutcome {
    let job = ctx.job.name.clone();
    let started = Instant::now();
    let mut state_errors = Vec::new();
    let _lock = if ctx.options.dry_run {
        None
    } else {
        match JobLock::acquire(&state.state_dir, &job) {
            Ok(l) => Some(l),
            Err(held @ LockError::Held { .. }) => {
                let mut report = JobReport::new(&job, JobResult::Locked);
                report.error = Some(held.to_string());
                return JobOutcome {
                    report,
                    state_errors,
                };
            }
            Err(e) => {
                // Not "locked": the state directory is unusable, so nothing
                // would be recorded; do not replicate blind.
                let mut report = JobReport::new(&job, JobResult::Failed);
                report.error = Some(e.to_string());
                state_errors.push(StateError::Lock(e));
                return JobOutcome {
                    report,
                    state_errors,
                };
            }
        }
    };
    let book = Arc::new(load_book(state, &job));
    let mut report = replicate_job(&ctx, book.clone()).await;
    report.duration_secs = started.elapsed().as_secs_f64();
    if !ctx.options.dry_run {
        if let Err(e) = record(&ctx, state, &report, &book) {
            state_errors.push(e);
        }
    }
    JobOutcome {
        report,
        state_errors,
    }
}

/// The job's tripwire book; an unreadable one is logged and replaced (the
/// history starts again, which delays the tripwire, never the push).
fn load_book(state: &StateFiles, job: &str) -> tripwire::Book {
    tripwire::Book::load(&state.state_dir, job).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "the tripwire's history is unreadable; starting a new one");
        tripwire::Book {
            job: job.into(),
            ..Default::default()
        }
    })
}

/// Lists, snapshots and replicates; the report without duration.
async fn replicate_job<P: Pool + 'static, D: DrNode + 'static>(
    ctx: &Arc<JobContext<P, D>>,
    book: Arc<tripwire::Book>,
) -> JobReport {
    let job = &ctx.job;
    let mut report = JobReport::new(&job.name, JobResult::Failed);
    // the tree and the source's demotion marker in one query
    let listed = ctx
        .pool
        .datasets_with_property(&job.source, job.recursive, fjord_config::DEMOTED_PROP)
        .await;
    let (datasets, marker) = match listed {
        Ok((d, _)) if d.is_empty() => {
            report.error = Some(format!(
                "the source dataset {} does not exist: check source in the config",
                job.source
            ));
            return report;
        }
        Ok(listed) => listed,
        Err(e) => {
            report.error = Some(format!("listing {} and its children: {e}", job.source));
            return report;
        }
    };
    if let Some(why) = demoted(&job.source, marker.as_deref()) {
        report.error = Some(why);
        return report;
    }
    let mut post_error = None;
    if !ctx.options.dry_run {
        let (taken, post) = snapshot_with_hooks(ctx).await;
        post_error = post;
        match taken {
            Ok(short) => report.snapshot = Some(short),
            Err(e) => {
                report.error = Some(match post_error {
                    Some(p) => format!("{e}; and {p}"),
                    None => e,
                });
                return report;
            }
        }
    }
    if ctx.job.recursive && !ctx.options.dry_run {
        let (renamed, warnings) = crate::renamed::follow_renames(ctx.as_ref(), &datasets).await;
        report.renamed = renamed;
        report.warnings.extend(warnings);
    }
    let reports = replicate_tree(ctx.clone(), datasets.clone(), book).await;
    let root_replicated = reports.first().is_some_and(|r| {
        matches!(
            r.result,
            DatasetResult::Ok | DatasetResult::UpToDate | DatasetResult::Planned
        )
    });
    summarize(&mut report, reports, ctx.options.dry_run);
    if ctx.job.recursive && root_replicated {
        match crate::removed::handle_removed(ctx.as_ref(), &datasets).await {
            Ok(removed) => {
                report.warnings.extend(removed.iter().map(|r| r.warning()));
                report.removed = removed;
            }
            Err(w) => report.warnings.push(w),
        }
    }
    if let Some(p) = post_error {
        // The snapshot and its replication stand; the job still fails, as
        // the application may be left frozen or locked.
        if matches!(report.result, JobResult::Ok) {
            report.result = JobResult::Failed;
        }
        report.error = Some(match report.error.take() {
            Some(e) => format!("{e}; {p}"),
            None => p,
        });
    }
    report
}

/// Why this job must not snapshot or send its source: it was demoted
/// (`fjord-recv demote`, failback) and receives from the promoted copy now.
/// `value` is the source's `fjord:demoted` (`None` when unset).
fn demoted(source: &str, value: Option<&str>) -> Option<String> {
    use fjord_config::DEMOTED_PROP;
    let value = value?.trim();
    (!value.is_empty() && value != "-").then(|| {
        format!(
            "{source} was demoted ({DEMOTED_PROP}={value}): it receives from the promoted copy now and is not snapshotted or sent; `fjord-recv promote {source}` makes it the primary again (README, \"Game day\")"
        )
    })
}

/// The pre-snapshot hooks, the snapshot with what they recorded, and the
/// post-snapshot hooks (whenever the pre step ran). Returns the snapshot
/// taken (or why none was) and the post step's failure, if any.
async fn snapshot_with_hooks<P: Pool, D: DrNode>(
    ctx: &JobContext<P, D>,
) -> (Result<String, String>, Option<String>) {
    let job = &ctx.job;
    let short = snapname::format_snapshot_name(&job.snapshot_prefix, ctx.options.now_unix);
    let taken = match ctx.hooks.pre_snapshot(&job.name).await {
        Err(e) => Err(format!(
            "the pre-snapshot hook failed, so no snapshot was taken: {e}"
        )),
        Ok(props) => match ctx
            .pool
            .snapshot(&job.source, &short, job.recursive, &props)
            .await
        {
            Ok(()) => {
                tracing::info!(snapshot = %short, ?props, "snapshot taken");
                Ok(short)
            }
            Err(e) => Err(snapshot_error(&job.source, &short, &e)),
        },
    };
    let post = ctx
        .hooks
        .post_snapshot(&job.name, taken.as_deref().ok())
        .await
        .err()
        .map(|e| format!("the post-snapshot hook failed: {e}"));
    (taken, post)
}

fn snapshot_error(source: &str, short: &str, e: &PoolError) -> String {
    format!("taking snapshot {source}@{short}: {e}")
}

/// Fills the job's totals and result from its datasets'.
fn summarize(report: &mut JobReport, datasets: Vec<DatasetReport>, dry_run: bool) {
    report.datasets = datasets.len();
    let mut diverged = false;
    let mut promoted = false;
    let mut errors = Vec::new();
    for d in &datasets {
        report.bytes += d.bytes;
        report.bytes_resent += d.bytes_resent;
        report.reconnects += d.reconnects;
        match d.result {
            DatasetResult::Ok | DatasetResult::UpToDate | DatasetResult::Planned => {}
            DatasetResult::Diverged => {
                diverged = true;
                report.failed += 1;
            }
            DatasetResult::Failed => {
                report.failed += 1;
                errors.push(d.source.clone());
            }
            DatasetResult::Promoted => {
                promoted = true;
                report.failed += 1;
            }
            // Counted, but its parent's error says why.
            DatasetResult::Skipped => report.failed += 1,
        }
    }
    report.result = match (report.failed, diverged, dry_run) {
        _ if promoted => JobResult::Promoted,
        (0, _, true) => JobResult::DryRun,
        (0, _, false) => JobResult::Ok,
        (_, true, _) if errors.is_empty() => JobResult::Diverged,
        _ => JobResult::Failed,
    };
    if report.failed > 0 {
        report.error = Some(format!(
            "{} of {} datasets did not replicate ({}); each dataset's error says why",
            report.failed,
            report.datasets,
            datasets
                .iter()
                .filter(|d| !matches!(
                    d.result,
                    DatasetResult::Ok | DatasetResult::UpToDate | DatasetResult::Planned
                ))
                .map(|d| format!("{}: {:?}", d.source, d.result).to_lowercase())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    report.dataset_reports = datasets;
}

/// Replicates parents before children (a child's target needs its
/// parent), up to `parallelism` datasets of one depth at a time. A failed
/// dataset's children are skipped.
async fn replicate_tree<P: Pool + 'static, D: DrNode + 'static>(
    ctx: Arc<JobContext<P, D>>,
    datasets: Vec<String>,
    book: Arc<tripwire::Book>,
) -> Vec<DatasetReport> {
    // the snapshots of the whole tree in one query; if it fails (a dataset
    // vanished since the tree was listed), each dataset lists its own
    let mut listed: HashMap<String, Vec<SnapshotInfo>> = match ctx
        .pool
        .snapshots_many(&datasets)
        .await
    {
        Ok(all) => datasets.iter().cloned().zip(all).collect(),
        Err(e) => {
            tracing::debug!(error = %e, "listing the snapshots of the tree; each dataset lists its own");
            HashMap::new()
        }
    };
    let root_depth = ctx.job.source.matches('/').count();
    let mut by_depth: Vec<Vec<String>> = Vec::new();
    for d in datasets {
        let depth = d.matches('/').count().saturating_sub(root_depth);
        if by_depth.len() <= depth {
            by_depth.resize(depth + 1, Vec::new());
        }
        by_depth[depth].push(d);
    }
    let limit = Arc::new(Semaphore::new(ctx.job.parallelism.max(1)));
    let mut reports: Vec<DatasetReport> = Vec::new();
    let mut failed: BTreeSet<String> = BTreeSet::new();
    for level in by_depth {
        let mut set = JoinSet::new();
        let mut order = Vec::new();
        for source in level {
            let target = ctx.job.target_for(&source);
            let early = match (failed_parent(&failed, &source), &target) {
                (Some(parent), _) => Some(DatasetError::ParentFailed { parent }),
                (None, None) => Some(DatasetError::NoTargetName {
                    target_root: ctx.job.target_dataset.clone(),
                }),
                (None, Some(_)) => None,
            };
            let target = target.unwrap_or_default();
            if let Some(e) = early {
                let mut r = DatasetReport::new(&ctx.job.name, &source, &target);
                fail(&mut r, &e);
                failed.insert(source.clone());
                reports.push(r);
                continue;
            }
            order.push(source.clone());
            let ctx = ctx.clone();
            let limit = limit.clone();
            let book = book.clone();
            let src = listed.remove(&source);
            set.spawn(async move {
                let _permit = limit.acquire_owned().await;
                replicate_dataset(&ctx, &source, &target, &book, src).await
            });
        }
        let mut level_reports = Vec::new();
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(r) => level_reports.push(r),
                // A panic in a dataset's task: its source is unknown here,
                // so it is reported as missing below.
                Err(e) => tracing::error!(error = %e, "a dataset's task failed"),
            }
        }
        for source in order {
            match level_reports.iter().position(|r| r.source == source) {
                Some(i) => {
                    let r = level_reports.swap_remove(i);
                    if !matches!(
                        r.result,
                        DatasetResult::Ok | DatasetResult::UpToDate | DatasetResult::Planned
                    ) {
                        failed.insert(source);
                    }
                    reports.push(r);
                }
                None => {
                    let mut r = DatasetReport::new(&ctx.job.name, &source, "");
                    r.error = Some("internal error: its task ended without a report".into());
                    failed.insert(source);
                    reports.push(r);
                }
            }
        }
    }
    reports
}

fn failed_parent(failed: &BTreeSet<String>, source: &str) -> Option<String> {
    failed
        .iter()
        .find(|f| {
            source.len() > f.len()
                && source.starts_with(f.as_str())
                && source.as_bytes()[f.len()] == b'/'
        })
        .cloned()
}

/// Writes the job's status and, if configured, the metrics file.
fn record<P: Pool, D: DrNode>(
    ctx: &JobContext<P, D>,
    state: &StateFiles,
    report: &JobReport,
    book: &tripwire::Book,
) -> Result<(), StateError> {
    let job = &ctx.job.name;
    let attempt = ctx.options.now_unix;
    let status_error = |cause| StateError::Status {
        job: job.clone(),
        state_dir: state.state_dir.clone(),
        cause,
    };
    // A corrupt previous status is replaced, not fatal.
    let previous = status::load(&state.state_dir, job).ok().flatten();
    let ok = report.result == JobResult::Ok;
    let replicated = report
        .dataset_reports
        .iter()
        .map(|d| d.replicated_creation)
        .collect::<Option<Vec<i64>>>()
        .and_then(|times| times.into_iter().min());
    let st = JobStatus {
        job: job.clone(),
        last_attempt: attempt,
        last_success: if ok {
            Some(attempt)
        } else {
            previous.as_ref().and_then(|p| p.last_success)
        },
        last_result: match report.result {
            JobResult::Ok | JobResult::DryRun => status::result::OK,
            JobResult::Diverged => status::result::DIVERGED,
            JobResult::Locked | JobResult::Failed | JobResult::Promoted => status::result::FAILED,
        }
        .to_string(),
        last_error: report.error.clone(),
        bytes: report.bytes,
        bytes_resent: report.bytes_resent,
        duration_secs: report.duration_secs,
        newest_replicated_snapshot_time: replicated
            .or(previous.and_then(|p| p.newest_replicated_snapshot_time)),
        warnings: report.warnings.clone(),
    };
    status::save(&state.state_dir, &st).map_err(status_error)?;
    if report.dataset_reports.iter().any(|d| d.tripwire.is_some()) {
        let mut book = book.clone();
        book.record(&report.dataset_reports, ctx.job.tripwire.history);
        book.save(&state.state_dir).map_err(status_error)?;
    }
    if let Some(path) = &state.metrics_file {
        write_metrics(&state.state_dir, path, attempt)?;
    }
    Ok(())
}

/// Writes the metrics file from every status (and tripwire) file in
/// `state_dir`.
pub(crate) fn write_metrics(state_dir: &Path, path: &Path, now: i64) -> Result<(), StateError> {
    let all = status::load_all(state_dir).unwrap_or_default();
    let mut text = metrics::render_prometheus(&all, now);
    text.push_str(&tripwire::book::render_metrics(&tripwire::book::load_all(
        state_dir,
    )));
    metrics::write_textfile(path, &text).map_err(|cause| StateError::Metrics {
        path: path.into(),
        cause,
    })
}

/// What a run of one or more jobs comes to, worst last; `fjord-send`
/// maps it to its exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    /// Every job succeeded, had nothing to do, or was a dry run.
    Ok,
    /// Some job was skipped because another run holds its lock; the
    /// others succeeded.
    Locked,
    /// A job failed or found its target diverged.
    Failed,
    /// A job's target was promoted on the DR node: this primary is fenced
    /// off (failover happened; fail back before pushing again).
    Promoted,
    /// Local state (lock file, status, metrics) could not be kept: the
    /// next run and monitoring cannot see what happened.
    StateLost,
}

/// The worst of the outcomes.
pub fn verdict<'a>(outcomes: impl IntoIterator<Item = &'a JobOutcome>) -> Verdict {
    outcomes
        .into_iter()
        .map(|o| {
            if !o.state_errors.is_empty() {
                return Verdict::StateLost;
            }
            match o.report.result {
                JobResult::Ok | JobResult::DryRun => Verdict::Ok,
                JobResult::Locked => Verdict::Locked,
                JobResult::Diverged | JobResult::Failed => Verdict::Failed,
                JobResult::Promoted => Verdict::Promoted,
            }
        })
        .max()
        .unwrap_or(Verdict::Ok)
}

#[cfg(test)]
mod tests {
    #[test]
    fn only_a_set_marker_means_demoted() {
        assert_eq!(super::demoted("tank/a", None), None);
        assert_eq!(super::demoted("tank/a", Some("-")), None);
        assert_eq!(super::demoted("tank/a", Some("  ")), None);
        let why = super::demoted("tank/a", Some("2026-12-03T12:13:20Z @fjord_x")).unwrap();
        assert!(
            why.starts_with("tank/a was demoted (fjord:demoted=2026-12-03T12:13:20Z @fjord_x)"),
            "{why}"
        );
    }
}
