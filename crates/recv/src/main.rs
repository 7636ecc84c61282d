//! `fjord-recv`: the DR node's side of fjord.
//!
//! Subcommands live in their own modules; this file parses arguments, sets
//! up logging and maps outcomes to exit codes.

mod keygen;
mod prune;
mod serve;
mod unpack;
mod verify;
mod zfs_target;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// fjord's receiving side: receive streams from `fjord-send send` over QUIC,
/// verify streams on their way into `zfs recv`, unpack pack files, make keys.
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
    Prune(prune::Args),
    Unpack(unpack::Args),
}

pub use fjord_cli::exit;

fn main() -> ExitCode {
    fjord_cli::tune_allocator();
    fjord_cli::init_logging();
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
        Command::Prune(args) => prune::run(args),
    };
    ExitCode::from(code)
}
