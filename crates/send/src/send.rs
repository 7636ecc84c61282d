//! `fjord-send send`: send one ZFS send stream to a `fjord-recv serve`
//! over QUIC, surviving link flaps.

use anyhow::{bail, Context};
use fjord_cli::Failure;
use fjord_pack::PackOptions;
use fjord_proto::message::offer_flags;
use fjord_proto::{Offer, PublicKey, SessionError, Snapshot};
use fjord_stream::{Body, Decoder};
use fjord_transport::client::{Counters, Link, SendError, SendOptions};
use fjord_transport::source::{PackSource, StreamSource};
use fjord_transport::{Identity, LinkConfig};
use std::io::Read;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

/// Send a ZFS send stream to a DR node running `fjord-recv serve`.
///
/// The stream is sent over QUIC (UDP), authenticated both ways by pinned
/// public keys. If the link drops, fjord-send keeps reconnecting (backoff
/// with jitter) for --grace and resumes where the receiver stopped; only
/// unacknowledged data (at most --replay-window-mib) is sent again.
///
/// Example:
///   zfs send -i tank/fs@a tank/fs@b | fjord-send send --stream - \
///     --to 10.10.0.2:7450 --key /etc/fjord/send.key \
///     --server-key 'BASE64KEY=' --dataset backup/fs
///
/// Exit status: 0 stored and verified by the receiver; 1 refused or
/// rejected by the receiver (damaged stream, unknown key, bad dataset);
/// 3 the stream could not be read, or the receiver stayed unreachable for
/// the whole grace period.
#[derive(clap::Args)]
#[command(verbatim_doc_comment)]
pub struct Args {
    /// The send stream: a file, or `-` for standard input (`zfs send … |`).
    #[arg(long, value_name = "FILE|-")]
    stream: PathBuf,
    /// The receiver, HOST:PORT (the address `fjord-recv serve --listen` uses).
    #[arg(long, value_name = "HOST:PORT")]
    to: String,
    /// This sender's private key (from `fjord-send keygen`).
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// The receiver's public key (printed by `fjord-recv keygen`).
    #[arg(long, value_name = "PUBKEY")]
    server_key: PublicKey,
    /// Target dataset on the receiver (e.g. backup/fs).
    #[arg(long, value_name = "NAME")]
    dataset: String,
    /// How long to keep trying while the link is down before giving up
    /// (e.g. 300, 90s, 10m, 1h).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = fjord_cli::parse_duration)]
    grace: Duration,
    /// Unacknowledged data kept for resending after a reconnection, MiB.
    /// Bounds both memory and what a flap costs.
    #[arg(long, value_name = "MiB", default_value_t = 64)]
    replay_window_mib: u64,
    /// Limit the sending rate, bytes per second with an optional K/M/G
    /// suffix (1024-based), e.g. 50M.
    #[arg(long, value_name = "RATE", value_parser = fjord_config::units::parse_bwlimit)]
    bwlimit: Option<u64>,
    /// Pack the stream on the wire: record-aligned frames, BLAKE3 dedup
    /// within the stream, zstd where it pays (fjord-pack). The receiver
    /// decodes and verifies it before storing; what it stores is the
    /// original stream.
    #[arg(long)]
    pack: bool,
    #[command(flatten)]
    link: fjord_cli::LinkArgs,
}

/// Reads the stream's first record (BEGIN) to name the snapshot in the
/// offer; returns the bytes read so they can be sent too.
fn peek_begin(source: &mut dyn Read) -> anyhow::Result<(Vec<u8>, Snapshot, Option<Snapshot>)> {
    let mut decoder = Decoder::default();
    let mut prefix = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        if let Some(r) = decoder
            .next_record()
            .context("the stream does not start with a valid BEGIN record")?
        {
            let Body::Begin(b) = &r.header.body else {
                bail!("the stream does not start with a BEGIN record");
            };
            let to = Snapshot {
                name: b.toname.as_string(),
                guid: b.toguid,
            };
            let from = (b.fromguid != 0).then(|| Snapshot {
                name: String::new(),
                guid: b.fromguid,
            });
            return Ok((prefix, to, from));
        }
        let n = source.read(&mut chunk).context("reading the stream")?;
        if n == 0 {
            bail!(
                "the stream ended before its first record was complete ({} bytes)",
                prefix.len()
            );
        }
        decoder.feed(&chunk[..n]);
        prefix.extend_from_slice(&chunk[..n]);
    }
}

fn resolve(to: &str) -> anyhow::Result<SocketAddr> {
    to.to_socket_addrs()
        .with_context(|| format!("cannot resolve {to:?}; expected HOST:PORT"))?
        .next()
        .with_context(|| format!("{to:?} resolves to no address"))
}

/// Runs the subcommand.
pub fn run(args: Args) -> Result<(), Failure> {
    let identity = Identity::load(&args.key).map_err(Failure::io)?;
    let to = resolve(&args.to).map_err(Failure::io)?;
    let mut source: Box<dyn Read + Send> = if args.stream.as_os_str() == "-" {
        Box::new(std::io::stdin())
    } else {
        Box::new(
            std::fs::File::open(&args.stream)
                .with_context(|| format!("cannot open {}", args.stream.display()))
                .map_err(Failure::Io)?,
        )
    };
    let (prefix, snap, from) = peek_begin(&mut source).map_err(|e| {
        if e.downcast_ref::<std::io::Error>().is_some() {
            Failure::Io(e)
        } else {
            Failure::InvalidStream(e)
        }
    })?;
    transfer(args, identity, to, source, prefix, snap, from).map_err(|e| {
        match e.downcast_ref::<SendError>() {
            // The receiver refused or rejected the stream.
            Some(SendError::KeyRefused { .. }) => Failure::InvalidStream(e),
            Some(SendError::Session(s))
                if !matches!(
                    s,
                    SessionError::GraceExpired { .. } | SessionError::ResumeOutsideWindow { .. }
                ) =>
            {
                Failure::InvalidStream(e)
            }
            // Unreachable for the whole grace period, unreadable stream,
            // local set-up and key problems.
            _ => Failure::Io(e),
        }
    })
}

/// Offers the stream whose first record was `prefix` and sends it.
fn transfer(
    args: Args,
    identity: Identity,
    to: SocketAddr,
    source: Box<dyn Read + Send>,
    prefix: Vec<u8>,
    snap: Snapshot,
    from: Option<Snapshot>,
) -> anyhow::Result<()> {
    let size_estimate = std::fs::metadata(&args.stream)
        .ok()
        .filter(|m| m.is_file())
        .map(|m| m.len());
    let offer = Offer {
        session: fjord_transport::identity::random_session_id(),
        resuming: false,
        dataset: args.dataset.clone(),
        from,
        to: snap,
        flags: if args.pack { offer_flags::PACKED } else { 0 },
        size_estimate,
    };
    let mut opts = SendOptions::new(to, args.server_key, offer);
    opts.grace = args.grace;
    opts.replay_window = args.replay_window_mib.max(2) << 20;
    opts.link = LinkConfig {
        rate_limit: args.bwlimit,
        ..args.link.link_config()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    // One connection for the inventory and the transfer.
    let link = {
        let _runtime = runtime.enter();
        Link::new(&identity, opts.link_options())?
    };
    let source = std::io::Cursor::new(prefix).chain(source);
    let source: Box<dyn StreamSource> = if args.pack {
        let holdings = runtime
            .block_on(link.chunk_inventory(opts.offer.session, args.grace))
            .with_context(|| format!("asking {} for its chunk inventory", args.to))?;
        Box::new(
            PackSource::spawn(source, PackOptions::default(), Box::new(holdings))
                .context("starting the pack threads")?,
        )
    } else {
        Box::new(source)
    };
    let counters = Arc::new(Counters::default());
    let out = runtime.block_on(async {
        let out = link.send(opts.transfer_options(), source, counters).await;
        link.close().await;
        out
    })?;
    let secs = out.elapsed.as_secs_f64().max(1e-3);
    println!(
        "sent {} bytes to {} in {:.1}s ({:.1} MB/s); re-sent {} bytes over {} reconnects; receiver: {}",
        out.length,
        args.to,
        secs,
        out.length as f64 / secs / 1e6,
        out.stats.bytes_resent,
        out.stats.reconnects,
        out.report.message
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_rates_parse() {
        assert_eq!(
            fjord_cli::parse_duration("300"),
            Ok(Duration::from_secs(300))
        );
        assert_eq!(
            fjord_cli::parse_duration("10m"),
            Ok(Duration::from_secs(600))
        );
        assert_eq!(
            fjord_cli::parse_duration("500ms"),
            Ok(Duration::from_millis(500))
        );
        assert!(fjord_cli::parse_duration("5 weeks").is_err());
        let rate = fjord_config::units::parse_bwlimit;
        assert_eq!(rate("50M"), Ok(50 << 20));
        assert_eq!(rate("50m"), Ok(50 << 20));
        assert_eq!(rate("1000"), Ok(1000));
        assert!(rate("0").is_err());
        assert!(rate("99999999999T").is_err(), "overflow is an error");
    }
}
