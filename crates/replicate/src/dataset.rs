//! One dataset of a push: ask the DR node what the target has, plan (full,
//! incremental, resume, or nothing), send, hold the new base, then prune on
//! both sides. The decisions are [`crate::plan::plan`] and
//! [`fjord_config::retention::plan_pruning`] (pure); this module carries
//! them out over the [`Pool`] and [`DrNode`] traits.

use crate::dr_node::{DrError, DrNode, SnapshotRef, Transfer};
use crate::plan::{plan, Plan, PlanError};
use crate::pool::{Pool, PoolError};
use crate::report::{Action, DatasetReport, DatasetResult, Step};
use crate::{tripwire, Leg};
use fjord_config::retention::plan_pruning;
use fjord_zfs::{SendKind, SendSpec, SnapshotInfo};
use std::time::Instant;
use thiserror::Error;

/// Why a dataset's push failed. Each names the dataset and what to do.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DatasetError {
    /// The source's snapshots could not be listed.
    #[error("listing the snapshots of {dataset}: {cause}")]
    ListSource {
        /// The source dataset.
        dataset: String,
        /// What `zfs` said.
        cause: PoolError,
    },
    /// The DR node did not say what the target has.
    #[error("asking the DR node about {target}: {cause}")]
    TargetState {
        /// The target dataset.
        target: String,
        /// Why.
        cause: DrError,
    },
    /// No plan can be made (diverged target, unrelated target, bad token).
    #[error("{source_dataset} -> {target}: {cause}")]
    Plan {
        /// The source dataset.
        source_dataset: String,
        /// The target dataset.
        target: String,
        /// The planner's reason, with what to do.
        cause: PlanError,
    },
    /// The stale resume token could not be discarded.
    #[error("discarding the stale resume token of {target}: {cause}")]
    AbortResume {
        /// The target dataset.
        target: String,
        /// Why.
        cause: DrError,
    },
    /// `--force` found a diverged target but nothing new to send.
    #[error("{target} diverged after @{common}; --force would roll it back, but there is nothing new to send: run the push again")]
    NothingToSend {
        /// The target dataset.
        target: String,
        /// The common snapshot.
        common: String,
    },
    /// The snapshot a resume token names is gone from the source.
    #[error("the snapshot that the resume token of {target} resumes vanished from the source during the push; run the push again")]
    ResumeSnapshotVanished {
        /// The target dataset.
        target: String,
    },
    /// `zfs send` did not start.
    #[error("starting zfs send of {source_dataset}: {cause}")]
    StartSend {
        /// The source dataset.
        source_dataset: String,
        /// What `zfs` said.
        cause: PoolError,
    },
    /// The transfer failed. A resumable partial receive is left on the
    /// target if the stream got that far; the next push resumes it.
    #[error("{source_dataset} -> {target}: {step} failed: {cause}")]
    Transfer {
        /// The source dataset.
        source_dataset: String,
        /// The target dataset.
        target: String,
        /// The step, for the operator.
        step: String,
        /// Why.
        cause: DrError,
    },
    /// Not tried: a parent dataset failed (a child's target needs its
    /// parent's).
    #[error("skipped: its parent {parent} failed")]
    ParentFailed {
        /// The failed parent.
        parent: String,
    },
    /// The source child's target name is not a valid dataset name.
    #[error("no valid target name below {target_root} for it (too long?)")]
    NoTargetName {
        /// The job's `target_dataset`.
        target_root: String,
    },
    /// The target kept moving: several transfers did not bring it up to
    /// date.
    #[error("{target} is still not up to date after {passes} transfers; run the push again")]
    TooManyPasses {
        /// The target dataset.
        target: String,
        /// Transfers tried.
        passes: usize,
    },
}

impl DatasetError {
    /// The target was promoted on the DR node: this primary is fenced off.
    pub fn is_promoted(&self) -> bool {
        matches!(
            self,
            DatasetError::TargetState {
                cause: DrError::Promoted(_),
                ..
            } | DatasetError::AbortResume {
                cause: DrError::Promoted(_),
                ..
            } | DatasetError::Transfer {
                cause: DrError::Promoted(_),
                ..
            }
        )
    }

    /// The target diverged: an operator must look (and maybe `--force`).
    pub fn is_diverged(&self) -> bool {
        matches!(
            self,
            DatasetError::Plan {
                cause: PlanError::Diverged { .. },
                ..
            }
        )
    }
}

/// Passes of plan-and-send: a resume, then the catch-up to the newest
/// snapshot, with room for a stale token discarded first.
const MAX_PASSES: usize = 4;

/// Replicates `source` to `target` until the target has the source's
/// newest snapshot, then prunes. Never fails outright: the report says
/// what happened.
/// `listed`: the source's snapshots if the job listed them already (one
/// query for the whole tree); the first pass uses them instead of listing
/// again.
pub(crate) async fn replicate_dataset<P: Pool, D: DrNode>(
    ctx: &Leg<'_, P, D>,
    source: &str,
    target: &str,
    book: &tripwire::Book,
    listed: Option<Vec<SnapshotInfo>>,
) -> DatasetReport {
    let started = Instant::now();
    let mut report = DatasetReport::new(&ctx.job.name, source, target);
    report.target_name = Some(ctx.target.label().to_string());
    let outcome = carry_out(ctx, source, target, &mut report, listed).await;
    match outcome {
        Ok(src) => {
            if !ctx.options.dry_run {
                // The source's own retention runs once for every target,
                // after all of them (crate::fanout), from this verdict.
                judge_push(ctx, source, book, &mut report);
                prune_target(ctx, target, &mut report, &src).await;
            }
        }
        Err(e) => fail(&mut report, &e),
    }
    report.duration_secs = started.elapsed().as_secs_f64();
    report
}

/// The tripwire's verdict on this push (into the report, with a warning
/// when it trips or pauses source-side pruning).
fn judge_push<P, D>(
    ctx: &Leg<'_, P, D>,
    source: &str,
    book: &tripwire::Book,
    report: &mut DatasetReport,
) {
    let config = &ctx.job.tripwire;
    let snapshot = report.replicated.clone().unwrap_or_default();
    let now = ctx.options.now_unix;
    report.tripwire = tripwire::assess(config, book, source, report.figures, now, &snapshot);
    if let Some(t) = report.tripwire.as_ref() {
        if t.judgement.verdict == tripwire::Verdict::Tripped {
            report.warnings.push(format!(
                "tripwire: {}; acknowledge with fjord-send tripwire ack {}",
                t.judgement.reason, ctx.job.name
            ));
        }
    }
    let paused = report.tripwire.as_ref().map_or_else(
        || tripwire::pruning_paused(config, book, source),
        |t| t.pruning_paused,
    );
    if paused && ctx.job.retention.source.is_some() {
        report.warnings.push(format!(
            "source pruning paused by the tripwire until fjord-send tripwire ack {}",
            ctx.job.name
        ));
    }
}

/// Marks `report` as failed (or diverged) by `error`.
pub(crate) fn fail(report: &mut DatasetReport, error: &DatasetError) {
    report.result = match error {
        e if e.is_diverged() => DatasetResult::Diverged,
        e if e.is_promoted() => DatasetResult::Promoted,
        DatasetError::ParentFailed { .. } => DatasetResult::Skipped,
        _ => DatasetResult::Failed,
    };
    report.error = Some(error.to_string());
}

/// The snapshot a push (not a dry run) would take now: named as it would
/// be, with a guid no real snapshot has (0), so it never matches a target's.
fn would_take<P: Pool, D: DrNode>(ctx: &Leg<'_, P, D>) -> SnapshotInfo {
    SnapshotInfo {
        name: fjord_zfs::snapname::format_snapshot_name(
            &ctx.job.snapshot_prefix,
            ctx.options.now_unix,
        ),
        guid: 0,
        createtxg: 0,
        creation: ctx.options.now_unix,
    }
}

async fn carry_out<P: Pool, D: DrNode>(
    ctx: &Leg<'_, P, D>,
    source: &str,
    target: &str,
    report: &mut DatasetReport,
    mut listed: Option<Vec<SnapshotInfo>>,
) -> Result<Vec<SnapshotInfo>, DatasetError> {
    let dry_run = ctx.options.dry_run;
    let mut sent_any = false;
    for pass in 0..MAX_PASSES {
        let mut src = match listed.take() {
            Some(src) => src,
            None => ctx
                .pool
                .snapshots(source)
                .await
                .map_err(|cause| DatasetError::ListSource {
                    dataset: source.into(),
                    cause,
                })?,
        };
        if dry_run && src.is_empty() {
            // A first push snapshots a source that has none yet: plan the
            // full send of the snapshot it would take.
            src.push(would_take(ctx));
        }
        let tgt = ctx
            .dr
            .target_state(target)
            .await
            .map_err(|cause| DatasetError::TargetState {
                target: target.into(),
                cause,
            })?;
        let planned =
            plan(&src, &tgt, ctx.job.intermediates, ctx.options.force).map_err(|cause| {
                DatasetError::Plan {
                    source_dataset: source.into(),
                    target: target.into(),
                    cause,
                }
            })?;
        if let Some(stale) = &planned.abort_stale_token {
            tracing::info!(target, reason = %stale, "stale resume token");
            let mut step = Step::new(Action::DiscardStaleToken);
            if !dry_run {
                ctx.dr
                    .abort_resume(target)
                    .await
                    .map_err(|cause| DatasetError::AbortResume {
                        target: target.into(),
                        cause,
                    })?;
                step.done = true;
                report.steps.push(step);
                // The partial state is gone: plan again from what is left.
                continue;
            }
            report.steps.push(step);
        }
        let (spec, transfer, mut step, to) = match &planned.plan {
            Plan::UpToDate { common } => {
                report.replicated = Some(common.name.clone());
                report.replicated_creation = Some(common.creation);
                report.result = if dry_run {
                    DatasetResult::Planned
                } else if sent_any {
                    DatasetResult::Ok
                } else {
                    DatasetResult::UpToDate
                };
                return Ok(src);
            }
            Plan::RollbackOnly { to } => {
                // Every push takes a snapshot first, so only a dry run can
                // find nothing newer than the common snapshot.
                if dry_run {
                    let mut step = Step::new(Action::RollbackOnly);
                    step.to = Some(to.name.clone());
                    report.steps.push(step);
                    report.result = DatasetResult::Planned;
                    return Ok(src);
                }
                return Err(DatasetError::NothingToSend {
                    target: target.into(),
                    common: to.name.clone(),
                });
            }
            other => prepare(ctx, source, target, &src, other)?,
        };
        if dry_run {
            report.steps.push(step);
            report.result = DatasetResult::Planned;
            return Ok(src);
        }
        let resumed = transfer.resume;
        let stats = send_one(ctx, &spec, transfer, &step).await;
        let stats = match stats {
            Ok(s) => s,
            Err(e) => {
                report.steps.push(step);
                return Err(e);
            }
        };
        step.bytes = stats.bytes;
        step.bytes_resent = stats.bytes_resent;
        step.reconnects = stats.reconnects;
        step.done = true;
        if step.action == Action::Incremental {
            if let Some(f) = &stats.figures {
                report.figures.get_or_insert_with(Default::default).add(f);
            }
        }
        report.bytes += stats.bytes;
        report.bytes_resent += stats.bytes_resent;
        report.reconnects += stats.reconnects;
        report.steps.push(step);
        sent_any = true;
        protect_base(ctx, source, &src, &to, report).await;
        report.replicated = Some(to.name.clone());
        report.replicated_creation = Some(to.creation);
        let newest = src.iter().max_by_key(|s| s.createtxg).map(|s| s.guid);
        if !resumed && newest == Some(to.guid) {
            report.result = DatasetResult::Ok;
            return Ok(src);
        }
        tracing::debug!(
            target,
            pass,
            "not yet at the newest snapshot; planning again"
        );
    }
    Err(DatasetError::TooManyPasses {
        target: target.into(),
        passes: MAX_PASSES,
    })
}

/// The `zfs send`, the transfer and the report's step for a plan that sends.
fn prepare<P: Pool, D: DrNode>(
    ctx: &Leg<'_, P, D>,
    source: &str,
    target: &str,
    src: &[SnapshotInfo],
    planned: &Plan,
) -> Result<(SendSpec, Transfer, Step, SnapshotInfo), DatasetError> {
    let job = &ctx.job;
    let flags = |kind| SendSpec {
        kind,
        raw: job.raw,
        compressed: job.compressed,
        large_blocks: job.large_blocks,
        embedded: job.compressed || job.raw,
        properties: job.properties,
    };
    let sref = |s: &SnapshotInfo| SnapshotRef {
        name: s.full_name(source),
        guid: s.guid,
    };
    let transfer = |from: Option<&SnapshotInfo>, to: &SnapshotInfo, rollback, resume| Transfer {
        source: source.into(),
        target: target.into(),
        from: from.map(sref),
        to: sref(to),
        rollback,
        resume,
        size_estimate: None,
        base_txg: from.map(|f| f.createtxg),
        inherit_key: false,
    };
    Ok(match planned {
        Plan::Full { to } => {
            let mut step = Step::new(Action::Full);
            step.to = Some(to.name.clone());
            let spec = flags(SendKind::Full {
                snap: to.full_name(source),
            });
            (spec, transfer(None, to, false, false), step, to.clone())
        }
        Plan::Incremental {
            from,
            to,
            intermediates,
            rollback,
        } => {
            let mut step = Step::new(Action::Incremental);
            step.from = Some(from.name.clone());
            step.to = Some(to.name.clone());
            step.intermediates = *intermediates;
            step.rollback = *rollback;
            let spec = flags(SendKind::Incremental {
                from: from.full_name(source),
                to: to.full_name(source),
                intermediates: *intermediates,
            });
            (
                spec,
                transfer(Some(from), to, *rollback, false),
                step,
                to.clone(),
            )
        }
        Plan::Resume { token, to_guid } => {
            let to = src
                .iter()
                .find(|s| s.guid == *to_guid)
                .cloned()
                .ok_or_else(|| DatasetError::ResumeSnapshotVanished {
                    target: target.into(),
                })?;
            let mut step = Step::new(Action::Resume);
            step.to = Some(to.name.clone());
            // `zfs send -t` takes its flags from the token.
            let spec = SendSpec {
                kind: SendKind::Resume {
                    token: token.clone(),
                },
                raw: false,
                compressed: false,
                large_blocks: false,
                embedded: false,
                properties: false,
            };
            (spec, transfer(None, &to, false, true), step, to)
        }
        // Handled by the caller.
        Plan::UpToDate { common: to } | Plan::RollbackOnly { to } => {
            return Err(DatasetError::NothingToSend {
                target: target.into(),
                common: to.name.clone(),
            })
        }
    })
}

async fn send_one<P: Pool, D: DrNode>(
    ctx: &Leg<'_, P, D>,
    spec: &SendSpec,
    mut transfer: Transfer,
    step: &Step,
) -> Result<crate::dr_node::TransferStats, DatasetError> {
    transfer.size_estimate = ctx.pool.size_estimate(spec).await;
    if spec.raw && !transfer.resume {
        transfer.inherit_key =
            crate::crypt::source_inherits_key(ctx.pool, &ctx.job.source, &transfer.source).await;
    }
    let what = step.describe();
    let source = transfer.source.clone();
    let target = transfer.target.clone();
    tracing::info!(dataset = %source, %target, estimate = transfer.size_estimate, step = %what, "sending");
    let stream = ctx
        .pool
        .send(spec)
        .map_err(|cause| DatasetError::StartSend {
            source_dataset: source.clone(),
            cause,
        })?;
    let stats =
        ctx.dr
            .transfer(transfer, stream)
            .await
            .map_err(|cause| DatasetError::Transfer {
                source_dataset: source.clone(),
                target: target.clone(),
                step: what,
                cause,
            })?;
    tracing::info!(
        dataset = %source,
        bytes = stats.bytes,
        bytes_resent = stats.bytes_resent,
        reconnects = stats.reconnects,
        "sent"
    );
    Ok(stats)
}

/// Holds the new base so that pruning (ours or anyone's `zfs destroy`)
/// cannot remove it, then releases the job's tag on older snapshots. Only
/// after the transfer succeeded; failures are warnings, as the
/// replication itself succeeded.
async fn protect_base<P: Pool, D: DrNode>(
    ctx: &Leg<'_, P, D>,
    source: &str,
    src: &[SnapshotInfo],
    to: &SnapshotInfo,
    report: &mut DatasetReport,
) {
    let tag = ctx.hold_tag();
    let new = to.full_name(source);
    match ctx.pool.hold(&tag, &new).await {
        Ok(()) => {}
        // A resumed transfer of a snapshot already held.
        Err(e) if e.is_hold_exists() => {}
        Err(e) => {
            // Without the new hold, keep the old one: the base stays protected.
            report
                .warnings
                .push(format!("cannot hold the new base {new}: {e}"));
            return;
        }
    }
    let older: Vec<String> = src
        .iter()
        .filter(|s| s.createtxg < to.createtxg)
        .map(|s| s.full_name(source))
        .collect();
    // one `zfs holds` over all older snapshots, one `zfs release` of the
    // job's tag where it is; a snapshot gone since the listing (one query
    // fails for all) sends it back to one query per snapshot
    let held = match ctx.pool.holds_many(&older).await {
        Ok(pairs) => tagged(&older, &pairs, &tag),
        Err(e) if e.is_not_found() => {
            let mut held = Vec::new();
            for full in &older {
                match ctx.pool.holds(full).await {
                    Ok(tags) if tags.contains(&tag) => held.push(full.clone()),
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => report
                        .warnings
                        .push(format!("cannot read the holds of {full}: {e}")),
                }
            }
            held
        }
        Err(e) => {
            report.warnings.push(format!(
                "cannot read the holds of {}: {e}",
                older.join(", ")
            ));
            return;
        }
    };
    if let Err(e) = ctx.pool.release_many(&tag, &held).await {
        report.warnings.push(format!(
            "cannot release the old base {}: {e}",
            held.join(", ")
        ));
    }
}

/// Which of `snapshots` (in their order) carry `tag`, among the
/// (snapshot, tag) pairs `zfs holds` listed.
fn tagged(snapshots: &[String], pairs: &[(String, String)], tag: &str) -> Vec<String> {
    snapshots
        .iter()
        .filter(|s| pairs.iter().any(|(snap, t)| snap == *s && t == tag))
        .cloned()
        .collect()
}

/// Applies the target's retention after a successful push. The base (the
/// newest snapshot both sides have) is never a candidate. Failures are
/// warnings. `src`: the source's snapshots as the push last listed them.
async fn prune_target<P: Pool, D: DrNode>(
    ctx: &Leg<'_, P, D>,
    target: &str,
    report: &mut DatasetReport,
    src: &[SnapshotInfo],
) {
    let prefix = &ctx.job.snapshot_prefix;
    let Some(policy) = &ctx.job.retention.target else {
        return;
    };
    let tgt = match ctx.dr.target_state(target).await {
        Ok(t) => t,
        Err(e) => {
            report
                .warnings
                .push(format!("not pruning: cannot list {target}: {e}"));
            return;
        }
    };
    let Some(base) = common_base(src, &tgt.snapshots) else {
        return; // nothing replicated yet: prune nothing
    };
    let doomed: Vec<String> = plan_pruning(&tgt.snapshots, prefix, policy, &[base])
        .into_iter()
        .map(|s| s.name)
        .collect();
    if !doomed.is_empty() {
        match ctx.dr.destroy_snapshots(target, &doomed).await {
            Ok(()) => report.pruned_target = doomed,
            Err(e) => report
                .warnings
                .push(format!("could not prune {target}: {e}")),
        }
    }
}

/// The GUID of the newest target snapshot that the source also has.
pub fn common_base(source: &[SnapshotInfo], target: &[SnapshotInfo]) -> Option<u64> {
    target
        .iter()
        .filter(|t| source.iter().any(|s| s.guid == t.guid))
        .max_by_key(|t| t.createtxg)
        .map(|t| t.guid)
}

#[cfg(test)]
mod tests {
    #[test]
    fn tagged_keeps_the_snapshots_with_the_jobs_tag_in_their_order() {
        let snaps: Vec<String> = ["t/a@1", "t/a@2", "t/a@3"].map(String::from).into();
        let pairs: Vec<(String, String)> = [
            ("t/a@3", "fjord-data"),
            ("t/a@1", "fjord-data"),
            ("t/a@2", "keep"),
            ("t/b@2", "fjord-data"),
        ]
        .map(|(s, t)| (s.to_string(), t.to_string()))
        .into();
        assert_eq!(
            super::tagged(&snaps, &pairs, "fjord-data"),
            ["t/a@1", "t/a@3"]
        );
        assert!(super::tagged(&snaps, &[], "fjord-data").is_empty());
    }
}
