//! Failover: what `fjord-recv promote` does to a DR copy, decided from
//! the copy's state (pure; `fjord-recv` reads the state and runs the plan),
//! and the fence that refuses pushes into a promoted copy.
//!
//! A promotion, in order:
//! 1. fences the tree: the user property [`PROMOTED_PROP`] on its root
//!    (time and recovery point; children inherit it, it survives restarts
//!    and `zfs get` shows it), so that the receiver refuses every push into
//!    it from then on ([`fence`]);
//! 2. per dataset, parents first: aborts an unfinished receive
//!    (`zfs recv -A`), rolls back to the recovery point when the copy has
//!    changes or newer snapshots (newer snapshots only with the operator's
//!    `--destroy-newer`, and never one held by a tag other than the DR
//!    node's own, as in [`crate::policy`]), reverts the properties the
//!    receiver forced ([`RESTORED_PROPS`]: `zfs inherit -S`, back to the
//!    primary's value when the stream carried it, else inherited), and
//!    mounts it.
//!
//! Re-running a promotion finishes what an interrupted one left, and never
//! rolls back a copy that is already promoted (it may hold new writes).

use crate::TargetSnapshot;
use fjord_zfs::snapname::{unix_from_utc, utc_from_unix, UtcTime};
use serde::Serialize;
use thiserror::Error;

/// The user property that marks a promoted copy: `TIME @SNAPSHOT`.
pub const PROMOTED_PROP: &str = "fjord:promoted";

/// User properties of a snapshot that record an application's log
/// position (written by the primary's snapshot hooks), in the order they
/// are looked for.
pub const LOG_POSITION_PROPS: &[&str] = &["fjord:wal_lsn", "fjord:binlog_pos"];

/// The properties the receiver forces on every received dataset that a
/// promotion reverts (`zfs inherit -S`). `sharenfs` and `sharesmb` stay
/// off: sharing a promoted copy is the operator's decision.
pub const RESTORED_PROPS: &[&str] = &[
    "readonly",
    "canmount",
    "mountpoint",
    "setuid",
    "devices",
    "volmode",
];

/// A promotion's record: when, and to which snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Marker {
    /// Unix seconds of the promotion.
    pub at: i64,
    /// The recovery point's short name.
    pub snapshot: String,
}

/// `2026-12-03T14:30:00Z`.
pub fn format_time(unix: i64) -> String {
    let t = utc_from_unix(unix);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        t.year, t.month, t.day, t.hour, t.minute, t.second
    )
}

fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() != 20 || b[4] != b'-' || b[7] != b'-' || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| s.get(r)?.parse::<u32>().ok();
    Some(unix_from_utc(&UtcTime {
        year: i64::from(n(0..4)?),
        month: n(5..7)?,
        day: n(8..10)?,
        hour: n(11..13)?,
        minute: n(14..16)?,
        second: n(17..19)?,
    }))
}

impl Marker {
    /// The property's value: `2026-12-03T14:30:00Z @fjord_2026-12-03T142000Z`.
    pub fn render(&self) -> String {
        format!("{} @{}", format_time(self.at), self.snapshot)
    }

    /// Reads a value written by [`Marker::render`]; `None` for anything else.
    pub fn parse(value: &str) -> Option<Marker> {
        let (time, snap) = value.trim().split_once(" @")?;
        Some(Marker {
            at: parse_time(time)?,
            snapshot: snap.to_string(),
        })
    }
}

/// A push refused because its target was promoted.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
#[error("{dataset} was promoted on the DR node at {when} (recovery point @{snapshot}{on}): it is a primary now and takes no pushes. To fail back: `fjord-recv demote` this primary's dataset (its own writes are kept aside), push the copy back from the DR node, then `fjord-recv promote` it here and `fjord-recv demote {root}` on the DR node (README, \"Game day\")", when = format_time(marker.at), snapshot = marker.snapshot, on = if root == dataset { String::new() } else { format!(", promoted as part of {root}") })]
pub struct Fenced {
    /// The dataset the push was for.
    pub dataset: String,
    /// The promoted dataset carrying the marker (`dataset` or an ancestor).
    pub root: String,
    /// The promotion.
    pub marker: Marker,
}

/// The fence: a push into `dataset` whose effective [`PROMOTED_PROP`]
/// (set on `root`, itself or an ancestor) is `value` is refused. A value
/// fjord did not write still fences (someone marked it on purpose), with
/// the time unknown (0).
pub fn fence(dataset: &str, value: Option<&str>, root: &str) -> Result<(), Fenced> {
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty() && *v != "-") else {
        return Ok(());
    };
    let marker = Marker::parse(v).unwrap_or(Marker {
        at: 0,
        snapshot: v.to_string(),
    });
    Err(Fenced {
        dataset: dataset.into(),
        root: root.into(),
        marker,
    })
}

/// One property the receiver may have forced, as `zfs get` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PropState {
    /// Its name.
    pub name: String,
    /// Its effective value.
    pub value: String,
    /// Set on the dataset itself (by `zfs recv -o`, or by hand).
    pub local: bool,
    /// The value the stream carried (`zfs send -p`), if any.
    pub received: Option<String>,
}

/// One dataset of the tree being promoted, as read from ZFS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyState {
    /// Its name.
    pub dataset: String,
    /// Its snapshots (any order), with foreign holds.
    pub snapshots: Vec<TargetSnapshot>,
    /// Short names of the snapshots carrying the DR node's own hold.
    pub dr_held: Vec<String>,
    /// An unfinished resumable receive is pending.
    pub partial_receive: bool,
    /// Bytes changed since its newest snapshot.
    pub written: u64,
    /// [`RESTORED_PROPS`] as they are.
    pub props: Vec<PropState>,
    /// Mounted now.
    pub mounted: bool,
    /// A volume (zvol): nothing to mount; its device node comes back with
    /// `volmode`.
    pub volume: bool,
    /// (snapshot short name, property, value) of [`LOG_POSITION_PROPS`].
    pub log_positions: Vec<(String, String, String)>,
}

/// The tree being promoted: its root first, then descendants, parents
/// before children.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TreeState {
    /// The root's [`PROMOTED_PROP`] set on the root itself, if any.
    pub marker: Option<String>,
    /// The root's `fjord:demoted` ([`crate::demote`]) set on the root
    /// itself: a former primary that received the failback, promoted
    /// back.
    pub demoted: Option<String>,
    /// The datasets.
    pub copies: Vec<CopyState>,
}

/// What the operator asked.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `--snapshot`: the recovery point (short name); default the newest.
    pub snapshot: Option<String>,
    /// `--mountpoint`: where the root mounts; default the primary's (if the
    /// stream carried it) or the inherited one.
    pub mountpoint: Option<String>,
    /// `--destroy-newer`: a recovery point older than the newest may
    /// destroy the snapshots after it.
    pub destroy_newer: bool,
    /// Unix seconds now.
    pub now: i64,
}

/// One step of a promotion, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// `zfs set fjord:promoted=VALUE DATASET`: the fence.
    Fence {
        /// The root.
        dataset: String,
        /// The marker's value.
        value: String,
    },
    /// `zfs inherit fjord:demoted DATASET`: its pushes may run again.
    LiftDemoted {
        /// The root.
        dataset: String,
    },
    /// `zfs recv -A DATASET`.
    AbortPartialReceive {
        /// The dataset.
        dataset: String,
    },
    /// `zfs release fjord-dr SNAPSHOT`, so that a rollback can destroy it.
    ReleaseHold {
        /// `dataset@snap`.
        snapshot: String,
    },
    /// `zfs rollback [-r] SNAPSHOT`.
    Rollback {
        /// `dataset@snap`.
        snapshot: String,
        /// Short names of the newer snapshots it destroys (`-r`).
        destroys: Vec<String>,
    },
    /// `zfs inherit -S PROPERTY DATASET`.
    RestoreProperty {
        /// The dataset.
        dataset: String,
        /// The property.
        property: String,
        /// Its value now.
        from: String,
        /// The primary's value, if the stream carried it (else inherited).
        received: Option<String>,
    },
    /// `zfs set mountpoint=PATH DATASET` (`--mountpoint`).
    SetMountpoint {
        /// The dataset.
        dataset: String,
        /// The path.
        path: String,
    },
    /// `zfs mount DATASET`.
    Mount {
        /// The dataset.
        dataset: String,
    },
}

impl Action {
    /// One line for the operator.
    pub fn describe(&self) -> String {
        match self {
            Action::Fence { dataset, value } => format!(
                "fence {dataset}: set {PROMOTED_PROP}={value} (pushes into it are refused from now on)"
            ),
            Action::LiftDemoted { dataset } => format!(
                "lift {dataset}'s demotion (zfs inherit {}): its push job may snapshot and send it again",
                crate::demote::DEMOTED_PROP
            ),
            Action::AbortPartialReceive { dataset } => {
                format!("abort the unfinished receive into {dataset} (zfs recv -A)")
            }
            Action::ReleaseHold { snapshot } => {
                format!("release the DR node's hold on {snapshot}")
            }
            Action::Rollback { snapshot, destroys } if destroys.is_empty() => {
                format!("roll back to {snapshot}, discarding changes made since")
            }
            Action::Rollback { snapshot, destroys } => format!(
                "roll back to {snapshot}, destroying the newer snapshot(s) {}",
                destroys.join(", ")
            ),
            Action::RestoreProperty {
                dataset,
                property,
                from,
                received,
            } => match received {
                Some(r) => format!("{dataset}: {property} {from} -> {r} (the primary's value)"),
                None => format!("{dataset}: {property} {from} -> inherited"),
            },
            Action::SetMountpoint { dataset, path } => {
                format!("{dataset}: mountpoint -> {path}")
            }
            Action::Mount { dataset } => format!("mount {dataset}"),
        }
    }
}

/// The application's log position recorded with a snapshot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LogPosition {
    /// The property (`fjord:wal_lsn`, ...).
    pub property: String,
    /// Its value.
    pub value: String,
}

/// Where one dataset will be after the promotion.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RecoveryPoint {
    /// The dataset.
    pub dataset: String,
    /// The snapshot (short name).
    pub snapshot: String,
    /// Its creation time, Unix seconds.
    pub creation: i64,
    /// Its age now, seconds: the data written on the primary after it is
    /// not on this copy.
    pub age_secs: i64,
    /// The database log position recorded with it, if any.
    pub log_position: Option<LogPosition>,
}

/// What a promotion will do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Plan {
    /// The root.
    pub dataset: String,
    /// Set when the tree was promoted before: this run only finishes.
    pub already_promoted: Option<Marker>,
    /// Per dataset, parents first.
    pub recovery_points: Vec<RecoveryPoint>,
    /// The steps, in order.
    pub actions: Vec<Action>,
    /// What the operator should know (a child at another snapshot, ...).
    pub notes: Vec<String>,
}

/// Why a promotion cannot go ahead; each says what to do.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum PromoteError {
    /// Nothing to promote.
    #[error("{dataset} does not exist on this node")]
    NoDataset {
        /// The dataset.
        dataset: String,
    },
    /// No complete snapshot.
    #[error("{dataset} has no complete snapshot to promote (a first push never finished); there is no recovery point")]
    NoSnapshot {
        /// The dataset.
        dataset: String,
    },
    /// `--snapshot` names no snapshot of the root.
    #[error(
        "{dataset} has no snapshot @{snapshot}; `zfs list -t snapshot -d 1 {dataset}` lists them"
    )]
    UnknownSnapshot {
        /// The dataset.
        dataset: String,
        /// The requested one.
        snapshot: String,
    },
    /// An older recovery point would destroy newer snapshots.
    #[error("promoting {dataset} to @{snapshot} destroys its newer snapshot(s) {}; add --destroy-newer if that is what you want (or hold one with `zfs hold` to keep it, which refuses the rollback)", newer.join(", "))]
    WouldDestroy {
        /// The dataset.
        dataset: String,
        /// The recovery point.
        snapshot: String,
        /// The newer snapshots.
        newer: Vec<String>,
    },
    /// A newer snapshot carries another tag's hold.
    #[error("{dataset}@{snapshot} is held ({tags}) and would be destroyed by the rollback; release those holds first, or promote to a newer snapshot")]
    Held {
        /// The dataset.
        dataset: String,
        /// The held snapshot.
        snapshot: String,
        /// Its foreign tags.
        tags: String,
    },
    /// Already promoted, to another snapshot than the one asked for.
    #[error("{dataset} was already promoted at {} to @{}; a promoted copy is never rolled back by promote (it may hold new writes)", format_time(marker.at), marker.snapshot)]
    AlreadyPromoted {
        /// The dataset.
        dataset: String,
        /// The earlier promotion.
        marker: Marker,
    },
}

/// Decides a promotion of `tree` as `req` asks.
pub fn plan(tree: &TreeState, req: &Request) -> Result<Plan, PromoteError> {
    let root = tree.copies.first().ok_or_else(|| PromoteError::NoDataset {
        dataset: String::new(),
    })?;
    let already = tree.marker.as_deref().and_then(Marker::parse);
    let chosen = match (&already, &req.snapshot) {
        (Some(m), Some(s)) if *s != m.snapshot => {
            return Err(PromoteError::AlreadyPromoted {
                dataset: root.dataset.clone(),
                marker: m.clone(),
            })
        }
        (Some(m), _) => m.snapshot.clone(),
        (None, Some(s)) => {
            if !root.snapshots.iter().any(|x| x.name == *s) {
                return Err(PromoteError::UnknownSnapshot {
                    dataset: root.dataset.clone(),
                    snapshot: s.clone(),
                });
            }
            s.clone()
        }
        (None, None) => newest(root)
            .ok_or_else(|| PromoteError::NoSnapshot {
                dataset: root.dataset.clone(),
            })?
            .name
            .clone(),
    };
    let mut out = Plan {
        dataset: root.dataset.clone(),
        already_promoted: already.clone(),
        recovery_points: Vec::new(),
        actions: Vec::new(),
        notes: Vec::new(),
    };
    if let Some(m) = &already {
        out.notes.push(format!(
            "{} was promoted at {} to @{}: finishing what is left, no rollback",
            root.dataset,
            format_time(m.at),
            m.snapshot
        ));
    } else {
        out.actions.push(Action::Fence {
            dataset: root.dataset.clone(),
            value: Marker {
                at: req.now,
                snapshot: chosen.clone(),
            }
            .render(),
        });
    }
    if tree.demoted.is_some() {
        out.actions.push(Action::LiftDemoted {
            dataset: root.dataset.clone(),
        });
    }
    let root_creation = root
        .snapshots
        .iter()
        .find(|s| s.name == chosen)
        .map(|s| s.creation);
    for (i, copy) in tree.copies.iter().enumerate() {
        let point = recovery_snapshot(copy, &chosen, root_creation, &mut out.notes)?;
        if already.is_none() {
            data_actions(copy, point, req.destroy_newer, &mut out.actions)?;
        }
        out.recovery_points.push(RecoveryPoint {
            dataset: copy.dataset.clone(),
            snapshot: point.name.clone(),
            creation: point.creation,
            age_secs: req.now.saturating_sub(point.creation),
            log_position: log_position(copy, &point.name),
        });
        property_actions(copy, i == 0, req.mountpoint.as_deref(), &mut out.actions);
        if !copy.mounted && !copy.volume {
            out.actions.push(Action::Mount {
                dataset: copy.dataset.clone(),
            });
        }
    }
    Ok(out)
}

fn newest(copy: &CopyState) -> Option<&TargetSnapshot> {
    copy.snapshots.iter().max_by_key(|s| s.createtxg)
}

/// The snapshot `copy` is promoted to: the root's (a recursive snapshot
/// has the same name on every child), else the child's newest not newer
/// than the root's, with a note.
fn recovery_snapshot<'a>(
    copy: &'a CopyState,
    chosen: &str,
    root_creation: Option<i64>,
    notes: &mut Vec<String>,
) -> Result<&'a TargetSnapshot, PromoteError> {
    if let Some(s) = copy.snapshots.iter().find(|s| s.name == chosen) {
        return Ok(s);
    }
    let fallback = copy
        .snapshots
        .iter()
        .filter(|s| root_creation.is_none_or(|c| s.creation <= c))
        .max_by_key(|s| s.createtxg)
        .ok_or_else(|| PromoteError::NoSnapshot {
            dataset: copy.dataset.clone(),
        })?;
    notes.push(format!(
        "{} has no @{chosen}: promoted to its @{} instead (not consistent with the rest of the tree)",
        copy.dataset, fallback.name
    ));
    Ok(fallback)
}

/// Abort, release and roll back, as the copy needs.
fn data_actions(
    copy: &CopyState,
    point: &TargetSnapshot,
    destroy_newer: bool,
    actions: &mut Vec<Action>,
) -> Result<(), PromoteError> {
    if copy.partial_receive {
        actions.push(Action::AbortPartialReceive {
            dataset: copy.dataset.clone(),
        });
    }
    let mut newer: Vec<&TargetSnapshot> = copy
        .snapshots
        .iter()
        .filter(|s| s.createtxg > point.createtxg)
        .collect();
    newer.sort_by_key(|s| s.createtxg);
    let full = format!("{}@{}", copy.dataset, point.name);
    if newer.is_empty() {
        if copy.written > 0 {
            actions.push(Action::Rollback {
                snapshot: full,
                destroys: Vec::new(),
            });
        }
        return Ok(());
    }
    if !destroy_newer {
        return Err(PromoteError::WouldDestroy {
            dataset: copy.dataset.clone(),
            snapshot: point.name.clone(),
            newer: newer.iter().map(|s| s.name.clone()).collect(),
        });
    }
    if let Some(h) = newer.iter().find(|s| !s.foreign_holds.is_empty()) {
        return Err(PromoteError::Held {
            dataset: copy.dataset.clone(),
            snapshot: h.name.clone(),
            tags: h.foreign_holds.join(", "),
        });
    }
    for s in newer.iter().filter(|s| copy.dr_held.contains(&s.name)) {
        actions.push(Action::ReleaseHold {
            snapshot: format!("{}@{}", copy.dataset, s.name),
        });
    }
    actions.push(Action::Rollback {
        snapshot: full,
        destroys: newer.iter().map(|s| s.name.clone()).collect(),
    });
    Ok(())
}

/// Reverts what the receiver forced (set locally); `--mountpoint` on the
/// root instead of its mountpoint.
fn property_actions(
    copy: &CopyState,
    is_root: bool,
    mountpoint: Option<&str>,
    actions: &mut Vec<Action>,
) {
    for name in RESTORED_PROPS {
        let prop = copy.props.iter().find(|p| p.name == *name);
        if *name == "mountpoint" && is_root {
            if let Some(path) = mountpoint {
                if prop.is_none_or(|p| p.value != path) {
                    actions.push(Action::SetMountpoint {
                        dataset: copy.dataset.clone(),
                        path: path.into(),
                    });
                }
                continue;
            }
        }
        let Some(p) = prop.filter(|p| p.local) else {
            continue;
        };
        if p.received.as_deref() == Some(p.value.as_str()) {
            continue;
        }
        actions.push(Action::RestoreProperty {
            dataset: copy.dataset.clone(),
            property: p.name.clone(),
            from: p.value.clone(),
            received: p.received.clone(),
        });
    }
}

fn log_position(copy: &CopyState, snapshot: &str) -> Option<LogPosition> {
    LOG_POSITION_PROPS.iter().find_map(|prop| {
        copy.log_positions
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
