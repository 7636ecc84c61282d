//! `fjord-recv keygen`: make this node's identity.

use fjord_transport::Identity;
use std::path::PathBuf;

/// Create a private key file for this receiver and print its public key.
/// Give the public key to the sender (`fjord-send send --server-key KEY`).
/// The file is created with mode 0600 and never overwritten.
#[derive(clap::Args)]
pub struct Args {
    /// Where to write the private key (e.g. /etc/fjord/recv.key).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
}

/// Runs the subcommand.
pub fn run(args: Args) -> anyhow::Result<()> {
    let id = Identity::generate()?;
    id.save(&args.key)?;
    println!("{}", id.public_key());
    Ok(())
}
