//! Children renamed on the primary, followed by guid: a recursive job's
//! child renamed on the primary (`zfs rename tank/home/a tank/home/b`)
//! would arrive in full under its new name, and its old copy be reported
//! as removed. Before sending, the job pairs each copy whose source is
//! gone with a new source that has the copy's newest snapshot (same guid:
//! the same dataset under another name) and asks the DR node to rename
//! the copy; the DR node's policy decides (`allow_rename`). The renamed
//! copy then goes on incrementally. [`pair_renamed`] is the decision.

use crate::dr_node::DrNode;
use crate::pool::Pool;
use crate::removed::removed_copies;
use crate::Leg;
use fjord_zfs::SnapshotInfo;
use serde::Serialize;
use std::collections::BTreeSet;

/// A copy renamed on the DR node after its source.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RenamedCopy {
    /// Its old name (the source's old name, mapped).
    pub from: String,
    /// Its new name.
    pub to: String,
    /// What the DR node said.
    pub message: String,
}

/// Pairs copies whose source is gone (`removed`: each with its snapshots
/// on the DR node) with targets that do not exist yet (`new`: each with
/// the guids of its source's snapshots): a copy goes with the new target
/// whose source has the copy's newest snapshot. Only one-to-one pairs,
/// and only where the new target's parent exists on the DR node
/// (`on_dr`), so that no parent is made for it that its own full receive
/// would then find in the way. Returns (old, new) names.
pub fn pair_renamed(
    removed: &[(String, Vec<SnapshotInfo>)],
    new: &[(String, Vec<u64>)],
    on_dr: &BTreeSet<String>,
) -> Vec<(String, String)> {
    let matches = |copy: &[SnapshotInfo], guids: &[u64]| {
        copy.iter()
            .max_by_key(|s| s.createtxg)
            .is_some_and(|newest| guids.contains(&newest.guid))
    };
    let mut out = Vec::new();
    for (copy, snaps) in removed {
        let found: Vec<&String> = new
            .iter()
            .filter(|(_, guids)| matches(snaps, guids))
            .map(|(t, _)| t)
            .collect();
        let [target] = found[..] else { continue };
        let claimed = removed
            .iter()
            .filter(|(_, s)| new.iter().any(|(t, g)| t == target && matches(s, g)))
            .count();
        let parent_there = target
            .rsplit_once('/')
            .is_some_and(|(parent, _)| on_dr.contains(parent));
        if claimed == 1 && parent_there {
            out.push((copy.clone(), target.clone()));
        }
    }
    out
}

/// Finds this job's renamed children and asks the DR node to rename their
/// copies (not with `--dry-run`). Returns the copies renamed, and the
/// warnings: a refused rename, or a listing that failed (the push then
/// goes on as before: the new name in full, the old copy reported).
pub(crate) async fn follow_renames<P: Pool, D: DrNode>(
    ctx: &Leg<'_, P, D>,
    sources: &[String],
) -> (Vec<RenamedCopy>, Vec<String>) {
    let root = &ctx.target.dataset;
    let mut warnings = Vec::new();
    let on_dr = match ctx.dr.list_tree(root).await {
        Ok(l) => l,
        Err(e) => {
            warnings.push(format!(
                "could not list the DR node's copies below {root} to follow renamed children: {e}"
            ));
            return (Vec::new(), warnings);
        }
    };
    let on_dr_set: BTreeSet<String> = on_dr.iter().cloned().collect();
    let targets: Vec<(String, String)> = sources
        .iter()
        .filter_map(|s| ctx.target_for(s).map(|t| (s.clone(), t)))
        .collect();
    let expected: BTreeSet<String> = targets.iter().map(|(_, t)| t.clone()).collect();
    let gone = removed_copies(root, &on_dr, &expected);
    let fresh: Vec<&(String, String)> = targets
        .iter()
        .filter(|(_, t)| !on_dr_set.contains(t))
        .collect();
    if gone.is_empty() || fresh.is_empty() {
        return (Vec::new(), warnings);
    }
    let mut removed = Vec::new();
    for copy in gone {
        if let Ok(state) = ctx.dr.target_state(&copy).await {
            removed.push((copy, state.snapshots));
        }
    }
    let mut new = Vec::new();
    for (source, target) in fresh {
        if let Ok(snaps) = ctx.pool.snapshots(source).await {
            new.push((target.clone(), snaps.iter().map(|s| s.guid).collect()));
        }
    }
    let mut renamed = Vec::new();
    for (from, to) in pair_renamed(&removed, &new, &on_dr_set) {
        match ctx.dr.rename_copy(&from, &to).await {
            Ok(message) => {
                tracing::info!(%from, %to, %message, "followed a child renamed on the primary");
                renamed.push(RenamedCopy { from, to, message });
            }
            Err(e) => {
                tracing::warn!(%from, %to, error = %e, "the DR node did not follow a renamed child");
                warnings.push(format!(
                    "{from}: its source was renamed on the primary ({to} here); the DR node did not rename the copy, so {to} arrives in full: {e}"
                ));
            }
        }
    }
    (renamed, warnings)
}

#[cfg(test)]
mod tests {
    use super::pair_renamed;
    use fjord_zfs::SnapshotInfo;
    use std::collections::BTreeSet;

    fn snap(guid: u64, txg: u64) -> SnapshotInfo {
        SnapshotInfo {
            name: format!("fjord_{txg}"),
            guid,
            createtxg: txg,
            creation: 0,
        }
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_copy_pairs_with_the_new_target_holding_its_newest_snapshot() {
        let removed = vec![("b/h/a".to_string(), vec![snap(1, 1), snap(2, 2)])];
        let new = vec![
            ("b/h/other".to_string(), vec![7, 8]),
            ("b/h/z".to_string(), vec![1, 2, 3]),
        ];
        let on_dr = set(&["b/h", "b/h/a"]);
        assert_eq!(
            pair_renamed(&removed, &new, &on_dr),
            [("b/h/a".to_string(), "b/h/z".to_string())]
        );
    }

    #[test]
    fn no_pair_without_the_newest_guid_when_ambiguous_or_without_the_new_parent() {
        let on_dr = set(&["b/h", "b/h/a", "b/h/c"]);
        // only an older snapshot in common: the copy's newest is not the source's
        let removed = vec![("b/h/a".to_string(), vec![snap(1, 1), snap(2, 2)])];
        assert!(pair_renamed(&removed, &[("b/h/z".into(), vec![1])], &on_dr).is_empty());
        // two new targets hold it (a clone's origin, say)
        let two = vec![
            ("b/h/y".to_string(), vec![2]),
            ("b/h/z".to_string(), vec![2]),
        ];
        assert!(pair_renamed(&removed, &two, &on_dr).is_empty());
        // two copies claim one new target
        let both = vec![
            ("b/h/a".to_string(), vec![snap(2, 2)]),
            ("b/h/c".to_string(), vec![snap(2, 2)]),
        ];
        assert!(pair_renamed(&both, &[("b/h/z".into(), vec![2])], &on_dr).is_empty());
        // the new name's parent is new too: its own full receive comes first
        assert!(pair_renamed(&removed, &[("b/h/n/z".into(), vec![2])], &on_dr).is_empty());
        // a copy without snapshots is nobody's
        let bare = vec![("b/h/a".to_string(), vec![])];
        assert!(pair_renamed(&bare, &[("b/h/z".into(), vec![2])], &on_dr).is_empty());
    }
}
