//! What a client may do to the DR node's copies: one pure function,
//! [`decide`], from the client's grants, its request, the target's
//! snapshots and the clock to an answer.
//!
//! Secure by default: a client holding a valid key can write new snapshots
//! under its prefixes and nothing else. Destroying snapshots (pruning) and
//! rolling a target back need a grant in `recv.toml`, and even granted they
//! never take a snapshot that
//! - is younger than `min_age` (so a stolen key cannot erase recent
//!   history, which is what a ransomware attacker needs),
//! - carries a hold other than the DR node's own (the operator's
//!   `zfs hold`),
//! - does not carry the client's snapshot prefix (someone else's), or
//! - is the newest one, when pruning (the base of the next push).

use crate::TargetSnapshot;
use fjord_zfs::names::check_target;
use fjord_zfs::snapname::parse_snapshot_time;
use std::time::Duration;
use thiserror::Error;

/// What one client key has been granted (its `[[client]]` table).
#[derive(Clone, Debug)]
pub struct Grants<'a> {
    /// The client's name, for messages.
    pub client: &'a str,
    /// The datasets it may write at or below.
    pub prefixes: &'a [String],
    /// Its snapshots are named `{snapshot_prefix}_{time}`.
    pub snapshot_prefix: &'a str,
    /// `allow_prune`.
    pub allow_prune: bool,
    /// `allow_rollback`.
    pub allow_rollback: bool,
    /// `allow_destroy_removed`: may destroy a whole copy whose source was
    /// destroyed on the primary ([`crate::removed`]).
    pub allow_destroy_removed: bool,
    /// `allow_rename`: may rename a copy whose source was renamed on the
    /// primary ([`crate::renamed`]).
    pub allow_rename: bool,
}

impl Grants<'_> {
    /// Whether `dataset` is one of the client's prefixes itself (the root
    /// it writes below): never destroyed or renamed on a client's word.
    pub fn is_prefix_root(&self, dataset: &str) -> bool {
        self.prefixes
            .iter()
            .any(|p| p.trim_end_matches('/') == dataset)
    }
}

/// What a client asks of a target.
#[derive(Clone, Copy, Debug)]
pub enum Ask<'a> {
    /// Destroy these snapshots (short names) of `dataset`.
    Destroy {
        /// The target dataset.
        dataset: &'a str,
        /// Short snapshot names.
        snapshots: &'a [String],
    },
    /// Roll `dataset` back to its snapshot `to` (short name), destroying
    /// every newer one, before a forced receive.
    Rollback {
        /// The target dataset.
        dataset: &'a str,
        /// Short name of the snapshot to roll back to.
        to: &'a str,
    },
}

/// The policy's yes: what may be destroyed, oldest first (for a rollback,
/// the snapshots newer than its base).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allowed {
    /// Short names of the snapshots that go.
    pub destroy: Vec<String>,
}

/// The policy's no, with the setting that would change it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum Refusal {
    /// The dataset is not under the client's prefixes.
    #[error("client {client}: {why}")]
    OutsidePrefixes {
        /// The client.
        client: String,
        /// The name check's message.
        why: String,
    },
    /// Pruning was not granted.
    #[error("refused by the DR node's policy: client {client} may not destroy snapshots of {dataset} (the DR node's own retention prunes its copies; to let this client prune, set allow_prune = true in its [[client]] of recv.toml)")]
    PruneNotGranted {
        /// The client.
        client: String,
        /// The target.
        dataset: String,
    },
    /// Rollback was not granted.
    #[error("refused by the DR node's policy: client {client} may not roll {dataset} back (push --force); to allow it, set allow_rollback = true in its [[client]] of recv.toml, or roll back on the DR node by hand")]
    RollbackNotGranted {
        /// The client.
        client: String,
        /// The target.
        dataset: String,
    },
    /// A snapshot that is not the client's own.
    #[error("refused by the DR node's policy: {dataset}@{snapshot} is not a snapshot of client {client} (its snapshots are named {prefix}_<time>); only the DR node's operator destroys it")]
    NotClientsSnapshot {
        /// The client.
        client: String,
        /// The target.
        dataset: String,
        /// The snapshot.
        snapshot: String,
        /// The client's snapshot prefix.
        prefix: String,
    },
    /// The newest snapshot: the next push's base.
    #[error("refused by the DR node's policy: {dataset}@{snapshot} is the newest snapshot, the base of the next incremental push")]
    Newest {
        /// The target.
        dataset: String,
        /// The snapshot.
        snapshot: String,
    },
    /// Younger than `min_age`.
    #[error("refused by the DR node's policy: {dataset}@{snapshot} is {age_s} s old, younger than min_age ({min_age_s} s); nothing younger is destroyed on the DR node (min_age in recv.toml)")]
    TooYoung {
        /// The target.
        dataset: String,
        /// The snapshot.
        snapshot: String,
        /// Its age, seconds.
        age_s: i64,
        /// The policy's `min_age`, seconds.
        min_age_s: u64,
    },
    /// Held by a tag other than the DR node's own.
    #[error("refused by the DR node's policy: {dataset}@{snapshot} is held ({tags}); release those holds on the DR node first")]
    Held {
        /// The target.
        dataset: String,
        /// The snapshot.
        snapshot: String,
        /// The foreign tags, comma-separated.
        tags: String,
    },
    /// Destroying removed copies was not granted.
    #[error("refused by the DR node's policy: client {client} may not destroy {dataset}, whose source was destroyed on the primary; the copy is kept (to let this client's pushes destroy such copies, set allow_destroy_removed = true in its [[client]] of recv.toml, or zfs destroy -r it on the DR node by hand)")]
    DestroyRemovedNotGranted {
        /// The client.
        client: String,
        /// The copy.
        dataset: String,
    },
    /// One of the client's prefixes itself: only the operator destroys it.
    #[error("refused by the DR node's policy: {dataset} is a prefix of client {client} in recv.toml; only the DR node's operator destroys it")]
    PrefixRoot {
        /// The client.
        client: String,
        /// The prefix.
        dataset: String,
    },
    /// The dataset has none of the client's snapshots: nothing shows that
    /// the client's pushes made it.
    #[error("refused by the DR node's policy: {dataset} has no snapshot of client {client} (named {prefix}_<time>), so it is not known to be this client's copy; only the DR node's operator destroys it")]
    NotACopy {
        /// The client.
        client: String,
        /// The dataset.
        dataset: String,
        /// The client's snapshot prefix.
        prefix: String,
    },
    /// The copy (or a dataset below it) was promoted on the DR node.
    #[error("refused by the DR node's policy: {dataset} was promoted on the DR node (fjord:promoted): it is a primary now, never destroyed at a client's request")]
    PromotedCopy {
        /// The promoted dataset.
        dataset: String,
    },
    /// The rollback's base is not on the target.
    #[error("cannot roll {dataset} back to @{to}: the DR node has no such snapshot")]
    UnknownBase {
        /// The target.
        dataset: String,
        /// The requested base.
        to: String,
    },
}

/// Decides `ask` from `grants` against the target's `snapshots` (in any
/// order) at Unix time `now`. Snapshots asked for but absent are skipped:
/// pruning is idempotent.
pub fn decide(
    grants: &Grants<'_>,
    ask: Ask<'_>,
    snapshots: &[TargetSnapshot],
    min_age: Duration,
    now: i64,
) -> Result<Allowed, Refusal> {
    let dataset = match ask {
        Ask::Destroy { dataset, .. } | Ask::Rollback { dataset, .. } => dataset,
    };
    check_target(dataset, grants.prefixes).map_err(|e| Refusal::OutsidePrefixes {
        client: grants.client.into(),
        why: e.to_string(),
    })?;
    let mut doomed: Vec<&TargetSnapshot> =
        match ask {
            Ask::Destroy {
                snapshots: names, ..
            } => {
                if !grants.allow_prune {
                    return Err(Refusal::PruneNotGranted {
                        client: grants.client.into(),
                        dataset: dataset.into(),
                    });
                }
                let newest = snapshots.iter().max_by_key(|s| s.createtxg);
                if let Some(n) = newest.filter(|n| names.contains(&n.name)) {
                    return Err(Refusal::Newest {
                        dataset: dataset.into(),
                        snapshot: n.name.clone(),
                    });
                }
                snapshots
                    .iter()
                    .filter(|s| names.contains(&s.name))
                    .collect()
            }
            Ask::Rollback { to, .. } => {
                if !grants.allow_rollback {
                    return Err(Refusal::RollbackNotGranted {
                        client: grants.client.into(),
                        dataset: dataset.into(),
                    });
                }
                let base = snapshots.iter().find(|s| s.name == to).ok_or_else(|| {
                    Refusal::UnknownBase {
                        dataset: dataset.into(),
                        to: to.into(),
                    }
                })?;
                snapshots
                    .iter()
                    .filter(|s| s.createtxg > base.createtxg)
                    .collect()
            }
        };
    doomed.sort_by_key(|s| s.createtxg);
    for s in &doomed {
        destroyable(grants, dataset, s, min_age, now)?;
    }
    Ok(Allowed {
        destroy: doomed.into_iter().map(|s| s.name.clone()).collect(),
    })
}

/// The checks every snapshot a client's request destroys must pass.
pub(crate) fn destroyable(
    grants: &Grants<'_>,
    dataset: &str,
    s: &TargetSnapshot,
    min_age: Duration,
    now: i64,
) -> Result<(), Refusal> {
    if parse_snapshot_time(grants.snapshot_prefix, &s.name).is_none() {
        return Err(Refusal::NotClientsSnapshot {
            client: grants.client.into(),
            dataset: dataset.into(),
            snapshot: s.name.clone(),
            prefix: grants.snapshot_prefix.into(),
        });
    }
    if !s.foreign_holds.is_empty() {
        return Err(Refusal::Held {
            dataset: dataset.into(),
            snapshot: s.name.clone(),
            tags: s.foreign_holds.join(", "),
        });
    }
    let age = now.saturating_sub(s.creation);
    if age < 0 || (age as u64) < min_age.as_secs() {
        return Err(Refusal::TooYoung {
            dataset: dataset.into(),
            snapshot: s.name.clone(),
            age_s: age,
            min_age_s: min_age.as_secs(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_zfs::snapname::format_snapshot_name;
    use proptest::prelude::*;

    const DAY: i64 = 86_400;
    const NOW: i64 = 1_767_571_200 + 100 * DAY;
    const WEEK: Duration = Duration::from_secs(7 * 86_400);

    fn prefixes() -> Vec<String> {
        vec!["backup/oslo".into()]
    }

    fn grants(prefixes: &[String], prune: bool, rollback: bool) -> Grants<'_> {
        Grants {
            client: "oslo",
            prefixes,
            snapshot_prefix: "fjord",
            allow_prune: prune,
            allow_rollback: rollback,
            allow_destroy_removed: false,
            allow_rename: false,
        }
    }

    /// Ours, one a day, `ages` in days (oldest first).
    fn snaps(ages: &[i64]) -> Vec<TargetSnapshot> {
        ages.iter()
            .enumerate()
            .map(|(i, &d)| TargetSnapshot {
                name: format_snapshot_name("fjord", NOW - d * DAY),
                guid: 100 + i as u64,
                createtxg: 10 + i as u64,
                creation: NOW - d * DAY,
                foreign_holds: Vec::new(),
            })
            .collect()
    }

    fn destroy<'a>(names: &'a [String]) -> Ask<'a> {
        Ask::Destroy {
            dataset: "backup/oslo/home",
            snapshots: names,
        }
    }

    #[test]
    fn by_default_nothing_is_destroyed_or_rolled_back() {
        let p = prefixes();
        let g = grants(&p, false, false);
        let s = snaps(&[30, 20, 10]);
        let names = vec![s[0].name.clone()];
        let e = decide(&g, destroy(&names), &s, WEEK, NOW).unwrap_err();
        assert!(matches!(e, Refusal::PruneNotGranted { .. }));
        assert!(e.to_string().contains("allow_prune = true"), "{e}");
        let e = decide(
            &g,
            Ask::Rollback {
                dataset: "backup/oslo/home",
                to: &s[0].name,
            },
            &s,
            WEEK,
            NOW,
        )
        .unwrap_err();
        assert!(e.to_string().contains("allow_rollback = true"), "{e}");
    }

    #[test]
    fn granted_pruning_stays_within_its_limits() {
        let p = prefixes();
        let g = grants(&p, true, false);
        let mut s = snaps(&[30, 20, 3, 1]);
        // Old enough, ours, unheld: allowed.
        let names = vec![s[0].name.clone(), s[1].name.clone()];
        assert_eq!(
            decide(&g, destroy(&names), &s, WEEK, NOW).unwrap().destroy,
            names
        );
        // Absent names are skipped.
        let gone = vec!["fjord_2020-01-01T000000Z".to_string()];
        assert!(decide(&g, destroy(&gone), &s, WEEK, NOW)
            .unwrap()
            .destroy
            .is_empty());
        // Younger than min_age.
        let young = vec![s[2].name.clone()];
        assert!(matches!(
            decide(&g, destroy(&young), &s, WEEK, NOW),
            Err(Refusal::TooYoung { .. })
        ));
        // The newest, even with min_age 0.
        let newest = vec![s[3].name.clone()];
        assert!(matches!(
            decide(&g, destroy(&newest), &s, Duration::ZERO, NOW),
            Err(Refusal::Newest { .. })
        ));
        // Someone else's snapshot.
        s[0].name = "manual-keep".into();
        let foreign = vec!["manual-keep".to_string()];
        assert!(matches!(
            decide(&g, destroy(&foreign), &s, WEEK, NOW),
            Err(Refusal::NotClientsSnapshot { .. })
        ));
        // Held by the operator.
        s[1].foreign_holds = vec!["legal".into()];
        let held = vec![s[1].name.clone()];
        let e = decide(&g, destroy(&held), &s, WEEK, NOW).unwrap_err();
        assert!(e.to_string().contains("legal"), "{e}");
        // Outside the prefixes.
        let names = vec![s[0].name.clone()];
        assert!(matches!(
            decide(
                &g,
                Ask::Destroy {
                    dataset: "backup/other",
                    snapshots: &names
                },
                &s,
                WEEK,
                NOW
            ),
            Err(Refusal::OutsidePrefixes { .. })
        ));
    }

    #[test]
    fn granted_rollback_never_destroys_recent_history() {
        let p = prefixes();
        let g = grants(&p, false, true);
        let s = snaps(&[30, 20, 10, 2]);
        let to = |i: usize| Ask::Rollback {
            dataset: "backup/oslo/home",
            to: &s[i].name,
        };
        // Rolling back past a 2-day-old snapshot: refused under a week.
        assert!(matches!(
            decide(&g, to(1), &s, WEEK, NOW),
            Err(Refusal::TooYoung { .. })
        ));
        // With min_age 1 day the same rollback destroys the two newer ones.
        assert_eq!(
            decide(&g, to(1), &s, Duration::from_secs(DAY as u64), NOW)
                .unwrap()
                .destroy,
            vec![s[2].name.clone(), s[3].name.clone()]
        );
        // To the newest: destroys nothing.
        assert!(decide(&g, to(3), &s, WEEK, NOW).unwrap().destroy.is_empty());
        assert!(matches!(
            decide(
                &g,
                Ask::Rollback {
                    dataset: "backup/oslo/home",
                    to: "nope"
                },
                &s,
                WEEK,
                NOW
            ),
            Err(Refusal::UnknownBase { .. })
        ));
    }

    proptest! {
        /// Whatever a client asks, an allowed answer never includes a
        /// snapshot that is young, held, someone else's, or (pruning) the
        /// newest; without grants nothing is ever allowed.
        #[test]
        fn allowed_answers_respect_every_limit(
            ages in proptest::collection::vec(0i64..60, 1..12),
            held in proptest::collection::vec(any::<bool>(), 12),
            foreign in proptest::collection::vec(any::<bool>(), 12),
            pick in proptest::collection::vec(any::<bool>(), 12),
            prune: bool,
            rollback: bool,
            min_days in 0u64..14,
            as_rollback: bool,
        ) {
            let mut ages = ages;
            ages.sort_unstable_by(|a, b| b.cmp(a));
            ages.dedup();
            let mut s = snaps(&ages);
            for (i, snap) in s.iter_mut().enumerate() {
                if held[i] { snap.foreign_holds = vec!["op".into()]; }
                if foreign[i] { snap.name = format!("manual{i}"); }
            }
            let p = prefixes();
            let g = grants(&p, prune, rollback);
            let min_age = Duration::from_secs(min_days * DAY as u64);
            let names: Vec<String> = s.iter().zip(&pick).filter(|(_, p)| **p).map(|(s, _)| s.name.clone()).collect();
            let ask = if as_rollback {
                Ask::Rollback { dataset: "backup/oslo/x", to: &s[0].name }
            } else {
                destroy(&names)
            };
            if let Ok(allowed) = decide(&g, ask, &s, min_age, NOW) {
                let granted = if as_rollback { rollback } else { prune };
                prop_assert!(granted);
                let newest = s.iter().max_by_key(|x| x.createtxg).map(|x| x.name.clone());
                for name in &allowed.destroy {
                    let snap = s.iter().find(|x| &x.name == name).expect("present");
                    prop_assert!(snap.foreign_holds.is_empty());
                    prop_assert!(!snap.name.starts_with("manual"));
                    prop_assert!(NOW - snap.creation >= (min_days as i64) * DAY);
                    if !as_rollback {
                        prop_assert!(Some(name) != newest.as_ref());
                    }
                }
            }
        }
    }
}
