//! # fjord-replicate
//!
//! The logic of `fjord-send push` (snapshot, plan, send, prune; run from
//! cron) and the receiver's config, as pure functions around thin I/O:
//!
//! - [`config`]: [`SendConfig`] and [`RecvConfig`], loaded and checked.
//! - [`plan`]: what to send to bring a target up to date ([`plan::plan`]).
//! - [`retention`]: which of fjord's snapshots to destroy
//!   ([`retention::plan_pruning`]).
//! - [`lock`]: one run of a job at a time ([`JobLock`]).
//! - [`status`] and [`metrics`]: each job's last run, as JSON and as
//!   Prometheus text.
//! - [`exit_code`]: the exit codes of `fjord-send push`.
//!
//! The `zfs` side (names, snapshots, commands) is `fjord-zfs`.
//!
#![warn(missing_docs)]

pub mod lock;
pub mod metrics;
pub mod plan;
pub mod status;

pub use lock::{JobLock, LockError};
pub use plan::{Plan, PlanError, Planned, TargetState};
pub use status::JobStatus;

/// Exit codes of `fjord-send push`, continuing those of `fjord-cli`
/// (0 ok, 1 invalid stream, 3 I/O error).
pub mod exit_code {
    /// Every job succeeded (or had nothing to do).
    pub const OK: u8 = 0;
    /// At least one job failed or found its target diverged; the status
    /// files and the log say which and why.
    pub const JOB_FAILED: u8 = 4;
    /// The config file is missing or invalid; nothing was run.
    pub const CONFIG_ERROR: u8 = 5;
    /// Every requested job was already running (an overlapping cron run
    /// skipped them).
    pub const LOCKED: u8 = 6;
}
