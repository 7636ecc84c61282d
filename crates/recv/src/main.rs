//! `fjord-recv`: the DR node's side of fjord.
//!
//! Subcommands live in their own modules; this file parses arguments, sets
//! up logging and maps outcomes to exit codes.

mod keygen;
mod serve;
mod unpack;
mod verify;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// fjord's receiving side. Today: a verifying filter that only ever lets
/// checksum-verified send-stream records through to `zfs recv`.
#[derive(Parser)]
#[command(name = "fjord-recv", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Verify(verify::Args),
    Serve(serve::Args),
    Keygen(keygen::Args),
    Unpack(unpack::Args),
}

/// Exit codes (documented in README.md).
pub mod exit {
    /// The whole stream was verified and written.
    pub const OK: u8 = 0;
    /// The stream is invalid or truncated; only verified records were written.
    pub const INVALID_STREAM: u8 = 1;
    /// Reading the input or writing the output failed.
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
        Command::Verify(args) => verify::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Keygen(args) => match keygen::run(args) {
            Ok(()) => exit::OK,
            Err(e) => {
                eprintln!("fjord-recv: error: {e:#}");
                exit::IO_ERROR
            }
        },
        Command::Unpack(args) => unpack::run(args),
    };
    ExitCode::from(code)
}
