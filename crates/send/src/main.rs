//! `fjord-send`: the primary site's side of fjord.
//!
//! Subcommands live in their own modules and return
//! `Result<(), fjord_cli::Failure>`; this file parses arguments, sets up
//! logging and hands the outcome to `fjord_cli::finish`, the one place it
//! becomes an exit code (the table is `fjord_cli::exit`).

mod check_config;
mod inspect;
mod pack;
mod progress;
mod push;
mod send;
mod status_cmd;
mod switchover;
mod tripwire_cmd;

use clap::{CommandFactory, Parser, Subcommand};
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
    #[command(
        about = fjord_cli::keygen::Role::Sender.about(),
        long_about = fjord_cli::keygen::Role::Sender.long_about()
    )]
    Keygen(fjord_cli::keygen::Args),
    Pack(pack::Args),
    CheckConfig(check_config::Args),
    Switchover(switchover::Args),
    Tripwire(tripwire_cmd::Args),
    /// Print the public key of an existing private key file.
    Pubkey(fjord_cli::keygen::PubkeyArgs),
    /// Write the man pages and shell completions (used by scripts/deb).
    #[command(hide = true)]
    GenerateDocs(fjord_cli::docs::Args),
}

fn main() -> ExitCode {
    fjord_cli::tune_allocator();
    fjord_cli::init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Push(args) => push::run(args),
        Command::Status(args) => status_cmd::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Send(args) => send::run(args),
        Command::Keygen(args) => fjord_cli::keygen::run(args),
        Command::Pack(args) => pack::run(args),
        Command::CheckConfig(args) => check_config::run(args),
        Command::Switchover(args) => switchover::run(args),
        Command::Tripwire(args) => tripwire_cmd::run(args),
        Command::Pubkey(args) => fjord_cli::keygen::pubkey(args),
        Command::GenerateDocs(args) => fjord_cli::docs::generate(Cli::command(), &args.out)
            .map(|_| ())
            .map_err(fjord_cli::Failure::io),
    };
    fjord_cli::finish("fjord-send", result)
}
