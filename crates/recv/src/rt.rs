//! The one-shot subcommands' async runtime: a current-thread runtime for
//! the short `zfs` commands they run, built in one place.

use anyhow::Context;

/// Runs `fut` to completion on a fresh current-thread runtime.
pub(crate) fn block_on<F: std::future::Future>(fut: F) -> anyhow::Result<F::Output> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    Ok(runtime.block_on(fut))
}
