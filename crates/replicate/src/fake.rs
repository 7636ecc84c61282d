//! In-memory fakes of both sides, for tests of the replication logic in
//! milliseconds: [`FakePool`] (snapshots, GUIDs, holds, `zfs send`) and
//! [`FakeDrNode`] (targets, resume tokens, `written`, the rules by which
//! `zfs recv` refuses). Faults are injected one at a time.
//!
//! They model ZFS's rules that the replication logic depends on; they are
//! not ZFS. Claims about real ZFS are tested in the lab.

use crate::dr_node::{DrError, DrNode, Transfer, TransferStats};
use crate::plan::TargetState;
use crate::pool::{Pool, PoolError, SendStream};
use crate::tripwire::StreamFigures;
use fjord_stream::token::{self, ResumeToken};
use fjord_zfs::{SendKind, SendSpec, SnapshotInfo};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::{Mutex, MutexGuard};

pub use crate::hooks::FakeHooks;

/// A fault for the next matching [`FakePool`] operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PoolFault {
    /// `snapshot` fails.
    Snapshot,
    /// `send` of this dataset fails to start.
    StartSend(String),
    /// `send` of this dataset starts, but its stream fails (`zfs send`
    /// exits non-zero).
    StreamFails(String),
    /// `hold` fails.
    Hold,
    /// `destroy_snapshot` fails.
    Destroy,
}

/// A fault for the next matching [`FakeDrNode`] request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DrFault {
    /// The next request of any kind finds the DR node unreachable.
    Unreachable,
    /// The next transfer into this target commits this many snapshots of
    /// its stream, then the link is lost for good: the next one is left as
    /// a resumable partial receive.
    LinkLostAfter {
        /// The target.
        target: String,
        /// Snapshots committed before the loss.
        committed: usize,
    },
    /// The next destroy request is refused.
    RefuseDestroy,
}

#[derive(Clone, Debug)]
struct FakeSnapshot {
    info: SnapshotInfo,
    holds: BTreeSet<String>,
    /// User properties set when it was taken.
    props: Vec<(String, String)>,
}

#[derive(Default)]
struct PoolState {
    datasets: BTreeMap<String, Vec<FakeSnapshot>>,
    /// (dataset, property) -> value.
    props: BTreeMap<(String, String), String>,
    next_guid: u64,
    txg: u64,
    clock: i64,
    faults: Vec<PoolFault>,
    /// The tripwire figures each dataset's incrementals carry.
    figures: BTreeMap<String, StreamFigures>,
}

/// The primary's pool, in memory.
#[derive(Default)]
pub struct FakePool {
    state: Mutex<PoolState>,
}

/// What a fake stream carries: the snapshots `zfs recv` would create.
#[derive(Serialize, Deserialize)]
struct FakeStream {
    /// The source dataset.
    dataset: String,
    /// The incremental base's GUID.
    from_guid: Option<u64>,
    /// The snapshots the stream creates, oldest first.
    snapshots: Vec<(String, u64, i64)>,
    /// It resumes an interrupted receive.
    resume: bool,
    /// What a meter on a real stream would have measured (incrementals only).
    #[serde(default)]
    figures: Option<StreamFigures>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panicking test thread poisons nothing we cannot read.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn take<F: PartialEq>(faults: &mut Vec<F>, pred: impl Fn(&F) -> bool) -> bool {
    match faults.iter().position(pred) {
        Some(i) => {
            faults.remove(i);
            true
        }
        None => false,
    }
}

fn split(full: &str) -> Result<(&str, &str), PoolError> {
    full.split_once('@')
        .ok_or_else(|| PoolError::Failed(format!("{full}: not a snapshot name")))
}

impl FakePool {
    /// An empty pool at clock 1,769,904,000 (2026-02-01).
    pub fn new() -> FakePool {
        let pool = FakePool::default();
        {
            let mut s = lock(&pool.state);
            s.clock = 1_769_904_000;
            s.next_guid = 0x1000;
        }
        pool
    }

    /// Creates a dataset (its parent need not exist in the fake).
    pub fn create(&self, dataset: &str) {
        lock(&self.state)
            .datasets
            .entry(dataset.into())
            .or_default();
    }

    /// Sets a property of a dataset (`zfs set`).
    pub fn set_property(&self, dataset: &str, prop: &str, value: &str) {
        lock(&self.state)
            .props
            .insert((dataset.into(), prop.into()), value.into());
    }

    /// A property set on a dataset (by [`FakePool::set_property`] or a
    /// demotion), if any.
    pub fn property_of(&self, dataset: &str, prop: &str) -> Option<String> {
        lock(&self.state)
            .props
            .get(&(dataset.to_string(), prop.to_string()))
            .cloned()
    }

    /// Sets the clock: the creation time of the next snapshots.
    pub fn set_clock(&self, unix: i64) {
        lock(&self.state).clock = unix;
    }

    /// From now on, incremental streams of `dataset` carry `figures`
    /// (what the tripwire's meter would measure on a real stream).
    pub fn set_stream_figures(&self, dataset: &str, figures: StreamFigures) {
        lock(&self.state).figures.insert(dataset.into(), figures);
    }

    /// Queues a fault.
    pub fn inject(&self, fault: PoolFault) {
        lock(&self.state).faults.push(fault);
    }

    /// Drops the faults not yet triggered.
    pub fn clear_faults(&self) {
        lock(&self.state).faults.clear();
    }

    /// The snapshots of `dataset`, oldest first.
    pub fn snapshots_of(&self, dataset: &str) -> Vec<SnapshotInfo> {
        lock(&self.state)
            .datasets
            .get(dataset)
            .map(|v| v.iter().map(|s| s.info.clone()).collect())
            .unwrap_or_default()
    }

    /// The user properties `dataset@snap` was taken with.
    pub fn props_of(&self, full: &str) -> Vec<(String, String)> {
        let Some((ds, name)) = full.split_once('@') else {
            return Vec::new();
        };
        lock(&self.state)
            .datasets
            .get(ds)
            .and_then(|v| v.iter().find(|x| x.info.name == name))
            .map(|x| x.props.clone())
            .unwrap_or_default()
    }

    /// The hold tags of `dataset@snap`.
    pub fn holds_of(&self, full: &str) -> Vec<String> {
        let s = lock(&self.state);
        let Ok((ds, name)) = split(full) else {
            return Vec::new();
        };
        s.datasets
            .get(ds)
            .and_then(|v| v.iter().find(|x| x.info.name == name))
            .map(|x| x.holds.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// `zfs destroy` by someone else (an operator, an attacker): refused
    /// while held, like ZFS.
    pub fn destroy(&self, full: &str) -> Result<(), PoolError> {
        let mut s = lock(&self.state);
        destroy(&mut s, full)
    }

    /// `zfs destroy -r DATASET` by the operator: the dataset, its children
    /// and their snapshots are gone from the primary.
    pub fn destroy_dataset(&self, dataset: &str) {
        lock(&self.state)
            .datasets
            .retain(|d, _| !within(d, dataset));
    }

    /// `zfs rename FROM TO`: the dataset and everything below it, with
    /// their snapshots (same guids), under the new name.
    pub fn rename_dataset(&self, from: &str, to: &str) {
        let mut s = lock(&self.state);
        let moved: Vec<String> = s
            .datasets
            .keys()
            .filter(|d| within(d, from))
            .cloned()
            .collect();
        for old in moved {
            if let Some(snaps) = s.datasets.remove(&old) {
                s.datasets
                    .insert(format!("{to}{}", &old[from.len()..]), snaps);
            }
        }
    }

    fn take_fault(&self, pred: impl Fn(&PoolFault) -> bool) -> bool {
        take(&mut lock(&self.state).faults, pred)
    }
}

fn destroy(s: &mut PoolState, full: &str) -> Result<(), PoolError> {
    let (ds, name) = split(full)?;
    let snaps = s
        .datasets
        .get_mut(ds)
        .ok_or_else(|| PoolError::NotFound(format!("{ds}: dataset does not exist")))?;
    let i = snaps
        .iter()
        .position(|x| x.info.name == name)
        .ok_or_else(|| PoolError::NotFound(format!("{full}: snapshot does not exist")))?;
    if !snaps[i].holds.is_empty() {
        return Err(PoolError::Failed(format!(
            "cannot destroy {full}: dataset is busy"
        )));
    }
    snaps.remove(i);
    Ok(())
}

impl Pool for FakePool {
    async fn demote(
        &self,
        root: &str,
        _recursive: bool,
        base: &str,
        marker: &str,
    ) -> Result<(), PoolError> {
        let mut s = lock(&self.state);
        let has_base = s
            .datasets
            .get(root)
            .is_some_and(|v| v.iter().any(|x| x.info.name == base));
        if !has_base {
            return Err(PoolError::NotFound(format!("{root}@{base} does not exist")));
        }
        for (prop, value) in [("readonly", "on"), (fjord_config::DEMOTED_PROP, marker)] {
            s.props.insert((root.into(), prop.into()), value.into());
        }
        s.props
            .remove(&(root.to_string(), "fjord:promoted".to_string()));
        Ok(())
    }

    async fn property(&self, dataset: &str, prop: &str) -> Result<Option<String>, PoolError> {
        Ok(lock(&self.state)
            .props
            .get(&(dataset.to_string(), prop.to_string()))
            .cloned())
    }

    async fn datasets(&self, root: &str, recursive: bool) -> Result<Vec<String>, PoolError> {
        let s = lock(&self.state);
        Ok(s.datasets
            .keys()
            .filter(|d| {
                *d == root
                    || (recursive
                        && d.len() > root.len()
                        && d.starts_with(root)
                        && d.as_bytes()[root.len()] == b'/')
            })
            .cloned()
            .collect())
    }

    async fn snapshots(&self, dataset: &str) -> Result<Vec<SnapshotInfo>, PoolError> {
        let s = lock(&self.state);
        s.datasets
            .get(dataset)
            .map(|v| v.iter().map(|x| x.info.clone()).collect())
            .ok_or_else(|| PoolError::NotFound(format!("{dataset}: dataset does not exist")))
    }

    async fn snapshot(
        &self,
        root: &str,
        short: &str,
        recursive: bool,
        props: &[(String, String)],
    ) -> Result<(), PoolError> {
        if self.take_fault(|f| *f == PoolFault::Snapshot) {
            return Err(PoolError::Failed(format!(
                "cannot create snapshot {root}@{short}: out of space"
            )));
        }
        let names = self.datasets(root, recursive).await?;
        let mut s = lock(&self.state);
        if names.is_empty() {
            return Err(PoolError::NotFound(format!(
                "{root}: dataset does not exist"
            )));
        }
        for d in &names {
            if s.datasets[d].iter().any(|x| x.info.name == short) {
                return Err(PoolError::Failed(format!(
                    "{d}@{short}: dataset already exists"
                )));
            }
        }
        // One transaction group for the whole tree, as `zfs snapshot -r`.
        s.txg += 1;
        let (txg, clock) = (s.txg, s.clock);
        for d in names {
            s.next_guid += 0x9e37;
            let guid = s.next_guid;
            if let Some(v) = s.datasets.get_mut(&d) {
                v.push(FakeSnapshot {
                    info: SnapshotInfo {
                        name: short.into(),
                        guid,
                        createtxg: txg,
                        creation: clock,
                    },
                    holds: BTreeSet::new(),
                    props: props.to_vec(),
                });
            }
        }
        Ok(())
    }

    async fn holds(&self, snapshot: &str) -> Result<Vec<String>, PoolError> {
        let (ds, name) = split(snapshot)?;
        let s = lock(&self.state);
        s.datasets
            .get(ds)
            .and_then(|v| v.iter().find(|x| x.info.name == name))
            .map(|x| x.holds.iter().cloned().collect())
            .ok_or_else(|| PoolError::NotFound(format!("{snapshot}: snapshot does not exist")))
    }

    async fn hold(&self, tag: &str, snapshot: &str) -> Result<(), PoolError> {
        if self.take_fault(|f| *f == PoolFault::Hold) {
            return Err(PoolError::Failed(format!(
                "cannot hold {snapshot}: pool I/O is suspended"
            )));
        }
        let (ds, name) = split(snapshot)?;
        let mut s = lock(&self.state);
        let snap = s
            .datasets
            .get_mut(ds)
            .and_then(|v| v.iter_mut().find(|x| x.info.name == name))
            .ok_or_else(|| PoolError::NotFound(format!("{snapshot}: snapshot does not exist")))?;
        if !snap.holds.insert(tag.into()) {
            return Err(PoolError::HoldExists(format!(
                "cannot hold snapshot '{snapshot}': tag already exists on this dataset"
            )));
        }
        Ok(())
    }

    async fn release(&self, tag: &str, snapshot: &str) -> Result<(), PoolError> {
        let (ds, name) = split(snapshot)?;
        let mut s = lock(&self.state);
        let snap = s
            .datasets
            .get_mut(ds)
            .and_then(|v| v.iter_mut().find(|x| x.info.name == name))
            .ok_or_else(|| PoolError::NotFound(format!("{snapshot}: snapshot does not exist")))?;
        if !snap.holds.remove(tag) {
            return Err(PoolError::Failed(format!(
                "cannot release hold from snapshot '{snapshot}': no such tag on this dataset"
            )));
        }
        Ok(())
    }

    async fn destroy_snapshot(&self, snapshot: &str) -> Result<(), PoolError> {
        if self.take_fault(|f| *f == PoolFault::Destroy) {
            return Err(PoolError::Failed(format!(
                "cannot destroy {snapshot}: pool I/O is suspended"
            )));
        }
        destroy(&mut lock(&self.state), snapshot)
    }

    async fn size_estimate(&self, _spec: &SendSpec) -> Option<u64> {
        Some(4096)
    }

    fn send(&self, spec: &SendSpec) -> Result<SendStream, PoolError> {
        let s = lock(&self.state);
        let find = |full: &str| -> Result<(String, FakeSnapshot), PoolError> {
            let (ds, name) = split(full)?;
            s.datasets
                .get(ds)
                .and_then(|v| v.iter().find(|x| x.info.name == name))
                .map(|x| (ds.to_string(), x.clone()))
                .ok_or_else(|| PoolError::NotFound(format!("{full}: snapshot does not exist")))
        };
        let mut stream = match &spec.kind {
            SendKind::Full { snap } => {
                let (dataset, to) = find(snap)?;
                FakeStream {
                    dataset,
                    from_guid: None,
                    snapshots: vec![tuple(&to.info)],
                    resume: false,
                    figures: None,
                }
            }
            SendKind::Incremental {
                from,
                to,
                intermediates,
            } => {
                let (dataset, from) = find(from)?;
                let (to_ds, to) = find(to)?;
                if to_ds != dataset || from.info.createtxg >= to.info.createtxg {
                    return Err(PoolError::Failed(format!(
                        "{}: not an earlier snapshot of {to_ds}",
                        from.info.name
                    )));
                }
                let snapshots = if *intermediates {
                    s.datasets[&dataset]
                        .iter()
                        .filter(|x| {
                            x.info.createtxg > from.info.createtxg
                                && x.info.createtxg <= to.info.createtxg
                        })
                        .map(|x| tuple(&x.info))
                        .collect()
                } else {
                    vec![tuple(&to.info)]
                };
                FakeStream {
                    dataset,
                    from_guid: Some(from.info.guid),
                    snapshots,
                    resume: false,
                    figures: None,
                }
            }
            SendKind::Resume { token } => {
                let t = token::decode(token)
                    .map_err(|e| PoolError::Failed(format!("bad resume token: {e}")))?;
                let (ds, _) = split(&t.toname)?;
                let snaps = s
                    .datasets
                    .get(ds)
                    .ok_or_else(|| PoolError::NotFound(format!("{ds}: dataset does not exist")))?;
                let to = snaps
                    .iter()
                    .find(|x| x.info.guid == t.toguid)
                    .ok_or_else(|| {
                        PoolError::NotFound(format!(
                            "{}: the resume token's snapshot no longer exists",
                            t.toname
                        ))
                    })?;
                if let Some(f) = t.fromguid {
                    if !snaps.iter().any(|x| x.info.guid == f) {
                        return Err(PoolError::NotFound(
                            "the resume token's incremental source no longer exists".into(),
                        ));
                    }
                }
                FakeStream {
                    dataset: ds.into(),
                    from_guid: t.fromguid,
                    snapshots: vec![tuple(&to.info)],
                    resume: true,
                    figures: None,
                }
            }
        };
        if stream.from_guid.is_some() && !stream.resume {
            stream.figures = s.figures.get(&stream.dataset).copied();
        }
        let bytes = serde_json::to_vec(&stream).map_err(|e| PoolError::Failed(e.to_string()))?;
        let fails = &stream.dataset;
        drop(s);
        if self.take_fault(|f| *f == PoolFault::StartSend(fails.clone())) {
            return Err(PoolError::Failed(format!(
                "cannot open {fails}: permission denied"
            )));
        }
        if self.take_fault(|f| *f == PoolFault::StreamFails(fails.clone())) {
            return Ok(Box::new(FailingReader));
        }
        Ok(Box::new(std::io::Cursor::new(bytes)))
    }
}

fn tuple(s: &SnapshotInfo) -> (String, u64, i64) {
    (s.name.clone(), s.guid, s.creation)
}

/// A `zfs send` that fails.
struct FailingReader;

impl Read for FailingReader {
    fn read(&mut self, _buf: &mut [u8]) -> std::io::Result<usize> {
        Err(std::io::Error::other(
            "zfs send exited 1: cannot send: I/O error",
        ))
    }
}

#[derive(Clone, Debug, Default)]
struct FakeTarget {
    snapshots: Vec<SnapshotInfo>,
    token: Option<ResumeToken>,
    written: u64,
}

#[derive(Default)]
struct DrState {
    targets: BTreeMap<String, FakeTarget>,
    txg: u64,
    next_guid: u64,
    faults: Vec<DrFault>,
    transfers: Vec<Transfer>,
    /// Promoted roots and the DR node's refusal for them.
    promoted: BTreeMap<String, String>,
    /// Roots promoted by [`DrNode::promote`], and to which snapshot.
    promoted_to: BTreeMap<String, String>,
    /// The next promote request is refused by the DR node's policy.
    refuse_promote: bool,
    /// The DR node's policy grants `allow_destroy_removed`.
    allow_destroy_removed: bool,
    /// The DR node's policy grants `allow_rename`.
    allow_rename: bool,
    /// The datasets the DR node was made with: like a client's prefixes,
    /// a full receive below one creates its missing parents.
    roots: Vec<String>,
}

/// The DR node, in memory: `zfs recv`'s rules, a permissive policy.
#[derive(Default)]
pub struct FakeDrNode {
    state: Mutex<DrState>,
}

impl FakeDrNode {
    /// A DR node whose pool has these (empty) datasets, e.g. `["backup"]`.
    pub fn new(roots: &[&str]) -> FakeDrNode {
        let dr = FakeDrNode::default();
        {
            let mut s = lock(&dr.state);
            s.next_guid = 0xd000_0000;
            for r in roots {
                s.roots.push((*r).into());
                s.targets.insert((*r).into(), FakeTarget::default());
            }
        }
        dr
    }

    /// Creates an empty target dataset (someone else's, say).
    pub fn create(&self, target: &str) {
        lock(&self.state).targets.entry(target.into()).or_default();
    }

    /// Queues a fault.
    pub fn inject(&self, fault: DrFault) {
        lock(&self.state).faults.push(fault);
    }

    /// Drops the faults not yet triggered.
    pub fn clear_faults(&self) {
        lock(&self.state).faults.clear();
    }

    /// Whether `target` exists.
    pub fn exists(&self, target: &str) -> bool {
        lock(&self.state).targets.contains_key(target)
    }

    /// The snapshots of `target`, oldest first.
    pub fn snapshots_of(&self, target: &str) -> Vec<SnapshotInfo> {
        lock(&self.state)
            .targets
            .get(target)
            .map(|t| t.snapshots.clone())
            .unwrap_or_default()
    }

    /// The GUID the target's resume token resumes, if it has one.
    pub fn resume_guid(&self, target: &str) -> Option<u64> {
        lock(&self.state)
            .targets
            .get(target)
            .and_then(|t| t.token.as_ref().map(|k| k.toguid))
    }

    /// Writes to the target (as if mounted and changed): `written` > 0.
    pub fn write(&self, target: &str) {
        if let Some(t) = lock(&self.state).targets.get_mut(target) {
            t.written += 4096;
        }
    }

    /// Takes a snapshot on the target that the source does not have.
    pub fn snapshot_foreign(&self, target: &str, name: &str) {
        let mut s = lock(&self.state);
        s.txg += 1;
        s.next_guid += 0x51;
        let (txg, guid) = (s.txg, s.next_guid);
        if let Some(t) = s.targets.get_mut(target) {
            t.written = 0;
            t.snapshots.push(SnapshotInfo {
                name: name.into(),
                guid,
                createtxg: txg,
                creation: 1_769_904_000,
            });
        }
    }

    /// Destroys a snapshot on the target (the DR node's own retention).
    pub fn destroy(&self, target: &str, name: &str) {
        if let Some(t) = lock(&self.state).targets.get_mut(target) {
            t.snapshots.retain(|s| s.name != name);
        }
    }

    /// Promotes `root` on the DR node (failover): from now on every
    /// request for it or its children is refused with `message`.
    pub fn promote(&self, root: &str, message: &str) {
        lock(&self.state)
            .promoted
            .insert(root.into(), message.into());
    }

    /// The fence: a promoted target (or a child of one) refuses.
    fn fenced(&self, target: &str) -> Result<(), DrError> {
        let s = lock(&self.state);
        match s.promoted.iter().find(|(root, _)| {
            target == root.as_str()
                || target
                    .strip_prefix(root.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
        }) {
            Some((_, message)) => Err(DrError::Promoted(message.clone())),
            None => Ok(()),
        }
    }

    /// Every transfer attempted, in order.
    pub fn transfers(&self) -> Vec<Transfer> {
        lock(&self.state).transfers.clone()
    }

    fn unreachable(&self) -> Result<(), DrError> {
        if take(&mut lock(&self.state).faults, |f| {
            *f == DrFault::Unreachable
        }) {
            return Err(DrError::Unreachable("connection refused (injected)".into()));
        }
        Ok(())
    }
}

/// `dataset` is `root` or below it.
fn within(dataset: &str, root: &str) -> bool {
    dataset == root
        || dataset
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn refused(msg: impl Into<String>) -> DrError {
    DrError::Refused(msg.into())
}

impl FakeDrNode {
    /// The snapshot a switchover promoted `root` to, if it did.
    pub fn promoted_to(&self, root: &str) -> Option<String> {
        lock(&self.state).promoted_to.get(root).cloned()
    }

    /// The DR node's policy grants (or not) `allow_destroy_removed`.
    pub fn allow_destroy_removed(&self, allow: bool) {
        lock(&self.state).allow_destroy_removed = allow;
    }

    /// The DR node's policy grants (or not) `allow_rename`.
    pub fn allow_rename(&self, allow: bool) {
        lock(&self.state).allow_rename = allow;
    }

    /// Every target, by full name.
    pub fn targets(&self) -> Vec<String> {
        lock(&self.state).targets.keys().cloned().collect()
    }

    /// The next promote request is refused (no `allow_promote`).
    pub fn refuse_next_promote(&self) {
        lock(&self.state).refuse_promote = true;
    }
}

impl DrNode for FakeDrNode {
    async fn promote(&self, target: &str, snapshot: &str) -> Result<String, DrError> {
        self.unreachable()?;
        let mut s = lock(&self.state);
        if std::mem::take(&mut s.refuse_promote) {
            return Err(DrError::Refused(format!(
                "client may not promote {target}; set allow_promote = true"
            )));
        }
        if let Some(earlier) = s.promoted_to.get(target) {
            return if earlier == snapshot {
                Ok(format!("{target} already promoted to @{snapshot}"))
            } else {
                Err(DrError::Promoted(format!(
                    "{target} was promoted to @{earlier}"
                )))
            };
        }
        let has = s
            .targets
            .get(target)
            .is_some_and(|t| t.snapshots.iter().any(|x| x.name == snapshot));
        if !has {
            return Err(DrError::Refused(format!(
                "{target} has no snapshot @{snapshot}"
            )));
        }
        s.promoted_to.insert(target.into(), snapshot.into());
        s.promoted.insert(
            target.into(),
            format!("{target} was promoted on the DR node (recovery point @{snapshot})"),
        );
        Ok(format!("{target} promoted to @{snapshot}"))
    }

    async fn target_state(&self, target: &str) -> Result<TargetState, DrError> {
        self.unreachable()?;
        self.fenced(target)?;
        let s = lock(&self.state);
        Ok(match s.targets.get(target) {
            None => TargetState::default(),
            Some(t) => TargetState {
                exists: true,
                snapshots: t.snapshots.clone(),
                resume_token: t.token.as_ref().map(token::encode),
                written: t.written,
            },
        })
    }

    async fn abort_resume(&self, target: &str) -> Result<(), DrError> {
        self.unreachable()?;
        self.fenced(target)?;
        let mut s = lock(&self.state);
        let t = s
            .targets
            .get_mut(target)
            .ok_or_else(|| refused(format!("{target} does not exist")))?;
        if t.token.take().is_none() {
            return Err(refused(format!("{target} has no partial receive to abort")));
        }
        if t.snapshots.is_empty() {
            // An aborted full receive leaves nothing behind.
            s.targets.remove(target);
        }
        Ok(())
    }

    async fn list_tree(&self, root: &str) -> Result<Vec<String>, DrError> {
        self.unreachable()?;
        self.fenced(root)?;
        Ok(lock(&self.state)
            .targets
            .keys()
            .filter(|t| within(t, root))
            .cloned()
            .collect())
    }

    async fn destroy_copy(&self, target: &str) -> Result<String, DrError> {
        self.unreachable()?;
        self.fenced(target)?;
        let mut s = lock(&self.state);
        if !s.allow_destroy_removed {
            return Err(refused(format!(
                "refused by the DR node's policy: {target} is kept; set allow_destroy_removed = true"
            )));
        }
        s.targets.retain(|t, _| !within(t, target));
        Ok(format!("destroyed {target}"))
    }

    async fn rename_copy(&self, target: &str, to: &str) -> Result<String, DrError> {
        self.unreachable()?;
        self.fenced(target)?;
        let mut s = lock(&self.state);
        if !s.allow_rename {
            return Err(refused(format!(
                "refused by the DR node's policy: {target} stays; set allow_rename = true"
            )));
        }
        if s.targets.contains_key(to) || !s.targets.contains_key(target) {
            return Err(refused(format!("cannot rename {target} to {to}")));
        }
        let moved: Vec<String> = s
            .targets
            .keys()
            .filter(|t| within(t, target))
            .cloned()
            .collect();
        for old in moved {
            if let Some(t) = s.targets.remove(&old) {
                s.targets.insert(format!("{to}{}", &old[target.len()..]), t);
            }
        }
        Ok(format!("renamed {target} to {to}"))
    }

    async fn destroy_snapshots(&self, target: &str, snapshots: &[String]) -> Result<(), DrError> {
        self.unreachable()?;
        self.fenced(target)?;
        let mut s = lock(&self.state);
        if take(&mut s.faults, |f| *f == DrFault::RefuseDestroy) {
            return Err(refused(
                "refused by the DR node's policy: set allow_prune = true",
            ));
        }
        let t = s
            .targets
            .get_mut(target)
            .ok_or_else(|| refused(format!("{target} does not exist")))?;
        for name in snapshots {
            if !t.snapshots.iter().any(|x| &x.name == name) {
                return Err(refused(format!("{target}@{name} does not exist")));
            }
        }
        t.snapshots.retain(|x| !snapshots.contains(&x.name));
        Ok(())
    }

    async fn transfer(
        &self,
        transfer: Transfer,
        mut stream: SendStream,
    ) -> Result<TransferStats, DrError> {
        self.unreachable()?;
        lock(&self.state).transfers.push(transfer.clone());
        self.fenced(&transfer.target)?;
        let mut bytes = Vec::new();
        stream
            .read_to_end(&mut bytes)
            .map_err(|e| DrError::Source(e.to_string()))?;
        let fake: FakeStream =
            serde_json::from_slice(&bytes).map_err(|e| DrError::Protocol(e.to_string()))?;
        let target = transfer.target.as_str();
        let mut s = lock(&self.state);
        let lost_after = s.faults.iter().find_map(|f| match f {
            DrFault::LinkLostAfter {
                target: t,
                committed,
            } if t == target => Some(*committed),
            _ => None,
        });
        if lost_after.is_some() {
            take(
                &mut s.faults,
                |f| matches!(f, DrFault::LinkLostAfter { target: t, .. } if t == target),
            );
        }
        let exists = s.targets.contains_key(target);
        let parent_exists = target
            .rsplit_once('/')
            .is_none_or(|(p, _)| s.targets.contains_key(p));
        if fake.resume {
            let t = s
                .targets
                .get(target)
                .ok_or_else(|| refused(format!("{target}: no partial receive to resume")))?;
            let ok = t
                .token
                .as_ref()
                .is_some_and(|k| fake.snapshots.first().is_some_and(|x| x.1 == k.toguid));
            if !ok {
                return Err(refused(format!(
                    "{target}: the stream does not resume its partial receive"
                )));
            }
        } else if let Some(t) = s.targets.get(target) {
            if t.token.is_some() {
                return Err(refused(format!(
                    "{target} contains partially-complete state from \"zfs receive -s\""
                )));
            }
        }
        match (fake.resume, fake.from_guid) {
            (true, _) => {}
            (false, None) => {
                if exists {
                    return Err(refused(format!("destination {target} exists")));
                }
                if !parent_exists {
                    // Like fjord-recv: missing parents below a prefix are
                    // created (inert); above or outside, refused.
                    let Some(root) = s.roots.iter().find(|r| within(target, r)).cloned() else {
                        return Err(refused(format!("{target}: parent does not exist")));
                    };
                    let mut at = root;
                    for part in target[at.len()..].split('/').filter(|p| !p.is_empty()) {
                        s.targets.entry(at.clone()).or_default();
                        at = format!("{at}/{part}");
                    }
                }
            }
            (false, Some(from)) => {
                let t = s
                    .targets
                    .get_mut(target)
                    .ok_or_else(|| refused(format!("{target} does not exist")))?;
                if transfer.rollback {
                    let Some(i) = t.snapshots.iter().position(|x| x.guid == from) else {
                        return Err(refused(format!(
                            "{target}: cannot roll back: the base is not there"
                        )));
                    };
                    t.snapshots.truncate(i + 1);
                    t.written = 0;
                }
                if t.snapshots.last().map(|x| x.guid) != Some(from) {
                    return Err(refused(format!(
                        "{target}: most recent snapshot does not match incremental source"
                    )));
                }
                if t.written > 0 {
                    return Err(refused(format!(
                        "{target}: destination has been modified since most recent snapshot"
                    )));
                }
            }
        }
        let n = fake.snapshots.len();
        let commit = lost_after.unwrap_or(n).min(n);
        let mut prev = fake.from_guid;
        let mut txg = s.txg;
        let t = s.targets.entry(target.into()).or_default();
        for (name, guid, creation) in &fake.snapshots[..commit] {
            txg += 1;
            t.snapshots.push(SnapshotInfo {
                name: name.clone(),
                guid: *guid,
                createtxg: txg,
                creation: *creation,
            });
            prev = Some(*guid);
        }
        t.token = None;
        if commit < n {
            let (name, guid, _) = &fake.snapshots[commit];
            t.token = Some(ResumeToken {
                toname: format!("{}@{name}", fake.dataset),
                toguid: *guid,
                fromguid: prev,
                bytes: bytes.len() as u64 / 2,
                ..ResumeToken::default()
            });
        }
        s.txg = txg;
        if commit < n {
            return Err(DrError::Unreachable(
                "the link stayed down beyond the grace (injected)".into(),
            ));
        }
        Ok(TransferStats {
            bytes: bytes.len() as u64,
            bytes_resent: 0,
            reconnects: 0,
            figures: fake.figures,
        })
    }
}
