//! Copies whose source is gone: a recursive job's child destroyed on the
//! primary leaves its copy on the DR node. The sender reports it and asks
//! the DR node to destroy it; [`decide_destroy_copy`] answers, from the
//! client's grants, the copy's tree as the DR node lists it, and the clock.
//!
//! Why a grant of its own (`allow_destroy_removed`) rather than
//! `allow_prune`: pruning thins a copy's history and always keeps its
//! newest snapshot; destroying a removed child takes the whole copy, and
//! the only evidence that the source is gone is the sender's word. An
//! operator who lets a primary thin history has not thereby let its key
//! erase datasets, so it is off by default and granted on its own.
//!
//! Even granted, a copy goes only when pruning could take each of its
//! snapshots one by one (see [`crate::policy`]): every snapshot, in the
//! copy and below it, is the client's own, older than `min_age` and held by
//! no one but the DR node, and the copy itself carries at least one of the
//! client's snapshots (an operator's own dataset, or one with no snapshot
//! at all, is not known to be a copy). A stolen key can then destroy nothing a
//! ransomware attacker needs gone (the recent history); a copy removed
//! recently is destroyed by the first push after `min_age`. A client's
//! prefix itself and a promoted copy are never destroyed.

use crate::policy::{destroyable, Grants, Refusal};
use crate::TargetSnapshot;
use fjord_zfs::names::check_target;
use fjord_zfs::snapname::parse_snapshot_time;
use std::time::Duration;

/// One dataset of a copy's tree (the copy itself or one below it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    /// Its full name.
    pub dataset: String,
    /// Its snapshots, with their foreign holds.
    pub snapshots: Vec<TargetSnapshot>,
    /// It carries `fjord:promoted` (set on itself).
    pub promoted: bool,
}

/// Decides whether `grants`' client may have the copy `dataset`, with the
/// datasets of `tree` (itself and everything below it), destroyed at Unix
/// time `now`. Members of `tree` outside `dataset` are ignored.
pub fn decide_destroy_copy(
    grants: &Grants<'_>,
    dataset: &str,
    tree: &[Member],
    min_age: Duration,
    now: i64,
) -> Result<(), Refusal> {
    check_target(dataset, grants.prefixes).map_err(|e| Refusal::OutsidePrefixes {
        client: grants.client.into(),
        why: e.to_string(),
    })?;
    if grants.is_prefix_root(dataset) {
        return Err(Refusal::PrefixRoot {
            client: grants.client.into(),
            dataset: dataset.into(),
        });
    }
    if !grants.allow_destroy_removed {
        return Err(Refusal::DestroyRemovedNotGranted {
            client: grants.client.into(),
            dataset: dataset.into(),
        });
    }
    let ours = |m: &Member| {
        m.snapshots
            .iter()
            .any(|s| parse_snapshot_time(grants.snapshot_prefix, &s.name).is_some())
    };
    if !tree.iter().any(|m| m.dataset == dataset && ours(m)) {
        return Err(Refusal::NotACopy {
            client: grants.client.into(),
            dataset: dataset.into(),
            prefix: grants.snapshot_prefix.into(),
        });
    }
    let within = |m: &&Member| {
        m.dataset == dataset
            || m.dataset
                .strip_prefix(dataset)
                .is_some_and(|rest| rest.starts_with('/'))
    };
    for m in tree.iter().filter(within) {
        if m.promoted {
            return Err(Refusal::PromotedCopy {
                dataset: m.dataset.clone(),
            });
        }
        for s in &m.snapshots {
            destroyable(grants, &m.dataset, s, min_age, now)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_zfs::snapname::format_snapshot_name;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_767_571_200 + 100 * DAY;
    const WEEK: Duration = Duration::from_secs(7 * 86_400);

    fn grants(prefixes: &[String], allow: bool) -> Grants<'_> {
        Grants {
            client: "oslo",
            prefixes,
            snapshot_prefix: "fjord",
            allow_prune: true,
            allow_rollback: true,
            allow_destroy_removed: allow,
            allow_rename: false,
        }
    }

    fn snap(age_days: i64) -> TargetSnapshot {
        TargetSnapshot {
            name: format_snapshot_name("fjord", NOW - age_days * DAY),
            guid: 7,
            createtxg: 7,
            creation: NOW - age_days * DAY,
            foreign_holds: Vec::new(),
        }
    }

    fn member(dataset: &str, ages: &[i64]) -> Member {
        Member {
            dataset: dataset.into(),
            snapshots: ages.iter().map(|&a| snap(a)).collect(),
            promoted: false,
        }
    }

    fn tree() -> Vec<Member> {
        vec![
            member("backup/oslo/home/old", &[30, 20]),
            member("backup/oslo/home/old/sub", &[30, 20]),
        ]
    }

    const COPY: &str = "backup/oslo/home/old";

    #[test]
    fn a_removed_copy_is_kept_unless_the_client_has_the_grant() {
        let p = vec!["backup/oslo".to_string()];
        let e = decide_destroy_copy(&grants(&p, false), COPY, &tree(), WEEK, NOW).unwrap_err();
        assert!(matches!(e, Refusal::DestroyRemovedNotGranted { .. }));
        assert!(
            e.to_string().contains("allow_destroy_removed = true"),
            "{e}"
        );
        assert_eq!(
            decide_destroy_copy(&grants(&p, true), COPY, &tree(), WEEK, NOW),
            Ok(())
        );
    }

    #[test]
    fn a_recent_snapshot_anywhere_in_the_copy_keeps_it_until_min_age() {
        let p = vec!["backup/oslo".to_string()];
        let mut t = tree();
        t[1].snapshots.push(snap(1));
        let e = decide_destroy_copy(&grants(&p, true), COPY, &t, WEEK, NOW).unwrap_err();
        assert!(
            matches!(e, Refusal::TooYoung { ref dataset, .. } if dataset == "backup/oslo/home/old/sub")
        );
        assert_eq!(
            decide_destroy_copy(&grants(&p, true), COPY, &t, Duration::ZERO, NOW),
            Ok(())
        );
    }

    #[test]
    fn held_foreign_promoted_or_prefix_copies_are_never_destroyed() {
        let p = vec!["backup/oslo".to_string()];
        let g = grants(&p, true);
        let mut held = tree();
        held[0].snapshots[0].foreign_holds.push("legal".into());
        assert!(matches!(
            decide_destroy_copy(&g, COPY, &held, WEEK, NOW),
            Err(Refusal::Held { .. })
        ));
        let mut foreign = tree();
        foreign[1].snapshots[0].name = "manual-before-upgrade".into();
        assert!(matches!(
            decide_destroy_copy(&g, COPY, &foreign, WEEK, NOW),
            Err(Refusal::NotClientsSnapshot { .. })
        ));
        let mut promoted = tree();
        promoted[1].promoted = true;
        assert!(matches!(
            decide_destroy_copy(&g, COPY, &promoted, WEEK, NOW),
            Err(Refusal::PromotedCopy { .. })
        ));
        let mut bare = tree();
        bare[0].snapshots.clear();
        assert!(matches!(
            decide_destroy_copy(&g, COPY, &bare, WEEK, NOW),
            Err(Refusal::NotACopy { .. })
        ));
        assert!(matches!(
            decide_destroy_copy(&g, "backup/oslo", &tree(), WEEK, NOW),
            Err(Refusal::PrefixRoot { .. })
        ));
        assert!(matches!(
            decide_destroy_copy(&g, "backup/other/x", &tree(), WEEK, NOW),
            Err(Refusal::OutsidePrefixes { .. })
        ));
    }

    #[test]
    fn members_outside_the_copy_do_not_count() {
        let p = vec!["backup/oslo".to_string()];
        let mut t = tree();
        t.push(member("backup/oslo/home/older", &[0]));
        t.push(member("backup/oslo/home", &[0]));
        assert_eq!(
            decide_destroy_copy(&grants(&p, true), COPY, &t, WEEK, NOW),
            Ok(())
        );
    }
}
