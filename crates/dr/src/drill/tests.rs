use super::record::{self, assess, fold_check, DrillRecord, Outcome};
use super::*;
use crate::status::Health;

const NOW: i64 = 1_796_308_200; // 2026-12-03T14:30:00Z

fn snap(name: &str, txg: u64, creation: i64) -> TargetSnapshot {
    TargetSnapshot {
        name: name.into(),
        guid: txg * 7,
        createtxg: txg,
        creation,
        foreign_holds: Vec::new(),
    }
}

fn state() -> DrillState {
    DrillState {
        dataset: "backup/oslo/db".into(),
        exists: true,
        snapshots: vec![
            snap("fjord_b", 20, NOW - 600),
            snap("fjord_a", 10, NOW - 3600),
        ],
        partial_receive: false,
        log_positions: vec![
            ("fjord_a".into(), "fjord:wal_lsn".into(), "0/1".into()),
            ("fjord_b".into(), "fjord:wal_lsn".into(), "0/16B3F40".into()),
        ],
        scratch_exists: true,
        scratch_children: Vec::new(),
    }
}

fn req() -> Request {
    Request {
        snapshot: None,
        scratch: "backup/drill".into(),
        mount_dir: "/run/fjord-drill/".into(),
        writable: false,
        check: "/bin/check".into(),
        now: NOW,
    }
}

fn kinds(plan: &Plan) -> Vec<&'static str> {
    plan.actions
        .iter()
        .map(|a| match a {
            Action::DestroyLeftover { .. } => "leftover",
            Action::Clone { .. } => "clone",
            Action::Mount { .. } => "mount",
            Action::Check { .. } => "check",
            Action::Destroy { .. } => "destroy",
        })
        .collect()
}

#[test]
fn the_newest_snapshot_is_cloned_inert_checked_and_destroyed() {
    let p = plan(&state(), &req()).expect("plan");
    assert_eq!(p.snapshot, "fjord_b");
    assert_eq!(p.snapshot_age_secs, 600);
    assert_eq!(
        p.log_position.as_ref().map(|l| l.value.as_str()),
        Some("0/16B3F40")
    );
    assert_eq!(
        p.clone,
        "backup/drill/fjord-drill-backup_oslo_db-20261203T143000Z"
    );
    assert_eq!(
        p.mountpoint,
        "/run/fjord-drill/fjord-drill-backup_oslo_db-20261203T143000Z"
    );
    assert_eq!(kinds(&p), ["clone", "mount", "check", "destroy"]);
    let Action::Clone {
        snapshot,
        properties,
        ..
    } = &p.actions[0]
    else {
        panic!("{:?}", p.actions[0]);
    };
    assert_eq!(snapshot, "backup/oslo/db@fjord_b");
    for (k, v) in [
        ("canmount", "noauto"),
        ("readonly", "on"),
        ("setuid", "off"),
        ("devices", "off"),
        ("sharenfs", "off"),
        ("sharesmb", "off"),
    ] {
        assert_eq!(properties.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert_eq!(properties.get("mountpoint"), Some(&p.mountpoint));
    assert_eq!(
        properties.get(DRILL_PROP).map(String::as_str),
        Some("backup/oslo/db@fjord_b 2026-12-03T14:30:00Z")
    );
    assert!(p.notes.is_empty() && p.leftovers.is_empty());
    let writable = plan(
        &state(),
        &Request {
            writable: true,
            ..req()
        },
    )
    .expect("plan");
    let Action::Clone { properties, .. } = &writable.actions[0] else {
        panic!()
    };
    assert_eq!(properties["readonly"], "off");
}

#[test]
fn leftovers_of_this_copy_are_destroyed_first_and_nothing_else() {
    let mut s = state();
    let mine = "backup/drill/fjord-drill-backup_oslo_db-20261202T143000Z";
    s.scratch_children = vec![
        (
            mine.into(),
            Some("backup/oslo/db@fjord_a 2026-12-02T14:30:00Z".into()),
        ),
        // another copy's drill clone: its own drill cleans it
        (
            "backup/drill/fjord-drill-backup_oslo_home-20261202T143000Z".into(),
            Some("backup/oslo/home@x 2026-12-02T14:30:00Z".into()),
        ),
        // named like one but unmarked, and marked but not named like one: not ours
        ("backup/drill/fjord-drill-by-hand".into(), None),
        (
            "backup/drill/keep".into(),
            Some("backup/oslo/db@fjord_a 2026-12-02T14:30:00Z".into()),
        ),
    ];
    let p = plan(&s, &req()).expect("plan");
    assert_eq!(p.leftovers, [mine]);
    assert_eq!(
        kinds(&p),
        ["leftover", "clone", "mount", "check", "destroy"]
    );
    assert_eq!(p.actions[0], Action::DestroyLeftover { clone: mine.into() });
}

#[test]
fn a_clone_name_taken_in_the_same_second_gets_a_suffix_and_long_names_fit() {
    let mut s = state();
    let first = plan(&s, &req()).expect("plan").clone;
    s.scratch_children = vec![(first.clone(), None)];
    let second = plan(&s, &req()).expect("plan").clone;
    assert_eq!(second, format!("{first}-2"));
    let long = format!("backup/{}", "x".repeat(240));
    let name = clone_name("backup/drill", &long, NOW, &[]);
    assert!(name.len() <= 255, "{}", name.len());
    assert!(fjord_zfs::names::validate_dataset(&name).is_ok());
}

#[test]
fn no_snapshot_a_missing_named_one_no_copy_or_no_scratch_is_refused() {
    let mut s = state();
    s.snapshots.clear();
    assert_eq!(
        plan(&s, &req()),
        Err(DrillError::NoSnapshot {
            dataset: "backup/oslo/db".into()
        })
    );
    let e = plan(
        &state(),
        &Request {
            snapshot: Some("fjord_z".into()),
            ..req()
        },
    )
    .unwrap_err();
    assert!(matches!(&e, DrillError::UnknownSnapshot { snapshot, .. } if snapshot == "fjord_z"));
    assert!(e.to_string().contains("zfs list -t snapshot"), "{e}");
    let named = plan(
        &state(),
        &Request {
            snapshot: Some("fjord_a".into()),
            ..req()
        },
    )
    .expect("plan");
    assert_eq!(
        (named.snapshot.as_str(), named.snapshot_age_secs),
        ("fjord_a", 3600)
    );
    assert_eq!(named.log_position.map(|l| l.value), Some("0/1".into()));
    let mut s = state();
    s.exists = false;
    assert!(matches!(
        plan(&s, &req()),
        Err(DrillError::NoDataset { .. })
    ));
    let mut s = state();
    s.scratch_exists = false;
    let e = plan(&s, &req()).unwrap_err();
    assert!(e.to_string().contains("zfs create -o canmount=off"), "{e}");
}

#[test]
fn a_partial_receive_drills_the_newest_complete_snapshot_with_a_note() {
    let mut s = state();
    s.partial_receive = true;
    let p = plan(&s, &req()).expect("plan");
    assert_eq!(p.snapshot, "fjord_b");
    assert!(p.notes[0].contains("partial"), "{:?}", p.notes);
}

fn rec(result: Outcome, started_at: i64) -> DrillRecord {
    DrillRecord {
        dataset: "backup/oslo/db".into(),
        result,
        started_at,
        duration_secs: 2.5,
        snapshot: Some("fjord_b".into()),
        snapshot_creation: Some(started_at - 60),
        snapshot_age_secs: Some(60),
        log_position: None,
        clone: Some("backup/drill/c".into()),
        check: "/bin/check".into(),
        output_tail: String::new(),
        error: (result == Outcome::Failed).then(|| "the check exited 1".into()),
        clone_destroyed: true,
        last_success_at: None,
    }
}

#[test]
fn a_failed_drill_keeps_the_last_success_and_is_a_warning() {
    let ok = rec(Outcome::Ok, NOW - 7200).after(None);
    assert_eq!(ok.last_success_at, Some(NOW - 7200));
    let failed = rec(Outcome::Failed, NOW - 60).after(Some(&ok));
    assert_eq!(failed.last_success_at, Some(NOW - 7200));
    let week = 8 * 86_400;
    assert_eq!(assess("d", Some(&ok), week, NOW).health, Health::Ok);
    let f = assess("d", Some(&failed), week, NOW);
    assert_eq!(f.health, Health::Warning);
    assert!(
        f.reason.contains("failed") && f.reason.contains("exited 1"),
        "{}",
        f.reason
    );
    let stale = assess("d", Some(&ok), 3600, NOW);
    assert_eq!(stale.health, Health::Warning);
    assert!(stale.reason.contains("2h ago"), "{}", stale.reason);
    assert_eq!(assess("d", None, week, NOW).reason, "never drilled");
}

#[test]
fn drills_fold_into_the_check_line_as_warnings_only() {
    let ok = assess("b/db", Some(&rec(Outcome::Ok, NOW).after(None)), 3600, NOW);
    let bad = assess(
        "b/db",
        Some(&rec(Outcome::Failed, NOW).after(None)),
        3600,
        NOW,
    );
    let (h, line) = fold_check(
        Health::Ok,
        "FJORD-DR OK - 2 copies".into(),
        std::slice::from_ref(&ok),
    );
    assert_eq!(
        (h, line.as_str()),
        (Health::Ok, "FJORD-DR OK - 2 copies; 1 drills ok")
    );
    let (h, line) = fold_check(
        Health::Ok,
        "FJORD-DR OK - 2 copies".into(),
        &[ok, bad.clone()],
    );
    assert_eq!(h, Health::Warning);
    assert!(
        line.starts_with("FJORD-DR WARNING - 2 copies; drills: b/db: the last drill failed"),
        "{line}"
    );
    let (h, line) = fold_check(Health::Critical, "FJORD-DR CRITICAL - x".into(), &[bad]);
    assert_eq!(h, Health::Critical);
    assert!(line.starts_with("FJORD-DR CRITICAL - x; drills:"), "{line}");
    assert_eq!(
        fold_check(Health::Ok, "L".into(), &[]),
        (Health::Ok, "L".into())
    );
}

#[test]
fn drill_metrics_have_the_last_success_and_one_result_sample_each() {
    let failed = rec(Outcome::Failed, NOW).after(Some(&rec(Outcome::Ok, NOW - 100).after(None)));
    let text = record::render_prometheus(&[
        assess("backup/oslo/db", Some(&failed), 3600, NOW),
        assess("backup/never", None, 3600, NOW),
    ]);
    assert!(
        text.contains(&format!(
            "fjord_recv_drill_last_success_timestamp_seconds{{dataset=\"backup/oslo/db\"}} {}",
            NOW - 100
        )),
        "{text}"
    );
    assert!(text
        .contains("fjord_recv_drill_last_result{dataset=\"backup/oslo/db\",result=\"failed\"} 1"));
    assert!(
        text.contains("fjord_recv_drill_last_result{dataset=\"backup/oslo/db\",result=\"ok\"} 0")
    );
    assert!(text.contains("fjord_recv_drill_duration_seconds{dataset=\"backup/oslo/db\"} 2.500"));
    assert!(!text.contains("backup/never"), "no samples without a drill");
}

#[test]
fn output_tails_and_record_files() {
    assert_eq!(record::tail("short", 100), "short");
    let long = format!("{}\nlast line\n", "é".repeat(100));
    let t = record::tail(&long, 20);
    assert!(t.len() <= 20 && t.ends_with("last line\n"), "{t:?}");
    assert_eq!(record::file_name("backup/oslo/db"), "backup@oslo@db.json");
    let json = serde_json::to_string(&rec(Outcome::Ok, NOW)).expect("json");
    let back: DrillRecord = serde_json::from_str(&json).expect("parse");
    assert_eq!(back, rec(Outcome::Ok, NOW));
}
