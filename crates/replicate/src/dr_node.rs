//! The DR node's side of a push, as the primary sees it: what a target
//! has, a transfer into it, and the requests the DR node's policy answers
//! (discard a partial receive, prune).
//!
//! The real implementation speaks fjord's QUIC protocol
//! ([`crate::edge::QuicDrNode`]); the tests use [`crate::fake::FakeDrNode`].

use crate::plan::TargetState;
use crate::pool::SendStream;
use std::future::Future;
use thiserror::Error;

/// A snapshot of the source, named in full (`pool/ds@snap`), with its GUID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotRef {
    /// `dataset@name` on the source.
    pub name: String,
    /// Its GUID (the same on both sides).
    pub guid: u64,
}

/// One stream into one target dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transfer {
    /// The source dataset (for progress and logs).
    pub source: String,
    /// The target dataset on the DR node.
    pub target: String,
    /// The incremental base, if any.
    pub from: Option<SnapshotRef>,
    /// The snapshot the stream ends at.
    pub to: SnapshotRef,
    /// Roll the target back to `from` first (the operator's `--force`;
    /// the DR node's policy decides).
    pub rollback: bool,
    /// The stream resumes the target's interrupted receive (`zfs send -t`).
    pub resume: bool,
    /// `zfs send -nP`'s estimate, for progress and the receiver's admission.
    pub size_estimate: Option<u64>,
    /// The creation txg of the incremental base (the tripwire's meter
    /// tells files that existed then from new ones).
    pub base_txg: Option<u64>,
    /// A raw stream of a dataset that inherits its key from its parent on
    /// the primary: the DR node makes the copy inherit its parent's
    /// encryption root again (see [`crate::crypt`]).
    pub inherit_key: bool,
}

/// What a finished transfer cost.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TransferStats {
    /// What the tripwire's meter measured on the stream, if it could.
    pub figures: Option<crate::tripwire::StreamFigures>,
    /// Stream bytes delivered (before packing).
    pub bytes: u64,
    /// Bytes sent again after reconnections.
    pub bytes_resent: u64,
    /// Reconnections.
    pub reconnects: u64,
}

/// Why a request to the DR node failed. Callers decide by the variant.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum DrError {
    /// The DR node could not be reached, or the link stayed down beyond
    /// the grace. An interrupted transfer left a resumable partial receive.
    #[error("the DR node is unreachable: {0}")]
    Unreachable(String),
    /// The DR node refused (its policy, a bad name, a partial receive in
    /// the way, a failed `zfs recv`), with its reason.
    #[error("the DR node refused: {0}")]
    Refused(String),
    /// The source stream failed (`zfs send` exited with an error).
    #[error("the source stream failed: {0}")]
    Source(String),
    /// The target was promoted on the DR node (failover): it is a primary
    /// now and refuses every push; the DR node's message says when and how
    /// to fail back.
    #[error("the DR node refuses: {0}")]
    Promoted(String),
    /// The DR node answered something this sender does not understand.
    #[error("the DR node's answer is not understood: {0}")]
    Protocol(String),
}

/// The DR node, as the replication logic uses it. Target names are full
/// ZFS names on the DR node.
pub trait DrNode: Send + Sync {
    /// What `target` has: its snapshots, resume token and `written`.
    fn target_state(
        &self,
        target: &str,
    ) -> impl Future<Output = Result<TargetState, DrError>> + Send;

    /// Discards the interrupted receive into `target` (`zfs recv -A`).
    fn abort_resume(&self, target: &str) -> impl Future<Output = Result<(), DrError>> + Send;

    /// Asks the DR node to destroy these snapshots (short names) of
    /// `target`; its policy decides.
    fn destroy_snapshots(
        &self,
        target: &str,
        snapshots: &[String],
    ) -> impl Future<Output = Result<(), DrError>> + Send;

    /// The datasets at and below `root` on the DR node, by full name
    /// (empty when `root` does not exist).
    fn list_tree(&self, root: &str) -> impl Future<Output = Result<Vec<String>, DrError>> + Send;

    /// Asks the DR node to destroy the copy `target` and everything below
    /// it, whose source was destroyed on the primary; its policy decides
    /// (`allow_destroy_removed`). Returns what the DR node did.
    fn destroy_copy(&self, target: &str) -> impl Future<Output = Result<String, DrError>> + Send;

    /// Asks the DR node to rename the copy `target` (and everything below
    /// it) to `to`, its source having been renamed on the primary; its
    /// policy decides (`allow_rename`). Returns what the DR node did.
    fn rename_copy(
        &self,
        target: &str,
        to: &str,
    ) -> impl Future<Output = Result<String, DrError>> + Send;

    /// Asks the DR node to promote `target` to `snapshot` (a planned
    /// switchover); its policy must grant it. Promoting again to the same
    /// snapshot finishes an interrupted promotion; to another is refused
    /// as [`DrError::Promoted`]. Returns what the DR node did.
    fn promote(
        &self,
        target: &str,
        snapshot: &str,
    ) -> impl Future<Output = Result<String, DrError>> + Send;

    /// Carries `stream` into `transfer.target`, surviving link flaps
    /// within the grace; returns when the DR node has committed it.
    fn transfer(
        &self,
        transfer: Transfer,
        stream: SendStream,
    ) -> impl Future<Output = Result<TransferStats, DrError>> + Send;
}

impl<T: DrNode> DrNode for std::sync::Arc<T> {
    fn target_state(
        &self,
        target: &str,
    ) -> impl Future<Output = Result<TargetState, DrError>> + Send {
        (**self).target_state(target)
    }
    fn abort_resume(&self, target: &str) -> impl Future<Output = Result<(), DrError>> + Send {
        (**self).abort_resume(target)
    }
    fn destroy_snapshots(
        &self,
        target: &str,
        snapshots: &[String],
    ) -> impl Future<Output = Result<(), DrError>> + Send {
        (**self).destroy_snapshots(target, snapshots)
    }
    fn promote(
        &self,
        target: &str,
        snapshot: &str,
    ) -> impl Future<Output = Result<String, DrError>> + Send {
        (**self).promote(target, snapshot)
    }
    fn list_tree(&self, root: &str) -> impl Future<Output = Result<Vec<String>, DrError>> + Send {
        (**self).list_tree(root)
    }
    fn destroy_copy(&self, target: &str) -> impl Future<Output = Result<String, DrError>> + Send {
        (**self).destroy_copy(target)
    }
    fn rename_copy(
        &self,
        target: &str,
        to: &str,
    ) -> impl Future<Output = Result<String, DrError>> + Send {
        (**self).rename_copy(target, to)
    }
    fn transfer(
        &self,
        transfer: Transfer,
        stream: SendStream,
    ) -> impl Future<Output = Result<TransferStats, DrError>> + Send {
        (**self).transfer(transfer, stream)
    }
}
