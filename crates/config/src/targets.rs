//! A job's DR nodes: the one-target shorthand (`target_host`,
//! `target_key`, `target_dataset`) or `[[job.target]]` tables (fan-out),
//! normalized to [`Target`]s. A job with neither is snapshot-only: it takes
//! its snapshots and runs its source retention, and sends nothing.

use crate::config::Job;
use fjord_zfs::names::{is_within_prefix, validate_dataset};
use serde::Deserialize;

/// One DR node a job replicates to: a `[[job.target]]` table, or the
/// shorthand's three keys (then `name` is empty).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// The target's name within its job (`[A-Za-z0-9_-]+`): names its hold
    /// tag, its report and its metrics label. Empty for the shorthand.
    pub name: String,
    /// The receiver, `host:port`.
    pub host: String,
    /// The receiver's public key (the transport parses it).
    pub key: String,
    /// Where the job's source lands; its descendants land below it.
    pub dataset: String,
}

impl Target {
    /// The tag of the hold that keeps this target's replication base on the
    /// source: `fjord-<job>` for the shorthand (the tag every earlier
    /// version used, so upgraded installs keep their holds), and
    /// `fjord-<job>-<name>` for a `[[job.target]]` table.
    pub fn hold_tag(&self, job: &str) -> String {
        if self.name.is_empty() {
            format!("fjord-{job}")
        } else {
            format!("fjord-{job}-{}", self.name)
        }
    }

    /// How reports, logs and metrics call it: its name, or `default` for
    /// the shorthand.
    pub fn label(&self) -> &str {
        if self.name.is_empty() {
            "default"
        } else {
            &self.name
        }
    }

    /// Where the source dataset `source_child` (the job's `source` or one
    /// of its descendants) lands on this target: `tank/home/a/b` →
    /// `backup/oslo/home/a/b`. `None` if `source_child` is not within
    /// `source`, or the mapped name is not a valid dataset name.
    pub fn target_for(&self, source: &str, source_child: &str) -> Option<String> {
        if !is_within_prefix(source_child, source) {
            return None;
        }
        let below = &source_child[source.len()..]; // "" or "/a/b"
        let target = format!("{}{below}", self.dataset);
        validate_dataset(&target).ok().map(|()| target)
    }
}

/// The job's targets, in config order: the shorthand's one, or its
/// `[[job.target]]` tables; none for a snapshot-only job.
pub fn targets(job: &Job) -> Vec<Target> {
    if shorthand_given(job) {
        vec![Target {
            name: String::new(),
            host: job.target_host.clone(),
            key: job.target_key.clone(),
            dataset: job.target_dataset.clone(),
        }]
    } else {
        job.target_tables.clone()
    }
}

/// Whether any of the shorthand's keys is set.
fn shorthand_given(job: &Job) -> bool {
    !(job.target_host.is_empty() && job.target_key.is_empty() && job.target_dataset.is_empty())
}

/// The first problem with the job's targets: (key below the job, what is
/// wrong and what to do).
pub(crate) fn check(job: &Job) -> Result<(), (String, String)> {
    let shorthand = [
        ("target_host", &job.target_host),
        ("target_key", &job.target_key),
        ("target_dataset", &job.target_dataset),
    ];
    if shorthand_given(job) {
        if !job.target_tables.is_empty() {
            return Err((
                "target".into(),
                "both target_host/target_key/target_dataset and [[job.target]] tables are given: use one form; to replicate to several DR nodes, move the three keys into a [[job.target]] table (name, host, key, dataset)".into(),
            ));
        }
        if let Some((key, _)) = shorthand.iter().find(|(_, v)| v.is_empty()) {
            return Err((
                (*key).into(),
                "is missing: target_host, target_key and target_dataset go together (one DR node); give all three, or none for a snapshot-only job".into(),
            ));
        }
        return check_one(&targets(job)[0], "target_");
    }
    for (i, t) in job.target_tables.iter().enumerate() {
        let key = |k: &str| format!("target[{}].{k}", i + 1);
        if !crate::config::valid_name(&t.name) {
            return Err((
                key("name"),
                format!(
                    "{:?} is not a target name: use letters, digits, '_' and '-'",
                    t.name
                ),
            ));
        }
        if job.target_tables[..i].iter().any(|o| o.name == t.name) {
            return Err((
                key("name"),
                format!(
                    "a target named {:?} is already defined in this job: target names must be unique within a job",
                    t.name
                ),
            ));
        }
        check_one(t, &format!("target[{}].", i + 1))?;
        if let Some(o) = job.target_tables[..i]
            .iter()
            .find(|o| o.host == t.host && o.dataset == t.dataset)
        {
            return Err((
                key("dataset"),
                format!(
                    "targets {:?} and {:?} both write {} on {}: give each target its own DR node or dataset",
                    o.name, t.name, t.dataset, t.host
                ),
            ));
        }
    }
    Ok(())
}

/// One target's values; `prefix` makes the keys (`target_` for the
/// shorthand's `target_host`, `target[2].` for a table's `host`).
fn check_one(t: &Target, prefix: &str) -> Result<(), (String, String)> {
    let key = |k: &str| format!("{prefix}{k}");
    validate_dataset(&t.dataset).map_err(|e| (key("dataset"), e.to_string()))?;
    let port_ok = t
        .host
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
    if !port_ok {
        return Err((
            key("host"),
            format!("{:?} is not host:port, such as \"10.10.0.2:7450\"", t.host),
        ));
    }
    if t.key.trim().is_empty() {
        return Err((
            key("key"),
            "is empty: give the receiver's public key".into(),
        ));
    }
    Ok(())
}

/// Whether two jobs' targets would write the same datasets (one inside a
/// recursive other's): they would roll back and prune each other's
/// snapshots. Returns the clashing pair's (dataset, host).
pub(crate) fn clash(a: &Job, b: &Job) -> Option<(String, String)> {
    for ta in targets(a) {
        for tb in targets(b) {
            let same = ta.dataset == tb.dataset
                || (a.recursive && is_within_prefix(&tb.dataset, &ta.dataset))
                || (b.recursive && is_within_prefix(&ta.dataset, &tb.dataset));
            if same && ta.host == tb.host {
                return Some((tb.dataset, tb.host));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::{ConfigError, SendConfig};
    use std::path::Path;

    fn send(jobs: &str) -> Result<SendConfig, ConfigError> {
        let text = format!("key = \"/k\"\nstate_dir = \"/s\"\n{jobs}");
        SendConfig::from_toml(Path::new("/etc/fjord/send.toml"), &text)
    }

    fn invalid(jobs: &str) -> (String, String) {
        match send(jobs) {
            Err(ConfigError::Invalid { key, message, .. }) => (key, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    const TWO: &str = r#"
[[job]]
name = "home"
source = "tank/home"
[[job.target]]
name = "oslo"
host = "10.10.0.2:7450"
key = "AAAA"
dataset = "backup/oslo/home"
[[job.target]]
name = "bergen"
host = "10.10.0.3:7450"
key = "BBBB"
dataset = "backup/home"
"#;

    #[test]
    fn tables_give_named_targets_with_their_own_hold_tags() {
        let c = send(TWO).unwrap();
        let t = c.jobs[0].targets();
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].name.as_str(), t[1].name.as_str()), ("oslo", "bergen"));
        assert_eq!(t[0].hold_tag("home"), "fjord-home-oslo");
        assert_eq!(t[1].hold_tag("home"), "fjord-home-bergen");
        assert_eq!(
            t[1].target_for("tank/home", "tank/home/a").as_deref(),
            Some("backup/home/a")
        );
    }

    #[test]
    fn the_shorthand_is_one_unnamed_target_keeping_the_old_hold_tag() {
        let c = send(
            "[[job]]\nname = \"home\"\nsource = \"tank/home\"\ntarget_host = \"h:1\"\ntarget_key = \"K\"\ntarget_dataset = \"b/home\"\n",
        )
        .unwrap();
        let t = c.jobs[0].targets();
        assert_eq!(t.len(), 1);
        assert_eq!((t[0].name.as_str(), t[0].label()), ("", "default"));
        assert_eq!(t[0].hold_tag("home"), "fjord-home");
        assert_eq!(
            (t[0].host.as_str(), t[0].dataset.as_str()),
            ("h:1", "b/home")
        );
    }

    #[test]
    fn no_target_is_a_snapshot_only_job() {
        let c = send("[[job]]\nname = \"home\"\nsource = \"tank/home\"\n").unwrap();
        assert!(c.jobs[0].targets().is_empty());
    }

    #[test]
    fn a_partial_shorthand_names_the_missing_key() {
        let (key, msg) =
            invalid("[[job]]\nname = \"home\"\nsource = \"tank/home\"\ntarget_host = \"h:1\"\ntarget_dataset = \"b/h\"\n");
        assert_eq!(key, "job[1].target_key");
        assert!(msg.contains("go together"), "{msg}");
    }

    #[test]
    fn mixing_the_shorthand_and_tables_is_refused_with_the_fix() {
        let mixed = TWO.replace(
            "source = \"tank/home\"\n",
            "source = \"tank/home\"\ntarget_host = \"h:1\"\ntarget_key = \"K\"\ntarget_dataset = \"b/h\"\n",
        );
        let (key, msg) = invalid(&mixed);
        assert_eq!(key, "job[1].target");
        assert!(msg.contains("move the three keys"), "{msg}");
    }

    #[test]
    fn target_names_are_checked_and_unique() {
        let (key, _) = invalid(&TWO.replace("\"bergen\"", "\"oslo\""));
        assert_eq!(key, "job[1].target[2].name");
        let (key, _) = invalid(&TWO.replace("\"bergen\"", "\"ber gen\""));
        assert_eq!(key, "job[1].target[2].name");
        let (key, msg) = invalid(&TWO.replace("10.10.0.3:7450", "10.10.0.3"));
        assert_eq!(key, "job[1].target[2].host");
        assert!(msg.contains("host:port"), "{msg}");
        let (key, _) = invalid(&TWO.replace("\"BBBB\"", "\" \""));
        assert_eq!(key, "job[1].target[2].key");
    }

    #[test]
    fn two_targets_of_a_job_writing_one_dataset_are_refused() {
        let same = TWO
            .replace("10.10.0.3:7450", "10.10.0.2:7450")
            .replace("backup/home\"", "backup/oslo/home\"");
        let (key, msg) = invalid(&same);
        assert_eq!(key, "job[1].target[2].dataset");
        assert!(msg.contains("both write"), "{msg}");
    }

    #[test]
    fn hold_tags_are_unique_across_jobs() {
        let other = "[[job]]\nname = \"home-oslo\"\nsource = \"tank/mail\"\ntarget_host = \"10.10.0.9:7450\"\ntarget_key = \"K\"\ntarget_dataset = \"backup/mail\"\n";
        let (key, msg) = invalid(&format!("{TWO}{other}"));
        assert_eq!(key, "job[2].name");
        assert!(msg.contains("fjord-home-oslo"), "{msg}");
    }

    #[test]
    fn jobs_clash_on_any_of_their_targets() {
        let other = "[[job]]\nname = \"mail\"\nsource = \"tank/mail\"\ntarget_host = \"10.10.0.3:7450\"\ntarget_key = \"K\"\ntarget_dataset = \"backup/home\"\n";
        let (key, msg) = invalid(&format!("{TWO}{other}"));
        assert_eq!(key, "job[1].target_dataset");
        assert!(msg.contains("\"home\" and \"mail\""), "{msg}");
    }
}
