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

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_key_file_is_owner_only_and_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("node.key");
        run(Args { key: key.clone() }).expect("keygen");
        let mode = std::fs::metadata(&key).expect("stat").permissions().mode() & 0o7777;
        assert_eq!(mode, 0o600);
        Identity::load(&key).expect("the new key loads");
        assert!(run(Args { key }).is_err(), "never overwritten");
    }
}
