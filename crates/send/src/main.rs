//! `fjord-send`: the primary site's side of fjord.
//!
//! Subcommands live in their own modules; this file parses arguments, sets
//! up logging and maps outcomes to exit codes.

mod inspect;
mod keygen;
mod pack;
mod send;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// fjord's sending side. Today: inspect and verify ZFS send streams.
#[derive(Parser)]
#[command(name = "fjord-send", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Inspect(inspect::Args),
    Send(send::Args),
    Keygen(keygen::Args),
    Pack(pack::Args),
}

/// Exit codes (documented in README.md).
pub mod exit {
    /// The stream is valid (or the command succeeded).
    pub const OK: u8 = 0;
    /// The stream is invalid or truncated.
    pub const INVALID_STREAM: u8 = 1;
    /// Reading the input failed (missing file, I/O error).
    pub const IO_ERROR: u8 = 3;
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FJORD_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Inspect(args) => inspect::run(args),
        Command::Send(args) => send::run(args),
        Command::Keygen(args) => match keygen::run(args) {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("fjord-send: error: {e:#}");
                exit::IO_ERROR
            }
        },
        Command::Pack(args) => pack::run(args),
    };
    ExitCode::from(code)
}
