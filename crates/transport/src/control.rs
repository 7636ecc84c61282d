//! Control requests: what a sender asks a receiver besides sending a
//! stream (its target's snapshots and resume token, discarding a partial
//! receive, pruning snapshots). The server decodes them and hands them to
//! a [`Control`] implementation; fjord-recv's answers with `zfs`.

use crate::identity::PublicKey;
use crate::message::{RefuseCode, Request, Response};
use std::future::Future;
use std::pin::Pin;

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
