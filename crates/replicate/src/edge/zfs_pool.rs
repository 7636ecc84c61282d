//! [`ZfsPool`]: the primary's pool through the `zfs` CLI.

use super::CheckedSend;
use crate::pool::{Pool, PoolError, SendStream};
use fjord_zfs::{SendSpec, SnapshotInfo, Zfs, ZfsError};

/// The primary's pool, through the `zfs` command.
#[derive(Clone, Debug, Default)]
pub struct ZfsPool {
    zfs: Zfs,
}

impl ZfsPool {
    /// Runs `zfs` from the PATH.
    pub fn new() -> ZfsPool {
        ZfsPool { zfs: Zfs::new() }
    }

    /// Runs this `zfs` executor.
    pub fn with(zfs: Zfs) -> ZfsPool {
        ZfsPool { zfs }
    }
}

/// The one place where `zfs`'s error becomes the replication logic's.
fn typed(e: ZfsError) -> PoolError {
    let message = e.to_string();
    if e.is_does_not_exist() {
        PoolError::NotFound(message)
    } else if e.is_hold_exists() {
        PoolError::HoldExists(message)
    } else {
        PoolError::Failed(message)
    }
}

impl Pool for ZfsPool {
    async fn demote(
        &self,
        root: &str,
        recursive: bool,
        base: &str,
        marker: &str,
    ) -> Result<(), PoolError> {
        let datasets = if recursive {
            self.zfs.children(root).await.map_err(typed)?
        } else {
            vec![root.to_string()]
        };
        for ds in &datasets {
            let has_base = self
                .zfs
                .snapshots(ds)
                .await
                .map_err(typed)?
                .iter()
                .any(|s| s.name == base);
            if !has_base {
                continue;
            }
            let written = self.zfs.written_since(ds, base).await.map_err(typed)?;
            if written > 0 {
                return Err(PoolError::Failed(format!(
                    "{ds} has {written} bytes written after @{base}, the final snapshot: writes did not stop (check the stop_writes hook); nothing was changed"
                )));
            }
        }
        if self
            .zfs
            .property(root, "mounted")
            .await
            .map_err(typed)?
            .as_deref()
            == Some("yes")
        {
            self.zfs.unmount(root).await.map_err(typed)?;
        }
        self.zfs
            .set_property(root, "readonly", "on")
            .await
            .map_err(typed)?;
        for ds in &datasets {
            self.zfs
                .set_property(ds, "canmount", "noauto")
                .await
                .map_err(typed)?;
        }
        let fenced = self
            .zfs
            .properties(root, &["fjord:promoted"])
            .await
            .map_err(typed)?
            .into_iter()
            .any(|p| p.source == fjord_zfs::props::PropSource::Local);
        if fenced {
            self.zfs
                .inherit(root, "fjord:promoted")
                .await
                .map_err(typed)?;
        }
        self.zfs
            .set_property(root, fjord_config::DEMOTED_PROP, marker)
            .await
            .map_err(typed)
    }

    async fn property(&self, dataset: &str, prop: &str) -> Result<Option<String>, PoolError> {
        self.zfs.property(dataset, prop).await.map_err(typed)
    }

    async fn datasets(&self, root: &str, recursive: bool) -> Result<Vec<String>, PoolError> {
        if recursive {
            match self.zfs.children(root).await {
                Ok(d) => Ok(d),
                Err(e) if e.is_does_not_exist() => Ok(Vec::new()),
                Err(e) => Err(typed(e)),
            }
        } else {
            let exists = self.zfs.dataset_exists(root).await.map_err(typed)?;
            Ok(if exists {
                vec![root.to_string()]
            } else {
                Vec::new()
            })
        }
    }

    async fn snapshots(&self, dataset: &str) -> Result<Vec<SnapshotInfo>, PoolError> {
        self.zfs.snapshots(dataset).await.map_err(typed)
    }

    async fn datasets_with_property(
        &self,
        root: &str,
        recursive: bool,
        prop: &str,
    ) -> Result<(Vec<String>, Option<String>), PoolError> {
        let rows = self
            .zfs
            .property_tree(root, recursive, prop)
            .await
            .map_err(typed)?;
        let value = rows
            .iter()
            .find(|(name, _)| name == root)
            .and_then(|(_, v)| v.clone());
        Ok((rows.into_iter().map(|(name, _)| name).collect(), value))
    }

    async fn snapshots_many(
        &self,
        datasets: &[String],
    ) -> Result<Vec<Vec<SnapshotInfo>>, PoolError> {
        self.zfs.snapshots_of(datasets).await.map_err(typed)
    }

    async fn snapshot(
        &self,
        root: &str,
        short: &str,
        recursive: bool,
        props: &[(String, String)],
    ) -> Result<(), PoolError> {
        self.zfs
            .snapshot_with_props(root, short, recursive, props)
            .await
            .map_err(typed)
    }

    async fn holds(&self, snapshot: &str) -> Result<Vec<String>, PoolError> {
        self.zfs.holds(snapshot).await.map_err(typed)
    }

    async fn hold(&self, tag: &str, snapshot: &str) -> Result<(), PoolError> {
        self.zfs.hold(tag, snapshot).await.map_err(typed)
    }

    async fn release(&self, tag: &str, snapshot: &str) -> Result<(), PoolError> {
        self.zfs.release(tag, snapshot).await.map_err(typed)
    }

    async fn holds_many(&self, snapshots: &[String]) -> Result<Vec<(String, String)>, PoolError> {
        self.zfs.holds_of(snapshots).await.map_err(typed)
    }

    async fn release_many(&self, tag: &str, snapshots: &[String]) -> Result<(), PoolError> {
        self.zfs.release_many(tag, snapshots).await.map_err(typed)
    }

    async fn destroy_snapshot(&self, snapshot: &str) -> Result<(), PoolError> {
        self.zfs.destroy_snapshot(snapshot).await.map_err(typed)
    }

    async fn size_estimate(&self, spec: &SendSpec) -> Option<u64> {
        self.zfs.send_size_estimate(spec).await.ok().flatten()
    }

    fn send(&self, spec: &SendSpec) -> Result<SendStream, PoolError> {
        let process = self.zfs.spawn_send(spec).map_err(typed)?;
        Ok(Box::new(CheckedSend::new(process)))
    }
}
