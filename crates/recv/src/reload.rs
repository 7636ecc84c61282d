//! SIGHUP for `fjord-recv serve --config`: what a reload of the config
//! file decides, as a pure function of the config in force and what was
//! loaded ([`decide`]). The edge (the signal, reading the file, swapping
//! the policy and the pinned keys) is in `serve`.
//!
//! A reload changes who may connect (`[[client]]` keys) and what each
//! client may do (prefixes, grants, retention, `min_age`, `[recv]`): a new
//! connection, offer or request is judged by the new config; a transfer
//! already running goes on with the sink it opened. Keys that need a new
//! socket, a new key or new limits (`listen`, `key`, `chunk_cache`,
//! `[limits]`, `max_concurrent`, `grace`, `idle_timeout`) keep their old
//! values until a restart; the reload says which ones differ.

use fjord_config::config::{Client, RecvConfig};
use fjord_proto::PublicKey;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// What the DR node decides requests by: each pinned key's `[[client]]`,
/// and the config for its policy (`min_age`, retention, `[recv]`).
#[derive(Clone, Debug)]
pub struct Policy {
    /// Each allowed key's client.
    pub clients: HashMap<PublicKey, Client>,
    /// The config the clients came from.
    pub config: Arc<RecvConfig>,
}

impl Policy {
    /// The policy of `config`: every client's key parsed. The error names
    /// the file, the client and its `key`.
    pub fn from_config(config: RecvConfig, path: &Path) -> Result<Policy, String> {
        let mut clients = HashMap::new();
        for (i, c) in config.clients.iter().enumerate() {
            let key: PublicKey = c.key.parse().map_err(|e| {
                format!(
                    "{}: client[{}].key (client {}): {e}",
                    path.display(),
                    i + 1,
                    c.name
                )
            })?;
            // Two clients with one key are refused by the config's own checks.
            clients.insert(key, c.clone());
        }
        Ok(Policy {
            clients,
            config: Arc::new(config),
        })
    }

    /// The pinned keys, for the TLS handshake.
    pub fn keys(&self) -> Vec<PublicKey> {
        self.clients.keys().copied().collect()
    }
}

/// What a reload changed, for the log line.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// Clients (by name) whose keys are new.
    pub added: Vec<String>,
    /// Clients (by name) whose keys are no longer pinned.
    pub removed: Vec<String>,
    /// Clients with the same key whose grants changed (name, prefixes,
    /// prune, rollback, retention).
    pub changed: Vec<String>,
    /// The node's own policy changed (`min_age`, retention,
    /// `prefix_retention`, `[recv]`).
    pub policy_changed: bool,
    /// Keys that differ but take effect only at a restart.
    pub need_restart: Vec<&'static str>,
}

impl Changes {
    /// True when the reload changed nothing in force.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.changed.is_empty()
            && !self.policy_changed
    }
}

impl std::fmt::Display for Changes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "none".to_string()
            } else {
                v.join(", ")
            }
        };
        if self.is_empty() {
            f.write_str("no client or policy change")?;
        } else {
            write!(
                f,
                "clients added: {}; removed: {}; changed: {}; policy {}",
                list(&self.added),
                list(&self.removed),
                list(&self.changed),
                if self.policy_changed {
                    "changed"
                } else {
                    "unchanged"
                }
            )?;
        }
        if !self.need_restart.is_empty() {
            write!(
                f,
                "; changed but kept until a restart: {}",
                self.need_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

/// What to do with a reloaded config.
#[derive(Debug)]
pub enum Reload {
    /// Put `policy` in force; `changes` says what differs.
    Apply {
        /// The new policy.
        policy: Policy,
        /// What differs from the old one.
        changes: Changes,
    },
    /// Keep the old policy; `error` names the file and key.
    Reject {
        /// Why, naming the file and key.
        error: String,
    },
}

/// The decision for a reload: `loaded` is what reading `path` gave (its
/// error, if any, already names the file and key), `old` the policy in
/// force. A file that does not load, or a client key that does not
/// parse, is rejected and the old policy stays.
pub fn decide(old: &Policy, loaded: Result<RecvConfig, String>, path: &Path) -> Reload {
    let new = match loaded.and_then(|c| Policy::from_config(c, path)) {
        Ok(p) => p,
        Err(error) => return Reload::Reject { error },
    };
    let changes = changes(old, &new);
    Reload::Apply {
        policy: new,
        changes,
    }
}

fn changes(old: &Policy, new: &Policy) -> Changes {
    let mut c = Changes::default();
    for (key, client) in &new.clients {
        match old.clients.get(key) {
            None => c.added.push(client.name.clone()),
            Some(before) if before != client => c.changed.push(client.name.clone()),
            Some(_) => {}
        }
    }
    for (key, client) in &old.clients {
        if !new.clients.contains_key(key) {
            c.removed.push(client.name.clone());
        }
    }
    c.added.sort();
    c.removed.sort();
    c.changed.sort();
    let (o, n) = (&*old.config, &*new.config);
    c.policy_changed = o.min_age != n.min_age
        || o.retention != n.retention
        || o.prefix_retention != n.prefix_retention
        || o.recv != n.recv;
    let restart: [(&'static str, bool); 7] = [
        ("listen", o.listen != n.listen),
        ("key", o.key != n.key),
        ("chunk_cache", o.chunk_cache != n.chunk_cache),
        ("limits", o.limits != n.limits),
        ("max_concurrent", o.max_concurrent != n.max_concurrent),
        ("grace", o.grace != n.grace),
        ("idle_timeout", o.idle_timeout != n.idle_timeout),
    ];
    c.need_restart = restart
        .into_iter()
        .filter(|(_, differs)| *differs)
        .map(|(k, _)| k)
        .collect();
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    const B: &str = "BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBA=";
    const C: &str = "CCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCCA=";

    fn config(extra: &str, clients: &[(&str, &str, &str)]) -> RecvConfig {
        let mut text =
            format!("listen = \"127.0.0.1:7450\"\nkey = \"/etc/fjord/recv.key\"\n{extra}\n");
        for (name, key, prefix) in clients {
            text.push_str(&format!(
                "[[client]]\nname = \"{name}\"\nkey = \"{key}\"\nprefixes = [\"{prefix}\"]\n"
            ));
        }
        RecvConfig::from_toml(Path::new("recv.toml"), &text).expect("test config")
    }

    fn policy(c: RecvConfig) -> Policy {
        Policy::from_config(c, Path::new("recv.toml")).expect("test policy")
    }

    fn apply(r: Reload) -> (Policy, Changes) {
        match r {
            Reload::Apply { policy, changes } => (policy, changes),
            Reload::Reject { error } => panic!("rejected: {error}"),
        }
    }

    #[test]
    fn added_removed_and_changed_clients_are_named() {
        let old = policy(config(
            "",
            &[("oslo", A, "dst/oslo"), ("bergen", B, "dst/bergen")],
        ));
        let loaded = config("", &[("oslo", A, "dst/oslo2"), ("tromso", C, "dst/tromso")]);
        let (new, changes) = apply(decide(&old, Ok(loaded), Path::new("recv.toml")));
        assert_eq!(changes.added, vec!["tromso"]);
        assert_eq!(changes.removed, vec!["bergen"]);
        assert_eq!(changes.changed, vec!["oslo"]);
        assert!(!changes.policy_changed);
        assert!(changes.need_restart.is_empty());
        let mut keys: Vec<String> = new.keys().iter().map(|k| k.to_string()).collect();
        keys.sort();
        assert_eq!(keys, vec![A.to_string(), C.to_string()]);
        assert_eq!(
            changes.to_string(),
            "clients added: tromso; removed: bergen; changed: oslo; policy unchanged"
        );
    }

    #[test]
    fn the_same_file_changes_nothing() {
        let c = config("", &[("oslo", A, "dst/oslo")]);
        let old = policy(c.clone());
        let (_, changes) = apply(decide(&old, Ok(c), Path::new("recv.toml")));
        assert!(changes.is_empty(), "{changes:?}");
        assert_eq!(changes.to_string(), "no client or policy change");
    }

    #[test]
    fn policy_keys_are_applied_and_socket_keys_wait_for_a_restart() {
        let old = policy(config("", &[("oslo", A, "dst/oslo")]));
        let loaded = config(
            "min_age = \"2h\"\nmax_concurrent = 3\n",
            &[("oslo", A, "dst/oslo")],
        );
        let (new, changes) = apply(decide(&old, Ok(loaded), Path::new("recv.toml")));
        assert!(changes.policy_changed);
        assert!(!changes.is_empty());
        assert_eq!(changes.need_restart, vec!["max_concurrent"]);
        assert_eq!(new.config.min_age, std::time::Duration::from_secs(7200));
        assert!(changes
            .to_string()
            .ends_with("policy changed; changed but kept until a restart: max_concurrent"));
    }

    #[test]
    fn a_file_that_fails_to_load_is_rejected_with_its_error() {
        let old = policy(config("", &[("oslo", A, "dst/oslo")]));
        let r = decide(
            &old,
            Err("recv.toml: min_age: invalid duration".into()),
            Path::new("recv.toml"),
        );
        match r {
            Reload::Reject { error } => assert_eq!(error, "recv.toml: min_age: invalid duration"),
            Reload::Apply { .. } => panic!("applied a config that did not load"),
        }
    }

    #[test]
    fn a_bad_client_key_is_rejected_naming_file_client_and_key() {
        let old = policy(config("", &[("oslo", A, "dst/oslo")]));
        let loaded = config(
            "",
            &[("oslo", A, "dst/oslo"), ("bad", "not-a-key", "dst/b")],
        );
        match decide(&old, Ok(loaded), Path::new("/etc/fjord/recv.toml")) {
            Reload::Reject { error } => assert!(
                error.starts_with("/etc/fjord/recv.toml: client[2].key (client bad): "),
                "{error}"
            ),
            Reload::Apply { .. } => panic!("applied a bad key"),
        }
    }
}
