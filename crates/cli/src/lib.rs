//! What the two fjord binaries share, so that they behave alike: exit
//! codes, logging set-up, and reading a `FILE` argument where `-` means
//! standard input.
#![warn(missing_docs)]

use std::io::Read;
use std::path::Path;

/// Exit codes of every fjord command (documented in README.md).
pub mod exit {
    /// Success: the stream was valid, stored, or written.
    pub const OK: u8 = 0;
    /// The stream (or pack) is invalid or truncated, or the peer refused it.
    pub const INVALID_STREAM: u8 = 1;
    /// Reading the input or writing the output failed, or the peer stayed
    /// unreachable.
    pub const IO_ERROR: u8 = 3;
}

/// Logs to stderr through `tracing`, filtered by `FJORD_LOG` (default `warn`).
pub fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FJORD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
}

/// Opens `path` for reading; `-` is standard input.
pub fn open_input(path: &Path) -> std::io::Result<Box<dyn Read>> {
    if path.as_os_str() == "-" {
        Ok(Box::new(std::io::stdin().lock()))
    } else {
        Ok(Box::new(std::fs::File::open(path)?))
    }
}
