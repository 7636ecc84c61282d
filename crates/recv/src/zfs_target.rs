//! The DR node's ZFS side of `fjord-recv serve --config`: a sink that
//! pipes each verified stream into `zfs recv`, and the answers to the
//! sender's control requests (target state, abort a resumable receive,
//! prune snapshots). Every dataset a sender names is checked against the
//! prefixes its key may write under before anything runs.

use bytes::Bytes;
use fjord_push::config::RecvOptions;
use fjord_transport::message::offer_flags;
use fjord_transport::sink::{
    advance_contiguous, Sink, SinkError, SinkFactory, SinkOutcome, Verifier,
};
use fjord_transport::{
    control::{Control, ResponseFuture},
    Offer, PublicKey, RefuseCode, Request, Response, TargetSnapshot, TargetState,
};
use fjord_zfs::{names, RecvProcess, Zfs};
use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::sync::{Arc, Mutex};

/// What one sender key may do.
#[derive(Clone, Debug)]
pub struct ClientPolicy {
    /// The client's name from the config (for logs).
    pub name: String,
    /// Datasets it may write at or below.
    pub prefixes: Vec<String>,
}

/// State shared by the sink factory and the control handler.
pub struct ZfsTarget {
    zfs: Zfs,
    clients: HashMap<PublicKey, ClientPolicy>,
    /// The config's `[recv]`: how streams are received.
    recv: RecvOptions,
    held_limit: u64,
    /// Datasets with a receive in progress: one stream per target at a time.
    receiving: Arc<Mutex<HashSet<String>>>,
}

impl ZfsTarget {
    /// A target using `zfs`, allowing `clients`.
    pub fn new(
        zfs: Zfs,
        clients: HashMap<PublicKey, ClientPolicy>,
        recv: RecvOptions,
        held_limit: u64,
    ) -> ZfsTarget {
        ZfsTarget {
            zfs,
            clients,
            recv,
            held_limit,
            receiving: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// Checks that `peer` may touch `dataset`; the error names both.
    fn authorize(&self, peer: &PublicKey, dataset: &str) -> Result<&ClientPolicy, String> {
        let Some(client) = self.clients.get(peer) else {
            return Err(format!(
                "key {peer} is not a configured client; add a [[client]] with this key"
            ));
        };
        names::check_target(dataset, &client.prefixes)
            .map_err(|e| format!("client {}: {e}", client.name))?;
        Ok(client)
    }

    fn receiving(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.receiving.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn target_state(&self, dataset: String) -> Result<TargetState, String> {
        let exists = self
            .zfs
            .dataset_exists(&dataset)
            .await
            .map_err(|e| e.to_string())?;
        if !exists {
            return Ok(TargetState {
                dataset,
                ..TargetState::default()
            });
        }
        let snapshots = self
            .zfs
            .snapshots(&dataset)
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|s| TargetSnapshot {
                name: s.name,
                guid: s.guid,
                createtxg: s.createtxg,
                creation: s.creation,
            })
            .collect();
        let resume_token = self
            .zfs
            .resume_token(&dataset)
            .await
            .map_err(|e| e.to_string())?;
        let written = self
            .zfs
            .written(&dataset)
            .await
            .map_err(|e| e.to_string())?;
        Ok(TargetState {
            dataset,
            exists,
            snapshots,
            resume_token,
            written,
        })
    }

    async fn abort_resume(&self, dataset: &str) -> Result<String, String> {
        if self.receiving().contains(dataset) {
            return Err(format!(
                "a receive into {dataset} is in progress; not aborting its partial state"
            ));
        }
        if !self
            .zfs
            .dataset_exists(dataset)
            .await
            .map_err(|e| e.to_string())?
        {
            return Ok(format!("{dataset} does not exist; nothing to abort"));
        }
        match self
            .zfs
            .resume_token(dataset)
            .await
            .map_err(|e| e.to_string())?
        {
            None => Ok(format!("{dataset} has no partial receive")),
            Some(_) => {
                self.zfs
                    .recv_abort(dataset)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok(format!("discarded the partial receive of {dataset}"))
            }
        }
    }

    async fn destroy(&self, dataset: &str, snapshots: &[String]) -> Result<String, String> {
        for s in snapshots {
            names::validate_snapshot_short_name(s).map_err(|e| e.to_string())?;
        }
        let present = self
            .zfs
            .snapshots(dataset)
            .await
            .map_err(|e| e.to_string())?;
        // The newest snapshot is the next push's base: never pruned, whatever
        // the sender asks.
        if let Some(newest) = present.last() {
            if snapshots.contains(&newest.name) {
                return Err(format!(
                    "refusing to destroy {dataset}@{}: it is the newest snapshot, the base of the next incremental push",
                    newest.name
                ));
            }
        }
        let mut destroyed = 0;
        for s in snapshots {
            if !present.iter().any(|p| p.name == *s) {
                continue; // already gone: pruning is idempotent
            }
            self.zfs
                .destroy_snapshot(&format!("{dataset}@{s}"))
                .await
                .map_err(|e| e.to_string())?;
            destroyed += 1;
        }
        Ok(format!("destroyed {destroyed} snapshot(s) of {dataset}"))
    }
}

/// [`ZfsTarget`] as the server's sink factory and control handler.
#[derive(Clone)]
pub struct SharedTarget(pub Arc<ZfsTarget>);

impl SinkFactory for SharedTarget {
    fn open(&self, offer: &Offer, peer: &PublicKey) -> Result<Box<dyn Sink>, SinkError> {
        let t = &self.0;
        let client = t
            .authorize(peer, &offer.dataset)
            .map_err(SinkError::Refused)?;
        let short = offer.to.name.rsplit('@').next().unwrap_or_default();
        names::validate_snapshot_short_name(short)
            .map_err(|e| SinkError::Refused(format!("snapshot {:?}: {e}", offer.to.name)))?;
        let force = offer.flags & offer_flags::FORCE_ROLLBACK != 0;
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
                return Err(SinkError::Refused(
                    "a forced (rollback) offer must name its base snapshot".into(),
                ));
            };
            let base = from.name.rsplit('@').next().unwrap_or_default();
            names::validate_snapshot_short_name(base)
                .map_err(|e| SinkError::Refused(format!("base snapshot: {e}")))?;
            let snap = format!("{}@{base}", offer.dataset);
            tracing::warn!(client = %client.name, snapshot = %snap, "rolling back the target (sender used --force)");
            tokio::runtime::Handle::current()
                .block_on(t.zfs.rollback(&snap, true))
                .map_err(|e| SinkError::Refused(e.to_string()))?;
        }
        let spec = t.recv.spec(&offer.dataset, force);
        let child = t
            .zfs
            .spawn_recv(&spec)
            .map_err(|e| SinkError::Refused(e.to_string()))?;
        tracing::info!(client = %client.name, dataset = %offer.dataset, snapshot = %offer.to.name, force, resume = offer.flags & offer_flags::RESUME_TOKEN != 0, "zfs recv started");
        Ok(Box::new(ZfsSink {
            child: Some(child),
            verifier: Verifier::new(t.held_limit),
            next: 0,
            target: format!("{}@{short}", offer.dataset),
            flowing: false,
            _guard: guard,
        }))
    }
}

impl Control for SharedTarget {
    fn handle<'a>(&'a self, peer: &'a PublicKey, request: Request) -> ResponseFuture<'a> {
        Box::pin(async move {
            let t = &self.0;
            if let Err(message) = t.authorize(peer, request.dataset()) {
                return Response::Failed {
                    code: RefuseCode::BadDataset,
                    message,
                };
            }
            let result = match request {
                Request::TargetState { dataset } => {
                    t.target_state(dataset).await.map(Response::TargetState)
                }
                Request::AbortResume { dataset } => t
                    .abort_resume(&dataset)
                    .await
                    .map(|message| Response::Done { message }),
                Request::DestroySnapshots { dataset, snapshots } => t
                    .destroy(&dataset, &snapshots)
                    .await
                    .map(|message| Response::Done { message }),
                // The server answers these from its chunk cache.
                Request::ChunkInventory { .. } => Err(
                    "chunk inventories are answered by the transport, not the ZFS target".into(),
                ),
            };
            result.unwrap_or_else(|message| Response::Failed {
                code: RefuseCode::SinkFailed,
                message,
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
    _guard: ReceivingGuard,
}

impl ZfsSink {
    /// `zfs recv` stopped reading: collect why, for the sender's report.
    fn child_failed(&mut self, write_error: std::io::Error) -> SinkError {
        match self.child.take() {
            Some(child) => match child.finish() {
                Ok(r) => SinkError::Refused(format!(
                    "zfs recv into {} stopped reading (exit {}): {}",
                    self.target,
                    r.status,
                    r.stderr.trim()
                )),
                Err(e) => SinkError::Refused(e.to_string()),
            },
            None => SinkError::Refused(format!("zfs recv into {}: {write_error}", self.target)),
        }
    }
}

impl Sink for ZfsSink {
    fn write(&mut self, start: u64, data: Bytes) -> Result<(), SinkError> {
        advance_contiguous(&mut self.next, start, data.len())?;
        let Some(child) = self.child.as_mut() else {
            return Err(SinkError::Refused("zfs recv has already ended".into()));
        };
        let mut failed = None;
        let r = self.verifier.push(data, &mut |b| {
            child.write_all(b).map_err(|e| {
                let msg = e.to_string();
                failed = Some(e);
                SinkError::Refused(msg)
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
            return Err(SinkError::Refused("zfs recv has already ended".into()));
        };
        let mut failed = None;
        // The verifier releases the stream's END (which makes zfs recv
        // commit the snapshot) only if the whole stream verified and is
        // exactly the `length` the sender announced.
        let guid = self.verifier.finish(length, &mut |b| {
            child.write_all(b).map_err(|e| {
                let msg = e.to_string();
                failed = Some(e);
                SinkError::Refused(msg)
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
            .map_err(|e| SinkError::Refused(e.to_string()))?;
        if r.status != 0 {
            return Err(SinkError::Refused(format!(
                "zfs recv into {} failed (exit {}): {}",
                self.target,
                r.status,
                r.stderr.trim()
            )));
        }
        Ok(SinkOutcome {
            status: 0,
            snapshot_guid: guid,
            message: format!("received {} ({length} stream bytes)", self.target),
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
    use fjord_transport::{Identity, Snapshot};

    /// A target whose `zfs` does not exist: anything that got past the
    /// authorization would fail with "not found", not with the refusal.
    fn target(client: PublicKey) -> SharedTarget {
        let mut clients = HashMap::new();
        clients.insert(
            client,
            ClientPolicy {
                name: "oslo".into(),
                prefixes: vec!["backup/oslo".into()],
            },
        );
        SharedTarget(Arc::new(ZfsTarget::new(
            Zfs::with_binary("/nonexistent/zfs"),
            clients,
            RecvOptions::default(),
            1 << 20,
        )))
    }

    fn offer(dataset: &str) -> Offer {
        Offer {
            session: fjord_transport::SessionId(1),
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

    fn refusal(r: Result<Box<dyn Sink>, SinkError>) -> String {
        match r {
            Err(SinkError::Refused(why)) => why,
            Err(e) => panic!("expected a refusal, got {e}"),
            Ok(_) => panic!("expected a refusal, got a sink"),
        }
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
}
