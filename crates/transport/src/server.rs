//! The receiving driver: a quinn endpoint that accepts pinned senders,
//! runs the handshake and a [`ReceiverSession`] per transfer, and keeps
//! each session (with its open sink) for the grace period after its
//! stream or connection is lost, so that a reconnecting sender resumes it.
//!
//! One connection of a sender carries many bidirectional streams at once
//! (a job's transfers and its control requests share it): each stream
//! starts with its own hello and carries one offer, or control requests,
//! and is served in its own task. A refusal, a failure or an abort ends
//! that stream only; quinn bounds how many streams a connection may have
//! open ([`Limits::streams_per_connection`]).
//!
//! What is admitted (connections, offers, control requests) is decided by
//! [`fjord_proto::admission`] over the counts this driver keeps; see there for
//! the per-client limits and the memory budget. A session ends at once
//! when its sender aborts it, and a new session of a key into a dataset
//! replaces that key's detached session of the dataset (its sink aborted
//! and dropped before the new one is opened).

pub mod refusals;
mod session;
mod table;

use crate::config::LinkConfig;
use crate::control::{Control, NoControl};
use crate::identity::{peer_key, AllowedKeys, Identity, IdentityError};
use fjord_proto::admission::{Admission, Limits, ServerCounters};
use fjord_proto::message::{
    offer_flags, DecodeError, Message, MessageReader, RefuseCode, SessionId,
};
use fjord_proto::receiver::{refuse, Handshake, ReceiverStats};
use fjord_proto::PublicKey;
use fjord_proto::{close_code, SessionError};
use fjord_sink::chunk_cache::{ChunkCacheOptions, ChunkCaches};
use fjord_sink::SinkFactory;
use session::{serve_offer, Io};
use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use table::{SharedSlot, State};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{info, warn, Instrument};

pub(crate) use table::Shared;

/// Why the server could not start.
#[derive(Debug, Error)]
pub enum ServeError {
    /// Binding or configuration failed.
    #[error("cannot listen on {addr}: {why}")]
    Setup {
        /// The address.
        addr: SocketAddr,
        /// Why.
        why: String,
    },
    /// Key problems.
    #[error(transparent)]
    Identity(#[from] IdentityError),
}

/// Options for [`Server::bind`].
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Public keys of the senders allowed to connect.
    pub allowed: Vec<PublicKey>,
    /// Link tuning.
    pub link: LinkConfig,
    /// How long a session whose connection was lost is kept.
    pub grace: Duration,
    /// Most transfers held at once over all clients (attached, in their
    /// grace period, or being opened); further offers are answered `Busy`
    /// and the senders retry. 0: no global limit (the per-client limits
    /// and the memory budget of `limits` still apply).
    pub max_sessions: usize,
    /// The persistent chunk cache for dedup across packed transfers; none
    /// answers inventories with nothing.
    pub chunk_cache: Option<ChunkCacheOptions>,
    /// Per-client limits, the offer deadline and the memory budget (see
    /// [`fjord_proto::admission`]).
    pub limits: Limits,
}

impl ServeOptions {
    /// Listening on `listen` for the `allowed` keys, with the default link,
    /// 5 minutes of grace, no global session limit, no chunk cache and the
    /// default [`Limits`].
    pub fn new(listen: SocketAddr, allowed: Vec<PublicKey>) -> ServeOptions {
        ServeOptions {
            listen,
            allowed,
            link: LinkConfig::default(),
            grace: Duration::from_secs(300),
            max_sessions: 0,
            chunk_cache: None,
            limits: Limits::default(),
        }
    }
}

/// What happened to a session, for the operator (and tests).
#[derive(Clone, Debug)]
pub enum ServerEvent {
    /// A stream was received, verified and stored.
    Completed {
        /// The session.
        session: SessionId,
        /// Where it went.
        message: String,
        /// Counters.
        stats: ReceiverStats,
    },
    /// A session failed, was aborted by its sender or replaced; nothing of
    /// it is presented as complete.
    Failed {
        /// The session.
        session: SessionId,
        /// Why.
        error: String,
    },
    /// A connection, offer or request was refused.
    Refused {
        /// The remote address.
        remote: SocketAddr,
        /// Why.
        reason: String,
    },
}

/// A running receiver.
pub struct Server {
    endpoint: quinn::Endpoint,
    events: mpsc::UnboundedReceiver<ServerEvent>,
    shared: Arc<Shared>,
}

impl Server {
    /// Starts listening; sessions are served in background tasks. Control
    /// requests are refused (see [`Server::bind_with_control`]).
    pub fn bind(
        identity: &Identity,
        opts: ServeOptions,
        factory: Arc<dyn SinkFactory>,
    ) -> Result<Server, ServeError> {
        Server::bind_with_control(identity, opts, factory, Arc::new(NoControl))
    }

    /// Starts listening, answering control requests with `control`.
    pub fn bind_with_control(
        identity: &Identity,
        opts: ServeOptions,
        factory: Arc<dyn SinkFactory>,
        control: Arc<dyn Control>,
    ) -> Result<Server, ServeError> {
        let setup = |why: String| ServeError::Setup {
            addr: opts.listen,
            why,
        };
        opts.limits
            .validate(opts.link.stream_window())
            .map_err(setup)?;
        let allowed = AllowedKeys::new(opts.allowed.clone());
        let tls = identity.server_tls(allowed.clone())?;
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| setup(e.to_string()))?;
        let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
        let mut transport = opts.link.transport().map_err(setup)?;
        // The streams a client may have open on one connection at once:
        // its sessions and its requests (see fjord_proto::admission).
        let streams = quinn::VarInt::from_u64(opts.limits.streams_per_connection())
            .map_err(|e| setup(e.to_string()))?;
        transport.max_concurrent_bidi_streams(streams);
        let window =
            quinn::VarInt::from_u64(opts.limits.connection_window(opts.link.stream_window()))
                .map_err(|e| setup(e.to_string()))?;
        transport.receive_window(window);
        cfg.transport_config(Arc::new(transport));
        cfg.migration(true);
        let endpoint =
            crate::udp::endpoint(opts.listen, Some(cfg)).map_err(|e| setup(e.to_string()))?;
        let (tx, rx) = mpsc::unbounded_channel();
        let counters = Arc::new(ServerCounters::default());
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(opts.grace)),
            factory,
            control,
            // A sender asks for the inventory just before its offer; the
            // lease waits as long as a lost session would.
            caches: opts.chunk_cache.clone().map(|c| {
                Arc::new(
                    ChunkCaches::new(c, opts.grace.max(Duration::from_secs(600)))
                        .with_lease_limit(opts.limits.per_client_leases, counters.clone()),
                )
            }),
            grace: opts.grace,
            admission: Admission::new(
                opts.limits.clone(),
                opts.max_sessions,
                opts.limits.connection_charge(opts.link.stream_window()),
            ),
            counters,
            events: tx,
            allowed,
            refusals: Default::default(),
        });
        tokio::spawn(accept_loop(endpoint.clone(), shared.clone()));
        tokio::spawn(reaper(shared.clone()));
        Ok(Server {
            endpoint,
            events: rx,
            shared,
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The next session event.
    pub async fn next_event(&mut self) -> Option<ServerEvent> {
        self.events.recv().await
    }

    /// Sessions currently held (attached or in their grace period).
    pub fn sessions(&self) -> usize {
        self.shared.state().sessions.len()
    }

    /// Connections currently open (counted from admission to close).
    pub fn connections(&self) -> usize {
        self.shared.state().connections
    }

    /// The refusal and session-end counters, live (for status and metrics).
    pub fn counters(&self) -> Arc<ServerCounters> {
        self.shared.counters.clone()
    }

    /// The chunk caches' size, hits and stores; none without a cache.
    pub fn chunk_cache_stats(&self) -> Option<fjord_sink::chunk_cache::ChunkCacheStats> {
        self.shared.caches.as_ref().map(|c| c.stats())
    }

    /// Every refusal so far, by code and key (for metrics).
    pub fn refusals(&self) -> Vec<refusals::RefusalCount> {
        self.shared.refusals.snapshot()
    }

    /// Pins exactly `keys` from now on (a reload): a new connection must
    /// present one of them, and a new stream of a connection whose key is
    /// no longer pinned is refused. Running transfers go on.
    pub fn set_allowed(&self, keys: Vec<PublicKey>) {
        self.shared.allowed.replace(keys);
    }

    /// Stops accepting and closes every connection.
    pub fn close(&self) {
        self.endpoint
            .close(close_code::SHUTDOWN.into(), b"receiver shutting down");
    }

    /// Stops accepting, closes every connection, and aborts every held
    /// session's sink (a `zfs recv -s` sink then leaves a resumable partial
    /// receive holding only verified bytes). Returns how many sessions were
    /// aborted.
    pub async fn shutdown(&self, why: &str) -> usize {
        self.close();
        // The session tasks see their connections end and let go of their
        // slots; wait for each (bounded) before aborting its sink.
        let entries: Vec<(SessionId, SharedSlot)> = self
            .shared
            .state()
            .sessions
            .drain()
            .map(|(id, e)| (id, e.slot))
            .collect();
        let mut aborted = 0;
        for (id, slot) in entries {
            match tokio::time::timeout(Duration::from_secs(10), slot.lock_owned()).await {
                Ok(mut slot) => {
                    slot.sink.abort(why).await;
                    warn!(session = %id, delivered = slot.session.stats().delivered, "session stopped by shutdown");
                    aborted += 1;
                }
                Err(_) => {
                    warn!(session = %id, "session busy at shutdown; its sink is dropped with the process")
                }
            }
        }
        aborted
    }
}

async fn accept_loop(endpoint: quinn::Endpoint, shared: Arc<Shared>) {
    while let Some(incoming) = endpoint.accept().await {
        let shared = shared.clone();
        let remote = incoming.remote_address();
        tokio::spawn(
            async move {
                let conn = match incoming.await {
                    Ok(c) => c,
                    Err(e) if is_tls_failure(&e) => {
                        warn!(error = %e, "handshake refused (key not pinned, or not fjord)");
                        ServerCounters::bump(&shared.counters.refused_other);
                        shared.refusals.note(refusals::NOT_PINNED.into(), None);
                        let _ = shared.events.send(ServerEvent::Refused {
                            remote,
                            reason: e.to_string(),
                        });
                        return;
                    }
                    Err(e) => {
                        info!(error = %e, "handshake abandoned");
                        return;
                    }
                };
                let Some(key) = peer_key(conn.peer_identity()) else {
                    conn.close(close_code::REFUSED.into(), b"no peer key");
                    return;
                };
                handle_connection(conn, shared, key)
                    .instrument(tracing::info_span!("client", sender = %key))
                    .await;
            }
            .instrument(tracing::info_span!("conn", remote = %remote)),
        );
    }
}

/// True when a QUIC error is a TLS (crypto) failure.
fn is_tls_failure(e: &quinn::ConnectionError) -> bool {
    let code = match e {
        quinn::ConnectionError::TransportError(t) => u64::from(t.code),
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        _ => return false,
    };
    (0x100..=0x1ff).contains(&code)
}

/// Expires detached sessions whose grace period ran out. A session whose
/// connection closed without its task noticing (a failed takeover) is
/// detached here first.
async fn reaper(shared: Arc<Shared>) {
    let tick = (shared.grace / 4).clamp(Duration::from_millis(100), Duration::from_secs(1));
    loop {
        tokio::time::sleep(tick).await;
        if shared.events.is_closed() {
            return;
        }
        let now = Instant::now();
        let mut expired = Vec::new();
        {
            let mut st = shared.state();
            st.sessions.retain(|id, entry| {
                let Ok(mut slot) = entry.slot.clone().try_lock_owned() else {
                    return true;
                };
                if let Some(attached) = &entry.conn {
                    if attached.conn.close_reason().is_none() {
                        return true;
                    }
                    entry.conn = None;
                    slot.session.disconnected(now);
                }
                match slot.session.handle_timeout(now) {
                    Ok(()) => true,
                    Err(e) => {
                        expired.push((*id, entry.key, slot, e));
                        false
                    }
                }
            });
        }
        for (id, key, mut slot, e) in expired {
            let why = e.to_string();
            slot.sink.abort(&why).await;
            let report = slot.session.finished(false, 1, None, why.clone());
            shared.record_ended(id, key, &report);
            ServerCounters::bump(&shared.counters.grace_expired);
            warn!(session = %id, delivered = slot.session.stats().delivered, error = %why, "session abandoned");
            let _ = shared.events.send(ServerEvent::Failed {
                session: id,
                error: why,
            });
        }
    }
}

/// Why no message could be read.
#[derive(Debug, Error)]
pub(crate) enum ReadError {
    /// The bytes are not a message.
    #[error("undecodable message: {0}")]
    Undecodable(#[from] DecodeError),
    /// The peer finished the stream.
    #[error("the sender closed the stream")]
    Finished,
    /// The stream or connection failed.
    #[error(transparent)]
    Read(#[from] quinn::ReadError),
}

pub(crate) async fn read_message(
    recv: &mut quinn::RecvStream,
    reader: &mut MessageReader,
) -> Result<Message, ReadError> {
    loop {
        if let Some(m) = reader.next_message()? {
            return Ok(m);
        }
        match recv.read_chunk(1 << 20, true).await? {
            Some(c) => reader.feed(&c.bytes),
            None => return Err(ReadError::Finished),
        }
    }
}

pub(crate) async fn write(
    send: &mut quinn::SendStream,
    msg: &Message,
) -> Result<(), quinn::WriteError> {
    send.write_all(&msg.to_bytes()).await
}

/// Sends `msg` (a refusal) on one stream and finishes it, and logs it (in
/// the span that names the client's key) and counts it in `counter`;
/// none: the caller logged and counted it already. The connection and
/// its other streams are left alone.
pub(super) async fn refuse_stream(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    shared: &Shared,
    counter: Option<&AtomicU64>,
    msg: Message,
    err: SessionError,
) {
    let _ = write(send, &msg).await;
    let _ = send.finish();
    if let SessionError::Refused { code, .. } = &err {
        let key = peer_key(conn.peer_identity());
        shared.refusals.note(refusals::label(*code), key);
    }
    let reason = err.to_string();
    if let Some(counter) = counter {
        ServerCounters::bump(counter);
        warn!(error = %reason, "refused");
    }
    let _ = shared.events.send(ServerEvent::Refused {
        remote: conn.remote_address(),
        reason,
    });
    // Give the refusal a moment to arrive before the stream is dropped.
    let _ = tokio::time::timeout(Duration::from_secs(2), send.stopped()).await;
}

/// Admits the connection, then accepts its bidirectional streams and
/// serves each (a transfer offer or control requests) in its own task,
/// concurrently. quinn bounds the streams open at once
/// ([`Limits::streams_per_connection`]); a connection without any stream
/// open for the offer deadline (its first one included) is closed. The
/// connection stays counted until every stream task has ended.
async fn handle_connection(conn: quinn::Connection, shared: Arc<Shared>, key: PublicKey) {
    let _ticket = match shared.admit_connection(key) {
        Ok(t) => t,
        Err(busy) => {
            shared.note_busy(&key, &busy, "connection");
            let reason = busy.to_string();
            conn.close(close_code::BUSY.into(), reason.as_bytes());
            let _ = shared.events.send(ServerEvent::Refused {
                remote: conn.remote_address(),
                reason,
            });
            return;
        }
    };
    let wait = shared.admission.limits().offer_deadline;
    let mut streams = tokio::task::JoinSet::new();
    let mut opened = false;
    loop {
        let idle = streams.is_empty();
        tokio::select! {
            accepted = conn.accept_bi() => match accepted {
                Ok((send, recv)) => {
                    opened = true;
                    ServerCounters::bump(&shared.counters.streams_accepted);
                    let span = tracing::info_span!("stream", id = %send.id());
                    streams.spawn(
                        serve_stream(conn.clone(), shared.clone(), key, send, recv).instrument(span),
                    );
                }
                Err(e) => {
                    info!(error = %e, "connection ended");
                    break;
                }
            },
            Some(_) = streams.join_next(), if !idle => {}
            () = tokio::time::sleep(wait), if idle => {
                if opened {
                    info!("no stream open for {} ms; closing the idle connection", wait.as_millis());
                    conn.close(close_code::DONE.into(), b"idle");
                } else {
                    ServerCounters::bump(&shared.counters.offer_deadline_expired);
                    let why = format!("no stream opened within {} ms", wait.as_millis());
                    warn!(sender = %key, "{why}; closing the connection");
                    conn.close(close_code::PROTOCOL.into(), why.as_bytes());
                }
                break;
            }
        }
    }
    // The streams see the connection end; let them clean up.
    while streams.join_next().await.is_some() {}
}

/// Reads one stream's hello and its first message within the offer
/// deadline, and serves the offer or the control requests.
async fn serve_stream(
    conn: quinn::Connection,
    shared: Arc<Shared>,
    key: PublicKey,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) {
    let wait = shared.admission.limits().offer_deadline;
    let deadline = tokio::time::Instant::now() + wait;
    let late = |what: &str| {
        ServerCounters::bump(&shared.counters.offer_deadline_expired);
        let why = format!("no {what} within {} ms", wait.as_millis());
        warn!(sender = %key, "{why}; closing the stream");
        why
    };
    let conn = &conn;
    let shared = &*shared;
    let other = Some(&shared.counters.refused_other);
    let mut reader = MessageReader::new();
    let mut hs = Handshake::AwaitHello;
    let hello = match tokio::time::timeout_at(deadline, read_message(&mut recv, &mut reader)).await
    {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            let (m, err) = *refuse(RefuseCode::Other, e.to_string());
            refuse_stream(conn, &mut send, shared, other, m, err).await;
            return;
        }
        Err(_) => {
            let (m, err) = *refuse(RefuseCode::Other, late("hello"));
            refuse_stream(conn, &mut send, shared, other, m, err).await;
            return;
        }
    };
    if let Err(r) = hs.hello(hello, &key.0) {
        let (m, err) = *r;
        refuse_stream(conn, &mut send, shared, other, m, err).await;
        return;
    }
    let Handshake::AwaitOffer { version } = hs else {
        return;
    };
    if !shared.allowed.contains(&key) {
        let why = format!("key {key} is no longer a configured client of this receiver");
        let (m, err) = *refuse(RefuseCode::Policy, why);
        refuse_stream(conn, &mut send, shared, other, m, err).await;
        return;
    }
    let first = tokio::time::timeout_at(deadline, read_message(&mut recv, &mut reader)).await;
    let offer = match first {
        Ok(Ok(Message::Offer(o))) => o,
        Ok(Ok(Message::Request(first))) => {
            crate::control::serve_requests(shared, &key, first, &mut send, &mut recv, &mut reader)
                .await;
            return;
        }
        Ok(Ok(other_msg)) => {
            let (m, err) = *refuse(
                RefuseCode::Other,
                format!("expected offer, got {}", other_msg.kind()),
            );
            refuse_stream(conn, &mut send, shared, other, m, err).await;
            return;
        }
        Ok(Err(e @ ReadError::Undecodable(_))) => {
            let (m, err) = *refuse(RefuseCode::Other, e.to_string());
            refuse_stream(conn, &mut send, shared, other, m, err).await;
            return;
        }
        Ok(Err(e)) => {
            info!(error = %e, "stream ended before the offer");
            return;
        }
        Err(_) => {
            let (m, err) = *refuse(RefuseCode::Other, late("offer"));
            refuse_stream(conn, &mut send, shared, other, m, err).await;
            return;
        }
    };
    if offer.flags & !offer_flags::KNOWN != 0 {
        let (m, err) = *refuse(
            RefuseCode::Other,
            format!(
                "offer flags {:#x} are not understood by this receiver; upgrade fjord-recv",
                offer.flags
            ),
        );
        refuse_stream(conn, &mut send, shared, other, m, err).await;
        return;
    }
    let span = tracing::info_span!("session", session = %offer.session, dataset = %offer.dataset);
    let io = Io {
        conn: conn.clone(),
        send,
        recv,
        reader,
    };
    serve_offer(shared, key, version, offer, io)
        .instrument(span)
        .await
}
