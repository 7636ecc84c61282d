//! A job's targets: each DR node replicated at its own pace, and the
//! source's retention applied once for all of them.
//!
//! Targets run concurrently: one that is offline waits out its link's
//! grace period (minutes) without holding the others back, and one that
//! fails leaves the others' results alone. Each target keeps its own base
//! on the source with its own hold tag ([`fjord_config::Target::hold_tag`]);
//! the source is pruned after every target had its turn, never removing a
//! snapshot that any target holds as its base or reached in this run. A
//! job with no target (snapshot-only) only snapshots and prunes.

use crate::job::{replicate_tree, summarize};
use crate::pool::Pool;
use crate::removed::RemovedCopy;
use crate::renamed::RenamedCopy;
use crate::report::{DatasetReport, DatasetResult, JobReport, JobResult, TargetReport};
use crate::{tripwire, DrNode, JobContext};
use fjord_config::retention::plan_pruning;
use fjord_zfs::SnapshotInfo;
use std::collections::BTreeSet;
use std::sync::Arc;
use tokio::task::JoinSet;
use tracing::Instrument;

/// What one target's turn came to.
struct TargetOutcome {
    report: TargetReport,
    datasets: Vec<DatasetReport>,
    removed: Vec<RemovedCopy>,
    renamed: Vec<RenamedCopy>,
    warnings: Vec<String>,
}

/// Replicates the tree to every target of the job, concurrently, and fills
/// `report` (datasets target after target, each target's result, the
/// job's result: the worst target's). A snapshot-only job gets one report
/// per dataset with nothing sent.
pub(crate) async fn replicate_targets<P: Pool + 'static, D: DrNode + 'static>(
    ctx: &Arc<JobContext<P, D>>,
    datasets: &[String],
    book: Arc<tripwire::Book>,
    report: &mut JobReport,
) {
    let dry_run = ctx.options.dry_run;
    report.datasets = datasets.len();
    if ctx.targets.is_empty() {
        report.snapshot_only = true;
        report.dataset_reports = datasets
            .iter()
            .map(|d| {
                let mut r = DatasetReport::new(&ctx.job.name, d, "");
                r.result = if dry_run {
                    DatasetResult::Planned
                } else {
                    DatasetResult::Ok
                };
                r
            })
            .collect();
        report.result = if dry_run {
            JobResult::DryRun
        } else {
            JobResult::Ok
        };
        return;
    }
    let mut set = JoinSet::new();
    for i in 0..ctx.targets.len() {
        let span = tracing::info_span!("target", target = %ctx.targets[i].target.label());
        let ctx = ctx.clone();
        let datasets = datasets.to_vec();
        let book = book.clone();
        set.spawn(async move { (i, one_target(ctx, i, datasets, book).await) }.instrument(span));
    }
    let mut outcomes: Vec<Option<TargetOutcome>> = (0..ctx.targets.len()).map(|_| None).collect();
    while let Some(joined) = set.join_next().await {
        match joined {
            Ok((i, o)) => outcomes[i] = Some(o),
            Err(e) => tracing::error!(error = %e, "a target's task failed"),
        }
    }
    let outcomes = outcomes.into_iter().enumerate().map(|(i, o)| {
        o.unwrap_or_else(|| TargetOutcome {
            report: TargetReport {
                name: ctx.targets[i].target.label().into(),
                result: JobResult::Failed,
                failed: datasets.len(),
                bytes: 0,
                replicated: None,
                replicated_creation: None,
                error: Some("internal error: its task ended without a report".into()),
            },
            datasets: Vec::new(),
            removed: Vec::new(),
            renamed: Vec::new(),
            warnings: Vec::new(),
        })
    });
    combine(report, outcomes.collect());
}

/// One target's turn: its tree, its removed children, its result.
async fn one_target<P: Pool + 'static, D: DrNode + 'static>(
    ctx: Arc<JobContext<P, D>>,
    i: usize,
    datasets: Vec<String>,
    book: Arc<tripwire::Book>,
) -> TargetOutcome {
    // a child renamed on the primary: its copy renamed first, so that the
    // tree below goes on incrementally under the new name
    let (renamed, rename_warnings) = if ctx.job.recursive && !ctx.options.dry_run {
        crate::renamed::follow_renames(&ctx.leg(i), &datasets).await
    } else {
        (Vec::new(), Vec::new())
    };
    let reports = replicate_tree(ctx.clone(), i, datasets.clone(), book).await;
    let ok = |r: &DatasetReport| {
        matches!(
            r.result,
            DatasetResult::Ok | DatasetResult::UpToDate | DatasetResult::Planned
        )
    };
    let root = reports.first().filter(|r| ok(r));
    let replicated = root.and_then(|r| r.replicated.clone());
    let root_replicated = root.is_some();
    let replicated_creation = reports
        .iter()
        .map(|d| d.replicated_creation)
        .collect::<Option<Vec<i64>>>()
        .and_then(|times| times.into_iter().min());
    let mut scratch = JobReport::new(&ctx.job.name, JobResult::Failed);
    summarize(&mut scratch, reports, ctx.options.dry_run);
    let mut outcome = TargetOutcome {
        report: TargetReport {
            name: ctx.targets[i].target.label().into(),
            result: scratch.result,
            failed: scratch.failed,
            bytes: scratch.bytes,
            replicated,
            replicated_creation,
            error: scratch.error,
        },
        datasets: scratch.dataset_reports,
        removed: Vec::new(),
        renamed,
        warnings: rename_warnings,
    };
    if ctx.job.recursive && root_replicated {
        match crate::removed::handle_removed(&ctx.leg(i), &datasets).await {
            Ok(removed) => {
                outcome.warnings.extend(removed.iter().map(|r| r.warning()));
                outcome.removed = removed;
            }
            Err(w) => outcome.warnings.push(w),
        }
    }
    outcome
}

/// The job's totals and result from its targets': the worst target's
/// result; the error names each target that did not succeed (with one
/// target, its error as it is).
fn combine(report: &mut JobReport, outcomes: Vec<TargetOutcome>) {
    let single = outcomes.len() == 1;
    let mut errors = Vec::new();
    report.result = JobResult::Ok;
    for o in outcomes {
        let t = o.report;
        report.result = report.result.max(t.result);
        report.failed += t.failed;
        for d in &o.datasets {
            report.bytes += d.bytes;
            report.bytes_resent += d.bytes_resent;
            report.reconnects += d.reconnects;
        }
        if let Some(e) = &t.error {
            errors.push(if single {
                e.clone()
            } else {
                format!("target {}: {e}", t.name)
            });
        }
        report.dataset_reports.extend(o.datasets);
        report.removed.extend(o.removed);
        report.renamed.extend(o.renamed);
        report.warnings.extend(o.warnings);
        report.targets.push(t);
    }
    if !errors.is_empty() {
        report.error = Some(errors.join("; "));
    }
}

/// Applies the source's retention once, after every target's turn: for
/// each dataset that some target reached in this run (or every dataset of
/// a snapshot-only job), keeping every snapshot a target holds as its base
/// or reached now. Pruned names go to the dataset's first report; failures
/// are warnings there. Nothing is pruned where the holds cannot be read.
pub(crate) async fn prune_source<P: Pool, D>(
    ctx: &JobContext<P, D>,
    datasets: &[String],
    reports: &mut [DatasetReport],
    book: &tripwire::Book,
) {
    let Some(policy) = &ctx.job.retention.source else {
        return;
    };
    let tags = ctx.hold_tags();
    for source in datasets {
        let legs: Vec<&DatasetReport> = reports.iter().filter(|r| &r.source == source).collect();
        let reached = legs
            .iter()
            .any(|r| matches!(r.result, DatasetResult::Ok | DatasetResult::UpToDate));
        if !reached || paused(ctx, &legs, book, source) {
            continue;
        }
        let keep: BTreeSet<String> = legs.iter().filter_map(|r| r.replicated.clone()).collect();
        let mut warnings = Vec::new();
        let mut pruned = Vec::new();
        match ctx.pool.snapshots(source).await {
            Ok(src) => match protected(ctx, source, &src, &tags, &keep).await {
                Ok(protected) => {
                    for s in plan_pruning(&src, &ctx.job.snapshot_prefix, policy, &protected) {
                        let full = s.full_name(source);
                        match ctx.pool.destroy_snapshot(&full).await {
                            Ok(()) => pruned.push(s.name),
                            Err(e) => warnings.push(format!("could not prune {full}: {e}")),
                        }
                    }
                }
                Err(w) => warnings.push(w),
            },
            Err(e) => warnings.push(format!(
                "not pruning {source}: cannot list its snapshots: {e}"
            )),
        }
        if let Some(first) = reports.iter_mut().find(|r| &r.source == source) {
            first.pruned_source = pruned;
            first.warnings.extend(warnings);
        }
    }
}

/// Whether the tripwire pauses the source's pruning of `source`: by any
/// target's verdict in this run, or by the book when nothing was judged.
fn paused<P, D>(
    ctx: &JobContext<P, D>,
    legs: &[&DatasetReport],
    book: &tripwire::Book,
    source: &str,
) -> bool {
    let judged: Vec<bool> = legs
        .iter()
        .filter_map(|r| r.tripwire.as_ref().map(|t| t.pruning_paused))
        .collect();
    if judged.is_empty() {
        tripwire::pruning_paused(&ctx.job.tripwire, book, source)
    } else {
        judged.contains(&true)
    }
}

/// The GUIDs retention must keep on `source`: the snapshots named in
/// `keep` (reached by a target now) and every snapshot carrying one of the
/// job's hold `tags` (a target's base, also one offline now).
async fn protected<P: Pool, D>(
    ctx: &JobContext<P, D>,
    source: &str,
    src: &[SnapshotInfo],
    tags: &[String],
    keep: &BTreeSet<String>,
) -> Result<Vec<u64>, String> {
    let mut guids: Vec<u64> = src
        .iter()
        .filter(|s| keep.contains(&s.name))
        .map(|s| s.guid)
        .collect();
    if tags.is_empty() || src.is_empty() {
        return Ok(guids);
    }
    let names: Vec<String> = src.iter().map(|s| s.full_name(source)).collect();
    let pairs = ctx.pool.holds_many(&names).await.map_err(|e| {
        format!("not pruning {source}: cannot read its holds (the targets' bases): {e}")
    })?;
    guids.extend(
        src.iter()
            .zip(&names)
            .filter(|(_, full)| {
                pairs
                    .iter()
                    .any(|(snap, tag)| snap == *full && tags.contains(tag))
            })
            .map(|(s, _)| s.guid),
    );
    Ok(guids)
}
