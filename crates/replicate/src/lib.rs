//! # fjord-replicate
//!
//! A push from start to finish, as a library: lock, snapshot, plan, send,
//! hold and release the base, prune, status and metrics. It talks to the
//! world only through two traits, the primary's pool ([`Pool`]) and the DR
//! node ([`DrNode`]); [`edge`] holds their real implementations (the `zfs`
//! CLI, fjord's QUIC transport) and [`fake`] in-memory ones for tests.
//! `fjord-send push` only parses its arguments, loads the config and calls
//! [`run_job`].
//!
//! - [`plan`]: what to send to bring a target up to date ([`plan::plan`],
//!   pure).
//! - [`dataset`]: one dataset's push, over the traits.
//! - [`job`]: a job's lock, snapshot, tree, status and metrics.
//! - [`fanout`]: a job's targets (several DR nodes, or none), each
//!   replicated at its own pace, and the source's retention once for all.
//! - [`removed`]: children destroyed on the primary, found on the DR
//!   node, reported, and destroyed there when its policy allows.
//! - [`report`]: what happened, per dataset and per job (`--json`).
//! - [`lock`], [`status`], [`metrics`]: the job's local state.
//! - [`tripwire`]: the ransomware tripwire (stream meter, verdict, alarm).
#![warn(missing_docs)]

pub mod check;
pub mod crypt;
pub mod dataset;
pub mod dr_node;
pub mod edge;
pub mod fake;
pub mod fanout;
pub mod hooks;
pub mod job;
pub mod lock;
pub mod metrics;
pub mod plan;
pub mod pool;
pub mod removed;
pub mod renamed;
pub mod report;
pub mod status;
pub mod switchover;
pub mod tripwire;

pub use dataset::DatasetError;
pub use dr_node::{DrError, DrNode, SnapshotRef, Transfer, TransferStats};
pub use hooks::{HookError, Hooks, NoHooks};
pub use job::{run_job, verdict, JobOutcome, StateError, StateFiles, Verdict};
pub use lock::{JobLock, LockError};
pub use plan::{Plan, PlanError, Planned, TargetState};
pub use pool::{Pool, PoolError, SendStream};
pub use report::{DatasetReport, DatasetResult, JobReport, JobResult};
pub use status::JobStatus;

use fjord_config::{Job, Target};

/// How this run was asked to behave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunOptions {
    /// `--force`: roll a diverged target back (the DR node's policy still
    /// decides).
    pub force: bool,
    /// `--dry-run`: plan only; no snapshot, no lock, no status.
    pub dry_run: bool,
    /// The time of this run (Unix seconds): the snapshot's name and the
    /// status's attempt time.
    pub now_unix: i64,
}

/// One DR node of a job: its configured target and the node to talk to.
pub struct TargetNode<D> {
    /// The target as configured (name, dataset, hold tag).
    pub target: Target,
    /// The DR node.
    pub dr: D,
}

/// Pairs the job's targets ([`Job::targets`]) with their DR nodes, in
/// order; a node without a target (or a target without a node) is dropped,
/// so callers build one node per target.
pub fn target_nodes<D>(job: &Job, nodes: impl IntoIterator<Item = D>) -> Vec<TargetNode<D>> {
    job.targets()
        .into_iter()
        .zip(nodes)
        .map(|(target, dr)| TargetNode { target, dr })
        .collect()
}

/// Everything a job's datasets share.
pub struct JobContext<P, D> {
    /// The primary's pool.
    pub pool: P,
    /// The DR nodes, one per target of the job ([`target_nodes`]); none
    /// for a snapshot-only job.
    pub targets: Vec<TargetNode<D>>,
    /// The job, as configured.
    pub job: Job,
    /// This run's options.
    pub options: RunOptions,
    /// What runs around the snapshot ([`NoHooks`] for none).
    pub hooks: std::sync::Arc<dyn Hooks>,
}

impl<P, D> JobContext<P, D> {
    /// The hold tags of all the job's targets: a source snapshot carrying
    /// any of them is some target's replication base.
    pub fn hold_tags(&self) -> Vec<String> {
        self.targets
            .iter()
            .map(|t| t.target.hold_tag(&self.job.name))
            .collect()
    }

    /// The view of target `i` (panics if out of range: callers iterate
    /// over `targets`).
    pub fn leg(&self, i: usize) -> Leg<'_, P, D> {
        let node = &self.targets[i];
        Leg {
            pool: &self.pool,
            dr: &node.dr,
            target: &node.target,
            job: &self.job,
            options: self.options,
        }
    }
}

/// A job as one of its targets sees it: what a dataset's push to that
/// target needs.
pub struct Leg<'a, P, D> {
    /// The primary's pool.
    pub pool: &'a P,
    /// This target's DR node.
    pub dr: &'a D,
    /// This target.
    pub target: &'a Target,
    /// The job, as configured.
    pub job: &'a Job,
    /// This run's options.
    pub options: RunOptions,
}

impl<P, D> Leg<'_, P, D> {
    /// The hold tag protecting this target's replication base on the
    /// source.
    pub fn hold_tag(&self) -> String {
        self.target.hold_tag(&self.job.name)
    }

    /// Where the source dataset `source_child` lands on this target.
    pub fn target_for(&self, source_child: &str) -> Option<String> {
        self.target.target_for(&self.job.source, source_child)
    }
}
