//! `fjord-recv promote`: failover. Reads the copy's state from `zfs`,
//! asks the pure planner (`fjord_dr::promote::plan`) what to do, and does
//! it, step by step, saying what it did.

use anyhow::{anyhow, Context};
use fjord_cli::Failure;
use fjord_dr::promote::{
    self, format_time, Action, CopyState, Plan, PropState, Request, TreeState, LOG_POSITION_PROPS,
    PROMOTED_PROP, RESTORED_PROPS,
};
use fjord_dr::DR_HOLD_TAG;
use fjord_zfs::props::PropSource;
use fjord_zfs::Zfs;
use serde::Serialize;

/// Make a DR copy the primary (failover), and fence it.
///
/// For DATASET and its children, parents first:
///   1. fences it: sets the user property fjord:promoted (time and
///      recovery point) on DATASET; from then on `fjord-recv serve`
///      refuses every push into it or its children (the old primary's
///      push exits 8 and quotes when it was promoted);
///   2. aborts an unfinished receive (zfs recv -A);
///   3. rolls back to the recovery point if the copy changed since it, or
///      if --snapshot names an older one (newer snapshots are destroyed
///      only with --destroy-newer, never one held by another tag);
///   4. reverts what the receiver forced (readonly, canmount, mountpoint,
///      setuid, devices: zfs inherit -S, back to the primary's values when
///      the stream carried them, else inherited; sharenfs/sharesmb stay
///      off) and mounts it.
///
/// It prints the recovery point (the snapshot, its age, and the database
/// log position recorded with it, e.g. fjord:wal_lsn) and each step.
/// Running it again finishes an interrupted promotion; it never rolls a
/// promoted copy back.
///
/// Stop `fjord-recv serve` first if a push may be running into DATASET
/// (zfs recv -A fails on a receive in progress).
///
/// Exit status: 0 promoted (or, with --dry-run, planned); 4 refused (the
/// message says what to add) or a step failed (the steps done are
/// printed; run it again); 3 zfs could not be run or read.
///
/// To fail back (README, "Game day"): `fjord-recv demote` on the old
/// primary keeps its own writes aside, this node pushes DATASET back to
/// it, then `fjord-recv promote` there and `fjord-recv demote DATASET`
/// here (which lifts the fence). Promoting a demoted former primary
/// lifts its fjord:demoted marker, so that its pushes run again.
///
/// Examples:
///   fjord-recv promote backup/oslo/data --dry-run
///   fjord-recv promote backup/oslo/data
///   fjord-recv promote backup/oslo/data --snapshot fjord_2026-12-03T140000Z --destroy-newer
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The DR copy to promote (its children are promoted with it).
    #[arg(value_name = "DATASET")]
    dataset: String,
    /// The recovery point (short snapshot name); default the newest
    /// complete snapshot.
    #[arg(long, value_name = "SNAPSHOT")]
    snapshot: Option<String>,
    /// Allow an older --snapshot to destroy the snapshots after it.
    #[arg(long)]
    destroy_newer: bool,
    /// Mount DATASET here instead of the primary's (or inherited)
    /// mountpoint.
    #[arg(long, value_name = "PATH")]
    mountpoint: Option<String>,
    /// Print what it would do; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

/// The outcome, as `--json` prints it.
#[derive(Serialize)]
struct Report<'a> {
    dataset: &'a str,
    dry_run: bool,
    already_promoted: Option<String>,
    recovery_points: Vec<Point<'a>>,
    actions: Vec<Done>,
    notes: Vec<String>,
    mountpoint: Option<String>,
    mounted: Option<bool>,
    error: Option<String>,
}

#[derive(Serialize)]
struct Point<'a> {
    #[serde(flatten)]
    point: &'a promote::RecoveryPoint,
    created: String,
}

#[derive(Serialize)]
struct Done {
    #[serde(flatten)]
    action: Action,
    describe: String,
    done: bool,
    skipped: Option<String>,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    fjord_zfs::names::validate_dataset(&args.dataset)
        .map_err(|e| Failure::job_failed(anyhow!("DATASET: {e}")))?;
    crate::rt::block_on(promote_tree(args)).map_err(Failure::Io)?
}

async fn promote_tree(args: Args) -> Result<(), Failure> {
    let zfs = Zfs::new();
    zfs.locate().map_err(Failure::io)?;
    let tree = read_tree(&zfs, &args.dataset).await.map_err(Failure::Io)?;
    let req = Request {
        snapshot: args.snapshot.clone(),
        mountpoint: args.mountpoint.clone(),
        destroy_newer: args.destroy_newer,
        now: now(),
    };
    let plan = promote::plan(&tree, &req).map_err(Failure::job_failed)?;
    let mut report = Report {
        dataset: &args.dataset,
        dry_run: args.dry_run,
        already_promoted: plan.already_promoted.as_ref().map(|m| m.render()),
        recovery_points: plan
            .recovery_points
            .iter()
            .map(|p| Point {
                point: p,
                created: format_time(p.creation),
            })
            .collect(),
        actions: Vec::new(),
        notes: plan.notes.clone(),
        mountpoint: None,
        mounted: None,
        error: None,
    };
    if !args.json {
        print_head(&plan, args.dry_run);
    }
    let result = if args.dry_run {
        report.actions = plan
            .actions
            .iter()
            .map(|a| Done {
                action: a.clone(),
                describe: a.describe(),
                done: false,
                skipped: None,
            })
            .collect();
        if !args.json {
            for a in &plan.actions {
                println!("would: {}", a.describe());
            }
        }
        Ok(())
    } else {
        let r = carry_out(&zfs, &plan, &mut report.actions, args.json).await;
        let root = zfs
            .properties(&args.dataset, &["mountpoint", "mounted"])
            .await
            .unwrap_or_default();
        let value = |n: &str| root.iter().find(|p| p.name == n).map(|p| p.value.clone());
        report.mountpoint = value("mountpoint");
        report.mounted = value("mounted").map(|m| m == "yes");
        r
    };
    if let Err(e) = &result {
        report.error = Some(fjord_cli::render(e));
    }
    print_tail(&args, &report, result.is_ok());
    result.map_err(Failure::JobFailed)
}

/// The JSON object, or the closing lines of a promotion that went through.
fn print_tail(args: &Args, report: &Report<'_>, ok: bool) {
    if args.json {
        println!(
            "{}",
            serde_json::to_string(report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
    } else if ok && !args.dry_run {
        println!(
            "promoted: {} is writable{}; pushes into it are refused from now on",
            args.dataset,
            match (&report.mounted, &report.mountpoint) {
                (Some(true), Some(m)) => format!(" and mounted at {m}"),
                _ => " (not mounted)".into(),
            }
        );
        println!(
            "to fail back: `fjord-recv demote` on the old primary, push {} back to it, then promote it there and `fjord-recv demote` it here (README, \"Game day\")",
            args.dataset
        );
    }
}

fn print_head(plan: &Plan, dry_run: bool) {
    println!(
        "{} {}",
        if dry_run {
            "would promote"
        } else {
            "promoting"
        },
        plan.dataset
    );
    if let Some(m) = &plan.already_promoted {
        println!("already promoted at {}", format_time(m.at));
    }
    for p in &plan.recovery_points {
        let log = p
            .log_position
            .as_ref()
            .map(|l| format!(", {} {}", l.property, l.value))
            .unwrap_or_default();
        println!(
            "recovery point: {}@{} (created {}, {} old){log}",
            p.dataset,
            p.snapshot,
            format_time(p.creation),
            fjord_dr::status::human(p.age_secs)
        );
    }
    for n in &plan.notes {
        println!("note: {n}");
    }
}

/// Runs the plan's actions in order; stops at the first failure.
async fn carry_out(
    zfs: &Zfs,
    plan: &Plan,
    done: &mut Vec<Done>,
    quiet: bool,
) -> anyhow::Result<()> {
    for a in &plan.actions {
        let skipped = run_action(zfs, a).await.with_context(|| {
            format!(
                "{} failed; the steps before it were done, run promote again to finish",
                a.describe()
            )
        })?;
        if !quiet {
            match &skipped {
                None => println!("done: {}", a.describe()),
                Some(why) => println!("skipped: {}: {why}", a.describe()),
            }
        }
        done.push(Done {
            action: a.clone(),
            describe: a.describe(),
            done: skipped.is_none(),
            skipped,
        });
    }
    Ok(())
}

/// One action; `Some(why)` when it was not needed after all.
async fn run_action(zfs: &Zfs, a: &Action) -> anyhow::Result<Option<String>> {
    match a {
        Action::Fence { dataset, value } => zfs.set_property(dataset, PROMOTED_PROP, value).await?,
        Action::LiftDemoted { dataset } => {
            zfs.inherit(dataset, fjord_dr::demote::DEMOTED_PROP).await?
        }
        Action::AbortPartialReceive { dataset } => zfs.recv_abort(dataset).await?,
        Action::ReleaseHold { snapshot } => match zfs.release(DR_HOLD_TAG, snapshot).await {
            Err(e) if e.is_no_such_hold() => return Ok(Some("no such hold".into())),
            r => r?,
        },
        Action::Rollback { snapshot, destroys } => {
            zfs.rollback(snapshot, !destroys.is_empty()).await?
        }
        Action::RestoreProperty {
            dataset, property, ..
        } => zfs.inherit_received(dataset, property).await?,
        Action::SetMountpoint { dataset, path } => {
            zfs.set_property(dataset, "mountpoint", path).await?
        }
        Action::Mount { dataset } => {
            let p = zfs
                .properties(dataset, &["mountpoint", "canmount", "mounted"])
                .await?;
            let v = |n: &str| p.iter().find(|x| x.name == n).map(|x| x.value.as_str());
            if v("mounted") == Some("yes") {
                return Ok(Some("already mounted".into()));
            }
            if let Some(m @ ("none" | "legacy")) = v("mountpoint") {
                return Ok(Some(format!("mountpoint={m}: mount it yourself")));
            }
            if v("canmount") == Some("off") {
                return Ok(Some("canmount=off (the primary's value)".into()));
            }
            zfs.mount(dataset).await?
        }
    }
    Ok(None)
}

/// Why a promotion asked for over the network did not happen.
pub(crate) enum RemotePromoteError {
    /// The plan refuses (another recovery point, no such snapshot, ...).
    Refused(promote::PromoteError),
    /// Reading the copy or a step failed.
    Failed(anyhow::Error),
}

/// A promotion of `dataset` to `snapshot` asked by a sender's
/// `fjord-send switchover` (the receiver checked its grant): the same plan
/// and steps as the command, logged instead of printed. Returns what it
/// did, in one line.
pub(crate) async fn promote_for_switchover(
    zfs: &Zfs,
    dataset: &str,
    snapshot: &str,
) -> Result<String, RemotePromoteError> {
    let tree = read_tree(zfs, dataset)
        .await
        .map_err(RemotePromoteError::Failed)?;
    let req = Request {
        snapshot: Some(snapshot.to_string()),
        mountpoint: None,
        destroy_newer: false,
        now: now(),
    };
    let plan = promote::plan(&tree, &req).map_err(RemotePromoteError::Refused)?;
    let mut done = Vec::new();
    carry_out(zfs, &plan, &mut done, true)
        .await
        .map_err(RemotePromoteError::Failed)?;
    for d in &done {
        tracing::info!(dataset, step = %d.describe, done = d.done, "switchover: promote step");
    }
    Ok(format!(
        "{dataset} promoted to @{snapshot} on the DR node ({} step(s)); pushes into it are refused from now on",
        done.iter().filter(|d| d.done).count()
    ))
}

/// `fjord:promoted` and `fjord:demoted` as set on `root` itself (not
/// inherited), in one `zfs get`.
pub(crate) async fn role_markers(
    zfs: &Zfs,
    root: &str,
) -> anyhow::Result<(Option<String>, Option<String>)> {
    let demoted_prop = fjord_dr::demote::DEMOTED_PROP;
    let props = zfs.properties(root, &[PROMOTED_PROP, demoted_prop]).await?;
    let local = |name: &str| {
        props
            .iter()
            .find(|p| p.name == name && p.source == PropSource::Local)
            .map(|p| p.value.clone())
    };
    Ok((local(PROMOTED_PROP), local(demoted_prop)))
}

/// The tree's state, parents first.
async fn read_tree(zfs: &Zfs, root: &str) -> anyhow::Result<TreeState> {
    if !zfs.dataset_exists(root).await? {
        anyhow::bail!("{root} does not exist on this node (`zfs list -r` shows the copies)");
    }
    let (marker, demoted) = role_markers(zfs, root).await?;
    let mut copies = Vec::new();
    for dataset in zfs.children(root).await? {
        copies.push(read_copy(zfs, &dataset).await?);
    }
    Ok(TreeState {
        marker,
        demoted,
        copies,
    })
}

async fn read_copy(zfs: &Zfs, dataset: &str) -> anyhow::Result<CopyState> {
    let infos = zfs.snapshots(dataset).await?;
    let full: Vec<String> = infos.iter().map(|s| s.full_name(dataset)).collect();
    let holds = if full.is_empty() {
        Vec::new()
    } else {
        zfs.holds_of(&full).await?
    };
    let (snapshots, dr_held) = fjord_dr::target_snapshots(&infos, holds);
    let mut wanted: Vec<&str> = RESTORED_PROPS.to_vec();
    wanted.extend(["mounted", "type"]);
    let props = zfs.properties(dataset, &wanted).await?;
    let is = |name: &str, value: &str| props.iter().any(|p| p.name == name && p.value == value);
    let mounted = is("mounted", "yes");
    let volume = is("type", "volume");
    let props = props
        .into_iter()
        .filter(|p| p.name != "mounted" && p.name != "type")
        .map(|p| PropState {
            local: p.source == PropSource::Local,
            name: p.name,
            value: p.value,
            received: p.received,
        })
        .collect();
    let mut log_positions = Vec::new();
    for prop in LOG_POSITION_PROPS {
        for (snap, value) in zfs.snapshot_property(dataset, prop).await? {
            log_positions.push((snap, prop.to_string(), value));
        }
    }
    Ok(CopyState {
        dataset: dataset.into(),
        snapshots,
        dr_held,
        partial_receive: zfs.resume_token(dataset).await?.is_some(),
        written: zfs.written(dataset).await?,
        props,
        mounted,
        volume,
        log_positions,
    })
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
