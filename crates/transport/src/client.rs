//! The sending driver: reads a stream from any `std::io::Read`, cuts it
//! into raw frames and runs a [`SenderSession`] over a stream of a quinn
//! connection, reconnecting with backoff until the session completes or
//! its grace period ends.
//!
//! A [`Link`] is one connection to one receiver (its key pinned), shared
//! by everything a job sends there: each transfer ([`Link::send`]) and
//! each batch of control requests ([`Link::request`]) opens its own
//! bidirectional stream on it, so there is one TLS handshake per
//! connection, not per request. When the connection is lost, the next
//! user reconnects, once for all of them: users waiting meanwhile take
//! the new connection (or share the failed attempt's outcome and back
//! off), and each transfer resumes its session on a new stream there,
//! within its own grace period. The free functions [`send`], [`request`]
//! and [`chunk_inventory`] make a link of their own for one use.
//!
//! A receiver that answers `Busy` (a transfer into the same dataset is
//! running, or this sender is at one of its limits) is asked again with
//! backoff and jitter within the grace period, for transfers and for
//! control requests alike. A sender that gives up (its source failed, or
//! the session failed) delivers an `Abort` (waiting at most
//! [`ABORT_DELIVERY`] for it to arrive) and closes with
//! [`close_code::ABORTED`], so the receiver frees the session at once.

use crate::config::LinkConfig;
use crate::identity::{Identity, IdentityError};
use crate::source::StreamSource;
use bytes::{Bytes, BytesMut};
use fjord_proto::message::{
    DataFrame, DecodeError, Message, MessageReader, Offer, RefuseCode, Report, Request, Response,
    SessionId,
};
use fjord_proto::pace::{Backoff, BackoffConfig, RateLimiter};
use fjord_proto::sender::{SenderSession, SenderStats};
use fjord_proto::PublicKey;
use fjord_proto::{close_code, SessionError};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

/// Why sending failed.
#[derive(Debug, Error)]
pub enum SendError {
    /// The session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
    /// The TLS handshake was refused (keys not pinned).
    #[error("the receiver at {addr} and this sender do not trust each other's keys: {detail}. Check that the receiver's public key given here (--server-key, or target_key in send.toml) is right, and that the receiver allows this sender's public key (--allow-key, or a [[client]] key in recv.toml)")]
    KeyRefused {
        /// The receiver.
        addr: SocketAddr,
        /// What TLS said.
        detail: String,
    },
    /// Reading the stream failed.
    #[error("reading the stream failed after {at} bytes: {source}")]
    Source {
        /// Bytes read before.
        at: u64,
        /// The error.
        source: std::io::Error,
    },
    /// Local setup failed (socket, TLS, options).
    #[error("setup failed: {0}")]
    Setup(String),
    /// Key problems.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Where a [`Link`] goes and how.
#[derive(Clone, Debug)]
pub struct LinkOptions {
    /// The receiver.
    pub to: SocketAddr,
    /// The receiver's public key (pinned).
    pub server_key: PublicKey,
    /// Link tuning; its idle timeout also bounds a handshake.
    pub link: LinkConfig,
    /// Local address to bind (port 0 for any).
    pub bind: SocketAddr,
}

impl LinkOptions {
    /// The default link to `to`, bound to any local address.
    pub fn new(to: SocketAddr, server_key: PublicKey) -> LinkOptions {
        LinkOptions {
            to,
            server_key,
            link: LinkConfig::default(),
            bind: any_address_for(to),
        }
    }
}

/// One transfer's options on a [`Link`].
#[derive(Clone, Debug)]
pub struct TransferOptions {
    /// What to offer (the session id is taken from here).
    pub offer: Offer,
    /// Largest number of unacknowledged payload bytes kept for resending.
    pub replay_window: u64,
    /// Payload bytes per raw data frame.
    pub frame_size: usize,
    /// How long to keep trying while the link is down.
    pub grace: Duration,
    /// Reconnection backoff.
    pub backoff: BackoffConfig,
    /// Sending rate limit of this transfer in bytes per second.
    pub rate_limit: Option<u64>,
}

impl TransferOptions {
    /// Defaults for offering `offer`: 64 MiB replay window, 1 MiB frames,
    /// 5 minutes of grace, no rate limit.
    pub fn new(offer: Offer) -> TransferOptions {
        TransferOptions {
            offer,
            replay_window: 64 << 20,
            frame_size: 1 << 20,
            grace: Duration::from_secs(300),
            backoff: BackoffConfig::default(),
            rate_limit: None,
        }
    }
}

/// Options for [`send`].
#[derive(Clone, Debug)]
pub struct SendOptions {
    /// The receiver.
    pub to: SocketAddr,
    /// The receiver's public key.
    pub server_key: PublicKey,
    /// What to offer (the session id is taken from here).
    pub offer: Offer,
    /// Link tuning.
    pub link: LinkConfig,
    /// Largest number of unacknowledged payload bytes kept for resending.
    pub replay_window: u64,
    /// Payload bytes per raw data frame.
    pub frame_size: usize,
    /// How long to keep trying while the link is down.
    pub grace: Duration,
    /// Reconnection backoff.
    pub backoff: BackoffConfig,
    /// Local address to bind (port 0 for any).
    pub bind: SocketAddr,
}

impl SendOptions {
    /// Defaults for sending `offer` to `to`: 64 MiB replay window, 1 MiB
    /// frames, 5 minutes of grace.
    pub fn new(to: SocketAddr, server_key: PublicKey, offer: Offer) -> SendOptions {
        let bind = any_address_for(to);
        SendOptions {
            to,
            server_key,
            offer,
            link: LinkConfig::default(),
            replay_window: 64 << 20,
            frame_size: 1 << 20,
            grace: Duration::from_secs(300),
            backoff: BackoffConfig::default(),
            bind,
        }
    }

    /// The link part of these options.
    pub fn link_options(&self) -> LinkOptions {
        LinkOptions {
            to: self.to,
            server_key: self.server_key,
            link: self.link.clone(),
            bind: self.bind,
        }
    }

    /// The transfer part of these options (the rate limit is the link's).
    pub fn transfer_options(&self) -> TransferOptions {
        TransferOptions {
            offer: self.offer.clone(),
            replay_window: self.replay_window,
            frame_size: self.frame_size,
            grace: self.grace,
            backoff: self.backoff,
            rate_limit: self.link.rate_limit,
        }
    }
}

/// The outcome of a failed connection attempt, shared with the users who
/// waited for it.
#[derive(Clone, Debug)]
enum Attempt {
    /// The keys are not trusted.
    KeyRefused(String),
    /// Local setup failed.
    Setup(String),
    /// Try again later.
    Retry(String),
}

impl Attempt {
    fn failure(&self, to: SocketAddr) -> ConnectFailure {
        match self {
            Attempt::KeyRefused(detail) => ConnectFailure::Fatal(SendError::KeyRefused {
                addr: to,
                detail: detail.clone(),
            }),
            Attempt::Setup(m) => ConnectFailure::Fatal(SendError::Setup(m.clone())),
            Attempt::Retry(m) => ConnectFailure::Retry(m.clone()),
        }
    }
}

/// The link's connection, and the last attempt's number and failure.
struct Current {
    conn: Option<quinn::Connection>,
    attempts: u64,
    failed: Option<Attempt>,
}

struct LinkInner {
    opts: LinkOptions,
    sender_key: [u8; 32],
    endpoint: quinn::Endpoint,
    current: tokio::sync::Mutex<Current>,
    /// Attempts started (mirrors `Current::attempts`, read without the lock).
    attempts: AtomicU64,
    /// Connections established.
    connects: AtomicU64,
}

/// One connection to one receiver, shared by many transfers and control
/// requests (cheap to clone; the clones share it). See the module docs
/// for the reconnection rule. Dropping the last clone closes the
/// connection (nothing waits); [`Link::close`] also lets the close go out.
#[derive(Clone)]
pub struct Link {
    inner: Arc<LinkInner>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("to", &self.inner.opts.to)
            .field("connects", &self.connects())
            .finish()
    }
}

impl Link {
    /// A link to `opts.to` with this sender's `identity`. Binds the local
    /// UDP socket now (in a tokio runtime); connects at first use.
    pub fn new(identity: &Identity, opts: LinkOptions) -> Result<Link, SendError> {
        let endpoint = client_endpoint(identity, opts.server_key, &opts.link, opts.bind)?;
        Ok(Link {
            inner: Arc::new(LinkInner {
                opts,
                sender_key: identity.public_key().0,
                endpoint,
                current: tokio::sync::Mutex::new(Current {
                    conn: None,
                    attempts: 0,
                    failed: None,
                }),
                attempts: AtomicU64::new(0),
                connects: AtomicU64::new(0),
            }),
        })
    }

    /// The receiver.
    pub fn to(&self) -> SocketAddr {
        self.inner.opts.to
    }

    /// Connections established so far (each one TLS handshake).
    pub fn connects(&self) -> u64 {
        self.inner.connects.load(Ordering::Relaxed)
    }

    /// Closes the connection (streams still open fail) and waits at most
    /// 2 s for the close to go out.
    pub async fn close(&self) {
        if let Some(c) = self.inner.current.lock().await.conn.take() {
            c.close(close_code::DONE.into(), b"done");
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.inner.endpoint.wait_idle()).await;
    }

    /// The live connection, or a new one. Single flight: one user
    /// connects at a time; users who waited while another one's attempt
    /// failed take that failure instead of trying again themselves.
    async fn connection(&self) -> Result<quinn::Connection, ConnectFailure> {
        let inner = &*self.inner;
        let seen = inner.attempts.load(Ordering::Acquire);
        let mut cur = inner.current.lock().await;
        if let Some(c) = &cur.conn {
            if c.close_reason().is_none() {
                return Ok(c.clone());
            }
        }
        if cur.attempts != seen {
            if let Some(failed) = &cur.failed {
                return Err(failed.failure(inner.opts.to));
            }
        }
        cur.attempts += 1;
        inner.attempts.store(cur.attempts, Ordering::Release);
        cur.conn = None;
        // A caller cancelled mid-attempt leaves no failure: the waiters
        // then try themselves.
        cur.failed = None;
        match connect(&inner.endpoint, inner.opts.to, inner.opts.link.idle_timeout).await {
            Ok(c) => {
                inner.connects.fetch_add(1, Ordering::Relaxed);
                info!(remote = %c.remote_address(), connects = inner.connects.load(Ordering::Relaxed), "connected");
                cur.failed = None;
                cur.conn = Some(c.clone());
                Ok(c)
            }
            Err(f) => {
                cur.failed = Some(match &f {
                    ConnectFailure::Fatal(SendError::KeyRefused { detail, .. }) => {
                        Attempt::KeyRefused(detail.clone())
                    }
                    ConnectFailure::Fatal(e) => Attempt::Setup(e.to_string()),
                    ConnectFailure::Retry(m) | ConnectFailure::Busy(m) => Attempt::Retry(m.clone()),
                });
                Err(f)
            }
        }
    }

    /// Sends `source` as one session on its own stream of this link.
    /// Blocks (asynchronously) until the receiver reports, or the session
    /// fails.
    pub async fn send<S: StreamSource>(
        &self,
        opts: TransferOptions,
        source: S,
        counters: Arc<Counters>,
    ) -> Result<SendOutcome, SendError> {
        let span = tracing::info_span!("send", session = %opts.offer.session, to = %self.to(), dataset = %opts.offer.dataset);
        send_inner(self, opts, source, counters)
            .instrument(span)
            .await
    }
}

/// Live counters of a running transfer (shared with the caller).
#[derive(Debug, Default)]
pub struct Counters {
    /// Payload bytes sent, resent ones included.
    pub bytes_sent: AtomicU64,
    /// Payload bytes resent after reconnections.
    pub bytes_resent: AtomicU64,
    /// Reconnections.
    pub reconnects: AtomicU64,
    /// Offset acknowledged by the receiver.
    pub acked: AtomicU64,
}

impl Counters {
    fn publish(&self, s: &SenderStats) {
        self.bytes_sent.store(s.bytes_sent, Ordering::Relaxed);
        self.bytes_resent.store(s.bytes_resent, Ordering::Relaxed);
        self.reconnects.store(s.reconnects, Ordering::Relaxed);
        self.acked.store(s.acked, Ordering::Relaxed);
    }
}

/// The outcome of a completed transfer.
#[derive(Clone, Debug)]
pub struct SendOutcome {
    /// The session.
    pub session: SessionId,
    /// Final counters.
    pub stats: SenderStats,
    /// The receiver's report.
    pub report: Report,
    /// Stream length.
    pub length: u64,
    /// Wall time.
    pub elapsed: Duration,
}

enum Source {
    Data(Bytes),
    Eof,
    Failed(std::io::Error),
}

/// Runs `source` on a thread of its own, its pieces (at most `frame`
/// bytes each) into a short queue.
fn spawn_source<S: StreamSource>(mut source: S, frame: usize) -> mpsc::Receiver<Source> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || loop {
        let item = match source.next_piece(frame) {
            Ok(Some(piece)) => Source::Data(piece),
            Ok(None) => Source::Eof,
            Err(e) => Source::Failed(e),
        };
        let last = !matches!(item, Source::Data(_));
        if tx.blocking_send(item).is_err() || last {
            return;
        }
    });
    rx
}

/// How long a giving-up sender waits for its `Abort` to reach the
/// receiver before it closes the connection anyway.
pub const ABORT_DELIVERY: Duration = Duration::from_secs(2);

/// Why one connection ended.
enum ConnEnd {
    /// The session completed.
    Done,
    /// The link failed; reconnect.
    Lost(String),
    /// The receiver is busy; ask again after a backoff.
    Busy(String),
}

/// The receiver's reason when it closed `conn` as busy
/// ([`close_code::BUSY`]).
fn busy_close(conn: &quinn::Connection) -> Option<String> {
    match conn.close_reason()? {
        quinn::ConnectionError::ApplicationClosed(c) if c.error_code == close_code::BUSY.into() => {
            Some(String::from_utf8_lossy(&c.reason).into_owned())
        }
        _ => None,
    }
}

/// Sends `Abort` and waits (at most [`ABORT_DELIVERY`]) until the
/// receiver has it: its transport acknowledged the stream's end and the
/// receiver ended its side of the stream after ending the session.
async fn deliver_abort(
    send: &mut quinn::SendStream,
    incoming: &mut mpsc::UnboundedReceiver<Result<Message, ReadEnd>>,
    reason: String,
) {
    let delivered = async {
        send.write_all(&Message::Abort { reason }.to_bytes())
            .await
            .ok()?;
        send.finish().ok()?;
        send.stopped().await.ok()?;
        while let Some(Ok(_)) = incoming.recv().await {}
        Some(())
    };
    if tokio::time::timeout(ABORT_DELIVERY, delivered)
        .await
        .is_err()
    {
        warn!("the receiver did not confirm the abort in time; closing anyway");
    }
}

/// Sends `source` as one session. Blocks (asynchronously) until the
/// receiver reports, or the session fails.
pub async fn send<S: StreamSource>(
    identity: &Identity,
    opts: SendOptions,
    source: S,
    counters: Arc<Counters>,
) -> Result<SendOutcome, SendError> {
    let link = Link::new(identity, opts.link_options())?;
    let out = link.send(opts.transfer_options(), source, counters).await;
    // Let the close frame go out.
    link.close().await;
    out
}

async fn send_inner<S: StreamSource>(
    link: &Link,
    opts: TransferOptions,
    source: S,
    counters: Arc<Counters>,
) -> Result<SendOutcome, SendError> {
    if opts.replay_window < opts.frame_size as u64 {
        return Err(SendError::Setup(format!(
            "the replay window ({} bytes) must hold at least one frame ({} bytes)",
            opts.replay_window, opts.frame_size
        )));
    }
    let started = Instant::now();
    let mut session = SenderSession::new(
        opts.offer.clone(),
        link.inner.sender_key,
        opts.replay_window,
        opts.grace,
        Instant::now(),
    );
    let mut src = spawn_source(source, opts.frame_size);
    let mut source_done = false;
    let mut backoff = Backoff::new(opts.backoff);
    let mut limiter = opts
        .rate_limit
        .map(|r| RateLimiter::new(r, (opts.frame_size as u64).max(r / 10), Instant::now()));

    let result = loop {
        if let Err(e) = session.handle_timeout(Instant::now()) {
            break Err(e.into());
        }
        let deadline = session
            .poll_timeout()
            .unwrap_or_else(|| Instant::now() + opts.grace);
        let attempt = tokio::time::timeout_at(deadline.into(), link.connection()).await;
        let conn = match attempt {
            Err(_) => continue, // grace check at the top of the loop
            Ok(Ok(c)) => c,
            Ok(Err(ConnectFailure::Fatal(e))) => break Err(e),
            Ok(Err(ConnectFailure::Retry(why) | ConnectFailure::Busy(why))) => {
                let delay = backoff.next_delay(fastrand::f64());
                warn!(error = %why, retry_in_ms = delay.as_millis() as u64, "cannot connect to the receiver");
                let wake = (Instant::now() + delay).min(deadline);
                tokio::time::sleep_until(wake.into()).await;
                continue;
            }
        };
        let end = run_connection(
            &conn,
            link.to(),
            &opts,
            &mut session,
            &mut src,
            &mut source_done,
            &mut limiter,
            &counters,
        )
        .await;
        counters.publish(&session.stats());
        match end {
            Ok(ConnEnd::Done) => break Ok(()),
            Ok(ConnEnd::Lost(why)) => {
                session.disconnected(Instant::now());
                let delay = backoff.next_delay(fastrand::f64());
                warn!(error = %why, acked = session.stats().acked, retry_in_ms = delay.as_millis() as u64, "stream or connection lost; the session is kept");
                tokio::time::sleep(delay).await;
            }
            Ok(ConnEnd::Busy(why)) => {
                session.receiver_busy(why.clone(), Instant::now());
                let delay = backoff.next_delay(fastrand::f64());
                info!(reason = %why, retry_in_ms = delay.as_millis() as u64, "the receiver is busy; asking again");
                let wake = session
                    .poll_timeout()
                    .map_or(Instant::now() + delay, |d| (Instant::now() + delay).min(d));
                tokio::time::sleep_until(wake.into()).await;
            }
            // Giving up for good: the stream was reset with ABORTED, so
            // the receiver frees the session now.
            Err(e) => break Err(e),
        }
        if session.stats().acked > 0 {
            backoff.reset();
        }
    };
    counters.publish(&session.stats());
    result?;
    let report = match session.phase() {
        fjord_proto::sender::SenderPhase::Done(r) => r.clone(),
        p => return Err(SessionError::Internal(format!("finished in phase {p:?}")).into()),
    };
    let stats = session.stats();
    info!(
        bytes = session.produced(),
        bytes_sent = stats.bytes_sent,
        bytes_resent = stats.bytes_resent,
        reconnects = stats.reconnects,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "transfer complete"
    );
    Ok(SendOutcome {
        session: opts.offer.session,
        stats,
        report,
        length: session.produced(),
        elapsed: started.elapsed(),
    })
}

enum ConnectFailure {
    Fatal(SendError),
    Retry(String),
    /// The receiver answered busy; ask again after a backoff.
    Busy(String),
}

/// True when a QUIC error is a TLS (crypto) failure: keys not accepted.
fn crypto_failure(e: &quinn::ConnectionError) -> Option<String> {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => u64::from(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        _ => return None,
    };
    (0x100..=0x1ff).contains(&code).then(|| e.to_string())
}

/// The unspecified address of `to`'s family, port 0: where a client binds.
fn any_address_for(to: SocketAddr) -> SocketAddr {
    if to.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
    }
}

/// A client endpoint on `bind` that trusts only `server_key` and uses
/// `link`'s tuning.
fn client_endpoint(
    identity: &Identity,
    server_key: PublicKey,
    link: &LinkConfig,
    bind: SocketAddr,
) -> Result<quinn::Endpoint, SendError> {
    let tls = identity.client_tls(server_key)?;
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| SendError::Setup(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(link.transport_arc().map_err(SendError::Setup)?);
    let bound = |e: std::io::Error| SendError::Setup(format!("cannot bind UDP socket {bind}: {e}"));
    let mut endpoint = crate::udp::endpoint(bind, None).map_err(bound)?;
    endpoint.set_default_client_config(cfg);
    Ok(endpoint)
}

async fn connect(
    endpoint: &quinn::Endpoint,
    to: SocketAddr,
    handshake_timeout: Duration,
) -> Result<quinn::Connection, ConnectFailure> {
    let connecting = endpoint
        .connect(to, "fjord")
        .map_err(|e| ConnectFailure::Fatal(SendError::Setup(e.to_string())))?;
    match tokio::time::timeout(handshake_timeout, connecting).await {
        Err(_) => Err(ConnectFailure::Retry("handshake timed out".into())),
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => match crypto_failure(&e) {
            Some(detail) => Err(ConnectFailure::Fatal(SendError::KeyRefused {
                addr: to,
                detail,
            })),
            None => Err(ConnectFailure::Retry(e.to_string())),
        },
    }
}

/// Why the receiver's messages stopped.
#[derive(Debug, Error)]
enum ReadEnd {
    /// The receiver sent bytes that are not a message: it speaks another
    /// protocol or has a bug; asking again would not help.
    #[error("undecodable message from the receiver: {0}")]
    Undecodable(DecodeError),
    /// The receiver finished the stream.
    #[error("the receiver closed the stream")]
    Closed,
    /// The stream or the connection failed.
    #[error(transparent)]
    Link(#[from] quinn::ReadError),
}

impl ReadEnd {
    /// The session error when this end is final: an undecodable message
    /// is; a closed or failed stream is a lost link (`None`).
    fn fatal(&self) -> Option<SessionError> {
        match self {
            ReadEnd::Undecodable(_) => Some(SessionError::Protocol(self.to_string())),
            ReadEnd::Closed | ReadEnd::Link(_) => None,
        }
    }
}

/// Reads messages from `recv` into a channel until the stream or
/// connection ends.
fn spawn_message_reader(
    mut recv: quinn::RecvStream,
) -> mpsc::UnboundedReceiver<Result<Message, ReadEnd>> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut reader = MessageReader::new();
        loop {
            match reader.next_message() {
                Ok(Some(m)) => {
                    if tx.send(Ok(m)).is_err() {
                        return;
                    }
                    continue;
                }
                Ok(None) => {}
                Err(e) => {
                    let _ = tx.send(Err(ReadEnd::Undecodable(e)));
                    return;
                }
            }
            match recv.read_chunk(1 << 20, true).await {
                Ok(Some(chunk)) => reader.feed(&chunk.bytes),
                Ok(None) => {
                    let _ = tx.send(Err(ReadEnd::Closed));
                    return;
                }
                Err(e) => {
                    let _ = tx.send(Err(e.into()));
                    return;
                }
            }
        }
    });
    rx
}

/// Runs the session on a new stream of `conn` until it is done, the
/// stream or connection is lost, the receiver is busy, or it fails; a
/// failure resets the stream with [`close_code::ABORTED`] (the receiver
/// ends the session at once), a lost or busy stream is reset with
/// [`close_code::DONE`]. The connection is never closed here: other
/// streams share it.
#[allow(clippy::too_many_arguments)]
async fn run_connection(
    conn: &quinn::Connection,
    to: SocketAddr,
    opts: &TransferOptions,
    session: &mut SenderSession,
    src: &mut mpsc::Receiver<Source>,
    source_done: &mut bool,
    limiter: &mut Option<RateLimiter>,
    counters: &Counters,
) -> Result<ConnEnd, SendError> {
    let (mut send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return stream_lost(conn, to, &e),
    };
    let end = run_stream(
        conn,
        to,
        opts,
        session,
        src,
        source_done,
        limiter,
        counters,
        &mut send,
        recv,
    )
    .await;
    match &end {
        Ok(ConnEnd::Done) => {}
        Ok(ConnEnd::Lost(_) | ConnEnd::Busy(_)) => {
            let _ = send.reset(close_code::DONE.into());
        }
        Err(_) => {
            let _ = send.reset(close_code::ABORTED.into());
        }
    }
    end
}

/// How a failed stream or connection ends this connection's part of a
/// transfer: busy, refused keys, a receiver that closed the connection
/// refusing or failing the session, or a lost link.
fn stream_lost(
    conn: &quinn::Connection,
    to: SocketAddr,
    e: &dyn std::fmt::Display,
) -> Result<ConnEnd, SendError> {
    if let Some(reason) = busy_close(conn) {
        return Ok(ConnEnd::Busy(reason));
    }
    if let Some(reason) = conn.close_reason() {
        if let Some(detail) = crypto_failure(&reason) {
            return Err(SendError::KeyRefused { addr: to, detail });
        }
        if let quinn::ConnectionError::ApplicationClosed(c) = &reason {
            if c.error_code == close_code::REFUSED.into()
                || c.error_code == close_code::FAILED.into()
                || c.error_code == close_code::PROTOCOL.into()
            {
                return Err(SessionError::PeerAborted(
                    String::from_utf8_lossy(&c.reason).into_owned(),
                )
                .into());
            }
        }
    }
    Ok(ConnEnd::Lost(e.to_string()))
}

#[allow(clippy::too_many_arguments)]
async fn run_stream(
    conn: &quinn::Connection,
    to: SocketAddr,
    opts: &TransferOptions,
    session: &mut SenderSession,
    src: &mut mpsc::Receiver<Source>,
    source_done: &mut bool,
    limiter: &mut Option<RateLimiter>,
    counters: &Counters,
    send: &mut quinn::SendStream,
    recv: quinn::RecvStream,
) -> Result<ConnEnd, SendError> {
    let lost = |e: &dyn std::fmt::Display| stream_lost(conn, to, e);
    let mut incoming = spawn_message_reader(recv);
    session.connected(Instant::now())?;
    let mut buf = BytesMut::new();
    loop {
        if session.is_done() {
            let _ = send.finish();
            return Ok(ConnEnd::Done);
        }
        // Take everything the receiver said so far.
        loop {
            match incoming.try_recv() {
                Ok(Ok(m)) => {
                    if let Err(e) = session.handle(m, Instant::now()) {
                        if let SessionError::Refused {
                            code: RefuseCode::Busy,
                            reason,
                        } = e
                        {
                            return Ok(ConnEnd::Busy(reason));
                        }
                        return Err(e.into());
                    }
                    if session.is_done() {
                        break;
                    }
                }
                Ok(Err(e)) => match e.fatal() {
                    Some(fatal) => return Err(fatal.into()),
                    None => return lost(&e),
                },
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => {
                    return lost(&"message reader ended")
                }
            }
        }
        counters.publish(&session.stats());
        if session.is_done() {
            let _ = send.finish();
            return Ok(ConnEnd::Done);
        }
        if let Some(msg) = session.poll_transmit() {
            if let (Some(l), Message::Data(f)) = (limiter.as_mut(), &msg) {
                let wait = l.take(f.payload.len() as u64, Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            let written = match &msg {
                // The payload goes to quinn by reference, not copied into a
                // message buffer first.
                Message::Data(f) => {
                    let mut chunks = [
                        Bytes::copy_from_slice(&f.encode_header()),
                        f.payload.clone(),
                    ];
                    send.write_all_chunks(&mut chunks).await
                }
                _ => {
                    buf.clear();
                    msg.encode(&mut buf);
                    send.write_all(&buf).await
                }
            };
            if let Err(e) = written {
                return lost(&e);
            }
            continue;
        }
        // Nothing to send: wait for the receiver or the source.
        let want_source = !*source_done && session.can_push(opts.frame_size);
        tokio::select! {
            m = incoming.recv() => match m {
                Some(Ok(m)) => {
                    if let Err(e) = session.handle(m, Instant::now()) {
                        if let SessionError::Refused { code: RefuseCode::Busy, reason } = e {
                            return Ok(ConnEnd::Busy(reason));
                        }
                        return Err(e.into());
                    }
                    continue;
                }
                Some(Err(e)) => match e.fatal() {
                    Some(fatal) => return Err(fatal.into()),
                    None => return lost(&e),
                },
                None => return lost(&"message reader ended"),
            },
            item = src.recv(), if want_source => match item {
                Some(Source::Data(b)) => {
                    let start = session.produced();
                    session.push(DataFrame::raw(start, b))?;
                }
                Some(Source::Eof) | None => {
                    *source_done = true;
                    session.finish_input(Bytes::new());
                }
                Some(Source::Failed(e)) => {
                    let at = session.produced();
                    let reason = format!("the sender could not read the stream after {at} bytes: {e}");
                    warn!(error = %reason, "aborting the session");
                    deliver_abort(send, &mut incoming, reason).await;
                    return Err(SendError::Source { at, source: e });
                }
            },
        }
    }
}

/// Options for [`request`].
#[derive(Clone, Debug)]
pub struct RequestOptions {
    /// The receiver.
    pub to: SocketAddr,
    /// The receiver's public key.
    pub server_key: PublicKey,
    /// Link tuning.
    pub link: LinkConfig,
    /// How long to keep trying to reach the receiver.
    pub patience: Duration,
}

impl RequestOptions {
    /// The link part of these options.
    pub fn link_options(&self) -> LinkOptions {
        LinkOptions {
            to: self.to,
            server_key: self.server_key,
            link: self.link.clone(),
            bind: any_address_for(self.to),
        }
    }
}

/// Sends control `requests` (each idempotent) on a link of their own and
/// returns the receiver's responses in order; see [`Link::request`].
pub async fn request(
    identity: &Identity,
    opts: &RequestOptions,
    requests: &[Request],
) -> Result<Vec<Response>, SendError> {
    let link = Link::new(identity, opts.link_options())?;
    let out = link.request(requests, opts.patience).await;
    link.close().await;
    out
}

/// Asks the receiver which chunks its cache promises to hold for transfer
/// `session`, on a link of its own; see [`Link::chunk_inventory`].
pub async fn chunk_inventory(
    identity: &Identity,
    opts: &RequestOptions,
    session: SessionId,
) -> Result<fjord_pack::Inventory, SendError> {
    let link = Link::new(identity, opts.link_options())?;
    let out = link.chunk_inventory(session, opts.patience).await;
    link.close().await;
    out
}

impl Link {
    /// Sends control `requests` (each idempotent) on one stream of this
    /// link and returns the receiver's responses in order. An unreachable
    /// receiver is retried with backoff for `patience`, and so is a busy
    /// one (the requests not answered yet are sent again, on a new
    /// stream; past the patience it fails with
    /// [`SessionError::ReceiverBusy`]); a refused key fails at once.
    pub async fn request(
        &self,
        requests: &[Request],
        patience: Duration,
    ) -> Result<Vec<Response>, SendError> {
        let span = tracing::info_span!("control", to = %self.to());
        async {
            let deadline = Instant::now() + patience;
            let mut backoff = Backoff::new(BackoffConfig::default());
            let mut responses = Vec::with_capacity(requests.len());
            loop {
                let rest = &requests[responses.len()..];
                let (busy, why) = match self.request_once(rest, &mut responses).await {
                    Ok(()) => return Ok(responses),
                    Err(ConnectFailure::Fatal(e)) => return Err(e),
                    Err(ConnectFailure::Retry(why)) => (false, why),
                    Err(ConnectFailure::Busy(why)) => (true, why),
                };
                let delay = backoff.next_delay(fastrand::f64());
                if Instant::now() + delay > deadline {
                    let e = if busy {
                        SessionError::ReceiverBusy {
                            grace: patience,
                            reason: why,
                        }
                    } else {
                        SessionError::GraceExpired {
                            grace: patience,
                            delivered: 0,
                        }
                    };
                    return Err(e.into());
                }
                if busy {
                    info!(reason = %why, retry_in_ms = delay.as_millis() as u64, "the receiver is busy; asking again");
                } else {
                    warn!(error = %why, retry_in_ms = delay.as_millis() as u64, "cannot reach the receiver");
                }
                tokio::time::sleep(delay).await;
            }
        }
        .instrument(span)
        .await
    }

    /// Asks the receiver which chunks its cache promises to hold for
    /// transfer `session` (offer it next; see [`fjord_sink::chunk_cache`]): the
    /// sender's pack then references them instead of sending them. A
    /// receiver without a chunk cache promises nothing.
    pub async fn chunk_inventory(
        &self,
        session: SessionId,
        patience: Duration,
    ) -> Result<fjord_pack::Inventory, SendError> {
        let mut responses = self
            .request(&[Request::ChunkInventory { session }], patience)
            .await?;
        match responses.pop() {
            Some(Response::ChunkInventory { hashes }) => {
                tracing::info!(%session, chunks = hashes.len(), "chunk inventory received");
                Ok(fjord_pack::Inventory::new(
                    hashes.into_iter().map(fjord_pack::ChunkHash),
                ))
            }
            Some(Response::Failed { code, message }) => Err(SessionError::Refused {
                code,
                reason: message,
            }
            .into()),
            other => Err(SessionError::Protocol(format!(
                "expected a chunk inventory, got {other:?}"
            ))
            .into()),
        }
    }

    /// Sends `requests` on one new stream, appending each answer to
    /// `responses`; stops at the first `Busy` answer (the rest is asked
    /// again).
    async fn request_once(
        &self,
        requests: &[Request],
        responses: &mut Vec<Response>,
    ) -> Result<(), ConnectFailure> {
        let conn = self.connection().await?;
        let to = self.to();
        // A key the receiver does not pin fails after the client's half of
        // the TLS 1.3 handshake, so it shows up as the connection closing.
        let retry = |e: &dyn std::fmt::Display| {
            if let Some(reason) = busy_close(&conn) {
                return ConnectFailure::Busy(reason);
            }
            match conn.close_reason().as_ref().and_then(crypto_failure) {
                Some(detail) => ConnectFailure::Fatal(SendError::KeyRefused { addr: to, detail }),
                None => ConnectFailure::Retry(e.to_string()),
            }
        };
        let (mut send, recv) = conn.open_bi().await.map_err(|e| retry(&e))?;
        let mut incoming = spawn_message_reader(recv);
        let hello = Message::Hello {
            min_version: fjord_proto::message::MIN_PROTOCOL_VERSION,
            max_version: fjord_proto::message::PROTOCOL_VERSION,
            sender_key: self.inner.sender_key,
        };
        send.write_all(&hello.to_bytes())
            .await
            .map_err(|e| retry(&e))?;
        let mut busy = None;
        for r in requests {
            send.write_all(&Message::Request(r.clone()).to_bytes())
                .await
                .map_err(|e| retry(&e))?;
            match incoming.recv().await {
                Some(Ok(Message::Response(Response::Failed {
                    code: RefuseCode::Busy,
                    message,
                }))) => {
                    busy = Some(message);
                    break;
                }
                Some(Ok(Message::Response(resp))) => responses.push(resp),
                Some(Ok(Message::Refuse {
                    code: RefuseCode::Busy,
                    reason,
                })) => {
                    busy = Some(reason);
                    break;
                }
                Some(Ok(Message::Refuse { code, reason })) => {
                    return Err(ConnectFailure::Fatal(
                        SessionError::Refused { code, reason }.into(),
                    ))
                }
                Some(Ok(other)) => {
                    return Err(ConnectFailure::Fatal(
                        SessionError::Protocol(format!(
                            "expected a response, got {}",
                            other.kind()
                        ))
                        .into(),
                    ))
                }
                Some(Err(e)) => match e.fatal() {
                    Some(fatal) => return Err(ConnectFailure::Fatal(fatal.into())),
                    None => return Err(retry(&e)),
                },
                None => return Err(retry(&"the receiver closed the stream")),
            }
        }
        // Done with this stream; the connection stays for the next user.
        let _ = send.finish();
        match busy {
            Some(reason) => Err(ConnectFailure::Busy(reason)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_undecodable_message_is_a_protocol_error_and_a_closed_stream_a_lost_link() {
        let e = ReadEnd::Undecodable(DecodeError::UnknownType(99));
        match e.fatal() {
            Some(SessionError::Protocol(why)) => assert_eq!(
                why,
                "undecodable message from the receiver: unknown message type 99: the peer speaks a newer or a foreign protocol"
            ),
            other => panic!("{other:?}"),
        }
        assert!(ReadEnd::Closed.fatal().is_none());
        assert!(ReadEnd::Link(quinn::ReadError::ClosedStream)
            .fatal()
            .is_none());
    }
}
