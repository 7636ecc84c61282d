//! `fjord-recv drill`: restore drills. Reads a copy's snapshots and the
//! scratch dataset from `zfs`, asks the pure planner
//! (`fjord_dr::drill::plan`), clones, mounts, checks, and always destroys
//! the clone; records the outcome in the state directory, where
//! `fjord-recv status` reads it.

mod check;
mod run;
pub mod state;

use anyhow::anyhow;
use fjord_cli::Failure;
use fjord_config::config::RecvConfig;
use fjord_config::drill::{DrillCheck, DrillConfig, DrillTarget};
use std::path::PathBuf;

/// Run a restore drill: clone a DR copy's newest snapshot, check it,
/// destroy the clone.
///
/// For DATASET (default: every [[drill.target]] of the config), in order:
///   1. destroys the clones an interrupted earlier drill of it left under
///      the scratch dataset (named fjord-drill-..., marked fjord:drill);
///   2. clones its newest complete snapshot (or --snapshot) as
///      SCRATCH/fjord-drill-<dataset>-<time>, inert (canmount=noauto,
///      setuid, devices, sharing off; read-only unless the check writes),
///      and mounts it under [drill].mount_dir;
///   3. runs the check with a time limit: a command (argv, with
///      FJORD_DRILL_DATASET, FJORD_DRILL_SNAPSHOT, FJORD_DRILL_MOUNTPOINT
///      and FJORD_DRILL_CLONE set; exit 0 passes), or check = "postgresql":
///      PostgreSQL started on the clone's data directory on its own port
///      and socket directory, the query run, the server stopped;
///   4. destroys the clone, whatever the check did;
///   5. records the result (ok or failed, duration, snapshot, its age,
///      the database log position, the check's output) in
///      STATE_DIR/drill/, which `fjord-recv status` shows.
///
/// Exit status: 0 every drill passed (or, with --dry-run, was planned);
/// 4 a drill failed (the others still ran); 5 the config is invalid or
/// names no drill; 6 another drill is running; 7 the result could not be
/// recorded; 3 zfs could not be run or read.
///
/// Examples:
///   fjord-recv drill --config /etc/fjord/recv.toml
///   fjord-recv drill backup/oslo/db --dry-run
///   fjord-recv drill backup/oslo/home --check 'test -s "$FJORD_DRILL_MOUNTPOINT/index.html"'
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The receiver's config file (its [drill] table).
    #[arg(long, value_name = "FILE", default_value = "/etc/fjord/recv.toml")]
    config: PathBuf,
    /// The copy to drill; default every [[drill.target]].
    #[arg(value_name = "DATASET")]
    dataset: Option<String>,
    /// The snapshot to clone (short name); default the newest complete one.
    #[arg(long, value_name = "SNAPSHOT", requires = "dataset")]
    snapshot: Option<String>,
    /// Run this shell command (sh -c) as the check instead of the
    /// configured one.
    #[arg(long, value_name = "CMD")]
    check: Option<String>,
    /// Print what it would do; change nothing, record nothing.
    #[arg(long)]
    dry_run: bool,
    /// Print one JSON object per drill (JSON Lines) instead of text.
    #[arg(long)]
    json: bool,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    let config = RecvConfig::load(&args.config).map_err(Failure::config)?;
    let file = args.config.display().to_string();
    let Some(drill) = config.drill.clone() else {
        return Err(Failure::config(anyhow!(
            "{file}: no [drill] table: add one with the scratch dataset and the targets (README, \"Restore drills\")"
        )));
    };
    let targets =
        select(&args, &config, &drill).map_err(|e| Failure::config(anyhow!("{file}: {e}")))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::io)?;
    let opts = run::Options {
        snapshot: args.snapshot.clone(),
        dry_run: args.dry_run,
        json: args.json,
    };
    runtime.block_on(run::drills(&drill, &targets, &opts))
}

/// The targets asked for, with `--check` applied.
fn select(
    args: &Args,
    config: &RecvConfig,
    drill: &DrillConfig,
) -> anyhow::Result<Vec<DrillTarget>> {
    let override_check = args
        .check
        .as_ref()
        .map(|c| DrillCheck::Command(vec!["/bin/sh".into(), "-c".into(), c.clone()]));
    let mut targets = match &args.dataset {
        None => drill.targets().into_iter().flatten().collect(),
        Some(d) => {
            fjord_zfs::names::validate_dataset(d).map_err(|e| anyhow!("DATASET: {e}"))?;
            match (drill.target(d), &override_check) {
                (Some(t), _) => vec![t],
                (None, Some(c)) => {
                    let under_a_prefix = config.clients.iter().any(|cl| {
                        cl.prefixes
                            .iter()
                            .any(|p| fjord_zfs::names::is_within_prefix(d, p))
                    });
                    if !under_a_prefix {
                        anyhow::bail!("{d} is under no client's prefixes: a drill tests a DR copy");
                    }
                    adhoc_target(drill, d, c.clone()).into_iter().collect()
                }
                (None, None) => anyhow::bail!(
                    "{d} is not a [[drill.target]]: add it, or give the check with --check"
                ),
            }
        }
    };
    if targets.is_empty() {
        anyhow::bail!("[drill] has no target: add a [[drill.target]] with the dataset to drill");
    }
    if let Some(c) = override_check {
        for t in &mut targets {
            t.writable = t.writable || t.check == DrillCheck::Postgresql;
            t.check = c.clone();
        }
    }
    Ok(targets)
}

/// A target that is not in the config, for `--check`: the `[drill]`
/// defaults.
fn adhoc_target(drill: &DrillConfig, dataset: &str, check: DrillCheck) -> Option<DrillTarget> {
    drill.resolve(&fjord_config::drill::DrillTargetConfig {
        dataset: dataset.into(),
        timeout: None,
        check: Some(check),
        writable: None,
        port: None,
        query: None,
        pg_bin: None,
        data_dir: None,
    })
}

/// How the drills of `config`'s targets stand at `now` (for `fjord-recv
/// status`): none without a `[drill]` table; an unreadable record counts
/// as no drill.
pub fn statuses(
    config: &RecvConfig,
    warn_age: i64,
    now: i64,
) -> Vec<fjord_dr::drill::record::DrillStatus> {
    let Some(drill) = &config.drill else {
        return Vec::new();
    };
    let dir = drill.state_dir();
    drill
        .targets
        .iter()
        .map(|t| {
            let last = state::read(&dir, &t.dataset).unwrap_or_else(|e| {
                tracing::warn!(dataset = %t.dataset, "drill record unreadable: {e:#}");
                None
            });
            fjord_dr::drill::record::assess(&t.dataset, last.as_ref(), warn_age, now)
        })
        .collect()
}

/// The drills' lines under `status`'s table.
pub fn print_lines(drills: &[fjord_dr::drill::record::DrillStatus]) {
    for d in drills {
        println!(
            "drill {:<40} {:<8} {}",
            d.dataset,
            d.health.word().to_lowercase(),
            d.reason
        );
    }
}

/// `check-config`'s line about the drills (the file was checked already).
pub fn print_config(path: &std::path::Path) {
    let Some(drill) = RecvConfig::load(path).ok().and_then(|c| c.drill) else {
        return;
    };
    println!(
        "{}: drills: {} target(s), clones under {} mounted in {}, results in {}",
        path.display(),
        drill.targets.len(),
        drill.scratch,
        drill.mount_dir().display(),
        state::dir(&drill.state_dir()).display()
    );
}
