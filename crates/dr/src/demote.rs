//! Failback's first step: what `fjord-recv demote` does to a dataset that
//! was a primary, so that it can receive again (pure; `fjord-recv` reads
//! the state and runs the plan).
//!
//! The old primary comes back after a failover with writes the promoted
//! copy never saw: snapshots after the last replicated one (the *base*)
//! and changes since its newest snapshot. A demotion keeps all of it and
//! leaves the dataset at the base, unmodified and inert, so that the
//! promoted copy's pushes arrive as plain incrementals:
//!
//! 1. unmounts the tree;
//! 2. if anything was written after the base: snapshots the tree
//!    (`@fjord_diverged_TIME`, so uncommitted changes are kept too),
//!    renames it aside (`DATASET-diverged-TIME`, marked with
//!    [`KEPT_FROM_PROP`]), and for each dataset that has the base, clones
//!    `ASIDE/...@base` back to the dataset's name and promotes the clone
//!    (`zfs promote`): the dataset owns the base and everything before it
//!    again, the aside tree keeps the diverged snapshots and changes, as a
//!    dataset the operator can mount, read, send or destroy. Nothing is
//!    destroyed;
//! 3. makes every dataset of the tree inert (`readonly=on`,
//!    `canmount=noauto`), as a receiver wants its targets;
//! 4. lifts the fence `fjord:promoted` if the dataset itself had been
//!    promoted (a switchover's second half), since it is a target now;
//! 5. marks it ([`DEMOTED_PROP`]: time and base): `fjord-send push`
//!    refuses to snapshot or send a demoted dataset, so a forgotten push
//!    timer on the old primary cannot make it diverge again.
//!
//! Re-running finishes an interrupted demotion from the state it finds.

use crate::promote::{format_time, Marker, PROMOTED_PROP};
use serde::Serialize;
use thiserror::Error;

pub use fjord_config::DEMOTED_PROP;

/// The user property on a kept-aside tree's root: the dataset it was,
/// `DATASET@BASE`.
pub const KEPT_FROM_PROP: &str = "fjord:kept_from";

/// The properties every dataset of a demoted tree gets: a receive target
/// is not written and not mounted by accident.
pub const INERT_PROPS: &[(&str, &str)] = &[("readonly", "on"), ("canmount", "noauto")];

/// One dataset of the tree, as read from ZFS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Copy {
    /// Its name.
    pub dataset: String,
    /// Its snapshots' short names, oldest first.
    pub snapshots: Vec<String>,
    /// Short names of its snapshots held by one of fjord's tags (the
    /// sender's `fjord-JOB`, or the DR node's `fjord-dr`): replicated ones.
    pub fjord_held: Vec<String>,
    /// `written@BASE`: bytes changed since the base, later snapshots
    /// included (`None` when it has no base).
    pub written_since_base: Option<u64>,
    /// Its `origin` (a clone's source snapshot), if any.
    pub origin: Option<String>,
    /// Mounted now.
    pub mounted: bool,
    /// `readonly` and `canmount` as they are.
    pub readonly: String,
    /// See `readonly`.
    pub canmount: String,
}

/// The tree being demoted, and a kept-aside tree of an earlier run.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DemoteState {
    /// The root's name.
    pub root: String,
    /// The tree (root first, parents before children); empty when the
    /// root does not exist (an interrupted run renamed it aside).
    pub copies: Vec<Copy>,
    /// [`PROMOTED_PROP`] set on the root itself.
    pub promoted: Option<String>,
    /// [`DEMOTED_PROP`] set on the root itself.
    pub demoted: Option<String>,
    /// A tree kept aside from this root by an earlier run, whose clones
    /// are not all promoted yet: its root, its base, and its datasets.
    pub aside: Option<(String, String, Vec<Copy>)>,
}

/// What the operator asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `--base`: the common snapshot; default the newest one fjord holds.
    pub base: Option<String>,
    /// Unix seconds now.
    pub now: i64,
}

/// One step, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// `zfs set PROPERTY=VALUE DATASET`.
    Set {
        /// The dataset.
        dataset: String,
        /// The property.
        property: String,
        /// Its new value.
        value: String,
    },
    /// `zfs unmount DATASET` (and what is mounted below it).
    Unmount {
        /// The dataset.
        dataset: String,
    },
    /// `zfs snapshot -r SNAPSHOT`: keeps the changes since the newest
    /// snapshot.
    Snapshot {
        /// `dataset@name`.
        snapshot: String,
    },
    /// `zfs rename FROM TO`: the diverged tree, aside.
    RenameAside {
        /// The dataset.
        from: String,
        /// Its new name.
        to: String,
    },
    /// `zfs clone -o readonly=on -o canmount=noauto SNAPSHOT DATASET`.
    Clone {
        /// `aside@base`.
        snapshot: String,
        /// The dataset's own name again.
        dataset: String,
    },
    /// `zfs promote DATASET`: the clone takes the base and what came
    /// before it from the aside tree.
    Promote {
        /// The clone.
        dataset: String,
    },
    /// `zfs rollback SNAPSHOT` (its newest): a clone just promoted shows
    /// a few bytes written (1024 on OpenZFS 2.3) that `zfs recv` would
    /// refuse as a modified target.
    Rollback {
        /// `dataset@base`.
        snapshot: String,
    },
    /// `zfs inherit fjord:promoted DATASET`: the fence of a promotion.
    LiftFence {
        /// The dataset.
        dataset: String,
    },
}

impl Action {
    /// One line for the operator.
    pub fn describe(&self) -> String {
        match self {
            Action::Set {
                dataset,
                property,
                value,
            } => format!("{dataset}: {property}={value}"),
            Action::Unmount { dataset } => format!("unmount {dataset}"),
            Action::Snapshot { snapshot } => {
                format!("snapshot {snapshot} (recursive): keeps the writes since the last snapshot")
            }
            Action::RenameAside { from, to } => {
                format!("rename {from} to {to}: the diverged writes, kept")
            }
            Action::Clone { snapshot, dataset } => {
                format!("clone {snapshot} as {dataset} (inert)")
            }
            Action::Promote { dataset } => {
                format!("zfs promote {dataset}: it owns the base and its history again")
            }
            Action::Rollback { snapshot } => {
                format!("roll back to {snapshot} (nothing after it: a fresh clone's metadata)")
            }
            Action::LiftFence { dataset } => {
                format!("lift the fence on {dataset} (zfs inherit {PROMOTED_PROP})")
            }
        }
    }
}

/// What a demotion keeps of the old primary's writes: listed to the
/// operator, destroyed by nothing fjord runs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Kept {
    /// The aside tree's root.
    pub dataset: String,
    /// `(dataset, short name)` of the snapshots after the base it holds,
    /// the diverged snapshot included.
    pub snapshots: Vec<(String, String)>,
    /// Bytes written after the base, per dataset.
    pub written: Vec<(String, u64)>,
}

/// What a demotion will do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The root.
    pub dataset: String,
    /// The base: the snapshot the promoted copy's pushes start from.
    pub base: String,
    /// The diverged writes it keeps, if any.
    pub kept: Option<Kept>,
    /// The steps.
    pub actions: Vec<Action>,
    /// What the operator should know.
    pub notes: Vec<String>,
}

/// Why a demotion cannot go ahead; each says what to do.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DemoteError {
    /// Nothing to demote, and no earlier run to finish.
    #[error("{dataset} does not exist on this node")]
    NoDataset {
        /// The dataset.
        dataset: String,
    },
    /// A pool's root cannot be renamed aside.
    #[error("{dataset} is a pool's root; demote works on a dataset inside a pool")]
    PoolRoot {
        /// The dataset.
        dataset: String,
    },
    /// No snapshot fjord holds: no base known.
    #[error("{dataset} has no snapshot held by fjord, so the last replicated one is unknown; name the common snapshot with --base (the recovery point `fjord-recv promote` printed on the DR node)")]
    NoBase {
        /// The dataset.
        dataset: String,
    },
    /// `--base` names no snapshot.
    #[error("{dataset} has no snapshot @{base}; `zfs list -t snapshot -d 1 {dataset}` lists them")]
    UnknownBase {
        /// The dataset.
        dataset: String,
        /// The requested one.
        base: String,
    },
    /// Already demoted to another base.
    #[error("{dataset} was demoted at {} to @{}; run with that --base to finish, or promote it first", format_time(marker.at), marker.snapshot)]
    OtherBase {
        /// The dataset.
        dataset: String,
        /// The earlier demotion.
        marker: Marker,
    },
}

/// Decides a demotion of `state` as `req` asks.
pub fn plan(state: &DemoteState, req: &Request) -> Result<Plan, DemoteError> {
    if !state.root.contains('/') {
        return Err(DemoteError::PoolRoot {
            dataset: state.root.clone(),
        });
    }
    if let Some((aside, base, copies)) = &state.aside {
        return Ok(finish_aside(state, aside, base, copies, req.now));
    }
    let root = state.copies.first().ok_or_else(|| DemoteError::NoDataset {
        dataset: state.root.clone(),
    })?;
    let base = base_of(state, req)?;
    let mut out = Plan {
        dataset: root.dataset.clone(),
        base: base.clone(),
        kept: None,
        actions: Vec::new(),
        notes: Vec::new(),
    };
    if state.copies.iter().any(|c| c.mounted) {
        out.actions.push(Action::Unmount {
            dataset: root.dataset.clone(),
        });
    }
    let diverged: Vec<&Copy> = state
        .copies
        .iter()
        .filter(|c| c.written_since_base != Some(0))
        .collect();
    if !diverged.is_empty() {
        keep_aside(state, &base, &diverged, req.now, &mut out);
    } else {
        push_inert(&state.copies, &mut out.actions);
    }
    if state.promoted.is_some() {
        out.actions.push(Action::LiftFence {
            dataset: root.dataset.clone(),
        });
    }
    // last: on the dataset that stays under this name (after a keep-aside,
    // the clone; the original carried nothing to the aside tree)
    if state.demoted.is_none() || out.kept.is_some() {
        out.actions.push(mark(&root.dataset, req.now, &base));
    }
    Ok(out)
}

fn mark(root: &str, now: i64, base: &str) -> Action {
    Action::Set {
        dataset: root.to_string(),
        property: DEMOTED_PROP.into(),
        value: Marker {
            at: now,
            snapshot: base.to_string(),
        }
        .render(),
    }
}

/// The base a demotion of `state` uses: an earlier run's, `--base`, or
/// the root's newest snapshot fjord holds. Only the root's snapshots,
/// holds and marker are read (the edge asks before it reads `written@`).
pub fn base_of(state: &DemoteState, req: &Request) -> Result<String, DemoteError> {
    let root = state.copies.first().ok_or_else(|| DemoteError::NoDataset {
        dataset: state.root.clone(),
    })?;
    let earlier = state.demoted.as_deref().and_then(Marker::parse);
    match (&earlier, &req.base) {
        (Some(m), Some(b)) if *b != m.snapshot => {
            return Err(DemoteError::OtherBase {
                dataset: root.dataset.clone(),
                marker: m.clone(),
            })
        }
        (Some(m), _) => return Ok(m.snapshot.clone()),
        _ => {}
    }
    if let Some(b) = &req.base {
        return if root.snapshots.contains(b) {
            Ok(b.clone())
        } else {
            Err(DemoteError::UnknownBase {
                dataset: root.dataset.clone(),
                base: b.clone(),
            })
        };
    }
    root.snapshots
        .iter()
        .rev()
        .find(|s| root.fjord_held.contains(s))
        .cloned()
        .ok_or_else(|| DemoteError::NoBase {
            dataset: root.dataset.clone(),
        })
}

/// `src/data-diverged-20261203T143000Z`.
fn aside_name(root: &str, now: i64) -> String {
    format!("{root}-diverged-{}", compact_time(now))
}

fn compact_time(now: i64) -> String {
    format_time(now).replace([':', '-'], "")
}

fn keep_aside(state: &DemoteState, base: &str, diverged: &[&Copy], now: i64, out: &mut Plan) {
    let root = &state.root;
    let aside = aside_name(root, now);
    let snap = format!("fjord_diverged_{}", compact_time(now));
    let mut kept = Kept {
        dataset: aside.clone(),
        snapshots: Vec::new(),
        written: Vec::new(),
    };
    for c in &state.copies {
        let moved = renamed(&c.dataset, root, &aside);
        let after: Vec<&String> = match c.snapshots.iter().position(|s| s == base) {
            Some(i) => c.snapshots[i + 1..].iter().collect(),
            None => c.snapshots.iter().collect(),
        };
        kept.snapshots
            .extend(after.into_iter().map(|s| (moved.clone(), s.clone())));
        kept.snapshots.push((moved.clone(), snap.clone()));
        if let Some(w) = c.written_since_base {
            kept.written.push((moved, w));
        }
    }
    for c in diverged {
        if c.written_since_base.is_none() {
            out.notes.push(format!(
                "{} has no @{base} (created after it): it is kept aside only and comes back with the next push",
                c.dataset
            ));
        }
    }
    out.actions.push(Action::Snapshot {
        snapshot: format!("{root}@{snap}"),
    });
    out.actions.push(Action::RenameAside {
        from: root.clone(),
        to: aside.clone(),
    });
    out.actions.push(Action::Set {
        dataset: aside.clone(),
        property: KEPT_FROM_PROP.into(),
        value: format!("{root}@{base}"),
    });
    for c in &state.copies {
        out.actions.push(Action::Set {
            dataset: renamed(&c.dataset, root, &aside),
            property: "canmount".into(),
            value: "noauto".into(),
        });
    }
    let with_base: Vec<Copy> = state
        .copies
        .iter()
        .filter(|c| c.written_since_base.is_some())
        .map(|c| Copy {
            dataset: renamed(&c.dataset, root, &aside),
            ..c.clone()
        })
        .collect();
    clone_back(root, &aside, base, &with_base, &[], &mut out.actions);
    out.kept = Some(kept);
}

/// `root/child` → `aside/child`.
fn renamed(dataset: &str, root: &str, aside: &str) -> String {
    format!("{aside}{}", &dataset[root.len()..])
}

/// Clone and promote each aside dataset that has the base, unless it is
/// already back (`present`: datasets of the tree that exist, with their
/// origin); then make the tree inert.
fn clone_back(
    root: &str,
    aside: &str,
    base: &str,
    aside_copies: &[Copy],
    present: &[Copy],
    actions: &mut Vec<Action>,
) {
    let mut back = Vec::new();
    for a in aside_copies {
        let dataset = format!("{root}{}", &a.dataset[aside.len()..]);
        let origin = format!("{}@{base}", a.dataset);
        match present.iter().find(|p| p.dataset == dataset) {
            None => {
                actions.push(Action::Clone {
                    snapshot: origin,
                    dataset: dataset.clone(),
                });
                actions.push(Action::Promote {
                    dataset: dataset.clone(),
                });
            }
            Some(p) if p.origin.as_deref() == Some(origin.as_str()) => {
                actions.push(Action::Promote {
                    dataset: dataset.clone(),
                });
            }
            Some(_) => {}
        }
        actions.push(Action::Rollback {
            snapshot: format!("{dataset}@{base}"),
        });
        back.push(Copy {
            dataset,
            readonly: "on".into(),
            canmount: "noauto".into(),
            ..Copy::default()
        });
    }
    // clones are made inert by `zfs clone -o`; the promoted ones already are
    push_inert(
        &present
            .iter()
            .filter(|p| back.iter().any(|b| b.dataset == p.dataset))
            .cloned()
            .collect::<Vec<_>>(),
        actions,
    );
}

fn push_inert(copies: &[Copy], actions: &mut Vec<Action>) {
    for c in copies {
        for (prop, value) in INERT_PROPS {
            let now = if *prop == "readonly" {
                &c.readonly
            } else {
                &c.canmount
            };
            if now != value {
                actions.push(Action::Set {
                    dataset: c.dataset.clone(),
                    property: (*prop).into(),
                    value: (*value).into(),
                });
            }
        }
    }
}

/// An earlier run renamed the tree aside: clone back and promote what is
/// not back yet.
fn finish_aside(state: &DemoteState, aside: &str, base: &str, copies: &[Copy], now: i64) -> Plan {
    let mut out = Plan {
        dataset: state.root.clone(),
        base: base.to_string(),
        kept: Some(Kept {
            dataset: aside.to_string(),
            snapshots: copies
                .iter()
                .flat_map(|c| {
                    let from = c
                        .snapshots
                        .iter()
                        .position(|s| s == base)
                        .map_or(0, |i| i + 1);
                    c.snapshots[from..]
                        .iter()
                        .map(|s| (c.dataset.clone(), s.clone()))
                        .collect::<Vec<_>>()
                })
                .collect(),
            written: Vec::new(),
        }),
        actions: Vec::new(),
        notes: vec![format!(
            "an earlier demote kept {}'s writes aside as {aside}: finishing it",
            state.root
        )],
    };
    let with_base: Vec<Copy> = copies
        .iter()
        .filter(|c| c.snapshots.iter().any(|s| s == base))
        .cloned()
        .collect();
    clone_back(
        &state.root,
        aside,
        base,
        &with_base,
        &state.copies,
        &mut out.actions,
    );
    // promoted back already (the aside dataset is the clone now): its
    // fresh metadata may still need the rollback
    let suffix = format!("@{base}");
    for c in copies {
        if let Some(origin) = c.origin.as_deref().filter(|o| o.ends_with(&suffix)) {
            if origin.starts_with(&state.root) {
                out.actions.push(Action::Rollback {
                    snapshot: origin.to_string(),
                });
            }
        }
    }
    if state.promoted.is_some() {
        out.actions.push(Action::LiftFence {
            dataset: state.root.clone(),
        });
    }
    if state.demoted.is_none() {
        out.actions.push(mark(&state.root, now, base));
    }
    out
}

#[cfg(test)]
mod tests;
