//! The ransomware tripwire over the in-memory fakes: a push whose stream
//! turns incompressible and rewrites existing files trips, pauses the
//! source's pruning (with `pause_pruning`), shows in the report, the
//! tripwire file and the metrics; `tripwire ack` resumes pruning; a
//! normal push after it does not trip.

mod support;

use fjord_replicate::tripwire::{self, Book, StreamFigures, Verdict};
use fjord_replicate::{JobOutcome, StateFiles};
use support::World;

const MIB: u64 = 1 << 20;

/// Figures of `write` MiB of blocks, `incompressible` and `rewritten` MiB
/// of them.
fn figures(write: u64, incompressible: u64, rewritten: u64) -> StreamFigures {
    StreamFigures {
        write_bytes: write * MIB,
        probed_bytes: write * MIB,
        incompressible_bytes: incompressible * MIB,
        aged_bytes: write * MIB,
        rewritten_bytes: rewritten * MIB,
    }
}

fn verdict(o: &JobOutcome) -> Option<Verdict> {
    o.report.dataset_reports[0]
        .tripwire
        .as_ref()
        .map(|t| t.judgement.verdict.clone())
}

const CONFIG: &str = "[job.retention.source]\nhourly = 1\n[job.tripwire]\nmin_history = 3\nmin_bytes = \"2M\"\npause_pruning = true\n";

fn with_metrics(w: &World) -> StateFiles {
    StateFiles {
        state_dir: w.state.path().to_path_buf(),
        metrics_file: Some(w.state.path().join("fjord.prom")),
    }
}

async fn push(w: &mut World) -> JobOutcome {
    let state = with_metrics(w);
    let o = w.push_with(false, false, state).await;
    assert!(o.state_errors.is_empty(), "{:?}", o.state_errors);
    o
}

fn metrics(w: &World) -> String {
    std::fs::read_to_string(w.state.path().join("fjord.prom")).expect("metrics file")
}

#[tokio::test]
async fn a_tripping_push_pauses_pruning_until_acknowledged() {
    let mut w = World::new(CONFIG);
    w.pool.set_stream_figures("tank/home", figures(10, 1, 1));
    // The full send is not measured; three normal incrementals build the history.
    assert_eq!(verdict(&push(&mut w).await), None);
    for _ in 0..3 {
        assert_eq!(verdict(&push(&mut w).await), Some(Verdict::Learning));
    }
    assert_eq!(verdict(&push(&mut w).await), Some(Verdict::Normal));
    // A tiny push is not judged, whatever it carries.
    w.pool.set_stream_figures("tank/home", figures(1, 1, 1));
    assert_eq!(verdict(&push(&mut w).await), Some(Verdict::NotJudged));

    // Mass encryption: 10 MiB rewritten with random data.
    w.pool.set_stream_figures("tank/home", figures(10, 10, 10));
    let before = w.source_names("tank/home").len();
    let attack = push(&mut w).await;
    let d = &attack.report.dataset_reports[0];
    let t = d.tripwire.as_ref().expect("measured");
    assert_eq!(
        t.judgement.verdict,
        Verdict::Tripped,
        "{}",
        t.judgement.reason
    );
    assert!(t.pruning_paused && d.pruned_source.is_empty());
    assert!(
        d.warnings.iter().any(|w| w.contains("tripwire ack home")),
        "{:?}",
        d.warnings
    );
    let json = &attack.report.json_lines()[0];
    assert!(
        json.contains("\"tripwire\":{") && json.contains("\"verdict\":\"tripped\""),
        "{json}"
    );
    assert_eq!(w.source_names("tank/home").len(), before + 1);
    assert!(metrics(&w).contains("fjord_tripwire_tripped{job=\"home\",dataset=\"tank/home\"} 1\n"));
    assert!(metrics(&w)
        .contains("fjord_tripwire_incompressible_ratio{job=\"home\",dataset=\"tank/home\"} 1\n"));

    // Back to normal: not tripped, but the alarm waits and pruning stays paused.
    w.pool.set_stream_figures("tank/home", figures(10, 1, 1));
    let after = push(&mut w).await;
    assert_eq!(verdict(&after), Some(Verdict::Normal));
    assert!(after.report.dataset_reports[0].pruned_source.is_empty());
    assert_eq!(w.source_names("tank/home").len(), before + 2);
    let book = Book::load(w.state.path(), "home").unwrap();
    assert!(book.alarm("tank/home").is_some());
    // The tripping push did not join the history.
    assert!(book
        .history("tank/home")
        .iter()
        .all(|s| s.incompressible < Some(0.5)));

    // The operator acknowledges: the alarm clears, the metric drops, pruning resumes.
    let state = with_metrics(&w);
    let cleared = tripwire::acknowledge(&state, "home", None, support::T0).unwrap();
    assert_eq!(cleared, ["tank/home"]);
    assert!(metrics(&w).contains("fjord_tripwire_tripped{job=\"home\",dataset=\"tank/home\"} 0\n"));
    assert!(tripwire::acknowledge(&state, "home", None, support::T0)
        .unwrap()
        .is_empty());
    let resumed = push(&mut w).await;
    assert_eq!(verdict(&resumed), Some(Verdict::Normal));
    assert!(!resumed.report.dataset_reports[0].pruned_source.is_empty());
    assert!(Book::load(w.state.path(), "home")
        .unwrap()
        .alarm("tank/home")
        .is_none());
}

#[tokio::test]
async fn without_pause_pruning_a_trip_only_warns() {
    let mut w = World::new(
        "[job.retention.source]\nhourly = 1\n[job.tripwire]\nmin_history = 1\nmin_bytes = \"1M\"\n",
    );
    w.pool.set_stream_figures("tank/home", figures(4, 0, 0));
    push(&mut w).await;
    push(&mut w).await;
    w.pool.set_stream_figures("tank/home", figures(4, 4, 0));
    let o = push(&mut w).await;
    let d = &o.report.dataset_reports[0];
    assert_eq!(verdict(&o), Some(Verdict::Tripped));
    assert!(!d.tripwire.as_ref().unwrap().pruning_paused);
    assert!(!d.pruned_source.is_empty());
}

#[tokio::test]
async fn each_dataset_is_judged_against_its_own_history() {
    // Two datasets with different habits: the media one is always mostly
    // incompressible and cannot trip on that share; the documents one trips.
    let mut w =
        World::new("recursive = true\n[job.tripwire]\nmin_history = 2\nmin_bytes = \"1M\"\n");
    w.pool.create("tank/home/media");
    w.pool.set_stream_figures("tank/home", figures(8, 0, 1));
    w.pool
        .set_stream_figures("tank/home/media", figures(8, 7, 0));
    let first = push(&mut w).await;
    assert!(first
        .report
        .dataset_reports
        .iter()
        .all(|d| d.tripwire.is_none()));
    push(&mut w).await;
    push(&mut w).await;
    w.pool.set_stream_figures("tank/home", figures(8, 8, 8));
    w.pool
        .set_stream_figures("tank/home/media", figures(8, 8, 8));
    let o = push(&mut w).await;
    let by = |s: &str| {
        o.report
            .dataset_reports
            .iter()
            .find(|d| d.source == s)
            .and_then(|d| d.tripwire.as_ref())
            .map(|t| (t.judgement.verdict.clone(), t.judgement.reason.clone()))
            .expect("judged")
    };
    let (home, why) = by("tank/home");
    assert_eq!(home, Verdict::Tripped, "{why}");
    assert!(
        why.contains("incompressible 100% (usually 0%)")
            && why.contains("rewritten 100% (usually 12%)"),
        "{why}"
    );
    let (media, why) = by("tank/home/media");
    // Incompressible 100% is under 3 x 88%; rewritten 100% against 0% trips.
    assert_eq!(media, Verdict::Tripped, "{why}");
    assert!(
        why.contains("rewritten") && !why.contains("incompressible"),
        "{why}"
    );
    let book = Book::load(w.state.path(), "home").unwrap();
    assert!(book.alarm("tank/home").is_some() && book.alarm("tank/home/media").is_some());
    // Acknowledging one dataset leaves the other's alarm.
    let state = with_metrics(&w);
    assert_eq!(
        tripwire::acknowledge(&state, "home", Some("tank/home/media"), support::T0).unwrap(),
        ["tank/home/media"]
    );
    let book = Book::load(w.state.path(), "home").unwrap();
    assert!(book.alarm("tank/home").is_some() && book.alarm("tank/home/media").is_none());
    // A dry run measures nothing.
    let state = with_metrics(&w);
    let dry = w.push_with(false, true, state).await;
    assert!(dry
        .report
        .dataset_reports
        .iter()
        .all(|d| d.tripwire.is_none()));
}
