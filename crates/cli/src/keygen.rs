//! `fjord-send keygen` and `fjord-recv keygen`: make this node's identity.

use crate::Failure;
use fjord_transport::Identity;
use std::path::{Path, PathBuf};

/// Which end of fjord the key is for; only the help text differs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// `fjord-send keygen`: the primary site.
    Sender,
    /// `fjord-recv keygen`: the DR node.
    Receiver,
}

impl Role {
    /// The subcommand's one-line help, for `#[command(about = …)]`.
    pub const fn about(self) -> &'static str {
        match self {
            Role::Sender => "Create this sender's private key file and print its public key",
            Role::Receiver => "Create this receiver's private key file and print its public key",
        }
    }

    /// The subcommand's `--help` text, for `#[command(long_about = …)]`.
    pub const fn long_about(self) -> &'static str {
        match self {
            Role::Sender => {
                "Create a private key file for this sender and print its public key.\n\
                 Give the public key to the receiver (`fjord-recv serve --allow-key KEY`,\n\
                 or `key` of a [[client]] in recv.toml).\n\n\
                 The file is created with mode 0600 (missing directories above it with\n\
                 0700) and never overwritten.\n\n\
                 Example:\n  fjord-send keygen --key /etc/fjord/send.key"
            }
            Role::Receiver => {
                "Create a private key file for this receiver and print its public key.\n\
                 Give the public key to the sender (`fjord-send send --server-key KEY`,\n\
                 or `target_key` in send.toml).\n\n\
                 The file is created with mode 0600 (missing directories above it with\n\
                 0700) and never overwritten.\n\n\
                 Example:\n  fjord-recv keygen --key /etc/fjord/recv.key"
            }
        }
    }
}

/// The arguments of `keygen` (the help text comes from [`Role::about`] and
/// [`Role::long_about`]).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Where to write the private key; it must not exist yet.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

/// Runs `keygen`: writes a new private key to `args.key` (mode 0600;
/// missing parent directories are created with mode 0700) and prints its
/// public key on standard output. An existing file is never overwritten.
/// Every failure is [`Failure::Io`].
pub fn run(args: Args) -> Result<(), Failure> {
    let id = Identity::generate().map_err(Failure::io)?;
    create_parent(&args.key).map_err(Failure::io)?;
    id.save(&args.key).map_err(Failure::io)?;
    println!("{}", id.public_key());
    Ok(())
}

/// The arguments of `pubkey`.
#[derive(clap::Args, Debug)]
pub struct PubkeyArgs {
    /// The private key file (from `keygen`).
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
}

/// Runs `pubkey`: prints the public key of an existing private key file,
/// to give to the other side. A missing, unreadable or loosely
/// permissioned file is [`Failure::Io`] with what to do.
pub fn pubkey(args: PubkeyArgs) -> Result<(), Failure> {
    let id = Identity::load(&args.key).map_err(Failure::io)?;
    println!("{}", id.public_key());
    Ok(())
}

/// Creates the missing directories above `path`, each with mode 0700;
/// leaves existing ones as they are.
fn create_parent(path: &Path) -> anyhow::Result<()> {
    let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) else {
        return Ok(());
    };
    let mut missing = Vec::new();
    let mut dir = parent;
    loop {
        match std::fs::symlink_metadata(dir) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push(dir);
                match dir.parent().filter(|p| !p.as_os_str().is_empty()) {
                    Some(up) => dir = up,
                    None => break,
                }
            }
            Err(e) => {
                return Err(anyhow::Error::new(e)
                    .context(format!("cannot look at directory {}", dir.display())))
            }
        }
    }
    for dir in missing.into_iter().rev() {
        let mut builder = std::fs::DirBuilder::new();
        #[cfg(unix)]
        {
            use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
            builder.mode(0o700);
            builder.create(dir).map_err(|e| {
                anyhow::Error::new(e).context(format!("cannot create directory {}", dir.display()))
            })?;
            // The umask may have taken bits away; this key's directory is
            // exactly 0700.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
                anyhow::Error::new(e).context(format!("cannot chmod 700 {}", dir.display()))
            })?;
        }
        #[cfg(not(unix))]
        builder.create(dir).map_err(|e| {
            anyhow::Error::new(e).context(format!("cannot create directory {}", dir.display()))
        })?;
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).expect("stat").permissions().mode() & 0o7777
    }

    #[test]
    fn the_key_file_is_owner_only_loads_and_is_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let key = dir.path().join("node.key");
        run(Args { key: key.clone() }).expect("keygen");
        assert_eq!(mode(&key), 0o600);
        let before = std::fs::read(&key).expect("read");
        Identity::load(&key).expect("the new key loads");
        let again = run(Args { key: key.clone() }).expect_err("never overwritten");
        assert_eq!(again.exit_code(), crate::exit::IO_ERROR);
        assert!(crate::render(again.error()).contains("already exists"));
        assert_eq!(std::fs::read(&key).expect("read"), before, "unchanged");
    }

    #[test]
    fn missing_directories_are_created_owner_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
        let key = dir.path().join("etc/fjord/node.key");
        run(Args { key: key.clone() }).expect("keygen");
        assert_eq!(mode(&key), 0o600);
        assert_eq!(mode(&dir.path().join("etc")), 0o700);
        assert_eq!(mode(&dir.path().join("etc/fjord")), 0o700);
        assert_eq!(
            mode(dir.path()),
            0o755,
            "an existing directory is left alone"
        );
        Identity::load(&key).expect("loads");
    }

    #[test]
    fn an_unwritable_place_is_an_io_failure_said_once() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("plain");
        std::fs::write(&file, b"x").expect("write");
        let err = run(Args {
            key: file.join("k"),
        })
        .expect_err("not a directory");
        assert_eq!(err.exit_code(), crate::exit::IO_ERROR);
        let shown = crate::render(err.error());
        let io = std::io::Error::from_raw_os_error(libc::ENOTDIR).to_string();
        assert_eq!(shown.matches(&io).count(), 1, "{shown}");
    }
}
