//! The DR node's ZFS side of `fjord-recv serve --config`: a sink that
//! pipes each verified stream into `zfs recv`, and the answers to the
//! sender's control requests (target state, abort a resumable receive,
//! prune snapshots). Every dataset a sender names is checked against the
//! prefixes its key may write under before anything runs; every destroy
//! and rollback goes through the DR node's policy (`fjord_dr::policy`);
//! every received snapshot is held; the DR node's own retention runs
//! after each receive. A dataset promoted on this node (`fjord-recv
//! promote`, `fjord:promoted`) and its children refuse every push and
//! request ([`fjord_dr::promote::fence`]).

use crate::reload::Policy;
use fjord_config::config::{Client, RecvConfig};
use fjord_dr::policy::{decide, Ask, Grants, Refusal};
use fjord_dr::promote::{fence, PROMOTED_PROP};
use fjord_dr::{retention, DR_HOLD_TAG};
use fjord_proto::message::offer_flags;
use fjord_proto::{Offer, PublicKey, RefuseCode, Request, Response, TargetSnapshot, TargetState};
use fjord_sink::{Sink, SinkError, SinkFactory, Verifier};
use fjord_transport::control::{Control, ResponseFuture};
use fjord_zfs::props::{value_of, PropSource, Property};
use fjord_zfs::snapshot::parse_property_u64;
use fjord_zfs::{names, Zfs, ZfsError};
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

mod crypt;
mod lzc;
mod renamed;
mod sink;
mod tree;

use sink::{AfterCommit, PendingRecv, ReceivingGuard, TripwireMeter, ZfsSink};

/// What the DR node refused or did on its own, for the operator (logged as
/// it happens; read with [`ZfsTarget::counts`]).
#[derive(Debug, Default)]
pub struct PolicyCounts {
    /// Destroy requests the policy refused.
    pub refused_destroys: AtomicU64,
    /// Rollbacks (`push --force`) the policy refused.
    pub refused_rollbacks: AtomicU64,
    /// Snapshots destroyed at a client's request, within its grant.
    pub client_pruned: AtomicU64,
    /// Snapshots destroyed by the DR node's own retention.
    pub retention_pruned: AtomicU64,
    /// Received snapshots that could not be held.
    pub hold_failures: AtomicU64,
    /// Pushes and requests refused because their target was promoted.
    pub refused_promoted: AtomicU64,
}

/// A target's snapshots for the policy, and which carry the DR node's hold.
struct Listing {
    snapshots: Vec<fjord_dr::TargetSnapshot>,
    dr_held: HashSet<String>,
}

/// State shared by the sink factory and the control handler.
pub struct ZfsTarget {
    zfs: Zfs,
    /// Each key's `[[client]]` and the receiver's config (`[recv]`,
    /// `min_age`, retention); replaced whole by a reload (SIGHUP).
    policy: RwLock<Arc<Policy>>,
    held_limit: u64,
    /// Datasets with a receive in progress: one stream per target at a time.
    receiving: Arc<Mutex<HashSet<String>>>,
    counts: PolicyCounts,
}

impl ZfsTarget {
    /// A target using `zfs`, allowing `policy`'s clients (each key's
    /// `[[client]]`) under its config.
    pub fn new(zfs: Zfs, policy: Policy, held_limit: u64) -> ZfsTarget {
        ZfsTarget {
            zfs,
            policy: RwLock::new(Arc::new(policy)),
            held_limit,
            receiving: Arc::new(Mutex::new(HashSet::new())),
            counts: PolicyCounts::default(),
        }
    }

    /// What the policy refused and the DR node pruned so far.
    pub fn counts(&self) -> &PolicyCounts {
        &self.counts
    }

    /// The policy in force now (a request keeps the one it started with).
    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(p) => p.clone(),
            // A panic while swapping an Arc leaves a whole Arc behind.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `policy` in force for every offer and request from now on;
    /// running transfers keep their sinks.
    pub fn replace_policy(&self, policy: Policy) {
        let new = Arc::new(policy);
        match self.policy.write() {
            Ok(mut p) => *p = new,
            Err(poisoned) => *poisoned.into_inner() = new,
        }
    }

    fn config(&self) -> Arc<RecvConfig> {
        self.policy().config.clone()
    }

    /// Checks that `peer` may touch `dataset` under the policy in force;
    /// the error names both.
    fn authorize(&self, peer: &PublicKey, dataset: &str) -> Result<Client, String> {
        let policy = self.policy();
        let Some(client) = policy.clients.get(peer) else {
            return Err(format!(
                "key {peer} is not a configured client; add a [[client]] with this key"
            ));
        };
        names::check_target(dataset, &client.prefixes)
            .map_err(|e| format!("client {}: {e}", client.name))?;
        Ok(client.clone())
    }

    /// The fence: `dataset` (or, if it does not exist yet, its nearest
    /// existing ancestor) carries `fjord:promoted`, set on itself or
    /// inherited from the promoted root: refused with
    /// [`RefuseCode::Promoted`].
    /// A sender's planned switchover: promote `dataset` to `snapshot`, if
    /// the client is granted it and nothing is being received into it.
    async fn promote(
        &self,
        client: &Client,
        dataset: &str,
        snapshot: &str,
    ) -> Result<String, SinkError> {
        if !client.allow_promote {
            return Err(SinkError::refused(
                RefuseCode::Policy,
                format!(
                    "refused by the DR node's policy: client {} may not promote {dataset} (fjord-send switchover); to allow it, set allow_promote = true in its [[client]] of recv.toml, or run fjord-recv promote on the DR node",
                    client.name
                ),
            ));
        }
        names::validate_snapshot_short_name(snapshot)
            .map_err(|e| SinkError::refused(RefuseCode::BadDataset, e.to_string()))?;
        if self.receiving().contains(dataset) {
            return Err(SinkError::Busy(format!(
                "a stream into {dataset} is being received; promote it once the push has ended"
            )));
        }
        use crate::promote::{promote_for_switchover, RemotePromoteError};
        match promote_for_switchover(&self.zfs, dataset, snapshot).await {
            Ok(done) => {
                tracing::warn!(client = %client.name, dataset, snapshot, "promoted at the client's request (switchover)");
                Ok(done)
            }
            Err(RemotePromoteError::Refused(e)) => {
                let code = match e {
                    fjord_dr::promote::PromoteError::AlreadyPromoted { .. } => RefuseCode::Promoted,
                    _ => RefuseCode::Other,
                };
                Err(SinkError::refused(code, e.to_string()))
            }
            Err(RemotePromoteError::Failed(e)) => Err(SinkError::Internal(format!(
                "promoting {dataset} to @{snapshot}: {}",
                fjord_cli::render(&e)
            ))),
        }
    }

    async fn fence(&self, client: &Client, dataset: &str) -> Result<(), SinkError> {
        self.fence_and_read(client, dataset, &[]).await.map(drop)
    }

    /// [`Self::fence`], reading `extra` properties of `dataset` in the
    /// same `zfs get` (one command per level walked up: "does not exist"
    /// sends it to the parent): `None` when `dataset` does not exist.
    async fn fence_and_read(
        &self,
        client: &Client,
        dataset: &str,
        extra: &[&str],
    ) -> Result<Option<Vec<Property>>, SinkError> {
        let mut wanted = vec![PROMOTED_PROP];
        wanted.extend_from_slice(extra);
        let mut probe = dataset.to_string();
        let props = loop {
            let props = if probe == dataset {
                self.zfs.properties_if_exists(&probe, &wanted).await
            } else {
                self.zfs
                    .properties_if_exists(&probe, &[PROMOTED_PROP])
                    .await
            };
            if let Some(props) = props.map_err(zfs_failure)? {
                break props;
            }
            match probe.rsplit_once('/') {
                Some((parent, _)) => probe = parent.to_string(),
                None => return Ok(None),
            }
        };
        let exists = probe == dataset;
        let Some(p) = props.iter().find(|p| p.name == PROMOTED_PROP) else {
            return Ok(exists.then_some(props));
        };
        let root = match &p.source {
            PropSource::Inherited(from) => from.clone(),
            _ => probe,
        };
        fence(dataset, Some(&p.value), &root).map_err(|f| {
            self.counts.refused_promoted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(client = %client.name, dataset, promoted = %root, "refused: promoted on this node");
            SinkError::refused(RefuseCode::Promoted, f.to_string())
        })?;
        Ok(exists.then_some(props))
    }

    fn receiving(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.receiving.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What `dataset` has, behind the fence: one `zfs get` (the fence's
    /// `fjord:promoted`, the resume token and `written`, or "does not
    /// exist") and one `zfs list` of its snapshots.
    async fn target_state(
        &self,
        client: &Client,
        dataset: String,
    ) -> Result<TargetState, SinkError> {
        let Some(props) = self
            .fence_and_read(client, &dataset, &["receive_resume_token", "written"])
            .await?
        else {
            return Ok(TargetState {
                dataset,
                ..TargetState::default()
            });
        };
        let resume_token = value_of(&props, "receive_resume_token").map(String::from);
        let written = parse_property_u64(
            &format!("zfs get written {dataset}"),
            value_of(&props, "written").unwrap_or("-"),
        )
        .map_err(zfs_failure)?;
        let snapshots = self
            .zfs
            .snapshots(&dataset)
            .await
            .map_err(zfs_failure)?
            .into_iter()
            .map(|s| TargetSnapshot {
                name: s.name,
                guid: s.guid,
                createtxg: s.createtxg,
                creation: s.creation,
            })
            .collect();
        Ok(TargetState {
            dataset,
            exists: true,
            snapshots,
            resume_token,
            written,
        })
    }

    async fn abort_resume(&self, dataset: &str) -> Result<String, SinkError> {
        if self.receiving().contains(dataset) {
            return Err(SinkError::refused(
                RefuseCode::Other,
                format!("a receive into {dataset} is in progress; not aborting its partial state"),
            ));
        }
        // one zfs get: the token, or "does not exist"
        let Some(props) = self
            .zfs
            .properties_if_exists(dataset, &["receive_resume_token"])
            .await
            .map_err(zfs_failure)?
        else {
            return Ok(format!("{dataset} does not exist; nothing to abort"));
        };
        match value_of(&props, "receive_resume_token") {
            None => Ok(format!("{dataset} has no partial receive")),
            Some(_) => {
                self.zfs.recv_abort(dataset).await.map_err(zfs_failure)?;
                Ok(format!("discarded the partial receive of {dataset}"))
            }
        }
    }

    /// The target's snapshots with their holds (one `zfs holds` for all).
    async fn listing(&self, dataset: &str) -> Result<Listing, SinkError> {
        let infos = self.zfs.snapshots(dataset).await.map_err(zfs_failure)?;
        let full: Vec<String> = infos.iter().map(|s| s.full_name(dataset)).collect();
        let holds = self.zfs.holds_of(&full).await.map_err(zfs_failure)?;
        let (snapshots, dr_held) = fjord_dr::target_snapshots(&infos, holds);
        let dr_held = dr_held.into_iter().collect();
        Ok(Listing { snapshots, dr_held })
    }

    /// Releases the DR node's hold on each of `names` that has it, then
    /// destroys them. A hold already released (by hand) is no failure.
    async fn release_and_destroy(
        &self,
        dataset: &str,
        listing: &Listing,
        names: &[String],
    ) -> Result<usize, SinkError> {
        let mut destroyed = 0;
        for name in names {
            let full = format!("{dataset}@{name}");
            if listing.dr_held.contains(name) {
                self.release_hold(&full).await?;
            }
            self.zfs
                .destroy_snapshot(&full)
                .await
                .map_err(zfs_failure)?;
            destroyed += 1;
        }
        Ok(destroyed)
    }

    /// Releases the DR node's hold on `full`; one that is gone already
    /// (released by hand since the listing) is fine.
    async fn release_hold(&self, full: &str) -> Result<(), SinkError> {
        match self.zfs.release(DR_HOLD_TAG, full).await {
            Err(e) if e.is_no_such_hold() => {
                tracing::info!(snapshot = full, "the DR hold was already released");
                Ok(())
            }
            r => r.map_err(zfs_failure),
        }
    }

    fn refused(&self, client: &Client, dataset: &str, refusal: &Refusal, counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(client = %client.name, dataset, refusal = %refusal, "refused by policy");
    }

    /// A client's prune request, as far as its grant goes (all or nothing).
    async fn destroy(
        &self,
        client: &Client,
        dataset: &str,
        snapshots: &[String],
    ) -> Result<String, SinkError> {
        for s in snapshots {
            names::validate_snapshot_short_name(s)
                .map_err(|e| SinkError::refused(RefuseCode::BadDataset, e.to_string()))?;
        }
        let listing = self.listing(dataset).await?;
        let allowed = decide(
            &grants(client),
            Ask::Destroy { dataset, snapshots },
            &listing.snapshots,
            self.config().min_age,
            now(),
        )
        .map_err(|r| {
            self.refused(client, dataset, &r, &self.counts.refused_destroys);
            policy_refusal(&r)
        })?;
        let n = self
            .release_and_destroy(dataset, &listing, &allowed.destroy)
            .await?;
        self.counts
            .client_pruned
            .fetch_add(n as u64, Ordering::Relaxed);
        tracing::info!(client = %client.name, dataset, destroyed = n, "pruned at the client's request");
        Ok(format!("destroyed {n} snapshot(s) of {dataset}"))
    }

    /// A forced receive's rollback to `base`, if the policy allows it.
    async fn rollback(&self, client: &Client, dataset: &str, base: &str) -> Result<(), SinkError> {
        let listing = self.listing(dataset).await?;
        let allowed = decide(
            &grants(client),
            Ask::Rollback { dataset, to: base },
            &listing.snapshots,
            self.config().min_age,
            now(),
        )
        .map_err(|r| {
            self.refused(client, dataset, &r, &self.counts.refused_rollbacks);
            policy_refusal(&r)
        })?;
        for name in allowed
            .destroy
            .iter()
            .filter(|n| listing.dr_held.contains(*n))
        {
            self.release_hold(&format!("{dataset}@{name}")).await?;
        }
        tracing::warn!(client = %client.name, dataset, base, destroying = ?allowed.destroy, "rolling the target back (push --force, allowed by policy)");
        self.zfs
            .rollback(&format!("{dataset}@{base}"), true)
            .await
            .map_err(zfs_failure)
    }

    /// After a committed receive: hold every snapshot of `dataset` the DR
    /// node has not held yet, then apply the DR node's retention to it.
    /// Failures are logged and counted; the received data stays.
    async fn after_receive(&self, client: &Client, dataset: &str) -> String {
        let listing = match self.listing(dataset).await {
            Ok(l) => l,
            Err(e) => {
                self.counts.hold_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(dataset, error = %e, "cannot list the received snapshots to hold them");
                return format!("; not held: {e}");
            }
        };
        let unheld: Vec<String> = listing
            .snapshots
            .iter()
            .filter(|s| !listing.dr_held.contains(&s.name))
            .map(|s| format!("{dataset}@{}", s.name))
            .collect();
        if let Err(e) = self.zfs.hold_many(DR_HOLD_TAG, &unheld).await {
            self.counts.hold_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(dataset, error = %e, "cannot hold the received snapshots");
            return format!("; not held: {e}");
        }
        let mut listing = listing;
        listing.dr_held.extend(
            unheld
                .iter()
                .filter_map(|f| f.rsplit('@').next().map(String::from)),
        );
        match self.prune_dataset(client, dataset, &listing, false).await {
            Ok(doomed) if doomed.is_empty() => String::new(),
            Ok(doomed) => format!("; retention pruned {}", doomed.join(", ")),
            Err(e) => {
                tracing::warn!(dataset, error = %e, "retention failed");
                format!("; retention failed: {e}")
            }
        }
    }

    /// Applies the DR node's retention for `client` to `dataset`; returns
    /// the snapshots pruned (or, with `dry_run`, that would be).
    async fn prune_dataset(
        &self,
        client: &Client,
        dataset: &str,
        listing: &Listing,
        dry_run: bool,
    ) -> Result<Vec<String>, SinkError> {
        let Some(keep) = self.config().retention_for(client, dataset) else {
            return Ok(Vec::new());
        };
        let doomed = retention::plan(
            &listing.snapshots,
            &client.snapshot_prefix,
            &keep,
            self.config().min_age,
            now(),
        );
        if !dry_run {
            let n = self.release_and_destroy(dataset, listing, &doomed).await?;
            self.counts
                .retention_pruned
                .fetch_add(n as u64, Ordering::Relaxed);
            if n > 0 {
                tracing::info!(client = %client.name, dataset, pruned = ?doomed, "DR retention");
            }
        }
        Ok(doomed)
    }

    /// The DR node's retention over every dataset under every client's
    /// prefixes (`fjord-recv prune`): (dataset, snapshots pruned or to be).
    /// Datasets with a receive in progress are skipped.
    pub async fn prune_all(&self, dry_run: bool) -> Result<Vec<(String, Vec<String>)>, String> {
        let mut report = Vec::new();
        let policy = self.policy();
        let mut clients: Vec<&Client> = policy.clients.values().collect();
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        for client in clients {
            for prefix in &client.prefixes {
                if !self
                    .zfs
                    .dataset_exists(prefix)
                    .await
                    .map_err(|e| e.to_string())?
                {
                    continue;
                }
                let datasets = self.zfs.children(prefix).await.map_err(|e| e.to_string())?;
                for dataset in datasets {
                    if self.receiving().contains(&dataset) {
                        continue;
                    }
                    let listing = self.listing(&dataset).await.map_err(|e| e.to_string())?;
                    let doomed = self
                        .prune_dataset(client, &dataset, &listing, dry_run)
                        .await
                        .map_err(|e| e.to_string())?;
                    report.push((dataset, doomed));
                }
            }
        }
        Ok(report)
    }
}

/// A `zfs` failure as the sender is told it: a command that failed is the
/// downstream's failure (its argv, exit status and stderr); a name `zfs`
/// was never run for is a bad dataset; an argument fjord built wrong is
/// internal.
fn zfs_failure(e: ZfsError) -> SinkError {
    match e {
        ZfsError::Command {
            argv,
            status,
            stderr,
        } => SinkError::Downstream {
            what: argv,
            status,
            stderr,
        },
        ZfsError::Name(e) => SinkError::refused(RefuseCode::BadDataset, e.to_string()),
        ZfsError::InvalidArgument(why) => SinkError::Internal(why),
        e @ (ZfsError::NotFound { .. } | ZfsError::Io { .. } | ZfsError::Parse { .. }) => {
            SinkError::Downstream {
                what: "zfs".into(),
                status: None,
                stderr: e.to_string(),
            }
        }
    }
}

/// A policy refusal as the sender is told it: a dataset outside the
/// client's prefixes is a bad dataset; the rest is the DR node's policy.
fn policy_refusal(r: &Refusal) -> SinkError {
    let code = match r {
        Refusal::OutsidePrefixes { .. } => RefuseCode::BadDataset,
        _ => RefuseCode::Policy,
    };
    SinkError::refused(code, r.to_string())
}

/// The policy's view of a `[[client]]`.
fn grants(client: &Client) -> Grants<'_> {
    Grants {
        client: &client.name,
        prefixes: &client.prefixes,
        snapshot_prefix: &client.snapshot_prefix,
        allow_prune: client.allow_prune,
        allow_rollback: client.allow_rollback,
        allow_destroy_removed: client.allow_destroy_removed,
        allow_rename: client.allow_rename,
    }
}

/// Unix seconds now.
fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// [`ZfsTarget`] as the server's sink factory and control handler.
#[derive(Clone)]
pub struct SharedTarget(pub Arc<ZfsTarget>);

impl SinkFactory for SharedTarget {
    fn open(&self, offer: &Offer, peer: &PublicKey) -> Result<Box<dyn Sink>, SinkError> {
        let t = &self.0;
        let client = t
            .authorize(peer, &offer.dataset)
            .map_err(|why| SinkError::refused(RefuseCode::BadDataset, why))?;
        let short = offer.to.name.rsplit('@').next().unwrap_or_default();
        names::validate_snapshot_short_name(short).map_err(|e| {
            SinkError::refused(
                RefuseCode::BadDataset,
                format!("snapshot {:?}: {e}", offer.to.name),
            )
        })?;
        let force = offer.flags & offer_flags::FORCE_ROLLBACK != 0;
        let handle = tokio::runtime::Handle::current();
        handle.block_on(t.fence(&client, &offer.dataset))?;
        if !t.receiving().insert(offer.dataset.clone()) {
            return Err(SinkError::Busy(format!(
                "a stream into {} is already being received",
                offer.dataset
            )));
        }
        let guard = ReceivingGuard {
            set: t.receiving.clone(),
            dataset: offer.dataset.clone(),
        };
        if force {
            let Some(from) = &offer.from else {
                return Err(SinkError::refused(
                    RefuseCode::Other,
                    "a forced (rollback) offer must name its base snapshot",
                ));
            };
            let base = from.name.rsplit('@').next().unwrap_or_default();
            names::validate_snapshot_short_name(base).map_err(|e| {
                SinkError::refused(RefuseCode::BadDataset, format!("base snapshot: {e}"))
            })?;
            handle.block_on(t.rollback(&client, &offer.dataset, base))?;
        }
        handle.block_on(t.create_parents(&client, &offer.dataset))?;
        let target = format!("{}@{short}", offer.dataset);
        let resume = offer.flags & offer_flags::RESUME_TOKEN != 0;
        tracing::info!(client = %client.name, dataset = %offer.dataset, snapshot = %offer.to.name, force, resume, "offer accepted; zfs recv starts with the first verified bytes");
        let config = t.config();
        let meter = TripwireMeter::for_offer(&config, offer.from.is_some() && !resume);
        let pending = PendingRecv {
            zfs: t.zfs.clone(),
            options: config.recv.clone(),
            dataset: offer.dataset.clone(),
            force,
            early: Vec::new(),
        };
        // `-I` streams are packages: accepted, the newest snapshot held back
        // until the proof (see `Verifier`).
        let verifier = Verifier::with_options(
            t.held_limit,
            fjord_sink::VerifierOptions {
                accept_compound: true,
            },
        );
        let commit = AfterCommit {
            handle,
            target: t.clone(),
            client,
            dataset: offer.dataset.clone(),
            inherit_key: offer.flags & offer_flags::INHERIT_KEY != 0,
        };
        Ok(Box::new(ZfsSink::new(
            target, pending, verifier, meter, commit, guard,
        )))
    }
}

impl Control for SharedTarget {
    fn handle<'a>(&'a self, peer: &'a PublicKey, request: Request) -> ResponseFuture<'a> {
        Box::pin(async move {
            let t = &self.0;
            let client = match t.authorize(peer, request.dataset()) {
                Ok(c) => c,
                Err(message) => {
                    return Response::Failed {
                        code: RefuseCode::BadDataset,
                        message,
                    }
                }
            };
            let fenced = match &request {
                // a promotion decides about an earlier one itself (the same
                // recovery point again finishes it; another is refused);
                // the target state reads the fence with what it needs
                Request::ChunkInventory { .. }
                | Request::Promote { .. }
                | Request::TargetState { .. } => Ok(()),
                other => t.fence(&client, other.dataset()).await,
            };
            if let Err(e) = fenced {
                return Response::Failed {
                    code: e.refuse_code(),
                    message: e.to_string(),
                };
            }
            let result = match request {
                Request::TargetState { dataset } => t
                    .target_state(&client, dataset)
                    .await
                    .map(Response::TargetState),
                Request::AbortResume { dataset } => t
                    .abort_resume(&dataset)
                    .await
                    .map(|message| Response::Done { message }),
                Request::DestroySnapshots { dataset, snapshots } => t
                    .destroy(&client, &dataset, &snapshots)
                    .await
                    .map(|message| Response::Done { message }),
                Request::ListTree { dataset } => t
                    .list_tree(&dataset)
                    .await
                    .map(|datasets| Response::Tree { datasets }),
                Request::DestroyCopy { dataset } => t
                    .destroy_copy(&client, &dataset)
                    .await
                    .map(|message| Response::Done { message }),
                Request::RenameCopy { dataset, to } => t
                    .rename_copy(&client, &dataset, &to)
                    .await
                    .map(|message| Response::Done { message }),
                Request::Promote { dataset, snapshot } => t
                    .promote(&client, &dataset, &snapshot)
                    .await
                    .map(|message| Response::Done { message }),
                // The server answers these from its chunk cache.
                Request::ChunkInventory { .. } => Err(SinkError::Internal(
                    "chunk inventories are answered by the transport, not the ZFS target".into(),
                )),
            };
            result.unwrap_or_else(|e| Response::Failed {
                code: e.refuse_code(),
                message: e.to_string(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use fjord_proto::Snapshot;
    use fjord_transport::Identity;

    /// A one-worker runtime to open sinks in (their factory blocks on it).
    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime")
    }

    /// A target whose `zfs` does not exist: anything that got past the
    /// authorization would fail with "not found", not with the refusal.
    fn target(client: PublicKey) -> SharedTarget {
        target_with(client, Zfs::with_binary("/nonexistent/zfs"))
    }

    /// A target running `zfs` as `zfs`.
    fn target_with(client: PublicKey, zfs: Zfs) -> SharedTarget {
        let mut clients = std::collections::HashMap::new();
        let config = RecvConfig::from_toml(
            std::path::Path::new("recv.toml"),
            r#"
listen = "127.0.0.1:7450"
key = "/nonexistent/recv.key"
[[client]]
name = "oslo"
key = "unused here"
prefixes = ["backup/oslo"]
"#,
        )
        .expect("config");
        clients.insert(client, config.clients[0].clone());
        let policy = Policy {
            clients,
            config: Arc::new(config),
        };
        SharedTarget(Arc::new(ZfsTarget::new(zfs, policy, 1 << 20)))
    }

    fn offer(dataset: &str) -> Offer {
        Offer {
            session: fjord_proto::SessionId(1),
            resuming: false,
            dataset: dataset.into(),
            from: None,
            to: Snapshot {
                name: "tank/fs@fjord_2026-11-25T120000Z".into(),
                guid: 7,
            },
            flags: 0,
            size_estimate: None,
        }
    }

    /// The reason of a refusal for a bad name (what the sender reads
    /// after "refused by the receiver (bad dataset): ").
    fn refusal(r: Result<Box<dyn Sink>, SinkError>) -> String {
        match r {
            Err(SinkError::Refused {
                code: RefuseCode::BadDataset,
                reason,
            }) => reason,
            Err(e) => panic!("expected a bad-dataset refusal, got {e:?}"),
            Ok(_) => panic!("expected a refusal, got a sink"),
        }
    }

    /// A stand-in for `zfs` (a shell script in `dir`): lists no snapshots
    /// and no holds, and a `zfs recv` that reads its input, then fails as
    /// OpenZFS does when the target was modified.
    fn fake_zfs(dir: &std::path::Path) -> Zfs {
        fake_zfs_promoted(dir, "-", "-")
    }

    /// As [`fake_zfs`], with `fjord:promoted` = `value` (its source
    /// `source`, as `zfs get` prints it) on every dataset.
    fn fake_zfs_promoted(dir: &std::path::Path, value: &str, source: &str) -> Zfs {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("zfs");
        std::fs::write(
            &path,
            format!(
                r#"#!/bin/sh
case "$1" in
  list|holds) exit 0 ;;
  get) printf '%s\t%s\t-\t%s\n' fjord:promoted '{value}' '{source}' ;;
  recv|receive)
    cat >/dev/null
    echo "cannot receive incremental stream: destination backup/oslo/fs has been modified" >&2
    echo "since most recent snapshot" >&2
    exit 1 ;;
  *) echo "unexpected: $*" >&2; exit 2 ;;
esac
"#
            ),
        )
        .expect("write the fake zfs");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Zfs::with_binary(path)
    }

    #[test]
    fn a_promoted_dataset_and_its_children_refuse_pushes_and_requests() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = Identity::generate().expect("keygen").public_key();
        let marker = "2026-12-03T14:30:00Z @fjord_2026-12-03T142000Z";
        let t = target_with(
            key,
            fake_zfs_promoted(dir.path(), marker, "inherited from backup/oslo/fs"),
        );
        let rt = runtime();
        let _in_runtime = rt.enter();
        let Err(e) = t.open(&offer("backup/oslo/fs/child"), &key) else {
            panic!("expected a refusal")
        };
        assert_eq!(e.refuse_code(), RefuseCode::Promoted, "{e}");
        let s = e.to_string();
        for want in [
            "backup/oslo/fs/child was promoted on the DR node at 2026-12-03T14:30:00Z",
            "@fjord_2026-12-03T142000Z",
            "fjord-recv demote backup/oslo/fs",
        ] {
            assert!(s.contains(want), "{want}: {s}");
        }
        assert!(!t.0.receiving().contains("backup/oslo/fs/child"));
        match rt.block_on(t.handle(
            &key,
            Request::TargetState {
                dataset: "backup/oslo/fs".into(),
            },
        )) {
            Response::Failed {
                code: RefuseCode::Promoted,
                message,
            } => assert!(message.contains("was promoted"), "{message}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(t.0.counts().refused_promoted.load(Ordering::Relaxed), 2);
    }

    fn stream() -> Vec<u8> {
        let mut b = fjord_stream::builder::StreamBuilder::full(
            fjord_stream::ByteOrder::Little,
            "tank/fs@fjord_2026-11-25T120000Z",
            7,
        );
        b.object(2, 4096, &[0u8; 64]);
        b.write(2, 0, &[5u8; 4096]);
        b.finish()
    }

    #[test]
    fn a_rollback_the_policy_does_not_grant_is_a_policy_refusal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = Identity::generate().expect("keygen").public_key();
        let t = target_with(key, fake_zfs(dir.path()));
        let rt = runtime();
        let _in_runtime = rt.enter();
        let mut o = offer("backup/oslo/fs");
        o.flags = offer_flags::FORCE_ROLLBACK;
        o.from = Some(Snapshot {
            name: "tank/fs@fjord_2026-11-24T120000Z".into(),
            guid: 6,
        });
        match t.open(&o, &key) {
            Err(e @ SinkError::Refused { .. }) => {
                assert_eq!(e.refuse_code(), RefuseCode::Policy);
                assert!(e.to_string().contains("allow_rollback = true"), "{e}");
            }
            Err(e) => panic!("expected a policy refusal, got {e:?}"),
            Ok(_) => panic!("expected a policy refusal, got a sink"),
        }
        assert_eq!(t.0.counts().refused_rollbacks.load(Ordering::Relaxed), 1);
        // A forced offer without its base is malformed, not a policy matter.
        o.from = None;
        let Err(e) = t.open(&o, &key) else {
            panic!("expected a refusal")
        };
        assert_eq!(e.refuse_code(), RefuseCode::Other, "{e}");
    }

    #[test]
    fn a_failed_zfs_recv_reaches_the_sender_with_its_exit_status_and_words() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = Identity::generate().expect("keygen").public_key();
        let t = target_with(key, fake_zfs(dir.path()));
        let rt = runtime();
        let _in_runtime = rt.enter();
        let mut sink = t.open(&offer("backup/oslo/fs"), &key).expect("open");
        let s = stream();
        // The fake reads everything, so the writes succeed; the failure
        // comes with the exit status at the end.
        sink.write(0, Bytes::from(s.clone())).expect("write");
        let e = sink.finish(s.len() as u64).expect_err("zfs recv exits 1");
        match &e {
            SinkError::Downstream {
                what,
                status,
                stderr,
            } => {
                assert_eq!(
                    what,
                    "zfs recv into backup/oslo/fs@fjord_2026-11-25T120000Z"
                );
                assert_eq!(*status, Some(1));
                assert!(stderr.contains("has been modified"), "{stderr}");
            }
            other => panic!("expected a downstream failure, got {other:?}"),
        }
        assert_eq!(
            e.to_string(),
            "zfs recv into backup/oslo/fs@fjord_2026-11-25T120000Z exited 1: cannot receive incremental stream: destination backup/oslo/fs has been modified\nsince most recent snapshot"
        );
        // The sender's report carries zfs recv's exit status.
        assert_eq!(e.report_status(), 1);
        assert_eq!(e.refuse_code(), RefuseCode::SinkFailed);
        // The sink is spent: using it again is a bug, not zfs's failure.
        assert!(matches!(
            sink.write(s.len() as u64, Bytes::from_static(b"x")),
            Err(SinkError::Internal(_))
        ));
    }

    #[test]
    fn a_zfs_recv_that_cannot_start_is_a_downstream_failure_not_a_bad_dataset() {
        use std::os::unix::fs::PermissionsExt;
        let key = Identity::generate().expect("keygen").public_key();
        // A `zfs` that answers the fence's queries and the parent check
        // (`list backup/oslo`), then vanishes before `zfs recv` is started.
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("zfs");
        std::fs::write(
            &path,
            "#!/bin/sh\nfor last; do :; done\ncase \"$1\" in\n  list) [ \"$last\" = backup/oslo ] && rm -f \"$0\"; exit 0 ;;\n  get) printf 'fjord:promoted\\t-\\t-\\t-\\n' ;;\nesac\n",
        )
        .expect("write the fake zfs");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let t = target_with(key, Zfs::with_binary(&path));
        let rt = runtime();
        let _in_runtime = rt.enter();
        // zfs recv starts with the first verified bytes (its flags depend
        // on the stream's type), so that is where it fails
        let mut sink = t.open(&offer("backup/oslo/fs"), &key).expect("open");
        let s = stream();
        let e = sink
            .write(0, Bytes::from(s))
            .expect_err("zfs recv cannot start");
        drop(sink);
        match &e {
            SinkError::Downstream {
                what,
                status: None,
                stderr,
            } => {
                assert_eq!(
                    what,
                    "zfs recv into backup/oslo/fs@fjord_2026-11-25T120000Z"
                );
                assert!(stderr.contains(&*path.to_string_lossy()), "{stderr}");
            }
            other => panic!("expected a downstream failure, got {other:?}"),
        }
        assert_eq!(e.refuse_code(), RefuseCode::SinkFailed);
        // The dataset is free again for the next offer.
        assert!(!t.0.receiving().contains("backup/oslo/fs"));
    }

    /// A stand-in `zfs` in `dir` that answers the fence and the parent
    /// check, and runs `recv` (a shell snippet) as `zfs recv`.
    fn zfs_recv_doing(dir: &std::path::Path, recv: &str) -> Zfs {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("zfs");
        std::fs::write(
            &path,
            format!(
                "#!/bin/sh\ncase \"$1\" in\n  list|holds) exit 0 ;;\n  get) printf 'fjord:promoted\\t-\\t-\\t-\\n' ;;\n  recv|receive) {recv} ;;\nesac\n"
            ),
        )
        .expect("write the fake zfs");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Zfs::with_binary(path)
    }

    #[test]
    fn a_volume_stream_starts_zfs_recv_with_the_volumes_inert_set() {
        let dir = tempfile::tempdir().expect("tempdir");
        let argv = dir.path().join("recv-argv");
        let zfs = zfs_recv_doing(
            dir.path(),
            &format!("echo \"$@\" >'{}'; cat >/dev/null", argv.display()),
        );
        let key = Identity::generate().expect("keygen").public_key();
        let t = target_with(key, zfs);
        let rt = runtime();
        let _in_runtime = rt.enter();
        for (volume, want, never) in [
            (true, "-o volmode=none", "canmount"),
            (false, "-o canmount=noauto", "volmode"),
        ] {
            let _ = std::fs::remove_file(&argv);
            let mut sink = t.open(&offer("backup/oslo/vm"), &key).expect("open");
            let mut b = if volume {
                fjord_stream::builder::StreamBuilder::volume(
                    fjord_stream::ByteOrder::Little,
                    "tank/vm@a",
                    0x55,
                )
            } else {
                fjord_stream::builder::StreamBuilder::full(
                    fjord_stream::ByteOrder::Little,
                    "tank/vm@a",
                    0x55,
                )
            };
            b.object(1, 8192, &[]);
            b.write(1, 0, &[7u8; 8192]);
            let s = b.finish();
            // nothing is verified yet: zfs recv has not started
            sink.write(0, Bytes::copy_from_slice(&s[..100]))
                .expect("write");
            assert!(!argv.exists(), "zfs recv started before the BEGIN");
            sink.write(100, Bytes::copy_from_slice(&s[100..]))
                .expect("write");
            sink.abort("test");
            let args = std::fs::read_to_string(&argv).expect("zfs recv ran");
            assert!(
                args.contains(want) && args.contains("-o readonly=on"),
                "{args}"
            );
            assert!(!args.contains(never), "{args}");
        }
    }

    #[test]
    fn a_dropped_sink_frees_its_dataset_only_once_zfs_recv_exited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let release = dir.path().join("release");
        // a zfs recv that exits only when the test says so
        let zfs = zfs_recv_doing(
            dir.path(),
            &format!(
                "cat >/dev/null; while [ ! -e '{}' ]; do sleep 0.05; done",
                release.display()
            ),
        );
        let key = Identity::generate().expect("keygen").public_key();
        let t = target_with(key, zfs);
        let rt = runtime();
        let _in_runtime = rt.enter();
        let mut sink = t.open(&offer("backup/oslo/fs"), &key).expect("open");
        let s = stream();
        sink.write(0, Bytes::copy_from_slice(&s[..s.len() - 400]))
            .expect("write");
        // returns at once although zfs recv is still running
        drop(sink);
        assert!(
            t.0.receiving().contains("backup/oslo/fs"),
            "freed before zfs recv exited"
        );
        std::fs::write(&release, b"").expect("release");
        let freed = (0..400).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(25));
            !t.0.receiving().contains("backup/oslo/fs")
        });
        assert!(freed, "the dataset stays busy after zfs recv exited");
    }

    #[test]
    fn offers_outside_the_clients_prefix_are_refused_before_zfs_runs() {
        let key = Identity::generate().expect("keygen").public_key();
        let t = target(key);
        for bad in [
            "backup/oslo2/fs",
            "backup",
            "tank/fs",
            "backup/oslo/../tank",
            "/backup/oslo/fs",
            "backup/oslo/fs@snap",
            "backup/oslo/fs#mark",
            "backup/oslo//fs",
        ] {
            let why = refusal(t.open(&offer(bad), &key));
            assert!(why.contains("oslo"), "{bad}: {why}");
        }
        let stranger = Identity::generate().expect("keygen").public_key();
        let why = refusal(t.open(&offer("backup/oslo/fs"), &stranger));
        assert!(why.contains("not a configured client"), "{why}");
    }

    #[test]
    fn a_bad_snapshot_name_is_refused() {
        let key = Identity::generate().expect("keygen").public_key();
        let t = target(key);
        let mut o = offer("backup/oslo/fs");
        o.to.name = "tank/fs@a b;rm".into();
        let why = refusal(t.open(&o, &key));
        assert!(why.contains("snapshot"), "{why}");
    }

    #[test]
    fn control_requests_outside_the_prefix_are_refused() {
        let key = Identity::generate().expect("keygen").public_key();
        let t = target(key);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        for req in [
            Request::TargetState {
                dataset: "tank/secret".into(),
            },
            Request::AbortResume {
                dataset: "backup/oslo-other".into(),
            },
            Request::DestroySnapshots {
                dataset: "backup".into(),
                snapshots: vec!["x".into()],
            },
            Request::Promote {
                dataset: "tank/secret".into(),
                snapshot: "x".into(),
            },
        ] {
            match rt.block_on(t.handle(&key, req.clone())) {
                Response::Failed {
                    code: RefuseCode::BadDataset,
                    message,
                } => assert!(message.contains("client oslo"), "{message}"),
                other => panic!("{req:?}: {other:?}"),
            }
        }
        // Inside the prefix the request reaches zfs (which is missing here).
        match rt.block_on(t.handle(
            &key,
            Request::TargetState {
                dataset: "backup/oslo/fs".into(),
            },
        )) {
            Response::Failed {
                code: RefuseCode::SinkFailed,
                message,
            } => assert!(message.contains("/nonexistent/zfs"), "{message}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_promote_request_without_the_grant_is_a_policy_refusal_before_zfs_runs() {
        let key = Identity::generate().expect("keygen").public_key();
        let t = target(key);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        match rt.block_on(t.handle(
            &key,
            Request::Promote {
                dataset: "backup/oslo/fs".into(),
                snapshot: "fjord_x".into(),
            },
        )) {
            Response::Failed {
                code: RefuseCode::Policy,
                message,
            } => assert!(message.contains("allow_promote = true"), "{message}"),
            other => panic!("{other:?}"),
        }
    }
}
