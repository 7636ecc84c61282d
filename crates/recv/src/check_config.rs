//! `fjord-recv check-config`: everything `serve --config` checks at start,
//! without binding the port (for `ExecStartPre=` and before a restart).

use crate::serve::zfs_setup;
use anyhow::anyhow;
use fjord_cli::Failure;
use fjord_transport::LinkConfig;
use std::path::PathBuf;
use std::time::Duration;

/// Check the receiver's config file without starting the receiver.
///
/// Loads and checks the file (every key, every client's key and
/// prefixes, the policy, retention and limits), this node's key file (and
/// its mode), that the chunk cache's directory exists or can be made, and
/// that `zfs` is on the PATH. Prints what `serve` would do and exits 0, or
/// names the file, the key and the fix and exits 5.
///
/// Example (systemd):
///   ExecStartPre=/usr/bin/fjord-recv check-config --config /etc/fjord/recv.toml
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The receiver's config file.
    #[arg(long, value_name = "FILE", default_value = "/etc/fjord/recv.toml")]
    config: PathBuf,
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    let file = args.config.display().to_string();
    // The same defaults as `serve --config` without link options.
    let setup = zfs_setup(
        &args.config,
        LinkConfig::default(),
        Duration::from_secs(300),
        256 << 20,
    )
    .map_err(|f| match f {
        // Here, the key file and zfs are part of what is checked.
        Failure::Io(e) => Failure::config(anyhow!("{file}: {e:#}")),
        other => other,
    })?;
    setup
        .opts
        .limits
        .validate(setup.opts.link.stream_window())
        .map_err(|e| Failure::config(anyhow!("{file}: [limits]: {e}")))?;
    if let Some(cache) = &setup.opts.chunk_cache {
        let existing = cache.dir.ancestors().find(|d| d.exists());
        if existing.is_some_and(|d| !d.is_dir()) {
            return Err(Failure::config(anyhow!(
                "{file}: chunk_cache.dir {}: not a directory",
                cache.dir.display()
            )));
        }
    }
    println!(
        "{file}: ok: listen {} as {}; {}",
        setup.opts.listen,
        setup.identity.public_key(),
        setup.what
    );
    crate::drill::print_config(&args.config);
    Ok(())
}
