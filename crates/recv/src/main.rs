//! `fjord-recv`: the DR node's side of fjord.
//!
//! Subcommands live in their own modules and return
//! `Result<(), fjord_cli::Failure>`; this file parses arguments, sets up
//! logging and hands the outcome to `fjord_cli::finish`, the one place it
//! becomes an exit code (the table is `fjord_cli::exit`).

mod check_config;
mod demote;
mod drill;
mod metrics;
mod promote;
mod prune;
mod reload;
mod rt;
mod serve;
mod status;
mod tripwire;
mod unpack;
mod verify;
mod zfs_target;

use clap::{CommandFactory, Parser, Subcommand};
use std::process::ExitCode;

/// fjord's DR node: receive pushes over QUIC into `zfs recv`, verified;
/// apply its own retention; check its config; verify and unpack streams.
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
    #[command(
        about = fjord_cli::keygen::Role::Receiver.about(),
        long_about = fjord_cli::keygen::Role::Receiver.long_about()
    )]
    Keygen(fjord_cli::keygen::Args),
    Prune(prune::Args),
    Unpack(unpack::Args),
    Status(status::Args),
    CheckConfig(check_config::Args),
    Promote(promote::Args),
    Demote(demote::Args),
    Drill(drill::Args),
    Tripwire(tripwire::Args),
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
        Command::Verify(args) => verify::run(args),
        Command::Serve(args) => serve::run(args),
        Command::Keygen(args) => fjord_cli::keygen::run(args),
        Command::Unpack(args) => unpack::run(args),
        Command::Prune(args) => prune::run(args),
        Command::Status(args) => status::run(args),
        Command::CheckConfig(args) => check_config::run(args),
        Command::Promote(args) => promote::run(args),
        Command::Demote(args) => demote::run(args),
        Command::Drill(args) => drill::run(args),
        Command::Tripwire(args) => tripwire::run(args),
        Command::Pubkey(args) => fjord_cli::keygen::pubkey(args),
        Command::GenerateDocs(args) => fjord_cli::docs::generate(Cli::command(), &args.out)
            .map(|_| ())
            .map_err(fjord_cli::Failure::io),
    };
    fjord_cli::finish("fjord-recv", result)
}
