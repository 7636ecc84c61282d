//! `fjord-recv demote`: failback's first step on the old primary. Reads
//! the tree's state from `zfs`, asks the pure planner
//! (`fjord_dr::demote::plan`) what to do, and does it, step by step,
//! saying what it did and what it kept.

use anyhow::{anyhow, Context};
use fjord_cli::Failure;
use fjord_dr::demote::{
    self, Action, Copy, DemoteState, Plan, Request, INERT_PROPS, KEPT_FROM_PROP,
};
use fjord_dr::promote::PROMOTED_PROP;
use fjord_zfs::Zfs;
use serde::Serialize;

/// Make a former primary a receive target again (failback), keeping
/// every write the promoted copy does not have.
///
/// Run it on the old primary when it comes back after a failover, with
/// its application and push timer stopped. For DATASET and its children:
///   1. unmounts them;
///   2. if anything was written after the base (the last replicated
///      snapshot: the newest one fjord holds, or --base, the recovery
///      point `fjord-recv promote` printed on the DR node), snapshots the
///      tree (@fjord_diverged_TIME), renames it aside to
///      DATASET-diverged-TIME, and clones its base back to DATASET
///      (zfs clone + zfs promote): DATASET is at the base again, the aside
///      tree keeps the diverged snapshots and writes. Nothing is
///      destroyed; the aside tree is listed, and yours to mount, send or
///      destroy;
///   3. makes them inert (readonly=on, canmount=noauto), lifts the fence
///      fjord:promoted if DATASET was promoted, and marks it
///      fjord:demoted (fjord-send push refuses to snapshot or send it).
///
/// Then `fjord-recv serve` here, with the DR node's key as a client, and
/// `fjord-send push` on the DR node replicate the promoted copy back as
/// plain incrementals. `fjord-recv promote DATASET` makes it the primary
/// again (README, "Game day"). Running demote again finishes an
/// interrupted run.
///
/// Exit status: 0 demoted (or planned); 4 refused (the message says what
/// to add) or a step failed (run it again); 3 zfs could not be run.
///
/// Examples:
///   fjord-recv demote tank/data --dry-run
///   fjord-recv demote tank/data --base fjord_2026-12-03T142000Z
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The former primary's dataset (its children go with it).
    #[arg(value_name = "DATASET")]
    dataset: String,
    /// The common snapshot (short name) the DR node's pushes start from;
    /// default the newest snapshot fjord holds.
    #[arg(long, value_name = "SNAPSHOT")]
    base: Option<String>,
    /// Print what it would do; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Report<'a> {
    dataset: &'a str,
    dry_run: bool,
    base: &'a str,
    kept: &'a Option<demote::Kept>,
    actions: Vec<Done>,
    notes: &'a [String],
    error: Option<String>,
}

#[derive(Serialize)]
struct Done {
    #[serde(flatten)]
    action: Action,
    describe: String,
    done: bool,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    fjord_zfs::names::validate_dataset(&args.dataset)
        .map_err(|e| Failure::job_failed(anyhow!("DATASET: {e}")))?;
    crate::rt::block_on(demote_tree(args)).map_err(Failure::Io)?
}

async fn demote_tree(args: Args) -> Result<(), Failure> {
    let zfs = Zfs::new();
    zfs.locate().map_err(Failure::io)?;
    let req = Request {
        base: args.base.clone(),
        now: now(),
    };
    let state = read_state(&zfs, &args.dataset, &req)
        .await
        .map_err(Failure::Io)?;
    let plan = demote::plan(&state, &req).map_err(Failure::job_failed)?;
    if !args.json {
        print_head(&plan, args.dry_run);
    }
    let mut done = Vec::new();
    let result = if args.dry_run {
        done = plan
            .actions
            .iter()
            .map(|a| Done {
                action: a.clone(),
                describe: a.describe(),
                done: false,
            })
            .collect();
        if !args.json {
            plan.actions
                .iter()
                .for_each(|a| println!("would: {}", a.describe()));
        }
        Ok(())
    } else {
        carry_out(&zfs, &plan, &mut done, args.json).await
    };
    let report = Report {
        dataset: &args.dataset,
        dry_run: args.dry_run,
        base: &plan.base,
        kept: &plan.kept,
        actions: done,
        notes: &plan.notes,
        error: result.as_ref().err().map(fjord_cli::render),
    };
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
        );
    } else if result.is_ok() && !args.dry_run {
        println!(
            "demoted: {} is at @{}, inert, and ready to receive; start `fjord-recv serve` here and push from the DR node",
            args.dataset, plan.base
        );
    }
    result.map_err(Failure::JobFailed)
}

fn print_head(plan: &Plan, dry_run: bool) {
    let verb = if dry_run { "would demote" } else { "demoting" };
    println!("{verb} {} to its base @{}", plan.dataset, plan.base);
    match &plan.kept {
        None => println!("nothing was written after @{}: nothing to keep", plan.base),
        Some(k) => {
            println!(
                "keeping the writes made after @{} as {}:",
                plan.base, k.dataset
            );
            for (ds, snap) in &k.snapshots {
                println!("  kept: {ds}@{snap}");
            }
            for (ds, bytes) in &k.written {
                println!("  kept: {ds}: {bytes} bytes written after the base");
            }
        }
    }
    plan.notes.iter().for_each(|n| println!("note: {n}"));
}

async fn carry_out(
    zfs: &Zfs,
    plan: &Plan,
    done: &mut Vec<Done>,
    quiet: bool,
) -> anyhow::Result<()> {
    for a in &plan.actions {
        run_action(zfs, a).await.with_context(|| {
            format!(
                "{} failed; the steps before it were done, run demote again to finish",
                a.describe()
            )
        })?;
        if !quiet {
            println!("done: {}", a.describe());
        }
        done.push(Done {
            action: a.clone(),
            describe: a.describe(),
            done: true,
        });
    }
    Ok(())
}

async fn run_action(zfs: &Zfs, a: &Action) -> anyhow::Result<()> {
    match a {
        Action::Set {
            dataset,
            property,
            value,
        } => zfs.set_property(dataset, property, value).await?,
        Action::Unmount { dataset } => zfs.unmount(dataset).await?,
        Action::Snapshot { snapshot } => {
            let (ds, short) = snapshot
                .split_once('@')
                .ok_or_else(|| anyhow!("{snapshot} is no snapshot name"))?;
            zfs.snapshot_recursive(ds, short, true).await?
        }
        Action::RenameAside { from, to } => zfs.rename(from, to).await?,
        Action::Clone { snapshot, dataset } => {
            let props: Vec<(String, String)> = INERT_PROPS
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            zfs.clone_snapshot(snapshot, dataset, &props).await?
        }
        Action::Promote { dataset } => zfs.promote(dataset).await?,
        Action::Rollback { snapshot } => zfs.rollback(snapshot, false).await?,
        Action::LiftFence { dataset } => zfs.inherit(dataset, PROMOTED_PROP).await?,
    }
    Ok(())
}

/// The tree's state, the aside tree of an unfinished run, and (once the
/// base is known) what was written after it.
async fn read_state(zfs: &Zfs, root: &str, req: &Request) -> anyhow::Result<DemoteState> {
    let mut state = DemoteState {
        root: root.into(),
        ..Default::default()
    };
    if zfs.dataset_exists(root).await? {
        (state.promoted, state.demoted) = crate::promote::role_markers(zfs, root).await?;
        for dataset in zfs.children(root).await? {
            state.copies.push(read_copy(zfs, &dataset).await?);
        }
    }
    state.aside = read_aside(zfs, &state).await?;
    if state.aside.is_none() && !state.copies.is_empty() {
        let base = demote::base_of(&state, req).map_err(|e| anyhow!(e))?;
        for c in &mut state.copies {
            if c.snapshots.contains(&base) {
                c.written_since_base = Some(zfs.written_since(&c.dataset, &base).await?);
            }
        }
    }
    Ok(state)
}

async fn read_copy(zfs: &Zfs, dataset: &str) -> anyhow::Result<Copy> {
    let infos = zfs.snapshots(dataset).await?;
    let full: Vec<String> = infos.iter().map(|s| s.full_name(dataset)).collect();
    let holds = if full.is_empty() {
        Vec::new()
    } else {
        zfs.holds_of(&full).await?
    };
    let props = zfs
        .properties(dataset, &["mounted", "readonly", "canmount"])
        .await?;
    let value = |n: &str| {
        props
            .iter()
            .find(|p| p.name == n)
            .map(|p| p.value.clone())
            .unwrap_or_default()
    };
    let fjord_held = infos
        .iter()
        .filter(|s| {
            let full = s.full_name(dataset);
            holds
                .iter()
                .any(|(snap, tag)| *snap == full && tag.starts_with("fjord-"))
        })
        .map(|s| s.name.clone())
        .collect();
    Ok(Copy {
        dataset: dataset.into(),
        snapshots: infos.iter().map(|s| s.name.clone()).collect(),
        fjord_held,
        written_since_base: None,
        origin: zfs.origin(dataset).await?,
        mounted: value("mounted") == "yes",
        readonly: value("readonly"),
        canmount: value("canmount"),
    })
}

/// The newest tree kept aside from `state.root` whose demotion is not
/// finished: the root is missing, or part of its tree is still a clone of
/// the aside tree, or (not yet marked demoted) lacks a dataset the aside
/// tree has a base for.
async fn read_aside(
    zfs: &Zfs,
    state: &DemoteState,
) -> anyhow::Result<Option<(String, String, Vec<Copy>)>> {
    let Some((parent, _)) = state.root.rsplit_once('/') else {
        return Ok(None);
    };
    let prefix = format!("{}@", state.root);
    let found = zfs
        .children_with_prop(parent, KEPT_FROM_PROP)
        .await?
        .into_iter()
        .filter_map(|(name, v)| Some((name, v?)))
        .filter(|(_, v)| v.starts_with(&prefix))
        .max_by(|a, b| a.0.cmp(&b.0));
    let Some((aside, kept_from)) = found else {
        return Ok(None);
    };
    let base = kept_from[prefix.len()..].to_string();
    let mut copies = Vec::new();
    for dataset in zfs.children(&aside).await? {
        copies.push(read_copy(zfs, &dataset).await?);
    }
    let in_aside = |o: &Option<String>| {
        o.as_deref().is_some_and(|o| {
            o.starts_with(&format!("{aside}@")) || o.starts_with(&format!("{aside}/"))
        })
    };
    let missing = copies.iter().any(|a| {
        a.snapshots.contains(&base)
            && !state
                .copies
                .iter()
                .any(|c| c.dataset == format!("{}{}", state.root, &a.dataset[aside.len()..]))
    });
    // promoted back but not yet marked: the aside root is the clone now
    let swapped = copies
        .first()
        .is_some_and(|a| a.origin.as_deref() == Some(kept_from.as_str()));
    let unfinished = state.copies.is_empty()
        || state.copies.iter().any(|c| in_aside(&c.origin))
        || ((missing || swapped) && state.demoted.is_none());
    Ok(unfinished.then_some((aside, base, copies)))
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
