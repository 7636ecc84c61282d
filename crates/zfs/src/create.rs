//! Datasets the DR node makes and unmakes itself: a missing parent created
//! with properties set at creation (`zfs create -o`), and a copy destroyed
//! with everything below it (`zfs destroy -r`).

use crate::command::validate_property_name;
use crate::names::validate_dataset;
use crate::{Zfs, ZfsError};

/// `zfs create [-o PROP=VALUE]... DATASET` (never `-p`: the caller creates
/// each missing ancestor itself, with these properties, top first).
pub fn create_argv(dataset: &str, props: &[(String, String)]) -> Vec<String> {
    let mut argv = vec!["create".to_string()];
    for (k, v) in props {
        argv.push("-o".into());
        argv.push(format!("{k}={v}"));
    }
    argv.push(dataset.into());
    argv
}

/// `zfs destroy -r DATASET`: it, its descendants and their snapshots;
/// never `-R`, so a clone elsewhere that depends on it makes it fail.
pub fn destroy_recursive_argv(dataset: &str) -> Vec<String> {
    vec!["destroy".into(), "-r".into(), dataset.into()]
}

impl Zfs {
    /// Creates the file system `dataset` (its parent must exist) with
    /// `props` set.
    pub async fn create(&self, dataset: &str, props: &[(String, String)]) -> Result<(), ZfsError> {
        validate_dataset(dataset)?;
        for (k, v) in props {
            validate_property_name(k)?;
            if v.is_empty() || v.chars().any(char::is_control) {
                return Err(ZfsError::InvalidArgument(format!(
                    "the value of property {k} is empty or contains a control character"
                )));
            }
        }
        self.run(create_argv(dataset, props)).await.map(drop)
    }

    /// `zfs destroy -r DATASET`; held snapshots make it fail (release
    /// the holds first).
    pub async fn destroy_recursive(&self, dataset: &str) -> Result<(), ZfsError> {
        validate_dataset(dataset)?;
        self.run(destroy_recursive_argv(dataset)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argv_sets_properties_before_the_name_and_never_uses_p_or_big_r() {
        let props = vec![("canmount".to_string(), "off".to_string())];
        assert_eq!(
            create_argv("backup/oslo", &props),
            ["create", "-o", "canmount=off", "backup/oslo"]
        );
        assert_eq!(
            destroy_recursive_argv("backup/oslo/old"),
            ["destroy", "-r", "backup/oslo/old"]
        );
    }
}
