//! Restore drills: what `fjord-recv drill` does to test a DR copy, decided
//! from the copy's snapshots and the scratch dataset's children (pure;
//! `fjord-recv` reads them and runs the plan).
//!
//! A drill, in order:
//! 1. destroys what an interrupted earlier drill of the same copy left:
//!    a child of the scratch dataset named `fjord-drill-…` that carries
//!    [`DRILL_PROP`] naming this copy (nothing else under the scratch
//!    dataset is ever touched);
//! 2. clones the newest complete snapshot (or the one named) as
//!    `SCRATCH/fjord-drill-<dataset>-<time>`, inert as the receiver's
//!    copies are (never auto-mounted, no setuid, no devices, not shared;
//!    read-only unless the check must write), with [`DRILL_PROP`] set;
//! 3. mounts it at a private mountpoint and runs the check against it;
//! 4. destroys the clone, whatever the check did.
//!
//! [`record`] keeps the outcome, and says how a node's drills stand for
//! `fjord-recv status` and its metrics.

pub mod record;

use crate::promote::{LogPosition, LOG_POSITION_PROPS};
use crate::TargetSnapshot;
use fjord_zfs::snapname::utc_from_unix;
use serde::Serialize;
use std::collections::BTreeMap;
use thiserror::Error;

/// The user property on every drill clone: `DATASET@SNAPSHOT TIME`.
pub const DRILL_PROP: &str = "fjord:drill";

/// The start of every drill clone's name.
pub const CLONE_PREFIX: &str = "fjord-drill-";

/// The longest dataset name OpenZFS takes (`ZFS_MAX_DATASET_NAME_LEN` less
/// the terminating NUL).
const MAX_NAME: usize = 255;

/// What a drill of one copy starts from, as read from ZFS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DrillState {
    /// The copy.
    pub dataset: String,
    /// It exists.
    pub exists: bool,
    /// Its complete snapshots (any order).
    pub snapshots: Vec<TargetSnapshot>,
    /// An unfinished resumable receive is pending on it.
    pub partial_receive: bool,
    /// (snapshot short name, property, value) of [`LOG_POSITION_PROPS`].
    pub log_positions: Vec<(String, String, String)>,
    /// The scratch dataset exists.
    pub scratch_exists: bool,
    /// The scratch dataset's children with their [`DRILL_PROP`].
    pub scratch_children: Vec<(String, Option<String>)>,
}

/// What the operator (or the timer) asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `--snapshot`: the snapshot to drill (short name); default the newest.
    pub snapshot: Option<String>,
    /// The scratch dataset, the clones' parent.
    pub scratch: String,
    /// The directory clones mount under.
    pub mount_dir: String,
    /// The check writes to the clone.
    pub writable: bool,
    /// The check, in words (for the plan).
    pub check: String,
    /// Unix seconds now.
    pub now: i64,
}

/// One step of a drill, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// `zfs destroy -r CLONE`: a clone an interrupted drill left.
    DestroyLeftover {
        /// The clone.
        clone: String,
    },
    /// `zfs clone -o …  SNAPSHOT CLONE`.
    Clone {
        /// `dataset@snap`.
        snapshot: String,
        /// The clone.
        clone: String,
        /// Set at creation.
        properties: BTreeMap<String, String>,
    },
    /// `zfs mount CLONE` at its mountpoint.
    Mount {
        /// The clone.
        clone: String,
        /// Where.
        mountpoint: String,
    },
    /// The check, against the mounted clone.
    Check {
        /// What runs.
        check: String,
    },
    /// `zfs destroy -r CLONE`: always, whatever the check did.
    Destroy {
        /// The clone.
        clone: String,
    },
}

impl Action {
    /// One line for the operator.
    pub fn describe(&self) -> String {
        match self {
            Action::DestroyLeftover { clone } => {
                format!("destroy {clone}, left by an interrupted drill")
            }
            Action::Clone {
                snapshot, clone, ..
            } => format!("clone {snapshot} as {clone} (inert)"),
            Action::Mount { clone, mountpoint } => format!("mount {clone} at {mountpoint}"),
            Action::Check { check } => format!("run the check: {check}"),
            Action::Destroy { clone } => format!("destroy {clone}"),
        }
    }
}

/// What a drill will do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The copy.
    pub dataset: String,
    /// The snapshot drilled (short name).
    pub snapshot: String,
    /// Its creation time, Unix seconds.
    pub snapshot_creation: i64,
    /// Its age now, seconds.
    pub snapshot_age_secs: i64,
    /// The database log position recorded with it, if any.
    pub log_position: Option<LogPosition>,
    /// The clone.
    pub clone: String,
    /// Where it mounts.
    pub mountpoint: String,
    /// Clones of interrupted drills, destroyed first.
    pub leftovers: Vec<String>,
    /// The steps, in order.
    pub actions: Vec<Action>,
    /// What the operator should know.
    pub notes: Vec<String>,
}

/// Why a drill cannot start; each says what to do.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum DrillError {
    /// The copy does not exist.
    #[error("{dataset} does not exist on this node (`zfs list -r` shows the copies)")]
    NoDataset {
        /// The copy.
        dataset: String,
    },
    /// No complete snapshot.
    #[error("{dataset} has no complete snapshot to drill (a first push never finished)")]
    NoSnapshot {
        /// The copy.
        dataset: String,
    },
    /// `--snapshot` names no snapshot of the copy.
    #[error(
        "{dataset} has no snapshot @{snapshot}; `zfs list -t snapshot -d 1 {dataset}` lists them"
    )]
    UnknownSnapshot {
        /// The copy.
        dataset: String,
        /// The requested one.
        snapshot: String,
    },
    /// The scratch dataset is missing.
    #[error("the scratch dataset {scratch} does not exist: create it once, `zfs create -o canmount=off -o mountpoint=none {scratch}` (README, \"Restore drills\")")]
    NoScratch {
        /// The scratch dataset.
        scratch: String,
    },
}

/// `2026-12-03T14:30:00Z` without separators: `20261203T143000Z`.
fn compact_time(unix: i64) -> String {
    let t = utc_from_unix(unix);
    format!(
        "{:04}{:02}{:02}T{:02}{:02}{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

/// The drill clone's name for `dataset` at `now` under `scratch`, unique
/// among `taken` (the scratch dataset's children).
pub fn clone_name(scratch: &str, dataset: &str, now: i64, taken: &[String]) -> String {
    let flat: String = dataset
        .chars()
        .map(|c| if c == '/' || c == ' ' { '_' } else { c })
        .collect();
    let stamp = compact_time(now);
    // scratch + "/" + prefix + flat + "-" + stamp + a "-N" suffix
    let room =
        MAX_NAME.saturating_sub(scratch.len() + 1 + CLONE_PREFIX.len() + 1 + stamp.len() + 4);
    let flat: String = flat.chars().take(room).collect();
    let base = format!("{scratch}/{CLONE_PREFIX}{flat}-{stamp}");
    let mut name = base.clone();
    let mut n = 2;
    while taken.contains(&name) {
        name = format!("{base}-{n}");
        n += 1;
    }
    name
}

/// [`DRILL_PROP`]'s value: `DATASET@SNAPSHOT 2026-12-03T14:30:00Z`.
pub fn marker(dataset: &str, snapshot: &str, now: i64) -> String {
    format!("{dataset}@{snapshot} {}", crate::promote::format_time(now))
}

/// The copy a [`DRILL_PROP`] value names.
pub fn marker_dataset(value: &str) -> Option<&str> {
    let (origin, _) = value.trim().rsplit_once(' ')?;
    origin.split_once('@').map(|(d, _)| d)
}

/// The children of the scratch dataset that an interrupted drill of
/// `dataset` left: named `fjord-drill-…` and marked for `dataset`.
pub fn leftovers(
    scratch: &str,
    dataset: &str,
    children: &[(String, Option<String>)],
) -> Vec<String> {
    children
        .iter()
        .filter(|(name, value)| {
            let short = name.strip_prefix(scratch).and_then(|r| r.strip_prefix('/'));
            short.is_some_and(|s| s.starts_with(CLONE_PREFIX) && !s.contains('/'))
                && value.as_deref().and_then(marker_dataset) == Some(dataset)
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Decides a drill of `state` as `req` asks.
pub fn plan(state: &DrillState, req: &Request) -> Result<Plan, DrillError> {
    let dataset = state.dataset.clone();
    if !state.exists {
        return Err(DrillError::NoDataset { dataset });
    }
    if !state.scratch_exists {
        return Err(DrillError::NoScratch {
            scratch: req.scratch.clone(),
        });
    }
    let snap = match &req.snapshot {
        Some(s) => state
            .snapshots
            .iter()
            .find(|x| x.name == *s)
            .ok_or_else(|| DrillError::UnknownSnapshot {
                dataset: dataset.clone(),
                snapshot: s.clone(),
            })?,
        None => state
            .snapshots
            .iter()
            .max_by_key(|s| s.createtxg)
            .ok_or_else(|| DrillError::NoSnapshot {
                dataset: dataset.clone(),
            })?,
    };
    let leftovers = leftovers(&req.scratch, &dataset, &state.scratch_children);
    let taken: Vec<String> = state
        .scratch_children
        .iter()
        .map(|(n, _)| n.clone())
        .collect();
    let clone = clone_name(&req.scratch, &dataset, req.now, &taken);
    let short = clone.rsplit('/').next().unwrap_or(&clone);
    let mountpoint = format!("{}/{short}", req.mount_dir.trim_end_matches('/'));
    let mut actions: Vec<Action> = leftovers
        .iter()
        .map(|c| Action::DestroyLeftover { clone: c.clone() })
        .collect();
    let on_off = |b: bool| if b { "on" } else { "off" }.to_string();
    let properties: BTreeMap<String, String> = [
        ("canmount", "noauto".to_string()),
        ("mountpoint", mountpoint.clone()),
        ("readonly", on_off(!req.writable)),
        ("setuid", "off".into()),
        ("devices", "off".into()),
        ("sharenfs", "off".into()),
        ("sharesmb", "off".into()),
        (DRILL_PROP, marker(&dataset, &snap.name, req.now)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    actions.push(Action::Clone {
        snapshot: format!("{dataset}@{}", snap.name),
        clone: clone.clone(),
        properties,
    });
    actions.push(Action::Mount {
        clone: clone.clone(),
        mountpoint: mountpoint.clone(),
    });
    actions.push(Action::Check {
        check: req.check.clone(),
    });
    actions.push(Action::Destroy {
        clone: clone.clone(),
    });
    let mut notes = Vec::new();
    if state.partial_receive {
        notes.push(format!("a receive into {dataset} is partial (resumable): the drill uses its newest complete snapshot, @{}", snap.name));
    }
    Ok(Plan {
        log_position: log_position(state, &snap.name),
        dataset,
        snapshot: snap.name.clone(),
        snapshot_creation: snap.creation,
        snapshot_age_secs: req.now.saturating_sub(snap.creation).max(0),
        clone,
        mountpoint,
        leftovers,
        actions,
        notes,
    })
}

fn log_position(state: &DrillState, snapshot: &str) -> Option<LogPosition> {
    LOG_POSITION_PROPS.iter().find_map(|prop| {
        state
            .log_positions
            .iter()
            .find(|(s, p, _)| s == snapshot && p == prop)
            .map(|(_, p, v)| LogPosition {
                property: p.clone(),
                value: v.clone(),
            })
    })
}

#[cfg(test)]
mod tests;
