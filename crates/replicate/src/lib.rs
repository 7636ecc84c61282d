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

use fjord_config::Job;

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

/// Everything a job's datasets share.
pub struct JobContext<P, D> {
    /// The primary's pool.
    pub pool: P,
    /// The DR node.
    pub dr: D,
    /// The job, as configured.
    pub job: Job,
    /// This run's options.
    pub options: RunOptions,
    /// What runs around the snapshot ([`NoHooks`] for none).
    pub hooks: std::sync::Arc<dyn Hooks>,
}

impl<P, D> JobContext<P, D> {
    /// The hold tag protecting this job's replication base on the source.
    pub fn hold_tag(&self) -> String {
        format!("fjord-{}", self.job.name)
    }
}
