//! Whole trees: children destroyed on the primary (reported; destroyed on
//! the DR node only when its policy allows), new children (full, then
//! incremental), and a target whose parents do not exist yet.

mod support;

use fjord_replicate::report::JobResult;
use fjord_replicate::status;
use support::World;

/// `tank/home` with `a`, `a/b` (three levels) and `c`, pushed once.
async fn pushed_tree() -> World {
    let mut w = World::new("recursive = true\nparallelism = 2");
    for d in ["tank/home/a", "tank/home/a/b", "tank/home/c"] {
        w.pool.create(d);
    }
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Ok, "{:?}", o.report.error);
    assert!(w.dr.exists("backup/home/a/b"));
    assert!(o.report.removed.is_empty() && o.report.warnings.is_empty());
    w
}

#[tokio::test]
async fn a_child_destroyed_on_the_primary_is_reported_and_kept_by_default() {
    let mut w = pushed_tree().await;
    w.pool.destroy_dataset("tank/home/a");
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Ok, "{:?}", o.report.error);
    assert_eq!(o.report.removed.len(), 1, "{:?}", o.report.removed);
    let r = &o.report.removed[0];
    assert_eq!(r.target, "backup/home/a");
    assert!(!r.destroyed);
    assert!(r.message.contains("allow_destroy_removed"), "{}", r.message);
    assert!(w.dr.exists("backup/home/a") && w.dr.exists("backup/home/a/b"));
    // In the --json job line and the status file.
    let json = o.report.json_lines().pop().unwrap();
    assert!(
        json.contains("\"removed\":[{\"target\":\"backup/home/a\""),
        "{json}"
    );
    assert!(json.contains("keeps its copy"), "{json}");
    let st = status::load(w.state.path(), "home").unwrap().unwrap();
    assert_eq!(st.warnings.len(), 1);
    assert!(st.warnings[0].starts_with("backup/home/a: its source was destroyed on the primary"));
    // Reported again at every push until someone decides.
    assert_eq!(w.push().await.report.removed.len(), 1);
}

#[tokio::test]
async fn a_removed_childs_copy_goes_when_the_dr_policy_allows_it() {
    let mut w = pushed_tree().await;
    w.pool.destroy_dataset("tank/home/a");
    w.dr.allow_destroy_removed(true);
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Ok, "{:?}", o.report.error);
    assert_eq!(o.report.removed.len(), 1);
    assert!(o.report.removed[0].destroyed);
    assert!(!w.dr.exists("backup/home/a") && !w.dr.exists("backup/home/a/b"));
    assert!(w.dr.exists("backup/home/c"));
    // Gone: nothing to report any more.
    let again = w.push().await;
    assert!(again.report.removed.is_empty() && again.report.warnings.is_empty());
    let st = status::load(w.state.path(), "home").unwrap().unwrap();
    assert!(st.warnings.is_empty());
}

#[tokio::test]
async fn a_dry_run_finds_removed_copies_without_asking_to_destroy_them() {
    let mut w = pushed_tree().await;
    w.pool.destroy_dataset("tank/home/c");
    w.dr.allow_destroy_removed(true);
    let state = w.state();
    let o = w.push_with(false, true, state).await;
    assert_eq!(o.report.removed.len(), 1);
    assert!(!o.report.removed[0].destroyed);
    assert!(w.dr.exists("backup/home/c"));
}

#[tokio::test]
async fn a_child_created_after_the_first_push_arrives_full_then_incremental() {
    let mut w = pushed_tree().await;
    w.pool.create("tank/home/a/new");
    w.push().await;
    w.push().await;
    let into_new: Vec<_> =
        w.dr.transfers()
            .into_iter()
            .filter(|t| t.target == "backup/home/a/new")
            .collect();
    assert_eq!(into_new.len(), 2, "{into_new:?}");
    assert!(into_new[0].from.is_none());
    assert!(into_new[1].from.is_some());
    assert_eq!(w.target_names("backup/home/a/new").len(), 2);
}

#[tokio::test]
async fn missing_parents_of_the_target_are_created() {
    let mut w = World::new("recursive = true");
    w.pool.create("tank/home/a");
    w.job.target_dataset = "backup/oslo/site/home".into();
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Ok, "{:?}", o.report.error);
    for d in ["backup/oslo", "backup/oslo/site", "backup/oslo/site/home/a"] {
        assert!(w.dr.exists(d), "{d}");
    }
    assert!(o.report.removed.is_empty());
}

#[tokio::test]
async fn raw_streams_of_children_inheriting_a_key_ask_the_dr_node_to_inherit_it_too() {
    let mut w = World::new("recursive = true\nparallelism = 1\nraw = true");
    // tank/home (plain) / enc (its own encryption root) / enc/kid (inherits) /
    // enc/own (its own root again) / plain
    for d in [
        "tank/home/enc",
        "tank/home/enc/kid",
        "tank/home/enc/own",
        "tank/home/plain",
    ] {
        w.pool.create(d);
    }
    for (d, root) in [
        ("tank/home/enc", "tank/home/enc"),
        ("tank/home/enc/kid", "tank/home/enc"),
        ("tank/home/enc/own", "tank/home/enc/own"),
    ] {
        w.pool.set_property(d, "encryptionroot", root);
    }
    let asked = |w: &World| -> Vec<(String, bool)> {
        let mut t: Vec<(String, bool)> =
            w.dr.transfers()
                .iter()
                .map(|t| (t.target.clone(), t.inherit_key))
                .collect();
        t.sort();
        t
    };
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Ok, "{:?}", o.report.error);
    let want = |n| {
        vec![
            ("backup/home".to_string(), false),
            ("backup/home/enc".to_string(), false),
            ("backup/home/enc/kid".to_string(), true),
            ("backup/home/enc/own".to_string(), false),
            ("backup/home/plain".to_string(), false),
        ]
        .into_iter()
        .flat_map(|x| std::iter::repeat_n(x, n))
        .collect::<Vec<_>>()
    };
    assert_eq!(asked(&w), want(1));
    // the incremental asks again (a copy received before fjord kept roots is fixed then)
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Ok, "{:?}", o.report.error);
    assert_eq!(asked(&w), want(2));
}

#[tokio::test]
async fn streams_that_are_not_raw_never_ask_for_key_inheritance() {
    let mut w = World::new("recursive = true");
    w.pool.create("tank/home/enc");
    w.pool.create("tank/home/enc/kid");
    w.pool
        .set_property("tank/home/enc/kid", "encryptionroot", "tank/home/enc");
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Ok, "{:?}", o.report.error);
    assert!(w.dr.transfers().iter().all(|t| !t.inherit_key));
}

#[tokio::test]
async fn a_child_renamed_on_the_primary_is_renamed_on_the_dr_node_and_goes_on_incrementally() {
    let mut w = pushed_tree().await;
    w.dr.allow_rename(true);
    w.pool.rename_dataset("tank/home/a", "tank/home/z");
    let before = w.dr.transfers().len();
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Ok, "{:?}", o.report.error);
    assert_eq!(o.report.renamed.len(), 1, "{:?}", o.report.renamed);
    assert_eq!(
        (
            o.report.renamed[0].from.as_str(),
            o.report.renamed[0].to.as_str()
        ),
        ("backup/home/a", "backup/home/z")
    );
    assert!(o.report.removed.is_empty() && o.report.warnings.is_empty());
    assert!(!w.dr.exists("backup/home/a") && w.dr.exists("backup/home/z/b"));
    // z and z/b (its child, renamed with it) arrive incrementally: no full stream
    let after: Vec<_> = w.dr.transfers().into_iter().skip(before).collect();
    assert!(after.iter().all(|t| t.from.is_some()), "{after:?}");
    assert!(after.iter().any(|t| t.target == "backup/home/z/b"));
    let json = o.report.json_lines().pop().unwrap();
    assert!(
        json.contains("\"renamed\":[{\"from\":\"backup/home/a\",\"to\":\"backup/home/z\""),
        "{json}"
    );
}

#[tokio::test]
async fn a_rename_the_dr_node_refuses_sends_the_new_name_in_full_and_reports_the_old_copy() {
    let mut w = pushed_tree().await;
    w.pool.rename_dataset("tank/home/c", "tank/home/d");
    let o = w.push().await;
    assert_eq!(o.report.result, JobResult::Ok, "{:?}", o.report.error);
    assert!(o.report.renamed.is_empty());
    assert!(
        o.report
            .warnings
            .iter()
            .any(|m| m.contains("did not rename") && m.contains("allow_rename")),
        "{:?}",
        o.report.warnings
    );
    let into_d: Vec<_> =
        w.dr.transfers()
            .into_iter()
            .filter(|t| t.target == "backup/home/d")
            .collect();
    assert!(into_d.len() == 1 && into_d[0].from.is_none(), "{into_d:?}");
    assert_eq!(o.report.removed.len(), 1);
    assert_eq!(o.report.removed[0].target, "backup/home/c");
}
