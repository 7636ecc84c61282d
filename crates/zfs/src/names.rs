//! OpenZFS's rules for dataset and snapshot names, and the prefix check that
//! keeps a client inside the part of the pool it may write.
//!
//! The rules follow `entity_namecheck`, `dataset_namecheck` and
//! `pool_namecheck` in OpenZFS's `module/zcommon/zfs_namecheck.c`, with one
//! deliberate difference: ZFS allows a space inside a name, fjord refuses it.
//! A name with a space survives `zfs` itself but not the shell scripts, cron
//! lines and log greps around a replication job, so fjord will not create or
//! accept one.
//!
//! Names arrive from config files and, on the receiver, from the network:
//! these checks run before any name reaches an argv.

use thiserror::Error;

/// The longest name, in bytes: `ZFS_MAX_DATASET_NAME_LEN` (256) less the NUL.
pub const MAX_NAME_LEN: usize = 255;

/// The deepest nesting (number of '/') ZFS accepts by default
/// (`zfs_max_dataset_nesting`, 50): `dataset_nestcheck` refuses 50 and more.
pub const MAX_NESTING: usize = 49;

/// The longest pool name: `ZFS_MAX_DATASET_NAME_LEN - 2 - 2 * strlen("$ORIGIN")`
/// less the NUL, room ZFS keeps for the pool's `$ORIGIN` snapshot.
pub const MAX_POOL_NAME_LEN: usize = 239;

/// Pool names ZFS reserves for vdev types (`pool_namecheck`).
const RESERVED_POOL_NAMES: [&str; 3] = ["mirror", "raidz", "draid"];

/// What kind of name was being checked, for error messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NameKind {
    /// A filesystem or volume name such as `tank/home`.
    Dataset,
    /// The part of a snapshot name after '@'.
    Snapshot,
}

impl std::fmt::Display for NameKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NameKind::Dataset => "dataset name",
            NameKind::Snapshot => "snapshot name",
        })
    }
}

/// Why a name was refused. Each message quotes the name and says what to fix.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum NameError {
    /// The name is empty.
    #[error("{kind} is empty: give a name such as {example}", example = example(*kind))]
    Empty {
        /// Which kind of name.
        kind: NameKind,
    },
    /// Longer than [`MAX_NAME_LEN`] bytes.
    #[error(
        "{kind} \"{name}\" is {len} bytes long; ZFS allows at most {max}: choose a shorter name"
    )]
    TooLong {
        /// Which kind of name.
        kind: NameKind,
        /// The name as given.
        name: String,
        /// Its length in bytes.
        len: usize,
        /// The limit that applies.
        max: usize,
    },
    /// Starts with '/', as a mount path does.
    #[error("dataset name \"{name}\" starts with '/': give the ZFS name (such as tank/home), not a mount path")]
    LeadingSlash {
        /// The name as given.
        name: String,
    },
    /// Ends with '/'.
    #[error("dataset name \"{name}\" ends with '/': remove the trailing '/'")]
    TrailingSlash {
        /// The name as given.
        name: String,
    },
    /// Has "//" somewhere.
    #[error("dataset name \"{name}\" has an empty component (\"//\"): separate components with a single '/'")]
    EmptyComponent {
        /// The name as given.
        name: String,
    },
    /// A component is `.` or `..`.
    #[error("{kind} \"{name}\" has a \"{component}\" component: ZFS refuses relative components; give the full name")]
    DotComponent {
        /// Which kind of name.
        kind: NameKind,
        /// The name as given.
        name: String,
        /// `"."` or `".."`.
        component: &'static str,
    },
    /// A character ZFS (or fjord) does not allow here.
    #[error("{kind} \"{name}\" contains {ch:?}, which {reason}")]
    ForbiddenChar {
        /// Which kind of name.
        kind: NameKind,
        /// The name as given (control characters shown escaped).
        name: String,
        /// The offending character.
        ch: char,
        /// Why it is refused and what to do.
        reason: &'static str,
    },
    /// The first component is not a valid pool name.
    #[error(
        "dataset name \"{name}\" starts with \"{pool}\", which is not a valid pool name: {reason}"
    )]
    PoolName {
        /// The name as given.
        name: String,
        /// Its first component.
        pool: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Nested deeper than ZFS allows.
    #[error("dataset name \"{name}\" is nested {depth} levels deep; ZFS allows at most {MAX_NESTING}: choose a shallower target")]
    TooDeep {
        /// The name as given.
        name: String,
        /// Its number of '/'.
        depth: usize,
    },
    /// A full snapshot name without '@'.
    #[error("\"{name}\" is not a snapshot name: expected dataset@snapshot")]
    NotASnapshot {
        /// The name as given.
        name: String,
    },
    /// A valid dataset that lies outside every prefix a client may write.
    #[error("dataset \"{name}\" is outside every allowed prefix ({prefixes}): refused; add a prefix for it to this client's `prefixes` in the receiver's config, or send to a target below one")]
    OutsidePrefixes {
        /// The name as given.
        name: String,
        /// The allowed prefixes, comma-separated ("none" when empty).
        prefixes: String,
    },
}

fn example(kind: NameKind) -> &'static str {
    match kind {
        NameKind::Dataset => "tank/home",
        NameKind::Snapshot => "fjord_2026-01-31T120000Z",
    }
}

/// Why a character is refused in a name, or `None` when it is allowed.
/// `'/'` is handled by the callers, which know whether it separates
/// components (datasets) or is forbidden (snapshot short names).
fn char_refusal(ch: char) -> Option<&'static str> {
    match ch {
        'a'..='z' | 'A'..='Z' | '0'..='9' | '-' | '_' | '.' | ':' => None,
        '@' => Some("marks a snapshot: give the dataset name without \"@snapshot\""),
        '#' => Some("marks a bookmark: give the dataset name without \"#bookmark\""),
        '%' => Some("is reserved for zfs recv's temporary clones: choose another name"),
        ' ' => Some("ZFS allows but fjord refuses (names with spaces break scripts and logs): choose a name without spaces"),
        c if c.is_control() => Some("is a control character: remove it"),
        _ => Some("is not allowed: use only letters, digits, '-', '_', '.' and ':'"),
    }
}

/// Name safe to quote in an error message (control characters escaped).
fn shown(name: &str) -> String {
    if name.chars().any(char::is_control) {
        name.escape_debug().to_string()
    } else {
        name.to_string()
    }
}

/// Checks a filesystem or volume name (`tank/home/a`) against OpenZFS's
/// rules: non-empty, at most [`MAX_NAME_LEN`] bytes, components separated by
/// single '/', no leading or trailing '/', no `.` or `..` component, only
/// letters, digits and `-_.:` in components, no '@' / '#' / '%' (snapshot,
/// bookmark and recv-internal markers), a pool name that starts with a letter
/// and is not reserved, and nesting within [`MAX_NESTING`].
///
/// Unlike ZFS, a space is refused too (see the module docs).
pub fn validate_dataset(name: &str) -> Result<(), NameError> {
    let kind = NameKind::Dataset;
    if name.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            name: shown(name),
            len: name.len(),
            max: MAX_NAME_LEN,
        });
    }
    // Characters first: a '@' is the likeliest mistake and deserves its
    // own message rather than a complaint about components.
    if let Some((ch, reason)) = name
        .chars()
        .filter(|&c| c != '/')
        .find_map(|c| char_refusal(c).map(|r| (c, r)))
    {
        return Err(NameError::ForbiddenChar {
            kind,
            name: shown(name),
            ch,
            reason,
        });
    }
    if name.starts_with('/') {
        return Err(NameError::LeadingSlash { name: name.into() });
    }
    if name.ends_with('/') {
        return Err(NameError::TrailingSlash { name: name.into() });
    }
    for component in name.split('/') {
        match component {
            "" => return Err(NameError::EmptyComponent { name: name.into() }),
            "." | ".." => {
                return Err(NameError::DotComponent {
                    kind,
                    name: name.into(),
                    component: if component == "." { "." } else { ".." },
                })
            }
            _ => {}
        }
    }
    let pool = name.split('/').next().unwrap_or(name);
    let pool_problem = if !pool.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some("a pool name must start with a letter")
    } else if RESERVED_POOL_NAMES.contains(&pool) {
        Some("ZFS reserves it for a vdev type")
    } else if pool.len() > MAX_POOL_NAME_LEN {
        Some("a pool name may be at most 239 bytes long")
    } else {
        None
    };
    if let Some(reason) = pool_problem {
        return Err(NameError::PoolName {
            name: name.into(),
            pool: pool.into(),
            reason,
        });
    }
    let depth = name.matches('/').count();
    if depth > MAX_NESTING {
        return Err(NameError::TooDeep {
            name: name.into(),
            depth,
        });
    }
    Ok(())
}

/// Checks the part of a snapshot name after '@' (`fjord_2026-01-31T120000Z`):
/// non-empty, at most [`MAX_NAME_LEN`] bytes, not `.` or `..`, only letters,
/// digits and `-_.:`; so no '/', '@', '#', '%' or space.
///
/// The full name `dataset@short` must also fit in [`MAX_NAME_LEN`]; see
/// [`validate_full_snapshot`].
pub fn validate_snapshot_short_name(snap: &str) -> Result<(), NameError> {
    let kind = NameKind::Snapshot;
    if snap.is_empty() {
        return Err(NameError::Empty { kind });
    }
    if snap.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind,
            name: shown(snap),
            len: snap.len(),
            max: MAX_NAME_LEN,
        });
    }
    if let Some((ch, reason)) = snap.chars().find_map(|c| {
        if c == '/' {
            Some((c, "is not allowed after '@': a snapshot name has no '/'"))
        } else {
            char_refusal(c).map(|r| (c, r))
        }
    }) {
        return Err(NameError::ForbiddenChar {
            kind,
            name: shown(snap),
            ch,
            reason,
        });
    }
    if snap == "." || snap == ".." {
        return Err(NameError::DotComponent {
            kind,
            name: snap.into(),
            component: if snap == "." { "." } else { ".." },
        });
    }
    Ok(())
}

/// Splits and checks a full snapshot name `dataset@short`, returning
/// `(dataset, short)`. The whole name must fit in [`MAX_NAME_LEN`] bytes.
pub fn validate_full_snapshot(full: &str) -> Result<(&str, &str), NameError> {
    let Some((dataset, short)) = full.split_once('@') else {
        return Err(NameError::NotASnapshot { name: shown(full) });
    };
    validate_dataset(dataset)?;
    validate_snapshot_short_name(short)?;
    if full.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong {
            kind: NameKind::Snapshot,
            name: full.into(),
            len: full.len(),
            max: MAX_NAME_LEN,
        });
    }
    Ok((dataset, short))
}

/// True iff `dataset` is `prefix` itself or lies below it. Compares whole
/// components, so `backup/oslo2` is not within `backup/oslo`. Both names
/// should have passed [`validate_dataset`]; this only compares.
pub fn is_within_prefix(dataset: &str, prefix: &str) -> bool {
    match dataset.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest.starts_with('/'),
        None => false,
    }
}

/// Validates `dataset` and checks that it lies within at least one of
/// `prefixes` (see [`is_within_prefix`]): what a receiver runs on every
/// target a client asks for. An empty `prefixes` refuses everything.
pub fn check_target(dataset: &str, prefixes: &[String]) -> Result<(), NameError> {
    validate_dataset(dataset)?;
    if prefixes.iter().any(|p| is_within_prefix(dataset, p)) {
        return Ok(());
    }
    Err(NameError::OutsidePrefixes {
        name: dataset.into(),
        prefixes: if prefixes.is_empty() {
            "none".into()
        } else {
            prefixes.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn dataset_err(name: &str) -> String {
        validate_dataset(name)
            .expect_err(&format!("{name:?} should be refused"))
            .to_string()
    }

    #[test]
    fn ordinary_dataset_names_are_accepted() {
        for name in [
            "tank",
            "tank/home",
            "backup/oslo/home/a-b_c.d:e",
            "T2/x",
            "tank/..hidden",
            "tank/.x",
        ] {
            assert_eq!(validate_dataset(name), Ok(()), "{name}");
        }
    }

    #[test]
    fn parent_component_is_named_in_the_error() {
        assert_eq!(
            dataset_err("backup/../tank"),
            "dataset name \"backup/../tank\" has a \"..\" component: ZFS refuses relative components; give the full name"
        );
        assert!(dataset_err("tank/.").contains("a \".\" component"));
        assert!(dataset_err("tank/./x").contains("a \".\" component"));
    }

    #[test]
    fn slashes_must_separate_non_empty_components() {
        assert!(matches!(
            validate_dataset("/tank/home"),
            Err(NameError::LeadingSlash { .. })
        ));
        assert!(matches!(
            validate_dataset("tank/home/"),
            Err(NameError::TrailingSlash { .. })
        ));
        assert!(matches!(
            validate_dataset("tank//home"),
            Err(NameError::EmptyComponent { .. })
        ));
        assert!(dataset_err("/tank").contains("not a mount path"));
    }

    #[test]
    fn snapshot_bookmark_and_recv_markers_are_refused_in_datasets() {
        assert!(dataset_err("tank/home@snap").contains("marks a snapshot"));
        assert!(dataset_err("tank/home#bm").contains("marks a bookmark"));
        assert!(dataset_err("tank/home/%recv").contains("temporary clones"));
    }

    #[test]
    fn space_is_refused_although_zfs_allows_it() {
        let err = dataset_err("tank/my home");
        assert!(err.contains("fjord refuses"), "{err}");
        assert!(validate_snapshot_short_name("a b").is_err());
    }

    #[test]
    fn control_and_non_ascii_characters_are_refused_and_shown_escaped() {
        let err = dataset_err("tank/a\nb");
        assert!(err.contains("tank/a\\nb"), "{err}");
        assert!(err.contains("control character"), "{err}");
        assert!(dataset_err("tank/å").contains("only letters, digits"));
        assert!(dataset_err("tank/a*b").contains("'*'"));
    }

    #[test]
    fn empty_and_too_long_names_are_refused() {
        assert_eq!(
            validate_dataset(""),
            Err(NameError::Empty {
                kind: NameKind::Dataset
            })
        );
        let longest = format!("tank/{}", "a".repeat(MAX_NAME_LEN - 5));
        assert_eq!(validate_dataset(&longest), Ok(()));
        let too_long = format!("{longest}b");
        assert!(matches!(
            validate_dataset(&too_long),
            Err(NameError::TooLong { len: 256, .. })
        ));
    }

    #[test]
    fn pool_component_follows_pool_rules() {
        assert!(dataset_err("1tank/x").contains("must start with a letter"));
        assert!(dataset_err("mirror/x").contains("reserves"));
        assert!(dataset_err("raidz").contains("reserves"));
        assert_eq!(validate_dataset("mirrors/x"), Ok(()));
        assert_eq!(validate_dataset("tank/mirror"), Ok(()));
    }

    #[test]
    fn nesting_is_limited() {
        let ok = format!("t{}", "/a".repeat(MAX_NESTING));
        assert_eq!(validate_dataset(&ok), Ok(()));
        let deep = format!("t{}", "/a".repeat(MAX_NESTING + 1));
        assert!(matches!(
            validate_dataset(&deep),
            Err(NameError::TooDeep { depth: 50, .. })
        ));
    }

    #[test]
    fn snapshot_short_names() {
        for ok in ["fjord_2026-01-31T120000Z", "a", "x.y:z-1", "..a"] {
            assert_eq!(validate_snapshot_short_name(ok), Ok(()), "{ok}");
        }
        for bad in ["", "a/b", "a@b", "a#b", "a%b", ".", "..", "a\tb"] {
            assert!(validate_snapshot_short_name(bad).is_err(), "{bad:?}");
        }
        let err = validate_snapshot_short_name("a/b").unwrap_err().to_string();
        assert!(
            err.starts_with("snapshot name \"a/b\" contains '/'"),
            "{err}"
        );
    }

    #[test]
    fn full_snapshot_names_split_and_check() {
        assert_eq!(validate_full_snapshot("tank/fs@s1"), Ok(("tank/fs", "s1")));
        assert!(matches!(
            validate_full_snapshot("tank/fs"),
            Err(NameError::NotASnapshot { .. })
        ));
        assert!(validate_full_snapshot("tank/fs@a@b").is_err());
        assert!(validate_full_snapshot("tank/fs@").is_err());
        assert!(validate_full_snapshot("/tank@s").is_err());
        let too_long = format!("tank@{}", "s".repeat(MAX_NAME_LEN - 4));
        assert!(matches!(
            validate_full_snapshot(&too_long),
            Err(NameError::TooLong { .. })
        ));
    }

    #[test]
    fn prefix_compares_whole_components() {
        assert!(is_within_prefix("backup/oslo", "backup/oslo"));
        assert!(is_within_prefix("backup/oslo/home", "backup/oslo"));
        assert!(!is_within_prefix("backup/oslo2", "backup/oslo"));
        assert!(!is_within_prefix("backup", "backup/oslo"));
        assert!(!is_within_prefix("tank/backup/oslo", "backup/oslo"));
    }

    #[test]
    fn check_target_validates_then_confines() {
        let prefixes = vec!["backup/oslo".to_string(), "backup/bergen".to_string()];
        assert_eq!(check_target("backup/bergen/x", &prefixes), Ok(()));
        let err = check_target("backup/oslo2", &prefixes).unwrap_err();
        assert_eq!(
            err,
            NameError::OutsidePrefixes {
                name: "backup/oslo2".into(),
                prefixes: "backup/oslo, backup/bergen".into()
            }
        );
        assert!(err
            .to_string()
            .contains("outside every allowed prefix (backup/oslo, backup/bergen): refused"));
        // Validation comes first: "backup/oslo/.." textually starts with
        // the prefix but must not pass.
        assert!(matches!(
            check_target("backup/oslo/..", &prefixes),
            Err(NameError::DotComponent { .. })
        ));
        assert!(check_target("backup/oslo", &[])
            .unwrap_err()
            .to_string()
            .contains("(none)"));
    }

    proptest! {
        #[test]
        fn accepted_names_never_escape_their_prefix_textually(
            name in "[a-z][a-z0-9_.:/-]{0,40}",
            prefix in "[a-z][a-z0-9]{0,5}(/[a-z0-9]{1,5}){0,2}",
        ) {
            if check_target(&name, std::slice::from_ref(&prefix)).is_ok() {
                let below = format!("{}/", prefix);
                prop_assert!(name == prefix || name.starts_with(&below));
                prop_assert!(!name.split('/').any(|c| c == ".." || c == "." || c.is_empty()));
            }
        }

        #[test]
        fn validation_never_panics(name in "\\PC{0,300}") {
            let _ = validate_dataset(&name);
            let _ = validate_snapshot_short_name(&name);
            let _ = validate_full_snapshot(&name);
        }
    }
}
