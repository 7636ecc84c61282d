//! The DR node's side of whole trees: the listing of a target root's tree
//! (the sender finds its removed children in it), the destroy of a copy
//! whose source is gone (as far as [`decide_destroy_copy`] allows), and
//! the missing parents of a new target, created inert under the client's
//! prefix.

use super::{now, policy_refusal, zfs_failure, ZfsTarget};
use fjord_config::config::Client;
use fjord_dr::promote::PROMOTED_PROP;
use fjord_dr::removed::{decide_destroy_copy, Member};
use fjord_sink::SinkError;
use fjord_zfs::names::is_within_prefix;
use fjord_zfs::props::PropSource;

/// The ancestors of `target` to make sure of before receiving into it,
/// top first: from the longest of `prefixes` that holds it (the prefix
/// included) down to its parent. Never one above or outside the prefix;
/// empty when `target` is the prefix or lies outside every prefix.
pub(crate) fn ancestors_to_create(target: &str, prefixes: &[String]) -> Vec<String> {
    let Some(prefix) = prefixes
        .iter()
        .map(|p| p.trim_end_matches('/'))
        .filter(|p| is_within_prefix(target, p))
        .max_by_key(|p| p.len())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut at = prefix.to_string();
    for part in target[prefix.len()..].split('/').filter(|p| !p.is_empty()) {
        out.push(at.clone());
        at = format!("{at}/{part}");
    }
    out
}

/// The properties of a parent the DR node creates: the forced inert set a
/// received dataset gets (`recv.spec`'s `-o`), with `canmount=off`: a
/// parent only holds its children, it is never mounted itself.
pub(crate) fn inert_parent_props(received: &[(String, String)]) -> Vec<(String, String)> {
    let mut props: Vec<(String, String)> = received
        .iter()
        .filter(|(k, _)| k != "canmount")
        .cloned()
        .collect();
    props.insert(0, ("canmount".into(), "off".into()));
    props
}

impl ZfsTarget {
    /// Whether `dataset` itself carries the promotion fence (set locally,
    /// not inherited from a parent).
    pub(super) async fn promoted_here(&self, dataset: &str) -> Result<bool, SinkError> {
        Ok(self
            .zfs
            .properties(dataset, &[PROMOTED_PROP])
            .await
            .map_err(zfs_failure)?
            .first()
            .is_some_and(|p| p.source == PropSource::Local && !p.value.trim().is_empty()))
    }

    /// The datasets at and below `dataset`, parents first.
    pub(super) async fn list_tree(&self, dataset: &str) -> Result<Vec<String>, SinkError> {
        if !self
            .zfs
            .dataset_exists(dataset)
            .await
            .map_err(zfs_failure)?
        {
            return Ok(Vec::new());
        }
        self.zfs.children(dataset).await.map_err(zfs_failure)
    }

    /// Creates the missing ancestors of `target` under `client`'s prefix,
    /// inert, top first.
    pub(super) async fn create_parents(
        &self,
        client: &Client,
        target: &str,
    ) -> Result<(), SinkError> {
        let parents = ancestors_to_create(target, &client.prefixes);
        match parents.last() {
            None => return Ok(()),
            Some(p) if self.zfs.dataset_exists(p).await.map_err(zfs_failure)? => return Ok(()),
            Some(_) => {}
        }
        for parent in parents {
            if self
                .zfs
                .dataset_exists(&parent)
                .await
                .map_err(zfs_failure)?
            {
                continue;
            }
            let props = inert_parent_props(&self.config().recv.spec(&parent, false).set_props);
            self.zfs
                .create(&parent, &props)
                .await
                .map_err(zfs_failure)?;
            tracing::info!(client = %client.name, dataset = %parent, for_target = target, "created a missing parent, inert");
        }
        Ok(())
    }

    /// A copy whose source was destroyed on the primary: destroyed with
    /// everything below it, the DR node's holds released first, if the
    /// policy allows; otherwise refused with the reason.
    pub(super) async fn destroy_copy(
        &self,
        client: &Client,
        dataset: &str,
    ) -> Result<String, SinkError> {
        let tree = self.list_tree(dataset).await?;
        if tree.is_empty() {
            return Ok(format!("{dataset} does not exist; nothing to destroy"));
        }
        if let Some(busy) = tree.iter().find(|d| self.receiving().contains(*d)) {
            return Err(SinkError::Busy(format!(
                "a stream into {busy} is being received; not destroying {dataset}"
            )));
        }
        let mut members = Vec::new();
        let mut held = Vec::new();
        for d in &tree {
            let listing = self.listing(d).await?;
            let promoted = self.promoted_here(d).await?;
            held.extend(listing.dr_held.iter().map(|s| format!("{d}@{s}")));
            members.push(Member {
                dataset: d.clone(),
                snapshots: listing.snapshots,
                promoted,
            });
        }
        decide_destroy_copy(
            &super::grants(client),
            dataset,
            &members,
            self.config().min_age,
            now(),
        )
        .map_err(|r| {
            self.refused(client, dataset, &r, &self.counts.refused_destroys);
            policy_refusal(&r)
        })?;
        for full in &held {
            self.release_hold(full).await?;
        }
        self.zfs
            .destroy_recursive(dataset)
            .await
            .map_err(zfs_failure)?;
        tracing::warn!(client = %client.name, dataset, datasets = tree.len(), "destroyed a copy whose source is gone (allow_destroy_removed)");
        Ok(format!(
            "destroyed {dataset} ({} dataset(s)): its source is gone",
            tree.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parents_run_from_the_prefix_down_and_never_above_it() {
        let prefixes = p(&["backup/oslo", "backup/oslo/deep/x"]);
        assert_eq!(
            ancestors_to_create("backup/oslo/home/a", &prefixes),
            ["backup/oslo", "backup/oslo/home"]
        );
        assert_eq!(
            ancestors_to_create("backup/oslo/deep/x/y", &prefixes),
            ["backup/oslo/deep/x"]
        );
        assert!(ancestors_to_create("backup/oslo", &prefixes).is_empty());
        assert!(ancestors_to_create("backup/other/a", &prefixes).is_empty());
        assert!(ancestors_to_create("backup/oslofoo/a", &prefixes).is_empty());
    }

    #[test]
    fn a_parent_is_inert_and_never_mounts() {
        let received = vec![
            ("canmount".to_string(), "noauto".to_string()),
            ("readonly".to_string(), "on".to_string()),
        ];
        assert_eq!(
            inert_parent_props(&received),
            [
                ("canmount".to_string(), "off".to_string()),
                ("readonly".to_string(), "on".to_string())
            ]
        );
    }
}
