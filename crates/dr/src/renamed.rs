//! Copies whose source was renamed on the primary: the sender finds the
//! copy by snapshot guid (the renamed source has the copy's snapshots) and
//! asks the DR node to rename it, so that the next push continues it
//! incrementally instead of sending it again in full under the new name.
//! [`decide_rename_copy`] answers, from the client's grants and what the
//! DR node sees of both names.
//!
//! A grant of its own (`allow_rename`, off by default): a rename destroys
//! nothing, but it can move a copy under another `[[prefix_retention]]`
//! (a shorter one prunes more) and it changes where the operator finds
//! it. Even granted: both names within the client's prefixes, neither one
//! of the prefixes themselves, never onto an existing dataset, never into
//! the copy itself, never a promoted copy.

use crate::policy::Grants;
use fjord_zfs::names::{check_target, is_within_prefix};
use thiserror::Error;

/// Why a rename is refused.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum RenameRefusal {
    /// A name outside the client's prefixes (or not a valid name).
    #[error("client {client}: {why}")]
    OutsidePrefixes {
        /// The client.
        client: String,
        /// The name check's message.
        why: String,
    },
    /// Not granted.
    #[error("refused by the DR node's policy: client {client} may not rename {dataset} to {to} (its source was renamed on the primary); the copy stays and the new name arrives in full (to let this client's pushes follow renames, set allow_rename = true in its [[client]] of recv.toml)")]
    NotGranted {
        /// The client.
        client: String,
        /// The copy.
        dataset: String,
        /// The new name.
        to: String,
    },
    /// One of the client's prefixes, as the old or the new name.
    #[error("refused by the DR node's policy: {dataset} is a prefix of client {client} in recv.toml; only the DR node's operator renames it")]
    PrefixRoot {
        /// The client.
        client: String,
        /// The prefix.
        dataset: String,
    },
    /// The new name exists.
    #[error("refused by the DR node's policy: {to} exists; a rename never replaces a dataset")]
    Exists {
        /// The new name.
        to: String,
    },
    /// The new name lies within the copy.
    #[error("refused: {to} lies within {dataset}")]
    IntoItself {
        /// The copy.
        dataset: String,
        /// The new name.
        to: String,
    },
    /// The copy or something below it was promoted.
    #[error("refused by the DR node's policy: {dataset} was promoted on this node; it is not a copy to move any more")]
    Promoted {
        /// The promoted dataset.
        dataset: String,
    },
    /// The copy does not exist.
    #[error("{dataset} does not exist; nothing to rename")]
    Missing {
        /// The copy.
        dataset: String,
    },
}

/// What the DR node sees of a rename it is asked for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RenameSeen {
    /// The copy exists.
    pub exists: bool,
    /// The copy, or a dataset below it, carries `fjord:promoted`.
    pub promoted: bool,
    /// The new name exists.
    pub to_exists: bool,
}

/// Decides whether `grants`' client may have the copy `dataset` renamed
/// to `to`.
pub fn decide_rename_copy(
    grants: &Grants<'_>,
    dataset: &str,
    to: &str,
    seen: &RenameSeen,
) -> Result<(), RenameRefusal> {
    for name in [dataset, to] {
        check_target(name, grants.prefixes).map_err(|e| RenameRefusal::OutsidePrefixes {
            client: grants.client.into(),
            why: e.to_string(),
        })?;
        if grants.is_prefix_root(name) {
            return Err(RenameRefusal::PrefixRoot {
                client: grants.client.into(),
                dataset: name.into(),
            });
        }
    }
    if !grants.allow_rename {
        return Err(RenameRefusal::NotGranted {
            client: grants.client.into(),
            dataset: dataset.into(),
            to: to.into(),
        });
    }
    if is_within_prefix(to, dataset) {
        return Err(RenameRefusal::IntoItself {
            dataset: dataset.into(),
            to: to.into(),
        });
    }
    if !seen.exists {
        return Err(RenameRefusal::Missing {
            dataset: dataset.into(),
        });
    }
    if seen.to_exists {
        return Err(RenameRefusal::Exists { to: to.into() });
    }
    if seen.promoted {
        return Err(RenameRefusal::Promoted {
            dataset: dataset.into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{decide_rename_copy, RenameRefusal, RenameSeen};
    use crate::policy::Grants;

    fn grants(prefixes: &[String], allow: bool) -> Grants<'_> {
        Grants {
            client: "oslo",
            prefixes,
            snapshot_prefix: "fjord",
            allow_prune: false,
            allow_rollback: false,
            allow_destroy_removed: false,
            allow_rename: allow,
        }
    }

    fn seen() -> RenameSeen {
        RenameSeen {
            exists: true,
            promoted: false,
            to_exists: false,
        }
    }

    #[test]
    fn a_granted_rename_within_the_prefix_onto_a_free_name_is_allowed() {
        let p = ["backup/oslo".to_string()];
        let g = grants(&p, true);
        assert_eq!(
            decide_rename_copy(&g, "backup/oslo/home/a", "backup/oslo/home/b", &seen()),
            Ok(())
        );
    }

    #[test]
    fn refused_without_the_grant_outside_the_prefix_onto_a_prefix_or_an_existing_name() {
        let p = ["backup/oslo".to_string()];
        let (a, b) = ("backup/oslo/home/a", "backup/oslo/home/b");
        let no = grants(&p, false);
        assert!(matches!(
            decide_rename_copy(&no, a, b, &seen()),
            Err(RenameRefusal::NotGranted { .. })
        ));
        let g = grants(&p, true);
        for (from, to) in [(a, "backup/other/b"), ("backup/other/a", b), (a, "backup")] {
            assert!(
                matches!(
                    decide_rename_copy(&g, from, to, &seen()),
                    Err(RenameRefusal::OutsidePrefixes { .. })
                ),
                "{from} -> {to}"
            );
        }
        for (from, to) in [(a, "backup/oslo"), ("backup/oslo", b)] {
            assert!(matches!(
                decide_rename_copy(&g, from, to, &seen()),
                Err(RenameRefusal::PrefixRoot { .. })
            ));
        }
        let taken = RenameSeen {
            to_exists: true,
            ..seen()
        };
        assert_eq!(
            decide_rename_copy(&g, a, b, &taken),
            Err(RenameRefusal::Exists { to: b.into() })
        );
        let promoted = RenameSeen {
            promoted: true,
            ..seen()
        };
        assert!(matches!(
            decide_rename_copy(&g, a, b, &promoted),
            Err(RenameRefusal::Promoted { .. })
        ));
        let gone = RenameSeen {
            exists: false,
            ..seen()
        };
        assert!(matches!(
            decide_rename_copy(&g, a, b, &gone),
            Err(RenameRefusal::Missing { .. })
        ));
        assert!(matches!(
            decide_rename_copy(&g, a, "backup/oslo/home/a/b", &seen()),
            Err(RenameRefusal::IntoItself { .. })
        ));
    }
}
