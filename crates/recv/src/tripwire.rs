//! The DR node's ransomware tripwire: its pages in `state_dir/tripwire/`
//! (one JSON file per copy), what a committed receive records there, and
//! `fjord-recv tripwire ack`. The judgement is `fjord_tripwire::judge`,
//! the status view `fjord_dr::tripwire`.

use anyhow::{anyhow, Context};
use fjord_cli::Failure;
use fjord_config::config::RecvConfig;
use fjord_config::tripwire::TripwireConfig;
use fjord_dr::tripwire::TripwireStatus;
use fjord_tripwire::{judge, Judgement, Page, Sample, StreamFigures};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SUFFIX: &str = ".json";

/// The directory of the pages.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join("tripwire")
}

/// The page file of `dataset` (`/` becomes `%`, which no dataset name
/// holds).
fn page_path(state_dir: &Path, dataset: &str) -> PathBuf {
    dir(state_dir).join(format!("{}{SUFFIX}", dataset.replace('/', "%")))
}

/// `dataset`'s page; an absent file is an empty page.
pub fn load(state_dir: &Path, dataset: &str) -> anyhow::Result<Page> {
    let path = page_path(state_dir, dataset);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a tripwire page", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Page::default()),
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

fn save(state_dir: &Path, dataset: &str, page: &Page) -> anyhow::Result<()> {
    let d = dir(state_dir);
    std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    let path = page_path(state_dir, dataset);
    let bytes = serde_json::to_vec_pretty(page)?;
    fjord_config::textfile::write_atomic(&path, &bytes)
        .with_context(|| format!("writing {}", path.display()))
}

/// Every page in `state_dir`, by dataset.
pub fn load_all(state_dir: &Path) -> BTreeMap<String, anyhow::Result<Page>> {
    std::fs::read_dir(dir(state_dir))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            let stem = name.strip_suffix(SUFFIX)?;
            (!stem.starts_with('.')).then(|| {
                let dataset = stem.replace('%', "/");
                let page = load(state_dir, &dataset);
                (dataset, page)
            })
        })
        .collect()
}

/// Judges one committed incremental receive into `dataset` and records
/// it in its page. Returns the sample and the judgement.
pub fn record(
    state_dir: &Path,
    config: &TripwireConfig,
    dataset: &str,
    figures: StreamFigures,
    time: i64,
    snapshot: &str,
) -> anyhow::Result<(Sample, Judgement)> {
    let mut page = load(state_dir, dataset)?;
    let sample = Sample {
        time,
        snapshot: snapshot.into(),
        write_bytes: figures.write_bytes,
        incompressible: figures.incompressible_share(),
        // The DR node cannot tell old files from new ones (see fjord_dr::tripwire).
        rewritten: None,
    };
    let judgement = judge(config, &page.history, &sample);
    page.record(&sample, &judgement, config.history);
    save(state_dir, dataset, &page)?;
    Ok((sample, judgement))
}

/// The tripwire of every copy that has a page (for `status`).
pub fn statuses(config: &RecvConfig) -> Vec<TripwireStatus> {
    let Some(state_dir) = &config.state_dir else {
        return Vec::new();
    };
    load_all(state_dir)
        .into_iter()
        .map(|(dataset, page)| {
            let page = page.unwrap_or_else(|e| {
                tracing::warn!(dataset = %dataset, "tripwire page unreadable: {e:#}");
                Page::default()
            });
            fjord_dr::tripwire::assess(&dataset, &page)
        })
        .collect()
}

/// The DR node's ransomware tripwire: acknowledge an alarm.
///
/// With `state_dir` set in recv.toml, the receiver measures every
/// incremental stream it verified and gave to `zfs recv`: the share of
/// its block bytes that are incompressible, against that copy's own
/// history (`[tripwire]` in recv.toml, the keys of a job's
/// `[job.tripwire]`). A jump raises an alarm in `fjord-recv status` (a
/// critical with --check) and in its metrics, measured from the bytes the
/// DR node received, so it does not depend on what the primary reports.
/// The alarm stays until acknowledged here. Look first: `zfs diff` between
/// the snapshot the alarm names and the one before it; the snapshots
/// before the trip are the clean copies (and `min_age` keeps them).
///
/// Exit status: 0 acknowledged (or nothing to acknowledge); 5 the config
/// is invalid or has no state_dir; 7 the state could not be read or
/// written.
///
/// Examples:
///   fjord-recv tripwire ack --config /etc/fjord/recv.toml backup/oslo/home
///   fjord-recv tripwire ack --config /etc/fjord/recv.toml --all
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Clear the alarm of DATASET (or of every copy with --all).
    Ack {
        /// The receiver's config file.
        #[arg(long, value_name = "FILE", default_value = "/etc/fjord/recv.toml")]
        config: PathBuf,
        /// The copy on this DR node, e.g. backup/oslo/home.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        dataset: Option<String>,
        /// Every copy's alarm.
        #[arg(long)]
        all: bool,
    },
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    let Command::Ack {
        config,
        dataset,
        all: _,
    } = args.command;
    let cfg = RecvConfig::load(&config).map_err(Failure::config)?;
    let Some(state_dir) = cfg.state_dir else {
        return Err(Failure::config(anyhow!(
            "{}: no state_dir, so the DR node keeps no tripwire: set state_dir = \"/var/lib/fjord\"",
            config.display()
        )));
    };
    let datasets: Vec<String> = match dataset {
        Some(d) => vec![d],
        None => load_all(&state_dir).into_keys().collect(),
    };
    for d in datasets {
        let mut page = load(&state_dir, &d).map_err(Failure::state)?;
        if page.acknowledge() {
            save(&state_dir, &d, &page).map_err(Failure::state)?;
            println!("{d}: tripwire alarm acknowledged");
        } else {
            println!("{d}: no tripwire alarm");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(incompressible: u64) -> StreamFigures {
        StreamFigures {
            write_bytes: 1 << 20,
            probed_bytes: 1 << 20,
            incompressible_bytes: incompressible,
            aged_bytes: 0,
            rewritten_bytes: 0,
        }
    }

    #[test]
    fn receives_build_the_history_and_a_jump_raises_an_alarm_that_survives_a_reload() {
        let state = tempfile::tempdir().unwrap();
        let cfg = TripwireConfig {
            min_history: 2,
            min_bytes: 1024,
            ..TripwireConfig::default()
        };
        let d = "backup/oslo/home";
        for t in 0..2 {
            let (_, j) = record(state.path(), &cfg, d, figures(1000), t, &format!("s{t}")).unwrap();
            assert_eq!(j.verdict, fjord_tripwire::Verdict::Learning);
        }
        let (s, j) = record(state.path(), &cfg, d, figures(900_000), 9, "s9").unwrap();
        assert_eq!(j.verdict, fjord_tripwire::Verdict::Tripped, "{j:?}");
        assert_eq!(s.rewritten, None);
        let all = load_all(state.path());
        let page = all[d].as_ref().unwrap();
        assert_eq!(page.alarm.as_ref().map(|a| a.snapshot.as_str()), Some("s9"));
        assert_eq!(page.history.len(), 2);
        assert!(state
            .path()
            .join("tripwire/backup%oslo%home.json")
            .is_file());
    }
}
