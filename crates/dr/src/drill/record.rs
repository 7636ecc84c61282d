//! A drill's outcome as the DR node keeps it (one JSON file per copy in
//! the receiver's state directory), and what the last drills mean for
//! `fjord-recv status` (a warning when the last drill failed or the last
//! good one is too old) and for its Prometheus text.

use crate::promote::{format_time, LogPosition};
use crate::status::{human, Health};
use fjord_config::textfile::escape_label_value;
use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// How a drill ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The clone was made and mounted, and the check passed.
    Ok,
    /// Something failed: the clone, the mount, or the check.
    Failed,
}

impl Outcome {
    /// `ok` / `failed`.
    pub fn word(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
        }
    }
}

/// One drill, as recorded.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DrillRecord {
    /// The copy.
    pub dataset: String,
    /// How it ended.
    pub result: Outcome,
    /// When it started, Unix seconds.
    pub started_at: i64,
    /// How long it took, seconds.
    pub duration_secs: f64,
    /// The snapshot drilled (short name), once chosen.
    pub snapshot: Option<String>,
    /// Its creation time, Unix seconds.
    pub snapshot_creation: Option<i64>,
    /// Its age when the drill started, seconds.
    pub snapshot_age_secs: Option<i64>,
    /// The database log position recorded with it.
    pub log_position: Option<LogPosition>,
    /// The clone.
    pub clone: Option<String>,
    /// The check, in words.
    pub check: String,
    /// The end of what the check printed (stdout and stderr).
    pub output_tail: String,
    /// Why it failed.
    pub error: Option<String>,
    /// The clone is gone again (false: destroying it failed; see `error`).
    pub clone_destroyed: bool,
    /// The last drill of this copy that passed, Unix seconds (this one's
    /// start when it passed).
    pub last_success_at: Option<i64>,
}

impl DrillRecord {
    /// The record to keep after this drill: carries the last success of
    /// `previous` when this one failed.
    pub fn after(mut self, previous: Option<&DrillRecord>) -> DrillRecord {
        self.last_success_at = match self.result {
            Outcome::Ok => Some(self.started_at),
            Outcome::Failed => previous.and_then(|p| p.last_success_at),
        };
        self
    }
}

/// At most the last `max` bytes of `text`, cut at a line start when one
/// is near, never inside a character.
pub fn tail(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut start = text.len() - max;
    while !text.is_char_boundary(start) {
        start += 1;
    }
    let cut = &text[start..];
    match cut.find('\n') {
        Some(i) if i + 1 < cut.len() && i < max / 4 => cut[i + 1..].to_string(),
        _ => cut.to_string(),
    }
}

/// The file name of `dataset`'s record: '/' becomes '@' (which no dataset
/// name has), so that each copy has its own file.
pub fn file_name(dataset: &str) -> String {
    format!("{}.json", dataset.replace('/', "@"))
}

/// How one configured copy's drills stand.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DrillStatus {
    /// The copy.
    pub dataset: String,
    /// The last drill, if any.
    pub last: Option<DrillRecord>,
    /// Age of the last good drill, seconds.
    pub last_success_age_secs: Option<i64>,
    /// Ok, or a warning (drills never make the node critical).
    pub health: Health,
    /// Why, in words.
    pub reason: String,
}

/// Assesses the drills of `dataset` at `now`: never drilled, a failed last
/// drill, or a last good drill older than `warn_age` seconds is a warning.
pub fn assess(dataset: &str, last: Option<&DrillRecord>, warn_age: i64, now: i64) -> DrillStatus {
    let success_age = last
        .and_then(|r| r.last_success_at)
        .map(|t| now.saturating_sub(t).max(0));
    let (health, reason) = match (last, success_age) {
        (None, _) => (Health::Warning, "never drilled".to_string()),
        (Some(r), _) if r.result == Outcome::Failed => (
            Health::Warning,
            format!(
                "the last drill failed at {}: {}",
                format_time(r.started_at),
                r.error.as_deref().unwrap_or("see fjord-recv status --json")
            ),
        ),
        (Some(_), Some(a)) if a >= warn_age => (
            Health::Warning,
            format!(
                "last good drill {} ago (warning at {})",
                human(a),
                human(warn_age)
            ),
        ),
        (Some(r), a) => (
            Health::Ok,
            format!(
                "last drill ok, {} ago, of @{}",
                human(a.unwrap_or(0)),
                r.snapshot.as_deref().unwrap_or("?")
            ),
        ),
    };
    DrillStatus {
        dataset: dataset.into(),
        last: last.cloned(),
        last_success_age_secs: success_age,
        health,
        reason,
    }
}

/// The copies' check (`health`, `line` from [`crate::status::check_line`])
/// with the drills folded in: a drill's warning makes an ok node a
/// warning, and the line names it.
pub fn fold_check(health: Health, line: String, drills: &[DrillStatus]) -> (Health, String) {
    let bad: Vec<String> = drills
        .iter()
        .filter(|d| d.health != Health::Ok)
        .map(|d| format!("{}: {}", d.dataset, d.reason))
        .collect();
    if bad.is_empty() {
        if drills.is_empty() {
            return (health, line);
        }
        return (health, format!("{line}; {} drills ok", drills.len()));
    }
    let worst = health.max(Health::Warning);
    let line = if health == Health::Ok {
        // "FJORD-DR OK - ..." becomes "FJORD-DR WARNING - ..."
        line.replacen(Health::Ok.word(), worst.word(), 1)
    } else {
        line
    };
    (worst, format!("{line}; drills: {}", bad.join("; ")))
}

/// The drills as Prometheus text (appended to the DR node's metrics file).
pub fn render_prometheus(drills: &[DrillStatus]) -> String {
    let mut out = String::new();
    let records: Vec<&DrillRecord> = drills.iter().filter_map(|d| d.last.as_ref()).collect();
    let mut family = |name: &str, help: &str, value: &dyn Fn(&DrillRecord) -> Option<String>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for r in &records {
            if let Some(v) = value(r) {
                let _ = writeln!(
                    out,
                    "{name}{{dataset=\"{}\"}} {v}",
                    escape_label_value(&r.dataset)
                );
            }
        }
    };
    family(
        "fjord_recv_drill_last_run_timestamp_seconds",
        "When the last restore drill of the copy started.",
        &|r| Some(r.started_at.to_string()),
    );
    family(
        "fjord_recv_drill_last_success_timestamp_seconds",
        "When the last restore drill of the copy that passed started.",
        &|r| r.last_success_at.map(|t| t.to_string()),
    );
    family(
        "fjord_recv_drill_duration_seconds",
        "How long the last restore drill of the copy took.",
        &|r| Some(format!("{:.3}", r.duration_secs)),
    );
    family(
        "fjord_recv_drill_snapshot_age_seconds",
        "Age of the snapshot the last restore drill cloned, when it ran.",
        &|r| r.snapshot_age_secs.map(|a| a.to_string()),
    );
    let name = "fjord_recv_drill_last_result";
    let _ = writeln!(
        out,
        "# HELP {name} 1 for the last restore drill's result, 0 for the other.\n# TYPE {name} gauge"
    );
    for r in &records {
        for o in [Outcome::Ok, Outcome::Failed] {
            let _ = writeln!(
                out,
                "{name}{{dataset=\"{}\",result=\"{}\"}} {}",
                escape_label_value(&r.dataset),
                o.word(),
                u8::from(r.result == o)
            );
        }
    }
    out
}
