//! `fjord-recv serve`: receive send streams from pinned senders over QUIC
//! and store each, verified, as a file.

use anyhow::Context;
use fjord_transport::server::{ServeOptions, Server, ServerEvent};
use fjord_transport::sink::FileSinkFactory;
use fjord_transport::{Identity, PublicKey};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Receive ZFS send streams from `fjord-send send` and store them as files.
///
/// Only senders whose public keys are given with --allow-key can connect;
/// any other key is refused during the TLS handshake, before any work.
/// Every stream is checked record by record (Fletcher-4 trailers and END
/// checksums) and written to DIR/.<dataset>@<snap>.zsend.partial; only when
/// the whole stream verified is it renamed to DIR/<dataset>@<snap>.zsend
/// (with `/` in the dataset written as `_`). A damaged stream, or a sender
/// that does not come back within --grace after a link loss, leaves no
/// file behind.
///
/// Example:
///   fjord-recv serve --listen 10.10.0.2:7450 --key /etc/fjord/recv.key \
///     --allow-key 'SENDERKEY=' --sink-dir /srv/fjord/incoming
///
/// Runs until killed; each completed or failed session is logged to stderr
/// (set FJORD_LOG=info for progress).
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// Address and UDP port to listen on (e.g. 0.0.0.0:7450, [::]:7450).
    #[arg(long, value_name = "ADDR:PORT")]
    listen: SocketAddr,
    /// This receiver's private key (from `fjord-recv keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Public key of a sender allowed to connect (from `fjord-send keygen`);
    /// repeat for several senders.
    #[arg(long = "allow-key", value_name = "PUBKEY", required = true)]
    allow_keys: Vec<PublicKey>,
    /// Directory the streams are stored in (must exist).
    #[arg(long, value_name = "DIR")]
    sink_dir: PathBuf,
    /// How long to keep a session whose connection was lost, waiting for
    /// the sender to come back (e.g. 300, 90s, 10m, 1h).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = fjord_cli::parse_duration)]
    grace: Duration,
    /// Unverified data held per stream before it is refused, MiB (only
    /// streams from OpenZFS before 0.6.5, without per-record checksums,
    /// come near it).
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    max_held_mib: u64,
    #[command(flatten)]
    link: fjord_cli::LinkArgs,
}

/// Runs the subcommand until the process is killed; returns the exit code
/// only when it cannot start.
pub fn run(args: Args) -> u8 {
    match run_inner(args) {
        Ok(()) => crate::exit::OK,
        Err(e) => {
            eprintln!("fjord-recv: error: {e:#}");
            crate::exit::IO_ERROR
        }
    }
}

fn run_inner(args: Args) -> anyhow::Result<()> {
    let identity = Identity::load(&args.key)?;
    anyhow::ensure!(
        args.sink_dir.is_dir(),
        "--sink-dir {} is not a directory; create it first",
        args.sink_dir.display()
    );
    let link = args.link.link_config();
    let opts = ServeOptions {
        listen: args.listen,
        allowed: args.allow_keys,
        link,
        grace: args.grace,
    };
    let factory = Arc::new(FileSinkFactory::new(
        args.sink_dir.clone(),
        args.max_held_mib << 20,
    ));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut server = Server::bind(&identity, opts, factory)?;
        let addr = server.local_addr().context("reading the bound address")?;
        eprintln!(
            "fjord-recv: listening on {addr} (UDP) as {}; storing streams in {}",
            identity.public_key(),
            args.sink_dir.display()
        );
        while let Some(event) = server.next_event().await {
            match event {
                ServerEvent::Completed {
                    session,
                    message,
                    stats,
                } => eprintln!(
                    "fjord-recv: session {session}: {message} (resumed {} times, {} duplicate bytes dropped)",
                    stats.resumes, stats.bytes_duplicate
                ),
                ServerEvent::Failed { session, error } => {
                    eprintln!("fjord-recv: session {session} failed, nothing stored: {error}")
                }
                ServerEvent::Refused { remote, reason } => {
                    eprintln!("fjord-recv: refused {remote}: {reason}")
                }
            }
        }
        anyhow::Ok(())
    })
}
