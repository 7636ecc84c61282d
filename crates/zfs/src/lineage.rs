//! Commands that change a dataset's place in its pool's family tree:
//! rename, promote, unmount (clones are in [`crate::clone`]), and the queries a failback needs
//! (`written@SNAP`, `origin`). Used by `fjord-recv demote`.

use crate::command::Zfs;
use crate::names::{validate_dataset, validate_full_snapshot};
use crate::snapshot::{parse_property_u64, parse_property_value};
use crate::ZfsError;

/// `zfs rename FROM TO`.
pub fn rename_argv(from: &str, to: &str) -> Vec<String> {
    vec!["rename".into(), from.into(), to.into()]
}

/// `zfs promote DATASET`.
pub fn promote_argv(dataset: &str) -> Vec<String> {
    vec!["promote".into(), dataset.into()]
}

/// `zfs unmount DATASET` (what is mounted below it goes too).
pub fn unmount_argv(dataset: &str) -> Vec<String> {
    vec!["unmount".into(), dataset.into()]
}

/// `zfs inherit PROP DATASET`.
pub fn inherit_argv(dataset: &str, prop: &str) -> Vec<String> {
    vec!["inherit".into(), prop.into(), dataset.into()]
}

/// `zfs get -H -p -o value written@SNAP DATASET`.
pub fn written_since_argv(dataset: &str, short: &str) -> Vec<String> {
    crate::command::get_value_argv(&format!("written@{short}"), dataset)
}

impl Zfs {
    /// `zfs rename from to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ZfsError> {
        validate_dataset(from)?;
        validate_dataset(to)?;
        self.run(rename_argv(from, to)).await.map(drop)
    }

    /// `zfs promote dataset`.
    pub async fn promote(&self, dataset: &str) -> Result<(), ZfsError> {
        validate_dataset(dataset)?;
        self.run(promote_argv(dataset)).await.map(drop)
    }

    /// `zfs unmount dataset`.
    pub async fn unmount(&self, dataset: &str) -> Result<(), ZfsError> {
        validate_dataset(dataset)?;
        self.run(unmount_argv(dataset)).await.map(drop)
    }

    /// `zfs inherit prop dataset`.
    pub async fn inherit(&self, dataset: &str, prop: &str) -> Result<(), ZfsError> {
        validate_dataset(dataset)?;
        crate::command::validate_property_name(prop)?;
        self.run(inherit_argv(dataset, prop)).await.map(drop)
    }

    /// Bytes written to `dataset` since its snapshot `short`, later
    /// snapshots included (`written@short`).
    pub async fn written_since(&self, dataset: &str, short: &str) -> Result<u64, ZfsError> {
        validate_full_snapshot(&format!("{dataset}@{short}"))?;
        let argv = written_since_argv(dataset, short);
        let shown = self.display(&argv);
        let out = self.run(argv).await?;
        parse_property_u64(&shown, &out.stdout)
    }

    /// A clone's origin snapshot; `None` for a dataset that is no clone.
    pub async fn origin(&self, dataset: &str) -> Result<Option<String>, ZfsError> {
        validate_dataset(dataset)?;
        let out = self
            .run(crate::command::get_value_argv("origin", dataset))
            .await?;
        Ok(parse_property_value(&out.stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argvs() {
        assert_eq!(rename_argv("a/b", "a/c").join(" "), "rename a/b a/c");
        assert_eq!(promote_argv("a/b").join(" "), "promote a/b");
        assert_eq!(unmount_argv("a/b").join(" "), "unmount a/b");
        assert_eq!(
            inherit_argv("a/b", "fjord:promoted").join(" "),
            "inherit fjord:promoted a/b"
        );
        assert_eq!(
            written_since_argv("a/b", "s1").join(" "),
            "get -H -p -o value written@s1 a/b"
        );
    }
}
