//! [`QuicDrNode`]: the DR node through fjord's QUIC transport, with pinned
//! keys, in-stream resume and (optionally) the packed data path.
//!
//! One [`QuicDrNode`] holds one [`Link`] for the whole job: its control
//! requests and its `parallelism` transfers are streams of one connection
//! (one TLS handshake), re-established once for all of them when it is
//! lost.

use crate::dr_node::{DrError, DrNode, SnapshotRef, Transfer, TransferStats};
use crate::plan::TargetState;
use crate::pool::SendStream;
use crate::tripwire::MeteredStream;
use fjord_pack::{PackOptions, ReceiverHoldings};
use fjord_proto::message::offer_flags;
use fjord_proto::{Offer, PublicKey, RefuseCode, Request, Response, SessionError, Snapshot};
use fjord_transport::client::{Counters, Link, LinkOptions, SendError, TransferOptions};
use fjord_transport::source::{PackSource, StreamSource};
use fjord_transport::{Identity, LinkConfig};
use fjord_zfs::SnapshotInfo;
use std::any::Any;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Called when a transfer starts, with its source, counters and size
/// estimate (a progress display); what it returns is dropped at the end.
pub type WatchTransfer =
    Arc<dyn Fn(&str, Arc<Counters>, Option<u64>) -> Box<dyn Any + Send> + Send + Sync>;

/// One DR node, as a job's config names it.
pub struct QuicDrNode {
    /// This sender's key.
    pub identity: Arc<Identity>,
    /// The DR node's `HOST:PORT` (resolved at first use).
    pub target_host: String,
    /// The DR node's public key (pinned).
    pub server_key: PublicKey,
    /// Link tuning.
    pub link: LinkConfig,
    /// How long a broken link may stay down.
    pub grace: Duration,
    /// Pack the stream (dedup + zstd).
    pub pack: bool,
    /// Progress display, if any.
    pub watch: Option<WatchTransfer>,
    /// The link to `target_host`, made (resolved, bound) at first use
    /// and shared by the whole job.
    link_cell: tokio::sync::OnceCell<Link>,
}

/// The one place where the transport's error becomes the replication
/// logic's.
fn typed(e: SendError) -> DrError {
    match e {
        SendError::Session(SessionError::Refused {
            code: RefuseCode::Promoted,
            reason,
        }) => DrError::Promoted(reason),
        SendError::Session(SessionError::Refused { code, reason }) => {
            DrError::Refused(format!("{reason} ({code})"))
        }
        SendError::Session(SessionError::PeerAborted(m)) => DrError::Refused(m),
        SendError::Session(
            e @ (SessionError::GraceExpired { .. } | SessionError::ReceiverBusy { .. }),
        ) => DrError::Unreachable(e.to_string()),
        SendError::KeyRefused { .. } => DrError::Refused(e.to_string()),
        SendError::Source { source, .. } => DrError::Source(source.to_string()),
        SendError::Setup(m) => DrError::Unreachable(format!("cannot set up the connection: {m}")),
        other => DrError::Protocol(other.to_string()),
    }
}

fn snapshot(s: SnapshotRef) -> Snapshot {
    Snapshot {
        name: s.name,
        guid: s.guid,
    }
}

impl QuicDrNode {
    /// The DR node at `target_host` (`HOST:PORT`), key pinned.
    pub fn new(
        identity: Arc<Identity>,
        target_host: String,
        server_key: PublicKey,
        link: LinkConfig,
        grace: Duration,
        pack: bool,
    ) -> QuicDrNode {
        QuicDrNode {
            identity,
            target_host,
            server_key,
            link,
            grace,
            pack,
            watch: None,
            link_cell: tokio::sync::OnceCell::new(),
        }
    }

    /// Resolves `target_host` (a name that does not resolve is an
    /// unreachable DR node; DNS may recover by the next run).
    async fn to(&self) -> Result<SocketAddr, DrError> {
        let host = &self.target_host;
        tokio::net::lookup_host(host.as_str())
            .await
            .map_err(|e| {
                DrError::Unreachable(format!(
                    "cannot resolve target_host {host:?} (expected HOST:PORT): {e}"
                ))
            })?
            .next()
            .ok_or_else(|| {
                DrError::Unreachable(format!("target_host {host:?} resolves to no address"))
            })
    }

    /// The job's link to the DR node, made once (the first user resolves
    /// the name and binds the socket; the others wait for it).
    async fn link(&self) -> Result<&Link, DrError> {
        self.link_cell
            .get_or_try_init(|| async {
                let mut opts = LinkOptions::new(self.to().await?, self.server_key);
                opts.link = self.link.clone();
                Link::new(&self.identity, opts).map_err(typed)
            })
            .await
    }

    /// Closes the job's link, if one was made, letting the close go out
    /// (at most 2 s). Dropping the node closes it too, without waiting.
    pub async fn close(&self) {
        if let Some(link) = self.link_cell.get() {
            link.close().await;
        }
    }

    async fn ask(&self, req: Request) -> Result<Response, DrError> {
        let mut responses = self
            .link()
            .await?
            .request(&[req], self.grace)
            .await
            .map_err(typed)?;
        match responses.pop() {
            None => Err(DrError::Protocol("no answer to a request".into())),
            Some(Response::Failed {
                code: RefuseCode::Promoted,
                message,
            }) => Err(DrError::Promoted(message)),
            Some(Response::Failed { code, message }) => {
                Err(DrError::Refused(format!("{message} ({code})")))
            }
            Some(r) => Ok(r),
        }
    }
}

impl DrNode for QuicDrNode {
    async fn target_state(&self, target: &str) -> Result<TargetState, DrError> {
        let answer = self
            .ask(Request::TargetState {
                dataset: target.to_string(),
            })
            .await?;
        let Response::TargetState(t) = answer else {
            return Err(DrError::Protocol(format!(
                "answered {answer:?} to a target-state request"
            )));
        };
        Ok(TargetState {
            exists: t.exists,
            snapshots: t
                .snapshots
                .into_iter()
                .map(|s| SnapshotInfo {
                    name: s.name,
                    guid: s.guid,
                    createtxg: s.createtxg,
                    creation: s.creation,
                })
                .collect(),
            resume_token: t.resume_token,
            written: t.written,
        })
    }

    async fn abort_resume(&self, target: &str) -> Result<(), DrError> {
        self.ask(Request::AbortResume {
            dataset: target.to_string(),
        })
        .await
        .map(drop)
    }

    async fn promote(&self, target: &str, snapshot: &str) -> Result<String, DrError> {
        match self
            .ask(Request::Promote {
                dataset: target.to_string(),
                snapshot: snapshot.to_string(),
            })
            .await?
        {
            Response::Done { message } => Ok(message),
            other => Err(DrError::Protocol(format!(
                "a promote request was answered with {other:?}"
            ))),
        }
    }

    async fn list_tree(&self, root: &str) -> Result<Vec<String>, DrError> {
        match self
            .ask(Request::ListTree {
                dataset: root.to_string(),
            })
            .await?
        {
            Response::Tree { datasets } => Ok(datasets),
            other => Err(DrError::Protocol(format!(
                "a tree listing was answered with {other:?}"
            ))),
        }
    }

    async fn destroy_copy(&self, target: &str) -> Result<String, DrError> {
        match self
            .ask(Request::DestroyCopy {
                dataset: target.to_string(),
            })
            .await?
        {
            Response::Done { message } => Ok(message),
            other => Err(DrError::Protocol(format!(
                "a destroy-copy request was answered with {other:?}"
            ))),
        }
    }

    async fn rename_copy(&self, target: &str, to: &str) -> Result<String, DrError> {
        match self
            .ask(Request::RenameCopy {
                dataset: target.to_string(),
                to: to.to_string(),
            })
            .await?
        {
            Response::Done { message } => Ok(message),
            other => Err(DrError::Protocol(format!(
                "a rename-copy request was answered with {other:?}"
            ))),
        }
    }

    async fn destroy_snapshots(&self, target: &str, snapshots: &[String]) -> Result<(), DrError> {
        self.ask(Request::DestroySnapshots {
            dataset: target.to_string(),
            snapshots: snapshots.to_vec(),
        })
        .await
        .map(drop)
    }

    async fn transfer(
        &self,
        transfer: Transfer,
        stream: SendStream,
    ) -> Result<TransferStats, DrError> {
        let mut flags = 0;
        if transfer.rollback {
            flags |= offer_flags::FORCE_ROLLBACK;
        }
        if transfer.resume {
            flags |= offer_flags::RESUME_TOKEN;
        }
        if self.pack {
            flags |= offer_flags::PACKED;
        }
        if transfer.inherit_key {
            flags |= offer_flags::INHERIT_KEY;
        }
        let offer = Offer {
            session: fjord_transport::identity::random_session_id(),
            resuming: false,
            dataset: transfer.target.clone(),
            from: transfer.from.map(snapshot),
            to: snapshot(transfer.to),
            flags,
            size_estimate: transfer.size_estimate,
        };
        let link = self.link().await?;
        let (metered, figures) = MeteredStream::new(stream, transfer.base_txg);
        let stream: SendStream = Box::new(metered);
        let stream: Box<dyn StreamSource> = if self.pack {
            // The pack consults the DR node's chunk inventory from its first frame.
            let holdings: Box<dyn ReceiverHoldings + Send> = Box::new(
                link.chunk_inventory(offer.session, self.grace)
                    .await
                    .map_err(typed)?,
            );
            Box::new(
                PackSource::spawn(stream, PackOptions::default(), holdings)
                    .map_err(|e| DrError::Source(format!("cannot start the pack threads: {e}")))?,
            )
        } else {
            Box::new(stream)
        };
        let mut opts = TransferOptions::new(offer);
        opts.rate_limit = self.link.rate_limit;
        opts.grace = self.grace;
        let counters = Arc::new(Counters::default());
        let _shown = self
            .watch
            .as_ref()
            .map(|w| w(&transfer.source, counters.clone(), transfer.size_estimate));
        let out = link.send(opts, stream, counters).await.map_err(typed)?;
        tracing::debug!(receiver = %out.report.message, "the DR node committed");
        let figures = *figures.lock().unwrap_or_else(|p| p.into_inner());
        Ok(TransferStats {
            bytes: out.length,
            bytes_resent: out.stats.bytes_resent,
            reconnects: out.stats.reconnects,
            figures,
        })
    }
}
