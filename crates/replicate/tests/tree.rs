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
