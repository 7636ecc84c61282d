//! `fjord-send check-config`: everything `push` checks before it runs,
//! and what would make a run fail at once, without running it.

use crate::push::prepare;
use anyhow::anyhow;
use fjord_cli::Failure;
use fjord_config::config::SendConfig;
use fjord_zfs::Zfs;
use std::path::{Path, PathBuf};

/// Check the sender's config file without pushing anything.
///
/// Loads and checks the file (every key), the DR nodes' public keys, this
/// sender's key file (and its mode), that state_dir exists and is
/// writable, that the metrics file's directory is writable, that every
/// each target's host resolves, and that `zfs` is on the PATH. Prints one line
/// per job, with what its retention keeps on each side (hourly, daily,
/// weekly, monthly and yearly buckets, UTC), and exits 0, or names the
/// file, the key and the fix and exits 5. Nothing is written but a probe file in state_dir, removed at once.
///
/// Example:
///   fjord-send check-config --config /etc/fjord/send.toml
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The sender's config file.
    #[arg(long, value_name = "FILE", default_value = "/etc/fjord/send.toml")]
    config: PathBuf,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    let file = args.config.display().to_string();
    let config = SendConfig::load(&args.config).map_err(Failure::config)?;
    let (jobs, identity) = prepare(&config, &file, None)?;
    writable_dir(&config.state_dir).map_err(|e| {
        Failure::config(anyhow!(
            "{file}: state_dir {}: {e}; create it (install -d -m 0700 {0}) or point state_dir elsewhere",
            config.state_dir.display()
        ))
    })?;
    if let Some(metrics) = &config.metrics_file {
        let dir = metrics.parent().unwrap_or(Path::new("."));
        writable_dir(dir).map_err(|e| {
            Failure::config(anyhow!(
                "{file}: metrics_file {}: its directory {e}; create it or remove metrics_file",
                metrics.display()
            ))
        })?;
    }
    let zfs = Zfs::new()
        .locate()
        .map_err(|e| Failure::config(anyhow!(e)))?;
    for p in &jobs {
        let job = p.job;
        let head = format!(
            "job {}: {}{}",
            job.name,
            job.source,
            if job.recursive { " (recursive)" } else { "" }
        );
        match p.targets.as_slice() {
            [] => {
                println!("{head}: snapshot-only (no target: snapshots, hooks and source retention)")
            }
            [(t, key)] if t.name.is_empty() => println!(
                "{head} -> {} at {} (key {key})",
                t.dataset,
                resolve(&file, job, t)?
            ),
            targets => {
                println!("{head} -> {} targets:", targets.len());
                for (t, key) in targets {
                    println!(
                        "  target {}: {} at {} (key {key}), base held as {}",
                        t.name,
                        t.dataset,
                        resolve(&file, job, t)?,
                        t.hold_tag(&job.name)
                    );
                }
            }
        }
        let retention = &p.job.retention;
        for (side, keep) in [
            ("the source", &retention.source),
            ("the DR node (asked; its policy decides)", &retention.target),
        ] {
            if let Some(keep) = keep {
                println!("  retention on {side}: {}", keep.describe());
            }
        }
    }
    println!(
        "{file}: ok: {} job(s), sender key {}, state_dir {}, zfs {}",
        jobs.len(),
        identity.public_key(),
        config.state_dir.display(),
        zfs.display()
    );
    Ok(())
}

/// The first address `t.host` resolves to; a config error naming the key
/// when none.
fn resolve(
    file: &str,
    job: &fjord_config::Job,
    t: &fjord_config::Target,
) -> Result<std::net::SocketAddr, Failure> {
    let which = if t.name.is_empty() {
        "target_host".to_string()
    } else {
        format!("target {:?}: host", t.name)
    };
    let host = &t.host;
    std::net::ToSocketAddrs::to_socket_addrs(host.as_str())
        .ok()
        .and_then(|mut a| a.next())
        .ok_or_else(|| {
            Failure::config(anyhow!(
                "{file}: job {}: {which} {host:?} does not resolve; write HOST:PORT of the DR node",
                job.name
            ))
        })
}

/// Checks that `dir` is a directory this process can create files in.
fn writable_dir(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let probe = dir.join(format!(".fjord-check-{}", std::process::id()));
    std::fs::File::create(&probe).map_err(|e| format!("{} is not writable: {e}", dir.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}
