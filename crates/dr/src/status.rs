//! The DR node's own view of its copies, pure: how old each target's
//! newest snapshot is, whether a receive was left partial, and what that
//! means for an operator (ok, warning, critical), as a report, a
//! Prometheus textfile and a Nagios-style check line.
//!
//! The primary's status goes quiet when the primary is down or
//! compromised; this is what the DR node says about itself.

use fjord_config::textfile::escape_label_value;
use std::fmt::Write as _;
use std::time::Duration;

/// What the DR node found on one target dataset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observation {
    /// The client whose prefix holds it.
    pub client: String,
    /// The dataset.
    pub dataset: String,
    /// Its snapshots' count.
    pub snapshots: usize,
    /// The newest snapshot: short name and creation time (Unix seconds).
    pub newest: Option<(String, i64)>,
    /// Bytes of an interrupted receive, if its `receive_resume_token` is
    /// set (a push is resumable, or was abandoned).
    pub partial_bytes: Option<u64>,
}

/// When a copy's age is worth a warning or an alarm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thresholds {
    /// Newest snapshot older than this: warning.
    pub warn_age: Duration,
    /// Newest snapshot older than this: critical.
    pub crit_age: Duration,
}

impl Default for Thresholds {
    /// Pushes run every few minutes: 30 minutes without one is worth a
    /// look, 2 hours an alarm.
    fn default() -> Self {
        Thresholds {
            warn_age: Duration::from_secs(30 * 60),
            crit_age: Duration::from_secs(2 * 3600),
        }
    }
}

/// How a copy (or the whole node) stands, worst last.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// Fresh enough.
    Ok,
    /// Older than the warning age.
    Warning,
    /// Older than the critical age, or no snapshot at all.
    Critical,
}

impl Health {
    /// The Nagios plugin word.
    pub fn word(self) -> &'static str {
        match self {
            Health::Ok => "OK",
            Health::Warning => "WARNING",
            Health::Critical => "CRITICAL",
        }
    }
}

/// One target's status.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct DatasetStatus {
    /// The client whose prefix holds it.
    pub client: String,
    /// The dataset.
    pub dataset: String,
    /// Its snapshots' count.
    pub snapshots: usize,
    /// The newest snapshot's short name.
    pub newest_snapshot: Option<String>,
    /// Its creation time, Unix seconds.
    pub newest_snapshot_time: Option<i64>,
    /// Its age in seconds at the time of the report.
    pub newest_age_secs: Option<i64>,
    /// An interrupted receive is waiting to be resumed.
    pub partial_receive: bool,
    /// Bytes it had received.
    pub partial_bytes: Option<u64>,
    /// How it stands.
    pub health: Health,
    /// Why, in words.
    pub reason: String,
}

/// Assesses one target at `now` (Unix seconds). A dataset with no
/// snapshot at all is a container (a prefix made by hand, a parent), not
/// a copy: it is reported, as ok, unless a receive into it is partial.
pub fn assess(obs: &Observation, thresholds: &Thresholds, now: i64) -> DatasetStatus {
    let age = obs
        .newest
        .as_ref()
        .map(|(_, t)| now.saturating_sub(*t).max(0));
    let (health, reason) = match age {
        None if obs.partial_bytes.is_some() => (
            Health::Critical,
            "no complete snapshot yet; a first full receive is partial".to_string(),
        ),
        None => (
            Health::Ok,
            "no snapshots (a container, not a copy)".to_string(),
        ),
        Some(a) if a >= thresholds.crit_age.as_secs() as i64 => (
            Health::Critical,
            format!(
                "newest snapshot {} old (critical at {})",
                human(a),
                human(thresholds.crit_age.as_secs() as i64)
            ),
        ),
        Some(a) if a >= thresholds.warn_age.as_secs() as i64 => (
            Health::Warning,
            format!(
                "newest snapshot {} old (warning at {})",
                human(a),
                human(thresholds.warn_age.as_secs() as i64)
            ),
        ),
        Some(a) => (Health::Ok, format!("newest snapshot {} old", human(a))),
    };
    DatasetStatus {
        client: obs.client.clone(),
        dataset: obs.dataset.clone(),
        snapshots: obs.snapshots,
        newest_snapshot: obs.newest.as_ref().map(|(n, _)| n.clone()),
        newest_snapshot_time: obs.newest.as_ref().map(|(_, t)| *t),
        newest_age_secs: age,
        partial_receive: obs.partial_bytes.is_some(),
        partial_bytes: obs.partial_bytes,
        health,
        reason,
    }
}

/// `90s`, `12m`, `5h`, `3d`: an age for a person.
pub fn human(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// The node's health (the worst dataset's; ok with no datasets) and one
/// Nagios-style line: `FJORD-DR WARNING - 1 of 3 copies stale: ...`.
pub fn check_line(statuses: &[DatasetStatus]) -> (Health, String) {
    let worst = statuses
        .iter()
        .map(|s| s.health)
        .max()
        .unwrap_or(Health::Ok);
    let copies = statuses
        .iter()
        .filter(|s| s.newest_snapshot.is_some())
        .count();
    let line = if worst == Health::Ok {
        let freshest_lag = statuses
            .iter()
            .filter_map(|s| s.newest_age_secs)
            .max()
            .map(|a| format!(", oldest newest-snapshot {}", human(a)))
            .unwrap_or_default();
        format!("FJORD-DR OK - {copies} copies{freshest_lag}")
    } else {
        let bad: Vec<String> = statuses
            .iter()
            .filter(|s| s.health != Health::Ok)
            .map(|s| format!("{}: {}", s.dataset, s.reason))
            .collect();
        format!(
            "FJORD-DR {} - {} of {} copies: {}",
            worst.word(),
            bad.len(),
            statuses.len(),
            bad.join("; ")
        )
    };
    (worst, line)
}

/// The statuses as Prometheus text at `now`, for node-exporter's textfile
/// collector.
pub fn render_prometheus(statuses: &[DatasetStatus], now: i64) -> String {
    let mut out = String::new();
    let labels = |s: &DatasetStatus| {
        format!(
            "client=\"{}\",dataset=\"{}\"",
            escape_label_value(&s.client),
            escape_label_value(&s.dataset)
        )
    };
    let mut family = |name: &str, help: &str, value: &dyn Fn(&DatasetStatus) -> Option<String>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for s in statuses {
            if let Some(v) = value(s) {
                let _ = writeln!(out, "{name}{{{}}} {v}", labels(s));
            }
        }
    };
    family(
        "fjord_dr_newest_snapshot_timestamp_seconds",
        "Creation time of the newest snapshot of the copy, as the DR node sees it.",
        &|s| s.newest_snapshot_time.map(|t| t.to_string()),
    );
    family(
        "fjord_dr_newest_snapshot_age_seconds",
        "Age of the newest snapshot of the copy when the DR node looked.",
        &|s| s.newest_age_secs.map(|a| a.to_string()),
    );
    family("fjord_dr_snapshots", "Snapshots of the copy.", &|s| {
        Some(s.snapshots.to_string())
    });
    family(
        "fjord_dr_partial_receive",
        "1 if an interrupted receive waits to be resumed.",
        &|s| Some(u8::from(s.partial_receive).to_string()),
    );
    family(
        "fjord_dr_health",
        "0 ok, 1 warning, 2 critical, by the thresholds of fjord-recv status.",
        &|s| Some((s.health as u8).to_string()),
    );
    let _ = writeln!(
        out,
        "# HELP fjord_dr_status_timestamp_seconds When the DR node last looked.\n# TYPE fjord_dr_status_timestamp_seconds gauge\nfjord_dr_status_timestamp_seconds {now}"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_769_904_000;

    fn obs(dataset: &str, age: Option<i64>, partial: Option<u64>) -> Observation {
        Observation {
            client: "oslo".into(),
            dataset: dataset.into(),
            snapshots: usize::from(age.is_some()) * 3,
            newest: age.map(|a| ("fjord_x".to_string(), NOW - a)),
            partial_bytes: partial,
        }
    }

    #[test]
    fn ages_map_to_health_at_the_thresholds() {
        let t = Thresholds::default();
        let h = |age| assess(&obs("b/d", Some(age), None), &t, NOW).health;
        assert_eq!(h(0), Health::Ok);
        assert_eq!(h(30 * 60 - 1), Health::Ok);
        assert_eq!(h(30 * 60), Health::Warning);
        assert_eq!(h(2 * 3600 - 1), Health::Warning);
        assert_eq!(h(2 * 3600), Health::Critical);
        // A clock behind the snapshot is not a negative age.
        assert_eq!(
            assess(&obs("b/d", Some(-50), None), &t, NOW).newest_age_secs,
            Some(0)
        );
    }

    #[test]
    fn containers_are_ok_but_a_partial_first_receive_is_not() {
        let t = Thresholds::default();
        let empty = assess(&obs("backup/oslo", None, None), &t, NOW);
        assert_eq!(empty.health, Health::Ok);
        let partial = assess(&obs("backup/oslo/new", None, Some(4096)), &t, NOW);
        assert_eq!(partial.health, Health::Critical);
        assert!(partial.partial_receive);
        let resumable = assess(&obs("b/d", Some(60), Some(1)), &t, NOW);
        assert_eq!(
            resumable.health,
            Health::Ok,
            "a resumable push on a fresh copy is fine"
        );
    }

    #[test]
    fn the_check_line_names_the_worst_and_every_stale_copy() {
        let t = Thresholds::default();
        let all = [
            assess(&obs("b/fresh", Some(60), None), &t, NOW),
            assess(&obs("b/old", Some(3 * 3600), None), &t, NOW),
            assess(&obs("b/late", Some(40 * 60), None), &t, NOW),
        ];
        let (health, line) = check_line(&all);
        assert_eq!(health, Health::Critical);
        assert!(
            line.starts_with("FJORD-DR CRITICAL - 2 of 3 copies: "),
            "{line}"
        );
        assert!(
            line.contains("b/old: newest snapshot 3h old") && line.contains("b/late"),
            "{line}"
        );
        let (health, line) = check_line(&all[..1]);
        assert_eq!(
            (health, line.as_str()),
            (
                Health::Ok,
                "FJORD-DR OK - 1 copies, oldest newest-snapshot 60s"
            )
        );
        assert_eq!(check_line(&[]).0, Health::Ok);
    }

    #[test]
    fn prometheus_text_has_a_sample_per_copy_and_escapes_labels() {
        let t = Thresholds::default();
        let all = [
            assess(&obs("b/\"q\"", Some(90), None), &t, NOW),
            assess(&obs("b/e", None, None), &t, NOW),
        ];
        let text = render_prometheus(&all, NOW);
        assert!(
            text.contains(
                "fjord_dr_newest_snapshot_age_seconds{client=\"oslo\",dataset=\"b/\\\"q\\\"\"} 90"
            ),
            "{text}"
        );
        assert!(
            !text.contains("fjord_dr_newest_snapshot_age_seconds{client=\"oslo\",dataset=\"b/e\"}")
        );
        assert!(text.contains("fjord_dr_snapshots{client=\"oslo\",dataset=\"b/e\"} 0"));
        assert!(text.contains(&format!("fjord_dr_status_timestamp_seconds {NOW}")));
    }
}
