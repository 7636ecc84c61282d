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

    /// [`Pool::datasets`], with the value of `prop` on `root` (`None`
    /// when unset): one `zfs get` for both. By default, the two queries
    /// (a property that cannot be read counts as unset).
    fn datasets_with_property(
        &self,
        root: &str,
        recursive: bool,
        prop: &str,
    ) -> impl Future<Output = Result<(Vec<String>, Option<String>), PoolError>> + Send {
        async move {
            let datasets = self.datasets(root, recursive).await?;
            let value = if datasets.is_empty() {
                None
            } else {
                self.property(root, prop).await.ok().flatten()
            };
            Ok((datasets, value))
        }
    }

    /// The snapshots of each of `datasets`, in their order, oldest first:
    /// one `zfs list` for all. By default, [`Pool::snapshots`] of each.
    fn snapshots_many(
        &self,
        datasets: &[String],
    ) -> impl Future<Output = Result<Vec<Vec<SnapshotInfo>>, PoolError>> + Send {
        async move {
            let mut all = Vec::new();
            for d in datasets {
                all.push(self.snapshots(d).await?);
            }
            Ok(all)
        }
    }

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

    /// The holds on several snapshots in one query (`zfs holds S...`):
    /// (snapshot, tag) pairs. By default, [`Pool::holds`] of each.
    fn holds_many(
        &self,
        snapshots: &[String],
    ) -> impl Future<Output = Result<Vec<(String, String)>, PoolError>> + Send {
        async move {
            let mut all = Vec::new();
            for s in snapshots {
                all.extend(self.holds(s).await?.into_iter().map(|t| (s.clone(), t)));
            }
            Ok(all)
        }
    }

    /// Releases `tag` on several snapshots in one command (`zfs release
    /// tag S...`). By default, [`Pool::release`] of each, stopping at the
    /// first failure.
    fn release_many(
        &self,
        tag: &str,
        snapshots: &[String],
    ) -> impl Future<Output = Result<(), PoolError>> + Send {
        async move {
            for s in snapshots {
                self.release(tag, s).await?;
            }
            Ok(())
        }
    }

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
    fn datasets_with_property(
        &self,
        root: &str,
        recursive: bool,
        prop: &str,
    ) -> impl Future<Output = Result<(Vec<String>, Option<String>), PoolError>> + Send {
        (**self).datasets_with_property(root, recursive, prop)
    }
    fn snapshots_many(
        &self,
        datasets: &[String],
    ) -> impl Future<Output = Result<Vec<Vec<SnapshotInfo>>, PoolError>> + Send {
        (**self).snapshots_many(datasets)
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
    fn holds_many(
        &self,
        snapshots: &[String],
    ) -> impl Future<Output = Result<Vec<(String, String)>, PoolError>> + Send {
        (**self).holds_many(snapshots)
    }
    fn release_many(
        &self,
        tag: &str,
        snapshots: &[String],
    ) -> impl Future<Output = Result<(), PoolError>> + Send {
        (**self).release_many(tag, snapshots)
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
