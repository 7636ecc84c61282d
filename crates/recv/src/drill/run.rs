//! One drill per target, step by step: read, plan, clone, mount, check,
//! destroy (always), record, report.

use super::check::{self, Env};
use super::state;
use anyhow::{anyhow, Context};
use fjord_cli::Failure;
use fjord_config::drill::{DrillConfig, DrillTarget};
use fjord_dr::drill::record::{tail, DrillRecord, Outcome};
use fjord_dr::drill::{self, Action, DrillState, Plan, Request, DRILL_PROP};
use fjord_dr::promote::{format_time, LOG_POSITION_PROPS};
use fjord_zfs::Zfs;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::signal::unix::{signal, Signal, SignalKind};

/// How the drills run.
pub struct Options {
    /// `--snapshot`.
    pub snapshot: Option<String>,
    /// `--dry-run`.
    pub dry_run: bool,
    /// `--json`.
    pub json: bool,
}

/// What `--json` prints for one drill.
#[derive(Serialize, Default)]
struct Report {
    dataset: String,
    dry_run: bool,
    /// `ok`, `failed`, or `planned` (--dry-run).
    result: String,
    plan: Option<Plan>,
    steps: Vec<Step>,
    check: String,
    duration_secs: f64,
    output_tail: String,
    error: Option<String>,
    record: Option<PathBuf>,
    /// Stopped by a signal: the other drills do not run.
    interrupted: bool,
}

#[derive(Serialize)]
struct Step {
    #[serde(flatten)]
    action: Action,
    describe: String,
    ok: bool,
    error: Option<String>,
}

/// Runs the drills of `targets`, one after the other, under the node's
/// drill lock.
pub async fn drills(
    drill: &DrillConfig,
    targets: &[DrillTarget],
    opts: &Options,
) -> Result<(), Failure> {
    let zfs = Zfs::new();
    zfs.locate().map_err(Failure::io)?;
    let state_dir = drill.state_dir();
    let _lock = if opts.dry_run {
        None
    } else {
        let dir = state_dir.clone();
        let locked = tokio::task::spawn_blocking(move || state::lock(&dir))
            .await
            .map_err(|e| Failure::state(anyhow!("locking: {e}")))?;
        match locked {
            Ok(Some(f)) => Some(f),
            Ok(None) => {
                return Err(Failure::locked(anyhow!(
                    "another drill is running on this node (it holds {}/drill.lock)",
                    state::dir(&state_dir).display()
                )))
            }
            Err(e) => return Err(Failure::state(e)),
        }
    };
    let mut term = signal(SignalKind::terminate()).map_err(Failure::io)?;
    let mut int = signal(SignalKind::interrupt()).map_err(Failure::io)?;
    let mut failed = Vec::new();
    for t in targets {
        let report = drill_one(&zfs, drill, t, opts, (&mut term, &mut int)).await;
        if opts.json {
            println!(
                "{}",
                serde_json::to_string(&report).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
            );
        }
        if let (Some(e), true) = (&report.error, report.record.is_none() && !opts.dry_run) {
            // Not even recorded: the state directory is the problem.
            return Err(Failure::state(anyhow!("{}: {e}", t.dataset)));
        }
        if report.result == "failed" {
            failed.push(t.dataset.clone());
            if report.interrupted {
                break;
            }
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Failure::job_failed(anyhow!(
            "drill failed: {}",
            failed.join(", ")
        )))
    }
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// One drill; its report (with `record` set once it was recorded).
async fn drill_one(
    zfs: &Zfs,
    drill: &DrillConfig,
    t: &DrillTarget,
    opts: &Options,
    signals: (&mut Signal, &mut Signal),
) -> Report {
    let started = Instant::now();
    let at = now();
    let mut report = Report {
        dataset: t.dataset.clone(),
        dry_run: opts.dry_run,
        check: check::describe(&t.check, t),
        ..Report::default()
    };
    let req = Request {
        snapshot: opts.snapshot.clone(),
        scratch: drill.scratch.clone(),
        mount_dir: drill.mount_dir().display().to_string(),
        writable: t.writable,
        check: report.check.clone(),
        now: at,
    };
    let planned = read_state(zfs, &t.dataset, &drill.scratch)
        .await
        .and_then(|s| drill::plan(&s, &req).map_err(anyhow::Error::from));
    let result = match planned {
        Err(e) => Err(e),
        Ok(plan) => {
            if !opts.json {
                print_head(&plan, opts.dry_run);
            }
            let r = if opts.dry_run {
                Ok(())
            } else {
                carry_out(zfs, drill, t, &plan, &mut report, opts.json, signals).await
            };
            report.plan = Some(plan);
            r
        }
    };
    report.duration_secs = started.elapsed().as_secs_f64();
    report.result = match (&result, opts.dry_run) {
        (Ok(()), true) => "planned",
        (Ok(()), false) => "ok",
        (Err(_), _) => "failed",
    }
    .into();
    report.error = result.as_ref().err().map(fjord_cli::render);
    if !opts.dry_run {
        record(drill, &mut report, at).await;
    }
    if !opts.json {
        print_tail(&report);
    }
    report
}

/// Writes the drill's record; on failure, the report's error says so.
async fn record(drill: &DrillConfig, report: &mut Report, at: i64) {
    let state_dir = drill.state_dir();
    let plan = report.plan.as_ref();
    let rec = DrillRecord {
        dataset: report.dataset.clone(),
        result: if report.result == "ok" {
            Outcome::Ok
        } else {
            Outcome::Failed
        },
        started_at: at,
        duration_secs: report.duration_secs,
        snapshot: plan.map(|p| p.snapshot.clone()),
        snapshot_creation: plan.map(|p| p.snapshot_creation),
        snapshot_age_secs: plan.map(|p| p.snapshot_age_secs),
        log_position: plan.and_then(|p| p.log_position.clone()),
        clone: plan.map(|p| p.clone.clone()),
        check: report.check.clone(),
        output_tail: report.output_tail.clone(),
        error: report.error.clone(),
        clone_destroyed: !report.steps.iter().any(|s| {
            matches!(
                s.action,
                Action::Destroy { .. } | Action::DestroyLeftover { .. }
            ) && !s.ok
        }),
        last_success_at: None,
    };
    let written = tokio::task::spawn_blocking(move || {
        let previous = state::read(&state_dir, &rec.dataset).ok().flatten();
        state::write(&state_dir, &rec.after(previous.as_ref()))
    })
    .await
    .unwrap_or_else(|e| Err(anyhow!("the recording task failed: {e}")));
    match written {
        Ok(path) => report.record = Some(path),
        Err(e) => {
            let was = report
                .error
                .take()
                .map(|e| format!("{e}; "))
                .unwrap_or_default();
            report.error = Some(format!("{was}the result could not be recorded: {e:#}"));
            report.result = "failed".into();
        }
    }
}

/// The steps of `plan`; the clone is destroyed whatever happened after it
/// was made. `Err` is the first failure.
async fn carry_out(
    zfs: &Zfs,
    drill: &DrillConfig,
    t: &DrillTarget,
    plan: &Plan,
    report: &mut Report,
    quiet: bool,
    signals: (&mut Signal, &mut Signal),
) -> anyhow::Result<()> {
    let mut first_error: Option<anyhow::Error> = None;
    let mut cloned = false;
    // where the clone really is (an altroot pool prefixes the mountpoint)
    let mut mountpoint = PathBuf::from(&plan.mountpoint);
    let scratch_dir = PathBuf::from(format!("{}.check", plan.mountpoint));
    let (term, int) = signals;
    for a in &plan.actions {
        let r = match a {
            Action::DestroyLeftover { clone } => destroy(zfs, clone).await,
            Action::Clone { .. } | Action::Mount { .. } | Action::Check { .. }
                if first_error.is_some() =>
            {
                continue
            }
            Action::Clone {
                snapshot,
                clone,
                properties,
            } => {
                let props: Vec<(String, String)> = properties.clone().into_iter().collect();
                match prepare_dirs(&drill.mount_dir(), &scratch_dir).await {
                    Err(e) => Err(e),
                    Ok(()) => zfs
                        .clone_snapshot(snapshot, clone, &props)
                        .await
                        .map_err(anyhow::Error::from),
                }
                .inspect(|()| cloned = true)
            }
            Action::Mount { clone, .. } => {
                let r = zfs.mount(clone).await.map_err(anyhow::Error::from);
                if let (Ok(()), Ok(Some(m))) = (&r, zfs.property(clone, "mountpoint").await) {
                    mountpoint = PathBuf::from(m);
                }
                r
            }
            Action::Check { .. } => {
                let env = Env {
                    dataset: &plan.dataset,
                    snapshot: &plan.snapshot,
                    clone: &plan.clone,
                    mountpoint: &mountpoint,
                    scratch_dir: &scratch_dir,
                };
                let stopped = |sig: &str| check::CheckOutcome {
                    output: String::new(),
                    result: Err(anyhow!("interrupted by {sig}: the check was stopped")),
                };
                let (outcome, interrupted) = tokio::select! {
                    o = check::run(&t.check, t, &env) => (o, false),
                    _ = term.recv() => (stopped("SIGTERM"), true),
                    _ = int.recv() => (stopped("SIGINT"), true),
                };
                report.interrupted = interrupted;
                report.output_tail = tail(&outcome.output, 4096);
                outcome.result.context("the check failed")
            }
            Action::Destroy { clone } if cloned => destroy(zfs, clone).await,
            Action::Destroy { .. } => continue,
        };
        step(report, a, &r, quiet);
        if let Err(e) = r {
            first_error.get_or_insert(e);
        }
    }
    let _ = tokio::fs::remove_dir_all(&scratch_dir).await;
    let _ = tokio::fs::remove_dir(&mountpoint).await;
    let _ = tokio::fs::remove_dir(&plan.mountpoint).await;
    first_error.map_or(Ok(()), Err)
}

async fn prepare_dirs(mount_dir: &Path, scratch_dir: &Path) -> anyhow::Result<()> {
    tokio::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(mount_dir)
        .await
        .with_context(|| format!("creating {}", mount_dir.display()))?;
    check::private_dir(scratch_dir).await.map(drop)
}

/// `zfs destroy -r`, again for a while when the clone is still busy (a
/// process of the check letting go of it).
async fn destroy(zfs: &Zfs, clone: &str) -> anyhow::Result<()> {
    let mut tries = 0;
    loop {
        match zfs.destroy_clone(clone).await {
            Err(e) if e.is_dataset_busy() && tries < 10 => {
                tries += 1;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            r => return r.with_context(|| format!("destroying the clone {clone}")),
        }
    }
}

fn step(report: &mut Report, a: &Action, r: &anyhow::Result<()>, quiet: bool) {
    if !quiet {
        match r {
            Ok(()) => println!("done: {}", a.describe()),
            Err(e) => println!("FAILED: {}: {}", a.describe(), fjord_cli::render(e)),
        }
    }
    report.steps.push(Step {
        action: a.clone(),
        describe: a.describe(),
        ok: r.is_ok(),
        error: r.as_ref().err().map(fjord_cli::render),
    });
}

/// The copy's snapshots, log positions and the scratch dataset's children.
async fn read_state(zfs: &Zfs, dataset: &str, scratch: &str) -> anyhow::Result<DrillState> {
    let exists = zfs.dataset_exists(dataset).await?;
    let infos = if exists {
        zfs.snapshots(dataset).await?
    } else {
        Vec::new()
    };
    let (snapshots, _) = fjord_dr::target_snapshots(&infos, Vec::new());
    let mut log_positions = Vec::new();
    if exists {
        for prop in LOG_POSITION_PROPS {
            for (snap, value) in zfs.snapshot_property(dataset, prop).await? {
                log_positions.push((snap, prop.to_string(), value));
            }
        }
    }
    Ok(DrillState {
        dataset: dataset.into(),
        exists,
        snapshots,
        partial_receive: exists && zfs.resume_token(dataset).await?.is_some(),
        log_positions,
        scratch_exists: zfs.dataset_exists(scratch).await?,
        scratch_children: zfs.children_with_prop(scratch, DRILL_PROP).await?,
    })
}

fn print_head(plan: &Plan, dry_run: bool) {
    let log = plan
        .log_position
        .as_ref()
        .map(|l| format!(", {} {}", l.property, l.value))
        .unwrap_or_default();
    println!(
        "{} {}@{} (created {}, {} old){log}",
        if dry_run { "would drill" } else { "drilling" },
        plan.dataset,
        plan.snapshot,
        format_time(plan.snapshot_creation),
        fjord_dr::status::human(plan.snapshot_age_secs)
    );
    for n in &plan.notes {
        println!("note: {n}");
    }
    if dry_run {
        for a in &plan.actions {
            println!("would: {}", a.describe());
        }
    }
}

fn print_tail(report: &Report) {
    match report.result.as_str() {
        "planned" => {}
        "ok" => println!(
            "drill {}: ok in {:.1} s",
            report.dataset, report.duration_secs
        ),
        _ => {
            println!(
                "drill {}: FAILED in {:.1} s: {}",
                report.dataset,
                report.duration_secs,
                report.error.as_deref().unwrap_or("?")
            );
            for l in report.output_tail.lines() {
                println!("    {l}");
            }
        }
    }
}
