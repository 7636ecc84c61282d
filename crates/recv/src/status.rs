//! `fjord-recv status`: how fresh each copy on this DR node is, as the DR
//! node itself sees it (from `zfs`, not from the primary's reports).

use anyhow::{anyhow, Context};
use fjord_cli::{CheckLevel, Failure};
use fjord_config::config::RecvConfig;
use fjord_dr::status::{
    assess, check_line, render_prometheus, DatasetStatus, Health, Observation, Thresholds,
};
use fjord_zfs::Zfs;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Show how fresh each copy on this DR node is.
///
/// For every dataset under every client's prefixes: its newest snapshot
/// and that snapshot's age, its snapshot count, and whether an interrupted
/// receive waits to be resumed. Read from `zfs` on this node, so it keeps
/// telling the truth when the primary is down or compromised.
///
/// A copy whose newest snapshot is older than --warn-age is a warning,
/// older than --crit-age critical; a dataset without snapshots is a
/// container (a prefix or a parent) and fine.
///
/// With a [drill] table, each target's last restore drill too (`fjord-recv
/// drill`): one that failed, never ran, or passed longer ago than
/// --drill-warn-age is a warning (never critical).
///
/// With state_dir set, the DR node's own ransomware tripwire too: an
/// alarm raised by a received stream is critical until `fjord-recv
/// tripwire ack`.
///
/// Exit status: 0 when the copies could be listed (whatever their ages);
/// 3 when `zfs` failed; 5 when the config is invalid. With --check, the
/// Nagios plugin convention instead: one line on stdout, and 0 ok,
/// 1 warning, 2 critical, 3 unknown (the check could not run).
///
/// Examples:
///   fjord-recv status --config /etc/fjord/recv.toml
///   fjord-recv status --config /etc/fjord/recv.toml --check --warn-age 30m --crit-age 2h
///   fjord-recv status --config /etc/fjord/recv.toml \
///     --metrics-file /var/lib/prometheus/node-exporter/fjord-dr.prom   # from a timer
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The receiver's config file.
    #[arg(long, value_name = "FILE", default_value = "/etc/fjord/recv.toml")]
    config: PathBuf,
    /// Print one JSON array of the copies instead of a table.
    #[arg(long, conflicts_with = "check")]
    json: bool,
    /// Monitoring mode: one line and a Nagios exit code (0/1/2/3).
    #[arg(long)]
    check: bool,
    /// A newest snapshot older than this is a warning.
    #[arg(long, value_name = "DURATION", default_value = "30m", value_parser = fjord_cli::parse_duration)]
    warn_age: Duration,
    /// A newest snapshot older than this is critical.
    #[arg(long, value_name = "DURATION", default_value = "2h", value_parser = fjord_cli::parse_duration)]
    crit_age: Duration,
    /// Also write the copies' status as Prometheus text to FILE
    /// (atomically), for node-exporter's textfile collector.
    #[arg(long, value_name = "FILE")]
    metrics_file: Option<PathBuf>,
    /// A restore drill target whose last good drill is older than this
    /// (or whose last drill failed, or never ran) is a warning.
    #[arg(long, value_name = "DURATION", default_value = "8d", value_parser = fjord_cli::parse_duration)]
    drill_warn_age: Duration,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    let config = RecvConfig::load(&args.config).map_err(|e| {
        if args.check {
            Failure::Check(CheckLevel::Unknown, anyhow!(e))
        } else {
            Failure::config(e)
        }
    })?;
    if args.warn_age > args.crit_age {
        return Err(Failure::config(anyhow!(
            "--warn-age must not be longer than --crit-age"
        )));
    }
    let thresholds = Thresholds {
        warn_age: args.warn_age,
        crit_age: args.crit_age,
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let looked = observe(&config).map(|obs| {
        obs.iter()
            .map(|o| assess(o, &thresholds, now))
            .collect::<Vec<_>>()
    });
    let statuses = match looked {
        Ok(s) => s,
        Err(e) if args.check => {
            println!("FJORD-DR UNKNOWN - {e:#}");
            return Err(Failure::Check(CheckLevel::Unknown, e));
        }
        Err(e) => return Err(Failure::io(e)),
    };
    let drills = crate::drill::statuses(&config, args.drill_warn_age.as_secs() as i64, now);
    let trips = crate::tripwire::statuses(&config);
    if let Some(path) = &args.metrics_file {
        let text = render_prometheus(&statuses, now)
            + &fjord_dr::drill::record::render_prometheus(&drills)
            + &fjord_dr::tripwire::render_prometheus(&trips);
        fjord_config::textfile::write_atomic(path, text.as_bytes())
            .with_context(|| format!("writing the metrics file {}", path.display()))
            .map_err(|e| {
                if args.check {
                    Failure::Check(CheckLevel::Unknown, e)
                } else {
                    Failure::state(e)
                }
            })?;
    }
    if args.check {
        let (health, line) = check_line(&statuses);
        let (health, line) = fjord_dr::drill::record::fold_check(health, line, &drills);
        let (health, line) = fjord_dr::tripwire::fold_check(health, line, &trips);
        println!("{line}");
        return match health {
            Health::Ok => Ok(()),
            Health::Warning => Err(Failure::Check(CheckLevel::Warning, anyhow!(line))),
            Health::Critical => Err(Failure::Check(CheckLevel::Critical, anyhow!(line))),
        };
    }
    if args.json {
        let json = serde_json::to_value(&statuses)
            .and_then(|v| attach(v, "drill", |d| drills.iter().find(|x| x.dataset == d)))
            .and_then(|v| attach(v, "tripwire", |d| trips.iter().find(|x| x.dataset == d)))
            .and_then(|v| serde_json::to_string_pretty(&v))
            .map_err(Failure::io)?;
        println!("{json}");
    } else {
        print_table(&statuses);
        crate::drill::print_lines(&drills);
        for t in trips.iter().filter(|t| t.alarm.is_some()) {
            println!("tripwire {:<37} {}", t.dataset, t.reason);
        }
    }
    Ok(())
}

/// `status --json`'s copies (an array of objects) with `key` added to each
/// copy that `find` has something for (its drill, its tripwire).
fn attach<T: serde::Serialize>(
    mut copies: serde_json::Value,
    key: &str,
    find: impl Fn(&str) -> Option<T>,
) -> serde_json::Result<serde_json::Value> {
    for item in copies.as_array_mut().into_iter().flatten() {
        let found = item.get("dataset").and_then(|d| d.as_str()).and_then(&find);
        if let (Some(found), Some(obj)) = (found, item.as_object_mut()) {
            obj.insert(key.into(), serde_json::to_value(found)?);
        }
    }
    Ok(copies)
}

fn print_table(statuses: &[DatasetStatus]) {
    println!(
        "{:<10} {:<40} {:>5} {:<28} {:>8} {:<8} reason",
        "client", "dataset", "snaps", "newest", "age", "health"
    );
    for s in statuses {
        println!(
            "{:<10} {:<40} {:>5} {:<28} {:>8} {:<8} {}{}",
            s.client,
            s.dataset,
            s.snapshots,
            s.newest_snapshot.as_deref().unwrap_or("-"),
            s.newest_age_secs
                .map(fjord_dr::status::human)
                .unwrap_or_else(|| "-".into()),
            s.health.word().to_lowercase(),
            s.reason,
            if s.partial_receive {
                "; partial receive waiting"
            } else {
                ""
            }
        );
    }
}

/// Every dataset under every client's prefixes, as `zfs` shows it.
fn observe(config: &RecvConfig) -> anyhow::Result<Vec<Observation>> {
    crate::rt::block_on(async {
        let zfs = Zfs::new();
        let mut out = Vec::new();
        let mut clients: Vec<_> = config.clients.iter().collect();
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        for client in clients {
            for prefix in &client.prefixes {
                if !zfs.dataset_exists(prefix).await? {
                    continue;
                }
                for dataset in zfs.children(prefix).await? {
                    let snapshots = zfs.snapshots(&dataset).await?;
                    let newest = snapshots
                        .iter()
                        .max_by_key(|s| s.createtxg)
                        .map(|s| (s.name.clone(), s.creation));
                    let partial_bytes = zfs.resume_token(&dataset).await?.map(|t| {
                        // An unreadable token still means a partial receive.
                        fjord_stream::token::decode(&t)
                            .map(|t| t.bytes)
                            .unwrap_or(0)
                    });
                    out.push(Observation {
                        client: client.name.clone(),
                        dataset,
                        snapshots: snapshots.len(),
                        newest,
                        partial_bytes,
                    });
                }
            }
        }
        anyhow::Ok(out)
    })?
}
