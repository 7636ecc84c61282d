//! Properties: read them with their source and received value, set,
//! revert to the received value, mount; user properties of snapshots.
//! What `fjord-recv promote` needs at the edge.

use crate::command::{validate_property_name, Zfs};
use crate::error::ZfsError;
use crate::names::validate_dataset;

/// Where a property's value comes from (`zfs get`'s SOURCE column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PropSource {
    /// Set on the dataset itself (`zfs set`, or `zfs recv -o`).
    Local,
    /// The built-in default.
    Default,
    /// Inherited from the named ancestor.
    Inherited(String),
    /// Taken from a send stream (`zfs send -p`).
    Received,
    /// A temporary mount option.
    Temporary,
    /// Not applicable (`-`): read-only properties, unset user properties.
    None,
}

impl PropSource {
    fn parse(text: &str) -> PropSource {
        match text {
            "local" => PropSource::Local,
            "default" => PropSource::Default,
            "received" => PropSource::Received,
            "temporary" => PropSource::Temporary,
            t => match t.strip_prefix("inherited from ") {
                Some(from) => PropSource::Inherited(from.into()),
                None => PropSource::None,
            },
        }
    }
}

/// One property of one dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Property {
    /// Its name.
    pub name: String,
    /// Its effective value (`-` for an unset user property).
    pub value: String,
    /// The value a stream carried (`zfs send -p`), if any.
    pub received: Option<String>,
    /// Where `value` comes from.
    pub source: PropSource,
}

/// `zfs get -H -p -o property,value,received,source PROPS DATASET`.
pub fn get_props_argv(props: &[&str], dataset: &str) -> Vec<String> {
    vec![
        "get".into(),
        "-H".into(),
        "-p".into(),
        "-o".into(),
        "property,value,received,source".into(),
        props.join(","),
        dataset.into(),
    ]
}

/// `zfs get -H -p -o name,value -t snapshot -d 1 PROP DATASET`: one user
/// property of every snapshot of `dataset`.
pub fn snapshot_prop_argv(prop: &str, dataset: &str) -> Vec<String> {
    [
        "get",
        "-H",
        "-p",
        "-o",
        "name,value",
        "-t",
        "snapshot",
        "-d",
        "1",
        prop,
        dataset,
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `zfs set PROP=VALUE DATASET`.
pub fn set_argv(dataset: &str, prop: &str, value: &str) -> Vec<String> {
    vec!["set".into(), format!("{prop}={value}"), dataset.into()]
}

/// `zfs inherit -S PROP DATASET`: back to the received value if a stream
/// carried one, else inherited.
pub fn inherit_received_argv(dataset: &str, prop: &str) -> Vec<String> {
    vec!["inherit".into(), "-S".into(), prop.into(), dataset.into()]
}

/// `zfs snapshot [-r] [-o PROP=VALUE]... DATASET@SHORT`: user properties
/// recorded on the new snapshot(s), atomically with it.
pub fn snapshot_with_props_argv(
    dataset: &str,
    short: &str,
    recursive: bool,
    props: &[(String, String)],
) -> Vec<String> {
    let mut argv = vec!["snapshot".to_string()];
    if recursive {
        argv.push("-r".into());
    }
    for (k, v) in props {
        argv.push("-o".into());
        argv.push(format!("{k}={v}"));
    }
    argv.push(format!("{dataset}@{short}"));
    argv
}

/// `zfs mount DATASET`.
pub fn mount_argv(dataset: &str) -> Vec<String> {
    vec!["mount".into(), dataset.into()]
}

/// The effective value of the property `name` among `props` (`None` when
/// absent or `-`, as [`crate::snapshot::parse_property_value`] reads it).
pub fn value_of<'a>(props: &'a [Property], name: &str) -> Option<&'a str> {
    props
        .iter()
        .find(|p| p.name == name)
        .map(|p| p.value.as_str())
        .filter(|v| !v.is_empty() && *v != "-")
}

/// Parses [`get_props_argv`]'s output.
pub fn parse_props(text: &str) -> Result<Vec<Property>, ZfsError> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split('\t').collect();
            let [name, value, received, source] = f[..] else {
                return Err(ZfsError::Parse {
                    argv: "zfs get -o property,value,received,source".into(),
                    line: line.into(),
                    detail: "expected 4 tab-separated fields".into(),
                });
            };
            Ok(Property {
                name: name.into(),
                value: value.into(),
                received: (received != "-").then(|| received.to_string()),
                source: PropSource::parse(source),
            })
        })
        .collect()
}

/// Parses [`snapshot_prop_argv`]'s output: (short snapshot name, value)
/// for the snapshots where the property is set.
pub fn parse_snapshot_props(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let (name, value) = l.split_once('\t')?;
            let short = name.split_once('@')?.1;
            (value != "-" && !value.is_empty()).then(|| (short.to_string(), value.to_string()))
        })
        .collect()
}

fn check_value(prop: &str, value: &str) -> Result<(), ZfsError> {
    validate_property_name(prop)?;
    if value.is_empty() || value.chars().any(char::is_control) {
        return Err(ZfsError::InvalidArgument(format!(
            "the value of property {prop} is empty or contains a control character"
        )));
    }
    Ok(())
}

impl Zfs {
    /// `props` of `dataset`, with their received values and sources.
    pub async fn properties(
        &self,
        dataset: &str,
        props: &[&str],
    ) -> Result<Vec<Property>, ZfsError> {
        validate_dataset(dataset)?;
        for p in props {
            validate_property_name(p)?;
        }
        let out = self.run(get_props_argv(props, dataset)).await?;
        parse_props(&out.stdout)
    }

    /// `props` of `dataset` in one `zfs get`, as [`Zfs::properties`];
    /// `None` when the dataset does not exist (so that one command both
    /// probes for it and reads what is wanted of it).
    pub async fn properties_if_exists(
        &self,
        dataset: &str,
        props: &[&str],
    ) -> Result<Option<Vec<Property>>, ZfsError> {
        validate_dataset(dataset)?;
        for p in props {
            validate_property_name(p)?;
        }
        match self.run_if_exists(get_props_argv(props, dataset)).await? {
            Some(out) => parse_props(&out.stdout).map(Some),
            None => Ok(None),
        }
    }

    /// The effective value of one property (`None` for `-`, or when the
    /// dataset does not exist).
    pub async fn property(&self, dataset: &str, prop: &str) -> Result<Option<String>, ZfsError> {
        validate_dataset(dataset)?;
        validate_property_name(prop)?;
        Ok(self
            .run_if_exists(crate::command::get_value_argv(prop, dataset))
            .await?
            .and_then(|o| crate::snapshot::parse_property_value(&o.stdout)))
    }

    /// One user property of every snapshot of `dataset`: (short name, value)
    /// where it is set.
    pub async fn snapshot_property(
        &self,
        dataset: &str,
        prop: &str,
    ) -> Result<Vec<(String, String)>, ZfsError> {
        validate_dataset(dataset)?;
        validate_property_name(prop)?;
        Ok(self
            .run_if_exists(snapshot_prop_argv(prop, dataset))
            .await?
            .map(|o| parse_snapshot_props(&o.stdout))
            .unwrap_or_default())
    }

    /// `zfs set prop=value dataset`.
    pub async fn set_property(
        &self,
        dataset: &str,
        prop: &str,
        value: &str,
    ) -> Result<(), ZfsError> {
        validate_dataset(dataset)?;
        check_value(prop, value)?;
        self.run(set_argv(dataset, prop, value)).await.map(drop)
    }

    /// `zfs inherit -S prop dataset`.
    pub async fn inherit_received(&self, dataset: &str, prop: &str) -> Result<(), ZfsError> {
        validate_dataset(dataset)?;
        validate_property_name(prop)?;
        self.run(inherit_received_argv(dataset, prop))
            .await
            .map(drop)
    }

    /// Takes `dataset@short` (with `recursive`, of every descendant too,
    /// atomically) with the user properties `props` set on it.
    pub async fn snapshot_with_props(
        &self,
        dataset: &str,
        short: &str,
        recursive: bool,
        props: &[(String, String)],
    ) -> Result<(), ZfsError> {
        crate::names::validate_full_snapshot(&format!("{dataset}@{short}"))?;
        for (k, v) in props {
            check_value(k, v)?;
        }
        self.run(snapshot_with_props_argv(dataset, short, recursive, props))
            .await
            .map(drop)
    }

    /// `zfs mount dataset`.
    pub async fn mount(&self, dataset: &str) -> Result<(), ZfsError> {
        validate_dataset(dataset)?;
        self.run(mount_argv(dataset)).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_parse_with_their_sources_and_received_values() {
        let text = "readonly\ton\toff\tlocal\ncanmount\tnoauto\t-\tlocal\nmountpoint\t/mnt/dst/backup/data\t/srv/data\tinherited from dst\nfjord:promoted\t-\t-\t-\nsetuid\ton\t-\tdefault\n";
        let p = parse_props(text).expect("parses");
        assert_eq!(p.len(), 5);
        assert_eq!(p[0].received.as_deref(), Some("off"));
        assert_eq!(p[0].source, PropSource::Local);
        assert_eq!(p[1].received, None);
        assert_eq!(p[2].source, PropSource::Inherited("dst".into()));
        assert_eq!(p[3].source, PropSource::None);
        assert_eq!(p[4].source, PropSource::Default);
        assert!(parse_props("readonly\ton\n").is_err());
        assert_eq!(value_of(&p, "readonly"), Some("on"));
        assert_eq!(value_of(&p, "fjord:promoted"), None);
        assert_eq!(value_of(&p, "written"), None);
    }

    #[test]
    fn snapshot_props_keep_only_set_values() {
        let text = "dst/a@s1\t0/16B3F40\ndst/a@s2\t-\ndst/a@s3\t0/2000000\n";
        assert_eq!(
            parse_snapshot_props(text),
            vec![
                ("s1".to_string(), "0/16B3F40".to_string()),
                ("s3".to_string(), "0/2000000".to_string())
            ]
        );
    }

    #[test]
    fn argvs() {
        assert_eq!(
            get_props_argv(&["readonly", "mountpoint"], "dst/a").join(" "),
            "get -H -p -o property,value,received,source readonly,mountpoint dst/a"
        );
        assert_eq!(
            set_argv("dst/a", "fjord:promoted", "x y").join(" "),
            "set fjord:promoted=x y dst/a"
        );
        assert_eq!(
            inherit_received_argv("dst/a", "readonly").join(" "),
            "inherit -S readonly dst/a"
        );
        assert_eq!(
            snapshot_with_props_argv(
                "tank/db",
                "fjord_x",
                true,
                &[("fjord:wal_lsn".into(), "0/16B3F40".into())]
            )
            .join(" "),
            "snapshot -r -o fjord:wal_lsn=0/16B3F40 tank/db@fjord_x"
        );
        assert_eq!(
            snapshot_with_props_argv("tank/db", "s", false, &[]).join(" "),
            "snapshot tank/db@s"
        );
        assert!(check_value("fjord:x", "a\nb").is_err());
        assert!(check_value("-o", "a").is_err());
    }
}
