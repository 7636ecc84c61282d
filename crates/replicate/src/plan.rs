//! What to send to bring one target dataset up to date: a pure decision
//! from the source's snapshots and what the target has.
//!
//! The rules, in order:
//!
//! 1. No source snapshot: [`PlanError::NoSourceSnapshot`].
//! 2. The target has a `receive_resume_token`. A token that does not decode
//!    is [`PlanError::BadToken`]. If the snapshot it resumes (`toguid`) is
//!    still on the source, and so is its base (`fromguid`, for an
//!    incremental), the plan is [`Plan::Resume`]. Otherwise the token is
//!    stale: [`Planned::abort_stale_token`] says so (run `zfs recv -A` on
//!    the target first, as ZFS refuses other receives while it is there)
//!    and planning goes on as if there were none. A stale token of a *full*
//!    receive stands for a dataset that `zfs recv -A` destroys, so a target
//!    without snapshots is then planned as absent.
//! 3. The common snapshot is the newest target snapshot whose GUID is among
//!    the source's.
//! 4. No common snapshot: a target that does not exist gets a
//!    [`Plan::Full`] of the newest source snapshot. A target that exists is
//!    [`PlanError::TargetExistsWithoutCommon`], with or without `force`:
//!    bringing it in line would mean destroying the whole dataset, which
//!    fjord never does on its own.
//! 5. The target has snapshots newer than the common one, or was written to
//!    since its newest snapshot (`written` > 0): without `force`,
//!    [`PlanError::Diverged`] naming them; with `force`, the target is
//!    rolled back to the common snapshot (`rollback: true`, or
//!    [`Plan::RollbackOnly`] when the source has nothing newer).
//! 6. The newest source snapshot is the common one: [`Plan::UpToDate`].
//! 7. Otherwise [`Plan::Incremental`] from the common snapshot to the
//!    newest source snapshot.
//!
//! Messages speak of "the source" and "the target"; the caller prefixes
//! them with the job and dataset names.

use fjord_stream::token::{self, TokenError};
use fjord_zfs::SnapshotInfo;
use std::collections::HashSet;
use thiserror::Error;

/// What the target has, as read from it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TargetState {
    /// Whether the target dataset exists.
    pub exists: bool,
    /// Its snapshots (any order).
    pub snapshots: Vec<SnapshotInfo>,
    /// Its `receive_resume_token`, if a resumable receive was interrupted.
    pub resume_token: Option<String>,
    /// Its `written` property: bytes changed since its newest snapshot.
    pub written: u64,
}

/// What to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Nothing to send: the target has the source's newest snapshot.
    UpToDate {
        /// That snapshot.
        common: SnapshotInfo,
    },
    /// Send the whole snapshot `to` into a target that does not exist yet.
    Full {
        /// The newest source snapshot.
        to: SnapshotInfo,
    },
    /// Send the changes from `from` (on both sides) to `to`.
    Incremental {
        /// The common snapshot (the source's entry for it).
        from: SnapshotInfo,
        /// The newest source snapshot.
        to: SnapshotInfo,
        /// `zfs send -I` rather than `-i`.
        intermediates: bool,
        /// Roll the target back to `from` first (`zfs rollback -r`),
        /// destroying what it has beyond it; only planned with `force`.
        rollback: bool,
    },
    /// Nothing new on the source, but the target diverged and `force` was
    /// given: roll it back to `to` (`zfs rollback -r`) and send nothing.
    RollbackOnly {
        /// The common snapshot, which is also the source's newest.
        to: SnapshotInfo,
    },
    /// Resume the interrupted receive (`zfs send -t token`).
    Resume {
        /// The target's `receive_resume_token`.
        token: String,
        /// GUID of the snapshot being received.
        to_guid: u64,
    },
}

/// A resume token that cannot be resumed any more.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaleToken {
    /// The token.
    pub token: String,
    /// Why it is stale, for the log.
    pub reason: String,
}

impl std::fmt::Display for StaleToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// A [`Plan`] and what to clean up before it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    /// What to send.
    pub plan: Plan,
    /// A stale resume token on the target: abort it (`zfs recv -A
    /// TARGET`) before carrying out `plan`.
    pub abort_stale_token: Option<StaleToken>,
}

/// Why no plan can be made. These need an operator.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PlanError {
    /// The target changed after the common snapshot.
    #[error("{detail}; refusing to overwrite it: inspect the target, then rerun with --force to roll it back to the common snapshot")]
    Diverged {
        /// What changed, naming the snapshots or the bytes written.
        detail: String,
    },
    /// The target exists but shares no snapshot with the source.
    #[error("{detail}; refusing; --force cannot fix this either: destroy the target or choose another target_dataset")]
    TargetExistsWithoutCommon {
        /// What the target has.
        detail: String,
    },
    /// The source has no snapshot to send.
    #[error("the source has no snapshot to send: take one (fjord-send push does) and rerun")]
    NoSourceSnapshot,
    /// The target's resume token does not decode.
    #[error("the target's receive_resume_token cannot be read ({0}): discard the partial receive with zfs recv -A TARGET and rerun")]
    BadToken(#[from] TokenError),
}

fn list_names(snaps: &[&SnapshotInfo]) -> String {
    const SHOWN: usize = 5;
    let mut names: Vec<&str> = snaps.iter().take(SHOWN).map(|s| s.name.as_str()).collect();
    if snaps.len() > SHOWN {
        names.push("…");
    }
    names.join(", ")
}

/// Decides what to send; see the module docs for the rules. `source` is
/// every snapshot of the source dataset (any order), `intermediates` the
/// job's `-I` choice, `force` the operator's `--force`.
pub fn plan(
    source: &[SnapshotInfo],
    target: &TargetState,
    intermediates: bool,
    force: bool,
) -> Result<Planned, PlanError> {
    let mut source: Vec<&SnapshotInfo> = source.iter().collect();
    source.sort_by_key(|s| s.createtxg);
    let Some(&newest) = source.last() else {
        return Err(PlanError::NoSourceSnapshot);
    };
    let source_guids: HashSet<u64> = source.iter().map(|s| s.guid).collect();

    let mut abort_stale_token = None;
    let mut exists = target.exists;
    if let Some(raw) = &target.resume_token {
        let decoded = token::decode(raw)?;
        let to_known = source_guids.contains(&decoded.toguid);
        let from_known = decoded.fromguid.is_none_or(|g| source_guids.contains(&g));
        if to_known && from_known {
            return Ok(Planned {
                plan: Plan::Resume {
                    token: raw.clone(),
                    to_guid: decoded.toguid,
                },
                abort_stale_token: None,
            });
        }
        let reason = if !to_known {
            format!(
                "it resumes {} (guid {}), which the source no longer has",
                decoded.toname, decoded.toguid
            )
        } else {
            format!(
                "it resumes {} from a base (guid {}) the source no longer has",
                decoded.toname,
                decoded.fromguid.unwrap_or_default()
            )
        };
        if decoded.fromguid.is_none() && target.snapshots.is_empty() {
            // `zfs recv -A` destroys a partially received new dataset.
            exists = false;
        }
        abort_stale_token = Some(StaleToken {
            token: raw.clone(),
            reason,
        });
    }
    let planned = |plan| Planned {
        plan,
        abort_stale_token: abort_stale_token.clone(),
    };

    let mut on_target: Vec<&SnapshotInfo> = target.snapshots.iter().collect();
    on_target.sort_by_key(|s| s.createtxg);
    let common_on_target = on_target
        .iter()
        .rev()
        .find(|s| source_guids.contains(&s.guid))
        .copied();

    let Some(common_on_target) = common_on_target else {
        if !exists {
            return Ok(planned(Plan::Full { to: newest.clone() }));
        }
        let detail = if on_target.is_empty() {
            "the target exists but has no snapshots (fjord creates the target itself from a full stream)".to_string()
        } else {
            format!(
                "the target has {} snapshot(s) ({}) but none matches the source",
                on_target.len(),
                list_names(&on_target)
            )
        };
        return Err(PlanError::TargetExistsWithoutCommon { detail });
    };
    // The source's entry: the same GUID, the source's own createtxg.
    let common = source
        .iter()
        .find(|s| s.guid == common_on_target.guid)
        .copied()
        .unwrap_or(common_on_target);

    let newer_on_target: Vec<&SnapshotInfo> = on_target
        .iter()
        .filter(|s| s.createtxg > common_on_target.createtxg)
        .copied()
        .collect();
    let diverged = if !newer_on_target.is_empty() {
        Some(format!(
            "the target has {} snapshot(s) newer than the common snapshot {}: {}",
            newer_on_target.len(),
            common.name,
            list_names(&newer_on_target)
        ))
    } else if target.written > 0 {
        Some(format!(
            "the target was modified since {} ({} bytes written)",
            common.name, target.written
        ))
    } else {
        None
    };
    match diverged {
        Some(detail) if !force => Err(PlanError::Diverged { detail }),
        Some(_) if newest.guid == common.guid => {
            Ok(planned(Plan::RollbackOnly { to: common.clone() }))
        }
        Some(_) => Ok(planned(Plan::Incremental {
            from: common.clone(),
            to: newest.clone(),
            intermediates,
            rollback: true,
        })),
        None if newest.guid == common.guid => Ok(planned(Plan::UpToDate {
            common: common.clone(),
        })),
        None => Ok(planned(Plan::Incremental {
            from: common.clone(),
            to: newest.clone(),
            intermediates,
            rollback: false,
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_stream::token::ResumeToken;

    fn snap(name: &str, guid: u64, createtxg: u64) -> SnapshotInfo {
        SnapshotInfo {
            name: name.into(),
            guid,
            createtxg,
            creation: 1_769_000_000 + createtxg as i64,
        }
    }

    /// Source: a(1) b(2) c(3), createtxgs 10, 20, 30.
    fn source() -> Vec<SnapshotInfo> {
        vec![snap("a", 1, 10), snap("b", 2, 20), snap("c", 3, 30)]
    }

    /// The same snapshots on the target have their own createtxgs.
    fn target_with(snaps: &[(&str, u64, u64)]) -> TargetState {
        TargetState {
            exists: true,
            snapshots: snaps.iter().map(|&(n, g, t)| snap(n, g, t)).collect(),
            resume_token: None,
            written: 0,
        }
    }

    fn token(toguid: u64, fromguid: Option<u64>) -> String {
        token::encode(&ResumeToken {
            toname: "tank/home@c".into(),
            toguid,
            fromguid,
            object: 5,
            offset: 4096,
            bytes: 1 << 20,
            ..Default::default()
        })
    }

    fn ok(planned: Result<Planned, PlanError>) -> Plan {
        let planned = planned.unwrap();
        assert_eq!(planned.abort_stale_token, None);
        planned.plan
    }

    #[test]
    fn no_source_snapshot_is_an_error() {
        assert_eq!(
            plan(&[], &TargetState::default(), true, false),
            Err(PlanError::NoSourceSnapshot)
        );
    }

    #[test]
    fn absent_target_gets_a_full_of_the_newest() {
        let p = ok(plan(&source(), &TargetState::default(), true, false));
        assert_eq!(
            p,
            Plan::Full {
                to: snap("c", 3, 30)
            }
        );
    }

    #[test]
    fn source_order_does_not_matter() {
        let mut shuffled = source();
        shuffled.reverse();
        let p = ok(plan(&shuffled, &TargetState::default(), true, false));
        assert_eq!(
            p,
            Plan::Full {
                to: snap("c", 3, 30)
            }
        );
    }

    #[test]
    fn target_with_newest_is_up_to_date() {
        let t = target_with(&[("a", 1, 5), ("c", 3, 7)]);
        assert_eq!(
            ok(plan(&source(), &t, true, false)),
            Plan::UpToDate {
                common: snap("c", 3, 30)
            }
        );
    }

    #[test]
    fn incremental_from_newest_common_with_source_createtxg() {
        let t = target_with(&[("a", 1, 5)]);
        assert_eq!(
            ok(plan(&source(), &t, true, false)),
            Plan::Incremental {
                from: snap("a", 1, 10),
                to: snap("c", 3, 30),
                intermediates: true,
                rollback: false,
            }
        );
        let t = target_with(&[("a", 1, 5), ("b", 2, 6)]);
        assert_eq!(
            ok(plan(&source(), &t, false, false)),
            Plan::Incremental {
                from: snap("b", 2, 20),
                to: snap("c", 3, 30),
                intermediates: false,
                rollback: false,
            }
        );
    }

    #[test]
    fn common_is_found_past_target_only_snapshots_in_the_middle() {
        // The target's own snapshot "x" sits between a and b: b is common
        // and x is older than it, so this is no divergence.
        let t = target_with(&[("a", 1, 5), ("x", 99, 6), ("b", 2, 7)]);
        assert!(matches!(
            ok(plan(&source(), &t, true, false)),
            Plan::Incremental { from, rollback: false, .. } if from.guid == 2
        ));
    }

    #[test]
    fn newer_target_snapshots_diverge_and_are_named() {
        let t = target_with(&[("a", 1, 5), ("x", 98, 6), ("y", 99, 7)]);
        let err = plan(&source(), &t, true, false).unwrap_err();
        assert_eq!(
            err,
            PlanError::Diverged {
                detail: "the target has 2 snapshot(s) newer than the common snapshot a: x, y"
                    .into()
            }
        );
        assert!(err.to_string().contains("--force"));
    }

    #[test]
    fn written_target_diverges() {
        let mut t = target_with(&[("a", 1, 5)]);
        t.written = 4096;
        let err = plan(&source(), &t, true, false).unwrap_err();
        assert_eq!(
            err,
            PlanError::Diverged {
                detail: "the target was modified since a (4096 bytes written)".into()
            }
        );
    }

    #[test]
    fn force_rolls_back_a_diverged_target() {
        let mut t = target_with(&[("a", 1, 5), ("x", 98, 6)]);
        t.written = 10;
        assert_eq!(
            ok(plan(&source(), &t, true, true)),
            Plan::Incremental {
                from: snap("a", 1, 10),
                to: snap("c", 3, 30),
                intermediates: true,
                rollback: true,
            }
        );
    }

    #[test]
    fn force_with_nothing_new_only_rolls_back() {
        let mut t = target_with(&[("c", 3, 5)]);
        t.written = 10;
        assert!(matches!(
            plan(&source(), &t, true, false),
            Err(PlanError::Diverged { .. })
        ));
        assert_eq!(
            ok(plan(&source(), &t, true, true)),
            Plan::RollbackOnly {
                to: snap("c", 3, 30)
            }
        );
    }

    #[test]
    fn force_does_not_apply_to_an_undiverged_target() {
        let t = target_with(&[("b", 2, 5)]);
        assert!(matches!(
            ok(plan(&source(), &t, true, true)),
            Plan::Incremental {
                rollback: false,
                ..
            }
        ));
    }

    #[test]
    fn existing_target_without_common_is_refused_even_with_force() {
        let t = target_with(&[("p", 50, 5), ("q", 51, 6)]);
        for force in [false, true] {
            let err = plan(&source(), &t, true, force).unwrap_err();
            assert_eq!(
                err,
                PlanError::TargetExistsWithoutCommon {
                    detail: "the target has 2 snapshot(s) (p, q) but none matches the source"
                        .into()
                }
            );
            assert!(err.to_string().contains("--force cannot fix this"));
        }
        let empty = target_with(&[]);
        let err = plan(&source(), &empty, true, true).unwrap_err();
        assert!(
            err.to_string().contains("exists but has no snapshots"),
            "{err}"
        );
    }

    #[test]
    fn valid_incremental_token_resumes() {
        let mut t = target_with(&[("a", 1, 5)]);
        let tok = token(3, Some(1));
        t.resume_token = Some(tok.clone());
        assert_eq!(
            ok(plan(&source(), &t, true, false)),
            Plan::Resume {
                token: tok,
                to_guid: 3
            }
        );
    }

    #[test]
    fn valid_full_token_resumes_a_target_with_no_snapshot_yet() {
        let tok = token(2, None);
        let t = TargetState {
            exists: true,
            resume_token: Some(tok.clone()),
            ..Default::default()
        };
        assert_eq!(
            ok(plan(&source(), &t, true, false)),
            Plan::Resume {
                token: tok,
                to_guid: 2
            }
        );
    }

    #[test]
    fn token_for_a_destroyed_snapshot_is_stale_and_planning_continues() {
        let mut t = target_with(&[("a", 1, 5)]);
        let tok = token(77, Some(1));
        t.resume_token = Some(tok.clone());
        let planned = plan(&source(), &t, true, false).unwrap();
        let stale = planned.abort_stale_token.expect("stale token");
        assert_eq!(stale.token, tok);
        assert_eq!(stale.to_string(), stale.reason);
        assert!(stale.reason.contains("guid 77"), "{}", stale.reason);
        assert!(matches!(planned.plan, Plan::Incremental { from, .. } if from.guid == 1));
    }

    #[test]
    fn token_whose_base_is_gone_is_stale() {
        let mut t = target_with(&[("b", 2, 5)]);
        t.resume_token = Some(token(3, Some(66)));
        let planned = plan(&source(), &t, true, false).unwrap();
        let stale = planned.abort_stale_token.expect("stale token");
        assert!(stale.reason.contains("base (guid 66)"), "{}", stale.reason);
        assert!(matches!(planned.plan, Plan::Incremental { from, .. } if from.guid == 2));
    }

    #[test]
    fn stale_full_token_plans_a_full_as_the_abort_destroys_the_partial_dataset() {
        let t = TargetState {
            exists: true,
            resume_token: Some(token(77, None)),
            ..Default::default()
        };
        let planned = plan(&source(), &t, true, false).unwrap();
        assert!(planned.abort_stale_token.is_some());
        assert_eq!(
            planned.plan,
            Plan::Full {
                to: snap("c", 3, 30)
            }
        );
    }

    #[test]
    fn corrupt_token_is_an_error() {
        let mut t = target_with(&[("a", 1, 5)]);
        t.resume_token = Some("1-0-10-zz".into());
        let err = plan(&source(), &t, true, false).unwrap_err();
        assert!(matches!(err, PlanError::BadToken(_)));
        assert!(err.to_string().contains("zfs recv -A"), "{err}");
    }
}
