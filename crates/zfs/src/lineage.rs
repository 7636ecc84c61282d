//! Commands that change a dataset's place in its pool's family tree:
//! rename, clone, promote, unmount, and the queries a failback needs
//! (`written@SNAP`, `origin`). Used by `fjord-recv demote`.

use crate::command::Zfs;
use crate::names::{validate_dataset, validate_full_snapshot};
use crate::snapshot::{parse_property_u64, parse_property_value};
use crate::ZfsError;

/// `zfs rename FROM TO`.
pub fn rename_argv(from: &str, to: &str) -> Vec<String> {
    vec!["rename".into(), from.into(), to.into()]
}

/// `zfs clone [-o PROP=VALUE]... SNAPSHOT DATASET`.
pub fn clone_argv(snapshot: &str, dataset: &str, props: &[(&str, &str)]) -> Vec<String> {
    let mut argv = vec!["clone".to_string()];
    for (k, v) in props {
        argv.push("-o".into());
        argv.push(format!("{k}={v}"));
    }
    argv.push(snapshot.into());
    argv.push(dataset.into());
    argv
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

/// `zfs list -H -o name,PROP -s name -d 1 -t filesystem,volume PARENT`:
/// the children of `parent` with one property, for finding a tree by a
/// user property.
pub fn children_with_prop_argv(parent: &str, prop: &str) -> Vec<String> {
    vec![
        "list".into(),
        "-H".into(),
        "-o".into(),
        format!("name,{prop}"),
        "-s".into(),
        "name".into(),
        "-d".into(),
        "1".into(),
        "-t".into(),
        "filesystem,volume".into(),
        parent.into(),
    ]
}

/// Parses [`children_with_prop_argv`]'s output: `(name, value)` where the
/// value is set.
pub fn parse_children_with_prop(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once('\t')?;
            (value != "-" && !value.is_empty()).then(|| (name.to_string(), value.to_string()))
        })
        .collect()
}

impl Zfs {
    /// `zfs rename from to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), ZfsError> {
        validate_dataset(from)?;
        validate_dataset(to)?;
        self.run(rename_argv(from, to)).await.map(drop)
    }

    /// `zfs clone -o ... snapshot dataset`.
    pub async fn clone_snapshot(
        &self,
        snapshot: &str,
        dataset: &str,
        props: &[(&str, &str)],
    ) -> Result<(), ZfsError> {
        validate_full_snapshot(snapshot)?;
        validate_dataset(dataset)?;
        for (k, _) in props {
            crate::command::validate_property_name(k)?;
        }
        self.run(clone_argv(snapshot, dataset, props))
            .await
            .map(drop)
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

    /// The children of `parent` on which the user property `prop` is set,
    /// with its value.
    pub async fn children_with_prop(
        &self,
        parent: &str,
        prop: &str,
    ) -> Result<Vec<(String, String)>, ZfsError> {
        validate_dataset(parent)?;
        crate::command::validate_property_name(prop)?;
        let out = self.run(children_with_prop_argv(parent, prop)).await?;
        Ok(parse_children_with_prop(&out.stdout))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argvs() {
        assert_eq!(rename_argv("a/b", "a/c").join(" "), "rename a/b a/c");
        assert_eq!(
            clone_argv(
                "a/x@s",
                "a/b",
                &[("readonly", "on"), ("canmount", "noauto")]
            )
            .join(" "),
            "clone -o readonly=on -o canmount=noauto a/x@s a/b"
        );
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
        assert_eq!(
            children_with_prop_argv("a", "fjord:kept_from").join(" "),
            "list -H -o name,fjord:kept_from -s name -d 1 -t filesystem,volume a"
        );
    }

    #[test]
    fn children_with_a_property_set() {
        let text = "src\t-\nsrc/data\t-\nsrc/data-diverged-x\tsrc/data@b\n";
        assert_eq!(
            parse_children_with_prop(text),
            vec![("src/data-diverged-x".to_string(), "src/data@b".to_string())]
        );
    }
}
