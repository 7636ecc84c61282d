//! Snapshots as `zfs list` reports them, and parsers for the other small
//! outputs of `zfs` (name lists, `zfs get` values, `zfs holds`, the `size`
//! line of `zfs send -n -P`). All pure: they take captured text.

use crate::error::ZfsError;
use crate::names::is_within_prefix;
use serde::{Deserialize, Serialize};

/// One snapshot of a dataset.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The short name, after '@'.
    pub name: String,
    /// The snapshot's GUID: the same on every pool the snapshot is
    /// replicated to, which is how source and target snapshots are matched.
    pub guid: u64,
    /// The transaction group that created it: orders snapshots of one
    /// dataset even when their `creation` seconds are equal.
    pub createtxg: u64,
    /// Creation time, Unix seconds.
    pub creation: i64,
}

impl SnapshotInfo {
    /// The full name `dataset@name`.
    pub fn full_name(&self, dataset: &str) -> String {
        format!("{dataset}@{}", self.name)
    }
}

fn parse_error(argv: &str, line: &str, detail: impl Into<String>) -> ZfsError {
    ZfsError::Parse {
        argv: argv.into(),
        line: line.into(),
        detail: detail.into(),
    }
}

/// Parses the output of
/// `zfs list -H -p -t snapshot -o name,guid,createtxg,creation -s createtxg -d 1 DATASET`
/// (one tab-separated line per snapshot). Keeps only the snapshots of
/// exactly `dataset` (not of its children), sorted by `createtxg`.
pub fn parse_snapshot_list(dataset: &str, text: &str) -> Result<Vec<SnapshotInfo>, ZfsError> {
    let argv = format!("zfs list -t snapshot {dataset}");
    let mut snapshots = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split('\t').collect();
        let [name, guid, createtxg, creation] = fields[..] else {
            return Err(parse_error(
                &argv,
                line,
                format!("expected 4 tab-separated fields, found {}", fields.len()),
            ));
        };
        let Some((of, short)) = name.split_once('@') else {
            return Err(parse_error(&argv, line, "name has no '@'"));
        };
        if of != dataset {
            continue;
        }
        let number = |what: &str, text: &str| {
            text.parse::<u64>()
                .map_err(|_| parse_error(&argv, line, format!("{what} {text:?} is not a number")))
        };
        let creation_secs = creation.parse::<i64>().map_err(|_| {
            parse_error(
                &argv,
                line,
                format!("creation {creation:?} is not a number (was -p given?)"),
            )
        })?;
        snapshots.push(SnapshotInfo {
            name: short.to_string(),
            guid: number("guid", guid)?,
            createtxg: number("createtxg", createtxg)?,
            creation: creation_secs,
        });
    }
    snapshots.sort_by_key(|s| s.createtxg);
    Ok(snapshots)
}

/// Parses the output of `zfs list -H -o name -t filesystem,volume -r DATASET`:
/// the names of `dataset` and its descendants, sorted by name so that every
/// parent comes before its children. Lines outside `dataset` are dropped.
pub fn parse_dataset_names(dataset: &str, text: &str) -> Vec<String> {
    let mut names: Vec<String> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty() && is_within_prefix(l, dataset))
        .map(str::to_string)
        .collect();
    // A parent is a proper prefix of its children, so it sorts first.
    names.sort();
    names.dedup();
    names
}

/// Parses `zfs get -H -p -o name,value [-r] PROP DATASET` output: each
/// dataset within `dataset` with its value (`None` for `-`), sorted by
/// name so that every parent comes before its children.
pub fn parse_name_values(dataset: &str, text: &str) -> Vec<(String, Option<String>)> {
    let mut rows: Vec<(String, Option<String>)> = text
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(name, _)| is_within_prefix(name, dataset))
        .map(|(name, value)| (name.to_string(), parse_property_value(value)))
        .collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.dedup_by(|a, b| a.0 == b.0);
    rows
}

/// Parses `zfs get -H -p -o value PROP DATASET` output: the value, or
/// `None` when `zfs` prints "-" (the property has no value).
pub fn parse_property_value(text: &str) -> Option<String> {
    let value = text.trim_end_matches(['\n', '\r']);
    if value.is_empty() || value == "-" {
        None
    } else {
        Some(value.to_string())
    }
}

/// Parses a numeric `zfs get -H -p -o value` output (such as `written`);
/// "-" counts as 0.
pub fn parse_property_u64(argv: &str, text: &str) -> Result<u64, ZfsError> {
    match parse_property_value(text) {
        None => Ok(0),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| parse_error(argv, &v, "expected a number of bytes (was -p given?)")),
    }
}

/// Parses `zfs holds -H SNAPSHOT` output (`name<TAB>tag<TAB>timestamp`
/// per line): the tags.
pub fn parse_holds(argv: &str, text: &str) -> Result<Vec<String>, ZfsError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            match (fields.next(), fields.next()) {
                (Some(_), Some(tag)) if !tag.is_empty() => Ok(tag.to_string()),
                _ => Err(parse_error(
                    argv,
                    line,
                    "expected name<TAB>tag<TAB>timestamp",
                )),
            }
        })
        .collect()
}

/// Parses `zfs holds -H SNAPSHOT...` output for several snapshots: each
/// snapshot's full name and one of its tags per line.
pub fn parse_holds_of(argv: &str, text: &str) -> Result<Vec<(String, String)>, ZfsError> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let mut fields = line.split('\t');
            match (fields.next(), fields.next()) {
                (Some(name), Some(tag)) if !name.is_empty() && !tag.is_empty() => {
                    Ok((name.to_string(), tag.to_string()))
                }
                _ => Err(parse_error(
                    argv,
                    line,
                    "expected name<TAB>tag<TAB>timestamp",
                )),
            }
        })
        .collect()
}

/// Finds the estimated stream size in `zfs send -n -P` output: the number
/// on the last `size<TAB>N` line, `None` when there is none.
pub fn parse_send_size(text: &str) -> Option<u64> {
    text.lines()
        .filter_map(|l| l.strip_prefix("size\t"))
        .filter_map(|n| n.trim().parse().ok())
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    // `zfs list -H -p -t snapshot -o name,guid,createtxg,creation -s createtxg -d 1 tank/home`
    // as OpenZFS 2.3 prints it. Line order is shuffled in one test to show
    // that sorting does not rely on `-s createtxg`.
    const SNAPSHOTS: &str = "\
tank/home@fjord_2026-01-30T120000Z\t13837367035398315327\t1042\t1769774400
tank/home@manual\t5482164813287616120\t1100\t1769780000
tank/home@fjord_2026-01-31T120000Z\t9277081738281040917\t1260\t1769860800
";

    #[test]
    fn snapshot_list_parses_fields_in_createtxg_order() {
        let snaps = parse_snapshot_list("tank/home", SNAPSHOTS).unwrap();
        assert_eq!(snaps.len(), 3);
        assert_eq!(
            snaps[0],
            SnapshotInfo {
                name: "fjord_2026-01-30T120000Z".into(),
                guid: 13837367035398315327,
                createtxg: 1042,
                creation: 1769774400,
            }
        );
        assert_eq!(snaps[1].name, "manual");
        assert_eq!(snaps[2].createtxg, 1260);
        assert_eq!(
            snaps[2].full_name("tank/home"),
            "tank/home@fjord_2026-01-31T120000Z"
        );
    }

    #[test]
    fn snapshot_list_sorts_by_createtxg_itself() {
        let reversed: String = SNAPSHOTS.lines().rev().map(|l| format!("{l}\n")).collect();
        let snaps = parse_snapshot_list("tank/home", &reversed).unwrap();
        let txgs: Vec<u64> = snaps.iter().map(|s| s.createtxg).collect();
        assert_eq!(txgs, vec![1042, 1100, 1260]);
    }

    #[test]
    fn snapshot_list_keeps_only_the_dataset_itself() {
        let text = "\
tank/home@a\t1\t10\t100
tank/home/alice@a\t2\t11\t100
tank/homework@a\t3\t12\t100
";
        let snaps = parse_snapshot_list("tank/home", text).unwrap();
        assert_eq!(snaps.len(), 1);
        assert_eq!(snaps[0].guid, 1);
    }

    #[test]
    fn name_values_keep_the_tree_parents_first_with_dash_as_none() {
        let text =
            "tank/home/alice\t-\ntank/home\t2026-12-03T12:13:20Z @fjord_x\ntank/homework\tx\n";
        assert_eq!(
            parse_name_values("tank/home", text),
            vec![
                (
                    "tank/home".to_string(),
                    Some("2026-12-03T12:13:20Z @fjord_x".to_string())
                ),
                ("tank/home/alice".to_string(), None),
            ]
        );
        assert_eq!(parse_name_values("tank/home", ""), vec![]);
    }

    #[test]
    fn snapshot_list_empty_output_is_no_snapshots() {
        assert_eq!(parse_snapshot_list("tank/home", "").unwrap(), vec![]);
    }

    #[test]
    fn snapshot_list_refuses_human_readable_or_short_lines() {
        // Without -p, creation is a date; the parser must notice.
        let human = "tank/home@a\t1\t10\tSat Jan 31 12:00 2026\n";
        let err = parse_snapshot_list("tank/home", human)
            .unwrap_err()
            .to_string();
        assert!(err.contains("creation"), "{err}");
        let short = "tank/home@a\t1\t10\n";
        let err = parse_snapshot_list("tank/home", short)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("expected 4 tab-separated fields, found 3"),
            "{err}"
        );
        assert!(parse_snapshot_list("tank/home", "tank/home\t1\t2\t3\n").is_err());
    }

    #[test]
    fn dataset_names_parents_first_and_within() {
        let text =
            "tank/home\ntank/home/bob\ntank/home/alice\ntank/home/alice/mail\ntank/homework\n";
        assert_eq!(
            parse_dataset_names("tank/home", text),
            vec![
                "tank/home",
                "tank/home/alice",
                "tank/home/alice/mail",
                "tank/home/bob"
            ]
        );
    }

    #[test]
    fn property_values() {
        assert_eq!(parse_property_value("-\n"), None);
        assert_eq!(parse_property_value(""), None);
        let token = "1-e604ea4bf-e0-789c63a2";
        assert_eq!(
            parse_property_value(&format!("{token}\n")),
            Some(token.into())
        );
        assert_eq!(parse_property_u64("zfs get", "1234567\n").unwrap(), 1234567);
        assert_eq!(parse_property_u64("zfs get", "-\n").unwrap(), 0);
        assert!(parse_property_u64("zfs get", "1.2M\n").is_err());
    }

    #[test]
    fn holds_are_the_second_field() {
        let text = "tank/home@a\tfjord-home\tSat Jan 31 12:00 2026\ntank/home@a\tkeep\tSat Jan 31 12:01 2026\n";
        assert_eq!(
            parse_holds("zfs holds", text).unwrap(),
            vec!["fjord-home", "keep"]
        );
        assert_eq!(parse_holds("zfs holds", "").unwrap(), Vec::<String>::new());
        assert!(parse_holds("zfs holds", "garbage\n").is_err());
    }

    #[test]
    fn send_size_is_the_last_size_line() {
        let full = "full\ttank/home@a\t4425144\nsize\t4425144\n";
        assert_eq!(parse_send_size(full), Some(4425144));
        let incremental = "incremental\ta\ttank/home@b\t312\nsize\t312\n";
        assert_eq!(parse_send_size(incremental), Some(312));
        let intermediates =
            "incremental\ta\ttank/home@b\t100\nincremental\tb\ttank/home@c\t200\nsize\t300\n";
        assert_eq!(parse_send_size(intermediates), Some(300));
        assert_eq!(parse_send_size("full\ttank/home@a\n"), None);
    }
}
