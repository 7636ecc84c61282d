//! Tests of the promote planner and the fence (no ZFS).

use super::*;

const NOW: i64 = 1_796_300_000;

fn snap(name: &str, txg: u64, age: i64) -> TargetSnapshot {
    TargetSnapshot {
        name: name.into(),
        guid: txg * 7,
        createtxg: txg,
        creation: NOW - age,
        foreign_holds: Vec::new(),
    }
}

/// What `zfs recv` with the forced inert set leaves: readonly, canmount,
/// setuid and devices local, the mountpoint inherited.
fn received(dataset: &str, snaps: &[(&str, u64, i64)]) -> CopyState {
    let local = |name: &str, value: &str| PropState {
        name: name.into(),
        value: value.into(),
        local: true,
        received: None,
    };
    CopyState {
        dataset: dataset.into(),
        snapshots: snaps.iter().map(|(n, t, a)| snap(n, *t, *a)).collect(),
        dr_held: snaps.iter().map(|(n, _, _)| n.to_string()).collect(),
        partial_receive: false,
        written: 0,
        props: vec![
            local("readonly", "on"),
            local("canmount", "noauto"),
            PropState {
                name: "mountpoint".into(),
                value: format!("/mnt/{dataset}"),
                local: false,
                received: None,
            },
            local("setuid", "off"),
            local("devices", "off"),
        ],
        mounted: false,
        volume: false,
        log_positions: Vec::new(),
    }
}

fn tree() -> TreeState {
    let s = [("a", 10, 3600), ("b", 20, 600)];
    TreeState {
        marker: None,
        demoted: None,
        copies: vec![received("dst/data", &s), received("dst/data/child", &s)],
    }
}

fn req() -> Request {
    Request {
        now: NOW,
        ..Request::default()
    }
}

fn kinds(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .map(|a| {
            let v = serde_json::to_value(a).expect("json");
            let ds = v
                .get("dataset")
                .or_else(|| v.get("snapshot"))
                .and_then(|d| d.as_str())
                .unwrap_or("");
            let prop = v.get("property").and_then(|d| d.as_str()).unwrap_or("");
            format!("{} {ds} {prop}", v["action"].as_str().unwrap_or("?"))
                .trim()
                .to_string()
        })
        .collect()
}

#[test]
fn a_fresh_copy_is_fenced_first_then_made_usable_parents_first() {
    let mut t = tree();
    t.copies[1].partial_receive = true;
    t.copies[0].log_positions = vec![
        ("a".into(), "fjord:wal_lsn".into(), "0/1000".into()),
        ("b".into(), "fjord:wal_lsn".into(), "0/16B3F40".into()),
    ];
    let p = plan(&t, &req()).expect("plan");
    assert_eq!(
        kinds(&p),
        [
            "fence dst/data",
            "restore_property dst/data readonly",
            "restore_property dst/data canmount",
            "restore_property dst/data setuid",
            "restore_property dst/data devices",
            "mount dst/data",
            "abort_partial_receive dst/data/child",
            "restore_property dst/data/child readonly",
            "restore_property dst/data/child canmount",
            "restore_property dst/data/child setuid",
            "restore_property dst/data/child devices",
            "mount dst/data/child",
        ]
    );
    let Action::Fence { value, .. } = &p.actions[0] else {
        panic!("fence first")
    };
    assert_eq!(
        Marker::parse(value),
        Some(Marker {
            at: NOW,
            snapshot: "b".into()
        })
    );
    let rp = &p.recovery_points[0];
    assert_eq!((rp.snapshot.as_str(), rp.age_secs), ("b", 600));
    assert_eq!(
        rp.log_position.as_ref().map(|l| l.value.as_str()),
        Some("0/16B3F40")
    );
    assert_eq!(p.recovery_points[1].log_position, None);
    assert!(p.actions[1].describe().contains("readonly on -> inherited"));
}

#[test]
fn a_volume_gets_its_device_node_back_and_is_not_mounted() {
    let s = [("a", 10, 3600)];
    let mut vol = received("dst/vm", &s);
    // what `zfs recv` of a volume leaves: readonly and volmode local, the
    // file system properties not applicable
    vol.props = vec![
        PropState {
            name: "readonly".into(),
            value: "on".into(),
            local: true,
            received: None,
        },
        PropState {
            name: "volmode".into(),
            value: "none".into(),
            local: true,
            received: Some("dev".into()),
        },
    ];
    vol.volume = true;
    let t = TreeState {
        copies: vec![vol],
        ..TreeState::default()
    };
    let p = plan(&t, &req()).expect("plan");
    assert_eq!(
        kinds(&p),
        [
            "fence dst/vm",
            "restore_property dst/vm readonly",
            "restore_property dst/vm volmode",
        ]
    );
    assert!(
        p.actions[2].describe().contains("volmode none -> dev"),
        "{}",
        p.actions[2].describe()
    );
}

#[test]
fn an_older_recovery_point_destroys_newer_snapshots_only_when_asked_and_never_held_ones() {
    let mut t = tree();
    let mut r = req();
    r.snapshot = Some("a".into());
    let e = plan(&t, &r).unwrap_err();
    assert!(matches!(e, PromoteError::WouldDestroy { ref newer, .. } if newer == &["b"]));
    assert!(e.to_string().contains("--destroy-newer"), "{e}");
    r.destroy_newer = true;
    let p = plan(&t, &r).expect("plan");
    let k = kinds(&p);
    assert_eq!(k[1], "release_hold dst/data@b");
    assert_eq!(k[2], "rollback dst/data@a");
    assert!(p.actions.contains(&Action::Rollback {
        snapshot: "dst/data/child@a".into(),
        destroys: vec!["b".into()]
    }));
    // Someone else's hold on a snapshot the rollback would destroy.
    t.copies[1].snapshots[1].foreign_holds = vec!["legal".into()];
    let e = plan(&t, &r).unwrap_err();
    assert!(e.to_string().contains("legal"), "{e}");
    // Unknown or absent snapshots.
    r.snapshot = Some("zz".into());
    assert!(matches!(
        plan(&t, &r),
        Err(PromoteError::UnknownSnapshot { .. })
    ));
    t.copies[0].snapshots.clear();
    assert!(matches!(
        plan(&t, &req()),
        Err(PromoteError::NoSnapshot { .. })
    ));
}

#[test]
fn changes_since_the_newest_snapshot_are_rolled_back_before_promotion() {
    let mut t = tree();
    t.copies[0].written = 1024;
    let p = plan(&t, &req()).expect("plan");
    assert_eq!(
        p.actions[1],
        Action::Rollback {
            snapshot: "dst/data@b".into(),
            destroys: vec![]
        }
    );
}

#[test]
fn a_promoted_copy_is_never_rolled_back_again_and_a_rerun_only_finishes() {
    let mut t = tree();
    t.marker = Some(
        Marker {
            at: NOW - 60,
            snapshot: "a".into(),
        }
        .render(),
    );
    // New writes since the promotion; the parent done, the child not.
    t.copies[0].written = 1 << 20;
    t.copies[0].mounted = true;
    for p in &mut t.copies[0].props {
        p.local = false;
    }
    let p = plan(&t, &req()).expect("plan");
    assert_eq!(p.already_promoted.as_ref().map(|m| m.at), Some(NOW - 60));
    assert_eq!(
        kinds(&p),
        [
            "restore_property dst/data/child readonly",
            "restore_property dst/data/child canmount",
            "restore_property dst/data/child setuid",
            "restore_property dst/data/child devices",
            "mount dst/data/child",
        ]
    );
    assert_eq!(p.recovery_points[0].snapshot, "a");
    let mut r = req();
    r.snapshot = Some("b".into());
    assert!(matches!(
        plan(&t, &r),
        Err(PromoteError::AlreadyPromoted { .. })
    ));
}

#[test]
fn the_primarys_values_come_back_and_the_operator_may_choose_the_mountpoint() {
    let mut t = tree();
    // A `zfs send -p` stream carried the primary's mountpoint and
    // readonly=off; mountpoint_root set a local one.
    t.copies[0].props[2] = PropState {
        name: "mountpoint".into(),
        value: "/dr/dst/data".into(),
        local: true,
        received: Some("/srv/data".into()),
    };
    t.copies[0].props[0].received = Some("off".into());
    let p = plan(&t, &req()).expect("plan");
    assert!(p.actions[1]
        .describe()
        .contains("-> off (the primary's value)"));
    assert!(p
        .actions
        .iter()
        .any(|a| a.describe()
            == "dst/data: mountpoint /dr/dst/data -> /srv/data (the primary's value)"));
    let mut r = req();
    r.mountpoint = Some("/srv/elsewhere".into());
    let p = plan(&t, &r).expect("plan");
    assert!(p.actions.contains(&Action::SetMountpoint {
        dataset: "dst/data".into(),
        path: "/srv/elsewhere".into()
    }));
    assert!(!kinds(&p)
        .iter()
        .any(|k| k == "restore_property dst/data mountpoint"));
}

#[test]
fn a_child_without_the_recovery_point_takes_its_newest_older_one_with_a_note() {
    let mut t = tree();
    t.copies[1].snapshots.pop();
    let p = plan(&t, &req()).expect("plan");
    assert_eq!(p.recovery_points[1].snapshot, "a");
    assert!(p.notes[0].contains("has no @b"), "{:?}", p.notes);
}

#[test]
fn the_fence_refuses_with_when_and_how_to_fail_back() {
    assert_eq!(fence("dst/data", None, "dst/data"), Ok(()));
    assert_eq!(fence("dst/data", Some("-"), "dst/data"), Ok(()));
    let m = Marker {
        at: 1_796_300_000,
        snapshot: "fjord_2026-12-03T142000Z".into(),
    };
    assert_eq!(m.render(), "2026-12-03T12:13:20Z @fjord_2026-12-03T142000Z");
    assert_eq!(Marker::parse(&m.render()), Some(m.clone()));
    assert_eq!(Marker::parse("yes"), None);
    let e = fence("dst/data/child", Some(&m.render()), "dst/data").unwrap_err();
    let s = e.to_string();
    for want in [
        "dst/data/child was promoted",
        "at 2026-12-03T12:13:20Z",
        "@fjord_2026-12-03T142000Z",
        "as part of dst/data",
        "fjord-recv demote dst/data",
    ] {
        assert!(s.contains(want), "{want}: {s}");
    }
    // A value fjord did not write fences too.
    assert!(fence("dst/data", Some("by hand"), "dst/data").is_err());
}

#[test]
fn promoting_a_demoted_former_primary_lifts_its_demotion_after_the_fence() {
    let mut t = tree();
    t.demoted = Some("2026-12-03T15:00:00Z @b".into());
    let p = plan(&t, &req()).unwrap();
    assert!(matches!(p.actions[0], Action::Fence { .. }));
    assert_eq!(
        p.actions[1],
        Action::LiftDemoted {
            dataset: "dst/data".into()
        }
    );
    assert!(!plan(&tree(), &req())
        .unwrap()
        .actions
        .iter()
        .any(|a| matches!(a, Action::LiftDemoted { .. })));
}
