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
//! - [`demote`]: failback's first step: the old primary keeps its
//!   diverged writes aside and becomes a receive target again.
//! - [`promote`]: failover: the plan that makes a copy the primary, and
//!   the fence that refuses pushes into a promoted copy.
//! - [`removed`]: may this client destroy a whole copy whose source was
//!   destroyed on the primary? Only with `allow_destroy_removed`, and
//!   only what pruning could take snapshot by snapshot.
//! - [`renamed`]: may this client rename a copy after its source, renamed
//!   on the primary? Only with `allow_rename`, within its prefixes, never
//!   onto an existing dataset.
//! - [`retention`]: the DR node's own pruning plan, by its own counts.
//! - [`status`]: how fresh each copy is, as the DR node itself sees it
//!   (report, Prometheus textfile, Nagios-style check).
#![warn(missing_docs)]

pub mod demote;
pub mod drill;
pub mod policy;
pub mod promote;
pub mod removed;
pub mod renamed;
pub mod retention;
pub mod serve_metrics;
pub mod status;
pub mod tripwire;

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

/// A target's snapshots as the DR node sees them, from `zfs list` and
/// `zfs holds` (`(full snapshot name, tag)` pairs): each snapshot with its
/// foreign holds, and the short names of those the DR node holds.
pub fn target_snapshots(
    infos: &[fjord_zfs::SnapshotInfo],
    holds: Vec<(String, String)>,
) -> (Vec<TargetSnapshot>, Vec<String>) {
    let mut dr_held = Vec::new();
    let mut foreign: std::collections::HashMap<String, Vec<String>> = Default::default();
    for (snap, tag) in holds {
        let short = snap.rsplit('@').next().unwrap_or_default().to_string();
        if tag == DR_HOLD_TAG {
            dr_held.push(short);
        } else {
            foreign.entry(short).or_default().push(tag);
        }
    }
    let snapshots = infos
        .iter()
        .map(|s| {
            let mut t = TargetSnapshot::from_info(s);
            t.foreign_holds = foreign.remove(&s.name).unwrap_or_default();
            t
        })
        .collect();
    (snapshots, dr_held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_split_into_the_dr_nodes_and_foreign_ones_per_snapshot() {
        let info = |name: &str, guid| fjord_zfs::SnapshotInfo {
            name: name.into(),
            guid,
            createtxg: guid,
            creation: 0,
        };
        let holds = vec![
            ("backup/fs@a".to_string(), DR_HOLD_TAG.to_string()),
            ("backup/fs@a".to_string(), "legal".to_string()),
            ("backup/fs@b".to_string(), "keep".to_string()),
        ];
        let (snaps, dr_held) = target_snapshots(&[info("a", 1), info("b", 2), info("c", 3)], holds);
        assert_eq!(dr_held, ["a"]);
        let foreign: Vec<&[String]> = snaps.iter().map(|s| &s.foreign_holds[..]).collect();
        assert_eq!(
            foreign,
            [&["legal".to_string()][..], &["keep".to_string()], &[]]
        );
        assert_eq!(snaps[2].guid, 3);
    }
}
