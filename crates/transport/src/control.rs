//! Control requests: what a sender asks a receiver besides sending a
//! stream (its target's snapshots and resume token, discarding a partial
//! receive, pruning snapshots). The server decodes them and hands them to
//! a [`Control`] implementation; fjord-recv's answers with `zfs`. Chunk
//! inventories are answered by the transport itself, from its
//! [`chunk_cache`](fjord_sink::chunk_cache).

use crate::server::{read_message, write, Shared};
use fjord_proto::message::{Message, MessageReader, RefuseCode, Request, Response, SessionId};
use fjord_proto::PublicKey;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;
use tracing::{info, warn, Instrument};

/// A boxed future answering one request.
pub type ResponseFuture<'a> = Pin<Box<dyn Future<Output = Response> + Send + 'a>>;

/// Answers control requests. Implementations check that `peer` may touch
/// the request's dataset before doing anything.
pub trait Control: Send + Sync + 'static {
    /// The answer to `request` from the sender whose key is `peer`.
    fn handle<'a>(&'a self, peer: &'a PublicKey, request: Request) -> ResponseFuture<'a>;
}

/// A receiver without control requests (the file sink): refuses them all.
pub struct NoControl;

impl Control for NoControl {
    fn handle<'a>(&'a self, _peer: &'a PublicKey, request: Request) -> ResponseFuture<'a> {
        Box::pin(async move {
            Response::Failed {
                code: RefuseCode::Other,
                message: format!(
                    "this receiver stores streams as files and has no ZFS target to ask about {}; run fjord-recv serve --config with a ZFS target",
                    request.dataset()
                ),
            }
        })
    }
}

/// The answer to a chunk-inventory request: the sender's cache's
/// promise, or nothing when this receiver keeps no cache.
async fn chunk_inventory(shared: &Shared, key: &PublicKey, session: SessionId) -> Response {
    let Some(caches) = &shared.caches else {
        return Response::ChunkInventory { hashes: Vec::new() };
    };
    // The inventory reads the cache's index from disk: on the blocking
    // pool, not on a runtime worker.
    let (caches, key) = (caches.clone(), *key);
    let listed = tokio::task::spawn_blocking(move || caches.inventory(&key, session)).await;
    let listed = match listed {
        Ok(r) => r,
        Err(e) => {
            return Response::Failed {
                code: RefuseCode::SinkFailed,
                message: format!("the chunk cache's inventory task failed: {e}"),
            }
        }
    };
    match listed {
        Ok(hashes) => {
            info!(%session, chunks = hashes.len(), "chunk inventory promised");
            Response::ChunkInventory {
                hashes: hashes.into_iter().map(|h| h.0).collect(),
            }
        }
        Err(e) => Response::Failed {
            code: RefuseCode::SinkFailed,
            message: format!("the chunk cache cannot be read: {e}; check --chunk-cache"),
        },
    }
}

/// Answers control requests on one stream until the sender closes it, or
/// sends none within the offer deadline. A request beyond the client's
/// limit of requests in progress is answered `Busy` (the sender retries).
pub(crate) async fn serve_requests(
    shared: &Shared,
    key: &PublicKey,
    first: Request,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    reader: &mut MessageReader,
) {
    let wait = shared.admission.limits().offer_deadline;
    let mut next = Some(first);
    while let Some(request) = next.take() {
        let span = match &request {
            Request::ChunkInventory { session } => {
                tracing::info_span!("inventory", %session)
            }
            r => tracing::info_span!("request", dataset = %r.dataset()),
        };
        let response = async {
            info!(request = ?request, "control request");
            let _ticket = match shared.admit_request(*key) {
                Ok(t) => t,
                Err(busy) => {
                    shared.note_busy(key, &busy, "control request");
                    return Response::Failed {
                        code: RefuseCode::Busy,
                        message: busy.to_string(),
                    };
                }
            };
            let response = match request {
                Request::ChunkInventory { session } => chunk_inventory(shared, key, session).await,
                request => shared.control.handle(key, request).await,
            };
            if let Response::Failed { code, message } = &response {
                warn!(sender = %key, error = %message, "control request failed");
                let label = crate::server::refusals::label(*code);
                shared.refusals.note(label, Some(*key));
            }
            response
        }
        .instrument(span)
        .await;
        if write(send, &Message::Response(response)).await.is_err() {
            return;
        }
        next = match tokio::time::timeout(wait, read_message(recv, reader)).await {
            Ok(Ok(Message::Request(r))) => Some(r),
            Ok(Ok(other)) => {
                warn!(got = other.kind(), "expected a request; closing the stream");
                None
            }
            Ok(Err(_)) => None, // the sender is done
            Err(_) => {
                info!("no further request within the offer deadline; closing the stream");
                None
            }
        };
    }
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}
