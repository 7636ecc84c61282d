//! Random histories of pushes, failures, operators and retention, over the
//! in-memory fakes: the replication base survives everything, and a push
//! after any history either succeeds or says exactly why not (a diverged
//! target), which `--force` then repairs.

mod support;

use fjord_replicate::fake::{DrFault, PoolFault};
use fjord_replicate::{DatasetResult, JobResult};
use proptest::prelude::*;
use support::World;

#[derive(Clone, Debug)]
enum Op {
    Push,
    PushForced,
    /// The link is lost for good after this many snapshots of the stream.
    PushLinkLost(usize),
    /// `zfs send` fails.
    PushStreamFails,
    /// The DR node is unreachable.
    PushUnreachable,
    /// Someone takes a snapshot of their own on the source.
    ForeignSourceSnapshot,
    /// An operator destroys an unheld source snapshot older than the held
    /// base (as another retention tool would).
    OperatorPrunes(usize),
    /// The DR node's own retention destroys a target snapshot, never its
    /// newest.
    DrRetention(usize),
    /// The target is written to.
    WriteTarget,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => Just(Op::Push),
        1 => Just(Op::PushForced),
        2 => (0usize..3).prop_map(Op::PushLinkLost),
        1 => Just(Op::PushStreamFails),
        1 => Just(Op::PushUnreachable),
        1 => Just(Op::ForeignSourceSnapshot),
        2 => (0usize..8).prop_map(Op::OperatorPrunes),
        2 => (0usize..8).prop_map(Op::DrRetention),
        1 => Just(Op::WriteTarget),
    ]
}

const SOURCE: &str = "tank/home";
const TARGET: &str = "backup/home";

fn common(w: &World) -> bool {
    let src = w.pool.snapshots_of(SOURCE);
    w.dr.snapshots_of(TARGET)
        .iter()
        .any(|t| src.iter().any(|s| s.guid == t.guid))
}

async fn run(ops: Vec<Op>, intermediates: bool) -> Result<(), TestCaseError> {
    let keep = "[job.retention.source]\nhourly = 2\n[job.retention.target]\nhourly = 3\n";
    let mut w = World::new(&format!("intermediates = {intermediates}\n{keep}"));
    let mut had_common = false;
    for (i, op) in ops.into_iter().enumerate() {
        let outcome = match &op {
            Op::Push => Some(w.push().await),
            Op::PushForced => Some(w.push_forced().await),
            Op::PushLinkLost(n) => {
                w.dr.inject(DrFault::LinkLostAfter {
                    target: TARGET.into(),
                    committed: *n,
                });
                Some(w.push().await)
            }
            Op::PushStreamFails => {
                w.pool.inject(PoolFault::StreamFails(SOURCE.into()));
                Some(w.push().await)
            }
            Op::PushUnreachable => {
                w.dr.inject(DrFault::Unreachable);
                Some(w.push().await)
            }
            Op::ForeignSourceSnapshot => {
                w.clock += 60;
                w.pool.set_clock(w.clock);
                let _ = fjord_replicate::Pool::snapshot(
                    &*w.pool,
                    SOURCE,
                    &format!("manual{i}"),
                    false,
                    &[],
                )
                .await;
                None
            }
            Op::OperatorPrunes(k) => {
                let held = w.held(SOURCE);
                let snaps = w.pool.snapshots_of(SOURCE);
                if let Some(newest_held) = snaps.iter().rev().find(|s| held.contains(&s.name)) {
                    let older: Vec<_> = snaps
                        .iter()
                        .filter(|s| s.createtxg < newest_held.createtxg && !held.contains(&s.name))
                        .collect();
                    if !older.is_empty() {
                        let doomed = older[k % older.len()].full_name(SOURCE);
                        prop_assert!(w.pool.destroy(&doomed).is_ok());
                    }
                }
                None
            }
            Op::DrRetention(k) => {
                let snaps = w.dr.snapshots_of(TARGET);
                if snaps.len() > 1 {
                    let doomed = &snaps[k % (snaps.len() - 1)];
                    w.dr.destroy(TARGET, &doomed.name);
                }
                None
            }
            Op::WriteTarget => {
                w.dr.write(TARGET);
                None
            }
        };
        w.pool.clear_faults();
        w.dr.clear_faults();
        if let Some(o) = &outcome {
            for d in &o.report.dataset_reports {
                if !matches!(d.result, DatasetResult::Ok | DatasetResult::UpToDate) {
                    prop_assert!(
                        d.error.as_deref().is_some_and(|e| !e.is_empty()),
                        "{op:?}: {d:?}"
                    );
                }
            }
            let clean = matches!(op, Op::Push | Op::PushForced);
            if clean {
                let r = o.report.result;
                prop_assert!(
                    r == JobResult::Ok || (r == JobResult::Diverged && matches!(op, Op::Push)),
                    "{op:?} after a history: {r:?}: {:?}",
                    o.report.dataset_reports
                );
            }
            if o.report.result == JobResult::Ok {
                let newest = w.pool.snapshots_of(SOURCE).last().map(|s| s.name.clone());
                prop_assert_eq!(
                    w.dr.snapshots_of(TARGET).last().map(|s| s.name.clone()),
                    newest.clone()
                );
                prop_assert_eq!(
                    w.held(SOURCE),
                    newest.into_iter().collect::<Vec<_>>(),
                    "only the new base is held"
                );
            }
        }
        had_common |= common(&w);
        prop_assert!(
            !had_common || common(&w),
            "the common base vanished after {op:?}"
        );
    }
    // Whatever happened, a forced push brings the target up to date.
    let last = w.push_forced().await;
    prop_assert_eq!(
        last.report.result,
        JobResult::Ok,
        "{:?}",
        last.report.dataset_reports
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn the_base_survives_and_every_push_succeeds_or_says_why(
        ops in proptest::collection::vec(op(), 1..24),
        intermediates in any::<bool>(),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops, intermediates))?;
    }
}
