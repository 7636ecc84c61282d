//! The DR node's own retention: which of a target's snapshots the DR node
//! prunes, by the counts in `recv.toml`, whatever the senders' configs say.
//!
//! Counted like the sender's retention (`fjord_config::retention`): only
//! snapshots named `{snapshot_prefix}_{time}` are candidates. Never pruned:
//! the newest snapshot (the base the sender needs for its next
//! incremental), anything younger than `min_age`, and anything carrying a
//! hold other than the DR node's own.

use crate::TargetSnapshot;
use fjord_config::retention::{plan_pruning, Retention};
use fjord_zfs::SnapshotInfo;
use std::time::Duration;

/// The snapshots (short names, oldest first) the DR node prunes from a
/// target with `snapshots`, at Unix time `now`.
pub fn plan(
    snapshots: &[TargetSnapshot],
    snapshot_prefix: &str,
    keep: &Retention,
    min_age: Duration,
    now: i64,
) -> Vec<String> {
    let infos: Vec<SnapshotInfo> = snapshots
        .iter()
        .map(|s| SnapshotInfo {
            name: s.name.clone(),
            guid: s.guid,
            createtxg: s.createtxg,
            creation: s.creation,
        })
        .collect();
    let min_age = i64::try_from(min_age.as_secs()).unwrap_or(i64::MAX);
    let protected: Vec<u64> = snapshots
        .iter()
        .filter(|s| !s.foreign_holds.is_empty() || now.saturating_sub(s.creation) < min_age)
        .map(|s| s.guid)
        .collect();
    plan_pruning(&infos, snapshot_prefix, keep, &protected)
        .into_iter()
        .map(|s| s.name)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_zfs::snapname::format_snapshot_name;

    const HOUR: i64 = 3600;
    const NOW: i64 = 1_767_571_200;

    fn snaps(hours_ago: &[i64]) -> Vec<TargetSnapshot> {
        hours_ago
            .iter()
            .enumerate()
            .map(|(i, &h)| TargetSnapshot {
                name: format_snapshot_name("fjord", NOW - h * HOUR),
                guid: 1 + i as u64,
                createtxg: 1 + i as u64,
                creation: NOW - h * HOUR,
                foreign_holds: Vec::new(),
            })
            .collect()
    }

    #[test]
    fn keeps_the_counts_the_young_the_held_and_the_newest() {
        // Hourly snapshots 400..=0 hours old; keep 2 hourly, min_age 1 week.
        let hours: Vec<i64> = (0..=400).rev().collect();
        let mut s = snaps(&hours);
        s[0].foreign_holds = vec!["legal".into()];
        let keep = Retention {
            hourly: 2,
            ..Retention::default()
        };
        let doomed = plan(&s, "fjord", &keep, Duration::from_secs(7 * 24 * 3600), NOW);
        // Everything 168 hours or older goes but the held oldest.
        let expected: Vec<String> = s[1..]
            .iter()
            .filter(|x| NOW - x.creation >= 168 * HOUR)
            .map(|x| x.name.clone())
            .collect();
        assert_eq!(doomed, expected);
        // min_age 0: only the two newest hours remain (and the held one).
        let doomed = plan(&s, "fjord", &keep, Duration::ZERO, NOW);
        assert_eq!(doomed.len(), s.len() - 3);
        assert!(!doomed.contains(&s[400].name));
    }

    #[test]
    fn other_snapshots_are_never_candidates() {
        let mut s = snaps(&[500, 400, 300]);
        s[0].name = "manual".into();
        let keep = Retention {
            hourly: 1,
            ..Retention::default()
        };
        let doomed = plan(&s, "fjord", &keep, Duration::ZERO, NOW);
        assert_eq!(doomed, vec![s[1].name.clone()]);
    }
}
