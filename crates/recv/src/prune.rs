//! `fjord-recv prune`: the DR node's own retention, from cron or by hand.

use crate::zfs_target::ZfsTarget;

use fjord_cli::Failure;
use fjord_config::config::RecvConfig;
use fjord_zfs::Zfs;
use std::path::PathBuf;

/// Apply the DR node's own retention to every client's datasets.
///
/// The rules are `[retention]`, `[client.retention]`,
/// `[[prefix_retention]]` and `min_age` in recv.toml; every dataset under
/// every client's prefixes is pruned by them.
///
/// Only snapshots named with the client's snapshot_prefix are candidates;
/// the newest snapshot of each dataset, anything younger than min_age and
/// anything held by a tag other than fjord-dr are never destroyed. A
/// dataset without retention keeps every snapshot. `fjord-recv serve`
/// applies the same retention to a dataset after each receive into it.
///
/// Example (hourly from cron on the DR node):
///   fjord-recv prune --config /etc/fjord/recv.toml --dry-run --json
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The receiver's config file.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
    /// Print what would be destroyed; destroy nothing.
    #[arg(long)]
    dry_run: bool,
    /// One JSON object: {"dry_run": bool, "datasets": [{"dataset", "pruned": [...]}]}.
    #[arg(long)]
    json: bool,
}

/// Runs the subcommand: [`Failure::Config`] when the config is invalid,
/// [`Failure::Io`] when pruning fails.
pub fn run(args: Args) -> Result<(), Failure> {
    let config = RecvConfig::load(&args.config).map_err(Failure::config)?;
    let policy = crate::reload::Policy::from_config(config, &args.config)
        .map_err(|e| Failure::Config(anyhow::anyhow!(e)))?;
    let target = ZfsTarget::new(Zfs::new(), policy, 0);
    prune(&args, target).map_err(Failure::Io)
}

fn prune(args: &Args, target: ZfsTarget) -> anyhow::Result<()> {
    let report = crate::rt::block_on(target.prune_all(args.dry_run))?
        .map_err(|e| anyhow::anyhow!("pruning: {e}"))?;
    if args.json {
        let datasets: Vec<_> = report
            .iter()
            .map(|(d, p)| serde_json::json!({"dataset": d, "pruned": p}))
            .collect();
        println!(
            "{}",
            serde_json::json!({"dry_run": args.dry_run, "datasets": datasets})
        );
    } else {
        let verb = if args.dry_run {
            "would prune"
        } else {
            "pruned"
        };
        for (dataset, pruned) in &report {
            if pruned.is_empty() {
                println!("{dataset}: nothing to prune");
            } else {
                println!("{dataset}: {verb} {}", pruned.join(", "));
            }
        }
    }
    Ok(())
}
