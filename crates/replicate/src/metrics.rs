//! Prometheus text exposition of the job statuses, for node-exporter's
//! textfile collector (`metrics_file` in the config).

use crate::status::{result, write_atomic, JobStatus};
use std::fmt::Write as _;
use std::path::Path;

pub use fjord_config::textfile::escape_label_value;

struct Family<'a> {
    name: &'static str,
    help: &'static str,
    value: &'a dyn Fn(&JobStatus) -> Option<String>,
    /// One sample per named target (label `target`) for a fan-out job.
    per_target: bool,
}

/// The label sets and values a family's samples come from: the job, or,
/// for a `per_target` family of a job with `[[job.target]]` tables, each
/// target (its own result, success and lag over the job's).
fn rows(s: &JobStatus, per_target: bool) -> Vec<(String, JobStatus)> {
    let job = format!("job=\"{}\"", escape_label_value(&s.job));
    let named = s.targets.iter().any(|t| !t.name.is_empty());
    if !(per_target && named) {
        return vec![(job, s.clone())];
    }
    s.targets
        .iter()
        .map(|t| {
            let mut view = s.clone();
            view.last_result = t.last_result.clone();
            view.last_error = t.last_error.clone();
            view.last_success = t.last_success;
            view.newest_replicated_snapshot_time = t.newest_replicated_snapshot_time;
            let labels = format!("{job},target=\"{}\"", escape_label_value(&t.name));
            (labels, view)
        })
        .collect()
}

/// Renders `statuses` as Prometheus text at time `now` (Unix seconds).
/// A job with no value for a metric (never succeeded, nothing replicated
/// yet) has no sample in that family. `fjord_job_last_result` has one
/// sample per known result (and one for an unknown last result), 1 for
/// the last one and 0 for the others, so that alerts can compare with
/// `== 1` without missing series.
pub fn render_prometheus(statuses: &[JobStatus], now: i64) -> String {
    let families: [Family; 6] = [
        Family {
            name: "fjord_job_last_attempt_timestamp_seconds",
            help: "Unix time the job's last run started.",
            value: &|s| Some(s.last_attempt.to_string()),
            per_target: false,
        },
        Family {
            name: "fjord_job_last_success_timestamp_seconds",
            help: "Unix time the job's last successful run started.",
            value: &|s| s.last_success.map(|t| t.to_string()),
            per_target: true,
        },
        Family {
            name: "fjord_job_replication_lag_seconds",
            help: "Seconds since the creation of the newest snapshot replicated to the target.",
            value: &|s| {
                s.newest_replicated_snapshot_time
                    .map(|t| (now - t).to_string())
            },
            per_target: true,
        },
        Family {
            name: "fjord_job_bytes",
            help:
                "Bytes the job's last run sent over the link (packed: after dedup and compression).",
            value: &|s| Some(s.bytes.to_string()),
            per_target: false,
        },
        Family {
            name: "fjord_job_bytes_resent",
            help: "Bytes the job's last run sent again after link failures.",
            value: &|s| Some(s.bytes_resent.to_string()),
            per_target: false,
        },
        Family {
            name: "fjord_job_duration_seconds",
            help: "How long the job's last run took.",
            value: &|s| Some(s.duration_secs.to_string()),
            per_target: false,
        },
    ];
    let mut out = String::new();
    for family in &families {
        let _ = writeln!(out, "# HELP {} {}", family.name, family.help);
        let _ = writeln!(out, "# TYPE {} gauge", family.name);
        for (labels, s) in statuses.iter().flat_map(|s| rows(s, family.per_target)) {
            if let Some(v) = (family.value)(&s) {
                let _ = writeln!(out, "{}{{{labels}}} {v}", family.name);
            }
        }
    }
    let name = "fjord_job_last_result";
    let _ = writeln!(
        out,
        "# HELP {name} How the job's last run ended (1 for that result)."
    );
    let _ = writeln!(out, "# TYPE {name} gauge");
    for (labels, s) in statuses.iter().flat_map(|s| rows(s, true)) {
        let unknown =
            (!result::ALL.contains(&s.last_result.as_str())).then_some(s.last_result.as_str());
        for r in result::ALL.into_iter().chain(unknown) {
            let _ = writeln!(
                out,
                "{name}{{{labels},result=\"{}\"}} {}",
                escape_label_value(r),
                u8::from(s.last_result == r)
            );
        }
    }
    out
}

/// Writes `text` to `path` atomically (temporary file and rename), so the
/// collector never reads half a file.
pub fn write_textfile(path: &Path, text: &str) -> std::io::Result<()> {
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture() -> Vec<JobStatus> {
        vec![
            JobStatus {
                job: "home".into(),
                last_attempt: 1_769_860_800,
                last_success: Some(1_769_860_800),
                last_result: result::OK.into(),
                last_error: None,
                bytes: 123_456,
                bytes_resent: 4096,
                duration_secs: 12.5,
                newest_replicated_snapshot_time: Some(1_769_860_790),
                warnings: Vec::new(),
                targets: Vec::new(),
                snapshot_only: false,
            },
            JobStatus {
                job: "we\"ird\\".into(),
                last_attempt: 1_769_860_000,
                last_success: None,
                last_result: result::FAILED.into(),
                last_error: Some("connection refused".into()),
                bytes: 0,
                bytes_resent: 0,
                duration_secs: 3.0,
                newest_replicated_snapshot_time: None,
                warnings: Vec::new(),
                targets: Vec::new(),
                snapshot_only: false,
            },
        ]
    }

    #[test]
    fn renders_exact_text() {
        let text = render_prometheus(&fixture(), 1_769_860_900);
        let expected = r#"# HELP fjord_job_last_attempt_timestamp_seconds Unix time the job's last run started.
# TYPE fjord_job_last_attempt_timestamp_seconds gauge
fjord_job_last_attempt_timestamp_seconds{job="home"} 1769860800
fjord_job_last_attempt_timestamp_seconds{job="we\"ird\\"} 1769860000
# HELP fjord_job_last_success_timestamp_seconds Unix time the job's last successful run started.
# TYPE fjord_job_last_success_timestamp_seconds gauge
fjord_job_last_success_timestamp_seconds{job="home"} 1769860800
# HELP fjord_job_replication_lag_seconds Seconds since the creation of the newest snapshot replicated to the target.
# TYPE fjord_job_replication_lag_seconds gauge
fjord_job_replication_lag_seconds{job="home"} 110
# HELP fjord_job_bytes Bytes the job's last run sent over the link (packed: after dedup and compression).
# TYPE fjord_job_bytes gauge
fjord_job_bytes{job="home"} 123456
fjord_job_bytes{job="we\"ird\\"} 0
# HELP fjord_job_bytes_resent Bytes the job's last run sent again after link failures.
# TYPE fjord_job_bytes_resent gauge
fjord_job_bytes_resent{job="home"} 4096
fjord_job_bytes_resent{job="we\"ird\\"} 0
# HELP fjord_job_duration_seconds How long the job's last run took.
# TYPE fjord_job_duration_seconds gauge
fjord_job_duration_seconds{job="home"} 12.5
fjord_job_duration_seconds{job="we\"ird\\"} 3
# HELP fjord_job_last_result How the job's last run ended (1 for that result).
# TYPE fjord_job_last_result gauge
fjord_job_last_result{job="home",result="ok"} 1
fjord_job_last_result{job="home",result="diverged"} 0
fjord_job_last_result{job="home",result="failed"} 0
fjord_job_last_result{job="we\"ird\\",result="ok"} 0
fjord_job_last_result{job="we\"ird\\",result="diverged"} 0
fjord_job_last_result{job="we\"ird\\",result="failed"} 1
"#;
        assert_eq!(text, expected);
    }

    #[test]
    fn a_fan_out_job_has_its_results_and_lag_per_target() {
        use crate::status::TargetStatus;
        let mut s = fixture().remove(0);
        let t = |name: &str, r: &str, newest| TargetStatus {
            name: name.into(),
            last_result: r.into(),
            last_error: None,
            last_success: Some(1_769_860_000),
            newest_replicated_snapshot_time: newest,
        };
        s.targets = vec![
            t("oslo", result::OK, Some(1_769_860_790)),
            t("bergen", result::FAILED, Some(1_769_850_000)),
        ];
        let text = render_prometheus(&[s], 1_769_860_900);
        for line in [
            "fjord_job_replication_lag_seconds{job=\"home\",target=\"oslo\"} 110\n",
            "fjord_job_replication_lag_seconds{job=\"home\",target=\"bergen\"} 10900\n",
            "fjord_job_last_result{job=\"home\",target=\"bergen\",result=\"failed\"} 1\n",
            "fjord_job_last_result{job=\"home\",target=\"oslo\",result=\"ok\"} 1\n",
            "fjord_job_last_success_timestamp_seconds{job=\"home\",target=\"oslo\"} 1769860000\n",
            // bytes are the job's: one sample, not one per target
            "fjord_job_bytes{job=\"home\"} 123456\n",
        ] {
            assert!(text.contains(line), "{line} missing in\n{text}");
        }
        assert!(!text.contains("fjord_job_replication_lag_seconds{job=\"home\"}"));
    }

    #[test]
    fn unknown_result_gets_its_own_sample() {
        let mut statuses = fixture();
        statuses.truncate(1);
        statuses[0].last_result = "partial".into();
        let text = render_prometheus(&statuses, 1_769_860_900);
        assert!(text.contains("fjord_job_last_result{job=\"home\",result=\"ok\"} 0\n"));
        assert!(text.contains("fjord_job_last_result{job=\"home\",result=\"partial\"} 1\n"));
    }

    #[test]
    fn label_escaping() {
        assert_eq!(escape_label_value("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
    }

    #[test]
    fn textfile_is_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fjord.prom");
        write_textfile(&path, "old\n").unwrap();
        write_textfile(&path, "new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
