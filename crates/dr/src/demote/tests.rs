use super::*;

const NOW: i64 = 1_796_300_000; // 2026-12-03T...

fn copy(dataset: &str, snaps: &[&str], held: &[&str], written: Option<u64>) -> Copy {
    Copy {
        dataset: dataset.into(),
        snapshots: snaps.iter().map(|s| s.to_string()).collect(),
        fjord_held: held.iter().map(|s| s.to_string()).collect(),
        written_since_base: written,
        origin: None,
        mounted: true,
        readonly: "off".into(),
        canmount: "on".into(),
    }
}

fn req() -> Request {
    Request {
        base: None,
        now: NOW,
    }
}

fn kinds(p: &Plan) -> Vec<String> {
    p.actions
        .iter()
        .map(|a| match a {
            Action::Set {
                dataset,
                property,
                value,
            } => format!("set {dataset} {property}={value}"),
            Action::Unmount { dataset } => format!("unmount {dataset}"),
            Action::Snapshot { snapshot } => format!("snapshot {snapshot}"),
            Action::RenameAside { from, to } => format!("rename {from} {to}"),
            Action::Clone { snapshot, dataset } => format!("clone {snapshot} {dataset}"),
            Action::Promote { dataset } => format!("promote {dataset}"),
            Action::Rollback { snapshot } => format!("rollback {snapshot}"),
            Action::LiftFence { dataset } => format!("lift {dataset}"),
        })
        .collect()
}

fn aside() -> String {
    format!("src/data-diverged-{}", compact_time(NOW))
}

#[test]
fn a_clean_old_primary_is_only_made_inert_and_marked() {
    let state = DemoteState {
        root: "src/data".into(),
        copies: vec![copy("src/data", &["a", "b"], &["b"], Some(0))],
        ..Default::default()
    };
    let p = plan(&state, &req()).unwrap();
    assert_eq!(p.base, "b");
    assert!(p.kept.is_none());
    let k = kinds(&p);
    assert_eq!(k[0], "unmount src/data");
    assert_eq!(k[1], "set src/data readonly=on");
    assert_eq!(k[2], "set src/data canmount=noauto");
    assert!(
        k[3].starts_with("set src/data fjord:demoted=") && k[3].ends_with(" @b"),
        "{k:?}"
    );
    assert_eq!(k.len(), 4);
}

#[test]
fn diverged_writes_are_kept_aside_and_the_base_comes_back_by_clone_and_promote() {
    let state = DemoteState {
        root: "src/data".into(),
        copies: vec![
            copy("src/data", &["a", "b", "c"], &["b"], Some(4096)),
            copy("src/data/child", &["a", "b"], &["b"], Some(0)),
            copy("src/data/new", &["c"], &[], None),
        ],
        ..Default::default()
    };
    let p = plan(&state, &req()).unwrap();
    let a = aside();
    let k = kinds(&p);
    let snap = format!("fjord_diverged_{}", compact_time(NOW));
    assert_eq!(k[0], "unmount src/data");
    assert_eq!(k[1], format!("snapshot src/data@{snap}"));
    assert_eq!(k[2], format!("rename src/data {a}"));
    assert_eq!(k[3], format!("set {a} fjord:kept_from=src/data@b"));
    assert!(k.contains(&format!("clone {a}@b src/data")));
    assert!(k.contains(&format!("clone {a}/child@b src/data/child")));
    // the new child has no base: kept aside only, with a note
    assert!(!k.iter().any(|x| x.contains("clone") && x.contains("/new")));
    assert!(p.notes.iter().any(|n| n.contains("src/data/new")));
    // parents first: the root's clone and promote come before the child's clone
    let pos = |s: &str| k.iter().position(|x| x == s).unwrap();
    assert!(pos("promote src/data") < pos(&format!("clone {a}/child@b src/data/child")));
    // a fresh clone's few bytes of metadata are rolled back, or zfs recv refuses the target
    assert!(pos("promote src/data") < pos("rollback src/data@b"));
    assert!(k.contains(&"rollback src/data/child@b".to_string()));
    let kept = p.kept.unwrap();
    assert_eq!(kept.dataset, a);
    assert!(kept.snapshots.contains(&(a.clone(), "c".into())));
    assert!(kept.snapshots.contains(&(format!("{a}/new"), "c".into())));
    assert!(kept.snapshots.contains(&(a.clone(), snap.clone())));
    assert!(kept.written.contains(&(a.clone(), 4096)));
    // nothing is destroyed, ever
    assert!(k.last().unwrap().starts_with("set src/data fjord:demoted="));
}

#[test]
fn an_interrupted_demotion_finishes_from_the_aside_tree() {
    let a = aside();
    let aside_copies = vec![
        copy(&a, &["a", "b", "c"], &["b"], Some(4096)),
        copy(&format!("{a}/child"), &["a", "b"], &["b"], Some(0)),
    ];
    // renamed, the root cloned but not yet promoted, the child not cloned
    let mut clone = copy("src/data", &[], &[], None);
    clone.origin = Some(format!("{a}@b"));
    clone.readonly = "on".into();
    clone.canmount = "noauto".into();
    let state = DemoteState {
        root: "src/data".into(),
        copies: vec![clone],
        aside: Some((a.clone(), "b".into(), aside_copies)),
        ..Default::default()
    };
    let p = plan(&state, &req()).unwrap();
    let k = kinds(&p);
    assert_eq!(k[0], "promote src/data");
    assert_eq!(k[1], "rollback src/data@b");
    assert_eq!(k[2], format!("clone {a}/child@b src/data/child"));
    assert_eq!(k[3], "promote src/data/child");
    assert_eq!(k[4], "rollback src/data/child@b");
    assert!(k[5].starts_with("set src/data fjord:demoted="));
    assert_eq!(k.len(), 6);
    assert!(p.kept.unwrap().snapshots.contains(&(a, "c".into())));
}

#[test]
fn the_base_is_the_newest_fjord_held_snapshot_or_the_named_one() {
    let state = DemoteState {
        root: "src/data".into(),
        copies: vec![copy("src/data", &["a", "b", "c"], &["a", "b"], Some(10))],
        ..Default::default()
    };
    assert_eq!(plan(&state, &req()).unwrap().base, "b");
    let named = Request {
        base: Some("a".into()),
        now: NOW,
    };
    assert_eq!(plan(&state, &named).unwrap().base, "a");
    let bad = Request {
        base: Some("zz".into()),
        now: NOW,
    };
    assert!(matches!(
        plan(&state, &bad),
        Err(DemoteError::UnknownBase { .. })
    ));
    let mut unheld = state.clone();
    unheld.copies[0].fjord_held.clear();
    let e = plan(&unheld, &req()).unwrap_err();
    assert!(matches!(e, DemoteError::NoBase { .. }));
    assert!(e.to_string().contains("--base"), "{e}");
}

#[test]
fn a_promoted_dataset_is_unfenced_and_a_rerun_keeps_its_base() {
    let mut c = copy("src/data", &["a", "b"], &["b"], Some(0));
    c.mounted = false;
    c.readonly = "on".into();
    c.canmount = "noauto".into();
    let state = DemoteState {
        root: "src/data".into(),
        copies: vec![c],
        promoted: Some("2026-12-03T14:30:00Z @a".into()),
        demoted: Some("2026-12-03T15:00:00Z @b".into()),
        aside: None,
    };
    let p = plan(&state, &req()).unwrap();
    assert_eq!(kinds(&p), vec!["lift src/data"]);
    let other = Request {
        base: Some("a".into()),
        now: NOW,
    };
    assert!(matches!(
        plan(&state, &other),
        Err(DemoteError::OtherBase { .. })
    ));
}

#[test]
fn refusals_name_what_is_wrong() {
    let none = DemoteState {
        root: "src/data".into(),
        ..Default::default()
    };
    assert!(matches!(
        plan(&none, &req()),
        Err(DemoteError::NoDataset { .. })
    ));
    let pool = DemoteState {
        root: "src".into(),
        ..Default::default()
    };
    assert!(matches!(
        plan(&pool, &req()),
        Err(DemoteError::PoolRoot { .. })
    ));
}

#[test]
fn a_run_cut_after_the_root_was_promoted_back_rolls_back_and_marks() {
    let a = aside();
    let mut aside_root = copy(&a, &["c"], &[], None);
    aside_root.origin = Some("src/data@b".into());
    let mut root = copy("src/data", &["a", "b"], &["b"], None);
    root.mounted = false;
    root.readonly = "on".into();
    root.canmount = "noauto".into();
    let state = DemoteState {
        root: "src/data".into(),
        copies: vec![root],
        aside: Some((a, "b".into(), vec![aside_root])),
        ..Default::default()
    };
    let k = kinds(&plan(&state, &req()).unwrap());
    assert!(
        !k.iter()
            .any(|x| x.starts_with("clone") || x.starts_with("promote") || x.starts_with("rename")),
        "{k:?}"
    );
    assert!(k.contains(&"rollback src/data@b".to_string()), "{k:?}");
    assert!(
        k.last().unwrap().starts_with("set src/data fjord:demoted="),
        "{k:?}"
    );
}
