//! Encryption roots of raw trees on the DR node. A per-dataset raw
//! receive makes every copy an encryption root of its own; when the
//! sender says that the source inherits its key from its parent
//! ([`offer_flags::INHERIT_KEY`](fjord_proto::message::offer_flags::INHERIT_KEY)),
//! the copy is made to inherit its parent's encryption root again, as
//! `zfs recv` of a `zfs send -R -w` package does ([`super::lzc`]). No key
//! is needed: the copy's key already is wrapped by the wrapping key its
//! parent's copy uses (the primary's, sent as is).

use super::ZfsTarget;
use fjord_config::config::Client;
use fjord_zfs::names::is_within_prefix;
use fjord_zfs::props::value_of;

/// What the DR node reads of a copy, or of its parent's encryption root.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Keyed {
    /// `encryption` (`off` when not encrypted).
    pub encryption: String,
    /// `encryptionroot` (empty when not encrypted).
    pub encryption_root: String,
    /// `keyformat`.
    pub keyformat: String,
}

/// What to do with a copy the sender says inherits its key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeyStep {
    /// Nothing: the copy already inherits (an incremental of a fixed copy).
    Nothing,
    /// Make the copy inherit its parent's encryption root.
    Inherit,
    /// Not done, and why (logged; the copy stays complete and opens with
    /// the primary's key as an encryption root of its own).
    Refuse(String),
}

/// The decision for `dataset` (the copy, `copy` as read), whose parent
/// `parent` reads as `parent_root` (its encryption root's `keyformat`
/// included); `prefixes` are the client's. The parent must be the
/// client's too (never reach into another client's tree or the DR node's
/// own), encrypted, with the same key format as the copy.
pub(crate) fn decide_inherit(
    dataset: &str,
    copy: &Keyed,
    parent: Option<(&str, &Keyed)>,
    prefixes: &[String],
) -> KeyStep {
    if copy.encryption.is_empty() || copy.encryption == "off" {
        return KeyStep::Refuse(format!("{dataset} is not encrypted (was the stream raw?)"));
    }
    if copy.encryption_root != dataset {
        return KeyStep::Nothing;
    }
    let Some((parent, parent_keyed)) = parent else {
        return KeyStep::Refuse(format!("{dataset} has no parent to inherit a key from"));
    };
    if !prefixes
        .iter()
        .any(|p| is_within_prefix(parent, p.trim_end_matches('/')))
    {
        return KeyStep::Refuse(format!(
            "its parent {parent} is outside the client's prefixes"
        ));
    }
    if parent_keyed.encryption.is_empty() || parent_keyed.encryption == "off" {
        return KeyStep::Refuse(format!(
            "its parent {parent} is not encrypted (the parent's copy is not a raw copy of the source's parent)"
        ));
    }
    if parent_keyed.keyformat != copy.keyformat {
        return KeyStep::Refuse(format!(
            "its parent's encryption root {} has keyformat {}, the copy {}: not the same key",
            parent_keyed.encryption_root, parent_keyed.keyformat, copy.keyformat
        ));
    }
    KeyStep::Inherit
}

const KEY_PROPS: &[&str] = &["encryption", "encryptionroot", "keyformat"];

impl ZfsTarget {
    async fn keyed(&self, dataset: &str) -> Result<Option<Keyed>, String> {
        let props = self
            .zfs
            .properties_if_exists(dataset, KEY_PROPS)
            .await
            .map_err(|e| e.to_string())?;
        Ok(props.map(|p| {
            let v = |n| {
                value_of(&p, n)
                    .filter(|v| *v != "-")
                    .unwrap_or_default()
                    .to_string()
            };
            Keyed {
                encryption: v("encryption"),
                encryption_root: v("encryptionroot"),
                keyformat: v("keyformat"),
            }
        }))
    }

    /// After a committed raw receive whose source inherits its key: makes
    /// the copy inherit its parent's encryption root, if
    /// [`decide_inherit`] agrees. Returns what to add to the receive's
    /// message; failures are logged there, never fail the receive.
    pub(super) async fn inherit_key(&self, client: &Client, dataset: &str) -> String {
        let decided = match self.inherit_decision(client, dataset).await {
            Ok(d) => d,
            Err(e) => KeyStep::Refuse(format!("cannot read its encryption: {e}")),
        };
        match decided {
            KeyStep::Nothing => String::new(),
            KeyStep::Refuse(why) => {
                tracing::warn!(client = %client.name, dataset, reason = %why, "the copy stays an encryption root of its own");
                format!("; stays an encryption root of its own: {why}")
            }
            KeyStep::Inherit => {
                let name = dataset.to_string();
                let done =
                    tokio::task::spawn_blocking(move || super::lzc::force_inherit_key(&name))
                        .await
                        .map_err(|e| e.to_string())
                        .and_then(|r| r.map_err(|e| e.to_string()));
                match done {
                    Ok(()) => {
                        tracing::info!(client = %client.name, dataset, "the copy inherits its parent's encryption root, as on the primary");
                        "; inherits its parent's encryption root".into()
                    }
                    Err(e) => {
                        tracing::warn!(client = %client.name, dataset, error = %e, "cannot make the copy inherit its parent's encryption root");
                        format!("; stays an encryption root of its own: {e}")
                    }
                }
            }
        }
    }

    async fn inherit_decision(&self, client: &Client, dataset: &str) -> Result<KeyStep, String> {
        let copy = self.keyed(dataset).await?.unwrap_or_default();
        let parent = match dataset.rsplit_once('/') {
            // (a child shows its encryption root's keyformat)
            Some((parent, _)) => self.keyed(parent).await?.map(|k| (parent.to_string(), k)),
            None => None,
        };
        Ok(decide_inherit(
            dataset,
            &copy,
            parent.as_ref().map(|(p, k)| (p.as_str(), k)),
            &client.prefixes,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::{decide_inherit, KeyStep, Keyed};

    fn keyed(enc: &str, root: &str, format: &str) -> Keyed {
        Keyed {
            encryption: enc.into(),
            encryption_root: root.into(),
            keyformat: format.into(),
        }
    }

    #[test]
    fn a_copy_that_is_its_own_root_inherits_from_its_encrypted_parent_in_the_prefix() {
        let prefixes = ["dst/backup".to_string()];
        let parent = keyed("aes-256-gcm", "dst/backup/d/enc", "passphrase");
        let copy = keyed("aes-256-gcm", "dst/backup/d/enc/kid", "passphrase");
        assert_eq!(
            decide_inherit(
                "dst/backup/d/enc/kid",
                &copy,
                Some(("dst/backup/d/enc", &parent)),
                &prefixes
            ),
            KeyStep::Inherit
        );
        // already inheriting (an incremental): nothing
        let fixed = keyed("aes-256-gcm", "dst/backup/d/enc", "passphrase");
        assert_eq!(
            decide_inherit(
                "dst/backup/d/enc/kid",
                &fixed,
                Some(("dst/backup/d/enc", &parent)),
                &prefixes
            ),
            KeyStep::Nothing
        );
    }

    #[test]
    fn never_onto_a_parent_outside_the_prefix_unencrypted_or_with_another_key_format() {
        let prefixes = ["dst/backup/d".to_string()];
        let copy = keyed("aes-256-gcm", "dst/backup/d", "passphrase");
        let parent = keyed("aes-256-gcm", "dst/backup", "passphrase");
        let refused = |step| matches!(step, KeyStep::Refuse(_));
        // the prefix's own parent (the DR node's tree, maybe its own key)
        assert!(refused(decide_inherit(
            "dst/backup/d",
            &copy,
            Some(("dst/backup", &parent)),
            &prefixes
        )));
        let prefixes = ["dst/backup".to_string()];
        let copy = keyed("aes-256-gcm", "dst/backup/d/kid", "passphrase");
        let plain = keyed("off", "", "none");
        assert!(refused(decide_inherit(
            "dst/backup/d/kid",
            &copy,
            Some(("dst/backup/d", &plain)),
            &prefixes
        )));
        let hex = keyed("aes-256-gcm", "dst/backup/d", "hex");
        assert!(refused(decide_inherit(
            "dst/backup/d/kid",
            &copy,
            Some(("dst/backup/d", &hex)),
            &prefixes
        )));
        assert!(refused(decide_inherit(
            "dst/backup/d/kid",
            &copy,
            None,
            &prefixes
        )));
        // a copy that is not encrypted (a stream that was not raw)
        let unencrypted = keyed("off", "", "none");
        assert!(refused(decide_inherit(
            "dst/backup/d/kid",
            &unencrypted,
            Some(("dst/backup/d", &parent)),
            &prefixes
        )));
    }
}
