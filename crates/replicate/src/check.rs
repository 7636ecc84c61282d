//! `fjord-send status --check`: the primary's jobs as one Nagios-style
//! verdict, from their status files. Mirrors `fjord-recv status --check`
//! (the DR node's view), so that both sides can be watched alike.

use crate::status::{result, JobStatus};
use std::time::Duration;

/// How a job, or all of them, look to a monitoring check. Ordered from
/// best to worst: the verdict is the worst job's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Fine.
    Ok,
    /// Look soon.
    Warning,
    /// The check could not tell (a status file that cannot be read).
    Unknown,
    /// Act now.
    Critical,
}

impl Level {
    /// The word Nagios plugins print.
    pub fn word(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warning => "WARNING",
            Level::Unknown => "UNKNOWN",
            Level::Critical => "CRITICAL",
        }
    }
}

/// Replication lag past which a job is a warning, and critical.
#[derive(Clone, Copy, Debug)]
pub struct LagThresholds {
    /// Warning past this.
    pub warn: Duration,
    /// Critical past this.
    pub crit: Duration,
}

/// `"never"`: a job without a status file (no DR copy yet).
pub const NEVER: &str = "never";
/// `"unreadable"`: a job whose status file cannot be read.
pub const UNREADABLE: &str = "unreadable";

/// One job's level and, if not ok, why.
/// A job with `[[job.target]]` tables is as healthy as its worst target,
/// named in the reason; a snapshot-only job has no lag to judge.
pub fn assess_job(s: &JobStatus, t: &LagThresholds, now: i64) -> (Level, Option<String>) {
    if s.targets.iter().any(|t| !t.name.is_empty()) && s.last_result != NEVER {
        let worst = s
            .targets
            .iter()
            .map(|target| {
                let mut view = s.clone();
                view.targets.clear();
                view.last_result = target.last_result.clone();
                view.newest_replicated_snapshot_time = target.newest_replicated_snapshot_time;
                let (level, why) = assess_one(&view, t, now);
                (level, why.map(|w| format!("target {}: {w}", target.name)))
            })
            .max_by_key(|(level, _)| *level);
        if let Some(w) = worst {
            return w;
        }
    }
    assess_one(s, t, now)
}

fn assess_one(s: &JobStatus, t: &LagThresholds, now: i64) -> (Level, Option<String>) {
    match s.last_result.as_str() {
        NEVER => return (Level::Critical, Some("never ran: no DR copy".into())),
        UNREADABLE => return (Level::Unknown, Some("status file unreadable".into())),
        _ => {}
    }
    let lag = s.newest_replicated_snapshot_time.map(|t| (now - t).max(0));
    let by_lag = match lag {
        None if s.snapshot_only => (Level::Ok, None),
        None => (
            Level::Critical,
            Some("no snapshot known on the DR node".to_string()),
        ),
        Some(l) if l as u64 > t.crit.as_secs() => (
            Level::Critical,
            Some(format!(
                "lag {} > {}",
                human(l),
                human(t.crit.as_secs() as i64)
            )),
        ),
        Some(l) if l as u64 > t.warn.as_secs() => (
            Level::Warning,
            Some(format!(
                "lag {} > {}",
                human(l),
                human(t.warn.as_secs() as i64)
            )),
        ),
        Some(_) => (Level::Ok, None),
    };
    let by_result = match s.last_result.as_str() {
        result::OK => (Level::Ok, None),
        // The copy and the source no longer share a snapshot: an
        // operator must decide (push --force or a new full send).
        result::DIVERGED => (Level::Critical, Some("diverged".to_string())),
        r => (Level::Warning, Some(format!("last push {r}"))),
    };
    let level = by_lag.0.max(by_result.0);
    let why: Vec<String> = [by_result.1, by_lag.1].into_iter().flatten().collect();
    (level, (!why.is_empty()).then(|| why.join(", ")))
}

/// The verdict over every job (the worst; ok with no job) and one line:
/// `FJORD-SEND WARNING - 1 of 2 jobs: home: lag 45m > 30m`.
pub fn check_line(statuses: &[JobStatus], t: &LagThresholds, now: i64) -> (Level, String) {
    let assessed: Vec<(&JobStatus, Level, Option<String>)> = statuses
        .iter()
        .map(|s| {
            let (l, why) = assess_job(s, t, now);
            (s, l, why)
        })
        .collect();
    let worst = assessed
        .iter()
        .map(|(_, l, _)| *l)
        .max()
        .unwrap_or(Level::Ok);
    if worst == Level::Ok {
        let lag = statuses
            .iter()
            .filter_map(|s| s.newest_replicated_snapshot_time)
            .map(|t| (now - t).max(0))
            .max()
            .map(|l| format!(", largest lag {}", human(l)))
            .unwrap_or_default();
        return (
            worst,
            format!("FJORD-SEND OK - {} jobs{lag}", statuses.len()),
        );
    }
    let bad: Vec<String> = assessed
        .iter()
        .filter(|(_, l, _)| *l != Level::Ok)
        .map(|(s, _, why)| format!("{}: {}", s.job, why.as_deref().unwrap_or("")))
        .collect();
    let line = format!(
        "FJORD-SEND {} - {} of {} jobs: {}",
        worst.word(),
        bad.len(),
        statuses.len(),
        bad.join("; ")
    );
    (worst, line)
}

/// `90s`, `12m`, `5h`, `3d`: an age for a person.
fn human(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 2 * 3600 => format!("{}m", s / 60),
        s if s < 2 * 86_400 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;
    const T: LagThresholds = LagThresholds {
        warn: Duration::from_secs(1800),
        crit: Duration::from_secs(7200),
    };

    fn job(name: &str, result: &str, lag: Option<i64>) -> JobStatus {
        JobStatus {
            job: name.into(),
            last_attempt: NOW - 60,
            last_success: Some(NOW - 60),
            last_result: result.into(),
            last_error: None,
            bytes: 0,
            bytes_resent: 0,
            duration_secs: 1.0,
            newest_replicated_snapshot_time: lag.map(|l| NOW - l),
            warnings: Vec::new(),
            targets: Vec::new(),
            snapshot_only: false,
        }
    }

    #[test]
    fn lag_maps_to_levels_at_the_thresholds() {
        let level = |lag| assess_job(&job("a", "ok", Some(lag)), &T, NOW).0;
        assert_eq!(level(1800), Level::Ok);
        assert_eq!(level(1801), Level::Warning);
        assert_eq!(level(7200), Level::Warning);
        assert_eq!(level(7201), Level::Critical);
    }

    #[test]
    fn results_raise_the_level_and_say_why() {
        let a = |result, lag| assess_job(&job("a", result, lag), &T, NOW);
        assert_eq!(
            a("failed", Some(60)),
            (Level::Warning, Some("last push failed".into()))
        );
        assert_eq!(a("diverged", Some(60)).0, Level::Critical);
        assert_eq!(
            a("failed", Some(10_800)),
            (
                Level::Critical,
                Some("last push failed, lag 3h > 2h".into())
            )
        );
        assert_eq!(a(NEVER, None).0, Level::Critical);
        assert_eq!(a(UNREADABLE, None).0, Level::Unknown);
        assert_eq!(a("ok", None).0, Level::Critical);
    }

    #[test]
    fn the_line_names_the_worst_and_every_unhealthy_job() {
        let (l, line) = check_line(
            &[job("a", "ok", Some(60)), job("b", "ok", Some(300))],
            &T,
            NOW,
        );
        assert_eq!(
            (l, line.as_str()),
            (Level::Ok, "FJORD-SEND OK - 2 jobs, largest lag 5m")
        );
        let (l, line) = check_line(
            &[
                job("a", "ok", Some(60)),
                job("home", "ok", Some(2700)),
                job("db", UNREADABLE, None),
            ],
            &T,
            NOW,
        );
        assert_eq!(l, Level::Unknown);
        assert_eq!(
            line,
            "FJORD-SEND UNKNOWN - 2 of 3 jobs: home: lag 45m > 30m; db: status file unreadable"
        );
        assert_eq!(
            check_line(&[], &T, NOW),
            (Level::Ok, "FJORD-SEND OK - 0 jobs".into())
        );
    }

    #[test]
    fn a_fan_out_job_is_as_healthy_as_its_worst_target_named() {
        use crate::status::TargetStatus;
        let target = |name: &str, result: &str, lag: i64| TargetStatus {
            name: name.into(),
            last_result: result.into(),
            last_error: None,
            last_success: Some(NOW - 60),
            newest_replicated_snapshot_time: Some(NOW - lag),
        };
        let mut s = job("home", "failed", Some(10_800));
        s.targets = vec![target("oslo", "ok", 60), target("bergen", "failed", 10_800)];
        assert_eq!(
            assess_job(&s, &T, NOW),
            (
                Level::Critical,
                Some("target bergen: last push failed, lag 3h > 2h".into())
            )
        );
        s.targets[1] = target("bergen", "ok", 60);
        assert_eq!(assess_job(&s, &T, NOW), (Level::Ok, None));
    }

    #[test]
    fn a_snapshot_only_job_has_no_lag_to_judge() {
        let mut s = job("scratch", "ok", None);
        s.snapshot_only = true;
        assert_eq!(assess_job(&s, &T, NOW), (Level::Ok, None));
        s.last_result = "failed".into();
        assert_eq!(assess_job(&s, &T, NOW).0, Level::Warning);
    }
}
