//! `fjord-send`: the primary site's side of fjord.
//!
//! Subcommands live in their own modules; this file parses arguments, sets
//! up logging and maps outcomes to exit codes.

mod inspect;
mod keygen;
mod pack;
mod progress;
mod push;
mod replicate;
mod send;
mod status_cmd;
mod zfs_source;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// fjord's sending side: push ZFS datasets to a DR node as configured
/// (cron/systemd), send single streams over QUIC (surviving link flaps),
/// inspect streams, pack them into files, make keys.
#[derive(Parser)]
#[command(name = "fjord-send", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Push(push::Args),
    Status(status_cmd::Args),
    Inspect(inspect::Args),
    Send(send::Args),
    Keygen(keygen::Args),
    Pack(pack::Args),
}

pub use fjord_cli::exit;

fn main() -> ExitCode {
    fjord_cli::tune_allocator();
    fjord_cli::init_logging();
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Push(args) => push::run(args),
        Command::Status(args) => status_cmd::run(args),
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
