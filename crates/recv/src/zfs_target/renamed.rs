//! The DR node's side of a child renamed on the primary: the copy is
//! renamed after it (as far as [`decide_rename_copy`] allows), so that the
//! next push continues it incrementally under the new name.

use super::{zfs_failure, ZfsTarget};
use fjord_config::config::Client;
use fjord_dr::renamed::{decide_rename_copy, RenameRefusal, RenameSeen};
use fjord_proto::RefuseCode;
use fjord_sink::SinkError;

fn rename_refusal(r: &RenameRefusal) -> SinkError {
    let code = match r {
        RenameRefusal::OutsidePrefixes { .. } => RefuseCode::BadDataset,
        _ => RefuseCode::Policy,
    };
    SinkError::refused(code, r.to_string())
}

impl ZfsTarget {
    /// Whether `dataset` or a dataset below it carries the promotion fence.
    async fn promoted_within(&self, tree: &[String]) -> Result<bool, SinkError> {
        for d in tree {
            if self.promoted_here(d).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Renames the copy `dataset` (with everything below it) to `to`, its
    /// source having been renamed on the primary; missing parents of `to`
    /// are created inert first. Refused with the reason otherwise.
    pub(super) async fn rename_copy(
        &self,
        client: &Client,
        dataset: &str,
        to: &str,
    ) -> Result<String, SinkError> {
        // the new name's ancestors may be fenced too (a promoted tree)
        self.fence(client, to).await?;
        let tree = self.list_tree(dataset).await?;
        {
            let receiving = self.receiving();
            if let Some(busy) = tree
                .iter()
                .map(String::as_str)
                .chain([to])
                .find(|d| receiving.contains(*d))
            {
                return Err(SinkError::Busy(format!(
                    "a stream into {busy} is being received; not renaming {dataset}"
                )));
            }
        }
        let seen = RenameSeen {
            exists: !tree.is_empty(),
            promoted: self.promoted_within(&tree).await?,
            to_exists: self.zfs.dataset_exists(to).await.map_err(zfs_failure)?,
        };
        decide_rename_copy(&super::grants(client), dataset, to, &seen).map_err(|r| {
            tracing::warn!(client = %client.name, dataset, to, reason = %r, "refused to rename a copy");
            rename_refusal(&r)
        })?;
        self.create_parents(client, to).await?;
        self.zfs.rename(dataset, to).await.map_err(zfs_failure)?;
        tracing::warn!(client = %client.name, dataset, to, datasets = tree.len(), "renamed a copy after its source (allow_rename)");
        Ok(format!(
            "renamed {dataset} to {to} ({} dataset(s)): its source was renamed on the primary",
            tree.len()
        ))
    }
}
