//! Clones: `zfs clone` of a snapshot with properties set at creation,
//! the listing of a parent's children with one user property, and the
//! destroy of a clone (restore drills use them on scratch clones).

use crate::command::validate_property_name;
use crate::names::{validate_dataset, validate_full_snapshot};
use crate::{Zfs, ZfsError};

/// `zfs clone [-o PROP=VALUE]... SNAPSHOT CLONE`.
pub fn clone_argv(full_snap: &str, clone: &str, props: &[(String, String)]) -> Vec<String> {
    let mut argv = vec!["clone".to_string()];
    for (k, v) in props {
        argv.push("-o".into());
        argv.push(format!("{k}={v}"));
    }
    argv.push(full_snap.into());
    argv.push(clone.into());
    argv
}

/// `zfs destroy -r CLONE`: the clone and any snapshot taken of it (a
/// check may have taken one); never `-R`, so nothing that depends on it
/// from elsewhere goes with it.
pub fn destroy_clone_argv(clone: &str) -> Vec<String> {
    vec!["destroy".into(), "-r".into(), clone.into()]
}

/// `zfs list -H -o name,PROP -t filesystem -d 1 PARENT`: the parent and
/// its children with one property.
pub fn list_with_prop_argv(parent: &str, prop: &str) -> Vec<String> {
    [
        "list",
        "-H",
        "-o",
        &format!("name,{prop}"),
        "-t",
        "filesystem",
        "-d",
        "1",
        parent,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Parses [`list_with_prop_argv`]'s output without the parent itself:
/// (child, value), `None` where the property is not set (`-`).
pub fn parse_children_with_prop(parent: &str, text: &str) -> Vec<(String, Option<String>)> {
    text.lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(name, _)| *name != parent)
        .map(|(name, value)| {
            let value = (value != "-" && !value.is_empty()).then(|| value.to_string());
            (name.to_string(), value)
        })
        .collect()
}

impl Zfs {
    /// `zfs clone` of `full_snap` as `clone`, `props` set at creation.
    pub async fn clone_snapshot(
        &self,
        full_snap: &str,
        clone: &str,
        props: &[(String, String)],
    ) -> Result<(), ZfsError> {
        validate_full_snapshot(full_snap)?;
        validate_dataset(clone)?;
        for (k, v) in props {
            validate_property_name(k)?;
            if v.is_empty() || v.chars().any(char::is_control) {
                return Err(ZfsError::InvalidArgument(format!(
                    "the value of property {k} is empty or contains a control character"
                )));
            }
        }
        self.run(clone_argv(full_snap, clone, props))
            .await
            .map(drop)
    }

    /// `zfs destroy -r CLONE`.
    pub async fn destroy_clone(&self, clone: &str) -> Result<(), ZfsError> {
        validate_dataset(clone)?;
        self.run(destroy_clone_argv(clone)).await.map(drop)
    }

    /// The file systems directly below `parent` with their value of `prop`;
    /// empty when `parent` does not exist.
    pub async fn children_with_prop(
        &self,
        parent: &str,
        prop: &str,
    ) -> Result<Vec<(String, Option<String>)>, ZfsError> {
        validate_dataset(parent)?;
        validate_property_name(prop)?;
        Ok(self
            .run_if_exists(list_with_prop_argv(parent, prop))
            .await?
            .map(|o| parse_children_with_prop(parent, &o.stdout))
            .unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_sets_properties_before_the_names() {
        let props = vec![
            ("readonly".to_string(), "on".to_string()),
            ("fjord:drill".to_string(), "b/d@s 2026".to_string()),
        ];
        assert_eq!(
            clone_argv("b/d@s", "b/scratch/c", &props).join(" "),
            "clone -o readonly=on -o fjord:drill=b/d@s 2026 b/d@s b/scratch/c"
        );
        assert_eq!(destroy_clone_argv("b/s/c").join(" "), "destroy -r b/s/c");
    }

    #[test]
    fn children_listing_skips_the_parent_and_unset_values() {
        let text = "b/s\t-\nb/s/fjord-drill-x\tb/d@s 2026-12-03T14:30:00Z\nb/s/other\t-\n";
        assert_eq!(
            parse_children_with_prop("b/s", text),
            vec![
                (
                    "b/s/fjord-drill-x".to_string(),
                    Some("b/d@s 2026-12-03T14:30:00Z".to_string())
                ),
                ("b/s/other".to_string(), None),
            ]
        );
        assert_eq!(
            list_with_prop_argv("b/s", "fjord:drill").join(" "),
            "list -H -o name,fjord:drill -t filesystem -d 1 b/s"
        );
    }
}
