//! The DR node's own ransomware tripwire, as its status shows it (pure).
//!
//! The receiver meters every incremental stream it verified and gave to
//! `zfs recv` (`fjord_tripwire::meter`) and judges it against that copy's
//! own history; the pages live in `state_dir/tripwire/`. A compromised
//! primary can lie in its own status and metrics, not in the bytes it
//! sends, so this verdict stands when the primary's is silent. The DR node
//! measures the incompressible share only: the rewritten share needs the
//! source pool's creation txg of the base, which only the primary knows.

use crate::status::Health;
use fjord_config::textfile::escape_label_value;
use fjord_tripwire::{Alarm, Page, Sample};
use serde::Serialize;
use std::fmt::Write as _;

/// One copy's tripwire, for `fjord-recv status`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TripwireStatus {
    /// The copy.
    pub dataset: String,
    /// Critical while an alarm waits, else ok.
    pub health: Health,
    /// Why, in words (with the command that clears it).
    pub reason: String,
    /// The last measured receive.
    pub last: Option<Sample>,
    /// The alarm, until acknowledged.
    pub alarm: Option<Alarm>,
    /// Judged receives in the history.
    pub history: usize,
}

/// How `dataset`'s page stands.
pub fn assess(dataset: &str, page: &Page) -> TripwireStatus {
    let (health, reason) = match &page.alarm {
        Some(a) => (
            Health::Critical,
            format!(
                "TRIPWIRE at @{}: {}; after checking the primary, acknowledge with fjord-recv tripwire ack {dataset}",
                a.snapshot, a.reason
            ),
        ),
        None => (
            Health::Ok,
            format!("{} receives in the tripwire's history", page.history.len()),
        ),
    };
    TripwireStatus {
        dataset: dataset.into(),
        health,
        reason,
        last: page.last.clone(),
        alarm: page.alarm.clone(),
        history: page.history.len(),
    }
}

/// Folds the tripwire alarms into `--check`'s verdict and line.
pub fn fold_check(health: Health, line: String, trips: &[TripwireStatus]) -> (Health, String) {
    let bad: Vec<String> = trips
        .iter()
        .filter(|t| t.health != Health::Ok)
        .map(|t| format!("{}: {}", t.dataset, t.reason))
        .collect();
    if bad.is_empty() {
        return (health, line);
    }
    let worst = health.max(Health::Critical);
    let line = line.replacen(health.word(), worst.word(), 1);
    (worst, format!("{line}; tripwire: {}", bad.join("; ")))
}

/// The tripwire as Prometheus text (appended to the DR node's metrics).
pub fn render_prometheus(trips: &[TripwireStatus]) -> String {
    let mut out = String::new();
    type Value<'a> = &'a dyn Fn(&TripwireStatus) -> Option<f64>;
    let families: [(&str, &str, Value); 2] = [
        (
            "fjord_dr_tripwire_tripped",
            "1 while the DR node's ransomware tripwire alarm for the copy waits for `fjord-recv tripwire ack`.",
            &|t| Some(if t.alarm.is_some() { 1.0 } else { 0.0 }),
        ),
        (
            "fjord_dr_tripwire_incompressible_ratio",
            "Share of the last received incremental stream's block bytes that are incompressible, measured by the DR node.",
            &|t| t.last.as_ref().and_then(|s| s.incompressible),
        ),
    ];
    for (name, help, value) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for t in trips {
            if let Some(v) = value(t) {
                let _ = writeln!(
                    out,
                    "{name}{{dataset=\"{}\"}} {v}",
                    escape_label_value(&t.dataset)
                );
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(alarm: bool) -> Page {
        let sample = Sample {
            time: 100,
            snapshot: "fjord_b".into(),
            write_bytes: 1 << 20,
            incompressible: Some(0.8),
            rewritten: None,
        };
        Page {
            history: vec![],
            last: Some(sample),
            alarm: alarm.then(|| Alarm {
                time: 100,
                snapshot: "fjord_b".into(),
                incompressible: Some(0.8),
                rewritten: None,
                reason: "incompressible 80% against a median of 1%".into(),
            }),
        }
    }

    #[test]
    fn an_alarm_makes_the_check_critical_and_names_the_ack() {
        let trips = [
            assess("backup/a", &page(true)),
            assess("backup/b", &page(false)),
        ];
        let (h, line) = fold_check(Health::Ok, "FJORD-DR OK - 2 copies".into(), &trips);
        assert_eq!(h, Health::Critical);
        assert!(line
            .starts_with("FJORD-DR CRITICAL - 2 copies; tripwire: backup/a: TRIPWIRE at @fjord_b"));
        assert!(line.contains("fjord-recv tripwire ack backup/a"));
        assert!(!line.contains("backup/b"));
        let (h, line) = fold_check(Health::Warning, "FJORD-DR WARNING - x".into(), &trips[1..]);
        assert_eq!(
            (h, line.as_str()),
            (Health::Warning, "FJORD-DR WARNING - x")
        );
    }

    #[test]
    fn metrics_show_the_alarm_and_the_share_per_copy() {
        let text = render_prometheus(&[
            assess("backup/a", &page(true)),
            assess("backup/b", &page(false)),
        ]);
        assert!(text.contains("fjord_dr_tripwire_tripped{dataset=\"backup/a\"} 1\n"));
        assert!(text.contains("fjord_dr_tripwire_tripped{dataset=\"backup/b\"} 0\n"));
        assert!(text.contains("fjord_dr_tripwire_incompressible_ratio{dataset=\"backup/a\"} 0.8\n"));
    }
}
