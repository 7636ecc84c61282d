//! Encryption roots across a raw (`zfs send -w`) tree. Each dataset goes
//! as its own stream, and a per-dataset raw receive makes every copy an
//! encryption root of its own (its key arrives wrapped by its source
//! encryption root's wrapping key, but the copy no longer says so). A
//! `zfs send -R -w` package avoids that because `zfs recv` fixes the
//! hierarchy afterwards (`recv_fix_encryption_hierarchy` in OpenZFS's
//! `libzfs_sendrecv.c`, by a forced key inheritance that needs no key
//! loaded); fjord asks the DR node to do the same per dataset, by
//! [`offer_flags::INHERIT_KEY`](fjord_proto::message::offer_flags::INHERIT_KEY).

use crate::pool::Pool;
use fjord_zfs::names::is_within_prefix;

/// Whether the raw stream of `source` should ask the DR node to make its
/// copy inherit its parent's encryption root: `source` is encrypted, is
/// not its own encryption root (`encryption_root` is its
/// `encryptionroot` property, `None` when unencrypted), and lies strictly
/// below `job_source`, so that its parent is replicated by the same job
/// and the parent's copy carries the same wrapping key (the key the
/// parent and `source` share on the primary).
pub fn inherits_key(job_source: &str, source: &str, encryption_root: Option<&str>) -> bool {
    let below_root = source != job_source && is_within_prefix(source, job_source);
    below_root && encryption_root.is_some_and(|root| root != source)
}

/// [`inherits_key`] for `source`, reading its `encryptionroot`. A read
/// that fails is logged and answers `false`: the copy is then received as
/// an encryption root of its own, still complete and still opened by the
/// primary's key.
pub(crate) async fn source_inherits_key<P: Pool>(pool: &P, job_source: &str, source: &str) -> bool {
    if source == job_source {
        return false;
    }
    match pool.property(source, "encryptionroot").await {
        Ok(root) => inherits_key(job_source, source, root.as_deref()),
        Err(e) => {
            tracing::warn!(dataset = source, error = %e, "cannot read the encryption root; the copy stays an encryption root of its own");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::inherits_key;

    #[test]
    fn only_an_encrypted_child_below_the_job_root_that_is_not_its_own_root_inherits() {
        // a grandchild inheriting its parent's key
        assert!(inherits_key("t/d", "t/d/enc/kid", Some("t/d/enc")));
        // a key inherited from above the job root: the parent's copy has it too
        assert!(inherits_key("t/d", "t/d/kid", Some("t")));
        // its own encryption root (an encrypted child of an unencrypted parent)
        assert!(!inherits_key("t/d", "t/d/enc", Some("t/d/enc")));
        // not encrypted
        assert!(!inherits_key("t/d", "t/d/plain", None));
        // the job's root: its parent is not replicated by this job
        assert!(!inherits_key("t/d", "t/d", Some("t")));
        // outside the job (never asked, but never true)
        assert!(!inherits_key("t/d", "t/dx/kid", Some("t")));
    }
}
