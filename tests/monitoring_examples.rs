//! The monitoring examples (`examples/prometheus/fjord-alerts.yml`,
//! `examples/grafana/fjord.json`) parse, have the shape Prometheus and
//! Grafana read, and reference only metrics fjord emits. The emitted
//! names are taken from the code's own metric writers (the `# TYPE`
//! lines of fjord-send's, `fjord-recv status`'s and `fjord-recv serve`'s
//! Prometheus text, rendered with every optional value present), not from
//! a list copied by hand.

use fjord_dr::serve_metrics::{by_client, CacheTotals, PolicyTotals, ServeMetrics};
use fjord_dr::status::{assess, Observation, Thresholds};
use fjord_replicate::status::JobStatus;
use std::collections::BTreeSet;
use std::path::PathBuf;

const NOW: i64 = 1_800_000_000;

fn repo_file(path: &str) -> String {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The names of the families in Prometheus text (from `# TYPE` lines).
fn families(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect()
}

/// Every metric family fjord writes, from the writers themselves.
fn emitted() -> BTreeSet<String> {
    let job = JobStatus {
        job: "home".into(),
        last_attempt: NOW - 60,
        last_success: Some(NOW - 60),
        last_result: "ok".into(),
        last_error: None,
        bytes: 1,
        bytes_resent: 1,
        duration_secs: 1.0,
        newest_replicated_snapshot_time: Some(NOW - 120),
        warnings: Vec::new(),
        targets: Vec::new(),
        snapshot_only: false,
    };
    let copy = assess(
        &Observation {
            client: "oslo".into(),
            dataset: "backup/oslo/home".into(),
            snapshots: 3,
            newest: Some(("fjord_x".into(), NOW - 120)),
            partial_bytes: Some(1),
        },
        &Thresholds::default(),
        NOW,
    );
    let serve = ServeMetrics {
        started: NOW - 3600,
        now: NOW,
        refused: by_client([("policy".to_string(), Some("oslo".to_string()), 1)]),
        policy: PolicyTotals::default(),
        sessions_completed: 1,
        sessions_failed: 1,
        reloads_applied: 1,
        reloads_rejected: 1,
        cache: Some(CacheTotals {
            bytes: 1,
            chunks: 1,
            hits: 1,
            hit_bytes: 1,
            stored: 1,
            stored_bytes: 1,
        }),
    };
    let mut names = families(&fjord_replicate::metrics::render_prometheus(&[job], NOW));
    names.extend(families(&fjord_dr::status::render_prometheus(&[copy], NOW)));
    names.extend(families(&fjord_dr::serve_metrics::render_prometheus(
        &serve,
    )));
    let page = fjord_tripwire::Page::default();
    names.extend(families(&fjord_replicate::tripwire::book::render_metrics(
        &[fjord_replicate::tripwire::Book {
            job: "home".into(),
            datasets: [("tank/home".to_string(), page.clone())].into(),
        }],
    )));
    names.extend(families(&fjord_dr::tripwire::render_prometheus(&[
        fjord_dr::tripwire::assess("backup/oslo/home", &page),
    ])));
    names
}

/// The `fjord_*` metric names in a PromQL expression.
fn referenced(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("fjord_") {
        let start = i + at;
        let boundary = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let end = start
            + expr[start..]
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(expr.len() - start);
        if boundary && end > start + "fjord_".len() {
            out.insert(expr[start..end].to_string());
        }
        i = end.max(start + 1);
    }
    out
}

#[test]
fn the_emitted_names_are_collected_from_the_writers() {
    let names = emitted();
    // A sample of each writer, so that an empty render cannot pass.
    for n in [
        "fjord_job_replication_lag_seconds",
        "fjord_dr_newest_snapshot_timestamp_seconds",
        "fjord_dr_refused_requests_total",
        "fjord_dr_chunk_cache_hit_ratio",
    ] {
        assert!(names.contains(n), "{n} not in {names:?}");
    }
    assert_eq!(
        referenced("sum(increase(fjord_dr_a_total[5m])) / fjord_job_b{x=\"fjord_\"}"),
        BTreeSet::from(["fjord_dr_a_total".to_string(), "fjord_job_b".to_string()])
    );
}

#[test]
fn the_alert_rules_parse_and_use_only_emitted_metrics() {
    let docs =
        yaml_rust2::YamlLoader::load_from_str(&repo_file("examples/prometheus/fjord-alerts.yml"))
            .expect("the alert rules are YAML");
    let groups = docs[0]["groups"].as_vec().expect("a groups list");
    let emitted = emitted();
    let mut alerts = BTreeSet::new();
    let mut used = BTreeSet::new();
    for g in groups {
        assert!(g["name"].as_str().is_some(), "a group without a name");
        for rule in g["rules"].as_vec().expect("a rules list") {
            let alert = rule["alert"].as_str().expect("every rule is an alert");
            let expr = rule["expr"].as_str().expect("every rule has an expr");
            let severity = rule["labels"]["severity"].as_str();
            assert!(
                matches!(severity, Some("warning" | "critical")),
                "{alert}: severity {severity:?}"
            );
            assert!(
                rule["annotations"]["summary"].as_str().is_some(),
                "{alert}: a summary"
            );
            let names = referenced(expr);
            assert!(!names.is_empty(), "{alert}: no fjord metric in {expr}");
            for n in &names {
                assert!(emitted.contains(n), "{alert}: {n} is not emitted by fjord");
            }
            used.extend(names);
            assert!(alerts.insert(alert.to_string()), "{alert} twice");
        }
    }
    // The alerts the README promises.
    for a in [
        "FjordReplicationLagHigh",
        "FjordNoSuccessfulPush",
        "FjordDrRefusedDestroyOrRollback",
        "FjordDrStaleDataset",
    ] {
        assert!(alerts.contains(a), "no alert {a}");
    }
    assert!(used.contains("fjord_dr_policy_refusals_total"));
}

/// Every `expr` in a Grafana dashboard (panels, rows' panels, targets).
fn exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| exprs(v, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_parses_and_uses_only_emitted_metrics() {
    let dash: serde_json::Value = serde_json::from_str(&repo_file("examples/grafana/fjord.json"))
        .expect("the dashboard is JSON");
    assert!(dash["title"].as_str().is_some() && dash["uid"].as_str().is_some());
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for p in panels {
        let id = p["id"].as_u64().expect("every panel has an id");
        assert!(ids.insert(id), "panel id {id} twice");
        assert!(p["gridPos"]["w"].as_u64().is_some(), "panel {id}: gridPos");
        if p["type"] != "row" {
            let targets = p["targets"].as_array().expect("a panel's targets");
            assert!(!targets.is_empty(), "panel {id} shows nothing");
        }
    }
    let mut all = Vec::new();
    exprs(&dash, &mut all);
    let emitted = emitted();
    let mut used = BTreeSet::new();
    for e in &all {
        let names = referenced(e);
        assert!(!names.is_empty(), "no fjord metric in {e}");
        for n in &names {
            assert!(
                emitted.contains(n),
                "the dashboard uses {n}, which fjord does not emit"
            );
        }
        used.extend(names);
    }
    // Both sides are on it: the primary's lag, the DR node's own view, the receiver's refusals.
    for n in [
        "fjord_job_replication_lag_seconds",
        "fjord_dr_newest_snapshot_timestamp_seconds",
        "fjord_dr_refused_requests_total",
        "fjord_dr_chunk_cache_bytes",
    ] {
        assert!(used.contains(n), "the dashboard does not show {n}");
    }
}
