//! Refusals counted by code and by the key that was refused, for the
//! receiver's metrics (which name the key's client).

use fjord_proto::message::RefuseCode;
use fjord_proto::PublicKey;
use std::collections::HashMap;
use std::sync::Mutex;

/// The code of a connection refused in the TLS handshake: its key is not
/// pinned (or it is not fjord at all).
pub const NOT_PINNED: &str = "not_pinned";

/// A refusal code as a metric label: `busy`, `bad_dataset`, `policy`, ...
/// (`unknown_N` for a code this version does not know).
pub fn label(code: RefuseCode) -> String {
    match code {
        RefuseCode::UnsupportedVersion => "unsupported_version".into(),
        RefuseCode::UnknownSession => "unknown_session".into(),
        RefuseCode::Busy => "busy".into(),
        RefuseCode::BadDataset => "bad_dataset".into(),
        RefuseCode::SinkFailed => "sink_failed".into(),
        RefuseCode::Policy => "policy".into(),
        RefuseCode::Exists => "exists".into(),
        RefuseCode::Promoted => "promoted".into(),
        RefuseCode::Other => "other".into(),
        RefuseCode::Unknown(n) => format!("unknown_{n}"),
    }
}

/// How many times one code was given to one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RefusalCount {
    /// The code's label ([`label`], or [`NOT_PINNED`]).
    pub code: String,
    /// The key refused; none when the handshake did not get that far.
    pub key: Option<PublicKey>,
    /// How many times since the start.
    pub count: u64,
}

/// The counts, by (code label, key).
#[derive(Debug, Default)]
pub(crate) struct Refusals(Mutex<HashMap<(String, Option<PublicKey>), u64>>);

impl Refusals {
    /// Counts one refusal.
    pub(crate) fn note(&self, code: String, key: Option<PublicKey>) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry((code, key)).or_default() += 1;
    }

    /// Every count so far, in no particular order.
    pub(crate) fn snapshot(&self) -> Vec<RefusalCount> {
        let m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        m.iter()
            .map(|((code, key), count)| RefusalCount {
                code: code.clone(),
                key: *key,
                count: *count,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_kept_per_code_and_key() {
        let r = Refusals::default();
        let k = PublicKey([7; 32]);
        r.note(label(RefuseCode::Policy), Some(k));
        r.note(label(RefuseCode::Policy), Some(k));
        r.note(label(RefuseCode::Busy), Some(k));
        r.note(NOT_PINNED.into(), None);
        let mut s = r.snapshot();
        s.sort_by(|a, b| a.code.cmp(&b.code));
        assert_eq!(
            s,
            vec![
                RefusalCount {
                    code: "busy".into(),
                    key: Some(k),
                    count: 1
                },
                RefusalCount {
                    code: "not_pinned".into(),
                    key: None,
                    count: 1
                },
                RefusalCount {
                    code: "policy".into(),
                    key: Some(k),
                    count: 2
                },
            ]
        );
        assert_eq!(label(RefuseCode::Unknown(42)), "unknown_42");
    }
}
