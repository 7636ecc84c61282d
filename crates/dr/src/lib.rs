//! # fjord-dr
//!
//! The DR node decides what happens to its data: a client asks, the
//! policy answers. Everything here is a pure function over values (the
//! client's grants, what it asks, the target's snapshots with their holds,
//! the clock), tested without ZFS or sockets; `fjord-recv` runs the
//! answers.
//!
//! - [`policy`]: may this client destroy these snapshots, or roll this
//!   target back? By default no; the operator grants pruning and rollback
//!   per client, and even then nothing younger than `min_age`, nothing
//!   another tag holds, and never the newest snapshot goes.
//! - [`promote`]: failover: the plan that makes a copy the primary, and
//!   the fence that refuses pushes into a promoted copy.
//! - [`retention`]: the DR node's own pruning plan, by its own counts.
//! - [`status`]: how fresh each copy is, as the DR node itself sees it
//!   (report, Prometheus textfile, Nagios-style check).
#![warn(missing_docs)]

pub mod policy;
pub mod promote;
pub mod retention;
pub mod status;

/// The hold tag the DR node places on every snapshot it receives; only the
/// DR node itself releases it (its retention, or a destroy the policy
/// allowed).
pub const DR_HOLD_TAG: &str = "fjord-dr";

/// One snapshot of a target as the DR node sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetSnapshot {
    /// Short name (after '@').
    pub name: String,
    /// Its guid.
    pub guid: u64,
    /// Creation txg: orders the snapshots of one dataset.
    pub createtxg: u64,
    /// Creation time, Unix seconds.
    pub creation: i64,
    /// Hold tags other than [`DR_HOLD_TAG`]: the operator's (or anyone
    /// else's) reasons to keep it.
    pub foreign_holds: Vec<String>,
}

impl TargetSnapshot {
    /// The snapshot without foreign holds.
    pub fn from_info(s: &fjord_zfs::SnapshotInfo) -> TargetSnapshot {
        TargetSnapshot {
            name: s.name.clone(),
            guid: s.guid,
            createtxg: s.createtxg,
            creation: s.creation,
            foreign_holds: Vec::new(),
        }
    }
}
