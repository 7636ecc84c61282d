//! A planned switchover, from the primary: stop the application's writes,
//! push a final snapshot, ask the DR node to promote its copy to exactly
//! that snapshot, and make this side a replication target. Zero committed
//! writes lost: nothing can be written between the final snapshot and the
//! demotion (the demotion refuses if anything was).
//!
//! Safe to run again after an interruption at any step: a source already
//! demoted is done; a target already promoted skips the push (the final
//! snapshot is the newest one the job's hold protects, i.e. the last one
//! the DR node committed) and the promotion is asked again (the DR node
//! finishes it, or refuses a different recovery point).

use crate::job::{run_job, StateFiles};
use crate::report::JobResult;
use crate::{DrError, DrNode, JobContext, Pool};
use fjord_config::DEMOTED_PROP;
use serde::Serialize;
use std::sync::Arc;

/// A step of a switchover.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    /// The job's `stop_writes` hook.
    StopWrites,
    /// The final snapshot and its push.
    FinalPush,
    /// The DR node promotes its copy to the final snapshot.
    PromoteTarget,
    /// This side becomes a replication target (`fjord:demoted`).
    DemoteSource,
}

/// What a step did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StepReport {
    /// The step.
    pub step: Step,
    /// Carried out (false: planned, skipped or failed).
    pub done: bool,
    /// What happened, in one line.
    pub detail: String,
}

/// How a switchover ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SwitchResult {
    /// The DR node is the primary now; this side is a target.
    Ok,
    /// An earlier run had finished it.
    AlreadyDone,
    /// `--dry-run`: the steps, nothing done.
    DryRun,
    /// A step failed; the report says which, and what state it left.
    Failed,
}

/// A switchover's report (`fjord-send switchover --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SwitchoverReport {
    /// The job.
    pub job: String,
    /// The source on this side.
    pub source: String,
    /// The DR node's copy.
    pub target: String,
    /// The recovery point both sides share afterwards.
    pub final_snapshot: Option<String>,
    /// The steps, in order.
    pub steps: Vec<StepReport>,
    /// How it ended.
    pub result: SwitchResult,
    /// Why it failed, and the state it left.
    pub error: Option<String>,
}

impl SwitchoverReport {
    fn step(&mut self, step: Step, done: bool, detail: impl Into<String>) {
        self.steps.push(StepReport {
            step,
            done,
            detail: detail.into(),
        });
    }

    fn fail(mut self, step: Step, why: String) -> SwitchoverReport {
        self.step(step, false, why.clone());
        self.result = SwitchResult::Failed;
        self.error = Some(why);
        self
    }
}

/// `TIME @SNAPSHOT`, as `fjord-recv demote` writes [`DEMOTED_PROP`].
fn marker(now: i64, snapshot: &str) -> String {
    let t = fjord_zfs::snapname::utc_from_unix(now);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z @{snapshot}",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// Runs the switchover of `ctx.job` (with `ctx.options.dry_run`, only
/// says what it would do).
pub async fn switchover<P: Pool + 'static, D: DrNode + 'static>(
    ctx: Arc<JobContext<P, D>>,
    state: &StateFiles,
) -> SwitchoverReport {
    let job = &ctx.job;
    let target_dataset = ctx
        .targets
        .first()
        .map(|t| t.target.dataset.clone())
        .unwrap_or_default();
    let mut report = SwitchoverReport {
        job: job.name.clone(),
        source: job.source.clone(),
        target: target_dataset.clone(),
        final_snapshot: None,
        steps: Vec::new(),
        result: SwitchResult::Ok,
        error: None,
    };
    if ctx.targets.len() != 1 {
        // Which DR node becomes the primary, and what the others then
        // replicate from, is a decision for an operator, not a default.
        return report.fail(
            Step::FinalPush,
            format!(
                "job {} has {} targets: switchover moves a job with exactly one; nothing was changed. Give the job only the target to switch to (a copy of the job in its own config file, for --config), or promote with fjord-recv promote on that DR node",
                job.name,
                ctx.targets.len()
            ),
        );
    }
    if let Ok(Some(v)) = ctx.pool.property(&job.source, DEMOTED_PROP).await {
        if !v.trim().is_empty() && v.trim() != "-" {
            report.step(
                Step::DemoteSource,
                false,
                format!("{} is already demoted ({DEMOTED_PROP}={v})", job.source),
            );
            report.result = SwitchResult::AlreadyDone;
            return report;
        }
    }
    if ctx.options.dry_run {
        report.step(
            Step::StopWrites,
            false,
            match &job.hooks.stop_writes {
                Some(argv) => format!("would run {}", argv.join(" ")),
                None => {
                    "no stop_writes hook configured: stop the application yourself first".into()
                }
            },
        );
        report.step(
            Step::FinalPush,
            false,
            format!(
                "would snapshot {} and push it to {}",
                job.source, target_dataset
            ),
        );
        report.step(
            Step::PromoteTarget,
            false,
            format!(
                "would ask the DR node to promote {} to that snapshot (its allow_promote grant)",
                target_dataset
            ),
        );
        report.step(
            Step::DemoteSource,
            false,
            format!(
                "would make {} a replication target ({DEMOTED_PROP})",
                job.source
            ),
        );
        report.result = SwitchResult::DryRun;
        return report;
    }
    if let Err(e) = ctx.hooks.stop_writes(&job.name).await {
        return report.fail(
            Step::StopWrites,
            format!("the stop_writes hook failed: {e}; nothing was changed"),
        );
    }
    report.step(
        Step::StopWrites,
        true,
        match &job.hooks.stop_writes {
            Some(argv) => format!("ran {}", argv.join(" ")),
            None => "no stop_writes hook configured".into(),
        },
    );
    let final_snapshot = match final_push(&ctx, state, &mut report).await {
        Ok(s) => s,
        Err(why) => return report.fail(Step::FinalPush, why),
    };
    report.final_snapshot = Some(final_snapshot.clone());
    match ctx.targets[0].dr.promote(&target_dataset, &final_snapshot).await {
        Ok(done) => report.step(Step::PromoteTarget, true, done),
        Err(e) => {
            return report.fail(
                Step::PromoteTarget,
                format!("the DR node did not promote {} to @{final_snapshot}: {e}; this side is unchanged and its writes stay stopped: fix that and run switchover again, or restart the application to call it off", target_dataset),
            )
        }
    }
    let mark = marker(ctx.options.now_unix, &final_snapshot);
    match ctx
        .pool
        .demote(&job.source, job.recursive, &final_snapshot, &mark)
        .await
    {
        Ok(()) => report.step(
            Step::DemoteSource,
            true,
            format!("{} is a replication target now ({DEMOTED_PROP}={mark})", job.source),
        ),
        Err(e) => {
            return report.fail(
                Step::DemoteSource,
                format!("the DR node is the primary now, but {} could not be demoted: {e}; run switchover again to finish", job.source),
            )
        }
    }
    report
}

/// The final push, or (when an earlier run got the target promoted) the
/// snapshot it promoted to: the newest one the job's hold protects.
async fn final_push<P: Pool + 'static, D: DrNode + 'static>(
    ctx: &Arc<JobContext<P, D>>,
    state: &StateFiles,
    report: &mut SwitchoverReport,
) -> Result<String, String> {
    let target_dataset = &ctx.targets[0].target.dataset;
    if let Err(DrError::Promoted(_)) = ctx.targets[0].dr.target_state(target_dataset).await {
        let held = newest_held(ctx).await?;
        report.step(
            Step::FinalPush,
            false,
            format!("skipped: {} is already promoted (an earlier run); its recovery point is @{held}, the newest snapshot this job holds", target_dataset),
        );
        return Ok(held);
    }
    let outcome = run_job(ctx.clone(), state).await;
    let r = &outcome.report;
    match (r.result, &r.snapshot) {
        (JobResult::Ok, Some(s)) => {
            report.step(
                Step::FinalPush,
                true,
                format!("pushed @{s} ({} bytes)", r.bytes),
            );
            Ok(s.clone())
        }
        _ => Err(format!(
            "the final push did not go through ({}): {}; the application's writes stay stopped: fix it and run switchover again, or restart the application to call it off",
            serde_json::to_value(r.result).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default(),
            r.error.clone().unwrap_or_default()
        )),
    }
}

async fn newest_held<P: Pool, D: DrNode>(ctx: &JobContext<P, D>) -> Result<String, String> {
    let source = &ctx.job.source;
    let tag = ctx.leg(0).hold_tag();
    let snaps = ctx
        .pool
        .snapshots(source)
        .await
        .map_err(|e| format!("listing {source}: {e}"))?;
    for s in snaps.iter().rev() {
        let full = s.full_name(source);
        let holds = ctx
            .pool
            .holds(&full)
            .await
            .map_err(|e| format!("the holds of {full}: {e}"))?;
        if holds.contains(&tag) {
            return Ok(s.name.clone());
        }
    }
    Err(format!(
        "the DR node's copy is promoted, but no snapshot of {source} carries the hold {tag}: name the recovery point by hand (fjord-recv demote {source} --base S)"
    ))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_marker_is_what_demote_writes() {
        assert_eq!(
            super::marker(1_796_300_000, "fjord_x"),
            "2026-12-03T12:13:20Z @fjord_x"
        );
    }
}
