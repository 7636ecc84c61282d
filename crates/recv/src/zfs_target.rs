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
use bytes::Bytes;
use fjord_config::config::{Client, RecvConfig};
use fjord_dr::policy::{decide, Ask, Grants, Refusal};
use fjord_dr::promote::{fence, PROMOTED_PROP};
use fjord_dr::{retention, DR_HOLD_TAG};
use fjord_proto::message::offer_flags;
use fjord_proto::{Offer, PublicKey, RefuseCode, Request, Response, TargetSnapshot, TargetState};
use fjord_transport::control::{Control, ResponseFuture};
use fjord_transport::sink::{
    advance_contiguous, Sink, SinkError, SinkFactory, SinkOutcome, Verifier,
};
use fjord_zfs::props::{value_of, PropSource, Property};
use fjord_zfs::snapshot::parse_property_u64;
use fjord_zfs::{names, RecvProcess, RecvResult, Zfs, ZfsError};
use std::collections::HashSet;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

mod crypt;
mod lzc;
mod renamed;
mod tree;

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
        let spec = t.config().recv.spec(&offer.dataset, force);
        let target = format!("{}@{short}", offer.dataset);
        let child = t.zfs.spawn_recv(&spec).map_err(|e| match zfs_failure(e) {
            SinkError::Downstream { status, stderr, .. } => SinkError::Downstream {
                what: recv_what(&target),
                status,
                stderr,
            },
            other => other,
        })?;
        let resume = offer.flags & offer_flags::RESUME_TOKEN != 0;
        tracing::info!(client = %client.name, dataset = %offer.dataset, snapshot = %offer.to.name, force, resume, "zfs recv started");
        let meter = TripwireMeter::for_offer(&t.config(), offer.from.is_some() && !resume);
        Ok(Box::new(ZfsSink {
            child: Some(child),
            // `-I` streams are packages: accepted, the newest snapshot held back
            // until the proof (see `Verifier`).
            verifier: Verifier::with_options(
                t.held_limit,
                fjord_transport::sink::VerifierOptions {
                    accept_compound: true,
                },
            ),
            next: 0,
            target,
            flowing: false,
            meter,
            commit: Some(AfterCommit {
                handle,
                target: t.clone(),
                client,
                dataset: offer.dataset.clone(),
                inherit_key: offer.flags & offer_flags::INHERIT_KEY != 0,
            }),
            _guard: guard,
        }))
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

/// Frees the dataset for the next receive when the sink goes away.
struct ReceivingGuard {
    set: Arc<Mutex<HashSet<String>>>,
    dataset: String,
}

impl Drop for ReceivingGuard {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.dataset);
    }
}

/// One stream on its way into `zfs recv`: only verified bytes are written
/// to its standard input.
struct ZfsSink {
    child: Option<RecvProcess>,
    verifier: Verifier,
    next: u64,
    target: String,
    /// Whether verified bytes have reached `zfs recv` yet (logged once).
    flowing: bool,
    /// What runs once `zfs recv` committed: holds and DR retention.
    commit: Option<AfterCommit>,
    /// The DR node's tripwire meter, when it judges this stream.
    meter: Option<TripwireMeter>,
    _guard: ReceivingGuard,
}

/// The DR node's own tripwire over one stream: measures the verified bytes
/// given to `zfs recv`; once the snapshot is committed, judges them.
struct TripwireMeter {
    meter: fjord_tripwire::Meter,
    state_dir: std::path::PathBuf,
    config: fjord_config::tripwire::TripwireConfig,
}

impl TripwireMeter {
    /// A meter when the DR node keeps a tripwire (`state_dir`, enabled) and
    /// the stream is `judgeable`: an incremental from its start (a full
    /// stream has no history to compare with; a resumed one starts
    /// mid-record).
    fn for_offer(config: &RecvConfig, judgeable: bool) -> Option<TripwireMeter> {
        let state_dir = config.state_dir.clone()?;
        (config.tripwire.enabled && judgeable).then(|| TripwireMeter {
            meter: fjord_tripwire::Meter::new(None),
            state_dir,
            config: config.tripwire.clone(),
        })
    }

    /// Judges the committed `target` (`dataset@snapshot`) and records it;
    /// a failure to keep the page is logged, never the receive's failure.
    fn judge(self, target: &str) {
        let Some(figures) = self.meter.figures() else {
            return;
        };
        let (dataset, snapshot) = target.split_once('@').unwrap_or((target, ""));
        match crate::tripwire::record(
            &self.state_dir,
            &self.config,
            dataset,
            figures,
            now(),
            snapshot,
        ) {
            Ok((sample, j)) if j.verdict == fjord_tripwire::Verdict::Tripped => {
                tracing::error!(dataset, snapshot, incompressible = ?sample.incompressible, reason = %j.reason, "ransomware tripwire: the DR node's alarm is raised (fjord-recv status; fjord-recv tripwire ack after checking)");
            }
            Ok((sample, j)) => {
                tracing::info!(dataset, snapshot, incompressible = ?sample.incompressible, verdict = ?j.verdict, "tripwire measured the receive");
            }
            Err(e) => {
                tracing::warn!(
                    dataset,
                    snapshot,
                    "the DR node's tripwire page could not be kept: {e:#}"
                );
            }
        }
    }
}

/// The DR node's work after a committed receive.
struct AfterCommit {
    handle: tokio::runtime::Handle,
    target: Arc<ZfsTarget>,
    client: Client,
    dataset: String,
    /// The sender's [`offer_flags::INHERIT_KEY`].
    inherit_key: bool,
}

/// What the sender reads before a `zfs recv` failure: `zfs recv into
/// backup/fs@b`.
fn recv_what(target: &str) -> String {
    format!("zfs recv into {target}")
}

/// How `zfs recv` ended, as a downstream failure (`None` unless it failed).
fn recv_failure(target: &str, r: &RecvResult) -> Option<SinkError> {
    (r.status != 0).then(|| SinkError::Downstream {
        what: recv_what(target),
        // -1: neither an exit code nor a signal is known.
        status: (r.status >= 0).then_some(r.status),
        stderr: r.stderr.clone(),
    })
}

/// Waiting for `zfs recv` failed: no status, the reason instead.
fn recv_wait_failure(target: &str, e: &ZfsError) -> SinkError {
    SinkError::Downstream {
        what: recv_what(target),
        status: None,
        stderr: e.to_string(),
    }
}

impl ZfsSink {
    /// `zfs recv` stopped reading: collect why, for the sender's report.
    fn child_failed(&mut self, write_error: std::io::Error) -> SinkError {
        match self.child.take() {
            Some(child) => match child.finish() {
                Ok(r) => recv_failure(&self.target, &r).unwrap_or_else(|| {
                    // It exited 0 without reading everything: still a failure.
                    SinkError::Downstream {
                        what: recv_what(&self.target),
                        status: Some(0),
                        stderr: format!("stopped reading its input ({write_error})"),
                    }
                }),
                Err(e) => recv_wait_failure(&self.target, &e),
            },
            None => SinkError::Internal(format!(
                "zfs recv into {} was already collected: {write_error}",
                self.target
            )),
        }
    }
}

impl Sink for ZfsSink {
    fn write(&mut self, start: u64, data: Bytes) -> Result<(), SinkError> {
        advance_contiguous(&mut self.next, start, data.len())?;
        let Some(child) = self.child.as_mut() else {
            return Err(SinkError::Internal(format!(
                "zfs recv into {} has already ended",
                self.target
            )));
        };
        let mut failed = None;
        let mut meter = self.meter.as_mut().map(|m| &mut m.meter);
        let r = self.verifier.push(data, &mut |b| {
            if let Some(m) = meter.as_mut() {
                m.feed(b);
            }
            child.write_all(b).map_err(|e| {
                // Replaced by `child_failed` with zfs recv's own words.
                let msg = e.to_string();
                failed = Some(e);
                SinkError::Internal(msg)
            })
        });
        match (r, failed) {
            (Err(_), Some(e)) => Err(self.child_failed(e)),
            (r, _) => {
                if r.is_ok() && !self.flowing && self.verifier.released() > 0 {
                    self.flowing = true;
                    tracing::info!(target = %self.target, "verified bytes flowing into zfs recv");
                }
                r
            }
        }
    }

    fn finish(&mut self, length: u64) -> Result<SinkOutcome, SinkError> {
        let Some(mut child) = self.child.take() else {
            return Err(SinkError::Internal(format!(
                "zfs recv into {} has already ended",
                self.target
            )));
        };
        let mut failed = None;
        // The verifier releases the stream's END (which makes zfs recv
        // commit the snapshot) only if the whole stream verified and is
        // exactly the `length` the sender announced.
        let mut meter = self.meter.as_mut().map(|m| &mut m.meter);
        let guid = self.verifier.finish(length, &mut |b| {
            if let Some(m) = meter.as_mut() {
                m.feed(b);
            }
            child.write_all(b).map_err(|e| {
                // Replaced by `child_failed` with zfs recv's own words.
                let msg = e.to_string();
                failed = Some(e);
                SinkError::Internal(msg)
            })
        });
        let guid = match (guid, failed) {
            (Ok(g), _) => g,
            (Err(e), None) => {
                // The stream is bad or its length is wrong. zfs recv has
                // only verified records and no END for the snapshot, so it
                // cannot commit it: closing its input mid-stream leaves a
                // resumable partial receive (`-s`).
                match child.finish() {
                    Ok(r) => {
                        tracing::warn!(target = %self.target, error = %e, status = r.status, "zfs recv ended without the stream's END")
                    }
                    Err(z) => {
                        tracing::warn!(target = %self.target, error = %e, wait_error = %z, "zfs recv ended without the stream's END")
                    }
                }
                return Err(e);
            }
            (Err(e), Some(_)) => {
                self.child = Some(child);
                return Err(self.child_failed(std::io::Error::other(e.to_string())));
            }
        };
        let r = child
            .finish()
            .map_err(|e| recv_wait_failure(&self.target, &e))?;
        if let Some(e) = recv_failure(&self.target, &r) {
            return Err(e);
        }
        if let Some(meter) = self.meter.take() {
            meter.judge(&self.target);
        }
        // The sink runs on its own thread, outside the runtime: waiting
        // for the short zfs commands here blocks no async worker.
        let after = match self.commit.take() {
            Some(c) => c.handle.block_on(async {
                let mut after = String::new();
                if c.inherit_key {
                    after = c.target.inherit_key(&c.client, &c.dataset).await;
                }
                after + &c.target.after_receive(&c.client, &c.dataset).await
            }),
            None => String::new(),
        };
        Ok(SinkOutcome {
            status: 0,
            snapshot_guid: guid,
            message: format!("received {} ({length} stream bytes){after}", self.target),
        })
    }

    fn abort(&mut self, why: &str) {
        if let Some(child) = self.child.take() {
            // End of input mid-stream: `zfs recv -s` keeps what it received
            // (verified records only) as a resumable partial receive.
            match child.finish() {
                Ok(r) => {
                    tracing::warn!(target = %self.target, why, status = r.status, stderr = %r.stderr.trim(), "zfs recv stopped")
                }
                Err(e) => {
                    tracing::warn!(target = %self.target, why, error = %e, "zfs recv stopped")
                }
            }
        }
    }
}

impl Drop for ZfsSink {
    fn drop(&mut self) {
        self.abort("receiver dropped the session");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_proto::Snapshot;
    use fjord_transport::Identity;

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
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
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
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
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
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
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
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let _in_runtime = rt.enter();
        let Err(e) = t.open(&offer("backup/oslo/fs"), &key) else {
            panic!("expected a failure")
        };
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
