//! The primary's side of a push: the pool that holds the source datasets.
//!
//! [`Pool`] is what the replication logic needs from ZFS on the primary:
//! list, snapshot, send, hold, release, destroy. The real implementation
//! runs the `zfs` CLI ([`crate::edge::ZfsPool`]); the tests use
//! [`crate::fake::FakePool`].

use fjord_zfs::{SendSpec, SnapshotInfo};
use std::future::Future;
use thiserror::Error;

/// A running `zfs send`'s output. A read fails if the send failed, so a
/// stream cut short is never taken for a complete one.
pub type SendStream = Box<dyn std::io::Read + Send>;

/// Why an operation on the primary's pool failed. Callers decide by the
/// variant, never by the message.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// The dataset or snapshot does not exist.
    #[error("{0}")]
    NotFound(String),
    /// `zfs hold`: the snapshot already has this tag.
    #[error("{0}")]
    HoldExists(String),
    /// Anything else `zfs` reported, with its message.
    #[error("{0}")]
    Failed(String),
}

impl PoolError {
    /// `zfs hold` found the tag already there (harmless when re-holding).
    pub fn is_hold_exists(&self) -> bool {
        matches!(self, PoolError::HoldExists(_))
    }

    /// The dataset or snapshot does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, PoolError::NotFound(_))
    }
}

/// The primary's pool, as the replication logic uses it. Names are full
/// ZFS names (`pool/ds`, `pool/ds@snap`).
pub trait Pool: Send + Sync {
    /// `root` and, if `recursive`, every filesystem and volume below it,
    /// parents before children. Empty if `root` does not exist.
    fn datasets(
        &self,
        root: &str,
        recursive: bool,
    ) -> impl Future<Output = Result<Vec<String>, PoolError>> + Send;

    /// The snapshots of `dataset`, oldest first.
    fn snapshots(
        &self,
        dataset: &str,
    ) -> impl Future<Output = Result<Vec<SnapshotInfo>, PoolError>> + Send;

    /// The value of the property `prop` of `dataset` (`None` when unset,
    /// `-`, or the dataset does not exist).
    fn property(
        &self,
        dataset: &str,
        prop: &str,
    ) -> impl Future<Output = Result<Option<String>, PoolError>> + Send;

    /// After a switchover's final push: makes `root` (and, if
    /// `recursive`, its children) a replication target. Refuses if anything
    /// was written after `base` (writes did not stop); then unmounts it,
    /// sets `readonly=on` and `canmount=noauto`, lifts a promotion's fence
    /// (`fjord:promoted` set on `root`) and sets `fjord:demoted=marker`.
    fn demote(
        &self,
        root: &str,
        recursive: bool,
        base: &str,
        marker: &str,
    ) -> impl Future<Output = Result<(), PoolError>> + Send;

    /// Takes `root@short` (and the same name on every child, atomically,
    /// if `recursive`), with the user properties `props` on it (what the
    /// hooks recorded, e.g. `fjord:wal_lsn`).
    fn snapshot(
        &self,
        root: &str,
        short: &str,
        recursive: bool,
        props: &[(String, String)],
    ) -> impl Future<Output = Result<(), PoolError>> + Send;

    /// The hold tags on `snapshot`.
    fn holds(&self, snapshot: &str) -> impl Future<Output = Result<Vec<String>, PoolError>> + Send;

    /// `zfs hold tag snapshot`.
    fn hold(&self, tag: &str, snapshot: &str)
        -> impl Future<Output = Result<(), PoolError>> + Send;

    /// `zfs release tag snapshot`.
    fn release(
        &self,
        tag: &str,
        snapshot: &str,
    ) -> impl Future<Output = Result<(), PoolError>> + Send;

    /// `zfs destroy dataset@snap`.
    fn destroy_snapshot(
        &self,
        snapshot: &str,
    ) -> impl Future<Output = Result<(), PoolError>> + Send;

    /// The size `zfs send -nP` expects, if it can tell.
    fn size_estimate(&self, spec: &SendSpec) -> impl Future<Output = Option<u64>> + Send;

    /// Starts `zfs send` and returns its output.
    fn send(&self, spec: &SendSpec) -> Result<SendStream, PoolError>;
}

impl<T: Pool> Pool for std::sync::Arc<T> {
    fn datasets(
        &self,
        root: &str,
        recursive: bool,
    ) -> impl Future<Output = Result<Vec<String>, PoolError>> + Send {
        (**self).datasets(root, recursive)
    }
    fn snapshots(
        &self,
        dataset: &str,
    ) -> impl Future<Output = Result<Vec<SnapshotInfo>, PoolError>> + Send {
        (**self).snapshots(dataset)
    }
    fn property(
        &self,
        dataset: &str,
        prop: &str,
    ) -> impl Future<Output = Result<Option<String>, PoolError>> + Send {
        (**self).property(dataset, prop)
    }
    fn snapshot(
        &self,
        root: &str,
        short: &str,
        recursive: bool,
        props: &[(String, String)],
    ) -> impl Future<Output = Result<(), PoolError>> + Send {
        (**self).snapshot(root, short, recursive, props)
    }
    fn demote(
        &self,
        root: &str,
        recursive: bool,
        base: &str,
        marker: &str,
    ) -> impl Future<Output = Result<(), PoolError>> + Send {
        (**self).demote(root, recursive, base, marker)
    }
    fn holds(&self, snapshot: &str) -> impl Future<Output = Result<Vec<String>, PoolError>> + Send {
        (**self).holds(snapshot)
    }
    fn hold(
        &self,
        tag: &str,
        snapshot: &str,
    ) -> impl Future<Output = Result<(), PoolError>> + Send {
        (**self).hold(tag, snapshot)
    }
    fn release(
        &self,
        tag: &str,
        snapshot: &str,
    ) -> impl Future<Output = Result<(), PoolError>> + Send {
        (**self).release(tag, snapshot)
    }
    fn destroy_snapshot(
        &self,
        snapshot: &str,
    ) -> impl Future<Output = Result<(), PoolError>> + Send {
        (**self).destroy_snapshot(snapshot)
    }
    fn size_estimate(&self, spec: &SendSpec) -> impl Future<Output = Option<u64>> + Send {
        (**self).size_estimate(spec)
    }
    fn send(&self, spec: &SendSpec) -> Result<SendStream, PoolError> {
        (**self).send(spec)
    }
}
