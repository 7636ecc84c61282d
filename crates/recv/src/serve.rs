//! `fjord-recv serve`: receive send streams from pinned senders over QUIC,
//! verified, into `zfs recv` (`--config`) or as files (`--sink-dir`).

use crate::metrics::{self, Tally};
use crate::reload::{decide, Policy, Reload};
use crate::zfs_target::{SharedTarget, ZfsTarget};
use anyhow::Context;
use fjord_cli::Failure;
use fjord_config::config::RecvConfig;
use fjord_proto::admission::Limits;
use fjord_proto::PublicKey;
use fjord_sink::chunk_cache::ChunkCacheOptions;
use fjord_sink::{FileSinkFactory, SinkFactory};
use fjord_transport::control::{Control, NoControl};
use fjord_transport::server::{ServeOptions, Server, ServerEvent};
use fjord_transport::Identity;
use fjord_zfs::Zfs;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

/// Receive streams from pinned senders, verified, into zfs recv or files.
///
/// With --config into `zfs recv`; with --sink-dir as files.
///
/// With --config /etc/fjord/recv.toml (see examples/recv.toml): the DR node
/// for `fjord-send push`. Each client key may only write datasets at or
/// below its `prefixes`; every stream is verified record by record before
/// its bytes reach `zfs recv` (`-s -u` by default: an interrupted receive
/// is resumable, nothing is mounted). The sender asks for the target's
/// snapshots and resume token to plan, and may prune its own snapshots
/// (never the newest one). SIGTERM stops accepting, ends every running
/// `zfs recv -s` (keeping what it verified as a resumable partial
/// receive) and exits 0. SIGHUP (`systemctl reload`) reads the file
/// again: its clients and policy apply to new connections and requests,
/// running transfers go on; a file that fails to load is logged and the
/// previous config stays in force.
///
/// Without --config, streams from `fjord-send send` are stored as files:
/// only senders whose public keys are given with --allow-key can connect;
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
    /// The receiver's config file: receive into ZFS (see examples/recv.toml).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["listen", "key", "allow_keys", "sink_dir", "chunk_cache"])]
    config: Option<PathBuf>,
    /// Address and UDP port to listen on (e.g. 0.0.0.0:7450, [::]:7450).
    #[arg(long, value_name = "ADDR:PORT", required_unless_present = "config")]
    listen: Option<SocketAddr>,
    /// This receiver's private key (from `fjord-recv keygen`).
    #[arg(long, value_name = "FILE", required_unless_present = "config")]
    key: Option<PathBuf>,
    /// Public key of a sender allowed to connect (from `fjord-send keygen`);
    /// repeat for several senders.
    #[arg(
        long = "allow-key",
        value_name = "PUBKEY",
        required_unless_present = "config"
    )]
    allow_keys: Vec<PublicKey>,
    /// Directory the streams are stored in (must exist).
    #[arg(long, value_name = "DIR", required_unless_present = "config")]
    sink_dir: Option<PathBuf>,
    /// How long to keep a session whose connection was lost, waiting for
    /// the sender to come back (e.g. 300, 90s, 10m, 1h).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = fjord_cli::parse_duration)]
    grace: Duration,
    /// Unverified data held per stream before it is refused, MiB (only
    /// streams from OpenZFS before 0.6.5, without per-record checksums,
    /// come near it).
    #[arg(long, value_name = "MiB", default_value_t = 256)]
    max_held_mib: u64,
    /// Keep the chunks of packed transfers in DIR (one subdirectory per
    /// sender key), so that a later transfer references them instead of
    /// sending them again (with --config: the [chunk_cache] table).
    #[arg(long, value_name = "DIR")]
    chunk_cache: Option<PathBuf>,
    /// Most bytes the chunk cache keeps per sender key (K, M, G, T);
    /// least recently used chunks go first.
    #[arg(long, value_name = "SIZE", default_value = "4G", value_parser = fjord_config::units::parse_size)]
    chunk_cache_size: u64,
    #[command(flatten)]
    link: fjord_cli::LinkArgs,
}

/// Runs the subcommand until SIGTERM or SIGINT; fails only when it cannot
/// start: [`Failure::Config`] for an invalid `--config` file,
/// [`Failure::Io`] for anything else (key, address, sink directory).
pub fn run(args: Args) -> Result<(), Failure> {
    let setup = match &args.config {
        Some(path) => zfs_setup(
            path,
            args.link.link_config(),
            args.grace,
            args.max_held_mib << 20,
        )?,
        None => file_setup(&args).map_err(Failure::Io)?,
    };
    serve(setup).map_err(Failure::Io)
}

/// What the server was set up with, for the start-up line.
pub(crate) struct Setup {
    pub(crate) identity: Identity,
    pub(crate) opts: ServeOptions,
    factory: Arc<dyn SinkFactory>,
    control: Arc<dyn Control>,
    pub(crate) what: String,
    /// The ZFS target, for its policy counts at shutdown.
    target: Option<Arc<ZfsTarget>>,
    /// The config file, read again on SIGHUP.
    config_path: Option<PathBuf>,
}

fn file_setup(args: &Args) -> anyhow::Result<Setup> {
    let (Some(listen), Some(key), Some(sink_dir)) = (args.listen, &args.key, &args.sink_dir) else {
        anyhow::bail!("give --config FILE, or --listen, --key, --allow-key and --sink-dir");
    };
    let identity = Identity::load(key)?;
    anyhow::ensure!(
        sink_dir.is_dir(),
        "--sink-dir {} is not a directory; create it first",
        sink_dir.display()
    );
    Ok(Setup {
        identity,
        opts: ServeOptions {
            listen,
            allowed: args.allow_keys.clone(),
            link: args.link.link_config(),
            grace: args.grace,
            max_sessions: 0,
            chunk_cache: args.chunk_cache.as_ref().map(|dir| ChunkCacheOptions {
                dir: dir.clone(),
                capacity: args.chunk_cache_size,
            }),
            limits: Default::default(),
        },
        factory: Arc::new(FileSinkFactory::new(
            sink_dir.clone(),
            args.max_held_mib << 20,
        )),
        control: Arc::new(NoControl),
        what: format!("storing streams in {}", sink_dir.display()),
        target: None,
        config_path: None,
    })
}

/// The server for a `--config` file: clients and their keys, this node's
/// key, the `zfs` binary, limits. [`Failure::Config`] for the file,
/// [`Failure::Io`] for the key file or a missing `zfs`.
pub(crate) fn zfs_setup(
    path: &std::path::Path,
    base_link: fjord_transport::LinkConfig,
    default_grace: Duration,
    max_held: u64,
) -> Result<Setup, Failure> {
    let config = RecvConfig::load(path).map_err(Failure::config)?;
    let policy = Policy::from_config(config.clone(), path)
        .map_err(|e| Failure::Config(anyhow::anyhow!(e)))?;
    let identity = Identity::load(&config.key)
        .with_context(|| format!("loading the receiver key {}", config.key.display()))
        .map_err(Failure::Io)?;
    let allowed = policy.keys();
    // Checked now, not at the first push: a DR node without zfs receives nothing.
    let zfs = Zfs::new();
    zfs.locate().map_err(Failure::io)?;
    let target = SharedTarget(Arc::new(ZfsTarget::new(zfs, policy, max_held)));
    let mut link = base_link;
    if let Some(t) = config.idle_timeout {
        link = link.with_idle_timeout(t);
    }
    Ok(Setup {
        identity,
        opts: ServeOptions {
            listen: config.listen,
            allowed,
            link,
            grace: config.grace.unwrap_or(default_grace),
            max_sessions: config.max_concurrent,
            chunk_cache: config.chunk_cache.as_ref().map(|c| ChunkCacheOptions {
                dir: c.dir.clone(),
                capacity: c.size,
            }),
            limits: limits(&config.limits, max_held),
        },
        factory: Arc::new(target.clone()),
        target: Some(target.0.clone()),
        config_path: Some(path.to_path_buf()),
        control: Arc::new(target),
        what: format!("receiving into zfs for {} client(s)", config.clients.len()),
    })
}

/// The transport's limits with the config's `[limits]` over them.
fn limits(cfg: &fjord_config::config::LimitsConfig, held: u64) -> Limits {
    let d = Limits::default();
    Limits {
        per_client_sessions: cfg.sessions_per_client.unwrap_or(d.per_client_sessions),
        per_client_connections: cfg
            .connections_per_client
            .unwrap_or(d.per_client_connections),
        per_client_requests: cfg.requests_per_client.unwrap_or(d.per_client_requests),
        per_client_leases: cfg.leases_per_client.unwrap_or(d.per_client_leases),
        offer_deadline: cfg.offer_deadline.unwrap_or(d.offer_deadline),
        memory_budget_bytes: cfg.memory_budget.unwrap_or(d.memory_budget_bytes),
        session_memory_bytes: Limits::session_memory_for(held),
    }
}

fn serve(setup: Setup) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut server = Server::bind_with_control(
            &setup.identity,
            setup.opts.clone(),
            setup.factory.clone(),
            setup.control.clone(),
        )?;
        let addr = server.local_addr().context("reading the bound address")?;
        eprintln!(
            "fjord-recv: listening on {addr} (UDP) as {}; {}",
            setup.identity.public_key(),
            setup.what
        );
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let _watchdog = systemd_ready(&format!("listening on {addr}; {}", setup.what));
        let mut tally = Tally::new(metrics::now());
        let mut every = tokio::time::interval(METRICS_EVERY);
        loop {
            let event = tokio::select! {
                e = server.next_event() => e,
                _ = term.recv() => break,
                _ = int.recv() => break,
                _ = hup.recv() => {
                    match reload(&server, &setup).await {
                        Some(true) => tally.reloads_applied += 1,
                        Some(false) => tally.reloads_rejected += 1,
                        None => {}
                    }
                    continue;
                }
                _ = every.tick() => {
                    if let Some(t) = &setup.target {
                        metrics::write(&server, t, &tally).await;
                    }
                    continue;
                }
            };
            let Some(event) = event else { break };
            tally.event(&event);
            log_event(event);
        }
        fjord_cli::systemd::stopping();
        let stopped = server.shutdown("fjord-recv is shutting down").await;
        eprintln!("fjord-recv: shut down; {stopped} transfer(s) stopped (resumable where zfs recv -s was used)");
        if let Some(t) = &setup.target {
            metrics::write(&server, t, &tally).await;
            log_policy_counts(t);
        }
        anyhow::Ok(())
    })
}

/// How often `serve` rewrites its metrics file.
const METRICS_EVERY: Duration = Duration::from_secs(15);

/// One line on stderr per session end and refusal.
fn log_event(event: ServerEvent) {
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
            eprintln!("fjord-recv: session {session} failed: {error}")
        }
        ServerEvent::Refused { remote, reason } => {
            eprintln!("fjord-recv: refused {remote}: {reason}")
        }
    }
}

/// The policy's counts, at shutdown.
fn log_policy_counts(t: &ZfsTarget) {
    use std::sync::atomic::Ordering::Relaxed;
    let c = t.counts();
    eprintln!(
        "fjord-recv: policy: refused {} destroy request(s), {} rollback(s) and {} push(es) or request(s) into promoted datasets; pruned {} snapshot(s) at clients' requests and {} by retention; {} hold failure(s)",
        c.refused_destroys.load(Relaxed),
        c.refused_rollbacks.load(Relaxed),
        c.refused_promoted.load(Relaxed),
        c.client_pruned.load(Relaxed),
        c.retention_pruned.load(Relaxed),
        c.hold_failures.load(Relaxed)
    );
}

/// SIGHUP: reads the config file again and, if it loads, puts its clients
/// and policy in force for every new connection, offer and request
/// (running transfers go on); if not, logs why (file and key) and keeps
/// the old one. Tells systemd `RELOADING=1` first and `READY=1` after.
/// Whether the new config was applied; none without a config file.
async fn reload(server: &Server, setup: &Setup) -> Option<bool> {
    let (Some(path), Some(target)) = (&setup.config_path, &setup.target) else {
        tracing::warn!("SIGHUP ignored: without --config there is no file to reload");
        return None;
    };
    fjord_cli::systemd::reloading();
    let read = path.clone();
    let loaded = tokio::task::spawn_blocking(move || RecvConfig::load(&read))
        .await
        .map_err(|e| format!("{}: reading the config: {e}", path.display()))
        .and_then(|r| r.map_err(|e| e.to_string()));
    let applied = match decide(&target.policy(), loaded, path) {
        Reload::Apply { policy, changes } => {
            let keys = policy.keys();
            // The policy first: a newly pinned key finds its client.
            target.replace_policy(policy);
            server.set_allowed(keys);
            tracing::info!(file = %path.display(), %changes, "config reloaded");
            eprintln!("fjord-recv: reloaded {}: {changes}", path.display());
            true
        }
        Reload::Reject { error } => {
            tracing::error!(%error, "reload rejected; the previous config stays in force");
            eprintln!("fjord-recv: reload rejected, the previous config stays in force: {error}");
            false
        }
    };
    fjord_cli::systemd::ready_again();
    Some(applied)
}

/// Under systemd (`Type=notify`): `READY=1` now, and `WATCHDOG=1` at half
/// `WatchdogSec=` from a task of the runtime, so that a runtime that stops
/// making progress is restarted. The task ends when the guard drops.
fn systemd_ready(status: &str) -> Option<AbortOnDrop> {
    fjord_cli::systemd::ready(status);
    let every = fjord_cli::systemd::watchdog_interval()?;
    Some(AbortOnDrop(tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            fjord_cli::systemd::watchdog();
        }
    })))
}

/// Aborts its task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
